//! Peer identities and version vectors: the causality half of the merge rule.
//!
//! A version vector maps each peer that ever wrote a key to the number of writes of that key it
//! has made; comparing two vectors tells whether one version has seen the other. Decoding is
//! bounded because vectors arrive from the network.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;

use serde::de::{self, MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::MergeError;

/// Longest accepted [`PeerKey`], in bytes. A libp2p `PeerId` is at most 42 bytes (a SHA-256
/// multihash of a public key); 64 leaves room for other identity schemes while keeping a hostile
/// peer from inflating every version vector.
pub const MAX_PEER_KEY_LEN: usize = 64;

/// Most entries accepted in one [`VersionVector`]: the number of distinct peers that ever wrote
/// one key. Each entry costs about 50 bytes in every stored version, so this is the price of a
/// pathological key, not a limit a real mesh of devices approaches.
pub const MAX_VV_ENTRIES: usize = 1024;

/// Opaque, ordered identity of a writer (the daemon uses the bytes of its libp2p `PeerId`).
///
/// Kept opaque so that this module depends on no networking crate; the order is the byte order,
/// which every peer computes identically and which breaks ties between concurrent writes.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerKey(Vec<u8>);

impl PeerKey {
    /// Wraps identity bytes; fails unless `1..=MAX_PEER_KEY_LEN` bytes long.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, MergeError> {
        let bytes = bytes.into();
        if bytes.is_empty() || bytes.len() > MAX_PEER_KEY_LEN {
            return Err(MergeError::InvalidPeerKey { len: bytes.len() });
        }
        Ok(Self(bytes))
    }

    /// The identity bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for PeerKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerKey(")?;
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        write!(f, ")")
    }
}

impl Serialize for PeerKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        // A CBOR byte string, not an array of integers: half the size.
        s.serialize_bytes(&self.0)
    }
}

impl<'de> Deserialize<'de> for PeerKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = PeerKey;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a byte string of 1..={MAX_PEER_KEY_LEN} bytes")
            }
            fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<PeerKey, E> {
                PeerKey::new(v.to_vec()).map_err(E::custom)
            }
            fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<PeerKey, E> {
                PeerKey::new(v).map_err(E::custom)
            }
        }
        d.deserialize_byte_buf(V)
    }
}

/// How two version vectors relate causally.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Causality {
    /// Both have seen exactly the same writes.
    Equal,
    /// `self` happened before `other` (`other` has seen everything `self` has, and more).
    Before,
    /// `self` happened after `other` (it has seen everything `other` has, and more).
    After,
    /// Neither has seen all of the other's writes: the versions are in conflict.
    Concurrent,
}

/// Per-peer write counters of one key; the partial order that decides which version has seen
/// which.
///
/// Zero counters are never stored, so two vectors with the same meaning have the same
/// representation and the same encoding (a CBOR map in key byte order).
///
/// Held as a vector sorted by peer, not a `BTreeMap`: every synced path keeps one, almost
/// always with one or two peers, and a map's first node alone is ~370 bytes where the vector
/// needs 32 per peer. Order, equality and the encoding are the map's.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VersionVector(Vec<(PeerKey, u64)>);

impl Serialize for VersionVector {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl VersionVector {
    /// The empty vector (no writes seen).
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter of `peer` (0 if it never wrote).
    pub fn get(&self, peer: &PeerKey) -> u64 {
        self.0
            .binary_search_by(|(k, _)| k.cmp(peer))
            .map_or(0, |i| self.0[i].1)
    }

    /// The counter of `peer`, inserted as 0 if absent (the caller makes it non-zero).
    fn counter(&mut self, peer: &PeerKey) -> &mut u64 {
        let i = match self.0.binary_search_by(|(k, _)| k.cmp(peer)) {
            Ok(i) => i,
            Err(i) => {
                self.0.insert(i, (peer.clone(), 0));
                i
            }
        };
        &mut self.0[i].1
    }

    /// Number of peers with a non-zero counter.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True if no write has been seen.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The non-zero counters in peer order.
    pub fn iter(&self) -> impl Iterator<Item = (&PeerKey, u64)> {
        self.0.iter().map(|(k, v)| (k, *v))
    }

    /// Records one more write by `peer` and returns its new counter.
    pub fn increment(&mut self, peer: &PeerKey) -> Result<u64, MergeError> {
        let counter = self.counter(peer);
        *counter = counter
            .checked_add(1)
            .ok_or_else(|| MergeError::CounterOverflow { peer: peer.clone() })?;
        Ok(*counter)
    }

    /// Raises `peer`'s counter to at least `n`.
    pub fn raise(&mut self, peer: &PeerKey, n: u64) {
        if n == 0 {
            return;
        }
        let counter = self.counter(peer);
        *counter = (*counter).max(n);
    }

    /// Pointwise maximum: afterwards `self` has seen everything either vector had seen.
    pub fn join(&mut self, other: &VersionVector) {
        for (peer, n) in &other.0 {
            let mine = self.counter(peer);
            *mine = (*mine).max(*n);
        }
    }

    /// True if `self` has seen every write `other` has seen (`After` or `Equal`).
    pub fn dominates(&self, other: &VersionVector) -> bool {
        matches!(self.compare(other), Causality::After | Causality::Equal)
    }

    /// How `self` relates to `other`, in one merge-walk over both sorted maps.
    pub fn compare(&self, other: &VersionVector) -> Causality {
        let (mut less, mut greater) = (false, false);
        let mut a = self.0.iter().peekable();
        let mut b = other.0.iter().peekable();
        loop {
            match (a.peek(), b.peek()) {
                (None, None) => break,
                // Stored counters are non-zero, so a key present on one side only is a write
                // the other side has not seen.
                (Some(_), None) => {
                    greater = true;
                    break;
                }
                (None, Some(_)) => {
                    less = true;
                    break;
                }
                (Some((ka, va)), Some((kb, vb))) => match ka.cmp(kb) {
                    Ordering::Less => {
                        greater = true;
                        a.next();
                    }
                    Ordering::Greater => {
                        less = true;
                        b.next();
                    }
                    Ordering::Equal => {
                        match va.cmp(vb) {
                            Ordering::Less => less = true,
                            Ordering::Greater => greater = true,
                            Ordering::Equal => {}
                        }
                        a.next();
                        b.next();
                    }
                },
            }
            if less && greater {
                return Causality::Concurrent;
            }
        }
        match (less, greater) {
            (false, false) => Causality::Equal,
            (true, false) => Causality::Before,
            (false, true) => Causality::After,
            (true, true) => Causality::Concurrent,
        }
    }
}

impl<'de> Deserialize<'de> for VersionVector {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = VersionVector;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(
                    f,
                    "a map of at most {MAX_VV_ENTRIES} peer keys to non-zero counters"
                )
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<VersionVector, A::Error> {
                let mut out = BTreeMap::new();
                while let Some((peer, n)) = map.next_entry::<PeerKey, u64>()? {
                    // Rejecting rather than normalising keeps one encoding per vector, which the
                    // register digest relies on.
                    if n == 0 {
                        return Err(de::Error::custom("version vector holds a zero counter"));
                    }
                    if out.insert(peer, n).is_some() {
                        return Err(de::Error::custom("version vector repeats a peer"));
                    }
                    if out.len() > MAX_VV_ENTRIES {
                        return Err(de::Error::custom(format_args!(
                            "version vector has more than MAX_VV_ENTRIES ({MAX_VV_ENTRIES}) entries"
                        )));
                    }
                }
                Ok(VersionVector(out.into_iter().collect()))
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pk(b: u8) -> PeerKey {
        PeerKey::new(vec![b]).unwrap()
    }

    fn vv(entries: &[(u8, u64)]) -> VersionVector {
        let mut v = VersionVector::new();
        for &(p, n) in entries {
            for _ in 0..n {
                v.increment(&pk(p)).unwrap();
            }
        }
        v
    }

    #[test]
    fn compare_covers_all_cases() {
        assert_eq!(vv(&[]).compare(&vv(&[])), Causality::Equal);
        assert_eq!(vv(&[(1, 1)]).compare(&vv(&[(1, 2)])), Causality::Before);
        assert_eq!(vv(&[(1, 2)]).compare(&vv(&[(1, 1)])), Causality::After);
        assert_eq!(vv(&[(1, 1)]).compare(&vv(&[(2, 1)])), Causality::Concurrent);
        assert_eq!(
            vv(&[(1, 1), (2, 1)]).compare(&vv(&[(2, 1)])),
            Causality::After
        );
        assert_eq!(
            vv(&[(2, 1)]).compare(&vv(&[(1, 1), (2, 1)])),
            Causality::Before
        );
        assert_eq!(
            vv(&[(1, 2), (2, 1)]).compare(&vv(&[(1, 1), (2, 2)])),
            Causality::Concurrent
        );
    }

    #[test]
    fn join_is_pointwise_max() {
        let mut a = vv(&[(1, 3), (2, 1)]);
        a.join(&vv(&[(2, 4), (3, 1)]));
        assert_eq!(a, vv(&[(1, 3), (2, 4), (3, 1)]));
    }

    #[test]
    fn peer_key_bounds() {
        assert!(PeerKey::new(Vec::new()).is_err());
        assert!(PeerKey::new(vec![0; MAX_PEER_KEY_LEN]).is_ok());
        assert!(PeerKey::new(vec![0; MAX_PEER_KEY_LEN + 1]).is_err());
    }

    fn encode_raw(entries: Vec<(Vec<u8>, u64)>) -> Vec<u8> {
        let m = entries
            .into_iter()
            .map(|(k, n)| {
                (
                    ciborium::Value::Bytes(k),
                    ciborium::Value::Integer(n.into()),
                )
            })
            .collect();
        let mut bytes = Vec::new();
        ciborium::into_writer(&ciborium::Value::Map(m), &mut bytes).unwrap();
        bytes
    }

    #[test]
    fn encodes_as_a_cbor_map_in_peer_order_whatever_the_insertion_order() {
        let mut v = VersionVector::new();
        v.raise(&pk(9), 1);
        v.raise(&pk(1), 2);
        v.increment(&pk(5)).unwrap();
        let mut bytes = Vec::new();
        ciborium::into_writer(&v, &mut bytes).unwrap();
        assert_eq!(
            bytes,
            encode_raw(vec![(vec![1], 2), (vec![5], 1), (vec![9], 1)])
        );
        assert_eq!(v.get(&pk(5)), 1);
        assert_eq!(v.get(&pk(4)), 0);
    }

    #[test]
    fn decode_rejects_zero_counters_long_keys_and_repeats() {
        let zero = encode_raw(vec![(vec![1], 0)]);
        assert!(ciborium::from_reader::<VersionVector, _>(&zero[..]).is_err());
        let long = encode_raw(vec![(vec![7; MAX_PEER_KEY_LEN + 1], 1)]);
        assert!(ciborium::from_reader::<VersionVector, _>(&long[..]).is_err());
        let repeat = encode_raw(vec![(vec![1], 1), (vec![1], 2)]);
        assert!(ciborium::from_reader::<VersionVector, _>(&repeat[..]).is_err());

        let good = vv(&[(1, 2), (9, 1)]);
        let mut bytes = Vec::new();
        ciborium::into_writer(&good, &mut bytes).unwrap();
        assert_eq!(
            ciborium::from_reader::<VersionVector, _>(&bytes[..]).unwrap(),
            good
        );
    }

    #[test]
    fn decode_rejects_too_many_entries() {
        let entries = (0..=MAX_VV_ENTRIES as u32)
            .map(|i| (i.to_be_bytes().to_vec(), 1))
            .collect();
        let bytes = encode_raw(entries);
        assert!(ciborium::from_reader::<VersionVector, _>(&bytes[..]).is_err());
    }
}
