//! Helpers shared by the scanner's tests.

use std::fs;
use std::path::Path;
use std::thread;
use std::time::Duration;

use super::{RACY_WINDOW_FINE, ScanOutput};
use crate::folder::model::{ChunkRef, Content, FileMeta, MARKER_DIR, PageRef};

/// A fresh folder with its marker.
pub(crate) fn folder() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join(MARKER_DIR)).unwrap();
    dir
}

pub(crate) fn write(root: &Path, rel: &str, data: &[u8]) {
    let path = root.join(rel);
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(path, data).unwrap();
}

/// Deterministic pseudo-random bytes.
pub(crate) fn random(seed: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0; len];
    blake3::Hasher::new()
        .update(&seed.to_le_bytes())
        .finalize_xof()
        .fill(&mut out);
    out
}

/// Waits until files written now are past the racy window, so a scan trusts them.
pub(crate) fn settle() {
    thread::sleep(RACY_WINDOW_FINE + Duration::from_millis(50));
}

pub(crate) fn keys(out: &ScanOutput) -> Vec<&str> {
    out.entries.keys().map(String::as_str).collect()
}

pub(crate) fn chunks_of(meta: &FileMeta, pages: &[(PageRef, Vec<ChunkRef>)]) -> Vec<ChunkRef> {
    match &meta.content {
        Content::Empty => Vec::new(),
        Content::Inline(chunks) => chunks.clone(),
        Content::Paged(refs) => refs
            .iter()
            .flat_map(|r| pages.iter().find(|(p, _)| p == r).unwrap().1.clone())
            .collect(),
    }
}

/// A stat with everything set, for the racy and stability rules' tests.
pub(crate) fn sample_stat() -> super::stat::Stat {
    super::stat::Stat {
        mode: 0o644,
        size: 10,
        mtime: (1_000, 500),
        ctime: (1_000, 900),
        ino: 7,
        dev: 1,
    }
}
