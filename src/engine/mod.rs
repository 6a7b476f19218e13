//! The sync engine: joins the store and the network.
//!
//! It proves share membership to connected peers (and checks theirs), announces each share's new
//! summary root to its members shortly after it changes (with the changed entries when they are
//! few), answers members' reconciliation and entry requests, and runs reconciliation sessions —
//! at most one per (peer, share) — whenever a member's root differs from ours, periodically as
//! anti-entropy, and with backoff after a failure. Nothing about a share is ever sent to a peer
//! that has not proved it holds the share's secret.
//!
//! The engine is an actor: one task owns its state; its loop is a biased `select!` over its
//! inbox, network events, store changes, finished tasks and timers, and each branch makes one
//! `on_*` call. Anything that waits on the network or the disk runs in a task of its own.

pub mod session;

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use serde::Serialize;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::folder::FolderHandle;
use crate::net::protocol::{
    ANNOUNCE_PUSH_BUDGET, AuthProof, ENTRIES_RESPONSE_BUDGET, MAX_ENTRIES_PER_MESSAGE,
    MAX_IDS_PER_REQUEST, Request, Response, WireEntry, frame_len,
};
use crate::net::{NetClient, NetEvent, Reply};
use crate::share::{self, Token};
use crate::store::{
    Change, Origin, ShareId, ShareKind, ShareMeta, ShareState, StoreError, StoreHandle,
};
pub use session::SessionReport;

/// Commands queued for the engine before senders wait.
pub const ENGINE_CHANNEL_CAPACITY: usize = 256;
/// How long changes are collected before they are announced: short enough that a change reaches
/// a LAN peer in milliseconds, long enough that a burst of writes becomes one message.
pub const ANNOUNCE_DELAY: Duration = Duration::from_millis(3);
/// Pause between anti-entropy rounds (a session with one random member of each share).
pub const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(10);
/// Pause between DHT lookups for other members of our shares.
pub const PROVIDER_LOOKUP_INTERVAL: Duration = Duration::from_secs(60);
/// First pause between DHT lookups for a share with no member connected (a provider record
/// may not have reached the DHT yet when the share is joined); doubles up to
/// [`PROVIDER_LOOKUP_INTERVAL`].
pub const LONELY_LOOKUP_MIN: Duration = Duration::from_secs(1);
/// Most reconciliation sessions this node runs at once, over all shares (one per share).
pub const MAX_CONCURRENT_SESSIONS: usize = 16;
/// First wait before retrying a failed session; doubles per failure.
pub const SESSION_RETRY_MIN: Duration = Duration::from_millis(500);
/// Longest wait before retrying a failed session.
pub const SESSION_RETRY_MAX: Duration = Duration::from_secs(30);
/// Finished sessions remembered for `status`.
pub const RECENT_SESSIONS: usize = 32;
/// Most announcements in flight at once; beyond it members catch up by reconciliation.
pub const MAX_ANNOUNCES_IN_FLIGHT: usize = 64;
/// Membership checks asked again, per peer and share, when the request got no answer while the
/// peer stayed connected.
pub const MAX_AUTH_RETRIES: u32 = 3;

/// Errors the engine reports to the API.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// From the store.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// A bad token.
    #[error(transparent)]
    Token(#[from] share::TokenError),
    /// A bad request.
    #[error("{0}")]
    Invalid(String),
    /// The engine is gone.
    #[error("the sync engine has stopped")]
    Stopped,
}

/// A share as shown by `share list` and `status`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ShareStatus {
    /// Hex id.
    pub id: String,
    /// Local name.
    pub name: String,
    /// `records` or `folder`.
    pub kind: ShareKind,
    /// Entries held (tombstones included).
    pub entries: u64,
    /// Hex summary root.
    pub root: String,
    /// Connected peers that proved membership.
    pub members: Vec<String>,
    /// Those of them that proved they may write (hold the write key).
    #[serde(default)]
    pub writers: Vec<String>,
    /// True if this member joined with a read-only token: its edits stay here.
    #[serde(default)]
    pub read_only: bool,
    /// On a read-only member: records (for folders, paths) holding a local edit that no other
    /// member takes.
    #[serde(default)]
    pub unshared: u64,
    /// The share's own peer allowlist; empty: anyone with a token.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub trusted_peers: Vec<String>,
    /// Entries refused from peers that may not write.
    #[serde(default)]
    pub refused_entries: u64,
    /// Bytes sent for this share (announcements, sessions, answers).
    pub bytes_sent: u64,
    /// Bytes received for this share.
    pub bytes_received: u64,
    /// Sessions run for this share.
    pub sessions: u64,
    /// For folder shares: what the folder is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<crate::folder::FolderStatus>,
}

/// What `status` shows about syncing.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    /// Every share.
    pub shares: Vec<ShareStatus>,
    /// The most recent sessions, newest last.
    pub sessions: Vec<SessionReport>,
}

/// A new share and the token to join it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct CreatedShare {
    /// Hex id.
    pub id: String,
    /// Local name.
    pub name: String,
    /// The token (only for created shares).
    pub token: Option<String>,
}

enum Command {
    CreateShare {
        name: String,
        kind: ShareKind,
        path: Option<PathBuf>,
        reply: oneshot::Sender<Result<CreatedShare, EngineError>>,
    },
    JoinShare {
        token: String,
        name: String,
        kind: ShareKind,
        path: Option<PathBuf>,
        reply: oneshot::Sender<Result<CreatedShare, EngineError>>,
    },
    Token {
        share: String,
        read_only: bool,
        reply: oneshot::Sender<Result<String, EngineError>>,
    },
    Trust {
        share: String,
        change: TrustChange,
        reply: oneshot::Sender<Result<Vec<String>, EngineError>>,
    },
    Status {
        reply: oneshot::Sender<EngineStatus>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// A change to a share's peer allowlist.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct TrustChange {
    /// Peer ids to allow.
    #[serde(default)]
    pub add: Vec<String>,
    /// Peer ids to remove from the list (an emptied list admits anyone with a token again).
    #[serde(default)]
    pub remove: Vec<String>,
}

/// Cloneable handle to the engine.
#[derive(Clone)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
}

impl EngineHandle {
    async fn call<T>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> Result<T, EngineError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(make(reply))
            .await
            .map_err(|_| EngineError::Stopped)?;
        rx.await.map_err(|_| EngineError::Stopped)
    }

    /// Creates a share and returns its token. Folder shares need the folder's path.
    pub async fn create_share(
        &self,
        name: String,
        kind: ShareKind,
        path: Option<PathBuf>,
    ) -> Result<CreatedShare, EngineError> {
        self.call(|reply| Command::CreateShare {
            name,
            kind,
            path,
            reply,
        })
        .await?
    }

    /// Joins a share from a token. Folder shares need the folder's path.
    pub async fn join_share(
        &self,
        token: String,
        name: String,
        kind: ShareKind,
        path: Option<PathBuf>,
    ) -> Result<CreatedShare, EngineError> {
        self.call(|reply| Command::JoinShare {
            token,
            name,
            kind,
            path,
            reply,
        })
        .await?
    }

    /// A fresh token for an existing share (with our current addresses); a read-only one
    /// leaves the write key out.
    pub async fn token(&self, share: String, read_only: bool) -> Result<String, EngineError> {
        self.call(|reply| Command::Token {
            share,
            read_only,
            reply,
        })
        .await?
    }

    /// Changes a share's peer allowlist; returns the new list.
    pub async fn trust(
        &self,
        share: String,
        change: TrustChange,
    ) -> Result<Vec<String>, EngineError> {
        self.call(|reply| Command::Trust {
            share,
            change,
            reply,
        })
        .await?
    }

    /// Shares and sessions.
    pub async fn status(&self) -> Result<EngineStatus, EngineError> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// Stops the engine.
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }
}

#[derive(Debug, Default, Clone, Copy)]
struct Counters {
    bytes_sent: u64,
    bytes_received: u64,
    sessions: u64,
    refused_entries: u64,
}

/// What a folder content request asks for.
#[derive(Debug, Clone, Copy)]
enum ContentKind {
    Chunk,
    Page,
}

/// Results of the engine's helper tasks.
enum TaskResult {
    /// An auth exchange finished.
    Auth {
        peer: PeerId,
        share: ShareId,
        member: bool,
        writer: bool,
        /// The request itself failed (no answer), as opposed to an answer that proves nothing.
        failed: bool,
        sent: u64,
        received: u64,
    },
    /// An announcement was delivered (or not).
    Announced {
        share: ShareId,
        sent: u64,
        received: u64,
    },
    /// Entries pushed to us were merged; reconcile if the roots still differ.
    Merged {
        peer: PeerId,
        share: ShareId,
        their_root: [u8; 32],
        sent: u64,
    },
    /// An answer was sent.
    Answered { share: ShareId, sent: u64 },
}

/// Starts the engine.
pub fn spawn(
    local: PeerId,
    state_dir: PathBuf,
    store: StoreHandle,
    net: NetClient,
    net_events: mpsc::UnboundedReceiver<NetEvent>,
) -> EngineHandle {
    let (tx, rx) = mpsc::channel(ENGINE_CHANNEL_CAPACITY);
    let changes = store.subscribe();
    let now = Instant::now();
    let mut actor = EngineActor {
        local,
        state_dir,
        folders: HashMap::new(),
        member_watch: HashMap::new(),
        store,
        net,
        inbox: rx,
        net_events,
        changes,
        connected: HashSet::new(),
        members: HashMap::new(),
        writers: HashMap::new(),
        auth_in_flight: HashSet::new(),
        auth_retries: HashMap::new(),
        running: HashMap::new(),
        wanted: VecDeque::new(),
        retry: HashMap::new(),
        sessions: JoinSet::new(),
        tasks: JoinSet::new(),
        pending_push: HashMap::new(),
        dirty: HashSet::new(),
        flush_at: None,
        announces_in_flight: 0,
        counters: HashMap::new(),
        serve_rate: crate::net::guard::ServeRate::default(),
        recent: VecDeque::new(),
        next_anti_entropy: now + ANTI_ENTROPY_INTERVAL,
        next_provider_lookup: now,
        lonely_lookup: (now + LONELY_LOOKUP_MIN, LONELY_LOOKUP_MIN),
    };
    for state in actor.store.shares() {
        actor.start_folder(&state.meta);
    }
    tokio::spawn(actor.run());
    EngineHandle { commands: tx }
}

struct EngineActor {
    local: PeerId,
    state_dir: PathBuf,
    /// Folder actors, per folder share.
    folders: HashMap<ShareId, FolderHandle>,
    /// Current members per folder share, for its actor to fetch from.
    member_watch: HashMap<ShareId, watch::Sender<Vec<PeerId>>>,
    store: StoreHandle,
    net: NetClient,
    inbox: mpsc::Receiver<Command>,
    net_events: mpsc::UnboundedReceiver<NetEvent>,
    changes: broadcast::Receiver<Arc<Change>>,
    connected: HashSet<PeerId>,
    /// Connected peers that proved membership, per share.
    members: HashMap<ShareId, HashSet<PeerId>>,
    /// Members that proved they hold the share's write key: the only peers entries are taken
    /// from.
    writers: HashMap<ShareId, HashSet<PeerId>>,
    auth_in_flight: HashSet<(PeerId, ShareId)>,
    /// Membership checks asked again after getting no answer, per peer and share.
    auth_retries: HashMap<(PeerId, ShareId), u32>,
    /// Running sessions; `true` if another was asked for while it ran.
    running: HashMap<(PeerId, ShareId), bool>,
    /// Sessions waiting for a free slot.
    wanted: VecDeque<(PeerId, ShareId)>,
    /// Failed sessions: when to retry and how many failures in a row.
    retry: HashMap<(PeerId, ShareId), (Instant, u32)>,
    sessions: JoinSet<(PeerId, ShareId, SessionReport)>,
    tasks: JoinSet<TaskResult>,
    /// Local changes not yet announced, per share, keyed by record key (latest wins).
    pending_push: HashMap<ShareId, HashMap<Vec<u8>, Arc<Change>>>,
    /// Shares whose root must be announced.
    dirty: HashSet<ShareId>,
    flush_at: Option<Instant>,
    announces_in_flight: usize,
    counters: HashMap<ShareId, Counters>,
    /// Paces the folder content served to each peer.
    serve_rate: crate::net::guard::ServeRate,
    recent: VecDeque<SessionReport>,
    next_anti_entropy: Instant,
    next_provider_lookup: Instant,
    /// When to look up members of shares that have none connected, and the pause after that.
    lonely_lookup: (Instant, Duration),
}

impl EngineActor {
    async fn run(mut self) {
        let far = Duration::from_secs(3600);
        loop {
            let flush_at = self.flush_at.unwrap_or_else(|| Instant::now() + far);
            let timer_at = self.next_timer();
            tokio::select! {
                biased;
                command = self.inbox.recv() => match command {
                                        Some(Command::Shutdown { reply }) => {
                        for folder in self.folders.values() {
                            folder.shutdown().await;
                        }
                        self.sessions.abort_all();
                        self.tasks.abort_all();
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command).await,
                    None => return,
                },
                Some(event) = self.net_events.recv() => self.on_net_event(event),
                change = self.changes.recv() => self.on_change(change),
                Some(done) = self.sessions.join_next() => {
                    if let Ok((peer, share, report)) = done {
                        self.on_session_done(peer, share, report);
                    }
                }
                Some(done) = self.tasks.join_next() => {
                    if let Ok(result) = done {
                        self.on_task_done(result);
                    }
                }
                _ = tokio::time::sleep_until(flush_at) => self.on_flush(),
                _ = tokio::time::sleep_until(timer_at) => self.on_timer(),
            }
        }
    }

    fn next_timer(&self) -> Instant {
        let mut next = self
            .next_anti_entropy
            .min(self.next_provider_lookup)
            .min(self.lonely_lookup.0);
        for (at, _) in self.retry.values() {
            next = next.min(*at);
        }
        next
    }

    fn counters(&mut self, share: ShareId) -> &mut Counters {
        self.counters.entry(share).or_default()
    }

    fn is_member(&self, share: &ShareId, peer: &PeerId) -> bool {
        self.members.get(share).is_some_and(|m| m.contains(peer))
    }

    fn is_writer(&self, share: &ShareId, peer: &PeerId) -> bool {
        self.writers.get(share).is_some_and(|m| m.contains(peer))
    }

    // ---- commands from the API ----

    async fn on_command(&mut self, command: Command) {
        match command {
            Command::CreateShare {
                name,
                kind,
                path,
                reply,
            } => {
                let result = self.create_share(name, kind, path).await;
                let _ = reply.send(result);
            }
            Command::JoinShare {
                token,
                name,
                kind,
                path,
                reply,
            } => {
                let result = self.join_share(token, name, kind, path).await;
                let _ = reply.send(result);
            }
            Command::Token {
                share,
                read_only,
                reply,
            } => {
                let result = match self.store.resolve(&share) {
                    Ok(state) if !read_only && !state.meta.writable() => {
                        Err(EngineError::Invalid(format!(
                            "share `{}` was joined read-only here, so it can only hand out read-only tokens (add --read-only)",
                            state.meta.name
                        )))
                    }
                    Ok(state) => Ok(self.token_for(&state.meta, read_only).await),
                    Err(e) => Err(e.into()),
                };
                let _ = reply.send(result);
            }
            Command::Trust {
                share,
                change,
                reply,
            } => {
                let result = self.change_trust(&share, change).await;
                let _ = reply.send(result);
            }
            Command::Status { reply } => {
                let mut status = self.status();
                for share in &mut status.shares {
                    let id = hex::decode(&share.id).unwrap_or_default();
                    if let Ok(id) = <[u8; 32]>::try_from(id.as_slice())
                        && let Some(folder) = self.folders.get(&id)
                    {
                        share.folder = folder.status().await;
                    }
                    if share.read_only
                        && let Ok(id) = <[u8; 32]>::try_from(id.as_slice())
                    {
                        share.unshared = self.store.count_authored(id).await.unwrap_or(0);
                    }
                }
                let _ = reply.send(status);
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    async fn token_for(&self, meta: &ShareMeta, read_only: bool) -> String {
        let addrs = self
            .net
            .status()
            .await
            .map(|s| s.listen_addrs)
            .unwrap_or_default()
            .into_iter()
            .take(share::MAX_TOKEN_ADDRS)
            .collect();
        Token {
            id: meta.id.into(),
            secret: meta.secret.into(),
            kind: meta.kind,
            addrs,
            writers: meta.writers.into(),
            write: meta.write_key.filter(|_| !read_only).map(Into::into),
        }
        .encode()
    }

    async fn change_trust(
        &mut self,
        share: &str,
        change: TrustChange,
    ) -> Result<Vec<String>, EngineError> {
        let mut meta = self.store.resolve(share)?.meta;
        for peer in change.add.iter().chain(&change.remove) {
            peer.parse::<PeerId>()
                .map_err(|e| EngineError::Invalid(format!("`{peer}` is not a peer id: {e}")))?;
        }
        meta.trusted_peers.retain(|p| !change.remove.contains(p));
        for peer in change.add {
            if !meta.trusted_peers.contains(&peer) {
                meta.trusted_peers.push(peer);
            }
        }
        self.store.update_share(meta.clone()).await?;
        info!(share = %meta.name, "peer allowlist is now {:?}", meta.trusted_peers);
        // Members no longer admitted stop getting anything at once; newly admitted ones are
        // asked to prove membership again.
        for set in [
            self.members.get_mut(&meta.id),
            self.writers.get_mut(&meta.id),
        ]
        .into_iter()
        .flatten()
        {
            set.retain(|peer| meta.admits(peer));
        }
        self.publish_members();
        let peers: Vec<PeerId> = self.connected.iter().copied().collect();
        for peer in peers {
            self.start_auth(peer, meta.id);
        }
        Ok(meta.trusted_peers)
    }

    fn check_name(name: &str) -> Result<(), EngineError> {
        if name.is_empty()
            || name.len() > crate::store::MAX_SHARE_NAME
            || name.chars().any(|c| c.is_control() || c == '/')
        {
            return Err(EngineError::Invalid(format!(
                "`{name}` is not a valid share name (1 to {} characters, no `/` or control characters)",
                crate::store::MAX_SHARE_NAME
            )));
        }
        Ok(())
    }

    /// Resolves and prepares a folder share's directory: absolute, created if missing, with its
    /// marker inside.
    fn prepare_folder(path: Option<PathBuf>) -> Result<PathBuf, EngineError> {
        let path = path.ok_or_else(|| EngineError::Invalid("folder shares need a path".into()))?;
        crate::folder::prepare_root(&path).map_err(|e| {
            EngineError::Invalid(format!("cannot prepare folder {}: {e}", path.display()))
        })?;
        path.canonicalize()
            .map_err(|e| EngineError::Invalid(format!("cannot resolve {}: {e}", path.display())))
    }

    async fn create_share(
        &mut self,
        name: String,
        kind: ShareKind,
        path: Option<PathBuf>,
    ) -> Result<CreatedShare, EngineError> {
        Self::check_name(&name)?;
        let path = match kind {
            ShareKind::Folder => Some(Self::prepare_folder(path)?),
            ShareKind::Records => None,
        };
        let (id, secret) = share::new_share();
        let write_key = share::new_write_key();
        let meta = ShareMeta {
            id,
            name: name.clone(),
            kind,
            secret,
            seed_addrs: Vec::new(),
            path,
            writers: share::writer_public(&write_key),
            write_key: Some(write_key),
            trusted_peers: Vec::new(),
        };
        self.store.create_share(meta.clone()).await?;
        info!(share = %name, "created share {}", hex::encode(id));
        let token = self.token_for(&meta, false).await;
        self.on_new_share(&meta).await;
        Ok(CreatedShare {
            id: hex::encode(id),
            name,
            token: Some(token),
        })
    }

    async fn join_share(
        &mut self,
        token: String,
        name: String,
        kind: ShareKind,
        path: Option<PathBuf>,
    ) -> Result<CreatedShare, EngineError> {
        Self::check_name(&name)?;
        let token = Token::parse(&token)?;
        if token.kind != kind {
            return Err(EngineError::Invalid(format!(
                "this token is for a {:?} share, not a {kind:?} share",
                token.kind
            )));
        }
        let path = match kind {
            ShareKind::Folder => Some(Self::prepare_folder(path)?),
            ShareKind::Records => None,
        };
        let meta = ShareMeta {
            id: *token.id,
            name: name.clone(),
            kind,
            secret: *token.secret,
            seed_addrs: token.addrs.clone(),
            path,
            writers: *token.writers,
            write_key: token.write.map(|k| *k),
            trusted_peers: Vec::new(),
        };
        self.store.create_share(meta.clone()).await?;
        info!(
            share = %name,
            "joined share {}{}",
            hex::encode(meta.id),
            if meta.writable() { "" } else { " read-only" }
        );
        self.net.dial(token.dialable_addrs()).await;
        self.on_new_share(&meta).await;
        Ok(CreatedShare {
            id: hex::encode(meta.id),
            name,
            token: None,
        })
    }

    /// Starts the folder actor of a folder share.
    fn start_folder(&mut self, meta: &ShareMeta) {
        if meta.kind != ShareKind::Folder || self.folders.contains_key(&meta.id) {
            return;
        }
        let (tx, rx) = watch::channel(self.members_of(&meta.id));
        match crate::folder::spawn(meta, self.local, self.store.clone(), self.net.clone(), rx) {
            Ok(handle) => {
                self.folders.insert(meta.id, handle);
                self.member_watch.insert(meta.id, tx);
            }
            Err(e) => warn!(share = %meta.name, "cannot start folder: {e}"),
        }
    }

    fn members_of(&self, share: &ShareId) -> Vec<PeerId> {
        let mut members: Vec<PeerId> = self
            .members
            .get(share)
            .map(|m| m.iter().copied().collect())
            .unwrap_or_default();
        members.sort();
        members
    }

    /// Tells the folder actors who they can fetch from.
    fn publish_members(&self) {
        for (share, tx) in &self.member_watch {
            let members = self.members_of(share);
            tx.send_if_modified(|current| {
                if *current != members {
                    *current = members;
                    true
                } else {
                    false
                }
            });
        }
    }

    /// A share appeared: find its members among connected peers and in the DHT.
    async fn on_new_share(&mut self, meta: &ShareMeta) {
        self.start_folder(meta);
        let peers: Vec<PeerId> = self.connected.iter().copied().collect();
        for peer in peers {
            self.start_auth(peer, meta.id);
        }
        let key = share::provider_key(&meta.secret);
        self.net.start_providing(key.clone()).await;
        self.net.find_providers(key).await;
        self.lonely_lookup = (Instant::now() + LONELY_LOOKUP_MIN, LONELY_LOOKUP_MIN);
    }

    fn status(&self) -> EngineStatus {
        let shares = self
            .store
            .shares()
            .into_iter()
            .map(|state| {
                let (entries, root) = {
                    let summary = state.summary.read().expect("summary lock");
                    (summary.len(), summary.root())
                };
                let counters = self
                    .counters
                    .get(&state.meta.id)
                    .copied()
                    .unwrap_or_default();
                let listed = |set: Option<&HashSet<PeerId>>| {
                    let mut peers: Vec<String> = set
                        .map(|m| m.iter().map(|p| p.to_string()).collect())
                        .unwrap_or_default();
                    peers.sort();
                    peers
                };
                let members = listed(self.members.get(&state.meta.id));
                let writers = listed(self.writers.get(&state.meta.id));
                ShareStatus {
                    id: hex::encode(state.meta.id),
                    name: state.meta.name.clone(),
                    kind: state.meta.kind,
                    entries,
                    root: hex::encode(root),
                    members,
                    writers,
                    read_only: !state.meta.writable(),
                    unshared: 0,
                    trusted_peers: state.meta.trusted_peers.clone(),
                    refused_entries: counters.refused_entries,
                    bytes_sent: counters.bytes_sent,
                    bytes_received: counters.bytes_received,
                    sessions: counters.sessions,
                    folder: None,
                }
            })
            .collect();
        EngineStatus {
            shares,
            sessions: self.recent.iter().cloned().collect(),
        }
    }

    // ---- membership ----

    fn start_auth(&mut self, peer: PeerId, share: ShareId) {
        let Some(state) = self.store.share(&share) else {
            return;
        };
        if !state.meta.admits(&peer)
            || self.is_member(&share, &peer)
            || !self.auth_in_flight.insert((peer, share))
        {
            return;
        }
        let net = self.net.clone();
        let local = self.local;
        self.tasks.spawn(async move {
            let nonce = share::random_bytes();
            let tag = share::auth_tag(&state.meta.secret, &local, &peer, &nonce);
            let request = Request::Auth {
                nonce: nonce.into(),
                tag: tag.into(),
                writer: state.meta.write_key.map(|key| {
                    share::writer_sign(&key, share::Role::Asker, &local, &peer, &nonce).into()
                }),
            };
            let sent = frame_len(&request) as u64;
            let response = net.request(peer, request).await;
            let failed = response.is_err();
            let received = response.as_ref().map(|r| frame_len(r) as u64).unwrap_or(0);
            let expected = share::auth_proof(&state.meta.secret, &local, &peer, &nonce);
            let (member, writer) = match response {
                Ok(Response::Auth(Some(proof))) if share::macs_equal(&proof.member, &expected) => {
                    let writer = proof.writer.is_some_and(|signature| {
                        share::writer_verify(
                            &state.meta.writers,
                            &signature,
                            share::Role::Answerer,
                            &local,
                            &peer,
                            &nonce,
                        )
                    });
                    (true, writer)
                }
                _ => (false, false),
            };
            TaskResult::Auth {
                peer,
                share,
                member,
                writer,
                failed,
                sent,
                received,
            }
        });
    }

    fn on_member(&mut self, peer: PeerId, share: ShareId, writer: bool) {
        if !self.connected.contains(&peer) {
            return;
        }
        let Some(state) = self.store.share(&share) else {
            return;
        };
        if !state.meta.admits(&peer) {
            return;
        }
        let new_member = self.members.entry(share).or_default().insert(peer);
        let new_writer = writer && self.writers.entry(share).or_default().insert(peer);
        if new_member {
            self.publish_members();
            let role = if writer { "read-write" } else { "read-only" };
            info!(%peer, share = %state.meta.name, "peer is a {role} member");
        }
        // One session per new pair is enough (it pulls and pushes): the smaller id starts it.
        if (new_member || new_writer) && self.local < peer {
            self.want_session(peer, share);
        }
    }

    // ---- network events ----

    fn on_net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::PeerConnected(peer) => {
                self.connected.insert(peer);
                for state in self.store.shares() {
                    self.start_auth(peer, state.meta.id);
                }
            }
            NetEvent::PeerDisconnected(peer) => {
                self.connected.remove(&peer);
                self.auth_retries.retain(|(p, _), _| *p != peer);
                for members in self.members.values_mut().chain(self.writers.values_mut()) {
                    members.remove(&peer);
                }
                self.publish_members();
                self.retry.retain(|(p, _), _| *p != peer);
                self.wanted.retain(|(p, _)| *p != peer);
            }
            NetEvent::Request {
                peer,
                request,
                channel,
            } => self.on_request(peer, request, channel),
            NetEvent::ProvidersFound { .. } => {
                // The network task dials providers; membership is checked when they connect.
            }
        }
    }

    fn respond(&mut self, share: Option<ShareId>, channel: Reply, response: Response) {
        let sent = frame_len(&response) as u64;
        if let Some(share) = share {
            self.counters(share).bytes_sent += sent;
        }
        let net = self.net.clone();
        tokio::spawn(async move { net.respond(channel, response).await });
    }

    /// Refusal for anything about a share the peer has not proved membership of. It is the same
    /// whether the share exists here or not.
    fn refuse(&mut self, channel: Reply) {
        self.respond(None, channel, Response::Error("not a member".into()));
    }

    fn member_share(
        &mut self,
        peer: &PeerId,
        share: &[u8; 32],
        received: u64,
    ) -> Option<ShareState> {
        if !self.is_member(share, peer) {
            debug!(%peer, "refused a request for a share it has not proved membership of");
            return None;
        }
        self.counters(*share).bytes_received += received;
        self.store.share(share)
    }

    fn on_request(&mut self, peer: PeerId, request: Request, channel: Reply) {
        let received = frame_len(&request) as u64;
        match request {
            Request::Hello(_) => self.respond(
                None,
                channel,
                Response::Error("hello is answered by the network layer".into()),
            ),
            Request::Auth { nonce, tag, writer } => {
                // Its hello answer may still be on the way; a peer that asks is connected.
                self.connected.insert(peer);
                let found = self.store.shares().into_iter().find(|state| {
                    let expected = share::auth_tag(&state.meta.secret, &peer, &self.local, &nonce);
                    share::macs_equal(&tag, &expected) && state.meta.admits(&peer)
                });
                match found {
                    Some(state) => {
                        let meta = &state.meta;
                        let local = self.local;
                        let member = share::auth_proof(&meta.secret, &peer, &local, &nonce);
                        let is_writer = writer.is_some_and(|signature| {
                            share::writer_verify(
                                &meta.writers,
                                &signature,
                                share::Role::Asker,
                                &peer,
                                &local,
                                &nonce,
                            )
                        });
                        let proof = AuthProof {
                            member: member.into(),
                            writer: meta.write_key.map(|key| {
                                share::writer_sign(
                                    &key,
                                    share::Role::Answerer,
                                    &peer,
                                    &local,
                                    &nonce,
                                )
                                .into()
                            }),
                        };
                        self.counters(meta.id).bytes_received += received;
                        self.respond(Some(meta.id), channel, Response::Auth(Some(proof)));
                        self.on_member(peer, meta.id, is_writer);
                    }
                    None => self.respond(None, channel, Response::Auth(None)),
                }
            }
            Request::Announce {
                share,
                root,
                count: _,
                entries,
            } => {
                let Some(state) = self.member_share(&peer, &share, received) else {
                    return self.refuse(channel);
                };
                if entries.len() > MAX_ENTRIES_PER_MESSAGE {
                    return self.respond(
                        Some(*share),
                        channel,
                        Response::Error("too many entries".into()),
                    );
                }
                let their_root = *root;
                if !entries.is_empty() && !self.is_writer(&share, &peer) {
                    // Read-only members may announce (their root) but never push entries.
                    let c = self.counters(*share);
                    c.refused_entries += entries.len() as u64;
                    warn!(
                        %peer, share = %state.meta.name,
                        "refused {} entries from a member that may not write (read-only token)",
                        entries.len()
                    );
                    return self.respond(
                        Some(*share),
                        channel,
                        Response::Error("read-only members cannot write".into()),
                    );
                }
                if entries.is_empty() {
                    self.respond(Some(*share), channel, Response::Ack);
                    let ours = state.summary.read().expect("summary lock").root();
                    if ours != their_root {
                        self.want_session(peer, *share);
                    }
                    return;
                }
                let store = self.store.clone();
                let net = self.net.clone();
                let share_id = *share;
                self.tasks.spawn(async move {
                    let entries = entries
                        .into_iter()
                        .map(|e| (e.key.into_vec(), e.register))
                        .collect();
                    // Acknowledged once merged, so a pusher that waits for the answer knows the
                    // entries are here and does not send them again.
                    let response = match store.merge(share_id, entries, peer).await {
                        Ok(_) => Response::Ack,
                        Err(e) => {
                            warn!(%peer, "cannot merge announced entries: {e}");
                            Response::Error("cannot merge".into())
                        }
                    };
                    let sent = frame_len(&response) as u64;
                    net.respond(channel, response).await;
                    TaskResult::Merged {
                        peer,
                        share: share_id,
                        their_root,
                        sent,
                    }
                });
            }
            Request::Reconcile { share, message } => {
                let Some(state) = self.member_share(&peer, &share, received) else {
                    return self.refuse(channel);
                };
                let answer = {
                    let summary = state.summary.read().expect("summary lock");
                    crate::reconcile::respond_bytes(&summary, &message)
                };
                match answer {
                    Ok(bytes) => {
                        self.respond(Some(*share), channel, Response::Reconcile(bytes.into()))
                    }
                    Err(e) => {
                        warn!(%peer, "bad reconciliation request: {e}");
                        self.respond(Some(*share), channel, Response::Error(e.to_string()));
                    }
                }
            }
            Request::GetChunk { share, hash } => {
                self.serve_content(peer, *share, *hash, ContentKind::Chunk, received, channel)
            }
            Request::GetPage { share, hash } => {
                self.serve_content(peer, *share, *hash, ContentKind::Page, received, channel)
            }
            Request::GetChunks { share, hashes } => {
                self.serve_chunks(peer, *share, hashes, received, channel)
            }
            Request::GetEntries { share, ids } => {
                if self.member_share(&peer, &share, received).is_none() {
                    return self.refuse(channel);
                }
                if ids.len() > MAX_IDS_PER_REQUEST {
                    return self.respond(
                        Some(*share),
                        channel,
                        Response::Error("too many ids".into()),
                    );
                }
                let store = self.store.clone();
                let net = self.net.clone();
                let share_id = *share;
                self.tasks.spawn(async move {
                    let ids = ids.into_iter().map(|id| *id).collect();
                    let entries = store.by_ids(share_id, ids).await.unwrap_or_default();
                    let mut out = Vec::new();
                    let mut budget = 0;
                    for (key, register) in entries {
                        let entry = WireEntry {
                            key: key.into(),
                            register,
                        };
                        budget += frame_len(&entry);
                        if !out.is_empty() && budget > ENTRIES_RESPONSE_BUDGET {
                            break;
                        }
                        out.push(entry);
                    }
                    let response = Response::Entries(out);
                    let sent = frame_len(&response) as u64;
                    net.respond(channel, response).await;
                    TaskResult::Answered {
                        share: share_id,
                        sent,
                    }
                });
            }
        }
    }

    /// The folder of a folder share `peer` is a member of.
    fn member_folder(
        &mut self,
        peer: &PeerId,
        share: &ShareId,
        received: u64,
    ) -> Option<FolderHandle> {
        let folder = self.folders.get(share).cloned()?;
        self.member_share(peer, share, received).map(|_| folder)
    }

    /// Answers a member's request for folder content (a chunk or a chunk-list page) by hash.
    fn serve_content(
        &mut self,
        peer: PeerId,
        share: ShareId,
        hash: [u8; 32],
        kind: ContentKind,
        received: u64,
        channel: Reply,
    ) {
        let Some(folder) = self.member_folder(&peer, &share, received) else {
            return self.refuse(channel);
        };
        let net = self.net.clone();
        let pace = self.serve_rate.clone();
        self.tasks.spawn(async move {
            let bytes = match kind {
                ContentKind::Chunk => folder.serve_chunk(hash).await,
                ContentKind::Page => folder.serve_page(hash).await,
            };
            if let Some(bytes) = &bytes {
                let wait = pace.take(peer, bytes.len(), std::time::Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let response = match (kind, bytes) {
                (ContentKind::Chunk, Some(b)) => Response::Chunk(b.into()),
                (ContentKind::Page, Some(b)) => Response::Page(b.into()),
                (_, None) => Response::Error("unknown hash".into()),
            };
            let sent = frame_len(&response) as u64;
            net.respond(channel, response).await;
            TaskResult::Answered { share, sent }
        });
    }

    /// Answers a member's request for many chunks at once, up to
    /// [`crate::net::protocol::CHUNKS_RESPONSE_BUDGET`] bytes.
    fn serve_chunks(
        &mut self,
        peer: PeerId,
        share: ShareId,
        hashes: Vec<crate::net::protocol::WireHash>,
        received: u64,
        channel: Reply,
    ) {
        let Some(folder) = self.member_folder(&peer, &share, received) else {
            return self.refuse(channel);
        };
        if hashes.len() > crate::net::protocol::MAX_CHUNKS_PER_REQUEST {
            return self.respond(
                Some(share),
                channel,
                Response::Error("too many chunks".into()),
            );
        }
        let net = self.net.clone();
        let pace = self.serve_rate.clone();
        self.tasks.spawn(async move {
            let hashes = hashes.into_iter().map(|h| *h).collect();
            let chunks = folder
                .serve_chunks(hashes, crate::net::protocol::CHUNKS_RESPONSE_BUDGET)
                .await
                .unwrap_or_default();
            let bytes: usize = chunks.iter().flatten().map(Vec::len).sum();
            let wait = pace.take(peer, bytes, std::time::Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let response =
                Response::Chunks(chunks.into_iter().map(|c| c.map(Into::into)).collect());
            let sent = frame_len(&response) as u64;
            net.respond(channel, response).await;
            TaskResult::Answered { share, sent }
        });
    }

    // ---- announcing changes ----

    fn on_change(&mut self, change: Result<Arc<Change>, broadcast::error::RecvError>) {
        match change {
            Ok(change) => {
                if change.origin == Origin::Local {
                    self.pending_push
                        .entry(change.share)
                        .or_default()
                        .insert(change.key.clone(), change.clone());
                }
                self.dirty.insert(change.share);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Too many changes to push one by one: announce roots and let members reconcile.
                self.pending_push.clear();
                for state in self.store.shares() {
                    self.dirty.insert(state.meta.id);
                }
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
        if self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + ANNOUNCE_DELAY);
        }
    }

    fn on_flush(&mut self) {
        self.flush_at = None;
        let dirty: Vec<ShareId> = self.dirty.drain().collect();
        for share in dirty {
            let pushed = self.pending_push.remove(&share).unwrap_or_default();
            let Some(state) = self.store.share(&share) else {
                continue;
            };
            if !state.meta.writable() {
                // Nobody takes a read-only member's entries, and its root only differs from
                // the writers' by its own edits: announcing would only start useless sessions.
                continue;
            }
            let members: Vec<PeerId> = self
                .members
                .get(&share)
                .map(|m| m.iter().copied().collect())
                .unwrap_or_default();
            if members.is_empty() {
                continue;
            }
            let mut entries = Vec::new();
            let mut size = 0;
            for change in pushed.values() {
                let entry = WireEntry {
                    key: change.key.clone().into(),
                    register: change.register.clone(),
                };
                size += frame_len(&entry);
                entries.push(entry);
                if size > ANNOUNCE_PUSH_BUDGET || entries.len() > MAX_ENTRIES_PER_MESSAGE {
                    // Too much to push: members will reconcile against the root instead.
                    entries.clear();
                    break;
                }
            }
            let (root, count) = {
                let summary = state.summary.read().expect("summary lock");
                (summary.root(), summary.len())
            };
            let request = Request::Announce {
                share: share.into(),
                root: root.into(),
                count,
                entries,
            };
            for peer in members {
                if self.announces_in_flight >= MAX_ANNOUNCES_IN_FLIGHT {
                    // Members we skip notice the new root at the next announcement or
                    // anti-entropy round and reconcile.
                    self.dirty.insert(share);
                    break;
                }
                self.announces_in_flight += 1;
                let net = self.net.clone();
                let request = request.clone();
                self.tasks.spawn(async move {
                    let sent = frame_len(&request) as u64;
                    let received = net
                        .request(peer, request)
                        .await
                        .map(|r| frame_len(&r) as u64)
                        .unwrap_or(0);
                    TaskResult::Announced {
                        share,
                        sent,
                        received,
                    }
                });
            }
        }
        if !self.dirty.is_empty() && self.flush_at.is_none() {
            self.flush_at = Some(Instant::now() + ANNOUNCE_DELAY);
        }
    }

    fn on_task_done(&mut self, result: TaskResult) {
        match result {
            TaskResult::Auth {
                peer,
                share,
                member,
                writer,
                failed,
                sent,
                received,
            } => {
                self.auth_in_flight.remove(&(peer, share));
                if member {
                    self.auth_retries.remove(&(peer, share));
                    let c = self.counters(share);
                    c.bytes_sent += sent;
                    c.bytes_received += received;
                    self.on_member(peer, share, writer);
                } else if failed && self.connected.contains(&peer) {
                    // Most often the connection it went out on was closed as a duplicate while
                    // another one stays up: nothing else would ask again until the peer
                    // reconnects, and the two sides would disagree about membership for good.
                    let tries = self.auth_retries.entry((peer, share)).or_insert(0);
                    *tries += 1;
                    if *tries <= MAX_AUTH_RETRIES {
                        debug!(%peer, "membership check failed to get an answer; asking again");
                        self.start_auth(peer, share);
                    }
                }
            }
            TaskResult::Announced {
                share,
                sent,
                received,
            } => {
                self.announces_in_flight -= 1;
                let c = self.counters(share);
                c.bytes_sent += sent;
                c.bytes_received += received;
            }
            TaskResult::Merged {
                peer,
                share,
                their_root,
                sent,
            } => {
                self.counters(share).bytes_sent += sent;
                let ours = self
                    .store
                    .share(&share)
                    .map(|s| s.summary.read().expect("summary lock").root());
                if ours.is_some_and(|r| r != their_root) {
                    self.want_session(peer, share);
                }
            }
            TaskResult::Answered { share, sent } => {
                self.counters(share).bytes_sent += sent;
            }
        }
    }

    // ---- sessions ----

    fn want_session(&mut self, peer: PeerId, share: ShareId) {
        if let Some(again) = self.running.get_mut(&(peer, share)) {
            *again = true;
            return;
        }
        // One session per share at a time: while one brings the share up to date from one
        // member, starting another would pull the same entries again from the next member.
        // The queued one runs afterwards, and costs one round trip if nothing differs by then.
        let share_busy = self.running.keys().any(|(_, s)| *s == share);
        if share_busy || self.running.len() >= MAX_CONCURRENT_SESSIONS {
            if !self.wanted.contains(&(peer, share)) {
                self.wanted.push_back((peer, share));
            }
            return;
        }
        let Some(state) = self.store.share(&share) else {
            return;
        };
        if !self.is_member(&share, &peer) {
            return;
        }
        // Entries flow only from members that proved they may write, and only members holding
        // the write key send any.
        let flow = session::Flow {
            pull: self.is_writer(&share, &peer),
            push: state.meta.writable(),
        };
        if !flow.pull && !flow.push {
            return;
        }
        self.running.insert((peer, share), false);
        let span = info_span!("sync", %peer, share = %state.meta.name);
        let net = self.net.clone();
        let store = self.store.clone();
        self.sessions.spawn(
            async move {
                let report = session::run(net, store, state, peer, flow).await;
                (peer, share, report)
            }
            .instrument(span),
        );
    }

    fn on_session_done(&mut self, peer: PeerId, share: ShareId, report: SessionReport) {
        let again = self.running.remove(&(peer, share)).unwrap_or(false);
        let c = self.counters(share);
        c.bytes_sent += report.bytes_sent;
        c.bytes_received += report.bytes_received;
        c.sessions += 1;
        match &report.error {
            Some(error) => {
                let failures = self.retry.get(&(peer, share)).map_or(0, |(_, n)| *n) + 1;
                let backoff = SESSION_RETRY_MIN
                    .saturating_mul(1 << failures.min(16))
                    .min(SESSION_RETRY_MAX);
                if self.connected.contains(&peer) {
                    self.retry
                        .insert((peer, share), (Instant::now() + backoff, failures));
                }
                warn!(%peer, share = %report.share, "sync session failed (retry in {backoff:?}): {error}");
            }
            None => {
                self.retry.remove(&(peer, share));
                if report.need + report.offer > 0 {
                    debug!(
                        %peer, share = %report.share,
                        "synced: {} in, {} out, {} round trips, {} B sent, {} B received",
                        report.merged, report.pushed, report.round_trips, report.bytes_sent, report.bytes_received
                    );
                }
                if again || !report.complete {
                    self.want_session(peer, share);
                }
            }
        }
        self.recent.push_back(report);
        while self.recent.len() > RECENT_SESSIONS {
            self.recent.pop_front();
        }
        let waiting: Vec<(PeerId, ShareId)> = self.wanted.drain(..).collect();
        for (peer, share) in waiting {
            self.want_session(peer, share);
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        let due: Vec<(PeerId, ShareId)> = self
            .retry
            .iter()
            .filter(|(_, (at, _))| *at <= now)
            .map(|(k, _)| *k)
            .collect();
        for (peer, share) in due {
            if let Some(entry) = self.retry.get_mut(&(peer, share)) {
                // Keep the failure count; push the time out until the session reports.
                entry.0 = now + SESSION_RETRY_MAX;
            }
            self.want_session(peer, share);
        }
        if now >= self.next_anti_entropy {
            self.next_anti_entropy = now + ANTI_ENTROPY_INTERVAL;
            let picks: Vec<(PeerId, ShareId)> = self
                .members
                .iter()
                .filter_map(|(share, members)| {
                    let members: Vec<&PeerId> = members.iter().collect();
                    if members.is_empty() {
                        return None;
                    }
                    let pick = share::random_bytes()[0] as usize % members.len();
                    Some((*members[pick], *share))
                })
                .collect();
            for (peer, share) in picks {
                self.want_session(peer, share);
            }
        }
        if now >= self.lonely_lookup.0 {
            let pause = (self.lonely_lookup.1 * 2).min(PROVIDER_LOOKUP_INTERVAL);
            self.lonely_lookup = (now + pause, pause);
            let lonely: Vec<Vec<u8>> = self
                .store
                .shares()
                .into_iter()
                .filter(|state| {
                    self.members
                        .get(&state.meta.id)
                        .is_none_or(HashSet::is_empty)
                })
                .map(|state| share::provider_key(&state.meta.secret))
                .collect();
            if !lonely.is_empty() {
                let net = self.net.clone();
                tokio::spawn(async move {
                    for key in lonely {
                        net.find_providers(key).await;
                    }
                });
            }
        }
        if now >= self.next_provider_lookup {
            self.next_provider_lookup = now + PROVIDER_LOOKUP_INTERVAL;
            let net = self.net.clone();
            let shares = self.store.shares();
            tokio::spawn(async move {
                for state in shares {
                    let key = share::provider_key(&state.meta.secret);
                    net.start_providing(key.clone()).await;
                    net.find_providers(key).await;
                    let seeds: Vec<libp2p::Multiaddr> = state
                        .meta
                        .seed_addrs
                        .iter()
                        .filter_map(|a| a.parse().ok())
                        .collect();
                    net.dial(seeds).await;
                }
            });
        }
    }
}
