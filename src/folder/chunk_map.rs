//! Chunk hash → where the chunk can be read locally, for every chunk of the folder's files: what
//! lets a download copy chunks it already has instead of fetching them, and lets us serve
//! chunks to members.
//!
//! Most of it is a vector sorted by hash, with no slack; what is added goes to a small hash map
//! first, merged into the vector once it holds an eighth as many. As one hash map it cost ~190
//! bytes an entry at 10^6 files (88-byte entries in a table twice that size after growing),
//! the largest part of a big folder's resident memory.

use std::collections::HashMap;
use std::sync::Arc;

use super::model::Hash;
use super::source::ChunkLocation;

/// Entries added since the last merge that cause one, at least: below this, merging is not
/// worth its copy.
pub const MERGE_FROM: usize = 4096;

/// The index. Entries are never removed: a location whose file changed is found out when it is
/// read (each chunk is verified by hash), and a newer location for the same chunk replaces it.
#[derive(Default)]
pub struct ChunkMap {
    /// Sorted by hash, one entry per hash.
    sorted: Vec<(Hash, ChunkLocation)>,
    /// Added since the last merge; newer than `sorted`.
    recent: HashMap<Hash, ChunkLocation>,
}

impl ChunkMap {
    /// Where the chunk `hash` can be read, if anywhere.
    pub fn get(&self, hash: &Hash) -> Option<&ChunkLocation> {
        if let Some(location) = self.recent.get(hash) {
            return Some(location);
        }
        let at = self.sorted.binary_search_by(|(h, _)| h.cmp(hash)).ok()?;
        Some(&self.sorted[at].1).filter(|location| !is_forgotten(location))
    }

    /// Forgets where `hash` is if that is in the file `path` (it no longer holds the chunk); a
    /// place in another file stays. In the sorted vector the entry is marked, its path freed,
    /// and dropped at the next merge.
    pub fn forget(&mut self, hash: &Hash, path: &str) {
        if self.recent.get(hash).is_some_and(|l| &*l.path == path) {
            self.recent.remove(hash);
        }
        if let Ok(at) = self.sorted.binary_search_by(|(h, _)| h.cmp(hash))
            && &*self.sorted[at].1.path == path
        {
            self.sorted[at].1.path = forgotten_path();
        }
    }

    /// Adds (or moves) entries.
    pub fn extend(&mut self, entries: impl IntoIterator<Item = (Hash, ChunkLocation)>) {
        self.recent.extend(entries);
        if self.recent.len() >= MERGE_FROM.max(self.sorted.len() / 8) {
            self.merge();
        }
    }

    /// Forgets every entry (the folder is not the one they were found in).
    pub fn clear(&mut self) {
        *self = ChunkMap::default();
    }

    /// How many chunks it knows.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.sorted.iter().filter(|(_, l)| !is_forgotten(l)).count()
            + self
                .recent
                .keys()
                .filter(|h| self.sorted.binary_search_by(|(s, _)| s.cmp(h)).is_err())
                .count()
    }

    /// Moves the recent entries into the sorted vector (a newer location replaces an older one
    /// for the same hash), leaving no slack in either. In place but for the sort's scratch
    /// space (at most half the entries): a merge into a new vector held both at once.
    pub fn merge(&mut self) {
        if self.recent.is_empty() {
            return;
        }
        let recent = std::mem::take(&mut self.recent);
        self.sorted.retain(|(_, location)| !is_forgotten(location));
        self.sorted.reserve_exact(recent.len());
        self.sorted.extend(recent);
        // Stable: of two entries for one hash, the older comes first...
        self.sorted.sort_by_key(|entry| entry.0);
        // ... and the newer location is the one kept.
        self.sorted.dedup_by(|later, kept| {
            let same = later.0 == kept.0;
            if same {
                std::mem::swap(later, kept);
            }
            same
        });
        self.sorted.shrink_to_fit();
    }
}

/// The path of a forgotten entry: none.
fn forgotten_path() -> Arc<str> {
    Arc::from("")
}

fn is_forgotten(location: &ChunkLocation) -> bool {
    location.path.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn location(path: &str, offset: u64) -> ChunkLocation {
        ChunkLocation {
            path: Arc::from(path),
            offset,
            len: 1,
            stamp: None,
        }
    }

    fn hash(i: u32) -> Hash {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    #[test]
    fn every_chunk_is_found_at_its_newest_location_across_merges() {
        let mut map = ChunkMap::default();
        let n = 3 * MERGE_FROM as u32 + 17;
        for i in 0..n {
            map.extend([(hash(i), location("a", u64::from(i)))]);
        }
        assert!(!map.sorted.is_empty(), "merged at least once");
        assert!(!map.recent.is_empty(), "and some left to merge");
        // Some move to another file, before and after the next merge.
        for i in (0..n).step_by(3) {
            map.extend([(hash(i), location("b", u64::from(i)))]);
        }
        for i in 0..n {
            let at = map.get(&hash(i)).expect("found");
            let path = if i % 3 == 0 { "b" } else { "a" };
            assert_eq!((&*at.path, at.offset), (path, u64::from(i)), "chunk {i}");
        }
        map.merge();
        assert!(map.recent.is_empty());
        assert_eq!(map.sorted.len(), n as usize, "one entry per chunk");
        assert!(map.sorted.windows(2).all(|w| w[0].0 < w[1].0));
        assert_eq!(&*map.get(&hash(3)).unwrap().path, "b");
        assert!(map.get(&hash(n)).is_none());
        assert_eq!(map.len(), n as usize);
    }

    #[test]
    fn a_chunk_is_forgotten_only_where_it_was_and_gone_for_good_after_a_merge() {
        let mut map = ChunkMap::default();
        for i in 0..MERGE_FROM as u32 {
            map.extend([(hash(i), location("old", u64::from(i)))]);
        }
        assert!(map.recent.is_empty(), "merged");
        map.extend([(hash(1), location("moved", 0))]);
        map.forget(&hash(0), "old");
        map.forget(&hash(1), "old");
        map.forget(&hash(2), "elsewhere");
        assert!(map.get(&hash(0)).is_none(), "forgotten in the sorted part");
        assert_eq!(
            &*map.get(&hash(1)).unwrap().path,
            "moved",
            "another file's place stays"
        );
        assert_eq!(&*map.get(&hash(2)).unwrap().path, "old");
        map.forget(&hash(1), "moved");
        assert!(map.get(&hash(1)).is_none(), "forgotten in the recent part");
        assert_eq!(map.len(), MERGE_FROM - 2);
        map.merge();
        map.merge();
        map.extend([(hash(7), location("new", 0))]);
        map.merge();
        assert_eq!(
            map.sorted.len(),
            MERGE_FROM - 2,
            "the marked entries are gone"
        );
        assert!(map.get(&hash(0)).is_none());
    }
}
