//! The cloneable handle to the store thread: every call sends an [`Action`] and awaits its answer.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use serde_bytes::ByteBuf;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::info;

use super::action::Action;
use super::actor::StoreActor;
use super::database::{self, DbSlot};
use super::local_state::{LocalIndexChange, LocalStateReader, LocalStateRow, LocalStateRows};
use super::merge_waits::{ChangeNoticeStatus, MergeWaits};
use super::usage::{self, StoreUsage};
use super::{
    CHANGE_BACKLOG_MAX, CHANGE_BACKLOG_WAIT, CHANGE_BUFFER, Change, Entry, EntryValidator,
    LocalWrite, RecordRegister, STORE_CHANNEL_CAPACITY, ShareId, ShareMeta, ShareState, Shares,
    StoreError, schema,
};
use crate::merge::{Payload, PeerKey};
use crate::reconcile::Id;

/// A write that has been handed to the store thread; await [`PendingWrite::done`] to learn
/// whether it was committed, or drop it if the next awaited write stands for it.
pub struct PendingWrite(oneshot::Receiver<Result<(), StoreError>>);

impl PendingWrite {
    pub(super) fn new(reply: oneshot::Receiver<Result<(), StoreError>>) -> Self {
        PendingWrite(reply)
    }

    /// Waits until the write is committed (durably) or has failed.
    pub async fn done(self) -> Result<(), StoreError> {
        self.0.await.map_err(|_| StoreError::Stopped)?
    }
}

/// How often a merge that waits for the readers of change notices looks again.
const READERS_POLL: std::time::Duration = std::time::Duration::from_millis(5);

/// Cloneable handle to the store thread.
#[derive(Clone)]
pub struct StoreHandle {
    pub(super) actions: mpsc::Sender<Action>,
    /// For [`LocalStateReader`]s, which read without the store thread. Weak: the store thread
    /// holds the database, and closes it cleanly when it stops, whoever still holds a handle.
    slot: Arc<DbSlot>,
    /// The database file.
    file: Arc<Path>,
    shares: Shares,
    /// Change notices for the daemon's own readers, which merges wait for.
    changes: broadcast::Sender<Arc<Change>>,
    /// The same notices for outside watchers (the API's), which nothing waits for.
    watchers: broadcast::Sender<Arc<Change>>,
    /// Merges waiting, and having waited, for the readers of `changes` ([`StoreHandle::merge`]).
    merges: Arc<MergeWaits>,
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
        std::fs::create_dir_all(dir).map_err(|source| StoreError::Io {
            action: "create",
            path: dir.to_owned(),
            source,
        })?;
        let path = dir.join("meshsync.redb");
        let started = Instant::now();
        let db = database::open(&path)?;
        schema::prepare(&db, dir)?;
        let shares: Shares = Arc::default();
        let db = Arc::new(db);
        let slot = Arc::new(DbSlot::default());
        slot.set(&db);
        let clock = schema::load(&db, &shares, &slot)?;
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
        let (watchers, _) = broadcast::channel(CHANGE_BUFFER);
        let local_key =
            PeerKey::new(local.to_bytes()).map_err(|e| StoreError::Invalid(e.to_string()))?;
        let file: Arc<Path> = Arc::from(path.as_path());
        let actor = StoreActor {
            validate_remote,
            db: Some(db),
            slot: slot.clone(),
            path,
            next_reopen: Instant::now(),
            last_failure: None,
            shares: shares.clone(),
            clock,
            local: local_key,
            changes: changes.clone(),
            watchers: watchers.clone(),
            future_entries: 0,
            quiet: Default::default(),
            authored: Default::default(),
        };
        std::thread::Builder::new()
            .name("meshsync-store".into())
            .spawn(move || actor.run(rx))
            .map_err(StoreError::Thread)?;
        Ok(StoreHandle {
            actions: tx,
            slot,
            file,
            shares,
            changes,
            watchers,
            merges: Arc::default(),
        })
    }

    /// What the store's file holds, table by table (see [`super::usage`]). Reads every page,
    /// on a blocking thread; one such reading at a time, callers queue for it.
    pub async fn usage(&self) -> Result<StoreUsage, StoreError> {
        static ONE_AT_A_TIME: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(1);
        let _turn = ONE_AT_A_TIME
            .acquire()
            .await
            .map_err(|_| StoreError::Stopped)?;
        let slot = self.slot.clone();
        let file = self.file.clone();
        tokio::task::spawn_blocking(move || {
            let db = slot.get()?;
            usage::read(&db, &file)
        })
        .await
        .map_err(|_| StoreError::Stopped)?
    }

    /// Why the store cannot be used now (its disk is full, say), if it cannot: it is being
    /// reopened until it works.
    pub fn problem(&self) -> Option<String> {
        self.slot.problem()
    }

    /// Subscribes to every change, local or remote, as one of the daemon's own readers: a
    /// receiver that takes its notices promptly (peers' merges wait while any reader is more
    /// than [`CHANGE_BACKLOG_MAX`] notices behind).
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Change>> {
        self.changes.subscribe()
    }

    /// Subscribes to every change as an outside watcher (a client of the API), which may fall
    /// behind: nothing waits for it, and past [`CHANGE_BUFFER`] it is told it lagged.
    pub fn watch(&self) -> broadcast::Receiver<Arc<Change>> {
        self.watchers.subscribe()
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

    pub(super) async fn call<T>(
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

    /// Forgets a share: its metadata, entries, pages and local state, in one transaction.
    pub async fn remove_share(&self, share: ShareId) -> Result<(), StoreError> {
        self.call(|reply| Action::RemoveShare { share, reply })
            .await
    }

    /// How many records of a share hold a version written here: on a read-only member, the
    /// local edits that no other member will take. Reads the whole share the first time it is
    /// asked; then kept up to date by each commit.
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
        self.wait_for_readers().await;
        self.call(|reply| Action::Merge {
            share,
            entries,
            from,
            reply,
        })
        .await
    }

    /// Waits while the daemon's readers of change notices are more than [`CHANGE_BACKLOG_MAX`]
    /// behind, at most [`CHANGE_BACKLOG_WAIT`]. Polled: the channel says how far behind its
    /// slowest reader is, not when that changes.
    async fn wait_for_readers(&self) {
        if self.changes.len() <= CHANGE_BACKLOG_MAX {
            return;
        }
        let _counted = self.merges.start();
        let deadline = Instant::now() + CHANGE_BACKLOG_WAIT;
        while self.changes.len() > CHANGE_BACKLOG_MAX && Instant::now() < deadline {
            tokio::time::sleep(READERS_POLL).await;
        }
    }

    /// How many merges wait now for the daemon's readers of change notices.
    pub fn merges_waiting(&self) -> usize {
        self.merges.waiting()
    }

    /// How far the daemon's readers of change notices are behind, and what peers' merges
    /// waited for them: for `status`, where a slow first sync can be explained.
    pub fn change_notices(&self) -> ChangeNoticeStatus {
        ChangeNoticeStatus {
            backlog: self.changes.len() as u64,
            backlog_limit: CHANGE_BACKLOG_MAX as u64,
            merges_waiting: self.merges.waiting() as u64,
            merges_waited: self.merges.waited(),
        }
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

    /// All entries whose key starts with `prefix`, in key order (tests only: a share's size is
    /// unbounded, callers page with [`Self::list_page`]).
    #[cfg(test)]
    pub async fn list(&self, share: ShareId, prefix: Vec<u8>) -> Result<Vec<Entry>, StoreError> {
        self.list_page(share, prefix, None, usize::MAX).await
    }

    /// The first `limit` entries whose key starts with `prefix` and comes after `after`, in key
    /// order: a long listing a page at a time, without holding every entry at once.
    pub async fn list_page(
        &self,
        share: ShareId,
        prefix: Vec<u8>,
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        self.call(|reply| Action::List {
            share,
            prefix,
            after,
            limit,
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

/// Pages: see [`super::pages`].
impl StoreHandle {
    /// Hands pages to the store thread and returns once they are queued: they are committed
    /// with the batch they land in, which is also the batch of a write sent right after them
    /// (so pages and the entries that name them become durable together, at one fsync).
    pub async fn put_pages(
        &self,
        share: ShareId,
        pages: Vec<([u8; 32], Vec<u8>)>,
    ) -> Result<PendingWrite, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.actions
            .send(Action::PutPages {
                share,
                pages,
                reply,
            })
            .await
            .map_err(|_| StoreError::Stopped)?;
        Ok(PendingWrite::new(rx))
    }

    /// The page with this hash, if the share has it.
    pub async fn page(
        &self,
        share: ShareId,
        hash: [u8; 32],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        self.call(|reply| Action::Page { share, hash, reply }).await
    }

    /// [`StoreHandle::page`] for code on a blocking thread (a scanner's worker). Panics if called
    /// from an async task, like every blocking call into tokio.
    pub fn blocking_page(
        &self,
        share: ShareId,
        hash: [u8; 32],
    ) -> Result<Option<Vec<u8>>, StoreError> {
        let (reply, rx) = tokio::sync::oneshot::channel();
        self.actions
            .blocking_send(Action::Page { share, hash, reply })
            .map_err(|_| StoreError::Stopped)?;
        rx.blocking_recv().map_err(|_| StoreError::Stopped)?
    }
}

/// Local state: see [`super::local_state`].
impl StoreHandle {
    /// Writes (or removes) rows of a share's local state and the index rows derived from them,
    /// durably, all or nothing.
    pub async fn save_local_state(
        &self,
        share: ShareId,
        rows: Vec<LocalStateRow>,
        index: LocalIndexChange,
    ) -> Result<(), StoreError> {
        self.call(|reply| Action::SaveLocalState {
            share,
            rows,
            index,
            reply,
        })
        .await
    }

    /// Reads a share's local state from any thread, as last committed.
    pub fn local_state_reader(&self, share: ShareId) -> LocalStateReader {
        LocalStateReader::new(self.slot.clone(), share)
    }

    /// Every local-state row of a share (see [`Self::local_state_reader`] to read a few).
    pub async fn local_state(&self, share: ShareId) -> Result<LocalStateRows, StoreError> {
        self.call(|reply| Action::LocalState { share, reply }).await
    }
}
