//! Building the swarm: the transport, the composed [`Behaviour`] (connection limits, allow and
//! block lists, our request-response protocol, Kademlia, identify, ping, mDNS) with their
//! configurations and limits, and binding the listen addresses.
//!
//! Nothing here runs: it returns a ready [`Swarm`] that [`super::actor`] then drives.

use std::time::Duration;

use libp2p::swarm::NetworkBehaviour;
use libp2p::swarm::behaviour::toggle::Toggle;
use libp2p::{
    Multiaddr, PeerId, StreamProtocol, Swarm, allow_block_list, connection_limits, identify,
    identity::Keypair, kad, mdns, memory_connection_limits, request_response,
};
use tracing::warn;

use super::activity::Activity;
use super::admission::Admission;
use super::budget::InboundBudget;
use super::liveness::Liveness;
use super::protocol::{self, PROTOCOL};
use super::sync::SyncProtocol;
use super::transport::{self, MAX_STREAMS_PER_CONNECTION};
use super::{NetConfig, NetError};

/// Resident memory above which new connections are refused (existing ones carry on).
pub const MAX_MEMORY_FOR_NEW_CONNECTIONS: usize = 1024 * 1024 * 1024;
/// Most established connections in total: more than a mesh of one person's machines needs
/// (members sync through each other, not every pair needs a connection), and few enough that
/// what each costs below our protocol keeps the worst case under attack near 256 MiB (README,
/// "Limits").
pub const MAX_CONNECTIONS: u32 = 80;
/// Incoming streams one connection may have in protocol negotiation at once (libp2p's
/// default); each holds at most one negotiation message (16 KiB) until its protocol is known.
/// 16 cost a fifth of the records throughput: a burst of requests opens many streams at once.
pub const MAX_NEGOTIATING_STREAMS: usize = 128;
/// Most incoming connections still in their handshake.
pub const MAX_PENDING_INCOMING: u32 = 64;
/// Most connections to one peer: one is kept, a second may exist briefly while two peers dial
/// each other at once and the duplicate is being closed.
pub const MAX_CONNECTIONS_PER_PEER: u32 = 2;
/// Time a connection with no open streams stays up. Long, because peers of a sync mesh talk
/// often and a live connection is what makes changes arrive in milliseconds.
pub const IDLE_CONNECTION_TIMEOUT: Duration = Duration::from_secs(3600);
/// Time after which a request without a response fails.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Concurrent inbound plus outbound streams of our protocol per connection: as many as Yamux
/// allows in all, so Yamux's limit is always the one met.
pub const MAX_CONCURRENT_STREAMS: usize = MAX_STREAMS_PER_CONNECTION;
/// Kademlia protocol name, distinct from the public IPFS DHT so the two never mix.
pub const KAD_PROTOCOL: StreamProtocol = StreamProtocol::new("/meshsync/kad/1.0.0");
/// Identify protocol version string.
pub const IDENTIFY_PROTOCOL: &str = "/meshsync/id/1.0.0";
/// Pause between Kademlia's own bootstraps (a lookup of our id, then one in each bucket farther
/// out, to refresh the routing table); libp2p's default is 5 min, tuned for the churn of a
/// public DHT. Ours finds newcomers with its own lookups of our id
/// ([`super::DISCOVERY_INTERVAL_MAX`]) and members with provider lookups, so this only keeps
/// far buckets fresh: over a 32-daemon mesh, each bootstrap asks about 20 peers per bucket.
pub const KAD_BOOTSTRAP_INTERVAL: Duration = Duration::from_secs(30 * 60);
/// Pause between identify exchanges on a connection after the first (libp2p's default: 5 min).
/// They only matter when a peer's listen addresses change while it stays connected (a peer whose
/// address changes usually reconnects, and a reconnect identifies at once); every 5 min over
/// the 496 connections of a 32-daemon mesh they were 3 exchanges a second.
pub const IDENTIFY_INTERVAL: Duration = Duration::from_secs(30 * 60);

/// The libp2p behaviours we compose.
#[derive(NetworkBehaviour)]
pub struct Behaviour {
    /// Caps connections so that nobody can exhaust our file descriptors or memory by opening
    /// them ([`MAX_CONNECTIONS`], [`MAX_PENDING_INCOMING`], [`MAX_CONNECTIONS_PER_PEER`]).
    limits: connection_limits::Behaviour,
    /// Caps incoming connections and handshakes per remote IP address.
    pub(super) admission: Admission,
    /// Refuses new connections while the process uses more than
    /// [`MAX_MEMORY_FOR_NEW_CONNECTIONS`].
    memory: memory_connection_limits::Behaviour,
    /// Denies connections from peers outside `trusted_peers`, when that list is not empty, before
    /// any protocol (even identify) runs on them.
    allowed: Toggle<allow_block_list::Behaviour<allow_block_list::AllowedPeers>>,
    /// Peers refused at connection time: blocked for good, or banned for a while by strikes.
    pub(super) blocked: allow_block_list::Behaviour<allow_block_list::BlockedPeers>,
    /// Our own request-response protocol ([`protocol`]), its request frames read within the
    /// inbound buffer budget ([`super::budget`]).
    pub(super) sync: SyncProtocol,
    /// The DHT, used to find more peers and the providers of a share.
    pub(super) kad: kad::Behaviour<kad::store::MemoryStore>,
    /// Learns the addresses peers listen on (fed into Kademlia).
    identify: identify::Behaviour,
    /// Pings connections that have gone quiet, when the actor asks ([`super::silence`]), and
    /// answers the peers' pings.
    pub(super) liveness: Liveness,
    /// Local-network discovery, when enabled.
    mdns: Toggle<mdns::tokio::Behaviour>,
}

/// Builds the swarm for `keypair` with the transport and behaviours `config` asks for. Listens
/// nowhere yet (see [`listen`]).
pub fn build(
    keypair: Keypair,
    config: &NetConfig,
    activity: &Activity,
) -> Result<Swarm<Behaviour>, NetError> {
    let psk = config.psk;
    let activity = activity.clone();
    let swarm = libp2p::SwarmBuilder::with_existing_identity(keypair)
        .with_tokio()
        .with_other_transport(|key| transport::build(key, psk, activity))
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_behaviour(|key| behaviour(key, config))
        .map_err(|e| NetError::Transport(e.to_string()))?
        .with_swarm_config(|c| {
            c.with_idle_connection_timeout(IDLE_CONNECTION_TIMEOUT)
                .with_max_negotiating_inbound_streams(MAX_NEGOTIATING_STREAMS)
        })
        .build();
    Ok(swarm)
}

/// Composes the behaviours, each with its limits.
fn behaviour(
    key: &Keypair,
    config: &NetConfig,
) -> Result<Behaviour, Box<dyn std::error::Error + Send + Sync>> {
    let peer_id = key.public().to_peer_id();
    let budget = InboundBudget::new(config.inbound_buffer);
    let identify = identify::Behaviour::new(
        identify::Config::new(IDENTIFY_PROTOCOL.into(), key.public())
            .with_agent_version(protocol::agent_version())
            .with_interval(IDENTIFY_INTERVAL),
    );
    let mdns = if config.mdns {
        Some(mdns::tokio::Behaviour::new(
            mdns::Config::default(),
            peer_id,
        )?)
    } else {
        None
    };
    Ok(Behaviour {
        limits: connection_limits::Behaviour::new(connection_limits()),
        admission: Admission::default(),
        memory: memory_connection_limits::Behaviour::with_max_bytes(MAX_MEMORY_FOR_NEW_CONNECTIONS),
        allowed: allowed_peers(&config.trusted_peers).into(),
        blocked: allow_block_list::Behaviour::default(),
        sync: SyncProtocol::new(sync_behaviour(budget.clone()), budget),
        kad: kad_behaviour(peer_id),
        identify,
        liveness: Liveness::default(),
        mdns: mdns.into(),
    })
}

/// The connection caps: [`MAX_CONNECTIONS`], [`MAX_PENDING_INCOMING`],
/// [`MAX_CONNECTIONS_PER_PEER`].
fn connection_limits() -> connection_limits::ConnectionLimits {
    connection_limits::ConnectionLimits::default()
        .with_max_established(Some(MAX_CONNECTIONS))
        .with_max_pending_incoming(Some(MAX_PENDING_INCOMING))
        .with_max_established_per_peer(Some(MAX_CONNECTIONS_PER_PEER))
}

/// The allow list, only when `trusted` is not empty (an empty allow list would refuse everyone).
fn allowed_peers(
    trusted: &[PeerId],
) -> Option<allow_block_list::Behaviour<allow_block_list::AllowedPeers>> {
    (!trusted.is_empty()).then(|| {
        let mut allowed = allow_block_list::Behaviour::<allow_block_list::AllowedPeers>::default();
        for peer in trusted {
            allowed.allow_peer(*peer);
        }
        allowed
    })
}

/// Our protocol on the size-limiting codec, with [`REQUEST_TIMEOUT`] and
/// [`MAX_CONCURRENT_STREAMS`].
fn sync_behaviour(budget: InboundBudget) -> request_response::Behaviour<protocol::Codec> {
    request_response::Behaviour::with_codec(
        protocol::Codec::new(budget),
        [(PROTOCOL, request_response::ProtocolSupport::Full)],
        request_response::Config::default()
            .with_request_timeout(REQUEST_TIMEOUT)
            .with_max_concurrent_streams(MAX_CONCURRENT_STREAMS),
    )
}

/// Kademlia on [`KAD_PROTOCOL`], in server mode, bootstrapping every [`KAD_BOOTSTRAP_INTERVAL`].
fn kad_behaviour(peer_id: PeerId) -> kad::Behaviour<kad::store::MemoryStore> {
    let mut config = kad::Config::new(KAD_PROTOCOL);
    config.set_periodic_bootstrap_interval(Some(KAD_BOOTSTRAP_INTERVAL));
    let mut kad =
        kad::Behaviour::with_config(peer_id, kad::store::MemoryStore::new(peer_id), config);
    // Server mode from the start: on a LAN nobody confirms an external address, and a
    // client-mode node would never answer lookups, so nobody would find anybody.
    kad.set_mode(Some(kad::Mode::Server));
    kad
}

/// Binds every address in `listen`. Addresses that fail are logged; it is an error only when
/// none can be bound.
pub fn listen(swarm: &mut Swarm<Behaviour>, listen: &[Multiaddr]) -> Result<(), NetError> {
    let mut listening = 0;
    let mut last_error = None;
    for addr in listen {
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
    Ok(())
}
