//! Pure decisions about one path: which version wins on disk, what the path should become, and
//! what the writer may expect to find there. No I/O.

use serde_bytes::ByteBuf;

use super::model::{EntryKind, FileMeta};
use super::state::Synced;
use super::write::Expect;
use crate::merge::{Payload, Register, Version};

/// What to make of a path.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Desired {
    /// Nothing should be there (deleted everywhere).
    Absent,
    /// This should be there.
    Present(FileMeta),
}

/// A directory's mtime changes whenever an entry inside it is added or removed, which is not a
/// change of the directory worth a version (and writing files into it would echo back as one).
/// Directories are synced by existence and mode only.
/// Symlinks likewise: their own mtime cannot be set portably when they are created, and their
/// mode means nothing on Linux. Scan records keep the real values (they are what `Expect`
/// checks against); entries and comparisons use this form.
pub(super) fn normalised(meta: &FileMeta) -> FileMeta {
    let mut meta = meta.clone();
    match meta.kind {
        EntryKind::Dir => {
            meta.mtime_secs = 0;
            meta.mtime_nanos = 0;
        }
        EntryKind::Symlink => {
            meta.mtime_secs = 0;
            meta.mtime_nanos = 0;
            meta.mode = 0o777;
        }
        EntryKind::File => {}
    }
    meta
}

/// A file description as an entry's value.
pub(super) fn encode_meta(meta: &FileMeta) -> Result<Vec<u8>, crate::cbor::CborError> {
    crate::cbor::encode(meta)
}

/// The file description a version holds; `None` for a tombstone (or a value that is not one,
/// which the store's entry check keeps out).
pub(super) fn decode_meta(version: &Version<ByteBuf>) -> Option<FileMeta> {
    match version.payload() {
        Payload::Value(bytes) => crate::cbor::decode(bytes.as_slice()).ok(),
        Payload::Tombstone => None,
    }
}

/// The version whose state every peer puts on disk: the winner, except that an edit of a file or
/// link beats a concurrent delete (a deletion must never destroy work its author did not see).
///
/// A directory version does not: it holds no work, only the fact that the directory exists, and
/// such versions come about without anyone editing anything (a receiver's scan finds a directory
/// the writer made for a file inside it before the directory's own entry arrived). Letting those
/// beat a delete brought removed trees back, as empty directories, on every peer. A directory
/// with a surviving child stays on disk anyway (it is removed only when empty), and is
/// recorded again where it has to be re-created for that child.
pub(super) fn effective_winner(register: &Register<ByteBuf>) -> Option<&Version<ByteBuf>> {
    let winner = register.winner()?;
    if winner.is_tombstone()
        && let Some(edit) = register
            .conflicts()
            .iter()
            .find(|v| decode_meta(v).is_some_and(|m| m.kind != EntryKind::Dir))
    {
        return Some(edit);
    }
    Some(winner)
}

/// What the path should become: the effective winner's description, or absent.
pub(super) fn desired(register: &Register<ByteBuf>) -> Desired {
    match effective_winner(register).and_then(decode_meta) {
        Some(meta) => Desired::Present(meta),
        None => Desired::Absent,
    }
}

/// Our own version that lost a conflict while its content is what is on disk (`disk`), as a
/// file about to be replaced by different content (`want`): it must be kept aside as a conflict
/// copy first. The newest of ours if there are several.
pub(super) fn losing_local_version<'r>(
    register: &'r Register<ByteBuf>,
    winner: &Version<ByteBuf>,
    local: &crate::merge::PeerKey,
    want: &FileMeta,
    disk: &FileMeta,
) -> Option<&'r Version<ByteBuf>> {
    if disk.kind != EntryKind::File || want.same_content(disk) {
        return None;
    }
    let ours_lost = register.versions().iter().any(|v| {
        v.origin() == local
            && v.vv() != winner.vv()
            && decode_meta(v).is_some_and(|m| m.same_content(disk))
    });
    if !ours_lost {
        return None;
    }
    register
        .versions()
        .iter()
        .filter(|v| v.origin() == local)
        .max_by_key(|v| v.vv().get(local))
}

/// Whether the disk, last synced as `on_disk`, differs from what the entry wants.
pub(super) fn needs_work(register: &Register<ByteBuf>, on_disk: Option<&FileMeta>) -> bool {
    match (desired(register), on_disk.map(normalised)) {
        (Desired::Absent, None) => false,
        (Desired::Present(meta), Some(disk)) => meta != disk,
        _ => true,
    }
}

/// What the writer may expect at a path last synced as `synced`; anything else there is a
/// local change it must not overwrite.
pub(super) fn expect_for(synced: Option<&Synced>) -> Expect {
    match synced {
        None => Expect::Absent,
        // Directories are only ever removed when empty, whatever was expected of them.
        Some(s) if s.record.meta.kind == EntryKind::Dir => Expect::Anything,
        Some(s) => Expect::Unchanged {
            // A symlink's own size is the length of its target.
            size: match s.record.meta.kind {
                EntryKind::Symlink => s.record.meta.target.as_ref().map_or(0, |t| t.len() as u64),
                _ => s.record.meta.size,
            },
            mtime_secs: s.record.meta.mtime_secs,
            mtime_nanos: s.record.meta.mtime_nanos,
            inode: s.record.inode,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::model::Content;
    use crate::merge::{Hlc, PeerKey};

    fn file(size: u64, mtime: i64) -> FileMeta {
        FileMeta {
            kind: EntryKind::File,
            size,
            mode: 0o644,
            mtime_secs: mtime,
            mtime_nanos: 0,
            hash: [size as u8; 32],
            content: Content::Empty,
            target: None,
        }
    }

    /// A register holding one version per writer, all concurrent: `(peer, millis, meta)`,
    /// `None` for a delete.
    fn concurrent(writes: &[(u8, u64, Option<&FileMeta>)]) -> Register<ByteBuf> {
        let mut merged = Register::new();
        for (peer, millis, meta) in writes {
            let payload = match meta {
                Some(m) => Payload::Value(ByteBuf::from(encode_meta(m).unwrap())),
                None => Payload::Tombstone,
            };
            let mut own = Register::new();
            let hlc = Hlc {
                millis: *millis,
                logical: 0,
            };
            own.write_local(&PeerKey::new(vec![*peer]).unwrap(), hlc, payload)
                .unwrap();
            merged.merge(&own);
        }
        merged
    }

    #[test]
    fn an_edit_beats_a_concurrent_delete_whoever_wins_the_clock() {
        let edit = file(5, 100);
        let register = concurrent(&[(1, 10, Some(&edit)), (2, 99, None)]);
        assert!(
            register.winner().unwrap().is_tombstone(),
            "the delete is newer"
        );
        match desired(&register) {
            Desired::Present(meta) => assert_eq!(meta, edit),
            Desired::Absent => panic!("the edit must survive"),
        }
        assert!(needs_work(&register, None));
        assert!(!needs_work(&register, Some(&edit)));
    }

    #[test]
    fn a_directory_version_does_not_beat_a_concurrent_delete() {
        let mut dir = file(0, 5);
        dir.kind = EntryKind::Dir;
        let dir = normalised(&dir);
        let register = concurrent(&[(1, 10, Some(&dir)), (2, 99, None)]);
        assert_eq!(desired(&register), Desired::Absent, "the newer delete wins");
        assert!(needs_work(&register, Some(&dir)));
        let register = concurrent(&[(1, 10, None), (2, 99, Some(&dir))]);
        assert_eq!(
            desired(&register),
            Desired::Present(dir),
            "a newer directory wins"
        );
    }

    #[test]
    fn directories_compare_without_their_mtime() {
        let mut dir = file(0, 5);
        dir.kind = EntryKind::Dir;
        let register = concurrent(&[(1, 10, Some(&normalised(&dir)))]);
        let mut touched = dir.clone();
        touched.mtime_secs = 999;
        assert!(!needs_work(&register, Some(&touched)));
        touched.mode = 0o700;
        assert!(needs_work(&register, Some(&touched)));
    }

    #[test]
    fn only_a_local_version_that_lost_and_is_on_disk_is_kept_aside() {
        let ours = file(5, 100);
        let theirs = file(6, 200);
        let register = concurrent(&[(1, 10, Some(&ours)), (2, 99, Some(&theirs))]);
        let winner = effective_winner(&register).unwrap().clone();
        let me = PeerKey::new(vec![1]).unwrap();
        let them = PeerKey::new(vec![2]).unwrap();
        let kept = losing_local_version(&register, &winner, &me, &theirs, &ours);
        assert_eq!(kept.map(|v| v.origin().clone()), Some(me.clone()));
        assert!(
            losing_local_version(&register, &winner, &them, &theirs, &ours).is_none(),
            "the winner's author keeps nothing"
        );
        assert!(
            losing_local_version(&register, &winner, &me, &theirs, &file(7, 1)).is_none(),
            "what is on disk is not our version: the scanner records it first"
        );
        assert!(
            losing_local_version(&register, &winner, &me, &ours, &ours).is_none(),
            "nothing to keep when the content stays"
        );
    }

    #[test]
    fn the_writer_expects_what_was_synced() {
        assert_eq!(expect_for(None), Expect::Absent);
    }
}
