//! The lab's invariants, each a function of what is on the peers' disks and APIs and of the
//! workload's [`Ledger`]: convergence, no torn file at a final path, no acknowledged record
//! write lost, nothing of a share at a peer that is not its member.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use super::peers::{LabPeer, folder_of};
use super::workload::{KeyHistory, Ledger};
use crate::api::records::ListedRecord;

/// One broken invariant, with its evidence.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// Which invariant: `convergence`, `torn_file`, `lost_write`, `leak`.
    pub invariant: &'static str,
    /// The peer where it was seen.
    pub peer: String,
    /// The share.
    pub share: String,
    /// The path or key concerned, if one.
    pub item: Option<String>,
    /// What was seen.
    pub detail: String,
    /// Seconds from the start of the workload.
    pub at_s: f64,
}

/// A folder as the lab compares it: every path (files, directories, symlinks) with its
/// content's hash; the folder's own `.meshsync` directory and temp files aside.
pub type Tree = BTreeMap<String, String>;

/// Whether a name is the daemon's own (not synced content).
fn daemon_own(name: &str) -> bool {
    name == ".meshsync" || name.starts_with(".meshsync-tmp-")
}

/// Reads a folder into a [`Tree`]; file contents are hashed.
pub fn tree(root: &Path) -> Tree {
    let mut out = Tree::new();
    walk(root, "", &mut out);
    out
}

fn walk(root: &Path, rel: &str, out: &mut Tree) {
    let Ok(entries) = std::fs::read_dir(root.join(rel)) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if daemon_own(&name) {
            continue;
        }
        let path = if rel.is_empty() {
            name
        } else {
            format!("{rel}/{name}")
        };
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() {
            out.insert(path.clone(), "dir".into());
            walk(root, &path, out);
        } else if kind.is_symlink() {
            let target = std::fs::read_link(entry.path()).unwrap_or_default();
            out.insert(path, format!("link:{}", target.display()));
        } else if let Ok(bytes) = std::fs::read(entry.path()) {
            out.insert(path, blake3::hash(&bytes).to_hex().to_string());
        }
    }
}

/// Files at final paths whose content the lab never wrote: torn or partial files.
pub fn torn_files(peer: &LabPeer, share: &str, ledger: &Ledger, at_s: f64) -> Vec<Violation> {
    let root = folder_of(peer, share);
    tree(&root)
        .into_iter()
        .filter(|(_, hash)| hash != "dir" && !hash.starts_with("link:"))
        .filter(|(_, hash)| {
            let mut bytes = [0u8; 32];
            hex::decode_to_slice(hash, &mut bytes).is_ok() && !ledger.contents.contains(&bytes)
        })
        .map(|(path, _)| Violation {
            invariant: "torn_file",
            peer: peer.name.clone(),
            share: share.to_owned(),
            item: Some(path),
            detail: "content the workload never wrote (torn, partial or foreign)".into(),
            at_s,
        })
        .collect()
}

/// The records of `share` at `peer`, by key (values as the API shows them).
pub fn records(peer: &LabPeer, share: &str) -> Result<BTreeMap<String, String>, String> {
    let listed: Vec<ListedRecord> = peer
        .get(&format!("/v1/kv/{share}/list"))
        .map_err(|e| e.to_string())?;
    Ok(listed
        .into_iter()
        .map(|r| {
            let value = r
                .value
                .bytes()
                .map(|b| String::from_utf8_lossy(&b).into_owned())
                .unwrap_or_else(|e| format!("<{e}>"));
            (r.key, value)
        })
        .collect())
}

/// Whether the final records keep every acknowledged write: each key holds its last
/// acknowledged value, or a value written after it whose acknowledgement was lost. With
/// `clocks_skewed` the last write in real time may rightly lose to an earlier one stamped by a
/// clock that runs ahead, so then each key must hold one of the values written to it (a write
/// is not lost into nothing, and nothing else appears).
pub fn lost_writes(
    peer: &str,
    share: &str,
    final_records: &BTreeMap<String, String>,
    keys: &BTreeMap<String, KeyHistory>,
    clocks_skewed: bool,
    at_s: f64,
) -> Vec<Violation> {
    let mut out = Vec::new();
    for (key, history) in keys {
        let Some(acked) = &history.acked else {
            continue;
        };
        let now = final_records.get(key);
        let allowed = if clocks_skewed {
            history.written.iter().any(|v| v.as_ref() == now)
        } else {
            std::iter::once(acked)
                .chain(&history.unacked)
                .any(|v| v.as_ref() == now)
        };
        if !allowed {
            out.push(Violation {
                invariant: "lost_write",
                peer: peer.to_owned(),
                share: share.to_owned(),
                item: Some(key.clone()),
                detail: format!(
                    "holds {:?}; the last acknowledged write was {:?}",
                    now, acked
                ),
                at_s,
            });
        }
    }
    out
}

/// The first difference between two trees, for evidence.
pub fn first_difference(a: &Tree, b: &Tree) -> Option<String> {
    for (path, hash) in a {
        match b.get(path) {
            None => return Some(format!("{path} only on the first")),
            Some(other) if other != hash => return Some(format!("{path} differs")),
            _ => {}
        }
    }
    b.keys()
        .find(|path| !a.contains_key(*path))
        .map(|path| format!("{path} only on the second"))
}

/// Whether any file in `home` contains `marker`: data of a share at a peer that is not its
/// member. Reads every file (the lab's homes are small).
pub fn leaked(home: &Path, marker: &str) -> Option<String> {
    let needle = marker.as_bytes();
    let mut stack = vec![home.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            match entry.file_type() {
                Ok(t) if t.is_dir() => stack.push(path),
                Ok(t) if t.is_file() => {
                    if let Ok(bytes) = std::fs::read(&path)
                        && bytes.windows(needle.len()).any(|w| w == needle)
                    {
                        return Some(path.display().to_string());
                    }
                }
                _ => {}
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn history(acked: Option<&str>, unacked: &[Option<&str>]) -> KeyHistory {
        KeyHistory {
            acked: Some(acked.map(str::to_owned)),
            unacked: unacked.iter().map(|v| v.map(str::to_owned)).collect(),
            written: vec![Some("1".into()), Some("2".into()), None],
        }
    }

    #[test]
    fn the_last_acknowledged_write_or_a_later_unacknowledged_one_must_hold() {
        let keys: BTreeMap<String, KeyHistory> = [
            ("a".to_owned(), history(Some("2"), &[])),
            ("b".to_owned(), history(None, &[])),
            ("c".to_owned(), history(Some("1"), &[Some("3")])),
        ]
        .into();
        let fine: BTreeMap<String, String> =
            [("a".into(), "2".into()), ("c".into(), "3".into())].into();
        assert!(lost_writes("p", "s", &fine, &keys, false, 0.0).is_empty());
        let lost: BTreeMap<String, String> =
            [("a".into(), "1".into()), ("b".into(), "x".into())].into();
        let found = lost_writes("p", "s", &lost, &keys, false, 0.0);
        let items: Vec<_> = found.iter().map(|v| v.item.clone().unwrap()).collect();
        // a went back to an older value, b came back after its delete, c lost its value.
        assert_eq!(items, ["a", "b", "c"]);
        // With skewed clocks an older value may win, but not one never written, and c must
        // hold something it was given (its delete was among them).
        let found = lost_writes("p", "s", &lost, &keys, true, 0.0);
        let items: Vec<_> = found.iter().map(|v| v.item.clone().unwrap()).collect();
        assert_eq!(items, ["b"], "b holds a value never written");
    }

    #[test]
    fn trees_leave_the_daemons_own_files_out_and_name_their_first_difference() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join(".meshsync/versions")).unwrap();
        std::fs::write(dir.path().join(".meshsync-tmp-1"), "partial").unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        std::fs::write(dir.path().join("d/f"), "x").unwrap();
        let a = tree(dir.path());
        assert_eq!(a.keys().collect::<Vec<_>>(), ["d", "d/f"]);
        std::fs::write(dir.path().join("d/f"), "y").unwrap();
        let b = tree(dir.path());
        assert_eq!(first_difference(&a, &b).as_deref(), Some("d/f differs"));
        assert_eq!(first_difference(&a, &a), None);
    }

    #[test]
    fn a_marker_anywhere_in_a_home_is_found() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::fs::write(dir.path().join("state/db"), b"....meshsync-lab-1-docs:....").unwrap();
        assert!(leaked(dir.path(), "meshsync-lab-1-docs:").is_some());
        assert!(leaked(dir.path(), "meshsync-lab-1-notes:").is_none());
    }
}
