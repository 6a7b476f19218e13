//! The folder's own state beside the share's entries, kept in the store: what was last synced at
//! each path (the share's local-state rows) and chunk-list pages. Every read and write of it goes
//! through here; nothing here touches the database directly.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;
use tracing::warn;

use super::instance::InstanceId;
use super::model::{ChunkRef, Content, FileMeta, Hash, PageRef};
use super::scan::ScanRecord;
use crate::merge::VersionVector;
use crate::store::local_state::LocalStateRow;
use crate::store::{ShareId, StoreError, StoreHandle};

/// What a synced path is known to be: the value of the folder's local-state row for the path.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    /// The scan record of the path as last synced (written by us or scanned and sent).
    pub record: ScanRecord,
    /// The version vector of the version whose content that is.
    pub base: VersionVector,
}

/// The local-state row holding the folder's [`InstanceId`]. It starts with a NUL, which no path
/// may contain, so it never collides with a path's row.
const INSTANCE_KEY: &[u8] = b"\0instance";

/// What the store knows about a folder: every path's synced state, and the id of the folder
/// that was synced.
#[derive(Debug, Default)]
pub struct Loaded {
    /// Per path: what was last synced there.
    pub synced: BTreeMap<String, Synced>,
    /// The id of the folder those paths were synced in ([`super::instance`]).
    pub instance: Option<InstanceId>,
}

/// Loads the folder's state. A row that does not decode is skipped (and counted in the log):
/// the path is then unknown, and the next scan re-adopts it if it matches the share.
pub async fn load(store: &StoreHandle, share: ShareId) -> Result<Loaded, StoreError> {
    let rows = store.local_state(share).await?;
    let mut map = BTreeMap::new();
    let mut instance = None;
    let mut damaged = 0usize;
    for (key, value) in rows {
        if key == INSTANCE_KEY {
            instance = InstanceId::try_from(value.as_slice()).ok();
            continue;
        }
        match (
            String::from_utf8(key),
            crate::cbor::decode::<Synced>(&value),
        ) {
            (Ok(path), Ok(synced)) => {
                map.insert(path, synced);
            }
            _ => damaged += 1,
        }
    }
    if damaged > 0 {
        warn!("{damaged} synced-state rows did not decode; those paths are rescanned");
    }
    Ok(Loaded {
        synced: map,
        instance,
    })
}

/// Records the folder's id, and forgets every synced path in `forget` (all of them when the
/// folder was replaced), in one durable write.
pub async fn record_instance(
    store: &StoreHandle,
    share: ShareId,
    id: InstanceId,
    forget: Vec<String>,
) -> Result<(), StoreError> {
    let mut rows: Vec<LocalStateRow> = forget
        .into_iter()
        .map(|path| (path.into_bytes(), None))
        .collect();
    rows.push((INSTANCE_KEY.to_vec(), Some(id.to_vec())));
    store.save_local_state(share, rows).await
}

/// Batches of synced-state rows for the writer task.
pub type RowSender = mpsc::UnboundedSender<Vec<(String, Option<Synced>)>>;

/// Starts the task that writes synced-state rows in the order they are handed to it, so the
/// folder's loop never waits for a commit. The task ends when the sender is dropped, after
/// writing what it was given.
pub fn spawn_writer(
    store: StoreHandle,
    share: ShareId,
    folder: String,
) -> (RowSender, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Vec<(String, Option<Synced>)>>();
    let task = tokio::spawn(async move {
        while let Some(batch) = rx.recv().await {
            let rows = match encode_rows(batch) {
                Ok(rows) => rows,
                Err(e) => {
                    warn!(folder = %folder, "cannot encode folder state: {e}");
                    continue;
                }
            };
            if let Err(e) = store.save_local_state(share, rows).await {
                warn!(folder = %folder, "cannot save folder state: {e}");
            }
        }
    });
    (tx, task)
}

fn encode_rows(
    rows: Vec<(String, Option<Synced>)>,
) -> Result<Vec<LocalStateRow>, crate::cbor::CborError> {
    rows.into_iter()
        .map(|(path, synced)| {
            let value = synced.as_ref().map(crate::cbor::encode).transpose()?;
            Ok((path.into_bytes(), value))
        })
        .collect()
}

/// Decodes a stored or fetched page and checks it against its description.
pub fn decode_page(page: &PageRef, bytes: &[u8]) -> Result<Vec<ChunkRef>, PageError> {
    let chunks: Vec<ChunkRef> =
        crate::cbor::decode(bytes).map_err(|e| PageError::Undecodable(e.to_string()))?;
    if chunks.len() != page.chunks as usize
        || chunks.iter().map(|c| c.len as u64).sum::<u64>() != page.bytes
    {
        return Err(PageError::Mismatch);
    }
    Ok(chunks)
}

/// A chunk-list page that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PageError {
    /// Not the CBOR of a chunk list.
    #[error("bad chunk list page: {0}")]
    Undecodable(String),
    /// Its chunks do not add up to what the entry says.
    #[error("chunk list page does not match its description")]
    Mismatch,
}

/// The chunk list of `meta` from what the store holds (no fetching); `None` if a page is missing
/// or unusable. For blocking threads (the scanner).
pub fn blocking_stored_chunk_list(
    store: &StoreHandle,
    share: ShareId,
    meta: &FileMeta,
) -> Option<Vec<ChunkRef>> {
    stored_chunk_list_with(meta, |hash| {
        store.blocking_page(share, *hash).ok().flatten()
    })
}

/// [`blocking_stored_chunk_list`] for async code.
pub async fn stored_chunk_list(
    store: &StoreHandle,
    share: ShareId,
    meta: &FileMeta,
) -> Option<Vec<ChunkRef>> {
    let Content::Paged(pages) = &meta.content else {
        return stored_chunk_list_with(meta, |_| None);
    };
    let mut all = Vec::new();
    for page in pages {
        let bytes = match store.page(share, page.hash).await {
            Ok(bytes) => bytes?,
            Err(e) => {
                // Treated as not stored: the caller fetches the chunks instead of copying them.
                warn!("cannot read a chunk-list page: {e}");
                return None;
            }
        };
        all.extend(decode_page(page, &bytes).ok()?);
    }
    Some(all)
}

fn stored_chunk_list_with(
    meta: &FileMeta,
    mut page: impl FnMut(&Hash) -> Option<Vec<u8>>,
) -> Option<Vec<ChunkRef>> {
    match &meta.content {
        Content::Empty => Some(Vec::new()),
        Content::Inline(chunks) => Some(chunks.clone()),
        Content::Paged(pages) => {
            let mut all = Vec::new();
            for p in pages {
                let bytes = page(&p.hash)?;
                all.extend(decode_page(p, &bytes).ok()?);
            }
            Some(all)
        }
    }
}

/// Pages in the form the store takes.
pub fn encoded_pages(pages: &[(PageRef, Vec<ChunkRef>)]) -> Vec<([u8; 32], Vec<u8>)> {
    pages
        .iter()
        .map(|(page, chunks)| (page.hash, super::model::encode_page(chunks)))
        .collect()
}
