//! When each peer last sent us any bytes, as evidence that its link is alive.
//!
//! Pings share the connection with the data. On a slow link saturated by a transfer, a ping (or
//! its answer) waits behind seconds of queued bytes and times out, and the liveness check
//! ([`super::LIVENESS_TIMEOUT`]) took the busiest link for dead: at 320 kbit/s every 11 s, so
//! a 4 MiB file took 3× its ideal time. Any frame read from the peer (data, window updates, its
//! own pings) is as good a sign of life as a pong; a frozen or cut-off peer sends none.
//!
//! [`Counted`] wraps the connection's authenticating upgrade (Noise) and counts what is read
//! above it, so nothing changes on the wire; [`Activity`] is the table the liveness check reads.

use std::collections::HashMap;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::{AsyncRead, AsyncWrite, FutureExt, TryFutureExt};
use libp2p::PeerId;
use libp2p::core::upgrade::{InboundConnectionUpgrade, OutboundConnectionUpgrade, UpgradeInfo};

/// When each connected peer's connections last delivered bytes; cheap to clone.
#[derive(Clone, Debug)]
pub struct Activity {
    /// A lock, not the actor: entries are made in connection upgrades, which run on the
    /// connections' own tasks before the actor hears of them. Held for one map operation, never
    /// across an `.await`; the hot path (a read) touches only the entry's atomic.
    peers: Arc<Mutex<HashMap<PeerId, Heard>>>,
    epoch: Instant,
}

/// One peer's last-heard time (milliseconds after the table's epoch, plus one; 0 for never),
/// shared by its connections.
#[derive(Clone, Debug)]
pub struct Heard {
    at: Arc<AtomicU64>,
    epoch: Instant,
}

impl Default for Activity {
    fn default() -> Activity {
        Activity {
            peers: Arc::new(Mutex::new(HashMap::new())),
            epoch: Instant::now(),
        }
    }
}

impl Activity {
    /// The entry of `peer`, made on its first connection.
    pub fn heard(&self, peer: PeerId) -> Heard {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .entry(peer)
            .or_insert_with(|| Heard {
                at: Arc::new(AtomicU64::new(0)),
                epoch: self.epoch,
            })
            .clone()
    }

    /// Whether `peer` sent anything within `within` (before `now`).
    pub fn heard_within(&self, peer: &PeerId, within: Duration, now: Instant) -> bool {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers
            .get(peer)
            .is_some_and(|heard| heard.within(within, now))
    }

    /// When `peer` last sent anything, if it has since its entry was made.
    pub fn last_heard(&self, peer: &PeerId) -> Option<Instant> {
        let peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.get(peer).and_then(Heard::at)
    }

    /// Drops the entries of peers that are not `connected` and sent nothing within `within`,
    /// so the table holds the connected peers and those that were handshaking lately (whose
    /// entries, made before the connection is reported, must survive until it is).
    pub fn prune(&self, connected: impl Fn(&PeerId) -> bool, within: Duration, now: Instant) {
        let mut peers = self.peers.lock().unwrap_or_else(|e| e.into_inner());
        peers.retain(|peer, heard| connected(peer) || heard.within(within, now));
    }

    /// Peers in the table.
    pub fn len(&self) -> usize {
        self.peers.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// Whether the table is empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl Heard {
    fn within(&self, within: Duration, now: Instant) -> bool {
        self.at()
            .is_some_and(|at| now.saturating_duration_since(at) <= within)
    }

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
}

/// A connection's byte stream that notes every successful read in its peer's [`Heard`].
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

/// An authenticating upgrade (Noise) whose output notes reads in [`Activity`]; the same
/// protocol on the wire.
#[derive(Clone)]
pub struct Counted<U> {
    inner: U,
    activity: Activity,
}

impl<U> Counted<U> {
    /// `inner`, counted in `activity`.
    pub fn new(inner: U, activity: Activity) -> Counted<U> {
        Counted { inner, activity }
    }
}

impl<U: UpgradeInfo> UpgradeInfo for Counted<U> {
    type Info = U::Info;
    type InfoIter = U::InfoIter;

    fn protocol_info(&self) -> Self::InfoIter {
        self.inner.protocol_info()
    }
}

impl<C, D, U> InboundConnectionUpgrade<C> for Counted<U>
where
    U: InboundConnectionUpgrade<C, Output = (PeerId, D)>,
    U::Future: Send + 'static,
{
    type Output = (PeerId, Noted<D>);
    type Error = U::Error;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_inbound(self, socket: C, info: Self::Info) -> Self::Future {
        let activity = self.activity;
        self.inner
            .upgrade_inbound(socket, info)
            .map_ok(move |(peer, io)| {
                let heard = activity.heard(peer);
                (peer, Noted { io, heard })
            })
            .boxed()
    }
}

impl<C, D, U> OutboundConnectionUpgrade<C> for Counted<U>
where
    U: OutboundConnectionUpgrade<C, Output = (PeerId, D)>,
    U::Future: Send + 'static,
{
    type Output = (PeerId, Noted<D>);
    type Error = U::Error;
    type Future = BoxFuture<'static, Result<Self::Output, Self::Error>>;

    fn upgrade_outbound(self, socket: C, info: Self::Info) -> Self::Future {
        let activity = self.activity;
        self.inner
            .upgrade_outbound(socket, info)
            .map_ok(move |(peer, io)| {
                let heard = activity.heard(peer);
                (peer, Noted { io, heard })
            })
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::AsyncReadExt;

    #[test]
    fn reads_are_noted_for_the_peer_and_silence_is_not() {
        let activity = Activity::default();
        let (talker, silent) = (PeerId::random(), PeerId::random());
        let mut io = Noted {
            io: futures::io::Cursor::new(vec![1u8; 8]),
            heard: activity.heard(talker),
        };
        let _ = activity.heard(silent);
        let now = Instant::now();
        assert!(!activity.heard_within(&talker, Duration::from_secs(10), now));
        let mut buf = [0u8; 4];
        futures::executor::block_on(io.read_exact(&mut buf)).unwrap();
        let now = Instant::now();
        assert!(activity.heard_within(&talker, Duration::from_secs(10), now));
        assert!(!activity.heard_within(&silent, Duration::from_secs(10), now));
        assert!(!activity.heard_within(
            &talker,
            Duration::from_secs(10),
            now + Duration::from_secs(11)
        ));
        let later = now + Duration::from_secs(11);
        activity.prune(|p| *p == talker, Duration::from_secs(10), later);
        assert_eq!(activity.len(), 1, "the connected peer stays");
        let _ = activity.heard(silent);
        activity.prune(|_| false, Duration::from_secs(10), now);
        assert_eq!(
            activity.len(),
            1,
            "the one heard lately stays, the silent one goes"
        );
    }
}
