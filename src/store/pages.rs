//! Content-addressed pages of a share: bytes stored under their BLAKE3 hash, which a share's
//! entries may refer to instead of carrying them inline (a folder keeps the chunk lists of big
//! files this way). The store checks each page against its hash and knows nothing else of it.

use redb::{ReadableDatabase, Table};

use super::schema::PAGES;
use super::{ShareId, StoreError, join_key};

/// Writes pages in the store thread's transaction, refusing one that does not match its hash.
pub(super) fn write(
    table: &mut Table<&[u8], &[u8]>,
    share: &ShareId,
    pages: &[([u8; 32], Vec<u8>)],
) -> Result<(), StoreError> {
    for (hash, bytes) in pages {
        if blake3::hash(bytes).as_bytes() != hash {
            return Err(StoreError::Invalid(format!(
                "a page given as {} has other content",
                hex::encode(hash)
            )));
        }
    }
    for (hash, bytes) in pages {
        table.insert(join_key(share, hash).as_slice(), bytes.as_slice())?;
    }
    Ok(())
}

/// Reads one page.
pub(super) fn read(
    db: &redb::Database,
    share: &ShareId,
    hash: &[u8; 32],
) -> Result<Option<Vec<u8>>, StoreError> {
    let txn = db.begin_read()?;
    let table = txn.open_table(PAGES)?;
    Ok(table
        .get(join_key(share, hash).as_slice())?
        .map(|v| v.value().to_vec()))
}
