//! Our request-response protocol on the swarm side: requests sent for the rest of the daemon
//! (kept in `pending_requests` until answered), inbound requests handed out as
//! [`NetEvent::Request`] within the in-flight budget, and the hello exchange that makes a
//! connected peer count as connected.
//!
//! The decisions are pure and live in [`super::hello`].

use libp2p::PeerId;
use libp2p::request_response::{self, ResponseChannel};
use std::time::Instant;

use tokio::sync::oneshot;
use tracing::{debug, info, warn};

use super::actor::NetActor;
use super::client::{NetError, NetEvent};
use super::guard::Reply;
use super::hello::{HelloRetry, checked_agent, checked_name};
use super::protocol::{self, Hello, PROTOCOL_VERSION, Request, Response};
use crate::quiet::and_more;

/// A peer's clock this far from ours is worth a warning (once per peer).
pub const CLOCK_OFFSET_WARNING: std::time::Duration = std::time::Duration::from_secs(30);
/// How often the clock offset of a connected peer is measured again (a hello each way) while
/// it is off ours by more than [`CLOCK_SETTLED_WITHIN`]: a wrong or drifting clock is
/// followed at this pace.
pub const CLOCK_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(30);
/// A peer's clock this close to ours counts as right, and is measured again only every
/// [`CLOCK_CHECK_SETTLED`]: re-measuring every peer every 30 s was 1.5 % of a core over a
/// 32-daemon mesh, for clocks that agree. A clock that drifts is seen once it is off by this
/// much; one that is set wrong, within [`CLOCK_CHECK_SETTLED`].
pub const CLOCK_SETTLED_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a peer whose clock agrees with ours is measured again.
pub const CLOCK_CHECK_SETTLED: std::time::Duration = std::time::Duration::from_secs(300);

impl NetActor {
    /// Sends `request` to a connected `peer`; the answer goes to `reply` when it comes.
    pub(super) fn send_request(
        &mut self,
        peer: PeerId,
        request: Request,
        reply: oneshot::Sender<Result<Response, NetError>>,
    ) {
        if !self.swarm.is_connected(&peer) {
            let _ = reply.send(Err(NetError::Request {
                peer,
                message: "not connected".into(),
            }));
            return;
        }
        let id = self.swarm.behaviour_mut().sync.send_request(&peer, request);
        self.pending_requests.insert(id, (peer, reply));
        // We wait on the peer now: the silence rule must look every second.
        self.next_liveness_check = self
            .next_liveness_check
            .min(tokio::time::Instant::now() + super::actor::LIVENESS_CHECK);
    }

    /// Answers an inbound request (which frees its in-flight slot).
    /// Sends our answer, and counts it for `status` ([`super::PeerStatus::answered`]).
    pub(super) fn respond(&mut self, channel: Reply, response: Response) {
        let peer = channel.peer();
        let sent = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel.channel, response)
            .is_ok();
        if sent && self.swarm.is_connected(&peer) {
            *self.answered.entry(peer).or_default() += 1;
        }
    }

    pub(super) fn on_sync_event(&mut self, event: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => self.on_inbound_request(peer, request, channel),
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => self.on_response(peer, request_id, response),
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => self.on_outbound_failure(peer, request_id, &error),
            // A request that timed out or whose connection closed is the network's doing (a
            // lossy link makes them every few seconds), not a bad request.
            Event::InboundFailure {
                peer,
                error:
                    error @ (request_response::InboundFailure::Timeout
                    | request_response::InboundFailure::ConnectionClosed),
                ..
            } => debug!(%peer, "request from peer not answered: {error}"),
            Event::InboundFailure { peer, error, .. } => {
                // One line per peer and interval: a peer can fail requests as fast as it can
                // open streams.
                if let Some(unsaid) = self.quiet.allow(&(peer, "bad request"), Instant::now()) {
                    warn!(%peer, "bad request from peer: {error}{}", and_more(unsaid));
                }
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Answers a hello at once; hands any other request out, or answers "busy" when the peer
    /// (or everyone together) has too many requests in flight.
    fn on_inbound_request(
        &mut self,
        peer: PeerId,
        request: Request,
        channel: ResponseChannel<Response>,
    ) {
        let response = match request {
            Request::Hello(hello) => {
                self.on_hello(peer, hello);
                Response::Hello(Hello::ours(self.name.clone()))
            }
            request => match self.in_flight.acquire(peer) {
                Some(slot) => {
                    let _ = self.events.send(NetEvent::Request {
                        peer,
                        request,
                        channel: Reply {
                            channel,
                            _slot: Box::new(slot),
                        },
                    });
                    return;
                }
                None => {
                    debug!(%peer, "too many requests in flight; answered busy");
                    Response::Error("busy: too many requests in flight".into())
                }
            },
        };
        let _ = self
            .swarm
            .behaviour_mut()
            .sync
            .send_response(channel, response);
    }

    fn on_response(
        &mut self,
        peer: PeerId,
        request_id: request_response::OutboundRequestId,
        response: Response,
    ) {
        if let Some((_, reply)) = self.pending_requests.remove(&request_id) {
            let _ = reply.send(Ok(response));
        } else if let Some(sent) = self.clock_checks.remove(&request_id) {
            if let Response::Hello(hello) = response {
                self.note_clock_offset(peer, &hello, sent);
            }
        } else if let Some((_, sent)) = self.hello_requests.remove(&request_id) {
            match response {
                Response::Hello(hello) => {
                    self.hello_retries.forget(&peer);
                    self.note_clock_offset(peer, &hello, sent);
                    if self.on_hello(peer, hello) {
                        if self.met.insert(peer) {
                            let agent = self.book.agent(&peer).unwrap_or_default();
                            let ip = self.book.remote_ip(&peer);
                            match self.connection_lines_allowed(ip, "up") {
                                Some(unsaid) => {
                                    info!(%peer, "connected: {agent}{}", and_more(unsaid))
                                }
                                None => debug!(%peer, "connected: {agent}"),
                            }
                        }
                        self.swarm
                            .behaviour_mut()
                            .admission
                            .shunned
                            .connected(&peer, Instant::now());
                        let name = self.book.name(&peer);
                        let _ = self.events.send(NetEvent::PeerConnected(peer, name));
                    }
                }
                other => {
                    warn!(%peer, "peer answered hello with {other:?}; disconnecting");
                    let _ = self.swarm.disconnect_peer_id(peer);
                }
            }
        }
    }

    fn on_outbound_failure(
        &mut self,
        peer: PeerId,
        request_id: request_response::OutboundRequestId,
        error: &request_response::OutboundFailure,
    ) {
        debug!(%peer, "request failed: {error}");
        // A clock check that failed is simply made again next time.
        self.clock_checks.remove(&request_id);
        if self.hello_requests.remove(&request_id).is_some() {
            if matches!(
                error,
                request_response::OutboundFailure::UnsupportedProtocols
            ) {
                self.leave_foreign_peer_alone(peer, "it refuses our hello");
            } else {
                self.hello_failed(peer);
            }
        }
        if let Some((_, reply)) = self.pending_requests.remove(&request_id) {
            let _ = reply.send(Err(NetError::Request {
                peer,
                message: error.to_string(),
            }));
        }
    }

    /// Says hello again when a hello failed but the peer is still connected. It fails that way
    /// when the connection it went out on is closed as a duplicate while another one to the
    /// same peer stays up; without a new hello the peer never counted as connected (no
    /// membership checks, nothing synced) until that other connection dropped too.
    fn hello_failed(&mut self, peer: PeerId) {
        let connected = self.swarm.is_connected(&peer);
        match self.hello_retries.failed(peer, connected) {
            // A later connection says hello itself.
            HelloRetry::Forget => debug!(%peer, "hello failed; not connected any more"),
            HelloRetry::Again => {
                debug!(%peer, "hello failed; saying it again");
                self.say_hello(peer);
            }
            HelloRetry::GiveUp => {
                debug!(%peer, "hello failed; saying it again");
                warn!(%peer, "peer does not answer hello; disconnecting");
                let _ = self.swarm.disconnect_peer_id(peer);
            }
        }
    }

    /// Sends our hello; its answer makes the peer count as connected ([`NetEvent::PeerConnected`]).
    pub(super) fn say_hello(&mut self, peer: PeerId) {
        let id = self
            .swarm
            .behaviour_mut()
            .sync
            .send_request(&peer, Request::Hello(Hello::ours(self.name.clone())));
        self.hello_requests
            .insert(id, (peer, std::time::Instant::now()));
    }

    /// Measures the clocks of the peers that answered our hello again: every
    /// [`CLOCK_CHECK_INTERVAL`] those off ours by more than [`CLOCK_SETTLED_WITHIN`], every
    /// [`CLOCK_CHECK_SETTLED`] the others. Checks still unanswered are not repeated.
    pub(super) fn check_clocks(&mut self) {
        let now = tokio::time::Instant::now();
        if now < self.next_clock_check {
            return;
        }
        self.next_clock_check = now + CLOCK_CHECK_INTERVAL;
        if !self.clock_checks.is_empty() {
            return;
        }
        let peers: Vec<PeerId> = self
            .met
            .iter()
            .filter(|p| self.swarm.is_connected(p))
            .filter(|p| {
                self.book.clock_check_due(
                    p,
                    CLOCK_SETTLED_WITHIN,
                    CLOCK_CHECK_SETTLED,
                    now.into_std(),
                )
            })
            .copied()
            .collect();
        for peer in peers {
            let id = self
                .swarm
                .behaviour_mut()
                .sync
                .send_request(&peer, Request::Hello(Hello::ours(self.name.clone())));
            self.clock_checks.insert(id, std::time::Instant::now());
        }
    }

    /// Records how far `peer`'s clock is from ours, from its answer to the hello we sent at
    /// `sent`: its wall clock against ours halfway through the round trip. Said once per peer
    /// (a minute) when it is over [`CLOCK_OFFSET_WARNING`].
    fn note_clock_offset(&mut self, peer: PeerId, hello: &Hello, sent: std::time::Instant) {
        let Some(theirs) = hello.wall_ms else {
            return;
        };
        let half_trip = sent.elapsed().as_millis() as i64 / 2;
        let offset = theirs as i64 - (protocol::wall_clock_ms() as i64 - half_trip);
        self.book
            .set_clock_offset(&peer, offset, std::time::Instant::now());
        if offset.unsigned_abs() > CLOCK_OFFSET_WARNING.as_millis() as u64
            && let Some(unsaid) = self.quiet.allow(&(peer, "clock"), Instant::now())
        {
            let (how_far, way) = if offset > 0 {
                (offset, "ahead of")
            } else {
                (-offset, "behind")
            };
            warn!(
                %peer,
                "the peer's clock is {:.1} s {way} ours: one of the two is wrong; timestamps \
                 of concurrent edits follow the clocks{}",
                how_far as f64 / 1000.0,
                and_more(unsaid)
            );
        }
    }

    /// Checks a peer's hello; returns whether we can talk to it.
    fn on_hello(&mut self, peer: PeerId, hello: Hello) -> bool {
        self.features.note(peer, &hello);
        match checked_agent(&hello) {
            Ok(agent) => {
                self.book.set_agent(&peer, agent, checked_name(&hello));
                true
            }
            Err(agent) => {
                warn!(
                    %peer,
                    "peer speaks protocol version {} ({agent}), we speak {PROTOCOL_VERSION}; disconnecting",
                    hello.protocol_version
                );
                let _ = self.swarm.disconnect_peer_id(peer);
                false
            }
        }
    }
}
