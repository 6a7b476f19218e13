//! When each connection last delivered any bytes, as evidence that its link is alive.
//!
//! Pings share the connection with the data. On a slow link saturated by a transfer, a ping (or
//! its answer) waits behind seconds of queued bytes and times out, and the liveness check
//! ([`super::LIVENESS_TIMEOUT`]) took the busiest link for dead: at 320 kbit/s every 11 s, so
//! a 4 MiB file took 3× its ideal time. Any bytes read from the connection (data, window
//! updates, the peer's own pings) are as good a sign of life as a pong; a frozen or cut-off
//! peer sends none.
//!
//! Kept per connection, not per peer: when a peer's close of one connection was lost, its
//! redials (each closed by us as a duplicate) sent handshake bytes that kept the stale
//! connection looking alive, and the two sides redialled each other every second or two.
//!
//! [`Noted`] wraps each TCP stream (below encryption, so nothing changes on the wire) and is
//! made by the transport with the connection's endpoint; the swarm later reports the same
//! endpoint with the connection's id, and [`Activity::established`] binds the two.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::{AsyncRead, AsyncWrite};
use libp2p::core::ConnectedPoint;
use libp2p::swarm::ConnectionId;

/// When each open connection last delivered bytes; cheap to clone.
#[derive(Clone, Debug)]
pub struct Activity {
    /// A lock, not the actor: entries are made by the transport on the connections' own tasks,
    /// before the actor hears of them. Held for one map operation, never across an `.await`;
    /// the hot path (a read) touches only the entry's atomic.
    table: Arc<Mutex<Table>>,
    epoch: Instant,
}

#[derive(Debug, Default)]
struct Table {
    /// Connections still opening, by endpoint, oldest first. Two at once share an endpoint
    /// only when the same address is dialled twice at the same time; the first established
    /// takes the oldest, which at worst swaps two new connections of the same peer.
    opening: HashMap<ConnectedPoint, VecDeque<Heard>>,
    /// Established connections.
    open: HashMap<ConnectionId, Heard>,
}

/// One connection's last-heard time (milliseconds after the table's epoch, plus one; 0 for
/// never), shared with its stream.
#[derive(Clone, Debug)]
pub struct Heard {
    at: Arc<AtomicU64>,
    epoch: Instant,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            table: Arc::new(Mutex::new(Table::default())),
            epoch: Instant::now(),
        }
    }
}

impl Activity {
    fn table(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `io`, a new connection's stream at `point`, noting its reads.
    pub fn wrap<T>(&self, io: T, point: ConnectedPoint) -> Noted<T> {
        let heard = Heard {
            at: Arc::new(AtomicU64::new(0)),
            epoch: self.epoch,
        };
        let mut table = self.table();
        table.prune_opening();
        table
            .opening
            .entry(point)
            .or_default()
            .push_back(heard.clone());
        Noted { io, heard }
    }

    /// The swarm established `connection` at `point`: its stream's entry is bound to its id.
    /// False if no stream was opened there (then only its ping answers show it alive).
    pub fn established(&self, point: &ConnectedPoint, connection: ConnectionId) -> bool {
        let mut table = self.table();
        let Some(waiting) = table.opening.get_mut(point) else {
            return false;
        };
        let heard = loop {
            match waiting.pop_front() {
                Some(heard) if heard.in_use() => break Some(heard),
                Some(_) => continue,
                None => break None,
            }
        };
        if waiting.is_empty() {
            table.opening.remove(point);
        }
        match heard {
            Some(heard) => {
                table.open.insert(connection, heard);
                true
            }
            None => false,
        }
    }

    /// `connection` closed.
    pub fn closed(&self, connection: ConnectionId) {
        self.table().open.remove(&connection);
    }

    /// When `connection` last delivered bytes, if it has (and its stream was bound to it).
    pub fn last_heard(&self, connection: ConnectionId) -> Option<Instant> {
        self.table().open.get(&connection).and_then(Heard::at)
    }

    /// Calls `f` with a lookup of when each connection last delivered bytes, taking the lock
    /// once for all of them.
    pub fn with_last_heard<R>(
        &self,
        f: impl FnOnce(&dyn Fn(ConnectionId) -> Option<Instant>) -> R,
    ) -> R {
        let table = self.table();
        f(&|connection| table.open.get(&connection).and_then(Heard::at))
    }

    /// Whether `connection` delivered bytes within `within` (before `now`).
    pub fn heard_within(&self, connection: ConnectionId, within: Duration, now: Instant) -> bool {
        self.last_heard(connection)
            .is_some_and(|at| now.saturating_duration_since(at) <= within)
    }

    /// Connections in the table, opening or open.
    pub fn len(&self) -> usize {
        let table = self.table();
        table.open.len() + table.opening.values().map(VecDeque::len).sum::<usize>()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Table {
    /// Forgets opening connections whose stream is gone (their handshake failed), so the table
    /// holds only live ones (bounded by the swarm's connection limits).
    fn prune_opening(&mut self) {
        self.opening.retain(|_, waiting| {
            waiting.retain(Heard::in_use);
            !waiting.is_empty()
        });
    }
}

impl Heard {
    fn at(&self) -> Option<Instant> {
        match self.at.load(Relaxed) {
            0 => None,
            at => Some(self.epoch + Duration::from_millis(at - 1)),
        }
    }

    fn now(&self) {
        let at = self.epoch.elapsed().as_millis() as u64 + 1;
        self.at.store(at, Relaxed);
    }

    /// Whether its stream still exists (the table's copy is the other holder).
    fn in_use(&self) -> bool {
        Arc::strong_count(&self.at) > 1
    }
}

/// A connection's byte stream that notes every successful read in its [`Heard`].
#[derive(Debug)]
pub struct Noted<T> {
    io: T,
    heard: Heard,
}

impl<T: AsyncRead + Unpin> AsyncRead for Noted<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let read = Pin::new(&mut self.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(n)) = read
            && n > 0
        {
            self.heard.now();
        }
        read
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Noted<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.io).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_close(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncReadExt;
    use libp2p::core::Endpoint;
    use libp2p::core::transport::PortUse;

    fn listener(port: u16) -> ConnectedPoint {
        ConnectedPoint::Listener {
            local_addr: "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
            send_back_addr: format!("/ip4/127.0.0.1/tcp/{port}").parse().unwrap(),
        }
    }

    fn dialer() -> ConnectedPoint {
        ConnectedPoint::Dialer {
            address: "/ip4/127.0.0.1/tcp/4001".parse().unwrap(),
            role_override: Endpoint::Dialer,
            port_use: PortUse::New,
        }
    }

    fn read_some<T: AsyncRead + Unpin>(io: &mut Noted<T>) {
        let mut buf = [0u8; 4];
        futures::executor::block_on(io.read_exact(&mut buf)).unwrap();
    }

    fn bytes() -> futures::io::Cursor<Vec<u8>> {
        futures::io::Cursor::new(vec![1u8; 8])
    }

    #[test]
    fn reads_are_noted_for_their_own_connection_only() {
        let activity = Activity::default();
        let (talker, silent) = (
            ConnectionId::new_unchecked(1),
            ConnectionId::new_unchecked(2),
        );
        let mut talking = activity.wrap(bytes(), listener(5001));
        let _quiet = activity.wrap(bytes(), listener(5002));
        assert!(activity.established(&listener(5001), talker));
        assert!(activity.established(&listener(5002), silent));
        let now = Instant::now();
        assert!(!activity.heard_within(talker, Duration::from_secs(10), now));
        read_some(&mut talking);
        let now = Instant::now();
        assert!(activity.heard_within(talker, Duration::from_secs(10), now));
        assert!(
            !activity.heard_within(silent, Duration::from_secs(10), now),
            "another connection's bytes say nothing of this one"
        );
        assert!(!activity.heard_within(
            talker,
            Duration::from_secs(10),
            now + Duration::from_secs(11)
        ));
        activity.closed(talker);
        assert_eq!(activity.last_heard(talker), None);
        assert_eq!(activity.len(), 1);
    }

    #[test]
    fn bytes_read_while_opening_count_once_established() {
        let activity = Activity::default();
        let mut io = activity.wrap(bytes(), dialer());
        read_some(&mut io);
        let connection = ConnectionId::new_unchecked(7);
        activity.established(&dialer(), connection);
        assert!(activity.last_heard(connection).is_some());
    }

    #[test]
    fn a_failed_handshake_is_skipped_and_forgotten() {
        let activity = Activity::default();
        let failed = activity.wrap(bytes(), dialer());
        let mut live = activity.wrap(bytes(), dialer());
        drop(failed);
        read_some(&mut live);
        let connection = ConnectionId::new_unchecked(3);
        activity.established(&dialer(), connection);
        assert!(
            activity.last_heard(connection).is_some(),
            "bound to the live stream, not the failed one"
        );
        assert_eq!(activity.len(), 1);
        let orphan = activity.wrap(bytes(), listener(6000));
        drop(orphan);
        let _next = activity.wrap(bytes(), listener(6001));
        assert_eq!(
            activity.len(),
            2,
            "the orphan was pruned when the next one opened"
        );
        assert!(!activity.established(&listener(9999), ConnectionId::new_unchecked(4)));
        assert_eq!(activity.last_heard(ConnectionId::new_unchecked(4)), None);
    }
}
