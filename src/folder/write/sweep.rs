//! Removing the temp files that crashes and abandoned downloads leave behind, without ever
//! touching one that an open [`Assembly`](super::Assembly) still holds.

use std::ffi::OsStr;
use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::warn;

use super::incoming::INCOMING_DIR;
use super::path::check_root;
use super::{WriteError, io_error, sys};
use crate::folder::model::{MARKER_DIR, MAX_PATH_BYTES, TEMP_PREFIX};

/// Deepest directory nesting [`sweep_temp_files`] walks: a path of [`MAX_PATH_BYTES`] cannot nest
/// deeper than this (each level takes at least two bytes, `x/`).
const SWEEP_MAX_DEPTH: usize = MAX_PATH_BYTES / 2;

/// Removes our temp files (names starting with [`TEMP_PREFIX`], files or links) anywhere in the
/// folder and in its incoming directory ([`INCOMING_DIR`]) whose mtime is older than `older_than`: leftovers of crashes or abandoned downloads
/// that no assembly will resume. A temp file that an open [`Assembly`](super::Assembly) holds is
/// never removed, whatever its age. Does not follow symlinks or enter the marker directory.
/// Returns how many were removed; unreadable subdirectories are logged and skipped.
pub fn sweep_temp_files(root: &Path, older_than: Duration) -> Result<usize, WriteError> {
    check_root(root)?;
    let cutoff = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(UNIX_EPOCH);
    let mut removed = 0;
    let mut stack = vec![(root.to_path_buf(), 0usize)];
    // Small files' temp files, in the marker directory (which is not walked otherwise). Only a
    // plain directory is listed: a symlink in its place is not followed.
    let incoming = root.join(MARKER_DIR).join(INCOMING_DIR);
    if fs::symlink_metadata(&incoming).is_ok_and(|meta| meta.is_dir()) {
        stack.push((incoming, SWEEP_MAX_DEPTH));
    }
    while let Some((dir, depth)) = stack.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) if depth == 0 => return Err(io_error("list", &dir, e)),
            Err(e) => {
                warn!(path = %dir.display(), error = %e, "cannot list directory; skipped");
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(e) => {
                    warn!(path = %dir.display(), error = %e, "cannot list directory entry");
                    continue;
                }
            };
            let name = entry.file_name();
            let path = entry.path();
            let Ok(kind) = entry.file_type() else {
                continue;
            };
            if name.as_bytes().starts_with(TEMP_PREFIX.as_bytes()) && !kind.is_dir() {
                match remove_if_stale(&path, cutoff) {
                    Ok(true) => removed += 1,
                    Ok(false) => {}
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot remove stale temp file")
                    }
                }
            } else if kind.is_dir()
                && !(depth == 0 && name == OsStr::new(MARKER_DIR))
                && depth < SWEEP_MAX_DEPTH
            {
                stack.push((path, depth + 1));
            }
        }
    }
    Ok(removed)
}

/// Removes one temp file or link if it is older than `cutoff` and no assembly holds it.
fn remove_if_stale(path: &Path, cutoff: SystemTime) -> io::Result<bool> {
    let meta = fs::symlink_metadata(path)?;
    if meta.modified()? >= cutoff {
        return Ok(false);
    }
    if meta.file_type().is_symlink() {
        fs::remove_file(path)?;
        return Ok(true);
    }
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(sys::O_NOFOLLOW | sys::O_NONBLOCK)
        .open(path)?;
    if !sys::try_lock(&file)? {
        return Ok(false);
    }
    // Removed while we hold the lock: an assembly opening it now either fails to lock it or
    // notices that the path no longer names the file it locked.
    fs::remove_file(path)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::write::temp_name;
    use crate::folder::write::testkit::*;
    use std::fs::{File, FileTimes};

    #[test]
    fn stale_temp_files_are_swept_but_live_ones_kept() {
        let root = folder();
        let r = root.path();
        let old = SystemTime::now() - Duration::from_secs(7200);
        let set_old = |p: &Path| {
            File::options()
                .write(true)
                .open(p)
                .unwrap()
                .set_times(FileTimes::new().set_modified(old))
                .unwrap()
        };
        fs::create_dir_all(r.join("a/b")).unwrap();
        let incoming = r.join(MARKER_DIR).join(INCOMING_DIR);
        fs::create_dir(&incoming).unwrap();
        let stale = [
            r.join(format!("{TEMP_PREFIX}1")),
            r.join(format!("a/b/{TEMP_PREFIX}2")),
            incoming.join(format!("{TEMP_PREFIX}5")),
        ];
        for p in &stale {
            fs::write(p, b"x").unwrap();
            set_old(p);
        }
        let fresh = r.join(format!("a/{TEMP_PREFIX}3"));
        fs::write(&fresh, b"x").unwrap();
        let fresh_incoming = incoming.join(format!("{TEMP_PREFIX}6"));
        fs::write(&fresh_incoming, b"x").unwrap();
        let mine = r.join("a/keep.txt");
        fs::write(&mine, b"x").unwrap();
        set_old(&mine);
        let link = r.join(format!("{TEMP_PREFIX}link-4"));
        std::os::unix::fs::symlink("t", &link).unwrap();
        sys::set_mtime_nofollow(&link, (1, 0)).unwrap();
        // An assembly in progress whose temp file is old: held, so kept.
        let cut = sample();
        let asm = cut.open(r, "held").unwrap();
        let held = r.join(temp_name("held", &hash(&cut.data)));
        set_old(&held);

        assert_eq!(sweep_temp_files(r, Duration::from_secs(3600)).unwrap(), 4);
        assert!(stale.iter().all(|p| !p.exists()));
        assert!(fs::symlink_metadata(&link).is_err());
        assert!(fresh.exists() && mine.exists() && held.exists() && fresh_incoming.exists());
        drop(asm);
        assert_eq!(sweep_temp_files(r, Duration::from_secs(3600)).unwrap(), 1);
        assert!(!held.exists());
    }
}
