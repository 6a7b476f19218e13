//! Content-addressed pages of a share: bytes stored under their BLAKE3 hash, which a share's
//! entries may refer to instead of carrying them inline (a folder keeps the chunk lists of big
//! files this way). The store checks each page against its hash and knows nothing else of it.

use redb::{ReadableDatabase, Table};

use super::handle::{Action, PendingWrite};
use super::schema::PAGES;
use super::{ShareId, StoreError, StoreHandle, join_key};

impl StoreHandle {
    /// Hands pages to the store thread and returns once they are queued: they are committed
    /// with the batch they land in, which is also the batch of a write sent right after them
    /// (so pages and the entries that name them become durable together, at one fsync).
    pub async fn put_pages(
        &self,
        share: ShareId,
        pages: Vec<([u8; 32], Vec<u8>)>,
    ) -> Result<PendingWrite, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.actions
            .send(Action::PutPages {
                share,
                pages,
                reply,
            })
            .await
            .map_err(|_| StoreError::Stopped)?;
        Ok(PendingWrite::new(rx))
    }

    /// The page with this hash, if the share has it.
    pub async fn page(
        &self,
        share: ShareId,
        hash: [u8; 32],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(|reply| Action::Page { share, hash, reply }).await
    }

    /// [`StoreHandle::page`] for code on a blocking thread (a scanner's worker). Panics if called
    /// from an async task, like every blocking call into tokio.
    pub fn blocking_page(
        &self,
        share: ShareId,
        hash: [u8; 32],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.actions
            .blocking_send(Action::Page { share, hash, reply })
            .map_err(|_| StoreError::Stopped)?;
        rx.blocking_recv().map_err(|_| StoreError::Stopped)?
    }
}

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
