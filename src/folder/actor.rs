//! The folder actor: keeps one shared directory and its share's entries in step.
//!
//! Local side: a full scan at start, a periodic verification (a slice at a time while the
//! watcher runs, see [`super::verify`]; else full scans, see [`super::rescan`]), and partial
//! scans of the paths the file watcher reports (debounced, see [`super::settle`]). A path whose scanned
//! description differs from what was last synced there is a local change and becomes a write
//! in the store, *based on* the version last synced at that path — so an edit made without
//! seeing a remote change conflicts with it instead of silently replacing it. A path that was
//! synced and is gone is a local delete.
//!
//! Remote side: every entry whose effective winner differs from what is on disk is materialised:
//! chunks already present locally (in any file) are copied, the rest are fetched from members
//! and verified by hash, the file is assembled in a temporary file beside the target and renamed
//! over it only if the target is still what we last saw (else it is a conflict and waits for the
//! scanner). Deletes remove only unchanged files. A delete concurrent with an edit loses to it.
//! When our own version lost a conflict, the peer that wrote it (us) keeps it beside the winner
//! as a `.sync-conflict-…` copy, which then syncs like any file — so exactly one copy exists.
//!
//! Safety: the folder must contain [`MARKER_DIR`]. If the root or the marker disappears (an
//! unmounted disk), the share pauses with the reason in `status`, and nothing — in particular
//! no delete — is sent until it is back.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{broadcast, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::breaker::Breaker;
use super::breaker::Held;
use super::chunk_places::ChunkPlaces;
use super::delete_hold::DeleteHold;
use super::disk::DiskGuard;
use super::error::FolderError;
use super::fetch::Fetcher;
use super::folder_lock::FolderHold;
use super::handle::{Command, FolderHandle};
use super::instance::{self, InstanceId};
use super::materialise::Materialised;
use super::model::{ChunkRef, FileMeta, Hash, MARKER_DIR, PageRef};
use super::queue::DownloadQueue;
use super::rescan::RESCAN_INTERVAL;
use super::scan::{self, ScanRecord};
use super::settle::{self, Settle};
use super::source::{self, ChunkLocation, Sources};
use super::state;
use super::status::{Counters, FolderState, FolderStatus, RateMeter, Unsyncable};
use super::synced_paths::{ScanBasis, SyncedPaths};
use super::verify::Verification;
use super::watch::{WatchEvent, Watching};
use super::{received, serve};
use crate::config::{BreakerLimit, MinFreeDisk, VersionsPolicy};
use crate::events::Events;
use crate::merge::{PeerKey, RecordRegister};
use crate::net::NetClient;
use crate::store::{Change, ShareMeta, StoreError, StoreHandle};

/// How often a paused folder checks whether its root and marker are back.
pub const PAUSED_CHECK_INTERVAL: Duration = Duration::from_secs(2);
/// Wait before retrying a failed download.
pub const DOWNLOAD_RETRY: Duration = Duration::from_secs(2);
/// Longest wait of a download that found no member connected to fetch from: a member that
/// connects retries it at once (`FolderActor::on_members`). Retried every
/// [`DOWNLOAD_RETRY`], a backlog of 2,000 such files cost more than a core (every file tried
/// and failed again every 2 s, for as long as no member was there).
pub const NO_MEMBER_RETRY: Duration = Duration::from_secs(600);
/// How often the synced-state rows are written (one store write for everything since).
pub const SYNCED_FLUSH_INTERVAL: Duration = Duration::from_millis(200);
/// ... or as soon as this many changed rows wait for it.
pub const SYNCED_FLUSH_ROWS: usize = 1000;
/// Synced-state rows held in memory until the store has committed them, at most: past it no
/// download starts until the writer catches up (receiving a million files, the rows once waited
/// for the end of the whole sync, ~1.6 KiB each).
pub const SYNCED_HELD_MAX: usize = 8192;
/// Registers of queued paths kept from the changes that queued them, at most: a download
/// started without one reads it from the store (a share joined with 100,000 files held one
/// register per file, ~40 MiB, until each was downloaded).
pub const LATEST_REGISTERS_KEPT: usize = 4096;
/// How long a scan waits when the synced state cannot be read from the store.
pub const STATE_UNREADABLE_RETRY: Duration = Duration::from_secs(10);
/// At most this many unsyncable paths are listed in `status` (all are counted).
pub const MAX_UNSYNCABLE_LISTED: usize = 100;
/// At most this many files that keep changing are listed in `status`.
pub const MAX_CHANGING_LISTED: usize = 100;
/// Commands from the engine buffered per folder.
pub const COMMAND_CHANNEL_CAPACITY: usize = 64;
/// Resumes and shutdowns kept for the loop while a long piece of work holds it (see
/// [`FolderActor::answer_commands`]); past that many, the channel is not read until the loop
/// runs again.
pub const KEPT_COMMANDS_MAX: usize = 8;
/// Temp files of ours not touched for this long, and not held by a running assembly, are
/// leftovers of a crash or an abandoned download: removed at start-up and at every full rescan,
/// even while downloads go on. A download that restarts sooner resumes from its temp file
/// instead; and once nothing is queued, running or waiting for a retry, no download will resume
/// any more, so then every temp file no assembly holds goes (after a start, and after a
/// download failed or was overtaken, which may leave one).
pub const STALE_TEMP_AGE: Duration = Duration::from_secs(600);

/// What the configuration says for one folder share.
#[derive(Debug, Clone)]
pub struct Policy {
    /// The mass-deletion breaker's limit.
    pub breaker: BreakerLimit,
    /// The free-space floor.
    pub min_free_disk: MinFreeDisk,
    /// What is kept of files peers' changes deleted or replaced.
    pub versions: VersionsPolicy,
    /// Whether peers' mass deletes are held too.
    pub breaker_remote: bool,
    /// This device's name, which our conflict copies are tagged with.
    pub device_name: Option<String>,
}

/// Starts the actor for a folder share. Its synced state is loaded from the store by the actor
/// itself, before it scans anything.
pub fn spawn(
    meta: &ShareMeta,
    local: PeerId,
    store: StoreHandle,
    net: NetClient,
    members: watch::Receiver<Vec<PeerId>>,
    policy: Policy,
    events: Events,
) -> Result<FolderHandle, FolderError> {
    let root = meta
        .path
        .clone()
        .ok_or_else(|| FolderError::NoPath(meta.name.clone()))?;
    let local_key = PeerKey::new(local.to_bytes()).map_err(|source| FolderError::PeerKey {
        share: meta.name.clone(),
        source,
    })?;
    let (tx, rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let changes = store.subscribe();
    let counters: Arc<Counters> = Arc::default();
    let fetcher = Fetcher::spawn(meta.id, net.clone(), members.clone(), counters.clone());
    let member_changes = members.clone();
    let sources = Sources {
        root,
        share: meta.id,
        net,
        members,
        store: store.clone(),
        chunks: Arc::new(ChunkPlaces::new(store.local_state_reader(meta.id))),
        counters,
        fetcher,
        conflict_tag: super::conflict::device_tag(&local, policy.device_name.as_deref()),
    };
    let (committed_tx, committed) = tokio::sync::watch::channel(0);
    let (state_writer, state_writer_task) =
        state::spawn_writer(store.clone(), meta.id, meta.name.clone(), committed_tx);
    let synced = SyncedPaths::new(store.local_state_reader(meta.id), committed);
    let actor = FolderActor {
        name: meta.name.clone(),
        local,
        local_key,
        store,
        sources,
        commands: rx,
        commands_kept: VecDeque::new(),
        changes,
        synced,
        state_loaded: false,
        instance: None,
        paused: None,
        hold: FolderHold::NotHeld,
        marks_read: false,
        unsyncable: BTreeMap::new(),
        warned: BTreeSet::new(),
        settle: Settle::default(),
        breaker: Breaker::new(policy.breaker),
        remote_breaker: policy.breaker_remote.then(|| Breaker::new(policy.breaker)),
        deletes_let_through: HashSet::new(),
        remote_deletes: DeleteHold::default(),
        disk: DiskGuard::new(policy.min_free_disk),
        versions: policy.versions,
        held: None,
        temp_files_maybe: true,
        deletes: DeleteHold::default(),
        scanning: false,
        watching: Watching::default(),
        dirty_paths: BTreeSet::new(),
        dirty_all: true,
        requeue_remote: false,
        scan_at: Some(Instant::now()),
        next_rescan: Instant::now() + RESCAN_INTERVAL,
        queue: DownloadQueue::default(),
        latest: HashMap::new(),
        downloads: JoinSet::new(),
        scans: JoinSet::new(),
        flush_at: None,
        scans_run: 0,
        full_scan_started: None,
        rescan_due_since: None,
        verification: Verification::default(),
        hashed_files: 0,
        hashed_bytes: 0,
        state_writer,
        state_writer_task: Some(state_writer_task),
        refused: 0,
        retry_lines: crate::quiet::LogLimiter::default(),
        member_changes,
        awaiting_member: false,
        last_error: None,
        rate: RateMeter::default(),
        events,
        recent_adds: Default::default(),
        author_name: Default::default(),
    };
    tokio::spawn(actor.run());
    Ok(FolderHandle { commands: tx })
}

/// One folder's actor: the loop that ties the watcher, scans, the store's changes and the
/// download queue together. Decisions are made in `plan` and `queue`; files are written in
/// `materialise`.
pub(super) struct FolderActor {
    pub(super) name: String,
    pub(super) local: PeerId,
    pub(super) local_key: PeerKey,
    pub(super) store: StoreHandle,
    pub(super) sources: Sources,
    pub(super) commands: mpsc::Receiver<Command>,
    /// The resumes and shutdowns that came while a long piece of work held the loop, in order
    /// (see [`FolderActor::answer_commands`]): taken by the loop first, before any other
    /// command. At most [`KEPT_COMMANDS_MAX`].
    pub(super) commands_kept: VecDeque<Command>,
    pub(super) changes: broadcast::Receiver<Arc<Change>>,
    /// Per path: what we last synced there.
    pub(super) synced: SyncedPaths,
    /// Whether `synced` was loaded. Until it is, nothing is scanned: every file would look new.
    pub(super) state_loaded: bool,
    /// The id of the folder `synced` describes ([`instance`]); `None` until one is recorded.
    pub(super) instance: Option<InstanceId>,
    pub(super) paused: Option<String>,
    /// The folder's lock ([`super::folder_lock`]): taken before anything is written in the
    /// folder, let go while it is paused.
    pub(super) hold: FolderHold,
    /// Whether the first full scan since start, the one that reads received files' marks
    /// ([`super::received`]), is done.
    pub(super) marks_read: bool,
    /// Local paths that cannot be synced, and why (see [`super::problems`]).
    pub(super) unsyncable: BTreeMap<String, String>,
    /// Scan warnings about no one path already logged.
    pub(super) warned: BTreeSet<String>,
    /// When watched paths are scanned ([`super::settle`]).
    pub(super) settle: Settle,
    /// The mass-deletion breaker ([`super::breaker`]), for local deletes...
    pub(super) breaker: Breaker,
    /// ... and for peers' deletes applied here, if configured (`breaker_remote`).
    pub(super) remote_breaker: Option<Breaker>,
    /// Peers' deletes the user decided on: not checked again.
    pub(super) deletes_let_through: HashSet<String>,
    /// Peers' deletes wait like ours ([`super::delete_hold`]) before they are applied.
    pub(super) remote_deletes: DeleteHold,
    /// Set while the breaker holds the share: nothing is sent or applied.
    pub(super) held: Option<Held>,
    /// The free-space floor ([`super::disk`]).
    pub(super) disk: DiskGuard,
    /// The versions policy ([`super::versions`]).
    pub(super) versions: VersionsPolicy,
    /// Whether temp files may have been left behind (a start after a crash, a failed or
    /// overtaken download): they are swept once the folder is idle.
    pub(super) temp_files_maybe: bool,
    /// Local deletes waiting for the deleting to stop ([`super::delete_hold`]).
    pub(super) deletes: DeleteHold,
    pub(super) scanning: bool,
    pub(super) watching: Watching,
    pub(super) dirty_paths: BTreeSet<String>,
    pub(super) dirty_all: bool,
    /// Change notices were lost: every store entry is compared with what was synced
    /// ([`FolderActor::queue_all_remote`]) once no scan is running.
    pub(super) requeue_remote: bool,
    pub(super) scan_at: Option<Instant>,
    pub(super) next_rescan: Instant,
    pub(super) queue: DownloadQueue,
    /// The register a queued path last changed to, from the change itself (saves asking the
    /// store again when its download starts).
    pub(super) latest: HashMap<String, RecordRegister>,
    pub(super) downloads: JoinSet<Materialised>,
    pub(super) scans: JoinSet<Result<ScanResult, scan::ScanError>>,
    pub(super) flush_at: Option<Instant>,
    pub(super) scans_run: u64,
    /// When the full scan running now started.
    pub(super) full_scan_started: Option<Instant>,
    /// When the periodic full rescan that is waiting for downloads to end fell due
    /// ([`super::rescan::defer_rescan`]).
    pub(super) rescan_due_since: Option<Instant>,
    /// The periodic verification walk, a slice at a time ([`super::verify`]).
    pub(super) verification: Verification,
    /// Files and bytes read by scans since start (an unchanged file is not read again).
    pub(super) hashed_files: u64,
    pub(super) hashed_bytes: u64,
    pub(super) state_writer: state::RowSender,
    pub(super) state_writer_task: Option<tokio::task::JoinHandle<()>>,
    pub(super) refused: u64,
    /// Failed downloads are said once per reason and minute, not once per file: with no member
    /// reachable, every queued file fails at once.
    pub(super) retry_lines: crate::quiet::LogLimiter<String>,
    /// The share's connected members, watched for downloads waiting for one.
    pub(super) member_changes: watch::Receiver<Vec<PeerId>>,
    /// Whether downloads wait for a member to connect ([`NO_MEMBER_RETRY`]).
    pub(super) awaiting_member: bool,
    /// The last error and when it happened, for `status`.
    pub(super) last_error: Option<(String, std::time::SystemTime)>,
    pub(super) rate: RateMeter,
    /// Where file changes and conflicts are reported ([`super::report`]).
    pub(super) events: Events,
    /// Files recently added, to report renames ([`super::report`]). A lock, not a field to
    /// borrow mutably: reports are made while other fields are borrowed; held for one lookup.
    pub(super) recent_adds: std::sync::Mutex<super::report::RecentAdds>,
    /// The last author's name in reports, kept the same way.
    pub(super) author_name: std::sync::Mutex<super::report::AuthorName>,
}

/// A finished scan, full or partial.
pub(super) struct ScanResult {
    /// The id found in the folder's marker directory when the scan started.
    pub(super) instance: std::io::Result<Option<InstanceId>>,
    pub(super) full: bool,
    pub(super) updated: BTreeMap<String, ScanRecord>,
    /// More of them, kept in a temporary file by a big scan.
    pub(super) spilled: Option<scan::SpilledEntries>,
    pub(super) gone: Vec<String>,
    pub(super) pages: Vec<(PageRef, Vec<ChunkRef>)>,
    pub(super) unstable: Vec<String>,
    /// Files left unread because they were written just now (see [`scan::ScanOutput::fresh`]).
    pub(super) fresh: Vec<String>,
    /// Whether this is the check of held deletes: its `gone` paths are sent, not held.
    pub(super) confirms_deletes: bool,
    /// Received files' marks, of the files that differ from what was synced at their paths
    /// (first full scan after start only).
    pub(super) marks: BTreeMap<String, Vec<u8>>,
    /// Paths not synced this time, and why.
    pub(super) problems: Vec<(String, String)>,
    /// Files read (and bytes) by this scan: its cost.
    pub(super) hashed: (u64, u64),
    /// Other warnings of the scan.
    pub(super) warnings: Vec<String>,
    /// The paths a verification slice covered ([`super::verify`]); `None` for other scans.
    pub(super) slice: Option<scan::PathRange>,
    /// Paths the scan found (changed or not).
    pub(super) checked: u64,
    /// What the scan compared the disk with (`None` for the check of held deletes, which
    /// compares nothing).
    pub(super) basis: Option<ScanBasis>,
}

impl ScanResult {
    /// What a scan found, as the folder takes it in; `full` when it covered the whole folder.
    pub(super) fn of(
        instance: std::io::Result<Option<InstanceId>>,
        full: bool,
        out: scan::ScanOutput,
        basis: ScanBasis,
    ) -> Self {
        let checked = out.unchanged
            + out.entries.len() as u64
            + out
                .spilled
                .as_ref()
                .map_or(0, scan::SpilledEntries::written);
        ScanResult {
            instance,
            full,
            updated: out.entries,
            spilled: out.spilled,
            gone: out.gone,
            pages: out.pages,
            unstable: out.unstable,
            fresh: out.fresh,
            confirms_deletes: false,
            marks: BTreeMap::new(),
            problems: out.problems,
            warnings: out.warnings,
            hashed: (out.hashed_files, out.hashed_bytes),
            slice: None,
            checked,
            basis: Some(basis),
        }
    }
}

impl FolderActor {
    async fn run(mut self) {
        self.load_state().await;
        self.hold_folder();
        self.housekeeping();
        info!(folder = %self.name, "watching {}", self.sources.root.display());
        let far = Duration::from_secs(3600);
        loop {
            let scan_at = if self.scanning { None } else { self.scan_at }
                .unwrap_or_else(|| Instant::now() + far);
            let slice_at = if self.scanning {
                None
            } else {
                self.verification.next_slice_at()
            }
            .unwrap_or_else(|| Instant::now() + far);
            let retry_at = self
                .queue
                .next_retry()
                .unwrap_or_else(|| Instant::now() + far);
            let rescan_at = self.next_rescan;
            let flush_at = self.flush_at.unwrap_or_else(|| Instant::now() + far);
            let deletes_at = if self.scanning {
                None
            } else {
                self.deletes.due_at()
            }
            .unwrap_or_else(|| Instant::now() + far);
            let remote_deletes_at = self
                .remote_deletes
                .due_at()
                .unwrap_or_else(|| Instant::now() + far);
            while let Some(command) = self.commands_kept.pop_front() {
                if self.take_command(command).await.is_break() {
                    return;
                }
            }
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(command) => {
                        if self.take_command(command).await.is_break() {
                            return;
                        }
                    }
                    None => return,
                },
                Some(event) = self.watching.next_event() => self.on_watch(event),
                change = self.changes.recv() => self.on_change_and_waiting(change),
                Some(done) = self.scans.join_next() => {
                    // Still `scanning` while its entries are written: a first scan of a big
                    // tree writes for minutes after its walk, and status says so meanwhile.
                    match done {
                        Ok(Ok(result)) => self.on_scanned(result).await,
                        Ok(Err(reason)) => self.pause(reason.to_string()),
                        Err(e) => self.pause(format!("scanner crashed: {e}")),
                    }
                    self.scanning = false;
                }
                Some(done) = self.downloads.join_next() => self.on_downloads_done(done).await,
                Ok(()) = self.member_changes.changed() => self.on_members(),
                _ = tokio::time::sleep_until(scan_at) => self.start_scan(),
                _ = tokio::time::sleep_until(retry_at) => self.queue.queue_due_retries(Instant::now()),
                _ = tokio::time::sleep_until(flush_at) => self.flush_synced(),
                () = self.synced.next_commit(), if self.synced.held() >= SYNCED_HELD_MAX => {
                    self.synced.forget_committed();
                }
                _ = tokio::time::sleep_until(rescan_at) => self.on_rescan_due(),
                _ = tokio::time::sleep_until(slice_at) => self.start_slice(),
                _ = tokio::time::sleep_until(deletes_at) => self.check_held_deletes(),
                _ = tokio::time::sleep_until(remote_deletes_at) => {
                    // Their wait is over: `start_downloads` below starts them.
                    self.remote_deletes.take_due(Instant::now());
                }
            }
            self.after_each_event().await;
        }
    }

    /// Loads what was synced at each path (every row is read to count them: seconds at 10^6,
    /// status is answered meanwhile). If the store cannot say, the folder stays paused with
    /// the reason in `status`: scanning without it would take every file for a new edit.
    async fn load_state(&mut self) {
        let stored = self.store.local_state_reader(self.sources.share);
        let (store, share) = (self.store.clone(), self.sources.share);
        let (name, runtime) = (self.name.clone(), tokio::runtime::Handle::current());
        let loading = tokio::task::spawn_blocking(move || {
            let loaded = state::load(&stored, &mut |_, _| {})?;
            if !loaded.chunks_indexed {
                info!(folder = %name, "writing the chunk index into the store (once)");
                let files = state::build_chunk_index(&stored, &store, share, &runtime)?;
                info!(folder = %name, "chunk index written: {files} files");
            }
            Ok(loaded)
        });
        let loaded = self
            .answer_commands_until(loading)
            .await
            .unwrap_or_else(|e| Err(StoreError::Invalid(format!("counting crashed: {e}"))));
        match loaded {
            Ok(loaded) => {
                self.synced.set_counts(loaded.counts);
                debug!(folder = %self.name, "folder state: {} synced paths", self.synced.len());
                self.instance = loaded.instance;
                self.state_loaded = true;
            }
            Err(e) => {
                let e = FolderError::State {
                    share: self.name.clone(),
                    source: e,
                };
                self.pause(format!("{e}; restart the daemon once the store is healthy"));
            }
        }
    }

    /// Stops downloads, hands the last synced rows to the writer and waits until it wrote them.
    async fn shutdown(&mut self) {
        self.downloads.abort_all();
        self.flush_synced();
        // Closing the channel lets the writer finish what it has, then exit.
        let (closed, _) = mpsc::unbounded_channel();
        drop(std::mem::replace(&mut self.state_writer, closed));
        if let Some(writer) = self.state_writer_task.take() {
            let _ = writer.await;
        }
    }

    /// Takes one command; breaks once the actor has shut down.
    async fn take_command(&mut self, command: Command) -> ControlFlow<()> {
        match command {
            Command::Shutdown { reply } => {
                self.shutdown().await;
                let _ = reply.send(());
                return ControlFlow::Break(());
            }
            Command::Resume { choice, reply } => {
                let _ = reply.send(self.resume(choice).await);
            }
            command => self.on_command(command),
        }
        ControlFlow::Continue(())
    }

    /// Answers the commands that wait while a long piece of work holds the loop (a big scan's
    /// entries being written, batch by batch): status and serving peers, which change nothing
    /// here, at once; a resume or shutdown is kept for the loop (a kept resume used to stop
    /// the reading, and `status` waited behind it). Without this, `status` and every peer
    /// asking us for chunks waited until the last batch (minutes for a first scan of 10^6
    /// files). At most one channel's worth per call; none once a shutdown is kept.
    pub(super) fn answer_commands(&mut self) {
        for _ in 0..COMMAND_CHANNEL_CAPACITY {
            if !self.may_keep_more() {
                return;
            }
            match self.commands.try_recv() {
                Ok(command) => self.answer_or_keep(command),
                Err(_) => return,
            }
        }
    }

    /// Waits for `work` (the loop does not run meanwhile), answering commands as
    /// [`Self::answer_commands`] does as they come.
    async fn answer_commands_until<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                biased;
                done = &mut work => return done,
                Some(command) = self.commands.recv(), if self.may_keep_more() => {
                    self.answer_or_keep(command);
                }
            }
        }
    }

    /// Answers a command that changes nothing here; keeps a resume or shutdown for the loop.
    fn answer_or_keep(&mut self, command: Command) {
        match command {
            Command::Resume { .. } | Command::Shutdown { .. } => {
                self.commands_kept.push_back(command);
            }
            command => self.on_command(command),
        }
    }

    /// Whether more commands may be read during long work: not once a shutdown waits (the
    /// work ends early), nor past [`KEPT_COMMANDS_MAX`] kept ones.
    fn may_keep_more(&self) -> bool {
        self.commands_kept.len() < KEPT_COMMANDS_MAX && !self.shutting_down()
    }

    /// Whether a shutdown waits: long work stops between its batches (what it did not write
    /// is found again by the next scan).
    pub(super) fn shutting_down(&self) -> bool {
        self.commands_kept
            .iter()
            .any(|command| matches!(command, Command::Shutdown { .. }))
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::ServeChunks {
                hashes,
                budget,
                reply,
            } => {
                let places = (self.paused.is_none()).then(|| self.sources.chunks.clone());
                let root = self.sources.root.clone();
                let counters = self.sources.counters.clone();
                tokio::task::spawn_blocking(move || {
                    let locations: Vec<Option<ChunkLocation>> = match places {
                        Some(places) => places.get_many(&hashes),
                        None => vec![None; hashes.len()],
                    };
                    let chunks = serve::read_chunks(&root, &hashes, locations, budget, &counters);
                    let _ = reply.send(chunks);
                });
            }
            Command::ServePage { hash, reply } => {
                let (store, share) = (self.store.clone(), self.sources.share);
                tokio::spawn(async move {
                    let page = store.page(share, hash).await.unwrap_or_else(|e| {
                        // Answered as "not here": the member asks another.
                        warn!("cannot read a chunk-list page to serve: {e}");
                        None
                    });
                    let _ = reply.send(page);
                });
            }
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::Shutdown { .. } | Command::Resume { .. } => {
                unreachable!("handled by take_command")
            }
        }
    }

    fn status(&mut self) -> FolderStatus {
        use std::sync::atomic::Ordering::Relaxed;
        let fetched = self.sources.counters.fetched.load(Relaxed);
        let state = if self.paused.is_some() {
            FolderState::Paused
        } else if self.held.is_some() {
            FolderState::Held
        } else if self.disk.full().is_some() && self.waits_for_work() {
            FolderState::Error
        } else if self.scanning || !self.state_loaded {
            FolderState::Scanning
        } else if !self.queue.is_idle() || self.deletes.len() > 0 {
            FolderState::Syncing
        } else {
            FolderState::Idle
        };
        FolderStatus {
            path: self.sources.root.display().to_string(),
            state,
            reason: self
                .paused
                .clone()
                .or_else(|| self.held.as_ref().map(|held| held.reason.clone()))
                .or_else(|| {
                    let waiting = self.waits_for_work();
                    self.disk.full().filter(|_| waiting).map(str::to_owned)
                }),
            needed_files: self.queue.needed_files(),
            needed_bytes: self.queue.needed_bytes(),
            fetched_bytes: fetched,
            served_bytes: self.sources.counters.served.load(Relaxed),
            rate_bytes_per_sec: self.rate.rate(fetched),
            bad_chunks: self.sources.counters.bad_chunks.load(Relaxed),
            refused: self.refused,
            local_entries: self.synced.len(),
            files: self.synced.counts().files,
            directories: self.synced.counts().directories,
            symlinks: self.synced.counts().symlinks,
            file_bytes: self.synced.counts().file_bytes,
            deletes_waiting: self.deletes.len() as u64,
            unsyncable_count: self.unsyncable.len() as u64,
            unsyncable: self
                .unsyncable
                .iter()
                .take(MAX_UNSYNCABLE_LISTED)
                .map(|(path, reason)| Unsyncable {
                    path: path.clone(),
                    reason: reason.clone(),
                })
                .collect(),
            changing: self
                .settle
                .changing()
                .take(MAX_CHANGING_LISTED)
                .cloned()
                .collect(),
            watching: self.watching.is_on(),
            watch_problem: self.watching.problem().map(str::to_owned),
            loaded: self.state_loaded,
            scans: self.scans_run,
            hashed_files: self.hashed_files,
            hashed_bytes: self.hashed_bytes,
            verifying: self.verification.is_running(),
            verified_paths: self.verification.checked(),
            last_verified_at: self.verification.last_done().map(crate::timefmt::rfc3339),
            last_error: self.last_error.as_ref().map(|(e, _)| e.clone()),
            last_error_at: self
                .last_error
                .as_ref()
                .map(|(_, at)| crate::timefmt::rfc3339(*at)),
            disk_checked_at: self.disk.checked_at().map(crate::timefmt::rfc3339),
        }
    }

    /// Whether downloads are queued, running or waiting for a retry.
    fn waits_for_work(&self) -> bool {
        !self.queue.is_idle() || self.queue.next_retry().is_some()
    }

    /// Remembers an error for `status` (the log line is the caller's).
    pub(super) fn note_error(&mut self, error: impl Into<String>) {
        self.last_error = Some((error.into(), std::time::SystemTime::now()));
    }

    pub(super) fn pause(&mut self, reason: String) {
        if self.paused.as_deref() != Some(&reason) {
            warn!(folder = %self.name, "paused: {reason}");
        }
        self.paused = Some(reason);
        // Taken again when it resumes: a marker directory made anew has a lock file of its own.
        self.hold = FolderHold::NotHeld;
        self.deletes.clear();
        self.settle.clear();
        self.watching.stop();
        // The scan on resume is full.
        self.verification.cancel();
        self.next_rescan = Instant::now() + PAUSED_CHECK_INTERVAL;
    }

    pub(super) fn scan_soon(&mut self, delay: Duration) {
        let at = Instant::now() + delay;
        self.scan_at = Some(self.scan_at.map_or(at, |t| t.min(at)));
    }

    fn on_watch(&mut self, event: WatchEvent) {
        let now = Instant::now();
        // Debounce: every event pushes the scan back a little, up to a bound.
        let scan_at = match event {
            WatchEvent::Paths { paths, still_open } => {
                let at = self.settle.events(&paths, still_open, now);
                self.dirty_paths.extend(paths);
                at
            }
            WatchEvent::Rescan => {
                if !self.dirty_all {
                    debug!(folder = %self.name, "watch events lost or overflowed: a full rescan");
                }
                self.dirty_all = true;
                self.settle.events(&[], false, now)
            }
            WatchEvent::LimitReached(why) => {
                // What changed under the directories it could not watch is found by walking.
                self.watching.failed(why, &self.name);
                self.dirty_all = true;
                now
            }
        };
        self.scan_at = Some(scan_at);
    }

    pub(super) fn ensure_watcher(&mut self) {
        self.watching.ensure(&self.sources.root, &self.name);
    }

    fn start_scan(&mut self) {
        self.scan_at = None;
        if self.scanning || !self.state_loaded {
            return;
        }
        if self.paused.is_some() && !self.hold_folder() {
            // Another daemon still holds the folder, or its marker is still gone: nothing to
            // walk (a paused folder's scans are whole: every 2 s, a big folder's walk would
            // cost a core). Checked again at the paused folder's next check.
            return;
        }
        let full = self.dirty_all || self.paused.is_some();
        // Files being downloaded wait for their download to end (`on_materialised` asks for
        // the scan then): dropped here, a local edit made during a download went unseen until
        // the next full rescan, a minute later (found by `meshsync lab`). A directory being
        // made is dropped: its events are our own (created, its times set), and a file put in
        // it has events of its own.
        let mut paths = Vec::new();
        for path in std::mem::take(&mut self.dirty_paths) {
            if !self.queue.is_running(&path) {
                paths.push(path);
            } else if !self.sources.root.join(&path).is_dir() {
                self.dirty_paths.insert(path);
            }
        }
        if full {
            // Reads everything, changing files included, as they are now.
            self.settle.clear();
        } else {
            // Files still being written wait (see `settle`).
            let split = self.settle.split(paths, Instant::now());
            self.dirty_paths.extend(split.later);
            self.scan_at = split.due;
            paths = split.now;
        }
        if !full && paths.is_empty() {
            return;
        }
        if full && self.sources.root.join(MARKER_DIR).is_dir() {
            // Watch before walking: a file written while the walk is past its directory is then
            // still seen, instead of waiting for the next full rescan (up to a minute).
            self.ensure_watcher();
        }
        let basis = match self.synced.scan_basis() {
            Ok(basis) => basis,
            Err(e) => {
                // Without what was synced, every file would look new: try again later.
                self.note_error(format!("cannot read the folder's synced state: {e}"));
                self.dirty_paths.extend(paths);
                self.scan_soon(STATE_UNREADABLE_RETRY);
                return;
            }
        };
        self.dirty_all = false;
        self.scanning = true;
        self.scans_run += 1;
        self.full_scan_started = full.then(Instant::now);
        debug!(folder = %self.name, full, paths = paths.len(), first = ?paths.first(), "scan");
        let root = self.sources.root.clone();
        let (store, share) = (self.store.clone(), self.sources.share);
        let read_marks = full && !self.marks_read;
        self.scans.spawn_blocking(move || {
            // Read before the walk: a folder replaced during the walk then fails the check.
            let instance = instance::read(&root);
            let previous = basis.previous();
            let chunk_lists =
                |meta: &FileMeta| state::blocking_stored_chunk_list(&store, share, meta);
            // On the folder's disk, beside what it syncs (see `scan::SpilledEntries`).
            let spill_in = root.join(MARKER_DIR);
            let spill_in = Some(spill_in.as_path());
            let out = if full {
                scan::scan_all_reusing(&root, previous, &chunk_lists, spill_in)
            } else {
                // A new directory's files may still be being written.
                let recent = Some(settle::OPEN_WRITE_QUIET);
                scan::scan_paths_reusing(&root, &paths, previous, &chunk_lists, recent, spill_in)
            }?;
            // The candidates for having been received just before a crash ([`received`]).
            let marks = if read_marks {
                let (name, max) = (received::ATTRIBUTE, received::MAX_MARK_BYTES);
                scan::attributes_of_changed_files(&root, &out, previous, name, max)?
            } else {
                BTreeMap::new()
            };
            Ok(ScanResult {
                marks,
                ..ScanResult::of(instance, full, out, basis)
            })
        });
    }

    /// Hands the synced-state rows changed since the last flush to the writer. The table is a
    /// cache: after a crash, a path it forgot is re-adopted by the next scan when it matches the
    /// share, so it is written in batches off the actor's loop rather than once per file.
    pub(super) fn flush_synced(&mut self) {
        self.flush_at = None;
        let Some(batch) = self.synced.take_unsent() else {
            return;
        };
        // One writer task keeps flushes in order.
        if self.state_writer.send(batch).is_err() {
            self.note_error("the folder state writer has stopped");
        }
    }

    pub(super) async fn index_chunks<'a>(
        &self,
        records: impl Iterator<Item = (&'a String, &'a ScanRecord)>,
    ) {
        let mut entries = Vec::new();
        for (path, record) in records {
            entries.extend(
                source::chunk_locations(
                    &self.store,
                    self.sources.share,
                    path,
                    &record.meta,
                    record.stamp(),
                )
                .await,
            );
        }
        self.add_chunks(entries);
    }

    pub(super) fn add_chunks(&self, entries: Vec<(Hash, ChunkLocation)>) {
        if entries.is_empty() {
            return;
        }
        self.sources.chunks.add_recent(entries);
    }
}
