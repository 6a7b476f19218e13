//! Versions and the merge rule for one key: a multi-value register CRDT.
//!
//! Every peer edits its own replica of a share while offline, so two peers can write the same
//! key without seeing each other's write. This module decides, as a pure function of the data,
//! what a key holds after such replicas meet, so that every peer reaches the same answer without
//! coordination:
//!
//! - **Causality** comes from [`VersionVector`]s: a version whose vector dominates another's has
//!   seen it and replaces it. Wall clocks never decide causality, because they lie.
//! - **Concurrent** versions (neither has seen the other) are all kept in a [`Register`]; one of
//!   them is the deterministic [`Register::winner`] (highest [`Hlc`] timestamp, then highest
//!   origin [`PeerKey`]) and the others stay readable as [`Register::conflicts`], so a losing
//!   edit is never silently dropped. A delete is a [`Payload::Tombstone`] version that wins or
//!   loses by the same rule.
//! - A **local write** ([`Register::write_local`]) joins every vector it has seen, so it
//!   supersedes all current versions and resolves existing conflicts. Its own counter is at
//!   least its timestamp's milliseconds, so a replica restored from a backup never reuses the
//!   counters of writes it made after the backup (see [`Register::write_local_based`]).
//! - The [`HlcClock`] orders timestamps across peers with loosely synchronised clocks; remote
//!   timestamps far in the future are taken (every peer must reach the same winner) but move
//!   our clock no more than [`MAX_CLOCK_SKEW`] ahead, so one peer with a broken clock cannot
//!   drag everyone's timestamps along.
//!
//! [`Register::merge`] is commutative, associative and idempotent (a state-based CRDT), which is
//! what lets the sync engine pull the same entry twice, from any peer, in any order. The only
//! exception is the bound [`MAX_VERSIONS`] on concurrent versions: see [`Register`] for what is
//! dropped and why associativity then holds only approximately.
//!
//! The register is generic over its payload so that the key/value feature can store bytes and the
//! folder feature file metadata with chunk lists. [`Register::digest`] is BLAKE3 over a canonical
//! CBOR encoding; it is the per-entry digest that the Merkle summary in
//! [`crate::reconcile`] is built from, so equal content must give equal digests on every peer.
//!
//! Everything here is pure: no I/O, no clock reads (the wall clock is a parameter).

mod hlc;
mod register;
mod vv;

pub use hlc::{Hlc, HlcClock, MAX_CLOCK_SKEW, MAX_CLOCK_SKEW_MILLIS, Observed};
pub use register::{MAX_VERSIONS, Payload, Register, Version};
pub use vv::{Causality, MAX_PEER_KEY_LEN, MAX_VV_ENTRIES, PeerKey, VersionVector};

/// The register of one record or folder entry as stored and sent: values are opaque bytes (a
/// record's value, or a folder entry's CBOR file description).
pub type RecordRegister = Register<serde_bytes::ByteBuf>;

/// Everything that can go wrong while merging, clocking or decoding versions.
#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    /// A peer key was empty or longer than [`MAX_PEER_KEY_LEN`].
    #[error("peer key is {len} bytes; it must be 1..={MAX_PEER_KEY_LEN} bytes")]
    InvalidPeerKey {
        /// The offending length.
        len: usize,
    },
    /// A local write would make a version vector longer than [`MAX_VV_ENTRIES`], which peers
    /// would then refuse to decode.
    #[error("version vector would have {len} entries, more than MAX_VV_ENTRIES ({MAX_VV_ENTRIES})")]
    TooManyWriters {
        /// The number of entries the vector would have had.
        len: usize,
    },
    /// A peer's write counter would overflow `u64`.
    #[error("write counter of peer {peer:?} would overflow")]
    CounterOverflow {
        /// The peer whose counter is exhausted.
        peer: PeerKey,
    },
    /// Encoding to CBOR failed (only possible if the payload's `Serialize` impl fails).
    #[error("could not encode register as CBOR")]
    Encode(#[source] ciborium::ser::Error<std::io::Error>),
    /// Decoding CBOR failed: malformed input or a violated bound (the message names which).
    #[error("could not decode register or version from CBOR")]
    Decode(#[source] ciborium::de::Error<std::io::Error>),
}
