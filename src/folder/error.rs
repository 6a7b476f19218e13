//! The folder layer's errors: why a folder could not start, and why a path could not be made to
//! match its entry (with the one case a download may meet that is no error: a local change).

use super::fetch::FetchError;
use super::write;
use crate::store::StoreError;

/// Why a folder share could not be started.
#[derive(Debug, thiserror::Error)]
pub enum FolderError {
    /// The share has no folder path.
    #[error("folder share `{0}` has no path")]
    NoPath(String),
    /// Its state could not be read from the store.
    #[error("folder share `{share}`: cannot read its state: {source}")]
    State {
        /// The share's name.
        share: String,
        /// Why.
        #[source]
        source: StoreError,
    },
    /// Our peer id does not make a version key.
    #[error("folder share `{share}`: {source}")]
    PeerKey {
        /// The share's name.
        share: String,
        /// Why.
        #[source]
        source: crate::merge::MergeError,
    },
}

/// Why a path could not be made to match its entry.
#[derive(Debug, thiserror::Error)]
pub enum MaterialiseError {
    /// The entry's path is unsafe to write (a peer's mistake or attack); never retried.
    #[error(transparent)]
    Refused(write::PathError),
    /// Writing, removing or inspecting the file failed.
    #[error(transparent)]
    Write(write::WriteError),
    /// The chunks or the chunk list could not be had.
    #[error(transparent)]
    Fetch(#[from] FetchError),
    /// The share's entry could not be read.
    #[error("cannot read the entry: {0}")]
    Store(#[from] StoreError),
    /// Our conflicting version could not be moved aside, so nothing was written over it.
    #[error("cannot keep the conflicting local version: {0}")]
    ConflictCopy(#[source] write::WriteError),
    /// A blocking task panicked or was cancelled.
    #[error("a file task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl MaterialiseError {
    /// Whether the write failed for want of space.
    pub fn is_disk_full(&self) -> bool {
        matches!(
            self,
            MaterialiseError::Write(write::WriteError::DiskFull { .. })
        )
    }

    /// A refusal of the folder's file system that stops every write, not just this one (it is
    /// mounted read-only, or we may not write there): what it is, if this is one.
    pub fn blocks_writes(&self) -> Option<&'static str> {
        let source = match self {
            MaterialiseError::Write(write::WriteError::Io { source, .. })
            | MaterialiseError::ConflictCopy(write::WriteError::Io { source, .. }) => source,
            _ => return None,
        };
        let errno = rustix::io::Errno::from_io_error(source)?;
        if errno == rustix::io::Errno::ROFS {
            Some("read-only file system")
        } else if errno == rustix::io::Errno::ACCESS || errno == rustix::io::Errno::PERM {
            Some("permission denied")
        } else {
            None
        }
    }

    /// Whether the entry itself is refused (an unsafe path from a peer): counted, not retried.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            MaterialiseError::Refused(_) | MaterialiseError::Write(write::WriteError::Path(_))
        )
    }
}

/// How writing an entry ended when it did not succeed.
pub(super) enum WriteFailure {
    /// The target changed under us: a local edit the scanner must record first.
    Conflict,
    /// Anything else.
    Failed(MaterialiseError),
}

impl From<FetchError> for WriteFailure {
    fn from(e: FetchError) -> Self {
        WriteFailure::Failed(e.into())
    }
}

impl From<tokio::task::JoinError> for WriteFailure {
    fn from(e: tokio::task::JoinError) -> Self {
        WriteFailure::Failed(e.into())
    }
}

impl From<write::WriteError> for WriteFailure {
    fn from(e: write::WriteError) -> Self {
        match e {
            write::WriteError::Conflict { .. } => WriteFailure::Conflict,
            other => WriteFailure::Failed(MaterialiseError::Write(other)),
        }
    }
}
