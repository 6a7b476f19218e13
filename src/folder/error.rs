//! The folder layer's errors: why a folder could not start, why a chunk could not be fetched
//! (and what each member did wrong), and why a path could not be made to match its entry (with
//! the one case a download may meet that is no error: a local change).

use libp2p::PeerId;

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
    /// The writer of small files stopped before answering (it panicked, or the daemon is
    /// shutting down).
    #[error("the writer stopped before writing the file")]
    WriterStopped,
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

    /// Whether nothing could be fetched because no member is connected.
    pub fn is_no_member(&self) -> bool {
        matches!(self, MaterialiseError::Fetch(FetchError::NoMember))
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

/// Why a member did not deliver what it was asked for.
#[derive(Debug, Clone, thiserror::Error)]
pub enum MemberFailure {
    /// The request itself failed (not connected, timed out, closed).
    #[error("request to {peer} failed: {message}")]
    Request {
        /// The member.
        peer: PeerId,
        /// The network layer's account.
        message: String,
    },
    /// The member answered with an error.
    #[error("{peer} refused: {message}")]
    Refused {
        /// The member.
        peer: PeerId,
        /// Its message.
        message: String,
    },
    /// The member answered something else than what was asked.
    #[error("{peer} answered {what}")]
    Unexpected {
        /// The member.
        peer: PeerId,
        /// What it answered.
        what: String,
    },
    /// The member sent bytes that do not hash to what was asked.
    #[error("{peer} sent bytes that do not match their hash")]
    Lied {
        /// The member.
        peer: PeerId,
    },
    /// The member does not have it.
    #[error("{peer} does not have it")]
    Missing {
        /// The member.
        peer: PeerId,
    },
}

/// Why a chunk or a chunk-list page could not be had.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// Nobody to ask.
    #[error("no member is connected to fetch from")]
    NoMember,
    /// Every try failed; the last failure.
    #[error("no member delivered it after {attempts} tries; last: {last}")]
    Exhausted {
        /// Tries made.
        attempts: usize,
        /// The last member's failure.
        #[source]
        last: MemberFailure,
    },
    /// The folder's fetcher task is gone (the folder is stopping).
    #[error("the fetcher has stopped")]
    Stopped,
    /// A page arrived but is not usable.
    #[error(transparent)]
    Page(#[from] super::state::PageError),
    /// A fetched page could not be stored.
    #[error("cannot store a fetched chunk list page: {0}")]
    Store(#[from] crate::store::StoreError),
    /// A blocking read of a local copy panicked or was cancelled.
    #[error("a local chunk read failed: {0}")]
    Task(#[from] tokio::task::JoinError),
}

impl MemberFailure {
    /// The member that failed.
    pub fn peer(&self) -> PeerId {
        match self {
            MemberFailure::Request { peer, .. }
            | MemberFailure::Refused { peer, .. }
            | MemberFailure::Unexpected { peer, .. }
            | MemberFailure::Lied { peer }
            | MemberFailure::Missing { peer } => *peer,
        }
    }
}
