//! The network layer: one task owns the libp2p [`Swarm`](libp2p::Swarm); everyone else talks to
//! it through a cloneable [`NetClient`].
//!
//! Owning the swarm in a single task means no locks around it and a single place where every
//! connection, discovery and protocol event is handled in order. Commands carry a `oneshot` for
//! their reply, so callers `await` answers without sharing state.
//!
//! Transport: TCP + Noise (authenticated, encrypted) + Yamux (multiplexed streams). Discovery:
//! static peers (redialled with backoff), mDNS on the local network, and a Kademlia DHT in server
//! mode, fed with the addresses that identify and mDNS learn. Our own protocol is in
//! [`protocol`].
//!
//! # Layout
//!
//! - [`client`]: the handle [`NetClient`] and the messages: [`Command`] in, [`NetEvent`] out,
//!   [`NetStatus`], [`NetError`].
//! - [`swarm`]: building the swarm: transport, the composed [`Behaviour`] and its limits,
//!   listening.
//! - `actor`: the network task's loop and the dispatch of commands and events.
//! - `connections`: connections opening and closing, duplicates closed.
//! - `discovery`: static peers, share-token addresses, mDNS, identify, Kademlia.
//! - `requests`: our protocol on the swarm side: `pending_*` maps, inbound requests, hello.
//! - `activity`: when each connection last delivered any bytes (liveness besides pings).
//! - `silence`: when a quiet connection is pinged and when a silent one is dead.
//! - `liveness`: the pings themselves, sent only when `silence` asks for them.
//! - [`guard`]: per-peer and global limits on what peers make us do; strikes and bans.
//! - [`peers`]: the peer book (pure).
//! - [`protocol`]: the wire protocol.
//! - [`transport`]: TCP, pre-shared key, Noise, Yamux.

mod activity;
mod actor;
mod admission;
pub mod budget;
pub mod client;
mod connections;
mod discovery;
pub mod features;
pub mod guard;
mod hello;
mod liveness;
pub mod peers;
pub mod protocol;
mod requests;
mod shunned;
mod silence;
pub mod swarm;
mod sync;
pub mod transport;

pub use actor::CONNECTION_LINES_PER_ADDRESS;
pub use client::{
    COMMAND_CHANNEL_CAPACITY, Command, NetClient, NetError, NetEvent, NetStatus, PeerStatus,
};
pub use guard::Reply;
pub use hello::MAX_HELLO_RETRIES;
pub use peers::{DISCOVERY_INTERVAL_MAX, DISCOVERY_INTERVAL_MIN};
pub use requests::{
    CLOCK_CHECK_INTERVAL, CLOCK_CHECK_SETTLED, CLOCK_OFFSET_WARNING, CLOCK_SETTLED_WITHIN,
};
pub use silence::{
    LIVENESS_TIMEOUT, PING_ANSWER_WITHIN, QUIET_BEFORE_PING, RTT_REFRESH, WAITING_QUIET_BEFORE_PING,
};
pub use swarm::{
    Behaviour, BehaviourEvent, IDENTIFY_INTERVAL, IDENTIFY_PROTOCOL, IDLE_CONNECTION_TIMEOUT,
    KAD_BOOTSTRAP_INTERVAL, KAD_PROTOCOL, MAX_CONCURRENT_STREAMS, MAX_CONNECTIONS,
    MAX_CONNECTIONS_PER_PEER, MAX_MEMORY_FOR_NEW_CONNECTIONS, MAX_PENDING_INCOMING,
    REQUEST_TIMEOUT,
};

use std::sync::Arc;

use libp2p::{Multiaddr, PeerId, identity::Keypair};
use tokio::sync::mpsc;

use actor::NetActor;

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
    /// Bounds of the bytes buffered for request frames still arriving.
    pub inbound_buffer: budget::Limits,
    /// Our device name, said in our hello.
    pub name: Option<String>,
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
    let activity = activity::Activity::default();
    let mut swarm = swarm::build(keypair, &config, &activity)?;
    swarm::listen(&mut swarm, &config.listen)?;
    let book = discovery::seed(&mut swarm, &config);
    for peer in &config.blocked_peers {
        swarm.behaviour_mut().blocked.block_peer(*peer);
    }
    let (tx, rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY);
    let (events, events_rx) = mpsc::unbounded_channel();
    // Names come out as `meshsync_libp2p_…`, beside our own `meshsync_…` metrics.
    let mut registry = prometheus_client::registry::Registry::with_prefix("meshsync");
    let metrics = libp2p::metrics::Metrics::new(&mut registry);
    let actor = NetActor::new(swarm, &config, book, activity, rx, events, metrics);
    let features = actor.features.clone();
    tokio::spawn(actor.run());
    Ok((NetClient::new(tx, Arc::new(registry), features), events_rx))
}
