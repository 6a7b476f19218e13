//! Flushes shared by every writer finishing on one file system at once.
//!
//! Each received file is made durable twice: its data before the rename that makes it visible,
//! and its directory entry after. Receiving many small files, up to
//! [`MAX_CONCURRENT_DOWNLOADS`] writers each asked the disk for two flushes of their own: most
//! of the receiving daemon's system time. `syncfs` makes durable every change made to the file
//! system before it started (data, inodes and directory entries alike), so one `syncfs` covers
//! every writer waiting when it starts, however many files and directories they touched
//! (group commit, [`Groups`]).
//!
//! A writer alone does its own flush (`fsync` of its file or directory): `syncfs` would also
//! wait for unrelated dirty data on the same file system, which a lone edit should not. Only
//! when several writers wait at once does the one that runs the flush use `syncfs` for all of
//! them. The guarantee is the one of a private flush: when [`flush`] returns `Ok`, a flush
//! covering the caller's changes began after the call began and has succeeded.
//!
//! [`MAX_CONCURRENT_DOWNLOADS`]: crate::folder::queue::MAX_CONCURRENT_DOWNLOADS

use std::fs::File;
use std::io;

use super::group_commit::Groups;

/// The file systems someone is flushing, by device number.
static FILE_SYSTEMS: Groups<u64> = Groups::new();

/// Makes the caller's changes on the file system holding `file` (device `dev`) durable: by
/// running `alone` when no other caller waits, else by one `syncfs` shared with them.
pub(crate) fn flush(
    file: &File,
    dev: u64,
    alone: impl FnOnce() -> io::Result<()>,
) -> io::Result<()> {
    FILE_SYSTEMS.flush(&dev, |waiting| {
        #[cfg(test)]
        let started = tests::tick();
        let result = if waiting == 1 {
            alone()
        } else {
            syncfs(file, dev)
        };
        #[cfg(test)]
        tests::log(dev, waiting > 1, started);
        result
    })
}

/// Makes every change on the file system holding `file` (device `dev`) durable with one
/// `syncfs`, shared with the callers flushing there at once: for a caller with changes to many
/// files, which their own fsyncs would cost more.
pub(crate) fn flush_everything(file: &File, dev: u64) -> io::Result<()> {
    FILE_SYSTEMS.flush(&dev, |_| syncfs(file, dev))
}

#[cfg_attr(not(test), allow(unused_variables))]
fn syncfs(file: &File, dev: u64) -> io::Result<()> {
    #[cfg(test)]
    if let Some(errno) = tests::lock(&tests::FAILING).get(&dev) {
        return Err(io::Error::from_raw_os_error(*errno));
    }
    rustix::fs::syncfs(file).map_err(io::Error::from)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Barrier, LazyLock, Mutex, MutexGuard, PoisonError, mpsc};
    use std::time::{Duration, Instant};

    pub(super) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
        mutex.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Groups whose shared `syncfs` fails, with this error number.
    pub(super) static FAILING: LazyLock<Mutex<HashMap<u64, i32>>> =
        LazyLock::new(|| Mutex::new(HashMap::new()));

    /// One clock for the order of events across threads.
    static CLOCK: AtomicU64 = AtomicU64::new(0);
    /// Every flush run: its group's device number, whether it was a shared `syncfs`, when it
    /// started and when it ended.
    static FLUSHES: Mutex<Vec<(u64, bool, u64, u64)>> = Mutex::new(Vec::new());

    pub(super) fn tick() -> u64 {
        CLOCK.fetch_add(1, Ordering::SeqCst)
    }

    pub(super) fn log(dev: u64, shared: bool, started: u64) {
        lock(&FLUSHES).push((dev, shared, started, tick()));
    }

    /// The flushes run for the group of `dev`: (shared, start, end).
    fn flushes_of(dev: u64) -> Vec<(bool, u64, u64)> {
        lock(&FLUSHES)
            .iter()
            .filter(|(of, ..)| *of == dev)
            .map(|&(_, shared, start, end)| (shared, start, end))
            .collect()
    }

    /// A caller's arrival, the span of the flush it ran itself (if it did), and its return.
    type Call = (u64, Option<(u64, u64)>, u64);

    /// A device number of the test's own, so that flushes of other tests running at the same
    /// time (the writer's commits, on the real device) never join its group.
    fn private_dev() -> u64 {
        static NEXT: AtomicU64 = AtomicU64::new(u64::MAX / 2);
        NEXT.fetch_add(1, Ordering::SeqCst)
    }

    fn arrived(dev: u64) -> u64 {
        FILE_SYSTEMS.arrived(&dev)
    }

    fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Starts a first caller, with `files[0]`, whose own flush runs until the returned sender
    /// releases it, then ends with `outcome`; returns once that flush runs.
    fn first_flush_held(
        files: &Arc<Vec<File>>,
        dev: u64,
        outcome: io::Result<()>,
    ) -> (std::thread::JoinHandle<io::Result<()>>, mpsc::Sender<()>) {
        let (release, released) = mpsc::channel::<()>();
        let files = files.clone();
        let first = std::thread::spawn(move || {
            flush(&files[0], dev, || {
                released.recv().unwrap();
                outcome
            })
        });
        wait_until("the first flush to run", || arrived(dev) == 1);
        (first, release)
    }

    /// `n` files in a fresh directory (kept open by the returned guard) and a device number of
    /// the test's own.
    fn setup(n: usize) -> (tempfile::TempDir, Arc<Vec<File>>, u64) {
        let dir = tempfile::tempdir().unwrap();
        let files = (0..n)
            .map(|i| File::create(dir.path().join(format!("f{i}"))).unwrap())
            .collect();
        (dir, Arc::new(files), private_dev())
    }

    #[test]
    fn a_lone_caller_runs_its_own_flush() {
        let (_dir, files, dev) = setup(1);
        let file = &files[0];
        let mut own = 0;
        flush(file, dev, || {
            own += 1;
            file.sync_all()
        })
        .unwrap();
        assert_eq!(own, 1);
        let flushes = flushes_of(dev);
        assert_eq!(flushes.len(), 1);
        assert!(!flushes[0].0, "not a shared syncfs");
        assert!(!FILE_SYSTEMS.is_open(&dev), "the group is gone");
    }

    #[test]
    fn callers_waiting_together_share_one_syncfs_that_began_after_they_arrived() {
        let (_dir, files, dev) = setup(5);
        // The others arrive while the first caller's own flush runs.
        let (first, release) = first_flush_held(&files, dev, Ok(()));
        let others: Vec<_> = (1..5)
            .map(|i| {
                let files = files.clone();
                std::thread::spawn(move || {
                    let arrived = tick();
                    flush(&files[i], dev, || {
                        panic!("a caller that does not wait alone ran a flush of its own")
                    })
                    .map(|()| (arrived, tick()))
                })
            })
            .collect();
        wait_until("the others to arrive", || arrived(dev) == 5);
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        let calls: Vec<(u64, u64)> = others
            .into_iter()
            .map(|t| t.join().unwrap().unwrap())
            .collect();
        let shared: Vec<(u64, u64)> = flushes_of(dev)
            .into_iter()
            .filter(|(shared, ..)| *shared)
            .map(|(_, start, end)| (start, end))
            .collect();
        assert_eq!(shared.len(), 1, "one syncfs for the four: {shared:?}");
        let (start, end) = shared[0];
        for (arrived, returned) in calls {
            assert!(start > arrived && end < returned, "{arrived}..{returned}");
        }
        assert!(!FILE_SYSTEMS.is_open(&dev), "the group is gone");
    }

    #[test]
    fn many_concurrent_callers_each_return_after_a_flush_that_began_after_them() {
        let threads = 16;
        let (_dir, all, dev) = setup(threads);
        let barrier = Arc::new(Barrier::new(threads));
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let (all, barrier) = (all.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    let mut calls = Vec::new();
                    for _ in 0..30 {
                        let file = &all[i];
                        std::io::Write::write_all(&mut &*file, b"x").unwrap();
                        let arrived = tick();
                        // The span of this caller's own flush, if it ran one.
                        let mut own = None;
                        flush(file, dev, || {
                            let started = tick();
                            let synced = file.sync_all();
                            own = Some((started, tick()));
                            synced
                        })
                        .unwrap();
                        calls.push((arrived, own, tick()));
                    }
                    calls
                })
            })
            .collect();
        let calls: Vec<Call> = handles
            .into_iter()
            .flat_map(|handle| handle.join().unwrap())
            .collect();
        let shared: Vec<(u64, u64)> = flushes_of(dev)
            .into_iter()
            .filter(|(shared, ..)| *shared)
            .map(|(_, start, end)| (start, end))
            .collect();
        for (arrived, own, returned) in &calls {
            let covered = own
                .iter()
                .chain(&shared)
                .any(|(start, end)| start > arrived && end < returned);
            assert!(covered, "a call ({arrived}..{returned}) returned uncovered");
        }
        assert!(flushes_of(dev).len() <= calls.len());
        assert!(!FILE_SYSTEMS.is_open(&dev), "the group is gone");
    }

    #[test]
    fn a_failed_flush_fails_only_the_callers_it_covered() {
        let (_dir, files, dev) = setup(2);
        let (first, release) =
            first_flush_held(&files, dev, Err(io::Error::other("the disk said no")));
        let second = {
            let files = files.clone();
            std::thread::spawn(move || {
                let mut own = 0;
                flush(&files[1], dev, || {
                    own += 1;
                    Ok(())
                })
                .map(|()| own)
            })
        };
        wait_until("the second caller to arrive", || arrived(dev) == 2);
        release.send(()).unwrap();
        let error = first.join().unwrap().unwrap_err().to_string();
        assert!(error.contains("the disk said no"), "{error}");
        // It arrived after the failed flush began: that flush never covered it, and it was
        // then alone, so its own flush did.
        assert_eq!(second.join().unwrap().unwrap(), 1);
    }

    #[test]
    fn a_failed_syncfs_fails_every_caller_it_covered_with_its_error() {
        let (_dir, files, dev) = setup(4);
        lock(&FAILING).insert(dev, libc::ENOSPC);
        let (first, release) = first_flush_held(&files, dev, Ok(()));
        let others: Vec<_> = (1..4)
            .map(|i| {
                let files = files.clone();
                std::thread::spawn(move || flush(&files[i], dev, || Ok(())))
            })
            .collect();
        wait_until("the others to arrive", || arrived(dev) == 4);
        release.send(()).unwrap();
        first.join().unwrap().unwrap();
        for other in others {
            // A full disk stays a full disk (the writer then gives the temp file's space back).
            let error = other.join().unwrap().unwrap_err();
            assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
        }
        assert_eq!(
            flushes_of(dev)
                .iter()
                .filter(|(shared, ..)| *shared)
                .count(),
            1,
            "one syncfs failed for all three"
        );
    }
}
