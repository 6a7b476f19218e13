//! When a connection is pinged, and when it is taken for dead: the silence rule.
//!
//! Any bytes on a connection are a sign of life ([`super::activity`]), an answered ping too. A
//! connection we wait on (a request of ours is out to its peer) is pinged once it has been
//! silent for [`WAITING_QUIET_BEFORE_PING`]; an idle one only after [`QUIET_BEFORE_PING`] (the
//! dialing side) or a little longer (the listening side, so that on a quiet link only one side
//! pings: its ping is the other side's sign of life). A connection that sends nothing for
//! [`PING_ANSWER_WITHIN`] after a ping is dead: one we wait on after [`LIVENESS_TIMEOUT`] of
//! silence, an idle one after about 30 s. Every connection is also pinged at least every
//! [`RTT_REFRESH`], so each side keeps a round-trip time to show.
//!
//! Idle links are pinged slowly because pings were most of what an idle mesh cost: 32 daemons
//! in one share (496 links) spent about 2 % of a core on pings every 5 s, as much as on all
//! else together. A dead peer matters once we want something of it, and then it is found as
//! fast as before.
//!
//! Pure state with no I/O: every call takes `now`, so the rule is tested by stepping time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

/// A connection that sends nothing at all (no data, no ping, no answer) for this long after we
/// pinged it is taken for dead: the ping had seconds to be answered, even queued behind a slow
/// link's data (and data arriving counts as much as the answer).
pub const PING_ANSWER_WITHIN: Duration = Duration::from_secs(8);
/// Silence after which a connection we wait on is taken for dead: pinged after
/// [`WAITING_QUIET_BEFORE_PING`], its answer due within [`PING_ANSWER_WITHIN`].
pub const LIVENESS_TIMEOUT: Duration =
    Duration::from_secs(WAITING_QUIET_BEFORE_PING.as_secs() + PING_ANSWER_WITHIN.as_secs());
/// Silence after which the dialing side of an idle connection pings it (was 5 s: see the
/// module's comment).
pub const QUIET_BEFORE_PING: Duration = Duration::from_secs(20);
/// How much longer the listening side waits before it pings: on a quiet link the dialer's
/// pings reach it first and keep it from pinging too.
pub const LISTENER_EXTRA_QUIET: Duration = Duration::from_secs(2);
/// Silence after which a connection is pinged, by either side, while we wait for its peer to
/// answer a request: a stalled transfer on a lossy link then still sends segments every 2 s,
/// as with libp2p's fixed 2 s pings. Without this rule a 16 MiB download at 30 % loss
/// (`degraded::a_sync_completes_at_30_percent_loss`) took 432 s alone and over 630 s two at a
/// time, against 289 s alone and 396 / 629 s two at a time with libp2p's pings: noisy, but
/// slower each time, and a peer we wait on is the one worth checking on.
pub const WAITING_QUIET_BEFORE_PING: Duration = Duration::from_secs(2);
/// Longest time between two pings of one connection, so both sides have a fresh round-trip
/// time even when the other side's pings keep the link from going quiet.
pub const RTT_REFRESH: Duration = Duration::from_secs(60);

/// One watched connection.
#[derive(Debug, Clone)]
struct Watched {
    peer: PeerId,
    dialed: bool,
    /// When it opened or last answered a ping.
    answered: Instant,
    /// When we last pinged it.
    pinged: Option<Instant>,
    /// When we pinged it first since its last sign of life: its answer is due
    /// [`PING_ANSWER_WITHIN`] later.
    unanswered: Option<Instant>,
}

impl Watched {
    fn quiet_before_ping(&self, waiting: bool) -> Duration {
        if waiting {
            WAITING_QUIET_BEFORE_PING
        } else if self.dialed {
            QUIET_BEFORE_PING
        } else {
            QUIET_BEFORE_PING + LISTENER_EXTRA_QUIET
        }
    }
}

/// What the rule says to do now.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Verdict {
    /// Connections to ping.
    pub ping: Vec<(PeerId, ConnectionId)>,
    /// Connections to close as dead.
    pub dead: Vec<(PeerId, ConnectionId)>,
}

/// The connections under the rule: every open one that speaks the ping protocol (bounded by the
/// swarm's connection limit).
#[derive(Debug, Default)]
pub struct Silence {
    connections: HashMap<ConnectionId, Watched>,
}

impl Silence {
    /// A connection opened; its opening counts as an answer.
    pub fn opened(&mut self, peer: PeerId, connection: ConnectionId, dialed: bool, now: Instant) {
        self.connections.insert(
            connection,
            Watched {
                peer,
                dialed,
                answered: now,
                pinged: None,
                unanswered: None,
            },
        );
    }

    /// A connection closed, or its peer does not answer pings (then only its closing ends it).
    pub fn forget(&mut self, connection: ConnectionId) {
        self.connections.remove(&connection);
    }

    /// Whether a ping of ours waits for its answer (and nothing else was heard since).
    pub fn awaits_answers(&self) -> bool {
        self.connections.values().any(|w| w.unanswered.is_some())
    }

    /// A ping on `connection` was answered.
    pub fn answered(&mut self, connection: ConnectionId, now: Instant) {
        if let Some(watched) = self.connections.get_mut(&connection) {
            watched.answered = now;
            watched.unanswered = None;
        }
    }

    /// Connections watched.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.connections.len()
    }

    /// Whether no connection is watched.
    #[cfg(test)]
    pub fn is_empty(&self) -> bool {
        self.connections.is_empty()
    }

    /// Applies the rule at `now`, given when each connection last delivered any bytes and
    /// whether we wait for its peer's answer to a request. Connections found dead are
    /// forgotten; those to ping are marked pinged.
    pub fn check(
        &mut self,
        now: Instant,
        heard: impl Fn(ConnectionId) -> Option<Instant>,
        waiting_on: impl Fn(&PeerId) -> bool,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        self.connections.retain(|connection, watched| {
            let last_sign =
                heard(*connection).map_or(watched.answered, |heard| heard.max(watched.answered));
            if watched.unanswered.is_some_and(|pinged| last_sign >= pinged) {
                watched.unanswered = None;
            }
            if watched
                .unanswered
                .is_some_and(|pinged| now.saturating_duration_since(pinged) > PING_ANSWER_WITHIN)
            {
                verdict.dead.push((watched.peer, *connection));
                return false;
            }
            let silent = now.saturating_duration_since(last_sign);
            let quiet = watched.quiet_before_ping(waiting_on(&watched.peer));
            let wants =
                silent >= quiet || now.saturating_duration_since(watched.answered) >= RTT_REFRESH;
            let pinged_lately = watched
                .pinged
                .is_some_and(|at| now.saturating_duration_since(at) < quiet);
            if wants && !pinged_lately {
                watched.pinged = Some(now);
                watched.unanswered.get_or_insert(now);
                verdict.ping.push((watched.peer, *connection));
            }
            true
        });
        verdict
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    /// Steps a connection through the rule every second from `from` to `to` (inclusive), with
    /// the peer last heard at whatever `heard` says for that second.
    fn run(
        silence: &mut Silence,
        start: Instant,
        seconds: std::ops::RangeInclusive<u64>,
        heard: impl Fn(u64) -> Option<u64>,
    ) -> Vec<(u64, Verdict)> {
        seconds
            .map(|s| {
                let at = heard(s).map(|h| start + secs(h));
                (s, silence.check(start + secs(s), |_| at, |_| false))
            })
            .filter(|(_, v)| *v != Verdict::default())
            .collect()
    }

    /// A table watching one connection, opened now by the dialing side (`dialed`) or not.
    fn one_connection(dialed: bool) -> (PeerId, ConnectionId, Instant, Silence) {
        let (peer, connection, start) = (
            PeerId::random(),
            ConnectionId::new_unchecked(1),
            Instant::now(),
        );
        let mut silence = Silence::default();
        silence.opened(peer, connection, dialed, start);
        (peer, connection, start, silence)
    }

    #[test]
    fn a_busy_connection_is_never_pinged() {
        let (_, connection, start, mut silence) = one_connection(true);
        // Bytes arrive every second; only the round-trip refresh pings, once a minute.
        let mut pinged = Vec::new();
        for s in 1..=130 {
            let now = start + secs(s);
            let verdict = silence.check(now, |_| Some(now), |_| false);
            assert!(verdict.dead.is_empty(), "second {s}");
            if !verdict.ping.is_empty() {
                pinged.push(s);
                silence.answered(connection, now);
            }
        }
        assert_eq!(pinged, [60, 120]);
    }

    #[test]
    fn the_dialer_pings_a_quiet_link_and_the_listener_hears_it() {
        let (peer, start) = (PeerId::random(), Instant::now());
        let (ours, theirs) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        // Two ends of one quiet link, each hearing the other's pings (and their answers).
        let mut dialer = Silence::default();
        let mut listener = Silence::default();
        dialer.opened(peer, ours, true, start);
        listener.opened(peer, theirs, false, start);
        let mut last_ping = 0;
        let (mut dialer_pings, mut listener_pings) = (0, 0);
        for s in 1..=59 {
            let now = start + secs(s);
            let heard = Some(start + secs(last_ping));
            let by_dialer = dialer.check(now, |_| heard, |_| false);
            let by_listener = listener.check(now, |_| heard, |_| false);
            assert!(
                by_dialer.dead.is_empty() && by_listener.dead.is_empty(),
                "second {s}"
            );
            if !by_dialer.ping.is_empty() {
                dialer_pings += 1;
                last_ping = s;
                dialer.answered(ours, now);
            }
            listener_pings += by_listener.ping.len();
        }
        assert_eq!(
            (dialer_pings, listener_pings),
            (2, 0),
            "the dialer at 20 and 40 s"
        );
    }

    #[test]
    fn a_silent_peer_is_pinged_then_taken_for_dead() {
        let (peer, connection, start, mut silence) = one_connection(false);
        // Heard last at second 3, then nothing: the listener pings at 3 + 22, and with no
        // answer within 8 s it is dead.
        let verdicts = run(&mut silence, start, 4..=40, |_| Some(3));
        assert_eq!(
            verdicts,
            [
                (
                    25,
                    Verdict {
                        ping: vec![(peer, connection)],
                        dead: vec![]
                    }
                ),
                (
                    34,
                    Verdict {
                        ping: vec![],
                        dead: vec![(peer, connection)]
                    }
                ),
            ]
        );
        assert!(silence.is_empty(), "a dead connection is forgotten");
    }

    #[test]
    fn a_peer_we_wait_on_is_pinged_after_two_seconds_of_silence_by_either_side() {
        let (peer, connection, start, mut silence) = one_connection(false);
        // Heard at second 1, then a stall while our request is out: pinged at 1 + 2 and every
        // 2 s after, until it is dead after 1 + 10.
        let pings: Vec<u64> = (2..=12)
            .filter(|s| {
                let verdict =
                    silence.check(start + secs(*s), |_| Some(start + secs(1)), |p| *p == peer);
                verdict.ping.contains(&(peer, connection))
            })
            .collect();
        assert_eq!(pings, [3, 5, 7, 9, 11]);
        assert!(silence.is_empty(), "dead after 10 s of silence");
    }

    #[test]
    fn an_idle_link_is_pinged_after_20_s_and_dead_8_s_after_an_unanswered_ping() {
        let (peer, connection, start, mut silence) = one_connection(true);
        let verdicts = run(&mut silence, start, 1..=40, |_| None);
        let at = |v: &Verdict| (v.ping.clone(), v.dead.clone());
        let seen: Vec<_> = verdicts.iter().map(|(s, v)| (*s, at(v))).collect();
        assert_eq!(
            seen,
            [
                (20, (vec![(peer, connection)], vec![])),
                (29, (vec![], vec![(peer, connection)])),
            ]
        );
    }

    #[test]
    fn an_unanswered_ping_is_awaited_until_answered() {
        let (_, connection, start, mut silence) = one_connection(true);
        assert!(!silence.awaits_answers());
        let verdict = silence.check(start + QUIET_BEFORE_PING, |_| None, |_| false);
        assert_eq!(verdict.ping.len(), 1);
        assert!(
            silence.awaits_answers(),
            "the actor then checks every second"
        );
        silence.answered(connection, start + QUIET_BEFORE_PING + secs(1));
        assert!(!silence.awaits_answers());
    }

    #[test]
    fn bytes_after_a_ping_count_as_its_answer() {
        let (_, _, start, mut silence) = one_connection(true);
        // Pinged at 20; its answer never comes but data does at 25: alive, pinged again once
        // quiet for 20 s more (at 45), dead 8 s after that.
        let verdicts = run(&mut silence, start, 1..=60, |s| (s >= 25).then_some(25));
        let pings: Vec<u64> = verdicts
            .iter()
            .filter(|(_, v)| !v.ping.is_empty())
            .map(|(s, _)| *s)
            .collect();
        let dead: Vec<u64> = verdicts
            .iter()
            .filter(|(_, v)| !v.dead.is_empty())
            .map(|(s, _)| *s)
            .collect();
        assert_eq!((pings, dead), (vec![20, 45], vec![54]));
    }

    #[test]
    fn an_answer_counts_as_a_sign_of_life() {
        let (_, connection, start, mut silence) = one_connection(true);
        // Bytes never counted (say the activity table lost the peer), answers do.
        for s in 1..=40 {
            let verdict = silence.check(start + secs(s), |_| None, |_| false);
            assert!(verdict.dead.is_empty(), "second {s}");
            if !verdict.ping.is_empty() {
                silence.answered(connection, start + secs(s));
            }
        }
        silence.forget(connection);
        assert_eq!(silence.len(), 0);
    }
}
