//! What the folder's loop does after every event it handles: work that is due whatever the
//! event was (flushing what was synced, refilling the download window, starting downloads,
//! sweeping temp files once idle); and the housekeeping at start and at each periodic
//! verification (old versions pruned, stale temp files removed). Kept apart from the loop's `select!` so that each event's
//! handler stays about its event.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{debug, info};

use super::actor::{FolderActor, STALE_TEMP_AGE, SYNCED_FLUSH_INTERVAL, SYNCED_FLUSH_ROWS};
use super::{versions, write};

impl FolderActor {
    /// Runs once after each event of the loop.
    pub(super) async fn after_each_event(&mut self) {
        // Checked here too: while downloads keep finishing, the biased select never gets
        // to the flush timer, and the rows would wait for the end of the whole sync.
        if self.synced.unsent() >= SYNCED_FLUSH_ROWS
            || self.flush_at.is_some_and(|at| at <= Instant::now())
        {
            self.flush_synced();
        }
        if self.flush_at.is_none() && self.synced.has_unsent() {
            self.flush_at = Some(Instant::now() + SYNCED_FLUSH_INTERVAL);
        }
        if self.requeue_remote && !self.scanning {
            // A full scan does this at its end; `queue_all_remote` clears the flag.
            self.queue_all_remote().await;
        }
        self.fill_queue_window().await;
        self.start_downloads();
        self.sweep_if_idle();
        if self.queue.is_idle() && self.queue.next_retry().is_none() {
            self.disk.nothing_waiting(&self.name);
        }
    }

    /// Purges old trash and removes stale temp files, off the loop. Skipped while paused: the
    /// folder may not be there.
    pub(super) fn housekeeping(&self) {
        if self.paused.is_some() || !self.state_loaded {
            return;
        }
        let (root, policy, name) = (self.sources.root.clone(), self.versions, self.name.clone());
        tokio::task::spawn_blocking(move || match versions::prune(&root, &policy) {
            0 => {}
            n => debug!(folder = %name, "removed {n} versions the policy no longer keeps"),
        });
        self.sweep_temp_files(STALE_TEMP_AGE);
    }

    /// Removes our temp files older than `age` that no assembly holds, off the loop.
    pub(super) fn sweep_temp_files(&self, age: Duration) {
        let (root, name) = (self.sources.root.clone(), self.name.clone());
        tokio::task::spawn_blocking(move || match write::sweep_temp_files(&root, age) {
            Ok(0) => {}
            Ok(n) => info!(folder = %name, "removed {n} stale temp files"),
            Err(e) => debug!(folder = %name, "no temp file sweep: {e}"),
        });
    }

    /// Once nothing is queued, running or waiting for a retry, no download will resume from a
    /// temp file: leftovers go now, not
    /// [`STALE_TEMP_AGE`](super::actor::STALE_TEMP_AGE) later.
    fn sweep_if_idle(&mut self) {
        if self.temp_files_maybe
            && self.marks_read
            && self.paused.is_none()
            && self.queue.is_idle()
            && self.queue.next_retry().is_none()
        {
            self.temp_files_maybe = false;
            self.sweep_temp_files(Duration::ZERO);
        }
    }
}
