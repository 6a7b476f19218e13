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
//!
//! # Layout
//!
//! This file holds the handle, the actor's state and its loop, and dispatches to the rooms:
//!
//! - [`shares`]: share lifecycle (create, join, tokens, allowlists, folder actors, DHT lookups).
//! - [`membership`]: proving membership both ways, with retries; [`membership::Roster`] is pure.
//! - `serve`: answering peers' requests, folder content included.
//! - [`announce`]: batching changes into announcements; [`announce::AnnounceBatcher`] is pure.
//! - [`progress`]: how far each member has got, as told on the wire; pure.
//! - [`schedule`]: pure state deciding when to run which session, backoff and periodic rounds.
//! - [`session`]: one reconciliation session, run as a task.
//! - [`status`]: what `status` shows, gathered off the loop.

pub mod announce;
pub mod membership;
pub mod progress;
pub mod schedule;
mod serve;
pub mod session;
mod share_control;
mod share_events;
pub mod shares;
pub mod status;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::{broadcast, mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use crate::config::FolderSettings;
use crate::events::{Event, EventType, Events};
use crate::folder::{FolderHandle, Resume};
use crate::net::{NetClient, NetEvent};
use crate::share;
use crate::store::{Change, ShareId, ShareKind, StoreError, StoreHandle};
use announce::AnnounceBatcher;
use membership::{AuthOutcome, Roster};
use schedule::{Admission, AfterSession, Outcome, Presence, Schedule, SyncReason};
use status::Counters;

pub use announce::{ANNOUNCE_DELAY, MAX_ANNOUNCES_IN_FLIGHT};
pub use membership::MAX_AUTH_RETRIES;
pub use schedule::{
    ANTI_ENTROPY_INTERVAL, ANTI_ENTROPY_QUIET, LONELY_LOOKUP_MIN, MAX_CONCURRENT_SESSIONS,
    MISSING_LATELY, PROVIDER_LOOKUP_INTERVAL, PROVIDER_LOOKUP_QUIET, SESSION_RETRY_MAX,
    SESSION_RETRY_MIN,
};
pub use session::SessionReport;
pub use shares::{CreatedShare, TrustChange};
pub use status::{EngineStatus, RECENT_SESSIONS, ShareStatus};

/// Commands queued for the engine before senders wait.
pub const ENGINE_CHANNEL_CAPACITY: usize = 256;

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
    #[error(transparent)]
    Invalid(#[from] InvalidRequest),
    /// The engine is gone.
    #[error("the sync engine has stopped")]
    Stopped,
}

/// What was wrong with a request from the API (the API answers these with 400). The messages
/// name the value at fault and are shown to users as they are.
#[derive(Debug, thiserror::Error)]
pub enum InvalidRequest {
    /// A share name that is empty, too long, or holds `/` or control characters.
    #[error(
        "`{name}` is not a valid share name (1 to {max} characters, no `/` or control characters)",
        max = crate::store::MAX_SHARE_NAME
    )]
    ShareName {
        /// The name asked for.
        name: String,
    },
    /// A token for another kind of share than asked for.
    #[error("this token is for a {token:?} share, not a {asked:?} share")]
    TokenKind {
        /// The token's kind.
        token: ShareKind,
        /// The kind asked for.
        asked: ShareKind,
    },
    /// A folder share without a path.
    #[error("folder shares need a path")]
    NoFolderPath,
    /// The folder (or its marker directory) could not be created.
    #[error("cannot prepare folder {}: {source}", path.display())]
    PrepareFolder {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The folder is, holds or lies inside another folder share's folder, or the daemon's
    /// home: two shares would write the same files (and each sync the other's `.meshsync`), or
    /// the daemon's keys and database would be sent to members.
    #[error("cannot share {}: {what}", path.display())]
    FolderOverlaps {
        /// The folder asked for.
        path: PathBuf,
        /// What it overlaps, in words.
        what: String,
    },
    /// The folder's absolute path could not be resolved.
    #[error("cannot resolve {}: {source}", path.display())]
    ResolveFolder {
        /// The folder.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Asked to resume a share that is not held by the mass-deletion breaker (or not a folder).
    #[error("{reason}")]
    NotHeld {
        /// Why, naming the share.
        reason: String,
    },
    /// Not a peer id.
    #[error("`{peer}` is not a peer id: {source}")]
    PeerId {
        /// The text given.
        peer: String,
        /// Why it does not parse.
        #[source]
        source: libp2p::identity::ParseError,
    },
    /// A read-write token asked of a member that joined read-only.
    #[error(
        "share `{share}` was joined read-only here, so it can only hand out read-only tokens (add --read-only)"
    )]
    ReadOnlyShare {
        /// The share's local name.
        share: String,
    },
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
    Resume {
        share: String,
        choice: Resume,
        reply: oneshot::Sender<Result<u64, EngineError>>,
    },
    SetPaused {
        share: String,
        paused: bool,
        reply: oneshot::Sender<Result<bool, EngineError>>,
    },
    Leave {
        share: String,
        reply: oneshot::Sender<Result<String, EngineError>>,
    },
    Status {
        /// How much is gathered.
        detail: status::Detail,
        reply: oneshot::Sender<EngineStatus>,
    },
    /// Our progress with a share changed (from the state poll).
    OwnProgress {
        share: ShareId,
        progress: progress::Progress,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
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

    /// Ends a folder share's hold by the mass-deletion breaker as the user decided; returns how
    /// many paths it concerned.
    pub async fn resume(&self, share: String, choice: Resume) -> Result<u64, EngineError> {
        self.call(|reply| Command::Resume {
            share,
            choice,
            reply,
        })
        .await?
    }

    /// Pauses (`paused`) or resumes a share; false if it already was so.
    pub async fn set_paused(&self, share: String, paused: bool) -> Result<bool, EngineError> {
        self.call(|reply| Command::SetPaused {
            share,
            paused,
            reply,
        })
        .await?
    }

    /// Leaves a share (its files stay); returns its name.
    pub async fn leave(&self, share: String) -> Result<String, EngineError> {
        self.call(|reply| Command::Leave { share, reply }).await?
    }

    /// Shares and sessions.
    pub async fn status(&self) -> Result<EngineStatus, EngineError> {
        self.call(|reply| Command::Status {
            detail: status::Detail::Full,
            reply,
        })
        .await
    }

    /// Each share's state, reason, last error, root and folder progress, with the same values
    /// as [`EngineHandle::status`] but nothing else (no member lists, no sessions, no count of
    /// unshared edits): for the state poll that runs every second ([`status::Detail::States`]).
    pub async fn states(&self) -> Result<EngineStatus, EngineError> {
        self.call(|reply| Command::Status {
            detail: status::Detail::States,
            reply,
        })
        .await
    }

    /// Our progress with a share, to be told to its members that have not heard it yet.
    pub async fn own_progress(&self, share: ShareId, progress: progress::Progress) {
        let _ = self
            .commands
            .send(Command::OwnProgress { share, progress })
            .await;
    }

    /// Stops the engine.
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }
}

/// Results of the engine's helper tasks.
enum TaskResult {
    /// A membership check we asked for finished.
    Auth {
        peer: PeerId,
        share: ShareId,
        outcome: AuthOutcome,
        sent: u64,
        received: u64,
    },
    /// An announcement was delivered (or not).
    Announced {
        share: ShareId,
        peer: PeerId,
        sent: u64,
        received: u64,
        /// The member acknowledged it.
        delivered: bool,
        /// The member answered that we are not a member (it paused or left the share).
        not_a_member: bool,
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
    /// Our progress was told to a member, or not (then it is told again at the next poll).
    Told {
        peer: PeerId,
        share: ShareId,
        delivered: bool,
        sent: u64,
        received: u64,
    },
}

/// Starts the engine.
pub fn spawn(
    local: PeerId,
    home: PathBuf,
    store: StoreHandle,
    net: NetClient,
    net_events: mpsc::UnboundedReceiver<NetEvent>,
    folder_settings: FolderSettings,
    events: Events,
) -> EngineHandle {
    let (tx, rx) = mpsc::channel(ENGINE_CHANNEL_CAPACITY);
    let changes = store.subscribe();
    let mut actor = EngineActor {
        local,
        home,
        folder_settings,
        folders: HashMap::new(),
        member_watch: HashMap::new(),
        store,
        net,
        inbox: rx,
        net_events,
        changes,
        roster: Roster::default(),
        progress: progress::ProgressBook::default(),
        schedule: Schedule::new(Instant::now()),
        sessions: JoinSet::new(),
        tasks: JoinSet::new(),
        announce: AnnounceBatcher::default(),
        counters: HashMap::new(),
        serve_rate: crate::net::guard::ServeRate::default(),
        recent: VecDeque::new(),
        failed_sessions: crate::quiet::LogLimiter::default(),
        events: events.clone(),
    };
    for state in actor.store.shares() {
        actor.start_folder(&state.meta);
    }
    tokio::spawn(actor.run());
    let handle = EngineHandle { commands: tx };
    tokio::spawn(share_events::watch_states(handle.clone(), events));
    handle
}

struct EngineActor {
    local: PeerId,
    /// The daemon's home (its keys and database), which no folder share may hold or be in.
    home: PathBuf,
    /// Folder shares' settings from the config.
    folder_settings: FolderSettings,
    /// Folder actors, per folder share.
    folders: HashMap<ShareId, FolderHandle>,
    /// Current members per folder share, for its actor to fetch from.
    member_watch: HashMap<ShareId, watch::Sender<Vec<PeerId>>>,
    store: StoreHandle,
    net: NetClient,
    inbox: mpsc::Receiver<Command>,
    net_events: mpsc::UnboundedReceiver<NetEvent>,
    changes: broadcast::Receiver<Arc<Change>>,
    /// Connected peers and the shares each proved membership of.
    roster: Roster,
    /// How far each member has got with each share.
    progress: progress::ProgressBook,
    /// When to run which session.
    schedule: Schedule,
    sessions: JoinSet<(PeerId, ShareId, SessionReport)>,
    tasks: JoinSet<TaskResult>,
    /// Changes waiting to be announced.
    announce: AnnounceBatcher<Arc<Change>>,
    counters: HashMap<ShareId, Counters>,
    /// Paces the folder content served to each peer.
    serve_rate: crate::net::guard::ServeRate,
    /// The most recent sessions, for `status`.
    recent: VecDeque<SessionReport>,
    /// Failed sessions are warned about once a minute per member and share (with the count
    /// of the unsaid): on a lossy link they fail every few seconds, and a line each was 10-30
    /// warnings in 5-9 minutes. The last error is in `status` either way.
    failed_sessions: crate::quiet::LogLimiter<schedule::Pair>,
    /// What happened, for `GET /v1/events`.
    events: Events,
}

impl EngineActor {
    async fn run(mut self) {
        let far = Duration::from_secs(3600);
        loop {
            let flush_at = self
                .announce
                .flush_at()
                .unwrap_or_else(|| Instant::now() + far);
            let timer_at = self.schedule.next_wake(Instant::now());
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

    fn counters(&mut self, share: ShareId) -> &mut Counters {
        self.counters.entry(share).or_default()
    }

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
                let result = self.token(&share, read_only).await;
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
            Command::Resume {
                share,
                choice,
                reply,
            } => self.on_resume(&share, choice, reply),
            Command::SetPaused {
                share,
                paused,
                reply,
            } => {
                let result = self.set_paused(&share, paused).await;
                let _ = reply.send(result);
            }
            Command::Leave { share, reply } => {
                let result = self.leave(&share).await;
                let _ = reply.send(result);
            }
            Command::Status { detail, reply } => self.on_status(reply, detail),
            Command::OwnProgress { share, progress } => {
                self.progress.own(share, progress);
                self.tell_progress(share);
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn on_net_event(&mut self, event: NetEvent) {
        match event {
            NetEvent::PeerConnected(peer, name) => {
                self.events.name_peer(&peer.to_string(), name.as_deref());
                self.events
                    .emit(Event::new(EventType::PeerConnected, None).peer(peer.to_string()));
                self.roster.connect(peer);
                for state in self.store.shares() {
                    self.start_auth(peer, state.meta.id);
                }
            }
            NetEvent::PeerDisconnected(peer) => {
                self.events
                    .emit(Event::new(EventType::PeerDisconnected, None).peer(peer.to_string()));
                self.roster
                    .disconnect(&peer, crate::net::protocol::wall_clock_ms());
                self.progress.disconnected(&peer);
                let roster = &self.roster;
                self.progress
                    .retain(|(peer, share)| roster.knows_member(share, peer));
                self.publish_members();
                self.schedule.forget_peer(&peer);
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

    fn on_task_done(&mut self, result: TaskResult) {
        match result {
            TaskResult::Auth {
                peer,
                share,
                outcome,
                sent,
                received,
            } => self.on_auth_done((peer, share), outcome, sent, received),
            TaskResult::Announced {
                share,
                peer,
                sent,
                received,
                delivered,
                not_a_member,
            } => self.on_announced((share, peer), (sent, received), delivered, not_a_member),
            TaskResult::Merged {
                peer,
                share,
                their_root,
                sent,
            } => {
                self.counters(share).bytes_sent += sent;
                self.on_merged(peer, share, their_root);
            }
            TaskResult::Answered { share, sent } => {
                self.counters(share).bytes_sent += sent;
            }
            TaskResult::Told {
                peer,
                share,
                delivered,
                sent,
                received,
            } => {
                if !delivered {
                    self.progress.untold(&(peer, share));
                }
                let c = self.counters(share);
                c.bytes_sent += sent;
                c.bytes_received += received;
            }
        }
    }

    /// Starts a session with the member for the share, unless the schedule says to wait, the
    /// peer is no member, or nothing may flow either way.
    fn want_session(&mut self, peer: PeerId, share: ShareId, reason: SyncReason) {
        if self.schedule.admit((peer, share), reason, Instant::now()) != Admission::Start {
            return;
        }
        let Some(state) = self.store.share(&share) else {
            return;
        };
        if !self.roster.is_member(&share, &peer) {
            return;
        }
        // Entries flow only from members that proved they may write, and only members holding
        // the write key send any.
        let flow = session::Flow {
            pull: self.roster.is_writer(&share, &peer),
            push: state.meta.writable(),
        };
        if !flow.pull && !flow.push {
            return;
        }
        self.schedule.started((peer, share), Instant::now());
        let span = info_span!("sync", %peer, share = %state.meta.name, ?reason);
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
        if report.not_a_member {
            // Not a failure to retry: the peer paused or left the share.
            self.on_not_a_member(peer, share);
        }
        if report.error.is_none() {
            self.progress
                .session_ended((peer, share), report.offer as u64, Instant::now());
        }
        if report.merged + report.pushed > 0 {
            // Entries flowed: rounds come often again until the mesh is quiet. (A difference
            // that cannot flow, such as a read-only member's own edits, is no change.)
            self.schedule.changed(Instant::now());
        }
        let c = self.counters(share);
        c.bytes_sent += report.bytes_sent;
        c.bytes_received += report.bytes_received;
        c.sessions += 1;
        c.rounds += u64::from(report.rounds);
        if let Some(error) = report.error.as_ref().filter(|_| !report.not_a_member) {
            c.last_error = Some((
                format!("session with {peer}: {error}"),
                std::time::SystemTime::now(),
            ));
        }
        let outcome = match (&report.error, report.complete) {
            (Some(_), _) => Outcome::Failed,
            (None, true) => Outcome::Complete,
            (None, false) => Outcome::Incomplete,
        };
        let presence = if self.roster.is_connected(&peer) {
            Presence::Connected
        } else {
            Presence::Gone
        };
        let after = self
            .schedule
            .finished((peer, share), outcome, presence, Instant::now());
        if report.not_a_member {
            debug!(%peer, share = %report.share, "session refused: not a member (asked again)");
        } else if report.store_failed {
            debug!(%peer, share = %report.share, "sync session failed on our store (retried)");
        } else if let (AfterSession::Failed { backoff }, Some(error)) = (after, &report.error) {
            match self
                .failed_sessions
                .allow(&(peer, share), std::time::Instant::now())
            {
                Some(unsaid) => warn!(
                    %peer, share = %report.share,
                    "sync session failed (retry in {backoff:?}): {error}{}",
                    crate::quiet::and_more(unsaid)
                ),
                None => debug!(
                    %peer, share = %report.share,
                    "sync session failed (retry in {backoff:?}): {error}"
                ),
            }
        } else if report.need + report.offer > 0 {
            debug!(
                %peer, share = %report.share,
                "synced: {} in, {} out, {} round trips, {} B sent, {} B received",
                report.merged, report.pushed, report.round_trips, report.bytes_sent, report.bytes_received
            );
        }
        if let AfterSession::Again(reason) = after {
            self.want_session(peer, share, reason);
        }
        status::remember(&mut self.recent, report);
        for ((peer, share), reason) in self.schedule.take_wanted() {
            self.want_session(peer, share, reason);
        }
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        // Queued sessions whose share's running session no longer has it to itself.
        for ((peer, share), reason) in self.schedule.take_wanted() {
            self.want_session(peer, share, reason);
        }
        for (peer, share) in self.schedule.due_retries(now) {
            self.want_session(peer, share, SyncReason::Retry);
        }
        if self.schedule.anti_entropy_due(now) {
            for (peer, share) in self.roster.next_round() {
                self.want_session(peer, share, SyncReason::AntiEntropy);
            }
            for (peer, share) in self.announce.take_owed() {
                if self.roster.is_member(&share, &peer) {
                    self.want_session(peer, share, SyncReason::AnnouncementMissed);
                }
            }
        }
        if self.schedule.lonely_lookup_due(now) {
            self.look_up_lonely_shares();
        }
        let missing_since =
            crate::net::protocol::wall_clock_ms().saturating_sub(MISSING_LATELY.as_millis() as u64);
        let members_missing = self.roster.missing_since(missing_since);
        if self.schedule.provider_lookup_due(now, members_missing) {
            self.refresh_providers();
        }
    }
}
