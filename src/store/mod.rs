//! The persistent index: shares, their entries, and each share's Merkle summary.
//!
//! One actor thread owns the [redb] database (an embedded, ACID, copy-on-write B-tree store), so
//! all disk I/O happens off the async workers and every write has one owner. Writes that arrive
//! together are applied in one transaction and committed with `Durability::Immediate` before any
//! of them is acknowledged: a put the API acknowledged survives `kill -9`, and under load many
//! puts share one fsync (group commit).
//!
//! Tables (keys are byte strings; `share` is the 32-byte share id):
//! - `shares`: `share` → CBOR [`ShareMeta`].
//! - `records`: `share ‖ key` → CBOR [`RecordRegister`] (ordered by key, for `kv list --prefix`).
//! - `index`: `share ‖ blake3(key)` → `digest ‖ key`: what the summary is built from at start-up
//!   without decoding any register, and how entries are found by id during reconciliation.
//! - `meta`: `"hlc"` → the newest hybrid logical clock reading, so the clock never goes back.
//!
//! The summaries live in memory (rebuilt from `index` at start-up) behind a lock per share that
//! readers hold only for a few microseconds and never across an `.await`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{info, warn};

use crate::merge::{Hlc, HlcClock, MergeError, Payload, PeerKey};
use crate::reconcile::{Digest, Id, Summary};

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
/// Changes buffered for slow watchers; a watcher that falls further behind is told it lagged.
pub const CHANGE_BUFFER: usize = 65_536;
/// redb's page cache. Its default (1 GiB) made a daemon holding 10^6 records use over a GiB;
/// the B-tree's hot upper levels fit in far less.
pub const STORE_CACHE_BYTES: usize = 64 * 1024 * 1024;
/// Longest share name.
pub const MAX_SHARE_NAME: usize = 128;

const SHARES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("shares");
const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
const INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index");
const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");

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
    Db(String),
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
}

impl<E: Into<redb::Error>> From<E> for StoreError {
    fn from(e: E) -> Self {
        StoreError::Db(e.into().to_string())
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
            .finish_non_exhaustive()
    }
}

impl ShareMeta {
    /// Whether this member may change the share.
    pub fn writable(&self) -> bool {
        self.write_key.is_some()
    }

    /// Whether `peer` may be a member of this share here (its per-share allowlist).
    pub fn admits(&self, peer: &libp2p::PeerId) -> bool {
        self.trusted_peers.is_empty() || self.trusted_peers.iter().any(|p| *p == peer.to_string())
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
    /// The summary of its entries. The store thread writes it after each commit; readers
    /// (reconciliation, announcements) hold it for microseconds, never across an `.await`.
    pub summary: Arc<RwLock<Summary>>,
}

type Shares = Arc<RwLock<HashMap<ShareId, ShareState>>>;

enum Action {
    CreateShare {
        meta: ShareMeta,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    UpdateShare {
        meta: ShareMeta,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    CountAuthored {
        share: ShareId,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Put {
        share: ShareId,
        records: Vec<LocalWrite>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Merge {
        share: ShareId,
        entries: Vec<Entry>,
        from: libp2p::PeerId,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Get {
        share: ShareId,
        key: Vec<u8>,
        reply: oneshot::Sender<Result<Option<RecordRegister>, StoreError>>,
    },
    GetMany {
        share: ShareId,
        keys: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<Vec<Option<RecordRegister>>, StoreError>>,
    },
    List {
        share: ShareId,
        prefix: Vec<u8>,
        reply: oneshot::Sender<Result<Vec<Entry>, StoreError>>,
    },
    ByIds {
        share: ShareId,
        ids: Vec<Id>,
        reply: oneshot::Sender<Result<Vec<Entry>, StoreError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Cloneable handle to the store thread.
#[derive(Clone)]
pub struct StoreHandle {
    actions: mpsc::Sender<Action>,
    shares: Shares,
    changes: broadcast::Sender<Arc<Change>>,
}

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

impl StoreHandle {
    /// Opens (or creates) the database in `dir` and starts the store thread. Entries merged from
    /// peers are checked with `validate_remote` beyond the generic limits (the daemon passes the
    /// folder layer's check, which the store itself must not know).
    pub fn open(
        dir: &Path,
        local: libp2p::PeerId,
        validate_remote: EntryValidator,
    ) -> Result<StoreHandle, StoreError> {
        std::fs::create_dir_all(dir).map_err(|e| StoreError::Open {
            path: dir.to_owned(),
            message: e.to_string(),
        })?;
        let path = dir.join("meshsync.redb");
        let started = Instant::now();
        let db = Database::builder()
            .set_cache_size(STORE_CACHE_BYTES)
            .create(&path)
            .map_err(|e| StoreError::Open {
                path: path.clone(),
                message: e.to_string(),
            })?;
        let shares: Shares = Arc::default();
        let clock = load(&db, &shares)?;
        let total: u64 = shares
            .read()
            .expect("shares lock")
            .values()
            .map(|s| s.summary.read().expect("summary lock").len())
            .sum();
        info!(
            "store opened: {} shares, {total} entries, in {:?}",
            shares.read().expect("shares lock").len(),
            started.elapsed()
        );
        let (tx, rx) = mpsc::channel(STORE_CHANNEL_CAPACITY);
        let (changes, _) = broadcast::channel(CHANGE_BUFFER);
        let local_key =
            PeerKey::new(local.to_bytes()).map_err(|e| StoreError::Db(e.to_string()))?;
        let actor = StoreActor {
            validate_remote,
            db,
            shares: shares.clone(),
            clock,
            local: local_key,
            changes: changes.clone(),
        };
        std::thread::Builder::new()
            .name("meshsync-store".into())
            .spawn(move || actor.run(rx))
            .map_err(|e| StoreError::Db(e.to_string()))?;
        Ok(StoreHandle {
            actions: tx,
            shares,
            changes,
        })
    }

    /// Subscribes to every change, local or remote.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// All shares.
    pub fn shares(&self) -> Vec<ShareState> {
        let mut list: Vec<ShareState> = self
            .shares
            .read()
            .expect("shares lock")
            .values()
            .cloned()
            .collect();
        list.sort_by(|a, b| a.meta.name.cmp(&b.meta.name));
        list
    }

    /// The share with this id.
    pub fn share(&self, id: &ShareId) -> Option<ShareState> {
        self.shares.read().expect("shares lock").get(id).cloned()
    }

    /// Finds a share by local name or by hex id.
    pub fn resolve(&self, name_or_id: &str) -> Result<ShareState, StoreError> {
        let shares = self.shares.read().expect("shares lock");
        if let Some(s) = shares.values().find(|s| s.meta.name == name_or_id) {
            return Ok(s.clone());
        }
        if let Ok(bytes) = hex::decode(name_or_id)
            && let Ok(id) = <ShareId>::try_from(bytes.as_slice())
            && let Some(s) = shares.get(&id)
        {
            return Ok(s.clone());
        }
        Err(StoreError::UnknownShare(name_or_id.to_owned()))
    }

    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<T, StoreError>>) -> Action,
    ) -> Result<T, StoreError> {
        let (reply, rx) = oneshot::channel();
        self.actions
            .send(make(reply))
            .await
            .map_err(|_| StoreError::Stopped)?;
        rx.await.map_err(|_| StoreError::Stopped)?
    }

    /// Creates a share (or records a joined one).
    pub async fn create_share(&self, meta: ShareMeta) -> Result<(), StoreError> {
        self.call(|reply| Action::CreateShare { meta, reply }).await
    }

    /// Replaces the stored metadata of an existing share (same id and name).
    pub async fn update_share(&self, meta: ShareMeta) -> Result<(), StoreError> {
        self.call(|reply| Action::UpdateShare { meta, reply }).await
    }

    /// How many records of a share hold a version written here: on a read-only member, the
    /// local edits that no other member will take. Reads the whole share.
    pub async fn count_authored(&self, share: ShareId) -> Result<u64, StoreError> {
        self.call(|reply| Action::CountAuthored { share, reply })
            .await
    }

    /// Writes records locally (values or tombstones), durably, in one transaction.
    pub async fn put(
        &self,
        share: ShareId,
        records: Vec<(Vec<u8>, Payload<ByteBuf>)>,
    ) -> Result<(), StoreError> {
        let records = records
            .into_iter()
            .map(|(key, payload)| LocalWrite {
                key,
                payload,
                base: None,
            })
            .collect();
        self.put_writes(share, records).await
    }

    /// Writes local changes, each possibly based on an older version, durably and all or
    /// nothing.
    pub async fn put_writes(
        &self,
        share: ShareId,
        records: Vec<LocalWrite>,
    ) -> Result<(), StoreError> {
        self.call(|reply| Action::Put {
            share,
            records,
            reply,
        })
        .await
    }

    /// Merges entries received from a peer; returns how many changed something.
    pub async fn merge(
        &self,
        share: ShareId,
        entries: Vec<Entry>,
        from: libp2p::PeerId,
    ) -> Result<usize, StoreError> {
        self.call(|reply| Action::Merge {
            share,
            entries,
            from,
            reply,
        })
        .await
    }

    /// The register of one key.
    pub async fn get(
        &self,
        share: ShareId,
        key: Vec<u8>,
    ) -> Result<Option<RecordRegister>, StoreError> {
        self.call(|reply| Action::Get { share, key, reply }).await
    }

    /// The registers of many keys at once (`None` where absent).
    pub async fn get_many(
        &self,
        share: ShareId,
        keys: Vec<Vec<u8>>,
    ) -> Result<Vec<Option<RecordRegister>>, StoreError> {
        self.call(|reply| Action::GetMany { share, keys, reply })
            .await
    }

    /// All entries whose key starts with `prefix`, in key order.
    pub async fn list(&self, share: ShareId, prefix: Vec<u8>) -> Result<Vec<Entry>, StoreError> {
        self.call(|reply| Action::List {
            share,
            prefix,
            reply,
        })
        .await
    }

    /// Closes the database cleanly (so the next start needs no recovery) and stops the thread.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.actions.send(Action::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Entries by summary id (unknown ids are skipped).
    pub async fn by_ids(&self, share: ShareId, ids: Vec<Id>) -> Result<Vec<Entry>, StoreError> {
        self.call(|reply| Action::ByIds { share, ids, reply }).await
    }
}

/// Reads shares, rebuilds summaries and resumes the clock.
fn load(db: &Database, shares: &Shares) -> Result<HlcClock, StoreError> {
    let txn = db.begin_write()?;
    {
        // Creating the tables up front lets readers open them without special cases.
        txn.open_table(SHARES)?;
        txn.open_table(RECORDS)?;
        txn.open_table(INDEX)?;
        txn.open_table(META)?;
    }
    txn.commit()?;
    let txn = db.begin_read()?;
    let share_table = txn.open_table(SHARES)?;
    let index = txn.open_table(INDEX)?;
    let mut map = HashMap::new();
    for row in share_table.iter()? {
        let (_, value) = row?;
        let meta: ShareMeta = ciborium::from_reader(value.value())
            .map_err(|e| StoreError::Db(format!("corrupt share record: {e}")))?;
        let start = meta.id.to_vec();
        let end = next_prefix(&meta.id);
        let mut items = Vec::new();
        for row in index.range(start.as_slice()..end.as_slice())? {
            let (k, v) = row?;
            let (k, v) = (k.value(), v.value());
            if k.len() != 64 || v.len() < 32 {
                return Err(StoreError::Db("corrupt index row".into()));
            }
            let id: Id = k[32..].try_into().expect("32 bytes");
            let digest: Digest = v[..32].try_into().expect("32 bytes");
            items.push(crate::reconcile::Item { id, digest });
        }
        let summary = Summary::from_items(items);
        map.insert(
            meta.id,
            ShareState {
                meta,
                summary: Arc::new(RwLock::new(summary)),
            },
        );
    }
    *shares.write().expect("shares lock") = map;
    let meta = txn.open_table(META)?;
    let clock = match meta.get("hlc")? {
        Some(v) => {
            let hlc: Hlc = ciborium::from_reader(v.value())
                .map_err(|e| StoreError::Db(format!("corrupt clock: {e}")))?;
            HlcClock::resume(hlc)
        }
        None => HlcClock::new(),
    };
    Ok(clock)
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
pub type EntryValidator = fn(ShareKind, &[u8], &RecordRegister) -> Result<(), String>;

struct StoreActor {
    validate_remote: EntryValidator,
    db: Database,
    shares: Shares,
    clock: HlcClock,
    local: PeerKey,
    changes: broadcast::Sender<Arc<Change>>,
}

/// A write applied in the current transaction, answered after the commit.
enum Pending {
    Unit(
        oneshot::Sender<Result<(), StoreError>>,
        Result<(), StoreError>,
    ),
    Count(
        oneshot::Sender<Result<usize, StoreError>>,
        Result<usize, StoreError>,
    ),
}

impl StoreActor {
    fn run(mut self, mut rx: mpsc::Receiver<Action>) {
        while let Some(first) = rx.blocking_recv() {
            if let Action::Shutdown { reply } = first {
                drop(self);
                let _ = reply.send(());
                return;
            }
            let mut batch = vec![first];
            let mut shutdown = None;
            while batch.len() < MAX_ACTIONS_PER_COMMIT {
                match rx.try_recv() {
                    Ok(Action::Shutdown { reply }) => {
                        shutdown = Some(reply);
                        break;
                    }
                    Ok(action) => batch.push(action),
                    Err(_) => break,
                }
            }
            let (reads, writes): (Vec<Action>, Vec<Action>) = batch.into_iter().partition(|a| {
                matches!(
                    a,
                    Action::Get { .. }
                        | Action::GetMany { .. }
                        | Action::List { .. }
                        | Action::ByIds { .. }
                        | Action::CountAuthored { .. }
                )
            });
            for action in reads {
                self.read(action);
            }
            if !writes.is_empty() {
                self.write(writes);
            }
            if let Some(reply) = shutdown {
                drop(self);
                let _ = reply.send(());
                return;
            }
        }
    }

    fn read(&self, action: Action) {
        match action {
            Action::Get { share, key, reply } => {
                let _ = reply.send(self.get(&share, &key));
            }
            Action::GetMany { share, keys, reply } => {
                let _ = reply.send(
                    keys.iter()
                        .map(|key| self.get(&share, key))
                        .collect::<Result<Vec<_>, _>>(),
                );
            }
            Action::List {
                share,
                prefix,
                reply,
            } => {
                let _ = reply.send(self.list(&share, &prefix));
            }
            Action::ByIds { share, ids, reply } => {
                let _ = reply.send(self.by_ids(&share, &ids));
            }
            Action::CountAuthored { share, reply } => {
                let _ = reply.send(self.count_authored(&share));
            }
            _ => unreachable!("only reads here"),
        }
    }

    fn get(&self, share: &ShareId, key: &[u8]) -> Result<Option<RecordRegister>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        match table.get(join_key(share, key).as_slice())? {
            Some(v) => Ok(Some(decode_register(v.value())?)),
            None => Ok(None),
        }
    }

    fn list(&self, share: &ShareId, prefix: &[u8]) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let start = join_key(share, prefix);
        let end = next_prefix(&start);
        let mut out = Vec::new();
        for row in table.range(start.as_slice()..end.as_slice())? {
            let (k, v) = row?;
            out.push((k.value()[32..].to_vec(), decode_register(v.value())?));
        }
        Ok(out)
    }

    fn count_authored(&self, share: &ShareId) -> Result<u64, StoreError> {
        let txn = self.db.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let start = join_key(share, &[]);
        let end = next_prefix(&start);
        let mut count = 0;
        for row in table.range(start.as_slice()..end.as_slice())? {
            let (_, v) = row?;
            let register = decode_register(v.value())?;
            if register
                .versions()
                .iter()
                .any(|v| *v.origin() == self.local)
            {
                count += 1;
            }
        }
        Ok(count)
    }

    fn by_ids(&self, share: &ShareId, ids: &[Id]) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db.begin_read()?;
        let index = txn.open_table(INDEX)?;
        let records = txn.open_table(RECORDS)?;
        let mut out = Vec::with_capacity(ids.len());
        for id in ids {
            let Some(row) = index.get(join_key(share, id).as_slice())? else {
                continue;
            };
            let key = row.value()[32..].to_vec();
            if let Some(v) = records.get(join_key(share, &key).as_slice())? {
                out.push((key, decode_register(v.value())?));
            }
        }
        Ok(out)
    }

    fn write(&mut self, actions: Vec<Action>) {
        let mut pending = Vec::new();
        let mut changes: Vec<Change> = Vec::new();
        let mut summary_updates: Vec<(ShareId, Id, Digest)> = Vec::new();
        let result = (|| -> Result<(), StoreError> {
            let txn = self.db.begin_write()?;
            {
                let mut records = txn.open_table(RECORDS)?;
                let mut index = txn.open_table(INDEX)?;
                let mut share_table = txn.open_table(SHARES)?;
                for action in actions {
                    let mut tx = Tables {
                        records: &mut records,
                        index: &mut index,
                        changes: &mut changes,
                        summary_updates: &mut summary_updates,
                    };
                    match action {
                        Action::CreateShare { meta, reply } => {
                            let r = self.create_share(&mut share_table, meta);
                            pending.push(Pending::Unit(reply, r));
                        }
                        Action::UpdateShare { meta, reply } => {
                            let r = self.update_share(&mut share_table, meta);
                            pending.push(Pending::Unit(reply, r));
                        }
                        Action::Put {
                            share,
                            records: items,
                            reply,
                        } => {
                            let r = self.put(&mut tx, share, items);
                            pending.push(Pending::Unit(reply, r));
                        }
                        Action::Merge {
                            share,
                            entries,
                            from,
                            reply,
                        } => {
                            let r = self.merge(&mut tx, share, entries, from);
                            pending.push(Pending::Count(reply, r));
                        }
                        _ => unreachable!("only writes here"),
                    }
                }
                let mut meta = txn.open_table(META)?;
                let clock = crate::cbor::encode(&self.clock.last())
                    .map_err(|e| StoreError::Db(e.to_string()))?;
                meta.insert("hlc", clock.as_slice())?;
            }
            txn.commit()?;
            Ok(())
        })();
        match result {
            Ok(()) => {
                self.apply_summary_updates(summary_updates);
                for change in changes {
                    let _ = self.changes.send(Arc::new(change));
                }
                for p in pending {
                    match p {
                        Pending::Unit(reply, r) => {
                            let _ = reply.send(r);
                        }
                        Pending::Count(reply, r) => {
                            let _ = reply.send(r);
                        }
                    }
                }
            }
            Err(e) => {
                // Nothing was committed: every writer in this batch hears about it and nothing
                // they wrote is visible, so no acknowledged write can be lost.
                warn!("store commit failed: {e}");
                for p in pending {
                    match p {
                        Pending::Unit(reply, _) => {
                            let _ = reply.send(Err(StoreError::Db(e.to_string())));
                        }
                        Pending::Count(reply, _) => {
                            let _ = reply.send(Err(StoreError::Db(e.to_string())));
                        }
                    }
                }
                // The in-memory view may have run ahead of the aborted transaction; reload it.
                match load(&self.db, &self.shares) {
                    Ok(clock) => self.clock = HlcClock::resume(self.clock.last().max(clock.last())),
                    Err(e) => warn!("cannot reload the store after a failed commit: {e}"),
                }
            }
        }
    }

    fn apply_summary_updates(&self, updates: Vec<(ShareId, Id, Digest)>) {
        let shares = self.shares.read().expect("shares lock");
        let mut current: Option<(ShareId, std::sync::RwLockWriteGuard<'_, Summary>)> = None;
        for (share, id, digest) in updates {
            if current.as_ref().map(|(s, _)| *s) != Some(share) {
                current = None;
                if let Some(state) = shares.get(&share) {
                    current = Some((share, state.summary.write().expect("summary lock")));
                }
            }
            if let Some((_, summary)) = current.as_mut() {
                summary.insert(id, digest);
            }
        }
    }

    fn create_share(
        &self,
        table: &mut redb::Table<&[u8], &[u8]>,
        meta: ShareMeta,
    ) -> Result<(), StoreError> {
        {
            let shares = self.shares.read().expect("shares lock");
            if let Some(existing) = shares.get(&meta.id) {
                return Err(StoreError::AlreadyJoined(existing.meta.name.clone()));
            }
            if shares.values().any(|s| s.meta.name == meta.name) {
                return Err(StoreError::NameTaken(meta.name));
            }
        }
        let bytes = crate::cbor::encode(&meta).map_err(|e| StoreError::Db(e.to_string()))?;
        table.insert(meta.id.as_slice(), bytes.as_slice())?;
        self.shares.write().expect("shares lock").insert(
            meta.id,
            ShareState {
                meta,
                summary: Arc::new(RwLock::new(Summary::new())),
            },
        );
        Ok(())
    }

    fn update_share(
        &self,
        table: &mut redb::Table<&[u8], &[u8]>,
        meta: ShareMeta,
    ) -> Result<(), StoreError> {
        let mut shares = self.shares.write().expect("shares lock");
        let Some(state) = shares.get_mut(&meta.id) else {
            return Err(StoreError::UnknownShare(hex::encode(meta.id)));
        };
        let bytes = crate::cbor::encode(&meta).map_err(|e| StoreError::Db(e.to_string()))?;
        table.insert(meta.id.as_slice(), bytes.as_slice())?;
        state.meta = meta;
        Ok(())
    }

    fn share_kind(&self, share: &ShareId) -> Result<ShareKind, StoreError> {
        self.shares
            .read()
            .expect("shares lock")
            .get(share)
            .map(|s| s.meta.kind)
            .ok_or_else(|| StoreError::UnknownShare(hex::encode(share)))
    }

    fn share_name(&self, share: &ShareId) -> Result<String, StoreError> {
        self.shares
            .read()
            .expect("shares lock")
            .get(share)
            .map(|s| s.meta.name.clone())
            .ok_or_else(|| StoreError::UnknownShare(hex::encode(share)))
    }

    /// Applies a local write all or nothing: every record is checked and versioned before the
    /// first one is written, so a bad record in a batch leaves its neighbours unwritten too.
    fn put(
        &mut self,
        tx: &mut Tables<'_, '_>,
        share: ShareId,
        items: Vec<LocalWrite>,
    ) -> Result<(), StoreError> {
        let name = self.share_name(&share)?;
        let kind = self.share_kind(&share)?;
        for write in &items {
            let value = match &write.payload {
                Payload::Value(v) => Some(v.as_slice()),
                Payload::Tombstone => None,
            };
            check_entry(kind, &write.key, value)?;
        }
        // A key written twice in one batch builds on its own earlier version.
        let mut staged: Vec<(Vec<u8>, RecordRegister)> = Vec::with_capacity(items.len());
        let mut position: HashMap<Vec<u8>, usize> = HashMap::new();
        for LocalWrite { key, payload, base } in items {
            let mut register = match position.get(&key) {
                Some(&i) => staged[i].1.clone(),
                None => tx.load(&share, &key)?.unwrap_or_default(),
            };
            let hlc = self.clock.now(wall_millis());
            let written = match &base {
                Some(base) => register.write_local_based(&self.local, hlc, payload, base),
                None => register.write_local(&self.local, hlc, payload),
            };
            written.map_err(|source| StoreError::Merge {
                share: name.clone(),
                key: String::from_utf8_lossy(&key).into_owned(),
                source,
            })?;
            match position.get(&key) {
                Some(&i) => staged[i].1 = register,
                None => {
                    position.insert(key.clone(), staged.len());
                    staged.push((key, register));
                }
            }
        }
        for (key, register) in staged {
            tx.save(share, key, register, Origin::Local)?;
        }
        Ok(())
    }

    fn merge(
        &mut self,
        tx: &mut Tables<'_, '_>,
        share: ShareId,
        entries: Vec<Entry>,
        from: libp2p::PeerId,
    ) -> Result<usize, StoreError> {
        let name = self.share_name(&share)?;
        let kind = self.share_kind(&share)?;
        let mut changed = 0;
        'entries: for (key, incoming) in entries {
            let value = incoming.value().map(|v| v.as_slice());
            if let Err(e) = check_entry(kind, &key, value).and_then(|_| {
                (self.validate_remote)(kind, &key, &incoming).map_err(StoreError::Invalid)
            }) {
                warn!(peer = %from, share = %name, "refused an entry: {e}");
                continue;
            }
            if incoming.versions().iter().any(|v| match v.payload() {
                Payload::Value(v) => v.len() > MAX_VALUE_BYTES,
                Payload::Tombstone => false,
            }) {
                warn!(peer = %from, share = %name, "refused an entry with an oversized value");
                continue;
            }
            for version in incoming.versions() {
                if let Err(e) = self.clock.observe(version.hlc(), wall_millis()) {
                    warn!(peer = %from, share = %name, key = %String::from_utf8_lossy(&key), "refused an entry: {e}");
                    continue 'entries;
                }
            }
            let mut register = tx.load(&share, &key)?.unwrap_or_default();
            let before = register.digest().ok();
            register.merge(&incoming);
            if register.digest().ok() == before {
                continue;
            }
            tx.save(share, key, register, Origin::Remote(from))?;
            changed += 1;
        }
        Ok(changed)
    }
}

/// The open tables of one write transaction, plus what to publish after it commits.
struct Tables<'t, 'a> {
    records: &'a mut redb::Table<'t, &'static [u8], &'static [u8]>,
    index: &'a mut redb::Table<'t, &'static [u8], &'static [u8]>,
    changes: &'a mut Vec<Change>,
    summary_updates: &'a mut Vec<(ShareId, Id, Digest)>,
}

impl Tables<'_, '_> {
    fn load(&self, share: &ShareId, key: &[u8]) -> Result<Option<RecordRegister>, StoreError> {
        match self.records.get(join_key(share, key).as_slice())? {
            Some(v) => Ok(Some(decode_register(v.value())?)),
            None => Ok(None),
        }
    }

    fn save(
        &mut self,
        share: ShareId,
        key: Vec<u8>,
        register: RecordRegister,
        origin: Origin,
    ) -> Result<(), StoreError> {
        let bytes = register
            .to_cbor()
            .map_err(|e| StoreError::Db(e.to_string()))?;
        let digest: Digest = *blake3::hash(&bytes).as_bytes();
        let id = record_id(&key);
        self.records
            .insert(join_key(&share, &key).as_slice(), bytes.as_slice())?;
        let mut index_value = Vec::with_capacity(32 + key.len());
        index_value.extend_from_slice(&digest);
        index_value.extend_from_slice(&key);
        self.index
            .insert(join_key(&share, &id).as_slice(), index_value.as_slice())?;
        self.summary_updates.push((share, id, digest));
        self.changes.push(Change {
            share,
            key,
            register,
            origin,
        });
        Ok(())
    }
}

fn decode_register(bytes: &[u8]) -> Result<RecordRegister, StoreError> {
    RecordRegister::from_cbor(bytes).map_err(|e| StoreError::Db(format!("corrupt record: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn accept_any(_: ShareKind, _: &[u8], _: &RecordRegister) -> Result<(), String> {
        Ok(())
    }

    fn meta(name: &str) -> ShareMeta {
        let (id, secret) = crate::share::new_share();
        ShareMeta {
            id,
            name: name.into(),
            kind: ShareKind::Records,
            secret,
            seed_addrs: vec![],
            path: None,
            writers: [0; 32],
            write_key: None,
            trusted_peers: vec![],
        }
    }

    fn value(text: &str) -> Payload<ByteBuf> {
        Payload::Value(ByteBuf::from(text.as_bytes().to_vec()))
    }

    fn remote_register(peer: &libp2p::PeerId, millis: u64, text: &str) -> RecordRegister {
        let mut register = RecordRegister::new();
        register
            .write_local(
                &PeerKey::new(peer.to_bytes()).unwrap(),
                Hlc::new(millis, 0),
                value(text),
            )
            .unwrap();
        register
    }

    #[tokio::test]
    async fn writes_survive_reopen_with_the_same_summary() {
        let dir = tempfile::tempdir().unwrap();
        let me = libp2p::PeerId::random();
        let share = meta("s");
        let root = {
            let store = StoreHandle::open(dir.path(), me, accept_any).unwrap();
            store.create_share(share.clone()).await.unwrap();
            let records = (0..100)
                .map(|i| (format!("k{i}").into_bytes(), value("v")))
                .collect();
            store.put(share.id, records).await.unwrap();
            store
                .put(share.id, vec![(b"k5".to_vec(), Payload::Tombstone)])
                .await
                .unwrap();
            let state = store.share(&share.id).unwrap();
            let root = state.summary.read().unwrap().root();
            assert_eq!(state.summary.read().unwrap().len(), 100);
            root
        };
        // The store thread exits when its handle is dropped; give it a moment to let go.
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        let store = StoreHandle::open(dir.path(), me, accept_any).unwrap();
        let state = store.resolve("s").unwrap();
        assert_eq!(state.summary.read().unwrap().root(), root);
        assert!(
            store
                .get(share.id, b"k5".to_vec())
                .await
                .unwrap()
                .unwrap()
                .is_deleted()
        );
        assert_eq!(
            store.list(share.id, b"k9".to_vec()).await.unwrap().len(),
            11
        );
        let by_id = store
            .by_ids(share.id, vec![record_id(b"k7"), [0; 32]])
            .await
            .unwrap();
        assert_eq!(by_id.len(), 1);
        assert_eq!(by_id[0].0, b"k7");
    }

    #[tokio::test]
    async fn remote_entries_from_the_future_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreHandle::open(dir.path(), libp2p::PeerId::random(), accept_any).unwrap();
        let share = meta("s");
        store.create_share(share.clone()).await.unwrap();
        let peer = libp2p::PeerId::random();
        let now = wall_millis();
        let skewed = remote_register(&peer, now + 3600 * 1000, "from the future");
        let fine = remote_register(&peer, now, "fine");
        let merged = store
            .merge(
                share.id,
                vec![(b"a".to_vec(), skewed), (b"b".to_vec(), fine.clone())],
                peer,
            )
            .await
            .unwrap();
        assert_eq!(merged, 1);
        assert!(store.get(share.id, b"a".to_vec()).await.unwrap().is_none());
        // Merging the same thing again changes nothing (idempotent).
        let merged = store
            .merge(share.id, vec![(b"b".to_vec(), fine)], peer)
            .await
            .unwrap();
        assert_eq!(merged, 0);
    }

    #[tokio::test]
    async fn oversized_and_invalid_records_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let store = StoreHandle::open(dir.path(), libp2p::PeerId::random(), accept_any).unwrap();
        let share = meta("s");
        store.create_share(share.clone()).await.unwrap();
        let big = Payload::Value(ByteBuf::from(vec![0u8; MAX_VALUE_BYTES + 1]));
        assert!(matches!(
            store.put(share.id, vec![(b"k".to_vec(), big)]).await,
            Err(StoreError::Invalid(_))
        ));
        let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
        assert!(
            store
                .put(share.id, vec![(long_key, value("v"))])
                .await
                .is_err()
        );
        assert!(
            store
                .put(share.id, vec![(vec![0xff], value("v"))])
                .await
                .is_err()
        );
        // A failed write leaves nothing behind, even its valid neighbours in the same call.
        assert!(
            store
                .put(
                    share.id,
                    vec![(b"ok".to_vec(), value("v")), (vec![], value("v"))]
                )
                .await
                .is_err()
        );
        assert!(store.get(share.id, b"ok".to_vec()).await.unwrap().is_none());
        assert!(matches!(
            store
                .create_share(ShareMeta {
                    id: share.id,
                    ..meta("other")
                })
                .await,
            Err(StoreError::AlreadyJoined(_))
        ));
        assert!(matches!(
            store.create_share(meta("s")).await,
            Err(StoreError::NameTaken(_))
        ));
    }
}
