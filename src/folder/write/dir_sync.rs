//! Directory fsyncs shared by the writers waiting on the same directory (group commit).
//!
//! Every rename, create and remove in a synced folder is followed by an fsync of its directory,
//! so that the new name survives a crash before anything is recorded about it. Receiving many
//! small files, up to [`MAX_CONCURRENT_DOWNLOADS`] writers finish in the same few directories at
//! once, and one fsync each was a tenth of the receiving daemon's CPU (and as many waits on the
//! disk). An fsync of a directory makes durable every change made to it before the fsync
//! started, so a writer whose change is covered by an fsync that started after the change was
//! made needs no fsync of its own: [`sync_dir`] waits for the next fsync of its directory,
//! running it itself when none is running (group commit, [`Groups`]). The guarantee is exactly the one of a private fsync:
//! when `sync_dir` returns `Ok`, an fsync that began after the call began has succeeded.
//!
//! [`MAX_CONCURRENT_DOWNLOADS`]: crate::folder::queue::MAX_CONCURRENT_DOWNLOADS

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use rustix::io::Errno;
use tracing::debug;

use super::group_commit::Groups;
use super::{WriteError, io_error, sys};

/// The directories someone is waiting to fsync.
static DIRECTORIES: Groups<PathBuf> = Groups::new();

/// Fsyncs a directory so that the entries just created, renamed or removed in it survive a crash.
/// File systems that cannot fsync a directory (`EINVAL`, some FUSE ones) are tolerated: there is
/// nothing more we could do on them. Concurrent callers for one directory share fsyncs (see the
/// module's documentation).
pub(crate) fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    sync_dir_shared(dir).map_err(|e| io_error("fsync directory", dir, e))
}

/// [`sync_dir`], with the system's error as it is.
pub(super) fn sync_dir_shared(dir: &Path) -> io::Result<()> {
    DIRECTORIES.flush(&dir.to_path_buf(), |_| fsync_dir(dir))
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    #[cfg(test)]
    let started = tests::tick();
    let result = File::open(dir).and_then(|d| d.sync_all());
    #[cfg(test)]
    tests::lock(&tests::FSYNCS).push((dir.to_path_buf(), started, tests::tick()));
    match result {
        Err(e) if sys::is_errno(&e, Errno::INVAL) => {
            debug!(path = %dir.display(), "directory fsync not supported");
            Ok(())
        }
        other => other,
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier, Mutex, MutexGuard, PoisonError};

    pub(in crate::folder::write) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One clock for the order of events across threads.
    static CLOCK: AtomicU64 = AtomicU64::new(0);
    /// Every fsync run: its directory, when it started and when it ended.
    pub(in crate::folder::write) static FSYNCS: Mutex<Vec<(PathBuf, u64, u64)>> =
        Mutex::new(Vec::new());

    pub(in crate::folder::write) fn tick() -> u64 {
        CLOCK.fetch_add(1, Ordering::SeqCst)
    }

    #[test]
    fn concurrent_callers_share_fsyncs_and_each_returns_after_one_that_began_after_it() {
        let dir = tempfile::tempdir().unwrap();
        let threads = 16;
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (path, barrier) = (dir.path().to_path_buf(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut calls = Vec::new();
                    for round in 0..50 {
                        std::fs::write(path.join(format!("f{i}-{round}")), b"x").unwrap();
                        let arrived = tick();
                        sync_dir(&path).unwrap();
                        calls.push((arrived, tick()));
                    }
                    calls
                })
            })
            .collect();
        let calls: Vec<(u64, u64)> = handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap())
            .collect();
        let fsyncs: Vec<(u64, u64)> = lock(&FSYNCS)
            .iter()
            .filter(|(path, _, _)| path == dir.path())
            .map(|&(_, start, end)| (start, end))
            .collect();
        // Each call returned after an fsync that started after the call and ended before it
        // returned: the guarantee of a private fsync.
        for (arrived, returned) in &calls {
            assert!(
                fsyncs
                    .iter()
                    .any(|(start, end)| start > arrived && end < returned),
                "a call ({arrived}..{returned}) returned without an fsync of its own span"
            );
        }
        assert!(fsyncs.len() <= calls.len());
        // Nobody is inside any more: the directory's entry is gone.
        assert!(!DIRECTORIES.is_open(&dir.path().to_path_buf()));
    }

    #[test]
    fn a_failed_fsync_is_reported_to_every_caller_it_covered() {
        // A directory that does not exist fails to open: every caller gets the error, and the
        // entry is removed anyway.
        let dir = tempfile::tempdir().unwrap();
        let gone = dir.path().join("gone");
        let handles: Vec<_> = (0..8)
            .map(|_| {
                let gone = gone.clone();
                std::thread::spawn(move || sync_dir(&gone))
            })
            .collect();
        for handle in handles {
            let error = handle.join().unwrap().unwrap_err().to_string();
            assert!(error.contains("fsync directory"), "{error}");
        }
        assert!(!DIRECTORIES.is_open(&gone));
    }
}
