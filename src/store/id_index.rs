//! A share's id index (the `index` table, ordered by `share ‖ blake3(key)`) as the items of its
//! reconciliation summary: the summary keeps only its tree's counts and hashes in memory and
//! reads a range of items from here when it needs them.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use redb::{ReadOnlyTable, ReadableDatabase, ReadableTable};

use super::database::DbSlot;
use super::schema::INDEX;
use super::{ShareId, StoreError, join_key};
use crate::reconcile::{
    Digest, Id, Item, ItemSource, ItemsUnreadable, LEAF_MAX, Prefix, Subtree, Summary,
};

/// A share's summary, its items in the store.
pub type ShareSummary = Summary<StoredItems>;

/// One share's rows of the id index, read through the database slot (so reads after the store
/// stopped or while it is reopened fail with its reason rather than keep it open).
pub struct StoredItems {
    db: Arc<DbSlot>,
    share: ShareId,
}

impl std::fmt::Debug for StoredItems {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "StoredItems({})", hex::encode(&self.share[..8]))
    }
}

impl StoredItems {
    pub(super) fn new(db: Arc<DbSlot>, share: ShareId) -> Self {
        StoredItems { db, share }
    }

    /// The items as committed now, for many reads in one transaction (a read transaction
    /// each costs about as much as the read itself).
    pub(super) fn snapshot(&self) -> Result<IndexSnapshot, StoreError> {
        let db = self.db.get()?;
        let txn = db.begin_read()?;
        Ok(IndexSnapshot {
            table: txn.open_table(INDEX)?,
            share: self.share,
        })
    }
}

impl ItemSource for StoredItems {
    fn items(&self, p: &Prefix, limit: usize) -> Result<Vec<Item>, ItemsUnreadable> {
        self.snapshot()
            .and_then(|snapshot| read(&snapshot.table, &snapshot.share, p, limit))
            .map_err(|e| unreadable(&e))
    }
}

/// See [`StoredItems::snapshot`]. It pins the pages it sees: held for one batch of reads.
pub(super) struct IndexSnapshot {
    table: ReadOnlyTable<&'static [u8], &'static [u8]>,
    share: ShareId,
}

impl ItemSource for IndexSnapshot {
    fn items(&self, p: &Prefix, limit: usize) -> Result<Vec<Item>, ItemsUnreadable> {
        read(&self.table, &self.share, p, limit).map_err(|e| unreadable(&e))
    }
}

/// A failed read, for the summary (which knows no store errors).
pub(super) fn unreadable(error: &StoreError) -> ItemsUnreadable {
    ItemsUnreadable {
        reason: error.to_string(),
        said_by_source: error.is_logged_by_store(),
    }
}

/// Up to `limit` of `share`'s items under `p`, in id order.
fn read(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    share: &ShareId,
    p: &Prefix,
    limit: usize,
) -> Result<Vec<Item>, StoreError> {
    let start = join_key(share, p.min_id());
    let mut out = Vec::new();
    for row in table.range(start.as_slice()..)? {
        if out.len() >= limit {
            break;
        }
        let (key, value) = row?;
        let Some(item) = decode_row(share, key.value(), value.value())? else {
            break;
        };
        if !p.contains(&item.id) {
            break;
        }
        out.push(item);
    }
    Ok(out)
}

/// The item of an index row of `share`; `None` past the share's rows.
pub(super) fn decode_row(
    share: &ShareId,
    key: &[u8],
    value: &[u8],
) -> Result<Option<Item>, StoreError> {
    if !key.starts_with(share) {
        return Ok(None);
    }
    if key.len() != 64 || value.len() < 32 {
        return Err(StoreError::Corrupt(
            "an index row has the wrong length".into(),
        ));
    }
    let id: Id = key[32..].try_into().expect("32 bytes");
    let digest: Digest = value[..32].try_into().expect("32 bytes");
    Ok(Some(Item { id, digest }))
}

/// Threads that build a share's summary at start-up (its 16 root children are built side by
/// side, a child at a time per thread). More than the cores: after a reboot the index is read
/// from disk, and the threads' reads overlap. A folder share of 10^6 files on this 2-core
/// machine, page cache dropped: 7.7 s on 1 thread, 3.4–3.8 s on 2, 2.1–2.3 s on 4, 1.3–1.4 s
/// on 8, 0.9–1.2 s on 16; with the index cached 0.25–0.35 s on any of them.
pub const LOAD_THREADS: usize = 16;

/// Builds `share`'s summary from its index rows in `table`, streaming (the rows are in id
/// order), its 16 root children side by side on [`LOAD_THREADS`] threads, all reading the
/// same transaction; the summary then reads its items through `db`.
pub(super) fn load_summary<T>(
    table: &T,
    share: &ShareId,
    db: &Arc<DbSlot>,
) -> Result<ShareSummary, StoreError>
where
    T: ReadableTable<&'static [u8], &'static [u8]> + Sync,
{
    let threads = LOAD_THREADS;
    let next = AtomicUsize::new(0);
    let build_some = || -> Result<Vec<Subtree>, StoreError> {
        let mut built = Vec::new();
        loop {
            let nibble = next.fetch_add(1, Ordering::Relaxed);
            if nibble >= 16 {
                return Ok(built);
            }
            built.push(build_subtree(table, share, nibble)?);
        }
    };
    let mut subtrees: Vec<Subtree> = std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads).map(|_| scope.spawn(build_some)).collect();
        let mut all = build_some()?;
        for other in others {
            all.extend(other.join().expect("a summary builder panicked")?);
        }
        Ok::<_, StoreError>(all)
    })?;
    let source = StoredItems::new(db.clone(), *share);
    if subtrees.iter().map(Subtree::len).sum::<u64>() <= LEAF_MAX as u64 {
        // The root is a leaf: its few items read again from the same transaction.
        let items = read(table, share, &Prefix::ROOT, usize::MAX)?;
        return Ok(Summary::from_sorted(source, items));
    }
    subtrees.sort_by_key(Subtree::nibble);
    let subtrees: [Subtree; 16] = subtrees
        .try_into()
        .expect("one subtree for each of the 16 nibbles");
    // Reads nothing: the root has children.
    Summary::from_subtrees(source, subtrees).map_err(|e| StoreError::Unavailable(e.reason))
}

/// The subtree of `share`'s ids whose first nibble is `nibble`, from its index rows.
fn build_subtree(
    table: &impl ReadableTable<&'static [u8], &'static [u8]>,
    share: &ShareId,
    nibble: usize,
) -> Result<Subtree, StoreError> {
    let mut first = [0; 32];
    first[0] = (nibble as u8) << 4;
    let start = join_key(share, &first);
    let mut failed = None;
    let mut rows = table.range(start.as_slice()..)?;
    let items = std::iter::from_fn(|| {
        let row = match rows.next()? {
            Ok(row) => row,
            Err(e) => {
                failed = Some(StoreError::from(e));
                return None;
            }
        };
        match decode_row(share, row.0.value(), row.1.value()) {
            Ok(item) => item,
            Err(e) => {
                failed = Some(e);
                None
            }
        }
    });
    let subtree = Subtree::build(nibble, items);
    match failed {
        Some(e) => Err(e),
        None => Ok(subtree),
    }
}
