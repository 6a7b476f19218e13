//! One daemon per folder: a folder actor holds a lock named after the folder's directory (its
//! device and inode) for as long as it may write there.
//!
//! Two daemons (two homes: a system service and a shell with another `MESHSYNC_HOME`, say)
//! syncing one directory would each take the other's downloads for local edits and send them
//! as new versions, race each other's writes and each keep versions of what the other
//! replaced. The daemon that finds the lock held pauses the folder and says why in `status`;
//! it takes the lock once the other lets go (it stops, or leaves the share).
//!
//! The lock is a Unix socket bound to an abstract name (Linux): no file is created or held open
//! in the folder, so the folder's disk can still be unmounted or remounted read-only while the
//! daemon runs (an open file, even one only locked, keeps a mount busy), and the kernel lets the
//! name go when its holder exits, a crash included, so no stale lock ever needs removing. Its
//! limits: daemons in different network namespaces do not see each other's names, and a local
//! program that binds the name first makes the folder look held.

use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::{SocketAddr, UnixListener};
use std::path::Path;

use super::model::MARKER_DIR;

/// Why the folder's lock was not taken.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Another process holds it: another daemon syncs this folder.
    #[error(
        "another meshsync daemon on this machine syncs this folder; stop it or leave the share there"
    )]
    HeldElsewhere,
    /// The folder or its marker directory cannot be looked at, or the name cannot be bound.
    #[error("cannot take the folder's lock: {0}")]
    Io(#[from] io::Error),
}

/// The folder's lock, held until dropped.
#[derive(Debug)]
pub struct FolderLock {
    _name: UnixListener,
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
    /// The lock cannot be had here (no Unix sockets, say): the folder is synced without the
    /// guard, said in the log.
    Unlockable,
}

impl FolderLock {
    /// Takes the lock of the folder at `root` (which must hold its marker directory), without
    /// waiting. Blocking (two `stat`s and a `bind`).
    pub fn take(root: &Path) -> Result<FolderLock, LockError> {
        let folder = std::fs::metadata(root)?;
        if !std::fs::metadata(root.join(MARKER_DIR))?.is_dir() {
            return Err(io::Error::from(io::ErrorKind::NotADirectory).into());
        }
        let name = format!("meshsync/folder/{:x}/{:x}", folder.dev(), folder.ino());
        let address = SocketAddr::from_abstract_name(name.as_bytes())?;
        match UnixListener::bind_addr(&address) {
            Ok(listener) => Ok(FolderLock { _name: listener }),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse => Err(LockError::HeldElsewhere),
            Err(e) => Err(e.into()),
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
        // As another process's bind would be.
        let refused = FolderLock::take(root).unwrap_err();
        assert!(matches!(refused, LockError::HeldElsewhere), "{refused}");
        assert!(refused.to_string().contains("another meshsync daemon"));
        assert!(synced_elsewhere(root));
        // The same directory by another path is the same folder; another directory is not.
        let link = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(root, link.path().join("to")).unwrap();
        assert!(synced_elsewhere(&link.path().join("to")));
        std::fs::create_dir(link.path().join(MARKER_DIR)).unwrap();
        assert!(!synced_elsewhere(link.path()));
        drop(first);
        assert!(!synced_elsewhere(root));
        FolderLock::take(root).expect("free once its holder let go");
        // Nothing was left in the folder.
        let names: Vec<_> = std::fs::read_dir(root.join(MARKER_DIR)).unwrap().collect();
        assert!(names.is_empty());
    }
}
