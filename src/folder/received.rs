//! A received file says so itself, so that a crash cannot turn it into a local edit.
//!
//! What was synced at each path is saved in batches ([`super::state`]), so a crash can come
//! after a received file was renamed into place and before its row was saved. The next scan
//! then finds content it does not know at that path, and without more it would publish it as
//! our own new edit, with a new timestamp: if the sender had edited the file again meanwhile,
//! our stale copy would win and the sender's newer edit would survive only as a conflict copy
//! (issue 12, defect 6). So every received file carries, in the extended attribute
//! [`ATTRIBUTE`] set on its temp file before the fsync and the rename (atomic with the
//! content, and no extra database commit per file), which version it is: a digest of its share,
//! its path and its description, and the version vector it was received at. The first full
//! scan after a start takes a file whose mark matches what it found for what it is: received,
//! synced at that version (and then replaced by any newer one like any synced file).
//!
//! The share is in the digest because a folder outlives its shares: left (`share leave`, its
//! files stay) and shared anew, in a new share or another's, its files must be offered to that
//! share. Taken for received there, at versions of a share it no longer is in, they were never
//! offered to anyone. A mark of the same share is taken whether or not the store holds its
//! version: after the share was left and joined again, or the daemon's home restored from a
//! backup, the members hold it (or newer), and a received copy published as our edit instead
//! could beat their newer edit.
//!
//! Only the first full scan after a start reads marks: a user who later restores a received
//! file with its old mtime (`cp -p`) made an edit, and it is published as one. A file system
//! without user extended attributes keeps no marks; [`super::actor`] says so once.

use serde::{Deserialize, Serialize};

use super::model::FileMeta;
use crate::merge::VersionVector;
use crate::store::ShareId;

/// The extended attribute holding a received file's mark. Name and mark are kept short so that
/// they fit inside an ext4 inode (no extra block to write per file).
pub const ATTRIBUTE: &str = "user.meshsync";
/// Marks larger than this are not written (a version vector of very many writers): ext4 keeps
/// all of an inode's attributes in one block.
pub const MAX_MARK_BYTES: usize = 2048;

/// What a received file's mark says: a check of its path and description as received, and the
/// version vector of the version received.
#[derive(Debug, Serialize, Deserialize)]
struct Mark(#[serde(with = "serde_bytes")] Vec<u8>, VersionVector);

/// The mark of `meta` received in `share` at `path` at version `base`; `None` if it would be
/// too large.
pub fn mark(share: &ShareId, path: &str, meta: &FileMeta, base: &VersionVector) -> Option<Vec<u8>> {
    let mark = Mark(check(share, path, meta)?, base.clone());
    crate::cbor::encode(&mark)
        .ok()
        .filter(|bytes| bytes.len() <= MAX_MARK_BYTES)
}

/// The version at which the file scanned at `path` as `scanned` was received in `share`, if
/// `mark` (read from it) says it is exactly that received file.
pub fn received_version(
    mark: &[u8],
    share: &ShareId,
    path: &str,
    scanned: &FileMeta,
) -> Option<VersionVector> {
    let Mark(found, base) = crate::cbor::decode(mark).ok()?;
    (Some(found) == check(share, path, scanned)).then_some(base)
}

/// The first 8 bytes of BLAKE3 over the share, the path and the CBOR of the description:
/// enough to tell a received file from an edit of it, or from the same file received in
/// another share (not a defence against forgery: whoever can write the file can edit it
/// anyway).
fn check(share: &ShareId, path: &str, meta: &FileMeta) -> Option<Vec<u8>> {
    let bytes = crate::cbor::encode(meta).ok()?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(share);
    hasher.update(&(path.len() as u64).to_le_bytes());
    hasher.update(path.as_bytes());
    hasher.update(&bytes);
    Some(hasher.finalize().as_bytes()[..8].to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::model::{ChunkRef, Content, EntryKind};
    use crate::merge::PeerKey;

    fn meta(byte: u8, mtime_secs: i64) -> FileMeta {
        let hash = *blake3::hash(&[byte]).as_bytes();
        FileMeta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_secs,
            mtime_nanos: 0,
            size: 1,
            hash,
            content: Content::Inline(vec![ChunkRef { hash, len: 1 }]),
            target: None,
        }
    }

    const SHARE: ShareId = [3; 32];

    fn vv() -> VersionVector {
        let mut vv = VersionVector::default();
        // A counter as local writes make them: at least the write's clock milliseconds.
        vv.raise(&PeerKey::new(vec![7; 38]).unwrap(), 1_800_000_000_000);
        vv
    }

    #[test]
    fn a_one_writer_mark_fits_inside_an_ext4_inode() {
        // 92 bytes of in-inode attribute space (256-byte inodes), less the entry header (16),
        // the name ("meshsync", 8) and the end marker (4).
        let m = mark(&SHARE, "d/f", &meta(1, 100), &vv()).unwrap();
        assert!(m.len() <= 92 - 16 - 8 - 4, "{} bytes", m.len());
    }

    #[test]
    fn a_mark_recognises_only_the_same_file_at_the_same_path() {
        let m = mark(&SHARE, "d/f", &meta(1, 100), &vv()).unwrap();
        let found = |share, path, meta| received_version(&m, share, path, &meta);
        assert_eq!(found(&SHARE, "d/f", meta(1, 100)), Some(vv()));
        // Edited in place (the attribute stays), touched, copied elsewhere: not received.
        assert_eq!(found(&SHARE, "d/f", meta(2, 100)), None);
        assert_eq!(found(&SHARE, "d/f", meta(1, 101)), None);
        assert_eq!(found(&SHARE, "d/g", meta(1, 100)), None);
        // The folder shared anew, in another share: not received there.
        assert_eq!(found(&[9; 32], "d/f", meta(1, 100)), None);
        let garbage = received_version(b"garbage", &SHARE, "d/f", &meta(1, 100));
        assert_eq!(garbage, None);
    }
}
