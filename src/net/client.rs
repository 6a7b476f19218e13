//! The handle and the messages: [`NetClient`], the cloneable way into the network task, the
//! [`Command`]s it sends, the [`NetEvent`]s that come out, the [`NetStatus`] snapshot and
//! [`NetError`].
//!
//! Everything here is plain data plus a bounded channel, so the rest of the daemon depends on
//! this file and never on libp2p's swarm types (except [`PeerId`] and [`Multiaddr`]).

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use super::guard::Reply;
use super::peers::Discovery;
use super::protocol::{Request, Response};

/// Commands queued for the network task before senders wait.
pub const COMMAND_CHANNEL_CAPACITY: usize = 256;

/// Errors of the network layer.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The transport could not be built.
    #[error("cannot set up the libp2p transport: {0}")]
    Transport(String),
    /// None of the configured listen addresses could be bound.
    #[error("cannot listen on {addr}: {message}")]
    Listen {
        /// The address.
        addr: Multiaddr,
        /// The OS or transport error.
        message: String,
    },
    /// Dialling failed immediately.
    #[error("cannot dial {addr}: {message}")]
    Dial {
        /// The address.
        addr: Multiaddr,
        /// Why.
        message: String,
    },
    /// A request to a peer failed (not connected, timed out, refused to decode, closed).
    #[error("request to {peer} failed: {message}")]
    Request {
        /// The peer.
        peer: PeerId,
        /// Why.
        message: String,
    },
    /// The network task has stopped.
    #[error("the network task has stopped")]
    Stopped,
}

/// A snapshot of the network state, as shown by `status`.
#[derive(Debug, Clone, Serialize)]
pub struct NetStatus {
    /// Our peer id.
    pub peer_id: String,
    /// Full multiaddrs, ending in `/p2p/<our id>`, that peers can dial.
    pub listen_addrs: Vec<String>,
    /// Connected peers, sorted by id.
    pub peers: Vec<PeerStatus>,
    /// Configured static peer addresses.
    pub static_peers: Vec<String>,
    /// Whether mDNS is running.
    pub mdns: bool,
    /// Peers refused for a while for sending content that did not match its hash.
    #[serde(default)]
    pub banned: Vec<String>,
    /// What the protections against strangers are doing now.
    #[serde(default)]
    pub guards: GuardStatus,
    /// Each configured static peer: connected, or why not and when it is dialled next.
    #[serde(default)]
    pub static_peer_status: Vec<super::peers::StaticPeerStatus>,
}

/// The protections against hostile and foreign peers, at work.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct GuardStatus {
    /// Bytes buffered now for request frames still arriving, all peers together.
    pub inbound_buffered_bytes: u64,
    /// Its bound (`INBOUND_BUFFER_TOTAL`).
    pub inbound_buffer_limit: u64,
    /// Half-received frames dropped so far to make room for another peer's.
    pub inbound_evictions: u64,
    /// Incoming connections refused so far by the per-address caps.
    pub refused_connections: u64,
    /// Peers neither dialled nor kept in the DHT now: not meshsync, or unreachable.
    pub peers_left_alone: u64,
}

/// One connected peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Its peer id.
    pub peer_id: String,
    /// How we found it: why its (oldest) open connection exists. `inbound` when it dialled us.
    pub found_by: Discovery,
    /// Remote addresses of the open connections.
    pub addrs: Vec<String>,
    /// Its software, from the hello exchange.
    pub agent: Option<String>,
    /// Its device name, from the hello exchange (null if it has none).
    #[serde(default)]
    pub name: Option<String>,
    /// Last ping round trip in milliseconds.
    pub rtt_ms: Option<f64>,
    /// How far its clock is ahead of ours in milliseconds (negative: behind), measured in the
    /// hello exchange; absent for peers too old to say.
    #[serde(default)]
    pub clock_offset_ms: Option<f64>,
    /// Its requests (hello aside) that were answered since it connected, refusals included:
    /// shows that what a peer asked was dealt with, whatever the answer.
    #[serde(default)]
    pub answered: u64,
}

/// Requests to the network task.
#[derive(Debug)]
pub enum Command {
    /// Report the current state.
    Status {
        /// Where to send it.
        reply: oneshot::Sender<NetStatus>,
    },
    /// Dial an address now and keep redialling it like a configured static peer.
    AddStaticPeer {
        /// The address.
        addr: Multiaddr,
        /// `Ok(true)` if newly added, `Ok(false)` if it was already a static peer.
        reply: oneshot::Sender<Result<bool, NetError>>,
    },
    /// Send a request to a connected peer and wait for its response.
    Request {
        /// The peer.
        peer: PeerId,
        /// The request.
        request: Request,
        /// The response, or why there is none.
        reply: oneshot::Sender<Result<Response, NetError>>,
    },
    /// Answer a request delivered as [`NetEvent::Request`].
    Respond {
        /// The channel that came with the request.
        channel: Reply,
        /// The answer.
        response: Response,
    },
    /// Dial these addresses (from a share token) once, as discovered peers.
    Dial {
        /// Addresses ending in `/p2p/<id>`.
        addrs: Vec<Multiaddr>,
    },
    /// Announce in the DHT that we provide `key` (re-announced by Kademlia periodically).
    StartProviding {
        /// The provider key.
        key: Vec<u8>,
    },
    /// Look up providers of `key`; those found are dialled and reported as
    /// [`NetEvent::ProvidersFound`].
    FindProviders {
        /// The provider key.
        key: Vec<u8>,
    },
    /// Close every connection to a peer and refuse it from now on.
    BlockPeer {
        /// The peer.
        peer: PeerId,
        /// `true` if newly blocked.
        reply: oneshot::Sender<bool>,
    },
    /// Stop dialling the static peers with this address or peer id.
    RemoveStatic {
        /// An address or a peer id, as the user gave it.
        target: String,
        /// The addresses no longer dialled.
        reply: oneshot::Sender<Vec<String>>,
    },
    /// Stop refusing a blocked peer (a ban for lies still runs out by itself).
    UnblockPeer {
        /// The peer.
        peer: PeerId,
        /// `true` if it was blocked.
        reply: oneshot::Sender<bool>,
    },
    /// A peer sent something provably false (content not matching its hash); enough strikes
    /// disconnect and ban it for a while.
    Strike {
        /// The peer.
        peer: PeerId,
        /// What it did, for the log.
        reason: String,
    },
    /// Close every connection and stop.
    Shutdown {
        /// Answered once the swarm is gone.
        reply: oneshot::Sender<()>,
    },
}

/// What the network task tells the rest of the daemon.
#[derive(Debug)]
pub enum NetEvent {
    /// The first connection to a peer is up and it has said hello (with its device name, if it
    /// has one).
    PeerConnected(PeerId, Option<String>),
    /// The last connection to a peer closed.
    PeerDisconnected(PeerId),
    /// A peer sent a request other than hello; answer it with [`NetClient::respond`].
    Request {
        /// Who asked.
        peer: PeerId,
        /// What it asked.
        request: Request,
        /// Where the answer goes.
        channel: Reply,
    },
    /// Providers of a key were found in the DHT.
    ProvidersFound {
        /// The provider key.
        key: Vec<u8>,
        /// The providers, not including us.
        peers: Vec<PeerId>,
    },
}

/// Cloneable handle to the network task.
#[derive(Debug, Clone)]
pub struct NetClient {
    commands: mpsc::Sender<Command>,
    /// libp2p's own metrics, kept current by the network task.
    libp2p_metrics: Arc<prometheus_client::registry::Registry>,
    features: super::features::Features,
}

impl NetClient {
    /// Whether `peer` (connected, past its hello) answers requests for parts of chunks.
    pub fn takes_chunk_parts(&self, peer: &PeerId) -> bool {
        self.features.chunk_parts(peer)
    }

    /// The current network state.
    pub async fn status(&self) -> Result<NetStatus, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Status { reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Dials `addr` and keeps it as a static peer.
    pub async fn add_static_peer(&self, addr: Multiaddr) -> Result<bool, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::AddStaticPeer { addr, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Sends `request` to `peer` and waits for the answer (bounded by
    /// [`REQUEST_TIMEOUT`](super::REQUEST_TIMEOUT)).
    pub async fn request(&self, peer: PeerId, request: Request) -> Result<Response, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Request {
            peer,
            request,
            reply,
        })
        .await?;
        rx.await.map_err(|_| NetError::Stopped)?
    }

    /// Answers an inbound request.
    pub async fn respond(&self, channel: Reply, response: Response) {
        let _ = self.send(Command::Respond { channel, response }).await;
    }

    /// Reports that `peer` sent something provably false.
    pub async fn strike(&self, peer: PeerId, reason: String) {
        let _ = self.send(Command::Strike { peer, reason }).await;
    }

    /// Dials addresses once.
    pub async fn dial(&self, addrs: Vec<Multiaddr>) {
        let _ = self.send(Command::Dial { addrs }).await;
    }

    /// Announces that we provide `key`.
    pub async fn start_providing(&self, key: Vec<u8>) {
        let _ = self.send(Command::StartProviding { key }).await;
    }

    /// Looks up providers of `key`.
    pub async fn find_providers(&self, key: Vec<u8>) {
        let _ = self.send(Command::FindProviders { key }).await;
    }

    /// Disconnects a peer and refuses its connections from now on.
    pub async fn block_peer(&self, peer: PeerId) -> Result<bool, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::BlockPeer { peer, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Stops refusing a peer blocked with [`NetClient::block_peer`]; returns whether it was.
    pub async fn unblock_peer(&self, peer: PeerId) -> Result<bool, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::UnblockPeer { peer, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Stops dialling the static peers whose address is `target` or whose peer id it is;
    /// returns their addresses.
    pub async fn remove_static(&self, target: String) -> Result<Vec<String>, NetError> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::RemoveStatic { target, reply }).await?;
        rx.await.map_err(|_| NetError::Stopped)
    }

    /// Stops the network task and waits until it is gone.
    pub async fn shutdown(&self) {
        let (reply, rx) = oneshot::channel();
        if self.send(Command::Shutdown { reply }).await.is_ok() {
            let _ = rx.await;
        }
    }

    async fn send(&self, command: Command) -> Result<(), NetError> {
        self.commands
            .send(command)
            .await
            .map_err(|_| NetError::Stopped)
    }

    /// A client whose commands go to `commands`; the network task holds the other end.
    pub(super) fn new(
        commands: mpsc::Sender<Command>,
        libp2p_metrics: Arc<prometheus_client::registry::Registry>,
        features: super::features::Features,
    ) -> NetClient {
        NetClient {
            commands,
            libp2p_metrics,
            features,
        }
    }

    /// libp2p's own metrics (swarm, Kademlia, identify, ping), for `GET /metrics`.
    pub fn libp2p_metrics(&self) -> &prometheus_client::registry::Registry {
        &self.libp2p_metrics
    }

    /// A client whose commands go to `commands`, for tests that play the network themselves.
    #[cfg(test)]
    pub(crate) fn from_channel(commands: mpsc::Sender<Command>) -> NetClient {
        NetClient::new(commands, Arc::default(), Default::default())
    }

    /// [`NetClient::from_channel`], with `peers` taken to answer requests for parts of chunks.
    #[cfg(test)]
    pub(crate) fn from_channel_with_parts(
        commands: mpsc::Sender<Command>,
        peers: &[PeerId],
    ) -> NetClient {
        let client = NetClient::from_channel(commands);
        for peer in peers {
            client
                .features
                .note(*peer, &super::protocol::Hello::ours(None));
        }
        client
    }
}
