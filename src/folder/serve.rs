//! Serving our chunks to members: read from the local files the chunk index points at, checked
//! against their hash before they leave (a file edited since it was indexed must not get us a
//! strike for serving what its hash no longer names).

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use super::model::Hash;
use super::source::ChunkLocation;
use super::status::Counters;
use super::write;

/// Reads the chunks asked for, in order, until `budget` bytes (always at least one); `None` for
/// those we do not hold, that no longer match, or that did not fit. Blocking.
pub(super) fn read_chunks(
    root: &Path,
    hashes: &[Hash],
    locations: Vec<Option<ChunkLocation>>,
    budget: usize,
    counters: &Counters,
) -> Vec<Option<Vec<u8>>> {
    let mut used = 0;
    // A batch mostly reads one file's chunks: keep it open between them.
    let mut reader = write::LocalReader::default();
    let chunks: Vec<Option<Vec<u8>>> = hashes
        .iter()
        .zip(locations)
        .map(|(hash, location)| {
            if used >= budget {
                return None;
            }
            let l = location?;
            let bytes = reader
                .read(&root.join(&*l.path), l.offset, l.len)
                .ok()
                .flatten()
                .map(|(bytes, _)| bytes)
                .filter(|bytes| blake3::hash(bytes).as_bytes() == hash)?;
            used += bytes.len();
            Some(bytes)
        })
        .collect();
    counters.served.fetch_add(used as u64, Relaxed);
    chunks
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serves_only_what_still_matches_and_stops_at_the_budget() {
        let root = tempfile::tempdir().unwrap();
        std::fs::write(root.path().join("f"), b"aaaabbbbcccc").unwrap();
        let at = |offset| {
            Some(ChunkLocation {
                path: "f".into(),
                offset,
                len: 4,
                stamp: None,
            })
        };
        let hashes: Vec<Hash> = [b"aaaa", b"bbbb", b"xxxx", b"cccc"]
            .iter()
            .map(|b| *blake3::hash(*b).as_bytes())
            .collect();
        let counters = Counters::default();
        let got = read_chunks(
            root.path(),
            &hashes,
            vec![at(0), at(4), at(8), None],
            6,
            &counters,
        );
        assert_eq!(
            got,
            vec![Some(b"aaaa".to_vec()), Some(b"bbbb".to_vec()), None, None]
        );
        assert_eq!(counters.served.load(Relaxed), 8);
    }
}
