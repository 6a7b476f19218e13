//! When a connection is pinged, and when it is taken for dead: the silence rule.
//!
//! Any bytes from a peer are a sign of life ([`super::activity`]), an answered ping too. A
//! connection is pinged only once its peer has been silent for [`QUIET_BEFORE_PING`] (the
//! dialing side) or a little longer (the listening side, so that on a quiet link only one side
//! pings: its ping is the other side's sign of life). A connection silent for
//! [`LIVENESS_TIMEOUT`] is dead. Every connection is also pinged at least every
//! [`RTT_REFRESH`], so each side keeps a round-trip time to show.
//!
//! Pure state with no I/O: every call takes `now`, so the rule is tested by stepping time.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use libp2p::PeerId;
use libp2p::swarm::ConnectionId;

/// A connection whose peer sent nothing at all (no data, no ping, no answer) for this long is
/// taken for dead: a ping sent after [`QUIET_BEFORE_PING`] had seconds to be answered, even
/// queued behind a slow link's data (and data arriving counts as much as the answer).
pub const LIVENESS_TIMEOUT: Duration = Duration::from_secs(10);
/// Silence after which the dialing side of a connection pings it.
pub const QUIET_BEFORE_PING: Duration = Duration::from_secs(5);
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
            },
        );
    }

    /// A connection closed, or its peer does not answer pings (then only its closing ends it).
    pub fn forget(&mut self, connection: ConnectionId) {
        self.connections.remove(&connection);
    }

    /// A ping on `connection` was answered.
    pub fn answered(&mut self, connection: ConnectionId, now: Instant) {
        if let Some(watched) = self.connections.get_mut(&connection) {
            watched.answered = now;
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

    /// Applies the rule at `now`, given when each peer last sent any bytes and whether we wait
    /// for its answer to a request. Connections found dead are forgotten; those to ping are
    /// marked pinged.
    pub fn check(
        &mut self,
        now: Instant,
        heard: impl Fn(&PeerId) -> Option<Instant>,
        waiting_on: impl Fn(&PeerId) -> bool,
    ) -> Verdict {
        let mut verdict = Verdict::default();
        self.connections.retain(|connection, watched| {
            let last_sign =
                heard(&watched.peer).map_or(watched.answered, |heard| heard.max(watched.answered));
            let silent = now.saturating_duration_since(last_sign);
            if silent > LIVENESS_TIMEOUT {
                verdict.dead.push((watched.peer, *connection));
                return false;
            }
            let quiet = watched.quiet_before_ping(waiting_on(&watched.peer));
            let wants =
                silent >= quiet || now.saturating_duration_since(watched.answered) >= RTT_REFRESH;
            let pinged_lately = watched
                .pinged
                .is_some_and(|at| now.saturating_duration_since(at) < quiet);
            if wants && !pinged_lately {
                watched.pinged = Some(now);
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
        assert_eq!((dialer_pings, listener_pings), (11, 0));
    }

    #[test]
    fn a_silent_peer_is_pinged_then_taken_for_dead() {
        let (peer, connection, start, mut silence) = one_connection(false);
        // Heard last at second 3, then nothing: the listener pings at 3 + 7, dead after 3 + 10.
        let verdicts = run(&mut silence, start, 4..=20, |_| Some(3));
        assert_eq!(
            verdicts,
            [
                (
                    10,
                    Verdict {
                        ping: vec![(peer, connection)],
                        dead: vec![]
                    }
                ),
                (
                    14,
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
