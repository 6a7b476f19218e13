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

use super::MergeError;

/// How far ahead of our wall clock a remote timestamp may be before [`HlcClock::observe`] refuses
/// it.
///
/// Five minutes: NTP-synchronised machines agree within milliseconds, and laptops or phones that
/// resumed from sleep or lost their time source are commonly off by seconds to a couple of
/// minutes, which must not break sync. A larger bound would let one peer with a wrong clock (or a
/// malicious one) push every peer's clock, and so every later timestamp, that far into the future,
/// winning all concurrent conflicts meanwhile; five minutes caps that damage at a span a user
/// would barely notice.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(5 * 60);

/// [`MAX_CLOCK_SKEW`] in milliseconds, the unit of [`Hlc::millis`].
pub const MAX_CLOCK_SKEW_MILLIS: u64 = MAX_CLOCK_SKEW.as_millis() as u64;

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
    /// timestamp.
    pub fn resume(last: Hlc) -> Self {
        Self { last }
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

    /// Advances the clock past a timestamp received from a peer and returns a timestamp for the
    /// receive event (greater than both `remote` and anything issued before).
    ///
    /// Refuses, leaving the clock unchanged, a `remote` more than [`MAX_CLOCK_SKEW`] ahead of
    /// `wall_millis`; the caller should then refuse the version that carried it.
    pub fn observe(&mut self, remote: Hlc, wall_millis: u64) -> Result<Hlc, MergeError> {
        let limit = wall_millis.saturating_add(MAX_CLOCK_SKEW_MILLIS);
        if remote.millis > limit {
            return Err(MergeError::ClockSkew {
                remote,
                wall_millis,
                ahead_millis: remote.millis - wall_millis,
                max_millis: MAX_CLOCK_SKEW_MILLIS,
            });
        }
        let base = self.last.max(remote);
        self.last = if wall_millis > base.millis {
            Hlc::new(wall_millis, 0)
        } else {
            base.successor()
        };
        Ok(self.last)
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
                    Event::Remote(remote, wall) => match clock.observe(remote, wall) {
                        Ok(t) => {
                            prop_assert!(remote.millis <= wall + MAX_CLOCK_SKEW_MILLIS);
                            prop_assert!(t > prev && t > remote);
                            prev = t;
                        }
                        Err(MergeError::ClockSkew { ahead_millis, .. }) => {
                            prop_assert!(remote.millis > wall + MAX_CLOCK_SKEW_MILLIS);
                            prop_assert_eq!(ahead_millis, remote.millis - wall);
                            prop_assert_eq!(clock.last(), prev, "refusal must not move the clock");
                        }
                        Err(e) => prop_assert!(false, "unexpected error {e}"),
                    },
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
    fn observe_jumps_past_remote_within_skew() {
        let mut c = HlcClock::new();
        c.now(1000);
        let remote = Hlc::new(1000 + MAX_CLOCK_SKEW_MILLIS, 7);
        assert_eq!(
            c.observe(remote, 1000).unwrap(),
            Hlc::new(1000 + MAX_CLOCK_SKEW_MILLIS, 8)
        );
        let too_far = Hlc::new(2000 + MAX_CLOCK_SKEW_MILLIS + 1, 0);
        let err = c.observe(too_far, 2000).unwrap_err();
        assert!(
            matches!(err, MergeError::ClockSkew { ahead_millis, .. } if ahead_millis == MAX_CLOCK_SKEW_MILLIS + 1)
        );
        assert!(err.to_string().contains("MAX_CLOCK_SKEW"));
    }

    #[test]
    fn logical_overflow_carries_into_millis() {
        let mut c = HlcClock::resume(Hlc::new(5, u32::MAX));
        assert_eq!(c.now(5), Hlc::new(6, 0));
    }
}
