//! What a scan found, turned into the folder's state and the share's entries: whether the scan
//! may be trusted at all (the folder's id, [`super::instance`]), which changed paths already are
//! what the share says (adopted, not written again), and the local writes for the rest, each
//! based on what was synced at its path.
//!
//! Methods of the folder actor, kept apart from its loop.

use std::collections::BTreeMap;
use std::time::Duration;

use serde_bytes::ByteBuf;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::actor::{FolderActor, STATE_UNREADABLE_RETRY, ScanResult};
use super::folder_lock::{FolderHold, FolderLock, LockError};
use super::instance::{self, INSTANCE_FILE, InstanceId, Verdict};
use super::model::{EntryKind, FileMeta, MARKER_DIR};
use super::notices::ChangeNotice;
use super::rescan::next_full_rescan;
use super::scan::{self, PreviousRecords, ScanRecord};
use super::settle::{self, WATCH_DEBOUNCE};
use super::state::{self, Synced};
use super::synced_paths::ScanBasis;
use super::{plan, received};
use crate::merge::Payload;
use crate::store::LocalWrite;

/// How long a re-created folder waits for its synced state to be saved before it is forgotten;
/// past that the folder pauses (the store is failing) instead of hanging.
pub const STATE_WRITE_WAIT: Duration = Duration::from_secs(60);

/// How many of a scan's changes go to the store in one write (see `on_scanned`).
pub const SCAN_WRITE_BATCH: usize = 1000;

impl FolderActor {
    /// Takes the folder's lock unless held: whether this daemon may write in the folder. A
    /// folder another daemon holds, or without its marker directory, is paused (and tried
    /// again with the paused folder's checks).
    pub(super) fn hold_folder(&mut self) -> bool {
        if !matches!(self.hold, FolderHold::NotHeld) {
            return true;
        }
        match FolderLock::take(&self.sources.root) {
            Ok(lock) => self.hold = FolderHold::Locked { _lock: lock },
            Err(e @ LockError::HeldElsewhere) => {
                self.pause(e.to_string());
                return false;
            }
            Err(LockError::Io(e)) if !self.sources.root.join(MARKER_DIR).is_dir() => {
                // Not a meshsync folder now. Said as its scans say it, so it is logged once.
                let root = self.sources.root.clone();
                let reason = if !root.exists() {
                    scan::ScanError::RootMissing { root, source: e }
                } else if !root.is_dir() {
                    scan::ScanError::RootNotDirectory { root }
                } else {
                    scan::ScanError::MarkerMissing { root }
                };
                self.pause(reason.to_string());
                return false;
            }
            Err(e) => {
                let said = format!("{e}; syncing without the guard against a second daemon");
                if self.warned.insert(said.clone()) {
                    warn!(folder = %self.name, "{said}");
                }
                self.hold = FolderHold::Unlockable;
            }
        }
        true
    }

    /// Whether `result` looked at the folder we synced, so that what it did not find may be
    /// taken for deletes. A folder with a different or no id (removed and re-created, another
    /// disk) is treated as freshly joined instead: every synced path is forgotten, so the next
    /// (full) scan sees no deletes, only what is there, and what is missing is fetched from
    /// members ([`instance`]).
    pub(super) async fn trust_scan(&mut self, result: &ScanResult) -> bool {
        if !self.hold_folder() {
            return false;
        }
        let found = match &result.instance {
            Ok(found) => *found,
            Err(e) => {
                self.pause(format!("cannot read {MARKER_DIR}/{INSTANCE_FILE}: {e}"));
                return false;
            }
        };
        match instance::judge(self.instance, found) {
            Verdict::Same => true,
            Verdict::FirstSeen => {
                let id = match found {
                    Some(id) => Ok(id),
                    None => self.create_instance().await,
                };
                match id {
                    Ok(id) => self.record_instance(id, Vec::new(), false).await,
                    Err(e) => warn!(folder = %self.name, "cannot give the folder an id: {e}"),
                }
                true
            }
            Verdict::Replaced => {
                warn!(
                    folder = %self.name,
                    "this folder is not the one last synced here (removed and re-created, or \
                     another disk): treating it as newly joined; nothing it lacks is deleted \
                     elsewhere, it is fetched from members instead"
                );
                // Every row on its way to the store is written before they are all forgotten.
                self.flush_synced();
                let wait = self.synced.all_committed();
                if tokio::time::timeout(STATE_WRITE_WAIT, wait).await.is_err() {
                    self.pause("the folder's synced state cannot be saved".into());
                    return false;
                }
                let forget = match self.synced.forget_all() {
                    Ok(forget) => forget,
                    Err(e) => {
                        self.pause(format!("cannot read the folder's synced state: {e}"));
                        return false;
                    }
                };
                self.deletes.clear();
                self.sources.chunks.clear_recent();
                match self.create_instance().await {
                    Ok(id) => self.record_instance(id, forget, true).await,
                    Err(e) => {
                        self.pause(format!("cannot give the re-created folder an id: {e}"));
                        return false;
                    }
                }
                self.dirty_all = true;
                self.scan_soon(Duration::ZERO);
                false
            }
        }
    }

    async fn create_instance(&self) -> std::io::Result<InstanceId> {
        let root = self.sources.root.clone();
        tokio::task::spawn_blocking(move || instance::create(&root))
            .await
            .map_err(std::io::Error::other)?
    }

    async fn record_instance(&mut self, id: InstanceId, forget: Vec<String>, replaced: bool) {
        let share = self.sources.share;
        match state::record_instance(&self.store, share, id, forget, replaced).await {
            Ok(()) => self.instance = Some(id),
            Err(e) => {
                self.note_error(format!("cannot record the folder's id: {e}"));
                warn!(folder = %self.name, "cannot record the folder's id: {e}");
            }
        }
    }

    /// Takes out of `changes` every path that already is what the share says it should be (a
    /// directory the writer created for a file inside it, a file that was already there when
    /// the share was joined, a scan that raced a download) and records it as synced instead of
    /// writing it again as a new, concurrent version.
    pub(super) async fn adopt_identical(
        &mut self,
        changes: Vec<(String, Option<ScanRecord>)>,
    ) -> Vec<(String, Option<ScanRecord>)> {
        let keys: Vec<Vec<u8>> = changes
            .iter()
            .filter(|(_, r)| r.is_some())
            .map(|(p, _)| p.clone().into_bytes())
            .collect();
        if keys.is_empty() {
            return changes;
        }
        let registers = match self.store.get_many(self.sources.share, keys).await {
            Ok(registers) => registers,
            Err(e) => {
                // Nothing is adopted: every change is written as a new version instead, which
                // is safe (at worst a redundant version).
                warn!(folder = %self.name, "cannot read entries to compare with: {e}");
                return changes;
            }
        };
        let mut registers = registers.into_iter();
        let mut remaining = Vec::new();
        for (path, record) in changes {
            let Some(record) = record else {
                remaining.push((path, None));
                continue;
            };
            let register = registers.next().flatten();
            let winner = register.as_ref().and_then(|r| {
                let version = plan::effective_winner(r)?;
                let meta = plan::decode_meta(version)?;
                Some((meta, version.vv().clone()))
            });
            match winner {
                Some((meta, vv)) if meta == plan::normalised(&record.meta) => {
                    let synced = Synced { record, base: vv };
                    self.synced.insert(path, synced);
                }
                _ => remaining.push((path, Some(record))),
            }
        }
        remaining
    }

    /// Records local changes in the store, each based on what was synced at its path.
    pub(super) async fn put_local(&mut self, changes: Vec<(String, Option<ScanRecord>)>) {
        let mut writes = Vec::with_capacity(changes.len());
        for (path, record) in &changes {
            let base = self
                .synced
                .get(path)
                .map(|s| s.base.clone())
                .unwrap_or_default();
            let payload = match record {
                Some(record) => match plan::encode_meta(&plan::normalised(&record.meta)) {
                    Ok(bytes) => Payload::Value(ByteBuf::from(bytes)),
                    Err(e) => {
                        warn!(folder = %self.name, path = %path, "cannot encode: {e}");
                        continue;
                    }
                },
                None => Payload::Tombstone,
            };
            writes.push(LocalWrite {
                key: path.clone().into_bytes(),
                payload,
                base: Some(base),
            });
        }
        let keys: Vec<Vec<u8>> = writes.iter().map(|w| w.key.clone()).collect();
        if let Err(e) = self.store.put_writes(self.sources.share, writes).await {
            self.note_error(format!("cannot record local changes: {e}"));
            warn!(folder = %self.name, "cannot record local changes: {e}");
            return;
        }
        // A peer's register kept for a queued download is older than what we just wrote: the
        // download must read the store's. (A restore after a held mass delete applied the held
        // deletes with the registers kept, then wrote the files back from the trash.)
        for (path, _) in &changes {
            self.latest.remove(path);
        }
        for (path, record) in &changes {
            let before = self.synced.get(path).map(|s| s.record.meta);
            self.report_path(
                path,
                before.as_ref(),
                record.as_ref().map(|r| &r.meta),
                None,
            );
        }
        for (path, record) in &changes {
            match record {
                Some(r) => {
                    debug!(folder = %self.name, path = %path, kind = ?r.meta.kind, "local change")
                }
                None => debug!(folder = %self.name, path = %path, "local delete"),
            }
        }
        let registers = match self.store.get_many(self.sources.share, keys).await {
            Ok(registers) => registers,
            Err(e) => {
                // The writes are committed; only our record of them is missing. The next scan
                // sees the paths as changed and adopts them (they match the share).
                self.note_error(format!("cannot read back local changes: {e}"));
                warn!(folder = %self.name, "cannot read back local changes: {e}");
                return;
            }
        };
        for ((path, record), register) in changes.into_iter().zip(registers) {
            let Some(register) = register else { continue };
            // Our write is the version of ours with the highest counter.
            let ours = register
                .versions()
                .iter()
                .filter(|v| v.origin() == &self.local_key)
                .max_by_key(|v| v.vv().get(&self.local_key));
            match (record, ours) {
                (Some(record), Some(version)) => {
                    let synced = Synced {
                        record,
                        base: version.vv().clone(),
                    };
                    self.synced.insert(path.clone(), synced);
                }
                (None, _) => {
                    self.synced.remove(&path);
                }
                (Some(_), None) => {}
            }
            // A concurrent remote version may now be the winner: materialise it. (With ours
            // alone there is nothing to do: a big scan would queue every path for nothing.)
            if register.versions().len() > 1 {
                self.queue.push(path, false);
            }
        }
    }
}

impl FolderActor {
    /// Takes in a finished scan; a verification slice ends once its changes are written and
    /// the share's entries in its range compared with the disk: that is its cost, which paces
    /// the next.
    pub(super) async fn on_scanned(&mut self, result: ScanResult) {
        let slice = result.slice.clone().map(|range| (range, result.checked));
        self.take_scan(result).await;
        if let Some((range, checked)) = slice {
            self.slice_scanned(&range, checked);
        }
    }

    /// Turns a scan into local writes: changed paths (based on what was synced there) and
    /// deletes of synced paths that are gone.
    async fn take_scan(&mut self, mut result: ScanResult) {
        // Told before anything here writes: the folder's own writes since the scan started.
        // Kept only then (it holds a read of the store, whose pages are not reused meanwhile).
        let outdated = result.basis.take().filter(|b| b.outdated_by(&self.synced));
        self.marks_read |= result.full;
        if result.full {
            self.verification.full_scan_done(result.checked);
            // A full scan held every record; give that memory back once done.
            self.settle.release_spare_room();
            if let Some(started) = self.full_scan_started.take()
                && self.paused.is_none()
            {
                self.next_rescan = next_full_rescan(
                    Instant::now(),
                    started.elapsed(),
                    self.watching.is_on(),
                    self.watching.retry_at(),
                );
            }
        }
        self.hashed_files += result.hashed.0;
        self.hashed_bytes += result.hashed.1;
        if !self.trust_scan(&result).await {
            return;
        }
        self.note_problems(&result);
        if self.paused.take().is_some() {
            info!(folder = %self.name, "resumed");
        }
        self.ensure_watcher();
        if !result.unstable.is_empty() {
            self.dirty_paths.extend(result.unstable.iter().cloned());
            self.scan_soon(WATCH_DEBOUNCE * 4);
        }
        if !result.fresh.is_empty() {
            // Read once their writer is done: their close, or quiet for the open-write wait.
            self.settle.written_unseen(&result.fresh, Instant::now());
            self.dirty_paths.extend(result.fresh.iter().cloned());
            self.scan_soon(settle::OPEN_WRITE_QUIET);
        }
        // A synced path gone while a download writes it is looked at again once the download
        // is done: its delete must not be lost (nor sent for a file the download puts back).
        let busy: Vec<String> = result
            .gone
            .iter()
            .filter(|p| self.synced.contains_key(p) && self.queue.is_running(p))
            .cloned()
            .collect();
        if !busy.is_empty() {
            self.dirty_paths.extend(busy);
            self.scan_soon(WATCH_DEBOUNCE * 4);
        }
        if self.held.is_some() {
            // Held by the breaker: nothing is sent. Deletes confirmed meanwhile join the held
            // ones; everything else is found again by the full scan after the user's decision.
            if result.confirms_deletes {
                let gone = self.sendable_gone(&result.gone);
                self.deletes_to_send(gone);
            }
            return;
        }
        // Committed first: a changed file's chunk list is read back from its pages when its
        // chunks are indexed, batch by batch below.
        if !result.pages.is_empty() {
            let pages = state::encoded_pages(&result.pages);
            let written = match self.store.put_pages(self.sources.share, pages).await {
                Ok(pending) => pending.done().await,
                Err(e) => Err(e),
            };
            if let Err(e) = written {
                self.note_error(format!("cannot store chunk lists: {e}"));
            }
        }
        // The scan's entries are taken one by one, in path order, and written (and their chunks
        // indexed) SCAN_WRITE_BATCH at a time: the first scan of a big tree would otherwise
        // hold every entry until the last was written, beside every version, register and
        // synced row, the chunk index, and the store one transaction's worth of dirty pages
        // for all of them. Path order commits a directory's entry no later than the entries
        // under it; a peer that still gets a file first (its session reads our tree in several
        // round trips) creates the directory for it, and a directory version never beats a
        // newer delete (`plan::effective_winner`).
        let mut deferred = Vec::new();
        let mut changed: Vec<(String, Option<ScanRecord>)> = Vec::new();
        let mut aside: Vec<(String, ScanRecord)> = Vec::new();
        let mut look_again = Vec::new();
        // A big scan's spilled entries follow the others: its directories are all among those,
        // so they still come before what is in them. Read on this thread: a batch is a few
        // hundred KiB of a file just written, in the page cache.
        let spill_file = result.spilled.take();
        let mut spilled = match spill_file.as_ref().map(|s| s.read()).transpose() {
            Ok(reader) => reader,
            Err(e) => {
                self.spill_unreadable(&e);
                None
            }
        };
        let mut in_memory = std::mem::take(&mut result.updated).into_iter();
        loop {
            let (path, record) = match in_memory.next() {
                Some(entry) => entry,
                None => match spilled.as_mut().and_then(Iterator::next) {
                    Some(Ok(entry)) => entry,
                    Some(Err(e)) => {
                        self.spill_unreadable(&e);
                        break;
                    }
                    None => break,
                },
            };
            if self.queue.is_running(&path) {
                // A file is read again once its download ends: an edit made meanwhile must not
                // be lost. (A directory's own changes are ours: see `start_scan`.)
                if record.meta.kind != EntryKind::Dir {
                    self.dirty_paths.insert(path);
                }
                continue;
            }
            self.deletes.release(&path);
            let known = self
                .synced
                .get(&path)
                .map(|s| plan::normalised(&s.record.meta));
            let scanned = plan::normalised(&record.meta);
            let differs = known.as_ref() != Some(&scanned);
            if differs
                && outdated
                    .as_ref()
                    .is_some_and(|b| Self::written_since(b, &path, known.as_ref()))
            {
                // A download or a peer's delete wrote the path while the walk ran: what the
                // walk saw may be from before it (a directory it removed, taken for a new one,
                // came back on every peer). Read again, it is what it is now.
                look_again.push(path);
                continue;
            }
            let received = result.marks.get(&path).and_then(|mark| {
                received::received_version(mark, &self.sources.share, &path, &scanned)
            });
            if let Some(base) = received.filter(|_| differs) {
                // Written here before a crash, its synced row not saved: received, no edit.
                debug!(folder = %self.name, path = %path, "adopted as received before a restart");
                aside.push((path.clone(), record.clone()));
                self.synced.insert(path, Synced { record, base });
            } else if differs {
                changed.push((path, Some(record)));
            } else {
                // Same content, new stat data (e.g. touched): remember it so it is not re-read.
                aside.push((path.clone(), record.clone()));
                self.synced.restat(&path, record);
            }
            if changed.len() + aside.len() >= SCAN_WRITE_BATCH {
                self.index_and_write(&mut changed, &mut aside, &mut deferred)
                    .await;
                if self.shutting_down() {
                    // The entries not written yet are found again by the next scan.
                    return;
                }
            }
        }
        self.index_and_write(&mut changed, &mut aside, &mut deferred)
            .await;
        if !look_again.is_empty() {
            debug!(folder = %self.name, paths = look_again.len(), "written while scanned: read again");
            self.dirty_paths.extend(look_again);
            self.scan_soon(WATCH_DEBOUNCE);
        }
        // Deletes come parents first, in batches too: a peer leaves a directory whose children
        // are still there and removes it with the last of them.
        let gone = self.sendable_gone(&result.gone);
        let deletes = if result.confirms_deletes {
            self.deletes_to_send(gone)
        } else {
            self.deletes.hold(gone, Instant::now());
            Vec::new()
        };
        let mut deletes = deletes.into_iter().peekable();
        while deletes.peek().is_some() && !self.shutting_down() {
            let batch = deletes.by_ref().take(SCAN_WRITE_BATCH).collect();
            self.write_scanned(batch, &mut deferred).await;
        }
        self.on_changes(deferred);
        if result.full {
            self.queue_all_remote().await;
        } else if let Some(range) = &result.slice {
            self.queue_remote_in(range).await;
        }
    }

    /// Indexes the chunks of one batch of a scan's entries (`changed` and those set `aside`,
    /// which are not written), then writes the changed ones; both are left empty.
    async fn index_and_write(
        &mut self,
        changed: &mut Vec<(String, Option<ScanRecord>)>,
        aside: &mut Vec<(String, ScanRecord)>,
        deferred: &mut Vec<ChangeNotice>,
    ) {
        let written = changed
            .iter()
            .filter_map(|(path, record)| Some((path, record.as_ref()?)));
        self.index_chunks(written.chain(aside.iter().map(|(path, record)| (path, record))))
            .await;
        aside.clear();
        if changed.is_empty() {
            self.answer_commands();
        } else {
            self.write_scanned(std::mem::take(changed), deferred).await;
        }
    }

    /// Writes one batch of a scan's changes, then takes what waits between batches.
    async fn write_scanned(
        &mut self,
        batch: Vec<(String, Option<ScanRecord>)>,
        deferred: &mut Vec<ChangeNotice>,
    ) {
        let batch = self.adopt_identical(batch).await;
        if !batch.is_empty() {
            self.put_local(batch).await;
        }
        self.between_batches(deferred);
    }

    /// Of the paths a scan found gone, those a delete may be sent for: synced here, and not
    /// being written by a download.
    /// The entries a scan kept in its temporary file cannot be read back: those not written
    /// yet are found again by a full scan soon (none of them was taken for gone).
    fn spill_unreadable(&mut self, e: &std::io::Error) {
        let what = format!("cannot read back the scan's entries from its temporary file: {e}");
        warn!(folder = %self.name, "{what}; scanning again");
        self.note_error(what);
        self.dirty_all = true;
        self.scan_soon(STATE_UNREADABLE_RETRY);
    }

    /// Whether the folder wrote `path`'s synced row, `known` now, after `basis` was taken.
    fn written_since(basis: &ScanBasis, path: &str, known: Option<&FileMeta>) -> bool {
        let then = basis.previous().record(path);
        then.map(|r| plan::normalised(&r.meta)).as_ref() != known
    }

    fn sendable_gone(&self, gone: &[String]) -> Vec<String> {
        gone.iter()
            .filter(|path| self.synced.contains_key(path) && !self.queue.is_running(path))
            .cloned()
            .collect()
    }

    /// Looks again at the held deletes, once due: those still gone, in the folder we synced
    /// (root, marker and id checked), are sent by [`Self::on_scanned`]; the others are rescanned.
    pub(super) fn check_held_deletes(&mut self) {
        if self.scanning {
            return;
        }
        let paths = self.deletes.take_due(Instant::now());
        if paths.is_empty() {
            return;
        }
        self.scanning = true;
        debug!(folder = %self.name, paths = paths.len(), "checking held deletes");
        let root = self.sources.root.clone();
        self.scans.spawn_blocking(move || {
            let instance = instance::read(&root);
            let gone = scan::still_gone(&root, &paths)?;
            let back: Vec<String> = paths.into_iter().filter(|p| !gone.contains(p)).collect();
            Ok(ScanResult {
                instance,
                full: false,
                updated: BTreeMap::new(),
                spilled: None,
                gone,
                pages: Vec::new(),
                unstable: back,
                fresh: Vec::new(),
                confirms_deletes: true,
                marks: BTreeMap::new(),
                problems: Vec::new(),
                warnings: Vec::new(),
                hashed: (0, 0),
                slice: None,
                checked: 0,
                basis: None,
            })
        });
    }
}
