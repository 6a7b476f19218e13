//! A LAN of network namespaces for black-box fault tests: one namespace holding a bridge (the
//! switch), one namespace per host joined to it by a veth pair (`eth0` in the host, `p<i>` on
//! the switch), host `i` at `10.213.0.<i+1>`. Faults are made the way the test rules allow:
//! partitions and loss with nftables inside the host namespaces, rate limits with `tc tbf` on
//! both ends of a host's link. Nothing touches the root namespace; everything is deleted on drop.
//!
//! Where namespaces cannot be made (not root, no `ip`, no `nft`), [`NetLab::for_test`] prints
//! SKIPPED and the test returns; with `MESHSYNC_REQUIRE_NETNS=1` (as CI sets it) it fails instead.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

use super::{Mesh, Node};

/// Set to require the namespace tests to run rather than skip.
pub const REQUIRE_ENV: &str = "MESHSYNC_REQUIRE_NETNS";

/// Namespaces, bridge and veth pairs; deleted on drop.
pub struct NetLab {
    switch: String,
    /// The host namespaces, in host order.
    pub hosts: Vec<String>,
}

/// The nftables table a partition lives in (one per host namespace).
const PARTITION_TABLE: &str = "meshsync_lab_partition";
/// The nftables table packet loss lives in.
const LOSS_TABLE: &str = "meshsync_lab_loss";

fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), String> {
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot run `{program}`: {e}"))?;
    if let Some(input) = input {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .map_err(|e| format!("cannot feed `{program}`: {e}"))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| format!("`{program}` vanished: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args, None)
}

impl NetLab {
    /// Builds a LAN of `hosts` hosts.
    pub fn create(hosts: usize) -> Result<NetLab, String> {
        static LABS: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}x{}",
            std::process::id() % 100_000,
            LABS.fetch_add(1, Ordering::Relaxed)
        );
        let mut lab = NetLab {
            switch: format!("mssw{tag}"),
            hosts: Vec::new(),
        };
        ip(&["netns", "add", &lab.switch])?;
        ip(&["-n", &lab.switch, "link", "set", "lo", "up"])?;
        ip(&["-n", &lab.switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &lab.switch, "link", "set", "br0", "up"])?;
        for i in 0..hosts {
            let ns = format!("msh{tag}-{i}");
            ip(&["netns", "add", &ns])?;
            lab.hosts.push(ns.clone());
            let port = format!("p{i}");
            ip(&[
                "-n",
                &lab.switch,
                "link",
                "add",
                &port,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                &ns,
            ])?;
            ip(&["-n", &lab.switch, "link", "set", &port, "master", "br0"])?;
            ip(&["-n", &lab.switch, "link", "set", &port, "up"])?;
            ip(&["-n", &ns, "link", "set", "lo", "up"])?;
            let addr = format!("{}/24", Self::address(i));
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lab)
    }

    /// A LAN for the test `test`, or `None` (after printing SKIPPED) where one cannot be built
    /// and [`REQUIRE_ENV`] is not set. `nft` is checked up front when the test needs faults.
    pub fn for_test(test: &str, hosts: usize, needs_nft: bool) -> Option<NetLab> {
        let lab = NetLab::create(hosts).and_then(|lab| {
            if needs_nft {
                run("nft", &["--version"], None)?;
            }
            Ok(lab)
        });
        match lab {
            Ok(lab) => Some(lab),
            Err(why) => {
                if std::env::var_os(REQUIRE_ENV).is_some() {
                    panic!("network namespaces are required ({REQUIRE_ENV} is set) but: {why}");
                }
                eprintln!("SKIPPED {test}: cannot build a namespace LAN: {why}");
                None
            }
        }
    }

    /// Host `i`'s address.
    pub fn address(i: usize) -> String {
        format!("10.213.0.{}", i + 1)
    }

    /// The prefix that runs a command in host `i`'s namespace.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", self.hosts[i].as_str()]
            .map(String::from)
            .to_vec()
    }

    /// A node on host `i` with mDNS off, listening on the host's address; `extra` goes to
    /// `init`. Not started.
    pub fn node(&self, i: usize, extra: &[&str]) -> Node {
        let listen = format!("/ip4/{}/tcp/0", Self::address(i));
        let mut args = vec!["--listen", &listen, "--no-mdns"];
        args.extend_from_slice(extra);
        Node::init_in(self.wrapper(i), &args)
    }

    /// A started node on every host, each with every earlier one as a static peer.
    pub fn mesh(&self) -> Mesh {
        let mut nodes: Vec<Node> = Vec::new();
        for i in 0..self.hosts.len() {
            let addrs: Vec<String> = nodes.iter().map(|n| n.listen_addr()).collect();
            let mut extra = Vec::new();
            for addr in &addrs {
                extra.push("--peer");
                extra.push(addr.as_str());
            }
            let mut node = self.node(i, &extra);
            node.start();
            nodes.push(node);
        }
        Mesh { nodes }
    }

    fn nft(&self, host: usize, script: &str) -> Result<(), String> {
        run(
            "ip",
            &["netns", "exec", &self.hosts[host], "nft", "-f", "-"],
            Some(script),
        )
    }

    /// Cuts the LAN into `groups` (host indices): hosts hear only hosts of their own group.
    /// Packets are dropped silently, as a pulled cable between two switches would.
    pub fn partition(&self, groups: &[&[usize]]) {
        for group in groups {
            let others: Vec<String> = (0..self.hosts.len())
                .filter(|h| !group.contains(h))
                .map(Self::address)
                .collect();
            if others.is_empty() {
                continue;
            }
            let set = others.join(", ");
            for &host in group.iter() {
                let script = format!(
                    "table inet {PARTITION_TABLE} {{\n\
                     chain input {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n\
                     chain output {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n\
                     }}\n"
                );
                self.nft(host, &script).expect("partition");
            }
        }
    }

    /// Ends a [`NetLab::partition`].
    pub fn heal(&self) {
        for host in 0..self.hosts.len() {
            let _ = self.nft(host, &format!("delete table inet {PARTITION_TABLE}\n"));
        }
    }

    /// Drops `percent` % of host `host`'s packets at random, in both directions.
    pub fn loss(&self, host: usize, percent: u32) {
        let _ = self.nft(host, &format!("delete table inet {LOSS_TABLE}\n"));
        if percent == 0 {
            return;
        }
        let script = format!(
            "table inet {LOSS_TABLE} {{\n\
             chain input {{ type filter hook input priority 0; iifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n\
             chain output {{ type filter hook output priority 0; oifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n\
             }}\n"
        );
        self.nft(host, &script).expect("loss");
    }

    /// Limits host `host`'s link to `kbit` kbit/s each way (`tc tbf` on both ends).
    pub fn rate(&self, host: usize, kbit: u32) {
        let rate = format!("{kbit}kbit");
        let port = format!("p{host}");
        for (ns, dev) in [(&self.hosts[host], "eth0"), (&self.switch, port.as_str())] {
            ip(&["netns", "exec", ns, "true"]).expect("namespace");
            run(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                    "rate", &rate, "burst", "32kb", "latency", "500ms",
                ],
                None,
            )
            .expect("tc tbf");
        }
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
