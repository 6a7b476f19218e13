//! Walking a folder: which paths are in scope, which are ignored (built-ins and `.meshignore`
//! rules), what each entry the walker yields becomes (an entry, a file to read, a warning, an
//! unstable path), and the checks that the root is still the folder before and after.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ignore::WalkBuilder;

use super::hash::Job;
use super::stat::{Seen, Stat, reusable};
use super::{PreviousRecords, ScanError, ScanRecord, Warnings};
use crate::folder::model::{EntryKind, IGNORE_FILE, MARKER_DIR, MAX_PATH_BYTES, TEMP_PREFIX};
use crate::folder::path_digest::{DigestList, PathDigest};
use crate::folder::write::validate_rel_path;

/// Whether a relative path is excluded whatever the `.meshignore` files say: the root's
/// [`MARKER_DIR`] and everything in it (this peer's state), and anything with a component
/// starting with [`TEMP_PREFIX`] (the writer's unfinished downloads). The same paths
/// [`validate_rel_path`] refuses from peers.
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
pub(super) fn normalise(path: &str) -> Result<String, &'static str> {
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
pub(super) enum Scope {
    /// The whole folder.
    All,
    /// These normalised paths and their subtrees (`""` is the whole folder).
    Paths(BTreeSet<String>),
    /// The paths after `after` up to `upto` included, in byte order (`None`: from the first,
    /// to the last): one slice of a verification walk done a slice at a time. A directory's
    /// subtree is one run of that order (the paths from `dir/` to before `dir0`), so the walk
    /// enters only the directories whose subtree meets the range.
    Range(PathRange),
}

/// Paths after `after` (exclusive) up to `upto` (inclusive), in byte order; `None` leaves that
/// end open.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PathRange {
    /// The last path of the slice before (`None`: from the first path).
    pub after: Option<String>,
    /// The last path of this slice (`None`: to the last path).
    pub upto: Option<String>,
}

impl PathRange {
    /// Whether `rel` is in the range.
    pub fn contains(&self, rel: &str) -> bool {
        self.after.as_deref().is_none_or(|a| rel > a)
            && self.upto.as_deref().is_none_or(|u| rel <= u)
    }

    /// Whether some path under the directory `dir` may be in the range: its subtree is the
    /// run of paths from `dir/` to before `dir0` ('0' follows '/'). Asked of every directory
    /// a slice's walk lists, so it compares without building those strings.
    fn meets_subtree_of(&self, dir: &str) -> bool {
        self.after
            .as_deref()
            .is_none_or(|a| cmp_joined(a, dir, b'0') == Ordering::Less)
            && self
                .upto
                .as_deref()
                .is_none_or(|u| cmp_joined(u, dir, b'/') == Ordering::Greater)
    }
}

/// `s` compared with `dir` followed by the byte `last`, in byte order.
fn cmp_joined(s: &str, dir: &str, last: u8) -> Ordering {
    let (s, dir) = (s.as_bytes(), dir.as_bytes());
    let shared = s.len().min(dir.len());
    match s[..shared].cmp(&dir[..shared]) {
        Ordering::Equal if s.len() <= dir.len() => Ordering::Less,
        Ordering::Equal => s[dir.len()].cmp(&last).then(s.len().cmp(&(dir.len() + 1))),
        other => other,
    }
}

impl Scope {
    /// Whether `rel` is in scope: requested itself or under a requested path.
    pub(super) fn covers(&self, rel: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Paths(set) => ancestors_or_self(rel).any(|a| set.contains(a)),
            Scope::Range(range) => range.contains(rel),
        }
    }

    /// Whether the walk must visit `rel` (a directory if `is_dir`): in scope, or a directory
    /// on the way to a requested path.
    fn visits(&self, rel: &Path, is_dir: bool) -> bool {
        let set = match self {
            Scope::All => return true,
            Scope::Range(range) => {
                // A path that is not UTF-8 is visited: the walk warns about it.
                return rel.to_str().is_none_or(|rel| {
                    range.contains(rel) || (is_dir && range.meets_subtree_of(rel))
                });
            }
            Scope::Paths(set) => set,
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
pub(super) fn ancestors_or_self(rel: &str) -> impl Iterator<Item = &str> {
    let parents = rel.rmatch_indices('/').map(|(i, _)| &rel[..i]);
    std::iter::once(rel)
        .chain(parents)
        .chain((!rel.is_empty()).then_some(""))
}

/// What a walk found, and then what reading its files added.
pub(super) struct Walked {
    /// Directories, symlinks, reused files (and, once read, the files read).
    pub(super) entries: BTreeMap<String, ScanRecord>,
    /// Files found unchanged and left out of `entries` (when `previous` asks for that): only
    /// their paths' digests, for telling what is gone. Two paths with one digest would only
    /// make a gone file look present, which sends no delete.
    pub(super) unchanged: DigestList,
    /// Paths unknown this time (see [`ScanOutput::unstable`](super::ScanOutput::unstable)).
    pub(super) unstable: BTreeSet<String>,
    /// Files to read.
    pub(super) jobs: Vec<Job>,
    /// Changed files found under a requested directory, written too recently to be read
    /// (see [`ScanOutput::fresh`](super::ScanOutput::fresh)).
    pub(super) fresh: BTreeSet<String>,
    /// What was skipped and why.
    pub(super) warnings: Warnings,
}

/// Walks what `scope` covers under `base`, the canonical root of the folder configured at
/// `root`: records directories, symlinks and unchanged files, lists the files to read, and
/// skips (with a warning) what cannot be synced.
pub(super) fn walk(
    root: &Path,
    base: &Path,
    scope: &Arc<Scope>,
    previous: &dyn PreviousRecords,
    fresh_since: Option<SystemTime>,
) -> Result<Walked, ScanError> {
    let mut walk = Walk {
        root,
        base,
        scope,
        previous,
        fresh_since,
        found: Walked {
            entries: BTreeMap::new(),
            unchanged: DigestList::default(),
            unstable: BTreeSet::new(),
            jobs: Vec::new(),
            fresh: BTreeSet::new(),
            warnings: Warnings::default(),
        },
        skipped: Vec::new(),
    };
    let nothing_to_walk = matches!(&**scope, Scope::Paths(set) if set.is_empty());
    if !nothing_to_walk {
        for item in walker(base, scope).build() {
            match item {
                Ok(entry) => walk.on_entry(&entry),
                Err(err) => walk.on_error(err)?,
            }
        }
    }
    Ok(walk.found)
}

/// The state of one walk.
struct Walk<'a> {
    /// The root as configured (for errors).
    root: &'a Path,
    /// The canonical root the walk runs in.
    base: &'a Path,
    /// What the caller asked for.
    scope: &'a Scope,
    /// The caller's records from the last scan.
    previous: &'a dyn PreviousRecords,
    /// Changed files found by walking a requested directory (not requested themselves) whose
    /// change time is this recent are left unread: their writer may still be at work.
    fresh_since: Option<SystemTime>,
    /// What it found so far.
    found: Walked,
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
                self.found
                    .warnings
                    .push_for(rel, format!("cannot scan, will retry later: {err}"));
                self.found.unstable.insert(rel.to_owned());
                Ok(())
            }
            Some(None) => {
                self.found
                    .warnings
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
            self.found.warnings.push(format!(
                "{}: bad ignore rule: {err}",
                entry.path().display()
            ));
        }
        let Some(rel) = self.syncable_rel(entry.path()) else {
            return;
        };
        if !self.scope.covers(rel) {
            return; // A directory on the way to a requested path.
        }
        let rel = rel.to_owned();
        match fs::symlink_metadata(entry.path()) {
            Ok(md) => self.on_stat(rel, entry.path(), &md),
            Err(err) => {
                self.found
                    .warnings
                    .push_for(&rel, format!("cannot stat, will retry later: {err}"));
                self.found.unstable.insert(rel);
            }
        }
    }

    /// The relative path of `path` if it can be synced; else `None`, after a warning for it and
    /// its subtree (once).
    fn syncable_rel<'p>(&mut self, path: &'p Path) -> Option<&'p str> {
        let rel_path = path.strip_prefix(self.base).ok()?;
        if self.skipped.iter().any(|s| rel_path.starts_with(s)) {
            return None;
        }
        let Some(rel) = rel_path.to_str() else {
            self.found.warnings.push_for(
                &rel_path.to_string_lossy(),
                "skipped (name is not UTF-8)".to_owned(),
            );
            self.skipped.push(rel_path.to_path_buf());
            return None;
        };
        // What peers would refuse (too long, a backslash…) is not offered to them.
        if let Err(why) = validate_rel_path(rel) {
            self.found
                .warnings
                .push_for(rel, format!("skipped ({why})"));
            self.skipped.push(rel_path.to_path_buf());
            return None;
        }
        Some(rel)
    }

    /// Records the entry at `rel` (on disk at `path`, with `lstat` `md`) by its kind.
    fn on_stat(&mut self, rel: String, path: &Path, md: &fs::Metadata) {
        let stat = Stat::of(md);
        let kind = md.file_type();
        let found = &mut self.found;
        if kind.is_dir() {
            let meta = stat.bare_meta(EntryKind::Dir, None);
            found.entries.insert(rel, stat.record(meta, false));
        } else if kind.is_symlink() {
            match fs::read_link(path).map(|t| t.into_os_string().into_string()) {
                Ok(Ok(target)) => {
                    let meta = stat.bare_meta(EntryKind::Symlink, Some(target));
                    found.entries.insert(rel, stat.record(meta, false));
                }
                Ok(Err(_)) => found
                    .warnings
                    .push_for(&rel, "skipped (link target is not UTF-8)".to_owned()),
                Err(err) => {
                    found
                        .warnings
                        .push_for(&rel, format!("cannot read link, will retry later: {err}"));
                    found.unstable.insert(rel);
                }
            }
        } else if kind.is_file() {
            let written_since = |since: SystemTime| {
                let ctime = UNIX_EPOCH
                    + Duration::new(u64::try_from(stat.ctime.0).unwrap_or(0), stat.ctime.1);
                ctime >= since
            };
            // A `.meshignore` is read for its rules now anyway: its entry must say the same.
            let is_rules = rel.rsplit('/').next() == Some(IGNORE_FILE);
            let fresh = self.fresh_since.is_some_and(written_since)
                && !is_rules
                && matches!(self.scope, Scope::Paths(set) if !set.contains(&rel));
            match self.previous.record(&rel) {
                Some(prev) if reusable(&prev, &stat) => {
                    if self.previous.omit_unchanged() {
                        found.unchanged.push(PathDigest::of(&rel));
                    } else {
                        found.entries.insert(rel, prev);
                    }
                }
                _ if fresh => {
                    found.fresh.insert(rel);
                }
                prev => found
                    .jobs
                    .push(Job::new(rel, stat.size, prev.as_ref().and_then(Seen::of))),
            }
        } else {
            let what = if kind.is_fifo() {
                "a fifo"
            } else if kind.is_socket() {
                "a socket"
            } else {
                "a device"
            };
            found.warnings.push_for(&rel, format!("skipped ({what})"));
        }
    }
}

/// Checks the root is a directory with its marker; returns its canonical path (symlinks
/// resolved, so the walk descends into it) and its (device, inode).
pub(super) fn check_root(root: &Path) -> Result<(PathBuf, (u64, u64)), ScanError> {
    let base = fs::canonicalize(root).map_err(|source| ScanError::RootMissing {
        root: root.to_path_buf(),
        source,
    })?;
    let id = root_identity(root, &base)?;
    Ok((base, id))
}

/// Checks, after the walk, that the root is still the directory it was, marker included.
pub(super) fn recheck_root(root: &Path, base: &Path, id: (u64, u64)) -> Result<(), ScanError> {
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
        entry.path().strip_prefix(&base).map_or(true, |rel| {
            let is_dir = entry.file_type().is_none_or(|t| t.is_dir());
            scope.visits(rel, is_dir)
        })
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

#[cfg(test)]
mod tests {
    use super::super::testkit::*;
    use super::super::{scan_all, scan_paths};
    use super::*;
    use crate::folder::model::Content;
    use std::os::unix::fs::{PermissionsExt, symlink};

    /// The comparison without building strings agrees with the one that builds them, and a
    /// slice's walk enters exactly the directories whose subtree meets it.
    #[test]
    fn a_range_meets_the_subtrees_it_overlaps() {
        let words = [
            "", "a", "a-", "a/", "a/b", "a0", "a/b/c", "ab", "b", "a.", "a/~",
        ];
        for s in words {
            for dir in words {
                for last in [b'/', b'0'] {
                    let joined = format!("{dir}{}", last as char);
                    assert_eq!(
                        cmp_joined(s, dir, last),
                        s.cmp(joined.as_str()),
                        "{s} {dir}"
                    );
                }
            }
        }
        let range = |after: Option<&str>, upto: Option<&str>| PathRange {
            after: after.map(str::to_owned),
            upto: upto.map(str::to_owned),
        };
        // "a-b" < "a/x" < "a0": the subtree of "a" is what lies between "a/" and "a0".
        assert!(range(Some("a-b"), Some("a/x")).meets_subtree_of("a"));
        assert!(range(Some("a/x"), Some("b")).meets_subtree_of("a"));
        assert!(!range(Some("a-a"), Some("a-z")).meets_subtree_of("a"));
        assert!(!range(Some("a0"), None).meets_subtree_of("a"));
        assert!(!range(None, Some("a/")).meets_subtree_of("a"));
        assert!(range(None, None).meets_subtree_of("a"));
        let scope = Scope::Range(range(Some("a-b"), Some("a/x")));
        assert!(scope.visits(Path::new("a"), true));
        assert!(
            !scope.visits(Path::new("a"), false),
            "a file is not entered"
        );
        assert!(scope.visits(Path::new("a/x"), false));
        assert!(!scope.visits(Path::new("a/y"), false));
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
        assert!(out.problems.is_empty(), "{:?}", out.problems);
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
    fn fifos_are_skipped_with_a_warning() {
        let dir = folder();
        let mode = rustix::fs::Mode::from_raw_mode(0o644);
        rustix::fs::mkfifoat(rustix::fs::CWD, dir.path().join("pipe"), mode).unwrap();
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        assert!(out.entries.is_empty());
        assert_eq!(
            out.problems,
            [("pipe".to_owned(), "skipped (a fifo)".to_owned())]
        );
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
        assert_eq!(out.problems.len(), 2, "{:?}", out.problems);
        assert!(out.problems.iter().all(|(_, w)| w.contains("not UTF-8")));
    }

    #[test]
    fn paths_peers_would_refuse_are_skipped_with_a_warning() {
        let dir = folder();
        write(dir.path(), "back\\slash/inner", b"x");
        write(dir.path(), "fine", b"x");
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        assert_eq!(keys(&out), ["fine"]);
        assert_eq!(out.problems.len(), 1, "{:?}", out.problems);
        assert!(
            out.problems[0].1.contains("backslash"),
            "{:?}",
            out.problems
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
        if rustix::process::geteuid().is_root() {
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
}
