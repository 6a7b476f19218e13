//! What the local node keeps about a share's keys and never sends: for a folder, what was last
//! synced at each path. Rows are opaque bytes under `share ‖ key`; the owner encodes them.
//!
//! Rows are written in the store thread's batches, so they commit together with record writes
//! that arrive at the same time.

use std::sync::Arc;

use redb::{ReadOnlyTable, ReadableDatabase, Table, TableDefinition};

use super::database::DbSlot;
use super::schema::{LOCAL_INDEX, LOCAL_STATE};
use super::{ShareId, StoreError, join_key, next_prefix};

/// One row to write: a key and its new bytes, or `None` to remove it.
pub type LocalStateRow = (Vec<u8>, Option<Vec<u8>>);
/// Every stored row of a share: keys and their bytes, in key order.
pub type LocalStateRows = Vec<(Vec<u8>, Vec<u8>)>;

/// What changes in a share's local index (rows derived from its local state, see
/// `schema::LOCAL_INDEX`) with a local-state write: applied in the same transaction, so the two
/// never disagree after a crash.
#[derive(Debug, Default, Clone)]
pub struct LocalIndexChange {
    /// Remove every index row of the share first.
    pub clear: bool,
    /// Then write (or remove) these.
    pub rows: Vec<LocalStateRow>,
}

/// Applies rows and their index change in the store thread's transaction.
pub(super) fn write(
    tables: [&mut Table<&[u8], &[u8]>; 2],
    share: &ShareId,
    rows: Vec<LocalStateRow>,
    index: LocalIndexChange,
) -> Result<(), StoreError> {
    let [state, index_table] = tables;
    put_rows(state, share, rows)?;
    if index.clear {
        let start = share.to_vec();
        let end = next_prefix(&start);
        index_table.retain_in(start.as_slice()..end.as_slice(), |_, _| false)?;
    }
    put_rows(index_table, share, index.rows)
}

fn put_rows(
    table: &mut Table<&[u8], &[u8]>,
    share: &ShareId,
    rows: Vec<LocalStateRow>,
) -> Result<(), StoreError> {
    for (key, value) in rows {
        let key = join_key(share, &key);
        match value {
            Some(bytes) => {
                table.insert(key.as_slice(), bytes.as_slice())?;
            }
            None => {
                table.remove(key.as_slice())?;
            }
        }
    }
    Ok(())
}

/// Reads every row of a share.
pub(super) fn read_all(db: &redb::Database, share: &ShareId) -> Result<LocalStateRows, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(LOCAL_STATE)?;
    let start = join_key(share, &[]);
    let end = next_prefix(&start);
    let mut out = Vec::new();
    for row in table.range(start.as_slice()..end.as_slice())? {
        let (k, v) = row?;
        out.push((k.value()[32..].to_vec(), v.value().to_vec()));
    }
    Ok(out)
}

/// Reads one share's local-state rows from any thread, without going through the store thread,
/// so an owner can keep its rows on disk and read them as it needs them instead of holding
/// them all in memory. Each read sees the rows as last committed.
#[derive(Clone)]
pub struct LocalStateReader {
    /// Reaches the database weakly, as the handle does: reads after the store stopped fail
    /// with `Stopped`, and while it is being reopened with `Unavailable`.
    db: Arc<DbSlot>,
    share: ShareId,
}

impl LocalStateReader {
    pub(super) fn new(db: Arc<DbSlot>, share: ShareId) -> Self {
        LocalStateReader { db, share }
    }

    /// A consistent view of the committed rows, for several reads. It pins the database pages
    /// it sees: hold it for one piece of work (a scan), not for the life of the owner.
    pub fn snapshot(&self) -> Result<LocalStateSnapshot, StoreError> {
        self.snapshot_of(LOCAL_STATE)
    }

    /// [`Self::snapshot`] of the share's local index rows ([`LocalIndexChange`]).
    pub fn index_snapshot(&self) -> Result<LocalStateSnapshot, StoreError> {
        self.snapshot_of(LOCAL_INDEX)
    }

    fn snapshot_of(
        &self,
        table: TableDefinition<&'static [u8], &'static [u8]>,
    ) -> Result<LocalStateSnapshot, StoreError> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        Ok(LocalStateSnapshot {
            table: txn.open_table(table)?,
            share: self.share,
        })
    }
}

/// See [`LocalStateReader::snapshot`] and [`LocalStateReader::index_snapshot`].
pub struct LocalStateSnapshot {
    table: ReadOnlyTable<&'static [u8], &'static [u8]>,
    share: ShareId,
}

impl LocalStateSnapshot {
    /// The row at `key`.
    pub fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        let key = join_key(&self.share, key);
        Ok(self.table.get(key.as_slice())?.map(|v| v.value().to_vec()))
    }

    /// Whether there is a row at `key`.
    pub fn contains(&self, key: &[u8]) -> Result<bool, StoreError> {
        let key = join_key(&self.share, key);
        Ok(self.table.get(key.as_slice())?.is_some())
    }

    /// Calls `visit` with every row whose key is `from` or after it, in key order, until it
    /// returns `false`.
    pub fn for_each_from(
        &self,
        from: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let start = join_key(&self.share, from);
        let end = next_prefix(&join_key(&self.share, &[]));
        self.for_each_in(&start, &end, visit)
    }

    /// Calls `visit` with every row whose key starts with `prefix`, in key order, until it
    /// returns `false`.
    pub fn for_each_with_prefix(
        &self,
        prefix: &[u8],
        visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        let start = join_key(&self.share, prefix);
        let end = next_prefix(&start);
        self.for_each_in(&start, &end, visit)
    }

    /// The rows with (joined) keys from `start` up to `end`, in key order, until `visit` says
    /// stop.
    fn for_each_in(
        &self,
        start: &[u8],
        end: &[u8],
        mut visit: impl FnMut(&[u8], &[u8]) -> bool,
    ) -> Result<(), StoreError> {
        for row in self.table.range(start..end)? {
            let (k, v) = row?;
            if !visit(&k.value()[32..], v.value()) {
                break;
            }
        }
        Ok(())
    }
}
