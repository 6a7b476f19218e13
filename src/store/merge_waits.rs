//! Counts of peers' merges that wait for the daemon's readers of change notices
//! ([`super::StoreHandle::merge`]), for `status` and tests.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use serde::{Deserialize, Serialize};

/// Merges waiting now, and how many ever waited.
#[derive(Debug, Default)]
pub(super) struct MergeWaits {
    waiting: AtomicUsize,
    waited: AtomicU64,
}

impl MergeWaits {
    /// Counts one merge as waiting while the returned guard lives: the count goes down when
    /// the wait ends and also when the merge's future is dropped mid-wait (a session
    /// cancelled), which a decrement after the wait would miss.
    pub(super) fn start(&self) -> WaitingMerge<'_> {
        self.waiting.fetch_add(1, Ordering::Relaxed);
        self.waited.fetch_add(1, Ordering::Relaxed);
        WaitingMerge(&self.waiting)
    }

    pub(super) fn waiting(&self) -> usize {
        self.waiting.load(Ordering::Relaxed)
    }

    pub(super) fn waited(&self) -> u64 {
        self.waited.load(Ordering::Relaxed)
    }
}

/// One merge counted as waiting (see [`MergeWaits::start`]).
pub(super) struct WaitingMerge<'a>(&'a AtomicUsize);

impl Drop for WaitingMerge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `change_notices` in `GET /v1/status`: how far the daemon's own readers of the store's change
/// notices (the engine, each folder) are behind, and the merges of peers' entries that waited
/// for them. Merges waiting during a first sync are the store keeping the folders' backlog
/// bounded, not a fault; merges that keep waiting with no sync under way would be one.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeNoticeStatus {
    /// Notices the slowest reader has not taken yet.
    pub backlog: u64,
    /// The backlog past which peers' merges wait (`CHANGE_BACKLOG_MAX`).
    pub backlog_limit: u64,
    /// Merges waiting now.
    pub merges_waiting: u64,
    /// Merges that waited since the daemon started.
    pub merges_waited: u64,
}
