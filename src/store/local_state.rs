//! What the local node keeps about a share's keys and never sends: for a folder, what was last
//! synced at each path. Rows are opaque bytes under `share ‖ key`; the owner encodes them.
//!
//! Rows are written in the store thread's batches, so they commit together with record writes
//! that arrive at the same time.

use redb::{ReadableDatabase, Table};

use super::schema::LOCAL_STATE;
use super::{ShareId, StoreError, join_key, next_prefix};

/// One row to write: a key and its new bytes, or `None` to remove it.
pub type LocalStateRow = (Vec<u8>, Option<Vec<u8>>);
/// Every stored row of a share: keys and their bytes, in key order.
pub type LocalStateRows = Vec<(Vec<u8>, Vec<u8>)>;

/// Applies rows in the store thread's transaction.
pub(super) fn write(
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
