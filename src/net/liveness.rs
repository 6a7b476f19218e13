//! Pings on demand: a connection is pinged only when the net actor asks, which it does when the
//! peer has been silent for a while ([`super::silence`]).
//!
//! libp2p's own ping asks every connection on a fixed interval from both ends. In a quiet mesh
//! every ping is a wake-up of both processes (and of the timer thread behind its delays), and
//! they added up: 32 idle daemons, each pinging its 31 peers every 2 s, spent 20 % of a core on
//! pings alone. Here a connection that carries data is never pinged, and on a quiet one only one
//! side pings (the other hears the ping, which is as good a sign of life as an answer).
//!
//! The wire protocol is libp2p's (`/ipfs/ping/1.0.0`: 32 bytes, echoed), so peers that still
//! ping on an interval, or plain libp2p nodes, are answered as before. There is no timeout
//! here: an unanswered ping is judged by the silence rule, which closes a connection that has
//! sent nothing at all for [`super::silence::LIVENESS_TIMEOUT`].

use std::collections::VecDeque;
use std::io;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{AsyncReadExt, AsyncWriteExt, FutureExt};
use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::core::upgrade::ReadyUpgrade;
use libp2p::swarm::handler::{
    ConnectionEvent, DialUpgradeError, FullyNegotiatedInbound, FullyNegotiatedOutbound,
};
use libp2p::swarm::{
    ConnectionDenied, ConnectionHandler, ConnectionHandlerEvent, ConnectionId, FromSwarm,
    NetworkBehaviour, NotifyHandler, Stream, StreamUpgradeError, SubstreamProtocol, THandler,
    THandlerInEvent, THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId, StreamProtocol};

/// libp2p's ping protocol, whose wire format we keep.
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/ipfs/ping/1.0.0");
/// Bytes in a ping, echoed back as its answer.
const PING_SIZE: usize = 32;

/// What became of a ping.
#[derive(Debug)]
pub struct Event {
    /// The peer pinged.
    pub peer: PeerId,
    /// The connection the ping went over.
    pub connection: ConnectionId,
    /// The round trip, or why there is none.
    pub result: Result<Duration, Failure>,
}

/// Why a ping got no answer.
#[derive(Debug, thiserror::Error)]
pub enum Failure {
    /// The peer does not speak the ping protocol (said once per connection).
    #[error("the peer does not answer pings")]
    Unsupported,
    /// The stream failed, or the answer was not our ping.
    #[error("ping failed: {0}")]
    Io(#[from] io::Error),
}

/// The behaviour: hands the actor's ping requests to the connections' handlers and their
/// answers back. Holds at most one queued request per call of [`Liveness::ping`], and the
/// actor asks at most once per connection and silence check.
#[derive(Default)]
pub struct Liveness {
    /// Connections to ping, in the order asked.
    asked: VecDeque<(PeerId, ConnectionId)>,
    /// Answers not yet handed to the swarm.
    events: VecDeque<Event>,
    /// The swarm's task, woken when a ping is asked for between its polls.
    waker: Option<Waker>,
}

impl Liveness {
    /// Pings `connection` of `peer` (unless a ping on it is still waiting for its answer).
    pub fn ping(&mut self, peer: PeerId, connection: ConnectionId) {
        self.asked.push_back((peer, connection));
        if let Some(waker) = self.waker.take() {
            waker.wake();
        }
    }
}

impl NetworkBehaviour for Liveness {
    type ConnectionHandler = Handler;
    type ToSwarm = Event;

    fn handle_established_inbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(Handler::default())
    }

    fn on_swarm_event(&mut self, _: FromSwarm) {}

    fn on_connection_handler_event(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        result: THandlerOutEvent<Self>,
    ) {
        self.events.push_back(Event {
            peer,
            connection,
            result,
        });
    }

    fn poll(&mut self, cx: &mut Context<'_>) -> Poll<ToSwarm<Event, THandlerInEvent<Self>>> {
        if let Some(event) = self.events.pop_front() {
            return Poll::Ready(ToSwarm::GenerateEvent(event));
        }
        if let Some((peer_id, connection)) = self.asked.pop_front() {
            return Poll::Ready(ToSwarm::NotifyHandler {
                peer_id,
                handler: NotifyHandler::One(connection),
                event: PingNow,
            });
        }
        self.waker = Some(cx.waker().clone());
        Poll::Pending
    }
}

/// The actor's request to ping a connection now.
#[derive(Debug, Clone, Copy)]
pub struct PingNow;

/// One connection's pings: answers every ping the peer sends, and sends one when asked.
#[derive(Default)]
pub struct Handler {
    /// Our side's stream, and whether a ping on it is under way.
    outbound: Outbound,
    /// Asked to ping while no stream was open yet.
    wanted: bool,
    /// The peer's ping stream, answering its next ping.
    inbound: Option<BoxFuture<'static, io::Result<Stream>>>,
    /// The peer does not speak the protocol: nothing more is tried on this connection.
    unsupported: bool,
    /// Results for the behaviour.
    results: VecDeque<Result<Duration, Failure>>,
}

/// Our side's ping stream.
#[derive(Default)]
enum Outbound {
    /// None open (yet, or since it failed).
    #[default]
    Closed,
    /// Asked the connection for one.
    Opening,
    /// Open, no ping under way.
    Idle(Stream),
    /// A ping sent, waiting for its echo.
    Pinging(BoxFuture<'static, io::Result<(Stream, Duration)>>),
}

impl Handler {
    fn start_ping(&mut self, stream: Stream) {
        self.wanted = false;
        self.outbound = Outbound::Pinging(send_ping(stream).boxed());
    }
}

impl ConnectionHandler for Handler {
    type FromBehaviour = PingNow;
    type ToBehaviour = Result<Duration, Failure>;
    type InboundProtocol = ReadyUpgrade<StreamProtocol>;
    type OutboundProtocol = ReadyUpgrade<StreamProtocol>;
    type InboundOpenInfo = ();
    type OutboundOpenInfo = ();

    fn listen_protocol(&self) -> SubstreamProtocol<Self::InboundProtocol> {
        SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ())
    }

    fn on_behaviour_event(&mut self, PingNow: PingNow) {
        if self.unsupported {
            return;
        }
        match std::mem::take(&mut self.outbound) {
            Outbound::Idle(stream) => self.start_ping(stream),
            // One ping at a time: an answer still due says as much as a second one would.
            other => {
                if matches!(other, Outbound::Closed) {
                    self.wanted = true;
                }
                self.outbound = other;
            }
        }
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ConnectionHandlerEvent<Self::OutboundProtocol, (), Self::ToBehaviour>> {
        if let Some(result) = self.results.pop_front() {
            return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(result));
        }
        // Answer the peer's pings, one after another on its stream.
        while let Some(answering) = self.inbound.as_mut() {
            match answering.poll_unpin(cx) {
                Poll::Pending => break,
                Poll::Ready(Ok(stream)) => self.inbound = Some(answer_ping(stream).boxed()),
                Poll::Ready(Err(e)) => {
                    tracing::trace!("the peer's ping stream ended: {e}");
                    self.inbound = None;
                }
            }
        }
        match std::mem::take(&mut self.outbound) {
            Outbound::Closed if self.wanted => {
                self.wanted = false;
                self.outbound = Outbound::Opening;
                return Poll::Ready(ConnectionHandlerEvent::OutboundSubstreamRequest {
                    protocol: SubstreamProtocol::new(ReadyUpgrade::new(PROTOCOL), ()),
                });
            }
            Outbound::Pinging(mut ping) => match ping.poll_unpin(cx) {
                Poll::Pending => self.outbound = Outbound::Pinging(ping),
                Poll::Ready(Ok((stream, rtt))) => {
                    self.outbound = Outbound::Idle(stream);
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Ok(rtt)));
                }
                Poll::Ready(Err(e)) => {
                    // Closed: the next ping asked for opens a new stream.
                    return Poll::Ready(ConnectionHandlerEvent::NotifyBehaviour(Err(e.into())));
                }
            },
            other => self.outbound = other,
        }
        Poll::Pending
    }

    fn on_connection_event(
        &mut self,
        event: ConnectionEvent<Self::InboundProtocol, Self::OutboundProtocol>,
    ) {
        match event {
            ConnectionEvent::FullyNegotiatedInbound(FullyNegotiatedInbound {
                protocol: mut stream,
                ..
            }) => {
                // Pings must not keep an otherwise unused connection open.
                stream.ignore_for_keep_alive();
                self.inbound = Some(answer_ping(stream).boxed());
            }
            ConnectionEvent::FullyNegotiatedOutbound(FullyNegotiatedOutbound {
                protocol: mut stream,
                ..
            }) => {
                stream.ignore_for_keep_alive();
                self.start_ping(stream);
            }
            ConnectionEvent::DialUpgradeError(DialUpgradeError { error, .. }) => {
                self.outbound = Outbound::Closed;
                let failure = match error {
                    StreamUpgradeError::NegotiationFailed => {
                        self.unsupported = true;
                        Failure::Unsupported
                    }
                    StreamUpgradeError::Timeout => Failure::Io(io::Error::new(
                        io::ErrorKind::TimedOut,
                        "ping stream negotiation timed out",
                    )),
                    StreamUpgradeError::Io(e) => Failure::Io(e),
                    StreamUpgradeError::Apply(never) => match never {},
                };
                self.results.push_back(Err(failure));
            }
            _ => {}
        }
    }
}

/// Sends a ping and waits for its echo; the stream comes back for the next one.
async fn send_ping(mut stream: Stream) -> io::Result<(Stream, Duration)> {
    let mut payload = [0u8; PING_SIZE];
    getrandom::fill(&mut payload).map_err(io::Error::other)?;
    stream.write_all(&payload).await?;
    stream.flush().await?;
    let sent = Instant::now();
    let mut echo = [0u8; PING_SIZE];
    stream.read_exact(&mut echo).await?;
    if echo != payload {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the answer to a ping was not the ping",
        ));
    }
    Ok((stream, sent.elapsed()))
}

/// Waits for the peer's next ping and echoes it.
async fn answer_ping(mut stream: Stream) -> io::Result<Stream> {
    let mut payload = [0u8; PING_SIZE];
    stream.read_exact(&mut payload).await?;
    stream.write_all(&payload).await?;
    stream.flush().await?;
    Ok(stream)
}
