//! Helpers shared by the writer's tests: folders with their marker, and files cut into chunks.

use std::fs;
use std::path::Path;

use super::{Assembly, WriteError};
use crate::folder::model::{ChunkRef, Hash, MARKER_DIR, TEMP_PREFIX};
use tempfile::TempDir;

/// A folder root with its marker directory.
pub(crate) fn folder() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    fs::create_dir(dir.path().join(MARKER_DIR)).unwrap();
    dir
}

pub(crate) use crate::folder::testdata::pseudo_random as data;

pub(crate) fn hash(bytes: &[u8]) -> Hash {
    *blake3::hash(bytes).as_bytes()
}

/// A file's bytes cut into chunks of the given sizes (repeated), like a scanner would.
pub(crate) struct Cut {
    pub(crate) data: Vec<u8>,
    pub(crate) chunks: Vec<ChunkRef>,
    pub(crate) ranges: Vec<std::ops::Range<usize>>,
}

impl Cut {
    pub(crate) fn new(data: Vec<u8>, sizes: &[usize]) -> Cut {
        let (mut chunks, mut ranges, mut at) = (Vec::new(), Vec::new(), 0);
        for size in sizes.iter().cycle() {
            if at == data.len() {
                break;
            }
            let end = (at + size).min(data.len());
            chunks.push(ChunkRef {
                hash: hash(&data[at..end]),
                len: (end - at) as u32,
            });
            ranges.push(at..end);
            at = end;
        }
        Cut {
            data,
            chunks,
            ranges,
        }
    }

    pub(crate) fn chunk(&self, i: usize) -> &[u8] {
        &self.data[self.ranges[i].clone()]
    }

    pub(crate) fn open(&self, root: &Path, rel: &str) -> Result<Assembly, WriteError> {
        Assembly::open(
            root,
            rel,
            self.data.len() as u64,
            hash(&self.data),
            &self.chunks,
        )
    }
}

pub(crate) fn sample() -> Cut {
    Cut::new(data(7, 700_000), &[100_000, 65_536, 3, 200_000, 17_000])
}

pub(crate) fn temps_in(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(TEMP_PREFIX))
        .collect()
}

pub(crate) fn write_all(asm: &mut Assembly, cut: &Cut, order: &[usize]) {
    for &i in order {
        asm.write_chunk(i, cut.chunk(i)).unwrap();
    }
}
