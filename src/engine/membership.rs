//! Who may see what: proving share membership to connected peers and checking theirs.
//!
//! Nothing about a share is sent to a peer that has not proved it holds the share's secret, and
//! entries are only taken from members that proved they hold its write key. Each side asks the
//! other (`Auth` with a nonce and a MAC, plus a writer signature when it holds the write key);
//! a check that got no answer while the peer stayed connected is asked again a few times.
//!
//! [`Roster`] is the pure book-keeping (connected peers, members and writers per share, checks in
//! flight and their retries), unit-tested here; the `EngineActor` methods below run the
//! exchanges and act on their outcome.

use std::collections::{HashMap, HashSet};

use libp2p::PeerId;
use tracing::{debug, info};

use super::schedule::{Pair, SyncReason};
use super::{EngineActor, TaskResult};
use crate::net::Reply;
use crate::net::protocol::{AuthProof, Request, Response, frame_len};
use crate::share;
use crate::store::{ShareId, ShareMeta};

/// Membership checks asked again, per peer and share, when the request got no answer while the
/// peer stayed connected.
pub const MAX_AUTH_RETRIES: u32 = 3;

/// What a peer proved about a share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// It holds the secret: it may read.
    Read,
    /// It also holds the write key: its entries are taken.
    Write,
}

/// How a membership check we asked for ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthOutcome {
    /// The peer proved membership, with this access.
    Proved(Access),
    /// It answered, but proved nothing.
    Unproved,
    /// The request got no answer.
    NoAnswer,
}

/// Whose membership check a proof answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Proof {
    /// We asked and the peer proved: it had admitted us before it answered.
    OurAsk,
    /// The peer asked and proved with its ask: it admits us only once it reads our answer.
    TheirAsk,
}

/// What [`Roster::admit`] changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admitted {
    /// The peer was already known with this access.
    Unchanged,
    /// A known member now also proved it may write.
    NowWriter,
    /// A new member.
    NewMember,
}

/// A peer's membership check, as it arrived.
#[derive(Debug, Clone, Copy)]
pub struct AuthAsk {
    /// Its fresh nonce.
    pub nonce: [u8; 32],
    /// Its MAC over both peer ids and the nonce, keyed by the secret of the share it means.
    pub tag: [u8; 32],
    /// Its writer signature, if it holds the write key.
    pub writer: Option<[u8; 64]>,
}

/// Connected peers and what each proved, per share.
#[derive(Debug, Default)]
pub struct Roster {
    connected: HashSet<PeerId>,
    /// Connected peers that proved membership, per share.
    members: HashMap<ShareId, HashSet<PeerId>>,
    /// Members that proved they hold the share's write key: the only peers entries are taken
    /// from.
    writers: HashMap<ShareId, HashSet<PeerId>>,
    auth_in_flight: HashSet<Pair>,
    /// Checks in flight that ask a member again after it refused something as "not a member":
    /// only their "unproved" drops it (an older check's answer may predate its proof).
    rechecks: HashSet<Pair>,
    /// Membership checks asked again after getting no answer, per peer and share.
    auth_retries: HashMap<Pair, u32>,
    /// Members that were connected and are not any more, per share, with when they went
    /// (milliseconds since the Unix epoch); at most [`MAX_GONE_MEMBERS`] per share.
    gone: HashMap<ShareId, HashMap<PeerId, u64>>,
    /// The member each share's latest anti-entropy round picked: the next round takes the one
    /// after it, so every member is reconciled with within as many rounds as there are members
    /// (a random pick missed one member six rounds running once in 64 tries with two).
    last_round: HashMap<ShareId, PeerId>,
}

/// Members remembered per share after they disconnected (the longest gone are forgotten first).
pub const MAX_GONE_MEMBERS: usize = 256;

/// One member of a share as status shows it.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct MemberStatus {
    /// Its peer id.
    pub peer_id: String,
    /// Whether it is connected (and proved membership) now.
    pub connected: bool,
    /// When it was last connected, in milliseconds since the Unix epoch; absent while it is.
    pub last_seen_ms: Option<u64>,
    /// The same time in RFC 3339 (UTC); null while it is connected.
    #[serde(default)]
    pub last_seen: Option<String>,
    /// Its device name, while it is connected and has one (filled in by the API from the
    /// network's view of the peer).
    #[serde(default)]
    pub name: Option<String>,
    /// Percent (0 to 100) of our view of the share the member holds: 100 only when it needs
    /// nothing; null until it has told us its progress (within a second or two of joining).
    #[serde(default)]
    pub completion: Option<f64>,
    /// Files (records, for records shares) of our view it still lacks; null as above.
    #[serde(default)]
    pub needed_files: Option<u64>,
    /// Bytes of content it still has to fetch; null as above.
    #[serde(default)]
    pub needed_bytes: Option<u64>,
}

impl Roster {
    /// The peer is connected (or asked us something, so it must be).
    pub fn connect(&mut self, peer: PeerId) {
        self.connected.insert(peer);
    }

    /// `peer` is no member of `share` any more (it is still connected).
    pub fn remove_member(&mut self, peer: &PeerId, share: &ShareId) {
        for set in [self.members.get_mut(share), self.writers.get_mut(share)]
            .into_iter()
            .flatten()
        {
            set.remove(peer);
        }
    }

    /// Forgets everything about the share's members (it is paused or left).
    pub fn forget_share(&mut self, share: &ShareId) {
        self.members.remove(share);
        self.writers.remove(share);
        self.gone.remove(share);
        self.last_round.remove(share);
        self.auth_in_flight.retain(|(_, s)| s != share);
        self.rechecks.retain(|(_, s)| s != share);
        self.auth_retries.retain(|(_, s), _| s != share);
    }

    /// Whether a member of some share disconnected at or after `since_ms` and is not back.
    pub fn missing_since(&self, since_ms: u64) -> bool {
        self.gone.iter().any(|(share, gone)| {
            gone.iter()
                .any(|(peer, at)| *at >= since_ms && !self.is_member(share, peer))
        })
    }

    /// The peer disconnected at `now_ms`: it is no member of anything any more, and is
    /// remembered as gone from the shares it was a member of.
    pub fn disconnect(&mut self, peer: &PeerId, now_ms: u64) {
        self.connected.remove(peer);
        self.auth_retries.retain(|(p, _), _| p != peer);
        self.rechecks.retain(|(p, _)| p != peer);
        for (share, members) in &mut self.members {
            if members.remove(peer) {
                let gone = self.gone.entry(*share).or_default();
                if gone.len() >= MAX_GONE_MEMBERS
                    && let Some(oldest) = gone.iter().min_by_key(|(_, at)| **at).map(|(p, _)| *p)
                {
                    gone.remove(&oldest);
                }
                gone.insert(*peer, now_ms);
            }
        }
        for writers in self.writers.values_mut() {
            writers.remove(peer);
        }
    }

    /// Every member of the share this daemon knows: connected ones, and those gone since it
    /// started, sorted by peer id.
    #[cfg(test)]
    pub fn member_status(&self, share: &ShareId) -> Vec<MemberStatus> {
        self.member_status_named(share, &mut PeerId::to_string)
            .into_iter()
            .map(|(_, status)| status)
            .collect()
    }

    /// [`Roster::member_status`] with each member's peer id, its text from `name_of` (which
    /// may remember the texts: a peer id's base58 text costs more than the rest of a status).
    pub fn member_status_named(
        &self,
        share: &ShareId,
        name_of: &mut dyn FnMut(&PeerId) -> String,
    ) -> Vec<(PeerId, MemberStatus)> {
        let status = |peer_id: String, last_seen_ms: Option<u64>| MemberStatus {
            peer_id,
            connected: last_seen_ms.is_none(),
            last_seen_ms,
            last_seen: last_seen_ms.map(crate::timefmt::rfc3339_ms),
            name: None,
            completion: None,
            needed_files: None,
            needed_bytes: None,
        };
        let connected = self.members.get(share).into_iter().flatten();
        let gone = self
            .gone
            .get(share)
            .into_iter()
            .flatten()
            .filter(|(peer, _)| !self.is_member(share, peer));
        let mut all: Vec<(PeerId, MemberStatus)> = connected
            .map(|peer| (*peer, None))
            .chain(gone.map(|(peer, at)| (*peer, Some(*at))))
            .map(|(peer, at)| (peer, status(name_of(&peer), at)))
            .collect();
        all.sort_by(|(_, a), (_, b)| a.peer_id.cmp(&b.peer_id));
        all
    }

    /// When a member of the share that is gone was last seen, the latest of them (what
    /// [`Roster::member_status_named`] lists as `last_seen_ms`).
    pub fn last_seen_ms(&self, share: &ShareId) -> Option<u64> {
        self.gone
            .get(share)?
            .iter()
            .filter(|(peer, _)| !self.is_member(share, peer))
            .map(|(_, at)| *at)
            .max()
    }

    /// Whether the peer is a member of the share, or was one before it went (and is still
    /// listed as gone).
    pub fn knows_member(&self, share: &ShareId, peer: &PeerId) -> bool {
        self.is_member(share, peer) || self.gone.get(share).is_some_and(|g| g.contains_key(peer))
    }

    /// Whether the peer is connected.
    pub fn is_connected(&self, peer: &PeerId) -> bool {
        self.connected.contains(peer)
    }

    /// Every connected peer.
    pub fn connected(&self) -> Vec<PeerId> {
        self.connected.iter().copied().collect()
    }

    /// Whether the peer proved membership of the share.
    pub fn is_member(&self, share: &ShareId, peer: &PeerId) -> bool {
        self.members.get(share).is_some_and(|m| m.contains(peer))
    }

    /// Whether the peer proved it may write to the share.
    pub fn is_writer(&self, share: &ShareId, peer: &PeerId) -> bool {
        self.writers.get(share).is_some_and(|m| m.contains(peer))
    }

    /// Whether any connected peer proved membership of the share.
    pub fn has_members(&self, share: &ShareId) -> bool {
        self.members.get(share).is_some_and(|m| !m.is_empty())
    }

    /// The share's members, sorted.
    pub fn members_of(&self, share: &ShareId) -> Vec<PeerId> {
        sorted(self.members.get(share))
    }

    /// The share's writers, sorted.
    pub fn writers_of(&self, share: &ShareId) -> Vec<PeerId> {
        sorted(self.writers.get(share))
    }

    /// Records a proof of membership.
    pub fn admit(&mut self, peer: PeerId, share: ShareId, access: Access) -> Admitted {
        let new_member = self.members.entry(share).or_default().insert(peer);
        let new_writer =
            access == Access::Write && self.writers.entry(share).or_default().insert(peer);
        match (new_member, new_writer) {
            (true, _) => Admitted::NewMember,
            (false, true) => Admitted::NowWriter,
            (false, false) => Admitted::Unchanged,
        }
    }

    /// Drops the share's members (and writers) that `admits` no longer lets in.
    pub fn retain(&mut self, share: &ShareId, admits: impl Fn(&PeerId) -> bool) {
        for set in [self.members.get_mut(share), self.writers.get_mut(share)]
            .into_iter()
            .flatten()
        {
            set.retain(|peer| admits(peer));
        }
    }

    /// One member per share that has any, for an anti-entropy round: the members take turns
    /// in peer-id order, the one after the previous round's pick first.
    pub fn next_round(&mut self) -> Vec<Pair> {
        let mut picks = Vec::new();
        for (share, members) in &self.members {
            let previous = self.last_round.get(share);
            let after = members
                .iter()
                .filter(|peer| previous.is_some_and(|previous| *peer > previous))
                .min();
            if let Some(peer) = after.or_else(|| members.iter().min()) {
                self.last_round.insert(*share, *peer);
                picks.push((*peer, *share));
            }
        }
        picks
    }

    /// Marks a check as asked; false if one is already in flight.
    pub fn begin_auth(&mut self, pair: Pair) -> bool {
        self.auth_in_flight.insert(pair)
    }

    /// A check we asked for ended; true if it should be asked again.
    pub fn auth_done(&mut self, pair: Pair, outcome: AuthOutcome) -> bool {
        self.auth_in_flight.remove(&pair);
        let recheck = self.rechecks.remove(&pair);
        if outcome == AuthOutcome::Unproved && recheck {
            // Asked again after it said "not a member", it cannot prove membership: it
            // paused or left the share.
            self.remove_member(&pair.0, &pair.1);
        }
        match outcome {
            AuthOutcome::Proved(_) => {
                self.auth_retries.remove(&pair);
                false
            }
            AuthOutcome::Unproved => false,
            AuthOutcome::NoAnswer if self.connected.contains(&pair.0) => {
                // Most often the connection it went out on was closed as a duplicate while
                // another one stays up: nothing else would ask again until the peer
                // reconnects, and the two sides would disagree about membership for good.
                let tries = self.auth_retries.entry(pair).or_insert(0);
                *tries += 1;
                *tries <= MAX_AUTH_RETRIES
            }
            AuthOutcome::NoAnswer => false,
        }
    }
}

fn sorted(set: Option<&HashSet<PeerId>>) -> Vec<PeerId> {
    let mut peers: Vec<PeerId> = set.map(|m| m.iter().copied().collect()).unwrap_or_default();
    peers.sort();
    peers
}

impl EngineActor {
    /// Asks the peer to prove membership of the share (and proves ours in the same exchange).
    pub(super) fn start_auth(&mut self, peer: PeerId, share: ShareId) {
        if !self.roster.is_member(&share, &peer) {
            self.ask_membership(peer, share);
        }
    }

    /// Marks the ask just started for `pair` as a re-check of a member (see
    /// [`Roster::auth_done`]).
    fn mark_recheck(&mut self, pair: Pair) {
        self.roster.rechecks.insert(pair);
    }

    /// Asks `peer` to prove membership of `share`, member or not (one ask at a time); false if
    /// no ask was started.
    fn ask_membership(&mut self, peer: PeerId, share: ShareId) -> bool {
        let Some(state) = self.store.share(&share) else {
            return false;
        };
        if !state.meta.admits(&peer) || !self.roster.begin_auth((peer, share)) {
            return false;
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
            let received = response.as_ref().map(|r| frame_len(r) as u64).unwrap_or(0);
            let expected = share::auth_proof(&state.meta.secret, &local, &peer, &nonce);
            let outcome = match response {
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
                    AuthOutcome::Proved(if writer { Access::Write } else { Access::Read })
                }
                Ok(_) => AuthOutcome::Unproved,
                Err(_) => AuthOutcome::NoAnswer,
            };
            TaskResult::Auth {
                peer,
                share,
                outcome,
                sent,
                received,
            }
        });
        true
    }

    /// A membership check we asked for ended.
    pub(super) fn on_auth_done(
        &mut self,
        (peer, share): Pair,
        outcome: AuthOutcome,
        sent: u64,
        received: u64,
    ) {
        let was_member = self.roster.is_member(&share, &peer);
        let again = self.roster.auth_done((peer, share), outcome);
        if was_member && !self.roster.is_member(&share, &peer) {
            self.publish_members();
            if let Some(state) = self.store.share(&share) {
                info!(%peer, share = %state.meta.name, "peer is no longer a member (it paused or left the share)");
            }
        }
        if let AuthOutcome::Proved(access) = outcome {
            let c = self.counters(share);
            c.bytes_sent += sent;
            c.bytes_received += received;
            self.on_member(peer, share, access, Proof::OurAsk);
        } else if again {
            debug!(%peer, "membership check failed to get an answer; asking again");
            self.start_auth(peer, share);
        }
    }

    /// Answers a peer's membership check: proves ours for the share whose secret its tag was
    /// made with (if it is admitted), and records what it proved.
    pub(super) fn answer_auth(
        &mut self,
        peer: PeerId,
        ask: AuthAsk,
        received: u64,
        channel: Reply,
    ) {
        let AuthAsk { nonce, tag, writer } = ask;
        // Its hello answer may still be on the way; a peer that asks is connected.
        self.roster.connect(peer);
        let found = self.store.shares().into_iter().find(|state| {
            let expected = share::auth_tag(&state.meta.secret, &peer, &self.local, &nonce);
            share::macs_equal(&tag, &expected) && state.meta.admits(&peer)
        });
        let Some(state) = found else {
            return self.respond(None, channel, Response::Auth(None));
        };
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
                share::writer_sign(&key, share::Role::Answerer, &peer, &local, &nonce).into()
            }),
        };
        self.counters(meta.id).bytes_received += received;
        self.respond(Some(meta.id), channel, Response::Auth(Some(proof)));
        let access = if is_writer {
            Access::Write
        } else {
            Access::Read
        };
        self.on_member(peer, meta.id, access, Proof::TheirAsk);
    }

    /// The peer proved membership of the share, in answer to our ask or in its own.
    fn on_member(&mut self, peer: PeerId, share: ShareId, access: Access, proof: Proof) {
        if !self.roster.is_connected(&peer) {
            return;
        }
        let Some(state) = self.store.share(&share) else {
            return;
        };
        if !state.meta.admits(&peer) {
            return;
        }
        let admitted = self.roster.admit(peer, share, access);
        if admitted == Admitted::NewMember {
            self.publish_members();
            self.tell_progress(share);
            let role = match access {
                Access::Write => "read-write",
                Access::Read => "read-only",
            };
            info!(%peer, share = %state.meta.name, "peer is a {role} member");
        }
        // One session per new pair is enough (it pulls and pushes). The asker starts it: only
        // the asker knows that both sides admitted the other (the answerer admits before it
        // answers), and an answerer starting one raced the asker's reading of the answer and
        // was refused as "not a member". Where both asked, the smaller id starts it.
        let start = match (proof, admitted) {
            (Proof::OurAsk, Admitted::NewMember | Admitted::NowWriter) => true,
            (Proof::OurAsk, Admitted::Unchanged) | (Proof::TheirAsk, Admitted::NowWriter) => {
                self.local < peer
            }
            (Proof::TheirAsk, _) => false,
        };
        if start {
            self.want_session(peer, share, SyncReason::NewMember);
        }
    }

    /// The peer answered that we are not a member of the share: it paused or left it, or it
    /// has not yet read the proof we answered its own check with (a request of ours can
    /// overtake it). We ask it to prove membership again: if it cannot, it is no member here
    /// either ([`Self::on_auth_done`]); a peer that resumes asks us itself.
    pub(super) fn on_not_a_member(&mut self, peer: PeerId, share: ShareId) {
        if self.roster.is_member(&share, &peer) && self.ask_membership(peer, share) {
            self.mark_recheck((peer, share));
        }
    }

    /// The share's allowlist changed: members no longer admitted stop getting anything at once;
    /// connected peers are asked to prove membership again.
    pub(super) fn on_trust_changed(&mut self, meta: &ShareMeta) {
        self.roster.retain(&meta.id, |peer| meta.admits(peer));
        self.publish_members();
        for peer in self.roster.connected() {
            self.start_auth(peer, meta.id);
        }
    }

    /// Tells the folder actors who they can fetch from.
    pub(super) fn publish_members(&self) {
        for (share, tx) in &self.member_watch {
            let members = self.roster.members_of(share);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    const SHARE: ShareId = [7; 32];

    #[test]
    fn admit_reports_what_changed() {
        let mut roster = Roster::default();
        let peer = PeerId::random();
        roster.connect(peer);
        assert_eq!(roster.admit(peer, SHARE, Access::Read), Admitted::NewMember);
        assert_eq!(roster.admit(peer, SHARE, Access::Read), Admitted::Unchanged);
        assert!(roster.is_member(&SHARE, &peer));
        assert!(!roster.is_writer(&SHARE, &peer));
        assert_eq!(
            roster.admit(peer, SHARE, Access::Write),
            Admitted::NowWriter
        );
        assert!(roster.is_writer(&SHARE, &peer));
        assert_eq!(
            roster.admit(peer, SHARE, Access::Write),
            Admitted::Unchanged
        );
    }

    #[test]
    fn only_a_recheck_that_is_not_proved_drops_a_member() {
        let mut roster = Roster::default();
        let peer = PeerId::random();
        roster.connect(peer);
        // An ask sent before the peer joined comes back unproved after it proved itself.
        assert!(roster.begin_auth((peer, SHARE)));
        roster.admit(peer, SHARE, Access::Write);
        roster.auth_done((peer, SHARE), AuthOutcome::Unproved);
        assert!(
            roster.is_member(&SHARE, &peer),
            "a stale answer drops nobody"
        );
        // Asked again after it said "not a member": unproved now means it left.
        assert!(roster.begin_auth((peer, SHARE)));
        roster.rechecks.insert((peer, SHARE));
        roster.auth_done((peer, SHARE), AuthOutcome::Unproved);
        assert!(!roster.is_member(&SHARE, &peer));
        assert!(!roster.is_writer(&SHARE, &peer));
    }

    #[test]
    fn disconnect_forgets_membership_everywhere() {
        let mut roster = Roster::default();
        let (p, q) = (PeerId::random(), PeerId::random());
        roster.connect(p);
        roster.admit(p, SHARE, Access::Write);
        roster.admit(p, [8; 32], Access::Read);
        roster.admit(q, SHARE, Access::Read);
        roster.disconnect(&p, 1);
        assert!(!roster.is_connected(&p));
        assert!(!roster.is_member(&SHARE, &p));
        assert!(!roster.is_writer(&SHARE, &p));
        assert!(!roster.has_members(&[8; 32]));
        assert_eq!(roster.members_of(&SHARE), vec![q]);
    }

    #[test]
    fn members_are_listed_sorted_and_retain_drops_the_unadmitted() {
        let mut roster = Roster::default();
        let mut peers: Vec<PeerId> = (0..5).map(|_| PeerId::random()).collect();
        for peer in &peers {
            roster.admit(*peer, SHARE, Access::Write);
        }
        peers.sort();
        assert_eq!(roster.members_of(&SHARE), peers);
        let keep = peers[2];
        roster.retain(&SHARE, |p| *p == keep);
        assert_eq!(roster.members_of(&SHARE), vec![keep]);
        assert_eq!(roster.writers_of(&SHARE), vec![keep]);
    }

    #[test]
    fn unanswered_checks_are_retried_a_bounded_number_of_times() {
        let mut roster = Roster::default();
        let peer = PeerId::random();
        let pair = (peer, SHARE);
        roster.connect(peer);
        for _ in 0..MAX_AUTH_RETRIES {
            assert!(roster.begin_auth(pair));
            assert!(!roster.begin_auth(pair), "one check in flight at a time");
            assert!(roster.auth_done(pair, AuthOutcome::NoAnswer));
        }
        assert!(roster.begin_auth(pair));
        assert!(
            !roster.auth_done(pair, AuthOutcome::NoAnswer),
            "retries spent"
        );
        roster.disconnect(&peer, 1);
        roster.connect(peer);
        assert!(roster.begin_auth(pair));
        assert!(
            roster.auth_done(pair, AuthOutcome::NoAnswer),
            "a reconnect starts afresh"
        );
    }

    #[test]
    fn members_that_went_are_listed_with_when() {
        let mut roster = Roster::default();
        let share = [1; 32];
        let (stays, goes) = (PeerId::random(), PeerId::random());
        for peer in [stays, goes] {
            roster.connect(peer);
            roster.admit(peer, share, Access::Read);
        }
        roster.disconnect(&goes, 42);
        let listed = roster.member_status(&share);
        assert_eq!(listed.len(), 2);
        let of = |peer: PeerId| {
            listed
                .iter()
                .find(|m| m.peer_id == peer.to_string())
                .cloned()
                .unwrap()
        };
        assert_eq!((of(stays).connected, of(stays).last_seen_ms), (true, None));
        assert_eq!(
            (of(goes).connected, of(goes).last_seen_ms),
            (false, Some(42))
        );
        roster.connect(goes);
        roster.admit(goes, share, Access::Read);
        assert!(roster.member_status(&share).iter().all(|m| m.connected));
    }

    #[test]
    fn no_retry_when_disconnected_or_answered() {
        let mut roster = Roster::default();
        let peer = PeerId::random();
        let pair = (peer, SHARE);
        assert!(
            !roster.auth_done(pair, AuthOutcome::NoAnswer),
            "not connected"
        );
        roster.connect(peer);
        assert!(!roster.auth_done(pair, AuthOutcome::Unproved));
        assert!(!roster.auth_done(pair, AuthOutcome::Proved(Access::Read)));
    }

    #[test]
    fn anti_entropy_picks_one_member_per_share_with_members() {
        let mut roster = Roster::default();
        let (p, q) = (PeerId::random(), PeerId::random());
        roster.admit(p, SHARE, Access::Read);
        roster.admit(q, SHARE, Access::Read);
        roster.admit(p, [8; 32], Access::Read);
        roster.disconnect(&p, 1);
        let picks = roster.next_round();
        assert_eq!(picks, vec![(q, SHARE)], "the share left empty is skipped");
    }

    #[test]
    fn anti_entropy_rounds_take_every_member_in_turn() {
        let mut roster = Roster::default();
        let mut peers: Vec<PeerId> = (0..4).map(|_| PeerId::random()).collect();
        for peer in &peers[..3] {
            roster.admit(*peer, SHARE, Access::Read);
        }
        let picked = |roster: &mut Roster| {
            let picks = roster.next_round();
            assert_eq!(picks.len(), 1);
            picks[0].0
        };
        let first: Vec<PeerId> = (0..3).map(|_| picked(&mut roster)).collect();
        let mut expected = peers[..3].to_vec();
        expected.sort();
        assert_eq!(first, expected, "each member once, in order");
        assert_eq!(
            picked(&mut roster),
            expected[0],
            "then from the start again"
        );

        // A member that joins or goes meanwhile changes nothing for the others' turns.
        roster.admit(peers[3], SHARE, Access::Read);
        roster.disconnect(&expected[1], 1);
        peers.retain(|peer| *peer != expected[1]);
        peers.sort();
        let after = peers.iter().position(|peer| *peer == expected[0]).unwrap();
        let next: Vec<PeerId> = (0..3).map(|_| picked(&mut roster)).collect();
        let turns: Vec<PeerId> = (1..=3).map(|i| peers[(after + i) % 3]).collect();
        assert_eq!(next, turns);

        roster.forget_share(&SHARE);
        assert!(roster.next_round().is_empty());
        assert!(
            roster.last_round.is_empty(),
            "nothing kept for a forgotten share"
        );
    }
}
