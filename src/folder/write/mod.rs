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
//!   [`MARKER_DIR`], so an unmounted disk is never filled through its empty mount point.
//!
//! # Durability sequence of a file
//! 1. create parent directories that are missing, fsyncing each new one into its parent;
//! 2. open (or re-open, for resume) the temp file, take an exclusive `flock` on it, re-verify any
//!    chunks it already holds, reserve the full size with `fallocate`;
//! 3. write each chunk with `pwrite` at its offset after checking its length and BLAKE3;
//! 4. commit: read the whole temp file back and check its BLAKE3 against the file hash, set mode
//!    and mtime on the open handle, `fsync` the file;
//! 5. compare the target with the caller's [`Expect`] (`lstat`: size, mtime, inode);
//! 6. `rename` the temp over the target (`renameat2(RENAME_NOREPLACE)` when the target must be
//!    absent, so even that last race cannot clobber a file);
//! 7. `fsync` the directory.
//!
//! # Threat model
//! Peers are untrusted: their paths, chunk lists, modes and link targets are checked here even if
//! the engine checked them already. Local processes are trusted but concurrent: the checks of
//! [`resolve`] and [`Expect`] happen just before the operation, and a local process that swaps a
//! directory for a symlink, or writes a file, in the microseconds between the check and the
//! rename can still race us. POSIX has no compare-and-rename; the window is kept as small as
//! possible by checking after the slow steps (hashing, fsync).
//!
//! Symlink targets are stored as given (they may point anywhere, e.g. `/etc`), which is safe
//! because this module never follows a symlink inside the folder.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File, FileTimes, Metadata, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tracing::{debug, warn};

use super::model::{
    CHUNK_MAX, CheckedChunk, ChunkRef, Hash, MARKER_DIR, MAX_PATH_BYTES, TEMP_PREFIX,
};

/// Longest single path component accepted, in bytes: the `NAME_MAX` of ext4, XFS, btrfs and
/// tmpfs (and within APFS's and NTFS's limits).
pub const MAX_COMPONENT_BYTES: usize = 255;

/// Permission bits a peer may set. Setuid, setgid and sticky bits are never applied: a peer must
/// not be able to plant a setuid executable, least of all when the daemon runs as root.
pub const MODE_MASK: u32 = 0o777;

/// Mode of directories created because a file needs a parent; the engine sets the real mode with
/// [`make_dir`] / [`set_meta`] when it syncs the directory entry itself.
pub const PARENT_DIR_MODE: u32 = 0o755;

/// Mode of a temp file while it is assembled: private until committed with its real mode.
const TEMP_MODE: u32 = 0o600;

/// How many bytes of BLAKE3 name a temp file (hex-encoded, so twice as many characters): 128 bits
/// make collisions between different (path, content) pairs negligible.
pub const TEMP_ID_BYTES: usize = 16;

/// Infix that marks a temp symlink, so it can never share a name with a temp file.
const TEMP_LINK_INFIX: &str = "link-";

/// How often [`Assembly::open`] retries when a sweep removes the temp file between its open and
/// its lock.
const OPEN_ATTEMPTS: usize = 3;

/// Infix of conflict copies' names, as in Syncthing so users recognise them.
pub const CONFLICT_INFIX: &str = ".sync-conflict-";

/// Most characters of the peer tag kept in a conflict name.
pub const CONFLICT_PEER_MAX: usize = 16;

/// Deepest directory nesting [`sweep_temp_files`] walks: a path of [`MAX_PATH_BYTES`] cannot nest
/// deeper than this (each level takes at least two bytes, `x/`).
const SWEEP_MAX_DEPTH: usize = MAX_PATH_BYTES / 2;

/// Why [`validate_rel_path`] refused a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// The path is empty.
    Empty,
    /// The path is longer than [`MAX_PATH_BYTES`].
    TooLong,
    /// The path starts with `/`.
    Absolute,
    /// The path ends with `/`.
    TrailingSlash,
    /// The path contains a NUL byte, which no Unix path can hold.
    Nul,
    /// The path contains a backslash: legal on Unix, but a separator on Windows peers, where the
    /// same entry would mean a different path.
    Backslash,
    /// A component is empty (`a//b`).
    EmptyComponent,
    /// A component is `.`.
    DotComponent,
    /// A component is `..`.
    DotDotComponent,
    /// A component is longer than [`MAX_COMPONENT_BYTES`].
    ComponentTooLong,
    /// The path is, or is inside, [`MARKER_DIR`] at the folder root.
    Marker,
    /// A component starts with [`TEMP_PREFIX`], which only the writer may create.
    TempName,
}

impl fmt::Display for PathRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Empty => "empty",
            Self::TooLong => "longer than the path limit",
            Self::Absolute => "absolute",
            Self::TrailingSlash => "ends with a slash",
            Self::Nul => "contains NUL",
            Self::Backslash => "contains a backslash",
            Self::EmptyComponent => "has an empty component",
            Self::DotComponent => "has a `.` component",
            Self::DotDotComponent => "has a `..` component",
            Self::ComponentTooLong => "has a component longer than 255 bytes",
            Self::Marker => "inside the marker directory",
            Self::TempName => "uses the writer's temporary name prefix",
        })
    }
}

/// A relative path that must not be written, or cannot be reached safely.
#[derive(Debug, thiserror::Error)]
pub enum PathError {
    /// The path itself is malformed or reserved.
    #[error("refused path {path:?}: {reason}")]
    Refused {
        /// The relative path as received.
        path: String,
        /// What is wrong with it.
        reason: PathRefusal,
    },
    /// An existing ancestor is a symlink; writing through it could land outside the folder.
    #[error("refused path {path:?}: {link} is a symlink and writes never go through symlinks")]
    ThroughSymlink {
        /// The relative path.
        path: String,
        /// The ancestor that is a symlink.
        link: PathBuf,
    },
    /// An existing ancestor is a file (or other non-directory).
    #[error("refused path {path:?}: {ancestor} is not a directory")]
    NotADirectory {
        /// The relative path.
        path: String,
        /// The ancestor that is not a directory.
        ancestor: PathBuf,
    },
    /// The folder root is missing or has lost its marker directory (an unmounted disk).
    #[error("folder {root} is not available: it has no {MARKER_DIR} directory (unmounted?)")]
    RootNotReady {
        /// The folder root.
        root: PathBuf,
    },
    /// An ancestor could not be inspected.
    #[error("cannot inspect {path}")]
    Inspect {
        /// The path that could not be inspected.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
}

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
    #[error("cannot {action} {path}")]
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

/// Checks that a relative path is safe to create under a folder root: `/`-separated, relative,
/// no `.`/`..`/empty components, no NUL or backslash (refused so that Windows peers could never
/// read the same entry as a different path), within [`MAX_PATH_BYTES`] and
/// [`MAX_COMPONENT_BYTES`], not the root's [`MARKER_DIR`] or inside it, and no component starting
/// with [`TEMP_PREFIX`]. Accepts exactly what `model::check_rel_path` accepts, with a typed
/// reason.
pub fn validate_rel_path(rel: &str) -> Result<(), PathError> {
    let refuse = |reason| {
        Err(PathError::Refused {
            path: rel.to_owned(),
            reason,
        })
    };
    if rel.is_empty() {
        return refuse(PathRefusal::Empty);
    }
    if rel.len() > MAX_PATH_BYTES {
        return refuse(PathRefusal::TooLong);
    }
    if rel.starts_with('/') {
        return refuse(PathRefusal::Absolute);
    }
    if rel.contains('\0') {
        return refuse(PathRefusal::Nul);
    }
    if rel.contains('\\') {
        return refuse(PathRefusal::Backslash);
    }
    if rel.ends_with('/') {
        return refuse(PathRefusal::TrailingSlash);
    }
    for (i, component) in rel.split('/').enumerate() {
        let reason = match component {
            "" => PathRefusal::EmptyComponent,
            "." => PathRefusal::DotComponent,
            ".." => PathRefusal::DotDotComponent,
            _ if component.len() > MAX_COMPONENT_BYTES => PathRefusal::ComponentTooLong,
            _ if i == 0 && component == MARKER_DIR => PathRefusal::Marker,
            _ if component.starts_with(TEMP_PREFIX) => PathRefusal::TempName,
            _ => continue,
        };
        return refuse(reason);
    }
    Ok(())
}

/// The absolute path of `rel` under `root`, after checking that `rel` is valid, that the folder is
/// available (its [`MARKER_DIR`] exists), and that no *existing* ancestor between the root and the
/// target is a symlink or a non-directory. The target itself may be a symlink: operations act on
/// the link, never through it.
pub fn resolve(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    validate_rel_path(rel)?;
    check_root(root)?;
    let mut path = root.to_path_buf();
    let mut components = rel.split('/').peekable();
    let mut exists = true;
    while let Some(component) = components.next() {
        path.push(component);
        if components.peek().is_none() || !exists {
            continue;
        }
        match fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(PathError::ThroughSymlink {
                    path: rel.to_owned(),
                    link: path,
                });
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => {
                return Err(PathError::NotADirectory {
                    path: rel.to_owned(),
                    ancestor: path,
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => exists = false,
            Err(source) => return Err(PathError::Inspect { path, source }),
        }
    }
    Ok(path)
}

/// The folder is writable only while its marker directory is there: a missing marker means an
/// unmounted disk (or a deleted folder), and writing would fill the mount point's file system.
fn check_root(root: &Path) -> Result<(), PathError> {
    match fs::symlink_metadata(root.join(MARKER_DIR)) {
        Ok(meta) if meta.is_dir() => Ok(()),
        _ => Err(PathError::RootNotReady {
            root: root.to_path_buf(),
        }),
    }
}

/// Creates the missing parent directories of `rel`, each fsynced into its parent so that a file
/// committed inside them is reachable after a crash. Re-checks every ancestor as it goes (it may
/// have changed since [`resolve`]).
fn ensure_parents(root: &Path, rel: &str) -> Result<(), WriteError> {
    let Some((parents, _)) = rel.rsplit_once('/') else {
        return Ok(());
    };
    let mut path = root.to_path_buf();
    for component in parents.split('/') {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) => check_ancestor(rel, &path, &meta)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::DirBuilder::new().mode(PARENT_DIR_MODE).create(&path) {
                    Ok(()) => sync_dir(path.parent().unwrap_or(root))?,
                    // Created concurrently: fine if it is a directory.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let meta = fs::symlink_metadata(&path)
                            .map_err(|e| io_error("inspect", &path, e))?;
                        check_ancestor(rel, &path, &meta)?;
                    }
                    Err(e) => return Err(io_error("create directory", &path, e)),
                }
            }
            Err(source) => return Err(PathError::Inspect { path, source }.into()),
        }
    }
    Ok(())
}

fn check_ancestor(rel: &str, path: &Path, meta: &Metadata) -> Result<(), PathError> {
    if meta.file_type().is_symlink() {
        Err(PathError::ThroughSymlink {
            path: rel.to_owned(),
            link: path.to_path_buf(),
        })
    } else if !meta.is_dir() {
        Err(PathError::NotADirectory {
            path: rel.to_owned(),
            ancestor: path.to_path_buf(),
        })
    } else {
        Ok(())
    }
}

/// The name of the temp file a file at `rel` with content `file_hash` is assembled in:
/// [`TEMP_PREFIX`] and the hex of the first [`TEMP_ID_BYTES`] of BLAKE3(rel ‖ file_hash).
/// Deterministic, so an interrupted download finds its temp again; different for different
/// content, so a stale half-download of another version is never mistaken for this one. (`rel`
/// is followed by a fixed-size hash, so the concatenation is unambiguous.)
pub fn temp_name(rel: &str, file_hash: &Hash) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(rel.as_bytes());
    hasher.update(file_hash);
    format!(
        "{TEMP_PREFIX}{}",
        hex(&hasher.finalize().as_bytes()[..TEMP_ID_BYTES])
    )
}

/// Bytes written to a temp file after which its writeback is started, well before its fsync.
pub const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// A file being assembled from verified chunks in a hidden temp file next to its target.
///
/// Dropping an assembly keeps the temp file so a later [`Assembly::open`] of the same (path,
/// content) resumes it; [`Assembly::discard`] removes it, and [`sweep_temp_files`] removes
/// abandoned ones. While an assembly is open it holds an exclusive `flock` on its temp file, so
/// a second assembly of the same content fails with [`WriteError::Busy`] and a sweep skips it.
#[derive(Debug)]
pub struct Assembly {
    /// The final path.
    target: PathBuf,
    /// The temp file's path, in the target's directory.
    temp: PathBuf,
    /// The open, locked temp file.
    file: File,
    /// The file's size.
    size: u64,
    /// BLAKE3 of the whole content.
    file_hash: Hash,
    /// The chunks, in file order.
    chunks: Vec<ChunkRef>,
    /// Each chunk's offset in the file.
    offsets: Vec<u64>,
    /// Whether each chunk is known to be in the temp file with the right hash.
    done: Vec<bool>,
    /// Set when an error removed the temp file; every later call fails.
    abandoned: bool,
    /// Bytes written since writeback was last started.
    unflushed: u64,
    /// The whole-file hash, fed as chunks are written in file order; `None` once that is not
    /// possible (resumed file, chunks too far out of order), and then the commit reads back.
    in_order: Option<InOrder>,
}

/// Most bytes of chunks that arrived ahead of their turn kept for [`InOrder`].
const MAX_EARLY_BYTES: usize = 16 * 1024 * 1024;

/// Hashes a file's chunks in order as they are written, keeping the few that arrive early.
/// This is the same check as reading the file back after the last chunk (which would read the
/// same page cache), without a second pass over it.
#[derive(Debug)]
struct InOrder {
    hasher: blake3::Hasher,
    next: usize,
    early: std::collections::BTreeMap<usize, Vec<u8>>,
    early_bytes: usize,
}

impl InOrder {
    /// Takes chunk `index`; false if it can no longer keep up.
    fn take(&mut self, index: usize, bytes: &[u8]) -> bool {
        if index < self.next || self.early.contains_key(&index) {
            // Written again: the same verified bytes, already counted.
            return true;
        }
        if index > self.next {
            if self.early_bytes + bytes.len() > MAX_EARLY_BYTES {
                return false;
            }
            self.early_bytes += bytes.len();
            self.early.insert(index, bytes.to_vec());
            return true;
        }
        self.hasher.update(bytes);
        self.next += 1;
        while let Some(early) = self.early.remove(&self.next) {
            self.early_bytes -= early.len();
            self.hasher.update(&early);
            self.next += 1;
        }
        true
    }
}

impl Assembly {
    /// Starts (or resumes) assembling the file `rel` of `size` bytes, BLAKE3 `file_hash`, cut into
    /// `chunks`. Creates missing parent directories, opens the temp file, marks the chunks an
    /// existing temp file already holds (verified by hash) as done, and reserves the file's full
    /// size so that a full disk shows up here, before anything is downloaded.
    pub fn open(
        root: &Path,
        rel: &str,
        size: u64,
        file_hash: Hash,
        chunks: &[ChunkRef],
    ) -> Result<Assembly, WriteError> {
        let mut assembly = Self::open_unreserved(root, rel, size, file_hash, chunks)?;
        assembly.reserve()?;
        Ok(assembly)
    }

    /// [`Assembly::open`] without reserving space, for a caller that holds every chunk and
    /// writes them right away: a full disk then fails the first write just as early, and the
    /// reservation (a `fallocate`, a metadata update) cost 3% of the CPU of receiving many
    /// small files.
    pub fn open_unreserved(
        root: &Path,
        rel: &str,
        size: u64,
        file_hash: Hash,
        chunks: &[ChunkRef],
    ) -> Result<Assembly, WriteError> {
        let target = resolve(root, rel)?;
        let offsets = chunk_offsets(&target, size, chunks)?;
        ensure_parents(root, rel)?;
        let temp = target.with_file_name(temp_name(rel, &file_hash));
        let file = open_locked_temp(&target, &temp)?;
        let mut assembly = Assembly {
            target,
            temp,
            file,
            size,
            file_hash,
            chunks: chunks.to_vec(),
            offsets,
            done: vec![false; chunks.len()],
            abandoned: false,
            unflushed: 0,
            in_order: Some(InOrder {
                hasher: blake3::Hasher::new(),
                next: 0,
                early: Default::default(),
                early_bytes: 0,
            }),
        };
        assembly.resume()?;
        Ok(assembly)
    }

    /// Indices of the chunks still to write, in file order.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.done.len()).filter(|&i| !self.done[i]).collect()
    }

    /// The final path this assembly commits to.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes chunk `index` at its offset, after checking that `bytes` have the chunk's length and
    /// BLAKE3 (else [`WriteError::HashMismatch`] and nothing is written). Writing a chunk twice is
    /// harmless.
    pub fn write_chunk(&mut self, index: usize, bytes: &[u8]) -> Result<(), WriteError> {
        let chunk = self.chunk_at(index)?;
        if bytes.len() != chunk.len as usize || blake3::hash(bytes).as_bytes() != &chunk.hash {
            return Err(WriteError::HashMismatch {
                path: self.target.clone(),
                index,
            });
        }
        self.put(index, bytes)
    }

    /// [`Assembly::write_chunk`] without the hash check, for a local copy from a file whose
    /// stamp shows it unchanged since it was described (the scanner's own rule for not reading
    /// it again). The whole file is still checked against its hash before it is published, so a
    /// file that changed behind an unchanged stamp only fails this assembly.
    pub fn write_vouched(&mut self, index: usize, bytes: &[u8]) -> Result<(), WriteError> {
        let chunk = self.chunk_at(index)?;
        if bytes.len() != chunk.len as usize {
            return Err(WriteError::HashMismatch {
                path: self.target.clone(),
                index,
            });
        }
        self.put(index, bytes)
    }

    /// [`Assembly::write_chunk`] for bytes already checked against their hash: only compares
    /// that they are this index's chunk ([`WriteError::HashMismatch`] if not), without hashing
    /// them again.
    pub fn write_checked(
        &mut self,
        index: usize,
        checked: &CheckedChunk,
    ) -> Result<(), WriteError> {
        if self.chunk_at(index)? != *checked.chunk() {
            return Err(WriteError::HashMismatch {
                path: self.target.clone(),
                index,
            });
        }
        self.put(index, checked.bytes())
    }

    fn chunk_at(&self, index: usize) -> Result<ChunkRef, WriteError> {
        self.check_usable()?;
        self.chunks
            .get(index)
            .copied()
            .ok_or_else(|| WriteError::NoSuchChunk {
                path: self.target.clone(),
                index,
                count: self.chunks.len(),
            })
    }

    /// Writes chunk `index`, whose bytes are known to be right, and feeds the in-order hash.
    fn put(&mut self, index: usize, bytes: &[u8]) -> Result<(), WriteError> {
        if let Err(e) = self.file.write_all_at(bytes, self.offsets[index]) {
            return Err(self.fail("write chunk to", e));
        }
        self.done[index] = true;
        if let Some(in_order) = &mut self.in_order
            && !in_order.take(index, bytes)
        {
            self.in_order = None;
        }
        self.unflushed += bytes.len() as u64;
        if self.unflushed >= WRITEBACK_EVERY {
            self.unflushed = 0;
            // Start writing back what we have so that the fsync at commit has little left to
            // do. Advisory: its errors show up again, and are reported, at that fsync.
            // SAFETY: plain syscall on a descriptor this assembly owns.
            unsafe {
                libc::sync_file_range(self.file.as_raw_fd(), 0, 0, libc::SYNC_FILE_RANGE_WRITE);
            }
        }
        Ok(())
    }

    /// Publishes the assembled file at its target, atomically and durably.
    ///
    /// Checks that every chunk was written, then reads the whole temp file back and checks its
    /// BLAKE3 against the file hash (reading back, rather than hashing as chunks arrive, because
    /// chunks arrive in any order and some were already on disk from an earlier attempt; it costs
    /// one pass over data that is still in the page cache). Then sets `mode & MODE_MASK` and the
    /// mtime on the temp file, fsyncs it, checks that the target is still as `expect_current`
    /// says (else [`WriteError::Conflict`], and the complete temp file is kept for a retry),
    /// renames it over the target and fsyncs the directory. A directory at the target is always a
    /// conflict.
    pub fn commit(
        mut self,
        expect_current: Expect,
        mode: u32,
        mtime: (i64, u32),
    ) -> Result<(), WriteError> {
        self.check_usable()?;
        let missing = self.done.iter().filter(|d| !**d).count();
        if missing > 0 {
            return Err(WriteError::Incomplete {
                path: self.target.clone(),
                missing,
            });
        }
        let modified = system_time(&self.target, mtime)?;
        if !self.whole_file_matches()? {
            self.discard_temp();
            return Err(WriteError::FileHashMismatch {
                path: self.target.clone(),
            });
        }
        let times = FileTimes::new().set_modified(modified);
        if let Err(e) = self
            .file
            .set_permissions(Permissions::from_mode(mode & MODE_MASK))
            .and_then(|()| self.file.set_times(times))
        {
            return Err(self.fail("set mode and mtime of", e));
        }
        if let Err(e) = self.file.sync_all() {
            return Err(self.fail("fsync", e));
        }
        // Checked last, after the slow steps, to keep the race with local writers short. On a
        // conflict the complete, fsynced temp file stays for a retry.
        check_expect(&self.target, expect_current)?;
        if let Err(e) = publish(&self.temp, &self.target, expect_current) {
            if matches!(e, WriteError::DiskFull { .. }) {
                self.discard_temp();
            }
            return Err(e);
        }
        sync_dir(parent_of(&self.target))
    }

    /// Gives up on this file: removes the temp file (for when the version will never be wanted
    /// again; a plain drop keeps it for resuming).
    pub fn discard(mut self) {
        self.discard_temp();
    }

    fn check_usable(&self) -> Result<(), WriteError> {
        if self.abandoned {
            return Err(WriteError::Abandoned {
                path: self.target.clone(),
            });
        }
        Ok(())
    }

    /// Turns an I/O error on the temp file into a [`WriteError`]; a full disk also removes the
    /// temp file to give its space back.
    fn fail(&mut self, action: &'static str, e: io::Error) -> WriteError {
        if is_disk_full(&e) {
            self.discard_temp();
            WriteError::DiskFull {
                path: self.target.clone(),
                source: e,
            }
        } else {
            io_error(action, &self.temp, e)
        }
    }

    fn discard_temp(&mut self) {
        self.abandoned = true;
        if let Err(e) = fs::remove_file(&self.temp)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.temp.display(), error = %e, "cannot remove temp file");
        }
    }

    /// Marks as done the chunks an existing temp file already holds with the right hash.
    fn resume(&mut self) -> Result<(), WriteError> {
        let existing = match self.file.metadata() {
            Ok(meta) => meta.len(),
            Err(e) => return Err(self.fail("inspect", e)),
        };
        if existing == 0 {
            return Ok(());
        }
        // Chunks already on disk were never seen by the in-order hasher.
        self.in_order = None;
        if existing > self.size
            && let Err(e) = self.file.set_len(self.size)
        {
            return Err(self.fail("truncate", e));
        }
        let mut buf = vec![0u8; CHUNK_MAX as usize];
        for (i, chunk) in self.chunks.iter().enumerate() {
            let offset = self.offsets[i];
            if offset + u64::from(chunk.len) > existing {
                break;
            }
            let buf = &mut buf[..chunk.len as usize];
            if let Err(e) = self.file.read_exact_at(buf, offset) {
                return Err(io_error("read back", &self.temp, e));
            }
            self.done[i] = blake3::hash(buf).as_bytes() == &chunk.hash;
        }
        debug!(
            path = %self.target.display(),
            have = self.done.iter().filter(|d| **d).count(),
            of = self.done.len(),
            "resuming assembly"
        );
        Ok(())
    }

    /// Reserves the whole size now, so that a full disk fails here and not halfway through.
    fn reserve(&mut self) -> Result<(), WriteError> {
        if let Err(e) = allocate(&self.file, self.size) {
            return Err(self.fail("reserve space for", e));
        }
        Ok(())
    }

    fn whole_file_matches(&mut self) -> Result<bool, WriteError> {
        if let Some(in_order) = self.in_order.take()
            && in_order.next == self.chunks.len()
        {
            debug!(path = %self.target.display(), "whole file hashed as written");
            return match self.file.metadata() {
                Ok(meta) => Ok(meta.len() == self.size
                    && in_order.hasher.finalize().as_bytes() == &self.file_hash),
                Err(e) => Err(io_error("inspect", &self.temp, e)),
            };
        }
        let mut hasher = blake3::Hasher::new();
        let mut reader = &self.file;
        let result = reader
            .seek(SeekFrom::Start(0))
            .and_then(|_| hasher.update_reader(reader.take(self.size)).map(|_| ()))
            .and_then(|()| self.file.metadata());
        match result {
            Ok(meta) => {
                Ok(meta.len() == self.size && hasher.finalize().as_bytes() == &self.file_hash)
            }
            Err(e) => Err(io_error("read back", &self.temp, e)),
        }
    }
}

/// Each chunk's offset, after checking that the chunks are non-empty, at most [`CHUNK_MAX`] long,
/// and add up to `size`.
fn chunk_offsets(target: &Path, size: u64, chunks: &[ChunkRef]) -> Result<Vec<u64>, WriteError> {
    let bad = |reason| {
        Err(WriteError::BadChunkList {
            path: target.to_path_buf(),
            reason,
        })
    };
    if i64::try_from(size).is_err() {
        return bad("file too large");
    }
    let mut offsets = Vec::with_capacity(chunks.len());
    let mut offset = 0u64;
    for chunk in chunks {
        if chunk.len == 0 || chunk.len > CHUNK_MAX {
            return bad("chunk length out of range");
        }
        offsets.push(offset);
        offset += u64::from(chunk.len);
        if offset > size {
            return bad("chunks longer than the file");
        }
    }
    if offset != size {
        return bad("chunks shorter than the file");
    }
    Ok(offsets)
}

/// Opens (creating if needed) and exclusively locks a temp file, making sure the locked file is
/// still the one at the path (a sweep may have removed it between our open and our lock).
fn open_locked_temp(target: &Path, temp: &Path) -> Result<File, WriteError> {
    for _ in 0..OPEN_ATTEMPTS {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(TEMP_MODE)
            .custom_flags(libc::O_NOFOLLOW)
            .open(temp)
            .map_err(|e| match is_disk_full(&e) {
                true => WriteError::DiskFull {
                    path: target.to_path_buf(),
                    source: e,
                },
                false => io_error("open temp file", temp, e),
            })?;
        if !try_lock(&file).map_err(|e| io_error("lock", temp, e))? {
            return Err(WriteError::Busy {
                path: target.to_path_buf(),
            });
        }
        let ours = file.metadata().map_err(|e| io_error("inspect", temp, e))?;
        if !ours.is_file() {
            return Err(io_error(
                "open temp file",
                temp,
                io::Error::other("not a regular file"),
            ));
        }
        match fs::symlink_metadata(temp) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => return Ok(file),
            _ => continue,
        }
    }
    Err(WriteError::Busy {
        path: target.to_path_buf(),
    })
}

/// Takes an exclusive `flock` without waiting; `false` if someone else holds it.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = io::Error::last_os_error();
    if e.kind() == io::ErrorKind::WouldBlock {
        Ok(false)
    } else {
        Err(e)
    }
}

/// Reserves `size` bytes for the file (and sets its length). Falls back to a sparse `set_len`
/// on file systems without `fallocate`, where a full disk then shows up at write time instead.
fn allocate(file: &File, size: u64) -> io::Result<()> {
    if size == 0 {
        return Ok(());
    }
    #[cfg(target_os = "linux")]
    {
        let len = libc::off_t::try_from(size).map_err(io::Error::other)?;
        // SAFETY: fallocate on a file descriptor we own; no memory is involved.
        if unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) } == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(
            e.raw_os_error(),
            Some(libc::EOPNOTSUPP | libc::ENOSYS | libc::EINVAL)
        ) {
            return Err(e);
        }
    }
    if file.metadata()?.len() < size {
        file.set_len(size)?;
    }
    Ok(())
}

/// Fails with [`WriteError::Conflict`] unless what is at `path` is what `expect` says; a
/// directory is never expected to be replaced.
fn check_expect(path: &Path, expect: Expect) -> Result<(), WriteError> {
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
fn publish(from: &Path, to: &Path, expect: Expect) -> Result<(), WriteError> {
    let result = match expect {
        Expect::Absent => rename_noreplace(from, to),
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

/// Renames without ever replacing an existing `to` (`AlreadyExists` if there is one):
/// `renameat2(RENAME_NOREPLACE)`, or on file systems without it, `link` + `unlink` (for files and
/// symlinks), which fail the same way.
fn rename_noreplace(from: &Path, to: &Path) -> io::Result<()> {
    #[cfg(target_os = "linux")]
    {
        use std::ffi::CString;
        let c_from = CString::new(from.as_os_str().as_bytes())?;
        let c_to = CString::new(to.as_os_str().as_bytes())?;
        // SAFETY: both pointers are valid NUL-terminated strings that outlive the call.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_renameat2,
                libc::AT_FDCWD,
                c_from.as_ptr(),
                libc::AT_FDCWD,
                c_to.as_ptr(),
                libc::RENAME_NOREPLACE,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if !matches!(e.raw_os_error(), Some(libc::EINVAL | libc::ENOSYS)) {
            return Err(e);
        }
    }
    fs::hard_link(from, to)?;
    fs::remove_file(from)
}

/// Fsyncs a directory so that the entries just created, renamed or removed in it survive a crash.
/// File systems that cannot fsync a directory (`EINVAL`, some FUSE ones) are tolerated: there is
/// nothing more we could do on them.
fn sync_dir(dir: &Path) -> Result<(), WriteError> {
    let result = File::open(dir).and_then(|d| d.sync_all());
    match result {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
            debug!(path = %dir.display(), "directory fsync not supported");
            Ok(())
        }
        Err(e) => Err(io_error("fsync directory", dir, e)),
    }
}

fn parent_of(path: &Path) -> &Path {
    path.parent().unwrap_or(Path::new("."))
}

fn is_disk_full(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT))
}

/// Classifies an I/O error: a full disk or quota is [`WriteError::DiskFull`], anything else
/// [`WriteError::Io`] naming the action.
fn io_error(action: &'static str, path: &Path, source: io::Error) -> WriteError {
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

/// A `SystemTime` from seconds and nanoseconds since the epoch (negative seconds are before it).
fn system_time(path: &Path, (secs, nanos): (i64, u32)) -> Result<SystemTime, WriteError> {
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

/// Sets a path's mtime without following a symlink there (atime is left alone).
fn set_mtime_nofollow(path: &Path, (secs, nanos): (i64, u32)) -> io::Result<()> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    let times = [
        libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        libc::timespec {
            tv_sec: secs as libc::time_t,
            tv_nsec: nanos as libc::c_long,
        },
    ];
    // SAFETY: a valid NUL-terminated path and a two-element timespec array, both outliving the
    // call.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reads `len` bytes at `offset` of a local file and returns them if they still hash to
/// `expected`: the engine copies chunks it already has locally instead of downloading them.
/// `None` when the bytes no longer match, the file is shorter now, or it is gone, is a symlink or
/// is not a regular file (the chunk index is only a hint; the scanner will catch up). Never
/// follows a symlink and never blocks on a FIFO.
pub fn read_chunk(
    path: &Path,
    offset: u64,
    len: u32,
    expected: &Hash,
) -> Result<Option<CheckedChunk>, io::Error> {
    check_chunk_len(len)?;
    let Some((file, _)) = open_regular(path)? else {
        return Ok(None);
    };
    let chunk = ChunkRef {
        hash: *expected,
        len,
    };
    Ok(read_at(&file, offset, len)?.and_then(|bytes| CheckedChunk::check(&chunk, bytes).ok()))
}

/// Files a [`LocalReader`] keeps open at most.
const LOCAL_READER_FILES: usize = 64;

/// Reads chunks out of local files to copy them into an [`Assembly`], keeping files open between
/// reads (rebuilding a big file from its old version reads thousands of chunks of one file; an
/// open and a hash check per chunk cost more than the copy). The bytes are not checked here:
/// [`Assembly::write_chunk`] checks every chunk it writes, and the caller decides from the
/// file's `fstat` (taken when it was opened) whether [`Assembly::write_vouched`] may skip that.
/// Same rules as [`read_chunk`] for what it refuses to read.
#[derive(Default)]
pub struct LocalReader {
    files: HashMap<PathBuf, Option<(File, Metadata)>>,
}

impl LocalReader {
    /// `len` bytes at `offset` of `path` and the `fstat` of the file when it was opened, or
    /// `None` if the file is gone, not a regular file or shorter now.
    pub fn read(
        &mut self,
        path: &Path,
        offset: u64,
        len: u32,
    ) -> io::Result<Option<(Vec<u8>, &Metadata)>> {
        check_chunk_len(len)?;
        if self.files.len() >= LOCAL_READER_FILES && !self.files.contains_key(path) {
            self.files.clear();
        }
        let file = match self.files.entry(path.to_path_buf()) {
            std::collections::hash_map::Entry::Occupied(open) => open.into_mut(),
            std::collections::hash_map::Entry::Vacant(slot) => slot.insert(open_regular(path)?),
        };
        match file {
            Some((file, meta)) => Ok(read_at(file, offset, len)?.map(|bytes| (bytes, &*meta))),
            None => Ok(None),
        }
    }
}

fn check_chunk_len(len: u32) -> io::Result<()> {
    if len > CHUNK_MAX {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("chunk of {len} bytes is longer than CHUNK_MAX"),
        ));
    }
    Ok(())
}

/// Opens `path` for reading if it is a regular file, without following a symlink or blocking
/// on a FIFO; `None` if it is gone or is something else.
fn open_regular(path: &Path) -> io::Result<Option<(File, Metadata)>> {
    let file = match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(libc::ELOOP) => {
            return Ok(None);
        }
        Err(e) => return Err(e),
    };
    let meta = file.metadata()?;
    if !meta.is_file() {
        return Ok(None);
    }
    Ok(Some((file, meta)))
}

/// `len` bytes at `offset`, or `None` if the file ends before.
fn read_at(file: &File, offset: u64, len: u32) -> io::Result<Option<Vec<u8>>> {
    let mut bytes = vec![0u8; len as usize];
    match file.read_exact_at(&mut bytes, offset) {
        Ok(()) => Ok(Some(bytes)),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(None),
        Err(e) => Err(e),
    }
}

/// Creates the directory `rel` (and missing parents) with `mode & MODE_MASK`, or sets the mode of
/// the directory already there. Anything else at the path is a [`WriteError::Conflict`]. The
/// mode is applied as given, so a peer's read-only directory is read-only here: the engine
/// should fill a directory before applying a restrictive mode.
pub fn make_dir(root: &Path, rel: &str, mode: u32) -> Result<(), WriteError> {
    let path = resolve(root, rel)?;
    ensure_parents(root, rel)?;
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
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOTEMPTY | libc::EEXIST)) => {
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
    sync_dir(parent_of(&path))?;
    Ok(removed)
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
        return set_mtime_nofollow(&path, mtime).map_err(|e| io_error("set mtime of", &path, e));
    }
    let flags =
        libc::O_NOFOLLOW | libc::O_NONBLOCK | if meta.is_dir() { libc::O_DIRECTORY } else { 0 };
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
            .and_then(|()| set_mtime_nofollow(&path, mtime))
            .map_err(|e| io_error("set mode and mtime of", &path, e)),
        Err(e) => Err(io_error("open", &path, e)),
    }
}

/// Moves the local file (or symlink, or directory) at `rel` aside to `conflict_rel` (typically
/// [`conflict_name`]), never overwriting anything already at `conflict_rel`
/// ([`WriteError::Exists`]). Both directories are fsynced.
pub fn rename_to_conflict_copy(
    root: &Path,
    rel: &str,
    conflict_rel: &str,
) -> Result<(), WriteError> {
    let from = resolve(root, rel)?;
    let to = resolve(root, conflict_rel)?;
    ensure_parents(root, conflict_rel)?;
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
    let secs = when_millis / 1000;
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let of_day = secs % 86_400;
    let mut peer: String = peer_short
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '_')
        .take(CONFLICT_PEER_MAX)
        .collect();
    if peer.is_empty() {
        peer.push_str("unknown");
    }
    let tag = format!(
        "{CONFLICT_INFIX}{year:04}{month:02}{day:02}-{:02}{:02}{:02}-{peer}",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    );
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

/// The proleptic Gregorian (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097); // [0, 146096]
    let yoe = (doe - doe / 1_460 + doe / 36_524 - doe / 146_096) / 365; // [0, 399]
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // [0, 365], from March 1st
    let mp = (5 * doy + 2) / 153; // [0, 11], March = 0
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Removes our temp files (names starting with [`TEMP_PREFIX`], files or links) anywhere in the
/// folder whose mtime is older than `older_than`: leftovers of crashes or abandoned downloads
/// that no assembly will resume. A temp file that an open [`Assembly`] holds is never removed,
/// whatever its age. Does not follow symlinks or enter the marker directory. Returns how many
/// were removed; unreadable subdirectories are logged and skipped.
pub fn sweep_temp_files(root: &Path, older_than: Duration) -> Result<usize, WriteError> {
    check_root(root)?;
    let cutoff = SystemTime::now()
        .checked_sub(older_than)
        .unwrap_or(UNIX_EPOCH);
    let mut removed = 0;
    let mut stack = vec![(root.to_path_buf(), 0usize)];
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
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)?;
    if !try_lock(&file)? {
        return Ok(false);
    }
    // Removed while we hold the lock: an assembly opening it now either fails to lock it or
    // notices that the path no longer names the file it locked.
    fs::remove_file(path)?;
    Ok(true)
}

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
    use super::super::model::check_rel_path;
    use super::*;
    use proptest::prelude::*;
    use tempfile::TempDir;

    /// A folder root with its marker directory.
    fn folder() -> TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(MARKER_DIR)).unwrap();
        dir
    }

    use crate::folder::testdata::pseudo_random as data;

    fn hash(bytes: &[u8]) -> Hash {
        *blake3::hash(bytes).as_bytes()
    }

    /// A file's bytes cut into chunks of the given sizes (repeated), like a scanner would.
    struct Cut {
        data: Vec<u8>,
        chunks: Vec<ChunkRef>,
        ranges: Vec<std::ops::Range<usize>>,
    }

    impl Cut {
        fn new(data: Vec<u8>, sizes: &[usize]) -> Cut {
            let (mut chunks, mut ranges, mut at) = (Vec::new(), Vec::new(), 0);
            for size in sizes.iter().cycle() {
                if at == data.len() {
                    break;
                }
                let end = (at + size).min(data.len());
                chunks.push(ChunkRef {
                    hash: hash(&data[at..end]),
                    len: (end - at) as u32,
                });
                ranges.push(at..end);
                at = end;
            }
            Cut {
                data,
                chunks,
                ranges,
            }
        }

        fn chunk(&self, i: usize) -> &[u8] {
            &self.data[self.ranges[i].clone()]
        }

        fn open(&self, root: &Path, rel: &str) -> Result<Assembly, WriteError> {
            Assembly::open(
                root,
                rel,
                self.data.len() as u64,
                hash(&self.data),
                &self.chunks,
            )
        }
    }

    fn sample() -> Cut {
        Cut::new(data(7, 700_000), &[100_000, 65_536, 3, 200_000, 17_000])
    }

    fn temps_in(dir: &Path) -> Vec<String> {
        fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(TEMP_PREFIX))
            .collect()
    }

    fn write_all(asm: &mut Assembly, cut: &Cut, order: &[usize]) {
        for &i in order {
            asm.write_chunk(i, cut.chunk(i)).unwrap();
        }
    }

    fn refusal(rel: &str) -> Option<PathRefusal> {
        match validate_rel_path(rel) {
            Ok(()) => None,
            Err(PathError::Refused { reason, .. }) => Some(reason),
            Err(other) => panic!("unexpected {other}"),
        }
    }

    #[test]
    fn hostile_paths_are_refused_with_their_reason() {
        use PathRefusal::*;
        let long = "a/".repeat(MAX_PATH_BYTES / 2) + "b";
        let long_component = "x".repeat(MAX_COMPONENT_BYTES + 1);
        let table: &[(&str, Option<PathRefusal>)] = &[
            ("a", None),
            ("docs/report.txt", None),
            (".bashrc", None),
            ("..a/b..", None),
            ("sub/.meshsync/x", None),
            (".meshsyncx", None),
            (".meshignore", None),
            ("ünïcødé/名前", None),
            ("", Some(Empty)),
            ("/etc/passwd", Some(Absolute)),
            ("../x", Some(DotDotComponent)),
            ("..", Some(DotDotComponent)),
            ("a/../../b", Some(DotDotComponent)),
            ("a/..", Some(DotDotComponent)),
            ("a/./b", Some(DotComponent)),
            (".", Some(DotComponent)),
            ("a//b", Some(EmptyComponent)),
            ("a/", Some(TrailingSlash)),
            (".meshsync", Some(Marker)),
            (".meshsync/x", Some(Marker)),
            ("a\0b", Some(Nul)),
            ("a\\b", Some(Backslash)),
            ("..\\..\\windows", Some(Backslash)),
            (&long, Some(TooLong)),
            (&long_component, Some(ComponentTooLong)),
            (".meshsync-tmp-0123", Some(TempName)),
            ("d/.meshsync-tmp-x", Some(TempName)),
        ];
        for (rel, want) in table {
            assert_eq!(refusal(rel), *want, "{rel:?}");
            assert_eq!(
                check_rel_path(rel).is_ok(),
                want.is_none(),
                "model disagrees on {rel:?}"
            );
        }
        let max_component = "x".repeat(MAX_COMPONENT_BYTES);
        assert_eq!(refusal(&max_component), None);
        let err = validate_rel_path("a/../../b").unwrap_err().to_string();
        assert!(err.contains("a/../../b") && err.contains(".."), "{err}");
    }

    proptest! {
        #[test]
        fn accepted_paths_stay_inside_and_agree_with_the_model(
            rel in "([a-z.\\\\/]|\\.\\.|\\.meshsync(-tmp-)?|\0){0,12}"
        ) {
            let ok = validate_rel_path(&rel).is_ok();
            prop_assert_eq!(ok, check_rel_path(&rel).is_ok());
            if ok {
                let components: Vec<_> = Path::new(&rel).components().collect();
                prop_assert!(components
                    .iter()
                    .all(|c| matches!(c, std::path::Component::Normal(_))));
                prop_assert_eq!(components.len(), rel.split('/').count());
            }
        }

        #[test]
        fn civil_from_days_inverts_days_from_civil(days in -1_000_000i64..1_000_000) {
            let (y, m, d) = civil_from_days(days);
            prop_assert!((1..=12).contains(&m) && (1..=31).contains(&d));
            // Hinnant's days_from_civil, the inverse.
            let y2 = if m <= 2 { y - 1 } else { y };
            let era = y2.div_euclid(400);
            let yoe = y2 - era * 400;
            let mp = (i64::from(m) + 9) % 12;
            let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
            let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
            prop_assert_eq!(era * 146_097 + doe - 719_468, days);
        }
    }

    #[test]
    fn traversal_through_symlinks_is_refused() {
        let root = folder();
        let outside = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("link")).unwrap();
        let err = resolve(root.path(), "link/file").unwrap_err();
        assert!(matches!(err, PathError::ThroughSymlink { .. }), "{err}");
        // Deeper, and when the path below does not exist yet.
        assert!(matches!(
            resolve(root.path(), "link/new/dir/file"),
            Err(PathError::ThroughSymlink { .. })
        ));
        let cut = sample();
        let err = cut.open(root.path(), "link/file").unwrap_err();
        assert!(
            matches!(err, WriteError::Path(PathError::ThroughSymlink { .. })),
            "{err}"
        );
        assert!(make_dir(root.path(), "link/d", 0o755).is_err());
        assert!(make_symlink(root.path(), "link/l", "x", Expect::Absent).is_err());
        assert!(
            fs::read_dir(outside.path()).unwrap().next().is_none(),
            "wrote outside"
        );
        // The link itself is a valid target: operations act on it, not through it.
        assert_eq!(
            resolve(root.path(), "link").unwrap(),
            root.path().join("link")
        );
        // A file as an ancestor.
        fs::write(root.path().join("f"), b"x").unwrap();
        assert!(matches!(
            resolve(root.path(), "f/x"),
            Err(PathError::NotADirectory { .. })
        ));
    }

    #[test]
    fn a_folder_without_its_marker_is_not_written() {
        let root = tempfile::tempdir().unwrap();
        let err = sample().open(root.path(), "a").unwrap_err();
        assert!(
            matches!(err, WriteError::Path(PathError::RootNotReady { .. })),
            "{err}"
        );
        assert!(make_dir(root.path(), "d", 0o755).is_err());
        assert!(fs::read_dir(root.path()).unwrap().next().is_none());
    }

    #[test]
    fn assembles_a_multi_chunk_file_in_random_order_with_mode_and_mtime() {
        let root = folder();
        let cut = sample();
        assert!(cut.chunks.len() > 5);
        let mut asm = cut.open(root.path(), "deep/er/file.bin").unwrap();
        let mut order = asm.missing();
        assert_eq!(order, (0..cut.chunks.len()).collect::<Vec<_>>());
        // Deterministic shuffle.
        let noise = data(3, order.len());
        for i in (1..order.len()).rev() {
            order.swap(i, noise[i] as usize % (i + 1));
        }
        write_all(&mut asm, &cut, &order);
        assert!(asm.missing().is_empty());
        asm.commit(Expect::Absent, 0o4751, (1_700_000_000, 123_456_789))
            .unwrap();
        let path = root.path().join("deep/er/file.bin");
        assert_eq!(fs::read(&path).unwrap(), cut.data);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o751, "setuid masked");
        assert_eq!(
            (meta.mtime(), meta.mtime_nsec()),
            (1_700_000_000, 123_456_789)
        );
        assert!(temps_in(&root.path().join("deep/er")).is_empty());
    }

    #[test]
    fn empty_files_and_old_mtimes_commit() {
        let root = folder();
        let cut = Cut::new(Vec::new(), &[1]);
        let asm = cut.open(root.path(), "empty").unwrap();
        assert!(asm.missing().is_empty());
        asm.commit(Expect::Absent, 0o600, (-86_400, 5)).unwrap();
        let meta = fs::metadata(root.path().join("empty")).unwrap();
        assert_eq!(
            (meta.len(), meta.mtime(), meta.mtime_nsec()),
            (0, -86_400, 5)
        );
    }

    #[test]
    fn wrong_chunks_are_rejected_and_nothing_is_written() {
        let root = folder();
        let cut = sample();
        let mut asm = cut.open(root.path(), "f").unwrap();
        let mut wrong = cut.chunk(1).to_vec();
        wrong[10] ^= 1;
        let err = asm.write_chunk(1, &wrong).unwrap_err();
        assert!(
            matches!(err, WriteError::HashMismatch { index: 1, .. }),
            "{err}"
        );
        assert!(matches!(
            asm.write_chunk(1, &cut.chunk(1)[1..]),
            Err(WriteError::HashMismatch { .. })
        ));
        assert!(matches!(
            asm.write_chunk(0, cut.chunk(1)),
            Err(WriteError::HashMismatch { .. })
        ));
        assert!(matches!(
            asm.write_chunk(99, cut.chunk(1)),
            Err(WriteError::NoSuchChunk { index: 99, .. })
        ));
        assert_eq!(asm.missing().len(), cut.chunks.len());
        let temp = root.path().join(&temps_in(root.path())[0]);
        let on_disk = fs::read(temp).unwrap();
        assert!(on_disk[cut.ranges[1].clone()].iter().all(|b| *b == 0));
        let err = asm.commit(Expect::Absent, 0o644, (0, 0)).unwrap_err();
        assert!(matches!(err, WriteError::Incomplete { .. }), "{err}");
        assert!(!root.path().join("f").exists());
    }

    #[test]
    fn inconsistent_chunk_lists_and_file_hashes_are_refused() {
        let root = folder();
        let cut = sample();
        let size = cut.data.len() as u64;
        let too_big = Assembly::open(root.path(), "f", size + 1, hash(&cut.data), &cut.chunks);
        assert!(matches!(too_big, Err(WriteError::BadChunkList { .. })));
        // Chunks that are each right but do not make the announced file.
        let mut asm = Assembly::open(root.path(), "f", size, [9; 32], &cut.chunks).unwrap();
        let missing = asm.missing();
        write_all(&mut asm, &cut, &missing);
        let err = asm.commit(Expect::Absent, 0o644, (0, 0)).unwrap_err();
        assert!(matches!(err, WriteError::FileHashMismatch { .. }), "{err}");
        assert!(!root.path().join("f").exists());
        assert!(temps_in(root.path()).is_empty(), "bad temp discarded");
    }

    #[test]
    fn in_order_hash_matches_whatever_the_arrival_order() {
        let chunks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + i as usize]).collect();
        let whole: Vec<u8> = chunks.concat();
        let expected = blake3::hash(&whole);
        let orders: [Vec<usize>; 3] = [
            (0..20).collect(),
            (0..20).rev().collect(),
            vec![
                3, 1, 0, 2, 2, 7, 5, 4, 6, 8, 19, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 0,
            ],
        ];
        for order in orders {
            let mut in_order = InOrder {
                hasher: blake3::Hasher::new(),
                next: 0,
                early: Default::default(),
                early_bytes: 0,
            };
            for i in order {
                assert!(in_order.take(i, &chunks[i]));
            }
            assert_eq!(in_order.next, 20);
            assert_eq!(in_order.hasher.finalize(), expected);
        }
        let mut in_order = InOrder {
            hasher: blake3::Hasher::new(),
            next: 0,
            early: Default::default(),
            early_bytes: 0,
        };
        let big = vec![0u8; MAX_EARLY_BYTES];
        assert!(in_order.take(1, &big));
        assert!(
            !in_order.take(2, b"x"),
            "too much held early: give up, read back"
        );
    }

    #[test]
    fn resume_after_a_crash_needs_only_the_missing_chunks() {
        let root = folder();
        let cut = sample();
        let n = cut.chunks.len();
        {
            let mut asm = cut.open(root.path(), "dir/f").unwrap();
            write_all(&mut asm, &cut, &[0, 2, 3, n - 1]);
            // Dropped here without commit, like a crash.
        }
        // Damage chunk 3 in the temp file, as a torn write could.
        let temp = root
            .path()
            .join("dir")
            .join(temp_name("dir/f", &hash(&cut.data)));
        let file = OpenOptions::new().write(true).open(&temp).unwrap();
        file.write_all_at(b"garbage", cut.ranges[3].start as u64)
            .unwrap();
        drop(file);

        let mut asm = cut.open(root.path(), "dir/f").unwrap();
        let missing = asm.missing();
        let expected: Vec<usize> = (0..n).filter(|i| ![0, 2, n - 1].contains(i)).collect();
        assert_eq!(missing, expected);
        write_all(&mut asm, &cut, &missing);
        asm.commit(Expect::Absent, 0o644, (1, 0)).unwrap();
        assert_eq!(fs::read(root.path().join("dir/f")).unwrap(), cut.data);

        // Another version of the same path gets another temp file: no cross-talk.
        let other = Cut::new(data(8, 1000), &[300]);
        assert_ne!(
            temp_name("dir/f", &hash(&other.data)),
            temp_name("dir/f", &hash(&cut.data))
        );
    }

    #[test]
    fn a_second_assembly_of_the_same_content_is_busy() {
        let root = folder();
        let cut = sample();
        let _first = cut.open(root.path(), "f").unwrap();
        let err = cut.open(root.path(), "f").unwrap_err();
        assert!(matches!(err, WriteError::Busy { .. }), "{err}");
    }

    #[test]
    fn nothing_appears_at_the_final_path_before_commit() {
        let root = folder();
        let cut = sample();
        let path = root.path().join("new");
        let mut asm = cut.open(root.path(), "new").unwrap();
        let missing = asm.missing();
        write_all(&mut asm, &cut, &missing);
        assert!(!path.exists());
        asm.commit(Expect::Absent, 0o644, (1, 0)).unwrap();
        assert!(path.exists());

        // Replacing: the old content stays intact until the rename.
        let old = root.path().join("old");
        fs::write(&old, b"old content").unwrap();
        let expect = Expect::current(&old).unwrap();
        let mut asm = cut.open(root.path(), "old").unwrap();
        let missing = asm.missing();
        write_all(&mut asm, &cut, &missing);
        assert_eq!(fs::read(&old).unwrap(), b"old content");
        asm.commit(expect, 0o644, (1, 0)).unwrap();
        assert_eq!(fs::read(&old).unwrap(), cut.data);
    }

    #[test]
    fn a_local_change_before_commit_is_a_conflict() {
        let root = folder();
        let cut = sample();
        let path = root.path().join("f");
        fs::write(&path, b"base").unwrap();
        let expect = Expect::current(&path).unwrap();
        let mut asm = cut.open(root.path(), "f").unwrap();
        let missing = asm.missing();
        write_all(&mut asm, &cut, &missing);
        fs::write(&path, b"local edit").unwrap();
        let err = asm.commit(expect, 0o644, (1, 0)).unwrap_err();
        assert!(matches!(err, WriteError::Conflict { .. }), "{err}");
        assert_eq!(fs::read(&path).unwrap(), b"local edit");
        // The complete temp file was kept: a retry has nothing to fetch.
        let asm = cut.open(root.path(), "f").unwrap();
        assert!(asm.missing().is_empty());
        asm.commit(Expect::current(&path).unwrap(), 0o644, (1, 0))
            .unwrap();
        assert_eq!(fs::read(&path).unwrap(), cut.data);

        // Expected absent, but a local file appeared.
        let small = Cut::new(b"peer".to_vec(), &[4]);
        let mut asm = small.open(root.path(), "g").unwrap();
        write_all(&mut asm, &small, &[0]);
        fs::write(root.path().join("g"), b"local").unwrap();
        assert!(matches!(
            asm.commit(Expect::Absent, 0o644, (1, 0)),
            Err(WriteError::Conflict { .. })
        ));
        assert_eq!(fs::read(root.path().join("g")).unwrap(), b"local");

        // Expected a file, but it was deleted locally; or a directory is there now.
        let mut asm = small.open(root.path(), "h").unwrap();
        write_all(&mut asm, &small, &[0]);
        fs::write(root.path().join("h"), b"x").unwrap();
        let expect = Expect::current(&root.path().join("h")).unwrap();
        fs::remove_file(root.path().join("h")).unwrap();
        assert!(matches!(
            asm.commit(expect, 0o644, (1, 0)),
            Err(WriteError::Conflict { .. })
        ));
        fs::create_dir(root.path().join("h")).unwrap();
        let asm = small.open(root.path(), "h").unwrap();
        assert!(matches!(
            asm.commit(Expect::Anything, 0o644, (1, 0)),
            Err(WriteError::Conflict { .. })
        ));
    }

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

    #[test]
    fn checked_chunks_are_written_without_hashing_again_but_only_at_their_index() {
        let root = folder();
        let cut = Cut::new(data(8, 40_000), &[10_000]);
        let checked = |i: usize| {
            CheckedChunk::check(&cut.chunks[i], cut.data[cut.ranges[i].clone()].to_vec()).unwrap()
        };
        assert!(CheckedChunk::check(&cut.chunks[0], cut.data[1..10_001].to_vec()).is_err());
        let mut asm = cut.open(root.path(), "f").unwrap();
        let err = asm.write_checked(1, &checked(0)).unwrap_err();
        assert!(
            matches!(err, WriteError::HashMismatch { index: 1, .. }),
            "{err}"
        );
        for i in 0..cut.chunks.len() {
            asm.write_checked(i, &checked(i)).unwrap();
        }
        asm.commit(Expect::Absent, 0o644, (1, 0)).unwrap();
        assert_eq!(fs::read(root.path().join("f")).unwrap(), cut.data);
    }

    #[test]
    fn read_chunk_returns_only_matching_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let content = data(1, 5000);
        fs::write(&path, &content).unwrap();
        let want = hash(&content[100..1100]);
        assert_eq!(
            read_chunk(&path, 100, 1000, &want)
                .unwrap()
                .unwrap()
                .bytes(),
            &content[100..1100]
        );
        assert_eq!(read_chunk(&path, 101, 1000, &want).unwrap(), None);
        assert_eq!(read_chunk(&path, 4500, 1000, &want).unwrap(), None);
        assert_eq!(
            read_chunk(&dir.path().join("nope"), 0, 10, &want).unwrap(),
            None
        );
        std::os::unix::fs::symlink(&path, dir.path().join("l")).unwrap();
        assert_eq!(
            read_chunk(&dir.path().join("l"), 100, 1000, &want).unwrap(),
            None
        );
        assert!(read_chunk(&path, 0, CHUNK_MAX + 1, &want).is_err());
    }

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
        let stale = [
            r.join(format!("{TEMP_PREFIX}1")),
            r.join(format!("a/b/{TEMP_PREFIX}2")),
        ];
        for p in &stale {
            fs::write(p, b"x").unwrap();
            set_old(p);
        }
        let fresh = r.join(format!("a/{TEMP_PREFIX}3"));
        fs::write(&fresh, b"x").unwrap();
        let mine = r.join("a/keep.txt");
        fs::write(&mine, b"x").unwrap();
        set_old(&mine);
        let link = r.join(format!("{TEMP_PREFIX}link-4"));
        std::os::unix::fs::symlink("t", &link).unwrap();
        set_mtime_nofollow(&link, (1, 0)).unwrap();
        // An assembly in progress whose temp file is old: held, so kept.
        let cut = sample();
        let asm = cut.open(r, "held").unwrap();
        let held = r.join(temp_name("held", &hash(&cut.data)));
        set_old(&held);

        assert_eq!(sweep_temp_files(r, Duration::from_secs(3600)).unwrap(), 3);
        assert!(stale.iter().all(|p| !p.exists()));
        assert!(fs::symlink_metadata(&link).is_err());
        assert!(fresh.exists() && mine.exists() && held.exists());
        drop(asm);
        assert_eq!(sweep_temp_files(r, Duration::from_secs(3600)).unwrap(), 1);
        assert!(!held.exists());
    }

    #[test]
    fn disk_full_errors_are_recognised() {
        for errno in [libc::ENOSPC, libc::EDQUOT] {
            let e = io_error(
                "write",
                Path::new("/x"),
                io::Error::from_raw_os_error(errno),
            );
            assert!(matches!(e, WriteError::DiskFull { .. }));
        }
        let e = io_error(
            "write",
            Path::new("/x"),
            io::Error::from_raw_os_error(libc::EIO),
        );
        assert!(matches!(e, WriteError::Io { .. }));
    }

    #[test]
    fn a_full_disk_while_writing_removes_the_temp_and_abandons_the_assembly() {
        // Where `fallocate` is unsupported, ENOSPC shows up at write time instead of at open.
        let root = folder();
        let cut = sample();
        let mut asm = cut.open(root.path(), "f").unwrap();
        asm.write_chunk(0, cut.chunk(0)).unwrap();
        let err = asm.fail("write chunk to", io::Error::from_raw_os_error(libc::ENOSPC));
        assert!(matches!(&err, WriteError::DiskFull { path, .. } if path.ends_with("f")));
        assert!(temps_in(root.path()).is_empty());
        assert!(matches!(
            asm.write_chunk(1, cut.chunk(1)),
            Err(WriteError::Abandoned { .. })
        ));
        assert!(matches!(
            asm.commit(Expect::Absent, 0o644, (0, 0)),
            Err(WriteError::Abandoned { .. })
        ));
        assert!(!root.path().join("f").exists());
        // A new assembly starts over.
        assert_eq!(
            cut.open(root.path(), "f").unwrap().missing().len(),
            cut.chunks.len()
        );
    }

    /// A 1 MiB tmpfs mounted for one test, unmounted when dropped.
    struct SmallDisk {
        dir: TempDir,
    }

    impl SmallDisk {
        fn mount() -> Option<SmallDisk> {
            let dir = tempfile::tempdir().ok()?;
            let status = std::process::Command::new("mount")
                .args(["-t", "tmpfs", "-o", "size=1m", "none"])
                .arg(dir.path())
                .stderr(std::process::Stdio::null())
                .status()
                .ok()?;
            status.success().then_some(SmallDisk { dir })
        }
    }

    impl Drop for SmallDisk {
        fn drop(&mut self) {
            let _ = std::process::Command::new("umount")
                .arg(self.dir.path())
                .status();
        }
    }

    #[test]
    fn a_full_disk_fails_cleanly_and_frees_the_temp_file() {
        let Some(disk) = SmallDisk::mount() else {
            println!("SKIPPED: cannot mount a tmpfs (not root?)");
            return;
        };
        let r = disk.dir.path();
        fs::create_dir(r.join(MARKER_DIR)).unwrap();
        fs::write(r.join("f"), data(2, 100_000)).unwrap();
        let expect = Expect::current(&r.join("f")).unwrap();
        let big = Cut::new(data(3, 2 << 20), &[CHUNK_MAX as usize]);
        let err = big.open(r, "f").unwrap_err();
        assert!(matches!(err, WriteError::DiskFull { .. }), "{err}");
        assert!(err.to_string().contains("disk full"), "{err}");
        assert_eq!(
            fs::read(r.join("f")).unwrap(),
            data(2, 100_000),
            "old file intact"
        );
        assert!(temps_in(r).is_empty(), "temp file removed");
        // The space is really back: a file that fits still goes through.
        let fits = Cut::new(data(4, 600_000), &[CHUNK_MAX as usize]);
        let mut asm = fits.open(r, "f").unwrap();
        let missing = asm.missing();
        write_all(&mut asm, &fits, &missing);
        asm.commit(expect, 0o644, (1, 0)).unwrap();
        assert_eq!(fs::read(r.join("f")).unwrap(), fits.data);
        // Two downloads that do not fit together: the second fails at open, before any fetch.
        let half = Cut::new(data(5, 300_000), &[CHUNK_MAX as usize]);
        let _a = half.open(r, "g").unwrap();
        let err = half.open(r, "h").unwrap_err();
        assert!(matches!(err, WriteError::DiskFull { .. }), "{err}");
        assert_eq!(temps_in(r).len(), 1);
    }
}
