//! Admission of incoming connections by the remote's IP address: one host can hold at most
//! [`MAX_CONNECTIONS_PER_IP`] connections and [`MAX_PENDING_PER_IP`] handshakes, whatever
//! number of identities it makes up (identities cost nothing; addresses do). Connections we
//! dial are not counted. Refusals are counted and logged once per address per interval.
//! Peers [`Shunned`] are not dialled, and foreign ones are not let in either.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::task::{Context, Poll};
use std::time::Instant;

use libp2p::core::Endpoint;
use libp2p::core::transport::PortUse;
use libp2p::multiaddr::Protocol;
use libp2p::swarm::{
    ConnectionDenied, ConnectionId, FromSwarm, NetworkBehaviour, THandler, THandlerInEvent,
    THandlerOutEvent, ToSwarm, dummy,
};
use libp2p::{Multiaddr, PeerId};
use tracing::warn;

use super::shunned::{Shunned, Why};
use crate::quiet::{LogLimiter, and_more};

/// Incoming connections one IP address may hold.
pub const MAX_CONNECTIONS_PER_IP: usize = 32;
/// Incoming connections from one IP address that may be in their handshake at once.
pub const MAX_PENDING_PER_IP: usize = 8;

/// Why a connection was refused.
#[derive(Debug, thiserror::Error)]
pub enum Refused {
    /// The address already has [`MAX_PENDING_PER_IP`] handshakes going.
    #[error("{0} already has {MAX_PENDING_PER_IP} connection handshakes in progress")]
    Handshakes(IpAddr),
    /// The address already holds [`MAX_CONNECTIONS_PER_IP`] connections.
    #[error("{0} already holds {MAX_CONNECTIONS_PER_IP} connections")]
    Connections(IpAddr),
}

/// Counts incoming connections per remote IP address and refuses those over the caps.
#[derive(Default)]
pub struct Admission {
    pending: HashMap<ConnectionId, IpAddr>,
    established: HashMap<ConnectionId, IpAddr>,
    pending_per_ip: HashMap<IpAddr, usize>,
    established_per_ip: HashMap<IpAddr, usize>,
    refused: u64,
    log: LogLimiter<IpAddr>,
    /// Peers neither dialled nor (if foreign) let in.
    pub(super) shunned: Shunned,
}

impl Admission {
    /// Connections refused so far.
    pub fn refused(&self) -> u64 {
        self.refused
    }

    fn refuse(&mut self, why: Refused, ip: IpAddr) -> ConnectionDenied {
        self.refused += 1;
        if let Some(unsaid) = self.log.allow(&ip, Instant::now()) {
            warn!("refused a connection: {why}{}", and_more(unsaid));
        }
        ConnectionDenied::new(why)
    }

    fn forget(&mut self, connection: ConnectionId) {
        if let Some(ip) = self.pending.remove(&connection) {
            decrement(&mut self.pending_per_ip, ip);
        }
        if let Some(ip) = self.established.remove(&connection) {
            decrement(&mut self.established_per_ip, ip);
        }
    }
}

fn decrement(counts: &mut HashMap<IpAddr, usize>, ip: IpAddr) {
    if let Some(n) = counts.get_mut(&ip) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&ip);
        }
    }
}

/// The IP address in a multiaddr, if it has one.
fn ip_of(addr: &Multiaddr) -> Option<IpAddr> {
    addr.iter().find_map(|p| match p {
        Protocol::Ip4(ip) => Some(IpAddr::V4(ip)),
        Protocol::Ip6(ip) => Some(IpAddr::V6(ip)),
        _ => None,
    })
}

impl NetworkBehaviour for Admission {
    type ConnectionHandler = dummy::ConnectionHandler;
    type ToSwarm = Infallible;

    fn handle_pending_inbound_connection(
        &mut self,
        connection: ConnectionId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<(), ConnectionDenied> {
        let Some(ip) = ip_of(remote) else {
            return Ok(());
        };
        if self.pending_per_ip.get(&ip).copied().unwrap_or(0) >= MAX_PENDING_PER_IP {
            return Err(self.refuse(Refused::Handshakes(ip), ip));
        }
        if self.established_per_ip.get(&ip).copied().unwrap_or(0) >= MAX_CONNECTIONS_PER_IP {
            return Err(self.refuse(Refused::Connections(ip), ip));
        }
        self.pending.insert(connection, ip);
        *self.pending_per_ip.entry(ip).or_default() += 1;
        Ok(())
    }

    fn handle_established_inbound_connection(
        &mut self,
        connection: ConnectionId,
        peer: PeerId,
        _: &Multiaddr,
        remote: &Multiaddr,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        self.forget(connection);
        if self.shunned.why(&peer, Instant::now()) == Some(Why::Foreign) {
            return Err(ConnectionDenied::new(Shunned::refusal(peer)));
        }
        let Some(ip) = ip_of(remote) else {
            return Ok(dummy::ConnectionHandler);
        };
        if self.established_per_ip.get(&ip).copied().unwrap_or(0) >= MAX_CONNECTIONS_PER_IP {
            return Err(self.refuse(Refused::Connections(ip), ip));
        }
        self.established.insert(connection, ip);
        *self.established_per_ip.entry(ip).or_default() += 1;
        Ok(dummy::ConnectionHandler)
    }

    fn handle_pending_outbound_connection(
        &mut self,
        _: ConnectionId,
        peer: Option<PeerId>,
        _: &[Multiaddr],
        _: Endpoint,
    ) -> Result<Vec<Multiaddr>, ConnectionDenied> {
        // Kademlia dials the peers lookups return without asking us: refused here.
        match peer {
            Some(peer) if self.shunned.why(&peer, Instant::now()).is_some() => {
                Err(ConnectionDenied::new(Shunned::refusal(peer)))
            }
            _ => Ok(Vec::new()),
        }
    }

    fn handle_established_outbound_connection(
        &mut self,
        _: ConnectionId,
        _: PeerId,
        _: &Multiaddr,
        _: Endpoint,
        _: PortUse,
    ) -> Result<THandler<Self>, ConnectionDenied> {
        Ok(dummy::ConnectionHandler)
    }

    fn on_swarm_event(&mut self, event: FromSwarm) {
        match event {
            FromSwarm::ConnectionClosed(closed) => self.forget(closed.connection_id),
            FromSwarm::ListenFailure(failed) => self.forget(failed.connection_id),
            _ => {}
        }
    }

    fn on_connection_handler_event(
        &mut self,
        _: PeerId,
        _: ConnectionId,
        event: THandlerOutEvent<Self>,
    ) {
        libp2p::core::util::unreachable(event)
    }

    fn poll(&mut self, _: &mut Context<'_>) -> Poll<ToSwarm<Self::ToSwarm, THandlerInEvent<Self>>> {
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> Multiaddr {
        format!("/ip4/{ip}/tcp/1").parse().unwrap()
    }

    #[test]
    fn one_address_is_capped_and_others_are_not() {
        let mut admission = Admission::default();
        let local = addr("127.0.0.1");
        let mut ids = Vec::new();
        for _ in 0..MAX_CONNECTIONS_PER_IP {
            let id = ConnectionId::new_unchecked(ids.len());
            admission
                .handle_pending_inbound_connection(id, &local, &addr("10.0.0.1"))
                .unwrap();
            admission
                .handle_established_inbound_connection(
                    id,
                    PeerId::random(),
                    &local,
                    &addr("10.0.0.1"),
                )
                .unwrap();
            ids.push(id);
        }
        let next = ConnectionId::new_unchecked(1000);
        assert!(
            admission
                .handle_pending_inbound_connection(next, &local, &addr("10.0.0.1"))
                .is_err()
        );
        assert!(
            admission
                .handle_pending_inbound_connection(next, &local, &addr("10.0.0.2"))
                .is_ok(),
            "another host is admitted"
        );
        assert_eq!(admission.refused(), 1);
    }

    #[test]
    fn handshakes_are_capped_per_address() {
        let mut admission = Admission::default();
        let local = addr("127.0.0.1");
        for i in 0..MAX_PENDING_PER_IP {
            admission
                .handle_pending_inbound_connection(
                    ConnectionId::new_unchecked(i),
                    &local,
                    &addr("10.0.0.1"),
                )
                .unwrap();
        }
        assert!(
            admission
                .handle_pending_inbound_connection(
                    ConnectionId::new_unchecked(99),
                    &local,
                    &addr("10.0.0.1")
                )
                .is_err()
        );
    }
}
