//! Connections opening and closing: the trusted-peers check, the peer book and `NetEvent`s kept
//! up to date, and duplicate connections to one peer closed.
//!
//! Which duplicates to close is decided by [`redundant_connections`], a pure function, so both
//! ends of a pair of crossing dials agree on the survivor without talking about it.

use libp2p::PeerId;
use libp2p::core::ConnectedPoint;
use libp2p::swarm::{ConnectionId, DialError};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::actor::NetActor;
use super::client::NetEvent;
use super::peers::Discovery;
use crate::quiet::and_more;

impl NetActor {
    pub(super) fn on_connection_established(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: ConnectedPoint,
        num_established: u32,
    ) {
        if !self.is_allowed(&peer) {
            warn!(%peer, "refused a connection: not in trusted_peers");
            self.discovered_dials.remove(&connection);
            self.swarm.close_connection(connection);
            return;
        }
        if !self.activity.established(&endpoint, connection) {
            debug!(%peer, "no stream noted for the connection at {endpoint:?}: judged by pings only");
        }
        let dialed = endpoint.is_dialer();
        // Besides our own dials (static, discovered) only Kademlia dials: its lookups connect to
        // the peers they learn about. Static dials are recognised by the peer book.
        let dialed_for = self
            .discovered_dials
            .remove(&connection)
            .or(dialed.then_some(Discovery::Kad));
        let remote = endpoint.get_remote_address().clone();
        self.book.connected(
            peer,
            connection,
            remote.clone(),
            dialed,
            dialed_for,
            Instant::now().into_std(),
        );
        let roles = self.connection_roles.entry(peer).or_default();
        roles.push((connection, dialed));
        // A new connection of a peer taken for gone: its old one still closing no longer stands
        // for it, and its hello makes it connected again.
        self.taken_for_gone.remove(&peer);
        self.silence
            .opened(peer, connection, dialed, std::time::Instant::now());
        if num_established == 1 {
            // Said at info once the peer answers our hello (a stranger's connections could
            // fill the log).
            debug!(%peer, "connection up via {remote}");
            self.say_hello(peer);
            self.discover_soon();
        } else {
            self.deduplicate_connections(peer);
        }
    }

    pub(super) fn on_connection_closed(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        num_established: u32,
        cause: Option<libp2p::swarm::ConnectionError>,
    ) {
        self.discovered_dials.remove(&connection);
        self.silence.forget(connection);
        self.activity.closed(connection);
        let ip = self.book.remote_ip(&peer);
        self.book
            .disconnected(peer, connection, Instant::now().into_std());
        if let Some(roles) = self.connection_roles.get_mut(&peer) {
            roles.retain(|(c, _)| *c != connection);
            if roles.is_empty() {
                self.connection_roles.remove(&peer);
            }
        }
        if num_established == 0 {
            self.hello_retries.forget(&peer);
            self.features.forget(&peer);
            self.answered.remove(&peer);
            if !self.taken_for_gone.remove(&peer) {
                let _ = self.events.send(NetEvent::PeerDisconnected(peer));
            }
            let cause = cause.map(|c| format!(": {c}")).unwrap_or_default();
            if self.met.remove(&peer)
                && let Some(unsaid) = self.connection_lines_allowed(ip, "down")
            {
                info!(%peer, "disconnected{cause}{}", and_more(unsaid));
            } else {
                debug!(%peer, "connection closed{cause}");
            }
        }
    }

    /// Whether a connection line (`what`: up or down) for a peer at `ip` may be said at info:
    /// once a minute per remote address, so that one host making up identity after identity
    /// costs a line a minute, not two per identity. `Some(n)`: yes, `n` unsaid since.
    pub(super) fn connection_lines_allowed(
        &mut self,
        ip: Option<std::net::IpAddr>,
        what: &'static str,
    ) -> Option<u64> {
        match ip {
            Some(ip) => self
                .connection_lines
                .allow(&(ip, what), std::time::Instant::now()),
            None => Some(0),
        }
    }

    pub(super) fn on_dial_failed(
        &mut self,
        connection: ConnectionId,
        peer: Option<PeerId>,
        error: &DialError,
    ) {
        self.discovered_dials.remove(&connection);
        let now = Instant::now().into_std();
        self.book.dial_failed(connection, now, &error.to_string());
        debug!(peer = ?peer, "dial failed: {error}");
        // A discovered peer whose dials keep failing is left alone for a while, and taken out
        // of the DHT, whose lookups would otherwise hand it to us again and again. Refusals by
        // our own admission are not failures of the peer's.
        if let Some(peer) = peer
            && !self.book.is_static(&peer)
            && !matches!(error, DialError::Denied { .. })
            && self
                .swarm
                .behaviour_mut()
                .admission
                .shunned
                .dial_failed(peer, now)
        {
            debug!(%peer, "leaving an unreachable peer alone for a while");
            self.swarm.behaviour_mut().kad.remove_peer(&peer);
        }
    }

    /// Keeps one connection per peer (see [`redundant_connections`]).
    fn deduplicate_connections(&mut self, peer: PeerId) {
        let Some(roles) = self.connection_roles.get(&peer) else {
            return;
        };
        for connection in redundant_connections(self.local_id, peer, roles) {
            debug!(%peer, "closing duplicate connection");
            self.swarm.close_connection(connection);
        }
    }
}

/// The connections to `peer` to close so that one stays, given each open one (oldest first) and
/// whether we dialled it.
///
/// Both sides may dial each other at once, and one side may dial twice (a static dial racing a
/// discovery dial). The dialer drops its newer duplicate dials; across directions both keep the
/// one dialled by the peer with the smaller id, so they agree without talking about it.
pub fn redundant_connections(
    local: PeerId,
    peer: PeerId,
    roles: &[(ConnectionId, bool)],
) -> Vec<ConnectionId> {
    let ours: Vec<ConnectionId> = roles.iter().filter(|(_, d)| *d).map(|(c, _)| *c).collect();
    let theirs: Vec<ConnectionId> = roles.iter().filter(|(_, d)| !*d).map(|(c, _)| *c).collect();
    let mut redundant: Vec<ConnectionId> = ours.iter().skip(1).copied().collect();
    if !ours.is_empty() && !theirs.is_empty() {
        if local < peer {
            redundant.extend(&theirs);
        } else {
            redundant.push(ours[0]);
        }
    }
    redundant
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(id: usize) -> ConnectionId {
        ConnectionId::new_unchecked(id)
    }

    /// Two distinct peer ids, the smaller first.
    fn ordered_pair() -> (PeerId, PeerId) {
        let (a, b) = (PeerId::random(), PeerId::random());
        if a < b { (a, b) } else { (b, a) }
    }

    #[test]
    fn one_connection_is_kept() {
        let (small, big) = ordered_pair();
        assert!(redundant_connections(small, big, &[(c(1), true)]).is_empty());
        assert!(redundant_connections(small, big, &[(c(1), false)]).is_empty());
    }

    #[test]
    fn newer_own_dials_are_dropped() {
        let (small, big) = ordered_pair();
        let roles = [(c(1), true), (c(2), true), (c(3), true)];
        assert_eq!(redundant_connections(small, big, &roles), vec![c(2), c(3)]);
    }

    #[test]
    fn crossing_dials_keep_the_smaller_ids_dial_on_both_sides() {
        let (small, big) = ordered_pair();
        // Connection 1 was dialled by `small`, connection 2 by `big`. Each side sees the other
        // direction; both must close connection 2.
        let at_small = redundant_connections(small, big, &[(c(1), true), (c(2), false)]);
        let at_big = redundant_connections(big, small, &[(c(1), false), (c(2), true)]);
        assert_eq!(at_small, vec![c(2)]);
        assert_eq!(at_big, vec![c(2)]);
    }

    #[test]
    fn inbound_duplicates_alone_are_left_to_the_dialer() {
        let (small, big) = ordered_pair();
        assert!(redundant_connections(small, big, &[(c(1), false), (c(2), false)]).is_empty());
    }
}
