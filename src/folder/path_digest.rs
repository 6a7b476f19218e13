//! A path's 128-bit BLAKE3 digest: what the folder keeps of a path it only needs to recognise
//! again (a file a scan found unchanged, a download waiting beyond the queue's window), at 16
//! bytes instead of the path itself; and sets of them that cost those 16 bytes each.

/// The digest of one path. Bytes, not a `u128`: a `u128` is aligned to 16 bytes, which makes a
/// map entry beside it twice as big. Ordered as its bytes are (and so as the big-endian number
/// they make).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct PathDigest([u8; 16]);

impl Ord for PathDigest {
    /// As the big-endian number: the bytes' order, in two compares of registers instead of a
    /// call to `memcmp` (the download queue's binary searches were 2.6% of a receiver's CPU).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        u128::from_be_bytes(self.0).cmp(&u128::from_be_bytes(other.0))
    }
}

impl PartialOrd for PathDigest {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

impl PathDigest {
    pub(super) fn of(rel: &str) -> Self {
        let hash = blake3::hash(rel.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&hash.as_bytes()[..16]);
        PathDigest(first)
    }
}

/// Digests gathered one by one, to be asked about only once all are in (the paths a scan
/// found unchanged or wrote to its spill file). A hash set of them took 17 bytes a digest in
/// a table that doubles as it grows (2^21 slots, 36 MB, for 10^6 paths, and 53 MB while it
/// grew); this list takes 16, and [`DigestList::into_set`] sorts it where it lies.
#[derive(Debug, Default)]
pub(super) struct DigestList(Vec<PathDigest>);

impl DigestList {
    pub(super) fn push(&mut self, digest: PathDigest) {
        self.0.push(digest);
    }

    /// Takes back the last `n` digests pushed.
    pub(super) fn forget_last(&mut self, n: usize) {
        self.0.truncate(self.0.len().saturating_sub(n));
    }

    /// The set of the digests pushed, each once.
    pub(super) fn into_set(self) -> DigestSet {
        let mut digests = self.0;
        digests.sort_unstable();
        digests.dedup();
        digests.shrink_to_fit();
        DigestSet(digests)
    }
}

/// A set of digests, sorted: 16 bytes each, found by binary search.
#[derive(Debug, Default)]
pub(super) struct DigestSet(Vec<PathDigest>);

impl DigestSet {
    pub(super) fn contains(&self, digest: &PathDigest) -> bool {
        self.0.binary_search(digest).is_ok()
    }

    pub(super) fn len(&self) -> usize {
        self.0.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_list_becomes_the_set_of_what_was_pushed_and_not_taken_back() {
        let mut list = DigestList::default();
        for i in 0..1000 {
            list.push(PathDigest::of(&format!("dir/{i}")));
        }
        list.push(PathDigest::of("dir/7"));
        list.push(PathDigest::of("later/a"));
        list.push(PathDigest::of("later/b"));
        list.forget_last(2);
        let set = list.into_set();
        assert_eq!(set.len(), 1000, "a digest pushed twice is in the set once");
        assert!((0..1000).all(|i| set.contains(&PathDigest::of(&format!("dir/{i}")))));
        assert!(!set.contains(&PathDigest::of("later/a")));
        assert!(!set.contains(&PathDigest::of("later/b")));
        assert!(!set.contains(&PathDigest::of("dir/1000")));
    }

    #[test]
    fn digests_are_ordered_as_their_bytes() {
        let digests: Vec<PathDigest> = (0..500).map(|i| PathDigest::of(&i.to_string())).collect();
        for a in &digests {
            for b in &digests {
                assert_eq!(a.cmp(b), a.0.cmp(&b.0));
            }
        }
        let mut high_first = [0u8; 16];
        high_first[0] = 1;
        let mut high_last = [0u8; 16];
        high_last[15] = 0xff;
        assert!(PathDigest(high_first) > PathDigest(high_last));
    }
}
