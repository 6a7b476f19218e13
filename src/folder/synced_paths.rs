//! What was last synced at each path. It lives in the store (the folder's local-state rows) and
//! is read from there as it is needed; only the changes the store has not committed yet are held
//! here, over the stored rows. So a folder of a million files does not keep a million records in
//! memory, and a scan reads its previous records from a snapshot instead of a copy.
//!
//! Counts by kind are kept as paths change, so `status` can say how many files and directories
//! a folder holds without walking every path each time it is asked (the state poll asks every
//! second).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::watch;
use tracing::warn;

use super::model::{EntryKind, FileMeta};
use super::scan::{PathRange, PreviousRecords, ScanRecord};
use super::state::{self, Synced};
use crate::store::StoreError;
use crate::store::local_state::{LocalStateReader, LocalStateSnapshot};

/// The synced paths of one folder.
pub(super) struct SyncedPaths {
    stored: LocalStateReader,
    /// Changes not yet known to be committed: the newest per path, and the batch that carries
    /// it to the writer (0: not handed over yet).
    unsaved: BTreeMap<String, Unsaved>,
    /// How many changes in `unsaved` are not handed to the writer yet.
    unsent: usize,
    /// The last batch handed to the writer.
    sent: u64,
    /// The last batch the writer committed.
    committed: watch::Receiver<u64>,
    counts: KindCounts,
    /// Whether a failed read was logged (once: the next ones say the same).
    read_failure_said: AtomicBool,
    /// How many times a row was set or removed. A scan that started at another count may have
    /// read the disk before one of the folder's own writes (see [`ScanBasis`]).
    edits: u64,
}

struct Unsaved {
    synced: Option<Synced>,
    batch: u64,
}

/// How many synced paths are files, directories and symlinks.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct KindCounts {
    /// Regular files.
    pub files: u64,
    /// Directories.
    pub directories: u64,
    /// Symbolic links.
    pub symlinks: u64,
    /// Bytes in the regular files.
    pub file_bytes: u64,
}

impl KindCounts {
    /// Counts one more path described by `meta`.
    pub(super) fn add(&mut self, meta: &FileMeta) {
        self.change(meta, true);
    }

    fn change(&mut self, meta: &FileMeta, up: bool) {
        if meta.kind == EntryKind::File {
            self.file_bytes = if up {
                self.file_bytes.saturating_add(meta.size)
            } else {
                self.file_bytes.saturating_sub(meta.size)
            };
        }
        let count = match meta.kind {
            EntryKind::File => &mut self.files,
            EntryKind::Dir => &mut self.directories,
            EntryKind::Symlink => &mut self.symlinks,
        };
        *count = if up {
            count.saturating_add(1)
        } else {
            count.saturating_sub(1)
        };
    }
}

impl SyncedPaths {
    /// Reads the rows through `stored`; `committed` is the writer's last committed batch.
    pub(super) fn new(stored: LocalStateReader, committed: watch::Receiver<u64>) -> Self {
        SyncedPaths {
            stored,
            unsaved: BTreeMap::new(),
            unsent: 0,
            sent: 0,
            committed,
            counts: KindCounts::default(),
            read_failure_said: AtomicBool::new(false),
            edits: 0,
        }
    }

    /// Sets the counts of the stored rows, once they are counted at start.
    pub(super) fn set_counts(&mut self, counts: KindCounts) {
        self.counts = counts;
    }

    /// The counts by kind.
    pub(super) fn counts(&self) -> KindCounts {
        self.counts
    }

    /// How many paths are synced.
    pub(super) fn len(&self) -> u64 {
        self.counts.files + self.counts.directories + self.counts.symlinks
    }

    /// What was synced at `path`. A row the store cannot read counts as none: the path is then
    /// unknown, which never deletes anything (a scan re-adopts it if it matches the share).
    pub(super) fn get(&self, path: &str) -> Option<Synced> {
        self.get_many([path]).pop().flatten()
    }

    /// [`Self::get`] of each of `paths`, read from one snapshot of the store (taken only if one
    /// of them is not held here): a read transaction each was half the cost of a read (a round
    /// of downloads reads one per file).
    pub(super) fn get_many<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a str>,
    ) -> Vec<Option<Synced>> {
        let mut snapshot = None;
        paths
            .into_iter()
            .map(|path| {
                if let Some(unsaved) = self.unsaved.get(path) {
                    return unsaved.synced.clone();
                }
                let stored = match &snapshot {
                    Some(stored) => stored,
                    None => match self.stored.snapshot() {
                        Ok(stored) => snapshot.insert(stored),
                        Err(e) => {
                            self.read_failed(&e);
                            return None;
                        }
                    },
                };
                match stored.get(path.as_bytes()) {
                    Ok(row) => row.and_then(|bytes| state::decode_synced(&bytes)),
                    Err(e) => {
                        self.read_failed(&e);
                        None
                    }
                }
            })
            .collect()
    }

    /// Whether something was synced at `path`.
    pub(super) fn contains_key(&self, path: &str) -> bool {
        self.get(path).is_some()
    }

    pub(super) fn insert(&mut self, path: String, synced: Synced) -> Option<Synced> {
        let old = self.get(&path);
        self.insert_over(path, old.as_ref(), synced);
        old
    }

    /// [`Self::insert`] for a caller that has just read what is synced at `path` (`old`, from
    /// [`Self::get`], with no change since): the row is not read a second time.
    pub(super) fn insert_over(&mut self, path: String, old: Option<&Synced>, synced: Synced) {
        if let Some(old) = old {
            self.counts.change(&old.record.meta, false);
        }
        self.counts.change(&synced.record.meta, true);
        self.set(path, Some(synced));
    }

    pub(super) fn remove(&mut self, path: &str) -> Option<Synced> {
        let old = self.get(path);
        if let Some(old) = &old {
            self.counts.change(&old.record.meta, false);
            self.set(path.to_owned(), None);
        }
        old
    }

    /// Replaces the stat data of a path whose content and kind did not change (written only
    /// when it differs: a full scan passes every unchanged path through here).
    pub(super) fn restat(&mut self, path: &str, record: ScanRecord) {
        if let Some(mut synced) = self.get(path)
            && synced.record.meta.kind == record.meta.kind
            && synced.record != record
        {
            synced.record = record;
            self.insert(path.to_owned(), synced);
        }
    }

    fn set(&mut self, path: String, synced: Option<Synced>) {
        self.edits += 1;
        let before = self.unsaved.insert(path, Unsaved { synced, batch: 0 });
        if before.is_none_or(|u| u.batch != 0) {
            self.unsent += 1;
        }
    }

    /// Whether some change waits to be handed to the writer.
    pub(super) fn has_unsent(&self) -> bool {
        self.unsent > 0
    }

    /// How many changes wait to be handed to the writer.
    pub(super) fn unsent(&self) -> usize {
        self.unsent
    }

    /// How many changes are held in memory: not handed to the writer yet, or handed and not
    /// known to be committed (as of the last [`Self::forget_committed`] or [`Self::take_unsent`]).
    pub(super) fn held(&self) -> usize {
        self.unsaved.len()
    }

    /// Forgets the changes the writer has committed: reads find them in the store now.
    pub(super) fn forget_committed(&mut self) {
        let committed = *self.committed.borrow_and_update();
        self.unsaved
            .retain(|_, u| u.batch == 0 || u.batch > committed);
    }

    /// Waits until the writer commits another batch (forever, if it has stopped: then nothing
    /// will be committed again, which the folder reports).
    pub(super) async fn next_commit(&mut self) {
        if self.committed.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The changes not handed to the writer yet, as the next batch and its number; forgets the
    /// changes the writer has committed since the last call.
    pub(super) fn take_unsent(&mut self) -> Option<state::RowBatch> {
        self.unsent = 0;
        self.forget_committed();
        let batch = self.sent + 1;
        let rows: Vec<(String, Option<Synced>)> = self
            .unsaved
            .iter_mut()
            .filter(|(_, u)| u.batch == 0)
            .map(|(path, u)| {
                u.batch = batch;
                (path.clone(), u.synced.clone())
            })
            .collect();
        if rows.is_empty() {
            return None;
        }
        self.sent = batch;
        Some((batch, rows))
    }

    /// Waits until the writer has committed every batch handed to it.
    pub(super) async fn all_committed(&mut self) {
        let sent = self.sent;
        // An error means the writer stopped: nothing more will be committed.
        let _ = self.committed.wait_for(|&done| done >= sent).await;
    }

    /// Forgets every path (the folder was replaced), returning the stored paths, whose rows the
    /// caller removes. Call once everything handed to the writer is committed
    /// ([`Self::all_committed`]): a batch committed later would bring rows back.
    pub(super) fn forget_all(&mut self) -> Result<Vec<String>, StoreError> {
        let mut paths = Vec::new();
        self.stored
            .snapshot()?
            .for_each_with_prefix(b"", |key, _| {
                if let Some(path) = state::path_of_key(key) {
                    paths.push(path);
                }
                true
            })?;
        self.unsaved.clear();
        self.unsent = 0;
        self.edits += 1;
        self.counts = KindCounts::default();
        Ok(paths)
    }

    /// What a scan starting now compares the disk with.
    pub(super) fn scan_basis(&self) -> Result<ScanBasis, StoreError> {
        Ok(ScanBasis {
            previous: self.snapshot()?,
            edits: self.edits,
        })
    }

    /// A consistent view of every synced record, for a scan running beside the folder's loop.
    pub(super) fn snapshot(&self) -> Result<SyncedSnapshot, StoreError> {
        // Copied before the stored view is taken: a change the writer commits in between is
        // then in the copy, and one already committed is in the view.
        let unsaved = self
            .unsaved
            .iter()
            .map(|(path, u)| (path.clone(), u.synced.as_ref().map(|s| s.record.clone())))
            .collect();
        Ok(SyncedSnapshot {
            unsaved,
            stored: self.stored.snapshot()?,
        })
    }

    fn read_failed(&self, e: &StoreError) {
        if !self.read_failure_said.swap(true, Ordering::Relaxed) {
            warn!("cannot read the folder's synced state: {e}; those paths count as unknown");
        }
    }
}

/// What a scan compares the disk with: the synced rows as it started, and their edit count
/// then. A scan's walk runs beside the folder's own writes (downloads, deletes of what peers
/// deleted), so what it saw at a path may be from before one of them.
pub(super) struct ScanBasis {
    previous: SyncedSnapshot,
    edits: u64,
}

impl ScanBasis {
    /// The synced rows as the scan started.
    pub(super) fn previous(&self) -> &SyncedSnapshot {
        &self.previous
    }

    /// Whether the folder set or removed a synced row since the scan started: only then may
    /// the scan have seen a path before a write of ours.
    pub(super) fn outdated_by(&self, synced: &SyncedPaths) -> bool {
        synced.edits != self.edits
    }
}

/// What was synced, as one moment saw it: see [`SyncedPaths::snapshot`].
pub(super) struct SyncedSnapshot {
    unsaved: BTreeMap<String, Option<ScanRecord>>,
    stored: LocalStateSnapshot,
}

impl PreviousRecords for SyncedSnapshot {
    /// The folder keeps what was synced; the chunks of unchanged files were indexed when the
    /// folder started ([`super::state::load`]) or when they changed.
    fn omit_unchanged(&self) -> bool {
        true
    }

    fn record(&self, rel: &str) -> Option<ScanRecord> {
        if let Some(record) = self.unsaved.get(rel) {
            return record.clone();
        }
        // A row that cannot be read is unknown: the scan reads the file as new, and it is
        // adopted if it matches the share.
        let row = self.stored.get(rel.as_bytes()).ok().flatten()?;
        state::decode_synced(&row).map(|s| s.record)
    }

    fn for_each_path_within(&self, dir: &str, visit: &mut dyn FnMut(&str)) {
        // A row that cannot be read is left out: the path is then not found gone, and nothing
        // is deleted for it.
        let mut stored = |rel: String| {
            if !self.unsaved.contains_key(&rel) {
                visit(&rel);
            }
        };
        let prefix = if dir.is_empty() {
            Vec::new()
        } else {
            if self.stored.contains(dir.as_bytes()).unwrap_or(false) {
                stored(dir.to_owned());
            }
            format!("{dir}/").into_bytes()
        };
        let _ = self.stored.for_each_with_prefix(&prefix, |key, _| {
            if let Some(rel) = state::path_of_key(key) {
                stored(rel);
            }
            true
        });
        // By range, not by a walk of every change: a scan asks this once per requested path.
        let unsaved: Box<dyn Iterator<Item = (&String, &Option<ScanRecord>)>> = if dir.is_empty() {
            Box::new(self.unsaved.iter())
        } else {
            let own = self.unsaved.get_key_value(dir);
            let below = format!("{dir}/")..format!("{dir}0");
            Box::new(own.into_iter().chain(self.unsaved.range(below)))
        };
        for (rel, record) in unsaved {
            if record.is_some() {
                visit(rel);
            }
        }
    }

    fn for_each_path_in(&self, range: &PathRange, visit: &mut dyn FnMut(&str)) {
        // As in `for_each_path_within`: a row that cannot be read is left out.
        let from = range.after.as_deref().unwrap_or("").as_bytes();
        let _ = self.stored.for_each_from(from, |key, _| {
            let Some(rel) = state::path_of_key(key) else {
                return true;
            };
            if !range.contains(&rel) {
                // Only the first row (`after` itself) comes before the range.
                return range.upto.as_ref().is_none_or(|upto| &rel <= upto);
            }
            if !self.unsaved.contains_key(&rel) {
                visit(&rel);
            }
            true
        });
        for (rel, record) in paths_in_map(&self.unsaved, range) {
            if record.is_some() {
                visit(rel);
            }
        }
    }

    fn slice_end(&self, after: Option<&str>, count: usize) -> Option<String> {
        // The stored rows only: the few not saved yet change a slice's size, not what the
        // slices cover.
        let mut left = count.max(1);
        let mut end = None;
        let from = after.unwrap_or("").as_bytes();
        let _ = self.stored.for_each_from(from, |key, _| {
            let Some(rel) = state::path_of_key(key) else {
                return true;
            };
            if after.is_some_and(|after| rel.as_str() <= after) {
                return true;
            }
            left -= 1;
            if left == 0 {
                end = Some(rel);
                return false;
            }
            true
        });
        end
    }
}

/// The entries of `map` whose paths are in `range`, in order.
fn paths_in_map<'a, V>(
    map: &'a BTreeMap<String, V>,
    range: &PathRange,
) -> impl Iterator<Item = (&'a String, &'a V)> {
    use std::ops::Bound;
    let start = range
        .after
        .clone()
        .map_or(Bound::Unbounded, Bound::Excluded);
    // The end is checked rather than given: a range given an end before its start panics.
    map.range((start, Bound::Unbounded))
        .take_while(|(rel, _)| range.contains(rel))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::model::{ChunkRef, Content};
    use crate::merge::VersionVector;
    use crate::store::{ShareKind, StoreHandle};

    fn synced(kind: EntryKind, byte: u8) -> Synced {
        let hash = *blake3::hash(&[byte]).as_bytes();
        let file = kind == EntryKind::File;
        Synced {
            record: ScanRecord {
                meta: FileMeta {
                    kind,
                    mode: 0o644,
                    mtime_secs: 1_000,
                    mtime_nanos: 0,
                    size: u64::from(file),
                    hash: if file { hash } else { [0; 32] },
                    content: if file {
                        Content::Inline(vec![ChunkRef { hash, len: 1 }])
                    } else {
                        Content::Empty
                    },
                    target: None,
                },
                ctime_secs: 1_000,
                ctime_nanos: 0,
                inode: u64::from(byte),
                dev: 1,
                racy: false,
            },
            base: VersionVector::default(),
        }
    }

    async fn store() -> (tempfile::TempDir, StoreHandle, crate::store::ShareId) {
        let dir = tempfile::tempdir().unwrap();
        let accept = |_: ShareKind, _: &[u8], _: &crate::store::RecordRegister| Ok(());
        let store = StoreHandle::open(dir.path(), libp2p::PeerId::random(), accept).unwrap();
        let meta = crate::store::tests::new_test_share("f", ShareKind::Folder);
        let id = meta.id;
        store.create_share(meta).await.unwrap();
        (dir, store, id)
    }

    /// A folder's synced paths and the writer task that commits them.
    fn writer_and_paths(
        store: &StoreHandle,
        share: crate::store::ShareId,
    ) -> (state::RowSender, tokio::task::JoinHandle<()>, SyncedPaths) {
        let (committed_tx, committed) = watch::channel(0);
        let (writer, task) = state::spawn_writer(store.clone(), share, "f".into(), committed_tx);
        (
            writer,
            task,
            SyncedPaths::new(store.local_state_reader(share), committed),
        )
    }

    fn paths_within(snapshot: &SyncedSnapshot, dir: &str) -> Vec<String> {
        let mut out = Vec::new();
        snapshot.for_each_path_within(dir, &mut |rel| out.push(rel.to_owned()));
        out.sort();
        out
    }

    /// A verification slice's paths, from the store and from what is not saved yet, and where
    /// slices end (counted in the store's rows).
    #[tokio::test]
    async fn a_slice_lists_stored_and_unsaved_paths_in_its_range() {
        let (_dir, store, share) = store().await;
        let (writer, task, mut paths) = writer_and_paths(&store, share);
        for (i, path) in ["a", "b", "b/x", "c", "d"].into_iter().enumerate() {
            paths.insert(path.into(), synced(EntryKind::File, i as u8));
        }
        writer.send(paths.take_unsent().unwrap()).unwrap();
        paths.all_committed().await;
        paths.insert("bb".into(), synced(EntryKind::File, 9));
        paths.remove("c");
        let snapshot = paths.snapshot().unwrap();
        let range = |after: Option<&str>, upto: Option<&str>| PathRange {
            after: after.map(str::to_owned),
            upto: upto.map(str::to_owned),
        };
        let listed = |range: PathRange| {
            let mut out = Vec::new();
            snapshot.for_each_path_in(&range, &mut |rel| out.push(rel.to_owned()));
            out.sort();
            out
        };
        assert_eq!(listed(range(None, None)), ["a", "b", "b/x", "bb", "d"]);
        assert_eq!(listed(range(Some("a"), Some("bb"))), ["b", "b/x", "bb"]);
        assert_eq!(
            listed(range(Some("b/x"), None)),
            ["bb", "d"],
            "c is deleted"
        );
        assert!(listed(range(Some("d"), Some("a"))).is_empty(), "no panic");
        assert_eq!(snapshot.slice_end(None, 2).as_deref(), Some("b"));
        assert_eq!(snapshot.slice_end(Some("b"), 2).as_deref(), Some("c"));
        assert_eq!(snapshot.slice_end(Some("c"), 2), None, "the last slice");
        assert_eq!(snapshot.slice_end(None, 0).as_deref(), Some("a"));
        drop(writer);
        task.await.unwrap();
    }

    /// What a scan compares with stays as it started; the folder's writes since then (stored
    /// or not) outdate it, a restat that changes nothing does not.
    #[tokio::test]
    async fn a_scan_basis_keeps_its_start_and_knows_when_it_is_outdated() {
        let (_dir, store, share) = store().await;
        let (writer, task, mut paths) = writer_and_paths(&store, share);
        paths.insert("d".into(), synced(EntryKind::Dir, 0));
        paths.insert("d/f".into(), synced(EntryKind::File, 1));
        writer.send(paths.take_unsent().unwrap()).unwrap();
        paths.all_committed().await;
        let basis = paths.scan_basis().unwrap();
        assert!(!basis.outdated_by(&paths));
        paths.restat("d/f", synced(EntryKind::File, 1).record);
        assert!(!basis.outdated_by(&paths), "nothing changed");
        // A peer's delete applied while the scan walked: the walk may still have seen both.
        paths.remove("d/f");
        paths.remove("d");
        assert!(basis.outdated_by(&paths));
        assert_eq!(
            basis.previous().record("d"),
            Some(synced(EntryKind::Dir, 0).record)
        );
        assert_eq!(paths.get("d"), None);
        let later = paths.scan_basis().unwrap();
        assert!(!later.outdated_by(&paths));
        assert_eq!(later.previous().record("d"), None);
        drop(writer);
        task.await.unwrap();
    }

    /// Read together, paths read what each read alone would: the unsaved change over the
    /// stored row, and nothing where nothing was synced. Inserted over a value just read, the
    /// counts are those of a plain insert.
    #[tokio::test]
    async fn paths_read_together_read_as_each_alone() {
        let (_dir, store, share) = store().await;
        let (writer, task, mut paths) = writer_and_paths(&store, share);
        paths.insert("a".into(), synced(EntryKind::File, 1));
        paths.insert("b".into(), synced(EntryKind::File, 2));
        writer.send(paths.take_unsent().unwrap()).unwrap();
        paths.all_committed().await;
        paths.forget_committed();
        assert_eq!(paths.held(), 0, "read from the store from now on");
        paths.insert("b".into(), synced(EntryKind::File, 3));
        paths.insert("c".into(), synced(EntryKind::Dir, 4));
        let asked = ["a", "b", "c", "none", "a"];
        let together = paths.get_many(asked);
        let alone: Vec<_> = asked.iter().map(|p| paths.get(p)).collect();
        assert_eq!(together, alone);
        assert_eq!(together[1], Some(synced(EntryKind::File, 3)));
        assert_eq!(together[3], None);
        assert!(paths.get_many([]).is_empty());

        let counts = paths.counts();
        let old = paths.get("a");
        paths.insert_over("a".into(), old.as_ref(), synced(EntryKind::Dir, 5));
        let mut expected = counts;
        expected.files -= 1;
        expected.file_bytes -= 1;
        expected.directories += 1;
        assert_eq!(paths.counts(), expected);
        assert_eq!(paths.get("a"), Some(synced(EntryKind::Dir, 5)));
        paths.insert_over("new".into(), None, synced(EntryKind::File, 6));
        assert_eq!(paths.counts().files, expected.files + 1);
        drop(writer);
        task.await.unwrap();
    }

    #[tokio::test]
    async fn changes_are_read_back_before_and_after_the_writer_commits_them() {
        let (_dir, store, share) = store().await;
        let (writer, task, mut paths) = writer_and_paths(&store, share);

        paths.insert("a".into(), synced(EntryKind::File, 1));
        paths.insert("d".into(), synced(EntryKind::Dir, 2));
        paths.insert("d/x".into(), synced(EntryKind::File, 3));
        paths.insert("dx".into(), synced(EntryKind::File, 4));
        assert_eq!(paths.len(), 4);
        assert_eq!(paths.counts().files, 3);
        assert_eq!(paths.get("d/x"), Some(synced(EntryKind::File, 3)));
        let before = paths.snapshot().unwrap();
        assert_eq!(paths_within(&before, "d"), ["d", "d/x"]);

        // Handed over and committed: read from the store from now on, no longer held here.
        let batch = paths.take_unsent().unwrap();
        assert_eq!(batch.1.len(), 4);
        writer.send(batch).unwrap();
        paths.all_committed().await;
        paths.remove("a");
        paths.restat("dx", synced(EntryKind::File, 4).record);
        let batch = paths.take_unsent().unwrap();
        assert_eq!(
            batch.1.len(),
            1,
            "only the delete is new; an unchanged restat writes nothing"
        );
        assert_eq!(
            paths.unsaved.len(),
            1,
            "committed rows are no longer held in memory"
        );
        assert_eq!(paths.get("d/x"), Some(synced(EntryKind::File, 3)));
        assert_eq!(
            paths.get("a"),
            None,
            "the delete, not yet committed, hides the stored row"
        );
        assert!(!paths.contains_key("a"));
        assert_eq!(paths.len(), 3);
        let now = paths.snapshot().unwrap();
        assert_eq!(paths_within(&now, ""), ["d", "d/x", "dx"]);
        assert_eq!(now.record("d/x"), Some(synced(EntryKind::File, 3).record));
        assert_eq!(now.record("a"), None);
        // The earlier snapshot still sees the folder as it was.
        assert_eq!(paths_within(&before, ""), ["a", "d", "d/x", "dx"]);

        writer.send(batch).unwrap();
        paths.all_committed().await;
        drop(writer);
        task.await.unwrap();
        // As a restart finds them.
        let mut rows = Vec::new();
        let loaded = state::load(&store.local_state_reader(share), &mut |path, synced| {
            rows.push((path.to_owned(), synced.clone()));
        })
        .unwrap();
        assert_eq!(loaded.counts, paths.counts());
        // Every path's row is handed out once, as stored.
        assert_eq!(
            rows,
            [
                ("d".to_owned(), synced(EntryKind::Dir, 2)),
                ("d/x".to_owned(), synced(EntryKind::File, 3)),
                ("dx".to_owned(), synced(EntryKind::File, 4)),
            ]
        );
        let mut forgotten = paths.forget_all().unwrap();
        forgotten.sort();
        assert_eq!(forgotten, ["d", "d/x", "dx"]);
        assert_eq!(paths.len(), 0);
    }

    #[tokio::test]
    async fn held_changes_are_counted_and_forgotten_once_committed() {
        let (_dir, store, share) = store().await;
        let (writer, task, mut paths) = writer_and_paths(&store, share);

        paths.insert("a".into(), synced(EntryKind::File, 1));
        paths.insert("b".into(), synced(EntryKind::File, 2));
        paths.insert("a".into(), synced(EntryKind::File, 3));
        assert_eq!(
            paths.unsent(),
            2,
            "a path changed twice is one row to write"
        );
        assert_eq!(paths.held(), 2);
        let batch = paths.take_unsent().unwrap();
        assert_eq!(paths.unsent(), 0);
        assert_eq!(
            paths.held(),
            2,
            "handed over, not committed yet: still held"
        );
        paths.insert("a".into(), synced(EntryKind::File, 4));
        assert_eq!(
            paths.unsent(),
            1,
            "a handed-over path changed again is a new row"
        );

        writer.send(batch).unwrap();
        // Wakes on the commit, after which only the newer change to `a` is held.
        tokio::time::timeout(std::time::Duration::from_secs(60), paths.next_commit())
            .await
            .expect("the writer commits");
        paths.forget_committed();
        assert_eq!(paths.held(), 1);
        assert_eq!(paths.get("b"), Some(synced(EntryKind::File, 2)));
        assert_eq!(paths.get("a"), Some(synced(EntryKind::File, 4)));
        drop(writer);
        task.await.unwrap();
    }
}
