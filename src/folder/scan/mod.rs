//! Scanning a shared folder: walk it under its ignore rules and describe every entry as a
//! [`FileMeta`], re-reading only the files that changed since the previous scan.
//!
//! The folder engine calls [`scan_all`] (startup, rescans of unwatched folders and after lost
//! watch events), [`scan_range_reusing`] (a slice of the periodic verification while the
//! watcher runs) and [`scan_paths`] (what the file watcher reported) from a blocking thread;
//! all are synchronous and spread the hashing over up to [`MAX_HASH_WORKERS`] scoped threads.
//! A slice covers a run of paths in byte order: it walks only the directories whose subtree
//! meets it, but lists each of those whole (a directory of 10^6 entries is listed by every
//! slice that meets it; the slices' pacing bounds what that costs).
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
//!   [`validate_rel_path`] refuses (too long, a backslash…) with their subtrees, files whose
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
//!
//! # Layout
//! - `walk`: the walk itself (scope, built-in and `.meshignore` rules, what each entry becomes)
//!   and the checks that the root is still the folder;
//! - `stat`: the `lstat` fields compared between scans, the unchanged-file and racy rules
//!   ([`Stamp`], [`written_is_racy`]);
//! - `hash`: reading changed files on worker threads until a read is consistent.
//!
//! [`TEMP_PREFIX`]: crate::folder::model::TEMP_PREFIX
//! [`validate_rel_path`]: crate::folder::write::validate_rel_path

mod hash;
mod spill;
mod stat;
#[cfg(test)]
mod testkit;
mod walk;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::folder::content::{PIPELINE_FROM, Previous};
use crate::folder::model::{self, ChunkRef, EntryKind, FileMeta, IGNORE_FILE, MARKER_DIR, PageRef};

pub use hash::{MAX_HASH_ATTEMPTS, MAX_HASH_WORKERS};
pub use spill::{SPILL_FROM, SpillReader, SpilledEntries};
pub use stat::{RACY_WINDOW_COARSE, RACY_WINDOW_FINE, Stamp, StampDigest, written_is_racy};
pub use walk::{PathRange, is_ignored_builtin};

use super::path_digest::PathDigest;
use hash::{Hashed, Job, Outcome, hash_all};
use spill::Spilling;
use stat::{Seen, Stat, reusable};
use walk::{Scope, Walked, ancestors_or_self, check_root, normalise, recheck_root};

/// Most warnings one scan returns; beyond this they are counted in a last summary line, so a
/// tree of millions of unreadable files cannot grow the result without bound.
pub const MAX_WARNINGS: usize = 1000;

/// Files read per round of a scan: each round's results become entries before the next round
/// starts. Read all at once, the first scan of a tree held every file's result twice at its
/// peak (~530 bytes a file more; 159 MiB at 300,000 files).
pub const HASH_ROUND: usize = 4096;

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
#[derive(Debug, Default)]
pub struct ScanOutput {
    /// Every entry in scope, keyed by normalised relative path, changed or not; without the
    /// files found unchanged when `previous` asks for that ([`PreviousRecords::omit_unchanged`]),
    /// and without those in `spilled`.
    pub entries: BTreeMap<String, ScanRecord>,
    /// The files read past [`SPILL_FROM`], kept in a temporary file when the scan was given a
    /// directory for one (`spill_in`): entries as those in `entries` are.
    pub spilled: Option<SpilledEntries>,
    /// Files found unchanged and left out of `entries`.
    pub unchanged: u64,
    /// Paths in scope that were in `previous` (or requested) and now have no entry.
    pub gone: Vec<String>,
    /// Paths that exist but could not be described this time: files that kept changing while
    /// read or failed to read, directories that could not be listed or whose `.meshignore` could
    /// not be read. Covers the path and, for a directory, everything under it (`""`: the whole
    /// folder, when the root's `.meshignore` cannot be read). The caller keeps its previous state
    /// for them and rescans them later.
    pub unstable: Vec<String>,
    /// Changed files under a requested directory (not requested themselves) that were left
    /// unread because they were written within the `recent_writes` window given to
    /// [`scan_paths_reusing`]: their writer may still be at work (a program that saves in place
    /// truncates, then writes), and read now they could go out empty or half-written. Their
    /// previous state stands, as for `unstable`; the caller reads them once they settle.
    pub fresh: Vec<String>,
    /// Chunk-list pages of the files hashed by this scan (empty for inline content and for files
    /// reused from `previous`, whose pages the caller already stored).
    pub pages: Vec<(PageRef, Vec<ChunkRef>)>,
    /// Human-readable notes on what was skipped and why (at most [`MAX_WARNINGS`] + 1 lines).
    pub warnings: Vec<String>,
    /// The warnings about one path each (with `warnings`, at most [`MAX_WARNINGS`]): the path,
    /// and why it was not synced this time.
    pub problems: Vec<(String, String)>,
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
    /// The entries a scan kept in its temporary file cannot be read back.
    #[error("cannot read back the entries a scan of {root} kept in a temporary file")]
    Spill {
        /// The root as configured.
        root: PathBuf,
        /// What the filesystem said.
        #[source]
        source: io::Error,
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

/// What a scan compares the folder with: the records of the last scan (or of what was synced),
/// by path. A map serves; the folder reads them from its store as the scan asks, so a scan of a
/// big tree does not need a copy of every record in memory.
pub trait PreviousRecords {
    /// The record at `rel`, if there is one.
    fn record(&self, rel: &str) -> Option<ScanRecord>;
    /// Calls `visit` with every path that has a record and is `dir` or beneath it (`""`: every
    /// path).
    fn for_each_path_within(&self, dir: &str, visit: &mut dyn FnMut(&str));
    /// Calls `visit` with every path that has a record and is in `range`.
    fn for_each_path_in(&self, range: &PathRange, visit: &mut dyn FnMut(&str));
    /// The path `count` paths after `after` in byte order (`None`: from the first), where one
    /// slice of a verification walk that starts after `after` ends; `None` when fewer are
    /// left, so the slice goes to the end. Paths the caller has not saved yet may be left out:
    /// the slices still cover every path.
    fn slice_end(&self, after: Option<&str>, count: usize) -> Option<String>;
    /// Whether files found unchanged since their record (reused without reading them) are left
    /// out of [`ScanOutput::entries`]: a caller that keeps the records itself needs only what
    /// changed, and a full scan of a big tree then does not hold every entry at once.
    fn omit_unchanged(&self) -> bool {
        false
    }
}

impl PreviousRecords for BTreeMap<String, ScanRecord> {
    fn record(&self, rel: &str) -> Option<ScanRecord> {
        self.get(rel).cloned()
    }

    fn for_each_path_in(&self, range: &PathRange, visit: &mut dyn FnMut(&str)) {
        paths_in(self.keys(), range).for_each(|rel| visit(rel));
    }

    fn slice_end(&self, after: Option<&str>, count: usize) -> Option<String> {
        let range = PathRange {
            after: after.map(str::to_owned),
            upto: None,
        };
        paths_in(self.keys(), &range)
            .nth(count.checked_sub(1)?)
            .cloned()
    }

    fn for_each_path_within(&self, dir: &str, visit: &mut dyn FnMut(&str)) {
        if dir.is_empty() {
            self.keys().for_each(|rel| visit(rel));
            return;
        }
        if self.contains_key(dir) {
            visit(dir);
        }
        // Everything under `dir/`: '0' is the character right after '/'.
        for rel in self
            .range(format!("{dir}/")..format!("{dir}0"))
            .map(|(k, _)| k)
        {
            visit(rel);
        }
    }
}

/// Of the `sorted` paths, those in `range`, in order.
pub(crate) fn paths_in<'a, I>(sorted: I, range: &'a PathRange) -> impl Iterator<Item = I::Item>
where
    I: Iterator<Item = &'a String>,
{
    sorted
        .skip_while(|rel| range.after.as_ref().is_some_and(|after| *rel <= after))
        .take_while(|rel| range.contains(rel))
}

/// Scans the whole folder at `root`. `previous` is the last scan's `entries` (empty the first
/// time): files it describes that have not changed are reused instead of re-read.
pub fn scan_all(root: &Path, previous: &dyn PreviousRecords) -> Result<ScanOutput, ScanError> {
    scan_all_reusing(root, previous, &|_| None, None)
}

/// [`scan_all`], finding the chunks of changed large files' previous versions again, and
/// keeping the files read past [`SPILL_FROM`] in a temporary file in `spill_in`, if given.
pub fn scan_all_reusing(
    root: &Path,
    previous: &dyn PreviousRecords,
    chunk_lists: ChunkLists,
    spill_in: Option<&Path>,
) -> Result<ScanOutput, ScanError> {
    scan_walked(root, Scope::All, previous, chunk_lists, spill_in)
}

/// Scans the paths of one slice of a verification walk: those in `range`, as
/// [`scan_all_reusing`] would find them. The slices after each other cover the folder; each
/// holds a slice's worth of entries, and takes a slice's time.
pub fn scan_range_reusing(
    root: &Path,
    range: PathRange,
    previous: &dyn PreviousRecords,
    chunk_lists: ChunkLists,
    spill_in: Option<&Path>,
) -> Result<ScanOutput, ScanError> {
    scan_walked(root, Scope::Range(range), previous, chunk_lists, spill_in)
}

/// A scan that walks all of its scope: no path requested by a watcher, so nothing known before
/// the walk and no file left for its writer to finish.
fn scan_walked(
    root: &Path,
    scope: Scope,
    previous: &dyn PreviousRecords,
    chunk_lists: ChunkLists,
    spill_in: Option<&Path>,
) -> Result<ScanOutput, ScanError> {
    scan(
        root,
        scope,
        previous,
        Known::default(),
        chunk_lists,
        None,
        spill_in,
    )
}

/// The extended attribute `name` (up to `max` bytes) of each scanned file that differs from its
/// `previous` record (changed, or new), where it has one; spilled entries included.
pub fn attributes_of_changed_files(
    root: &Path,
    scanned: &ScanOutput,
    previous: &dyn PreviousRecords,
    name: &str,
    max: usize,
) -> Result<BTreeMap<String, Vec<u8>>, ScanError> {
    let mut found = BTreeMap::new();
    let mut look = |path: &str, record: &ScanRecord| {
        if record.meta.kind == EntryKind::File
            && previous.record(path).map(|p| p.meta).as_ref() != Some(&record.meta)
            && let Ok(Some(value)) = crate::folder::write::attribute(&root.join(path), name, max)
        {
            found.insert(path.to_owned(), value);
        }
    };
    for (path, record) in &scanned.entries {
        look(path, record);
    }
    if let Some(spilled) = &scanned.spilled {
        let spill_error = |source| ScanError::Spill {
            root: root.to_path_buf(),
            source,
        };
        for entry in spilled.read().map_err(spill_error)? {
            let (path, record) = entry.map_err(spill_error)?;
            look(&path, &record);
        }
    }
    Ok(found)
}

/// Of `paths` (relative paths a scan found gone), those still gone now, after checking that the
/// root is the folder with its marker (before and after looking). A path counts as present only
/// as the scanner would find it: no parent may be a symlink or other non-directory.
pub fn still_gone(root: &Path, paths: &[String]) -> Result<Vec<String>, ScanError> {
    let (base, id) = walk::check_root(root)?;
    let gone = paths
        .iter()
        .filter(|path| !present_unfollowed(&base, path))
        .cloned()
        .collect();
    walk::recheck_root(root, &base, id)?;
    Ok(gone)
}

/// Whether `rel` exists under `base` without following a symlink on the way.
fn present_unfollowed(base: &Path, rel: &str) -> bool {
    let mut at = base.to_path_buf();
    let mut parts = rel.split('/').peekable();
    while let Some(part) = parts.next() {
        at.push(part);
        let Ok(md) = fs::symlink_metadata(&at) else {
            return false;
        };
        if parts.peek().is_some() && !md.is_dir() {
            return false;
        }
    }
    true
}

/// Re-examines only `paths` (normalised relative paths, as a watcher reports them), each with
/// its subtree when it is a directory; `""` means the whole folder. A requested path that no
/// longer has an entry, and any `previous` path under a requested directory that no longer has
/// one, is reported in [`ScanOutput::gone`]. Ignore rules apply exactly as in [`scan_all`]; a
/// requested `.meshignore` widens the scope to its directory, whose ignored set it may change.
pub fn scan_paths(
    root: &Path,
    paths: &[String],
    previous: &dyn PreviousRecords,
) -> Result<ScanOutput, ScanError> {
    scan_paths_reusing(root, paths, previous, &|_| None, None, None)
}

/// [`scan_paths`], finding the chunks of changed large files' previous versions again. With
/// `recent_writes`, a changed file found by walking a requested directory (not requested
/// itself) whose change time is within that window of now is not read but listed in
/// [`ScanOutput::fresh`]: a watcher reports a new directory, not the files being written in it.
/// With `spill_in`, as [`scan_all_reusing`].
pub fn scan_paths_reusing(
    root: &Path,
    paths: &[String],
    previous: &dyn PreviousRecords,
    chunk_lists: ChunkLists,
    recent_writes: Option<Duration>,
    spill_in: Option<&Path>,
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
    let fresh_since = recent_writes.and_then(|window| SystemTime::now().checked_sub(window));
    scan(
        root,
        Scope::Paths(requested),
        previous,
        known,
        chunk_lists,
        fresh_since,
        spill_in,
    )
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
        self.reused.contains_key(rel) || self.jobs.iter().any(|j| &*j.rel == rel)
    }
}

fn known_files(
    root: &Path,
    requested: &BTreeSet<String>,
    previous: &dyn PreviousRecords,
) -> Result<Known, ScanError> {
    let mut known = Known::default();
    let candidates: Vec<(&String, ScanRecord)> = requested
        .iter()
        .filter(|rel| !rel.is_empty())
        .filter(|rel| {
            !ancestors_or_self(rel)
                .skip(1)
                .any(|a| requested.contains(a))
        })
        .filter_map(|rel| previous.record(rel).map(|record| (rel, record)))
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
        if reusable(&record, &stat) {
            known.reused.insert(rel.clone(), record);
        } else if record.inode == stat.ino && record.dev == stat.dev {
            known
                .jobs
                .push(Job::new(rel.clone(), stat.size, Seen::of(&record)));
        }
    }
    Ok(known)
}

/// The scan behind both entry points: walk, read what changed, check the root is still there,
/// settle what is gone.
fn scan(
    root: &Path,
    scope: Scope,
    previous: &dyn PreviousRecords,
    known: Known,
    chunk_lists: ChunkLists,
    fresh_since: Option<SystemTime>,
    spill_in: Option<&Path>,
) -> Result<ScanOutput, ScanError> {
    let (base, root_id) = check_root(root)?;
    let mut spilling = Spilling::new(spill_in);
    let scope = Arc::new(scope);
    let mut found = walk::walk(root, &base, &scope, previous, fresh_since)?;
    // As the walk does with the unchanged files it finds. The watcher reports every file we
    // write ourselves: handed back whole, each was indexed and compared once more.
    if previous.omit_unchanged() {
        for rel in known.reused.keys() {
            found.unchanged.push(PathDigest::of(rel));
        }
    } else {
        found.entries.extend(known.reused);
    }
    found.jobs.extend(known.jobs);

    let mut out = ScanOutput::default();
    let mut jobs = std::mem::take(&mut found.jobs);
    // Looked up before hashing, which runs on several threads: `previous` may be a view of a
    // database that is not shared across threads. Only large files are given their chunks.
    let large_previous: BTreeMap<String, ScanRecord> = jobs
        .iter()
        .filter(|job| job.size >= PIPELINE_FROM)
        .filter_map(|job| Some((job.rel.to_string(), previous.record(&job.rel)?)))
        .collect();
    let previous_chunks = |job: &Job| {
        let record = large_previous.get(&*job.rel)?;
        chunk_lists(&record.meta).map(Previous::new)
    };
    // Smallest first, so that each round takes the largest left off the end.
    jobs.sort_by_key(|job| job.size);
    while !jobs.is_empty() {
        let round = jobs.split_off(jobs.len().saturating_sub(HASH_ROUND));
        if jobs.capacity() > 4 * jobs.len().max(HASH_ROUND) {
            jobs.shrink_to_fit();
        }
        for (job, hashed) in hash_all(round, &base, &previous_chunks) {
            add_hashed(&mut found, &mut out, job, hashed, &mut spilling);
        }
    }

    recheck_root(root, &base, root_id)?;

    let unknown: BTreeSet<String> = found.unstable.union(&found.fresh).cloned().collect();
    out.spilled = spilling.finish(&unknown, &mut found.entries, &mut found.warnings);
    let Walked {
        mut entries,
        unchanged,
        unstable,
        fresh,
        warnings,
        ..
    } = found;
    let unchanged = unchanged.into_set();
    out.unchanged = unchanged.len() as u64;
    let present = |digest: &PathDigest| {
        unchanged.contains(digest)
            || out
                .spilled
                .as_ref()
                .is_some_and(|s| s.contains_digest(digest))
    };
    out.gone = settle(&scope, previous, &mut entries, &present, &unknown);
    out.entries = entries;
    out.unstable = unstable.into_iter().collect();
    out.fresh = fresh.into_iter().collect();
    (out.warnings, out.problems) = warnings.finish();
    tracing::debug!(
        root = %root.display(),
        entries = out.entries.len(),
        spilled = out.spilled.as_ref().map_or(0, SpilledEntries::written),
        unchanged = out.unchanged,
        gone = out.gone.len(),
        unstable = out.unstable.len(),
        fresh = out.fresh.len(),
        hashed_files = out.hashed_files,
        hashed_bytes = out.hashed_bytes,
        "scanned folder"
    );
    Ok(out)
}

/// Adds what reading one file gave to what the scan found: an entry (and its pages), or a
/// warning and an unstable path.
fn add_hashed(
    found: &mut Walked,
    out: &mut ScanOutput,
    job: Job,
    hashed: Hashed,
    spilling: &mut Spilling,
) {
    out.hashed_files += hashed.reads;
    out.hashed_bytes += hashed.bytes;
    match hashed.outcome {
        Outcome::Done(record, pages) => match model::check_meta(&job.rel, &record.meta) {
            Ok(()) => {
                spilling.put(
                    job.rel.into(),
                    record,
                    &mut found.entries,
                    &mut found.warnings,
                );
                out.pages.extend(pages);
            }
            Err(why) => found
                .warnings
                .push_for(&job.rel, format!("skipped ({why})")),
        },
        Outcome::Unstable(why) => {
            found
                .warnings
                .push_for(&job.rel, format!("{}; will retry later", why.describe()));
            // Rules we could not read may exclude anything in their directory.
            match job.rel.rsplit_once('/') {
                Some((dir, IGNORE_FILE)) => found.unstable.insert(dir.to_owned()),
                None if &*job.rel == IGNORE_FILE => found.unstable.insert(String::new()),
                _ => found.unstable.insert(job.rel.into()),
            };
        }
    }
}
/// Drops the entries under `unstable` paths (unknown this time) and returns the paths in scope
/// that were known (in `previous`) or requested and now have no entry (in `entries`, or one
/// of those `present_elsewhere`: unchanged, spilled), except those under `unstable` paths.
fn settle(
    scope: &Scope,
    previous: &dyn PreviousRecords,
    entries: &mut BTreeMap<String, ScanRecord>,
    present_elsewhere: &dyn Fn(&PathDigest) -> bool,
    unstable: &BTreeSet<String>,
) -> Vec<String> {
    let under_unstable = |rel: &str| ancestors_or_self(rel).any(|a| unstable.contains(a));
    if !unstable.is_empty() {
        entries.retain(|rel, _| !under_unstable(rel));
    }
    let mut gone = BTreeSet::new();
    let mut visit = |rel: &str| {
        if !entries.contains_key(rel)
            && !present_elsewhere(&PathDigest::of(rel))
            && !under_unstable(rel)
        {
            gone.insert(rel.to_owned());
        }
    };
    match scope {
        Scope::All => previous.for_each_path_within("", &mut visit),
        Scope::Range(range) => previous.for_each_path_in(range, &mut visit),
        Scope::Paths(requested) => {
            for rel in requested {
                previous.for_each_path_within(rel, &mut visit);
                if !rel.is_empty() {
                    visit(rel);
                }
            }
        }
    }
    gone.into_iter().collect()
}

/// Warnings, capped at [`MAX_WARNINGS`]. Not logged here: a full scan every minute would
/// repeat them; the folder says each once ([`ScanOutput::problems`]).
#[derive(Default)]
pub(super) struct Warnings {
    /// The first [`MAX_WARNINGS`] warnings that are about no one path.
    lines: Vec<String>,
    /// Those about one path: the path and what is wrong.
    problems: Vec<(String, String)>,
    /// How many more there were.
    dropped: u64,
}

impl Warnings {
    pub(super) fn push(&mut self, line: String) {
        if self.lines.len() + self.problems.len() < MAX_WARNINGS {
            self.lines.push(line);
        } else {
            self.dropped += 1;
        }
    }

    /// A warning about the path `rel`: it is not synced this time, for `reason`.
    pub(super) fn push_for(&mut self, rel: &str, reason: String) {
        if self.lines.len() + self.problems.len() < MAX_WARNINGS {
            self.problems.push((rel.to_owned(), reason));
        } else {
            self.dropped += 1;
        }
    }

    pub(super) fn finish(mut self) -> (Vec<String>, Vec<(String, String)>) {
        if self.dropped > 0 {
            self.lines
                .push(format!("… and {} more warnings", self.dropped));
        }
        (self.lines, self.problems)
    }
}

#[cfg(test)]
mod tests;
