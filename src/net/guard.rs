//! Limits on what one peer can make us do: inbound requests in flight, and strikes against
//! peers caught lying.
//!
//! Every inbound request handed to the rest of the daemon holds a slot until it is answered
//! (the slot travels inside [`Reply`]); a peer with [`MAX_REQUESTS_IN_FLIGHT_PER_PEER`] slots,
//! or everyone together with [`MAX_REQUESTS_IN_FLIGHT`], gets "busy" at once instead of work
//! queued for it. Folder content is served to each peer at most at [`SERVE_RATE_PER_PEER`]
//! ([`ServeRate`]). Peers that send content not matching its hash collect strikes; at
//! [`MAX_STRIKES`] they are disconnected and refused for [`STRIKE_BAN`].

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::request_response::ResponseChannel;

use super::protocol::Response;

/// Inbound requests one peer may have waiting for our answer.
pub const MAX_REQUESTS_IN_FLIGHT_PER_PEER: usize = 96;
/// Inbound requests all peers together may have waiting for our answer.
pub const MAX_REQUESTS_IN_FLIGHT: usize = 2048;
/// Lies (content that does not match its hash) before a peer is disconnected and banned.
pub const MAX_STRIKES: u32 = 3;
/// How long a peer that reached [`MAX_STRIKES`] is refused.
pub const STRIKE_BAN: Duration = Duration::from_secs(600);

/// Bytes of folder content (chunks, pages) served to one peer per second, sustained. Above what
/// a disk or a LAN link delivers, so an honest peer never waits for it (on loopback a lower
/// value was the bottleneck of a big file's first sync); it keeps one member from taking every
/// read the disk can do when others want content too.
pub const SERVE_RATE_PER_PEER: u64 = 1024 * 1024 * 1024;
/// Bytes a peer may take at once above the sustained rate.
pub const SERVE_BURST_PER_PEER: u64 = 256 * 1024 * 1024;

/// Paces the content served to each peer (a token bucket per peer).
#[derive(Debug, Clone, Default)]
pub struct ServeRate {
    buckets: Arc<Mutex<HashMap<PeerId, (f64, Instant)>>>,
}

impl ServeRate {
    /// Takes `bytes` from `peer`'s bucket; returns how long to wait before sending them.
    pub fn take(&self, peer: PeerId, bytes: usize, now: Instant) -> Duration {
        let rate = SERVE_RATE_PER_PEER as f64;
        let burst = SERVE_BURST_PER_PEER as f64;
        let mut buckets = self.buckets.lock().expect("serve rate lock");
        if buckets.len() > 4 * MAX_REQUESTS_IN_FLIGHT {
            // Full buckets carry no information; drop them.
            buckets.retain(|_, (tokens, last)| {
                *tokens + now.duration_since(*last).as_secs_f64() * rate < burst
            });
        }
        let (tokens, last) = buckets.entry(peer).or_insert((burst, now));
        *tokens = (*tokens + now.duration_since(*last).as_secs_f64() * rate).min(burst);
        *last = now;
        *tokens -= bytes as f64;
        if *tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-*tokens / rate)
        }
    }
}

#[derive(Debug, Default)]
struct Counts {
    per_peer: HashMap<PeerId, usize>,
    total: usize,
}

/// Counts inbound requests in flight.
#[derive(Debug, Clone, Default)]
pub struct InFlight {
    counts: Arc<Mutex<Counts>>,
}

impl InFlight {
    /// Takes a slot for a request from `peer`, or `None` if it or everyone is at the limit.
    pub fn acquire(&self, peer: PeerId) -> Option<Slot> {
        let mut counts = self.counts.lock().expect("in-flight lock");
        let mine = counts.per_peer.get(&peer).copied().unwrap_or(0);
        if mine >= MAX_REQUESTS_IN_FLIGHT_PER_PEER || counts.total >= MAX_REQUESTS_IN_FLIGHT {
            return None;
        }
        counts.per_peer.insert(peer, mine + 1);
        counts.total += 1;
        Some(Slot {
            peer,
            counts: self.counts.clone(),
        })
    }

    /// Requests from `peer` in flight now.
    pub fn of(&self, peer: &PeerId) -> usize {
        let counts = self.counts.lock().expect("in-flight lock");
        counts.per_peer.get(peer).copied().unwrap_or(0)
    }
}

/// One inbound request's place in [`InFlight`], given back when dropped.
#[derive(Debug)]
pub struct Slot {
    peer: PeerId,
    counts: Arc<Mutex<Counts>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.counts.lock().expect("in-flight lock");
        counts.total -= 1;
        if let Some(n) = counts.per_peer.get_mut(&self.peer) {
            *n -= 1;
            if *n == 0 {
                counts.per_peer.remove(&self.peer);
            }
        }
    }
}

/// Where the answer to an inbound request goes; holds the request's [`Slot`] until then.
#[derive(Debug)]
pub struct Reply {
    pub(super) channel: ResponseChannel<Response>,
    pub(super) _slot: Box<Slot>,
}

impl Reply {
    /// The peer that sent the request.
    pub(super) fn peer(&self) -> PeerId {
        self._slot.peer
    }
}

/// Strikes against peers, and the bans they earned.
#[derive(Debug, Default)]
pub struct Strikes {
    counts: HashMap<PeerId, u32>,
    banned_until: HashMap<PeerId, Instant>,
}

impl Strikes {
    /// Records a strike; returns true if this one earns `peer` a ban.
    pub fn strike(&mut self, peer: PeerId, now: Instant) -> bool {
        let count = self.counts.entry(peer).or_default();
        *count += 1;
        if *count < MAX_STRIKES {
            return false;
        }
        self.counts.remove(&peer);
        self.banned_until.insert(peer, now + STRIKE_BAN);
        true
    }

    /// Bans that have run out by `now`, removed from the list.
    pub fn expired(&mut self, now: Instant) -> Vec<PeerId> {
        let over: Vec<PeerId> = self
            .banned_until
            .iter()
            .filter(|(_, until)| **until <= now)
            .map(|(peer, _)| *peer)
            .collect();
        for peer in &over {
            self.banned_until.remove(peer);
        }
        over
    }

    /// When the next ban runs out.
    pub fn next_expiry(&self) -> Option<Instant> {
        self.banned_until.values().min().copied()
    }

    /// Peers banned now.
    pub fn banned(&self) -> impl Iterator<Item = &PeerId> {
        self.banned_until.keys()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_per_peer_and_given_back() {
        let in_flight = InFlight::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let held: Vec<Slot> = (0..MAX_REQUESTS_IN_FLIGHT_PER_PEER)
            .map(|_| in_flight.acquire(a).unwrap())
            .collect();
        assert!(in_flight.acquire(a).is_none(), "a is at its limit");
        let other = in_flight.acquire(b).expect("b is not limited by a");
        assert_eq!(in_flight.of(&a), MAX_REQUESTS_IN_FLIGHT_PER_PEER);
        drop(held);
        drop(other);
        assert_eq!(in_flight.of(&a), 0);
        assert!(in_flight.acquire(a).is_some());
    }

    #[test]
    fn slots_are_bounded_in_total() {
        let in_flight = InFlight::default();
        let mut held = Vec::new();
        while let Some(slot) = in_flight.acquire(PeerId::random()) {
            held.push(slot);
        }
        assert_eq!(held.len(), MAX_REQUESTS_IN_FLIGHT);
        held.pop();
        assert!(in_flight.acquire(PeerId::random()).is_some());
    }

    #[test]
    fn serving_is_paced_per_peer_after_the_burst() {
        let rate = ServeRate::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        let now = Instant::now();
        let burst = SERVE_BURST_PER_PEER as usize;
        assert_eq!(rate.take(a, burst, now), Duration::ZERO);
        let wait = rate.take(a, SERVE_RATE_PER_PEER as usize / 2, now);
        assert!((wait.as_secs_f64() - 0.5).abs() < 0.01, "{wait:?}");
        assert_eq!(
            rate.take(b, 1024, now),
            Duration::ZERO,
            "b has its own bucket"
        );
        let later = now + Duration::from_secs(2);
        assert_eq!(rate.take(a, 1024, later), Duration::ZERO, "refilled");
    }

    #[test]
    fn third_strike_bans_until_it_expires() {
        let mut strikes = Strikes::default();
        let peer = PeerId::random();
        let now = Instant::now();
        assert!(!strikes.strike(peer, now));
        assert!(!strikes.strike(peer, now));
        assert!(strikes.strike(peer, now));
        assert_eq!(strikes.banned().count(), 1);
        assert!(strikes.expired(now).is_empty());
        assert_eq!(strikes.next_expiry(), Some(now + STRIKE_BAN));
        assert_eq!(strikes.expired(now + STRIKE_BAN), vec![peer]);
        assert_eq!(strikes.banned().count(), 0);
        assert!(!strikes.strike(peer, now), "strikes start again from zero");
    }
}
