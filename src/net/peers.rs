//! Book-keeping about peers: how each was found, where it can be reached, and when a static peer
//! is due to be dialled again.
//!
//! Pure state with no I/O, so the backoff and discovery rules are unit-tested without sockets;
//! the network actor asks it what to do and tells it what happened.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use libp2p::swarm::ConnectionId;
use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};

use crate::backoff::Backoff;

/// First wait before redialling a static peer that dropped or could not be reached.
pub const REDIAL_BACKOFF_MIN: Duration = Duration::from_millis(250);
/// Longest wait between redials of a static peer, so a returning peer is found within this.
pub const REDIAL_BACKOFF_MAX: Duration = Duration::from_secs(10);
/// A static peer's last connection that closed sooner than this after it opened was refused
/// (the peer closed it as a duplicate of one it still holds, or would not keep it): its next
/// dial waits at least [`REFUSED_REDIAL_WAIT`], and the backoff is not reset.
pub const SHORT_LIVED: Duration = Duration::from_secs(5);
/// The least wait after a refused connection: longer than the liveness rule's 10 s. A peer
/// that holds a stale connection to us (its close lost on a lossy link) closes each new one as
/// its duplicate until it finds the stale one dead; redialling every second or two meanwhile
/// was a storm of handshakes, and (while bytes counted per peer, not per connection) kept the
/// stale connection "heard": a 30 % loss run stalled for minutes that way.
pub const REFUSED_REDIAL_WAIT: Duration = Duration::from_secs(15);
/// First pause between Kademlia lookups of our own id (which is how we find more peers); it
/// doubles after each lookup up to [`DISCOVERY_INTERVAL_MAX`] and drops back when peers appear.
pub const DISCOVERY_INTERVAL_MIN: Duration = Duration::from_millis(500);
/// Longest pause between Kademlia lookups. Long: a lookup asks about 20 peers, and in a
/// settled mesh finds nobody new (every 60 s over 32 daemons cost 1 % of a core in all);
/// members that went missing are looked for by the engine's provider lookups, every minute.
pub const DISCOVERY_INTERVAL_MAX: Duration = Duration::from_secs(600);

/// Addresses remembered per peer; more are dropped oldest-first, so a peer cannot grow our memory.
pub const MAX_ADDRS_PER_PEER: usize = 16;
/// Peers remembered that are not connected, at most: past it a newly found one takes the place
/// of one neither connected nor a static target (or is not recorded, if there is none).
/// Connected peers are always recorded; they are bounded by the swarm's connection limits.
pub const MAX_KNOWN_PEERS: usize = 4096;

/// How we first learned about a peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Discovery {
    /// Configured in `peers` (or added with `peer add`).
    Static,
    /// A Kademlia bootstrap peer from the config.
    Bootstrap,
    /// Seen through multicast DNS on the local network.
    Mdns,
    /// Learned from the Kademlia DHT.
    Kad,
    /// It connected to us before we knew it.
    Inbound,
}

/// One open connection.
#[derive(Debug, Clone)]
pub struct OpenConnection {
    /// The remote address.
    pub remote: Multiaddr,
    /// Why it exists: the discovery we dialled it for, or [`Discovery::Inbound`].
    pub via: Discovery,
}

/// What we know about one peer.
#[derive(Debug, Clone)]
pub struct KnownPeer {
    /// How it was first found.
    pub found_by: Discovery,
    /// Addresses it can be dialled at, newest last.
    pub addrs: Vec<Multiaddr>,
    /// Open connections, oldest first.
    pub connections: BTreeMap<ConnectionId, OpenConnection>,
    /// Agent string from its hello, once received.
    pub agent: Option<String>,
    /// Device name from its hello, if it has one.
    pub name: Option<String>,
    /// Last measured round-trip time.
    pub rtt: Option<Duration>,
    /// How far its clock is ahead of ours (negative: behind), in milliseconds, from the hello.
    pub clock_offset_ms: Option<i64>,
    /// When `clock_offset_ms` was measured.
    pub clock_measured: Option<Instant>,
    /// The measurement before that, to tell a drifting clock from a steady one.
    pub clock_previous_ms: Option<i64>,
}

impl KnownPeer {
    /// A peer just found, by `how`.
    fn found(how: Discovery) -> KnownPeer {
        KnownPeer {
            found_by: how,
            addrs: Vec::new(),
            connections: BTreeMap::new(),
            agent: None,
            name: None,
            rtt: None,
            clock_offset_ms: None,
            clock_measured: None,
            clock_previous_ms: None,
        }
    }
}

/// A configured address to keep a connection to.
#[derive(Debug, Clone)]
struct StaticTarget {
    addr: Multiaddr,
    /// Known from `/p2p/` or learned on the first connection.
    peer_id: Option<PeerId>,
    /// Wait before the next redial after a failure or a drop.
    backoff: Backoff,
    next_dial: Option<Instant>,
    dialing: Option<ConnectionId>,
    /// When its peer's current connection opened.
    connected_at: Option<Instant>,
    /// Dials failed in a row, and why the last one did.
    failures: u32,
    last_error: Option<String>,
}

/// A configured static peer, for status: whether it is connected, and if not why and when it
/// is dialled next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StaticPeerStatus {
    /// The configured address.
    pub addr: String,
    /// Whether its peer is connected now.
    pub connected: bool,
    /// Dials that failed in a row (0 once connected).
    pub failed_dials: u32,
    /// Why the last dial failed, while it is not connected.
    pub last_error: Option<String>,
    /// Milliseconds until the next dial, while it is not connected and none is running.
    pub next_dial_in_ms: Option<u64>,
}

/// All peer state of one node.
#[derive(Debug, Default)]
pub struct PeerBook {
    peers: HashMap<PeerId, KnownPeer>,
    statics: Vec<StaticTarget>,
}

impl PeerBook {
    /// Adds a static target to dial now; returns false if the address is already a target.
    pub fn add_static(&mut self, addr: Multiaddr, now: Instant) -> bool {
        if self.statics.iter().any(|s| s.addr == addr) {
            return false;
        }
        let peer_id = crate::config::peer_id_of(&addr);
        self.statics.push(StaticTarget {
            addr,
            peer_id,
            backoff: Backoff::new(REDIAL_BACKOFF_MIN, REDIAL_BACKOFF_MAX),
            connected_at: None,
            next_dial: Some(now),
            dialing: None,
            failures: 0,
            last_error: None,
        });
        true
    }

    /// Stops dialling the static targets `matches` picks (by address and known peer id);
    /// returns their addresses.
    pub fn remove_static(
        &mut self,
        matches: impl Fn(&Multiaddr, Option<&PeerId>) -> bool,
    ) -> Vec<Multiaddr> {
        let mut removed = Vec::new();
        self.statics.retain(|s| {
            let hit = matches(&s.addr, s.peer_id.as_ref());
            if hit {
                removed.push(s.addr.clone());
            }
            !hit
        });
        removed
    }

    /// Static addresses due for a dial at `now` whose peer is not connected. The caller dials each
    /// and reports the connection id with [`PeerBook::static_dialing`].
    pub fn due_static_dials(&self, now: Instant) -> Vec<(usize, Multiaddr)> {
        self.statics
            .iter()
            .enumerate()
            .filter(|(_, s)| self.waits_for_dial(s) && s.next_dial.is_some_and(|t| t <= now))
            .map(|(i, s)| (i, s.addr.clone()))
            .collect()
    }

    /// Whether static target `s` may be dialled when its time comes: no dial of it is out and
    /// its peer, if known, is not connected. [`PeerBook::next_static_due`] and
    /// [`PeerBook::due_static_dials`] both ask this, so a due time always has a dial behind it
    /// (the redial timer wakes at the one and dials the other: a due time with nothing to dial
    /// woke it again at once, for as long as the peer stayed connected).
    fn waits_for_dial(&self, s: &StaticTarget) -> bool {
        s.dialing.is_none() && !s.peer_id.is_some_and(|p| self.is_connected(&p))
    }

    /// Records that static target `index` is being dialled on `connection`.
    pub fn static_dialing(&mut self, index: usize, connection: ConnectionId) {
        if let Some(s) = self.statics.get_mut(index) {
            s.dialing = Some(connection);
            s.next_dial = None;
        }
    }

    /// A dial of ours failed (with `error`); if it was a static target, schedule the next try
    /// with backoff, unless its peer is connected meanwhile (its own dial came first): then
    /// the redial is scheduled when that connection closes.
    pub fn dial_failed(&mut self, connection: ConnectionId, now: Instant, error: &str) {
        let peers = &self.peers;
        for s in self
            .statics
            .iter_mut()
            .filter(|s| s.dialing == Some(connection))
        {
            s.dialing = None;
            let connected = s
                .peer_id
                .and_then(|p| peers.get(&p))
                .is_some_and(|p| !p.connections.is_empty());
            s.next_dial = (!connected).then(|| now + s.backoff.next());
            s.failures += 1;
            s.last_error = Some(error.chars().take(300).collect());
        }
    }

    /// Every static peer's state, for status.
    pub fn static_status(&self, now: Instant) -> Vec<StaticPeerStatus> {
        self.statics
            .iter()
            .map(|s| {
                let connected = s.peer_id.is_some_and(|p| self.is_connected(&p));
                StaticPeerStatus {
                    addr: s.addr.to_string(),
                    connected,
                    failed_dials: s.failures,
                    last_error: s.last_error.clone().filter(|_| !connected),
                    next_dial_in_ms: s
                        .next_dial
                        .filter(|_| !connected)
                        .map(|t| t.saturating_duration_since(now).as_millis() as u64),
                }
            })
            .collect()
    }

    /// Notes the static peer ids, if `peer` matches a static address; returns whether it is static.
    fn bind_static(&mut self, connection: ConnectionId, peer: PeerId, now: Instant) -> bool {
        let mut is_static = false;
        for s in &mut self.statics {
            if s.dialing == Some(connection) {
                s.dialing = None;
                s.peer_id.get_or_insert(peer);
            }
            if s.peer_id == Some(peer) {
                // The backoff is reset when the connection proves to last (see `disconnected`).
                s.connected_at.get_or_insert(now);
                s.next_dial = None;
                s.failures = 0;
                s.last_error = None;
                is_static = true;
            }
        }
        is_static
    }

    /// Records a discovered peer and its addresses. Returns true if it is not connected and
    /// should be considered for dialling.
    pub fn discovered(&mut self, peer: PeerId, addrs: &[Multiaddr], how: Discovery) -> bool {
        if !self.peers.contains_key(&peer) && !self.make_room() {
            return false;
        }
        let entry = self
            .peers
            .entry(peer)
            .or_insert_with(|| KnownPeer::found(how));
        for addr in addrs {
            remember_addr(&mut entry.addrs, addr);
        }
        entry.connections.is_empty()
    }

    /// Makes room for one more peer in a full book by forgetting one that is neither connected
    /// nor a static target; false if there is none. A flood of made-up ids then only displaces
    /// other peers we are not talking to.
    fn make_room(&mut self) -> bool {
        if self.peers.len() < MAX_KNOWN_PEERS {
            return true;
        }
        let statics: BTreeSet<PeerId> = self.statics.iter().filter_map(|s| s.peer_id).collect();
        let spare = self
            .peers
            .iter()
            .find(|(id, p)| p.connections.is_empty() && !statics.contains(id))
            .map(|(id, _)| *id);
        spare.is_some_and(|id| self.peers.remove(&id).is_some())
    }

    /// A connection is up. `dialed_for` is the discovery that made us dial it (`None` for
    /// inbound connections and static dials), so status can show why each connection exists.
    pub fn connected(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        remote: Multiaddr,
        dialed: bool,
        dialed_for: Option<Discovery>,
        now: Instant,
    ) {
        let via = if self.bind_static(connection, peer, now) {
            // Bootstrap peers are dialled as static ones, but were configured as bootstrap.
            match self.peers.get(&peer) {
                Some(known) if known.found_by == Discovery::Bootstrap => Discovery::Bootstrap,
                _ => Discovery::Static,
            }
        } else {
            dialed_for.unwrap_or(Discovery::Inbound)
        };
        self.discovered(peer, &[], via);
        // Recorded even in a full book: connected peers are bounded by the swarm's connection
        // limits, and one left out was never redialled (a static peer) nor shown connected.
        let entry = self
            .peers
            .entry(peer)
            .or_insert_with(|| KnownPeer::found(via));
        if dialed {
            remember_addr(&mut entry.addrs, &remote);
        }
        entry
            .connections
            .insert(connection, OpenConnection { remote, via });
    }

    /// A connection closed; when it was the peer's last and the peer is static, a redial is
    /// scheduled.
    pub fn disconnected(&mut self, peer: PeerId, connection: ConnectionId, now: Instant) {
        let Some(entry) = self.peers.get_mut(&peer) else {
            return;
        };
        entry.connections.remove(&connection);
        if !entry.connections.is_empty() {
            return;
        }
        entry.rtt = None;
        for s in self.statics.iter_mut().filter(|s| s.peer_id == Some(peer)) {
            let lasted = s
                .connected_at
                .take()
                .map(|at| now.saturating_duration_since(at));
            let refused = lasted.is_some_and(|d| d < SHORT_LIVED);
            if lasted.is_some() && !refused {
                s.backoff.reset();
            }
            if s.dialing.is_none() && s.next_dial.is_none() {
                let wait = s.backoff.next();
                let wait = if refused {
                    wait.max(REFUSED_REDIAL_WAIT)
                } else {
                    wait
                };
                s.next_dial = Some(now + wait);
            }
        }
    }

    /// The remote IP address of one of `peer`'s open connections.
    pub fn remote_ip(&self, peer: &PeerId) -> Option<std::net::IpAddr> {
        let connection = self.peers.get(peer)?.connections.values().next()?;
        connection.remote.iter().find_map(|p| match p {
            libp2p::multiaddr::Protocol::Ip4(ip) => Some(ip.into()),
            libp2p::multiaddr::Protocol::Ip6(ip) => Some(ip.into()),
            _ => None,
        })
    }

    /// Whether any connection to `peer` is open.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.peers
            .get(peer)
            .is_some_and(|p| !p.connections.is_empty())
    }

    /// Whether `peer` is a static target; those are dialled by the static redial loop only.
    pub fn is_static(&self, peer: &PeerId) -> bool {
        self.statics
            .iter()
            .any(|s| s.peer_id.as_ref() == Some(peer))
    }

    /// Number of connected peers that were found by mDNS or Kademlia (the auto-dial budget).
    pub fn connected_discovered(&self) -> usize {
        self.peers
            .values()
            .filter(|p| !p.connections.is_empty())
            .filter(|p| matches!(p.found_by, Discovery::Mdns | Discovery::Kad))
            .count()
    }

    /// Known dialable addresses of a peer.
    pub fn addrs(&self, peer: &PeerId) -> Vec<Multiaddr> {
        self.peers
            .get(peer)
            .map(|p| p.addrs.clone())
            .unwrap_or_default()
    }

    /// Records what a peer said in its hello.
    /// The agent of `peer`'s hello, once received.
    pub fn agent(&self, peer: &PeerId) -> Option<String> {
        self.peers.get(peer)?.agent.clone()
    }

    /// The device name `peer` said in its hello, if any.
    pub fn name(&self, peer: &PeerId) -> Option<String> {
        self.peers.get(peer)?.name.clone()
    }

    /// Records the agent and device name of `peer`'s hello.
    pub fn set_agent(&mut self, peer: &PeerId, agent: String, name: Option<String>) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.agent = Some(agent);
            p.name = name;
        }
    }

    /// Records how far `peer`'s clock is ahead of ours.
    pub fn set_clock_offset(&mut self, peer: &PeerId, offset_ms: i64, now: Instant) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.clock_previous_ms = p.clock_offset_ms.replace(offset_ms);
            p.clock_measured = Some(now);
        }
    }

    /// Whether `peer`'s clock is due to be measured again at `now`. It is settled when its
    /// last two measurements are both within `settled_within` of ours and within
    /// `settled_within` / 4 of each other (not drifting); a settled clock is due once
    /// `settled_every` has passed since its last measurement, any other at every check.
    pub fn clock_check_due(
        &self,
        peer: &PeerId,
        settled_within: Duration,
        settled_every: Duration,
        now: Instant,
    ) -> bool {
        let Some(p) = self.peers.get(peer) else {
            return true;
        };
        let within = settled_within.as_millis() as u64;
        let settled = match (p.clock_previous_ms, p.clock_offset_ms) {
            (Some(before), Some(offset)) => {
                offset.unsigned_abs() <= within
                    && before.unsigned_abs() <= within
                    && offset.abs_diff(before) <= within / 4
            }
            _ => false,
        };
        match p.clock_measured {
            Some(at) if settled => now.saturating_duration_since(at) >= settled_every,
            _ => true,
        }
    }

    /// Records a ping round-trip time.
    pub fn set_rtt(&mut self, peer: &PeerId, rtt: Duration) {
        if let Some(p) = self.peers.get_mut(peer) {
            p.rtt = Some(rtt);
        }
    }

    /// Connected peers, sorted by id for stable output.
    pub fn connected_peers(&self) -> BTreeMap<PeerId, &KnownPeer> {
        self.peers
            .iter()
            .filter(|(_, p)| !p.connections.is_empty())
            .map(|(id, p)| (*id, p))
            .collect()
    }

    /// The static addresses, for status output.
    pub fn static_addrs(&self) -> BTreeSet<Multiaddr> {
        self.statics.iter().map(|s| s.addr.clone()).collect()
    }

    /// The earliest time a static dial is due, so the actor can sleep until then.
    pub fn next_static_due(&self) -> Option<Instant> {
        self.statics
            .iter()
            .filter(|s| self.waits_for_dial(s))
            .filter_map(|s| s.next_dial)
            .min()
    }
}

fn remember_addr(addrs: &mut Vec<Multiaddr>, addr: &Multiaddr) {
    addrs.retain(|a| a != addr);
    addrs.push(addr.clone());
    if addrs.len() > MAX_ADDRS_PER_PEER {
        addrs.remove(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(port: u16) -> Multiaddr {
        format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap()
    }

    #[test]
    fn a_steady_clock_is_measured_rarely_a_wrong_or_drifting_one_at_every_check() {
        let (within, every) = (Duration::from_secs(1), Duration::from_secs(300));
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        let (steady, wrong, drifting) = (PeerId::random(), PeerId::random(), PeerId::random());
        for peer in [steady, wrong, drifting] {
            book.discovered(peer, &[addr(1)], Discovery::Mdns);
            assert!(
                book.clock_check_due(&peer, within, every, t0),
                "never measured"
            );
        }
        let t1 = t0 + Duration::from_secs(30);
        for (peer, first, second) in [
            (steady, 20, -35),
            (wrong, 200_000, 200_010),
            (drifting, 300, 900),
        ] {
            book.set_clock_offset(&peer, first, t0);
            assert!(
                book.clock_check_due(&peer, within, every, t1),
                "one measurement settles nothing"
            );
            book.set_clock_offset(&peer, second, t1);
        }
        let t2 = t1 + Duration::from_secs(30);
        assert!(!book.clock_check_due(&steady, within, every, t2));
        assert!(book.clock_check_due(&steady, within, every, t1 + every));
        assert!(book.clock_check_due(&wrong, within, every, t2), "200 s off");
        assert!(
            book.clock_check_due(&drifting, within, every, t2),
            "600 ms in 30 s"
        );
    }

    /// The redial timer of the net actor sleeps until `next_static_due` and then dials what
    /// `due_static_dials` gives: a due time at which nothing is dialled wakes it at once, again
    /// and again. Seen at 30 % loss: a static peer's redial failed while the peer's own dial
    /// had connected, and the daemon spun a core until the connection closed.
    #[test]
    fn a_static_dial_failing_while_the_peer_is_connected_schedules_nothing() {
        let t0 = Instant::now();
        let peer = PeerId::random();
        let mut book = PeerBook::default();
        book.add_static(addr(1), t0);
        let (first, redial, theirs) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
            ConnectionId::new_unchecked(3),
        );
        book.static_dialing(0, first);
        book.connected(peer, first, addr(1), true, None, t0);
        book.disconnected(peer, first, t0 + Duration::from_secs(60));
        let due = book.next_static_due().expect("a redial is scheduled");
        book.static_dialing(0, redial);
        // The peer dials us while our redial is out; then ours fails.
        book.connected(peer, theirs, addr(2), false, None, due);
        book.dial_failed(redial, due, "handshake failed");
        let later = due + Duration::from_secs(600);
        assert!(book.due_static_dials(later).is_empty(), "it is connected");
        assert_eq!(
            book.next_static_due(),
            None,
            "nothing is due while it is connected"
        );
        // Once that connection closes, it is redialled.
        book.disconnected(peer, theirs, later);
        let due = book.next_static_due().expect("a redial once it is gone");
        assert_eq!(book.due_static_dials(due).len(), 1);
    }

    /// A flood of discovered identities (a DHT full of made-up ids) fills the book; a peer
    /// that then connects must still be recorded, or a static one is never redialled after its
    /// connection closes (and shows as not connected while it is).
    #[test]
    fn a_full_book_still_records_connections_and_redials_static_peers() {
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        for _ in 0..MAX_KNOWN_PEERS {
            book.discovered(PeerId::random(), &[addr(9)], Discovery::Kad);
        }
        book.add_static(addr(1), t0);
        let (peer, connection) = (PeerId::random(), ConnectionId::new_unchecked(1));
        book.static_dialing(0, connection);
        book.connected(peer, connection, addr(1), true, None, t0);
        assert!(book.is_connected(&peer), "the connection is recorded");
        assert!(book.static_status(t0)[0].connected);
        book.disconnected(peer, connection, t0 + Duration::from_secs(60));
        assert!(
            book.next_static_due().is_some(),
            "a static peer is redialled"
        );
        // Newly discovered peers still find room, in place of ones not connected; the book
        // stays bounded.
        let newcomer = PeerId::random();
        assert!(book.discovered(newcomer, &[addr(7)], Discovery::Mdns));
        assert_eq!(book.addrs(&newcomer), [addr(7)]);
        assert!(book.peers.len() <= MAX_KNOWN_PEERS);
        assert_eq!(book.addrs(&peer), [addr(1)], "the static peer is kept");
    }

    #[test]
    fn static_peer_backs_off_then_resets_on_connect() {
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        assert!(book.add_static(addr(1), t0));
        assert!(!book.add_static(addr(1), t0));
        let due = book.due_static_dials(t0);
        assert_eq!(due.len(), 1);
        let c1 = ConnectionId::new_unchecked(1);
        book.static_dialing(0, c1);
        assert!(
            book.due_static_dials(t0).is_empty(),
            "no second dial while one is in flight"
        );
        book.dial_failed(c1, t0, "refused");
        assert!(book.due_static_dials(t0).is_empty());
        assert_eq!(book.due_static_dials(t0 + REDIAL_BACKOFF_MIN).len(), 1);
        let c2 = ConnectionId::new_unchecked(2);
        book.static_dialing(0, c2);
        book.dial_failed(c2, t0, "refused");
        assert!(
            book.due_static_dials(t0 + REDIAL_BACKOFF_MIN).is_empty(),
            "backoff doubled"
        );
        assert_eq!(book.due_static_dials(t0 + REDIAL_BACKOFF_MIN * 2).len(), 1);
        let status = &book.static_status(t0)[0];
        assert_eq!(
            (
                status.connected,
                status.failed_dials,
                status.last_error.as_deref()
            ),
            (false, 2, Some("refused")),
            "failures are visible in status"
        );
        assert_eq!(
            status.next_dial_in_ms,
            Some((REDIAL_BACKOFF_MIN * 2).as_millis() as u64)
        );

        let c3 = ConnectionId::new_unchecked(3);
        let peer = PeerId::random();
        book.static_dialing(0, c3);
        book.connected(peer, c3, addr(1), true, None, t0);
        assert!(book.is_connected(&peer));
        let status = &book.static_status(t0)[0];
        assert_eq!(
            (
                status.connected,
                status.failed_dials,
                status.last_error.as_deref()
            ),
            (true, 0, None)
        );
        assert_eq!(
            book.connected_peers()[&peer].connections[&c3].via,
            Discovery::Static
        );
        let later = t0 + SHORT_LIVED;
        book.disconnected(peer, c3, later);
        assert_eq!(
            book.due_static_dials(later + REDIAL_BACKOFF_MIN).len(),
            1,
            "backoff was reset by the connection that lasted"
        );
    }

    /// A connection the peer closes as soon as it opened (it keeps a stale one of its own to
    /// us, whose close it never heard) is not dialled again for longer than the liveness rule
    /// takes to find that stale one dead; dialling every ~2 s kept it "heard" for minutes.
    #[test]
    fn a_static_peer_that_closes_new_connections_at_once_is_redialled_after_the_liveness_rule() {
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        book.add_static(addr(1), t0);
        let peer = PeerId::random();
        let mut now = t0;
        for i in 0..3 {
            let c = ConnectionId::new_unchecked(i);
            book.static_dialing(0, c);
            book.connected(peer, c, addr(1), true, None, now);
            now += Duration::from_millis(2);
            book.disconnected(peer, c, now);
            assert!(
                book.due_static_dials(now + REFUSED_REDIAL_WAIT - Duration::from_millis(1))
                    .is_empty(),
                "dial {i} refused: no redial within the liveness rule"
            );
            assert!(REFUSED_REDIAL_WAIT > super::super::LIVENESS_TIMEOUT);
            now += REFUSED_REDIAL_WAIT;
            assert_eq!(book.due_static_dials(now).len(), 1);
        }
    }

    #[test]
    fn backoff_is_capped() {
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        book.add_static(addr(1), t0);
        for i in 0..40 {
            let c = ConnectionId::new_unchecked(i);
            book.static_dialing(0, c);
            book.dial_failed(c, t0, "refused");
        }
        assert_eq!(book.due_static_dials(t0 + REDIAL_BACKOFF_MAX).len(), 1);
    }

    #[test]
    fn discovery_source_is_kept_and_addresses_bounded() {
        let mut book = PeerBook::default();
        let peer = PeerId::random();
        let many: Vec<_> = (0..100).map(addr).collect();
        assert!(book.discovered(peer, &many, Discovery::Mdns));
        assert_eq!(book.addrs(&peer).len(), MAX_ADDRS_PER_PEER);
        book.discovered(peer, &[], Discovery::Kad);
        let c = ConnectionId::new_unchecked(7);
        book.connected(peer, c, addr(5), true, Some(Discovery::Kad), Instant::now());
        assert_eq!(
            book.connected_peers()[&peer].found_by,
            Discovery::Mdns,
            "first learned"
        );
        assert_eq!(
            book.connected_peers()[&peer].connections[&c].via,
            Discovery::Kad,
            "dialled for"
        );
        assert_eq!(book.connected_discovered(), 1);
        assert!(
            !book.discovered(peer, &[], Discovery::Kad),
            "connected peers need no dial"
        );
    }

    #[test]
    fn a_bootstrap_peer_is_shown_as_one_though_dialled_as_static() {
        let t0 = Instant::now();
        let mut book = PeerBook::default();
        let peer = PeerId::random();
        let boot: Multiaddr = format!("/ip4/127.0.0.1/tcp/9/p2p/{peer}").parse().unwrap();
        book.discovered(peer, std::slice::from_ref(&boot), Discovery::Bootstrap);
        book.add_static(boot, t0);
        let c = ConnectionId::new_unchecked(1);
        book.static_dialing(0, c);
        book.connected(peer, c, addr(9), true, None, t0);
        assert_eq!(
            book.connected_peers()[&peer].connections[&c].via,
            Discovery::Bootstrap
        );
    }
}
