//! When to run reconciliation sessions, and with which member: the engine's timetable.
//!
//! Pure state with no I/O (like [`crate::net::peers`]), so the rules are unit-tested without
//! sockets or a running engine: one session per share at a time, unless it has been running
//! for [`SESSION_SOLO`] (then up to [`MAX_SESSIONS_PER_SHARE`], each with another member), and
//! [`MAX_CONCURRENT_SESSIONS`] in all, a session asked for while its pair runs runs once more
//! afterwards, failed sessions back off exponentially, and the periodic rounds (anti-entropy and
//! DHT lookups) fall due on their own clocks; anti-entropy rounds come less often while nothing
//! changes. The engine asks it what to do and tells it what
//! happened; it starts the sessions and lookups itself. It never reads a clock: every call that
//! depends on time takes `now`, so tests step time by hand (no paused runtime needed) and the
//! engine passes [`tokio::time::Instant::now`], which a paused runtime controls.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use libp2p::PeerId;
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::store::ShareId;

/// Pause between anti-entropy rounds (a session with the next member in turn of each share, and with
/// each member an announcement of ours did not reach) after any change: the store's, a session
/// that moved entries, an announcement that went astray. It doubles at every round up to
/// [`ANTI_ENTROPY_QUIET`] while nothing changes.
pub const ANTI_ENTROPY_INTERVAL: Duration = Duration::from_secs(10);
/// Longest pause between anti-entropy rounds, reached after about two and a half minutes without
/// a change. Announcements carry every change; the rounds only catch one that went astray
/// unnoticed, and in a quiet mesh every round is a session at both ends for nothing (at 10 s,
/// 0.8 % of one core over a 32-daemon mesh, measured by switching the rounds off, 2026-12-04).
pub const ANTI_ENTROPY_QUIET: Duration = Duration::from_secs(80);
/// Pause between DHT lookups for other members of our shares (each refreshes our provider
/// record, looks up the share's providers and dials its seed addresses) while a member that
/// went missing within [`MISSING_LATELY`] is not back; also how often that is checked.
pub const PROVIDER_LOOKUP_INTERVAL: Duration = Duration::from_secs(60);
/// Pause between those lookups while every member met lately is connected: they then only
/// refresh our provider record (which the DHT keeps for 48 h) and meet newcomers, which look
/// for us themselves. A lookup asks about 20 peers for each share; every 60 s over a
/// 32-daemon mesh that was 3 % of a core in all, for nothing.
pub const PROVIDER_LOOKUP_QUIET: Duration = Duration::from_secs(600);
/// How long a member that went away is looked for every [`PROVIDER_LOOKUP_INTERVAL`]; after
/// that, every [`PROVIDER_LOOKUP_QUIET`] (a retired device is not searched for all day).
pub const MISSING_LATELY: Duration = Duration::from_secs(3600);
/// First pause between DHT lookups for a share with no member connected (a provider record
/// may not have reached the DHT yet when the share is joined); doubles up to
/// [`PROVIDER_LOOKUP_INTERVAL`].
pub const LONELY_LOOKUP_MIN: Duration = Duration::from_secs(1);
/// Most reconciliation sessions this node runs at once, over all shares.
pub const MAX_CONCURRENT_SESSIONS: usize = 16;
/// How long a share's session has the share to itself: a second session would mostly pull the
/// same entries from another member. Past this, sessions with other members may run beside
/// it (a member that stopped answering must not hold up the others until its requests time
/// out), up to [`MAX_SESSIONS_PER_SHARE`].
pub const SESSION_SOLO: Duration = Duration::from_secs(5);
/// Most sessions one share runs at once, each with another member.
pub const MAX_SESSIONS_PER_SHARE: usize = 4;
/// First wait before retrying a failed session; doubles per failure in a row.
pub const SESSION_RETRY_MIN: Duration = Duration::from_secs(1);
/// Longest wait before retrying a failed session.
pub const SESSION_RETRY_MAX: Duration = Duration::from_secs(30);

/// A member and a share: the unit sessions are scheduled by.
pub type Pair = (PeerId, ShareId);

/// Why a session is wanted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncReason {
    /// The peer just proved membership of the share (or that it may write).
    NewMember,
    /// The member announced a summary root that differs from ours.
    RootDiffers,
    /// Entries the member pushed were merged, and the roots still differ.
    MergedButDiffers,
    /// Asked for while a session with the same pair was running.
    AskedWhileRunning,
    /// The previous session stopped before it had brought everything over.
    Incomplete,
    /// The backoff after a failed session is over.
    Retry,
    /// The periodic anti-entropy round picked this member.
    AntiEntropy,
    /// An announcement of ours did not reach the member (see [`super::announce`]); the
    /// anti-entropy round reconciles with it.
    AnnouncementMissed,
}

/// What [`Schedule::admit`] decided about a wanted session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// Nothing stands in the way: the caller may start it (and then calls
    /// [`Schedule::started`]).
    Start,
    /// A session with this pair is running; it runs once more when that one ends.
    Rerun,
    /// The share is busy or every slot is taken; it waits in the queue.
    Queued,
}

/// How a session ended, as far as the timetable cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It failed (network error, timeout, bad answer).
    Failed,
    /// It brought the pair in sync.
    Complete,
    /// It stopped early (a bound was reached) and there is more to do.
    Incomplete,
}

/// Whether the member of a finished session is still connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    /// Still connected: a failure is retried.
    Connected,
    /// Gone: nothing to retry until it comes back.
    Gone,
}

/// What to do after a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterSession {
    /// It failed; a retry is due after this wait (recorded only if the member is connected).
    Failed {
        /// The backoff before the retry.
        backoff: Duration,
    },
    /// Run it again now, for this reason.
    Again(SyncReason),
    /// Nothing more to do for this pair.
    Done,
}

/// A running session.
#[derive(Debug, Clone, Copy)]
struct Running {
    /// Set when it was asked for again while running.
    rerun: Option<SyncReason>,
    /// When it started.
    started: Instant,
}

/// A failed pair waiting to be retried.
#[derive(Debug, Clone, Copy)]
struct Retry {
    at: Instant,
    /// The waits of its failures in a row.
    backoff: Backoff,
}

/// The waits between retries of a pair that keeps failing.
pub fn retry_backoff() -> Backoff {
    Backoff::new(SESSION_RETRY_MIN, SESSION_RETRY_MAX)
}

/// The first lonely lookup, [`LONELY_LOOKUP_MIN`] from `now`, and the pauses after it: twice
/// that, and doubling up to [`PROVIDER_LOOKUP_INTERVAL`].
fn lonely_lookups(now: Instant) -> (Instant, Backoff) {
    let mut pauses = Backoff::new(LONELY_LOOKUP_MIN, PROVIDER_LOOKUP_INTERVAL);
    pauses.next();
    (now + LONELY_LOOKUP_MIN, pauses)
}

/// The engine's session timetable.
#[derive(Debug)]
pub struct Schedule {
    running: HashMap<Pair, Running>,
    /// Sessions waiting for their share or a slot to become free, oldest first.
    wanted: VecDeque<(Pair, SyncReason)>,
    /// Failed pairs: when to retry, and the waits of their failures in a row.
    retry: HashMap<Pair, Retry>,
    /// When the next anti-entropy round is due, and the pauses after it.
    anti_entropy: (Instant, Backoff),
    next_provider_lookup: Instant,
    /// When the last provider lookup ran.
    last_provider_lookup: Option<Instant>,
    /// When to look up members of shares that have none connected, and the pauses after that.
    lonely_lookup: (Instant, Backoff),
}

impl Schedule {
    /// A fresh timetable: the first provider lookup is due at once, the first lonely lookup after
    /// [`LONELY_LOOKUP_MIN`], the first anti-entropy round after [`ANTI_ENTROPY_INTERVAL`].
    pub fn new(now: Instant) -> Self {
        let mut anti_entropy_pauses = Backoff::new(ANTI_ENTROPY_INTERVAL, ANTI_ENTROPY_QUIET);
        Self {
            running: HashMap::new(),
            wanted: VecDeque::new(),
            retry: HashMap::new(),
            anti_entropy: (now + anti_entropy_pauses.next(), anti_entropy_pauses),
            next_provider_lookup: now,
            last_provider_lookup: None,
            lonely_lookup: lonely_lookups(now),
        }
    }

    /// Decides about a wanted session. Only [`Admission::Start`] leaves it to the caller, who
    /// may still drop it (the peer is no member any more, or nothing may flow).
    pub fn admit(&mut self, pair: Pair, reason: SyncReason, now: Instant) -> Admission {
        if let Some(running) = self.running.get_mut(&pair) {
            running.rerun = Some(reason);
            return Admission::Rerun;
        }
        // One session per share at a time while it is young: while one brings the share up to
        // date from one member, starting another would pull the same entries again from the
        // next member. The queued one runs afterwards, and costs one round trip if nothing
        // differs by then; or beside it once it has run for SESSION_SOLO.
        let of_share: Vec<&Running> = self
            .running
            .iter()
            .filter(|((_, s), _)| *s == pair.1)
            .map(|(_, r)| r)
            .collect();
        let share_busy = of_share.len() >= MAX_SESSIONS_PER_SHARE
            || of_share
                .iter()
                .any(|r| now.duration_since(r.started) < SESSION_SOLO);
        if share_busy || self.running.len() >= MAX_CONCURRENT_SESSIONS {
            if !self.wanted.iter().any(|(p, _)| *p == pair) {
                self.wanted.push_back((pair, reason));
            }
            return Admission::Queued;
        }
        Admission::Start
    }

    /// A session admitted with [`Admission::Start`] was started.
    pub fn started(&mut self, pair: Pair, now: Instant) {
        self.running.insert(
            pair,
            Running {
                rerun: None,
                started: now,
            },
        );
    }

    /// Sessions running now.
    pub fn running(&self) -> usize {
        self.running.len()
    }

    /// Whether a session of `share` runs or waits to run.
    pub fn busy_with(&self, share: &ShareId) -> bool {
        self.running.keys().any(|(_, s)| s == share)
            || self.wanted.iter().any(|((_, s), _)| s == share)
    }

    /// A session ended: records a failure for backoff, or says whether to run it again.
    pub fn finished(
        &mut self,
        pair: Pair,
        outcome: Outcome,
        presence: Presence,
        now: Instant,
    ) -> AfterSession {
        let rerun = self.running.remove(&pair).and_then(|r| r.rerun);
        match outcome {
            Outcome::Failed => {
                let mut waits = self
                    .retry
                    .get(&pair)
                    .map_or_else(retry_backoff, |r| r.backoff);
                let backoff = waits.next();
                if presence == Presence::Connected {
                    let at = now + backoff;
                    self.retry.insert(pair, Retry { at, backoff: waits });
                }
                AfterSession::Failed { backoff }
            }
            Outcome::Complete | Outcome::Incomplete => {
                self.retry.remove(&pair);
                match (rerun, outcome) {
                    (Some(reason), _) => AfterSession::Again(reason),
                    (None, Outcome::Incomplete) => AfterSession::Again(SyncReason::Incomplete),
                    (None, _) => AfterSession::Done,
                }
            }
        }
    }

    /// Takes every queued session, oldest first, to be admitted again.
    pub fn take_wanted(&mut self) -> Vec<(Pair, SyncReason)> {
        self.wanted.drain(..).collect()
    }

    /// Failed pairs whose backoff is over. Each keeps its failure count, and its next retry is
    /// pushed out by [`SESSION_RETRY_MAX`] until its session reports.
    pub fn due_retries(&mut self, now: Instant) -> Vec<Pair> {
        let mut due = Vec::new();
        for (pair, retry) in &mut self.retry {
            if retry.at <= now {
                retry.at = now + SESSION_RETRY_MAX;
                due.push(*pair);
            }
        }
        due
    }

    /// The member disconnected: its retries and queued sessions are dropped.
    pub fn forget_peer(&mut self, peer: &PeerId) {
        self.retry.retain(|(p, _), _| p != peer);
        self.wanted.retain(|((p, _), _)| p != peer);
    }

    /// A share was added: look for its members soon, and often at first.
    pub fn share_added(&mut self, now: Instant) {
        self.lonely_lookup = lonely_lookups(now);
    }

    /// True when an anti-entropy round is due: [`ANTI_ENTROPY_INTERVAL`] after the last change,
    /// then at pauses doubling up to [`ANTI_ENTROPY_QUIET`].
    pub fn anti_entropy_due(&mut self, now: Instant) -> bool {
        if now < self.anti_entropy.0 {
            return false;
        }
        self.anti_entropy.0 = now + self.anti_entropy.1.next();
        true
    }

    /// Something changed (see [`ANTI_ENTROPY_INTERVAL`]): the next anti-entropy round comes
    /// within [`ANTI_ENTROPY_INTERVAL`], and the rounds after it at the shortest pauses again.
    pub fn changed(&mut self, now: Instant) {
        self.anti_entropy.1.reset();
        let first = self.anti_entropy.1.next();
        self.anti_entropy.0 = self.anti_entropy.0.min(now + first);
    }

    /// True when shares without a connected member should be looked up; the pause after it
    /// doubles up to [`PROVIDER_LOOKUP_INTERVAL`].
    pub fn lonely_lookup_due(&mut self, now: Instant) -> bool {
        if now < self.lonely_lookup.0 {
            return false;
        }
        let pause = self.lonely_lookup.1.next();
        self.lonely_lookup.0 = now + pause;
        true
    }

    /// Whether it is time to refresh every share's provider record and look for its members:
    /// once per [`PROVIDER_LOOKUP_INTERVAL`] while `members_missing` (a member went away
    /// lately and is not back), else once per [`PROVIDER_LOOKUP_QUIET`].
    pub fn provider_lookup_due(&mut self, now: Instant, members_missing: bool) -> bool {
        if now < self.next_provider_lookup {
            return false;
        }
        self.next_provider_lookup = now + PROVIDER_LOOKUP_INTERVAL;
        let quiet_over = self
            .last_provider_lookup
            .is_none_or(|at| now.saturating_duration_since(at) >= PROVIDER_LOOKUP_QUIET);
        if !members_missing && !quiet_over {
            return false;
        }
        self.last_provider_lookup = Some(now);
        true
    }

    /// When the next timer falls due (a round, a retry, or a queued session whose share's
    /// running session stops having it to itself), after `now`.
    pub fn next_wake(&self, now: Instant) -> Instant {
        let rounds = self
            .anti_entropy
            .0
            .min(self.next_provider_lookup)
            .min(self.lonely_lookup.0);
        let solo_ends = self
            .running
            .iter()
            .filter(|((_, share), _)| self.wanted.iter().any(|((_, s), _)| s == share))
            .map(|(_, r)| r.started + SESSION_SOLO)
            .filter(|at| *at > now);
        self.retry
            .values()
            .map(|r| r.at)
            .chain(solo_ends)
            .fold(rounds, Instant::min)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pair(peer: &PeerId, share: u8) -> Pair {
        (*peer, [share; 32])
    }

    #[test]
    fn one_session_per_pair_and_a_rerun_when_asked_while_running() {
        let now = Instant::now();
        let mut schedule = Schedule::new(now);
        let a = pair(&PeerId::random(), 1);
        assert_eq!(
            schedule.admit(a, SyncReason::NewMember, now),
            Admission::Start
        );
        schedule.started(a, now);
        assert_eq!(
            schedule.admit(a, SyncReason::RootDiffers, now),
            Admission::Rerun
        );
        assert_eq!(
            schedule.finished(a, Outcome::Complete, Presence::Connected, now),
            AfterSession::Again(SyncReason::RootDiffers)
        );
        assert_eq!(schedule.running(), 0);
        assert_eq!(
            schedule.admit(a, SyncReason::RootDiffers, now),
            Admission::Start
        );
        schedule.started(a, now);
        assert_eq!(
            schedule.finished(a, Outcome::Complete, Presence::Connected, now),
            AfterSession::Done,
            "no rerun unless asked again"
        );
    }

    #[test]
    fn incomplete_session_runs_again() {
        let now = Instant::now();
        let mut schedule = Schedule::new(now);
        let a = pair(&PeerId::random(), 1);
        schedule.started(a, now);
        assert_eq!(
            schedule.finished(a, Outcome::Incomplete, Presence::Connected, now),
            AfterSession::Again(SyncReason::Incomplete)
        );
    }

    #[test]
    fn one_session_per_share_others_queue_once() {
        let now = Instant::now();
        let mut schedule = Schedule::new(now);
        let (p, q) = (PeerId::random(), PeerId::random());
        schedule.started(pair(&p, 1), now);
        assert_eq!(
            schedule.admit(pair(&q, 1), SyncReason::NewMember, now),
            Admission::Queued
        );
        assert_eq!(
            schedule.admit(pair(&q, 1), SyncReason::AntiEntropy, now),
            Admission::Queued
        );
        assert_eq!(
            schedule.admit(pair(&q, 2), SyncReason::NewMember, now),
            Admission::Start,
            "another share is free"
        );
        assert_eq!(
            schedule.take_wanted(),
            vec![(pair(&q, 1), SyncReason::NewMember)],
            "queued once, with the first reason"
        );
        assert!(schedule.take_wanted().is_empty());
    }

    #[test]
    fn a_long_session_lets_other_members_of_its_share_run_beside_it() {
        let t0 = Instant::now();
        let mut schedule = Schedule::new(t0);
        let m: Vec<PeerId> = (0..=MAX_SESSIONS_PER_SHARE)
            .map(|_| PeerId::random())
            .collect();
        let admit = |s: &mut Schedule, i: usize, at: Instant| {
            s.admit(pair(&m[i], 1), SyncReason::RootDiffers, at)
        };
        schedule.started(pair(&m[0], 1), t0);
        assert_eq!(
            admit(&mut schedule, 1, t0),
            Admission::Queued,
            "the share is young"
        );
        assert!(schedule.next_wake(t0) <= t0 + SESSION_SOLO);
        schedule.take_wanted();
        let later = t0 + SESSION_SOLO;
        assert_eq!(admit(&mut schedule, 1, later), Admission::Start);
        schedule.started(pair(&m[1], 1), later);
        assert_eq!(
            admit(&mut schedule, 2, later),
            Admission::Queued,
            "the second session is young now"
        );
        schedule.take_wanted();
        let much_later = later + SESSION_SOLO;
        for (i, member) in m.iter().enumerate().take(MAX_SESSIONS_PER_SHARE).skip(2) {
            assert_eq!(admit(&mut schedule, i, much_later), Admission::Start);
            schedule.started(pair(member, 1), much_later - SESSION_SOLO);
        }
        assert_eq!(
            admit(&mut schedule, MAX_SESSIONS_PER_SHARE, much_later),
            Admission::Queued,
            "bounded per share"
        );
    }

    #[test]
    fn slots_are_bounded() {
        let now = Instant::now();
        let mut schedule = Schedule::new(now);
        let peer = PeerId::random();
        for share in 0..MAX_CONCURRENT_SESSIONS as u8 {
            let p = pair(&peer, share);
            assert_eq!(
                schedule.admit(p, SyncReason::NewMember, now),
                Admission::Start
            );
            schedule.started(p, now);
        }
        let extra = pair(&peer, 200);
        assert_eq!(
            schedule.admit(extra, SyncReason::NewMember, now),
            Admission::Queued
        );
        schedule.finished(pair(&peer, 0), Outcome::Complete, Presence::Connected, now);
        let waiting = schedule.take_wanted();
        assert_eq!(waiting, vec![(extra, SyncReason::NewMember)]);
        assert_eq!(
            schedule.admit(extra, SyncReason::NewMember, now),
            Admission::Start
        );
    }

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut waits = retry_backoff();
        assert_eq!(waits.next(), SESSION_RETRY_MIN);
        assert_eq!(waits.next(), SESSION_RETRY_MIN * 2);
        for _ in 0..40 {
            waits.next();
        }
        assert_eq!(waits.next(), SESSION_RETRY_MAX);
    }

    #[test]
    fn failed_session_is_retried_after_backoff_and_keeps_its_count() {
        let mut now = Instant::now();
        let mut schedule = Schedule::new(now);
        now += LONELY_LOOKUP_MIN;
        assert!(schedule.provider_lookup_due(now, false) && schedule.lonely_lookup_due(now));
        let a = pair(&PeerId::random(), 1);
        schedule.started(a, now);
        let first = schedule.finished(a, Outcome::Failed, Presence::Connected, now);
        assert_eq!(
            first,
            AfterSession::Failed {
                backoff: SESSION_RETRY_MIN
            }
        );
        assert_eq!(schedule.next_wake(now), now + SESSION_RETRY_MIN);
        assert!(schedule.due_retries(now).is_empty());

        now += SESSION_RETRY_MIN;
        assert_eq!(schedule.due_retries(now), vec![a]);
        assert!(
            schedule.due_retries(now).is_empty(),
            "pushed out until the session reports"
        );
        schedule.started(a, now);
        let second = schedule.finished(a, Outcome::Failed, Presence::Connected, now);
        assert_eq!(
            second,
            AfterSession::Failed {
                backoff: SESSION_RETRY_MIN * 2
            }
        );

        now += SESSION_RETRY_MIN * 2;
        assert_eq!(schedule.due_retries(now), vec![a]);
        schedule.started(a, now);
        schedule.finished(a, Outcome::Complete, Presence::Connected, now);
        now += SESSION_RETRY_MAX;
        assert!(schedule.due_retries(now).is_empty(), "success clears it");
    }

    #[test]
    fn no_retry_for_a_member_that_left() {
        let mut now = Instant::now();
        let mut schedule = Schedule::new(now);
        let peer = PeerId::random();
        let (a, b) = (pair(&peer, 1), pair(&peer, 2));
        schedule.started(a, now);
        schedule.finished(a, Outcome::Failed, Presence::Gone, now);
        schedule.started(b, now);
        schedule.finished(b, Outcome::Failed, Presence::Connected, now);
        schedule.forget_peer(&peer);
        now += SESSION_RETRY_MAX;
        assert!(schedule.due_retries(now).is_empty());
    }

    /// Steps time a second at a time from `now` until an anti-entropy round is due; the pause.
    fn next_round(schedule: &mut Schedule, now: &mut Instant) -> Duration {
        let from = *now;
        loop {
            *now += Duration::from_secs(1);
            if schedule.anti_entropy_due(*now) {
                return *now - from;
            }
            assert!(
                *now - from <= ANTI_ENTROPY_QUIET,
                "no round within the longest pause"
            );
        }
    }

    #[test]
    fn anti_entropy_rounds_back_off_while_quiet_and_return_after_a_change() {
        let mut now = Instant::now();
        let mut schedule = Schedule::new(now);
        let quiet: Vec<u64> = (0..6)
            .map(|_| next_round(&mut schedule, &mut now).as_secs())
            .collect();
        assert_eq!(quiet, [10, 20, 40, 80, 80, 80]);

        // A change 5 s into an 80 s pause: the next round 10 s after it, then short pauses again.
        now += Duration::from_secs(5);
        schedule.changed(now);
        let after: Vec<u64> = (0..3)
            .map(|_| next_round(&mut schedule, &mut now).as_secs())
            .collect();
        assert_eq!(after, [10, 20, 40]);

        // A change just before a round is due does not put the round off.
        now += Duration::from_secs(79);
        schedule.changed(now);
        assert_eq!(next_round(&mut schedule, &mut now).as_secs(), 1);
    }

    #[test]
    fn rounds_fall_due_on_their_own_clocks() {
        let mut now = Instant::now();
        let start = now;
        let mut schedule = Schedule::new(start);
        assert!(
            schedule.provider_lookup_due(start, false),
            "first lookup at once"
        );
        assert!(!schedule.provider_lookup_due(start, true));
        assert!(!schedule.anti_entropy_due(start));
        assert_eq!(schedule.next_wake(start), start + LONELY_LOOKUP_MIN);

        now += LONELY_LOOKUP_MIN;
        assert!(schedule.lonely_lookup_due(now));
        assert!(!schedule.lonely_lookup_due(now));
        now += LONELY_LOOKUP_MIN;
        assert!(!schedule.lonely_lookup_due(now), "the pause doubled");
        now += LONELY_LOOKUP_MIN;
        assert!(schedule.lonely_lookup_due(now));

        schedule.share_added(now);
        now += LONELY_LOOKUP_MIN;
        assert!(
            schedule.lonely_lookup_due(now),
            "a new share resets the pause"
        );

        now += ANTI_ENTROPY_INTERVAL;
        assert!(schedule.anti_entropy_due(now));
        assert!(!schedule.anti_entropy_due(now));
        now += PROVIDER_LOOKUP_INTERVAL;
        assert!(
            schedule.provider_lookup_due(now, true),
            "a member is missing"
        );
    }

    #[test]
    fn members_are_looked_up_often_only_while_one_is_missing() {
        let start = Instant::now();
        let mut schedule = Schedule::new(start);
        let due_at = |schedule: &mut Schedule, minutes: std::ops::Range<u64>, missing: bool| {
            minutes
                .filter(|m| {
                    schedule.provider_lookup_due(start + Duration::from_secs(m * 60), missing)
                })
                .collect::<Vec<u64>>()
        };
        // Everyone connected: at once, then every 10 minutes.
        assert_eq!(due_at(&mut schedule, 0..25, false), [0, 10, 20]);
        // A member went missing: every minute until it is back.
        assert_eq!(due_at(&mut schedule, 25..28, true), [25, 26, 27]);
        assert_eq!(due_at(&mut schedule, 28..40, false), [37]);
    }

    #[test]
    fn lonely_pause_stops_doubling_at_the_provider_interval() {
        let mut now = Instant::now();
        let mut schedule = Schedule::new(now);
        for _ in 0..20 {
            now += PROVIDER_LOOKUP_INTERVAL;
            assert!(schedule.lonely_lookup_due(now));
        }
        assert_eq!(schedule.lonely_lookup.1.current(), PROVIDER_LOOKUP_INTERVAL);
    }
}
