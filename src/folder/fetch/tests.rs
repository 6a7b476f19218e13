//! Tests of the fetcher: chunks fetched in parts, batching, slow, stuck, lying and departing members.

use std::time::Duration;

use super::*;
use crate::net::{Command, NetError};

// Small enough for both eager requests to fit a new member's window.
const CHUNK: usize = 16 * 1024;

fn chunk(i: u8) -> (ChunkRef, Vec<u8>) {
    sized_chunk(i, CHUNK)
}

fn sized_chunk(i: u8, len: usize) -> (ChunkRef, Vec<u8>) {
    let bytes = vec![i; len];
    let chunk = ChunkRef {
        hash: *blake3::hash(&bytes).as_bytes(),
        len: len as u32,
    };
    (chunk, bytes)
}

type Asked = (
    PeerId,
    Vec<[u8; 32]>,
    oneshot::Sender<Result<Response, NetError>>,
);

async fn next_request(net: &mut mpsc::Receiver<Command>) -> Asked {
    let command = tokio::time::timeout(Duration::from_secs(10), net.recv())
        .await
        .expect("a request within 10 s")
        .expect("the fetcher is running");
    match command {
        Command::Request {
            peer,
            request: Request::GetChunks { hashes, .. },
            reply,
        } => (peer, hashes.into_iter().map(|h| *h).collect(), reply),
        other => panic!("unexpected command {other:?}"),
    }
}

/// A chunk of `CHUNK` bytes that [`FetchTask::pick`] sends to member `to` of two.
fn chunk_for(to: usize, seed: &mut u8) -> (ChunkRef, Vec<u8>) {
    loop {
        *seed += 1;
        let found = chunk(*seed);
        if found.0.hash[1] as usize % 2 == to {
            return found;
        }
    }
}

async fn nothing_asked(net: &mut mpsc::Receiver<Command>) {
    let asked = tokio::time::timeout(Duration::from_millis(30), net.recv()).await;
    assert!(asked.is_err(), "a request went out early: {asked:?}");
}

/// A chunk of the largest size, of pseudo-random bytes.
fn big_chunk(seed: u8) -> (ChunkRef, Vec<u8>) {
    let bytes: Vec<u8> = (0..super::super::model::CHUNK_MAX)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8 ^ seed)
        .collect();
    let chunk = ChunkRef {
        hash: *blake3::hash(&bytes).as_bytes(),
        len: bytes.len() as u32,
    };
    (chunk, bytes)
}

/// The next request, which must be for a part: (offset, len, reply).
async fn next_part(
    net: &mut mpsc::Receiver<Command>,
) -> (u32, u32, oneshot::Sender<Result<Response, NetError>>) {
    let command = tokio::time::timeout(Duration::from_secs(10), net.recv())
        .await
        .expect("a request within 10 s")
        .expect("the fetcher is running");
    match command {
        Command::Request {
            request: Request::GetChunkPart { offset, len, .. },
            reply,
            ..
        } => (offset, len, reply),
        other => panic!("expected a request for a part, got {other:?}"),
    }
}

fn timed_out(peer: PeerId) -> Result<Response, NetError> {
    Err(NetError::Request {
        peer,
        message: "Timeout while waiting for a response".into(),
    })
}

/// A fetcher whose one member is `peer`, able to send chunk parts if `parts`.
struct OneMember {
    /// The requests it makes.
    net: mpsc::Receiver<Command>,
    counters: Arc<Counters>,
    /// Kept so the member list stays open.
    _members: watch::Sender<Vec<PeerId>>,
    fetcher: Fetcher,
}

fn one_member(peer: PeerId, parts: bool) -> OneMember {
    let (commands, net) = mpsc::channel(64);
    let (members_tx, members) = watch::channel(vec![peer]);
    let counters = Arc::new(Counters::default());
    let client = if parts {
        NetClient::from_channel_with_parts(commands, &[peer])
    } else {
        NetClient::from_channel(commands)
    };
    let fetcher = Fetcher::spawn([7; 32], client, members, counters.clone());
    OneMember {
        net,
        counters,
        _members: members_tx,
        fetcher,
    }
}

/// One member that answers parts, and a chunk of the largest size, more than a new
/// member's window: it comes in parts. What arrived is kept across a failed part, and the
/// assembled chunk is checked against its hash.
#[tokio::test]
async fn a_chunk_larger_than_the_window_is_fetched_in_parts_and_checked() {
    let peer = PeerId::random();
    let OneMember {
        mut net,
        counters,
        _members,
        fetcher,
    } = one_member(peer, true);
    let (want, bytes) = big_chunk(1);
    let fetching = tokio::spawn(async move { fetcher.fetch(want).await });
    let mut offsets = Vec::new();
    let mut failed_once = false;
    loop {
        let (offset, len, reply) = next_part(&mut net).await;
        assert!(len < want.len && len >= PART_MIN, "{len}");
        assert!(
            !offsets.contains(&offset) || failed_once,
            "no part is asked twice"
        );
        if offset > 0 && !failed_once {
            failed_once = true;
            reply.send(timed_out(peer)).unwrap();
            let (again, _, reply) = next_part(&mut net).await;
            assert_eq!(again, offset, "what arrived before the failure is kept");
            let end = (offset + len).min(want.len) as usize;
            let part = bytes[offset as usize..end].to_vec();
            reply.send(Ok(Response::Chunk(part.into()))).unwrap();
            offsets.push(offset);
            if end == want.len as usize {
                break;
            }
            continue;
        }
        let end = (offset + len).min(want.len) as usize;
        reply
            .send(Ok(Response::Chunk(
                bytes[offset as usize..end].to_vec().into(),
            )))
            .unwrap();
        offsets.push(offset);
        if end == want.len as usize {
            break;
        }
    }
    assert!(failed_once && offsets.len() >= 2, "{offsets:?}");
    let got = fetching.await.unwrap().expect("the chunk arrives");
    assert_eq!(got.bytes(), &bytes[..]);
    assert_eq!(counters.fetched.load(Relaxed), u64::from(want.len));
}

/// Parts that assemble into something else than the chunk are discarded, counted and
/// struck against the member.
#[tokio::test]
async fn assembled_parts_that_do_not_match_are_a_strike() {
    let liar = PeerId::random();
    let OneMember {
        mut net,
        counters,
        _members,
        fetcher,
    } = one_member(liar, true);
    let (want, bytes) = big_chunk(2);
    tokio::spawn(async move { fetcher.fetch(want).await });
    loop {
        let (offset, len, reply) = next_part(&mut net).await;
        let end = (offset + len).min(want.len) as usize;
        let mut part = bytes[offset as usize..end].to_vec();
        part[0] ^= 1;
        reply.send(Ok(Response::Chunk(part.into()))).unwrap();
        if end == want.len as usize {
            break;
        }
    }
    let strike = tokio::time::timeout(Duration::from_secs(10), net.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(
        matches!(strike, Command::Strike { peer, .. } if peer == liar),
        "{strike:?}"
    );
    assert_eq!(counters.bad_chunks.load(Relaxed), 1);
    assert_eq!(counters.fetched.load(Relaxed), 0);
}

/// A member whose hello did not offer parts (an older peer, which could not decode the
/// request) is asked for whole chunks, however small its window.
#[tokio::test]
async fn a_member_without_parts_is_asked_for_whole_chunks() {
    let old = PeerId::random();
    let OneMember {
        mut net,
        _members,
        fetcher,
        ..
    } = one_member(old, false);
    let (want, bytes) = big_chunk(3);
    let fetching = tokio::spawn(async move { fetcher.fetch(want).await });
    for _ in 0..2 {
        let (to, hashes, reply) = next_request(&mut net).await;
        assert_eq!((to, hashes), (old, vec![want.hash]));
        reply.send(timed_out(old)).unwrap();
    }
    let (_, hashes, reply) = next_request(&mut net).await;
    assert_eq!(
        hashes,
        vec![want.hash],
        "whole, though the window is a quarter of it"
    );
    reply
        .send(Ok(Response::Chunks(vec![Some(bytes.clone().into())])))
        .unwrap();
    let got = fetching.await.unwrap().expect("the chunk arrives");
    assert_eq!(got.bytes(), &bytes[..]);
}

#[tokio::test]
async fn requests_beyond_the_first_wait_for_a_full_batch() {
    // Bytes make the batch here (16 KiB chunks)...
    wants_go_out_together_once_they_make_a_batch(CHUNK).await;
}

#[tokio::test]
async fn wants_for_small_chunks_make_a_batch_by_their_number() {
    // ... and the number of wants here (64 of 512 bytes fit a new member's window): small
    // files' chunks never add up to MIN_BATCH_BYTES, and each request then carried what had
    // queued since the last answer.
    assert!(MIN_BATCH_CHUNKS * 512 < super::super::pacing::INITIAL_WINDOW as usize - 512);
    wants_go_out_together_once_they_make_a_batch(512).await;
}

/// Wants of `len` bytes each: the first [`EAGER_BATCHES`] go out at once, alone; the next wait
/// until they make a batch ([`MIN_BATCH_BYTES`] or [`MIN_BATCH_CHUNKS`]) and go out together.
async fn wants_go_out_together_once_they_make_a_batch(len: usize) {
    let peer = PeerId::random();
    let OneMember {
        mut net,
        _members,
        fetcher,
        ..
    } = one_member(peer, false);
    // A full batch: MIN_BATCH_BYTES, or what is left of a new member's window, or
    // MIN_BATCH_CHUNKS wants.
    let room = super::super::pacing::INITIAL_WINDOW as usize - EAGER_BATCHES * len;
    let full = (MIN_BATCH_BYTES.min(room) / len).min(MIN_BATCH_CHUNKS);
    assert!(full >= 2, "a batch of several");
    let chunks: Vec<(ChunkRef, Vec<u8>)> = (0..(EAGER_BATCHES + full) as u8)
        .map(|i| sized_chunk(i, len))
        .collect();
    let bytes_of: HashMap<[u8; 32], Vec<u8>> =
        chunks.iter().map(|(c, b)| (c.hash, b.clone())).collect();
    let mut fetches = JoinSet::new();
    let mut asked = Vec::new();
    for (i, (want, _)) in chunks.iter().enumerate() {
        let fetcher = fetcher.clone();
        let want = *want;
        fetches.spawn(async move { (want, fetcher.fetch(want).await) });
        if i < EAGER_BATCHES {
            let (_, hashes, reply) = next_request(&mut net).await;
            assert_eq!(hashes, vec![want.hash], "a lone want goes out at once");
            asked.push((hashes, reply));
        } else if i < chunks.len() - 1 {
            nothing_asked(&mut net).await;
        }
    }
    let (_, hashes, reply) = next_request(&mut net).await;
    assert_eq!(
        hashes.len(),
        full,
        "the queued wants go out together once they make a batch"
    );
    asked.push((hashes, reply));
    for (hashes, reply) in asked {
        let answer = hashes
            .iter()
            .map(|h| Some(serde_bytes::ByteBuf::from(bytes_of[h].clone())))
            .collect();
        reply.send(Ok(Response::Chunks(answer))).unwrap();
    }
    while let Some(done) = fetches.join_next().await {
        let (want, got) = done.unwrap();
        let got = got.expect("every want is answered");
        assert_eq!(got.bytes(), &bytes_of[&want.hash][..]);
    }
}

#[test]
fn a_member_slow_to_answer_does_not_hold_back_wants_for_another() {
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let (slow, quick, _members_tx, mut net, fetcher) = two_members();
        let mut seed = 0;
        let mut unanswered = Vec::new();
        for _ in 0..EAGER_BATCHES {
            let (want, _) = chunk_for(0, &mut seed);
            let fetcher = fetcher.clone();
            tokio::spawn(async move { fetcher.fetch(want).await });
            let (to, _, reply) = next_request(&mut net).await;
            assert_eq!(to, slow);
            unanswered.push(reply);
        }
        let (more_for_slow, _) = chunk_for(0, &mut seed);
        let fetcher2 = fetcher.clone();
        tokio::spawn(async move { fetcher2.fetch(more_for_slow).await });
        nothing_asked(&mut net).await;
        let (want, bytes) = chunk_for(1, &mut seed);
        let fetching = tokio::spawn(async move { fetcher.fetch(want).await });
        let (to, hashes, reply) = next_request(&mut net).await;
        assert_eq!(
            (to, hashes),
            (quick, vec![want.hash]),
            "the quick member is asked at once"
        );
        answer_and_check(reply, fetching, &bytes).await;
        drop(unanswered);
    });
}

/// A fetcher with two members: returns them, the members' sender, the requests it makes,
/// and the fetcher.
fn two_members() -> (
    PeerId,
    PeerId,
    watch::Sender<Vec<PeerId>>,
    mpsc::Receiver<Command>,
    Fetcher,
) {
    let (commands, net) = mpsc::channel(64);
    let (first, second) = (PeerId::random(), PeerId::random());
    let (members_tx, members) = watch::channel(vec![first, second]);
    let fetcher = Fetcher::spawn(
        [7; 32],
        NetClient::from_channel(commands),
        members,
        Arc::new(Counters::default()),
    );
    (first, second, members_tx, net, fetcher)
}

/// Answers `reply` with `bytes` and checks that `fetching` gets them.
/// The next request, which must ask `to` for just `hash` (`why` it should); its reply.
async fn next_request_for(
    net: &mut mpsc::Receiver<Command>,
    to: PeerId,
    hash: [u8; 32],
    why: &str,
) -> oneshot::Sender<Result<Response, NetError>> {
    let (asked, hashes, reply) = next_request(net).await;
    assert_eq!((asked, hashes), (to, vec![hash]), "{why}");
    reply
}

async fn answer_and_check(
    reply: oneshot::Sender<Result<Response, NetError>>,
    fetching: tokio::task::JoinHandle<Result<CheckedChunk, FetchError>>,
    bytes: &[u8],
) {
    let answer = vec![Some(serde_bytes::ByteBuf::from(bytes.to_vec()))];
    reply.send(Ok(Response::Chunks(answer))).unwrap();
    let got = fetching.await.unwrap().expect("answered");
    assert_eq!(got.bytes(), bytes);
}

/// Two members, `stuck` never answering: returns them, the members' sender, the requests,
/// and a chunk for `stuck` being fetched.
#[allow(clippy::type_complexity)]
fn stuck_and_quick() -> (
    PeerId,
    PeerId,
    watch::Sender<Vec<PeerId>>,
    mpsc::Receiver<Command>,
    tokio::task::JoinHandle<Result<CheckedChunk, FetchError>>,
    (ChunkRef, Vec<u8>),
) {
    let (stuck, quick, members_tx, net, fetcher) = two_members();
    let mut seed = 0;
    let (want, bytes) = chunk_for(0, &mut seed);
    let fetching = tokio::spawn(async move { fetcher.fetch(want).await });
    (stuck, quick, members_tx, net, fetching, (want, bytes))
}

#[tokio::test]
async fn a_stuck_members_chunks_are_asked_of_another() {
    let (stuck, quick, _members, mut net, fetching, (want, bytes)) = stuck_and_quick();
    let (to, _, unanswered) = next_request(&mut net).await;
    assert_eq!(to, stuck);
    let asked_at = std::time::Instant::now();
    let reply = next_request_for(&mut net, quick, want.hash, "re-asked of the other").await;
    assert!(
        asked_at.elapsed() >= HEDGE_AFTER_MIN,
        "not before the deadline"
    );
    answer_and_check(reply, fetching, &bytes).await;
    drop(unanswered);
}

/// Found by `meshsync lab` (a partition on a namespace LAN): a member whose requests were
/// stuck during the partition stayed suspect for good, so a chunk only it held was asked
/// of the others until the download gave up, again and again, and the folder never
/// converged.
#[tokio::test]
async fn a_suspect_member_is_asked_again_when_no_other_has_the_chunk() {
    let (stuck, quick, _members, mut net, fetching, (want, bytes)) = stuck_and_quick();
    let (to, _, unanswered) = next_request(&mut net).await;
    assert_eq!(to, stuck);
    let reply = next_request_for(&mut net, quick, want.hash, "hedged to the other").await;
    reply.send(Ok(Response::Chunks(vec![None]))).unwrap();
    let why = "the suspect is the only member left that may have it";
    let reply = next_request_for(&mut net, stuck, want.hash, why).await;
    answer_and_check(reply, fetching, &bytes).await;
    drop(unanswered);
}

#[tokio::test]
async fn a_member_that_leaves_has_its_requests_asked_of_another_at_once() {
    let (stuck, quick, members, mut net, fetching, (want, bytes)) = stuck_and_quick();
    let (to, _, unanswered) = next_request(&mut net).await;
    assert_eq!(to, stuck);
    members.send(vec![quick]).unwrap();
    let left_at = std::time::Instant::now();
    let reply = next_request_for(&mut net, quick, want.hash, "asked of the one left").await;
    assert!(
        left_at.elapsed() < HEDGE_AFTER_MIN,
        "not waiting for the deadline"
    );
    answer_and_check(reply, fetching, &bytes).await;
    drop(unanswered);
}
