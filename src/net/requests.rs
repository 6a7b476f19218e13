//! Our request-response protocol on the swarm side: requests sent for the rest of the daemon
//! (kept in `pending_requests` until answered), inbound requests handed out as
//! [`NetEvent::Request`] within the in-flight budget, and the hello exchange that makes a
//! connected peer count as connected.
//!
//! The decisions are pure and unit-tested: whether a peer's hello is acceptable
//! ([`checked_agent`]) and what to do when our hello fails ([`HelloRetries`]).

use std::collections::HashMap;

use libp2p::PeerId;
use libp2p::request_response::{self, ResponseChannel};
use tokio::sync::oneshot;
use tracing::{debug, warn};

use super::actor::NetActor;
use super::client::{NetError, NetEvent};
use super::guard::Reply;
use super::protocol::{self, Hello, PROTOCOL_VERSION, Request, Response};

/// Hellos said again to a still-connected peer whose hello failed, before disconnecting it.
pub const MAX_HELLO_RETRIES: u32 = 3;

/// What to do after one of our hellos to a peer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HelloRetry {
    /// The peer is gone; a later connection says hello itself.
    Forget,
    /// Say hello again.
    Again,
    /// It failed [`MAX_HELLO_RETRIES`] retries in a row: disconnect it.
    GiveUp,
}

/// Hellos said again to each peer since its last answer.
#[derive(Debug, Default)]
pub struct HelloRetries {
    tries: HashMap<PeerId, u32>,
}

impl HelloRetries {
    /// Counts a failed hello to `peer` and says what to do next.
    pub fn failed(&mut self, peer: PeerId, still_connected: bool) -> HelloRetry {
        if !still_connected {
            self.tries.remove(&peer);
            return HelloRetry::Forget;
        }
        let tries = self.tries.entry(peer).or_insert(0);
        *tries += 1;
        if *tries > MAX_HELLO_RETRIES {
            self.tries.remove(&peer);
            return HelloRetry::GiveUp;
        }
        HelloRetry::Again
    }

    /// Forgets the count of `peer`: it answered, or its last connection closed.
    pub fn forget(&mut self, peer: &PeerId) {
        self.tries.remove(peer);
    }
}

/// The agent of a peer's hello, cut to [`protocol::MAX_AGENT_CHARS`]; `Err` with it when the
/// peer speaks another protocol version than [`PROTOCOL_VERSION`].
pub fn checked_agent(hello: &Hello) -> Result<String, String> {
    let agent: String = hello
        .agent
        .chars()
        .take(protocol::MAX_AGENT_CHARS)
        .collect();
    if hello.protocol_version == PROTOCOL_VERSION {
        Ok(agent)
    } else {
        Err(agent)
    }
}

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
        self.pending_requests.insert(id, reply);
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
            Event::InboundFailure { peer, error, .. } => {
                warn!(%peer, "bad request from peer: {error}");
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
                Response::Hello(Hello::ours())
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
        if let Some(reply) = self.pending_requests.remove(&request_id) {
            let _ = reply.send(Ok(response));
        } else if self.hello_requests.remove(&request_id).is_some() {
            match response {
                Response::Hello(hello) => {
                    self.hello_retries.forget(&peer);
                    if self.on_hello(peer, hello) {
                        let _ = self.events.send(NetEvent::PeerConnected(peer));
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
        if self.hello_requests.remove(&request_id).is_some() {
            self.hello_failed(peer);
        }
        if let Some(reply) = self.pending_requests.remove(&request_id) {
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
            .send_request(&peer, Request::Hello(Hello::ours()));
        self.hello_requests.insert(id, peer);
    }

    /// Checks a peer's hello; returns whether we can talk to it.
    fn on_hello(&mut self, peer: PeerId, hello: Hello) -> bool {
        match checked_agent(&hello) {
            Ok(agent) => {
                self.book.set_agent(&peer, agent);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_is_retried_then_given_up() {
        let peer = PeerId::random();
        let mut retries = HelloRetries::default();
        for _ in 0..MAX_HELLO_RETRIES {
            assert_eq!(retries.failed(peer, true), HelloRetry::Again);
        }
        assert_eq!(retries.failed(peer, true), HelloRetry::GiveUp);
        // Giving up starts the count afresh for a later connection.
        assert_eq!(retries.failed(peer, true), HelloRetry::Again);
    }

    #[test]
    fn an_answer_or_a_disconnect_resets_the_count() {
        let peer = PeerId::random();
        let mut retries = HelloRetries::default();
        for _ in 0..MAX_HELLO_RETRIES {
            retries.failed(peer, true);
        }
        retries.forget(&peer);
        assert_eq!(retries.failed(peer, true), HelloRetry::Again);
        for _ in 0..MAX_HELLO_RETRIES {
            retries.failed(peer, true);
        }
        assert_eq!(retries.failed(peer, false), HelloRetry::Forget);
        assert_eq!(retries.failed(peer, true), HelloRetry::Again);
    }

    #[test]
    fn hello_of_another_version_is_refused_and_agents_are_cut() {
        let long = "x".repeat(protocol::MAX_AGENT_CHARS + 10);
        let ours = Hello {
            protocol_version: PROTOCOL_VERSION,
            agent: long.clone(),
        };
        assert_eq!(
            checked_agent(&ours).unwrap().chars().count(),
            protocol::MAX_AGENT_CHARS
        );
        let other = Hello {
            protocol_version: PROTOCOL_VERSION + 1,
            agent: "meshsync/9".into(),
        };
        assert_eq!(checked_agent(&other), Err("meshsync/9".into()));
    }
}
