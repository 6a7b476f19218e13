//! The folder actor's side of the mass-deletion breaker ([`super::breaker`]): holding the share
//! when confirmed local deletes are too many, and the user's way out.
//!
//! Methods of the folder actor, kept apart from its loop.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::actor::FolderActor;
use super::scan::ScanRecord;

/// What the user decides for a held share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Send the held deletes: they were meant.
    AcceptDeletes,
    /// Fetch the deleted files back from members: they were not.
    Restore,
}

/// A share held by the breaker.
#[derive(Debug)]
pub(crate) struct Held {
    /// Why, with the counts, for `status`.
    pub(super) reason: String,
    /// The local deletes not sent.
    pub(super) paths: Vec<String>,
}

impl FolderActor {
    /// The deletes to send of those confirmed (`gone`): all of them, unless they trip the
    /// breaker (or it already holds the share), in which case they are held and none is.
    pub(super) fn deletes_to_send(
        &mut self,
        gone: Vec<String>,
    ) -> Vec<(String, Option<ScanRecord>)> {
        if let Some(held) = &mut self.held {
            held.paths.extend(gone);
            return Vec::new();
        }
        let now = Instant::now();
        let entries = self.synced.len() as u64;
        if let Some(trip) = self.breaker.check(gone.len() as u64, entries, now) {
            let limit = self.breaker.limit();
            let reason = format!(
                "held: local deletes would remove {} of {} files and directories (more than {} % \
                 and more than {}); nothing is sent until `meshsync share resume {} \
                 --accept-deletes` sends them or `--restore` fetches the files back",
                trip.deleting, trip.entries, limit.percent, limit.min_files, self.name
            );
            warn!(folder = %self.name, "{reason}");
            self.held = Some(Held {
                reason,
                paths: gone,
            });
            return Vec::new();
        }
        self.breaker.sent(gone.len() as u64, now);
        gone.into_iter().map(|path| (path, None)).collect()
    }

    /// Ends the hold as the user decided; returns how many paths it concerned.
    pub(super) async fn resume(&mut self, choice: Resume) -> Result<u64, String> {
        let Some(held) = self.held.take() else {
            return Err(format!("share `{}` is not held", self.name));
        };
        let paths: Vec<String> = held
            .paths
            .into_iter()
            .filter(|path| self.synced.contains_key(path))
            .collect();
        let count = paths.len() as u64;
        match choice {
            Resume::AcceptDeletes => {
                // Accepted: they do not count against the deletes that follow.
                self.breaker.reset();
                info!(folder = %self.name, "deletes accepted: sending {count}");
                let writes = paths
                    .into_iter()
                    .filter(|path| !self.queue.is_running(path))
                    .map(|path| (path, None))
                    .collect();
                self.put_local(writes).await;
            }
            Resume::Restore => {
                // Forgotten as synced here, the paths are missing files the share has: fetched.
                info!(folder = %self.name, "restoring {count} deleted paths from members");
                let rows = paths.iter().map(|path| (path.clone(), None)).collect();
                for path in &paths {
                    self.synced.remove(path);
                }
                self.save_later(rows);
                self.queue_all_remote().await;
            }
        }
        // Whatever changed while the share was held is found by a full scan.
        self.dirty_all = true;
        self.scan_soon(Duration::ZERO);
        Ok(count)
    }
}
