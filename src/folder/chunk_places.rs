//! Chunk hash → where the chunk can be read locally, for every chunk of the folder's files: what
//! lets a download copy chunks it already has instead of fetching them, and lets us serve
//! chunks to members.
//!
//! The places of synced files live in the store, as the share's local index: one row per chunk
//! and file, written by the folder state writer in the same transaction as the synced rows they
//! derive from, so they agree after a crash and cost no memory per file (held in memory they were
//! ~136 bytes a file, the largest part of a big folder's resident memory). In memory there is
//! only a bounded map of recent places the store does not have (yet): files just written or
//! scanned whose rows are on their way, and old versions moved to the trash, which a rename
//! elsewhere in the folder may reuse.
//!
//! A place is a hint: every chunk read from one is verified (by hash, or with the whole file when
//! the file's stamp is unchanged), so a stale place costs a fetch, never a wrong byte.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use tracing::warn;

use super::model::{ChunkRef, Hash};
use super::scan::StampDigest;
use super::source::ChunkLocation;
use crate::store::StoreError;
use crate::store::local_state::{LocalStateReader, LocalStateRow, LocalStateSnapshot};

/// Recent places kept in memory, at most (about 250 bytes each with their map and queue):
/// beyond it the oldest are dropped, and a chunk only they knew is fetched instead of copied.
/// Twice the synced rows a folder holds uncommitted (`folder::actor::SYNCED_HELD_MAX`) when
/// each is a small file, so such a place is in the store before it is dropped; places in the
/// trash are only here (a tree of more files than this, or a file of more than 1 GiB, renamed on
/// a peer, has some of its chunks fetched again).
pub const MAX_RECENT_PLACES: usize = 16_384;
const _: () = assert!(MAX_RECENT_PLACES >= 2 * super::actor::SYNCED_HELD_MAX);

/// The first byte of a place row's key, so the local index can hold other kinds of rows later.
const PLACE_ROW: u8 = b'c';

/// The folder's chunk places: the store's rows and the recent ones.
pub struct ChunkPlaces {
    stored: LocalStateReader,
    recent: Mutex<Recent>,
    /// Whether a failed read was logged (once: the next ones say the same).
    read_failure_said: AtomicBool,
}

impl ChunkPlaces {
    /// Places read through `stored` (the share's local state reader).
    pub fn new(stored: LocalStateReader) -> Self {
        ChunkPlaces {
            stored,
            recent: Mutex::new(Recent::default()),
            read_failure_said: AtomicBool::new(false),
        }
    }

    /// Where the chunk `hash` can be read, if anywhere. Reads the store (blocking briefly).
    pub fn get(&self, hash: &Hash) -> Option<ChunkLocation> {
        self.get_many(std::slice::from_ref(hash)).pop().flatten()
    }

    /// [`Self::get`] for many chunks, in one read of the store.
    pub fn get_many(&self, hashes: &[Hash]) -> Vec<Option<ChunkLocation>> {
        let mut found: Vec<Option<ChunkLocation>> = {
            let recent = self.recent.lock().expect("recent chunk places lock");
            hashes.iter().map(|h| recent.get(h).cloned()).collect()
        };
        if found.iter().all(Option::is_some) {
            return found;
        }
        let snapshot = match self.stored.index_snapshot() {
            Ok(snapshot) => snapshot,
            Err(e) => {
                self.read_failed(&e);
                return found;
            }
        };
        for (place, hash) in found.iter_mut().zip(hashes) {
            if place.is_none() {
                match stored_place(&snapshot, hash) {
                    Ok(stored) => *place = stored,
                    Err(e) => self.read_failed(&e),
                }
            }
        }
        found
    }

    /// Remembers places the store does not have (yet): see the module comment.
    pub fn add_recent(&self, entries: impl IntoIterator<Item = (Hash, ChunkLocation)>) {
        let mut recent = self.recent.lock().expect("recent chunk places lock");
        for (hash, location) in entries {
            recent.insert(hash, location);
        }
    }

    /// Forgets the recent places (the folder is not the one they were found in; the stored ones
    /// go with the synced rows).
    pub fn clear_recent(&self) {
        *self.recent.lock().expect("recent chunk places lock") = Recent::default();
    }

    fn read_failed(&self, e: &StoreError) {
        // Downloads fetch what they cannot find locally; the store reports its own failures.
        if !self.read_failure_said.swap(true, Ordering::Relaxed) {
            warn!("cannot read the chunk index (fetching chunks instead): {e}");
        }
    }
}

/// The first stored place of `hash` (any file holding it).
fn stored_place(
    snapshot: &LocalStateSnapshot,
    hash: &Hash,
) -> Result<Option<ChunkLocation>, StoreError> {
    let mut prefix = Vec::with_capacity(1 + hash.len());
    prefix.push(PLACE_ROW);
    prefix.extend_from_slice(hash);
    let mut found = None;
    snapshot.for_each_with_prefix(&prefix, |key, value| {
        found = decode_place(key, value);
        found.is_none()
    })?;
    Ok(found)
}

/// A file's chunks as its places are written: the list and the file's stamp when described.
pub struct FilePlaces<'a> {
    pub chunks: &'a [ChunkRef],
    pub stamp: Option<StampDigest>,
}

/// The local index rows that change when the synced file at `path` goes from `old` to `new`
/// (`None`: not a file there, or its chunk list unknown): every chunk of `new` is written with
/// its place, and the rows of chunks only `old` had are removed.
pub fn row_changes(
    path: &str,
    old: Option<FilePlaces<'_>>,
    new: Option<FilePlaces<'_>>,
) -> Vec<LocalStateRow> {
    let mut rows = Vec::new();
    let kept: std::collections::HashSet<&Hash> = new
        .as_ref()
        .map(|n| n.chunks.iter().map(|c| &c.hash).collect())
        .unwrap_or_default();
    if let Some(old) = &old {
        let mut gone: Vec<&Hash> = old
            .chunks
            .iter()
            .map(|c| &c.hash)
            .filter(|h| !kept.contains(h))
            .collect();
        gone.sort_unstable();
        gone.dedup();
        rows.extend(gone.into_iter().map(|h| (place_key(h, path), None)));
    }
    if let Some(new) = &new {
        let mut offset = 0u64;
        let mut written = std::collections::HashSet::new();
        for chunk in new.chunks {
            // A chunk repeated in the file has one row: its first place.
            if written.insert(&chunk.hash) {
                let value = place_value(offset, chunk.len, new.stamp);
                rows.push((place_key(&chunk.hash, path), Some(value)));
            }
            offset += chunk.len as u64;
        }
    }
    rows
}

/// `PLACE_ROW ‖ hash ‖ path`: a chunk's rows are found by its hash, one per file holding it.
fn place_key(hash: &Hash, path: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + hash.len() + path.len());
    key.push(PLACE_ROW);
    key.extend_from_slice(hash);
    key.extend_from_slice(path.as_bytes());
    key
}

/// `offset (u64 LE) ‖ len (u32 LE) ‖ stamp digest (16 bytes, if any)`.
fn place_value(offset: u64, len: u32, stamp: Option<StampDigest>) -> Vec<u8> {
    let mut value = Vec::with_capacity(28);
    value.extend_from_slice(&offset.to_le_bytes());
    value.extend_from_slice(&len.to_le_bytes());
    if let Some(stamp) = stamp {
        value.extend_from_slice(&stamp.to_bytes());
    }
    value
}

/// A stored place; `None` for a row that does not decode (a hint lost, not an error).
fn decode_place(key: &[u8], value: &[u8]) -> Option<ChunkLocation> {
    let path = std::str::from_utf8(key.get(1 + 32..)?).ok()?;
    let offset = u64::from_le_bytes(value.get(..8)?.try_into().ok()?);
    let len = u32::from_le_bytes(value.get(8..12)?.try_into().ok()?);
    let stamp = match value.len() {
        12 => None,
        28 => Some(StampDigest::from_bytes(value[12..28].try_into().ok()?)),
        _ => return None,
    };
    Some(ChunkLocation {
        path: path.into(),
        offset,
        len,
        stamp,
    })
}

/// The recent places: a map, and its hashes in the order added so the oldest go first.
#[derive(Default)]
struct Recent {
    places: HashMap<Hash, (u64, ChunkLocation)>,
    /// Hashes by when they were added, with the number that addition got: an entry whose
    /// place was replaced since is skipped when its old number comes up.
    order: VecDeque<(u64, Hash)>,
    added: u64,
}

impl Recent {
    fn get(&self, hash: &Hash) -> Option<&ChunkLocation> {
        self.places.get(hash).map(|(_, location)| location)
    }

    fn insert(&mut self, hash: Hash, location: ChunkLocation) {
        self.added += 1;
        self.places.insert(hash, (self.added, location));
        self.order.push_back((self.added, hash));
        while self.order.len() > MAX_RECENT_PLACES {
            let Some((number, oldest)) = self.order.pop_front() else {
                break;
            };
            if self.places.get(&oldest).is_some_and(|(n, _)| *n == number) {
                self.places.remove(&oldest);
            }
        }
    }
}

#[cfg(test)]
mod tests;
