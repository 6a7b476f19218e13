//! The small operations on a folder that are not file assembly: directories, symlinks, removal,
//! metadata, and the steps every write shares (compare with [`Expect`], rename into place,
//! fsync the directory).

use std::fs::{self, FileTimes, Metadata, OpenOptions, Permissions};
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rustix::io::Errno;

use super::dir_sync::sync_dir;
use super::path::{ensure_parents, resolve, resolve_creating_parents};
use super::{
    Expect, MODE_MASK, PARENT_DIR_MODE, TEMP_ID_BYTES, WriteError, hex, io_error, is_disk_full, sys,
};
use crate::folder::model::{MAX_PATH_BYTES, TEMP_PREFIX};

/// Infix that marks a temp symlink, so it can never share a name with a temp file.
const TEMP_LINK_INFIX: &str = "link-";

/// What [`remove`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removed {
    /// A file was removed.
    File,
    /// A symlink was removed (not what it points to).
    Symlink,
    /// An empty directory was removed.
    Dir,
    /// Nothing was there.
    AlreadyAbsent,
    /// The directory is not empty (local files, ignored files, stale temp files) and was left in
    /// place; the caller decides whether that is a conflict.
    DirNotEmpty,
}

/// Creates the directory `rel` (and missing parents) with `mode & MODE_MASK`, or sets the mode of
/// the directory already there. Anything else at the path is a [`WriteError::Conflict`]. The
/// mode is applied as given, so a peer's read-only directory is read-only here: the engine
/// should fill a directory before applying a restrictive mode.
pub fn make_dir(root: &Path, rel: &str, mode: u32) -> Result<(), WriteError> {
    let path = resolve_creating_parents(root, rel)?;
    let created = match fs::DirBuilder::new().mode(PARENT_DIR_MODE).create(&path) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) => return Err(io_error("create directory", &path, e)),
    };
    let meta = fs::symlink_metadata(&path).map_err(|e| io_error("inspect", &path, e))?;
    if !meta.is_dir() {
        return Err(WriteError::Conflict { path });
    }
    if meta.permissions().mode() & 0o7777 != mode & MODE_MASK {
        fs::set_permissions(&path, Permissions::from_mode(mode & MODE_MASK))
            .map_err(|e| io_error("set mode of", &path, e))?;
    }
    if created {
        sync_dir(parent_of(&path))?;
    }
    Ok(())
}

/// Makes `rel` a symlink to `target`, atomically: the link is created under a temp name in the
/// same directory and renamed over whatever `expect` says is there (never over a directory).
/// The target string is stored as given and may point anywhere; nothing here follows it.
pub fn make_symlink(
    root: &Path,
    rel: &str,
    target: &str,
    expect: Expect,
) -> Result<(), WriteError> {
    let path = resolve(root, rel)?;
    let invalid = |reason| WriteError::InvalidLinkTarget {
        path: path.clone(),
        reason,
    };
    if target.is_empty() {
        return Err(invalid("empty"));
    }
    if target.contains('\0') {
        return Err(invalid("contains NUL"));
    }
    if target.len() > MAX_PATH_BYTES {
        return Err(invalid("too long"));
    }
    ensure_parents(root, rel)?;
    let mut hasher = blake3::Hasher::new();
    hasher.update(rel.as_bytes());
    hasher.update(&[0]);
    hasher.update(target.as_bytes());
    let temp = path.with_file_name(format!(
        "{TEMP_PREFIX}{TEMP_LINK_INFIX}{}",
        hex(&hasher.finalize().as_bytes()[..TEMP_ID_BYTES])
    ));
    // A leftover from a crash: it is ours and holds nothing.
    match fs::remove_file(&temp) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(io_error("remove old temp link", &temp, e)),
    }
    std::os::unix::fs::symlink(target, &temp).map_err(|e| io_error("create symlink", &temp, e))?;
    let placed = check_expect(&path, expect).and_then(|()| publish(&temp, &path, expect));
    if let Err(e) = placed {
        let _ = fs::remove_file(&temp);
        return Err(e);
    }
    sync_dir(parent_of(&path))
}

/// Removes the file or symlink at `rel` if it is as `expect` says (else [`WriteError::Conflict`]
/// and nothing is removed), or the directory at `rel` if it is empty (`expect` is not checked for
/// directories: their emptiness is the check; a non-empty one is reported as
/// [`Removed::DirNotEmpty`], never removed). Nothing there is [`Removed::AlreadyAbsent`].
pub fn remove(root: &Path, rel: &str, expect: Expect) -> Result<Removed, WriteError> {
    let path = resolve(root, rel)?;
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::AlreadyAbsent),
        Err(e) => return Err(io_error("inspect", &path, e)),
    };
    let removed = if meta.is_dir() {
        match fs::remove_dir(&path) {
            Ok(()) => Removed::Dir,
            Err(e) if sys::is_errno(&e, Errno::NOTEMPTY) || sys::is_errno(&e, Errno::EXIST) => {
                return Ok(Removed::DirNotEmpty);
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::AlreadyAbsent),
            Err(e) => return Err(io_error("remove directory", &path, e)),
        }
    } else {
        if !expect.holds(Some(&meta)) {
            return Err(WriteError::Conflict { path });
        }
        match fs::remove_file(&path) {
            Ok(()) if meta.file_type().is_symlink() => Removed::Symlink,
            Ok(()) => Removed::File,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Removed::AlreadyAbsent),
            Err(e) => return Err(io_error("remove", &path, e)),
        }
    };
    sync_removal(root, parent_of(&path))?;
    Ok(removed)
}

/// Fsyncs `dir`, which an entry was just removed from. A subtree's deletes run side by side, so
/// the removal of `dir` itself (emptied by ours) may have come first: then the nearest
/// ancestor still there is fsynced instead, which makes the removal of `dir`, and with it ours
/// before it, durable. Left as an error, the delete was retried and a warning said "cannot
/// sync" for a file that was gone.
fn sync_removal(root: &Path, dir: &Path) -> Result<(), WriteError> {
    let mut dir = dir;
    loop {
        match super::dir_sync::sync_dir_shared(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound && dir != root => match dir.parent() {
                Some(parent) if parent.starts_with(root) => dir = parent,
                _ => return Err(io_error("fsync directory", dir, e)),
            },
            Err(e) => return Err(io_error("fsync directory", dir, e)),
        }
    }
}

/// Sets the mode (`& MODE_MASK`) and mtime of whatever is at `rel`, for metadata-only changes.
/// Same as [`set_meta_checked`] with [`Expect::Anything`]; prefer that one for files, because
/// setting an mtime over an unnoticed local edit can hide the edit from a scan that compares
/// mtimes.
pub fn set_meta(root: &Path, rel: &str, mode: u32, mtime: (i64, u32)) -> Result<(), WriteError> {
    set_meta_checked(root, rel, mode, mtime, Expect::Anything)
}

/// Sets the mode (`& MODE_MASK`) and mtime at `rel` if it is as `expect` says (else
/// [`WriteError::Conflict`]; nothing there is always a conflict), and fsyncs them. For a symlink
/// only the mtime is set (Linux links have no mode of their own). For directories pass
/// [`Expect::Anything`]: their mtime moves with every entry.
pub fn set_meta_checked(
    root: &Path,
    rel: &str,
    mode: u32,
    mtime: (i64, u32),
    expect: Expect,
) -> Result<(), WriteError> {
    let path = resolve(root, rel)?;
    let modified = system_time(&path, mtime)?;
    let meta = match fs::symlink_metadata(&path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(WriteError::Conflict { path });
        }
        Err(e) => return Err(io_error("inspect", &path, e)),
    };
    if !expect.holds(Some(&meta)) {
        return Err(WriteError::Conflict { path });
    }
    if meta.file_type().is_symlink() {
        return sys::set_mtime_nofollow(&path, mtime)
            .map_err(|e| io_error("set mtime of", &path, e));
    }
    let flags =
        sys::O_NOFOLLOW | sys::O_NONBLOCK | if meta.is_dir() { sys::O_DIRECTORY } else { 0 };
    let perms = Permissions::from_mode(mode & MODE_MASK);
    match OpenOptions::new()
        .read(true)
        .custom_flags(flags)
        .open(&path)
    {
        Ok(file) => file
            .set_permissions(perms)
            .and_then(|()| file.set_times(FileTimes::new().set_modified(modified)))
            .and_then(|()| file.sync_all())
            .map_err(|e| io_error("set mode and mtime of", &path, e)),
        // Unreadable to us (e.g. mode 000 and not root): set by path, without fsync.
        Err(e) if e.kind() == io::ErrorKind::PermissionDenied => fs::set_permissions(&path, perms)
            .and_then(|()| sys::set_mtime_nofollow(&path, mtime))
            .map_err(|e| io_error("set mode and mtime of", &path, e)),
        Err(e) => Err(io_error("open", &path, e)),
    }
}

/// Fails with [`WriteError::Conflict`] unless what is at `path` is what `expect` says; a
/// directory is never expected to be replaced. For a [`publish`] with the same `expect` right
/// after: nothing expected is left to `publish`, which refuses atomically to replace anything
/// (checking here too cost an `lstat` per file received).
pub(super) fn check_expect(path: &Path, expect: Expect) -> Result<(), WriteError> {
    if expect == Expect::Absent {
        return Ok(());
    }
    let current = match fs::symlink_metadata(path) {
        Ok(meta) => Some(meta),
        Err(e) if e.kind() == io::ErrorKind::NotFound => None,
        Err(e) => return Err(io_error("inspect", path, e)),
    };
    if current.as_ref().is_some_and(Metadata::is_dir) || !expect.holds(current.as_ref()) {
        return Err(WriteError::Conflict {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Renames `from` over `to`; when `to` is expected absent, refuses atomically to replace anything
/// that appeared meanwhile.
pub(super) fn publish(from: &Path, to: &Path, expect: Expect) -> Result<(), WriteError> {
    let result = match expect {
        Expect::Absent => sys::rename_noreplace(from, to),
        Expect::Unchanged { .. } | Expect::Anything => fs::rename(from, to),
    };
    result.map_err(|e| match e.kind() {
        io::ErrorKind::AlreadyExists => WriteError::Conflict {
            path: to.to_path_buf(),
        },
        _ if is_disk_full(&e) => WriteError::DiskFull {
            path: to.to_path_buf(),
            source: e,
        },
        _ => io_error("rename into place", to, e),
    })
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

/// A `SystemTime` from seconds and nanoseconds since the epoch (negative seconds are before it).
pub(super) fn system_time(
    path: &Path,
    (secs, nanos): (i64, u32),
) -> Result<SystemTime, WriteError> {
    let time = if nanos >= 1_000_000_000 {
        None
    } else if secs >= 0 {
        UNIX_EPOCH.checked_add(Duration::new(secs.unsigned_abs(), nanos))
    } else {
        UNIX_EPOCH
            .checked_sub(Duration::from_secs(secs.unsigned_abs()))
            .and_then(|t| t.checked_add(Duration::from_nanos(u64::from(nanos))))
    };
    time.ok_or_else(|| WriteError::InvalidMtime {
        path: path.to_path_buf(),
        secs,
        nanos,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::write::testkit::*;
    use std::os::unix::fs::MetadataExt;

    #[test]
    fn remove_refuses_changed_files_and_non_empty_dirs() {
        let root = folder();
        let r = root.path();
        fs::write(r.join("f"), b"v1").unwrap();
        let expect = Expect::current(&r.join("f")).unwrap();
        fs::write(r.join("f"), b"v2 local").unwrap();
        assert!(matches!(
            remove(r, "f", expect),
            Err(WriteError::Conflict { .. })
        ));
        assert!(r.join("f").exists());
        assert!(matches!(
            remove(r, "f", Expect::Absent),
            Err(WriteError::Conflict { .. })
        ));
        let expect = Expect::current(&r.join("f")).unwrap();
        assert_eq!(remove(r, "f", expect).unwrap(), Removed::File);
        assert!(!r.join("f").exists());
        assert_eq!(remove(r, "f", expect).unwrap(), Removed::AlreadyAbsent);

        fs::create_dir_all(r.join("d/e")).unwrap();
        assert_eq!(
            remove(r, "d", Expect::Anything).unwrap(),
            Removed::DirNotEmpty
        );
        assert!(r.join("d/e").exists());
        assert_eq!(remove(r, "d/e", Expect::Anything).unwrap(), Removed::Dir);

        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("keep"), b"x").unwrap();
        std::os::unix::fs::symlink(outside.path().join("keep"), r.join("l")).unwrap();
        let expect = Expect::current(&r.join("l")).unwrap();
        assert_eq!(remove(r, "l", expect).unwrap(), Removed::Symlink);
        assert!(outside.path().join("keep").exists());
    }

    /// A subtree's deletes run side by side: the directory a file was removed from may itself
    /// be removed before the file's delete fsyncs it. The nearest ancestor still there is
    /// fsynced instead (it was an error, and the delete was retried with a warning); the
    /// folder's root gone is an error.
    #[test]
    fn a_removal_whose_directory_went_too_fsyncs_the_nearest_ancestor() {
        use crate::folder::write::dir_sync::tests::{FSYNCS, lock};
        let root = folder();
        let r = root.path();
        fs::create_dir_all(r.join("a/b/c")).unwrap();
        fs::write(r.join("a/b/c/f"), b"x").unwrap();
        assert_eq!(
            remove(r, "a/b/c/f", Expect::Anything).unwrap(),
            Removed::File
        );
        fs::remove_dir(r.join("a/b/c")).unwrap();
        fs::remove_dir(r.join("a/b")).unwrap();
        sync_removal(r, &r.join("a/b/c")).unwrap();
        assert!(
            lock(&FSYNCS).iter().any(|(dir, _, _)| *dir == r.join("a")),
            "the nearest directory still there was not fsynced"
        );

        let gone = r.join("gone");
        fs::create_dir(&gone).unwrap();
        fs::remove_dir(&gone).unwrap();
        let error = sync_removal(&gone, &gone.join("d")).unwrap_err();
        assert!(error.to_string().contains("fsync directory"), "{error}");
    }

    #[test]
    fn directories_are_made_with_their_mode_and_never_over_files() {
        let root = folder();
        let r = root.path();
        make_dir(r, "a/b/c", 0o750).unwrap();
        assert_eq!(
            fs::metadata(r.join("a/b/c")).unwrap().permissions().mode() & 0o7777,
            0o750
        );
        make_dir(r, "a/b/c", 0o700).unwrap();
        assert_eq!(
            fs::metadata(r.join("a/b/c")).unwrap().permissions().mode() & 0o7777,
            0o700
        );
        fs::write(r.join("file"), b"x").unwrap();
        assert!(matches!(
            make_dir(r, "file", 0o755),
            Err(WriteError::Conflict { .. })
        ));
        set_meta(r, "a/b", 0o711, (1_000_000_000, 42)).unwrap();
        let meta = fs::metadata(r.join("a/b")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o711);
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_000_000_000, 42));
    }

    #[test]
    fn symlinks_are_replaced_atomically_and_only_as_expected() {
        let root = folder();
        let r = root.path();
        make_symlink(r, "sub/l", "../target", Expect::Absent).unwrap();
        assert_eq!(
            fs::read_link(r.join("sub/l")).unwrap(),
            Path::new("../target")
        );
        assert!(matches!(
            make_symlink(r, "sub/l", "other", Expect::Absent),
            Err(WriteError::Conflict { .. })
        ));
        let expect = Expect::current(&r.join("sub/l")).unwrap();
        make_symlink(r, "sub/l", "/etc/passwd", expect).unwrap();
        assert_eq!(
            fs::read_link(r.join("sub/l")).unwrap(),
            Path::new("/etc/passwd")
        );
        assert!(temps_in(&r.join("sub")).is_empty());
        assert!(matches!(
            make_symlink(r, "sub/m", "", Expect::Absent),
            Err(WriteError::InvalidLinkTarget { .. })
        ));
        // Metadata of a link is its own, not its target's.
        set_meta(r, "sub/l", 0o600, (12_345, 6)).unwrap();
        let meta = fs::symlink_metadata(r.join("sub/l")).unwrap();
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (12_345, 6));
    }

    #[test]
    fn set_meta_checked_refuses_a_changed_file() {
        let root = folder();
        let r = root.path();
        fs::write(r.join("f"), b"one").unwrap();
        let expect = Expect::current(&r.join("f")).unwrap();
        set_meta_checked(r, "f", 0o640, (5, 0), expect).unwrap();
        let meta = fs::metadata(r.join("f")).unwrap();
        assert_eq!(
            (meta.permissions().mode() & 0o777, meta.mtime()),
            (0o640, 5)
        );
        // The old expectation no longer holds: the mtime moved.
        assert!(matches!(
            set_meta_checked(r, "f", 0o600, (6, 0), expect),
            Err(WriteError::Conflict { .. })
        ));
        assert!(matches!(
            set_meta(r, "missing", 0o600, (6, 0)),
            Err(WriteError::Conflict { .. })
        ));
        assert!(matches!(
            set_meta(r, "f", 0o600, (6, 1_000_000_000)),
            Err(WriteError::InvalidMtime { .. })
        ));
    }
}
