//! A folder as one batch of received small files sees it ([`BatchFolder`]): its incoming
//! directory, whether its root is ready, and the directories already made or checked for the
//! batch's files, so that the batch looks at each of them once rather than once per file.
//!
//! Why that widens no window: a batch checks a file's directories when it opens the file's temp
//! file, and renames every file into place only after all of them are written and their
//! contents flushed (`small_writes`). The first file's check was already as old as the whole
//! batch; a later file in the same directory reusing it is no older. Per file, those checks were
//! a `stat` of the marker directory and one of each ancestor: 4 of the 8.6 `stat`s a received
//! file cost at a depth of three.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::WriteError;
use super::incoming::Incoming;
use super::path::{PathError, check_root, ensure_parents};

/// One folder's checks for the files of one batch. Dropped with the batch: the next batch
/// checks again.
#[derive(Debug)]
pub struct BatchFolder {
    root: PathBuf,
    incoming: Option<Incoming>,
    /// Whether the root's marker was found in this batch (a failure is not kept: every file
    /// looks again and reports it).
    root_ready: bool,
    /// The parent directories (relative to the root) made or checked in this batch, each with
    /// the device [`ensure_parents`] found it on. At most one per file of a batch.
    parents: HashMap<String, Option<u64>>,
}

impl BatchFolder {
    /// The folder at `root`, with its incoming directory made if it can be used.
    pub fn new(root: &Path) -> BatchFolder {
        BatchFolder {
            root: root.to_path_buf(),
            incoming: Incoming::of(root),
            root_ready: false,
            parents: HashMap::new(),
        }
    }

    /// The folder's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The incoming directory, if it can be used.
    pub(super) fn incoming(&self) -> Option<&Incoming> {
        self.incoming.as_ref()
    }

    /// [`check_root`], once per batch while it holds.
    pub(super) fn check_root(&mut self) -> Result<(), PathError> {
        if !self.root_ready {
            check_root(&self.root)?;
            self.root_ready = true;
        }
        Ok(())
    }

    /// [`ensure_parents`] of `rel` (already validated), once per directory and batch.
    pub(super) fn ensure_parents(&mut self, rel: &str) -> Result<Option<u64>, WriteError> {
        let Some((parent, _)) = rel.rsplit_once('/') else {
            return Ok(None);
        };
        if let Some(dev) = self.parents.get(parent) {
            return Ok(*dev);
        }
        let dev = ensure_parents(&self.root, rel)?;
        self.parents.insert(parent.to_owned(), dev);
        Ok(dev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::model::MARKER_DIR;
    use crate::folder::write::testkit::folder;
    use std::fs;

    #[test]
    fn each_directory_is_checked_once_per_batch_and_again_in_the_next() {
        let root = folder();
        let r = root.path();
        fs::create_dir(r.join("a")).unwrap();
        let mut batch = BatchFolder::new(r);
        batch.check_root().unwrap();
        // Made, and on the device of the deepest directory found rather than made.
        let dev = batch.ensure_parents("a/b/one").unwrap();
        assert!(r.join("a/b").is_dir() && dev.is_some());
        // Swapped for a symlink within the batch: the batch's check stands (its files are
        // renamed only after all are written; the first one's check was as old).
        fs::remove_dir(r.join("a/b")).unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(elsewhere.path(), r.join("a/b")).unwrap();
        assert_eq!(batch.ensure_parents("a/b/two").unwrap(), dev);
        // The next batch looks again and refuses it.
        let mut next = BatchFolder::new(r);
        assert!(matches!(
            next.ensure_parents("a/b/two"),
            Err(WriteError::Path(PathError::ThroughSymlink { .. }))
        ));
        // A file at the root has no parent to check.
        assert_eq!(next.ensure_parents("top").unwrap(), None);
    }

    #[test]
    fn a_missing_marker_fails_every_file_until_it_is_back() {
        let root = folder();
        let r = root.path();
        fs::remove_dir_all(r.join(MARKER_DIR)).unwrap();
        let mut batch = BatchFolder::new(r);
        assert!(batch.incoming().is_none());
        assert!(matches!(
            batch.check_root(),
            Err(PathError::RootNotReady { .. })
        ));
        assert!(
            batch.check_root().is_err(),
            "a failure is not kept as a pass"
        );
        fs::create_dir(r.join(MARKER_DIR)).unwrap();
        batch.check_root().unwrap();
    }
}
