//! Reading chunks out of local files, for the engine to copy what it already has instead of
//! downloading it: one checked chunk ([`read_chunk`]) or many unchecked ones through open files
//! ([`LocalReader`]). Never follows a symlink, never blocks on a FIFO.

use std::collections::HashMap;
use std::fs::{File, Metadata, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rustix::io::Errno;

use super::sys;
use crate::folder::model::{CHUNK_MAX, CheckedChunk, ChunkRef, Hash};

/// Reads `len` bytes at `offset` of a local file and returns them if they still hash to
/// `expected`: the engine copies chunks it already has locally instead of downloading them.
/// `None` when the bytes no longer match, the file is shorter now, or it is gone, is a symlink or
/// is not a regular file (the chunk index is only a hint; the scanner will catch up). Never
/// follows a symlink and never blocks on a FIFO.
pub fn read_chunk(
    path: &Path,
    offset: u64,
    len: u32,
    expected: &Hash,
) -> Result<Option<CheckedChunk>, io::Error> {
    check_chunk_len(len)?;
    let Some((file, _)) = open_regular(path)? else {
        return Ok(None);
    };
    let chunk = ChunkRef {
        hash: *expected,
        len,
    };
    Ok(read_at(&file, offset, len)?.and_then(|bytes| CheckedChunk::check(&chunk, bytes).ok()))
}

/// Files a [`LocalReader`] keeps open at most.
const LOCAL_READER_FILES: usize = 64;

/// Reads chunks out of local files to copy them into an [`Assembly`](super::Assembly), keeping
/// files open between reads (rebuilding a big file from its old version reads thousands of
/// chunks of one file; an open and a hash check per chunk cost more than the copy). The bytes
/// are not checked here: [`Assembly::write_chunk`](super::Assembly::write_chunk) checks every
/// chunk it writes, and the caller decides from the file's `fstat` (taken when it was opened)
/// whether [`Assembly::write_vouched`](super::Assembly::write_vouched) may skip that. Same rules
/// as [`read_chunk`] for what it refuses to read.
#[derive(Default)]
pub struct LocalReader {
    files: HashMap<PathBuf, Option<(File, Metadata)>>,
}

impl LocalReader {
    /// `len` bytes at `offset` of `path` and the `fstat` of the file when it was opened, or
    /// `None` if the file is gone, not a regular file or shorter now.
    pub fn read(
        &mut self,
        path: &Path,
        offset: u64,
        len: u32,
    ) -> io::Result<Option<(Vec<u8>, &Metadata)>> {
        check_chunk_len(len)?;
        if self.files.len() >= LOCAL_READER_FILES && !self.files.contains_key(path) {
            self.files.clear();
        }
        let file = match self.files.entry(path.to_path_buf()) {
            std::collections::hash_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(open_regular(path)?),
        };
        match file {
            Some((file, meta)) => Ok(read_at(file, offset, len)?.map(|bytes| (bytes, &*meta))),
            None => Ok(None),
        }
    }
}

fn check_chunk_len(len: u32) -> io::Result<()> {
    if len > CHUNK_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("chunk of {len} bytes is longer than CHUNK_MAX"),
        ));
    }
    Ok(())
}

/// Opens `path` for reading if it is a regular file, without following a symlink or blocking
/// on a FIFO; `None` if it is gone or is something else.
fn open_regular(path: &Path) -> io::Result<Option<(File, Metadata)>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(sys::O_NOFOLLOW | sys::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound || sys::is_errno(&e, Errno::LOOP) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta)))
}

/// `len` bytes at `offset`, or `None` if the file ends before.
fn read_at(file: &File, offset: u64, len: u32) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = vec![0u8; len as usize];
    match file.read_exact_at(&mut bytes, offset) {
        Ok(()) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::write::testkit::*;
    use std::fs;

    #[test]
    fn read_chunk_returns_only_matching_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content = data(1, 5000);
        fs::write(&path, &content).unwrap();
        let want = hash(&content[100..1100]);
        assert_eq!(
            read_chunk(&path, 100, 1000, &want)
                .unwrap()
                .unwrap()
                .bytes(),
            &content[100..1100]
        );
        assert_eq!(read_chunk(&path, 101, 1000, &want).unwrap(), None);
        assert_eq!(read_chunk(&path, 4500, 1000, &want).unwrap(), None);
        assert_eq!(
            read_chunk(&dir.path().join("nope"), 0, 10, &want).unwrap(),
            None
        );
        std::os::unix::fs::symlink(&path, dir.path().join("l")).unwrap();
        assert_eq!(
            read_chunk(&dir.path().join("l"), 100, 1000, &want).unwrap(),
            None
        );
        assert!(read_chunk(&path, 0, CHUNK_MAX + 1, &want).is_err());
    }
}
