//! Versions: what a peer's change deleted or replaced here is kept, under its own relative path,
//! in `.meshsync/versions/`, so nothing a peer sends ever destroys the only copy of a file.
//!
//! A kept copy is `.meshsync/versions/<path>~<UTC time, 20261202T173000.123Z>`: listed with
//! `meshsync share versions`, put back with `meshsync share restore` (as a new local edit that
//! syncs). Kept copies also serve their chunks to renames and moves (a move is a delete and a
//! create, applied in either order). What stays is the share's `versions` policy
//! ([`VersionsPolicy`]): pruned at every full rescan, and the oldest go first whenever the disk
//! runs short ([`free_space`]) — versions never stand in the way of receiving.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use super::write::{self, Expect};
use crate::config::{VersionsKind, VersionsPolicy};

/// Where kept versions go, inside the marker directory.
pub const VERSIONS_DIR: &str = ".meshsync/versions";
/// Where meshsync before versions kept deleted files (flat names): still emptied after an hour.
pub const LEGACY_TRASH_DIR: &str = ".meshsync/trash";
/// How long the `trash` policy keeps a version.
pub const TRASH_RETENTION: Duration = Duration::from_secs(3600);

/// One kept version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Version {
    /// The file's path in the folder.
    pub path: String,
    /// When it was replaced or deleted (RFC 3339, UTC).
    pub at: String,
    /// Its size in bytes.
    pub size: u64,
    /// Where it is kept, relative to the folder.
    pub kept_at: String,
    /// `at`, for sorting and pruning.
    #[serde(skip)]
    pub at_time: Option<SystemTime>,
}

/// Moves a file a peer deleted into the versions, if it is still what we last synced. Returns
/// where it is kept (relative to the root), or `""` if it was already gone.
pub(super) fn keep_deleted(
    root: &Path,
    rel: &str,
    expect: Expect,
) -> Result<String, write::WriteError> {
    let target = write::resolve(root, rel).map_err(write::WriteError::Path)?;
    let current = match std::fs::symlink_metadata(&target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(String::new()),
        Err(source) => {
            return Err(write::WriteError::Io {
                action: "inspect",
                path: target,
                source,
            });
        }
    };
    if expect != Expect::Anything && Expect::of(&current) != expect {
        return Err(write::WriteError::Conflict { path: target });
    }
    let kept = version_name(rel, SystemTime::now());
    let to = root.join(&kept);
    create_parent(&to)?;
    std::fs::rename(&target, &to).map_err(|source| write::WriteError::Io {
        action: "keep as a version",
        path: target,
        source,
    })?;
    Ok(kept)
}

/// Hard-links the file at `rel`, about to be replaced, into the versions; where it is kept, or
/// `None` if that was not possible (the writer's checks keep the file either way).
pub(super) fn keep_replaced(root: &Path, rel: &str) -> Option<String> {
    let target = write::resolve(root, rel).ok()?;
    let kept = version_name(rel, SystemTime::now());
    let to = root.join(&kept);
    create_parent(&to).ok()?;
    std::fs::hard_link(&target, &to).ok()?;
    Some(kept)
}

fn create_parent(path: &Path) -> Result<(), write::WriteError> {
    let parent = write::parent_of(path);
    std::fs::create_dir_all(parent).map_err(|source| write::WriteError::Io {
        action: "create",
        path: parent.to_owned(),
        source,
    })
}

/// `VERSIONS_DIR/<rel>~<time>`.
pub(super) fn version_name(rel: &str, at: SystemTime) -> String {
    format!("{VERSIONS_DIR}/{rel}~{}", stamp(at))
}

/// `20261202T173000.123Z`: sorts like the time, and is a plain file-name suffix.
fn stamp(at: SystemTime) -> String {
    crate::timefmt::compact(at)
}

fn parse_stamp(text: &str) -> Option<SystemTime> {
    // Fixed width: YYYYMMDD T HHMMSS . mmm Z.
    let bytes = text.as_bytes();
    if bytes.len() != 20 || bytes[8] != b'T' || bytes[15] != b'.' || bytes[19] != b'Z' {
        return None;
    }
    let num = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let month = time::Month::try_from(u8::try_from(num(4..6)?).ok()?).ok()?;
    let date = time::Date::from_calendar_date(
        i32::try_from(num(0..4)?).ok()?,
        month,
        u8::try_from(num(6..8)?).ok()?,
    )
    .ok()?;
    let time_of_day = time::Time::from_hms_milli(
        u8::try_from(num(9..11)?).ok()?,
        u8::try_from(num(11..13)?).ok()?,
        u8::try_from(num(13..15)?).ok()?,
        u16::try_from(num(16..19)?).ok()?,
    )
    .ok()?;
    Some(
        time::PrimitiveDateTime::new(date, time_of_day)
            .assume_utc()
            .into(),
    )
}

fn rfc3339(at: SystemTime) -> String {
    time::OffsetDateTime::from(at)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Every kept version (of `only`, a path in the folder, if given), oldest first.
pub fn list(root: &Path, only: Option<&str>) -> Vec<Version> {
    let base = root.join(VERSIONS_DIR);
    let mut out = Vec::new();
    let mut dirs = vec![base.clone()];
    while let Some(dir) = dirs.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let Ok(meta) = entry.metadata() else {
                continue;
            };
            let path = entry.path();
            if meta.is_dir() {
                dirs.push(path);
                continue;
            }
            let Some(version) = describe(&base, &path, meta.len()) else {
                continue;
            };
            if only.is_none_or(|only| only == version.path) {
                out.push(version);
            }
        }
    }
    out.sort_by(|a, b| (a.at_time, &a.path).cmp(&(b.at_time, &b.path)));
    out
}

fn describe(base: &Path, file: &Path, size: u64) -> Option<Version> {
    let rel = file.strip_prefix(base).ok()?.to_str()?;
    let (path, stamp) = rel.rsplit_once('~')?;
    let at = parse_stamp(stamp)?;
    Some(Version {
        path: path.to_owned(),
        at: rfc3339(at),
        size,
        kept_at: format!("{VERSIONS_DIR}/{rel}"),
        at_time: Some(at),
    })
}

/// Which of `versions` (oldest first) `policy` no longer keeps at `now`, on a file system of
/// `fs_size` bytes: indices into `versions`.
pub(super) fn to_prune(
    versions: &[Version],
    policy: &VersionsPolicy,
    now: SystemTime,
    fs_size: u64,
) -> Vec<usize> {
    let age = |v: &Version| {
        v.at_time
            .and_then(|at| now.duration_since(at).ok())
            .unwrap_or_default()
    };
    let max_age = match policy.kind {
        VersionsKind::None => Duration::ZERO,
        VersionsKind::Trash => TRASH_RETENTION,
        VersionsKind::Simple | VersionsKind::Staggered => policy.max_age,
    };
    let mut gone: Vec<bool> = versions
        .iter()
        .map(|v| policy.kind == VersionsKind::None || age(v) > max_age)
        .collect();
    if policy.kind == VersionsKind::Staggered {
        // Per path, newest first: keep every version of the last hour, one per hour for a day,
        // then one per day.
        let mut kept_buckets = std::collections::HashSet::new();
        for (i, v) in versions.iter().enumerate().rev() {
            let secs = age(v).as_secs();
            let bucket = match secs {
                s if s < 3600 => continue,
                s if s < 86_400 => (0, s / 3600),
                s => (1, s / 86_400),
            };
            if !kept_buckets.insert((v.path.as_str(), bucket)) {
                gone[i] = true;
            }
        }
    }
    // The size cap, oldest first.
    let cap = fs_size / 100 * u64::from(policy.max_percent);
    let mut total: u64 = versions
        .iter()
        .zip(&gone)
        .filter(|(_, g)| !**g)
        .map(|(v, _)| v.size)
        .sum();
    for (i, v) in versions.iter().enumerate() {
        if total <= cap {
            break;
        }
        if !gone[i] {
            gone[i] = true;
            total -= v.size;
        }
    }
    (0..versions.len()).filter(|i| gone[*i]).collect()
}

/// Applies the policy: removes the versions it no longer keeps, and legacy trash files older
/// than [`TRASH_RETENTION`]. Returns how many were removed.
pub(super) fn prune(root: &Path, policy: &VersionsPolicy) -> usize {
    purge_legacy_trash(root);
    let versions = list(root, None);
    if versions.is_empty() {
        return 0;
    }
    let fs_size = write::disk_space(root).map_or(u64::MAX, |space| space.total);
    let doomed = to_prune(&versions, policy, SystemTime::now(), fs_size);
    doomed
        .iter()
        .filter(|i| std::fs::remove_file(root.join(&versions[**i].kept_at)).is_ok())
        .count()
}

fn purge_legacy_trash(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join(LEGACY_TRASH_DIR)) else {
        return;
    };
    for entry in entries.flatten() {
        let old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > TRASH_RETENTION);
        if old {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

/// Removes versions (and legacy trash), oldest first, until about `wanted` bytes are freed (a
/// file that still has another link frees nothing and is kept); returns the bytes freed.
pub(super) fn free_space(root: &Path, wanted: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let legacy: Vec<PathBuf> = std::fs::read_dir(root.join(LEGACY_TRASH_DIR))
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let kept = list(root, None).into_iter().map(|v| root.join(v.kept_at));
    let mut freed = 0;
    for path in legacy.into_iter().chain(kept) {
        if freed >= wanted {
            break;
        }
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        if meta.nlink() > 1 || !meta.is_file() {
            continue;
        }
        if std::fs::remove_file(&path).is_ok() {
            freed += meta.blocks() * 512;
        }
    }
    freed
}

/// Why a version cannot be restored.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    /// No kept version of the path (at or before the time asked).
    #[error("no kept version of `{path}`{}", at.as_ref().map(|t| format!(" at or before {t}")).unwrap_or_default())]
    NoVersion {
        /// The path asked for.
        path: String,
        /// The time asked for.
        at: Option<String>,
    },
    /// Writing it back failed.
    #[error(transparent)]
    Write(#[from] write::WriteError),
}

/// Puts back the newest version of `rel` kept at or before `at` (any, without `at`), as a new
/// local edit: copied to a temp file beside the path and renamed over it, after the current
/// file (if any) is itself kept as a version. Returns the version restored.
pub fn restore(root: &Path, rel: &str, at: Option<SystemTime>) -> Result<Version, RestoreError> {
    let version = list(root, Some(rel))
        .into_iter()
        .rev()
        .find(|v| at.is_none_or(|at| v.at_time.is_some_and(|t| t <= at)))
        .ok_or_else(|| RestoreError::NoVersion {
            path: rel.to_owned(),
            at: at.map(rfc3339),
        })?;
    let target = write::resolve_creating_parents(root, rel)?;
    let io = |action: &'static str, path: &Path| {
        let path = path.to_owned();
        move |source| write::WriteError::Io {
            action,
            path,
            source,
        }
    };
    // A temp name the scanner ignores and the sweep knows.
    let tag = *blake3::hash(version.kept_at.as_bytes()).as_bytes();
    let temp = target.with_file_name(write::temp_name(rel, &tag));
    std::fs::copy(root.join(&version.kept_at), &temp).map_err(io("copy", &temp))?;
    std::fs::File::open(&temp)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", &temp))?;
    if target.exists() {
        keep_replaced(root, rel);
    }
    std::fs::rename(&temp, &target).map_err(io("rename", &target))?;
    write::sync_dir(write::parent_of(&target))?;
    Ok(version)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(kind: VersionsKind) -> VersionsPolicy {
        VersionsPolicy {
            kind,
            max_age: Duration::from_secs(30 * 86_400),
            max_percent: 10,
        }
    }

    fn version(path: &str, age: Duration, size: u64, now: SystemTime) -> Version {
        let at = now - age;
        Version {
            path: path.into(),
            at: rfc3339(at),
            size,
            kept_at: version_name(path, at),
            at_time: Some(at),
        }
    }

    #[test]
    fn names_keep_the_path_and_time_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join(".meshsync")).unwrap();
        std::fs::create_dir_all(root.join("d/sub")).unwrap();
        std::fs::write(root.join("d/sub/f.txt"), b"one").unwrap();
        let kept = keep_deleted(root, "d/sub/f.txt", Expect::Anything).unwrap();
        assert!(
            kept.starts_with(".meshsync/versions/d/sub/f.txt~"),
            "{kept}"
        );
        let listed = list(root, Some("d/sub/f.txt"));
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].path, "d/sub/f.txt");
        assert_eq!(listed[0].size, 3);
        assert!(list(root, Some("other")).is_empty());
        // Restored as a file at its path again; the version stays listed.
        let restored = restore(root, "d/sub/f.txt", None).unwrap();
        assert_eq!(restored.kept_at, kept);
        assert_eq!(std::fs::read(root.join("d/sub/f.txt")).unwrap(), b"one");
        assert!(matches!(
            restore(root, "missing", None),
            Err(RestoreError::NoVersion { .. })
        ));
    }

    #[test]
    fn policies_prune_by_age_thinning_and_size() {
        let now = SystemTime::now();
        let hour = Duration::from_secs(3600);
        let day = hour * 24;
        // Oldest first, as `list` gives them.
        let versions = vec![
            version("a", day * 40, 10, now),
            version("a", day * 3 + hour, 10, now),
            version("a", day * 3, 10, now),
            version("a", hour * 5 + Duration::from_secs(60), 10, now),
            version("a", hour * 5, 10, now),
            version("a", Duration::from_secs(60), 10, now),
        ];
        let big = u64::MAX / 2;
        assert_eq!(
            to_prune(&versions, &policy(VersionsKind::None), now, big),
            [0, 1, 2, 3, 4, 5]
        );
        assert_eq!(
            to_prune(&versions, &policy(VersionsKind::Trash), now, big),
            [0, 1, 2, 3, 4]
        );
        assert_eq!(
            to_prune(&versions, &policy(VersionsKind::Simple), now, big),
            [0]
        );
        // Staggered: of two in the same day bucket and two in the same hour bucket, the older
        // goes.
        assert_eq!(
            to_prune(&versions, &policy(VersionsKind::Staggered), now, big),
            [0, 1, 3]
        );
        // Size: 10 % of 300 bytes keeps 30 of the 50 the simple policy keeps, newest.
        assert_eq!(
            to_prune(&versions, &policy(VersionsKind::Simple), now, 300),
            [0, 1, 2]
        );
    }
}
