//! Conflict copies: where a local file goes when a peer's version replaces it
//! ([`rename_to_conflict_copy`]) and what that copy is called ([`conflict_name`], dated with the
//! `time` crate, in Syncthing's format so users recognise it).

use std::io;
use std::path::Path;

use time::{OffsetDateTime, PrimitiveDateTime};

use super::write::{MAX_COMPONENT_BYTES, WriteError, io_error};
use super::write::{parent_of, rename_noreplace, resolve, resolve_creating_parents, sync_dir};

/// Infix of conflict copies' names, as in Syncthing so users recognise them.
pub const CONFLICT_INFIX: &str = ".sync-conflict-";

/// Most characters of the peer tag kept in a conflict name.
pub const CONFLICT_PEER_MAX: usize = 16;

/// Moves the local file (or symlink, or directory) at `rel` aside to `conflict_rel` (typically
/// [`conflict_name`]), never overwriting anything already at `conflict_rel`
/// ([`WriteError::Exists`]). Both directories are fsynced.
pub fn rename_to_conflict_copy(
    root: &Path,
    rel: &str,
    conflict_rel: &str,
) -> Result<(), WriteError> {
    let from = resolve(root, rel)?;
    let to = resolve_creating_parents(root, conflict_rel)?;
    rename_noreplace(&from, &to).map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => WriteError::Exists { path: to.clone() },
        _ => io_error("move aside", &from, e),
    })?;
    sync_dir(parent_of(&to))?;
    if parent_of(&from) != parent_of(&to) {
        sync_dir(parent_of(&from))?;
    }
    Ok(())
}

/// The tag in our conflict copies' names: this device's name (what of it is ASCII letters,
/// digits, `-` and `_`), so people see whose version it was; else [`peer_tag`].
pub fn device_tag(local: &libp2p::PeerId, name: Option<&str>) -> String {
    let name: String = name
        .unwrap_or_default()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .collect();
    if name.is_empty() {
        peer_tag(local)
    } else {
        name
    }
}

/// The peer tag in our conflict copies' names: the last 8 characters of our peer id.
pub fn peer_tag(local: &libp2p::PeerId) -> String {
    let id = local.to_string();
    let start = id.char_indices().rev().nth(7).map_or(0, |(i, _)| i);
    id[start..].to_owned()
}

/// The name of a conflict copy of `rel`: `NAME.sync-conflict-YYYYMMDD-HHMMSS-PEER.EXT`, with the
/// date in UTC from `when_millis` (milliseconds since the epoch) and `PEER` the peer tag with
/// anything but ASCII letters, digits, `-` and `_` dropped (at most [`CONFLICT_PEER_MAX`]).
///
/// The extension is what follows the last dot of the file name, so the copy keeps opening with
/// the same program (`report.txt` → `report.sync-conflict-….txt`, `a.tar.gz` →
/// `a.tar.sync-conflict-….gz`). A name with no dot, or whose only dot leads it (dotfiles such as
/// `.bashrc`) or ends it, has no extension and gets the tag appended (`.bashrc.sync-conflict-…`),
/// so a dotfile's copy stays hidden and keeps its recognisable name. The name is shortened (at a
/// character boundary) to keep the file name within [`MAX_COMPONENT_BYTES`].
pub fn conflict_name(rel: &str, when_millis: u64, peer_short: &str) -> String {
    let (dir, name) = match rel.rfind('/') {
        Some(i) => rel.split_at(i + 1),
        None => ("", rel),
    };
    let mut peer: String = peer_short
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(CONFLICT_PEER_MAX)
        .collect();
    if peer.is_empty() {
        peer.push_str("unknown");
    }
    let tag = format!("{CONFLICT_INFIX}{}-{peer}", utc_stamp(when_millis));
    let (mut stem, mut ext) = match name.rfind('.') {
        Some(i) if i > 0 && i + 1 < name.len() => name.split_at(i),
        _ => (name, ""),
    };
    if tag.len() + ext.len() >= MAX_COMPONENT_BYTES {
        (stem, ext) = (name, "");
    }
    let room = MAX_COMPONENT_BYTES.saturating_sub(tag.len() + ext.len());
    let mut cut = stem.len().min(room);
    while !stem.is_char_boundary(cut) {
        cut -= 1;
    }
    format!("{dir}{}{tag}{ext}", &stem[..cut])
}

/// `YYYYMMDD-HHMMSS` in UTC of `when_millis` (milliseconds since the epoch, truncated to the
/// second). Beyond the last second `time` represents (9999-12-31 23:59:59) it says that second:
/// our clock is that far off only if it is broken, and a conflict copy still needs a name.
fn utc_stamp(when_millis: u64) -> String {
    let at = i64::try_from(when_millis / 1000)
        .ok()
        .and_then(|secs| OffsetDateTime::from_unix_timestamp(secs).ok())
        .unwrap_or_else(|| PrimitiveDateTime::MAX.assume_utc());
    format!(
        "{:04}{:02}{:02}-{:02}{:02}{:02}",
        at.year(),
        u8::from(at.month()),
        at.day(),
        at.hour(),
        at.minute(),
        at.second()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_device_name_tags_conflict_copies_else_the_peer_id() {
        let peer = libp2p::PeerId::random();
        assert_eq!(device_tag(&peer, Some("Ada's laptop")), "Adaslaptop");
        assert_eq!(device_tag(&peer, Some("ノート")), peer_tag(&peer));
        assert_eq!(device_tag(&peer, None), peer_tag(&peer));
    }

    #[test]
    fn the_peer_tag_is_the_end_of_the_peer_id() {
        let peer = libp2p::PeerId::random();
        let tag = peer_tag(&peer);
        assert_eq!(tag.len(), 8);
        assert!(peer.to_string().ends_with(&tag));
    }
    use crate::folder::write::testkit::*;
    use crate::folder::write::validate_rel_path;
    use std::fs;

    /// Dates across years, leap days and century rules, each as the hand-written
    /// `civil_from_days` this module used before `time` named them (checked against it for
    /// every day from 1970 to 9999 and 200,000 random instants before it was removed).
    #[test]
    fn conflict_dates_across_years_and_leap_days() {
        let table = [
            (0, "19700101-000000"),
            (68_169_600_000, "19720229-000000"),
            (951_782_400_000, "20000229-000000"),
            (951_868_799_999, "20000229-235959"),
            (1_709_164_800_000, "20240229-000000"),
            (2_147_483_647_000, "20380119-031407"),
            (4_107_456_000_000, "21000228-000000"),
            (4_107_542_399_000, "21000228-235959"),
            (4_107_542_400_000, "21000301-000000"),
            (13_574_563_200_000, "24000229-000000"),
            (253_402_300_799_999, "99991231-235959"),
            // Beyond what `time` represents: the last second it does.
            (253_402_300_800_000, "99991231-235959"),
            (u64::MAX, "99991231-235959"),
        ];
        for (millis, stamp) in table {
            assert_eq!(
                conflict_name("f", millis, "p"),
                format!("f{CONFLICT_INFIX}{stamp}-p"),
                "{millis}"
            );
        }
    }

    #[test]
    fn conflict_copies_never_overwrite() {
        let root = folder();
        let r = root.path();
        fs::write(r.join("a.txt"), b"mine").unwrap();
        fs::write(r.join("b.txt"), b"other").unwrap();
        let err = rename_to_conflict_copy(r, "a.txt", "b.txt").unwrap_err();
        assert!(matches!(err, WriteError::Exists { .. }), "{err}");
        assert_eq!(fs::read(r.join("a.txt")).unwrap(), b"mine");
        assert_eq!(fs::read(r.join("b.txt")).unwrap(), b"other");
        let name = conflict_name("a.txt", 1_795_671_012_000, "7KQ2mPxA");
        rename_to_conflict_copy(r, "a.txt", &name).unwrap();
        assert!(!r.join("a.txt").exists());
        assert_eq!(fs::read(r.join(&name)).unwrap(), b"mine");
        assert!(rename_to_conflict_copy(r, "gone", "gone2").is_err());
    }

    #[test]
    fn conflict_names() {
        // 1_795_671_012 is 2026-11-26 05:30:12 UTC.
        let at = 1_795_671_012_999;
        let table = [
            (
                "docs/report.txt",
                "docs/report.sync-conflict-20261126-053012-7KQ2mPxA.txt",
            ),
            (
                "Makefile",
                "Makefile.sync-conflict-20261126-053012-7KQ2mPxA",
            ),
            (".bashrc", ".bashrc.sync-conflict-20261126-053012-7KQ2mPxA"),
            (
                "a/.config.json",
                "a/.config.sync-conflict-20261126-053012-7KQ2mPxA.json",
            ),
            (
                "x.tar.gz",
                "x.tar.sync-conflict-20261126-053012-7KQ2mPxA.gz",
            ),
            (
                "v1.2/notes",
                "v1.2/notes.sync-conflict-20261126-053012-7KQ2mPxA",
            ),
            (
                "trailing.",
                "trailing..sync-conflict-20261126-053012-7KQ2mPxA",
            ),
        ];
        for (rel, want) in table {
            let got = conflict_name(rel, at, "7KQ2mPxA");
            assert_eq!(got, want);
            validate_rel_path(&got).unwrap();
        }
        assert_eq!(
            conflict_name("f", 0, "../é/x"),
            "f.sync-conflict-19700101-000000-x"
        );
        assert_eq!(
            conflict_name("f", 951_868_799_000, ""),
            "f.sync-conflict-20000229-235959-unknown"
        );
        assert_eq!(
            conflict_name("f", 4_107_542_400_000, "p"),
            "f.sync-conflict-21000301-000000-p"
        );
        // Long names are shortened at a character boundary to fit a file name.
        let long = format!("dir/{}.txt", "é".repeat(125));
        let got = conflict_name(&long, at, "peer");
        validate_rel_path(&got).unwrap();
        assert!(got.ends_with("-peer.txt"), "{got}");
        let long_ext = format!("a.{}", "e".repeat(250));
        validate_rel_path(&conflict_name(&long_ext, at, "peer")).unwrap();
    }
}
