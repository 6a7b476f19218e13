//! The mass-deletion breaker: a folder that would send out deletes of most of its files holds
//! instead, until the user says what to do.
//!
//! A deleted tree, a wrong `mv`, a disk that lost a directory: one local slip, replicated, is a
//! loss on every machine. So before local deletes are sent, their number (with the deletes sent
//! in the last [`BREAKER_WINDOW`], so that a slow `rm -rf` that arrives in several batches counts
//! as one) is held against the folder's size at the start of that window. Over the limit
//! (configured as `breaker_percent` and `breaker_min_files`; both must be exceeded) the share is
//! *held*: nothing is sent or applied until `meshsync share resume SHARE --accept-deletes` (send
//! them) or `--restore` (fetch the files back from members).
//!
//! Pure bookkeeping: the folder actor decides and acts.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::BreakerLimit;

/// Deletes sent within this window count together.
pub const BREAKER_WINDOW: Duration = Duration::from_secs(60);

/// Why a batch of deletes trips the breaker: how many would be gone, out of how many entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Trip {
    pub(super) deleting: u64,
    pub(super) entries: u64,
}

/// The breaker of one folder.
#[derive(Debug)]
pub(super) struct Breaker {
    limit: BreakerLimit,
    /// Deletes sent recently: when, and how many.
    recent: VecDeque<(Instant, u64)>,
}

impl Breaker {
    pub(super) fn new(limit: BreakerLimit) -> Self {
        Self {
            limit,
            recent: VecDeque::new(),
        }
    }

    /// Whether sending `deleting` deletes now, from a folder of `entries` synced entries (before
    /// them), goes over the limit.
    pub(super) fn check(&mut self, deleting: u64, entries: u64, now: Instant) -> Option<Trip> {
        while self
            .recent
            .front()
            .is_some_and(|(at, _)| now.duration_since(*at) > BREAKER_WINDOW)
        {
            self.recent.pop_front();
        }
        let sent: u64 = self.recent.iter().map(|(_, n)| n).sum();
        let trip = Trip {
            deleting: deleting + sent,
            entries: entries + sent,
        };
        let over_share =
            trip.deleting * 100 > trip.entries.saturating_mul(u64::from(self.limit.percent));
        (deleting > 0 && over_share && trip.deleting > self.limit.min_files).then_some(trip)
    }

    /// Deletes that were sent (checked, or accepted by the user).
    pub(super) fn sent(&mut self, deleted: u64, now: Instant) {
        if deleted > 0 {
            self.recent.push_back((now, deleted));
        }
    }

    /// Forgets what was sent: the user accepted it, so it does not count against what follows.
    pub(super) fn reset(&mut self) {
        self.recent.clear();
    }

    pub(super) fn limit(&self) -> BreakerLimit {
        self.limit
    }
}

/// A share held by the breaker.
#[derive(Debug)]
pub(super) struct Held {
    /// Why, with the counts, for `status`.
    pub(super) reason: String,
    /// The local deletes not sent (empty when peers' deletes tripped it: those wait in the
    /// download queue).
    pub(super) paths: Vec<String>,
    /// Whether peers' deletes tripped it, not ours.
    pub(super) remote: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn breaker() -> Breaker {
        Breaker::new(BreakerLimit {
            percent: 50,
            min_files: 100,
        })
    }

    #[test]
    fn trips_only_over_both_the_share_and_the_count() {
        let now = Instant::now();
        let mut b = breaker();
        // 80 % but only 80 files: a small folder may be emptied.
        assert_eq!(b.check(80, 100, now), None);
        // 101 files but 10 %: a big folder may lose many files.
        assert_eq!(b.check(101, 1010, now), None);
        // Exactly half is not more than half.
        assert_eq!(b.check(500, 1000, now), None);
        assert_eq!(
            b.check(800, 1000, now),
            Some(Trip {
                deleting: 800,
                entries: 1000
            })
        );
    }

    #[test]
    fn deletes_sent_in_batches_count_together_within_the_window() {
        let t0 = Instant::now();
        let mut b = breaker();
        // 1,000 files deleted 200 at a time: the first batches pass, the third trips.
        assert_eq!(b.check(200, 1000, t0), None);
        b.sent(200, t0);
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(b.check(200, 800, t1), None);
        b.sent(200, t1);
        let t2 = t1 + Duration::from_secs(10);
        assert_eq!(
            b.check(200, 600, t2),
            Some(Trip {
                deleting: 600,
                entries: 1000
            })
        );
        // Once the window has passed, earlier batches no longer count.
        let later = t1 + BREAKER_WINDOW + Duration::from_secs(1);
        assert_eq!(b.check(200, 600, later), None);
    }

    #[test]
    fn percent_100_never_trips_and_a_reset_forgets() {
        let now = Instant::now();
        let mut off = Breaker::new(BreakerLimit {
            percent: 100,
            min_files: 0,
        });
        assert_eq!(off.check(1000, 1000, now), None);
        let mut b = breaker();
        b.sent(400, now);
        assert!(b.check(200, 600, now).is_some());
        b.reset();
        assert_eq!(b.check(200, 600, now), None);
    }
}
