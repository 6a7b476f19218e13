//! The persistent index: shares, their entries, and each share's Merkle summary.
//!
//! One actor thread owns the [redb] database (an embedded, ACID, copy-on-write B-tree store), so
//! all disk I/O happens off the async workers and every write has one owner. Writes that arrive
//! together are applied in one transaction and committed with `Durability::Immediate` before any
//! of them is acknowledged: a put the API acknowledged survives `kill -9`, and under load many
//! puts share one fsync (group commit).
//!
//! Tables, schema versions and migrations: [`schema`]. Per-share pages, local state and the
//! local index rows derived from it, the data the store keeps for a share's owner without
//! knowing what it means: [`pages`], [`local_state`].
//!
//! Each share's summary tree lives in memory (rebuilt from `index` at start-up; its entries are
//! read back from `index`, [`id_index`]) behind a lock per share that readers hold only briefly
//! and never across an `.await`. What the file holds, table by table: [`usage`].
//!
//! # Layout
//! - `mod.rs`: the types callers see, limits and errors.
//! - [`handle`]: [`StoreHandle`], the cloneable way in; `action`: the messages it sends.
//! - `actor`: the store thread (batched writes, reads).
//! - [`schema`]: tables, schema version, migration, loading at start-up.
//! - [`pages`], [`local_state`]: reading and writing those tables (in the store thread).
//! - `id_index`: a share's (id, digest) items read from `index`, for its summary.
//! - [`usage`]: bytes and rows per table, for `GET /v1/store`.

mod action;
mod actor;
mod database;
pub mod handle;
mod id_index;
pub mod local_state;
mod merge_waits;
pub mod pages;
pub mod schema;
pub mod usage;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use crate::merge::{MergeError, Payload};
use crate::reconcile::Id;

pub use handle::StoreHandle;
pub use id_index::{ShareSummary, StoredItems};
pub use merge_waits::ChangeNoticeStatus;
pub use schema::SCHEMA_VERSION;
pub use usage::{StoreUsage, TableUsage};

/// A share's 32-byte identifier.
pub type ShareId = [u8; 32];
/// The replicated state of one record key (defined beside the merge rules; named here too because
/// it is what the store keeps).
pub use crate::merge::RecordRegister;

/// Longest record key, in bytes of UTF-8.
pub const MAX_KEY_BYTES: usize = 1024;
/// Longest key in a folder share (a relative path), in bytes of UTF-8. The folder layer takes
/// its path limit from here, so the store need not know what a path is.
pub const MAX_PATH_KEY_BYTES: usize = 4096;
/// Largest record value.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// Largest number of records in one batch put.
pub const MAX_BATCH_RECORDS: usize = 100_000;
/// Actions waiting for the store before senders wait.
pub const STORE_CHANNEL_CAPACITY: usize = 1024;
/// Most write actions applied in one transaction (group commit).
pub const MAX_ACTIONS_PER_COMMIT: usize = 512;
/// Changes buffered for slow watchers; a watcher that falls further behind is told it lagged
/// (the daemon's own readers, the engine and each folder, lose the notices and compare
/// everything again; [`CHANGE_BACKLOG_MAX`] keeps them from falling that far behind).
pub const CHANGE_BUFFER: usize = 65_536;
/// Change notices the daemon's own readers (the engine, each folder) may leave untaken before
/// entries from peers wait to be merged ([`StoreHandle::merge`]). Peers' entries of a first sync
/// come far faster than a folder queues downloads: without a wait, a first sync of 10^6 files
/// overflowed [`CHANGE_BUFFER`] again and again (the folder lost 500,000 notices, and walked the
/// whole tree after each loss), and the untaken notices held ~35 MiB.
pub const CHANGE_BACKLOG_MAX: usize = 8192;
/// Longest a merge waits for the daemon's readers of change notices: a reader stuck behind
/// costs its own notices (it compares everything again), never a stalled sync.
pub const CHANGE_BACKLOG_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// redb's page cache. Its default (1 GiB) made a daemon holding 10^6 records use over a GiB;
/// the B-tree's hot upper levels fit in far less, and the system's page cache holds the rest
/// of the file (64 MiB here held ~600 bytes per file of a 100,000-file folder for little gain).
pub const STORE_CACHE_BYTES: usize = 16 * 1024 * 1024;
/// Longest share name.
pub const MAX_SHARE_NAME: usize = 128;

/// Errors of the store, naming the share or key involved.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database could not be opened.
    #[error("cannot open database {path}: {message}")]
    Open {
        /// The database file.
        path: PathBuf,
        /// Why.
        message: String,
    },
    /// A database operation failed.
    #[error("database error: {0}")]
    Db(#[source] redb::Error),
    /// Every write of a batch fails with the error that stopped its commit.
    #[error("the write could not be committed: {0}")]
    BatchFailed(#[source] Arc<StoreError>),
    /// Stored bytes that do not decode: the database was damaged or written by other code.
    #[error("damaged store: {0}")]
    Corrupt(String),
    /// A value could not be encoded for storing.
    #[error("cannot encode for the store: {0}")]
    Encode(#[source] crate::cbor::CborError),
    /// A file beside the database could not be read, written or removed.
    #[error("cannot {action} {path}: {source}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// Why it failed.
        #[source]
        source: std::io::Error,
    },
    /// The database was written by a newer meshsync, with a layout this one cannot read.
    #[error(
        "the store has schema version {found}, this meshsync reads up to {supported}: upgrade meshsync"
    )]
    NewerSchema {
        /// The version found.
        found: u32,
        /// [`SCHEMA_VERSION`].
        supported: u32,
    },
    /// The store thread could not be started.
    #[error("cannot start the store thread: {0}")]
    Thread(#[source] std::io::Error),
    /// No share has this name or id.
    #[error("no share named `{0}` (see `meshsync share list`)")]
    UnknownShare(String),
    /// A share with this name already exists.
    #[error("a share named `{0}` already exists")]
    NameTaken(String),
    /// This share id is already joined.
    #[error("this share is already joined as `{0}`")]
    AlreadyJoined(String),
    /// The share is not a records share.
    #[error("share `{0}` is not a records share")]
    WrongKind(String),
    /// A bad key, value, or name.
    #[error("{0}")]
    Invalid(String),
    /// A peer's entry that the share's validator refused.
    #[error("{0}")]
    Refused(#[source] InvalidEntry),
    /// Versioning failed (clock skew, too many writers).
    #[error("share {share}: key `{key}`: {source}")]
    Merge {
        /// Share name.
        share: String,
        /// Key, lossily shown.
        key: String,
        /// The merge error.
        #[source]
        source: MergeError,
    },
    /// The store thread is gone.
    #[error("the store has stopped")]
    Stopped,
    /// The database failed and is not reopened yet; says why.
    #[error("{0}")]
    Unavailable(String),
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        StoreError::Db(e.into())
    }
}

/// What kind of data a share holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShareKind {
    /// Key/value records.
    Records,
    /// A directory on disk.
    Folder,
}

/// A share as stored. Its `Debug` leaves the secrets out, so no log line can carry them.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareMeta {
    /// Its id.
    pub id: ShareId,
    /// The local name.
    pub name: String,
    /// Records or folder.
    pub kind: ShareKind,
    /// The membership secret; never leaves this machine except inside a token.
    pub secret: [u8; 32],
    /// Addresses from the token this share was joined with, dialled at start.
    pub seed_addrs: Vec<String>,
    /// For folder shares: the absolute path of the folder.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// The public half of the share's write key: signatures made with it mark writers.
    #[serde(default)]
    pub writers: [u8; 32],
    /// The private half, held by read-write members only; never leaves this machine except
    /// inside a read-write token. `None`: this member is read-only.
    #[serde(default)]
    pub write_key: Option<[u8; 32]>,
    /// Peer ids allowed to be members of this share here; empty: anyone holding a token.
    #[serde(default)]
    pub trusted_peers: Vec<String>,
    /// Paused by the user (`meshsync share pause`): nothing is exchanged with members and a
    /// folder is not scanned or written until it is resumed.
    #[serde(default)]
    pub paused: bool,
}

impl std::fmt::Debug for ShareMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShareMeta")
            .field("id", &hex::encode(self.id))
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("secret", &"<redacted>")
            .field("writable", &self.writable())
            .field("path", &self.path)
            .field("trusted_peers", &self.trusted_peers)
            .field("paused", &self.paused)
            .finish_non_exhaustive()
    }
}

impl ShareMeta {
    /// Whether this member may change the share.
    pub fn writable(&self) -> bool {
        self.write_key.is_some()
    }

    /// Whether `peer` may be a member of this share here (its per-share allowlist; nobody
    /// while the share is paused).
    pub fn admits(&self, peer: &libp2p::PeerId) -> bool {
        !self.paused
            && (self.trusted_peers.is_empty()
                || self.trusted_peers.iter().any(|p| *p == peer.to_string()))
    }
}

/// Where a change came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// The local API.
    Local,
    /// Merged from this peer.
    Remote(libp2p::PeerId),
}

/// One record that changed, as broadcast to watchers and the engine.
#[derive(Debug, Clone)]
pub struct Change {
    /// The share.
    pub share: ShareId,
    /// The key.
    pub key: Vec<u8>,
    /// The register after the change.
    pub register: RecordRegister,
    /// Who caused it.
    pub origin: Origin,
}

/// A record key and its register, as listed or exchanged.
pub type Entry = (Vec<u8>, RecordRegister);

/// One local write.
#[derive(Debug, Clone)]
pub struct LocalWrite {
    /// The key.
    pub key: Vec<u8>,
    /// The new value or a tombstone.
    pub payload: Payload<ByteBuf>,
    /// The version vector of the state this write was based on, when it is not "everything
    /// this replica has seen" (a file edited on disk was based on the version last written
    /// there). `None` for API writes, which supersede everything.
    pub base: Option<crate::merge::VersionVector>,
}

/// A share with its live summary.
#[derive(Debug, Clone)]
pub struct ShareState {
    /// Its metadata.
    pub meta: ShareMeta,
    /// The summary of its entries. The store thread refreshes it after each commit; readers
    /// (reconciliation, announcements) hold it for one answer (at most a few leaf reads from
    /// the store), never across an `.await`.
    pub summary: Arc<RwLock<ShareSummary>>,
}

type Shares = Arc<RwLock<HashMap<ShareId, ShareState>>>;

/// The id of a record key in the summary.
pub fn record_id(key: &[u8]) -> Id {
    *blake3::hash(key).as_bytes()
}

fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn join_key(share: &ShareId, rest: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(32 + rest.len());
    k.extend_from_slice(share);
    k.extend_from_slice(rest);
    k
}

/// Checks a record key and value against the limits.
pub fn check_record(key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
    check_entry(ShareKind::Records, key, value)
}

/// Checks an entry's key and value against the limits of its share's kind: record keys up to
/// [`MAX_KEY_BYTES`], folder paths up to [`MAX_PATH_KEY_BYTES`].
pub fn check_entry(kind: ShareKind, key: &[u8], value: Option<&[u8]>) -> Result<(), StoreError> {
    let max_key = match kind {
        ShareKind::Records => MAX_KEY_BYTES,
        ShareKind::Folder => MAX_PATH_KEY_BYTES,
    };
    if key.is_empty() {
        return Err(StoreError::Invalid("record keys must not be empty".into()));
    }
    if key.len() > max_key {
        return Err(StoreError::Invalid(format!(
            "key is {} bytes; the limit is {max_key}",
            key.len()
        )));
    }
    if std::str::from_utf8(key).is_err() {
        return Err(StoreError::Invalid("record keys must be UTF-8".into()));
    }
    if let Some(value) = value
        && value.len() > MAX_VALUE_BYTES
    {
        return Err(StoreError::Invalid(format!(
            "value is {} bytes; the limit is {MAX_VALUE_BYTES} (1 MiB)",
            value.len()
        )));
    }
    Ok(())
}

/// The smallest key greater than every key starting with `prefix`.
fn next_prefix(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Checks an entry from a peer beyond the generic limits (for folders: a safe path and a
/// well-formed file description); the message names what is wrong.
pub type EntryValidator = fn(ShareKind, &[u8], &RecordRegister) -> Result<(), InvalidEntry>;

/// An entry a validator refused, with the validator's own error (the store does not know its
/// type).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct InvalidEntry(#[source] pub Box<dyn std::error::Error + Send + Sync>);

#[cfg(test)]
pub(crate) mod tests;
