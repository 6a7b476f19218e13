//! Where a peer's relative path may be written: the one validator of relative paths
//! ([`validate_rel_path`], with a typed [`PathRefusal`]), and the resolution of a valid path
//! under a folder root that never goes through a symlink or a non-directory ([`resolve`],
//! [`ensure_parents`]).

use std::fmt;
use std::fs::{self, Metadata};
use std::io;
use std::os::unix::fs::{DirBuilderExt, MetadataExt};
use std::path::{Path, PathBuf};

use super::dir_sync::sync_dir;
use super::{PARENT_DIR_MODE, WriteError, io_error};
use crate::folder::model::{MARKER_DIR, MAX_PATH_BYTES, TEMP_PREFIX};

/// Longest single path component accepted, in bytes: the `NAME_MAX` of ext4, XFS, btrfs and
/// tmpfs (and within APFS's and NTFS's limits).
pub const MAX_COMPONENT_BYTES: usize = 255;

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

/// Checks that a relative path is safe to create under a folder root: `/`-separated, relative,
/// no `.`/`..`/empty components, no NUL or backslash (refused so that Windows peers could never
/// read the same entry as a different path), within [`MAX_PATH_BYTES`] and
/// [`MAX_COMPONENT_BYTES`], not the root's [`MARKER_DIR`] or inside it, and no component starting
/// with [`TEMP_PREFIX`]. This is the only validator of relative paths: the scanner skips what it
/// refuses, the store refuses peers' entries with it, and `model::check_rel_path` is its
/// string-typed wrapper.
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

/// The absolute path of `rel` under `root`, after checking that `rel` is valid and that the
/// folder is available, without looking at its ancestors: for a caller that checks them with
/// [`ensure_parents`] next (each ancestor looked at once instead of twice: three of the thirteen
/// `stat`s a received file cost at a depth of three).
pub(crate) fn checked_path(root: &Path, rel: &str) -> Result<PathBuf, PathError> {
    validate_rel_path(rel)?;
    check_root(root)?;
    Ok(root.join(rel))
}

/// [`resolve`] and [`ensure_parents`] in one walk: the path of `rel` under `root`, with its
/// missing parents created and every existing ancestor checked (no symlink, a directory).
pub(crate) fn resolve_creating_parents(root: &Path, rel: &str) -> Result<PathBuf, WriteError> {
    let path = checked_path(root, rel)?;
    ensure_parents(root, rel)?;
    Ok(path)
}

/// The folder is writable only while its marker directory is there: a missing marker means an
/// unmounted disk (or a deleted folder), and writing would fill the mount point's file system.
pub(super) fn check_root(root: &Path) -> Result<(), PathError> {
    match fs::symlink_metadata(root.join(MARKER_DIR)) {
        Ok(meta) if meta.is_dir() => Ok(()),
        _ => Err(PathError::RootNotReady {
            root: root.to_path_buf(),
        }),
    }
}

/// Creates the missing parent directories of `rel`, each fsynced into its parent so that a file
/// committed inside them is reachable after a crash. Checks every existing ancestor as it goes
/// (no symlink, a directory), whether or not [`resolve`] did before (it may have changed).
/// Returns the device of `rel`'s directory: that of the deepest ancestor found rather than made
/// (a directory made here is on its parent's), `None` if that is the root (not looked at here).
pub(crate) fn ensure_parents(root: &Path, rel: &str) -> Result<Option<u64>, WriteError> {
    let Some((parents, _)) = rel.rsplit_once('/') else {
        return Ok(None);
    };
    let mut path = root.to_path_buf();
    let mut dev = None;
    for component in parents.split('/') {
        path.push(component);
        match fs::symlink_metadata(&path) {
            Ok(meta) => {
                check_ancestor(rel, &path, &meta)?;
                dev = Some(meta.dev());
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                match fs::DirBuilder::new().mode(PARENT_DIR_MODE).create(&path) {
                    Ok(()) => sync_dir(path.parent().unwrap_or(root))?,
                    // Created concurrently: fine if it is a directory.
                    Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                        let meta = fs::symlink_metadata(&path)
                            .map_err(|e| io_error("inspect", &path, e))?;
                        check_ancestor(rel, &path, &meta)?;
                        dev = Some(meta.dev());
                    }
                    Err(e) => return Err(io_error("create directory", &path, e)),
                }
            }
            Err(source) => return Err(PathError::Inspect { path, source }.into()),
        }
    }
    Ok(dev)
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::write::testkit::*;
    use crate::folder::write::{Assembly, Expect, WriteError, make_dir, make_symlink};
    use proptest::prelude::*;

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
        }
        let max_component = "x".repeat(MAX_COMPONENT_BYTES);
        assert_eq!(refusal(&max_component), None);
        let err = validate_rel_path("a/../../b").unwrap_err().to_string();
        assert!(err.contains("a/../../b") && err.contains(".."), "{err}");
    }

    proptest! {
        #[test]
        fn accepted_paths_stay_inside(
            rel in "([a-z.\\\\/]|\\.\\.|\\.meshsync(-tmp-)?|\0){0,12}"
        ) {
            if validate_rel_path(&rel).is_ok() {
                let components: Vec<_> = Path::new(&rel).components().collect();
                prop_assert!(components
                    .iter()
                    .all(|c| matches!(c, std::path::Component::Normal(_))));
                prop_assert_eq!(components.len(), rel.split('/').count());
            }
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

    /// One walk does what `resolve` and `ensure_parents` did in turn: the same refusals, the
    /// missing parents made; and a file with a bad chunk list gets no directory made for it.
    #[test]
    fn one_walk_checks_every_ancestor_and_makes_the_missing_ones() {
        let root = folder();
        let outside = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("a/b")).unwrap();
        std::os::unix::fs::symlink(outside.path(), root.path().join("a/b/link")).unwrap();
        fs::write(root.path().join("a/f"), b"x").unwrap();
        assert!(matches!(
            resolve_creating_parents(root.path(), "a/b/link/new/file"),
            Err(WriteError::Path(PathError::ThroughSymlink { .. }))
        ));
        assert!(matches!(
            resolve_creating_parents(root.path(), "a/f/x"),
            Err(WriteError::Path(PathError::NotADirectory { .. }))
        ));
        assert!(matches!(
            resolve_creating_parents(root.path(), "a/../x"),
            Err(WriteError::Path(PathError::Refused { .. }))
        ));
        assert!(fs::read_dir(outside.path()).unwrap().next().is_none());
        assert_eq!(
            resolve_creating_parents(root.path(), "a/b/c/d/file").unwrap(),
            root.path().join("a/b/c/d/file")
        );
        assert!(root.path().join("a/b/c/d").is_dir());
        assert!(!root.path().join("a/b/c/d/file").exists());

        let cut = sample();
        let err = Assembly::open(
            root.path(),
            "new/dir/file",
            cut.data.len() as u64 + 1,
            hash(&cut.data),
            &cut.chunks,
        )
        .unwrap_err();
        assert!(matches!(err, WriteError::BadChunkList { .. }), "{err}");
        assert!(!root.path().join("new").exists());
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
}
