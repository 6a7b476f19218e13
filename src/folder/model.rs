//! What a folder entry is: the metadata of a file, directory or symlink, and how a file's content
//! is described as content-defined chunks.
//!
//! A folder share reuses the records engine unchanged: each entry's key is its normalised relative
//! path and its value is the CBOR of a [`FileMeta`]. Replication, conflicts and tombstones are the
//! register's; this module only says what the value means.
//!
//! # Content description
//! A file's bytes are cut by FastCDC (2020) into chunks of [`CHUNK_MIN`]..[`CHUNK_MAX`] bytes,
//! averaging [`CHUNK_AVG`], each named by its BLAKE3 hash. Edits change only the chunks they
//! touch, and identical chunks anywhere (an old version, another file, a renamed file) never
//! travel twice.
//!
//! Small files list their chunks inline ([`Content::Inline`]). Larger ones would make every new
//! version carry a long chunk list (a 256 MiB file has ~4,000 chunks, ~140 KiB of list), so the
//! list is itself cut into content-defined pages ([`Content::Paged`]): a page ends after a chunk
//! whose hash starts with a zero byte (on average every [`PAGE_AVG_CHUNKS`] chunks, at most
//! [`PAGE_MAX_CHUNKS`]). Pages are named by the BLAKE3 hash of their CBOR encoding and fetched
//! only when not known locally, so an edit costs its changed chunks plus one or two pages, and a
//! rename costs only the metadata.

use serde::{Deserialize, Serialize};

/// Smallest chunk FastCDC cuts (except a file's last chunk).
pub const CHUNK_MIN: u32 = 16 * 1024;
/// Average chunk size FastCDC aims for.
pub const CHUNK_AVG: u32 = 64 * 1024;
/// Largest chunk; also the most a single chunk request returns.
pub const CHUNK_MAX: u32 = 256 * 1024;
/// Files with at most this many chunks list them inline in their metadata.
pub const INLINE_MAX_CHUNKS: usize = 32;
/// A page of a chunk list ends after a chunk whose hash's first byte is zero: 1 in 256.
pub const PAGE_AVG_CHUNKS: usize = 256;
/// A page never holds more chunks than this, whatever the hashes.
pub const PAGE_MAX_CHUNKS: usize = 1024;
/// Name of the directory inside every shared folder that marks it as ours. If it disappears (an
/// unmounted disk), the share pauses instead of taking the empty folder for "everything deleted".
pub const MARKER_DIR: &str = ".meshsync";
/// Prefix of the hidden temporary files the writer assembles downloads in.
pub const TEMP_PREFIX: &str = ".meshsync-tmp-";
/// Name of the ignore file (gitignore syntax) at the folder root.
pub const IGNORE_FILE: &str = ".meshignore";
/// Longest relative path accepted, in bytes: the store's limit on a folder share's keys.
pub const MAX_PATH_BYTES: usize = crate::store::MAX_PATH_KEY_BYTES;

/// A 32-byte BLAKE3 hash.
pub type Hash = [u8; 32];

/// What kind of thing lives at a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum EntryKind {
    /// A regular file.
    #[serde(rename = "f")]
    File,
    /// A directory.
    #[serde(rename = "d")]
    Dir,
    /// A symbolic link (synced as a link, never followed).
    #[serde(rename = "l")]
    Symlink,
}

/// One chunk of a file: its hash and length. Its offset is the sum of the lengths before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChunkRef {
    /// BLAKE3 of the chunk's bytes.
    #[serde(rename = "h", with = "serde_bytes")]
    pub hash: Hash,
    /// Its length in bytes (≤ [`CHUNK_MAX`]).
    #[serde(rename = "n")]
    pub len: u32,
}

/// A chunk's bytes, checked once against its [`ChunkRef`] (length and BLAKE3). Only
/// [`CheckedChunk::check`] makes one, so code holding one need not hash the bytes again: the
/// fetcher checks what a peer sent, and the writer takes its word for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckedChunk {
    chunk: ChunkRef,
    bytes: Vec<u8>,
}

impl CheckedChunk {
    /// `bytes` if they are `chunk`'s, else the bytes back.
    pub fn check(chunk: &ChunkRef, bytes: Vec<u8>) -> Result<CheckedChunk, Vec<u8>> {
        if bytes.len() == chunk.len as usize && blake3::hash(&bytes).as_bytes() == &chunk.hash {
            Ok(CheckedChunk {
                chunk: *chunk,
                bytes,
            })
        } else {
            Err(bytes)
        }
    }

    /// The chunk these bytes are.
    pub fn chunk(&self) -> &ChunkRef {
        &self.chunk
    }

    /// The bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The bytes, owned.
    pub fn into_bytes(self) -> Vec<u8> {
        self.bytes
    }
}

/// One page of a long chunk list.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PageRef {
    /// BLAKE3 of the page's CBOR encoding (a `Vec<ChunkRef>`).
    #[serde(rename = "h", with = "serde_bytes")]
    pub hash: Hash,
    /// How many chunks the page lists.
    #[serde(rename = "c")]
    pub chunks: u32,
    /// How many bytes of the file those chunks cover.
    #[serde(rename = "b")]
    pub bytes: u64,
}

/// How a file's content is described.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Content {
    /// No content (directories, symlinks, empty files).
    #[serde(rename = "0")]
    Empty,
    /// The chunks, listed here.
    #[serde(rename = "i")]
    Inline(Vec<ChunkRef>),
    /// The chunk list, in pages fetched separately.
    #[serde(rename = "p")]
    Paged(Vec<PageRef>),
}

/// The value of a folder entry: everything needed to recreate the path exactly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct FileMeta {
    /// File, directory or symlink.
    #[serde(rename = "k")]
    pub kind: EntryKind,
    /// Permission bits (`mode & 0o7777`).
    #[serde(rename = "m")]
    pub mode: u32,
    /// Modification time: seconds since the Unix epoch.
    #[serde(rename = "t")]
    pub mtime_secs: i64,
    /// Modification time: nanoseconds within the second.
    #[serde(rename = "u")]
    pub mtime_nanos: u32,
    /// Size in bytes (files only).
    #[serde(rename = "s")]
    pub size: u64,
    /// BLAKE3 of the whole content (files only; all zero otherwise).
    #[serde(rename = "h", with = "serde_bytes")]
    pub hash: Hash,
    /// How the content is cut into chunks.
    #[serde(rename = "c")]
    pub content: Content,
    /// Where a symlink points (symlinks only), as stored in the link.
    #[serde(rename = "l", default, skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
}

impl FileMeta {
    /// Whether two metadata describe the same thing on disk, ignoring nothing: content, kind,
    /// mode, mtime and link target.
    pub fn same_as(&self, other: &FileMeta) -> bool {
        self == other
    }

    /// Whether the content (not the times or mode) is the same.
    pub fn same_content(&self, other: &FileMeta) -> bool {
        self.kind == other.kind
            && self.size == other.size
            && self.hash == other.hash
            && self.target == other.target
    }
}

/// Most pages one file's chunk list may have (about 16 GiB at the average chunk size... and far
/// more with larger chunks); a description with more is refused as absurd.
pub const MAX_PAGES: usize = 65_536;

/// Checks that a relative path from a peer is safe to create under the folder: the one
/// validator, [`validate_rel_path`](crate::folder::write::validate_rel_path), whose
/// [`PathRefusal`](crate::folder::write::PathRefusal) says what is wrong.
pub fn check_rel_path(path: &str) -> Result<(), crate::folder::write::PathError> {
    crate::folder::write::validate_rel_path(path)
}

/// A file description that is not self-consistent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("refused entry `{}`: {reason}", path.escape_debug())]
pub struct BadMeta {
    /// The entry's path.
    pub path: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks that a file description from a peer is self-consistent, so that nothing downstream has
/// to trust it: sizes add up, chunks and pages are within bounds, each kind has the fields it
/// needs.
pub fn check_meta(path: &str, meta: &FileMeta) -> Result<(), BadMeta> {
    let refuse = |reason: &'static str| {
        Err(BadMeta {
            path: path.to_owned(),
            reason,
        })
    };
    if meta.mode > 0o7777 {
        return refuse("mode out of range");
    }
    if meta.mtime_nanos >= 1_000_000_000 {
        return refuse("mtime nanoseconds out of range");
    }
    match meta.kind {
        EntryKind::Dir => {
            if meta.size != 0 || meta.content != Content::Empty || meta.target.is_some() {
                return refuse("a directory with content");
            }
        }
        EntryKind::Symlink => {
            let Some(target) = &meta.target else {
                return refuse("a symlink without a target");
            };
            if target.is_empty() || target.len() > MAX_PATH_BYTES || target.contains('\0') {
                return refuse("bad symlink target");
            }
            if meta.size != 0 || meta.content != Content::Empty {
                return refuse("a symlink with content");
            }
        }
        EntryKind::File => {
            if meta.target.is_some() {
                return refuse("a file with a link target");
            }
            let total: u64 = match &meta.content {
                Content::Empty => 0,
                Content::Inline(chunks) => {
                    if chunks.len() > INLINE_MAX_CHUNKS {
                        return refuse("too many inline chunks");
                    }
                    if chunks.iter().any(|c| c.len == 0 || c.len > CHUNK_MAX) {
                        return refuse("chunk length out of range");
                    }
                    chunks.iter().map(|c| c.len as u64).sum()
                }
                Content::Paged(pages) => {
                    if pages.len() > MAX_PAGES {
                        return refuse("too many pages");
                    }
                    if pages
                        .iter()
                        .any(|p| p.chunks == 0 || p.chunks as usize > PAGE_MAX_CHUNKS)
                    {
                        return refuse("page size out of range");
                    }
                    if pages
                        .iter()
                        .any(|p| p.bytes > p.chunks as u64 * CHUNK_MAX as u64)
                    {
                        return refuse("page covers more bytes than its chunks can hold");
                    }
                    pages.iter().map(|p| p.bytes).sum()
                }
            };
            if total != meta.size {
                return refuse("chunk lengths do not add up to the size");
            }
        }
    }
    Ok(())
}

/// Encodes a page of chunk refs; its BLAKE3 is the page's name.
pub fn encode_page(chunks: &[ChunkRef]) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(&chunks, &mut out).expect("chunk refs always encode");
    out
}

/// Cuts a file's chunk list into its [`Content`] description and the pages to store (empty for
/// inline content). Deterministic: the same chunks always give the same pages.
pub fn describe(chunks: Vec<ChunkRef>) -> (Content, Vec<(PageRef, Vec<ChunkRef>)>) {
    if chunks.is_empty() {
        return (Content::Empty, Vec::new());
    }
    if chunks.len() <= INLINE_MAX_CHUNKS {
        return (Content::Inline(chunks), Vec::new());
    }
    let mut pages = Vec::new();
    let mut current: Vec<ChunkRef> = Vec::new();
    for chunk in chunks {
        current.push(chunk);
        if chunk.hash[0] == 0 || current.len() >= PAGE_MAX_CHUNKS {
            pages.push(std::mem::take(&mut current));
        }
    }
    if !current.is_empty() {
        pages.push(current);
    }
    let described = pages
        .into_iter()
        .map(|chunks| {
            let page = PageRef {
                hash: *blake3::hash(&encode_page(&chunks)).as_bytes(),
                chunks: chunks.len() as u32,
                bytes: chunks.iter().map(|c| c.len as u64).sum(),
            };
            (page, chunks)
        })
        .collect::<Vec<_>>();
    let refs = described.iter().map(|(p, _)| *p).collect();
    (Content::Paged(refs), described)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunk(i: u32) -> ChunkRef {
        ChunkRef {
            hash: *blake3::hash(&i.to_le_bytes()).as_bytes(),
            len: 1000 + i,
        }
    }

    #[test]
    fn small_files_are_inline_large_ones_paged_deterministically() {
        assert_eq!(describe(vec![]).0, Content::Empty);
        let few: Vec<ChunkRef> = (0..INLINE_MAX_CHUNKS as u32).map(chunk).collect();
        assert!(matches!(describe(few).0, Content::Inline(_)));
        let many: Vec<ChunkRef> = (0..5000).map(chunk).collect();
        let (content, pages) = describe(many.clone());
        let Content::Paged(refs) = &content else {
            panic!("paged")
        };
        assert_eq!(refs.len(), pages.len());
        assert_eq!(pages.iter().map(|(_, c)| c.len()).sum::<usize>(), 5000);
        assert!(pages.iter().all(|(_, c)| c.len() <= PAGE_MAX_CHUNKS));
        assert_eq!(describe(many).0, content);
    }

    #[test]
    fn an_edit_changes_only_nearby_pages() {
        let many: Vec<ChunkRef> = (0..5000).map(chunk).collect();
        let (Content::Paged(before), _) = describe(many.clone()) else {
            panic!()
        };
        let mut edited = many;
        edited[2500] = chunk(99_999);
        edited.insert(10, chunk(77_777));
        let (Content::Paged(after), _) = describe(edited) else {
            panic!()
        };
        let changed = after.iter().filter(|p| !before.contains(p)).count();
        assert!(changed <= 3, "{changed} of {} pages changed", after.len());
    }

    #[test]
    fn hostile_paths_are_refused() {
        for bad in [
            "",
            "/etc/passwd",
            "../x",
            "a/../../b",
            "a/./b",
            "a//b",
            "a/",
            ".meshsync/x",
            "a\0b",
            "a\\b",
            ".meshsync-tmp-123",
            "d/.meshsync-tmp-x",
        ] {
            assert!(check_rel_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_rel_path(&"x".repeat(MAX_PATH_BYTES + 1)).is_err());
        assert!(check_rel_path(&"x".repeat(256)).is_err());
        for good in [
            "a",
            "a/b/c.txt",
            ".meshignore",
            "d/.meshsync",
            "ünïcödé/名前",
            "..hidden",
        ] {
            assert!(check_rel_path(good).is_ok(), "{good:?}");
        }
    }

    #[test]
    fn inconsistent_meta_is_refused() {
        let file = FileMeta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            size: 1001,
            hash: [0; 32],
            content: Content::Inline(vec![chunk(1)]),
            target: None,
        };
        assert!(check_meta("f", &file).is_ok());
        assert!(
            check_meta(
                "f",
                &FileMeta {
                    size: 5,
                    ..file.clone()
                }
            )
            .is_err()
        );
        assert!(
            check_meta(
                "f",
                &FileMeta {
                    mode: 0o17777,
                    ..file.clone()
                }
            )
            .is_err()
        );
        let dir = FileMeta {
            kind: EntryKind::Dir,
            size: 0,
            content: Content::Empty,
            ..file.clone()
        };
        assert!(check_meta("d", &dir).is_ok());
        assert!(
            check_meta(
                "d",
                &FileMeta {
                    size: 1,
                    ..dir.clone()
                }
            )
            .is_err()
        );
        let link = FileMeta {
            kind: EntryKind::Symlink,
            target: Some("x".into()),
            ..dir
        };
        assert!(check_meta("l", &link).is_ok());
        assert!(
            check_meta(
                "l",
                &FileMeta {
                    target: None,
                    ..link
                }
            )
            .is_err()
        );
    }

    #[test]
    fn meta_round_trips_compactly() {
        let meta = FileMeta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_secs: 1_790_000_000,
            mtime_nanos: 123,
            size: 4096,
            hash: [7; 32],
            content: Content::Inline(vec![chunk(1)]),
            target: None,
        };
        let mut bytes = Vec::new();
        ciborium::into_writer(&meta, &mut bytes).unwrap();
        assert!(bytes.len() < 120, "{} bytes", bytes.len());
        let back: FileMeta = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, meta);
    }
}
