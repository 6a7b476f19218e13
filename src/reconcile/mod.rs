//! Merkle summary of a share and the set-reconciliation protocol that finds what two peers'
//! shares differ by.
//!
//! Why it exists: two peers holding a million entries that differ in one must find that one
//! entry in a few round trips and a few kilobytes, not by listing everything. Both sides keep a
//! [`Summary`], a 16-way prefix tree over item ids with a cached BLAKE3 hash per node; equal
//! roots prove equal sets, and differing roots are narrowed down by descending only into
//! differing subtrees. Everything here is pure (no I/O, no clock, no randomness): the daemon
//! feeds it messages and carries the ones it returns over libp2p request-response.
//!
//! # Items
//!
//! An [`Item`] is `(id, digest)`: `id` = BLAKE3 of the entry key (uniformly distributed, so the
//! tree stays balanced without rebalancing) and `digest` = the entry's register digest
//! ([`crate::merge::Register::digest`]). Two peers agree on an entry iff they hold the same item.
//!
//! # Protocol
//!
//! Goals: (1) equal shares cost one round trip of about 140 bytes; (2) `d` differences among
//! `n` items cost `O(d log n)` bytes and about `log16(n) / 2 + 2` round trips; (3) the
//! initiator learns both directions of the difference ([`Outcome::need`] and
//! [`Outcome::offer`]); (4) every message and every session is bounded, and a responder never
//! keeps per-session state. Non-goals: transferring entries (the daemon pulls the `need` ids
//! afterwards and merges them, which is idempotent), authentication (the transport's job), and
//! exactness against a peer that lies (it can only waste our time or make us pull what it has).
//!
//! Ranges are named by a [`Prefix`] of id nibbles. The summary of a range is its item count and
//! its node hash; the hash is a function of the items in the range alone (not of the rest of
//! the tree), so both peers compute the same summary for the same range whatever their sizes.
//! On the wire a range summary is `(count, fingerprint)`, the fingerprint being the node hash
//! hashed with a per-session [`Salt`] and truncated to [`FP_LEN`] bytes.
//!
//! 1. The initiator sends [`Request::Hello`] (salt, root hash, count). The responder replies
//!    [`Response::Hello`] with its root and count, plus, if they differ, the summaries of its 16
//!    root children.
//! 2. Whenever the initiator holds the responder's summaries of the children of a range, it
//!    compares each with its own. For each differing child it either offers all its items there
//!    (responder has none), or asks for an exact item diff ([`Query::Items`], when both sides
//!    hold at most [`LEAF_MAX`] items there, or it holds none and the responder at most
//!    [`MAX_LIST_IDS`]), or asks the responder to compare one level further down
//!    ([`Query::Compare`], carrying the initiator's 16 child summaries).
//! 3. The responder answers every query of a [`Request::Round`] in order. For `Compare`, it
//!    says per differing child ([`Answer::Descend`]) either its summaries of the child's 16
//!    children ([`Descent::Children`]), so each round trip descends two levels, or, when that
//!    is cheaper, all its ids there if the initiator holds none ([`Descent::Ids`]) or its ids
//!    with item fingerprints if it holds at most [`DESCENT_LIST_MAX`] ([`Descent::Items`]),
//!    from which the initiator computes the difference itself. For `Items`, the full ids it has that the initiator
//!    lacks or holds differently plus a bitmask over the initiator's fingerprints it lacks
//!    ([`Answer::Diff`]), or [`Answer::Split`] if it holds too many items there to list; and
//!    [`Answer::Deferred`] for queries that no longer fit its reply.
//! 4. The session ends when nothing is left to ask (complete) or after [`MAX_ROUNDS`] round
//!    trips (incomplete: the daemon acts on what was found and starts another session later,
//!    which resumes where the shares still differ).
//!
//! Encoding: CBOR via `ciborium`; enum variants are single-letter map keys and all hashes, ids,
//! prefixes and packed summary lists are byte strings, so a child summary costs about
//! `FP_LEN + 2` bytes.
//!
//! Limits: [`MAX_MESSAGE_BYTES`] per message in either direction, [`MAX_QUERIES_PER_REQUEST`]
//! queries per round, [`LEAF_MAX`] fingerprints per `Items` query, [`MAX_LIST_IDS`] ids per
//! `Diff`, [`MAX_ROUNDS`] round trips and [`MAX_PENDING`] pending ranges per session. A request
//! that breaks a limit, or is malformed, gets an error, never a panic or an unbounded
//! allocation.
//!
//! # Collisions
//!
//! Roots are compared in full (32 bytes). Range fingerprints are [`FP_LEN`] = 8 bytes and item
//! fingerprints [`ITEM_FP_LEN`] = 8 bytes, keyed with the session salt. A collision can only
//! hide a difference (never invent one) and only for the current session: the roots still
//! differ afterwards, and the next session uses a new salt, so the collision does not repeat and
//! an adversary cannot precompute one. Per comparison the chance is `2^-64`; a session with
//! `10^6` comparisons misses something with probability below `10^-13`.
//!
//! Consistency: the responder answers every round from its current summary. If either side
//! changes during a session, the outcome may miss the change or name an id that no longer
//! differs; both are harmless (pulling and merging is idempotent, and the next session sees
//! differing roots again).

mod initiator;
mod prefix;
mod responder;
pub mod simulate;
mod summary;
mod wire;

#[cfg(test)]
mod tests;

pub use initiator::{Initiator, NeedBatch, Outcome, Step};
pub use prefix::{MAX_PREFIX_NIBBLES, Prefix};
pub use responder::{respond, respond_bytes};
pub use summary::{ItemSource, ItemsUnreadable, MemoryItems, Subtree, Summary};
pub use wire::{
    Answer, ChildSummaries, Descent, Hello, HelloReply, IdList, ItemFps, Mask, Query, RangeFp,
    Request, Response, Round, RoundReply,
};

/// An item id: BLAKE3 of the entry key.
pub type Id = [u8; 32];
/// An item digest: BLAKE3 of the entry's canonical register encoding.
pub type Digest = [u8; 32];
/// A summary node hash.
pub type Hash = [u8; 32];
/// Per-session random bytes that key the truncated fingerprints, so that a fingerprint
/// collision in one session does not recur in the next.
pub type Salt = [u8; 16];
/// A truncated, salted fingerprint of one item, used when listing a small range.
pub type ItemFp = [u8; ITEM_FP_LEN];

/// One element of a share's set: an entry id and the digest of its state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Item {
    /// BLAKE3 of the entry key.
    pub id: Id,
    /// Digest of the entry's register.
    pub digest: Digest,
}

/// A range holding at most this many items is a tree leaf listing them, and is reconciled by
/// listing fingerprints rather than by descending further.
///
/// 32 (as negentropy): listing 32 fingerprints costs about 260 bytes, about what one more level
/// of 16 child summaries costs, so descending below this size no longer saves bytes; leaves of
/// about 8 to 32 items also keep the per-node overhead of the in-memory tree small.
pub const LEAF_MAX: usize = 32;

/// A responder holding at most this many items in a differing child lists them
/// ([`Descent::Items`], about 40 bytes each) instead of sending the child's 16 summaries (about
/// 150 bytes, plus a round trip to list the items later). Larger values save round trips at
/// `d = 1` but cost bytes at larger `d`; 4 is about the break-even in bytes.
pub const DESCENT_LIST_MAX: usize = 4;

/// Bytes of a range fingerprint on the wire; see the module docs on collisions.
pub const FP_LEN: usize = 8;

/// Bytes of an item fingerprint on the wire; see the module docs on collisions.
pub const ITEM_FP_LEN: usize = 8;

/// Most ids a responder lists in one [`Answer::Diff`] (32 KiB of ids). Lets an initiator that
/// holds nothing in a range fetch the whole range at once instead of descending further, while
/// keeping one answer well below [`MAX_MESSAGE_BYTES`].
pub const MAX_LIST_IDS: usize = 1024;

/// Most queries in one [`Round`]. Each query encodes to at most [`MAX_QUERY_BYTES`], so a full
/// request stays under [`MAX_MESSAGE_BYTES`]; answering one costs the responder at most a few
/// hundred keyed BLAKE3 compressions, so a full request costs it tens of milliseconds.
pub const MAX_QUERIES_PER_REQUEST: usize = 2048;

/// Upper bound on the encoded size of one [`Query`] (checked by a test).
pub const MAX_QUERY_BYTES: usize = 400;

/// Largest encoded message, in either direction, that either end produces or accepts; the
/// daemon's request-response codec should enforce the same limit on the stream.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Most round trips in one session, the Hello included. Enough to list a million ids to a peer
/// that has none (about 35 rounds of 1 MiB); a session cut short by it reports
/// [`Outcome::complete`] = false and the next one resumes where the shares still differ.
pub const MAX_ROUNDS: u32 = 128;

/// Most ranges an initiator keeps queued for later rounds. A summary of `n` items has about
/// `n / 8` nodes, so honest sessions stay far below this up to millions of items; the bound
/// stops a lying responder from making us queue without end.
pub const MAX_PENDING: usize = 1 << 18;

/// Deepest prefix a [`Query::Compare`] may name: its answer describes ranges two nibbles deeper,
/// which must still be at most [`MAX_PREFIX_NIBBLES`] long.
pub const MAX_COMPARE_NIBBLES: usize = MAX_PREFIX_NIBBLES - 2;

const _: () = assert!(MAX_QUERIES_PER_REQUEST * MAX_QUERY_BYTES + 64 <= MAX_MESSAGE_BYTES);
const _: () = assert!(MAX_LIST_IDS * 32 + 64 <= MAX_MESSAGE_BYTES / 4);

/// Everything that can go wrong in a reconciliation session. Variants about a request are what
/// a responder reports for a bad request; variants about an answer are what an initiator
/// reports for a bad response. Either way the session is over.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// A message exceeds [`MAX_MESSAGE_BYTES`].
    #[error("message of {len} bytes exceeds MAX_MESSAGE_BYTES ({MAX_MESSAGE_BYTES})")]
    MessageTooLarge {
        /// Its length.
        len: usize,
    },
    /// A message is not valid CBOR for its type, or breaks a bound checked while decoding (the
    /// source names which).
    #[error("could not decode reconciliation message")]
    Decode(#[source] ciborium::de::Error<std::io::Error>),
    /// A message could not be encoded (not expected to happen).
    #[error("could not encode reconciliation message")]
    Encode(#[source] ciborium::ser::Error<std::io::Error>),
    /// A request carries more than [`MAX_QUERIES_PER_REQUEST`] queries.
    #[error(
        "request carries {count} queries, more than MAX_QUERIES_PER_REQUEST ({MAX_QUERIES_PER_REQUEST})"
    )]
    TooManyQueries {
        /// How many it carried.
        count: usize,
    },
    /// A query is invalid.
    #[error("query {index} is invalid: {reason}")]
    BadQuery {
        /// Its position in the request.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The response is of the wrong kind for the session's state.
    #[error("unexpected response: expected {expected}")]
    UnexpectedResponse {
        /// What was expected.
        expected: &'static str,
    },
    /// The number of answers differs from the number of queries sent.
    #[error("sent {sent} queries but received {received} answers")]
    AnswerCountMismatch {
        /// Queries sent.
        sent: usize,
        /// Answers received.
        received: usize,
    },
    /// An answer is invalid or does not fit its query.
    #[error("answer {index} is invalid: {reason}")]
    BadAnswer {
        /// Its position in the response.
        index: usize,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The responder made us queue more than [`MAX_PENDING`] ranges.
    #[error("more than MAX_PENDING ({MAX_PENDING}) ranges pending")]
    TooManyPending,
    /// A response arrived after the session finished.
    #[error("the session has already finished")]
    SessionFinished,
    /// Our own side's items could not be read (the store failed): nothing about the peer.
    #[error(transparent)]
    OwnItems(#[from] ItemsUnreadable),
}
