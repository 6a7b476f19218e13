//! The network task: [`NetActor`] owns the [`Swarm`] and runs the one loop that takes
//! [`Command`]s, swarm events and timers in turn, handing each to an `on_*` step.
//!
//! Owning the swarm in a single task means no locks around it and a single place where every
//! event is handled in order. The steps themselves live beside their subject:
//! [`super::connections`] (connections opening and closing), [`super::discovery`] (static peers,
//! mDNS, Kademlia, identify) and [`super::requests`] (our protocol and its `pending_*` maps);
//! this file keeps the loop, the dispatch, and what fits none of them (status, strikes, blocks,
//! ping, shutdown).

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use libp2p::multiaddr::Protocol;
use libp2p::request_response::OutboundRequestId;
use libp2p::swarm::{ConnectionId, SwarmEvent};
use libp2p::{PeerId, Swarm, identify, mdns};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::activity::Activity;
use super::client::{Command, GuardStatus, NetError, NetEvent, NetStatus, PeerStatus};
use super::features::Features;
use super::guard;
use super::hello::HelloRetries;
use super::liveness;
use super::peers::{DISCOVERY_INTERVAL_MAX, DISCOVERY_INTERVAL_MIN};
use super::peers::{Discovery, PeerBook};
use super::protocol::Response;
use super::silence::{LIVENESS_TIMEOUT, Silence};
use super::swarm::{Behaviour, BehaviourEvent};
use crate::backoff::Backoff;
use crate::quiet::LogLimiter;

/// Connection lines said at info per remote address and direction per minute: enough for the
/// few peers one machine runs (or a loopback demo), not for a host making up identities.
pub const CONNECTION_LINES_PER_ADDRESS: u32 = 4;

/// How often connections are checked against the silence rule ([`super::silence`]): pinged
/// when quiet, closed when dead; while we wait on a peer or a ping of ours is unanswered.
pub const LIVENESS_CHECK: Duration = Duration::from_secs(1);
/// How often they are checked otherwise: nothing is due sooner than an idle link's ping
/// ([`super::QUIET_BEFORE_PING`], 20 s), which may come this much late. A check a second
/// was a wake-up a second of every idle daemon.
pub const IDLE_LIVENESS_CHECK: Duration = Duration::from_secs(5);

/// How far away a timer with nothing to wait for is set, so the loop's `select!` has a deadline
/// for every branch.
const FAR_FUTURE: Duration = Duration::from_secs(24 * 3600);

/// The state of the network task. Fields are visible to the sibling files that hold its steps.
pub(super) struct NetActor {
    /// The swarm, owned here and nowhere else.
    pub(super) swarm: Swarm<Behaviour>,
    /// If not empty, the only peers we keep connections with.
    pub(super) trusted: HashSet<PeerId>,
    /// Where [`NetEvent`]s go.
    pub(super) events: mpsc::UnboundedSender<NetEvent>,
    /// Requests sent for other parts of the daemon, with the peer asked, waiting for their
    /// answer.
    pub(super) pending_requests:
        HashMap<OutboundRequestId, (PeerId, oneshot::Sender<Result<Response, NetError>>)>,
    /// Our hello requests, per peer; the peer is announced once its hello arrives.
    pub(super) hello_requests: HashMap<OutboundRequestId, (PeerId, std::time::Instant)>,
    /// Hellos sent again to measure a connected peer's clock offset anew, with when they were
    /// sent; at most one per connected peer every [`super::requests::CLOCK_CHECK_INTERVAL`].
    pub(super) clock_checks: HashMap<OutboundRequestId, std::time::Instant>,
    /// When the clocks of connected peers are next measured.
    pub(super) next_clock_check: Instant,
    /// Hellos said again to a peer since its last answer (see `hello_failed`).
    pub(super) hello_retries: HelloRetries,
    /// Our own peer id.
    pub(super) local_id: PeerId,
    /// Our device name, said in our hello.
    pub(super) name: Option<String>,
    /// Where [`Command`]s arrive.
    commands: mpsc::Receiver<Command>,
    /// Known peers: static, discovered, connected.
    pub(super) book: PeerBook,
    /// Whether mDNS runs (for status).
    mdns: bool,
    /// Auto-dial budget for discovered peers.
    pub(super) max_discovered_peers: usize,
    /// Dials to discovered peers still in flight, with what found them; they count against the
    /// auto-dial budget.
    pub(super) discovered_dials: HashMap<ConnectionId, Discovery>,
    /// When the next Kademlia lookup of our own id is due.
    pub(super) next_discovery: Instant,
    /// The pause before the lookup after the one at `next_discovery`.
    pub(super) discovery: Backoff,
    /// When connections are next checked against the silence rule.
    pub(super) next_liveness_check: Instant,
    /// Per peer, each open connection and whether we dialled it, for de-duplication.
    pub(super) connection_roles: HashMap<PeerId, Vec<(ConnectionId, bool)>>,
    /// Inbound requests waiting for our answer, per peer and in total.
    pub(super) in_flight: guard::InFlight,
    /// Strikes against lying peers and the bans they earned.
    strikes: guard::Strikes,
    /// Peers blocked for good (config or `peer block`), which a ban running out must not free.
    blocked: HashSet<PeerId>,
    /// Per connected peer, its requests answered so far ([`PeerStatus::answered`]); an entry
    /// lives only while the peer is connected, so this is bounded like the connections.
    pub(super) answered: HashMap<PeerId, u64>,
    /// Connected peers that answered or said hello: meshsync peers, whose comings and goings
    /// are worth an info line (anyone else's are debug: a stranger could fill the log).
    pub(super) met: HashSet<PeerId>,
    /// Warnings a peer can cause once per request, said once per peer and interval.
    pub(super) quiet: LogLimiter<(PeerId, &'static str)>,
    /// Peers told to the rest of the daemon as gone when their pings failed, before their
    /// connection finished closing (which waits on them).
    pub(super) taken_for_gone: HashSet<PeerId>,
    /// Open connections that answer pings, under the silence rule.
    pub(super) silence: Silence,
    /// When each connected peer last sent any bytes: a link busy with data is alive even when
    /// its pings wait behind the data.
    pub(super) activity: Activity,
    /// Connection lines at info, once a minute per remote address and direction.
    pub(super) connection_lines: LogLimiter<(std::net::IpAddr, &'static str)>,
    /// libp2p's own metrics (connections, dials, Kademlia, identify, ping), recorded from the
    /// swarm's events and encoded by `GET /metrics` from [`NetClient::libp2p_metrics`].
    pub(super) metrics: libp2p::metrics::Metrics,
    /// What connected peers' hellos offered, shared with [`NetClient`]s.
    pub(super) features: Features,
}

impl NetActor {
    /// The actor for a built and listening `swarm`, with the peers already in `book`.
    pub(super) fn new(
        swarm: Swarm<Behaviour>,
        config: &super::NetConfig,
        book: PeerBook,
        activity: Activity,
        commands: mpsc::Receiver<Command>,
        events: mpsc::UnboundedSender<NetEvent>,
        metrics: libp2p::metrics::Metrics,
    ) -> NetActor {
        let mut discovery = Backoff::new(DISCOVERY_INTERVAL_MIN, DISCOVERY_INTERVAL_MAX);
        NetActor {
            trusted: config.trusted_peers.iter().copied().collect(),
            events,
            pending_requests: HashMap::new(),
            hello_requests: HashMap::new(),
            clock_checks: HashMap::new(),
            next_clock_check: Instant::now() + super::requests::CLOCK_CHECK_INTERVAL,
            hello_retries: HelloRetries::default(),
            local_id: *swarm.local_peer_id(),
            name: config.name.clone(),
            swarm,
            commands,
            book,
            mdns: config.mdns,
            max_discovered_peers: config.max_discovered_peers,
            discovered_dials: HashMap::new(),
            next_discovery: Instant::now() + discovery.next(),
            next_liveness_check: Instant::now() + LIVENESS_CHECK,
            discovery,
            connection_roles: HashMap::new(),
            in_flight: guard::InFlight::default(),
            strikes: guard::Strikes::default(),
            blocked: config.blocked_peers.iter().copied().collect(),
            answered: HashMap::new(),
            met: HashSet::new(),
            quiet: LogLimiter::default(),
            connection_lines: LogLimiter::with_burst(CONNECTION_LINES_PER_ADDRESS),
            taken_for_gone: HashSet::new(),
            silence: Silence::default(),
            activity,
            features: Features::default(),
            metrics,
        }
    }

    /// The loop: commands first (so shutdown is never starved), then swarm events, then timers.
    pub(super) async fn run(mut self) {
        loop {
            let static_due = self
                .book
                .next_static_due()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + FAR_FUTURE);
            let ban_ends = self
                .strikes
                .next_expiry()
                .map(Instant::from_std)
                .unwrap_or_else(|| Instant::now() + FAR_FUTURE);
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
                _ = tokio::time::sleep_until(self.next_liveness_check) => {
                    self.check_liveness();
                    self.check_clocks();
                    let pace = if self.pending_requests.is_empty() && !self.silence.awaits_answers() {
                        IDLE_LIVENESS_CHECK
                    } else {
                        LIVENESS_CHECK
                    };
                    self.next_liveness_check = Instant::now() + pace;
                }
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
                let added = self.add_static_peer(addr);
                let _ = reply.send(Ok(added));
            }
            Command::Request {
                peer,
                request,
                reply,
            } => self.send_request(peer, request, reply),
            Command::Respond { channel, response } => self.respond(channel, response),
            Command::Strike { peer, reason } => self.strike(peer, &reason),
            Command::Dial { addrs } => self.dial_once(addrs),
            Command::StartProviding { key } => self.start_providing(&key),
            Command::FindProviders { key } => self.find_providers(&key),
            Command::BlockPeer { peer, reply } => {
                let newly = self.block_peer(peer);
                let _ = reply.send(newly);
            }
            Command::UnblockPeer { peer, reply } => {
                let _ = reply.send(self.unblock_peer(peer));
            }
            Command::RemoveStatic { target, reply } => {
                let removed = self.book.remove_static(|addr, peer| {
                    addr.to_string() == target || peer.is_some_and(|p| p.to_string() == target)
                });
                let _ = reply.send(removed.iter().map(ToString::to_string).collect());
            }
            Command::Shutdown { .. } => unreachable!("handled in run"),
        }
    }

    /// Counts a strike; the last allowed one bans the peer for [`guard::STRIKE_BAN`].
    fn strike(&mut self, peer: PeerId, reason: &str) {
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

    /// Blocks `peer` for good; returns whether it is newly blocked.
    fn block_peer(&mut self, peer: PeerId) -> bool {
        self.blocked.insert(peer);
        let newly = self.swarm.behaviour_mut().blocked.block_peer(peer);
        if newly {
            info!(%peer, "blocked");
        }
        newly
    }

    /// Stops refusing `peer`, unless it is banned for lies (that ends by itself); returns
    /// whether it was blocked.
    fn unblock_peer(&mut self, peer: PeerId) -> bool {
        let was = self.blocked.remove(&peer);
        if !self.strikes.banned().any(|p| *p == peer) {
            self.swarm.behaviour_mut().blocked.unblock_peer(peer);
        }
        if was {
            info!(%peer, "unblocked");
        }
        was
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
                name: p.name.clone(),
                rtt_ms: p.rtt.map(|d| d.as_secs_f64() * 1000.0),
                clock_offset_ms: p.clock_offset_ms.map(|ms| ms as f64),
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
            guards: self.guard_status(),
            static_peer_status: self.book.static_status(std::time::Instant::now()),
        }
    }

    fn guard_status(&self) -> GuardStatus {
        let behaviour = self.swarm.behaviour();
        let budget = behaviour.sync.budget();
        GuardStatus {
            inbound_buffered_bytes: budget.total() as u64,
            inbound_buffer_limit: budget.limits().total as u64,
            inbound_evictions: budget.evictions(),
            refused_connections: behaviour.admission.refused(),
            peers_left_alone: behaviour.admission.shunned.count(std::time::Instant::now()) as u64,
        }
    }

    /// Whether `peer` may stay connected (`trusted_peers` is empty or names it).
    pub(super) fn is_allowed(&self, peer: &PeerId) -> bool {
        self.trusted.is_empty() || self.trusted.contains(peer)
    }

    fn on_swarm_event(&mut self, event: SwarmEvent<BehaviourEvent>) {
        self.record_metrics(&event);
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
            } => self.on_connection_closed(peer_id, connection_id, num_established, cause),
            SwarmEvent::OutgoingConnectionError {
                connection_id,
                peer_id,
                error,
            } => self.on_dial_failed(connection_id, peer_id, &error),
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

    /// Feeds libp2p's metrics the events they know.
    fn record_metrics(&self, event: &SwarmEvent<BehaviourEvent>) {
        use libp2p::metrics::Recorder;
        match event {
            SwarmEvent::Behaviour(BehaviourEvent::Identify(e)) => self.metrics.record(e),
            SwarmEvent::Behaviour(BehaviourEvent::Kad(e)) => self.metrics.record(e),
            SwarmEvent::Behaviour(_) => {}
            other => self.metrics.record(other),
        }
    }

    fn on_behaviour_event(&mut self, event: BehaviourEvent) {
        match event {
            BehaviourEvent::Sync(event) => self.on_sync_event(event),
            BehaviourEvent::Identify(identify::Event::Received { peer_id, info, .. }) => {
                self.on_identified(peer_id, info);
            }
            BehaviourEvent::Kad(event) => self.on_kad_event(event),
            BehaviourEvent::Mdns(mdns::Event::Discovered(list)) => self.on_mdns_discovered(list),
            BehaviourEvent::Liveness(event) => self.on_ping(event),
            _ => {}
        }
    }

    fn on_ping(&mut self, event: liveness::Event) {
        let liveness::Event {
            peer,
            connection,
            result,
        } = event;
        match result {
            Ok(rtt) => {
                self.book.set_rtt(&peer, rtt);
                self.silence.answered(connection, std::time::Instant::now());
            }
            // A peer without ping is odd but alive; only its closing ends the connection.
            Err(liveness::Failure::Unsupported) => self.silence.forget(connection),
            // A ping stream reset while the connection still carries data: the data says the
            // peer is there, and the silence rule judges it.
            Err(_) if self.heard_lately(connection) => {}
            Err(e) => self.connection_is_dead(peer, connection, &e.to_string()),
        }
    }

    /// Pings connections that went quiet and closes those silent for [`LIVENESS_TIMEOUT`].
    /// libp2p's own ping said a link was dead only at its second failure (about 18 s in all);
    /// a frozen or cut-off peer must stop being asked sooner.
    ///
    /// Bytes from the peer count as an answer ([`super::activity`]).
    pub(super) fn check_liveness(&mut self) {
        let now = std::time::Instant::now();
        let waiting_on: HashSet<PeerId> = self.pending_requests.values().map(|(p, _)| *p).collect();
        let silence = &mut self.silence;
        let verdict = self
            .activity
            .with_last_heard(|heard| silence.check(now, heard, |peer| waiting_on.contains(peer)));
        for (peer, connection) in verdict.ping {
            self.swarm.behaviour_mut().liveness.ping(peer, connection);
        }
        for (peer, connection) in verdict.dead {
            self.connection_is_dead(peer, connection, "nothing heard, not even a ping's answer");
        }
    }

    /// Whether `connection` delivered any bytes within [`LIVENESS_TIMEOUT`].
    fn heard_lately(&self, connection: ConnectionId) -> bool {
        self.activity
            .heard_within(connection, LIVENESS_TIMEOUT, std::time::Instant::now())
    }

    /// A connection is dead: it is closed, and if it was the peer's only one, the rest of the
    /// daemon is told at once that the peer is gone (closing waits on the peer, which may be
    /// frozen or cut off), so that nothing more is asked of it.
    fn connection_is_dead(&mut self, peer: PeerId, connection: ConnectionId, why: &str) {
        debug!(%peer, "connection dead, closing it: {why}");
        self.swarm.close_connection(connection);
        let only = self
            .connection_roles
            .get(&peer)
            .is_some_and(|roles| roles.iter().all(|(c, _)| *c == connection));
        if only && self.taken_for_gone.insert(peer) {
            if self.met.remove(&peer) {
                info!(%peer, "not answering pings: taken for gone ({why})");
            }
            let _ = self.events.send(NetEvent::PeerDisconnected(peer));
        }
    }
}
