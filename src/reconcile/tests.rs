//! Protocol tests with both ends in one process: exactness, cost targets, hostile input.

use std::collections::BTreeMap;

use proptest::prelude::*;

use super::simulate::{SessionStats, run_session, run_session_with_salt};
use super::*;

use super::simulate::workload::{digest as digest_of, id as id_of};

/// The exact expected outcome: ids where the remote differs or has extra (need) and ids where
/// the local side differs or has extra (offer).
fn expected(local: &BTreeMap<Id, Digest>, remote: &BTreeMap<Id, Digest>) -> (Vec<Id>, Vec<Id>) {
    let need = remote
        .iter()
        .filter(|(id, d)| local.get(*id) != Some(*d))
        .map(|(id, _)| *id)
        .collect();
    let offer = local
        .iter()
        .filter(|(id, d)| remote.get(*id) != Some(*d))
        .map(|(id, _)| *id)
        .collect();
    (need, offer)
}

fn summary_of(m: &BTreeMap<Id, Digest>) -> Summary {
    Summary::from_items(m.iter().map(|(&id, &digest)| Item { id, digest }))
}

/// A pair of summaries over `n` shared items with `d` differences, a third each of: an item
/// only the remote has, an item only the local side has, and an item with differing digests.
fn pair(n: u64, d: u64) -> (Summary, Summary) {
    pair_with(n, 0..d)
}

/// Like [`pair`], with differences numbered `kinds` (kind = number % 3).
fn pair_with(n: u64, kinds: std::ops::Range<u64>) -> (Summary, Summary) {
    super::simulate::workload::with_differences(&super::simulate::workload::base(n), n, kinds)
}

fn check_exact(local: &Summary, remote: &Summary, stats: &SessionStats) {
    let (need, offer) = expected(local.item_map(), remote.item_map());
    assert!(stats.complete);
    assert_eq!(stats.need, need);
    assert_eq!(stats.offer, offer);
}

/// Round trips including the pull of the needed entries (one more if anything is needed).
fn total_rounds(s: &SessionStats) -> u32 {
    s.rounds + u32::from(!s.need.is_empty())
}

#[test]
fn cost_targets_at_100k() {
    let n = 100_000;
    let (local, remote) = pair(n, 0);
    let s = run_session(&local, &remote).unwrap();
    check_exact(&local, &remote, &s);
    assert!(
        s.rounds == 1 && s.bytes_sent + s.bytes_received < 200,
        "d=0: {s:?}"
    );
    // Each kind of single difference (extra on the remote, extra locally, changed digest), at
    // two spots in the id space, in both roles.
    for kinds in [0..1, 1..2, 2..3, 3..4, 4..5, 5..6] {
        let (local, remote) = pair_with(n, kinds);
        for (l, r) in [(&local, &remote), (&remote, &local)] {
            let s = run_session(l, r).unwrap();
            check_exact(l, r, &s);
            assert!(total_rounds(&s) <= 5, "d=1 rounds {}", total_rounds(&s));
            assert!(s.bytes_sent + s.bytes_received <= 4096, "d=1 bytes {s:?}");
        }
    }
    let (local, remote) = pair(n, 100);
    let s = run_session(&local, &remote).unwrap();
    check_exact(&local, &remote, &s);
    let bytes = s.bytes_sent + s.bytes_received;
    assert!(bytes <= 64 * 1024, "d=100: {bytes} bytes");
    assert!(total_rounds(&s) <= 6, "d=100: {} rounds", total_rounds(&s));
}

#[test]
fn one_side_empty() {
    let (big, _) = pair(20_000, 0);
    let empty = Summary::new();
    let s = run_session(&empty, &big).unwrap();
    check_exact(&empty, &big, &s);
    assert_eq!(s.need.len(), 20_000);
    // Ids dominate: at most 10% framing and summaries on top of 32 bytes per id.
    assert!(s.bytes_received < 20_000 * 32 * 11 / 10, "{s:?}");
    let s = run_session(&big, &empty).unwrap();
    check_exact(&big, &empty, &s);
    assert_eq!((s.offer.len(), s.rounds), (20_000, 1));
    let s = run_session(&empty, &empty).unwrap();
    assert_eq!((s.rounds, s.need.len(), s.offer.len()), (1, 0, 0));
}

/// Needed ids taken after every round (as a session pulls them between rounds) add up, with
/// the outcome's rest, to exactly the need; each batch names which of its ids are offered too;
/// and no more than a round's answers are ever held, however many are needed in all.
#[test]
fn need_taken_between_rounds_adds_up_to_the_exact_need() {
    let empty = Summary::new();
    let (big, _) = pair(60_000, 0);
    let (local, remote) = pair(30_000, 6_000);
    for (l, r) in [(&empty, &big), (&local, &remote), (&remote, &local)] {
        let (need, offer) = expected(l.item_map(), r.item_map());
        let (mut initiator, mut request) = Initiator::start(l, [7; 16]);
        let (mut taken, mut offered, mut most_held) = (Vec::new(), Vec::new(), 0);
        let outcome = loop {
            let answer = respond_bytes(r, &request.encode().unwrap()).unwrap();
            let step = initiator
                .on_response(l, Response::decode(&answer).unwrap())
                .unwrap();
            most_held = most_held.max(initiator.needed_so_far());
            match step {
                Step::Send(next) => request = next,
                Step::Done(outcome) => break outcome,
            }
            let batch = initiator.take_need();
            assert!(batch.ids.windows(2).all(|w| w[0] < w[1]));
            assert!(
                batch
                    .offered
                    .iter()
                    .all(|id| batch.ids.binary_search(id).is_ok())
            );
            taken.extend(batch.ids);
            offered.extend(batch.offered);
        };
        assert!(outcome.complete);
        // The ids taken early that are offered too are named with them (the rest of the need
        // is pulled with the whole offer at hand).
        let mut needed_and_offered: Vec<Id> = taken
            .iter()
            .filter(|id| offer.binary_search(id).is_ok())
            .copied()
            .collect();
        needed_and_offered.sort_unstable();
        offered.sort_unstable();
        assert_eq!(offered, needed_and_offered);
        assert!(l.is_empty() || !offered.is_empty(), "the case is exercised");
        taken.extend(outcome.need);
        taken.sort_unstable();
        assert_eq!(taken, need, "every needed id, once");
        assert_eq!(outcome.offer, offer);
        if need.len() > 40_000 {
            // Ids arrive at most a message (1 MiB) per round.
            assert!(most_held <= MAX_MESSAGE_BYTES / 32, "{most_held} held");
        }
    }
}

/// An initiator told to keep at most `limit` offered ids keeps the exact offer when it is that
/// small, and otherwise keeps none but counts them; the need is exact either way.
#[test]
fn an_offer_past_its_limit_is_counted_not_kept() {
    let empty = Summary::new();
    let (big, _) = pair(60_000, 0);
    let (local, remote) = pair(30_000, 6_000);
    for (l, r) in [(&big, &empty), (&local, &remote), (&remote, &local)] {
        let (need, offer) = expected(l.item_map(), r.item_map());
        for limit in [0, 100, offer.len(), offer.len() + 1, usize::MAX] {
            let (mut initiator, mut request) = Initiator::start(l, [9; 16]);
            initiator.limit_offer(limit);
            let outcome = loop {
                let answer = respond_bytes(r, &request.encode().unwrap()).unwrap();
                let step = initiator
                    .on_response(l, Response::decode(&answer).unwrap())
                    .unwrap();
                match step {
                    Step::Send(next) => request = next,
                    Step::Done(outcome) => break outcome,
                }
            };
            assert!(outcome.complete);
            assert_eq!(outcome.need, need, "limit {limit}");
            assert_eq!(outcome.offered, offer.len(), "limit {limit}");
            if offer.len() > limit {
                assert!(initiator.offer_over_limit());
                assert!(outcome.offer.is_empty(), "limit {limit}");
            } else {
                assert!(!initiator.offer_over_limit());
                assert_eq!(outcome.offer, offer, "limit {limit}");
            }
        }
    }
}

#[test]
fn huge_versus_tiny() {
    let (big, _) = pair(50_000, 0);
    // The tiny side shares 5 items with the big one and has 5 of its own.
    let mut tiny = Summary::new();
    for i in 0..5 {
        tiny.insert(id_of(i), digest_of(i, 0));
        tiny.insert(id_of(1_000_000 + i), digest_of(i, 0));
    }
    for (l, r) in [(&tiny, &big), (&big, &tiny)] {
        let s = run_session(l, r).unwrap();
        check_exact(l, r, &s);
    }
}

#[test]
fn large_difference_lists_beyond_one_message() {
    // 40 000 ids to pull need more than one 1 MiB reply: exercises Deferred answers.
    let (big, _) = pair(40_000, 0);
    let empty = Summary::new();
    let s = run_session(&empty, &big).unwrap();
    check_exact(&empty, &big, &s);
    // Hello, one round that fills a reply and defers the rest, one more round.
    assert!(
        s.rounds >= 3 && s.largest_message <= MAX_MESSAGE_BYTES,
        "{s:?}"
    );
}

#[test]
fn rejects_hostile_requests() {
    let (summary, _) = pair(1_000, 0);
    let salt = [0; 16];
    let deep = Prefix::of(&[0xaa; 32], MAX_COMPARE_NIBBLES + 1);
    let empty_children = ChildSummaries(Box::new(
        [RangeFp {
            count: 0,
            fp: [0; FP_LEN],
        }; 16],
    ));
    let too_many = Request::Round(Round {
        salt,
        queries: vec![Query::Items(Prefix::ROOT, ItemFps::default()); MAX_QUERIES_PER_REQUEST + 1],
    });
    assert!(matches!(
        respond(&summary, &too_many),
        Err(ReconcileError::TooManyQueries { .. })
    ));
    // Encoded, it fails while decoding, before anything is answered.
    let bytes = too_many.encode().unwrap();
    assert!(matches!(
        respond_bytes(&summary, &bytes),
        Err(ReconcileError::Decode(_))
    ));
    let too_deep = Request::Round(Round {
        salt,
        queries: vec![Query::Compare(deep, empty_children)],
    });
    assert!(matches!(
        respond_bytes(&summary, &too_deep.encode().unwrap()),
        Err(ReconcileError::BadQuery { index: 0, .. })
    ));
    let many_fps = Request::Round(Round {
        salt,
        queries: vec![Query::Items(
            Prefix::ROOT,
            ItemFps(vec![[0; ITEM_FP_LEN]; LEAF_MAX + 1]),
        )],
    });
    assert!(respond(&summary, &many_fps).is_err());
    assert!(respond_bytes(&summary, &many_fps.encode().unwrap()).is_err());
    assert!(matches!(
        respond_bytes(&summary, &vec![0; MAX_MESSAGE_BYTES + 1]),
        Err(ReconcileError::MessageTooLarge { .. })
    ));
    // A bad prefix encoding (65 nibbles) inside an otherwise valid message.
    let good = Request::Round(Round {
        salt,
        queries: vec![Query::Items(
            Prefix::of(&[0x12; 32], 64),
            ItemFps::default(),
        )],
    })
    .encode()
    .unwrap();
    let mut bad = good.clone();
    let at = bad.windows(2).position(|w| w == [0x58, 33]).unwrap() + 2;
    bad[at] = 65;
    assert!(respond_bytes(&summary, &good).is_ok());
    assert!(matches!(
        respond_bytes(&summary, &bad),
        Err(ReconcileError::Decode(_))
    ));
    // Items on the root of a big set is answered with a split, not a 5000-id list.
    let (big, _) = pair(5_000, 0);
    let r = respond(
        &big,
        &Request::Round(Round {
            salt,
            queries: vec![Query::Items(Prefix::ROOT, ItemFps::default())],
        }),
    )
    .unwrap();
    assert!(
        matches!(r, Response::Round(RoundReply { ref answers }) if matches!(answers[0], Answer::Split(_)))
    );
}

#[test]
fn rejects_hostile_responses() {
    let (local, remote) = pair(2_000, 10);
    let (mut init, _hello) = Initiator::start(&local, [1; 16]);
    // Wrong response kind.
    assert!(
        init.on_response(&local, Response::Round(RoundReply { answers: vec![] }))
            .is_err()
    );
    // Once failed, the session stays finished.
    assert!(matches!(
        init.on_response(&local, Response::Round(RoundReply { answers: vec![] })),
        Err(ReconcileError::SessionFinished)
    ));
    // Roots differ but no children.
    let (mut init, _) = Initiator::start(&local, [1; 16]);
    let reply = Response::Hello(HelloReply {
        root: remote.root(),
        count: remote.len(),
        children: None,
    });
    assert!(init.on_response(&local, reply).is_err());
    // A real first round, then answers that do not fit the queries.
    let (mut init, hello) = Initiator::start(&local, [1; 16]);
    let reply = respond(&remote, &hello).unwrap();
    let Step::Send(Request::Round(round)) = init.on_response(&local, reply).unwrap() else {
        panic!("expected a round");
    };
    assert!(!round.queries.is_empty());
    let wrong_count = Response::Round(RoundReply { answers: vec![] });
    assert!(matches!(
        init.on_response(&local, wrong_count),
        Err(ReconcileError::AnswerCountMismatch { .. })
    ));
    let (mut init, hello) = Initiator::start(&local, [1; 16]);
    let reply = respond(&remote, &hello).unwrap();
    let Step::Send(Request::Round(round)) = init.on_response(&local, reply).unwrap() else {
        panic!("expected a round");
    };
    let outside = Response::Round(RoundReply {
        answers: round
            .queries
            .iter()
            .map(|_| Answer::Diff(IdList(vec![[0xff; 32]]), Mask::zeros(0)))
            .collect(),
    });
    assert!(init.on_response(&local, outside).is_err());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Random bytes never make the responder panic, and whatever it returns fits the limit.
    #[test]
    fn responder_survives_garbage(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        let (summary, _) = pair(300, 0);
        if let Ok(out) = respond_bytes(&summary, &bytes) {
            prop_assert!(out.len() <= MAX_MESSAGE_BYTES);
        }
        let _ = Response::decode(&bytes);
    }

    /// Mutated real responses never make the initiator panic.
    #[test]
    fn initiator_survives_mutated_responses(flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..4)) {
        let (local, remote) = pair(3_000, 30);
        let (mut init, hello) = Initiator::start(&local, [9; 16]);
        let reply = respond(&remote, &hello).unwrap();
        let Ok(Step::Send(request)) = init.on_response(&local, reply) else { return Ok(()) };
        let mut bytes = respond(&remote, &request).unwrap().encode().unwrap();
        for (at, x) in flips {
            let len = bytes.len();
            bytes[at % len] ^= x;
        }
        if let Ok(resp) = Response::decode(&bytes) {
            let _ = init.on_response(&local, resp);
        }
    }
}

/// Ids whose leading bytes come from a small alphabet, so deep, lopsided ranges occur.
fn skewed_id() -> impl Strategy<Value = Id> {
    (0..4usize, any::<[u8; 32]>()).prop_map(|(shape, mut id)| {
        match shape {
            0 => {}
            1 => id[..3].copy_from_slice(&[0xab, 0xcd, 0xef]),
            2 => {
                id[..31].fill(0x11);
                id[31] &= 0x0f;
            }
            _ => id[0] = 0x7f,
        }
        id
    })
}

#[derive(Clone, Debug)]
enum Edit {
    /// Item only the remote has.
    RemoteOnly(Id, u8),
    /// Item only the local side has.
    LocalOnly(Id, u8),
    /// Change the digest of the i-th shared item on the remote side.
    Change(usize, u8),
    /// Remove the i-th shared item from the remote side.
    RemoteRemove(usize),
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (skewed_id(), any::<u8>()).prop_map(|(id, d)| Edit::RemoteOnly(id, d)),
        (skewed_id(), any::<u8>()).prop_map(|(id, d)| Edit::LocalOnly(id, d)),
        (any::<usize>(), any::<u8>()).prop_map(|(i, d)| Edit::Change(i, d)),
        any::<usize>().prop_map(Edit::RemoteRemove),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    /// For random sets and random differences, the session finds exactly the symmetric
    /// difference, in both roles.
    #[test]
    fn session_finds_exact_difference(
        base in proptest::collection::btree_map(skewed_id(), any::<u8>(), 0..1500),
        edits in proptest::collection::vec(edit(), 0..120),
        salt in any::<[u8; 16]>(),
    ) {
        let mut local: BTreeMap<Id, Digest> = base.iter().map(|(&id, &d)| (id, [d; 32])).collect();
        let mut remote = local.clone();
        let shared: Vec<Id> = local.keys().copied().collect();
        for e in edits {
            match e {
                Edit::RemoteOnly(id, d) => { remote.insert(id, [d; 32]); }
                Edit::LocalOnly(id, d) => { local.insert(id, [d; 32]); }
                Edit::Change(i, d) if !shared.is_empty() => {
                    remote.insert(shared[i % shared.len()], [d.wrapping_add(1); 32]);
                }
                Edit::RemoteRemove(i) if !shared.is_empty() => {
                    remote.remove(&shared[i % shared.len()]);
                }
                _ => {}
            }
        }
        let (ls, rs) = (summary_of(&local), summary_of(&remote));
        let (need, offer) = expected(&local, &remote);
        let s = run_session_with_salt(&ls, &rs, salt).unwrap();
        prop_assert!(s.complete);
        prop_assert_eq!(&s.need, &need);
        prop_assert_eq!(&s.offer, &offer);
        let back = run_session_with_salt(&rs, &ls, salt).unwrap();
        prop_assert_eq!(back.need, offer);
        prop_assert_eq!(back.offer, need);
    }
}

/// Prints the cost table for a million items. Run with
/// `cargo test --release -- --ignored --nocapture million`.
#[test]
#[ignore = "builds two million-item summaries; run manually for the cost table"]
fn million_item_cost_table() {
    // Resident set size in bytes, from /proc (Linux only; 0 elsewhere).
    fn rss() -> u64 {
        std::fs::read_to_string("/proc/self/statm")
            .ok()
            .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
            .map_or(0, |pages| pages * 4096)
    }
    let n: u64 = 1_000_000;
    let items: Vec<Item> = (0..n)
        .map(|i| Item {
            id: id_of(i),
            digest: digest_of(i, 0),
        })
        .collect();
    let before = rss();
    let t = std::time::Instant::now();
    let base = Summary::from_items(items.iter().copied());
    let build = t.elapsed();
    let after = rss();
    drop(items);
    eprintln!(
        "from_items n={n}: {build:?}; heap_bytes {:.1} B/item; RSS growth {:.1} B/item",
        base.heap_bytes() as f64 / n as f64,
        after.saturating_sub(before) as f64 / n as f64,
    );
    let mut incremental = Summary::new();
    let t = std::time::Instant::now();
    for (id, digest) in base.item_map() {
        incremental.insert(*id, *digest);
    }
    eprintln!(
        "incremental inserts n={n}: {:?} ({:.2} us/insert), same root: {}",
        t.elapsed(),
        t.elapsed().as_secs_f64() * 1e6 / n as f64,
        incremental.root() == base.root()
    );
    drop(incremental);
    eprintln!("naive full listing: n * 64 = {} bytes", n * 64);
    eprintln!(
        "{:>10} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10}",
        "d", "rounds", "+pull", "sent", "received", "total", "time"
    );
    let cases: [(&str, std::ops::Range<u64>); 6] = [
        ("0", 0..0),
        ("1 remote+", 0..1),
        ("1 local+", 1..2),
        ("1 changed", 2..3),
        ("100", 0..100),
        ("10000", 0..10_000),
    ];
    for (d, kinds) in cases {
        let (local, remote) = pair_with(n, kinds);
        let t = std::time::Instant::now();
        let s = run_session(&local, &remote).unwrap();
        let elapsed = t.elapsed();
        check_exact(&local, &remote, &s);
        eprintln!(
            "{:>10} {:>7} {:>6} {:>10} {:>10} {:>10} {:>10.1?}",
            d,
            s.rounds,
            total_rounds(&s),
            s.bytes_sent,
            s.bytes_received,
            s.bytes_sent + s.bytes_received,
            elapsed
        );
    }
    let empty = Summary::new();
    let t = std::time::Instant::now();
    let s = run_session(&empty, &base).unwrap();
    eprintln!(
        "empty initiator vs n: rounds {} sent {} received {} ({:?}), complete {}",
        s.rounds,
        s.bytes_sent,
        s.bytes_received,
        t.elapsed(),
        s.complete
    );
}
