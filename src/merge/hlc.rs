//! Hybrid logical clock: timestamps that follow wall time but never run backwards and always
//! exceed every timestamp already seen.
//!
//! Concurrent writes are ordered by these timestamps, so "the later edit wins" holds whenever
//! clocks are roughly right, while a clock that steps backwards, or a burst of writes within one
//! millisecond, still yields strictly increasing timestamps. The wall clock is a parameter so
//! that the clock is pure and testable.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// How far ahead of our wall clock a remote timestamp may move our clock ([`HlcClock::observe`]).
///
/// Versions with timestamps further ahead are accepted all the same: refusing them made peers
/// disagree (a peer 4 minutes behind took what a correct one refused), split the mesh and made
/// the refused entries be pulled again and again. But they move our clock only this far, so one
/// peer with a wrong clock (or a malicious one) cannot drag every other peer's clock, and so all
/// their later timestamps, into the future. Five minutes: NTP-synchronised machines agree
/// within milliseconds, and laptops that resumed from sleep are commonly off by seconds to a
/// couple of minutes, which must not make our own timestamps lag theirs.
///
/// Which version wins is decided by version vectors first (an edit made after seeing another
/// always wins), and only among concurrent versions by timestamp, the same on every peer.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// [`MAX_CLOCK_SKEW`] in milliseconds, the unit of [`Hlc::millis`].
pub const MAX_CLOCK_SKEW_MILLIS: u64 = MAX_CLOCK_SKEW.as_millis() as u64;

/// What observing a remote timestamp did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observed {
    /// The timestamp of the receive event.
    pub at: Hlc,
    /// How far ahead of our wall clock the remote timestamp was, when more than
    /// [`MAX_CLOCK_SKEW`] (our clock moved only that far).
    pub ahead_beyond_bound_millis: Option<u64>,
}

/// A hybrid logical timestamp: wall-clock milliseconds plus a counter for events within the same
/// millisecond. Ordered by `millis`, then `logical`.
///
/// Encoded as the CBOR array `[millis, logical]`.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(from = "(u64, u32)", into = "(u64, u32)")]
pub struct Hlc {
    /// Physical part: milliseconds since the Unix epoch (as far as the issuing clock knew).
    pub millis: u64,
    /// Logical part: distinguishes timestamps issued within the same millisecond.
    pub logical: u32,
}

impl Hlc {
    /// Builds a timestamp from its parts.
    pub const fn new(millis: u64, logical: u32) -> Self {
        Self { millis, logical }
    }

    /// The smallest timestamp greater than `self`; saturates at the (unreachable) maximum.
    fn successor(self) -> Self {
        if self.logical < u32::MAX {
            Self::new(self.millis, self.logical + 1)
        } else if self.millis < u64::MAX {
            Self::new(self.millis + 1, 0)
        } else {
            self
        }
    }
}

impl fmt::Display for Hlc {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.millis, self.logical)
    }
}

impl From<(u64, u32)> for Hlc {
    fn from((millis, logical): (u64, u32)) -> Self {
        Self { millis, logical }
    }
}

impl From<Hlc> for (u64, u32) {
    fn from(h: Hlc) -> Self {
        (h.millis, h.logical)
    }
}

/// Issues [`Hlc`] timestamps for one peer.
///
/// Every timestamp it returns is strictly greater than every timestamp it returned or observed
/// before (until the practically unreachable `u64::MAX` milliseconds), whatever the wall clock
/// does.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HlcClock {
    last: Hlc,
}

impl HlcClock {
    /// A clock that has issued nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A clock resuming after `last`, e.g. the newest timestamp found in the store at start-up,
    /// so that a wall clock that went backwards while the daemon was down cannot reissue an old
    /// timestamp; but not beyond [`MAX_CLOCK_SKEW`] ahead of `wall_millis` (the store may hold a
    /// skewed peer's far-future versions).
    pub fn resume(last: Hlc, wall_millis: u64) -> Self {
        let limit = Hlc::new(wall_millis.saturating_add(MAX_CLOCK_SKEW_MILLIS), 0);
        Self {
            last: last.min(limit),
        }
    }

    /// The newest timestamp issued or observed so far.
    pub fn last(&self) -> Hlc {
        self.last
    }

    /// A timestamp for a local event, given the current wall clock in milliseconds since the
    /// Unix epoch.
    pub fn now(&mut self, wall_millis: u64) -> Hlc {
        self.last = if wall_millis > self.last.millis {
            Hlc::new(wall_millis, 0)
        } else {
            self.last.successor()
        };
        self.last
    }

    /// Advances the clock past a timestamp received from a peer, but never beyond
    /// [`MAX_CLOCK_SKEW`] ahead of `wall_millis`, and returns a timestamp for the receive event.
    /// The result says how far ahead of our wall clock `remote` was when that is more than the
    /// bound (the version is taken all the same; see [`MAX_CLOCK_SKEW`]).
    pub fn observe(&mut self, remote: Hlc, wall_millis: u64) -> Observed {
        let limit = wall_millis.saturating_add(MAX_CLOCK_SKEW_MILLIS);
        let (counted, beyond) = if remote.millis > limit {
            (Hlc::new(limit, 0), Some(remote.millis - wall_millis))
        } else {
            (remote, None)
        };
        let base = self.last.max(counted);
        self.last = if wall_millis > base.millis {
            Hlc::new(wall_millis, 0)
        } else {
            base.successor()
        };
        Observed {
            at: self.last,
            ahead_beyond_bound_millis: beyond,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Realistic wall-clock readings (up to ~35 000 years), far from overflow.
    const WALL_MAX: u64 = 1 << 50;

    #[derive(Clone, Debug)]
    enum Event {
        Local(u64),
        Remote(Hlc, u64),
    }

    fn event() -> impl Strategy<Value = Event> {
        prop_oneof![
            (0..WALL_MAX).prop_map(Event::Local),
            // Remote timestamps near the wall clock, so both acceptance and refusal occur.
            (0..WALL_MAX, -600_000i64..600_000, any::<u32>()).prop_map(|(wall, off, logical)| {
                let millis = wall.saturating_add_signed(off);
                Event::Remote(Hlc::new(millis, logical), wall)
            }),
        ]
    }

    proptest! {
        #[test]
        fn strictly_monotonic_and_skew_bounded(events in proptest::collection::vec(event(), 1..64)) {
            let mut clock = HlcClock::new();
            let mut prev = clock.last();
            for e in events {
                match e {
                    Event::Local(wall) => {
                        let t = clock.now(wall);
                        prop_assert!(t > prev);
                        prop_assert!(t.millis >= wall);
                        prev = t;
                    }
                    Event::Remote(remote, wall) => {
                        let observed = clock.observe(remote, wall);
                        let t = observed.at;
                        prop_assert!(t > prev);
                        if remote.millis <= wall + MAX_CLOCK_SKEW_MILLIS {
                            prop_assert!(t > remote);
                            prop_assert_eq!(observed.ahead_beyond_bound_millis, None);
                        } else {
                            prop_assert_eq!(
                                observed.ahead_beyond_bound_millis,
                                Some(remote.millis - wall)
                            );
                        }
                        // Never dragged beyond the bound by a remote clock (only our own
                        // timestamps in a row within one millisecond count up past it).
                        prop_assert!(
                            t.millis <= (wall + MAX_CLOCK_SKEW_MILLIS).max(prev.millis + 1)
                        );
                        prev = t;
                    }
                }
            }
        }
    }

    #[test]
    fn same_millisecond_uses_logical_counter() {
        let mut c = HlcClock::new();
        assert_eq!(c.now(1000), Hlc::new(1000, 0));
        assert_eq!(c.now(1000), Hlc::new(1000, 1));
        // Wall clock stepped backwards: keep counting from the last timestamp.
        assert_eq!(c.now(900), Hlc::new(1000, 2));
        assert_eq!(c.now(1001), Hlc::new(1001, 0));
    }

    #[test]
    fn observe_jumps_past_remote_within_skew_and_no_further() {
        let mut c = HlcClock::new();
        c.now(1000);
        let remote = Hlc::new(1000 + MAX_CLOCK_SKEW_MILLIS, 7);
        assert_eq!(
            c.observe(remote, 1000),
            Observed {
                at: Hlc::new(1000 + MAX_CLOCK_SKEW_MILLIS, 8),
                ahead_beyond_bound_millis: None
            }
        );
        let mut c = HlcClock::new();
        let far = Hlc::new(1_000_000 + 400_000 + MAX_CLOCK_SKEW_MILLIS, 0);
        let observed = c.observe(far, 1_000_000);
        assert_eq!(
            observed.ahead_beyond_bound_millis,
            Some(400_000 + MAX_CLOCK_SKEW_MILLIS)
        );
        assert_eq!(observed.at, Hlc::new(1_000_000 + MAX_CLOCK_SKEW_MILLIS, 1));
        assert_eq!(
            HlcClock::resume(far, 1_000_000).last(),
            Hlc::new(1_000_000 + MAX_CLOCK_SKEW_MILLIS, 0),
            "a far-future timestamp in the store does not drag the clock at start-up either"
        );
    }

    #[test]
    fn logical_overflow_carries_into_millis() {
        let mut c = HlcClock::resume(Hlc::new(5, u32::MAX), 5);
        assert_eq!(c.now(5), Hlc::new(6, 0));
    }
}
