//! Giving freed heap memory back to the system once a busy period is over.
//!
//! glibc keeps what a program frees for its next allocations instead of returning it, so a
//! daemon that once scanned or received 100,000 files stayed at its peak for good (485 MiB
//! after indexing such a tree, where the live heap was a third of that; `scripts/bench-scale.sh`).
//! Code that has just finished such work calls [`after_busy_period`]; one thread waits until
//! [`QUIET_BEFORE_TRIM`] has passed without another call, then calls `malloc_trim`, at most once
//! per [`MIN_TRIM_INTERVAL`] (a trim walks the whole heap under its locks).

use std::sync::OnceLock;
use std::sync::mpsc::{self, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

/// How long calls must stop before the trim runs, so a burst of work is trimmed once, after it.
pub const QUIET_BEFORE_TRIM: Duration = Duration::from_secs(1);
/// The shortest time between two trims.
pub const MIN_TRIM_INTERVAL: Duration = Duration::from_secs(10);

static TRIMMER: OnceLock<Option<SyncSender<()>>> = OnceLock::new();

/// Asks for freed memory to be returned to the system once things are quiet. Cheap: callers
/// may call it after every unit of work.
pub fn after_busy_period() {
    let sender = TRIMMER.get_or_init(|| {
        // One pending request is all that matters; more are dropped by `try_send`.
        let (tx, rx) = mpsc::sync_channel::<()>(1);
        std::thread::Builder::new()
            .name("meshsync-trim".into())
            .spawn(move || run(rx))
            .ok()
            .map(|_| tx)
    });
    if let Some(tx) = sender {
        let _ = tx.try_send(());
    }
}

fn run(requests: mpsc::Receiver<()>) {
    let mut last_trim: Option<Instant> = None;
    while requests.recv().is_ok() {
        // Wait for the calls to stop, and for the interval since the last trim.
        loop {
            let since_last = last_trim.map_or(MIN_TRIM_INTERVAL, |t| t.elapsed());
            let wait = QUIET_BEFORE_TRIM.max(MIN_TRIM_INTERVAL.saturating_sub(since_last));
            match requests.recv_timeout(wait) {
                Ok(()) => continue,
                Err(RecvTimeoutError::Timeout) => break,
                Err(RecvTimeoutError::Disconnected) => return,
            }
        }
        trim_now();
        last_trim = Some(Instant::now());
    }
}

/// Returns free memory at the top of glibc's heaps and its free pages to the system.
fn trim_now() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: `malloc_trim` only releases free memory of glibc's own heap.
    unsafe {
        libc::malloc_trim(0);
    }
}
