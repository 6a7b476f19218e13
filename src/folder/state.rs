//! The folder's own state beside the share's entries, kept in the store: what was last synced at
//! each path (the share's local-state rows), where the chunks of those files lie (the share's
//! local index, written with them: see [`super::chunk_places`]) and chunk-list pages. Every read
//! and write of it goes through here; nothing here touches the database directly.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::chunk_places::{self, FilePlaces};
use super::instance::InstanceId;
use super::model::{ChunkRef, Content, EntryKind, FileMeta, Hash, PageRef};
use super::scan::{ScanRecord, StampDigest};
use super::synced_paths::KindCounts;
use crate::merge::VersionVector;
use crate::store::local_state::{LocalIndexChange, LocalStateReader, LocalStateRow};
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
/// The local-state row saying the share's local index holds the chunk places of every synced
/// file (written once they are all there); a store from before they were kept there lacks it.
const CHUNK_INDEX_KEY: &[u8] = b"\0chunk-index";
/// Its value: the layout of the place rows ([`chunk_places`]).
const CHUNK_INDEX_VERSION: &[u8] = &[1];
/// Place rows written at once while [`build_chunk_index`] fills the local index.
pub const CHUNK_INDEX_ROWS_AT_ONCE: usize = 8192;

/// What the store knows about a folder, counted at start.
#[derive(Debug, Default)]
pub struct Loaded {
    /// The synced paths by kind.
    pub counts: KindCounts,
    /// The id of the folder those paths were synced in ([`super::instance`]).
    pub instance: Option<InstanceId>,
    /// Whether the store's local index holds the places of their chunks
    /// ([`build_chunk_index`] if not).
    pub chunks_indexed: bool,
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
        } else if key == CHUNK_INDEX_KEY {
            loaded.chunks_indexed = value == CHUNK_INDEX_VERSION;
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

/// Records the folder's id, and forgets every synced path in `forget` (all of them, when the
/// folder was replaced: then `replaced`, and every place of their chunks goes too), in one
/// durable write.
pub async fn record_instance(
    store: &StoreHandle,
    share: ShareId,
    id: InstanceId,
    forget: Vec<String>,
    replaced: bool,
) -> Result<(), StoreError> {
    let index = LocalIndexChange {
        clear: replaced,
        rows: Vec::new(),
    };
    let mut rows: Vec<LocalStateRow> = forget
        .into_iter()
        .map(|path| (path.into_bytes(), None))
        .collect();
    rows.push((INSTANCE_KEY.to_vec(), Some(id.to_vec())));
    store.save_local_state(share, rows, index).await
}

/// Writes the places of every synced file's chunks into the share's local index, then notes
/// that it is complete; returns how many files it indexed. For a store from before the places
/// were kept there (and a new share, where it only writes the note). Reads the rows a range at a
/// time, each from a fresh snapshot (one held through all the writes would keep the store from
/// reusing any page they free). Blocking: call it off the async threads, before the folder
/// writes any synced row, with `runtime` the daemon's. Any read that fails fails it, with no
/// note written: the next start does it again.
pub fn build_chunk_index(
    stored: &LocalStateReader,
    store: &StoreHandle,
    share: ShareId,
    runtime: &tokio::runtime::Handle,
) -> Result<u64, StoreError> {
    let (mut files, mut from, mut first) = (0u64, Vec::new(), true);
    loop {
        // The first write clears the rows of an earlier build that did not finish.
        let mut change = LocalIndexChange {
            clear: first,
            rows: Vec::new(),
        };
        first = false;
        let (mut failed, mut last) = (None, None);
        stored.snapshot()?.for_each_from(&from, |key, value| {
            last = Some(key.to_vec());
            let synced = path_of_key(key).and_then(|path| Some((path, decode_synced(value)?)));
            if let Some((path, synced)) = synced {
                let list = |meta: &FileMeta| {
                    stored_chunk_list_with(meta, |hash| store.blocking_page(share, *hash))
                };
                match file_chunks(&synced, list) {
                    Ok(Some((chunks, stamp))) => {
                        let places = FilePlaces {
                            chunks: &chunks,
                            stamp,
                        };
                        change
                            .rows
                            .extend(chunk_places::row_changes(&path, None, Some(places)));
                        files += 1;
                    }
                    Ok(None) => {}
                    Err(e) => failed = Some(e),
                }
            }
            failed.is_none() && change.rows.len() < CHUNK_INDEX_ROWS_AT_ONCE
        })?;
        if let Some(e) = failed {
            return Err(e);
        }
        let Some(mut last) = last else {
            let note = vec![(CHUNK_INDEX_KEY.to_vec(), Some(CHUNK_INDEX_VERSION.to_vec()))];
            runtime.block_on(store.save_local_state(share, note, change))?;
            return Ok(files);
        };
        runtime.block_on(store.save_local_state(share, Vec::new(), change))?;
        // The smallest key after the last one read.
        last.push(0);
        from = last;
    }
}

/// A synced file's chunk list and the digest of its stamp.
type ListAndStamp = (Vec<ChunkRef>, Option<StampDigest>);

/// The chunk list of a synced file (through `list`) and its stamp; `None` for anything else,
/// or a file whose list the store does not have.
fn file_chunks(
    synced: &Synced,
    list: impl FnOnce(&FileMeta) -> Result<Option<Vec<ChunkRef>>, StoreError>,
) -> Result<Option<ListAndStamp>, StoreError> {
    let record = &synced.record;
    if record.meta.kind != EntryKind::File {
        return Ok(None);
    }
    let stamp = record.stamp().map(|s| s.digest());
    Ok(list(&record.meta)?.map(|chunks| (chunks, stamp)))
}

/// The local index rows that change with a batch of synced rows: the places of the chunks of
/// each file written, and the removal of places its old version (as stored now, before the
/// batch) had and it does not. Unchanged content with an unchanged stamp changes nothing. A
/// store that cannot be read fails it (the writer tries the batch again, rows and places
/// together); only a damaged old row, or a page the store does not have, leaves old places
/// behind (a stale place fails its check when read, and costs a fetch).
async fn index_change(
    store: &StoreHandle,
    share: ShareId,
    stored: &LocalStateReader,
    rows: &[(String, Option<Synced>)],
) -> Result<LocalIndexChange, StoreError> {
    // Off the async threads: a point read per path.
    let (reader, paths) = (
        stored.clone(),
        rows.iter()
            .map(|(path, _)| path.clone())
            .collect::<Vec<_>>(),
    );
    let olds = tokio::task::spawn_blocking(move || {
        let snapshot = reader.snapshot()?;
        paths
            .iter()
            .map(|path| {
                Ok(snapshot
                    .get(path.as_bytes())?
                    .and_then(|b| decode_synced(&b)))
            })
            .collect::<Result<Vec<Option<Synced>>, StoreError>>()
    })
    .await
    .map_err(|e| StoreError::Invalid(format!("reading synced rows crashed: {e}")))??;
    let mut change = LocalIndexChange::default();
    for ((path, new), old) in rows.iter().zip(olds) {
        if same_places(old.as_ref(), new.as_ref()) {
            continue;
        }
        let old = match &old {
            Some(synced) => chunk_list_of(store, share, synced).await?,
            None => None,
        };
        let new = match new {
            Some(synced) => chunk_list_of(store, share, synced).await?,
            None => None,
        };
        change
            .rows
            .extend(chunk_places::row_changes(path, places(&old), places(&new)));
    }
    Ok(change)
}

fn places(found: &Option<ListAndStamp>) -> Option<FilePlaces<'_>> {
    found.as_ref().map(|(chunks, stamp)| FilePlaces {
        chunks,
        stamp: *stamp,
    })
}

/// Whether two versions of a path put its chunks in the same places (both absent, or the same
/// content with the same stamp).
fn same_places(old: Option<&Synced>, new: Option<&Synced>) -> bool {
    match (old, new) {
        (None, None) => true,
        (Some(old), Some(new)) => {
            let (old, new) = (&old.record, &new.record);
            old.meta.kind == new.meta.kind
                && old.meta.content == new.meta.content
                && old.stamp().map(|s| s.digest()) == new.stamp().map(|s| s.digest())
        }
        _ => false,
    }
}

/// [`file_chunks`], reading pages through the store thread.
async fn chunk_list_of(
    store: &StoreHandle,
    share: ShareId,
    synced: &Synced,
) -> Result<Option<ListAndStamp>, StoreError> {
    if synced.record.meta.kind != EntryKind::File {
        return Ok(None);
    }
    let chunks = read_stored_chunk_list(store, share, &synced.record.meta).await?;
    file_chunks(synced, |_| Ok(chunks))
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
    let stored = store.local_state_reader(share);
    let task = tokio::spawn(async move {
        while let Some((batch, rows)) = rx.recv().await {
            let encoded = match encode_rows(&rows) {
                Ok(rows) => rows,
                Err(e) => {
                    warn!(folder = %folder, "cannot encode folder state: {e}");
                    committed.send_replace(batch);
                    continue;
                }
            };
            let (mut wait, mut tries, mut said) = (RETRY_FIRST, 0u32, false);
            loop {
                // Computed again on each try: a failed read must not leave places out.
                let saved = match index_change(&store, share, &stored, &rows).await {
                    Ok(index) => store.save_local_state(share, encoded.clone(), index).await,
                    Err(e) => Err(e),
                };
                match saved {
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
    rows: &[(String, Option<Synced>)],
) -> Result<Vec<LocalStateRow>, crate::cbor::CborError> {
    rows.iter()
        .map(|(path, synced)| {
            let value = synced.as_ref().map(crate::cbor::encode).transpose()?;
            Ok((path.clone().into_bytes(), value))
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
/// or unusable, or the store cannot be read. For blocking threads (the scanner).
pub fn blocking_stored_chunk_list(
    store: &StoreHandle,
    share: ShareId,
    meta: &FileMeta,
) -> Option<Vec<ChunkRef>> {
    stored_chunk_list_with(meta, |hash| store.blocking_page(share, *hash))
        .ok()
        .flatten()
}

/// [`blocking_stored_chunk_list`] for async code.
pub async fn stored_chunk_list(
    store: &StoreHandle,
    share: ShareId,
    meta: &FileMeta,
) -> Option<Vec<ChunkRef>> {
    read_stored_chunk_list(store, share, meta)
        .await
        .unwrap_or_else(|e| {
            // Treated as not stored: the caller fetches the chunks instead of copying them.
            warn!("cannot read a chunk-list page: {e}");
            None
        })
}

/// [`stored_chunk_list`], telling a store that cannot be read (`Err`) from a page it does not
/// have or that is unusable (`Ok(None)`).
async fn read_stored_chunk_list(
    store: &StoreHandle,
    share: ShareId,
    meta: &FileMeta,
) -> Result<Option<Vec<ChunkRef>>, StoreError> {
    let Content::Paged(pages) = &meta.content else {
        return stored_chunk_list_with(meta, |_| Ok(None));
    };
    let mut all = Vec::new();
    for page in pages {
        let Some(bytes) = store.page(share, page.hash).await? else {
            return Ok(None);
        };
        let Ok(chunks) = decode_page(page, &bytes) else {
            return Ok(None);
        };
        all.extend(chunks);
    }
    Ok(Some(all))
}

fn stored_chunk_list_with(
    meta: &FileMeta,
    mut page: impl FnMut(&Hash) -> Result<Option<Vec<u8>>, StoreError>,
) -> Result<Option<Vec<ChunkRef>>, StoreError> {
    match &meta.content {
        Content::Empty => Ok(Some(Vec::new())),
        Content::Inline(chunks) => Ok(Some(chunks.clone())),
        Content::Paged(pages) => {
            let mut all = Vec::new();
            for p in pages {
                let Some(bytes) = page(&p.hash)? else {
                    return Ok(None);
                };
                let Ok(chunks) = decode_page(p, &bytes) else {
                    return Ok(None);
                };
                all.extend(chunks);
            }
            Ok(Some(all))
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
