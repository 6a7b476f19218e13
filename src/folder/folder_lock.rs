//! One daemon per folder: a folder actor holds an exclusive `flock` on [`LOCK_FILE`] in the
//! folder's marker directory for as long as it syncs the folder.
//!
//! Two daemons (two homes: a system service and a shell with another `MESHSYNC_HOME`, say)
//! syncing one directory would each take the other's downloads for local edits and send them
//! as new versions, race each other's writes and each keep versions of what the other
//! replaced. The daemon that finds the lock held pauses the folder and says why in `status`;
//! it takes the lock once the other lets go (it stops, or leaves the share). The kernel drops
//! the lock when its holder exits, a crash included, so no stale lock ever needs removing.

use std::fs::{File, OpenOptions};
use std::io;
use std::path::Path;

use super::model::MARKER_DIR;
use super::write::sys::try_lock;

/// The lock's file, in the folder's marker directory (never synced; empty).
pub const LOCK_FILE: &str = "lock";

/// Why the folder's lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it: another daemon syncs this folder.
    #[error(
        "another meshsync daemon syncs this folder (it holds {MARKER_DIR}/{LOCK_FILE}); stop it or leave the share there"
    )]
    HeldElsewhere,
    /// The lock's file cannot be opened (no marker directory, say) or locked.
    #[error("cannot take {MARKER_DIR}/{LOCK_FILE}: {0}")]
    Io(#[from] io::Error),
}

/// The folder's lock, held until dropped.
#[derive(Debug)]
pub struct FolderLock {
    _file: File,
}

/// Whether a folder actor may write in its folder as far as the lock goes.
#[derive(Debug, Default)]
pub enum FolderHold {
    /// Not taken (yet, or let go while the folder is paused).
    #[default]
    NotHeld,
    /// Taken: no other daemon syncs the folder.
    Locked {
        /// Held for as long as it lives.
        _lock: FolderLock,
    },
    /// The folder's file system cannot lock (or the file cannot be opened for writing, as on a
    /// read-only mount): the folder is synced without the guard, said once in the log.
    Unlockable,
}

impl FolderLock {
    /// Takes the lock of the folder at `root`, without waiting. Blocking (an open and a
    /// `flock` on a local file).
    pub fn take(root: &Path) -> Result<FolderLock, LockError> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(root.join(MARKER_DIR).join(LOCK_FILE))?;
        if try_lock(&file)? {
            Ok(FolderLock { _file: file })
        } else {
            Err(LockError::HeldElsewhere)
        }
    }
}

/// Whether another daemon syncs the folder at `root` (holds its lock now). Blocking.
pub fn synced_elsewhere(root: &Path) -> bool {
    matches!(FolderLock::take(root), Err(LockError::HeldElsewhere))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_folder_is_locked_by_one_holder_at_a_time_until_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        assert!(
            matches!(FolderLock::take(root), Err(LockError::Io(_))),
            "no marker"
        );
        std::fs::create_dir(root.join(MARKER_DIR)).unwrap();
        let first = FolderLock::take(root).unwrap();
        // A second open file description: as another process's would be.
        let refused = FolderLock::take(root).unwrap_err();
        assert!(matches!(refused, LockError::HeldElsewhere), "{refused}");
        assert!(refused.to_string().contains("another meshsync daemon"));
        assert!(synced_elsewhere(root));
        drop(first);
        assert!(!synced_elsewhere(root));
        FolderLock::take(root).expect("free once its holder let go");
    }
}
