//! The database file and who may reach it. redb refuses every operation after one I/O error
//! (a full disk, a failing device) until the database is closed and opened again, so the store
//! thread reopens it once it can; meanwhile everything that reads it, on any thread, gets a
//! clear error that says why, and `status` shows the same.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use redb::Database;

use super::{STORE_CACHE_BYTES, StoreError};

/// How often the store thread tries to reopen a database that failed, at most.
pub const REOPEN_EVERY: Duration = Duration::from_secs(2);

/// A failure this soon after the last one is the same condition (a disk that is nearly full
/// fails some writes and not others): logged once, not at each turn.
pub const FAILURE_QUIET: Duration = Duration::from_secs(600);

/// Opens (or creates) the database file at `path`, repairing it if it was not closed cleanly.
pub(super) fn open(path: &Path) -> Result<Database, StoreError> {
    Database::builder()
        .set_cache_size(STORE_CACHE_BYTES)
        .create(path)
        .map_err(|e| StoreError::Open {
            path: path.to_owned(),
            message: e.to_string(),
        })
}

/// Where the open database is, shared by the store thread (which owns it) with handles and
/// readers (which reach it weakly, so that they never keep it open after the store stops or
/// across a reopen).
#[derive(Default)]
pub(super) struct DbSlot {
    current: RwLock<Weak<Database>>,
    /// Why the database is closed while the store runs; `None` while it works.
    problem: Mutex<Option<String>>,
    stopped: AtomicBool,
}

impl DbSlot {
    /// The open database, or why there is none.
    pub(super) fn get(&self) -> Result<Arc<Database>, StoreError> {
        if let Some(db) = self.current.read().expect("db slot lock").upgrade() {
            return Ok(db);
        }
        if self.stopped.load(Ordering::Acquire) {
            return Err(StoreError::Stopped);
        }
        Err(self.unavailable())
    }

    /// The error for a database that is closed while the store runs.
    pub(super) fn unavailable(&self) -> StoreError {
        StoreError::Unavailable(
            self.problem()
                .unwrap_or_else(|| "the store is being reopened".to_owned()),
        )
    }

    /// Makes `db` the one readers reach.
    pub(super) fn set(&self, db: &Arc<Database>) {
        *self.current.write().expect("db slot lock") = Arc::downgrade(db);
    }

    /// The database works again; whether it had a problem.
    pub(super) fn recovered(&self) -> bool {
        self.problem.lock().expect("db slot lock").take().is_some()
    }

    /// The database failed: readers get `problem` until [`Self::set`] gives them another one.
    pub(super) fn close(&self, problem: String) {
        *self.current.write().expect("db slot lock") = Weak::new();
        *self.problem.lock().expect("db slot lock") = Some(problem);
    }

    /// Why the database cannot be used now, if it cannot.
    pub(super) fn problem(&self) -> Option<String> {
        self.problem.lock().expect("db slot lock").clone()
    }

    /// The store thread ended: reads fail with [`StoreError::Stopped`] from now on.
    pub(super) fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
    }
}

impl StoreError {
    /// Whether the store itself has said this (once, when its database failed), so that who
    /// gets it back need not say it again each time.
    pub fn is_logged_by_store(&self) -> bool {
        match self {
            StoreError::Unavailable(_) => true,
            StoreError::BatchFailed(e) => e.is_logged_by_store(),
            other => other.needs_reopen(),
        }
    }

    /// Whether this error left redb's file unusable until it is reopened.
    pub(super) fn needs_reopen(&self) -> bool {
        match self {
            StoreError::Db(redb::Error::Io(_) | redb::Error::PreviousIo) => true,
            StoreError::BatchFailed(e) => e.needs_reopen(),
            _ => false,
        }
    }
}
