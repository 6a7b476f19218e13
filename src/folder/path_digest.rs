//! A path's 128-bit BLAKE3 digest: what the folder keeps of a path it only needs to recognise
//! again (a file a scan found unchanged, a download waiting beyond the queue's window), at 16
//! bytes instead of the path itself.

/// The digest of one path. Bytes, not a `u128`: a `u128` is aligned to 16 bytes, which makes a
/// map entry beside it twice as big.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct PathDigest([u8; 16]);

impl PathDigest {
    pub(super) fn of(rel: &str) -> Self {
        let hash = blake3::hash(rel.as_bytes());
        let mut first = [0u8; 16];
        first.copy_from_slice(&hash.as_bytes()[..16]);
        PathDigest(first)
    }
}
