//! The trash: files deleted or replaced by peers are kept for a while inside the marker directory,
//! where their chunks still serve renames and a user can get them back.

use std::path::Path;
use std::time::Duration;

use super::write::{self, Expect};

/// Where deleted files go for [`TRASH_RETENTION`], inside the marker directory.
pub const TRASH_DIR: &str = ".meshsync/trash";
/// How long deleted files are kept: their chunks serve renames and moves (a move is a delete
/// plus a create that may be applied in either order), and a user can get a file back.
pub const TRASH_RETENTION: Duration = Duration::from_secs(3600);

/// Moves a file that a peer deleted into the trash instead of unlinking it, if it is still what
/// we last synced. Returns its path relative to the root.
pub(super) fn move_to_trash(
    root: &Path,
    rel: &str,
    expect: Expect,
) -> Result<String, write::WriteError> {
    let target = write::resolve(root, rel).map_err(write::WriteError::Path)?;
    let current = match std::fs::symlink_metadata(&target) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Ok(String::new());
        }
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
    let trash = root.join(TRASH_DIR);
    std::fs::create_dir_all(&trash).map_err(|source| write::WriteError::Io {
        action: "create",
        path: trash.clone(),
        source,
    })?;
    let trash_rel = trash_name(rel);
    std::fs::rename(&target, root.join(&trash_rel)).map_err(|source| write::WriteError::Io {
        action: "move to trash",
        path: target,
        source,
    })?;
    Ok(trash_rel)
}

/// Hard-links the current file at `rel` into the trash; returns the trash path, or `None` if
/// that was not possible (the file is kept by the writer's checks either way).
pub(super) fn link_to_trash(root: &Path, rel: &str) -> Option<String> {
    let target = write::resolve(root, rel).ok()?;
    let trash = root.join(TRASH_DIR);
    std::fs::create_dir_all(&trash).ok()?;
    let trash_rel = trash_name(rel);
    std::fs::hard_link(&target, root.join(&trash_rel)).ok()?;
    Some(trash_rel)
}

pub(super) fn trash_name(rel: &str) -> String {
    let name = Path::new(rel)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let tag = &blake3::hash(rel.as_bytes()).to_hex()[..8];
    format!("{TRASH_DIR}/{nanos}-{tag}-{name}")
}

/// Deletes trashed files, oldest first, until about `wanted` bytes are freed (a file that still
/// has another link frees nothing and is kept); returns the bytes freed. For a full disk:
/// the trash must never stand in the way of receiving.
pub(super) fn free_space(root: &Path, wanted: u64) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let Ok(entries) = std::fs::read_dir(root.join(TRASH_DIR)) else {
        return 0;
    };
    // Names start with the time they were trashed, in nanoseconds: name order is age order.
    let mut files: Vec<(std::ffi::OsString, std::path::PathBuf)> = entries
        .flatten()
        .map(|e| (e.file_name(), e.path()))
        .collect();
    files.sort_by(|a, b| {
        let key = |name: &std::ffi::OsString| {
            let name = name.to_string_lossy();
            let nanos = name.split('-').next().and_then(|n| n.parse::<u128>().ok());
            (nanos.unwrap_or(0), name.into_owned())
        };
        key(&a.0).cmp(&key(&b.0))
    });
    let mut freed = 0;
    for (_, path) in files {
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

/// Deletes trashed files older than [`TRASH_RETENTION`].
pub(super) fn purge_trash(root: &Path) {
    let Ok(entries) = std::fs::read_dir(root.join(TRASH_DIR)) else {
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
