//! The network layer: one task owns the libp2p [`Swarm`]; everyone else talks to it through a
//! cloneable [`NetClient`].
//!
//! Owning the swarm in a single task means no locks around it and a single place where every
//! connection, discovery and protocol event is handled in order. Commands carry a `oneshot` for
//! their reply, so callers `await` answers without sharing state.
//!
//! Transport: TCP + Noise (authenticated, encrypted) + Yamux (multiplexed streams). Discovery:
//! static peers (redialled with backoff), mDNS on the local network, and a Kademlia DHT in server
//! mode, fed with the addresses that identify and mDNS learn. Our own protocol is in
//! [`protocol`].

pub mod guard;
pub mod peers;
pub mod protocol;
pub mod transport;

pub use guard::Reply;

use std::collections::HashMap;
use std::time::Duration;

use futures::StreamExt;
use libp2p::core::ConnectedPoint;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::swarm::dial_opts::{DialOpts, PeerCondition};
use libp2p::swarm::{ConnectionId, NetworkBehaviour, SwarmEvent};
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, identify,
    identity::Keypair, kad, mdns, memory_connection_limits, ping, request_response,
};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use peers::{Discovery, PeerBook};
use protocol::{Hello, PROTOCOL, PROTOCOL_VERSION, Request, Response};

/// Resident memory above which new connections are refused (existing ones carry on).
pub const MAX_MEMORY_FOR_NEW_CONNECTIONS: usize = 1024 * 1024 * 1024;
/// Most established connections in total.
pub const MAX_CONNECTIONS: u32 = 512;
/// Most incoming connections still in their handshake.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Most connections to one peer: one is kept, a second may exist briefly while two peers dial
/// each other at once and the duplicate is being closed.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Commands queued for the network task before senders wait.
pub const COMMAND_CHANNEL_CAPACITY: usize = 256;
/// Time a connection with no open streams stays up. Long, because peers of a sync mesh talk
/// often and a live connection is what makes changes arrive in milliseconds.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// How often connections are pinged; a failed ping closes the connection so that static peers
/// are redialled instead of hanging on a dead socket.
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// Time after which a request without a response fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent inbound plus outbound streams of our protocol per connection.
pub const MAX_CONCURRENT_STREAMS: usize = 64;
/// Hellos said again to a still-connected peer whose hello failed, before disconnecting it.
pub const MAX_HELLO_RETRIES: u32 = 3;
/// First pause between Kademlia lookups of our own id (which is how we find more peers); it
/// doubles after each lookup up to [`DISCOVERY_INTERVAL_MAX`] and drops back when peers appear.
pub const DISCOVERY_INTERVAL_MIN: Duration = Duration::from_millis(500);
/// Longest pause between Kademlia lookups.
pub const DISCOVERY_INTERVAL_MAX: Duration = Duration::from_secs(60);
/// Kademlia protocol name, distinct from the public IPFS DHT so the two never mix.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/meshsync/kad/1.0.0");
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/meshsync/id/1.0.0";

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

/// What the network task needs to start.
#[derive(Debug, Clone)]
pub struct NetConfig {
    /// Listen addresses.
    pub listen: Vec<Multiaddr>,
    /// Static peers.
    pub peers: Vec<Multiaddr>,
    /// Kademlia bootstrap peers.
    pub bootstrap: Vec<crate::config::BootstrapPeer>,
    /// Whether mDNS runs.
    pub mdns: bool,
    /// Auto-dial budget for discovered peers.
    pub max_discovered_peers: usize,
    /// If not empty, the only peers allowed to connect.
    pub trusted_peers: Vec<PeerId>,
    /// Peers refused at connection time.
    pub blocked_peers: Vec<PeerId>,
    /// The private mesh key, if any.
    pub psk: Option<libp2p::pnet::PreSharedKey>,
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
    /// Last ping round trip in milliseconds.
    pub rtt_ms: Option<f64>,
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
    /// The first connection to a peer is up and it has said hello.
    PeerConnected(PeerId),
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
}

impl NetClient {
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

    /// Sends `request` to `peer` and waits for the answer (bounded by [`REQUEST_TIMEOUT`]).
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

    /// A client whose commands go to `commands`, for tests that play the network themselves.
    #[cfg(test)]
    pub(crate) fn from_channel(commands: mpsc::Sender<Command>) -> NetClient {
        NetClient { commands }
    }
}

/// The libp2p behaviours we compose.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Caps connections so that nobody can exhaust our file descriptors or memory by opening
    /// them ([`MAX_CONNECTIONS`], [`MAX_PENDING_INCOMING`], [`MAX_CONNECTIONS_PER_PEER`]).
    limits: connection_limits::Behaviour,
    /// Refuses new connections while the process uses more than
    /// [`MAX_MEMORY_FOR_NEW_CONNECTIONS`].
    memory: memory_connection_limits::Behaviour,
    /// Denies connections from peers outside `trusted_peers`, when that list is not empty, before
    /// any protocol (even identify) runs on them.
    allowed: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    sync: request_response::Behaviour<protocol::Codec>,
    kad: kad::Behaviour<kad::store::MemoryStore>,
    identify: identify::Behaviour,
    ping: ping::Behaviour,
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Builds the swarm, binds the listeners and starts the network task. Returns the handle and the
/// stream of [`NetEvent`]s.
///
/// The event channel is unbounded so the network task never waits on the rest of the daemon
/// (which itself waits on the network task): what bounds it is the number of connections times
/// [`MAX_CONCURRENT_STREAMS`] for requests, and one event per connection change.
pub fn spawn(
    keypair: Keypair,
    config: NetConfig,
) -> Result<(NetClient, mpsc::UnboundedReceiver<NetEvent>), NetError> {
    let local_id = keypair.public().to_peer_id();
    let mdns_on = config.mdns;
    let trusted = config.trusted_peers.clone();
    let psk = config.psk;
    let mut swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| transport::build(key, psk))
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_behaviour(|key| {
            let peer_id = key.public().to_peer_id();
            let sync = request_response::Behaviour::with_codec(
                protocol::Codec,
                [(PROTOCOL, request_response::ProtocolSupport::Full)],
                request_response::Config::default()
                    .with_request_timeout(REQUEST_TIMEOUT)
                    .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
            );
            let mut kad = kad::Behaviour::with_config(
                peer_id,
                kad::store::MemoryStore::new(peer_id),
                kad::Config::new(KAD_PROTOCOL),
            );
            // Server mode from the start: on a LAN nobody confirms an external address, and a
            // client-mode node would never answer lookups, so nobody would find anybody.
            kad.set_mode(Some(kad::Mode::Server));
            let identify = identify::Behaviour::new(
                identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
                    .with_agent_version(protocol::agent_version()),
            );
            let ping = ping::Behaviour::new(ping::Config::new().with_interval(PING_INTERVAL));
            let mdns = if mdns_on {
                Some(mdns::tokio::Behaviour::new(
                    mdns::Config::default(),
                    peer_id,
                )?)
            } else {
                None
            };
            let allowed = (!trusted.is_empty()).then(|| {
                let mut allowed =
                    allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
                for peer in &trusted {
                    allowed.allow_peer(*peer);
                }
                allowed
            });
            let limits = connection_limits::ConnectionLimits::default()
                .with_max_established(Some(MAX_CONNECTIONS))
                .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
                .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER));
            Ok(Behaviour {
                limits: connection_limits::Behaviour::new(limits),
                memory: memory_connection_limits::Behaviour::with_max_bytes(
                    MAX_MEMORY_FOR_NEW_CONNECTIONS,
                ),
                allowed: allowed.into(),
                blocked: allow_block_list::Behaviour::default(),
                sync,
                kad,
                identify,
                ping,
                mdns: mdns.into(),
            })
        })
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_swarm_config(|c| c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT))
        .build();

    let mut listening = 0;
    let mut last_error = None;
    for addr in &config.listen {
        match swarm.listen_on(addr.clone()) {
            Ok(_) => listening += 1,
            Err(e) => {
                warn!("cannot listen on {addr}: {e}");
                last_error = Some(NetError::Listen {
                    addr: addr.clone(),
                    message: e.to_string(),
                });
            }
        }
    }
    if listening == 0 {
        return Err(last_error.unwrap_or(NetError::Transport("no listen address".into())));
    }

    let now = Instant::now().into_std();
    let mut book = PeerBook::default();
    for addr in &config.peers {
        book.add_static(addr.clone(), now);
        if let Some(peer) = crate::config::peer_id_of(addr) {
            swarm.behaviour_mut().kad.add_address(&peer, addr.clone());
        }
    }
    for boot in &config.bootstrap {
        swarm
            .behaviour_mut()
            .kad
            .add_address(&boot.peer_id, boot.addr.clone());
        book.discovered(
            boot.peer_id,
            std::slice::from_ref(&boot.addr),
            Discovery::Bootstrap,
        );
        book.add_static(boot.addr.clone(), now);
    }

    for peer in &config.blocked_peers {
        swarm.behaviour_mut().blocked.block_peer(*peer);
    }
    let (tx, rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let (events, events_rx) = mpsc::unbounded_channel();
    let mut discovery = Backoff::new(DISCOVERY_INTERVAL_MIN, DISCOVERY_INTERVAL_MAX);
    let actor = NetActor {
        trusted: config.trusted_peers.iter().copied().collect(),
        events,
        pending_requests: HashMap::new(),
        hello_requests: HashMap::new(),
        hello_retries: HashMap::new(),
        swarm,
        local_id,
        commands: rx,
        book,
        mdns: mdns_on,
        max_discovered_peers: config.max_discovered_peers,
        discovered_dials: HashMap::new(),
        next_discovery: Instant::now() + discovery.next(),
        discovery,
        connection_roles: HashMap::new(),
        in_flight: guard::InFlight::default(),
        strikes: guard::Strikes::default(),
        blocked: config.blocked_peers.iter().copied().collect(),
        answered: HashMap::new(),
    };
    tokio::spawn(actor.run());
    Ok((NetClient { commands: tx }, events_rx))
}

struct NetActor {
    swarm: Swarm<Behaviour>,
    /// If not empty, the only peers we keep connections with.
    trusted: std::collections::HashSet<PeerId>,
    events: mpsc::UnboundedSender<NetEvent>,
    /// Requests sent for other parts of the daemon, waiting for their answer.
    pending_requests: HashMap<OutboundRequestId, oneshot::Sender<Result<Response, NetError>>>,
    /// Our hello requests, per peer; the peer is announced once its hello arrives.
    hello_requests: HashMap<OutboundRequestId, PeerId>,
    /// Hellos said again to a peer since its last answer (see `hello_failed`).
    hello_retries: HashMap<PeerId, u32>,
    local_id: PeerId,
    commands: mpsc::Receiver<Command>,
    book: PeerBook,
    mdns: bool,
    max_discovered_peers: usize,
    /// Dials to discovered peers still in flight, with what found them; they count against the
    /// auto-dial budget.
    discovered_dials: HashMap<ConnectionId, Discovery>,
    /// When the next Kademlia lookup of our own id is due.
    next_discovery: Instant,
    /// The pause before the lookup after the one at `next_discovery`.
    discovery: Backoff,
    /// Per peer, each open connection and whether we dialled it, for de-duplication.
    connection_roles: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    in_flight: guard::InFlight,
    strikes: guard::Strikes,
    /// Peers blocked for good (config or `peer block`), which a ban running out must not free.
    blocked: std::collections::HashSet<PeerId>,
    /// Per connected peer, its requests answered so far ([`PeerStatus::answered`]); an entry
    /// lives only while the peer is connected, so this is bounded like the connections.
    answered: HashMap<PeerId, u64>,
}

impl NetActor {
    async fn run(mut self) {
        let far_future = Duration::from_secs(24 * 3600);
        loop {
            let static_due = self
                .book
                .next_static_due()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + far_future);
            let ban_ends = self
                .strikes
                .next_expiry()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + far_future);
            tokio::select! {
                biased;
                command = self.commands.recv() => match command {
                    Some(Command::Shutdown { reply }) => {
                        self.shutdown();
                        let _ = reply.send(());
                        return;
                    }
                    Some(command) => self.on_command(command),
                    None => {
                        self.shutdown();
                        return;
                    }
                },
                event = self.swarm.select_next_some() => self.on_swarm_event(event),
                _ = tokio::time::sleep_until(static_due) => self.dial_due_statics(),
                _ = tokio::time::sleep_until(self.next_discovery) => self.on_discovery_timer(),
                _ = tokio::time::sleep_until(ban_ends) => self.end_bans(),
            }
        }
    }

    fn end_bans(&mut self) {
        for peer in self.strikes.expired(Instant::now().into_std()) {
            if !self.blocked.contains(&peer) {
                info!(%peer, "ban over");
                self.swarm.behaviour_mut().blocked.unblock_peer(peer);
            }
        }
    }

    fn shutdown(&mut self) {
        let peers: Vec<PeerId> = self.swarm.connected_peers().copied().collect();
        for peer in peers {
            let _ = self.swarm.disconnect_peer_id(peer);
        }
        info!("network stopped");
    }

    fn on_command(&mut self, command: Command) {
        match command {
            Command::Status { reply } => {
                let _ = reply.send(self.status());
            }
            Command::AddStaticPeer { addr, reply } => {
                let added = self
                    .book
                    .add_static(addr.clone(), Instant::now().into_std());
                if let Some(peer) = crate::config::peer_id_of(&addr) {
                    self.swarm
                        .behaviour_mut()
                        .kad
                        .add_address(&peer, addr.clone());
                }
                self.dial_due_statics();
                let _ = reply.send(Ok(added));
            }
            Command::Request {
                peer,
                request,
                reply,
            } => {
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
            Command::Respond { channel, response } => {
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
            Command::Strike { peer, reason } => {
                if self.strikes.strike(peer, Instant::now().into_std()) {
                    warn!(
                        %peer,
                        "{reason}: strike {}; disconnected and refused for {:?}",
                        guard::MAX_STRIKES,
                        guard::STRIKE_BAN
                    );
                    self.swarm.behaviour_mut().blocked.block_peer(peer);
                } else {
                    warn!(%peer, "{reason}");
                }
            }
            Command::Dial { addrs } => {
                for addr in addrs {
                    if let Some(peer) = crate::config::peer_id_of(&addr) {
                        self.on_discovered(peer, std::slice::from_ref(&addr), Discovery::Static);
                    }
                }
            }
            Command::StartProviding { key } => {
                if let Err(e) = self
                    .swarm
                    .behaviour_mut()
                    .kad
                    .start_providing(kad::RecordKey::new(&key))
                {
                    warn!("cannot announce a provider record: {e}");
                }
            }
            Command::FindProviders { key } => {
                self.swarm
                    .behaviour_mut()
                    .kad
                    .get_providers(kad::RecordKey::new(&key));
            }
            Command::BlockPeer { peer, reply } => {
                self.blocked.insert(peer);
                let newly = self.swarm.behaviour_mut().blocked.block_peer(peer);
                if newly {
                    info!(%peer, "blocked");
                }
                let _ = reply.send(newly);
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    fn status(&self) -> NetStatus {
        let listen_addrs = self
            .swarm
            .listeners()
            .map(|a| a.clone().with(Protocol::P2p(self.local_id)).to_string())
            .collect();
        let peers = self
            .book
            .connected_peers()
            .into_iter()
            .map(|(id, p)| PeerStatus {
                peer_id: id.to_string(),
                found_by: p.connections.values().next().map_or(p.found_by, |c| c.via),
                addrs: p
                    .connections
                    .values()
                    .map(|c| c.remote.to_string())
                    .collect(),
                agent: p.agent.clone(),
                rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                answered: self.answered.get(&id).copied().unwrap_or(0),
            })
            .collect();
        NetStatus {
            peer_id: self.local_id.to_string(),
            listen_addrs,
            peers,
            static_peers: self
                .book
                .static_addrs()
                .iter()
                .map(|a| a.to_string())
                .collect(),
            mdns: self.mdns,
            banned: self.strikes.banned().map(|p| p.to_string()).collect(),
        }
    }

    fn dial_due_statics(&mut self) {
        let now = Instant::now().into_std();
        for (index, addr) in self.book.due_static_dials(now) {
            let opts = DialOpts::unknown_peer_id().address(addr.clone()).build();
            let connection = opts.connection_id();
            self.book.static_dialing(index, connection);
            if let Err(e) = self.swarm.dial(opts) {
                debug!("cannot dial static peer {addr}: {e}");
                self.book.dial_failed(connection, now);
            }
        }
    }

    fn on_discovery_timer(&mut self) {
        // Looking up our own id walks the DHT towards us and returns the peers closest to us;
        // in a small mesh that is everyone, which is how a node that only knows one peer meets
        // the rest.
        self.swarm
            .behaviour_mut()
            .kad
            .get_closest_peers(self.local_id);
        self.next_discovery = Instant::now() + self.discovery.next();
    }

    /// Brings the next lookup forward, because the set of peers just changed.
    fn discover_soon(&mut self) {
        // The soon lookup takes the shortest pause; the one after it waits twice that.
        self.discovery.reset();
        let soon = Instant::now() + self.discovery.next();
        self.next_discovery = self.next_discovery.min(soon);
    }

    fn is_allowed(&self, peer: &PeerId) -> bool {
        self.trusted.is_empty() || self.trusted.contains(peer)
    }

    fn on_discovered(&mut self, peer: PeerId, addrs: &[Multiaddr], how: Discovery) {
        if peer == self.local_id || !self.is_allowed(&peer) {
            return;
        }
        for addr in addrs {
            self.swarm
                .behaviour_mut()
                .kad
                .add_address(&peer, addr.clone());
        }
        if !self.book.discovered(peer, addrs, how) || self.book.is_static(&peer) {
            return;
        }
        let budget_used = self.book.connected_discovered() + self.discovered_dials.len();
        if budget_used >= self.max_discovered_peers || self.swarm.is_connected(&peer) {
            return;
        }
        let known = self.book.addrs(&peer);
        if known.is_empty() {
            return;
        }
        let opts = DialOpts::peer_id(peer)
            .addresses(known)
            .condition(PeerCondition::DisconnectedAndNotDialing)
            .build();
        let connection = opts.connection_id();
        match self.swarm.dial(opts) {
            Ok(()) => {
                debug!(%peer, via = ?how, "dialling discovered peer");
                self.discovered_dials.insert(connection, how);
            }
            Err(e) => debug!(%peer, "not dialling discovered peer: {e}"),
        }
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        match event {
            SwarmEvent::NewListenAddr { address, .. } => {
                info!(
                    "listening on {}",
                    address.with(Protocol::P2p(self.local_id))
                );
            }
            SwarmEvent::ConnectionEstablished {
                peer_id,
                connection_id,
                endpoint,
                num_established,
                ..
            } => self.on_connection_established(
                peer_id,
                connection_id,
                endpoint,
                num_established.get(),
            ),
            SwarmEvent::ConnectionClosed {
                peer_id,
                connection_id,
                num_established,
                cause,
                ..
            } => {
                self.discovered_dials.remove(&connection_id);
                self.book
                    .disconnected(peer_id, connection_id, Instant::now().into_std());
                if let Some(roles) = self.connection_roles.get_mut(&peer_id) {
                    roles.retain(|(c, _)| *c != connection_id);
                    if roles.is_empty() {
                        self.connection_roles.remove(&peer_id);
                    }
                }
                if num_established == 0 {
                    self.hello_retries.remove(&peer_id);
                    self.answered.remove(&peer_id);
                    let _ = self.events.send(NetEvent::PeerDisconnected(peer_id));
                    match cause {
                        Some(cause) => info!(peer = %peer_id, "disconnected: {cause}"),
                        None => info!(peer = %peer_id, "disconnected"),
                    }
                }
            }
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => {
                self.discovered_dials.remove(&connection_id);
                self.book
                    .dial_failed(connection_id, Instant::now().into_std());
                debug!(peer = ?peer_id, "dial failed: {error}");
            }
            SwarmEvent::IncomingConnectionError {
                send_back_addr,
                error,
                ..
            } => debug!("incoming connection from {send_back_addr} failed: {error}"),
            SwarmEvent::ListenerError { error, .. } => warn!("listener error: {error}"),
            SwarmEvent::Behaviour(event) => self.on_behaviour_event(event),
            _ => {}
        }
    }

    fn on_connection_established(
        &mut self,
        peer: PeerId,
        connection: ConnectionId,
        endpoint: ConnectedPoint,
        num_established: u32,
    ) {
        if !self.is_allowed(&peer) {
            warn!(%peer, "refused a connection: not in trusted_peers");
            self.discovered_dials.remove(&connection);
            self.swarm.close_connection(connection);
            return;
        }
        let dialed = endpoint.is_dialer();
        // Besides our own dials (static, discovered) only Kademlia dials: its lookups connect to
        // the peers they learn about. Static dials are recognised by the peer book.
        let dialed_for = self
            .discovered_dials
            .remove(&connection)
            .or(dialed.then_some(Discovery::Kad));
        let remote = endpoint.get_remote_address().clone();
        self.book
            .connected(peer, connection, remote.clone(), dialed, dialed_for);
        let roles = self.connection_roles.entry(peer).or_default();
        roles.push((connection, dialed));
        if num_established == 1 {
            info!(%peer, "connected via {remote}");
            self.say_hello(peer);
            self.discover_soon();
        } else {
            self.deduplicate_connections(peer);
        }
    }

    /// Keeps one connection per peer. Both sides may dial each other at once, and one side may
    /// dial twice (a static dial racing a discovery dial). The dialer drops its newer duplicate
    /// dials; across directions both keep the one dialled by the peer with the smaller id, so
    /// they agree without talking about it.
    fn deduplicate_connections(&mut self, peer: PeerId) {
        let Some(roles) = self.connection_roles.get(&peer) else {
            return;
        };
        let ours: Vec<ConnectionId> = roles.iter().filter(|(_, d)| *d).map(|(c, _)| *c).collect();
        let theirs: Vec<ConnectionId> =
            roles.iter().filter(|(_, d)| !*d).map(|(c, _)| *c).collect();
        let mut redundant: Vec<ConnectionId> = ours.iter().skip(1).copied().collect();
        if !ours.is_empty() && !theirs.is_empty() {
            if self.local_id < peer {
                redundant.extend(&theirs);
            } else {
                redundant.push(ours[0]);
            }
        }
        for connection in redundant {
            debug!(%peer, "closing duplicate connection");
            self.swarm.close_connection(connection);
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                let addrs: Vec<Multiaddr> = info
                    .listen_addrs
                    .into_iter()
                    .take(peers::MAX_ADDRS_PER_PEER)
                    .collect();
                self.on_discovered(peer_id, &addrs, Discovery::Inbound);
            }
            BehaviourEvent::Kad(kad::Event::RoutingUpdated {
                peer, addresses, ..
            }) => {
                let addrs = addresses.into_vec();
                self.on_discovered(peer, &addrs, Discovery::Kad);
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result: kad::QueryResult::GetClosestPeers(Ok(found)),
                ..
            }) => {
                for info in found.peers {
                    self.on_discovered(info.peer_id, &info.addrs, Discovery::Kad);
                }
            }
            BehaviourEvent::Kad(kad::Event::OutboundQueryProgressed {
                result:
                    kad::QueryResult::GetProviders(Ok(kad::GetProvidersOk::FoundProviders {
                        key,
                        providers,
                    })),
                ..
            }) => {
                let peers: Vec<PeerId> = providers
                    .into_iter()
                    .filter(|p| *p != self.local_id)
                    .collect();
                for peer in &peers {
                    if !self.swarm.is_connected(peer) {
                        let opts = DialOpts::peer_id(*peer)
                            .condition(PeerCondition::DisconnectedAndNotDialing)
                            .build();
                        let connection = opts.connection_id();
                        if self.swarm.dial(opts).is_ok() {
                            self.discovered_dials.insert(connection, Discovery::Kad);
                        }
                    }
                }
                let _ = self.events.send(NetEvent::ProvidersFound {
                    key: key.to_vec(),
                    peers,
                });
            }
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => {
                let mut by_peer: HashMap<PeerId, Vec<Multiaddr>> = HashMap::new();
                for (peer, addr) in list {
                    by_peer.entry(peer).or_default().push(addr);
                }
                for (peer, addrs) in by_peer {
                    debug!(%peer, "found by mDNS");
                    self.on_discovered(peer, &addrs, Discovery::Mdns);
                }
            }
            BehaviourEvent::Ping(ping::Event {
                peer,
                connection,
                result,
            }) => match result {
                Ok(rtt) => self.book.set_rtt(&peer, rtt),
                // A peer without ping is odd but alive; only silence means the link is dead.
                Err(ping::Failure::Unsupported) => {}
                Err(e) => {
                    debug!(%peer, "ping failed, closing connection: {e}");
                    self.swarm.close_connection(connection);
                }
            },
            _ => {}
        }
    }

    fn on_sync_event(&mut self, event: request_response::Event<Request, Response>) {
        use request_response::{Event, Message};
        match event {
            Event::Message {
                peer,
                message:
                    Message::Request {
                        request, channel, ..
                    },
                ..
            } => match request {
                Request::Hello(hello) => {
                    self.on_hello(peer, hello);
                    let response = Response::Hello(Hello::ours());
                    let _ = self
                        .swarm
                        .behaviour_mut()
                        .sync
                        .send_response(channel, response);
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
                    }
                    None => {
                        debug!(%peer, "too many requests in flight; answered busy");
                        let _ = self.swarm.behaviour_mut().sync.send_response(
                            channel,
                            Response::Error("busy: too many requests in flight".into()),
                        );
                    }
                },
            },
            Event::Message {
                peer,
                message:
                    Message::Response {
                        request_id,
                        response,
                    },
                ..
            } => {
                if let Some(reply) = self.pending_requests.remove(&request_id) {
                    let _ = reply.send(Ok(response));
                } else if self.hello_requests.remove(&request_id).is_some() {
                    match response {
                        Response::Hello(hello) => {
                            self.hello_retries.remove(&peer);
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
            Event::OutboundFailure {
                peer,
                request_id,
                error,
                ..
            } => {
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
            Event::InboundFailure { peer, error, .. } => {
                warn!(%peer, "bad request from peer: {error}");
            }
            Event::ResponseSent { .. } => {}
        }
    }

    /// Says hello again when a hello failed but the peer is still connected. It fails that way
    /// when the connection it went out on is closed as a duplicate while another one to the
    /// same peer stays up; without a new hello the peer never counted as connected (no
    /// membership checks, nothing synced) until that other connection dropped too.
    fn hello_failed(&mut self, peer: PeerId) {
        if !self.swarm.is_connected(&peer) {
            // A later connection says hello itself.
            debug!(%peer, "hello failed; not connected any more");
            self.hello_retries.remove(&peer);
            return;
        }
        debug!(%peer, "hello failed; saying it again");
        let tries = self.hello_retries.entry(peer).or_insert(0);
        *tries += 1;
        if *tries > MAX_HELLO_RETRIES {
            warn!(%peer, "peer does not answer hello; disconnecting");
            self.hello_retries.remove(&peer);
            let _ = self.swarm.disconnect_peer_id(peer);
            return;
        }
        self.say_hello(peer);
    }

    /// Sends our hello; its answer makes the peer count as connected ([`NetEvent::PeerConnected`]).
    fn say_hello(&mut self, peer: PeerId) {
        let id = self
            .swarm
            .behaviour_mut()
            .sync
            .send_request(&peer, Request::Hello(Hello::ours()));
        self.hello_requests.insert(id, peer);
    }

    /// Checks a peer's hello; returns whether we can talk to it.
    fn on_hello(&mut self, peer: PeerId, hello: Hello) -> bool {
        let agent: String = hello
            .agent
            .chars()
            .take(protocol::MAX_AGENT_CHARS)
            .collect();
        if hello.protocol_version != PROTOCOL_VERSION {
            warn!(
                %peer,
                "peer speaks protocol version {} ({agent}), we speak {PROTOCOL_VERSION}; disconnecting",
                hello.protocol_version
            );
            let _ = self.swarm.disconnect_peer_id(peer);
            return false;
        }
        self.book.set_agent(&peer, agent);
        true
    }
}
