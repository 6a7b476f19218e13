//! A LAN of network namespaces: one namespace holding a bridge (the switch), one namespace per
//! host joined to it by a veth pair (`eth0` in the host, `p<i>` on the switch), host `i` at
//! `10.213.0.<i+1>`, with a multicast route so mDNS works between hosts. Or several such LANs
//! (LAN `k` on `10.213.k.0/24`) joined by a router namespace that forwards between them
//! (`10.213.k.254` on each), as two offices joined by a router are: unicast crosses it,
//! multicast (mDNS) does not. Faults are made the way a real network has them, inside the
//! namespaces only: partitions and loss with nftables, rate limits with `tc tbf` on both ends of
//! a host's link. Nothing touches the root namespace; everything is deleted on drop. Needs root,
//! `ip` (iproute2) and, for faults, `nft`.
//!
//! The lab's namespaced topology and the daemon's own fault tests (`tests/support/netlab.rs`)
//! both build their LANs here.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};

/// Namespaces, bridges, router and veth pairs; deleted on drop.
pub struct Lan {
    /// One switch namespace per LAN.
    switches: Vec<String>,
    /// The router namespace, when there are several LANs.
    router: Option<String>,
    /// The host namespaces, in host order.
    pub hosts: Vec<String>,
    /// Per host: its LAN and its address.
    places: Vec<(usize, String)>,
}

/// The nftables table a partition lives in (one per host namespace).
const PARTITION_TABLE: &str = "meshsync_lab_partition";
/// The nftables table packet loss lives in.
const LOSS_TABLE: &str = "meshsync_lab_loss";

/// Runs a program to completion; its stderr is the error.
pub fn run(program: &str, args: &[&str], input: Option<&str>) -> Result<(), String> {
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
        if let Some(mut stdin) = child.stdin.take() {
            stdin
                .write_all(input.as_bytes())
                .map_err(|e| format!("cannot feed `{program}`: {e}"))?;
        }
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

impl Lan {
    /// Builds a LAN of `hosts` hosts. On failure, what was built is deleted again.
    pub fn create(hosts: usize) -> Result<Lan, String> {
        Self::create_routed(&[hosts])
    }

    /// Builds one LAN per entry of `sizes` (that many hosts each; hosts numbered across them
    /// in order) and, if there are two or more, a router joining them. On failure, what was
    /// built is deleted again.
    pub fn create_routed(sizes: &[usize]) -> Result<Lan, String> {
        static LANS: AtomicU32 = AtomicU32::new(0);
        let tag = format!(
            "{}x{}",
            std::process::id() % 100_000,
            LANS.fetch_add(1, Ordering::Relaxed)
        );
        if sizes.len() > 250 {
            return Err("at most 250 LANs".into());
        }
        let mut lan = Lan {
            switches: Vec::new(),
            router: None,
            hosts: Vec::new(),
            places: Vec::new(),
        };
        let routed = sizes.len() > 1;
        if routed {
            let router = format!("msrt{tag}");
            ip(&["netns", "add", &router])?;
            lan.router = Some(router.clone());
            ip(&["-n", &router, "link", "set", "lo", "up"])?;
            run(
                "ip",
                &[
                    "netns",
                    "exec",
                    &router,
                    "sysctl",
                    "-q",
                    "-w",
                    "net.ipv4.ip_forward=1",
                ],
                None,
            )?;
        }
        for (net, &size) in sizes.iter().enumerate() {
            if size > 250 {
                return Err(format!("LAN {net}: at most 250 hosts"));
            }
            let switch = if routed {
                format!("mssw{tag}-{net}")
            } else {
                format!("mssw{tag}")
            };
            ip(&["netns", "add", &switch])?;
            lan.switches.push(switch.clone());
            ip(&["-n", &switch, "link", "set", "lo", "up"])?;
            ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &switch, "link", "set", "br0", "up"])?;
            if let Some(router) = &lan.router {
                let leg = format!("r{net}");
                ip(&[
                    "-n", &switch, "link", "add", "rtr", "type", "veth", "peer", "name", &leg,
                    "netns", router,
                ])?;
                ip(&["-n", &switch, "link", "set", "rtr", "master", "br0"])?;
                ip(&["-n", &switch, "link", "set", "rtr", "up"])?;
                let addr = format!("{}/24", Self::gateway(net));
                ip(&["-n", router, "addr", "add", &addr, "dev", &leg])?;
                ip(&["-n", router, "link", "set", &leg, "up"])?;
            }
            for _ in 0..size {
                let i = lan.hosts.len();
                let ns = format!("msh{tag}-{i}");
                ip(&["netns", "add", &ns])?;
                lan.hosts.push(ns.clone());
                let address = format!(
                    "10.213.{net}.{}",
                    lan.places.iter().filter(|p| p.0 == net).count() + 1
                );
                lan.places.push((net, address.clone()));
                let port = format!("p{i}");
                ip(&[
                    "-n", &switch, "link", "add", &port, "type", "veth", "peer", "name", "eth0",
                    "netns", &ns,
                ])?;
                ip(&["-n", &switch, "link", "set", &port, "master", "br0"])?;
                ip(&["-n", &switch, "link", "set", &port, "up"])?;
                ip(&["-n", &ns, "link", "set", "lo", "up"])?;
                ip(&[
                    "-n",
                    &ns,
                    "addr",
                    "add",
                    &format!("{address}/24"),
                    "dev",
                    "eth0",
                ])?;
                ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
                ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
                if routed {
                    ip(&[
                        "-n",
                        &ns,
                        "route",
                        "add",
                        "default",
                        "via",
                        &Self::gateway(net),
                    ])?;
                }
            }
        }
        Ok(lan)
    }

    /// The router's address on LAN `net`.
    fn gateway(net: usize) -> String {
        format!("10.213.{net}.254")
    }

    /// Whether nftables can be used (for partitions and loss).
    pub fn nft_available() -> Result<(), String> {
        run("nft", &["--version"], None)
    }

    /// Host `i`'s address.
    pub fn address(&self, i: usize) -> String {
        self.places[i].1.clone()
    }

    /// The LAN host `i` is on (0 unless there are several).
    pub fn lan_of(&self, i: usize) -> usize {
        self.places[i].0
    }

    /// The prefix that runs a command in host `i`'s namespace.
    pub fn wrapper(&self, i: usize) -> Vec<String> {
        ["ip", "netns", "exec", self.hosts[i].as_str()]
            .map(String::from)
            .to_vec()
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
    pub fn partition(&self, groups: &[&[usize]]) -> Result<(), String> {
        for group in groups {
            let others: Vec<String> = (0..self.hosts.len())
                .filter(|h| !group.contains(h))
                .map(|h| self.address(h))
                .collect();
            if others.is_empty() {
                continue;
            }
            let set = others.join(", ");
            for &host in group.iter() {
                let _ = self.nft(host, &format!("delete table inet {PARTITION_TABLE}\n"));
                let script = format!(
                    "table inet {PARTITION_TABLE} {{\n\
                     chain input {{ type filter hook input priority 0; ip saddr {{ {set} }} drop; }}\n\
                     chain output {{ type filter hook output priority 0; ip daddr {{ {set} }} drop; }}\n\
                     }}\n"
                );
                self.nft(host, &script)?;
            }
        }
        Ok(())
    }

    /// Ends a [`Lan::partition`].
    pub fn heal(&self) {
        for host in 0..self.hosts.len() {
            let _ = self.nft(host, &format!("delete table inet {PARTITION_TABLE}\n"));
        }
    }

    /// Drops `percent` % of host `host`'s packets at random, in both directions (0: none).
    pub fn loss(&self, host: usize, percent: u32) -> Result<(), String> {
        let _ = self.nft(host, &format!("delete table inet {LOSS_TABLE}\n"));
        if percent == 0 {
            return Ok(());
        }
        let script = format!(
            "table inet {LOSS_TABLE} {{\n\
             chain input {{ type filter hook input priority 0; iifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n\
             chain output {{ type filter hook output priority 0; oifname \"eth0\" numgen random mod 100 < {percent} drop; }}\n\
             }}\n"
        );
        self.nft(host, &script)
    }

    /// Limits host `host`'s link to `kbit` kbit/s each way (`tc tbf` on both ends); 0 lifts
    /// the limit.
    pub fn rate(&self, host: usize, kbit: u32) -> Result<(), String> {
        let port = format!("p{host}");
        let switch = &self.switches[self.lan_of(host)];
        for (ns, dev) in [(&self.hosts[host], "eth0"), (switch, port.as_str())] {
            if kbit == 0 {
                let _ = run(
                    "ip",
                    &[
                        "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root",
                    ],
                    None,
                );
                continue;
            }
            let rate = format!("{kbit}kbit");
            run(
                "ip",
                &[
                    "netns", "exec", ns, "tc", "qdisc", "replace", "dev", dev, "root", "tbf",
                    "rate", &rate, "burst", "32kb", "latency", "500ms",
                ],
                None,
            )?;
        }
        Ok(())
    }
}

impl Drop for Lan {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(&self.switches).chain(&self.router) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}
