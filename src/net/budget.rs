//! The inbound buffer budget: bytes held for request frames still arriving, accounted across
//! every connection, so that no number of identities can make the daemon buffer more than
//! [`INBOUND_BUFFER_TOTAL`] in total or [`INBOUND_BUFFER_PER_PEER`] for one peer.
//!
//! A frame is read in pieces of at most [`READ_PIECE`] bytes, and each piece is reserved here
//! before it is read ([`Hold::grow`]), never the size the frame's prefix announces. A piece
//! that does not fit the peer's share is refused, and the stream reset. A piece that does not
//! fit the total, because other peers hold it, takes it from the largest holder instead: that
//! hold is evicted (its reader gives up at once and frees its buffer). So a peer sending small
//! honest requests is served while others sit on half-sent big frames; an attacker only ever
//! evicts its own kind. The limits are the README's ("Limits").

use std::cell::Cell;
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use libp2p::PeerId;

/// Bytes all peers together may hold in unfinished inbound frames.
pub const INBOUND_BUFFER_TOTAL: usize = 64 * 1024 * 1024;
/// Bytes one peer may hold in unfinished inbound frames (over all its streams and connections).
pub const INBOUND_BUFFER_PER_PEER: usize = 8 * 1024 * 1024;
/// Largest piece of a frame reserved and read at once.
pub const READ_PIECE: usize = 64 * 1024;

/// Why a piece of a frame could not be reserved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum BudgetError {
    /// The peer already holds its share ([`INBOUND_BUFFER_PER_PEER`] by default).
    #[error("the peer holds its whole share of the inbound buffer budget")]
    PeerFull,
    /// Evicted: another peer needed the room, and this was the largest hold.
    #[error("evicted from the inbound buffer budget for another peer's request")]
    Evicted,
}

/// The shared accounts; cheap to clone.
#[derive(Debug, Clone)]
pub struct InboundBudget {
    accounts: Arc<Mutex<Accounts>>,
    limits: Limits,
}

/// The bounds an [`InboundBudget`] keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Bytes all peers together may hold.
    pub total: usize,
    /// Bytes one peer may hold.
    pub per_peer: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            total: INBOUND_BUFFER_TOTAL,
            per_peer: INBOUND_BUFFER_PER_PEER,
        }
    }
}

impl Default for InboundBudget {
    fn default() -> Self {
        InboundBudget::new(Limits::default())
    }
}

#[derive(Debug, Default)]
struct Accounts {
    total: usize,
    per_peer: HashMap<Option<PeerId>, usize>,
    holds: HashMap<u64, HoldEntry>,
    next_id: u64,
    evictions: u64,
}

#[derive(Debug)]
struct HoldEntry {
    peer: Option<PeerId>,
    bytes: usize,
    evicted: Arc<Eviction>,
}

/// Set when a hold is evicted; wakes its reader.
#[derive(Debug, Default)]
struct Eviction {
    done: AtomicBool,
    waker: Mutex<Option<Waker>>,
}

impl InboundBudget {
    /// An empty budget with these limits.
    pub fn new(limits: Limits) -> InboundBudget {
        InboundBudget {
            accounts: Arc::default(),
            limits,
        }
    }

    /// The limits it keeps.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// A new, empty hold for one frame from `peer` (`None`: a peer not known to the codec,
    /// all such sharing one account).
    pub fn hold(&self, peer: Option<PeerId>) -> Hold {
        let mut accounts = self.accounts.lock().expect("budget lock");
        let id = accounts.next_id;
        accounts.next_id += 1;
        let evicted = Arc::new(Eviction::default());
        accounts.holds.insert(
            id,
            HoldEntry {
                peer,
                bytes: 0,
                evicted: evicted.clone(),
            },
        );
        Hold {
            id,
            peer,
            bytes: 0,
            evicted,
            budget: self.clone(),
        }
    }

    /// Bytes held now, by everyone.
    pub fn total(&self) -> usize {
        self.accounts.lock().expect("budget lock").total
    }

    /// Holds evicted so far.
    pub fn evictions(&self) -> u64 {
        self.accounts.lock().expect("budget lock").evictions
    }
}

/// One frame's reservation; everything it holds is given back when it is dropped.
#[derive(Debug)]
pub struct Hold {
    id: u64,
    peer: Option<PeerId>,
    bytes: usize,
    evicted: Arc<Eviction>,
    budget: InboundBudget,
}

impl Hold {
    /// Reserves `more` bytes for this frame, evicting the largest other hold if the total is
    /// used up.
    pub fn grow(&mut self, more: usize) -> Result<(), BudgetError> {
        if self.is_evicted() {
            return Err(BudgetError::Evicted);
        }
        let mut guard = self.budget.accounts.lock().expect("budget lock");
        let accounts = &mut *guard;
        let limits = self.budget.limits;
        let mine = accounts.per_peer.get(&self.peer).copied().unwrap_or(0);
        if mine + more > limits.per_peer {
            return Err(BudgetError::PeerFull);
        }
        while accounts.total + more > limits.total {
            // Each peer holds at most its share, so the total can only be full with other
            // peers' holds in it: the largest of those goes.
            let victim = accounts
                .holds
                .iter()
                .filter(|(id, h)| **id != self.id && h.bytes > 0)
                .max_by_key(|(_, h)| h.bytes)
                .map(|(id, _)| *id);
            let Some(victim) = victim else {
                return Err(BudgetError::PeerFull);
            };
            accounts.evict(victim);
        }
        accounts.total += more;
        *accounts.per_peer.entry(self.peer).or_default() += more;
        if let Some(entry) = accounts.holds.get_mut(&self.id) {
            entry.bytes += more;
        }
        self.bytes += more;
        Ok(())
    }

    /// Whether another peer's need took this hold's room.
    pub fn is_evicted(&self) -> bool {
        self.evicted.done.load(Ordering::Acquire)
    }

    /// Ready once this hold is evicted; a reader races it against its next read.
    pub fn poll_evicted(&self, cx: &mut Context<'_>) -> Poll<()> {
        if self.is_evicted() {
            return Poll::Ready(());
        }
        *self.evicted.waker.lock().expect("eviction lock") = Some(cx.waker().clone());
        if self.is_evicted() {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    }
}

impl Accounts {
    /// Takes `id`'s bytes back and tells its reader.
    fn evict(&mut self, id: u64) {
        let Some(entry) = self.holds.get_mut(&id) else {
            return;
        };
        let bytes = std::mem::take(&mut entry.bytes);
        entry.evicted.done.store(true, Ordering::Release);
        if let Some(waker) = entry.evicted.waker.lock().expect("eviction lock").take() {
            waker.wake();
        }
        let peer = entry.peer;
        self.release(peer, bytes);
        self.evictions += 1;
    }

    fn release(&mut self, peer: Option<PeerId>, bytes: usize) {
        self.total -= bytes;
        if let Some(held) = self.per_peer.get_mut(&peer) {
            *held -= bytes;
            if *held == 0 {
                self.per_peer.remove(&peer);
            }
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        let mut accounts = self.budget.accounts.lock().expect("budget lock");
        if let Some(entry) = accounts.holds.remove(&self.id) {
            accounts.release(self.peer, entry.bytes);
        }
    }
}

// Which peer a codec reads from: see `super::sync`, which names it while `request_response`
// makes a connection's codec.
thread_local! {
    /// The peer whose connection's codec is being made on this thread, if one is.
    static CONNECTION_PEER: Cell<Option<PeerId>> = const { Cell::new(None) };
}

/// Runs `f` with `peer` named as the peer of the connection whose codec `f` makes.
pub(super) fn with_connection_peer<T>(peer: PeerId, f: impl FnOnce() -> T) -> T {
    CONNECTION_PEER.with(|slot| slot.set(Some(peer)));
    let out = f();
    CONNECTION_PEER.with(|slot| slot.set(None));
    out
}

/// The peer named by [`with_connection_peer`], taken (a codec made later gets none).
pub(super) fn take_connection_peer() -> Option<PeerId> {
    CONNECTION_PEER.with(|slot| slot.take())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_peer_never_holds_more_than_its_share() {
        let budget = InboundBudget::default();
        let peer = Some(PeerId::random());
        let mut holds: Vec<Hold> = (0..200).map(|_| budget.hold(peer)).collect();
        let granted = holds
            .iter_mut()
            .map(|h| h.grow(READ_PIECE))
            .filter(Result::is_ok)
            .count();
        assert_eq!(granted * READ_PIECE, INBOUND_BUFFER_PER_PEER);
        assert_eq!(budget.total(), INBOUND_BUFFER_PER_PEER);
        holds.clear();
        assert_eq!(budget.total(), 0, "dropped holds give everything back");
    }

    #[test]
    fn a_newcomer_evicts_the_largest_hold_when_the_total_is_used_up() {
        let budget = InboundBudget::default();
        // One peer with its whole share, the others with less, together all of the total.
        let others = INBOUND_BUFFER_TOTAL / INBOUND_BUFFER_PER_PEER;
        let smaller = (INBOUND_BUFFER_TOTAL - INBOUND_BUFFER_PER_PEER) / others;
        let mut holds: Vec<Hold> = (0..=others)
            .map(|i| {
                let mut hold = budget.hold(Some(PeerId::random()));
                hold.grow(if i == 0 {
                    INBOUND_BUFFER_PER_PEER
                } else {
                    smaller
                })
                .unwrap();
                hold
            })
            .collect();
        assert_eq!(budget.total(), INBOUND_BUFFER_TOTAL);
        let mut honest = budget.hold(Some(PeerId::random()));
        for _ in 0..4 {
            honest.grow(1024).unwrap();
        }
        assert!(holds[0].is_evicted(), "the largest hold went");
        assert!(holds[1..].iter().all(|h| !h.is_evicted()));
        assert_eq!(holds[0].grow(1), Err(BudgetError::Evicted));
        assert!(budget.total() <= INBOUND_BUFFER_TOTAL);
        assert_eq!(budget.evictions(), 1);
        holds.clear();
        drop(honest);
        assert_eq!(budget.total(), 0);
    }
}
