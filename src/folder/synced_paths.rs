//! What was last synced at each path, with counts by kind kept as it changes, so `status` can
//! say how many files and directories a folder holds without walking every path each time it
//! is asked (the state poll asks every second).

use std::collections::BTreeMap;
use std::ops::Deref;

use super::model::{EntryKind, FileMeta};
use super::state::Synced;

/// The synced paths of one folder; read through `Deref`, changed only through the methods
/// below, which keep the counts.
#[derive(Debug, Default)]
pub(super) struct SyncedPaths {
    map: BTreeMap<String, Synced>,
    counts: KindCounts,
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

impl Deref for SyncedPaths {
    type Target = BTreeMap<String, Synced>;

    fn deref(&self) -> &Self::Target {
        &self.map
    }
}

impl From<BTreeMap<String, Synced>> for SyncedPaths {
    fn from(map: BTreeMap<String, Synced>) -> Self {
        let mut counts = KindCounts::default();
        for synced in map.values() {
            counts.change(&synced.record.meta, true);
        }
        SyncedPaths { map, counts }
    }
}

impl SyncedPaths {
    /// The counts by kind.
    pub(super) fn counts(&self) -> KindCounts {
        self.counts
    }

    pub(super) fn insert(&mut self, path: String, synced: Synced) -> Option<Synced> {
        self.counts.change(&synced.record.meta, true);
        let old = self.map.insert(path, synced);
        if let Some(old) = &old {
            self.counts.change(&old.record.meta, false);
        }
        old
    }

    pub(super) fn remove(&mut self, path: &str) -> Option<Synced> {
        let old = self.map.remove(path);
        if let Some(old) = &old {
            self.counts.change(&old.record.meta, false);
        }
        old
    }

    /// Replaces the stat data of a path whose content and kind did not change.
    pub(super) fn restat(&mut self, path: &str, record: super::scan::ScanRecord) {
        if let Some(synced) = self.map.get_mut(path)
            && synced.record.meta.kind == record.meta.kind
        {
            self.counts.change(&synced.record.meta, false);
            self.counts.change(&record.meta, true);
            synced.record = record;
        }
    }

    /// Empties it, returning what it held.
    pub(super) fn take(&mut self) -> BTreeMap<String, Synced> {
        self.counts = KindCounts::default();
        std::mem::take(&mut self.map)
    }
}
