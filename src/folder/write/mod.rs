//! Everything that touches the disk on the receiving side of a folder share, made safe.
//!
//! The sync engine decides *what* to write; this module makes every write safe. It runs blocking
//! I/O and is meant to be called from `spawn_blocking`.
//!
//! # Guarantees
//! - **Nothing half-written is ever visible at a final path.** A file is assembled in a hidden
//!   temporary file ([`TEMP_PREFIX`]…) in the *same directory* as its target and renamed over it
//!   only once complete, verified and flushed ([`Assembly::commit`]). Symlinks are created under a
//!   temporary name and renamed the same way.
//! - **A crash at any moment leaves the old file or the new one**, never a mix: rename is atomic,
//!   and it happens only after the temp file's data and metadata are fsynced; the directory is
//!   fsynced after the rename so the new name survives a crash too.
//! - **Interrupted transfers resume.** The temp name is a function of (path, content hash), so
//!   re-opening the same download finds the same temp file; its chunks are re-verified by hash and
//!   only the missing or damaged ones are fetched again.
//! - **A full disk fails cleanly**: space for the whole file is reserved up front
//!   (`fallocate`) so a full disk is usually detected before any byte is downloaded; `ENOSPC` and
//!   `EDQUOT` anywhere become [`WriteError::DiskFull`] and the temp file is removed to give the
//!   space back. The target is never touched.
//! - **Peer paths cannot escape the folder**: [`validate_rel_path`] refuses anything but plain
//!   relative paths, and [`resolve`] refuses to go through a symlink or a non-directory.
//! - **A local change is never overwritten or deleted unnoticed**: every operation that replaces
//!   or removes something takes an [`Expect`] describing what the caller believes is there (from
//!   its last scan) and fails with [`WriteError::Conflict`] when the disk says otherwise.
//! - **The folder must be mounted**: every operation first checks that the root still holds the
//!   [`MARKER_DIR`] (a batch of small files, once for the batch: [`BatchFolder`]), so an
//!   unmounted disk is never filled through its empty mount point.
//!
//! # Durability sequence of a file
//! 1. create parent directories that are missing, fsyncing each new one into its parent;
//! 2. open (or re-open, for resume) the temp file, take an exclusive `flock` on it, re-verify any
//!    chunks it already holds, reserve the full size with `fallocate`;
//! 3. write each chunk with `pwrite` at its offset after checking its length and BLAKE3;
//! 4. commit: read the whole temp file back and check its BLAKE3 against the file hash, set mode
//!    and mtime on the open handle, `fsync` the file (or, when other writers wait to flush at the
//!    same time, one `syncfs` for all of them: `fs_flush`);
//! 5. compare the target with the caller's [`Expect`] (`lstat`: size, mtime, inode);
//! 6. `rename` the temp over the target (`renameat2(RENAME_NOREPLACE)` when the target must be
//!    absent, so even that last race cannot clobber a file);
//! 7. `fsync` the directory (or share a `syncfs` the same way).
//!
//! # Threat model
//! Peers are untrusted: their paths, chunk lists, modes and link targets are checked here even if
//! the engine checked them already. Local processes are trusted but concurrent: the checks of
//! [`resolve`] and [`Expect`] happen just before the operation, and a local process that swaps a
//! directory for a symlink, or writes a file, in the microseconds between the check and the
//! rename can still race us (for the directories of a batch of small files, in the milliseconds
//! the batch takes: they are checked as it opens their temp files). POSIX has no compare-and-rename; the window is kept as small as
//! possible by checking after the slow steps (hashing, fsync).
//!
//! Symlink targets are stored as given (they may point anywhere, e.g. `/etc`), which is safe
//! because this module never follows a symlink inside the folder.
//!
//! # Layout
//! - `path`: the one validator of relative paths ([`validate_rel_path`], [`PathRefusal`]) and
//!   their safe resolution under the root ([`resolve`]);
//! - `assembly`: [`Assembly`], a file built from verified chunks in a temp file, and its
//!   in-order whole-file hash;
//! - `batch_folder`: what a batch of small files checked of its folder, once per batch
//!   ([`BatchFolder`]);
//! - `incoming`: the folder's incoming directory, where small files are assembled;
//! - `ops`: directories, symlinks, removal, metadata, and the compare-rename-fsync steps every
//!   write shares;
//! - `read`: chunks read back out of local files ([`read_chunk`], [`LocalReader`]);
//! - `dir_sync`: directory fsyncs, shared by the writers finishing in one directory at once;
//! - `fs_flush`: one `syncfs` for every writer flushing on a file system at once;
//! - `group_commit`: the ticket scheme both share (a flush that began after each caller);
//! - `sweep`: removing stale temp files ([`sweep_temp_files`]);
//! - `sys`: the system calls `std` lacks, through `rustix`.
//!
//! Conflict copies ([`conflict_name`], [`rename_to_conflict_copy`]) live in
//! [`crate::folder::conflict`] and are re-exported here.
//!
//! [`MARKER_DIR`]: crate::folder::model::MARKER_DIR
//! [`TEMP_PREFIX`]: crate::folder::model::TEMP_PREFIX

mod assembly;
mod batch_folder;
mod dir_sync;
mod fs_flush;
mod group_commit;
mod incoming;
mod ops;
mod path;
mod read;
mod sweep;
mod sys;
#[cfg(test)]
pub(crate) mod testkit;

use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use rustix::io::Errno;

pub use super::conflict::{
    CONFLICT_INFIX, CONFLICT_PEER_MAX, conflict_name, rename_to_conflict_copy,
};
pub use assembly::{Assembly, Sealed, WRITEBACK_EVERY, flush_contents, flush_names, temp_name};
pub use batch_folder::BatchFolder;
pub use incoming::INCOMING_DIR;
pub use ops::{Removed, make_dir, make_symlink, remove, set_meta, set_meta_checked};
pub use path::{MAX_COMPONENT_BYTES, PathError, PathRefusal, resolve, validate_rel_path};
pub use read::{LocalReader, read_chunk};
pub use sweep::sweep_temp_files;

pub(crate) use dir_sync::sync_dir;
pub(crate) use ops::parent_of;
pub(crate) use path::resolve_creating_parents;
pub(crate) use sys::rename_noreplace;
pub(crate) use sys::{attribute, disk_space};

/// Permission bits a peer may set. Setuid, setgid and sticky bits are never applied: a peer must
/// not be able to plant a setuid executable, least of all when the daemon runs as root.
pub const MODE_MASK: u32 = 0o777;

/// Mode of directories created because a file needs a parent; the engine sets the real mode with
/// [`make_dir`] / [`set_meta`] when it syncs the directory entry itself.
pub const PARENT_DIR_MODE: u32 = 0o755;

/// How many bytes of BLAKE3 name a temp file (hex-encoded, so twice as many characters): 128 bits
/// make collisions between different (path, content) pairs negligible.
pub const TEMP_ID_BYTES: usize = 16;

/// Why a write did not happen. Every variant names the path involved.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The path is refused or unreachable.
    #[error(transparent)]
    Path(#[from] PathError),
    /// The disk (or quota) is full. The temp file, if any, was removed to free its space; the
    /// target is untouched.
    #[error("disk full while writing {path}")]
    DiskFull {
        /// The file that was being written (its final path).
        path: PathBuf,
        /// The underlying `ENOSPC` / `EDQUOT`.
        #[source]
        source: io::Error,
    },
    /// Another I/O error.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The path it was done to.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// Chunk bytes do not have the length and BLAKE3 of the chunk; nothing was written.
    #[error("chunk {index} of {path} does not match its hash or length; nothing written")]
    HashMismatch {
        /// The file being assembled.
        path: PathBuf,
        /// The chunk's index.
        index: usize,
    },
    /// A chunk index beyond the chunk list.
    #[error("{path} has {count} chunks, no chunk {index}")]
    NoSuchChunk {
        /// The file being assembled.
        path: PathBuf,
        /// The index asked for.
        index: usize,
        /// How many chunks the file has.
        count: usize,
    },
    /// The chunk list does not describe a file of the given size.
    #[error("chunk list of {path} is inconsistent: {reason}")]
    BadChunkList {
        /// The file.
        path: PathBuf,
        /// What is inconsistent.
        reason: &'static str,
    },
    /// Commit was called before every chunk was written.
    #[error("{path} still misses {missing} chunks")]
    Incomplete {
        /// The file.
        path: PathBuf,
        /// How many chunks are missing.
        missing: usize,
    },
    /// Every chunk matched but the whole file does not have the announced BLAKE3: the chunk list
    /// and the file hash disagree. The temp file was removed.
    #[error("assembled {path} does not match its file hash; discarded")]
    FileHashMismatch {
        /// The file.
        path: PathBuf,
    },
    /// What is on disk is not what the caller expected: it changed locally since the version the
    /// write is based on. Nothing was changed; for [`Assembly::commit`] the complete temp file is
    /// kept, so re-opening the same assembly resumes with nothing to fetch.
    #[error("{path} changed locally since the version this write is based on")]
    Conflict {
        /// The path.
        path: PathBuf,
    },
    /// The destination of a move exists and is never overwritten.
    #[error("{path} already exists")]
    Exists {
        /// The destination.
        path: PathBuf,
    },
    /// Another [`Assembly`] holds the same temp file.
    #[error("{path} is already being assembled")]
    Busy {
        /// The file.
        path: PathBuf,
    },
    /// An earlier error (a full disk) removed the temp file; open a new assembly.
    #[error("assembly of {path} was abandoned after an earlier error")]
    Abandoned {
        /// The file.
        path: PathBuf,
    },
    /// A modification time that no `SystemTime` can hold.
    #[error("invalid modification time {secs}s {nanos}ns for {path}")]
    InvalidMtime {
        /// The path.
        path: PathBuf,
        /// Seconds since the epoch.
        secs: i64,
        /// Nanoseconds (must be below one billion).
        nanos: u32,
    },
    /// A symlink target that cannot be stored.
    #[error("invalid symlink target for {path}: {reason}")]
    InvalidLinkTarget {
        /// The symlink's path.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
}

/// What the caller believes is at a path, from its last scan or write. An operation that would
/// replace or remove something checks it first and fails with [`WriteError::Conflict`] when it
/// does not hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Nothing is there.
    Absent,
    /// A file or symlink with exactly this size, mtime and inode: any write changes the mtime (or
    /// the inode, for editors that save by rename).
    Unchanged {
        /// Size in bytes (`lstat`).
        size: u64,
        /// Modification time, seconds.
        mtime_secs: i64,
        /// Modification time, nanoseconds.
        mtime_nanos: u32,
        /// Inode number.
        inode: u64,
    },
    /// Whatever is there may be replaced (still never a directory).
    Anything,
}

impl Expect {
    /// The expectation that what `meta` (from `symlink_metadata`) describes is still there.
    pub fn of(meta: &Metadata) -> Expect {
        Expect::Unchanged {
            size: meta.len(),
            mtime_secs: meta.mtime(),
            mtime_nanos: meta.mtime_nsec() as u32,
            inode: meta.ino(),
        }
    }

    /// The expectation that what is at `path` now stays as it is ([`Expect::Absent`] if nothing).
    pub fn current(path: &Path) -> io::Result<Expect> {
        match fs::symlink_metadata(path) {
            Ok(meta) => Ok(Expect::of(&meta)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(Expect::Absent),
            Err(e) => Err(e),
        }
    }

    /// Whether the current state (`None`: nothing there) is what was expected.
    fn holds(&self, current: Option<&Metadata>) -> bool {
        match (self, current) {
            (Expect::Anything, _) | (Expect::Absent, None) => true,
            (Expect::Absent, Some(_)) | (Expect::Unchanged { .. }, None) => false,
            (
                Expect::Unchanged {
                    size,
                    mtime_secs,
                    mtime_nanos,
                    inode,
                },
                Some(m),
            ) => {
                m.len() == *size
                    && m.mtime() == *mtime_secs
                    && m.mtime_nsec() == i64::from(*mtime_nanos)
                    && m.ino() == *inode
            }
        }
    }
}

/// Whether `e` says the disk or the quota is full.
fn is_disk_full(e: &io::Error) -> bool {
    sys::is_errno(e, Errno::NOSPC) || sys::is_errno(e, Errno::DQUOT)
}

/// Classifies an I/O error: a full disk or quota is [`WriteError::DiskFull`], anything else
/// [`WriteError::Io`] naming the action.
pub(crate) fn io_error(action: &'static str, path: &Path, source: io::Error) -> WriteError {
    if is_disk_full(&source) {
        WriteError::DiskFull {
            path: path.to_path_buf(),
            source,
        }
    } else {
        WriteError::Io {
            action,
            path: path.to_path_buf(),
            source,
        }
    }
}

/// Lower-case hex of `bytes`, for temp names.
fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disk_full_errors_are_recognised() {
        for errno in [Errno::NOSPC, Errno::DQUOT] {
            let e = io_error("write", Path::new("/x"), errno.into());
            assert!(matches!(e, WriteError::DiskFull { .. }));
        }
        let e = io_error("write", Path::new("/x"), Errno::IO.into());
        assert!(matches!(e, WriteError::Io { .. }));
    }
}
