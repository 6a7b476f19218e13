//! What `status` and `share list` show about syncing: every share with its members, traffic and
//! folder state, and the most recent sessions.
//!
//! The engine's own state is copied in the loop (cheap and consistent); the parts that must be
//! asked of others (each folder actor's status, the store's count of unshared local edits) are
//! gathered in a task of its own, which answers the caller, so a slow folder or store never
//! holds up the engine loop. The JSON field names are a contract for users' scripts.

use std::collections::{HashMap, VecDeque};
use std::time::SystemTime;

use serde::Serialize;
use tokio::sync::oneshot;

use super::EngineActor;
use super::membership::MemberStatus;
use super::progress::{MemberNeeds, completion};
use super::session::SessionReport;
use crate::folder::status::FolderState;
use crate::folder::{FolderHandle, FolderStatus};
use crate::store::{ShareId, ShareKind, ShareState, StoreHandle};

/// Finished sessions remembered for `status`.
pub const RECENT_SESSIONS: usize = 32;

/// How much of the status is gathered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detail {
    /// Everything `status` shows, read-only shares' unshared local edits counted (a read of
    /// the whole share).
    Full,
    /// Only what a share's state needs and the state poll reports (state, reason, last error,
    /// root, folder): no member lists, no sessions, nothing counted. The poll runs every second;
    /// with 31 members, listing them (peer ids as text, sorted) was most of an idle mesh's
    /// engine time.
    States,
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
    /// Reconciliation rounds those sessions took (round trips comparing summaries).
    #[serde(default)]
    pub rounds: u64,
    /// For folder shares: what the folder is doing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub folder: Option<FolderStatus>,
    /// Every member known here: connected, or since when it is gone.
    #[serde(default)]
    pub member_status: Vec<super::membership::MemberStatus>,
    /// Where the share stands (for records and folders alike).
    pub state: SyncState,
    /// Why, where there is a why (null otherwise).
    pub reason: Option<String>,
    /// The last error (null when there was none).
    pub last_error: Option<LastError>,
    /// For folder shares: regular files synced here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub files: Option<u64>,
    /// For folder shares: directories synced here.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub directories: Option<u64>,
    /// For folder shares: entries that are no file, directory or symlink here — deletions
    /// (tombstones), and while syncing also entries not yet written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<u64>,
}

/// What `status` shows about syncing.
#[derive(Debug, Clone, Serialize)]
pub struct EngineStatus {
    /// Every share.
    pub shares: Vec<ShareStatus>,
    /// The most recent sessions, newest last.
    pub sessions: Vec<SessionReport>,
}

/// Traffic and session counts of one share, since the daemon started.
#[derive(Debug, Default, Clone)]
pub struct Counters {
    /// Bytes sent for the share.
    pub bytes_sent: u64,
    /// Bytes received for the share.
    pub bytes_received: u64,
    /// Sessions run.
    pub sessions: u64,
    /// Reconciliation rounds (round trips comparing summaries) those sessions took.
    pub rounds: u64,
    /// Entries refused from members that may not write.
    pub refused_entries: u64,
    /// The last session that failed: what went wrong, and when.
    pub last_error: Option<(String, SystemTime)>,
}

/// Where a share stands, in a word; `reason` in [`ShareStatus`] says why where there is a why.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SyncState {
    /// Reading the folder.
    Scanning,
    /// Exchanging entries or fetching and writing changes.
    Syncing,
    /// Nothing to do, with at least one member connected.
    InSync,
    /// No member is reachable: nothing can sync until one is.
    Waiting,
    /// Stopped (the folder's root or marker is gone).
    Paused,
    /// Held by the mass-deletion breaker until the user decides.
    Held,
    /// Work waits on a condition checked again by itself (a full disk).
    Error,
}

/// The last error of a share.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct LastError {
    /// What went wrong.
    pub message: String,
    /// When (RFC 3339, UTC).
    pub at: String,
}

/// Where a share stands and why: the folder's own state first where it is one that waits or
/// works on the disk, then whether any member is there to sync with, then whether a session
/// runs. `connected` says whether a member is connected now; if none is, `last_seen_ms` says
/// when one last was (the latest of the members that went).
pub fn sync_state(
    folder: Option<&FolderStatus>,
    session_busy: bool,
    last_seen_ms: Option<u64>,
    connected: bool,
) -> (SyncState, Option<String>) {
    if let Some(folder) = folder {
        let own = match folder.state {
            FolderState::Scanning => Some(SyncState::Scanning),
            FolderState::Paused => Some(SyncState::Paused),
            FolderState::Held => Some(SyncState::Held),
            FolderState::Error => Some(SyncState::Error),
            FolderState::Syncing | FolderState::Idle => None,
        };
        if let Some(own) = own {
            return (own, folder.reason.clone());
        }
    }
    if !connected {
        let reason = match last_seen_ms {
            Some(ms) => format!(
                "no member reachable since {}",
                crate::timefmt::rfc3339_ms(ms)
            ),
            None => "no other member has connected yet".to_owned(),
        };
        return (SyncState::Waiting, Some(reason));
    }
    let folder_busy = folder.is_some_and(|f| f.state == FolderState::Syncing);
    if folder_busy || session_busy {
        (SyncState::Syncing, None)
    } else {
        (SyncState::InSync, None)
    }
}

/// Remembers a finished session, forgetting the oldest beyond [`RECENT_SESSIONS`].
pub fn remember(recent: &mut VecDeque<SessionReport>, report: SessionReport) {
    recent.push_back(report);
    while recent.len() > RECENT_SESSIONS {
        recent.pop_front();
    }
}

/// What is still to be asked about one share, off the engine loop.
struct Pending {
    /// The folder actor to ask for its status (folder shares).
    folder: Option<FolderHandle>,
    /// The share to count unshared local edits of (read-only members).
    count_unshared: Option<ShareId>,
    /// Whether a member is connected, and if none is, when one was last.
    connected: bool,
    last_seen_ms: Option<u64>,
}

impl EngineActor {
    /// Answers a status request: the engine's part now, the rest from a task of its own.
    pub(super) fn on_status(&self, reply: oneshot::Sender<EngineStatus>, detail: Detail) {
        let (shares, pending): (Vec<ShareStatus>, Vec<Pending>) = self
            .store
            .shares()
            .into_iter()
            .map(|state| {
                let id = state.meta.id;
                let pending = Pending {
                    folder: self.folders.get(&id).cloned(),
                    count_unshared: (detail == Detail::Full && !state.meta.writable())
                        .then_some(id),
                    connected: self.roster.has_members(&id),
                    last_seen_ms: self.roster.last_seen_ms(&id),
                };
                (self.share_status(&state, &pending, detail), pending)
            })
            .unzip();
        let sessions = match detail {
            Detail::Full => self.recent.iter().cloned().collect(),
            Detail::States => Vec::new(),
        };
        let status = EngineStatus { shares, sessions };
        let store = self.store.clone();
        tokio::spawn(async move {
            let status = complete(status, pending, store).await;
            let _ = reply.send(status);
        });
    }

    /// One share as the engine sees it; `folder` and `unshared` are filled in by [`complete`].
    /// With [`Detail::States`], without its members.
    fn share_status(&self, state: &ShareState, pending: &Pending, detail: Detail) -> ShareStatus {
        let (entries, root) = {
            let summary = state.summary.read().expect("summary lock");
            (summary.len(), summary.root())
        };
        let id = state.meta.id;
        let counters = self.counters.get(&id).cloned().unwrap_or_default();
        // Each peer id's text made once per status: they are listed up to three times, and
        // base58 costs more than the rest (the state poll asks every second).
        let mut names: HashMap<libp2p::PeerId, String> = HashMap::new();
        let mut name_of = |peer: &libp2p::PeerId| -> String {
            names
                .entry(*peer)
                .or_insert_with(|| peer.to_string())
                .clone()
        };
        let full = detail == Detail::Full;
        let listed_members = if full {
            self.roster.member_status_named(&id, &mut name_of)
        } else {
            Vec::new()
        };
        let member_status: Vec<MemberStatus> = listed_members
            .into_iter()
            .map(|(peer, mut member)| {
                if let Some(needs) = self.progress.needs(&(peer, id), root) {
                    member.needed_files = Some(needs.files);
                    member.needed_bytes = Some(needs.bytes);
                    member.completion = Some(completion(needs, entries, 0));
                }
                member
            })
            .collect();
        // Sorted as strings, as shown.
        let mut listed = |peers: Vec<libp2p::PeerId>| {
            let mut peers: Vec<String> = peers.iter().map(&mut name_of).collect();
            peers.sort();
            peers
        };
        let (members, writers) = if full {
            (
                listed(self.roster.members_of(&id)),
                listed(self.roster.writers_of(&id)),
            )
        } else {
            (Vec::new(), Vec::new())
        };
        let (sync, reason) = if state.meta.paused {
            let reason = super::share_control::paused_reason(&state.meta.name);
            (SyncState::Paused, Some(reason))
        } else {
            sync_state(
                None,
                self.schedule.busy_with(&id),
                pending.last_seen_ms,
                pending.connected,
            )
        };
        let folder = match (&state.meta.path, state.meta.paused) {
            (Some(path), true) => Some(FolderStatus::stopped(path, reason.clone())),
            _ => None,
        };
        ShareStatus {
            id: hex::encode(id),
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
            rounds: counters.rounds,
            folder,
            member_status,
            state: sync,
            reason,
            last_error: counters.last_error.map(|(message, at)| LastError {
                message,
                at: crate::timefmt::rfc3339(at),
            }),
            files: None,
            directories: None,
            deleted: None,
        }
    }
}

/// Asks each folder for its status and the store for read-only shares' unshared edits.
async fn complete(
    mut status: EngineStatus,
    pending: Vec<Pending>,
    store: StoreHandle,
) -> EngineStatus {
    for (share, pending) in status.shares.iter_mut().zip(pending) {
        if let Some(folder) = pending.folder {
            share.folder = folder.status().await;
            if let Some(folder) = &share.folder {
                // Counts not read yet are not zeros: left out (`null`) until they are.
                if folder.loaded {
                    let live = folder.files + folder.directories + folder.symlinks;
                    share.files = Some(folder.files);
                    share.directories = Some(folder.directories);
                    share.deleted = Some(share.entries.saturating_sub(live));
                    // Weighed by the folder's own files and bytes, not entries.
                    for member in &mut share.member_status {
                        if let (Some(files), Some(bytes)) =
                            (member.needed_files, member.needed_bytes)
                        {
                            let needs = MemberNeeds { files, bytes };
                            member.completion =
                                Some(completion(needs, folder.files, folder.file_bytes));
                        }
                    }
                }
                let session_busy = share.state == SyncState::Syncing;
                (share.state, share.reason) = sync_state(
                    Some(folder),
                    session_busy,
                    pending.last_seen_ms,
                    pending.connected,
                );
                // The folder's own error is about its files: newer than a session's, usually,
                // and what the user can act on.
                if let (Some(message), Some(at)) = (&folder.last_error, &folder.last_error_at) {
                    share.last_error = Some(LastError {
                        message: message.clone(),
                        at: at.clone(),
                    });
                }
            }
        }
        if let Some(id) = pending.count_unshared {
            share.unshared = match store.count_authored(id).await {
                Ok(count) => count,
                // Said once by the store, not once per status request.
                Err(e) if e.is_logged_by_store() => 0,
                Err(e) => {
                    tracing::warn!(share = %share.name, "cannot count local edits for status: {e}");
                    0
                }
            };
        }
        // Nothing of any share is stored or synced while the store cannot be written.
        if let Some(problem) = store.problem()
            && share.state != SyncState::Paused
        {
            share.state = SyncState::Error;
            share.reason = Some(problem);
        }
    }
    status
}
