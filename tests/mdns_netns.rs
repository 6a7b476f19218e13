//! Real mDNS discovery between daemons in network namespaces this test creates.
//!
//! mDNS must never run in the root network namespace of the test machine (it would multicast onto
//! the host's network), and it does not announce on loopback. So the test builds its own little
//! LAN: one namespace holding a bridge, and one namespace per daemon joined to it by a veth pair.
//! Everything is removed afterwards. Where namespaces cannot be created (not root, no `ip`), the
//! test prints SKIPPED; with `MESHSYNC_REQUIRE_NETNS=1` (as CI sets it) it fails instead.

mod support;

use std::process::Command;

use support::{Node, WAIT, meshsync, wait_until};

/// Set to require the namespace tests to run rather than skip.
const REQUIRE_ENV: &str = "MESHSYNC_REQUIRE_NETNS";

/// Namespaces, bridge and veth pairs; deleted on drop.
struct NetLab {
    switch: String,
    hosts: Vec<String>,
}

fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| format!("cannot run `ip`: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl NetLab {
    fn create(hosts: usize) -> Result<NetLab, String> {
        let tag = std::process::id() % 100_000;
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
            ip(&[
                "-n",
                &ns,
                "addr",
                "add",
                &format!("10.213.0.{}/24", i + 1),
                "dev",
                "eth0",
            ])?;
            ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
            ip(&["-n", &ns, "route", "add", "224.0.0.0/4", "dev", "eth0"])?;
        }
        Ok(lab)
    }
}

impl Drop for NetLab {
    fn drop(&mut self) {
        for ns in self.hosts.iter().chain(std::iter::once(&self.switch)) {
            let _ = ip(&["netns", "del", ns]);
        }
    }
}

#[test]
fn mdns_finds_peers_on_a_namespace_lan() {
    let lab = match NetLab::create(3) {
        Ok(lab) => lab,
        Err(why) => {
            if std::env::var_os(REQUIRE_ENV).is_some() {
                panic!("network namespaces are required ({REQUIRE_ENV} is set) but: {why}");
            }
            eprintln!(
                "SKIPPED mdns_finds_peers_on_a_namespace_lan: cannot create network namespaces: {why}"
            );
            return;
        }
    };
    let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes: Vec<Node> = Vec::new();
    for (dir, ns) in dirs.iter().zip(&lab.hosts) {
        let home = dir.path().join("home");
        // mDNS only announces addresses that match an interface, so listen on all of them.
        let out = meshsync(
            &home,
            &[
                "init",
                "--listen",
                "/ip4/0.0.0.0/tcp/0",
                "--api",
                "127.0.0.1:0",
            ],
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let id = String::from_utf8(out.stdout).unwrap().trim().to_owned();
        let wrapper = ["ip", "netns", "exec", ns.as_str()]
            .map(String::from)
            .to_vec();
        let mut node = Node::with_home(home, id, wrapper);
        node.start();
        assert_eq!(node.status()["mdns"], true);
        assert!(node.status()["static_peers"].as_array().unwrap().is_empty());
        nodes.push(node);
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.clone()).collect();
    wait_until("all three daemons to find each other by mDNS", WAIT, || {
        nodes.iter().all(|node| {
            let peers = node.connected_peers();
            ids.iter()
                .filter(|id| **id != node.peer_id)
                .all(|id| peers.contains(id))
        })
    });
    // No static peers exist: the first connections were dialled because mDNS found the peer
    // (later ones may come from Kademlia lookups through an mDNS-found peer).
    let found: Vec<String> = nodes
        .iter()
        .flat_map(|n| {
            n.status()["peers"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["found_by"].as_str().unwrap().to_owned())
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(found.iter().any(|f| f == "mdns"), "{found:?}");
    assert!(
        found
            .iter()
            .all(|f| ["mdns", "kad", "inbound"].contains(&f.as_str())),
        "{found:?}"
    );
    for node in &mut nodes {
        assert!(node.stop());
    }
    drop(nodes);
    drop(lab);
}
