//! One reconciliation session with one peer for one share, run as its own task.
//!
//! The session drives the pure [`crate::reconcile::Initiator`] over the network, then pulls the
//! entries the peer has and we lack (merging them through the store) and pushes the ones we have
//! and it lacks. Every byte it sends and receives is counted, frame by frame.

use std::time::{Duration, Instant};

use libp2p::PeerId;
use serde::Serialize;

use crate::net::protocol::{
    ANNOUNCE_PUSH_BUDGET, MAX_ENTRIES_PER_MESSAGE, MAX_IDS_PER_REQUEST, NOT_A_MEMBER, Request,
    Response, WireEntry, frame_len,
};
use crate::net::{NetClient, NetError};
use crate::reconcile::{self, Id, Initiator, Step};
use crate::store::{ShareState, StoreHandle};

/// Longest a whole session may take, pulls included; a slower one is abandoned and retried.
pub const SESSION_TIMEOUT: Duration = Duration::from_secs(300);
/// Most `GetEntries` round trips one session makes for the same ids before giving up on them
/// (a peer that keeps answering without the ids it advertised).
pub const MAX_PULL_ATTEMPTS: usize = 3;
/// Most entries a session pushes to its peer. Past it, the session tells the peer our root
/// instead (an announcement without entries) and the peer pulls what it lacks in a session of
/// its own, paced by its store: in a first sync of 10^6 entries the side that had them pushed
/// every one (and held their ids, 32 MB) while the other side pulled them too, and its session
/// ran into [`SESSION_TIMEOUT`].
pub const PUSH_MAX_ENTRIES: usize = 4096;

/// Which ways entries may move in a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Flow {
    /// Take entries from the peer (it proved it may write).
    pub pull: bool,
    /// Send entries to it (we may write).
    pub push: bool,
}

/// What a session did; kept for `status --json`.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct SessionReport {
    /// The peer.
    pub peer: String,
    /// The share's local name.
    pub share: String,
    /// Milliseconds since the Unix epoch when it started.
    pub started_ms: u64,
    /// How long it took, in milliseconds.
    pub duration_ms: f64,
    /// Reconciliation round trips (pulls and pushes not included).
    pub rounds: u32,
    /// All round trips, pulls and pushes included.
    pub round_trips: u32,
    /// Bytes we sent in this session (frames, as on the wire before encryption).
    pub bytes_sent: u64,
    /// Bytes we received in this session.
    pub bytes_received: u64,
    /// Entries the peer had that we lacked or held differently.
    pub need: usize,
    /// Of those, how many were pulled between reconciliation rounds, a request's worth at a
    /// time as they were found (a big difference is not held whole until the last round).
    pub pulled_between_rounds: usize,
    /// Entries we had that the peer lacked or held differently.
    pub offer: usize,
    /// Entries pulled and merged that changed something here.
    pub merged: usize,
    /// Entries pushed to the peer.
    pub pushed: usize,
    /// True when we offered more than [`PUSH_MAX_ENTRIES`]: instead of pushing them we
    /// announced our root, and the peer pulls them.
    #[serde(default)]
    pub left_to_peer: bool,
    /// False if reconciliation stopped at its round limit (another session follows).
    pub complete: bool,
    /// Why it failed, if it did.
    pub error: Option<String>,
    /// Set when the peer answered that we are not a member: it paused or left the share.
    #[serde(skip)]
    pub not_a_member: bool,
    /// Set when our own store failed, which the store says itself (once).
    #[serde(skip)]
    pub store_failed: bool,
}

/// Why a session failed.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The request failed.
    #[error(transparent)]
    Net(#[from] NetError),
    /// The peer answered something unexpected.
    #[error("peer answered {0}")]
    Protocol(String),
    /// The reconciliation state machine refused an answer.
    #[error("reconciliation: {0}")]
    Reconcile(#[from] reconcile::ReconcileError),
    /// The store failed.
    #[error("store: {0}")]
    Store(#[from] crate::store::StoreError),
    /// Too slow.
    #[error("session took longer than {SESSION_TIMEOUT:?}")]
    Timeout,
    /// The peer is no longer a member of the share (it paused or left it).
    #[error("peer is not a member of the share (any more)")]
    NotAMember,
}

struct Counters {
    round_trips: u32,
    sent: u64,
    received: u64,
}

impl Counters {
    async fn request(
        &mut self,
        net: &NetClient,
        peer: PeerId,
        request: Request,
    ) -> Result<Response, SessionError> {
        self.sent += frame_len(&request) as u64;
        let response = net.request(peer, request).await?;
        self.received += frame_len(&response) as u64;
        self.round_trips += 1;
        match response {
            Response::Error(message) if message == NOT_A_MEMBER => Err(SessionError::NotAMember),
            Response::Error(message) => Err(SessionError::Protocol(format!("an error: {message}"))),
            other => Ok(other),
        }
    }
}

/// Runs a session and reports on it, successful or not.
pub async fn run(
    net: NetClient,
    store: StoreHandle,
    share: ShareState,
    peer: PeerId,
    flow: Flow,
) -> SessionReport {
    let started = Instant::now();
    let started_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let mut counters = Counters {
        round_trips: 0,
        sent: 0,
        received: 0,
    };
    let mut report = SessionReport {
        peer: peer.to_string(),
        share: share.meta.name.clone(),
        started_ms,
        duration_ms: 0.0,
        rounds: 0,
        round_trips: 0,
        bytes_sent: 0,
        bytes_received: 0,
        need: 0,
        pulled_between_rounds: 0,
        offer: 0,
        merged: 0,
        pushed: 0,
        left_to_peer: false,
        complete: false,
        error: None,
        not_a_member: false,
        store_failed: false,
    };
    let result = tokio::time::timeout(
        SESSION_TIMEOUT,
        reconcile_and_transfer(&net, &store, &share, peer, flow, &mut counters, &mut report),
    )
    .await
    .unwrap_or(Err(SessionError::Timeout));
    if let Err(e) = result {
        report.not_a_member = matches!(e, SessionError::NotAMember);
        // The store says once why it cannot be read or written; a session that fails on it
        // is retried quietly.
        report.store_failed = match &e {
            SessionError::Store(s) => s.is_logged_by_store(),
            SessionError::Reconcile(reconcile::ReconcileError::OwnItems(unreadable)) => {
                unreadable.said_by_source
            }
            _ => false,
        };
        report.error = Some(e.to_string());
    }
    report.round_trips = counters.round_trips;
    report.bytes_sent = counters.sent;
    report.bytes_received = counters.received;
    report.duration_ms = started.elapsed().as_secs_f64() * 1000.0;
    report
}

async fn reconcile_and_transfer(
    net: &NetClient,
    store: &StoreHandle,
    share: &ShareState,
    peer: PeerId,
    flow: Flow,
    counters: &mut Counters,
    report: &mut SessionReport,
) -> Result<(), SessionError> {
    let share_id = serde_bytes::ByteArray::new(share.meta.id);
    let salt: reconcile::Salt = crate::share::random_bytes()[..16]
        .try_into()
        .expect("16 bytes");
    let (mut initiator, mut message) = {
        let summary = share.summary.read().expect("summary lock");
        Initiator::start(&summary, salt)
    };
    // Offers are kept only to be pushed, and only as many as we would push.
    initiator.limit_offer(if flow.push { PUSH_MAX_ENTRIES } else { 0 });
    // What we pull may have to be sent back: the digests the peer holds, for `push` to skip
    // what merged into exactly that (see `pull`).
    let mut theirs = std::collections::HashMap::new();
    let mut pulled_early = 0;
    let outcome = loop {
        let response = counters
            .request(
                net,
                peer,
                Request::Reconcile {
                    share: share_id,
                    message: message.encode()?.into(),
                },
            )
            .await?;
        let Response::Reconcile(bytes) = response else {
            return Err(SessionError::Protocol(format!(
                "{response:?} to a reconcile request"
            )));
        };
        let answer = reconcile::Response::decode(&bytes)?;
        let step = {
            let summary = share.summary.read().expect("summary lock");
            initiator.on_response(&summary, answer)?
        };
        match step {
            Step::Send(next) => message = next,
            Step::Done(outcome) => break outcome,
        }
        if flow.pull && initiator.needed_so_far() >= MAX_IDS_PER_REQUEST {
            // Pulled between rounds, a request's worth at a time: a first sync of 10^6
            // entries held every id it needed (32 MB) until the last round and through the
            // whole pull, the receiver's peak.
            let batch = initiator.take_need();
            pulled_early += batch.ids.len();
            report.merged += pull(
                net,
                store,
                share,
                peer,
                batch.ids,
                &batch.offered,
                &mut theirs,
                counters,
            )
            .await?;
        }
    };
    report.rounds = outcome.rounds;
    report.need = pulled_early + outcome.need.len();
    report.pulled_between_rounds = pulled_early;
    report.offer = outcome.offered;
    report.complete = outcome.complete;
    // Sorted, for `pull` to look ids up in it (the order we push in does not matter).
    let mut offer = outcome.offer;
    offer.sort_unstable();
    if flow.pull {
        let need = outcome.need;
        report.merged += pull(net, store, share, peer, need, &offer, &mut theirs, counters).await?;
    }
    if flow.push && initiator.offer_over_limit() {
        report.left_to_peer = true;
        send_push(net, share, peer, Vec::new(), counters).await?;
    } else if flow.push {
        report.pushed = push(net, store, share, peer, offer, &theirs, counters).await?;
    }
    Ok(())
}

/// Fetches entries by id and merges them; returns how many changed something here. Records in
/// `theirs` the digest of each register as the peer holds it, for the entries we will offer it
/// (`offer`, sorted): only those could be sent back. A peer's first sync pulls everything and
/// offers nothing; remembering every digest then was a 64-byte entry per file for the whole
/// session, 136 MiB (200 while the map grew) for a million files, the receiver's peak.
#[allow(clippy::too_many_arguments)] // one session's state, passed as is
async fn pull(
    net: &NetClient,
    store: &StoreHandle,
    share: &ShareState,
    peer: PeerId,
    need: Vec<Id>,
    offer: &[Id],
    theirs: &mut std::collections::HashMap<Id, [u8; 32]>,
    counters: &mut Counters,
) -> Result<usize, SessionError> {
    let share_id = serde_bytes::ByteArray::new(share.meta.id);
    let mut merged = 0;
    for chunk in need.chunks(MAX_IDS_PER_REQUEST) {
        let mut wanted: Vec<Id> = chunk.to_vec();
        for _ in 0..MAX_PULL_ATTEMPTS {
            if wanted.is_empty() {
                break;
            }
            let response = counters
                .request(
                    net,
                    peer,
                    Request::GetEntries {
                        share: share_id,
                        ids: wanted
                            .iter()
                            .map(|id| serde_bytes::ByteArray::new(*id))
                            .collect(),
                    },
                )
                .await?;
            let Response::Entries(entries) = response else {
                return Err(SessionError::Protocol(format!(
                    "{response:?} to a get-entries request"
                )));
            };
            if entries.is_empty() {
                // It no longer has them (deleted and compacted, or it lied); the next session
                // sorts out whatever still differs.
                break;
            }
            let got: Vec<Id> = entries
                .iter()
                .map(|e| crate::store::record_id(&e.key))
                .collect();
            forget_arrived(&mut wanted, &got);
            remember_offered(theirs, offer, &got, &entries);
            let entries = entries
                .into_iter()
                .map(|e| (e.key.into_vec(), e.register))
                .collect();
            merged += store.merge(share.meta.id, entries, peer).await?;
        }
    }
    Ok(merged)
}

/// Drops from `wanted` the ids that arrived (`got`). Looked up sorted: a scan of `got` for each
/// wanted id was 8 million comparisons per full answer.
fn forget_arrived(wanted: &mut Vec<Id>, got: &[Id]) {
    let mut arrived = got.to_vec();
    arrived.sort_unstable();
    wanted.retain(|id| arrived.binary_search(id).is_err());
}

/// Remembers the digest of each pulled register (`got[i]` is the id of `entries[i]`) that we
/// may send back, its id being in the sorted `offer`: `push` skips what the peer holds already.
fn remember_offered(
    theirs: &mut std::collections::HashMap<Id, [u8; 32]>,
    offer: &[Id],
    got: &[Id],
    entries: &[WireEntry],
) {
    for (id, entry) in got.iter().zip(entries) {
        if offer.binary_search(id).is_ok()
            && let Ok(digest) = entry.register.digest()
        {
            theirs.insert(*id, digest);
        }
    }
}

/// Sends the peer the entries it lacks or holds differently, inside announcements; returns how
/// many were sent. An entry we just pulled from it and that merged into exactly what it holds is
/// not sent back.
async fn push(
    net: &NetClient,
    store: &StoreHandle,
    share: &ShareState,
    peer: PeerId,
    offer: Vec<Id>,
    theirs: &std::collections::HashMap<Id, [u8; 32]>,
    counters: &mut Counters,
) -> Result<usize, SessionError> {
    let mut pushed = 0;
    for ids in offer.chunks(MAX_ENTRIES_PER_MESSAGE) {
        let entries = store.by_ids(share.meta.id, ids.to_vec()).await?;
        let mut batch: Vec<WireEntry> = Vec::new();
        let mut batch_bytes = 0;
        for (key, register) in entries {
            let id = crate::store::record_id(&key);
            if theirs
                .get(&id)
                .is_some_and(|d| register.digest().ok().as_ref() == Some(d))
            {
                continue;
            }
            let entry = WireEntry {
                key: key.into(),
                register,
            };
            let size = frame_len(&entry);
            if !batch.is_empty() && batch_bytes + size > ANNOUNCE_PUSH_BUDGET {
                pushed += batch.len();
                send_push(net, share, peer, std::mem::take(&mut batch), counters).await?;
                batch_bytes = 0;
            }
            batch_bytes += size;
            batch.push(entry);
        }
        if !batch.is_empty() {
            pushed += batch.len();
            send_push(net, share, peer, batch, counters).await?;
        }
    }
    Ok(pushed)
}

/// Announces our root to the peer with `entries`; with none, the peer runs a session of its own
/// if its root differs, and pulls what it lacks.
async fn send_push(
    net: &NetClient,
    share: &ShareState,
    peer: PeerId,
    entries: Vec<WireEntry>,
    counters: &mut Counters,
) -> Result<(), SessionError> {
    let (root, count) = {
        let summary = share.summary.read().expect("summary lock");
        (summary.root(), summary.len())
    };
    counters
        .request(
            net,
            peer,
            Request::Announce {
                share: serde_bytes::ByteArray::new(share.meta.id),
                root: serde_bytes::ByteArray::new(root),
                count,
                entries,
            },
        )
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::{Hlc, Payload, PeerKey, RecordRegister};

    fn entry(key: &str) -> (Id, WireEntry) {
        let mut register = RecordRegister::new();
        let peer = libp2p::PeerId::random();
        register
            .write_local(
                &PeerKey::new(peer.to_bytes()).unwrap(),
                Hlc::new(1, 0),
                Payload::Value(serde_bytes::ByteBuf::from(key.as_bytes().to_vec())),
            )
            .unwrap();
        let entry = WireEntry {
            key: serde_bytes::ByteBuf::from(key.as_bytes().to_vec()),
            register,
        };
        (crate::store::record_id(key.as_bytes()), entry)
    }

    #[test]
    fn only_the_pulled_entries_we_offer_are_remembered() {
        let pulled: Vec<(Id, WireEntry)> = ["a", "b", "c", "d"].into_iter().map(entry).collect();
        let (got, entries): (Vec<Id>, Vec<WireEntry>) = pulled.into_iter().unzip();
        let mut offer = vec![got[1], got[3], crate::store::record_id(b"not pulled")];
        offer.sort_unstable();
        let mut theirs = std::collections::HashMap::new();
        remember_offered(&mut theirs, &offer, &got, &entries);
        let mut remembered: Vec<Id> = theirs.keys().copied().collect();
        remembered.sort_unstable();
        let mut expected = vec![got[1], got[3]];
        expected.sort_unstable();
        assert_eq!(remembered, expected);
        assert_eq!(theirs[&got[1]], entries[1].register.digest().unwrap());
        // A first sync offers nothing: nothing is held for the session.
        let mut theirs = std::collections::HashMap::new();
        remember_offered(&mut theirs, &[], &got, &entries);
        assert!(theirs.is_empty());
    }

    #[test]
    fn the_ids_that_arrived_are_no_longer_wanted() {
        let ids: Vec<Id> = (0u8..10).map(|i| crate::store::record_id(&[i])).collect();
        let mut wanted = ids.clone();
        // Answers come in any order and may leave some out.
        let got = vec![ids[7], ids[0], ids[3]];
        forget_arrived(&mut wanted, &got);
        let expected: Vec<Id> = [1, 2, 4, 5, 6, 8, 9].iter().map(|&i| ids[i]).collect();
        assert_eq!(wanted, expected, "the rest, in their order");
    }
}
