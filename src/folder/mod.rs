//! Folder shares: real directories kept identical across peers.
//!
//! Built on the records engine: an entry's key is its relative path and its value a
//! [`model::FileMeta`]. This module adds what files need on top: scanning, content-defined
//! chunks, fetching only missing chunks, and writing files safely.

mod actor;
mod assemble;
pub mod conflict;
pub mod content;
pub mod fetch;
mod handle;
mod materialise;
pub mod model;
mod plan;
mod queue;
pub mod scan;
mod serve;
mod source;
pub mod state;
pub mod status;
pub mod trash;
mod watch;
pub mod write;

pub use actor::{prepare_root, spawn};
pub use handle::FolderHandle;
pub use state::Synced;
pub use status::{FolderState, FolderStatus};

use crate::merge::Payload;
use crate::merge::RecordRegister;
use crate::store::ShareKind;

/// Checks an entry received from a peer: for folder shares, every version must describe a file,
/// directory or symlink and the path must be safe to write under the folder.
pub fn validate_remote_entry(
    kind: ShareKind,
    key: &[u8],
    register: &RecordRegister,
) -> Result<(), String> {
    if kind != ShareKind::Folder {
        return Ok(());
    }
    let path = std::str::from_utf8(key).map_err(|_| "path is not UTF-8".to_owned())?;
    write::validate_rel_path(path).map_err(|e| e.to_string())?;
    for version in register.versions() {
        if let Payload::Value(bytes) = version.payload() {
            let meta: model::FileMeta = ciborium::from_reader(bytes.as_slice())
                .map_err(|e| format!("`{path}`: not a file description: {e}"))?;
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
