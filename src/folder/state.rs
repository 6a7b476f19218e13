//! The folder's own state beside the share's entries, kept in the store: what was last synced at
//! each path (the share's local-state rows) and chunk-list pages. Every read and write of it goes
//! through here; nothing here touches the database directly.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::instance::InstanceId;
use super::model::{ChunkRef, Content, FileMeta, Hash, PageRef};
use super::scan::ScanRecord;
use super::synced_paths::KindCounts;
use crate::merge::VersionVector;
use crate::store::local_state::{LocalStateReader, LocalStateRow};
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

/// What the store knows about a folder, counted at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The synced paths by kind.
    pub counts: KindCounts,
    /// The id of the folder those paths were synced in ([`super::instance`]).
    pub instance: Option<InstanceId>,
}

/// Counts the folder's synced paths and reads its id, reading every row once (blocking: call it
/// off the async threads), and hands each path's row to `each_row`. A row that does not decode
/// is not counted (and counted in the log): the path is then unknown, and the next scan
/// re-adopts it if it matches the share.
pub fn load(
    stored: &LocalStateReader,
    each_row: &mut dyn FnMut(&str, &Synced),
) -> Result<Loaded, StoreError> {
    let mut loaded = Loaded::default();
    let mut damaged = 0usize;
    stored.snapshot()?.for_each_with_prefix(b"", |key, value| {
        if key == INSTANCE_KEY {
            loaded.instance = InstanceId::try_from(value).ok();
        } else if let Some(path) = path_of_key(key) {
            match decode_synced(value) {
                Some(synced) => {
                    loaded.counts.add(&synced.record.meta);
                    each_row(&path, &synced);
                }
                None => damaged += 1,
            }
        }
        true
    })?;
    if damaged > 0 {
        warn!("{damaged} synced-state rows did not decode; those paths are rescanned");
    }
    Ok(loaded)
}

/// The path a local-state row is about, if it is about one (not the folder's id).
pub fn path_of_key(key: &[u8]) -> Option<String> {
    if key.first() == Some(&0) {
        return None;
    }
    String::from_utf8(key.to_vec()).ok()
}

/// A path's row, if it decodes.
pub fn decode_synced(bytes: &[u8]) -> Option<Synced> {
    crate::cbor::decode(bytes).ok()
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

/// A numbered batch of synced-state rows for the writer task: per path, its new state or none.
pub type RowBatch = (u64, Vec<(String, Option<Synced>)>);
/// Where the folder hands batches to the writer task.
pub type RowSender = mpsc::UnboundedSender<RowBatch>;

/// How long the writer waits before trying a failed batch again, at first (doubling)...
pub const RETRY_FIRST: Duration = Duration::from_millis(100);
/// ... and at most.
pub const RETRY_MAX: Duration = Duration::from_secs(10);
/// Once the folder stops, a batch that keeps failing is given up after this many tries (the
/// rows are a cache of what was synced: a path they miss is re-adopted by the next scan).
pub const TRIES_AT_STOP: u32 = 3;

/// Starts the task that writes synced-state rows in the order they are handed to it, so the
/// folder's loop never waits for a commit, and publishes the number of the last batch committed
/// on `committed`. A batch that fails is tried again until it is written: the folder forgets
/// its copy of the rows only once they are committed. The task ends when the sender is dropped,
/// after writing what it was given.
pub fn spawn_writer(
    store: StoreHandle,
    share: ShareId,
    folder: String,
    committed: watch::Sender<u64>,
) -> (RowSender, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<RowBatch>();
    let task = tokio::spawn(async move {
        while let Some((batch, rows)) = rx.recv().await {
            let rows = match encode_rows(rows) {
                Ok(rows) => rows,
                Err(e) => {
                    warn!(folder = %folder, "cannot encode folder state: {e}");
                    committed.send_replace(batch);
                    continue;
                }
            };
            let (mut wait, mut tries, mut said) = (RETRY_FIRST, 0u32, false);
            loop {
                match store.save_local_state(share, rows.clone()).await {
                    Ok(()) => {
                        if said {
                            info!(folder = %folder, "folder state saved again");
                        }
                        break;
                    }
                    Err(StoreError::Stopped) => return,
                    Err(e) => {
                        tries += 1;
                        if rx.is_closed() && tries >= TRIES_AT_STOP {
                            warn!(folder = %folder, "folder state not saved at stop: {e}");
                            break;
                        }
                        // A store that cannot be written has said so itself, once.
                        if !said && !e.is_logged_by_store() {
                            warn!(folder = %folder, "cannot save folder state (retrying): {e}");
                            said = true;
                        }
                        tokio::time::sleep(wait).await;
                        wait = (wait * 2).min(RETRY_MAX);
                    }
                }
            }
            committed.send_replace(batch);
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

/// The chunks `old`'s list has that `new`'s (none if the file is gone) does not: the places of a
/// replaced or removed file's chunks that the chunk index must forget. `None` if either list
/// cannot be read from the store.
pub async fn chunks_only_in_old(
    store: &StoreHandle,
    share: ShareId,
    old: &FileMeta,
    new: Option<&FileMeta>,
) -> Option<Vec<Hash>> {
    let old_chunks = stored_chunk_list(store, share, old).await?;
    let kept: HashSet<Hash> = match new {
        Some(meta) => stored_chunk_list(store, share, meta)
            .await?
            .iter()
            .map(|c| c.hash)
            .collect(),
        None => HashSet::new(),
    };
    let mut only_old: Vec<Hash> = old_chunks
        .into_iter()
        .map(|c| c.hash)
        .filter(|hash| !kept.contains(hash))
        .collect();
    only_old.sort_unstable();
    only_old.dedup();
    Some(only_old)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::model::{EntryKind, describe};
    use crate::store::ShareKind;
    use crate::store::tests::new_test_share;

    fn chunk(i: u32) -> ChunkRef {
        ChunkRef {
            hash: *blake3::hash(&i.to_le_bytes()).as_bytes(),
            len: 4096,
        }
    }

    /// A file made of `chunks`, with its pages stored in `share` unless `store_pages` is false.
    async fn file_of(
        store: &StoreHandle,
        share: ShareId,
        chunks: Vec<ChunkRef>,
        store_pages: bool,
    ) -> FileMeta {
        let (content, pages) = describe(chunks);
        if store_pages && !pages.is_empty() {
            let pending = store.put_pages(share, encoded_pages(&pages)).await.unwrap();
            pending.done().await.unwrap();
        }
        FileMeta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            size: 0,
            hash: [0; 32],
            content,
            target: None,
        }
    }

    fn hashes(range: std::ops::Range<u32>) -> Vec<Hash> {
        let mut all: Vec<Hash> = range.map(|i| chunk(i).hash).collect();
        all.sort_unstable();
        all
    }

    #[tokio::test]
    async fn a_paged_files_replaced_chunks_are_read_from_its_stored_pages() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreHandle::open(
            dir.path(),
            libp2p::PeerId::random(),
            crate::folder::validate_remote_entry,
        )
        .unwrap();
        let meta = new_test_share("f", ShareKind::Folder);
        store.create_share(meta.clone()).await.unwrap();
        let share = meta.id;

        // 3,000 chunks (several pages); the edit keeps the first 2,000 and replaces the rest.
        let old = file_of(&store, share, (0..3000).map(chunk).collect(), true).await;
        assert!(matches!(old.content, Content::Paged(_)));
        let new = file_of(
            &store,
            share,
            (0..2000).chain(5000..6000).map(chunk).collect(),
            true,
        )
        .await;
        assert_eq!(
            chunks_only_in_old(&store, share, &old, Some(&new)).await,
            Some(hashes(2000..3000))
        );
        // Removed: every chunk it had.
        assert_eq!(
            chunks_only_in_old(&store, share, &old, None).await,
            Some(hashes(0..3000))
        );
        // Replaced by a small (inline) file sharing some chunks.
        let small = file_of(&store, share, (2990..3000).map(chunk).collect(), true).await;
        assert!(matches!(small.content, Content::Inline(_)));
        assert_eq!(
            chunks_only_in_old(&store, share, &old, Some(&small)).await,
            Some(hashes(0..2990))
        );
        // A list whose pages the store does not have cannot be compared: nothing is forgotten.
        let unstored = file_of(&store, share, (7000..9000).map(chunk).collect(), false).await;
        assert_eq!(
            chunks_only_in_old(&store, share, &unstored, None).await,
            None
        );
        assert_eq!(
            chunks_only_in_old(&store, share, &old, Some(&unstored)).await,
            None
        );
    }
}
