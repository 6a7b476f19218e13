//! Our request-response behaviour, wrapped so that each connection's codec knows which peer it
//! reads from: the inbound buffer budget ([`super::budget`]) is kept per peer, and
//! `request_response` hands a codec only the stream.
//!
//! `request_response` makes a connection's codec by cloning ours, once, inside
//! `handle_established_*_connection`. The wrapper names the peer for the length of that call
//! ([`with_connection_peer`]) and [`protocol::Codec`]'s `Clone` takes it
//! ([`super::budget::take_connection_peer`]). Should a later
//! `request_response` clone elsewhere, the codec has no peer and falls back to one shared
//! account for all such streams: stricter, never looser.

use std::task::{Context, Poll};

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::request_response;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm,
};
use libp2p::{Multiaddr, PeerId};

use super::budget::{InboundBudget, with_connection_peer};
use super::protocol;

/// `request_response` on [`protocol::Codec`], with per-connection codecs that know their peer.
pub struct SyncProtocol {
    inner: Inner,
    budget: InboundBudget,
}

impl SyncProtocol {
    /// `inner`, whose codec draws on `budget`.
    pub fn new(inner: Inner, budget: InboundBudget) -> SyncProtocol {
        SyncProtocol { inner, budget }
    }

    /// The inbound buffer budget its codecs draw on.
    pub fn budget(&self) -> &InboundBudget {
        &self.budget
    }
}

impl std::ops::Deref for SyncProtocol {
    type Target = request_response::Behaviour<protocol::Codec>;
    fn deref(&self) -> &Self::Target {
        &self.inner
    }
}

impl std::ops::DerefMut for SyncProtocol {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.inner
    }
}

type Inner = request_response::Behaviour<protocol::Codec>;

impl NetworkBehaviour for SyncProtocol {
    type ConnectionHandler = <Inner as NetworkBehaviour>::ConnectionHandler;
    type ToSwarm = <Inner as NetworkBehaviour>::ToSwarm;

    fn handle_pending_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        self.inner
            .handle_pending_inbound_connection(connection_id, local_addr, remote_addr)
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        local_addr: &Multiaddr,
        remote_addr: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        with_connection_peer(peer, || {
            self.inner.handle_established_inbound_connection(
                connection_id,
                peer,
                local_addr,
                remote_addr,
            )
        })
    }

    fn handle_pending_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        maybe_peer: Option<PeerId>,
        addresses: &[Multiaddr],
        effective_role: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        self.inner.handle_pending_outbound_connection(
            connection_id,
            maybe_peer,
            addresses,
            effective_role,
        )
    }

    fn handle_established_outbound_connection(
        &mut self,
        connection_id: ConnectionId,
        peer: PeerId,
        addr: &Multiaddr,
        role_override: Endpoint,
        port_use: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        with_connection_peer(peer, || {
            self.inner.handle_established_outbound_connection(
                connection_id,
                peer,
                addr,
                role_override,
                port_use,
            )
        })
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        self.inner.on_swarm_event(event)
    }

    fn on_connection_handler_event(
        &mut self,
        peer_id: PeerId,
        connection_id: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        self.inner
            .on_connection_handler_event(peer_id, connection_id, event)
    }

    fn poll(
        &mut self,
        cx: &mut Context<'_>,
    ) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        self.inner.poll(cx)
    }
}
