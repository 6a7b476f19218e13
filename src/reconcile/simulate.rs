//! Runs a whole session in-process, encoding every message as on the wire, to measure exactly
//! what a session costs (tests and benchmarks) without any networking.

use super::{
    Id, Initiator, MAX_MESSAGE_BYTES, ReconcileError, Response, Salt, Step, Summary, respond_bytes,
};

/// What one simulated session did and found.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SessionStats {
    /// Round trips, the Hello included (not counting the pull of `need` afterwards).
    pub rounds: u32,
    /// Encoded bytes the initiator sent.
    pub bytes_sent: u64,
    /// Encoded bytes the initiator received.
    pub bytes_received: u64,
    /// Largest single message in either direction.
    pub largest_message: usize,
    /// See [`super::Outcome::need`].
    pub need: Vec<Id>,
    /// See [`super::Outcome::offer`].
    pub offer: Vec<Id>,
    /// See [`super::Outcome::complete`].
    pub complete: bool,
}

/// Reconciles `local` (initiator) against `remote` (responder) with a salt derived from both
/// roots, so runs are reproducible.
pub fn run_session(local: &Summary, remote: &Summary) -> Result<SessionStats, ReconcileError> {
    let mut h = blake3::Hasher::new();
    h.update(&local.root());
    h.update(&remote.root());
    let mut salt: Salt = [0; 16];
    salt.copy_from_slice(&h.finalize().as_bytes()[..16]);
    run_session_with_salt(local, remote, salt)
}

/// [`run_session`] with a chosen salt.
pub fn run_session_with_salt(
    local: &Summary,
    remote: &Summary,
    salt: Salt,
) -> Result<SessionStats, ReconcileError> {
    let mut stats = SessionStats::default();
    let (mut initiator, mut request) = Initiator::start(local, salt);
    loop {
        let sent = request.encode()?;
        let received = respond_bytes(remote, &sent)?;
        debug_assert!(sent.len() <= MAX_MESSAGE_BYTES && received.len() <= MAX_MESSAGE_BYTES);
        stats.bytes_sent += sent.len() as u64;
        stats.bytes_received += received.len() as u64;
        stats.largest_message = stats.largest_message.max(sent.len()).max(received.len());
        match initiator.on_response(local, Response::decode(&received)?)? {
            Step::Send(next) => request = next,
            Step::Done(outcome) => {
                stats.rounds = outcome.rounds;
                stats.need = outcome.need;
                stats.offer = outcome.offer;
                stats.complete = outcome.complete;
                return Ok(stats);
            }
        }
    }
}

/// Deterministic synthetic workloads, so the tests and the cost table measure the same sets.
pub mod workload {
    use super::super::{Digest, Id, Item, Summary};

    /// The id of synthetic item `i`.
    pub fn id(i: u64) -> Id {
        *blake3::hash(&i.to_le_bytes()).as_bytes()
    }

    /// The digest of version `version` of synthetic item `i`.
    pub fn digest(i: u64, version: u64) -> Digest {
        let mut h = blake3::Hasher::new();
        h.update(&i.to_le_bytes());
        h.update(&version.to_le_bytes());
        *h.finalize().as_bytes()
    }

    /// Items `0..n`, all at version 0.
    pub fn base(n: u64) -> Summary {
        Summary::from_items((0..n).map(|i| Item {
            id: id(i),
            digest: digest(i, 0),
        }))
    }

    /// Copies of `base` (which holds items `0..n`) with differences numbered `kinds`, returned as
    /// (initiator, responder). Difference `k` is, by `k % 3`: an item only the responder has, an
    /// item only the initiator has, or an item both have with different digests; they are
    /// spread over the id space deterministically.
    pub fn with_differences(
        base: &Summary,
        n: u64,
        kinds: std::ops::Range<u64>,
    ) -> (Summary, Summary) {
        let mut local = base.clone();
        let mut remote = base.clone();
        for k in kinds {
            let i = (k * 7919) % n.max(1);
            match k % 3 {
                0 => {
                    remote.insert(id(n + k), digest(n + k, 0));
                }
                1 => {
                    local.insert(id(n + k), digest(n + k, 0));
                }
                _ => {
                    remote.insert(id(i), digest(i, 1));
                }
            }
        }
        (local, remote)
    }
}
