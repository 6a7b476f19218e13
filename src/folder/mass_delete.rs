//! The folder actor's side of the mass-deletion breaker ([`super::breaker`]): holding the share
//! when confirmed local deletes are too many, and the user's way out.
//!
//! Methods of the folder actor, kept apart from its loop.

use std::time::Duration;

use tokio::time::Instant;
use tracing::{info, warn};

use super::actor::FolderActor;
use super::breaker::Held;
use super::handle::Resume;
use super::scan::ScanRecord;

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
        let entries = self.synced.len();
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
                remote: false,
            });
            return Vec::new();
        }
        self.breaker.sent(gone.len() as u64, now);
        gone.into_iter().map(|path| (path, None)).collect()
    }

    /// Whether a peer's delete of `path`, about to be applied, may be: not if with the other
    /// deletes waiting (and those applied within the breaker's window) it is too many; the
    /// share is then held.
    pub(super) fn may_apply_remote_delete(&mut self, path: &str) -> bool {
        if !self.synced.contains_key(path) || self.deletes_let_through.remove(path) {
            return true;
        }
        if self.remote_breaker.is_none() {
            return true;
        }
        let now = Instant::now();
        let waiting = 1 + self
            .queue
            .pending_deletes()
            .filter(|p| self.synced.contains_key(p))
            .count() as u64;
        let entries = self.synced.len();
        let breaker = self.remote_breaker.as_mut().expect("checked above");
        if let Some(trip) = breaker.check(waiting, entries, now) {
            let limit = breaker.limit();
            let reason = format!(
                "held: peers' changes would delete {} of {} files and directories here (more \
                 than {} % and more than {}); nothing is applied until `meshsync share resume {} \
                 --accept-deletes` applies them or `--restore` puts the files back everywhere",
                trip.deleting, trip.entries, limit.percent, limit.min_files, self.name
            );
            warn!(folder = %self.name, "{reason}");
            self.held = Some(Held {
                reason,
                paths: Vec::new(),
                remote: true,
            });
            return false;
        }
        breaker.sent(1, now);
        true
    }

    /// Ends the hold as the user decided; returns how many paths it concerned.
    pub(super) async fn resume(&mut self, choice: Resume) -> Result<u64, String> {
        let Some(held) = self.held.take() else {
            return Err(format!("share `{}` is not held", self.name));
        };
        if held.remote {
            return Ok(self.resume_remote(choice).await);
        }
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
                for path in &paths {
                    self.synced.remove(path);
                }
                self.queue_all_remote().await;
            }
        }
        // Whatever changed while the share was held is found by a full scan.
        self.dirty_all = true;
        self.scan_soon(Duration::ZERO);
        Ok(count)
    }

    /// Ends a hold that peers' deletes tripped: apply them, or write our copies again as new
    /// versions, which win over the deletes everywhere (an edit beats a concurrent delete).
    async fn resume_remote(&mut self, choice: Resume) -> u64 {
        let paths: Vec<String> = self
            .queue
            .pending_deletes()
            .filter(|p| self.synced.contains_key(p))
            .cloned()
            .collect();
        let count = paths.len() as u64;
        if let Some(breaker) = self.remote_breaker.as_mut() {
            breaker.reset();
        }
        // Decided: these pass the breaker (after a restore they find our new versions and
        // change nothing).
        self.deletes_let_through.extend(paths.iter().cloned());
        match choice {
            Resume::AcceptDeletes => {
                info!(folder = %self.name, "peers' deletes accepted: applying {count}");
            }
            Resume::Restore => {
                info!(folder = %self.name, "putting {count} files peers deleted back everywhere");
                let writes = paths
                    .iter()
                    .filter_map(|p| Some((p.clone(), Some(self.synced.get(p)?.record))))
                    .collect();
                self.put_local(writes).await;
            }
        }
        count
    }
}
