//! The free-space floor: no download starts that would leave the folder's file system with
//! less than `min_free_disk`; when space is short, old versions go first; and a full disk is said
//! once, in `status` and the log, and checked again on a backoff until space appears.

use std::path::Path;
use std::time::{Duration, Instant};

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

const MIB: u64 = 1 << 20;

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
    /// When the free space was last read, and the bytes that reading left to spare beyond the
    /// floor and every download started since.
    spare: Option<(Instant, u64)>,
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
        }
    }

    /// Takes `size` bytes from what the last reading of the free space left to spare, if that
    /// reading is recent ([`DISK_READING_FRESH`]) and they fit; otherwise the caller asks
    /// [`DiskGuard::room_for`].
    pub(super) fn spend_spare(&mut self, size: u64, now: Instant) -> bool {
        match &mut self.spare {
            Some((read_at, spare))
                if now.saturating_duration_since(*read_at) < DISK_READING_FRESH
                    && size <= *spare =>
            {
                *spare -= size;
                true
            }
            _ => false,
        }
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
        let Ok((available, total)) = write::disk_space(root) else {
            return Ok(u64::MAX);
        };
        let floor = self.floor.bytes(total);
        let needed = size.saturating_add(reserved).saturating_add(floor);
        let mut available = available;
        if available < needed {
            let freed = versions::free_space(root, needed - available);
            if freed > 0 {
                info!(
                    folder,
                    "removed {} MiB of old versions to make room",
                    freed / MIB
                );
                available = write::disk_space(root).map_or(available, |(a, _)| a);
            }
        }
        if available >= needed {
            if self.full.is_some() && size >= self.full_needed {
                self.full = None;
                info!(folder, "disk space available again: downloads resume");
                self.recovered = true;
                self.backoff.reset();
            }
            self.spare = Some((Instant::now(), available - needed));
            return Ok(available - needed);
        }
        let reason = format!(
            "disk full — {} MiB free, {} MiB needed (min_free_disk keeps {} MiB free)",
            available / MIB,
            (size + reserved + floor).div_ceil(MIB),
            floor.div_ceil(MIB),
        );
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
        if self.full.take().is_some() {
            info!(folder, "no download waits for disk space any more");
            self.backoff.reset();
        }
    }

    /// A write failed for want of space (the file system filled up under us); returns the wait
    /// before trying again.
    pub(super) fn failed(&mut self, error: &str, folder: &str) -> Duration {
        // The file system itself ran out: any later download that fits ends the condition.
        self.full_needed = 0;
        self.report(format!("disk full — {error}"), folder)
    }

    fn report(&mut self, reason: String, folder: &str) -> Duration {
        self.spare = None;
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
        let (available, _) = write::disk_space(root).unwrap();
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

        // Running out while writing: any download that fits afterwards ends it, and the
        // downloads that failed meanwhile are told to go.
        let _ = guard.failed("No space left on device", "f");
        assert!(guard.full().is_some());
        assert!(guard.room_for(root, 1024, 0, "f").is_ok());
        assert!(guard.full().is_none());
        assert!(guard.take_recovered());
        assert!(!guard.take_recovered(), "said once");
    }

    #[test]
    fn a_recent_reading_is_spent_file_by_file_then_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut guard = DiskGuard::new(MinFreeDisk::Bytes(0));
        let start = Instant::now();
        assert!(!guard.spend_spare(1, start), "nothing read yet");
        let spare = guard.room_for(root, 1024, 0, "f").unwrap();
        let read_at = guard.spare.unwrap().0;
        assert!(guard.spend_spare(spare / 2, read_at));
        assert!(
            !guard.spend_spare(spare / 2 + 2, read_at),
            "more than the reading left"
        );
        assert!(guard.spend_spare(spare / 2, read_at));
        guard.room_for(root, 1024, 0, "f").unwrap();
        let read_at = guard.spare.unwrap().0;
        assert!(!guard.spend_spare(1, read_at + DISK_READING_FRESH), "stale");
        assert!(guard.spend_spare(1, read_at));
        guard.failed("No space left on device", "f");
        assert!(!guard.spend_spare(1, read_at), "the disk filled up");
        guard.room_for(root, 1024, 0, "f").unwrap();
        guard.refused("read-only", "EROFS", "f");
        assert!(!guard.spend_spare(1, read_at), "the disk refused a write");
    }
}
