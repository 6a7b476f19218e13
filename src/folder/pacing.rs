//! How much to ask of each member at once, from what it has delivered.
//!
//! A request is answered whole within the network layer's request timeout (30 s) or fails. With
//! a fixed amount asked at once, a slow link made no progress at all: at 320 kbit/s several
//! requests of up to 4 MiB shared the link, none was answered in time, and each retry started
//! from zero. So every member gets a window: the bytes of chunks out to it at once. It is sized
//! to [`TARGET_DRAIN`] of what the member has delivered (its measured rate), between
//! [`MIN_WINDOW`] and [`MAX_WINDOW`]; until a member has been measured it is
//! [`INITIAL_WINDOW`] and doubles with every answer that comes back too quickly to measure. A
//! request that fails or is found stuck halves the window; one that fails on the network also
//! holds the member back for a wait that doubles per failure ([`RETRY_WAIT_MIN`] up to
//! [`RETRY_WAIT_MAX`]) and ends at its next answer.
//!
//! Pure state: the caller passes the time, so the rules are unit-tested without timers.

use std::collections::HashMap;
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

use super::model::CHUNK_MIN;
use crate::backoff::Backoff;

/// Bytes out to a member before it has been measured: an average chunk. More queued on a slow
/// link delays the protocol negotiation of every new stream on it (sessions, pages) past
/// libp2p's 10 s upgrade timeout, and its pings past the 10 s liveness rule: 512 KiB at
/// 320 kbit/s is 13 s, and such runs took 1.5× the ideal time; with 256 KiB, a 256 KiB chunk
/// over 40 kbit/s took 170 s (3.2× the ideal time: the first request timed out, the link was
/// twice taken for dead), with 64 KiB 50 s. A fast link doubles it with every answer (two more
/// round trips to the largest window than from 256 KiB).
pub const INITIAL_WINDOW: u64 = 64 * 1024;
/// The smallest window: one chunk of the smallest size. A chunk larger than a member's window
/// is fetched in parts from members that offer them (see [`super::fetch`]); from others it is
/// asked for whole, whatever the window.
pub const MIN_WINDOW: u64 = CHUNK_MIN as u64;
/// The largest window (eight requests of 4 MiB, what a fast LAN keeps busy).
pub const MAX_WINDOW: u64 = 32 * 1024 * 1024;
/// How long a member should take to deliver a full window at its measured rate: short enough
/// that every request is answered well within the request timeout (a 7× margin), long enough
/// that the link never idles between answers.
pub const TARGET_DRAIN: Duration = Duration::from_secs(4);
/// An answer sooner than this after the member got busy is too quick to measure a rate from;
/// the window doubles instead.
pub const MEASURE_MIN: Duration = Duration::from_millis(50);
/// A member busy this long starts a new measurement, so the rate follows a link that changes.
pub const MEASURE_PERIOD: Duration = Duration::from_secs(8);
/// The first wait before a member whose request failed on the network is asked again.
pub const RETRY_WAIT_MIN: Duration = Duration::from_millis(500);
/// The longest such wait.
pub const RETRY_WAIT_MAX: Duration = Duration::from_secs(30);

/// Windows, rates and retry waits of the members one fetcher asks.
#[derive(Debug, Default)]
pub struct Pacing {
    links: HashMap<PeerId, Link>,
}

#[derive(Debug)]
struct Link {
    window: u64,
    /// Bytes/s delivered while busy, once measured.
    rate: Option<f64>,
    in_flight: u64,
    /// Start of the current measurement (the member is busy since then), and the bytes it has
    /// delivered since.
    busy_since: Option<Instant>,
    delivered: u64,
    retry: Backoff,
    retry_at: Option<Instant>,
}

impl Default for Link {
    fn default() -> Link {
        Link {
            window: INITIAL_WINDOW,
            rate: None,
            in_flight: 0,
            busy_since: None,
            delivered: 0,
            retry: Backoff::new(RETRY_WAIT_MIN, RETRY_WAIT_MAX),
            retry_at: None,
        }
    }
}

impl Pacing {
    /// Bytes that may still be asked of `peer` now (0 while it is held back after a failure).
    pub fn room(&self, peer: &PeerId, now: Instant) -> u64 {
        match self.links.get(peer) {
            None => INITIAL_WINDOW,
            Some(link) if link.retry_at.is_some_and(|at| at > now) => 0,
            Some(link) => link.window.saturating_sub(link.in_flight),
        }
    }

    /// Whether `peer` is held back after a failed request.
    pub fn held_back(&self, peer: &PeerId, now: Instant) -> bool {
        self.links
            .get(peer)
            .is_some_and(|link| link.retry_at.is_some_and(|at| at > now))
    }

    /// The member's measured rate in bytes/s.
    pub fn rate(&self, peer: &PeerId) -> Option<f64> {
        self.links.get(peer).and_then(|link| link.rate)
    }

    /// A request for `bytes` went out to `peer`.
    pub fn sent(&mut self, peer: PeerId, bytes: u64, now: Instant) {
        let link = self.links.entry(peer).or_default();
        link.in_flight += bytes;
        link.busy_since.get_or_insert(now);
    }

    /// `peer` answered a request for `asked` bytes with `delivered` bytes of chunks.
    pub fn answered(&mut self, peer: PeerId, asked: u64, delivered: u64, now: Instant) {
        let link = self.links.entry(peer).or_default();
        link.in_flight = link.in_flight.saturating_sub(asked);
        link.retry.reset();
        link.retry_at = None;
        link.delivered += delivered;
        let since = *link.busy_since.get_or_insert(now);
        let busy = now.saturating_duration_since(since);
        if busy >= MEASURE_MIN {
            let rate = link.delivered as f64 / busy.as_secs_f64();
            link.rate = Some(rate);
            link.window =
                ((rate * TARGET_DRAIN.as_secs_f64()) as u64).clamp(MIN_WINDOW, MAX_WINDOW);
        } else {
            link.window = (link.window * 2).min(MAX_WINDOW);
        }
        if link.in_flight == 0 {
            // Idle time is not the link's: measure again from the next request.
            link.busy_since = None;
            link.delivered = 0;
        } else if busy >= MEASURE_PERIOD {
            link.busy_since = Some(now);
            link.delivered = 0;
        }
    }

    /// A request for `asked` bytes to `peer` failed on the network (timed out, connection
    /// lost): smaller window, and a wait before it is asked again.
    pub fn failed(&mut self, peer: PeerId, asked: u64, now: Instant) {
        self.shrink(peer, asked);
        let link = self.links.entry(peer).or_default();
        link.retry_at = Some(now + link.retry.next());
    }

    /// A request for `asked` bytes to `peer` was given up (stuck, or answered unusably): its
    /// bytes are no longer out, and the window halves.
    pub fn shrink(&mut self, peer: PeerId, asked: u64) {
        let link = self.links.entry(peer).or_default();
        link.in_flight = link.in_flight.saturating_sub(asked);
        link.window = (link.window / 2).max(MIN_WINDOW);
        if link.in_flight == 0 {
            link.busy_since = None;
            link.delivered = 0;
        }
    }

    /// Drops what is known about members not in `members`.
    pub fn retain(&mut self, members: &[PeerId]) {
        self.links.retain(|peer, _| members.contains(peer));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KIB: u64 = 1024;

    #[test]
    fn a_fast_member_gets_a_large_window_quickly() {
        let (mut pacing, peer, t0) = (Pacing::default(), PeerId::random(), Instant::now());
        assert_eq!(pacing.room(&peer, t0), INITIAL_WINDOW);
        let mut now = t0;
        // 64 KiB doubles to 32 MiB in nine quick answers.
        for _ in 0..9 {
            pacing.sent(peer, 64 * KIB, now);
            now += Duration::from_millis(2);
            pacing.answered(peer, 64 * KIB, 64 * KIB, now);
        }
        assert_eq!(pacing.room(&peer, now), MAX_WINDOW);
    }

    #[test]
    fn a_slow_member_gets_what_it_delivers_in_the_target_time() {
        let (mut pacing, peer, t0) = (Pacing::default(), PeerId::random(), Instant::now());
        // 40 KB/s (320 kbit/s): two requests of 256 KiB out, the first answered after 6.5 s.
        pacing.sent(peer, 256 * KIB, t0);
        pacing.sent(peer, 256 * KIB, t0);
        assert_eq!(pacing.room(&peer, t0), 0, "the first window is used up");
        let first = t0 + Duration::from_secs_f64(256.0 * 1024.0 / 40_000.0);
        pacing.answered(peer, 256 * KIB, 256 * KIB, first);
        let rate = pacing.rate(&peer).unwrap();
        assert!((rate - 40_000.0).abs() < 100.0, "{rate}");
        // 4 s at 40 KB/s is 160 KB, less than the largest chunk (which is asked in parts).
        assert_eq!(pacing.room(&peer, first), 0, "256 KiB still out");
        let second = first + Duration::from_secs_f64(256.0 * 1024.0 / 40_000.0);
        pacing.answered(peer, 256 * KIB, 256 * KIB, second);
        let room = pacing.room(&peer, second);
        assert!((159_000..=161_000).contains(&room), "{room}");
    }

    #[test]
    fn a_failed_request_holds_the_member_back_longer_each_time_until_it_answers() {
        let (mut pacing, peer, t0) = (Pacing::default(), PeerId::random(), Instant::now());
        pacing.sent(peer, 64 * KIB, t0);
        pacing.failed(peer, 64 * KIB, t0);
        assert!(pacing.held_back(&peer, t0));
        assert_eq!(pacing.room(&peer, t0), 0);
        let after_first = t0 + RETRY_WAIT_MIN;
        assert!(!pacing.held_back(&peer, after_first));
        assert_eq!(pacing.room(&peer, after_first), INITIAL_WINDOW / 2);
        pacing.sent(peer, 64 * KIB, after_first);
        pacing.failed(peer, 64 * KIB, after_first);
        assert!(pacing.held_back(&peer, after_first + RETRY_WAIT_MIN));
        assert!(!pacing.held_back(&peer, after_first + RETRY_WAIT_MIN * 2));
        let later = after_first + RETRY_WAIT_MIN * 2;
        pacing.sent(peer, 64 * KIB, later);
        pacing.answered(peer, 64 * KIB, 64 * KIB, later + Duration::from_millis(1));
        pacing.sent(peer, 64 * KIB, later);
        pacing.failed(peer, 64 * KIB, later);
        assert!(
            !pacing.held_back(&peer, later + RETRY_WAIT_MIN),
            "an answer starts the waits over"
        );
    }

    #[test]
    fn the_window_never_drops_below_one_small_chunk() {
        let (mut pacing, peer, t0) = (Pacing::default(), PeerId::random(), Instant::now());
        for _ in 0..20 {
            pacing.sent(peer, KIB, t0);
            pacing.shrink(peer, KIB);
        }
        assert_eq!(pacing.room(&peer, t0), MIN_WINDOW);
    }
}
