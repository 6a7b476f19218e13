//! Group commit: callers that each need a flush share one that began after they all arrived.
//!
//! A flush (an fsync of a directory, a `syncfs` of a file system) makes durable every change
//! made before it started, so a caller whose change is covered by a flush that started after
//! the change was made needs no flush of its own. [`Groups::flush`] waits for the next flush of
//! the caller's group, running it itself when none is running. The guarantee is exactly the one
//! of a private flush: when it returns `Ok`, a flush that began after the call began has
//! succeeded. Used per directory (`dir_sync`) and per file system (`fs_flush`).

use std::collections::HashMap;
use std::hash::Hash;
use std::io;
use std::sync::{Arc, Condvar, LazyLock, Mutex, MutexGuard, PoisonError};

/// The groups someone is flushing, by key, each with its callers' progress. An entry lives
/// only while a caller is inside [`Groups::flush`], so there is at most one per thread
/// flushing at that moment.
pub(super) struct Groups<K>(LazyLock<Mutex<HashMap<K, Arc<Group>>>>);

#[derive(Default)]
struct Group {
    progress: Mutex<Progress>,
    done: Condvar,
}

/// Tickets are handed out in order: caller `n` is covered once a flush that started after it
/// arrived has finished, that is once `synced >= n` (or, on failure, `failed_upto >= n`).
#[derive(Default)]
struct Progress {
    /// The last ticket handed out.
    arrived: u64,
    /// Every ticket up to this one is covered by a successful flush.
    synced: u64,
    /// Every ticket above `synced` and up to this one was covered by a flush that failed.
    failed_upto: u64,
    /// That failure, for each of those callers to report.
    failure: Option<Failure>,
    /// A flush is running.
    running: bool,
    /// Callers inside [`Groups::flush`] for this key; the entry goes when the last one leaves.
    inside: usize,
}

/// A failed flush, as each caller it covered reports it (an `io::Error` cannot be cloned).
pub(super) struct Failure {
    /// The system's error number, when there is one: a full disk stays a full disk.
    errno: Option<i32>,
    kind: io::ErrorKind,
    message: String,
}

impl Failure {
    pub(super) fn of(e: &io::Error) -> Failure {
        Failure {
            errno: e.raw_os_error(),
            kind: e.kind(),
            message: e.to_string(),
        }
    }

    pub(super) fn error(&self) -> io::Error {
        match self.errno {
            Some(errno) => io::Error::from_raw_os_error(errno),
            None => io::Error::new(self.kind, self.message.clone()),
        }
    }
}

impl<K: Hash + Eq + Clone> Groups<K> {
    pub(super) const fn new() -> Groups<K> {
        Groups(LazyLock::new(no_groups))
    }

    /// Returns once a flush of `key`'s group that began after this call began has finished:
    /// runs `flush` itself when none is running, telling it how many callers it covers (1: this
    /// one alone). A failed flush is every covered caller's error.
    pub(super) fn flush(
        &self,
        key: &K,
        flush: impl FnOnce(u64) -> io::Result<()>,
    ) -> io::Result<()> {
        let group = {
            let mut groups = lock(&self.0);
            let group = groups.entry(key.clone()).or_default().clone();
            lock(&group.progress).inside += 1;
            group
        };
        let result = wait_for_flush(&group, flush);
        let mut groups = lock(&self.0);
        let mut progress = lock(&group.progress);
        progress.inside -= 1;
        if progress.inside == 0 {
            groups.remove(key);
        }
        result
    }

    /// Callers that arrived in `key`'s group so far (0 when nobody is inside).
    #[cfg(test)]
    pub(super) fn arrived(&self, key: &K) -> u64 {
        lock(&self.0)
            .get(key)
            .map_or(0, |group| lock(&group.progress).arrived)
    }

    /// Whether anyone is inside for `key`.
    #[cfg(test)]
    pub(super) fn is_open(&self, key: &K) -> bool {
        lock(&self.0).contains_key(key)
    }
}

fn no_groups<K>() -> Mutex<HashMap<K, Arc<Group>>> {
    Mutex::new(HashMap::new())
}

/// Takes a ticket and returns once a flush that started after it has finished, running that
/// flush itself if no other caller is.
fn wait_for_flush(group: &Group, flush: impl FnOnce(u64) -> io::Result<()>) -> io::Result<()> {
    let mut progress = lock(&group.progress);
    progress.arrived += 1;
    let ticket = progress.arrived;
    loop {
        if progress.synced >= ticket {
            return Ok(());
        }
        if progress.failed_upto >= ticket {
            return Err(progress
                .failure
                .as_ref()
                .map_or_else(|| io::Error::other("flush failed"), Failure::error));
        }
        if !progress.running {
            break;
        }
        progress = group
            .done
            .wait(progress)
            .unwrap_or_else(PoisonError::into_inner);
    }
    // Everyone who arrived so far made their change before arriving, so a flush that starts
    // after this point covers them all, this caller included: its outcome is this caller's.
    let covers = progress.arrived;
    let waiting = covers - progress.synced.max(progress.failed_upto);
    progress.running = true;
    drop(progress);
    let result = flush(waiting);
    let mut progress = lock(&group.progress);
    progress.running = false;
    match &result {
        Ok(()) => progress.synced = covers,
        Err(e) => {
            progress.failed_upto = covers;
            progress.failure = Some(Failure::of(e));
        }
    }
    group.done.notify_all();
    result
}

/// Locks `mutex`; its data stays consistent even if a holder panicked (every update is a single
/// assignment), so a poisoned lock is used as is.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}
