//! Real mDNS discovery between daemons in network namespaces this test creates.
//!
//! mDNS must never run in the root network namespace of the test machine (it would multicast onto
//! the host's network), and it does not announce on loopback. So the test builds its own little
//! LAN: one namespace holding a bridge, and one namespace per daemon joined to it by a veth pair.
//! Everything is removed afterwards. Where namespaces cannot be created (not root, no `ip`), the
//! test prints SKIPPED; with `MESHSYNC_REQUIRE_NETNS=1` (as CI sets it) it fails instead.

mod support;

use support::netlab::NetLab;
use support::{Node, WAIT, wait_until};

#[test]
fn mdns_finds_peers_on_a_namespace_lan() {
    let Some(lab) = NetLab::for_test("mdns_finds_peers_on_a_namespace_lan", 3, false) else {
        return;
    };
    let mut nodes: Vec<Node> = Vec::new();
    for i in 0..lab.hosts.len() {
        // mDNS only announces addresses that match an interface, so listen on all of them.
        let mut node = Node::init_in(lab.wrapper(i), &["--listen", "/ip4/0.0.0.0/tcp/0"]);
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
