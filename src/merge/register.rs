//! The multi-value register: all mutually concurrent versions of one key, with a deterministic
//! winner.

use std::cmp::Ordering;
use std::fmt;
use std::marker::PhantomData;

use serde::de::{self, DeserializeOwned, SeqAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize};

use super::{Causality, Hlc, MAX_VV_ENTRIES, MergeError, PeerKey, VersionVector};

/// Most concurrent versions one [`Register`] keeps.
///
/// Honest peers never reach it: each peer's newest write has seen its own earlier writes, so a
/// register holds at most one version per peer that wrote concurrently, and 16 devices editing
/// the same key while offline from each other is far beyond normal use. The bound exists so
/// that a buggy or hostile peer cannot make every replica store and show an unbounded conflict
/// list. Beyond it the lowest-ranked versions are dropped (the winner is always kept); see
/// [`Register`].
pub const MAX_VERSIONS: usize = 16;

/// What a version holds: a value or the fact that the key was deleted.
///
/// Deletion is a version like any other (a tombstone) so that it takes part in causality and
/// conflict resolution instead of silently losing against an older copy still held by a peer.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Payload<P> {
    /// The key holds this value.
    #[serde(rename = "v")]
    Value(P),
    /// The key was deleted.
    #[serde(rename = "d")]
    Tombstone,
}

/// One write of a key: what was written, by whom, when, and which writes it had seen.
///
/// Fields are private so that every `Version` satisfies its invariant (the origin's own counter
/// is in the vector); versions come from [`Register::write_local`] or from validated decoding.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(
    try_from = "VersionRepr<P>",
    bound(serialize = "P: Serialize", deserialize = "P: Deserialize<'de>")
)]
pub struct Version<P> {
    #[serde(rename = "v")]
    vv: VersionVector,
    #[serde(rename = "t")]
    hlc: Hlc,
    #[serde(rename = "o")]
    origin: PeerKey,
    #[serde(rename = "p")]
    payload: Payload<P>,
}

/// Unvalidated wire form of a [`Version`].
#[derive(Deserialize)]
struct VersionRepr<P> {
    #[serde(rename = "v")]
    vv: VersionVector,
    #[serde(rename = "t")]
    hlc: Hlc,
    #[serde(rename = "o")]
    origin: PeerKey,
    #[serde(rename = "p")]
    payload: Payload<P>,
}

impl<P> TryFrom<VersionRepr<P>> for Version<P> {
    type Error = String;

    fn try_from(r: VersionRepr<P>) -> Result<Self, String> {
        // Without its own counter a version could be dominated by writes that never saw it.
        if r.vv.get(&r.origin) == 0 {
            return Err(format!(
                "version by {:?} does not count its own write in its version vector",
                r.origin
            ));
        }
        Ok(Self {
            vv: r.vv,
            hlc: r.hlc,
            origin: r.origin,
            payload: r.payload,
        })
    }
}

impl<P> Version<P> {
    /// The writes this version had seen, including itself.
    pub fn vv(&self) -> &VersionVector {
        &self.vv
    }

    /// When it was written, by the writer's hybrid logical clock.
    pub fn hlc(&self) -> Hlc {
        self.hlc
    }

    /// The peer that wrote it.
    pub fn origin(&self) -> &PeerKey {
        &self.origin
    }

    /// What was written.
    pub fn payload(&self) -> &Payload<P> {
        &self.payload
    }

    /// True if this version deletes the key.
    pub fn is_tombstone(&self) -> bool {
        matches!(self.payload, Payload::Tombstone)
    }
}

impl<P: Ord> Version<P> {
    /// Total order deciding the winner among concurrent versions: timestamp, then origin; the
    /// vector and payload only break ties a correct peer never produces (one peer reusing a
    /// timestamp), so that even then every peer picks the same winner.
    fn rank_cmp(&self, other: &Self) -> Ordering {
        self.hlc
            .cmp(&other.hlc)
            .then_with(|| self.origin.cmp(&other.origin))
            .then_with(|| self.vv.cmp(&other.vv))
            .then_with(|| self.payload.cmp(&other.payload))
    }
}

/// The state of one key: every version not superseded by another, winner first.
///
/// Invariants, which make the state a function of the versions merged into it (hence
/// commutative, associative and idempotent merges and order-independent digests):
/// - no kept version's vector is dominated by another kept version's vector;
/// - versions are sorted by descending rank (timestamp, then origin), so `versions[0]` wins;
/// - at most [`MAX_VERSIONS`] versions are kept.
///
/// **The bound.** When more than [`MAX_VERSIONS`] versions are concurrent, the lowest-ranked
/// ones are dropped: every peer ranks identically, so every peer drops the same ones, and the
/// winner is never dropped. The vectors of dropped versions are joined into
/// [`Register::superseded`], which the next local write joins too, so that write still
/// supersedes everything this replica saw (a dropped version that a peer sends again is then
/// dominated instead of resurfacing as a conflict). Merges stay commutative and idempotent, but
/// associativity can fail once versions were dropped (a version dropped in one merge order may be
/// dominated, and so not needed, in another); registers still converge because every pair of
/// replicas that exchanged states holds the same state. Below the bound all three laws hold
/// exactly.
///
/// The encoding (CBOR map `{versions, superseded}`) is canonical as long as `P`'s own
/// serialization is deterministic (no hash maps), which [`Register::digest`] relies on.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    from = "RegisterRepr<P>",
    bound(
        serialize = "P: Serialize",
        deserialize = "P: Deserialize<'de> + Clone + Ord"
    )
)]
pub struct Register<P> {
    #[serde(rename = "v")]
    versions: Vec<Version<P>>,
    #[serde(rename = "s")]
    superseded: VersionVector,
}

/// Unnormalised wire form of a [`Register`]; decoding bounds the number of versions.
#[derive(Deserialize)]
#[serde(bound(deserialize = "P: Deserialize<'de>"))]
struct RegisterRepr<P> {
    #[serde(deserialize_with = "bounded_versions")]
    #[serde(rename = "v")]
    versions: Vec<Version<P>>,
    #[serde(rename = "s")]
    superseded: VersionVector,
}

impl<P: Clone + Ord> From<RegisterRepr<P>> for Register<P> {
    fn from(r: RegisterRepr<P>) -> Self {
        // A peer may send an unsorted or unpruned list; normalising keeps our copy canonical.
        let mut reg = Register {
            versions: r.versions,
            superseded: r.superseded,
        };
        reg.normalize();
        reg
    }
}

/// Decodes a version list of at most [`MAX_VERSIONS`] entries without allocating for more.
fn bounded_versions<'de, D, P>(d: D) -> Result<Vec<Version<P>>, D::Error>
where
    D: Deserializer<'de>,
    P: Deserialize<'de>,
{
    struct V<P>(PhantomData<P>);
    impl<'de, P: Deserialize<'de>> Visitor<'de> for V<P> {
        type Value = Vec<Version<P>>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "at most {MAX_VERSIONS} versions")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX_VERSIONS));
            while let Some(v) = seq.next_element()? {
                if out.len() == MAX_VERSIONS {
                    return Err(de::Error::custom(format_args!(
                        "register holds more than MAX_VERSIONS ({MAX_VERSIONS}) versions"
                    )));
                }
                out.push(v);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(V(PhantomData))
}

impl<P> Default for Register<P> {
    fn default() -> Self {
        Self {
            versions: Vec::new(),
            superseded: VersionVector::new(),
        }
    }
}

impl<P> Register<P> {
    /// A key that was never written.
    pub fn new() -> Self {
        Self::default()
    }

    /// The version every peer shows as current: highest timestamp, then highest origin, among
    /// the concurrent versions. `None` if the key was never written.
    pub fn winner(&self) -> Option<&Version<P>> {
        self.versions.first()
    }

    /// The concurrent versions that lost against [`Register::winner`], best first; empty when
    /// there is no conflict. Kept so that a losing edit stays readable.
    pub fn conflicts(&self) -> &[Version<P>] {
        self.versions.get(1..).unwrap_or(&[])
    }

    /// All kept versions, winner first.
    pub fn versions(&self) -> &[Version<P>] {
        &self.versions
    }

    /// The current value, or `None` if the key was never written or its winner is a tombstone.
    pub fn value(&self) -> Option<&P> {
        match self.winner()?.payload() {
            Payload::Value(v) => Some(v),
            Payload::Tombstone => None,
        }
    }

    /// True if the winning version deletes the key.
    pub fn is_deleted(&self) -> bool {
        self.winner().is_some_and(Version::is_tombstone)
    }

    /// True if the key was never written.
    pub fn is_empty(&self) -> bool {
        self.versions.is_empty()
    }

    /// Join of the vectors of versions dropped because of [`MAX_VERSIONS`] (empty unless the
    /// bound was hit and no kept version has seen them all).
    pub fn superseded(&self) -> &VersionVector {
        &self.superseded
    }

    /// Everything this replica has seen of the key: the join of all kept vectors and
    /// [`Register::superseded`].
    pub fn seen(&self) -> VersionVector {
        let mut all = self.superseded.clone();
        for v in &self.versions {
            all.join(&v.vv);
        }
        all
    }
}

impl<P: Clone + Ord> Register<P> {
    /// Merges another replica's state into this one (commutative, associative below
    /// [`MAX_VERSIONS`], idempotent).
    pub fn merge(&mut self, other: &Register<P>) {
        self.versions.extend(other.versions.iter().cloned());
        self.superseded.join(&other.superseded);
        self.normalize();
    }

    /// Merges one received version (as if merging a register holding only it).
    pub fn merge_version(&mut self, version: Version<P>) {
        self.versions.push(version);
        self.normalize();
    }

    /// Records a write made on this peer and returns the new version, to be stored and sent to
    /// peers.
    ///
    /// The new version's vector joins every vector this replica has seen and bumps `peer`'s
    /// counter, so it dominates all current versions: writing resolves existing conflicts.
    /// `hlc` should come from [`crate::merge::HlcClock::now`] (it only ranks concurrent
    /// versions; causality comes from the vector).
    pub fn write_local(
        &mut self,
        peer: &PeerKey,
        hlc: Hlc,
        payload: Payload<P>,
    ) -> Result<Version<P>, MergeError> {
        // Based on everything seen, the new version dominates every current one, and the
        // normalisation in `write_local_based` leaves it alone.
        let seen = self.seen();
        self.write_local_based(peer, hlc, payload, &seen)
    }

    /// Records a write made on this peer that was based on the version with vector `base`, not
    /// on everything this replica has seen.
    ///
    /// This is what a file edit is: the user changed the bytes that were on disk, which came
    /// from `base`. Versions that arrived since (and `base` has not seen) stay as concurrent
    /// versions, so the edit and the remote change become a conflict instead of the edit
    /// silently replacing a change its author never saw. Our own counter still moves past every
    /// counter of ours seen here, so the new version's identity is unique.
    ///
    /// Our counter is also at least `hlc`'s milliseconds. A replica restored from a backup
    /// (its store older than what it wrote since) has not seen its own later writes, which its
    /// peers hold: counting on from the backup's counter, its next write would reuse their
    /// counters and be taken for an old write they replaced, lost everywhere. Counting from the
    /// clock, a write is newer than every write this peer made before, as long as its clock
    /// (which [`crate::merge::HlcClock`] keeps from going backwards while the store lasts) did
    /// not go back past them.
    pub fn write_local_based(
        &mut self,
        peer: &PeerKey,
        hlc: Hlc,
        payload: Payload<P>,
        base: &VersionVector,
    ) -> Result<Version<P>, MergeError> {
        let mut vv = base.clone();
        vv.raise(peer, self.seen().get(peer));
        vv.increment(peer)?;
        vv.raise(peer, hlc.millis);
        if vv.len() > MAX_VV_ENTRIES {
            return Err(MergeError::TooManyWriters { len: vv.len() });
        }
        let version = Version {
            vv,
            hlc,
            origin: peer.clone(),
            payload,
        };
        self.versions.push(version.clone());
        self.normalize();
        Ok(version)
    }

    /// Restores the invariants after versions were added.
    fn normalize(&mut self) {
        self.versions.sort_by(|a, b| b.rank_cmp(a));
        self.versions.dedup();
        // Quadratic, but over at most 2 * MAX_VERSIONS versions.
        let dominated: Vec<bool> = self
            .versions
            .iter()
            .map(|v| {
                self.versions
                    .iter()
                    .any(|w| w.vv.compare(&v.vv) == Causality::After)
            })
            .collect();
        let mut flags = dominated.into_iter();
        self.versions.retain(|_| !flags.next().unwrap_or(false));
        if self.versions.len() > MAX_VERSIONS {
            for dropped in self.versions.drain(MAX_VERSIONS..) {
                self.superseded.join(&dropped.vv);
            }
        }
        if !self.superseded.is_empty() {
            let mut kept = VersionVector::new();
            for v in &self.versions {
                kept.join(&v.vv);
            }
            // Forget `superseded` once it carries no information (a kept version has seen it
            // all), so replicas that reached the same versions by different paths encode alike;
            // and never let it grow past what peers accept to decode.
            if kept.dominates(&self.superseded) || self.superseded.len() > MAX_VV_ENTRIES {
                self.superseded = VersionVector::new();
            }
        }
    }
}

impl<P: Serialize> Register<P> {
    /// The canonical CBOR encoding (what is stored and sent, and what [`Register::digest`]
    /// hashes).
    pub fn to_cbor(&self) -> Result<Vec<u8>, MergeError> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).map_err(MergeError::Encode)?;
        Ok(out)
    }

    /// BLAKE3 of the canonical encoding: equal on every peer holding the same state, whatever
    /// order the versions were merged in. This is the item digest of the reconciliation summary.
    pub fn digest(&self) -> Result<[u8; 32], MergeError> {
        Ok(*blake3::hash(&self.to_cbor()?).as_bytes())
    }
}

impl<P: DeserializeOwned + Clone + Ord> Register<P> {
    /// Decodes a register received from a peer or read from the store, enforcing the bounds
    /// ([`MAX_VERSIONS`], [`MAX_VV_ENTRIES`], [`crate::merge::MAX_PEER_KEY_LEN`]) and
    /// normalising it.
    pub fn from_cbor(bytes: &[u8]) -> Result<Self, MergeError> {
        ciborium::from_reader(bytes).map_err(MergeError::Decode)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    type Reg = Register<Vec<u8>>;

    #[test]
    fn a_replica_restored_from_a_backup_writes_past_what_it_wrote_after_it() {
        let a = PeerKey::new(vec![1]).unwrap();
        let value = |v: &[u8]| Payload::Value(v.to_vec());
        let mut backup = Reg::new();
        backup
            .write_local(&a, Hlc::new(1_000, 0), value(b"v1"))
            .unwrap();
        let mut lost = backup.clone();
        lost.write_local(&a, Hlc::new(2_000, 0), value(b"v2"))
            .unwrap();
        lost.write_local(&a, Hlc::new(3_000, 0), value(b"v3"))
            .unwrap();
        // Restored to `backup`, the replica writes again, later; then meets a peer holding v3.
        let mut restored = backup.clone();
        let v4 = restored
            .write_local(&a, Hlc::new(4_000, 0), value(b"v4"))
            .unwrap();
        assert!(v4.vv().get(&a) >= 4_000, "{:?}", v4.vv());
        restored.merge(&lost);
        lost.merge(&restored);
        assert_eq!(
            restored.value(),
            Some(&b"v4".to_vec()),
            "the newest write is kept"
        );
        assert_eq!(lost.value(), Some(&b"v4".to_vec()));
        assert_eq!(
            lost.versions().len(),
            1,
            "and it replaces the writes before it"
        );
        // Within one millisecond, counters still move on one by one.
        let (x, y) = (
            restored
                .write_local(&a, Hlc::new(5_000, 0), value(b"x"))
                .unwrap(),
            restored
                .write_local(&a, Hlc::new(5_000, 1), value(b"y"))
                .unwrap(),
        );
        assert_eq!(y.vv().get(&a), x.vv().get(&a) + 1);
    }

    #[test]
    fn a_based_write_is_concurrent_with_what_its_base_did_not_see() {
        let (a, b) = (
            PeerKey::new(vec![1]).unwrap(),
            PeerKey::new(vec![2]).unwrap(),
        );
        let mut ra = Reg::new();
        let base = ra
            .write_local(&a, Hlc::new(1, 0), Payload::Value(b"v1".to_vec()))
            .unwrap();
        let mut rb = ra.clone();
        rb.write_local(&b, Hlc::new(2, 0), Payload::Value(b"remote".to_vec()))
            .unwrap();
        ra.merge(&rb);
        // A edits the bytes it had (v1), unaware of B's write that has already arrived.
        ra.write_local_based(
            &a,
            Hlc::new(3, 0),
            Payload::Value(b"edit".to_vec()),
            base.vv(),
        )
        .unwrap();
        assert_eq!(ra.versions().len(), 2, "edit and remote write conflict");
        assert_eq!(ra.value(), Some(&b"edit".to_vec()), "later clock wins");
        // Based on the latest, it supersedes everything, like an ordinary write.
        let latest = ra.seen();
        ra.write_local_based(
            &a,
            Hlc::new(4, 0),
            Payload::Value(b"merged".to_vec()),
            &latest,
        )
        .unwrap();
        assert_eq!(ra.versions().len(), 1);
    }

    fn pk(b: u8) -> PeerKey {
        PeerKey::new(vec![b]).unwrap()
    }

    fn val(b: u8) -> Payload<Vec<u8>> {
        Payload::Value(vec![b])
    }

    fn merged(a: &Reg, b: &Reg) -> Reg {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    #[test]
    fn concurrent_writes_pick_same_winner_and_keep_loser() {
        let (mut a, mut b) = (Reg::new(), Reg::new());
        a.write_local(&pk(1), Hlc::new(100, 0), val(1)).unwrap();
        b.write_local(&pk(2), Hlc::new(90, 0), val(2)).unwrap();
        let ab = merged(&a, &b);
        assert_eq!(ab, merged(&b, &a));
        assert_eq!(ab.value(), Some(&vec![1]));
        assert_eq!(ab.conflicts().len(), 1);
        assert_eq!(ab.conflicts()[0].payload(), &val(2));
        // Same timestamp: the higher origin wins.
        let mut c = Reg::new();
        c.write_local(&pk(3), Hlc::new(100, 0), val(3)).unwrap();
        assert_eq!(merged(&ab, &c).value(), Some(&vec![3]));
    }

    #[test]
    fn tombstone_wins_or_loses_by_the_same_rule() {
        let mut base = Reg::new();
        base.write_local(&pk(1), Hlc::new(10, 0), val(1)).unwrap();
        let (mut a, mut b) = (base.clone(), base.clone());
        a.write_local(&pk(1), Hlc::new(20, 0), Payload::Tombstone)
            .unwrap();
        b.write_local(&pk(2), Hlc::new(30, 0), val(2)).unwrap();
        let m = merged(&a, &b);
        assert!(!m.is_deleted());
        assert_eq!(m.value(), Some(&vec![2]));
        assert!(m.conflicts()[0].is_tombstone());

        let mut a2 = base.clone();
        a2.write_local(&pk(1), Hlc::new(40, 0), Payload::Tombstone)
            .unwrap();
        let m2 = merged(&a2, &b);
        assert!(m2.is_deleted());
        assert_eq!(m2.value(), None);
    }

    #[test]
    fn causal_successor_replaces_predecessor_even_with_older_clock() {
        let mut a = Reg::new();
        a.write_local(&pk(1), Hlc::new(1000, 0), val(1)).unwrap();
        let mut b = a.clone();
        // b's clock is behind, but b has seen a's write: b wins by causality.
        b.write_local(&pk(2), Hlc::new(5, 0), val(2)).unwrap();
        let m = merged(&a, &b);
        assert_eq!(m.versions().len(), 1);
        assert_eq!(m.value(), Some(&vec![2]));
    }

    #[test]
    fn local_write_resolves_conflicts() {
        let (mut a, mut b) = (Reg::new(), Reg::new());
        a.write_local(&pk(1), Hlc::new(1, 0), val(1)).unwrap();
        b.write_local(&pk(2), Hlc::new(2, 0), val(2)).unwrap();
        let mut m = merged(&a, &b);
        assert_eq!(m.conflicts().len(), 1);
        let v = m.write_local(&pk(1), Hlc::new(3, 0), val(9)).unwrap();
        assert!(m.conflicts().is_empty());
        assert_eq!(v.vv().compare(a.winner().unwrap().vv()), Causality::After);
        assert_eq!(v.vv().compare(b.winner().unwrap().vv()), Causality::After);
        assert_eq!(merged(&m, &a), m);
        assert_eq!(merged(&b, &m), m);
    }

    /// `count` peers write concurrently; returns their registers.
    fn concurrent_writers(count: u8) -> Vec<Reg> {
        (0..count)
            .map(|i| {
                let mut r = Reg::new();
                // Timestamps interleave with peer order so rank is not just peer order.
                let hlc = Hlc::new(u64::from((i * 7) % count), 0);
                r.write_local(&pk(i), hlc, val(i)).unwrap();
                r
            })
            .collect()
    }

    #[test]
    fn bound_keeps_winner_and_later_write_supersedes_dropped() {
        let writers = concurrent_writers(20);
        let mut all = Reg::new();
        for w in &writers {
            all.merge(w);
        }
        assert_eq!(all.versions().len(), MAX_VERSIONS);
        let best = writers
            .iter()
            .map(|w| w.winner().unwrap())
            .max_by(|a, b| a.rank_cmp(b))
            .unwrap();
        assert_eq!(all.winner().unwrap(), best);
        assert!(!all.superseded().is_empty());
        // Reverse order gives the same state.
        let mut rev = Reg::new();
        for w in writers.iter().rev() {
            rev.merge(w);
        }
        assert_eq!(rev, all);
        // A local write dominates even the dropped versions, which then cannot resurface.
        let mut after = all.clone();
        after
            .write_local(&pk(99), Hlc::new(1000, 0), val(99))
            .unwrap();
        for w in &writers {
            assert_eq!(merged(&after, w), after);
        }
        assert!(after.superseded().is_empty());
    }

    #[test]
    fn decode_roundtrip_and_bounds() {
        let mut all = Reg::new();
        for w in concurrent_writers(5) {
            all.merge(&w);
        }
        let bytes = all.to_cbor().unwrap();
        let back = Reg::from_cbor(&bytes).unwrap();
        assert_eq!(back, all);
        assert_eq!(back.digest().unwrap(), all.digest().unwrap());

        // Too many versions: build the wire form by hand, bypassing normalisation.
        let many: Vec<Version<Vec<u8>>> = concurrent_writers(MAX_VERSIONS as u8 + 1)
            .into_iter()
            .map(|r| r.winner().unwrap().clone())
            .collect();
        #[derive(Serialize)]
        struct Raw<'a> {
            #[serde(rename = "v")]
            versions: &'a [Version<Vec<u8>>],
            #[serde(rename = "s")]
            superseded: VersionVector,
        }
        let mut bytes = Vec::new();
        ciborium::into_writer(
            &Raw {
                versions: &many,
                superseded: VersionVector::new(),
            },
            &mut bytes,
        )
        .unwrap();
        let err = Reg::from_cbor(&bytes).unwrap_err();
        assert!(format!("{:?}", err).contains("MAX_VERSIONS"), "{err:?}");

        // A version that does not count its own write is refused.
        let mut bogus = Vec::new();
        let v = many[0].clone();
        #[derive(Serialize)]
        struct RawVersion {
            #[serde(rename = "v")]
            vv: VersionVector,
            #[serde(rename = "t")]
            hlc: Hlc,
            #[serde(rename = "o")]
            origin: PeerKey,
            #[serde(rename = "p")]
            payload: Payload<Vec<u8>>,
        }
        ciborium::into_writer(
            &RawVersion {
                vv: v.vv().clone(),
                hlc: v.hlc(),
                origin: pk(200),
                payload: v.payload().clone(),
            },
            &mut bogus,
        )
        .unwrap();
        assert!(ciborium::from_reader::<Version<Vec<u8>>, _>(&bogus[..]).is_err());

        // Garbage never panics.
        for junk in [
            &b""[..],
            b"\xff",
            b"\xa2\x00\x00",
            &bytes[..bytes.len() / 2],
        ] {
            assert!(Reg::from_cbor(junk).is_err());
        }
    }

    #[test]
    fn unnormalised_input_is_normalised_on_decode() {
        let mut a = Reg::new();
        a.write_local(&pk(1), Hlc::new(1, 0), val(1)).unwrap();
        let mut b = a.clone();
        b.write_local(&pk(2), Hlc::new(2, 0), val(2)).unwrap();
        // Wire form holding a dominated version and the dominating one, in the wrong order.
        let raw = Reg {
            versions: vec![a.winner().unwrap().clone(), b.winner().unwrap().clone()],
            superseded: VersionVector::new(),
        };
        let back = Reg::from_cbor(&raw.to_cbor().unwrap()).unwrap();
        assert_eq!(back, b);
    }

    // ---- Property tests over simulated histories ----

    #[derive(Clone, Debug)]
    enum Op {
        /// Peer writes (a value, or a delete when `None`) after its wall clock advances by `dt`.
        Write {
            peer: usize,
            dt: u64,
            value: Option<u8>,
        },
        /// Peer `to` merges peer `from`'s state.
        Sync { from: usize, to: usize },
    }

    const PEERS: usize = 4;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0..PEERS, 0..3u64, proptest::option::weighted(0.8, any::<u8>()))
                .prop_map(|(peer, dt, value)| Op::Write { peer, dt, value }),
            2 => (0..PEERS, 0..PEERS).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    /// Runs a history; returns every peer's final register and every version ever written.
    fn run(ops: &[Op]) -> (Vec<Reg>, Vec<Version<Vec<u8>>>) {
        let mut regs = vec![Reg::new(); PEERS];
        // Small, shared wall clock so equal timestamps (and origin tie-breaks) happen.
        let mut walls = [0u64; PEERS];
        let mut clocks = vec![crate::merge::HlcClock::new(); PEERS];
        let mut written = Vec::new();
        for op in ops {
            match *op {
                Op::Write { peer, dt, value } => {
                    walls[peer] += dt;
                    let hlc = clocks[peer].now(walls[peer]);
                    let payload = value.map_or(Payload::Tombstone, |b| Payload::Value(vec![b]));
                    let v = regs[peer]
                        .write_local(&pk(peer as u8), hlc, payload)
                        .unwrap();
                    written.push(v);
                }
                Op::Sync { from, to } => {
                    let src = regs[from].clone();
                    for v in src.versions() {
                        clocks[to].observe(v.hlc(), walls[to]);
                    }
                    regs[to].merge(&src);
                }
            }
        }
        (regs, written)
    }

    fn assert_same(x: &Reg, y: &Reg) -> Result<(), TestCaseError> {
        prop_assert_eq!(x, y);
        prop_assert_eq!(x.digest().unwrap(), y.digest().unwrap());
        Ok(())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        #[test]
        fn merge_laws(ops in proptest::collection::vec(op(), 0..40)) {
            let (regs, _) = run(&ops);
            let (a, b, c) = (&regs[0], &regs[1], &regs[2]);
            // Commutative.
            assert_same(&merged(a, b), &merged(b, a))?;
            // Associative.
            assert_same(&merged(&merged(a, b), c), &merged(a, &merged(b, c)))?;
            // Idempotent.
            assert_same(&merged(a, a), a)?;
            assert_same(&merged(&merged(a, b), b), &merged(a, b))?;
            // Decoding is the identity on states we produce.
            assert_same(&Reg::from_cbor(&a.to_cbor().unwrap()).unwrap(), a)?;
        }

        #[test]
        fn winner_independent_of_merge_order(ops in proptest::collection::vec(op(), 0..40)) {
            let (regs, written) = run(&ops);
            let orders = [[0, 1, 2, 3], [3, 2, 1, 0], [1, 3, 0, 2], [2, 0, 3, 1]];
            let results: Vec<Reg> = orders
                .iter()
                .map(|o| {
                    let mut r = Reg::new();
                    for &i in o {
                        r.merge(&regs[i]);
                    }
                    r
                })
                .collect();
            for r in &results[1..] {
                assert_same(r, &results[0])?;
                prop_assert_eq!(r.winner(), results[0].winner());
            }
            // Merging every version ever written, one by one, gives the same state too.
            let mut all = Reg::new();
            for v in written.iter().rev() {
                all.merge_version(v.clone());
            }
            let mut from_regs = Reg::new();
            for r in &regs {
                from_regs.merge(r);
            }
            assert_same(&all, &from_regs)?;
            // The winner is the top-ranked version among those no other version has seen.
            if let Some(w) = all.winner() {
                for v in &written {
                    let dominated = written.iter().any(|x| x.vv().compare(v.vv()) == Causality::After);
                    if !dominated {
                        prop_assert!(w.rank_cmp(v) != Ordering::Less);
                    }
                }
            }
        }

        #[test]
        fn local_write_dominates_everything_seen(
            ops in proptest::collection::vec(op(), 0..40),
            peer in 0..PEERS,
        ) {
            let (regs, _) = run(&ops);
            let mut r = regs[peer].clone();
            for other in &regs {
                r.merge(other);
            }
            let before = r.clone();
            let v = r.write_local(&pk(peer as u8), Hlc::new(0, 0), val(42)).unwrap();
            prop_assert_eq!(r.versions().len(), 1);
            for old in before.versions() {
                prop_assert_eq!(v.vv().compare(old.vv()), Causality::After);
            }
            for other in &regs {
                assert_same(&merged(&r, other), &r)?;
            }
        }

        /// Past the bound: still commutative and idempotent, same winner, same state.
        #[test]
        fn bounded_merges_stay_commutative(
            subsets in proptest::collection::vec(proptest::collection::vec(0..24u8, 0..24), 2..4),
        ) {
            let writers = concurrent_writers(24);
            let regs: Vec<Reg> = subsets
                .iter()
                .map(|s| {
                    let mut r = Reg::new();
                    for &i in s {
                        r.merge(&writers[usize::from(i)]);
                    }
                    r
                })
                .collect();
            let (a, b) = (&regs[0], &regs[1]);
            assert_same(&merged(a, b), &merged(b, a))?;
            assert_same(&merged(a, a), a)?;
            prop_assert!(merged(a, b).versions().len() <= MAX_VERSIONS);
        }
    }
}
