//! The folder's incoming directory, `.meshsync/incoming`: where received small files are
//! assembled before they are renamed into place.
//!
//! Why not beside the target, as big files are: the folder's watcher does not watch the marker
//! directory, so creating, writing, marking and dating a temp file there wakes nobody, and only
//! the rename into place is an event (about six inotify events fewer per received file, each
//! read, decoded and dropped by the watcher's thread). And a small file's temp file is never
//! seen in the user's directories, not even hidden. Big files stay beside their target, where an
//! interrupted download is resumed.
//!
//! A rename cannot cross file systems or mounts: a target whose directory is on another device
//! than the incoming directory gets its temp file beside it, and a rename that fails across
//! mounts all the same (a bind mount of the same file system inside the folder) moves the
//! sealed file beside its target and publishes it from there
//! ([`Sealed::publish`](super::Sealed::publish)); that folder then assembles beside the target
//! for the rest of the daemon's life.

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use super::dir_sync::sync_dir;
use crate::folder::model::MARKER_DIR;

/// The incoming directory's name inside the marker directory.
pub const INCOMING_DIR: &str = "incoming";

/// Mode of the incoming directory: only the daemon's user reads what is still arriving.
const INCOMING_DIR_MODE: u32 = 0o700;

/// Most folders remembered as unable to rename out of their incoming directory (beyond it, the
/// first ones are forgotten and would fail over once more). One per share at most in practice.
const UNUSABLE_MAX: usize = 1024;

/// Incoming directories a rename out of failed across mounts: their folders assemble beside the
/// target from then on.
static UNUSABLE: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());

/// A folder's incoming directory, ready for temp files, with the devices that say where it can
/// be used.
#[derive(Debug, Clone)]
pub struct Incoming {
    dir: PathBuf,
    dev: u64,
    root_dev: u64,
}

impl Incoming {
    /// The incoming directory of the folder at `root`, made if missing. `None` when it cannot be
    /// used: the marker directory is gone (never made again here: its absence pauses the folder),
    /// the path is not a plain directory, or a rename out of it failed across mounts before.
    pub fn of(root: &Path) -> Option<Incoming> {
        let marker = root.join(MARKER_DIR);
        let dir = marker.join(INCOMING_DIR);
        if is_unusable(&dir) {
            return None;
        }
        match fs::DirBuilder::new().mode(INCOMING_DIR_MODE).create(&dir) {
            // Made durable like any parent of a file that is published from it.
            Ok(()) => sync_dir(&marker).ok()?,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(_) => return None,
        }
        let meta = fs::symlink_metadata(&dir).ok()?;
        if !meta.file_type().is_dir() {
            return None;
        }
        let root_dev = fs::symlink_metadata(root).ok()?.dev();
        Some(Incoming {
            dir,
            dev: meta.dev(),
            root_dev,
        })
    }

    /// Where the temp file `name` goes for a target whose directory is on device `parent_dev`
    /// (`None`: the folder's root): here if it is this directory's device, else `None` (beside
    /// the target).
    pub(super) fn temp_path(&self, parent_dev: Option<u64>, name: &str) -> Option<PathBuf> {
        (parent_dev.unwrap_or(self.root_dev) == self.dev).then(|| self.dir.join(name))
    }
}

/// Notes that a rename out of the incoming directory holding `temp` failed across mounts.
pub(super) fn mark_unusable(temp: &Path) {
    let Some(dir) = temp.parent() else {
        return;
    };
    let mut unusable = UNUSABLE.lock().unwrap_or_else(PoisonError::into_inner);
    if !unusable.iter().any(|d| d == dir) {
        if unusable.len() >= UNUSABLE_MAX {
            unusable.remove(0);
        }
        unusable.push(dir.to_path_buf());
    }
}

fn is_unusable(dir: &Path) -> bool {
    let unusable = UNUSABLE.lock().unwrap_or_else(PoisonError::into_inner);
    unusable.iter().any(|d| d == dir)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::write::testkit::folder;

    #[test]
    fn made_inside_the_marker_directory_never_making_the_marker() {
        let root = folder();
        let incoming = Incoming::of(root.path()).expect("usable");
        let dir = root.path().join(MARKER_DIR).join(INCOMING_DIR);
        assert!(dir.is_dir());
        let temp = incoming.temp_path(None, "t").unwrap();
        assert_eq!(temp, dir.join("t"));
        // On another device than the target's directory: beside the target.
        assert_eq!(incoming.temp_path(Some(incoming.dev + 1), "t"), None);

        fs::remove_dir_all(root.path().join(MARKER_DIR)).unwrap();
        assert!(Incoming::of(root.path()).is_none());
        assert!(!root.path().join(MARKER_DIR).exists(), "marker made again");
    }

    #[test]
    fn a_symlink_in_its_place_or_a_failed_rename_makes_it_unusable() {
        let root = folder();
        let elsewhere = tempfile::tempdir().unwrap();
        let dir = root.path().join(MARKER_DIR).join(INCOMING_DIR);
        std::os::unix::fs::symlink(elsewhere.path(), &dir).unwrap();
        assert!(Incoming::of(root.path()).is_none());
        fs::remove_file(&dir).unwrap();

        let incoming = Incoming::of(root.path()).expect("usable");
        mark_unusable(&incoming.temp_path(None, "t").unwrap());
        assert!(Incoming::of(root.path()).is_none());
    }
}
