//! Telling members that a share changed, in batches.
//!
//! Store changes are collected for [`ANNOUNCE_DELAY`], then each changed share's new summary
//! root goes to each of its members, with the changed entries themselves when they are few
//! (within [`ANNOUNCE_PUSH_BUDGET`] and [`MAX_ENTRIES_PER_MESSAGE`]); a member whose root still
//! differs reconciles. Changes that all came from one member are not announced back to it: it
//! has them, and during a first sync every batch it sent started a session of its own with us
//! (one every ~0.2 s, for nothing). At most [`MAX_ANNOUNCES_IN_FLIGHT`] announcements are out at once. A
//! member an announcement did not reach (skipped while it had
//! [`MAX_ANNOUNCES_IN_FLIGHT_PER_MEMBER`] out, or failed while it stayed connected) is owed
//! one: the next anti-entropy round, brought within
//! [`super::schedule::ANTI_ENTROPY_INTERVAL`], reconciles with it. A read-only member announces
//! nothing: nobody takes its entries.
//!
//! [`AnnounceBatcher`] is the pure part (what is pending, when to flush, the in-flight bound),
//! generic over the change it holds so it is unit-tested without a store.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use libp2p::PeerId;
use tokio::sync::broadcast;
use tokio::time::Instant;

use super::{EngineActor, TaskResult};
use crate::net::protocol::{
    ANNOUNCE_PUSH_BUDGET, MAX_ENTRIES_PER_MESSAGE, NOT_A_MEMBER, Request, Response, WireEntry,
    frame_len,
};
use crate::store::{Change, Origin, ShareId};

/// How long changes are collected before they are announced: short enough that a change reaches
/// a LAN peer in milliseconds, long enough that a burst of writes becomes one message.
pub const ANNOUNCE_DELAY: Duration = Duration::from_millis(3);
/// Most announcements in flight at once; beyond it members catch up by reconciliation.
pub const MAX_ANNOUNCES_IN_FLIGHT: usize = 64;
/// Most announcements in flight to one member: a member that does not answer (frozen, cut
/// off) is skipped beyond it, and never takes more than half the slots; it catches up by
/// reconciliation when it is back. (4 cost a fifth of the records throughput: announcements
/// of a burst of writes were skipped for reconciliation.)
pub const MAX_ANNOUNCES_IN_FLIGHT_PER_MEMBER: usize = 32;

/// Changes waiting to be announced, and the announcements out.
#[derive(Debug)]
pub struct AnnounceBatcher<C> {
    /// Local changes not yet announced, per share, keyed by record key (latest wins).
    pending_push: HashMap<ShareId, HashMap<Vec<u8>, C>>,
    /// Shares whose root must be announced.
    dirty: HashSet<ShareId>,
    /// Of the dirty shares, those whose every change since the last flush was merged from one
    /// member: that member is not told.
    sole_source: HashMap<ShareId, PeerId>,
    flush_at: Option<Instant>,
    in_flight: usize,
    in_flight_to: HashMap<PeerId, usize>,
    /// Members an announcement did not reach, with the share: at most one per member of each
    /// share, taken by the next anti-entropy round.
    owed: HashSet<(PeerId, ShareId)>,
}

impl<C> Default for AnnounceBatcher<C> {
    fn default() -> Self {
        Self {
            pending_push: HashMap::new(),
            dirty: HashSet::new(),
            sole_source: HashMap::new(),
            flush_at: None,
            in_flight: 0,
            in_flight_to: HashMap::new(),
            owed: HashSet::new(),
        }
    }
}

/// What [`AnnounceBatcher::reserve`] decided for one member.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Send it.
    Taken,
    /// This member has [`MAX_ANNOUNCES_IN_FLIGHT_PER_MEMBER`] out: skip it.
    MemberBusy,
    /// Every slot is taken: the share stays dirty, announced again once a slot frees.
    Full,
}

impl<C> AnnounceBatcher<C> {
    /// A share changed; `local` carries the record key and change when it was our own write
    /// (only those are pushed: members already hold what they sent us), `from` the member it
    /// was merged from.
    pub fn changed(
        &mut self,
        share: ShareId,
        local: Option<(Vec<u8>, C)>,
        from: Option<PeerId>,
        now: Instant,
    ) {
        let first = self.dirty.insert(share);
        match from {
            Some(peer) if first => {
                self.sole_source.insert(share, peer);
            }
            Some(peer) if self.sole_source.get(&share) == Some(&peer) => {}
            _ => {
                self.sole_source.remove(&share);
            }
        }
        if let Some((key, change)) = local {
            self.pending_push
                .entry(share)
                .or_default()
                .insert(key, change);
        }
        self.arm(now);
    }

    /// Changes were missed: too many to push one by one, so every share's root is announced
    /// and members reconcile.
    pub fn lagged(&mut self, shares: impl IntoIterator<Item = ShareId>, now: Instant) {
        self.pending_push.clear();
        self.sole_source.clear();
        self.dirty.extend(shares);
        self.arm(now);
    }

    /// When the next flush is due, if any.
    pub fn flush_at(&self) -> Option<Instant> {
        self.flush_at
    }

    /// Takes every dirty share with its pending local changes, and the member all its changes
    /// came from if there is one (not to be told).
    pub fn take_dirty(&mut self) -> Vec<(ShareId, Vec<C>, Option<PeerId>)> {
        self.flush_at = None;
        let dirty: Vec<ShareId> = self.dirty.drain().collect();
        dirty
            .into_iter()
            .map(|share| {
                let pushed = self.pending_push.remove(&share).unwrap_or_default();
                let source = self.sole_source.remove(&share);
                (share, pushed.into_values().collect(), source)
            })
            .collect()
    }

    /// Takes a slot for one announcement of `share` to `member`.
    pub fn reserve(&mut self, share: ShareId, member: PeerId) -> Slot {
        if self.in_flight >= MAX_ANNOUNCES_IN_FLIGHT {
            // Announced again to every member: which of them were told is not kept.
            self.dirty.insert(share);
            self.sole_source.remove(&share);
            return Slot::Full;
        }
        let to = self.in_flight_to.entry(member).or_default();
        if *to >= MAX_ANNOUNCES_IN_FLIGHT_PER_MEMBER {
            return Slot::MemberBusy;
        }
        *to += 1;
        self.in_flight += 1;
        Slot::Taken
    }

    /// An announcement to `member` finished (delivered or not), freeing its slot; a share left
    /// dirty for want of one is flushed again.
    pub fn delivered(&mut self, member: PeerId, now: Instant) {
        self.in_flight -= 1;
        if let Some(to) = self.in_flight_to.get_mut(&member) {
            *to -= 1;
            if *to == 0 {
                self.in_flight_to.remove(&member);
            }
        }
        self.rearm(now);
    }

    /// An announcement of `share` did not reach `member`.
    pub fn owe(&mut self, member: PeerId, share: ShareId) {
        self.owed.insert((member, share));
    }

    /// Takes the members owed an announcement, for the anti-entropy round to reconcile with.
    pub fn take_owed(&mut self) -> Vec<(PeerId, ShareId)> {
        self.owed.drain().collect()
    }

    /// After a flush: schedules another if shares are still dirty and a slot is free (a full
    /// set of slots re-arms when one frees, not every few milliseconds meanwhile).
    pub fn rearm(&mut self, now: Instant) {
        if !self.dirty.is_empty() && self.in_flight < MAX_ANNOUNCES_IN_FLIGHT {
            self.arm(now);
        }
    }

    fn arm(&mut self, now: Instant) {
        if self.flush_at.is_none() {
            self.flush_at = Some(now + ANNOUNCE_DELAY);
        }
    }
}

/// The items to push with an announcement: all of them, or none when together they exceed
/// `budget` bytes or `max_items` (members then reconcile against the root instead).
pub fn fit_push<T>(
    items: impl IntoIterator<Item = T>,
    size: impl Fn(&T) -> usize,
    budget: usize,
    max_items: usize,
) -> Vec<T> {
    let mut out = Vec::new();
    let mut total = 0;
    for item in items {
        total += size(&item);
        out.push(item);
        if total > budget || out.len() > max_items {
            return Vec::new();
        }
    }
    out
}

impl EngineActor {
    /// A store change: remember it for the next announcement.
    pub(super) fn on_change(&mut self, change: Result<Arc<Change>, broadcast::error::RecvError>) {
        let now = Instant::now();
        match change {
            Ok(change) => {
                if let Some(share) = self.store.share(&change.share)
                    && let Some(event) = super::share_events::record_event(&share, &change)
                {
                    self.events.emit(event);
                }
                let (local, from) = match change.origin {
                    Origin::Local => (Some((change.key.clone(), change.clone())), None),
                    Origin::Remote(peer) => (None, Some(peer)),
                };
                self.announce.changed(change.share, local, from, now);
                self.schedule.changed(now);
            }
            Err(broadcast::error::RecvError::Lagged(_)) => {
                let shares = self.store.shares().into_iter().map(|s| s.meta.id);
                self.announce.lagged(shares, now);
                self.schedule.changed(now);
            }
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    /// The batching delay is over: announce every changed share to its members.
    pub(super) fn on_flush(&mut self) {
        for (share, pushed, source) in self.announce.take_dirty() {
            let Some(state) = self.store.share(&share) else {
                continue;
            };
            if !state.meta.writable() {
                // Nobody takes a read-only member's entries, and its root only differs from
                // the writers' by its own edits: announcing would only start useless sessions.
                continue;
            }
            let members = self.roster.members_of(&share);
            if members.is_empty() {
                continue;
            }
            let entries = fit_push(
                pushed.iter().map(|change| WireEntry {
                    key: change.key.clone().into(),
                    register: change.register.clone(),
                }),
                frame_len,
                ANNOUNCE_PUSH_BUDGET,
                MAX_ENTRIES_PER_MESSAGE,
            );
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
            for peer in members.into_iter().filter(|m| Some(*m) != source) {
                match self.announce.reserve(share, peer) {
                    Slot::Taken => {}
                    Slot::MemberBusy => {
                        self.owe_announcement(peer, share);
                        continue;
                    }
                    Slot::Full => break,
                }
                let net = self.net.clone();
                let request = request.clone();
                self.tasks.spawn(async move {
                    let sent = frame_len(&request) as u64;
                    let answer = net.request(peer, request).await;
                    let received = answer.as_ref().map(|r| frame_len(r) as u64).unwrap_or(0);
                    let not_a_member = matches!(
                        &answer,
                        Ok(Response::Error(message)) if message == NOT_A_MEMBER
                    );
                    TaskResult::Announced {
                        share,
                        peer,
                        sent,
                        received,
                        delivered: matches!(answer, Ok(Response::Ack)),
                        not_a_member,
                    }
                });
            }
        }
        self.announce.rearm(Instant::now());
    }

    /// Tells the share's members our latest progress with it, each once per change (a member
    /// that connects is told at once).
    pub(super) fn tell_progress(&mut self, share: ShareId) {
        let members = self.roster.members_of(&share);
        let Some((ours, untold)) = self.progress.to_tell(share, &members) else {
            return;
        };
        for peer in untold {
            let request = Request::Progress {
                share: share.into(),
                root: ours.root.into(),
                files: ours.files,
                bytes: ours.bytes,
            };
            let net = self.net.clone();
            self.tasks.spawn(async move {
                let sent = frame_len(&request) as u64;
                let answer = net.request(peer, request).await;
                let received = answer.as_ref().map(|r| frame_len(r) as u64).unwrap_or(0);
                TaskResult::Told {
                    peer,
                    share,
                    delivered: matches!(answer, Ok(Response::Ack)),
                    sent,
                    received,
                }
            });
        }
    }

    /// An announcement finished.
    pub(super) fn on_announced(
        &mut self,
        (share, peer): (ShareId, PeerId),
        (sent, received): (u64, u64),
        delivered: bool,
        not_a_member: bool,
    ) {
        self.announce.delivered(peer, Instant::now());
        let c = self.counters(share);
        c.bytes_sent += sent;
        c.bytes_received += received;
        if not_a_member {
            self.on_not_a_member(peer, share);
        } else if !delivered && self.roster.is_connected(&peer) {
            // A member that went away reconciles when it is back (as a new member).
            self.owe_announcement(peer, share);
        }
    }

    /// An announcement did not reach `member`: the next anti-entropy round, brought forward,
    /// reconciles with it.
    fn owe_announcement(&mut self, member: PeerId, share: ShareId) {
        self.announce.owe(member, share);
        self.schedule.changed(Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ShareId = [1; 32];
    const B: ShareId = [2; 32];

    #[test]
    fn a_burst_becomes_one_flush_and_the_latest_change_per_key_wins() {
        let mut now = Instant::now();
        let mut batcher = AnnounceBatcher::default();
        let start = now;
        batcher.changed(A, Some((b"k".to_vec(), 1)), None, start);
        now += Duration::from_millis(1);
        batcher.changed(A, Some((b"k".to_vec(), 2)), None, now);
        batcher.changed(B, None, None, now);
        assert_eq!(
            batcher.flush_at(),
            Some(start + ANNOUNCE_DELAY),
            "the first change sets the time"
        );
        let mut due = batcher.take_dirty();
        due.sort();
        assert_eq!(due, vec![(A, vec![2], None), (B, vec![], None)]);
        assert_eq!(batcher.flush_at(), None);
        assert!(batcher.take_dirty().is_empty());
    }

    #[test]
    fn lag_drops_pending_pushes_and_dirties_every_share() {
        let mut batcher = AnnounceBatcher::default();
        let now = Instant::now();
        batcher.changed(A, Some((b"k".to_vec(), 1)), None, now);
        batcher.lagged([A, B], now);
        let mut due = batcher.take_dirty();
        due.sort();
        assert_eq!(due, vec![(A, vec![], None), (B, vec![], None)]);
    }

    /// Changes that all came from one member are not announced back to it; a change from
    /// anywhere else (another member, our own write) is announced to every member.
    #[test]
    fn changes_from_one_member_are_not_announced_back_to_it() {
        let mut batcher: AnnounceBatcher<u8> = AnnounceBatcher::default();
        let now = Instant::now();
        let (p, q) = (PeerId::random(), PeerId::random());
        batcher.changed(A, None, Some(p), now);
        batcher.changed(A, None, Some(p), now);
        batcher.changed(B, None, Some(p), now);
        batcher.changed(B, None, Some(q), now);
        let mut due = batcher.take_dirty();
        due.sort();
        assert_eq!(due, vec![(A, vec![], Some(p)), (B, vec![], None)]);
        batcher.changed(A, None, Some(p), now);
        batcher.changed(A, Some((b"k".to_vec(), 1)), None, now);
        assert_eq!(batcher.take_dirty(), vec![(A, vec![1], None)]);
        // The next flush starts afresh.
        batcher.changed(A, None, Some(q), now);
        assert_eq!(batcher.take_dirty(), vec![(A, vec![], Some(q))]);
    }

    #[test]
    fn in_flight_is_bounded_and_skipped_shares_stay_dirty_without_spinning() {
        let mut batcher: AnnounceBatcher<()> = AnnounceBatcher::default();
        let now = Instant::now();
        let members: Vec<PeerId> = (0..MAX_ANNOUNCES_IN_FLIGHT
            / MAX_ANNOUNCES_IN_FLIGHT_PER_MEMBER)
            .map(|_| PeerId::random())
            .collect();
        for member in &members {
            for _ in 0..MAX_ANNOUNCES_IN_FLIGHT_PER_MEMBER {
                assert_eq!(batcher.reserve(A, *member), Slot::Taken);
            }
        }
        assert_eq!(batcher.reserve(A, PeerId::random()), Slot::Full);
        batcher.rearm(now);
        assert_eq!(
            batcher.flush_at(),
            None,
            "no flush while every slot is taken"
        );
        batcher.delivered(members[0], now);
        assert_eq!(
            batcher.flush_at(),
            Some(now + ANNOUNCE_DELAY),
            "a freed slot flushes the share left dirty"
        );
        assert_eq!(batcher.take_dirty(), vec![(A, vec![], None)]);
        assert_eq!(batcher.reserve(A, members[0]), Slot::Taken);
        batcher.rearm(now);
        assert_eq!(batcher.flush_at(), None, "nothing left dirty");
    }

    #[test]
    fn a_silent_member_never_takes_the_slots_of_the_others() {
        let mut batcher: AnnounceBatcher<()> = AnnounceBatcher::default();
        let (silent, other) = (PeerId::random(), PeerId::random());
        for _ in 0..MAX_ANNOUNCES_IN_FLIGHT_PER_MEMBER {
            assert_eq!(batcher.reserve(A, silent), Slot::Taken);
        }
        for _ in 0..100 {
            assert_eq!(batcher.reserve(A, silent), Slot::MemberBusy);
        }
        assert_eq!(batcher.reserve(A, other), Slot::Taken);
    }

    #[test]
    fn a_member_missed_is_owed_once_per_share_until_the_round_takes_it() {
        let mut batcher: AnnounceBatcher<()> = AnnounceBatcher::default();
        let member = PeerId::random();
        for _ in 0..3 {
            batcher.owe(member, A);
        }
        batcher.owe(member, B);
        let mut owed = batcher.take_owed();
        owed.sort_by_key(|(_, share)| *share);
        assert_eq!(owed, vec![(member, A), (member, B)]);
        assert!(batcher.take_owed().is_empty(), "taken once");
    }

    #[test]
    fn push_is_all_or_nothing() {
        let len = |s: &&str| s.len();
        assert_eq!(fit_push(["ab", "cd"], len, 4, 2), vec!["ab", "cd"]);
        assert!(fit_push(["ab", "cde"], len, 4, 2).is_empty(), "over budget");
        assert!(fit_push(["a", "b", "c"], len, 4, 2).is_empty(), "too many");
        assert!(fit_push(Vec::<&str>::new(), len, 4, 2).is_empty());
    }
}
