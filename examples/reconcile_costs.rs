//! Reconciliation cost table: round trips and bytes of one session, pure and in-process, with
//! every message encoded as on the wire (CBOR), for `n` items and `d` differences.
//!
//! ```sh
//! cargo run --release --example reconcile_costs            # n = 10^3, 10^5, 10^6
//! cargo run --release --example reconcile_costs -- --quick # n = 10^3, 10^5
//! cargo run --release --example reconcile_costs -- --json FILE # also write the rows as JSON
//! ```
//!
//! Prints a markdown table and exits non-zero if any session is inexact (its `need`/`offer`
//! differ from the true set difference). Targets (issue 3) are checked at the largest `n`:
//! `d = 0` one round trip under 200 bytes; `d = 1` at most 5 round trips (the pull of the needed
//! entry included) and 4 KiB; `d = 100` at most 64 KiB.
//!
//! Differences are of three kinds, in turn: an item only the responder has, an item only the
//! initiator has, and an item both have with different digests. `d = 1` is measured for each kind
//! and each role, and the worst case is shown; the others mix the kinds equally.

use std::time::Instant;

use meshsync::reconcile::Summary;
use meshsync::reconcile::simulate::workload::{self, with_differences};
use meshsync::reconcile::simulate::{SessionStats, run_session};

/// Bytes per entry of a naive full listing: a 32-byte id and a 32-byte digest.
const NAIVE_BYTES_PER_ENTRY: u64 = 64;

/// Checks the outcome against the true difference, computed only over the differing ids.
fn is_exact(local: &Summary, remote: &Summary, s: &SessionStats) -> bool {
    // Ids that differ: those in either side whose digests are not equal. Cheap to compute by a
    // merge of the two sorted iterators.
    let mut need = Vec::new();
    let mut offer = Vec::new();
    let (l, r) = (local.item_map(), remote.item_map());
    for (id, digest) in r {
        if l.get(id) != Some(digest) {
            need.push(*id);
        }
    }
    for (id, digest) in l {
        if r.get(id) != Some(digest) {
            offer.push(*id);
        }
    }
    s.complete && s.need == need && s.offer == offer
}

struct Row {
    n: u64,
    d: u64,
    note: String,
    rounds: u32,
    total_rounds: u32,
    sent: u64,
    received: u64,
    largest: usize,
    millis: f64,
    exact: bool,
}

fn measure(n: u64, d: u64, local: &Summary, remote: &Summary, note: String) -> Row {
    let started = Instant::now();
    let s = run_session(local, remote).expect("session runs");
    let millis = started.elapsed().as_secs_f64() * 1000.0;
    let exact = is_exact(local, remote, &s);
    Row {
        n,
        d,
        note,
        rounds: s.rounds,
        total_rounds: s.rounds + u32::from(!s.need.is_empty()),
        sent: s.bytes_sent,
        received: s.bytes_received,
        largest: s.largest_message,
        millis,
        exact,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let quick = args.iter().any(|a| a == "--quick");
    let json_path = args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1).cloned());
    let sizes: &[u64] = if quick {
        &[1_000, 100_000]
    } else {
        &[1_000, 100_000, 1_000_000]
    };
    let diffs: &[u64] = &[0, 1, 100, 10_000];
    let mut rows = Vec::new();
    for &n in sizes {
        let started = Instant::now();
        let base = workload::base(n);
        eprintln!(
            "n = {n}: summary built in {:.0} ms, tree {} heap bytes (items apart)",
            started.elapsed().as_secs_f64() * 1000.0,
            base.heap_bytes()
        );
        for &d in diffs {
            if d > n {
                continue;
            }
            if d == 1 {
                // Worst case over the three kinds of difference, at two spots, in both roles.
                let mut worst: Option<Row> = None;
                for k in 0..6 {
                    let (local, remote) = with_differences(&base, n, k..k + 1);
                    for (l, r, role) in [(&local, &remote, "A"), (&remote, &local, "B")] {
                        let kind =
                            ["responder-only", "initiator-only", "changed"][(k as usize) % 3];
                        let kind = if role == "A" {
                            kind
                        } else {
                            // Swapping roles swaps the first two kinds.
                            ["initiator-only", "responder-only", "changed"][(k as usize) % 3]
                        };
                        let row = measure(n, d, l, r, format!("worst of 12; here: {kind}"));
                        let worse = worst.as_ref().is_none_or(|w| {
                            (row.total_rounds, row.sent + row.received, !row.exact)
                                > (w.total_rounds, w.sent + w.received, !w.exact)
                        });
                        let all_exact = worst.as_ref().is_none_or(|w| w.exact) && row.exact;
                        if worse {
                            worst = Some(row);
                        }
                        if let Some(w) = worst.as_mut() {
                            w.exact = all_exact;
                        }
                    }
                }
                rows.push(worst.expect("measured"));
            } else {
                let (local, remote) = with_differences(&base, n, 0..d);
                let note = if d == 0 {
                    String::new()
                } else {
                    "⅓ each: responder-only, initiator-only, changed".into()
                };
                rows.push(measure(n, d, &local, &remote, note));
            }
        }
    }

    println!(
        "| n | d | round trips (reconcile) | round trips (+ pull) | bytes sent | bytes received | total | largest msg | naive listing (n×64) | total / naive | time | exact | note |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|:---:|---|");
    for r in &rows {
        let total = r.sent + r.received;
        let naive = r.n * NAIVE_BYTES_PER_ENTRY;
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.4}% | {:.1} ms | {} | {} |",
            r.n,
            r.d,
            r.rounds,
            r.total_rounds,
            r.sent,
            r.received,
            total,
            r.largest,
            naive,
            100.0 * total as f64 / naive as f64,
            r.millis,
            if r.exact { "yes" } else { "NO" },
            r.note
        );
    }

    // Targets at the largest n.
    let n = *sizes.last().expect("a size");
    let row = |d: u64| rows.iter().find(|r| r.n == n && r.d == d).expect("row");
    let (r0, r1, r100) = (row(0), row(1), row(100));
    let t0 = r0.total_rounds == 1 && r0.sent + r0.received < 200;
    let t1 = r1.total_rounds <= 5 && r1.sent + r1.received <= 4096;
    let t100 = r100.sent + r100.received <= 64 * 1024;
    println!();
    println!("Targets at n = {n}:");
    println!(
        "- d = 0: 1 round trip, < 200 B: {} round trip(s), {} B — {}",
        r0.total_rounds,
        r0.sent + r0.received,
        if t0 { "met" } else { "NOT MET" }
    );
    println!(
        "- d = 1: ≤ 5 round trips, ≤ 4096 B: {} round trips (incl. pull), {} B — {}",
        r1.total_rounds,
        r1.sent + r1.received,
        if t1 { "met" } else { "NOT MET" }
    );
    println!(
        "- d = 100: ≤ 65536 B: {} B in {} round trips — {}",
        r100.sent + r100.received,
        r100.total_rounds,
        if t100 { "met" } else { "NOT MET" }
    );
    if let Some(path) = json_path {
        let list: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "n": r.n, "d": r.d, "rounds": r.rounds, "total_rounds": r.total_rounds,
                    "bytes_sent": r.sent, "bytes_received": r.received,
                    "largest_message": r.largest, "millis": r.millis, "exact": r.exact,
                    "naive_bytes": r.n * NAIVE_BYTES_PER_ENTRY,
                })
            })
            .collect();
        std::fs::write(&path, serde_json::to_string_pretty(&list).expect("JSON"))
            .unwrap_or_else(|e| panic!("cannot write {path}: {e}"));
    }
    if rows.iter().any(|r| !r.exact) {
        eprintln!("error: a session's outcome differs from the true difference");
        std::process::exit(1);
    }
}
