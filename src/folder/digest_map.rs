//! A map from path digests to 8-byte values that stays near 24 bytes an entry at millions of
//! entries: a vector sorted by digest, with the latest additions in a small hash map that is
//! merged into the vector, in place, once it holds an eighth as many. The download queue keeps
//! one entry for every path it queued beyond its window, a million during a first sync of a
//! million files: as one hash map (2^21 slots of 25 bytes) that was 52 MB, and 78 MB while the
//! map grew, the largest item of a receiver's peak.

use std::collections::HashMap;

use super::path_digest::PathDigest;

/// The fewest additions the hash map gathers before they are merged into the sorted vector;
/// beyond it, an eighth of the vector's length, so that an entry is moved about eight times
/// while the map grows.
const RECENT_MIN: usize = 4096;

/// Path digests and their values (any `u64` but [`DigestMap::VACANT`]).
#[derive(Default)]
pub(super) struct DigestMap {
    /// Sorted by digest, each digest once; removed entries hold [`DigestMap::VACANT`] until the
    /// next merge.
    sorted: Vec<(PathDigest, u64)>,
    /// How many entries of `sorted` are vacant.
    vacant: usize,
    /// Entries added since the last merge, none of them in `sorted`.
    recent: HashMap<PathDigest, u64>,
}

impl DigestMap {
    /// Marks a removed entry of the sorted vector: not a value the map may hold.
    pub(super) const VACANT: u64 = u64::MAX;

    fn position(&self, digest: &PathDigest) -> Option<usize> {
        self.sorted.binary_search_by(|(d, _)| d.cmp(digest)).ok()
    }

    pub(super) fn get(&self, digest: &PathDigest) -> Option<u64> {
        if let Some(value) = self.recent.get(digest) {
            return Some(*value);
        }
        let value = self.sorted[self.position(digest)?].1;
        (value != Self::VACANT).then_some(value)
    }

    /// Sets the value of `digest`; gives back the one it replaces.
    pub(super) fn insert(&mut self, digest: PathDigest, value: u64) -> Option<u64> {
        debug_assert_ne!(value, Self::VACANT, "not a value the map can hold");
        if let Some(i) = self.position(&digest) {
            let old = std::mem::replace(&mut self.sorted[i].1, value);
            if old == Self::VACANT {
                self.vacant -= 1;
                return None;
            }
            return Some(old);
        }
        let old = self.recent.insert(digest, value);
        if self.recent.len() >= RECENT_MIN.max(self.sorted.len() / 8) {
            self.merge();
        }
        old
    }

    /// Removes `digest`; gives back its value.
    pub(super) fn remove(&mut self, digest: &PathDigest) -> Option<u64> {
        if let Some(value) = self.recent.remove(digest) {
            return Some(value);
        }
        let i = self.position(digest)?;
        let old = std::mem::replace(&mut self.sorted[i].1, Self::VACANT);
        if old == Self::VACANT {
            return None;
        }
        self.vacant += 1;
        self.merge_if_mostly_vacant();
        Some(old)
    }

    /// Keeps only the entries whose value `keep` says to keep.
    pub(super) fn retain(&mut self, mut keep: impl FnMut(u64) -> bool) {
        self.recent.retain(|_, value| keep(*value));
        for (_, value) in &mut self.sorted {
            if *value != Self::VACANT && !keep(*value) {
                *value = Self::VACANT;
                self.vacant += 1;
            }
        }
        self.merge_if_mostly_vacant();
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.sorted.len() - self.vacant + self.recent.len()
    }

    /// The values, in no particular order.
    #[cfg(test)]
    pub(super) fn values(&self) -> impl Iterator<Item = u64> + '_ {
        let sorted = self.sorted.iter().map(|(_, value)| *value);
        sorted
            .filter(|value| *value != Self::VACANT)
            .chain(self.recent.values().copied())
    }

    /// Gives back the room left over from a burst.
    pub(super) fn shrink_to_fit(&mut self) {
        self.merge();
        self.sorted.shrink_to_fit();
        self.recent.shrink_to_fit();
    }

    fn merge_if_mostly_vacant(&mut self) {
        if self.vacant >= RECENT_MIN && self.vacant * 2 > self.sorted.len() {
            self.merge();
        }
    }

    /// Drops the vacant entries and merges the recent ones into the sorted vector, in place:
    /// the vector grows by exactly what it takes (no doubling) and is filled from its end.
    fn merge(&mut self) {
        if self.vacant > 0 {
            self.sorted.retain(|(_, value)| *value != Self::VACANT);
            self.vacant = 0;
        }
        let mut recent: Vec<(PathDigest, u64)> = self.recent.drain().collect();
        recent.sort_unstable_by_key(|(digest, _)| *digest);
        let live = self.sorted.len();
        if self.sorted.capacity() > 2 * (live + recent.len()) {
            // Mostly emptied: give the room back now rather than when the queue is idle.
            self.sorted.shrink_to(live + recent.len());
        }
        self.sorted.reserve_exact(recent.len());
        // Placeholders, all overwritten below.
        self.sorted.extend_from_slice(&recent);
        let (mut old, mut new, mut to) = (live, recent.len(), self.sorted.len());
        while new > 0 {
            to -= 1;
            if old > 0 && self.sorted[old - 1].0 > recent[new - 1].0 {
                self.sorted[to] = self.sorted[old - 1];
                old -= 1;
            } else {
                self.sorted[to] = recent[new - 1];
                new -= 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// A small deterministic generator, so that a failure can be replayed.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    #[test]
    fn it_answers_as_a_hash_map_through_growth_removals_and_merges() {
        let mut map = DigestMap::default();
        let mut model: HashMap<PathDigest, u64> = HashMap::new();
        let mut state = 0x9e37_79b9_7f4a_7c15;
        let digest = |n: u64| PathDigest::of(&format!("d{}/f{n}", n % 97));
        for step in 0..200_000u64 {
            let n = next(&mut state) % 60_000;
            let value = next(&mut state) % 1000;
            match next(&mut state) % 10 {
                // Mostly additions early, mostly removals late, as a sync's queue goes.
                r if r < 6 && step < 120_000 || r < 2 => {
                    assert_eq!(map.insert(digest(n), value), model.insert(digest(n), value));
                }
                _ => assert_eq!(map.remove(&digest(n)), model.remove(&digest(n))),
            }
            if step % 1000 == 0 {
                assert_eq!(map.len(), model.len(), "step {step}");
            }
        }
        for n in 0..60_000 {
            assert_eq!(
                map.get(&digest(n)),
                model.get(&digest(n)).copied(),
                "path {n}"
            );
        }
        let mut values: Vec<u64> = map.values().collect();
        let mut expected: Vec<u64> = model.values().copied().collect();
        values.sort_unstable();
        expected.sort_unstable();
        assert_eq!(values, expected);
        assert!(
            map.sorted.windows(2).all(|w| w[0].0 < w[1].0),
            "sorted, each digest once"
        );
        assert!(map.recent.keys().all(|d| map.position(d).is_none()));

        map.retain(|value| value % 2 == 0);
        model.retain(|_, value| *value % 2 == 0);
        assert_eq!(map.len(), model.len());
        for n in 0..60_000 {
            assert_eq!(
                map.get(&digest(n)),
                model.get(&digest(n)).copied(),
                "path {n}"
            );
        }
        map.shrink_to_fit();
        assert_eq!((map.vacant, map.recent.len()), (0, 0));
        assert_eq!(map.sorted.len(), model.len());
    }
}
