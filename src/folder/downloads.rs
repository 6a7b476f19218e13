//! The remote side of the folder actor: queueing what peers changed, starting downloads (within
//! the free-space floor and the breaker for peers' deletes) and taking in their outcomes.
//!
//! Methods of the folder actor, kept apart from its loop.

use std::time::Duration;

use tokio::task::JoinError;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::actor::{DOWNLOAD_RETRY, FolderActor, NO_MEMBER_RETRY};
use super::materialise::{Materialised, materialise};
use super::model::EntryKind;
use super::plan::{self, Desired};
use super::queue::Next;
use super::register_batch::{Register, RegisterBatch};
use super::scan::PathRange;
use super::settle::WATCH_DEBOUNCE;
use crate::merge::{Payload, RecordRegister, VersionVector};
use crate::store::{Entry, LocalWrite};

/// Finished downloads taken in one turn of the folder's loop, at most; the loop's other work
/// (commands, watcher events, change notices) waits meanwhile.
pub const DOWNLOADS_TAKEN_AT_ONCE: usize = 256;

/// Entries read from the store at once when every entry is compared with the disk.
pub const LIST_PAGE: usize = 1000;

impl FolderActor {
    /// Queues every store entry whose effective winner is not what is on disk, reading the
    /// entries [`LIST_PAGE`] at a time (seconds for 10^6 entries: commands are answered
    /// between pages).
    pub(super) async fn queue_all_remote(&mut self) {
        self.requeue_remote = false;
        self.queue_remote_in(&PathRange::default()).await;
    }

    /// [`Self::queue_all_remote`] for the entries whose paths are in `range` (a verification
    /// slice's).
    pub(super) async fn queue_remote_in(&mut self, range: &PathRange) {
        let mut after = range.after.clone().map(String::into_bytes);
        loop {
            self.answer_commands();
            self.take_notices();
            if self.shutting_down() {
                return;
            }
            let Some(entries) = self.list_entries_after(after.take()).await else {
                return;
            };
            let full = entries.len() == LIST_PAGE;
            after = entries.last().map(|(key, _)| key.clone());
            for (key, register) in entries {
                let Ok(path) = String::from_utf8(key) else {
                    continue;
                };
                if !range.contains(&path) {
                    return; // Past its end: the listing is in path order.
                }
                if self.needs_work(&path, &register) {
                    self.queue_remote(path, &register);
                }
            }
            if !full {
                return;
            }
        }
    }

    /// Brings files queued beyond the download queue's window into it while it has room, from
    /// a listing of the store resumed where the last one stopped, [`LIST_PAGE`] entries at a
    /// time. If the store cannot list them, they are left to the next full scan, which
    /// compares every entry with the disk again.
    pub(super) async fn fill_queue_window(&mut self) {
        while let Some(after) = self.queue.wants_listing() {
            let Some(entries) = self.list_entries_after(after.clone()).await else {
                self.queue.forget_unlisted();
                self.dirty_all = true;
                self.scan_soon(DOWNLOAD_RETRY);
                return;
            };
            let ended = entries.len() < LIST_PAGE;
            let keys = entries.into_iter().map(|(key, _)| key).collect();
            let before = self.queue.past_window();
            self.queue.take_listed(after, keys, ended);
            let after = self.queue.past_window();
            if after < before {
                debug!(folder = %self.name, "{} queued files listed from the store, {after} still past the window", before - after);
            }
        }
    }

    /// The share's next [`LIST_PAGE`] entries after `after`, or `None` (said in `status` and
    /// the log) if the store cannot list them.
    async fn list_entries_after(&mut self, after: Option<Vec<u8>>) -> Option<Vec<Entry>> {
        let page = self
            .store
            .list_page(self.sources.share, Vec::new(), after, LIST_PAGE)
            .await;
        page.map_err(|e| {
            self.note_error(format!("cannot list the share's entries: {e}"));
            warn!(folder = %self.name, "cannot list the share's entries: {e}");
        })
        .ok()
    }

    pub(super) fn needs_work(&self, path: &str, register: &RecordRegister) -> bool {
        let on_disk = self.synced.get(path).map(|s| s.record.meta);
        plan::needs_work(register, on_disk.as_ref())
    }

    /// Queues a path whose entry changed to `register`, noting how much it will fetch.
    pub(super) fn queue_remote(&mut self, path: String, register: &RecordRegister) {
        let wanted = plan::desired(register);
        let file_size = match &wanted {
            Desired::Present(meta) if meta.kind == EntryKind::File => Some(meta.size),
            _ => None,
        };
        self.queue.note_needed(&path, file_size);
        let delete = matches!(wanted, Desired::Absent);
        if delete && self.remote_breaker.is_some() && self.synced.contains_key(&path) {
            // Applied once peers' deletes stop coming, so the breaker sees them all at once.
            self.remote_deletes.hold([path.clone()], Instant::now());
        }
        self.queue.push(path, delete);
    }

    /// The share's connected members changed: downloads that found none to fetch from are
    /// tried again at once when one is there (with every other waiting retry: those wait
    /// seconds, and a retry made early fails as it would have).
    pub(super) fn on_members(&mut self) {
        let connected = !self.member_changes.borrow_and_update().is_empty();
        if connected && self.awaiting_member {
            self.awaiting_member = false;
            self.queue.retry_all_by(Instant::now());
        }
    }

    pub(super) fn start_downloads(&mut self) {
        if self.paused.is_some() || self.held.is_some() {
            return;
        }
        if self.synced.held() >= super::actor::SYNCED_HELD_MAX {
            self.synced.forget_committed();
            if self.synced.held() >= super::actor::SYNCED_HELD_MAX {
                // The store's writer is behind: what downloads finish would pile up in
                // memory. The run loop waits for its next commit.
                return;
            }
        }
        // Whether the disk was found full, for the rest of this round (see `no_room_for`).
        let mut full = None;
        let mut starts = Vec::new();
        while let Some(next) = self.queue.next() {
            let path = match next {
                Next::WaitsForRetry(path) => {
                    self.latest.remove(&path);
                    continue;
                }
                Next::Start { path, delete } => {
                    if !delete && self.awaiting_member && self.member_changes.borrow().is_empty() {
                        // Nothing to fetch from: the queue waits for a member (`on_members`)
                        // instead of trying every file and failing.
                        self.queue.unstart(path);
                        break;
                    }
                    if !delete && let Some(wait) = self.no_room_for(&path, &mut full) {
                        self.queue.defer(path, Instant::now() + wait);
                        continue;
                    }
                    let waiting = self.remote_deletes.len() > 0;
                    if delete && (waiting || !self.may_apply_remote_delete(&path)) {
                        self.queue.unstart_delete(path);
                        break;
                    }
                    path
                }
            };
            starts.push(path);
        }
        self.spawn_downloads(starts);
    }

    /// Starts a round's downloads; those whose register the folder did not keep from their
    /// change notice read theirs together ([`RegisterBatch`]).
    fn spawn_downloads(&mut self, paths: Vec<String>) {
        let mut starts = Vec::with_capacity(paths.len());
        let mut unknown = Vec::new();
        for path in paths {
            let known = self.latest.remove(&path);
            if known.is_none() {
                unknown.push(path.clone());
            }
            starts.push((path, known));
        }
        let batch = (!unknown.is_empty())
            .then(|| RegisterBatch::new(self.store.clone(), self.sources.share, unknown));
        let synced_now = self
            .synced
            .get_many(starts.iter().map(|(path, _)| path.as_str()));
        for ((path, known), synced) in starts.into_iter().zip(synced_now) {
            let register = match known {
                Some(register) => Register::Known(register),
                None => Register::Batched(batch.clone().expect("made for unknown registers")),
            };
            let sources = self.sources.clone();
            let local_key = self.local_key.clone();
            self.downloads.spawn(async move {
                materialise(sources, path, register, synced, local_key).await
            });
        }
    }

    /// How long the download of `path` must wait for disk space, if it must. Files start
    /// within the bytes the last reading of the disk had to spare, while it is recent
    /// ([`super::disk::DiskGuard::spend_spare`]); `full` carries what the disk said earlier
    /// in the same round: once one file found no room, the others wait as long.
    fn no_room_for(&mut self, path: &str, full: &mut Option<Duration>) -> Option<Duration> {
        let size = self.queue.file_size(path)?;
        if let Some(wait) = *full {
            return Some(wait);
        }
        if self.disk.spend_spare(size, std::time::Instant::now()) {
            return None;
        }
        // Counts itself too (it is already among the running): taken out again here.
        let reserved = self.queue.running_bytes().saturating_sub(size);
        let root = self.sources.root.clone();
        match self.disk.room_for(&root, size, reserved, &self.name) {
            Ok(_) => {
                if self.disk.take_recovered() {
                    // Found by `meshsync lab`: files that failed while the disk was full each
                    // waited out their own backoff (up to a minute) after space came back.
                    self.queue.retry_all_by(Instant::now());
                }
                None
            }
            Err(wait) => {
                *full = Some(wait);
                Some(wait)
            }
        }
    }

    /// Takes a finished download, and every other one finished by now (up to
    /// [`DOWNLOADS_TAKEN_AT_ONCE`]), so that the downloads replacing them start in one round:
    /// small files are written in batches and finish together, and one by one, each started
    /// alone with a store read of its own (`RegisterBatch`).
    pub(super) async fn on_downloads_done(&mut self, first: Result<Materialised, JoinError>) {
        let mut next = Some(first);
        let mut taken = 0;
        while let Some(done) = next.take() {
            if let Ok(done) = done {
                self.on_materialised(done).await;
            }
            taken += 1;
            if taken == 1 && !self.downloads.is_empty() {
                // Downloads woken with this one (a batch of small files written together)
                // finish before we look.
                tokio::task::yield_now().await;
            }
            if taken < DOWNLOADS_TAKEN_AT_ONCE {
                next = self.downloads.try_join_next();
            }
        }
    }

    async fn on_materialised(&mut self, mut done: Materialised) {
        let resolved = done.resolved.take();
        if let Some(kept) = &resolved {
            self.withdraw_kept_version(&done.path, kept.clone()).await;
        }
        // A path that is tried again still needs its bytes.
        let size = self.queue.file_size(&done.path);
        self.queue.finish(&done.path);
        if self.queue.is_idle() {
            // A burst of downloads is over: what it buffered goes back to the system.
            self.queue.release_spare_room();
            self.latest.shrink_to_fit();
            self.settle.release_spare_room();
        }
        if self.dirty_paths.contains(&done.path) {
            // Changed on disk while it was downloaded: its scan waited for this.
            self.scan_soon(WATCH_DEBOUNCE);
        }
        if done.conflict || done.error.is_some() {
            self.temp_files_maybe = true;
        }
        self.add_chunks(std::mem::take(&mut done.new_chunks));
        if done.conflict {
            // The file changed under us: let the scanner record the local edit first.
            self.dirty_paths.insert(done.path.clone());
            self.scan_soon(Duration::ZERO);
            self.queue.note_needed(&done.path, size);
            self.queue
                .retry_at(done.path.clone(), Instant::now() + WATCH_DEBOUNCE * 10);
            return;
        }
        if let Some(error) = done.error {
            if let Some(copy) = &done.conflict_copy {
                // Our losing version was moved aside before the write failed: the path holds
                // nothing of ours any more. Left as synced, every retry tried to move it aside
                // again and failed for good (found by `meshsync lab`).
                self.report_conflict(&done.path, copy, done.author);
                self.synced.remove(&done.path);
            }
            if error.is_refusal() {
                self.refused += 1;
                warn!(folder = %self.name, "{error}");
                return;
            }
            self.note_error(format!("{}: {error}", done.path));
            let wait = if error.is_disk_full() {
                // Said once for the whole condition, not once per file and retry.
                self.disk.failed(&error.to_string(), &self.name)
            } else if let Some(what) = error.blocks_writes() {
                self.disk.refused(what, &error.to_string(), &self.name)
            } else {
                let reason = error.to_string();
                if let Some(unsaid) = self.retry_lines.allow(&reason, std::time::Instant::now()) {
                    let more = crate::quiet::and_more(unsaid);
                    warn!(folder = %self.name, path = %done.path, "cannot sync (retrying): {reason}{more}");
                }
                if error.is_no_member() && self.member_changes.borrow().is_empty() {
                    // Tried again when one connects (`on_members`), not in a loop meanwhile.
                    self.awaiting_member = true;
                    NO_MEMBER_RETRY
                } else {
                    DOWNLOAD_RETRY
                }
            };
            self.queue.note_needed(&done.path, size);
            self.queue.retry_at(done.path, Instant::now() + wait);
            return;
        }
        self.disk.wrote(&self.name);
        if self.disk.take_recovered() {
            self.queue.retry_all_by(Instant::now());
        }
        if done.not_empty {
            return;
        }
        if !done.unchanged {
            self.took_in(&done).await;
            if let Some(kept) = resolved
                && let Some(mut synced) = self.synced.get(&done.path)
            {
                // Our next edit of the path has seen our kept version too.
                synced.base.join(&kept);
                self.synced.insert(done.path.clone(), synced);
            }
        } else if !self.synced.contains_key(&done.path)
            && let Some((parent, _)) = done.path.rsplit_once('/')
        {
            // Already gone: a directory waiting for its children to go may be empty now.
            self.queue.push(parent.to_owned(), true);
        }
        // A winner that moved on while we worked is not read again here: its change notice
        // queued the path, and the queue starts it again once this download is over
        // (`DownloadQueue::finish`); a lost notice makes the folder compare every entry
        // (`on_change`). Reading the entry back cost a store round trip per received file.
    }

    /// Our losing version of `path`, with vector `kept`, was kept as a conflict copy: we
    /// record a delete of the path based on that version alone. It supersedes our kept
    /// version and is concurrent with the winner, which an edit beats a delete keeps. See
    /// `Materialised::resolved`.
    async fn withdraw_kept_version(&mut self, path: &str, kept: VersionVector) {
        let write = LocalWrite {
            key: path.as_bytes().to_vec(),
            payload: Payload::Tombstone,
            base: Some(kept),
        };
        match self.store.put_writes(self.sources.share, vec![write]).await {
            Ok(()) => {
                debug!(folder = %self.name, path = %path, "our version kept as a conflict copy is withdrawn here")
            }
            Err(e) => {
                self.note_error(format!("cannot record local changes: {e}"));
                warn!(folder = %self.name, path = %path, "cannot withdraw our version kept as a conflict copy: {e}");
            }
        }
    }

    /// Records what a materialisation wrote: events, the synced row, the chunks' new place.
    /// Not for one that wrote nothing: its snapshot of the synced row may be stale by now (a
    /// scan found the file renamed away meanwhile), and indexing it would point chunks at a
    /// file that is gone — found by `meshsync lab`: the only copy of a renamed file's content
    /// could no longer be served, and the folder never converged.
    async fn took_in(&mut self, done: &Materialised) {
        if let Some(copy) = &done.conflict_copy {
            self.report_conflict(&done.path, copy, done.author);
        }
        let before = self.synced.get(&done.path);
        let after = done.synced.as_ref().map(|s| &s.record.meta);
        let before_meta = before.as_ref().map(|s| &s.record.meta);
        self.report_path(&done.path, before_meta, after, done.author);
        if let Some(kept) = &done.kept_version {
            self.report_version_kept(&done.path, kept, done.author);
        }
        if done.synced.is_none()
            && let Some((parent, _)) = done.path.rsplit_once('/')
        {
            // A directory waiting for its children to go may be empty now.
            self.queue.push(parent.to_owned(), true);
        }
        match &done.synced {
            Some(synced) => {
                self.index_chunks(std::iter::once((&done.path, &synced.record)))
                    .await;
                // Nothing else changes the synced rows while this runs: it holds the loop.
                self.synced
                    .insert_over(done.path.clone(), before.as_ref(), synced.clone());
            }
            None => {
                self.synced.remove(&done.path);
            }
        }
    }
}
