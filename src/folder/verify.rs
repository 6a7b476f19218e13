//! The periodic verification of a watched folder, a slice at a time: the walk that catches what
//! the watcher missed, spread over many short scans of [`VERIFY_SLICE_PATHS`] paths each (in
//! byte order of their paths), paced to cost at most 5 % of a core while it runs.
//!
//! A walk of 10^6 files in one go took 19 s of CPU, and the folder's other scans (the paths the
//! watcher reported) waited for all of it. A slice takes a fraction of a second, and those scans
//! run between slices. The first scan after start, a rescan after lost watch events, and every
//! rescan of a folder that cannot be watched stay whole: they are how changes are found then.
//!
//! When the verification is due (`on_rescan_due`), it waits while files are being downloaded
//! ([`super::rescan::defer_rescan`]). Methods of the folder actor, kept apart from its loop.

use std::time::{Duration, SystemTime};

use tokio::time::Instant;
use tracing::debug;

use super::actor::{FolderActor, PAUSED_CHECK_INTERVAL, STATE_UNREADABLE_RETRY, ScanResult};
use super::model::{FileMeta, MARKER_DIR};
use super::rescan::{
    MAX_RESCAN_INTERVAL, RESCAN_INTERVAL, VERIFY_SLICE_PATHS, defer_rescan, next_full_rescan,
    slice_wait,
};
use super::scan::{self, PathRange, PreviousRecords};
use super::{instance, state};

/// Where the folder's verification walk is.
#[derive(Debug, Default)]
pub(super) struct Verification {
    /// The walk under way, if one is.
    walk: Option<Walk>,
    /// Paths the walk under way has checked, or the last one did.
    checked: u64,
    /// When the last walk of the whole folder ended (a verification's last slice, or a full
    /// scan).
    last_done: Option<SystemTime>,
}

/// A verification walk under way.
#[derive(Debug)]
struct Walk {
    /// The last path of the slice before (`None`: the walk starts at the first).
    after: Option<String>,
    /// When the next slice is due.
    next_at: Instant,
    /// When the slice being scanned started.
    slice_started: Option<Instant>,
    /// The time its slices took so far: the walk's cost, which paces the next walk.
    worked: Duration,
}

impl Verification {
    /// Starts a walk from the first path, its first slice at once (a walk under way goes on).
    pub(super) fn start(&mut self, now: Instant) {
        if self.walk.is_none() {
            self.checked = 0;
            self.walk = Some(Walk {
                after: None,
                next_at: now,
                slice_started: None,
                worked: Duration::ZERO,
            });
        }
    }

    /// When the next slice is due: `None` when no walk is under way or a slice is being scanned.
    pub(super) fn next_slice_at(&self) -> Option<Instant> {
        self.walk
            .as_ref()
            .filter(|walk| walk.slice_started.is_none())
            .map(|walk| walk.next_at)
    }

    /// A full scan verified everything: the walk under way, if any, is done with.
    pub(super) fn full_scan_done(&mut self, checked: u64) {
        self.walk = None;
        self.checked = checked;
        self.last_done = Some(SystemTime::now());
    }

    /// Drops the walk under way (the folder is paused, or a full scan comes instead).
    pub(super) fn cancel(&mut self) {
        self.walk = None;
    }

    /// Whether a walk is under way.
    pub(super) fn is_running(&self) -> bool {
        self.walk.is_some()
    }

    /// Paths the walk under way (or the last) has checked.
    pub(super) fn checked(&self) -> u64 {
        self.checked
    }

    /// When the last walk of the whole folder ended.
    pub(super) fn last_done(&self) -> Option<SystemTime> {
        self.last_done
    }

    /// The slice to scan now, from the walk under way: `None` if there is none.
    fn begin_slice(&mut self, now: Instant) -> Option<Option<String>> {
        let walk = self.walk.as_mut()?;
        walk.slice_started = Some(now);
        Some(walk.after.clone())
    }

    /// The slice that ended at `range.upto` was scanned, `checked` paths: the walk goes on
    /// after it, paced by its cost; once it reached the end, returns the time the walk's slices
    /// took together, which paces the next walk.
    fn end_slice(&mut self, range: &PathRange, checked: u64, now: Instant) -> Option<Duration> {
        let walk = self.walk.as_mut()?;
        let took = walk.slice_started.take().map_or(Duration::ZERO, |started| {
            now.saturating_duration_since(started)
        });
        walk.worked += took;
        self.checked += checked;
        match &range.upto {
            Some(upto) => {
                walk.after = Some(upto.clone());
                walk.next_at = now + slice_wait(took);
                None
            }
            None => {
                let worked = walk.worked;
                self.walk = None;
                self.last_done = Some(SystemTime::now());
                Some(worked)
            }
        }
    }
}

impl FolderActor {
    /// The periodic verification is due (or, while paused, the check whether the folder is
    /// back): it waits while files are being downloaded, else starts.
    pub(super) fn on_rescan_due(&mut self) {
        let now = Instant::now();
        if self.verification.is_running() && self.paused.is_none() {
            // Its last slice sets when the next is due.
            self.next_rescan = now + MAX_RESCAN_INTERVAL;
            return;
        }
        self.housekeeping();
        let due_since = *self.rescan_due_since.get_or_insert(now);
        let downloading = !self.queue.is_idle();
        if self.paused.is_none() && defer_rescan(self.watching.is_on(), downloading, due_since, now)
        {
            self.next_rescan = now + RESCAN_INTERVAL;
            return;
        }
        self.rescan_due_since = None;
        self.next_rescan = Instant::now()
            + if self.paused.is_some() {
                PAUSED_CHECK_INTERVAL
            } else {
                RESCAN_INTERVAL
            };
        self.start_verification();
    }

    /// Starts the periodic verification: while the watcher runs and a full scan has run since
    /// start, a walk a slice at a time; else a full scan.
    fn start_verification(&mut self) {
        if self.watching.is_on() && self.marks_read && self.paused.is_none() {
            self.verification.start(Instant::now());
        } else {
            self.dirty_all = true;
            self.scan_soon(Duration::ZERO);
        }
    }

    /// Scans the next slice of the verification walk, when nothing else is being scanned.
    pub(super) fn start_slice(&mut self) {
        if self.scanning {
            return; // Called again once the scan under way ends.
        }
        if self.paused.is_some() || self.dirty_all {
            // Paused: the scan on resume is full; a full scan is coming anyway.
            self.verification.cancel();
            return;
        }
        let basis = match self.synced.scan_basis() {
            Ok(basis) => basis,
            Err(e) => {
                // As in `start_scan`: without what was synced every file would look new; a
                // full scan tries again later.
                self.note_error(format!("cannot read the folder's synced state: {e}"));
                self.verification.cancel();
                self.dirty_all = true;
                self.scan_soon(STATE_UNREADABLE_RETRY);
                return;
            }
        };
        let Some(after) = self.verification.begin_slice(Instant::now()) else {
            return;
        };
        self.scanning = true;
        self.scans_run += 1;
        let root = self.sources.root.clone();
        let (store, share) = (self.store.clone(), self.sources.share);
        self.scans.spawn_blocking(move || {
            let instance = instance::read(&root);
            let previous = basis.previous();
            let upto = previous.slice_end(after.as_deref(), VERIFY_SLICE_PATHS);
            let range = PathRange { after, upto };
            debug!(root = %root.display(), ?range, "verification slice");
            let chunk_lists =
                |meta: &FileMeta| state::blocking_stored_chunk_list(&store, share, meta);
            let spill_in = root.join(MARKER_DIR);
            let out = scan::scan_range_reusing(
                &root,
                range.clone(),
                previous,
                &chunk_lists,
                Some(&spill_in),
            )?;
            let mut result = ScanResult::of(instance, false, out, basis);
            result.slice = Some(range);
            Ok(result)
        });
    }

    /// Takes in the end of a verification slice: the walk goes on after it, or ended and sets
    /// when the next one is due.
    pub(super) fn slice_scanned(&mut self, range: &PathRange, checked: u64) {
        let now = Instant::now();
        let Some(worked) = self.verification.end_slice(range, checked, now) else {
            return;
        };
        debug!(folder = %self.name, paths = self.verification.checked(), ?worked, "verified");
        if self.paused.is_none() {
            self.next_rescan =
                next_full_rescan(now, worked, self.watching.is_on(), self.watching.retry_at());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(after: Option<&str>, upto: Option<&str>) -> PathRange {
        PathRange {
            after: after.map(str::to_owned),
            upto: upto.map(str::to_owned),
        }
    }

    #[test]
    fn a_walk_goes_slice_after_slice_paced_by_their_cost_to_its_end() {
        let now = Instant::now();
        let mut v = Verification::default();
        assert_eq!(v.next_slice_at(), None, "no walk yet");
        v.start(now);
        assert_eq!(v.next_slice_at(), Some(now));
        assert_eq!(v.begin_slice(now), Some(None), "from the first path");
        assert_eq!(v.next_slice_at(), None, "while the slice is scanned");
        let ended = now + Duration::from_millis(300);
        assert_eq!(v.end_slice(&range(None, Some("m")), 10, ended), None);
        assert_eq!(
            v.next_slice_at(),
            Some(ended + slice_wait(Duration::from_millis(300)))
        );
        // A second start leaves the walk where it is.
        v.start(ended);
        let later = ended + Duration::from_secs(6);
        assert_eq!(v.begin_slice(later), Some(Some("m".to_owned())));
        let worked = v.end_slice(
            &range(Some("m"), None),
            5,
            later + Duration::from_millis(100),
        );
        assert_eq!(
            worked,
            Some(Duration::from_millis(400)),
            "the slices' time, not the waits"
        );
        assert!(!v.is_running());
        assert_eq!(v.checked(), 15);
        assert!(v.last_done().is_some());
        // The next walk counts afresh.
        v.start(later);
        assert_eq!(v.checked(), 0);
        v.cancel();
        assert_eq!(v.next_slice_at(), None);
    }
}
