//! Folder shares: real directories kept identical across peers.
//!
//! Built on the records engine: an entry's key is its relative path and its value a
//! [`model::FileMeta`]. This module adds what files need on top: scanning, content-defined
//! chunks, fetching only missing chunks, and writing files safely.

mod actor;
mod assemble;
mod breaker;
mod chunk_part;
mod chunk_places;
pub mod conflict;
pub mod content;
mod delete_hold;
mod digest_map;
mod disk;
mod downloads;
pub mod error;
pub mod fetch;
mod folder_lock;
mod handle;
pub mod instance;
mod local_changes;
mod mass_delete;
mod materialise;
pub mod model;
mod notices;
pub mod pacing;
mod path_digest;
mod plan;
mod problems;
mod queue;
pub mod received;
mod register_batch;
mod report;
mod rescan;
pub mod scan;
mod serve;
mod settle;
mod small_writes;
mod source;
pub mod state;
pub mod status;
mod synced_paths;
mod upkeep;
mod verify;
pub mod versions;
mod watch;
pub mod write;

pub use actor::{Policy, spawn};
pub use error::{FolderError, MaterialiseError};
pub use folder_lock::synced_elsewhere;
pub use handle::FolderHandle;
pub use handle::Resume;
pub use instance::prepare_root;
pub use report::RENAME_WINDOW;
pub use state::Synced;
pub use status::{FolderState, FolderStatus};
pub use synced_paths::KindCounts;

use crate::merge::Payload;
use crate::merge::RecordRegister;
use crate::store::ShareKind;

/// Why an entry from a peer was refused.
#[derive(Debug, thiserror::Error)]
pub enum EntryRefusal {
    /// A folder path must be UTF-8.
    #[error("path is not UTF-8")]
    NotUtf8,
    /// The path is not safe to write under the folder.
    #[error(transparent)]
    Path(#[from] write::PathError),
    /// A version's value is not a file description.
    #[error("`{path}`: not a file description: {source}")]
    NotAFileDescription {
        /// The entry's path.
        path: String,
        /// Why it does not decode.
        #[source]
        source: crate::cbor::CborError,
    },
    /// A version's file description is not self-consistent.
    #[error(transparent)]
    BadMeta(#[from] model::BadMeta),
}

/// Checks an entry received from a peer: for folder shares, every version must describe a file,
/// directory or symlink and the path must be safe to write under the folder. The store calls it
/// (as its [`crate::store::EntryValidator`]) before merging anything.
pub fn validate_remote_entry(
    kind: ShareKind,
    key: &[u8],
    register: &RecordRegister,
) -> Result<(), crate::store::InvalidEntry> {
    check_remote_entry(kind, key, register).map_err(|e| crate::store::InvalidEntry(Box::new(e)))
}

fn check_remote_entry(
    kind: ShareKind,
    key: &[u8],
    register: &RecordRegister,
) -> Result<(), EntryRefusal> {
    if kind != ShareKind::Folder {
        return Ok(());
    }
    let path = std::str::from_utf8(key).map_err(|_| EntryRefusal::NotUtf8)?;
    write::validate_rel_path(path)?;
    for version in register.versions() {
        if let Payload::Value(bytes) = version.payload() {
            let meta: model::FileMeta =
                crate::cbor::decode(bytes.as_slice()).map_err(|source| {
                    EntryRefusal::NotAFileDescription {
                        path: path.to_owned(),
                        source,
                    }
                })?;
            model::check_meta(path, &meta)?;
        }
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod testdata {
    /// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
    pub fn pseudo_random(seed: u64, len: usize) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }
}
