//! What a folder reports about itself: its state, counters and transfer rate.

use std::collections::VecDeque;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::time::Instant;

/// What a folder is doing, for `status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FolderState {
    /// Reading the folder.
    Scanning,
    /// Fetching or writing changes.
    Syncing,
    /// Nothing to do.
    Idle,
    /// Stopped; the reason says why.
    Paused,
    /// Held by the mass-deletion breaker until the user decides; the reason says why and how.
    Held,
    /// Work waits on a condition the daemon checks again by itself (a full disk); the reason
    /// says which.
    Error,
}

/// A folder's status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FolderStatus {
    /// The folder path.
    pub path: String,
    /// What it is doing.
    pub state: FolderState,
    /// Why it is paused.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Entries waiting to be written here.
    pub needed_files: u64,
    /// Bytes those entries still need fetched.
    pub needed_bytes: u64,
    /// Content bytes fetched from peers since start.
    pub fetched_bytes: u64,
    /// Content bytes served to peers since start.
    pub served_bytes: u64,
    /// Recent fetch rate in bytes per second.
    pub rate_bytes_per_sec: f64,
    /// Chunks that did not match their hash (discarded and fetched elsewhere).
    pub bad_chunks: u64,
    /// Entries from peers that were refused (unsafe paths and the like).
    pub refused: u64,
    /// Files on disk and entries tracked.
    pub local_entries: u64,
    /// Of those, regular files.
    #[serde(default)]
    pub files: u64,
    /// Directories.
    #[serde(default)]
    pub directories: u64,
    /// Symbolic links.
    #[serde(default)]
    pub symlinks: u64,
    /// Bytes in the regular files.
    #[serde(default)]
    pub file_bytes: u64,
    /// Local deletes found but not yet sent: they wait until deleting has stopped for a moment
    /// and the folder is still there, so that removing or unmounting the whole folder sends none.
    #[serde(default)]
    pub deletes_waiting: u64,
    /// Local paths that cannot be synced, with the reason (at most 100 listed).
    #[serde(default)]
    pub unsyncable: Vec<Unsyncable>,
    /// How many there are.
    #[serde(default)]
    pub unsyncable_count: u64,
    /// Files that keep changing: read and sent as they are every 10 s while the writes go on
    /// (at most 100 listed).
    #[serde(default)]
    pub changing: Vec<String>,
    /// Whether changes are seen as they happen (a file watcher runs); without, a change is
    /// found by the next full rescan.
    #[serde(default)]
    pub watching: bool,
    /// Why the folder is not watched (the kernel's inotify limit, and how to raise it);
    /// `null` when it is, or when it is paused.
    #[serde(default)]
    pub watch_problem: Option<String>,
    /// Whether the folder has read what was synced here since start (every synced row, to
    /// count them: seconds at 10^6 files). Until then it says `scanning`, its counts above are
    /// 0, and its share's `files`, `directories` and `deleted` are `null`.
    #[serde(default = "loaded_by_default")]
    pub loaded: bool,
    /// Scans run since start (full and partial).
    pub scans: u64,
    /// Files read by scans since start (a file is read when it is new or its `lstat` changed;
    /// a read repeated because the file changed while read counts twice).
    #[serde(default)]
    pub hashed_files: u64,
    /// Bytes read by scans since start.
    #[serde(default)]
    pub hashed_bytes: u64,
    /// Whether the periodic verification walk (what catches changes the watcher missed) is
    /// under way: while the watcher runs, it goes a slice of 16,384 paths at a time, paced.
    #[serde(default)]
    pub verifying: bool,
    /// Paths the verification walk under way has checked so far, or the last one did (a full
    /// scan counts as one).
    #[serde(default)]
    pub verified_paths: u64,
    /// When the last walk of the whole folder (a full scan, or a verification's last slice)
    /// ended (RFC 3339, UTC); `null` until one has since start.
    #[serde(default)]
    pub last_verified_at: Option<String>,
    /// The last error; `null` when there has been none since start.
    pub last_error: Option<String>,
    /// When it happened (RFC 3339, UTC); `null` with it.
    #[serde(default)]
    pub last_error_at: Option<String>,
    /// While downloads wait for disk space (`reason` says why): when the disk was last looked
    /// at (RFC 3339, UTC); `null` otherwise.
    #[serde(default)]
    pub disk_checked_at: Option<String>,
}

/// A status from a daemon that did not say: it answered once loaded.
fn loaded_by_default() -> bool {
    true
}

/// A local path that cannot be synced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unsyncable {
    /// Its path in the folder (lossy if its name is not UTF-8).
    pub path: String,
    /// Why it is not synced.
    pub reason: String,
}

/// Byte and error counters of one folder, shown in its status.
#[derive(Default)]
pub struct Counters {
    pub fetched: std::sync::atomic::AtomicU64,
    pub served: std::sync::atomic::AtomicU64,
    pub bad_chunks: std::sync::atomic::AtomicU64,
    /// Set once the folder's file system refused a received file's mark (see
    /// [`super::received`]), so that it is said once.
    pub marks_unsupported: std::sync::atomic::AtomicBool,
}

/// The recent fetch rate, from the byte counter sampled at each status request.
#[derive(Default)]
pub(super) struct RateMeter {
    samples: VecDeque<(Instant, u64)>,
}

impl RateMeter {
    pub(super) fn rate(&mut self, total: u64) -> f64 {
        let now = Instant::now();
        self.samples.push_back((now, total));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > Duration::from_secs(5))
        {
            self.samples.pop_front();
        }
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, b0)), Some((t1, b1))) if t1 > t0 => {
                (b1 - b0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

impl FolderStatus {
    /// The status of a folder whose actor is not running (its share is paused by the user).
    pub fn stopped(path: &std::path::Path, reason: Option<String>) -> Self {
        FolderStatus {
            path: path.display().to_string(),
            state: FolderState::Paused,
            reason,
            needed_files: 0,
            needed_bytes: 0,
            fetched_bytes: 0,
            served_bytes: 0,
            rate_bytes_per_sec: 0.0,
            bad_chunks: 0,
            refused: 0,
            local_entries: 0,
            files: 0,
            directories: 0,
            symlinks: 0,
            file_bytes: 0,
            deletes_waiting: 0,
            unsyncable: Vec::new(),
            unsyncable_count: 0,
            changing: Vec::new(),
            watching: false,
            watch_problem: None,
            loaded: false,
            scans: 0,
            hashed_files: 0,
            hashed_bytes: 0,
            verifying: false,
            verified_paths: 0,
            last_verified_at: None,
            last_error: None,
            last_error_at: None,
            disk_checked_at: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_error_is_always_present_null_when_none() {
        let status = FolderStatus {
            state: FolderState::Idle,
            ..FolderStatus::stopped(std::path::Path::new("/f"), None)
        };
        let json = serde_json::to_value(&status).unwrap();
        assert!(
            json["last_error"].is_null() && json.get("last_error").is_some(),
            "{json}"
        );
        assert!(json.get("last_error_at").is_some(), "{json}");
    }
}
