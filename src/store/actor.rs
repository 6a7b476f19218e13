//! The store thread: applies writes in batches (one transaction and one fsync for all that
//! arrived together) and answers reads.

use crate::quiet::LogLimiter;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Instant;

use redb::{Database, ReadableDatabase, ReadableTable};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::{debug, info, warn};

use super::action::Action;
use super::database::{self, DbSlot, FAILURE_QUIET, REOPEN_EVERY};
use super::id_index;
use super::schema::{INDEX, LOCAL_INDEX, LOCAL_STATE, META, PAGES, RECORDS, SHARES, load};
use super::{
    Change, Entry, EntryValidator, LocalWrite, MAX_ACTIONS_PER_COMMIT, MAX_VALUE_BYTES, Origin,
    RecordRegister, ShareId, ShareKind, ShareMeta, ShareState, ShareSummary, Shares, StoreError,
    StoredItems, check_entry, join_key, local_state, next_prefix, pages, record_id, wall_millis,
};
use crate::merge::{HlcClock, Payload, PeerKey};
use crate::reconcile::{Digest, Id, ItemsUnreadable};

/// The state of the store thread.
pub(super) struct StoreActor {
    pub(super) validate_remote: EntryValidator,
    /// `None` after an I/O failure, until it is reopened.
    pub(super) db: Option<Arc<Database>>,
    /// Where handles and readers find `db`.
    pub(super) slot: Arc<DbSlot>,
    /// The database file, for reopening it.
    pub(super) path: PathBuf,
    /// When to try reopening a failed database next.
    pub(super) next_reopen: Instant,
    /// When the database last failed, and whether that failure was logged (and its recovery
    /// should be).
    pub(super) last_failure: Option<(Instant, bool)>,
    pub(super) shares: Shares,
    pub(super) clock: HlcClock,
    pub(super) local: PeerKey,
    pub(super) changes: broadcast::Sender<Arc<Change>>,
    /// The same notices for outside watchers.
    pub(super) watchers: broadcast::Sender<Arc<Change>>,
    /// Versions taken with timestamps beyond `MAX_CLOCK_SKEW` ahead of our clock.
    pub(super) future_entries: u64,
    /// Warnings a peer's entries cause, said once per peer and condition a minute.
    pub(super) quiet: LogLimiter<(libp2p::PeerId, &'static str)>,
    /// How many records of a share hold a version of ours ([`StoreActor::count_authored`]),
    /// for the shares asked about: counted once, then kept up to date by each commit.
    pub(super) authored: HashMap<ShareId, u64>,
}

impl Drop for StoreActor {
    fn drop(&mut self) {
        self.slot.stop();
    }
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

impl Pending {
    /// The batch committed: the writer gets its own result.
    fn answer(self) {
        match self {
            Pending::Unit(reply, r) => {
                let _ = reply.send(r);
            }
            Pending::Count(reply, r) => {
                let _ = reply.send(r);
            }
        }
    }

    /// The batch failed: the writer gets the error that stopped it.
    fn fail(self, error: &Arc<StoreError>) {
        let error = StoreError::BatchFailed(error.clone());
        match self {
            Pending::Unit(reply, _) => {
                let _ = reply.send(Err(error));
            }
            Pending::Count(reply, _) => {
                let _ = reply.send(Err(error));
            }
        }
    }
}

impl StoreActor {
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Action>) {
        loop {
            let first = if self.db.is_some() {
                match rx.blocking_recv() {
                    Some(action) => action,
                    None => return,
                }
            } else {
                // Closed after a failure: tried again while nothing is asked, too, so that
                // `status` clears by itself once the disk has room again.
                match rx.try_recv() {
                    Ok(action) => action,
                    Err(TryRecvError::Empty) => {
                        std::thread::sleep(REOPEN_EVERY / 10);
                        self.reopen_if_due();
                        continue;
                    }
                    Err(TryRecvError::Disconnected) => return,
                }
            };
            self.reopen_if_due();
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
            let (reads, writes): (Vec<Action>, Vec<Action>) =
                batch.into_iter().partition(Action::is_read);
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

    fn read(&mut self, action: Action) {
        match action {
            Action::Get { share, key, reply } => {
                let _ = reply.send(self.get(&share, &key));
            }
            Action::GetMany { share, keys, reply } => {
                let _ = reply.send(self.get_many(&share, &keys));
            }
            Action::List {
                share,
                prefix,
                after,
                limit,
                reply,
            } => {
                let _ = reply.send(self.list(&share, &prefix, after.as_deref(), limit));
            }
            Action::ByIds { share, ids, reply } => {
                let _ = reply.send(self.by_ids(&share, &ids));
            }
            Action::CountAuthored { share, reply } => {
                let _ = reply.send(self.count_authored(&share));
            }
            Action::Page { share, hash, reply } => {
                let _ = reply.send(self.db().and_then(|db| pages::read(db, &share, &hash)));
            }
            Action::LocalState { share, reply } => {
                let _ = reply.send(self.db().and_then(|db| local_state::read_all(db, &share)));
            }
            _ => unreachable!("only reads here"),
        }
    }

    fn get(&self, share: &ShareId, key: &[u8]) -> Result<Option<RecordRegister>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        match table.get(join_key(share, key).as_slice())? {
            Some(v) => Ok(Some(decode_register(v.value())?)),
            None => Ok(None),
        }
    }

    /// Many keys' registers from one read transaction (a download round's, see
    /// `folder::register_batch`).
    fn get_many(
        &self,
        share: &ShareId,
        keys: &[Vec<u8>],
    ) -> Result<Vec<Option<RecordRegister>>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        keys.iter()
            .map(|key| match table.get(join_key(share, key).as_slice())? {
                Some(v) => Ok(Some(decode_register(v.value())?)),
                None => Ok(None),
            })
            .collect()
    }

    fn list(
        &self,
        share: &ShareId,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let start = join_key(share, prefix);
        let end = next_prefix(&start);
        // The smallest key after `after` is `after` followed by a zero byte.
        let start = match after.map(|after| join_key(share, &[after, &[0]].concat())) {
            Some(after) if after > start => after,
            _ => start,
        };
        let mut out = Vec::new();
        for row in table.range(start.as_slice()..end.as_slice())?.take(limit) {
            let (k, v) = row?;
            out.push((k.value()[32..].to_vec(), decode_register(v.value())?));
        }
        Ok(out)
    }

    /// How many records of `share` hold a version written here. Read from the whole share the
    /// first time only (a `status` of a read-only member asked it at each call: seconds of the
    /// store thread at 10^7 records); then each commit adds its difference.
    fn count_authored(&mut self, share: &ShareId) -> Result<u64, StoreError> {
        if let Some(&count) = self.authored.get(share) {
            return Ok(count);
        }
        let count = self.count_authored_in_store(share)?;
        self.authored.insert(*share, count);
        Ok(count)
    }

    fn count_authored_in_store(&self, share: &ShareId) -> Result<u64, StoreError> {
        let txn = self.db()?.begin_read()?;
        let table = txn.open_table(RECORDS)?;
        let start = join_key(share, &[]);
        let end = next_prefix(&start);
        let mut count = 0;
        for row in table.range(start.as_slice()..end.as_slice())? {
            let (_, v) = row?;
            if authored_by(&decode_register(v.value())?, &self.local) {
                count += 1;
            }
        }
        Ok(count)
    }

    fn by_ids(&self, share: &ShareId, ids: &[Id]) -> Result<Vec<Entry>, StoreError> {
        let txn = self.db()?.begin_read()?;
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

    /// The open database, or why there is none.
    fn db(&self) -> Result<&Database, StoreError> {
        match &self.db {
            Some(db) => Ok(db),
            None => Err(self.slot.unavailable()),
        }
    }

    /// Reloads the in-memory view (shares, summaries, clock) from the committed state.
    fn reload(&mut self) -> Result<(), StoreError> {
        // Counted again when next asked: the commit whose changes they missed may have failed.
        self.authored.clear();
        let clock = load(self.db()?, &self.shares, &self.slot)?;
        self.clock = HlcClock::resume(self.clock.last().max(clock.last()), wall_millis());
        Ok(())
    }

    /// redb takes no more operations after an I/O error until it is reopened: close it, say so
    /// once, and try to reopen it now and every [`REOPEN_EVERY`] until that works.
    fn close_after_failure(&mut self, error: &StoreError) {
        let cause = match error {
            StoreError::BatchFailed(inner) => inner.to_string(),
            other => other.to_string(),
        };
        let problem = format!("cannot write the store {}: {cause}", self.path.display());
        let now = Instant::now();
        let again = self
            .last_failure
            .is_some_and(|(at, _)| now.duration_since(at) < FAILURE_QUIET);
        let said = !again && self.slot.problem().is_none();
        if said {
            warn!(
                "{problem}; nothing is stored or synced until it can be written again (tried \
                 every {REOPEN_EVERY:?})"
            );
        }
        let said_before = self.last_failure.is_some_and(|(_, said)| said) && again;
        self.last_failure = Some((now, said || said_before));
        self.slot.close(problem);
        self.db = None;
        self.next_reopen = now + REOPEN_EVERY;
    }

    /// Reopens a database closed by [`Self::close_after_failure`], once due. The file comes back
    /// as last committed (redb repairs what an interrupted write left).
    fn reopen_if_due(&mut self) {
        if self.db.is_some() || Instant::now() < self.next_reopen {
            return;
        }
        self.next_reopen = Instant::now() + REOPEN_EVERY;
        match database::open(&self.path) {
            Ok(db) => {
                let db = Arc::new(db);
                self.db = Some(db.clone());
                // A write proves it: opening only reads.
                if let Err(e) = self.reload().and_then(|()| self.write_clock()) {
                    debug!("store reopened but not writable yet: {e}");
                    self.db = None;
                    return;
                }
                self.slot.set(&db);
                let said = self
                    .last_failure
                    .as_mut()
                    .map(|(_, said)| std::mem::take(said));
                if self.slot.recovered() && said == Some(true) {
                    info!(
                        "store reopened: {} can be written again",
                        self.path.display()
                    );
                }
            }
            // Still full, or a reader still holds the old file: the next try comes.
            Err(e) => debug!("store not reopened yet: {e}"),
        }
    }

    /// Commits the clock alone: the smallest write there is.
    fn write_clock(&self) -> Result<(), StoreError> {
        let txn = self.db()?.begin_write()?;
        {
            let mut meta = txn.open_table(META)?;
            let clock = crate::cbor::encode(&self.clock.last()).map_err(StoreError::Encode)?;
            meta.insert("hlc", clock.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Applies a batch of writes in one transaction, commits it durably, then answers every
    /// writer and publishes the changes. If the commit fails, every writer of the batch hears so
    /// and nothing of it is visible.
    fn write(&mut self, actions: Vec<Action>) {
        let mut pending = Vec::new();
        let mut changes: Vec<Change> = Vec::new();
        let mut summary_updates: Vec<(ShareId, Id)> = Vec::new();
        let mut authored_changes: HashMap<ShareId, i64> = HashMap::new();
        let mut actions = actions.into_iter();
        let result = self.apply(
            &mut actions,
            &mut pending,
            &mut changes,
            &mut summary_updates,
            &mut authored_changes,
        );
        match result {
            Ok(()) => {
                for (share, change) in authored_changes {
                    if let Some(count) = self.authored.get_mut(&share) {
                        *count = count.saturating_add_signed(change);
                    }
                }
                if let Err(e) = self.apply_summary_updates(summary_updates) {
                    // The tree no longer matches what is stored: built again from the store.
                    // A store failure it has said already is not said again per commit.
                    if e.said_by_source {
                        debug!(
                            "cannot update a share's summary after a commit ({e}); reloading it"
                        );
                    } else {
                        warn!("cannot update a share's summary after a commit ({e}); reloading it");
                    }
                    if let Err(e) = self.reload() {
                        warn!("cannot reload the store: {e}");
                    }
                }
                for change in changes {
                    let change = Arc::new(change);
                    let _ = self.watchers.send(change.clone());
                    let _ = self.changes.send(change);
                }
                for p in pending {
                    p.answer();
                }
            }
            Err(e) => {
                // Nothing was committed: every writer in this batch hears about it and nothing
                // they wrote is visible, so no acknowledged write can be lost.
                let e = Arc::new(e);
                let reopen = e.needs_reopen();
                if reopen {
                    // Said before the writers hear it, so the cause comes first in the log.
                    self.close_after_failure(&e);
                }
                for p in pending {
                    p.fail(&e);
                }
                for action in actions {
                    action.fail(&e);
                }
                if reopen || matches!(*e, StoreError::Unavailable(_)) {
                    return;
                }
                warn!("store commit failed: {e}");
                // The in-memory view may have run ahead of the aborted transaction; reload it.
                if let Err(e) = self.reload() {
                    warn!("cannot reload the store after a failed commit: {e}");
                }
            }
        }
    }

    /// The transaction of [`StoreActor::write`]: each action's own result goes into `pending`;
    /// an error returned here aborts the whole batch.
    fn apply(
        &mut self,
        actions: &mut std::vec::IntoIter<Action>,
        pending: &mut Vec<Pending>,
        changes: &mut Vec<Change>,
        summary_updates: &mut Vec<(ShareId, Id)>,
        authored_changes: &mut HashMap<ShareId, i64>,
    ) -> Result<(), StoreError> {
        let local = self.local.clone();
        let txn = self.db()?.begin_write()?;
        {
            let mut records = txn.open_table(RECORDS)?;
            let mut index = txn.open_table(INDEX)?;
            let mut share_table = txn.open_table(SHARES)?;
            let mut page_table = txn.open_table(PAGES)?;
            let mut local_state_table = txn.open_table(LOCAL_STATE)?;
            let mut local_index_table = txn.open_table(LOCAL_INDEX)?;
            for action in actions.by_ref() {
                let mut tx = Tables {
                    records: &mut records,
                    index: &mut index,
                    changes,
                    summary_updates,
                    local: &local,
                    authored_changes,
                };
                let done = match action {
                    Action::CreateShare { meta, reply } => {
                        Pending::Unit(reply, self.create_share(&mut share_table, meta))
                    }
                    Action::UpdateShare { meta, reply } => {
                        Pending::Unit(reply, self.update_share(&mut share_table, meta))
                    }
                    Action::RemoveShare { share, reply } => {
                        let rows = [
                            &mut *tx.records,
                            &mut *tx.index,
                            &mut page_table,
                            &mut local_state_table,
                            &mut local_index_table,
                        ];
                        self.authored.remove(&share);
                        Pending::Unit(reply, self.remove_share(&mut share_table, rows, share))
                    }
                    Action::Put {
                        share,
                        records: items,
                        reply,
                    } => Pending::Unit(reply, self.put(&mut tx, share, items)),
                    Action::Merge {
                        share,
                        entries,
                        from,
                        reply,
                    } => Pending::Count(reply, self.merge(&mut tx, share, entries, from)),
                    Action::PutPages {
                        share,
                        pages: items,
                        reply,
                    } => Pending::Unit(reply, pages::write(&mut page_table, &share, &items)),
                    Action::SaveLocalState {
                        share,
                        rows,
                        index,
                        reply,
                    } => Pending::Unit(
                        reply,
                        local_state::write(
                            [&mut local_state_table, &mut local_index_table],
                            &share,
                            rows,
                            index,
                        ),
                    ),
                    _ => unreachable!("only writes here"),
                };
                pending.push(done);
            }
            let mut meta = txn.open_table(META)?;
            let clock = crate::cbor::encode(&self.clock.last()).map_err(StoreError::Encode)?;
            meta.insert("hlc", clock.as_slice())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Brings the summaries up to date with a committed batch (their items are read from the
    /// store, so only after the commit).
    fn apply_summary_updates(
        &self,
        mut updates: Vec<(ShareId, Id)>,
    ) -> Result<(), ItemsUnreadable> {
        updates.sort_unstable();
        updates.dedup();
        let shares = self.shares.read().expect("shares lock");
        // Sorted by share, then id: one run of ids per share.
        for run in updates.chunk_by(|a, b| a.0 == b.0) {
            let Some(state) = shares.get(&run[0].0) else {
                continue;
            };
            let ids: Vec<Id> = run.iter().map(|(_, id)| *id).collect();
            let mut summary = state.summary.write().expect("summary lock");
            let snapshot = summary
                .source()
                .snapshot()
                .map_err(|e| id_index::unreadable(&e))?;
            summary.refresh_all_from(&ids, &snapshot)?;
        }
        Ok(())
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
        let bytes = crate::cbor::encode(&meta).map_err(StoreError::Encode)?;
        table.insert(meta.id.as_slice(), bytes.as_slice())?;
        let id = meta.id;
        self.shares.write().expect("shares lock").insert(
            id,
            ShareState {
                meta,
                summary: Arc::new(RwLock::new(ShareSummary::from_sorted(
                    StoredItems::new(self.slot.clone(), id),
                    [],
                ))),
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
        let bytes = crate::cbor::encode(&meta).map_err(StoreError::Encode)?;
        table.insert(meta.id.as_slice(), bytes.as_slice())?;
        state.meta = meta;
        Ok(())
    }

    /// Deletes the share's row and every row keyed by its id in `rows` (entries, index, pages,
    /// local state); the in-memory view forgets it at once (reloaded if the commit fails).
    fn remove_share(
        &self,
        table: &mut redb::Table<&[u8], &[u8]>,
        rows: [&mut redb::Table<&[u8], &[u8]>; 5],
        share: ShareId,
    ) -> Result<(), StoreError> {
        if table.remove(share.as_slice())?.is_none() {
            return Err(StoreError::UnknownShare(hex::encode(share)));
        }
        let start = share.to_vec();
        let end = next_prefix(&start);
        for rows in rows {
            rows.retain_in(start.as_slice()..end.as_slice(), |_, _| false)?;
        }
        self.shares.write().expect("shares lock").remove(&share);
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
        // Each with whether its stored register held a version of ours.
        let mut staged: Vec<(Vec<u8>, RecordRegister, bool)> = Vec::with_capacity(items.len());
        let mut position: HashMap<Vec<u8>, usize> = HashMap::new();
        for LocalWrite { key, payload, base } in items {
            let (mut register, was_ours) = match position.get(&key) {
                Some(&i) => (staged[i].1.clone(), staged[i].2),
                None => {
                    let stored = tx.load(&share, &key)?.unwrap_or_default();
                    let was_ours = authored_by(&stored, &self.local);
                    (stored, was_ours)
                }
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
                    staged.push((key, register, was_ours));
                }
            }
        }
        for (key, register, was_ours) in staged {
            tx.save(share, key, register, was_ours, Origin::Local)?;
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
        for (key, incoming) in entries {
            let value = incoming.value().map(|v| v.as_slice());
            if let Err(e) = check_entry(kind, &key, value).and_then(|_| {
                (self.validate_remote)(kind, &key, &incoming).map_err(StoreError::Refused)
            }) {
                if let Some(unsaid) = self
                    .quiet
                    .allow(&(from, "refused"), std::time::Instant::now())
                {
                    warn!(peer = %from, share = %name, "refused an entry: {e}{}", crate::quiet::and_more(unsaid));
                }
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
                let observed = self.clock.observe(version.hlc(), wall_millis());
                if let Some(ahead) = observed.ahead_beyond_bound_millis {
                    // Taken (every peer must reach the same winner); said once per peer a
                    // minute, whatever the number of entries.
                    self.future_entries += 1;
                    let condition = (from, "future");
                    if let Some(unsaid) = self.quiet.allow(&condition, std::time::Instant::now()) {
                        warn!(
                            peer = %from,
                            share = %name,
                            "entries stamped {} s ahead of our clock: the peer's clock is wrong, \
                             or ours; taken, without moving our clock that far{}",
                            ahead / 1000,
                            crate::quiet::and_more(unsaid)
                        );
                    }
                }
            }
            let mut register = tx.load(&share, &key)?.unwrap_or_default();
            let before = register.digest().ok();
            let was_ours = authored_by(&register, &self.local);
            register.merge(&incoming);
            if register.digest().ok() == before {
                continue;
            }
            tx.save(share, key, register, was_ours, Origin::Remote(from))?;
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
    summary_updates: &'a mut Vec<(ShareId, Id)>,
    /// This peer, and per share how many more records hold a version of ours after the batch.
    local: &'a PeerKey,
    authored_changes: &'a mut HashMap<ShareId, i64>,
}

impl Tables<'_, '_> {
    fn load(&self, share: &ShareId, key: &[u8]) -> Result<Option<RecordRegister>, StoreError> {
        match self.records.get(join_key(share, key).as_slice())? {
            Some(v) => Ok(Some(decode_register(v.value())?)),
            None => Ok(None),
        }
    }

    /// Stores `register` at `key`; `was_ours` says whether the register it replaces held a
    /// version of ours.
    fn save(
        &mut self,
        share: ShareId,
        key: Vec<u8>,
        register: RecordRegister,
        was_ours: bool,
        origin: Origin,
    ) -> Result<(), StoreError> {
        let is_ours = authored_by(&register, self.local);
        if is_ours != was_ours {
            *self.authored_changes.entry(share).or_default() += if is_ours { 1 } else { -1 };
        }
        let bytes = register
            .to_cbor()
            .map_err(|e| StoreError::Corrupt(format!("cannot encode a register: {e}")))?;
        let digest: Digest = *blake3::hash(&bytes).as_bytes();
        let id = record_id(&key);
        self.records
            .insert(join_key(&share, &key).as_slice(), bytes.as_slice())?;
        let mut index_value = Vec::with_capacity(32 + key.len());
        index_value.extend_from_slice(&digest);
        index_value.extend_from_slice(&key);
        self.index
            .insert(join_key(&share, &id).as_slice(), index_value.as_slice())?;
        self.summary_updates.push((share, id));
        self.changes.push(Change {
            share,
            key,
            register,
            origin,
        });
        Ok(())
    }
}

/// Whether `register` holds a version written by `local`.
fn authored_by(register: &RecordRegister, local: &PeerKey) -> bool {
    register.versions().iter().any(|v| v.origin() == local)
}

fn decode_register(bytes: &[u8]) -> Result<RecordRegister, StoreError> {
    RecordRegister::from_cbor(bytes).map_err(|e| StoreError::Corrupt(format!("record: {e}")))
}
