//! When a folder is scanned in full: the pacing of full rescans, which verify what the watcher
//! said (and are all there is to find changes in a folder that cannot be watched), and of the
//! slices a verification walk is made of while the watcher runs (see `super::verify`).
//!
//! Pure: every call takes the times it needs.

use std::time::Duration;

use tokio::time::Instant;

use super::watch::WATCH_RETRY_MIN;

/// Full rescans catch whatever the watcher missed: at most this often.
pub const RESCAN_INTERVAL: Duration = Duration::from_secs(60);
/// While the watcher runs, a full rescan waits at least this many times as long as the last one
/// took, so verification costs at most 0.5 % of the time (a rescan of 100,000 unchanged files
/// took ~1.5 s here: every 5 minutes instead of every minute).
pub const RESCAN_COST_FACTOR: u32 = 200;
/// The longest wait between full rescans while the watcher runs.
pub const MAX_RESCAN_INTERVAL: Duration = Duration::from_secs(3600);
/// Without a watcher, rescans are all there is to find changes: they come as often as
/// [`RESCAN_INTERVAL`], paced to cost at most 5 % of the time (one rescan's duration times this).
pub const UNWATCHED_RESCAN_COST_FACTOR: u32 = 20;
/// The longest wait between full rescans without a watcher.
pub const MAX_UNWATCHED_RESCAN_INTERVAL: Duration = Duration::from_secs(600);
/// The wait before the next full rescan, after one that took `took`: scaled to the folder's
/// size, and more often without a watcher (rescans are then all there is).
pub fn rescan_interval(took: Duration, watching: bool) -> Duration {
    if !watching {
        return took
            .saturating_mul(UNWATCHED_RESCAN_COST_FACTOR)
            .clamp(RESCAN_INTERVAL, MAX_UNWATCHED_RESCAN_INTERVAL);
    }
    took.saturating_mul(RESCAN_COST_FACTOR)
        .clamp(RESCAN_INTERVAL, MAX_RESCAN_INTERVAL)
}

/// Whether a periodic full rescan that fell due at `due_since` waits, checked again
/// [`RESCAN_INTERVAL`] later: while the watcher runs and files are being downloaded, up to
/// [`MAX_RESCAN_INTERVAL`]. A walk of the whole tree then mostly reads back what the downloads
/// just wrote, holds them up while its results are taken (10 s at a time receiving 10^6
/// files), and was a receiver's memory peak; the watcher sees local edits meanwhile, and a
/// download never replaces a file that changed since it was synced.
pub fn defer_rescan(watching: bool, downloading: bool, due_since: Instant, now: Instant) -> bool {
    watching && downloading && now.saturating_duration_since(due_since) < MAX_RESCAN_INTERVAL
}

/// While the watcher runs, the periodic verification walks the folder a slice at a time:
/// this many paths of what was synced each (the last slice takes whatever is left). At 10^6
/// files a walk in one go took 19 s of CPU and held the folder's other scans (and downloads,
/// while its results were taken) all that time; a slice takes a fraction of a second.
pub const VERIFY_SLICE_PATHS: usize = 16_384;
/// Between two slices of a verification walk, this many times as long as the last slice took:
/// a walk costs at most 5 % of a core while it runs, and its cost is spread out.
pub const VERIFY_SLICE_PACE_FACTOR: u32 = 20;
/// The shortest wait between two slices.
pub const VERIFY_SLICE_WAIT_MIN: Duration = Duration::from_millis(50);
/// The longest wait between two slices.
pub const VERIFY_SLICE_WAIT_MAX: Duration = Duration::from_secs(60);

/// The wait before the next slice of a verification walk, after one that took `took`.
pub fn slice_wait(took: Duration) -> Duration {
    took.saturating_mul(VERIFY_SLICE_PACE_FACTOR)
        .clamp(VERIFY_SLICE_WAIT_MIN, VERIFY_SLICE_WAIT_MAX)
}

/// When the next full rescan is due, after one that took `took` ended at `now`. A folder that
/// could not be watched is rescanned by the time its watch is tried again (`watch_retry`: the
/// rescan tries it first), but not sooner than [`WATCH_RETRY_MIN`] from now: a try that fell
/// due while the scan ran is made as this one ends, and once made it is not due again sooner.
pub fn next_full_rescan(
    now: Instant,
    took: Duration,
    watching: bool,
    watch_retry: Option<Instant>,
) -> Instant {
    let due = now + rescan_interval(took, watching);
    match watch_retry {
        Some(retry) => due.min(retry.max(now + WATCH_RETRY_MIN)),
        None => due,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rescans_cost_at_most_half_a_percent_while_the_watcher_runs() {
        let ms = Duration::from_millis;
        // Small folders (and every test's) are rescanned every minute, as before.
        assert_eq!(rescan_interval(ms(20), true), RESCAN_INTERVAL);
        // 100,000 files: a 1.5 s walk every 5 minutes.
        assert_eq!(rescan_interval(ms(1500), true), Duration::from_secs(300));
        // A million: at most hourly.
        assert_eq!(rescan_interval(ms(60_000), true), MAX_RESCAN_INTERVAL);
        // Without a watcher, rescans are all there is.
        assert_eq!(rescan_interval(ms(1500), false), RESCAN_INTERVAL);
        assert_eq!(rescan_interval(ms(6000), false), Duration::from_secs(120));
        assert_eq!(
            rescan_interval(ms(3_600_000), false),
            MAX_UNWATCHED_RESCAN_INTERVAL
        );
    }

    #[test]
    fn verification_slices_cost_at_most_five_percent_while_a_walk_runs() {
        let ms = Duration::from_millis;
        // A slice of 16,384 paths at 10^6 files took ~0.3 s: the next 6 s later.
        assert_eq!(slice_wait(ms(300)), Duration::from_secs(6));
        assert_eq!(slice_wait(Duration::ZERO), VERIFY_SLICE_WAIT_MIN);
        assert_eq!(slice_wait(Duration::from_secs(600)), VERIFY_SLICE_WAIT_MAX);
    }

    #[test]
    fn a_rescan_waits_for_downloads_while_watched_and_for_an_hour_at_most() {
        let due = Instant::now();
        let later = |s| due + Duration::from_secs(s);
        assert!(defer_rescan(true, true, due, due));
        assert!(defer_rescan(true, true, due, later(3599)));
        assert!(
            !defer_rescan(true, true, due, later(3600)),
            "an hour at most"
        );
        assert!(!defer_rescan(true, false, due, due), "nothing downloading");
        assert!(
            !defer_rescan(false, true, due, due),
            "rescans are all an unwatched folder has"
        );
    }

    /// A folder that could not be watched (the inotify limit) tries again with its next full
    /// rescan. When a scan took longer than the wait before that try, the try was due before
    /// the scan ended, and the next full scan was due at once: full scans back to back, for as
    /// long as the try's wait (10 s, doubling to 10 minutes) was shorter than a scan, for good
    /// on a tree whose scan takes longer than that.
    #[test]
    fn a_watch_retry_due_during_a_long_scan_does_not_start_the_next_at_once() {
        let now = Instant::now();
        let took = Duration::from_secs(30);
        let passed = now - Duration::from_secs(20);
        let next = next_full_rescan(now, took, false, Some(passed));
        assert!(
            next >= now + WATCH_RETRY_MIN,
            "the next full rescan {:?} after this one ended",
            next.saturating_duration_since(now)
        );
        // A try due soon still brings the rescan forward from the paced interval (10 min).
        let soon = now + Duration::from_secs(15);
        assert_eq!(next_full_rescan(now, took, false, Some(soon)), soon);
        assert_eq!(
            next_full_rescan(now, took, false, None),
            now + rescan_interval(took, false)
        );
    }
}
