//! Finding peers and dialling them: static and bootstrap peers (redialled with backoff by the
//! peer book), addresses from share tokens, mDNS, identify, and Kademlia (periodic lookups of
//! our own id, provider records).
//!
//! Every address learnt, whatever its source, goes through [`NetActor::on_discovered`], which
//! feeds Kademlia and dials within the auto-dial budget (`max_discovered_peers`).

use std::collections::HashMap;

use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::{Multiaddr, PeerId, StreamProtocol, Swarm, identify, kad};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::NetConfig;
use super::actor::NetActor;
use super::client::NetEvent;
use super::peers::{self, Discovery, PeerBook};
use super::protocol::PROTOCOL;
use super::swarm::{Behaviour, KAD_PROTOCOL};

/// The peer book at start: configured static peers and bootstrap peers, whose addresses also go
/// into Kademlia.
pub(super) fn seed(swarm: &mut Swarm<Behaviour>, config: &NetConfig) -> PeerBook {
    let now = Instant::now().into_std();
    let mut book = PeerBook::default();
    for addr in &config.peers {
        book.add_static(addr.clone(), now);
        if let Some(peer) = crate::config::peer_id_of(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
    }
    for boot in &config.bootstrap {
        swarm
            .behaviour_mut()
            .kad
            .add_address(&boot.peer_id, boot.addr.clone());
        book.discovered(
            boot.peer_id,
            std::slice::from_ref(&boot.addr),
            Discovery::Bootstrap,
        );
        book.add_static(boot.addr.clone(), now);
    }
    book
}

impl NetActor {
    /// Adds a static peer and dials whatever static peers are due; returns whether it is new.
    pub(super) fn add_static_peer(&mut self, addr: Multiaddr) -> bool {
        let added = self
            .book
            .add_static(addr.clone(), Instant::now().into_std());
        if let Some(peer) = crate::config::peer_id_of(&addr) {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        self.dial_due_statics();
        added
    }

    pub(super) fn dial_due_statics(&mut self) {
        let now = Instant::now().into_std();
        for (index, addr) in self.book.due_static_dials(now) {
            let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
            let connection = opts.connection_id();
            self.book.static_dialing(index, connection);
            if let Err(e) = self.swarm.dial(opts) {
                debug!("cannot dial static peer {addr}: {e}");
                self.book.dial_failed(connection, now, &e.to_string());
            }
        }
    }

    /// Dials addresses (from a share token) once, as discovered peers.
    pub(super) fn dial_once(&mut self, addrs: Vec<Multiaddr>) {
        for addr in addrs {
            if let Some(peer) = crate::config::peer_id_of(&addr) {
                self.on_discovered(peer, std::slice::from_ref(&addr), Discovery::Static);
            }
        }
    }

    pub(super) fn start_providing(&mut self, key: &[u8]) {
        if let Err(e) = self
            .swarm
            .behaviour_mut()
            .kad
            .start_providing(kad::RecordKey::new(&key))
        {
            warn!("cannot announce a provider record: {e}");
        }
    }

    pub(super) fn find_providers(&mut self, key: &[u8]) {
        self.swarm
            .behaviour_mut()
            .kad
            .get_providers(kad::RecordKey::new(&key));
    }

    pub(super) fn on_discovery_timer(&mut self) {
        // Looking up our own id walks the DHT towards us and returns the peers closest to us;
        // in a small mesh that is everyone, which is how a node that only knows one peer meets
        // the rest.
        self.swarm
            .behaviour_mut()
            .kad
            .get_closest_peers(self.local_id);
        self.next_discovery = Instant::now() + self.discovery.next();
    }

    /// Brings the next lookup forward, because the set of peers just changed.
    pub(super) fn discover_soon(&mut self) {
        // The soon lookup takes the shortest pause; the one after it waits twice that.
        self.discovery.reset();
        let soon = Instant::now() + self.discovery.next();
        self.next_discovery = self.next_discovery.min(soon);
    }

    /// Records addresses of `peer`, feeds them to Kademlia, and dials it if it is new and the
    /// auto-dial budget allows.
    pub(super) fn on_discovered(&mut self, peer: PeerId, addrs: &[Multiaddr], how: Discovery) {
        if peer == self.local_id || !self.is_allowed(&peer) || self.is_shunned(&peer) {
            return;
        }
        for addr in addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        if !self.book.discovered(peer, addrs, how) || self.book.is_static(&peer) {
            return;
        }
        let budget_used = self.book.connected_discovered() + self.discovered_dials.len();
        if budget_used >= self.max_discovered_peers || self.swarm.is_connected(&peer) {
            return;
        }
        let known = self.book.addrs(&peer);
        if known.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(known)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                debug!(%peer, via = ?how, "dialling discovered peer");
                self.discovered_dials.insert(connection, how);
            }
            Err(e) => debug!(%peer, "not dialling discovered peer: {e}"),
        }
    }

    /// A peer told us (identify) where it listens.
    pub(super) fn on_identified(&mut self, peer: PeerId, info: identify::Info) {
        let speaks = |p: &StreamProtocol| info.protocols.contains(p);
        if !speaks(&KAD_PROTOCOL) || !speaks(&PROTOCOL) {
            // Not a meshsync peer (a plain libp2p node, say): not for our DHT, not to be
            // dialled again, and nothing to keep a connection for.
            self.leave_foreign_peer_alone(peer, "it does not speak meshsync");
            return;
        }
        let addrs: Vec<Multiaddr> = info
            .listen_addrs
            .into_iter()
            .take(peers::MAX_ADDRS_PER_PEER)
            .collect();
        self.on_discovered(peer, &addrs, Discovery::Inbound);
    }

    /// Whether `peer` is left alone now ([`super::shunned`]).
    pub(super) fn is_shunned(&self, peer: &PeerId) -> bool {
        let now = Instant::now().into_std();
        self.swarm
            .behaviour()
            .admission
            .shunned
            .why(peer, now)
            .is_some()
    }

    /// Leaves a peer that does not speak meshsync alone: out of the DHT, disconnected, not
    /// dialled or let in for [`super::shunned::FOREIGN_PEER_BACKOFF`]. Said once (debug).
    pub(super) fn leave_foreign_peer_alone(&mut self, peer: PeerId, why: &str) {
        let now = Instant::now().into_std();
        let behaviour = self.swarm.behaviour_mut();
        if behaviour.admission.shunned.foreign(peer, now) {
            debug!(%peer, "leaving a peer alone: {why}");
        }
        behaviour.kad.remove_peer(&peer);
        let _ = self.swarm.disconnect_peer_id(peer);
    }

    pub(super) fn on_kad_event(&mut self, event: kad::Event) {
        match event {
            kad::Event::RoutingUpdated {
                peer, addresses, ..
            } => {
                let addrs = addresses.into_vec();
                self.on_discovered(peer, &addrs, Discovery::Kad);
            }
            kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(Ok(found)),
                ..
            } => {
                for info in found.peers {
                    self.on_discovered(info.peer_id, &info.addrs, Discovery::Kad);
                }
            }
            kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                        key,
                        providers,
                    })),
                ..
            } => self.on_providers_found(key, providers),
            _ => {}
        }
    }

    /// Dials the providers of `key` we are not connected to, and reports them.
    fn on_providers_found(
        &mut self,
        key: kad::RecordKey,
        providers: std::collections::HashSet<PeerId>,
    ) {
        let peers: Vec<PeerId> = providers
            .into_iter()
            .filter(|p| *p != self.local_id)
            .collect();
        for peer in &peers {
            if !self.swarm.is_connected(peer) {
                let opts = DialOpts::peer_id(*peer)
                    .condition(PeerCondition::DisconnectedAndNotDialing)
                    .build();
                let connection = opts.connection_id();
                if self.swarm.dial(opts).is_ok() {
                    self.discovered_dials.insert(connection, Discovery::Kad);
                }
            }
        }
        let _ = self.events.send(NetEvent::ProvidersFound {
            key: key.to_vec(),
            peers,
        });
    }

    pub(super) fn on_mdns_discovered(&mut self, list: Vec<(PeerId, Multiaddr)>) {
        for (peer, addrs) in group_by_peer(list) {
            debug!(%peer, "found by mDNS");
            self.on_discovered(peer, &addrs, Discovery::Mdns);
        }
    }
}

/// mDNS reports one `(peer, address)` pair per address; discovery wants each peer once with all
/// its addresses, in the order they came.
pub fn group_by_peer(list: Vec<(PeerId, Multiaddr)>) -> HashMap<PeerId, Vec<Multiaddr>> {
    let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
    for (peer, addr) in list {
        by_peer.entry(peer).or_default().push(addr);
    }
    by_peer
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mdns_addresses_are_grouped_per_peer_in_order() {
        let (a, b) = (PeerId::random(), PeerId::random());
        let addr =
            |port: u16| -> Multiaddr { format!("/ip4/10.0.0.1/tcp/{port}").parse().unwrap() };
        let grouped = group_by_peer(vec![(a, addr(1)), (b, addr(2)), (a, addr(3))]);
        assert_eq!(grouped.len(), 2);
        assert_eq!(grouped[&a], vec![addr(1), addr(3)]);
        assert_eq!(grouped[&b], vec![addr(2)]);
    }
}
