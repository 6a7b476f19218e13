//! Scanning a shared folder: walk it under its ignore rules and describe every entry as a
//! [`FileMeta`], re-reading only the files that changed since the previous scan.
//!
//! The folder engine calls [`scan_all`] (startup, periodic safety-net rescans) and [`scan_paths`]
//! (what the file watcher reported) from a blocking thread; both are synchronous and spread the
//! hashing over up to [`MAX_HASH_WORKERS`] scoped threads.
//!
//! # What is scanned
//! Every file, directory and symlink under the root, except:
//! - paths matched by `.meshignore` files ([`IGNORE_FILE`], gitignore syntax, at the root and in
//!   any subdirectory; deeper files override shallower ones, `!` re-includes). No `.gitignore`,
//!   global git excludes or ignore files above the root apply: what syncs must not depend on
//!   which tools a peer has installed. Hidden files are synced. The `.meshignore` files are
//!   themselves synced, so every peer ignores the same things;
//! - the built-ins ([`is_ignored_builtin`]): [`MARKER_DIR`] and [`TEMP_PREFIX`] names;
//! - what cannot be represented: names that are not UTF-8, paths that
//!   [`model::check_rel_path`] refuses (too long, a backslash…) with their subtrees, files whose
//!   description [`model::check_meta`] refuses (over [`model::MAX_PAGES`] pages), fifos, sockets
//!   and devices. These are skipped with a warning in [`ScanOutput::warnings`].
//!
//! Symlinks are recorded as links ([`EntryKind::Symlink`] with their target) and never followed,
//! so a link to `/` cannot pull the whole disk into a share.
//!
//! # The unchanged-file rule
//! A file is not re-read when its previous [`ScanRecord`] is not `racy` and its size, mtime,
//! ctime (both to the nanosecond), inode and device all equal the current `lstat`. ctime cannot
//! be set by programs (unlike mtime, which `touch -d`, `cp -p` and unpackers restore), so an edit
//! that keeps size and mtime is still seen. Timestamps are only as fine as the kernel's coarse
//! clock (a few ms) or the filesystem (1–2 s on FAT, exFAT, HFS+): a write in the same tick as the
//! read could leave them unchanged. So, as git does for its "racily clean" entries, a record
//! whose newest timestamp is within [`RACY_WINDOW_FINE`] ([`RACY_WINDOW_COARSE`] when both
//! timestamps are whole seconds, a sign of a coarse filesystem) of the moment its read began is
//! marked `racy` and re-read by the next scan. Comparing the inode and device makes a file
//! replaced by rename (how editors and our own writer save) always re-read; the price is a full
//! re-read when a removable disk comes back with a new device number.
//!
//! # Files that change while read
//! Each file is read through one descriptor opened with `O_NOFOLLOW`; its `fstat` before and
//! after the read, the byte count, and an `lstat` of the path after the read must all agree
//! (size, mtime, ctime, inode). If not, or if the read fails, the file is read once more
//! ([`MAX_HASH_ATTEMPTS`]); if it still fails it is listed in [`ScanOutput::unstable`] and the
//! caller keeps what it had and rescans later. A [`FileMeta`] is never produced from a read whose
//! byte count differs from its size.
//!
//! # Never mistake a missing disk for deletions
//! Both scans fail with [`ScanError`] when the root is missing, not a directory, lacks its
//! [`MARKER_DIR`], cannot be listed, or changes identity or loses its marker during the scan.
//! A directory that cannot be listed, or whose `.meshignore` cannot be read, is reported in
//! [`ScanOutput::unstable`] and nothing under it is reported gone.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, Metadata, OpenOptions};
use std::io::{self, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ignore::WalkBuilder;
use serde::{Deserialize, Serialize};

use crate::folder::content::{
    FileHash, PIPELINE_FROM, Previous, hash_reader, hash_reader_pipelined,
};
use crate::folder::model::{
    self, ChunkRef, Content, EntryKind, FileMeta, IGNORE_FILE, MARKER_DIR, MAX_PATH_BYTES, PageRef,
    TEMP_PREFIX,
};

/// Most threads hashing files at once. Hashing is CPU-bound (BLAKE3 and the CDC gear hash,
/// together ~0.5 GB/s per thread); more threads than this would starve the daemon's other work
/// and make a spinning disk seek between files.
pub const MAX_HASH_WORKERS: usize = 4;

/// How many times a file is read before it is reported unstable: the first read and one retry.
pub const MAX_HASH_ATTEMPTS: u32 = 2;

/// A file whose mtime or ctime is this close to (or after) the moment its read began is
/// re-read by the next scan: a later write in the same clock tick could leave its timestamps
/// unchanged. Covers the kernel's coarse clock (≤ 10 ms) with a wide margin.
pub const RACY_WINDOW_FINE: Duration = Duration::from_millis(100);

/// The racy window for files whose timestamps are whole seconds (nanoseconds both zero): likely
/// a filesystem with 1 s (ext3, HFS+) or 2 s (FAT, exFAT) granularity.
pub const RACY_WINDOW_COARSE: Duration = Duration::from_secs(2);

/// Most warnings one scan returns; beyond this they are counted in a last summary line, so a
/// tree of millions of unreadable files cannot grow the result without bound.
pub const MAX_WARNINGS: usize = 1000;

/// What the scanner remembers about one entry between scans. The caller persists these (CBOR) and
/// passes them back as `previous`, so unchanged files are not re-read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanRecord {
    /// The entry's metadata as it is synced (its size and mtime are the file's `lstat` ones).
    #[serde(rename = "m")]
    pub meta: FileMeta,
    /// Status-change time, seconds since the Unix epoch: changes on every write, and programs
    /// cannot set it back.
    #[serde(rename = "cs")]
    pub ctime_secs: i64,
    /// Status-change time, nanoseconds within the second.
    #[serde(rename = "cn")]
    pub ctime_nanos: u32,
    /// Inode number: a file replaced by rename gets a new one.
    #[serde(rename = "i")]
    pub inode: u64,
    /// Device number of the filesystem holding the entry.
    #[serde(rename = "d")]
    pub dev: u64,
    /// The file was modified too close to its read for its timestamps to prove it unchanged
    /// later: the next scan re-reads it whatever its `lstat` says.
    #[serde(rename = "r", default)]
    pub racy: bool,
}

/// The result of a scan, full or partial.
///
/// The scope is the whole folder for [`scan_all`] and the requested subtrees for [`scan_paths`].
/// Within the scope, every path is in exactly one of these states: in `entries` (exists, here is
/// its description), in `gone` (known before or requested, and now has no entry: deleted, or now
/// ignored or unrepresentable), under a path in `unstable` (unknown this time: keep what you had),
/// or none of these (not known before and still absent).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ScanOutput {
    /// Every entry in scope, keyed by normalised relative path, changed or not.
    pub entries: BTreeMap<String, ScanRecord>,
    /// Paths in scope that were in `previous` (or requested) and now have no entry.
    pub gone: Vec<String>,
    /// Paths that exist but could not be described this time: files that kept changing while
    /// read or failed to read, directories that could not be listed or whose `.meshignore` could
    /// not be read. Covers the path and, for a directory, everything under it (`""`: the whole
    /// folder, when the root's `.meshignore` cannot be read). The caller keeps its previous state
    /// for them and rescans them later.
    pub unstable: Vec<String>,
    /// Chunk-list pages of the files hashed by this scan (empty for inline content and for files
    /// reused from `previous`, whose pages the caller already stored).
    pub pages: Vec<(PageRef, Vec<ChunkRef>)>,
    /// Human-readable notes on what was skipped and why (at most [`MAX_WARNINGS`] + 1 lines).
    pub warnings: Vec<String>,
    /// Files read by this scan, retries included (unchanged files reused are not counted).
    pub hashed_files: u64,
    /// Bytes read by this scan, retries included.
    pub hashed_bytes: u64,
}

/// Why a scan could not run. Every variant means "do not trust the folder now": the caller
/// pauses the share instead of taking missing files for deletions.
#[derive(Debug, thiserror::Error)]
pub enum ScanError {
    /// The root does not exist or cannot be reached (unmounted disk, removed folder).
    #[error("folder root {root} is missing or unreachable")]
    RootMissing {
        /// The root as configured.
        root: PathBuf,
        /// What the filesystem said.
        #[source]
        source: io::Error,
    },
    /// The root exists but is not a directory.
    #[error("folder root {root} is not a directory")]
    RootNotDirectory {
        /// The root as configured.
        root: PathBuf,
    },
    /// The root has no marker directory: probably the mount point of an unmounted disk.
    #[error(
        "folder root {root} has no {} marker directory (unmounted disk?)",
        MARKER_DIR
    )]
    MarkerMissing {
        /// The root as configured.
        root: PathBuf,
    },
    /// The root was replaced (another inode or device) while the scan ran: probably mounted or
    /// unmounted under us.
    #[error("folder root {root} changed while it was scanned (mounted or unmounted?)")]
    RootChanged {
        /// The root as configured.
        root: PathBuf,
    },
    /// The walk failed in a way that cannot be confined to a subdirectory (for instance the
    /// root cannot be listed).
    #[error("cannot walk {path} in folder {root}")]
    Walk {
        /// The root as configured.
        root: PathBuf,
        /// The path the error concerns (the root when unknown).
        path: PathBuf,
        /// What the walker said.
        #[source]
        source: ignore::Error,
    },
    /// A path given to [`scan_paths`] is not a normalised relative path.
    #[error("invalid relative path {path:?} for folder {root}: {reason}")]
    InvalidPath {
        /// The root as configured.
        root: PathBuf,
        /// The path as given.
        path: String,
        /// What is wrong with it.
        reason: &'static str,
    },
}

/// The chunk list of a file's previous version, when the caller has it (a large file's is in
/// pages the caller stores). A large file that changed is then read at hashing speed where it
/// did not change, instead of cut again (see [`crate::folder::content::Previous`]).
pub type ChunkLists<'a> = &'a (dyn Fn(&FileMeta) -> Option<Vec<ChunkRef>> + Sync);

/// Scans the whole folder at `root`. `previous` is the last scan's `entries` (empty the first
/// time): files it describes that have not changed are reused instead of re-read.
pub fn scan_all(
    root: &Path,
    previous: &BTreeMap<String, ScanRecord>,
) -> Result<ScanOutput, ScanError> {
    scan_all_reusing(root, previous, &|_| None)
}

/// [`scan_all`], finding the chunks of changed large files' previous versions again.
pub fn scan_all_reusing(
    root: &Path,
    previous: &BTreeMap<String, ScanRecord>,
    chunk_lists: ChunkLists,
) -> Result<ScanOutput, ScanError> {
    scan(root, Scope::All, previous, Known::default(), chunk_lists)
}

/// Re-examines only `paths` (normalised relative paths, as a watcher reports them), each with
/// its subtree when it is a directory; `""` means the whole folder. A requested path that no
/// longer has an entry, and any `previous` path under a requested directory that no longer has
/// one, is reported in [`ScanOutput::gone`]. Ignore rules apply exactly as in [`scan_all`]; a
/// requested `.meshignore` widens the scope to its directory, whose ignored set it may change.
pub fn scan_paths(
    root: &Path,
    paths: &[String],
    previous: &BTreeMap<String, ScanRecord>,
) -> Result<ScanOutput, ScanError> {
    scan_paths_reusing(root, paths, previous, &|_| None)
}

/// [`scan_paths`], finding the chunks of changed large files' previous versions again.
pub fn scan_paths_reusing(
    root: &Path,
    paths: &[String],
    previous: &BTreeMap<String, ScanRecord>,
    chunk_lists: ChunkLists,
) -> Result<ScanOutput, ScanError> {
    let mut requested = BTreeSet::new();
    for path in paths {
        let rel = normalise(path).map_err(|reason| ScanError::InvalidPath {
            root: root.to_path_buf(),
            path: path.clone(),
            reason,
        })?;
        let rel = match rel.rsplit_once('/') {
            Some((parent, IGNORE_FILE)) => parent.to_owned(),
            None if rel == IGNORE_FILE => String::new(),
            _ => rel,
        };
        if !is_ignored_builtin(&rel) {
            requested.insert(rel);
        }
    }
    let known = known_files(root, &requested, previous)?;
    requested.retain(|rel| !known.covers(rel));
    scan(root, Scope::Paths(requested), previous, known, chunk_lists)
}

/// Requested files that need no walk: files we have a record of, still regular files, with no
/// requested ancestor. A watcher reports every file we write ourselves, and walking the
/// directories on the way to each (listing them whole) would cost far more than the files.
/// (A requested directory, such as a rename or a new `.meshignore`, may change what is under it,
/// so its files go through the walk.)
#[derive(Default)]
struct Known {
    /// Provably unchanged (the unchanged-file rule on one `lstat`).
    reused: BTreeMap<String, ScanRecord>,
    /// To read again.
    jobs: Vec<Job>,
}

impl Known {
    fn covers(&self, rel: &str) -> bool {
        self.reused.contains_key(rel) || self.jobs.iter().any(|j| j.rel == rel)
    }
}

fn known_files(
    root: &Path,
    requested: &BTreeSet<String>,
    previous: &BTreeMap<String, ScanRecord>,
) -> Result<Known, ScanError> {
    let mut known = Known::default();
    let candidates: Vec<(&String, &ScanRecord)> = requested
        .iter()
        .filter(|rel| !rel.is_empty())
        .filter(|rel| {
            !ancestors_or_self(rel)
                .skip(1)
                .any(|a| requested.contains(a))
        })
        .filter_map(|rel| previous.get(rel).map(|record| (rel, record)))
        .filter(|(_, record)| record.meta.kind == EntryKind::File)
        .collect();
    if candidates.is_empty() {
        return Ok(known);
    }
    let (base, _) = check_root(root)?;
    for (rel, record) in candidates {
        let abs = base.join(rel);
        // Through a parent that became a symlink, `lstat` would reach another file; such a
        // change shows up as a changed inode below, and the parent's own event rescans it.
        let Ok(md) = fs::symlink_metadata(&abs) else {
            continue;
        };
        if !md.file_type().is_file() {
            continue;
        }
        let stat = Stat::of(&md);
        if reusable(record, &stat) {
            known.reused.insert(rel.clone(), record.clone());
        } else if record.inode == stat.ino && record.dev == stat.dev {
            known.jobs.push(Job {
                rel: rel.clone(),
                abs,
                size: stat.size,
            });
        }
    }
    Ok(known)
}

/// Whether a relative path is excluded whatever the `.meshignore` files say: the root's
/// [`MARKER_DIR`] and everything in it (this peer's state), and anything with a component
/// starting with [`TEMP_PREFIX`] (the writer's unfinished downloads). The same paths
/// [`model::check_rel_path`] refuses from peers.
pub fn is_ignored_builtin(rel: &str) -> bool {
    rel.split('/')
        .enumerate()
        .any(|(depth, name)| is_builtin_name(depth + 1, OsStr::new(name)))
}

/// Whether the entry called `name` at `depth` (1 for the root's children) is a built-in ignore.
fn is_builtin_name(depth: usize, name: &OsStr) -> bool {
    (depth == 1 && name == MARKER_DIR) || name.as_bytes().starts_with(TEMP_PREFIX.as_bytes())
}

/// Checks that `path` is a normalised relative path (`""` for the root) and returns it without a
/// leading `./` or trailing `/`.
fn normalise(path: &str) -> Result<String, &'static str> {
    let trimmed = path.strip_prefix("./").unwrap_or(path);
    let trimmed = trimmed.strip_suffix('/').unwrap_or(trimmed);
    if trimmed.is_empty() || trimmed == "." {
        return Ok(String::new());
    }
    if trimmed.len() > MAX_PATH_BYTES {
        return Err("longer than MAX_PATH_BYTES");
    }
    if trimmed.contains('\0') {
        return Err("contains a NUL byte");
    }
    if trimmed.starts_with('/') {
        return Err("absolute");
    }
    for name in trimmed.split('/') {
        match name {
            "" => return Err("empty component"),
            "." | ".." => return Err("`.` or `..` component"),
            _ => {}
        }
    }
    Ok(trimmed.to_owned())
}

/// Which part of the folder a scan covers.
#[derive(Debug, Clone)]
enum Scope {
    /// The whole folder.
    All,
    /// These normalised paths and their subtrees (`""` is the whole folder).
    Paths(BTreeSet<String>),
}

impl Scope {
    /// Whether `rel` is in scope: requested itself or under a requested path.
    fn covers(&self, rel: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Paths(set) => ancestors_or_self(rel).any(|a| set.contains(a)),
        }
    }

    /// Whether the walk must visit `rel`: in scope, or a directory on the way to a requested
    /// path.
    fn visits(&self, rel: &Path) -> bool {
        let Scope::Paths(set) = self else {
            return true;
        };
        if rel
            .ancestors()
            .filter_map(Path::to_str)
            .any(|a| set.contains(a))
        {
            return true;
        }
        let Some(rel) = rel.to_str() else {
            return false;
        };
        let prefix = format!("{rel}/");
        set.range(prefix.clone()..)
            .next()
            .is_some_and(|p| p.starts_with(&prefix))
    }
}

/// `rel`, then each of its parent directories, then `""` (the root).
fn ancestors_or_self(rel: &str) -> impl Iterator<Item = &str> {
    let parents = rel.rmatch_indices('/').map(|(i, _)| &rel[..i]);
    std::iter::once(rel)
        .chain(parents)
        .chain((!rel.is_empty()).then_some(""))
}

/// The `lstat`/`fstat` fields the scanner compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stat {
    /// Permission bits (`st_mode & 0o7777`).
    mode: u32,
    /// Size in bytes.
    size: u64,
    /// Modification time (seconds, nanoseconds).
    mtime: (i64, u32),
    /// Status-change time (seconds, nanoseconds).
    ctime: (i64, u32),
    /// Inode number.
    ino: u64,
    /// Device number.
    dev: u64,
}

impl Stat {
    fn of(md: &Metadata) -> Stat {
        let nanos = |n: i64| u32::try_from(n).unwrap_or(0);
        Stat {
            mode: md.mode() & 0o7777,
            size: md.size(),
            mtime: (md.mtime(), nanos(md.mtime_nsec())),
            ctime: (md.ctime(), nanos(md.ctime_nsec())),
            ino: md.ino(),
            dev: md.dev(),
        }
    }

    /// A record of this stat for `meta`.
    fn record(&self, meta: FileMeta, racy: bool) -> ScanRecord {
        ScanRecord {
            meta,
            ctime_secs: self.ctime.0,
            ctime_nanos: self.ctime.1,
            inode: self.ino,
            dev: self.dev,
            racy,
        }
    }

    /// Metadata without content (directories, symlinks).
    fn bare_meta(&self, kind: EntryKind, target: Option<String>) -> FileMeta {
        FileMeta {
            kind,
            mode: self.mode,
            mtime_secs: self.mtime.0,
            mtime_nanos: self.mtime.1,
            size: 0,
            hash: [0; 32],
            content: Content::Empty,
            target,
        }
    }
}

/// The unchanged-file rule (see the module docs): whether `previous` still describes a regular
/// file whose `lstat` is `now`.
fn reusable(previous: &ScanRecord, now: &Stat) -> bool {
    previous.stamp().is_some_and(|stamp| stamp.0 == *now)
}

/// What `lstat` said of a regular file when a scan described it. A file that has the same stamp
/// now is taken to hold the same bytes: the rule by which a rescan does not re-read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(Stat);

impl Stamp {
    /// Whether `md` (`fstat` of an open file, or `lstat` of a path) is still this file,
    /// unchanged.
    pub fn matches(&self, md: &Metadata) -> bool {
        Stat::of(md) == self.0
    }
}

impl ScanRecord {
    /// The stamp of the regular file this record describes, unless it was modified too close to
    /// its read (racy) for its stamp to vouch for its content.
    pub fn stamp(&self) -> Option<Stamp> {
        let meta = &self.meta;
        (meta.kind == EntryKind::File && !self.racy).then_some(Stamp(Stat {
            mode: meta.mode,
            size: meta.size,
            mtime: (meta.mtime_secs, meta.mtime_nanos),
            ctime: (self.ctime_secs, self.ctime_nanos),
            ino: self.inode,
            dev: self.dev,
        }))
    }
}

/// Whether a file with `stat`, read from `started` on, must be re-read next time (see
/// [`RACY_WINDOW_FINE`]).
fn is_racy(stat: &Stat, started: SystemTime) -> bool {
    let window = if stat.mtime.1 == 0 && stat.ctime.1 == 0 {
        RACY_WINDOW_COARSE
    } else {
        RACY_WINDOW_FINE
    };
    let Ok(started) = started.duration_since(UNIX_EPOCH) else {
        return true;
    };
    let nanos = |(secs, nanos): (i64, u32)| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let newest = nanos(stat.mtime).max(nanos(stat.ctime));
    newest + window.as_nanos() as i128 > started.as_nanos() as i128
}

/// Whether a file the writer just put in place with its mtime set to `mtime` (and `ctime` from
/// the rename) must be re-read by the next scan. Any later local write moves the mtime to the
/// clock's "now", which shows unless that equals `mtime`, i.e. unless `mtime` is itself within
/// the racy window of `now`. (A program restoring that exact mtime within the same clock tick as
/// our rename is the one edit left unseen.) Most received files are older than that, and
/// re-reading them cost as much as receiving them: all of a 256 MiB file, right after writing it.
pub fn written_is_racy(mtime: (i64, u32), ctime: (i64, u32), now: SystemTime) -> bool {
    let window = if mtime.1 == 0 && ctime.1 == 0 {
        RACY_WINDOW_COARSE
    } else {
        RACY_WINDOW_FINE
    };
    let Ok(now) = now.duration_since(UNIX_EPOCH) else {
        return true;
    };
    let mtime = i128::from(mtime.0) * 1_000_000_000 + i128::from(mtime.1);
    (mtime - now.as_nanos() as i128).abs() < window.as_nanos() as i128
}

/// Whether a read saw one consistent file: the descriptor's stat before and after, the path's
/// stat after, and the byte count all agree.
fn check_stable(before: &Stat, after: &Stat, at_path: &Stat, bytes: u64) -> Result<(), String> {
    if bytes != before.size || after.size != before.size {
        return Err(format!(
            "size changed while read ({} before, {bytes} read, {} after)",
            before.size, after.size
        ));
    }
    if after.mtime != before.mtime || after.ctime != before.ctime {
        return Err("modified while read".into());
    }
    if (at_path.ino, at_path.dev) != (before.ino, before.dev) {
        return Err("replaced while read".into());
    }
    if at_path != after {
        return Err("changed while read".into());
    }
    Ok(())
}

/// Warnings, capped at [`MAX_WARNINGS`].
#[derive(Default)]
struct Warnings {
    /// The first [`MAX_WARNINGS`] warnings.
    lines: Vec<String>,
    /// How many more there were.
    dropped: u64,
}

impl Warnings {
    fn push(&mut self, line: String) {
        tracing::warn!("{line}");
        if self.lines.len() < MAX_WARNINGS {
            self.lines.push(line);
        } else {
            self.dropped += 1;
        }
    }

    fn finish(mut self) -> Vec<String> {
        if self.dropped > 0 {
            self.lines
                .push(format!("… and {} more warnings", self.dropped));
        }
        self.lines
    }
}

/// A file to read.
struct Job {
    /// Its normalised relative path.
    rel: String,
    /// Where it is on disk.
    abs: PathBuf,
    /// Its size when listed: the largest are read first.
    size: u64,
}

/// What reading one file gave.
enum Outcome {
    /// A consistent description.
    Done(ScanRecord, Vec<(PageRef, Vec<ChunkRef>)>),
    /// No consistent read within [`MAX_HASH_ATTEMPTS`]; why.
    Unstable(String),
}

/// Reading one file: the outcome and the work it took.
struct Hashed {
    /// What came of it.
    outcome: Outcome,
    /// Reads started (a retry counts twice).
    reads: u64,
    /// Bytes read over all attempts.
    bytes: u64,
}

/// The scan behind both entry points: walk, read what changed, check the root is still there,
/// settle what is gone.
fn scan(
    root: &Path,
    scope: Scope,
    previous: &BTreeMap<String, ScanRecord>,
    known: Known,
    chunk_lists: ChunkLists,
) -> Result<ScanOutput, ScanError> {
    let (base, root_id) = check_root(root)?;
    let nothing_to_walk = matches!(&scope, Scope::Paths(set) if set.is_empty());
    let scope = Arc::new(scope);
    let mut walk = Walk {
        root,
        base: &base,
        scope: &scope,
        previous,
        entries: BTreeMap::new(),
        unstable: BTreeSet::new(),
        jobs: Vec::new(),
        warnings: Warnings::default(),
        skipped: Vec::new(),
    };
    if !nothing_to_walk {
        for item in walker(&base, &scope).build() {
            match item {
                Ok(entry) => walk.on_entry(&entry),
                Err(err) => walk.on_error(err)?,
            }
        }
    }
    let Walk {
        mut entries,
        mut unstable,
        mut jobs,
        mut warnings,
        ..
    } = walk;
    entries.extend(known.reused);
    jobs.extend(known.jobs);

    let mut out = ScanOutput::default();
    let previous_chunks = |job: &Job| {
        let record = previous
            .get(&job.rel)
            .filter(|_| job.size >= PIPELINE_FROM)?;
        chunk_lists(&record.meta).map(Previous::new)
    };
    for (job, hashed) in hash_all(jobs, &previous_chunks) {
        out.hashed_files += hashed.reads;
        out.hashed_bytes += hashed.bytes;
        match hashed.outcome {
            Outcome::Done(record, pages) => match model::check_meta(&job.rel, &record.meta) {
                Ok(()) => {
                    entries.insert(job.rel, record);
                    out.pages.extend(pages);
                }
                Err(why) => warnings.push(format!("{}: skipped ({why})", job.rel)),
            },
            Outcome::Unstable(why) => {
                warnings.push(format!("{}: {why}; will retry later", job.rel));
                // Rules we could not read may exclude anything in their directory.
                match job.rel.rsplit_once('/') {
                    Some((dir, IGNORE_FILE)) => unstable.insert(dir.to_owned()),
                    None if job.rel == IGNORE_FILE => unstable.insert(String::new()),
                    _ => unstable.insert(job.rel),
                };
            }
        }
    }

    recheck_root(root, &base, root_id)?;

    out.gone = settle(&scope, previous, &mut entries, &unstable);
    out.entries = entries;
    out.unstable = unstable.into_iter().collect();
    out.warnings = warnings.finish();
    tracing::debug!(
        root = %root.display(),
        entries = out.entries.len(),
        gone = out.gone.len(),
        unstable = out.unstable.len(),
        hashed_files = out.hashed_files,
        hashed_bytes = out.hashed_bytes,
        "scanned folder"
    );
    Ok(out)
}

/// Drops the entries under `unstable` paths (unknown this time) and returns the paths in scope
/// that were known (in `previous`) or requested and now have no entry, except those under
/// `unstable` paths.
fn settle(
    scope: &Scope,
    previous: &BTreeMap<String, ScanRecord>,
    entries: &mut BTreeMap<String, ScanRecord>,
    unstable: &BTreeSet<String>,
) -> Vec<String> {
    let under_unstable = |rel: &str| ancestors_or_self(rel).any(|a| unstable.contains(a));
    if !unstable.is_empty() {
        entries.retain(|rel, _| !under_unstable(rel));
    }
    let mut gone: BTreeSet<&String> = previous.keys().filter(|rel| scope.covers(rel)).collect();
    if let Scope::Paths(requested) = scope {
        gone.extend(requested.iter().filter(|r| !r.is_empty()));
    }
    gone.into_iter()
        .filter(|rel| !entries.contains_key(*rel) && !under_unstable(rel))
        .cloned()
        .collect()
}

/// The state of one walk: what it found so far.
struct Walk<'a> {
    /// The root as configured (for errors).
    root: &'a Path,
    /// The canonical root the walk runs in.
    base: &'a Path,
    /// What the caller asked for.
    scope: &'a Scope,
    /// The caller's records from the last scan.
    previous: &'a BTreeMap<String, ScanRecord>,
    /// Directories, symlinks and reused files.
    entries: BTreeMap<String, ScanRecord>,
    /// Paths unknown this time (see [`ScanOutput::unstable`]).
    unstable: BTreeSet<String>,
    /// Files to read.
    jobs: Vec<Job>,
    /// What was skipped and why.
    warnings: Warnings,
    /// Paths skipped with their subtree (non-UTF-8, refused by peers): one warning each.
    skipped: Vec<PathBuf>,
}

impl Walk<'_> {
    /// A walk error: confined to its path when it names one under the root, fatal otherwise
    /// (the root cannot be listed, or we cannot tell what is missing).
    fn on_error(&mut self, err: ignore::Error) -> Result<(), ScanError> {
        let path = error_path(&err).map(Path::to_path_buf);
        let rel = path
            .as_deref()
            .and_then(|p| p.strip_prefix(self.base).ok())
            .filter(|rel| !rel.as_os_str().is_empty());
        match rel.map(Path::to_str) {
            Some(Some(rel)) => {
                self.warnings
                    .push(format!("{rel}: cannot scan, will retry later: {err}"));
                self.unstable.insert(rel.to_owned());
                Ok(())
            }
            Some(None) => {
                self.warnings
                    .push(format!("cannot scan a non-UTF-8 path: {err}"));
                Ok(())
            }
            None => Err(ScanError::Walk {
                root: self.root.to_path_buf(),
                path: path.unwrap_or_else(|| self.root.to_path_buf()),
                source: err,
            }),
        }
    }

    /// One entry the walker yielded (not ignored): record it, queue it for reading, or skip it.
    fn on_entry(&mut self, entry: &ignore::DirEntry) {
        if entry.depth() == 0 {
            return;
        }
        if let Some(err) = entry.error() {
            self.warnings.push(format!(
                "{}: bad ignore rule: {err}",
                entry.path().display()
            ));
        }
        let Ok(rel_path) = entry.path().strip_prefix(self.base) else {
            return;
        };
        if self.skipped.iter().any(|s| rel_path.starts_with(s)) {
            return;
        }
        let Some(rel) = rel_path.to_str() else {
            self.warnings.push(format!(
                "{}: skipped (name is not UTF-8)",
                rel_path.to_string_lossy()
            ));
            self.skipped.push(rel_path.to_path_buf());
            return;
        };
        // What peers would refuse (too long, a backslash…) is not offered to them.
        if let Err(why) = model::check_rel_path(rel) {
            self.warnings.push(format!("{rel}: skipped ({why})"));
            self.skipped.push(rel_path.to_path_buf());
            return;
        }
        if !self.scope.covers(rel) {
            return; // A directory on the way to a requested path.
        }
        let md = match fs::symlink_metadata(entry.path()) {
            Ok(md) => md,
            Err(err) => {
                self.warnings
                    .push(format!("{rel}: cannot stat, will retry later: {err}"));
                self.unstable.insert(rel.to_owned());
                return;
            }
        };
        let stat = Stat::of(&md);
        let kind = md.file_type();
        if kind.is_dir() {
            let meta = stat.bare_meta(EntryKind::Dir, None);
            self.entries
                .insert(rel.to_owned(), stat.record(meta, false));
        } else if kind.is_symlink() {
            match fs::read_link(entry.path()).map(|t| t.into_os_string().into_string()) {
                Ok(Ok(target)) => {
                    let meta = stat.bare_meta(EntryKind::Symlink, Some(target));
                    self.entries
                        .insert(rel.to_owned(), stat.record(meta, false));
                }
                Ok(Err(_)) => self
                    .warnings
                    .push(format!("{rel}: skipped (link target is not UTF-8)")),
                Err(err) => {
                    self.warnings
                        .push(format!("{rel}: cannot read link, will retry later: {err}"));
                    self.unstable.insert(rel.to_owned());
                }
            }
        } else if kind.is_file() {
            match self.previous.get(rel) {
                Some(prev) if reusable(prev, &stat) => {
                    self.entries.insert(rel.to_owned(), prev.clone());
                }
                _ => self.jobs.push(Job {
                    rel: rel.to_owned(),
                    abs: entry.path().to_path_buf(),
                    size: stat.size,
                }),
            }
        } else {
            let what = if kind.is_fifo() {
                "a fifo"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "a device"
            };
            self.warnings.push(format!("{rel}: skipped ({what})"));
        }
    }
}

/// Checks the root is a directory with its marker; returns its canonical path (symlinks
/// resolved, so the walk descends into it) and its (device, inode).
fn check_root(root: &Path) -> Result<(PathBuf, (u64, u64)), ScanError> {
    let base = fs::canonicalize(root).map_err(|source| ScanError::RootMissing {
        root: root.to_path_buf(),
        source,
    })?;
    let id = root_identity(root, &base)?;
    Ok((base, id))
}

/// Checks, after the walk, that the root is still the directory it was, marker included.
fn recheck_root(root: &Path, base: &Path, id: (u64, u64)) -> Result<(), ScanError> {
    if root_identity(root, base)? != id {
        return Err(ScanError::RootChanged {
            root: root.to_path_buf(),
        });
    }
    Ok(())
}

/// The (device, inode) of the directory at `base`, once it is known to hold its marker.
fn root_identity(root: &Path, base: &Path) -> Result<(u64, u64), ScanError> {
    let md = fs::metadata(base).map_err(|source| ScanError::RootMissing {
        root: root.to_path_buf(),
        source,
    })?;
    if !md.is_dir() {
        return Err(ScanError::RootNotDirectory {
            root: root.to_path_buf(),
        });
    }
    if !fs::metadata(base.join(MARKER_DIR)).is_ok_and(|m| m.is_dir()) {
        return Err(ScanError::MarkerMissing {
            root: root.to_path_buf(),
        });
    }
    Ok((md.dev(), md.ino()))
}

/// The walker: `.meshignore` files only, hidden files included, symlinks not followed, built-ins
/// and out-of-scope subtrees pruned before they are read.
fn walker(base: &Path, scope: &Arc<Scope>) -> WalkBuilder {
    let mut builder = WalkBuilder::new(base);
    builder
        .standard_filters(false)
        .hidden(false)
        .parents(false)
        .ignore(false)
        .git_ignore(false)
        .git_global(false)
        .git_exclude(false)
        .require_git(false)
        .follow_links(false)
        .add_custom_ignore_filename(IGNORE_FILE)
        .sort_by_file_name(|a, b| a.cmp(b));
    let base = base.to_path_buf();
    let scope = Arc::clone(scope);
    builder.filter_entry(move |entry| {
        if is_builtin_name(entry.depth(), entry.file_name()) {
            return false;
        }
        entry
            .path()
            .strip_prefix(&base)
            .map_or(true, |rel| scope.visits(rel))
    });
    builder
}

/// The path a walk error concerns, if it names one.
fn error_path(err: &ignore::Error) -> Option<&Path> {
    match err {
        ignore::Error::WithPath { path, .. } => Some(path),
        ignore::Error::WithDepth { err, .. } | ignore::Error::WithLineNumber { err, .. } => {
            error_path(err)
        }
        ignore::Error::Partial(errs) => errs.iter().find_map(error_path),
        _ => None,
    }
}

/// Reads `jobs` on up to [`MAX_HASH_WORKERS`] threads (the calling one included), largest first
/// so one big file does not start last.
fn hash_all(
    mut jobs: Vec<Job>,
    previous_chunks: &(dyn Fn(&Job) -> Option<Previous> + Sync),
) -> Vec<(Job, Hashed)> {
    if jobs.is_empty() {
        return Vec::new();
    }
    jobs.sort_by_key(|job| std::cmp::Reverse(job.size));
    let workers = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_HASH_WORKERS)
        .min(jobs.len());
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else {
                return done;
            };
            done.push((i, hash_job(&job.abs, previous_chunks(job).as_ref())));
        }
    };
    let mut results: Vec<(usize, Hashed)> = thread::scope(|s| {
        let work = &work;
        let handles: Vec<_> = (1..workers)
            .filter_map(|n| {
                thread::Builder::new()
                    .name(format!("meshsync-hash-{n}"))
                    .spawn_scoped(s, work)
                    .ok()
            })
            .collect();
        let mut all = work();
        for handle in handles {
            match handle.join() {
                Ok(done) => all.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    results.sort_by_key(|(i, _)| *i);
    jobs.into_iter()
        .zip(results)
        .map(|(job, (_, hashed))| (job, hashed))
        .collect()
}

/// Reads one file until it reads consistently, at most [`MAX_HASH_ATTEMPTS`] times.
fn hash_job(abs: &Path, previous: Option<&Previous>) -> Hashed {
    let mut hashed = Hashed {
        outcome: Outcome::Unstable(String::new()),
        reads: 0,
        bytes: 0,
    };
    for _ in 0..MAX_HASH_ATTEMPTS {
        let started = SystemTime::now();
        hashed.reads += 1;
        match hash_once(abs, &mut hashed.bytes, previous) {
            Ok((stat, content)) => {
                let (described, pages) = model::describe(content.chunks);
                let meta = FileMeta {
                    kind: EntryKind::File,
                    mode: stat.mode,
                    mtime_secs: stat.mtime.0,
                    mtime_nanos: stat.mtime.1,
                    size: content.size,
                    hash: content.hash,
                    content: described,
                    target: None,
                };
                hashed.outcome = Outcome::Done(stat.record(meta, is_racy(&stat, started)), pages);
                return hashed;
            }
            Err(why) => hashed.outcome = Outcome::Unstable(why),
        }
    }
    hashed
}

/// One consistent read of the regular file at `abs`, or why it was not consistent. Adds the
/// bytes read to `bytes`.
fn hash_once(
    abs: &Path,
    bytes: &mut u64,
    previous: Option<&Previous>,
) -> Result<(Stat, FileHash), String> {
    let io = |what: &str, err: io::Error| format!("cannot {what}: {err}");
    // O_NOFOLLOW: a symlink swapped in is not followed; O_NONBLOCK: a fifo swapped in does not
    // block the open.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(abs)
        .map_err(|e| io("open", e))?;
    let md = file.metadata().map_err(|e| io("stat", e))?;
    if !md.is_file() {
        return Err("no longer a regular file".into());
    }
    let before = Stat::of(&md);
    let mut reader = CountingReader {
        inner: &file,
        count: 0,
    };
    let result = if before.size >= PIPELINE_FROM {
        hash_reader_pipelined(&mut reader, previous)
    } else {
        hash_reader(&mut reader)
    };
    *bytes += reader.count;
    let content = result.map_err(|e| io("read", e))?;
    let after = Stat::of(&file.metadata().map_err(|e| io("stat", e))?);
    let at_path = Stat::of(&fs::symlink_metadata(abs).map_err(|e| io("stat", e))?);
    check_stable(&before, &after, &at_path, content.size)?;
    Ok((before, content))
}

/// Counts the bytes read through it, failed reads included.
struct CountingReader<R> {
    /// Where the bytes come from.
    inner: R,
    /// Bytes read so far.
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::content::hash_file;
    use crate::folder::model::{CHUNK_MAX, CHUNK_MIN};
    use std::os::unix::fs::{PermissionsExt, symlink};
    use std::path::Path;

    /// A fresh folder with its marker.
    fn folder() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join(MARKER_DIR)).unwrap();
        dir
    }

    fn write(root: &Path, rel: &str, data: &[u8]) {
        let path = root.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, data).unwrap();
    }

    /// Deterministic pseudo-random bytes.
    fn random(seed: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0; len];
        blake3::Hasher::new()
            .update(&seed.to_le_bytes())
            .finalize_xof()
            .fill(&mut out);
        out
    }

    /// Waits until files written now are past the racy window, so a scan trusts them.
    fn settle() {
        thread::sleep(RACY_WINDOW_FINE + Duration::from_millis(50));
    }

    fn keys(out: &ScanOutput) -> Vec<&str> {
        out.entries.keys().map(String::as_str).collect()
    }

    fn chunks_of(meta: &FileMeta, pages: &[(PageRef, Vec<ChunkRef>)]) -> Vec<ChunkRef> {
        match &meta.content {
            Content::Empty => Vec::new(),
            Content::Inline(chunks) => chunks.clone(),
            Content::Paged(refs) => refs
                .iter()
                .flat_map(|r| pages.iter().find(|(p, _)| p == r).unwrap().1.clone())
                .collect(),
        }
    }

    #[test]
    fn ignore_rules_apply_nested_and_with_negation() {
        let dir = folder();
        let root = dir.path();
        write(root, IGNORE_FILE, b"*.log\n!keep.log\nbuild/\n");
        write(
            root,
            &format!("sub/{IGNORE_FILE}"),
            b"local.txt\n!debug.log\n",
        );
        // Only .meshignore counts: what syncs must not depend on a peer's git setup.
        write(root, ".gitignore", b"keep.log\n");
        write(root, ".ignore", b".hidden\n");
        for rel in [
            "a.log",
            "keep.log",
            "build/out.bin",
            "local.txt",
            "sub/local.txt",
            "sub/debug.log",
            "sub/other.log",
            "sub/build/x",
            ".hidden",
        ] {
            write(root, rel, rel.as_bytes());
        }
        let out = scan_all(root, &BTreeMap::new()).unwrap();
        assert_eq!(
            keys(&out),
            [
                ".gitignore",
                ".hidden",
                ".ignore",
                IGNORE_FILE,
                "keep.log",
                "local.txt",
                "sub",
                &format!("sub/{IGNORE_FILE}"),
                "sub/debug.log",
            ]
        );
        assert!(out.warnings.is_empty(), "{:?}", out.warnings);
    }

    #[test]
    fn builtins_are_ignored() {
        let dir = folder();
        let root = dir.path();
        write(root, &format!("{MARKER_DIR}/state"), b"x");
        write(root, &format!("{TEMP_PREFIX}abc"), b"x");
        write(root, &format!("sub/{TEMP_PREFIX}def"), b"x");
        write(root, &format!("nested/{MARKER_DIR}/state"), b"x");
        write(root, ".meshsync.txt", b"x");
        let out = scan_all(root, &BTreeMap::new()).unwrap();
        assert_eq!(
            keys(&out),
            [
                ".meshsync.txt",
                "nested",
                &format!("nested/{MARKER_DIR}"),
                &format!("nested/{MARKER_DIR}/state"),
                "sub",
            ]
        );

        assert!(is_ignored_builtin(MARKER_DIR));
        assert!(is_ignored_builtin(&format!("{MARKER_DIR}/x/y")));
        assert!(!is_ignored_builtin(&format!("a/{MARKER_DIR}")));
        assert!(is_ignored_builtin(&format!("a/{TEMP_PREFIX}1")));
        assert!(!is_ignored_builtin(".meshsync.txt"));
        assert!(!is_ignored_builtin(IGNORE_FILE));
    }

    #[test]
    fn symlinks_are_recorded_not_followed() {
        let dir = folder();
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret", b"outside");
        let root = dir.path();
        write(root, "file", b"inside");
        symlink("file", root.join("to_file")).unwrap();
        symlink(outside.path(), root.join("to_outside")).unwrap();
        symlink("nowhere", root.join("dangling")).unwrap();
        let out = scan_all(root, &BTreeMap::new()).unwrap();
        assert_eq!(keys(&out), ["dangling", "file", "to_file", "to_outside"]);
        let link = &out.entries["to_outside"].meta;
        assert_eq!(link.kind, EntryKind::Symlink);
        assert_eq!(link.target.as_deref(), outside.path().to_str());
        assert_eq!((link.size, link.content.clone()), (0, Content::Empty));
        assert_eq!(out.entries["to_file"].meta.target.as_deref(), Some("file"));
        assert_eq!(out.hashed_files, 1);
    }

    #[test]
    fn a_symlinked_root_is_walked() {
        let dir = folder();
        write(dir.path(), "file", b"x");
        let links = tempfile::tempdir().unwrap();
        let root = links.path().join("share");
        symlink(dir.path(), &root).unwrap();
        assert_eq!(keys(&scan_all(&root, &BTreeMap::new()).unwrap()), ["file"]);
    }

    #[test]
    fn empty_dirs_are_entries_and_the_root_is_not() {
        let dir = folder();
        fs::create_dir_all(dir.path().join("a/b")).unwrap();
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        assert_eq!(keys(&out), ["a", "a/b"]);
        let meta = &out.entries["a/b"].meta;
        assert_eq!((meta.kind, meta.hash), (EntryKind::Dir, [0; 32]));
    }

    #[test]
    fn large_files_are_given_their_previous_chunks_and_described_the_same() {
        use std::sync::Mutex;
        let dir = folder();
        let root = dir.path();
        let mut data = random(5, 6 << 20);
        write(root, "big", &data);
        write(root, "small", &random(6, 1000));
        settle();
        let first = scan_all(root, &BTreeMap::new()).unwrap();
        data[3 << 20..(3 << 20) + 5000].copy_from_slice(&random(7, 5000));
        fs::write(root.join("big"), &data).unwrap();
        fs::write(root.join("small"), random(8, 1000)).unwrap();
        settle();
        let asked = Mutex::new(Vec::new());
        let lists = |meta: &FileMeta| {
            asked.lock().unwrap().push(meta.size);
            Some(chunks_of(meta, &first.pages))
        };
        let paths = ["big".to_owned(), "small".to_owned()];
        let reusing = scan_paths_reusing(root, &paths, &first.entries, &lists).unwrap();
        // Only the large file is worth a lookup.
        assert_eq!(*asked.lock().unwrap(), [6 << 20]);
        let plain = scan_paths(root, &paths, &first.entries).unwrap();
        assert_eq!(reusing.entries, plain.entries);
        assert_eq!(reusing.pages, plain.pages);
        assert_eq!(
            plain.entries["big"].meta.hash,
            *blake3::hash(&data).as_bytes()
        );
    }

    #[test]
    fn unchanged_files_are_not_reread_and_modified_ones_are() {
        let dir = folder();
        let root = dir.path();
        for i in 0..20 {
            write(root, &format!("d/f{i}"), &random(i, 1000 + i as usize));
        }
        settle();
        let first = scan_all(root, &BTreeMap::new()).unwrap();
        assert_eq!(first.hashed_files, 20);
        assert!(first.entries.values().all(|r| !r.racy));

        let second = scan_all(root, &first.entries).unwrap();
        assert_eq!(second.hashed_files, 0);
        assert_eq!(second.entries, first.entries);
        assert!(second.gone.is_empty());

        // Same size, mtime put back: only the ctime tells.
        let path = root.join("d/f3");
        let mtime = fs::metadata(&path).unwrap().modified().unwrap();
        fs::write(&path, random(99, 1003)).unwrap();
        fs::File::options()
            .write(true)
            .open(&path)
            .unwrap()
            .set_modified(mtime)
            .unwrap();
        settle();
        let third = scan_all(root, &second.entries).unwrap();
        assert_eq!(third.hashed_files, 1);
        assert_eq!(third.hashed_bytes, 1003);
        let (old, new) = (&second.entries["d/f3"].meta, &third.entries["d/f3"].meta);
        assert_eq!((old.size, old.mtime_secs), (new.size, new.mtime_secs));
        assert_ne!(old.hash, new.hash);
        assert_eq!(new.hash, *blake3::hash(&random(99, 1003)).as_bytes());
    }

    #[test]
    fn a_racy_file_is_reread_by_the_next_scan() {
        let dir = folder();
        write(dir.path(), "fresh", b"just written");
        let first = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        assert!(first.entries["fresh"].racy);
        let second = scan_all(dir.path(), &first.entries).unwrap();
        assert_eq!(second.hashed_files, 1);
        settle();
        let third = scan_all(dir.path(), &second.entries).unwrap();
        assert_eq!(third.hashed_files, u64::from(second.entries["fresh"].racy));
    }

    #[test]
    fn a_written_file_is_racy_only_if_a_write_now_could_keep_its_mtime() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        let ctime = (1_000, 700);
        // A file from a peer, last changed a while ago: a local write would show as a new mtime.
        assert!(!written_is_racy((990, 5), ctime, at(1_000, 800)));
        // Changed on the peer just now: a local write in the same tick could keep that mtime.
        assert!(written_is_racy((1_000, 5), ctime, at(1_000, 800)));
        // A peer clock slightly ahead of ours is within the window too; far ahead is not.
        assert!(written_is_racy((1_000, 50_000_000), ctime, at(1_000, 800)));
        assert!(!written_is_racy((1_060, 0), ctime, at(1_000, 800)));
        // Whole-second timestamps (FAT, HFS+) get the coarse window.
        assert!(written_is_racy((999, 0), (1_000, 0), at(1_000, 0)));
        assert!(!written_is_racy((990, 0), (1_000, 0), at(1_000, 0)));
    }

    #[test]
    fn the_racy_and_reuse_rules() {
        let stat = Stat {
            mode: 0o644,
            size: 10,
            mtime: (1_000, 500),
            ctime: (1_000, 900),
            ino: 7,
            dev: 1,
        };
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert!(is_racy(&stat, at(1_000, 50_000_000)));
        assert!(!is_racy(&stat, at(1_001, 0)));
        let coarse = Stat {
            mtime: (1_000, 0),
            ctime: (1_000, 0),
            ..stat
        };
        assert!(is_racy(&coarse, at(1_001, 0)));
        assert!(!is_racy(&coarse, at(1_003, 0)));

        let meta = FileMeta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_secs: 1_000,
            mtime_nanos: 500,
            size: 10,
            hash: [1; 32],
            content: Content::Empty,
            target: None,
        };
        let record = stat.record(meta, false);
        assert!(reusable(&record, &stat));
        assert!(!reusable(
            &ScanRecord {
                racy: true,
                ..record.clone()
            },
            &stat
        ));
        for changed in [
            Stat { size: 11, ..stat },
            Stat {
                mtime: (1_000, 501),
                ..stat
            },
            Stat {
                ctime: (1_000, 901),
                ..stat
            },
            Stat { ino: 8, ..stat },
            Stat { dev: 2, ..stat },
        ] {
            assert!(!reusable(&record, &changed), "{changed:?}");
        }
    }

    #[test]
    fn a_read_must_be_consistent() {
        let stat = Stat {
            mode: 0o644,
            size: 10,
            mtime: (1_000, 500),
            ctime: (1_000, 900),
            ino: 7,
            dev: 1,
        };
        assert!(check_stable(&stat, &stat, &stat, 10).is_ok());
        assert!(check_stable(&stat, &stat, &stat, 9).is_err());
        let grown = Stat { size: 12, ..stat };
        assert!(check_stable(&stat, &grown, &grown, 10).is_err());
        let touched = Stat {
            ctime: (1_000, 901),
            ..stat
        };
        assert!(check_stable(&stat, &touched, &touched, 10).is_err());
        let replaced = Stat { ino: 8, ..stat };
        assert!(check_stable(&stat, &stat, &replaced, 10).is_err());
    }

    #[test]
    fn a_file_changing_while_read_never_gets_a_wrong_size() {
        let dir = folder();
        let path = dir.path().join("growing");
        fs::write(&path, random(1, 8 << 20)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    io::Write::write_all(&mut file, &[1; 4096]).unwrap();
                    thread::sleep(Duration::from_micros(200));
                }
            });
            for _ in 0..3 {
                let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
                match out.entries.get("growing") {
                    Some(record) => {
                        let chunks = chunks_of(&record.meta, &out.pages);
                        let sum: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
                        assert_eq!(sum, record.meta.size);
                    }
                    None => assert_eq!(out.unstable, ["growing"]),
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
    }

    #[test]
    fn chunks_reassemble_to_the_file() {
        let data = random(7, 3 << 20);
        let dir = folder();
        write(dir.path(), "f", &data);
        let hashed = hash_file(&dir.path().join("f")).unwrap();
        assert_eq!(hashed.size, data.len() as u64);
        assert_eq!(hashed.hash, *blake3::hash(&data).as_bytes());
        let mut offset = 0usize;
        for (i, chunk) in hashed.chunks.iter().enumerate() {
            let len = chunk.len as usize;
            assert!(len <= CHUNK_MAX as usize);
            assert!(len >= CHUNK_MIN as usize || i + 1 == hashed.chunks.len());
            assert_eq!(
                chunk.hash,
                *blake3::hash(&data[offset..offset + len]).as_bytes()
            );
            offset += len;
        }
        assert_eq!(offset, data.len());

        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        let meta = &out.entries["f"].meta;
        assert!(matches!(meta.content, Content::Paged(_)));
        assert_eq!(chunks_of(meta, &out.pages), hashed.chunks);
        assert_eq!(meta.hash, hashed.hash);
    }

    #[test]
    fn empty_files_have_no_chunks() {
        let dir = folder();
        write(dir.path(), "empty", b"");
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        let meta = &out.entries["empty"].meta;
        assert_eq!((meta.size, &meta.content), (0, &Content::Empty));
        assert_eq!(meta.hash, *blake3::hash(b"").as_bytes());
    }

    #[test]
    fn identical_content_gives_identical_chunks() {
        let data = random(3, 1 << 20);
        let dir = folder();
        write(dir.path(), "a", &data);
        write(dir.path(), "x/b", &data);
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        let (a, b) = (&out.entries["a"].meta, &out.entries["x/b"].meta);
        assert!(a.same_content(b));
        assert_eq!(a.content, b.content);
    }

    #[test]
    fn fifos_are_skipped_with_a_warning() {
        let dir = folder();
        let fifo = std::ffi::CString::new(dir.path().join("pipe").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) }, 0);
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        assert!(out.entries.is_empty());
        assert_eq!(out.warnings, ["pipe: skipped (a fifo)"]);
    }

    #[test]
    fn non_utf8_names_are_skipped_with_a_warning() {
        let dir = folder();
        let bad = OsStr::from_bytes(b"bad\xff");
        fs::write(dir.path().join(bad), b"x").unwrap();
        fs::create_dir(dir.path().join("bad-dir\u{e9}")).unwrap();
        fs::create_dir(dir.path().join(OsStr::from_bytes(b"d\xfe"))).unwrap();
        fs::write(dir.path().join(OsStr::from_bytes(b"d\xfe/inner")), b"x").unwrap();
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        assert_eq!(keys(&out), ["bad-dir\u{e9}"]);
        assert_eq!(out.warnings.len(), 2, "{:?}", out.warnings);
        assert!(out.warnings.iter().all(|w| w.contains("not UTF-8")));
    }

    #[test]
    fn paths_peers_would_refuse_are_skipped_with_a_warning() {
        let dir = folder();
        write(dir.path(), "back\\slash/inner", b"x");
        write(dir.path(), "fine", b"x");
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        assert_eq!(keys(&out), ["fine"]);
        assert_eq!(out.warnings.len(), 1, "{:?}", out.warnings);
        assert!(out.warnings[0].contains("backslash"), "{:?}", out.warnings);
    }

    #[test]
    fn a_missing_root_or_marker_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let none = BTreeMap::new();
        let missing = dir.path().join("missing");
        assert!(matches!(
            scan_all(&missing, &none),
            Err(ScanError::RootMissing { .. })
        ));
        write(dir.path(), "file", b"x");
        assert!(matches!(
            scan_all(&dir.path().join("file"), &none),
            Err(ScanError::RootNotDirectory { .. })
        ));
        assert!(matches!(
            scan_all(dir.path(), &none),
            Err(ScanError::MarkerMissing { .. })
        ));
        let paths = ["file".to_owned()];
        assert!(matches!(
            scan_paths(dir.path(), &paths, &none),
            Err(ScanError::MarkerMissing { .. })
        ));
        let err = scan_all(dir.path(), &none).unwrap_err().to_string();
        assert!(err.contains(dir.path().to_str().unwrap()), "{err}");
    }

    #[test]
    fn partial_scans_report_gone_paths_and_subtrees() {
        let dir = folder();
        let root = dir.path();
        for rel in ["a/1", "a/2", "a/sub/3", "b/4", "c"] {
            write(root, rel, rel.as_bytes());
        }
        let full = scan_all(root, &BTreeMap::new()).unwrap();
        fs::remove_file(root.join("c")).unwrap();
        fs::remove_file(root.join("a/sub/3")).unwrap();
        write(root, "a/new", b"new");
        write(root, "b/5", b"not requested");

        let paths = ["c".to_owned(), "a/".to_owned(), "never".to_owned()];
        let out = scan_paths(root, &paths, &full.entries).unwrap();
        assert_eq!(keys(&out), ["a", "a/1", "a/2", "a/new", "a/sub"]);
        assert_eq!(out.gone, ["a/sub/3", "c", "never"]);
        assert!(out.unstable.is_empty());

        let root_too = scan_paths(root, &[String::new()], &full.entries).unwrap();
        assert_eq!(
            root_too.entries,
            scan_all(root, &full.entries).unwrap().entries
        );

        for bad in ["/abs", "a/../b", "a//b", "a/./b"] {
            assert!(matches!(
                scan_paths(root, &[bad.to_owned()], &full.entries),
                Err(ScanError::InvalidPath { .. })
            ));
        }
    }

    #[test]
    fn requested_unchanged_files_are_neither_walked_nor_read() {
        let dir = folder();
        let root = dir.path();
        for rel in ["a/1", "a/2", "b/3"] {
            write(root, rel, rel.as_bytes());
        }
        settle();
        let full = scan_all(root, &BTreeMap::new()).unwrap();
        let paths = ["a/1".to_owned(), "b/3".to_owned()];
        let out = scan_paths(root, &paths, &full.entries).unwrap();
        assert_eq!(out.hashed_files, 0);
        assert_eq!(keys(&out), ["a/1", "b/3"]);
        assert_eq!(out.entries["a/1"], full.entries["a/1"]);

        // Changed, replaced, or under a requested directory: the walk and a read decide.
        write(root, "a/1", b"changed");
        fs::remove_file(root.join("b/3")).unwrap();
        write(root, "b/3", b"b/3");
        let out = scan_paths(root, &paths, &full.entries).unwrap();
        assert_eq!(out.hashed_files, 2);
        let with_parent = ["a".to_owned(), "a/2".to_owned()];
        let out = scan_paths(root, &with_parent, &full.entries).unwrap();
        assert!(out.entries.contains_key("a/2"));
        assert!(
            out.entries["a/1"].meta.size == 7,
            "the walk saw the change under `a`"
        );
    }

    #[test]
    fn partial_scans_follow_the_same_ignore_rules() {
        let dir = folder();
        let root = dir.path();
        write(root, IGNORE_FILE, b"skip/\n*.tmp\n");
        write(root, &format!("deep/{IGNORE_FILE}"), b"!keep.tmp\n");
        for rel in ["skip/x", "deep/a.tmp", "deep/keep.tmp", "deep/y", "z.tmp"] {
            write(root, rel, b"x");
        }
        let paths: Vec<String> = ["skip/x", "deep", "z.tmp", &format!("{MARKER_DIR}/s")]
            .map(str::to_owned)
            .to_vec();
        let out = scan_paths(root, &paths, &BTreeMap::new()).unwrap();
        assert_eq!(
            keys(&out),
            [
                "deep",
                &format!("deep/{IGNORE_FILE}"),
                "deep/keep.tmp",
                "deep/y"
            ]
        );
        assert_eq!(out.gone, ["skip/x", "z.tmp"]);

        // A changed ignore file rescans its directory.
        write(root, IGNORE_FILE, b"*.tmp\n");
        let out = scan_paths(root, &[IGNORE_FILE.to_owned()], &BTreeMap::new()).unwrap();
        assert!(out.entries.contains_key("skip/x"));
    }

    #[test]
    fn an_unreadable_directory_is_unstable_not_gone() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } == 0 {
            return; // root reads everything: nothing to test.
        }
        let dir = folder();
        let root = dir.path();
        write(root, "locked/f", b"x");
        let full = scan_all(root, &BTreeMap::new()).unwrap();
        fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o000)).unwrap();
        let out = scan_all(root, &full.entries);
        fs::set_permissions(root.join("locked"), fs::Permissions::from_mode(0o755)).unwrap();
        let out = out.unwrap();
        assert_eq!(out.unstable, ["locked"]);
        assert!(out.gone.is_empty());
        assert!(!out.entries.contains_key("locked"));

        // Rules we cannot read might exclude anything beside them.
        write(root, &format!("sub/{IGNORE_FILE}"), b"secret\n");
        write(root, "sub/secret", b"x");
        let rules = root.join("sub").join(IGNORE_FILE);
        fs::set_permissions(&rules, fs::Permissions::from_mode(0o000)).unwrap();
        let out = scan_all(root, &full.entries).unwrap();
        assert_eq!(out.unstable, ["sub"]);
        assert!(out.entries.keys().all(|k| !k.starts_with("sub")));
    }

    #[test]
    fn records_round_trip_through_cbor() {
        let dir = folder();
        write(dir.path(), "f", &random(5, 300_000));
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        let mut bytes = Vec::new();
        ciborium::into_writer(&out.entries, &mut bytes).unwrap();
        let back: BTreeMap<String, ScanRecord> = ciborium::from_reader(bytes.as_slice()).unwrap();
        assert_eq!(back, out.entries);
    }

    /// Throughput, in release mode:
    /// `cargo test --release -- --ignored --nocapture hashing_throughput`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn hashing_throughput() {
        use std::time::Instant;
        let dir = folder();
        let root = dir.path();
        write(root, "big", &random(1, 256 << 20));
        for i in 0..10_000u64 {
            write(root, &format!("small/{:02}/{i}", i % 100), &random(i, 4096));
        }
        let start = Instant::now();
        let single = hash_file(&root.join("big")).unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!("hash_file 256 MiB: {secs:.3} s, {:.0} MiB/s", 256.0 / secs);
        assert_eq!(single.size, 256 << 20);

        settle();
        let start = Instant::now();
        let out = scan_all(root, &BTreeMap::new()).unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "scan_all first (256 MiB + 10,000 × 4 KiB, {} files): {secs:.3} s, {:.0} MiB/s",
            out.hashed_files,
            out.hashed_bytes as f64 / (1 << 20) as f64 / secs
        );
        let start = Instant::now();
        let again = scan_all(root, &out.entries).unwrap();
        println!(
            "scan_all unchanged ({} entries, {} re-read): {:.3} s",
            again.entries.len(),
            again.hashed_files,
            start.elapsed().as_secs_f64()
        );
        fs::remove_file(root.join("big")).unwrap();
        let start = Instant::now();
        let small = scan_all(root, &BTreeMap::new()).unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "scan_all 10,000 × 4 KiB only: {secs:.3} s, {:.0} files/s",
            small.hashed_files as f64 / secs
        );
    }
}
