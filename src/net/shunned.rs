//! Peers we neither dial nor keep in the DHT for a while, pure and unit-tested: peers that do
//! not speak meshsync (identify lists neither our sync nor our Kademlia protocol, or they refuse
//! our hello), and discovered peers that failed [`MAX_DIAL_FAILURES`] dials in a row. Without
//! this, every such peer that identify, Kademlia or a lookup answer mentions was dialled again
//! about every 500 ms for as long as the daemon ran.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;

/// How long a peer that does not speak meshsync is left alone.
pub const FOREIGN_PEER_BACKOFF: Duration = Duration::from_secs(6 * 3600);
/// Dials of a discovered peer that fail in a row before it is left alone.
pub const MAX_DIAL_FAILURES: u32 = 3;
/// How long an unreachable peer is left alone the first time; doubled each time after, up to
/// [`FOREIGN_PEER_BACKOFF`].
pub const UNREACHABLE_BACKOFF: Duration = Duration::from_secs(600);
/// Peers remembered at most (expired ones go first, then the soonest to expire).
pub const MAX_SHUNNED: usize = 4096;

/// Why a peer is left alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Why {
    /// It does not speak meshsync.
    Foreign,
    /// Its dials kept failing.
    Unreachable,
}

#[derive(Debug, Clone)]
struct Entry {
    failures: u32,
    times_shunned: u32,
    until: Option<(Instant, Why)>,
}

/// The peers left alone, and dial failures counted towards it.
#[derive(Debug, Default)]
pub struct Shunned {
    peers: HashMap<PeerId, Entry>,
}

impl Shunned {
    /// `peer` does not speak meshsync: left alone for [`FOREIGN_PEER_BACKOFF`]. Returns whether
    /// it was not already.
    pub fn foreign(&mut self, peer: PeerId, now: Instant) -> bool {
        let was = self.why(&peer, now) == Some(Why::Foreign);
        let entry = self.entry(peer, now);
        entry.until = Some((now + FOREIGN_PEER_BACKOFF, Why::Foreign));
        !was
    }

    /// A dial of discovered `peer` failed. Returns true when that makes it left alone now.
    pub fn dial_failed(&mut self, peer: PeerId, now: Instant) -> bool {
        if self.why(&peer, now).is_some() {
            return false;
        }
        let entry = self.entry(peer, now);
        entry.failures += 1;
        if entry.failures < MAX_DIAL_FAILURES {
            return false;
        }
        entry.failures = 0;
        let wait = UNREACHABLE_BACKOFF
            .saturating_mul(1 << entry.times_shunned.min(10))
            .min(FOREIGN_PEER_BACKOFF);
        entry.times_shunned += 1;
        entry.until = Some((now + wait, Why::Unreachable));
        true
    }

    /// A connection to `peer` is up (and it spoke meshsync): its failures are forgotten, and an
    /// unreachable peer is welcome again.
    pub fn connected(&mut self, peer: &PeerId, now: Instant) {
        if self.why(peer, now) != Some(Why::Foreign) {
            self.peers.remove(peer);
        }
    }

    /// Why `peer` is left alone at `now`, if it is.
    pub fn why(&self, peer: &PeerId, now: Instant) -> Option<Why> {
        let (until, why) = self.peers.get(peer)?.until?;
        (now < until).then_some(why)
    }

    /// Peers left alone now.
    pub fn count(&self, now: Instant) -> usize {
        self.peers
            .values()
            .filter(|e| e.until.is_some_and(|(until, _)| now < until))
            .count()
    }

    /// The error a connection to or from a shunned `peer` is refused with.
    pub fn refusal(peer: PeerId) -> std::io::Error {
        std::io::Error::other(format!(
            "{peer} is left alone (not meshsync, or unreachable)"
        ))
    }

    fn entry(&mut self, peer: PeerId, now: Instant) -> &mut Entry {
        if !self.peers.contains_key(&peer) && self.peers.len() >= MAX_SHUNNED {
            self.peers
                .retain(|_, e| e.until.is_some_and(|(until, _)| now < until));
            if self.peers.len() >= MAX_SHUNNED
                && let Some(soonest) = self
                    .peers
                    .iter()
                    .min_by_key(|(_, e)| e.until.map(|(until, _)| until))
                    .map(|(p, _)| *p)
            {
                self.peers.remove(&soonest);
            }
        }
        self.peers.entry(peer).or_insert(Entry {
            failures: 0,
            times_shunned: 0,
            until: None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_foreign_peer_is_left_alone_for_hours_even_if_it_connects() {
        let mut shunned = Shunned::default();
        let (peer, t0) = (PeerId::random(), Instant::now());
        assert!(shunned.foreign(peer, t0));
        assert!(!shunned.foreign(peer, t0), "said once");
        shunned.connected(&peer, t0);
        assert_eq!(
            shunned.why(&peer, t0 + Duration::from_secs(3600)),
            Some(Why::Foreign)
        );
        assert_eq!(shunned.why(&peer, t0 + FOREIGN_PEER_BACKOFF), None);
    }

    #[test]
    fn repeated_dial_failures_shun_with_a_growing_wait_and_a_connection_forgives() {
        let mut shunned = Shunned::default();
        let (peer, t0) = (PeerId::random(), Instant::now());
        for _ in 1..MAX_DIAL_FAILURES {
            assert!(!shunned.dial_failed(peer, t0));
        }
        assert!(shunned.dial_failed(peer, t0));
        assert_eq!(shunned.why(&peer, t0), Some(Why::Unreachable));
        let t1 = t0 + UNREACHABLE_BACKOFF;
        assert_eq!(shunned.why(&peer, t1), None);
        for _ in 0..MAX_DIAL_FAILURES {
            shunned.dial_failed(peer, t1);
        }
        assert_eq!(
            shunned.why(&peer, t1 + UNREACHABLE_BACKOFF),
            Some(Why::Unreachable),
            "twice as long the second time"
        );
        shunned.connected(&peer, t1);
        assert_eq!(shunned.why(&peer, t1), None);
    }

    #[test]
    fn memory_is_bounded() {
        let mut shunned = Shunned::default();
        let now = Instant::now();
        for _ in 0..MAX_SHUNNED + 10 {
            shunned.foreign(PeerId::random(), now);
        }
        assert!(shunned.peers.len() <= MAX_SHUNNED);
    }
}
