//! Where a file's chunks come from: the index of chunks found in local files, chunk-list pages
//! (stored or fetched), and members (through the [`super::fetch::Fetcher`]). Every chunk is
//! verified by hash whichever way it came.

use std::path::PathBuf;
use std::sync::Arc;

use libp2p::PeerId;
use tokio::sync::watch;

use super::chunk_places::ChunkPlaces;
use super::error::{FetchError, MemberFailure};
use super::fetch::Fetcher;
use super::model::{CheckedChunk, ChunkRef, Content, FileMeta, Hash};
use super::scan;
use super::state;
use super::status::Counters;
use super::write;
use crate::net::NetClient;
use crate::net::protocol::{Request, Response};
use crate::store::{ShareId, StoreHandle};

/// Pause before looking a chunk up again after its local copy could not be read (the file may
/// be moving to the trash, which updates the index right after the rename).
pub const LOCAL_CHUNK_RETRY_DELAY: std::time::Duration = std::time::Duration::from_millis(10);
/// Tries per page across members before a download fails (and is retried later).
pub const MAX_PAGE_ATTEMPTS: usize = 6;

/// Where a chunk can be read locally (see [`ChunkPlaces`]): the path is shared by a file's
/// chunks, the stamp kept as a digest.
#[derive(Debug, Clone)]
pub(super) struct ChunkLocation {
    pub(super) path: Arc<str>,
    pub(super) offset: u64,
    pub(super) len: u32,
    /// The file's stamp when it was described: while the file still has it, a copy of the chunk
    /// is written without hashing it first (the whole file is checked anyway).
    pub(super) stamp: Option<scan::StampDigest>,
}

/// Chunk hash → a local place holding it ([`ChunkPlaces`]): in the store, written with the
/// synced rows, and recent places in memory, which the actor and downloads add.
pub(super) type ChunkIndex = Arc<ChunkPlaces>;

/// Everything a download task needs, shared read-only.
#[derive(Clone)]
pub(super) struct Sources {
    pub(super) root: PathBuf,
    pub(super) share: ShareId,
    pub(super) net: NetClient,
    pub(super) members: watch::Receiver<Vec<PeerId>>,
    pub(super) store: StoreHandle,
    pub(super) chunks: ChunkIndex,
    pub(super) counters: Arc<Counters>,
    /// Fetches chunks from members, many per request.
    pub(super) fetcher: Fetcher,
    /// What our conflict copies are tagged with ([`super::conflict::device_tag`]).
    pub(super) conflict_tag: String,
}

/// The chunks of `rel`, laid end to end, as places to find them.
pub(super) fn locations_in(
    rel: &str,
    chunks: &[ChunkRef],
    stamp: Option<scan::Stamp>,
) -> Vec<(Hash, ChunkLocation)> {
    let mut offset = 0u64;
    let path: Arc<str> = Arc::from(rel);
    let stamp = stamp.map(|s| s.digest());
    chunks
        .iter()
        .map(|chunk| {
            let location = ChunkLocation {
                path: path.clone(),
                offset,
                len: chunk.len,
                stamp,
            };
            offset += chunk.len as u64;
            (chunk.hash, location)
        })
        .collect()
}

/// The places of `meta`'s chunks in the file `path`, from the chunk list we store (none if a
/// page is missing).
pub(super) async fn chunk_locations(
    store: &StoreHandle,
    share: ShareId,
    path: &str,
    meta: &FileMeta,
    stamp: Option<scan::Stamp>,
) -> Vec<(Hash, ChunkLocation)> {
    state::stored_chunk_list(store, share, meta)
        .await
        .map_or_else(Vec::new, |chunks| locations_in(path, &chunks, stamp))
}

/// The full chunk list of a file, fetching pages we do not have.
pub(super) async fn chunk_list(
    shared: &Sources,
    meta: &FileMeta,
) -> Result<Vec<ChunkRef>, FetchError> {
    match &meta.content {
        Content::Empty => Ok(Vec::new()),
        Content::Inline(chunks) => Ok(chunks.clone()),
        Content::Paged(pages) => {
            let mut all = Vec::new();
            for page in pages {
                let bytes = match shared.store.page(shared.share, page.hash).await? {
                    Some(bytes) => bytes,
                    None => {
                        let bytes = fetch_from_members(
                            shared,
                            |share| Request::GetPage {
                                share,
                                hash: serde_bytes::ByteArray::new(page.hash),
                            },
                            &page.hash,
                        )
                        .await?;
                        // The next write's commit makes it durable; nothing waits for that.
                        drop(
                            shared
                                .store
                                .put_pages(shared.share, vec![(page.hash, bytes.clone())])
                                .await?,
                        );
                        bytes
                    }
                };
                all.extend(state::decode_page(page, &bytes)?);
            }
            Ok(all)
        }
    }
}

/// A chunk's bytes: from a local file if any holds it, else from a member; always verified.
pub(super) async fn fetch_chunk(
    shared: &Sources,
    chunk: &ChunkRef,
) -> Result<CheckedChunk, FetchError> {
    // Twice: a file can move to the trash between the lookup and the read, and the trash
    // move updates the index right after it.
    let mut tried: Option<ChunkLocation> = None;
    for _ in 0..2 {
        let location = shared.chunks.get(&chunk.hash);
        let Some(location) = location else { break };
        if tried
            .as_ref()
            .is_some_and(|t| t.path == location.path && t.offset == location.offset)
        {
            break;
        }
        tried = Some(location.clone());
        let path = shared.root.join(&*location.path);
        let hash = chunk.hash;
        let local = tokio::task::spawn_blocking(move || {
            write::read_chunk(&path, location.offset, location.len, &hash)
        })
        .await?;
        if let Ok(Some(bytes)) = local {
            return Ok(bytes);
        }
        tokio::time::sleep(LOCAL_CHUNK_RETRY_DELAY).await;
    }
    shared.fetcher.fetch(*chunk).await
}

/// Asks members in turn until one answers with bytes that hash to `hash`.
async fn fetch_from_members(
    shared: &Sources,
    request: impl Fn(serde_bytes::ByteArray<32>) -> Request,
    hash: &Hash,
) -> Result<Vec<u8>, FetchError> {
    let members = shared.members.borrow().clone();
    if members.is_empty() {
        return Err(FetchError::NoMember);
    }
    let start = (hash[1] as usize) % members.len();
    let attempts = MAX_PAGE_ATTEMPTS.min(members.len() * 2);
    let mut last = MemberFailure::Missing {
        peer: members[start],
    };
    for attempt in 0..attempts {
        let peer = members[(start + attempt) % members.len()];
        match shared
            .net
            .request(peer, request(serde_bytes::ByteArray::new(shared.share)))
            .await
        {
            Ok(Response::Chunk(bytes)) | Ok(Response::Page(bytes)) => {
                if blake3::hash(&bytes).as_bytes() == hash {
                    return Ok(bytes.into_vec());
                }
                shared
                    .counters
                    .bad_chunks
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // The network layer logs it and bans the peer after a few.
                shared
                    .net
                    .strike(
                        peer,
                        "sent content that does not match its hash; discarded".into(),
                    )
                    .await;
                last = MemberFailure::Lied { peer };
            }
            Ok(Response::Error(message)) => last = MemberFailure::Refused { peer, message },
            Ok(other) => {
                let what = format!("{other:?}");
                last = MemberFailure::Unexpected { peer, what };
            }
            Err(e) => {
                let message = e.to_string();
                last = MemberFailure::Request { peer, message };
            }
        }
    }
    Err(FetchError::Exhausted { attempts, last })
}
