//! The daemon's fault tests on a LAN of network namespaces ([`meshsync::lab::netns::Lan`], the
//! lab's own): nodes on its hosts, and its faults with a panic instead of an error.
//!
//! Where namespaces cannot be made (not root, no `ip`, no `nft`), [`NetLab::for_test`] prints
//! SKIPPED and the test returns; with `MESHSYNC_REQUIRE_NETNS=1` (as CI sets it) it fails instead.

use std::ops::Deref;

use meshsync::lab::netns::Lan;

use super::{Mesh, Node};

/// Set to require the namespace tests to run rather than skip.
pub const REQUIRE_ENV: &str = "MESHSYNC_REQUIRE_NETNS";

/// A namespace LAN for a test; deleted on drop.
pub struct NetLab {
    lan: Lan,
}

impl Deref for NetLab {
    type Target = Lan;

    fn deref(&self) -> &Lan {
        &self.lan
    }
}

impl NetLab {
    /// A LAN for the test `test`, or `None` (after printing SKIPPED) where one cannot be built
    /// and [`REQUIRE_ENV`] is not set. `nft` is checked up front when the test needs faults.
    pub fn for_test(test: &str, hosts: usize, needs_nft: bool) -> Option<NetLab> {
        let lab = Lan::create(hosts).and_then(|lan| {
            if needs_nft {
                Lan::nft_available()?;
            }
            Ok(NetLab { lan })
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

    /// A node on host `i` with mDNS off, listening on the host's address; `extra` goes to
    /// `init`. Not started.
    pub fn node(&self, i: usize, extra: &[&str]) -> Node {
        let listen = format!("/ip4/{}/tcp/0", self.address(i));
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

    /// [`Lan::partition`], or a panic.
    pub fn partition(&self, groups: &[&[usize]]) {
        self.lan.partition(groups).expect("partition");
    }

    /// [`Lan::loss`], or a panic.
    pub fn loss(&self, host: usize, percent: u32) {
        self.lan.loss(host, percent).expect("loss");
    }

    /// [`Lan::rate`], or a panic.
    pub fn rate(&self, host: usize, kbit: u32) {
        self.lan.rate(host, kbit).expect("tc tbf");
    }
}
