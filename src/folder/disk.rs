//! The free-space floor: no download starts that would leave the folder's file system with
//! less than `min_free_disk`; when space is short, old versions go first; and a full disk is said
//! once, in `status` and the log, and checked again on a backoff until space appears.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime};

use tracing::{info, warn};

use super::{versions, write};
use crate::backoff::Backoff;
use crate::config::MinFreeDisk;

/// First wait before a download that found no room is tried again; it doubles up to
/// [`DISK_RETRY_MAX`] while the disk stays full.
pub const DISK_RETRY_MIN: Duration = Duration::from_secs(2);
/// The longest wait between checks of a full disk.
pub const DISK_RETRY_MAX: Duration = Duration::from_secs(60);

/// How long a reading of the free space stands for the downloads that start after it, each
/// spending its size from what the reading left to spare (as within one round of starting
/// them): a `statfs` per received small file cost ~1% of B's CPU receiving 10^5 of them. Space
/// other programs take meanwhile is what `min_free_disk` keeps, and a write that finds the disk
/// full anyway is handled as such ([`DiskGuard::failed`]).
pub const DISK_READING_FRESH: Duration = Duration::from_millis(250);

/// Files (inodes) kept free on a folder's file system, where it counts them: a tree of many
/// small files runs out of inodes with bytes to spare, and then no file can be created, ours or
/// any other program's. A download makes one file and perhaps its parent directories.
pub const FILES_KEPT_FREE: u64 = 16;

const MIB: u64 = 1 << 20;

/// What a reading of the free space left to spare, for the downloads that start soon after it.
#[derive(Debug, Clone, Copy)]
struct Spare {
    read_at: Instant,
    bytes: u64,
    /// Files that may still be created (`u64::MAX` where the file system does not count them).
    files: u64,
}

/// A write the file system refused for want of space: until a download started after it is
/// written, one download tries at a time, at `probe_at`, each try failing doubling the wait.
#[derive(Debug, Clone, Copy)]
struct RefusedWrite {
    probe_at: Instant,
    /// A download tried since (only one started after the refusal ends it: one that was
    /// running before may still be written).
    probing: bool,
}

impl RefusedWrite {
    /// This download may be the one that tries (its wait is over; the next waits `next_wait`),
    /// or it waits what is left of the wait.
    fn try_probe(&mut self, now: Instant, next_wait: Duration) -> Result<(), Duration> {
        if now < self.probe_at {
            return Err(self.probe_at - now);
        }
        self.probe_at = now + next_wait;
        self.probing = true;
        Ok(())
    }
}

/// One folder's view of its disk.
#[derive(Debug)]
pub(super) struct DiskGuard {
    floor: MinFreeDisk,
    backoff: Backoff,
    /// Set while downloads wait for space: what `status` says.
    full: Option<String>,
    /// The size of the file that found the disk full: a smaller one that fits does
    /// not end the condition (it made the log say "full", "space again" every 2 s while a
    /// big file waited, found by `meshsync lab`).
    full_needed: u64,
    /// Set while the file system refuses our writes (read-only, permissions), until a write
    /// succeeds again: what `status` says.
    unwritable: Option<String>,
    /// The disk took writes again after refusing them, and the downloads that failed meanwhile
    /// (each waiting out its own, ever longer, retry) have not been told yet.
    recovered: bool,
    /// What the last reading of the free space left to spare beyond the floors and every
    /// download started since.
    spare: Option<Spare>,
    /// The condition in `full` began with a write the file system refused for want of space
    /// while its reading showed room (a quota, or what it does not count): a reading cannot
    /// end it, only a written download can (found by `bench-scale.sh`: every reading ended
    /// the condition, every download started again and failed, 1.3 million warnings).
    refused: Option<RefusedWrite>,
    /// When the disk was last looked at while downloads waited for space (for `status`).
    checked_at: Option<SystemTime>,
}

impl DiskGuard {
    pub(super) fn new(floor: MinFreeDisk) -> Self {
        Self {
            floor,
            backoff: Backoff::new(DISK_RETRY_MIN, DISK_RETRY_MAX),
            full: None,
            full_needed: 0,
            unwritable: None,
            recovered: false,
            spare: None,
            refused: None,
            checked_at: None,
        }
    }

    /// Takes `size` bytes from what the last reading of the free space left to spare, if that
    /// reading is recent ([`DISK_READING_FRESH`]) and they fit; otherwise the caller asks
    /// [`DiskGuard::room_for`].
    pub(super) fn spend_spare(&mut self, size: u64, now: Instant) -> bool {
        match &mut self.spare {
            Some(spare)
                if now.saturating_duration_since(spare.read_at) < DISK_READING_FRESH
                    && size <= spare.bytes
                    && spare.files > 0 =>
            {
                spare.bytes -= size;
                spare.files -= 1;
                true
            }
            _ => false,
        }
    }

    /// When the disk was last looked at while downloads wait for space; `None` when they do
    /// not.
    pub(super) fn checked_at(&self) -> Option<SystemTime> {
        self.full.as_ref().and(self.checked_at)
    }

    /// Why downloads wait, while they do: the disk is full, or refuses writes.
    pub(super) fn full(&self) -> Option<&str> {
        self.unwritable.as_deref().or(self.full.as_deref())
    }

    /// A write was refused by the file system (`what`: read-only, permission denied); said
    /// once until a write succeeds again. Returns the wait before trying again.
    pub(super) fn refused(&mut self, what: &str, error: &str, folder: &str) -> Duration {
        self.spare = None;
        if self.unwritable.is_none() {
            warn!(
                folder,
                "{what}: {error}; downloads wait until it can be written"
            );
        }
        self.unwritable = Some(format!("{what} — {error}"));
        self.backoff.next()
    }

    /// Whether the disk recovered since this was last asked: the downloads waiting for a retry
    /// after failing for want of space or writability may all go now.
    pub(super) fn take_recovered(&mut self) -> bool {
        std::mem::take(&mut self.recovered)
    }

    /// A download was written: the file system takes our writes (again).
    pub(super) fn wrote(&mut self, folder: &str) {
        if self.refused.as_ref().is_some_and(|refused| refused.probing) {
            self.refused = None;
            if self.full.take().is_some() {
                info!(folder, "disk space available again: downloads resume");
            }
            self.backoff.reset();
            self.recovered = true;
        }
        if self.unwritable.take().is_some() {
            info!(folder, "the folder can be written again: downloads resume");
            self.backoff.reset();
            self.recovered = true;
        }
    }

    /// Whether a file of `size` bytes may be written under `root` now, with `reserved` bytes
    /// already being written by running downloads; frees old versions first when short. `Ok`
    /// holds the bytes to spare after it (more files may start within them without asking the
    /// disk again), `Err` the wait before trying again. A file system that cannot say how full
    /// it is is not checked.
    pub(super) fn room_for(
        &mut self,
        root: &Path,
        size: u64,
        reserved: u64,
        folder: &str,
    ) -> Result<u64, Duration> {
        let Ok(space) = write::disk_space(root) else {
            return Ok(u64::MAX);
        };
        let floor = self.floor.bytes(space.total);
        let needed = size.saturating_add(reserved).saturating_add(floor);
        let mut available = space.available;
        if available < needed {
            let freed = versions::free_space(root, needed - available);
            if freed > 0 {
                info!(
                    folder,
                    "removed {} MiB of old versions to make room",
                    freed / MIB
                );
                available = write::disk_space(root).map_or(available, |space| space.available);
            }
        }
        let files_short = space.free_files.filter(|free| *free <= FILES_KEPT_FREE);
        if available >= needed && files_short.is_none() {
            if let Some(refused) = &mut self.refused {
                self.checked_at = Some(SystemTime::now());
                refused.try_probe(Instant::now(), self.backoff.current())?;
                self.spare = None;
                return Ok(0);
            }
            if self.full.is_some() && size >= self.full_needed {
                self.full = None;
                info!(folder, "disk space available again: downloads resume");
                self.recovered = true;
                self.backoff.reset();
            }
            let files = space
                .free_files
                .map_or(u64::MAX, |free| free - FILES_KEPT_FREE);
            self.spare = Some(Spare {
                read_at: Instant::now(),
                bytes: available - needed,
                files,
            });
            return Ok(available - needed);
        }
        let reason = match files_short {
            Some(free) if available >= needed => format!(
                "disk full — no room for more files: {free} more can be created and \
                 {FILES_KEPT_FREE} are kept free ({} MiB free)",
                available / MIB,
            ),
            _ => format!(
                "disk full — {} MiB free, {} MiB needed (min_free_disk keeps {} MiB free)",
                available / MIB,
                (size + reserved + floor).div_ceil(MIB),
                floor.div_ceil(MIB),
            ),
        };
        self.full_needed = if self.full.is_some() {
            self.full_needed.min(size)
        } else {
            size
        };
        Err(self.report(reason, folder))
    }

    /// Nothing waits for space any more (what waited was written, or is no longer wanted):
    /// the condition is over, whatever the disk holds.
    pub(super) fn nothing_waiting(&mut self, folder: &str) {
        self.refused = None;
        if self.full.take().is_some() {
            info!(folder, "no download waits for disk space any more");
            self.backoff.reset();
        }
    }

    /// A write failed for want of space (the file system filled up under us); returns the wait
    /// before trying again.
    pub(super) fn failed(&mut self, error: &str, folder: &str) -> Duration {
        // The file system itself ran out: the download that is written next ends the condition.
        self.full_needed = 0;
        let wait = self.report(format!("disk full — {error}"), folder);
        self.refused = Some(RefusedWrite {
            probe_at: Instant::now() + wait,
            probing: false,
        });
        wait
    }

    fn report(&mut self, reason: String, folder: &str) -> Duration {
        self.spare = None;
        self.checked_at = Some(SystemTime::now());
        if self.full.is_none() {
            warn!(folder, "{reason}; downloads wait until there is space");
        }
        self.full = Some(reason);
        self.backoff.next()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_file_that_fits_does_not_end_the_wait_of_a_big_one() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let available = write::disk_space(root).unwrap().available;
        let mut guard = DiskGuard::new(MinFreeDisk::Bytes(0));
        let huge = available.saturating_mul(2);
        assert!(guard.room_for(root, huge, 0, "f").is_err());
        assert!(guard.full().is_some());
        // A small file still starts, but the disk is not "available again" for the big one.
        assert!(guard.room_for(root, 1024, 0, "f").is_ok());
        assert!(guard.full().is_some(), "still full for the big file");
        assert!(!guard.take_recovered());
        // The big file is no longer wanted: nothing waits, the condition is over.
        guard.nothing_waiting("f");
        assert!(guard.full().is_none());

        // Running out while writing, with room to spare by the reading: one download tries
        // once the wait is over, the others wait; a written one ends the condition, and the
        // downloads that failed meanwhile are told to go.
        let wait = guard.failed("No space left on device", "f");
        assert!(guard.full().is_some());
        guard.wrote("f");
        assert!(
            guard.full().is_some(),
            "a download from before the refusal does not end it"
        );
        assert!(
            guard.room_for(root, 1024, 0, "f").is_err(),
            "the wait is not over"
        );
        guard.refused.as_mut().unwrap().probe_at = Instant::now();
        assert!(guard.room_for(root, 1024, 0, "f").is_ok(), "one tries");
        assert!(!guard.spend_spare(1, Instant::now()), "and only one");
        let next = guard.room_for(root, 1024, 0, "f").unwrap_err();
        assert!(
            next > wait && next <= DISK_RETRY_MAX,
            "{next:?} after {wait:?}"
        );
        assert!(guard.full().is_some(), "a reading does not end it");
        assert!(guard.checked_at().is_some());
        assert!(!guard.take_recovered());
        guard.wrote("f");
        assert!(guard.full().is_none());
        assert!(guard.checked_at().is_none());
        assert!(guard.take_recovered());
        assert!(!guard.take_recovered(), "said once");
        assert!(guard.room_for(root, 1024, 0, "f").is_ok());
    }

    #[test]
    fn a_recent_reading_is_spent_file_by_file_then_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut guard = DiskGuard::new(MinFreeDisk::Bytes(0));
        let start = Instant::now();
        assert!(!guard.spend_spare(1, start), "nothing read yet");
        let spare = guard.room_for(root, 1024, 0, "f").unwrap();
        let read_at = guard.spare.unwrap().read_at;
        assert!(guard.spend_spare(spare / 2, read_at));
        assert!(
            !guard.spend_spare(spare / 2 + 2, read_at),
            "more than the reading left"
        );
        assert!(guard.spend_spare(spare / 2, read_at));
        guard.room_for(root, 1024, 0, "f").unwrap();
        let read_at = guard.spare.unwrap().read_at;
        assert!(!guard.spend_spare(1, read_at + DISK_READING_FRESH), "stale");
        assert!(guard.spend_spare(1, read_at));
        guard.failed("No space left on device", "f");
        assert!(!guard.spend_spare(1, read_at), "the disk filled up");
        guard.nothing_waiting("f");
        guard.room_for(root, 1024, 0, "f").unwrap();
        guard.refused("read-only", "EROFS", "f");
        assert!(!guard.spend_spare(1, read_at), "the disk refused a write");
    }
}
