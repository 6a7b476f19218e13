//! The reconciliation messages and their compact, bounded CBOR encoding.
//!
//! Lists that dominate message size (child summaries, item fingerprints, ids) are packed into
//! single CBOR byte strings rather than arrays of small items, which saves one to three bytes of
//! CBOR framing per element; their decoders check every length against the protocol limits.

use std::fmt;

use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{
    FP_LEN, Hash, ITEM_FP_LEN, Id, ItemFp, LEAF_MAX, MAX_LIST_IDS, MAX_MESSAGE_BYTES,
    MAX_QUERIES_PER_REQUEST, Prefix, ReconcileError, Salt,
};

/// A request from the initiator of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Opens a session by comparing roots.
    #[serde(rename = "h")]
    Hello(Hello),
    /// One round of range queries.
    #[serde(rename = "r")]
    Round(Round),
}

/// Opens a session: the initiator's root and count, and the session salt.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// Keys the fingerprints of this session (fresh random bytes per session).
    #[serde(with = "fixed_bytes")]
    pub salt: Salt,
    /// The initiator's root hash.
    #[serde(with = "fixed_bytes")]
    pub root: Hash,
    /// The initiator's item count.
    pub count: u64,
}

/// A round of queries. Carries the salt again so that the responder needs no session state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Round {
    /// The session salt, as in [`Hello::salt`].
    #[serde(with = "fixed_bytes")]
    pub salt: Salt,
    /// At most [`MAX_QUERIES_PER_REQUEST`] queries, answered in order.
    #[serde(deserialize_with = "de_queries")]
    pub queries: Vec<Query>,
}

/// One question about a range of ids.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Query {
    /// "Here are my summaries of the 16 children of this range; for each child where yours
    /// differ, send me your summaries of its 16 children." The prefix has at most
    /// [`super::MAX_COMPARE_NIBBLES`] nibbles.
    #[serde(rename = "c")]
    Compare(Prefix, ChildSummaries),
    /// "Here are fingerprints of all my items in this range (at most [`LEAF_MAX`]); tell me
    /// exactly what differs."
    #[serde(rename = "i")]
    Items(Prefix, ItemFps),
}

/// A response from the responder of a session.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answers [`Request::Hello`].
    #[serde(rename = "h")]
    Hello(HelloReply),
    /// Answers [`Request::Round`].
    #[serde(rename = "r")]
    Round(RoundReply),
}

/// The responder's root, and its root children's summaries if the roots differ.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The responder's root hash.
    #[serde(with = "fixed_bytes")]
    pub root: Hash,
    /// The responder's item count.
    pub count: u64,
    /// Summaries of the responder's 16 root children; present iff root or count differ from
    /// the Hello's.
    pub children: Option<ChildSummaries>,
}

/// Answers to a [`Round`], one per query, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundReply {
    /// The answers.
    #[serde(deserialize_with = "de_answers")]
    pub answers: Vec<Answer>,
}

/// The answer to one [`Query`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Answer {
    /// Answers [`Query::Compare`]: one entry per child whose summary differs, by ascending
    /// nibble. Empty if nothing differs.
    #[serde(rename = "d")]
    Descend(#[serde(deserialize_with = "de_descents")] Vec<Descent>),
    /// Answers [`Query::Items`]: the ids the responder holds in the range that the initiator
    /// lacks or holds with another digest, and a mask with bit `i` (byte `i / 8`, bit `i % 8`)
    /// set if the initiator's `i`-th fingerprint matches none of the responder's items.
    #[serde(rename = "x")]
    Diff(IdList, Mask),
    /// Answers [`Query::Items`] when the responder holds more than [`MAX_LIST_IDS`] items in
    /// the range: its summaries of the range's 16 children, so the initiator descends instead.
    #[serde(rename = "s")]
    Split(ChildSummaries),
    /// The reply was full; ask again in a later round.
    #[serde(rename = "z")]
    Deferred,
}

/// What the responder says about one differing child (nibble `n`) of a compared range, choosing
/// the cheapest form that lets the initiator continue.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Descent {
    /// The responder's summaries of the child's 16 children: the initiator compares them.
    #[serde(rename = "c")]
    Children(u8, ChildSummaries),
    /// The initiator holds nothing in the child and the responder at most [`MAX_LIST_IDS`]
    /// items: all of the responder's ids there (all are needed).
    #[serde(rename = "n")]
    Ids(u8, IdList),
    /// The responder holds at most [`super::DESCENT_LIST_MAX`] items in the child: their ids and
    /// fingerprints, from which the initiator computes the exact difference itself (cheaper
    /// than 16 summaries, and it saves a round trip).
    #[serde(rename = "i")]
    Items(u8, IdList, ItemFps),
}

impl Descent {
    /// The child nibble this entry is about.
    pub fn nibble(&self) -> u8 {
        match self {
            Descent::Children(n, _) | Descent::Ids(n, _) | Descent::Items(n, _, _) => *n,
        }
    }
}

/// Count and salted, truncated hash of one range, as sent on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct RangeFp {
    /// Items in the range.
    pub count: u64,
    /// First [`FP_LEN`] bytes of the keyed hash of the range's node hash; zero for an empty
    /// range.
    pub fp: [u8; FP_LEN],
}

/// Summaries of the 16 children of a range, in nibble order.
///
/// Packed as one byte string: per child, its count as an unsigned LEB128 varint, then, unless
/// the count is zero, its [`FP_LEN`]-byte fingerprint. Boxed because at 256 bytes it would
/// otherwise make every message enum that can hold one that large.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ChildSummaries(pub Box<[RangeFp; 16]>);

/// Fingerprints of at most [`LEAF_MAX`] items, packed back to back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct ItemFps(pub Vec<ItemFp>);

/// At most [`MAX_LIST_IDS`] ids, strictly ascending, packed back to back.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct IdList(pub Vec<Id>);

/// A bit mask, least significant bit first; at most `LEAF_MAX / 8` bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub struct Mask(pub Vec<u8>);

impl Mask {
    /// A mask of `bits` zero bits.
    pub fn zeros(bits: usize) -> Mask {
        Mask(vec![0; bits.div_ceil(8)])
    }

    /// Sets bit `i` (ignored if out of range).
    pub fn set(&mut self, i: usize) {
        if let Some(b) = self.0.get_mut(i / 8) {
            *b |= 1 << (i % 8);
        }
    }

    /// Bit `i` (false if out of range).
    pub fn get(&self, i: usize) -> bool {
        self.0.get(i / 8).is_some_and(|b| b & (1 << (i % 8)) != 0)
    }
}

/// Serializes pre-packed bytes as one CBOR byte string.
pub(crate) fn ser_packed<S: Serializer>(s: S, bytes: &[u8]) -> Result<S::Ok, S::Error> {
    s.serialize_bytes(bytes)
}

/// Deserializes one CBOR byte string and parses it with `parse`.
///
/// Uses `deserialize_byte_buf`, which ciborium grows from the input (never from a length it was
/// told), so a lying length header cannot make us allocate more than the message holds.
pub(crate) fn de_packed<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&[u8]) -> Result<T, &'static str>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct V<T> {
        expecting: &'static str,
        parse: fn(&[u8]) -> Result<T, &'static str>,
    }
    impl<T> Visitor<'_> for V<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<T, E> {
            (self.parse)(v).map_err(E::custom)
        }
        fn visit_byte_buf<E: de::Error>(self, v: Vec<u8>) -> Result<T, E> {
            (self.parse)(&v).map_err(E::custom)
        }
    }
    d.deserialize_byte_buf(V { expecting, parse })
}

/// Deserializes a sequence of at most `max` elements, failing as soon as it grows past `max`.
fn de_bounded<'de, D, T>(d: D, max: usize, what: &'static str) -> Result<Vec<T>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct V<T> {
        max: usize,
        what: &'static str,
        _t: std::marker::PhantomData<T>,
    }
    impl<'de, T: Deserialize<'de>> Visitor<'de> for V<T> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {} {}", self.max, self.what)
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(self.max).min(64));
            while let Some(x) = seq.next_element()? {
                if out.len() == self.max {
                    return Err(de::Error::custom(format_args!(
                        "more than {} {}",
                        self.max, self.what
                    )));
                }
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V {
        max,
        what,
        _t: std::marker::PhantomData,
    })
}

fn de_queries<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Query>, D::Error> {
    de_bounded(
        d,
        MAX_QUERIES_PER_REQUEST,
        "queries (MAX_QUERIES_PER_REQUEST)",
    )
}

fn de_answers<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Answer>, D::Error> {
    de_bounded(
        d,
        MAX_QUERIES_PER_REQUEST,
        "answers (MAX_QUERIES_PER_REQUEST)",
    )
}

fn de_descents<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Descent>, D::Error> {
    de_bounded(d, 16, "descents (one per child)")
}

/// `[u8; N]` as a CBOR byte string instead of an array of N integers.
pub(crate) mod fixed_bytes {
    use super::*;

    pub(crate) fn serialize<S: Serializer, const N: usize>(
        v: &[u8; N],
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(v)
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>, const N: usize>(
        d: D,
    ) -> Result<[u8; N], D::Error> {
        de_packed(d, "a fixed-length byte string", |b| {
            b.try_into().map_err(|_| "byte string has the wrong length")
        })
    }
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn take_varint(b: &mut &[u8]) -> Result<u64, &'static str> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&byte, rest) = b.split_first().ok_or("truncated varint")?;
        *b = rest;
        let part = u64::from(byte & 0x7f);
        if shift == 63 && part > 1 {
            return Err("varint overflows u64");
        }
        v |= part << shift;
        if byte & 0x80 == 0 {
            return Ok(v);
        }
    }
    Err("varint longer than 10 bytes")
}

impl ChildSummaries {
    /// Encoded length in bytes (for planning message sizes).
    pub fn packed_len(&self) -> usize {
        self.pack().len()
    }

    fn pack(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 * (2 + FP_LEN));
        for r in self.0.iter() {
            push_varint(&mut out, r.count);
            if r.count > 0 {
                out.extend_from_slice(&r.fp);
            }
        }
        out
    }

    fn unpack(mut b: &[u8]) -> Result<Self, &'static str> {
        let mut out = Box::new(
            [RangeFp {
                count: 0,
                fp: [0; FP_LEN],
            }; 16],
        );
        for r in out.iter_mut() {
            r.count = take_varint(&mut b)?;
            if r.count > 0 {
                let (fp, rest) = b
                    .split_first_chunk::<FP_LEN>()
                    .ok_or("truncated child fingerprint")?;
                r.fp = *fp;
                b = rest;
            }
        }
        if !b.is_empty() {
            return Err("trailing bytes after 16 child summaries");
        }
        Ok(ChildSummaries(out))
    }
}

impl Serialize for ChildSummaries {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_packed(s, &self.pack())
    }
}

impl<'de> Deserialize<'de> for ChildSummaries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_packed(d, "16 packed child summaries", ChildSummaries::unpack)
    }
}

impl Serialize for ItemFps {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_packed(s, self.0.as_flattened())
    }
}

impl<'de> Deserialize<'de> for ItemFps {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_packed(d, "packed item fingerprints", |b| {
            let (chunks, rest) = b.as_chunks::<ITEM_FP_LEN>();
            if !rest.is_empty() {
                return Err("item fingerprints are not a whole number of fingerprints");
            }
            if chunks.len() > LEAF_MAX {
                return Err("more than LEAF_MAX item fingerprints");
            }
            Ok(ItemFps(chunks.to_vec()))
        })
    }
}

impl Serialize for IdList {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_packed(s, self.0.as_flattened())
    }
}

impl<'de> Deserialize<'de> for IdList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_packed(d, "packed ids", |b| {
            let (chunks, rest) = b.as_chunks::<32>();
            if !rest.is_empty() {
                return Err("id list is not a whole number of ids");
            }
            if chunks.len() > MAX_LIST_IDS {
                return Err("more than MAX_LIST_IDS ids");
            }
            Ok(IdList(chunks.to_vec()))
        })
    }
}

impl Serialize for Mask {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        ser_packed(s, &self.0)
    }
}

impl<'de> Deserialize<'de> for Mask {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_packed(d, "a bit mask", |b| {
            if b.len() > LEAF_MAX.div_ceil(8) {
                return Err("mask longer than LEAF_MAX bits");
            }
            Ok(Mask(b.to_vec()))
        })
    }
}

/// Encodes a message, refusing to produce one over [`MAX_MESSAGE_BYTES`].
pub(crate) fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, ReconcileError> {
    let mut out = Vec::new();
    ciborium::into_writer(msg, &mut out).map_err(ReconcileError::Encode)?;
    if out.len() > MAX_MESSAGE_BYTES {
        return Err(ReconcileError::MessageTooLarge { len: out.len() });
    }
    Ok(out)
}

/// Decodes a message after checking its length against [`MAX_MESSAGE_BYTES`].
pub(crate) fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ReconcileError> {
    if bytes.len() > MAX_MESSAGE_BYTES {
        return Err(ReconcileError::MessageTooLarge { len: bytes.len() });
    }
    // The recursion limit is far above our nesting depth (5) and far below a stack overflow.
    ciborium::de::from_reader_with_recursion_limit(bytes, 16).map_err(ReconcileError::Decode)
}

/// Exact encoded size of `msg`, without keeping the bytes.
pub(crate) fn encoded_len<T: Serialize>(msg: &T) -> Result<usize, ReconcileError> {
    struct Count(usize);
    impl std::io::Write for Count {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0 += buf.len();
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    let mut c = Count(0);
    ciborium::into_writer(msg, &mut c).map_err(ReconcileError::Encode)?;
    Ok(c.0)
}

impl Request {
    /// Encodes the request as CBOR.
    pub fn encode(&self) -> Result<Vec<u8>, ReconcileError> {
        encode(self)
    }

    /// Decodes a request received from a peer, enforcing the message limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReconcileError> {
        decode(bytes)
    }
}

impl Response {
    /// Encodes the response as CBOR.
    pub fn encode(&self) -> Result<Vec<u8>, ReconcileError> {
        encode(self)
    }

    /// Decodes a response received from a peer, enforcing the message limits.
    pub fn decode(bytes: &[u8]) -> Result<Self, ReconcileError> {
        decode(bytes)
    }
}

/// Keyed, truncated fingerprints for one session.
pub(crate) struct Fingerprinter {
    key: [u8; 32],
}

impl Fingerprinter {
    pub(crate) fn new(salt: &Salt) -> Self {
        Self {
            key: blake3::derive_key("meshsync reconcile fingerprint v1", salt),
        }
    }

    /// The wire summary of a range with `count` items and node hash `hash`.
    pub(crate) fn range(&self, count: u64, hash: &Hash) -> RangeFp {
        let mut fp = [0; FP_LEN];
        if count > 0 {
            fp.copy_from_slice(&blake3::keyed_hash(&self.key, hash).as_bytes()[..FP_LEN]);
        }
        RangeFp { count, fp }
    }

    /// Wire summaries of 16 children given as `(count, hash)`.
    pub(crate) fn children(&self, c: &[(u64, Hash); 16]) -> ChildSummaries {
        ChildSummaries(Box::new(std::array::from_fn(|n| {
            self.range(c[n].0, &c[n].1)
        })))
    }

    /// The fingerprint of one item.
    pub(crate) fn item(&self, id: &Id, digest: &Hash) -> ItemFp {
        let mut buf = [0u8; 64];
        buf[..32].copy_from_slice(id);
        buf[32..].copy_from_slice(digest);
        let mut fp = [0; ITEM_FP_LEN];
        fp.copy_from_slice(&blake3::keyed_hash(&self.key, &buf).as_bytes()[..ITEM_FP_LEN]);
        fp
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reconcile::{MAX_COMPARE_NIBBLES, MAX_QUERY_BYTES};

    fn full_summaries() -> ChildSummaries {
        ChildSummaries(Box::new(
            [RangeFp {
                count: u64::MAX,
                fp: [0xff; FP_LEN],
            }; 16],
        ))
    }

    #[test]
    fn varint_roundtrip_and_rejects() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut out = Vec::new();
            push_varint(&mut out, v);
            let mut b = &out[..];
            assert_eq!(take_varint(&mut b), Ok(v));
            assert!(b.is_empty());
        }
        assert!(take_varint(&mut &[0x80][..]).is_err());
        assert!(take_varint(&mut &[0xff; 11][..]).is_err());
        assert!(
            take_varint(&mut &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02][..])
                .is_err()
        );
    }

    #[test]
    fn largest_queries_fit_max_query_bytes() {
        let deep = Prefix::of(&[0xff; 32], MAX_COMPARE_NIBBLES);
        let compare = Query::Compare(deep, full_summaries());
        let items = Query::Items(
            Prefix::of(&[0xff; 32], 64),
            ItemFps(vec![[0xff; ITEM_FP_LEN]; LEAF_MAX]),
        );
        for q in [compare, items] {
            let len = encoded_len(&q).unwrap();
            assert!(len <= MAX_QUERY_BYTES, "{len} > {MAX_QUERY_BYTES}");
            let back: Query = decode(&encode(&q).unwrap()).unwrap();
            assert_eq!(back, q);
        }
    }

    #[test]
    fn responses_roundtrip() {
        let r = Response::Round(RoundReply {
            answers: vec![
                Answer::Descend(vec![
                    Descent::Children(3, full_summaries()),
                    Descent::Ids(4, IdList(vec![[7; 32]])),
                    Descent::Items(5, IdList(vec![[8; 32]]), ItemFps(vec![[9; ITEM_FP_LEN]])),
                ]),
                Answer::Diff(IdList(vec![[1; 32], [2; 32]]), Mask(vec![5])),
                Answer::Split(full_summaries()),
                Answer::Deferred,
            ],
        });
        assert_eq!(Response::decode(&r.encode().unwrap()).unwrap(), r);
    }

    #[test]
    fn packed_decoders_reject_bad_lengths() {
        assert!(ChildSummaries::unpack(&[0; 15]).is_err());
        assert!(ChildSummaries::unpack(&[0; 17]).is_err());
        assert!(ChildSummaries::unpack(&[1; 16]).is_err());
        assert!(ChildSummaries::unpack(&[0; 16]).is_ok());
        let too_many = ItemFps(vec![[0; ITEM_FP_LEN]; LEAF_MAX + 1]);
        assert!(decode::<ItemFps>(&encode(&too_many).unwrap()).is_err());
        let ids = IdList(vec![[0; 32]; MAX_LIST_IDS + 1]);
        assert!(decode::<IdList>(&encode(&ids).unwrap()).is_err());
    }
}
