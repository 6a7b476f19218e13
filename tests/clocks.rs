//! Peers with wrong clocks, black box: daemons under libfaketime at +0, +200 and +400 s. The
//! mesh must not split over the skew: every peer ends with the same winner for a key written
//! concurrently everywhere and with every peer's keys; each shows the others' clock offsets;
//! and the skew costs neither a log flood nor CPU.

mod support;

use std::process::Command;
use std::time::{Duration, Instant};

use support::{Api, Node, WAIT, wait_until};

/// Whether libfaketime (Debian's `faketime`) works here. CI installs it; elsewhere the test says
/// SKIPPED instead of failing.
fn faketime_runs() -> bool {
    meshsync::lab::peers::clock_wrapper(0).is_ok_and(|wrapper| {
        Command::new(&wrapper[0])
            .args(&wrapper[1..])
            .arg("true")
            .status()
            .is_ok_and(|s| s.success())
    })
}

/// CPU seconds the process has used (user + system), from `/proc`.
fn cpu_seconds(node: &Node) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", node.pid().unwrap())).unwrap();
    let after_name = &stat[stat.rfind(')').unwrap() + 2..];
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks: u64 = fields[11].parse::<u64>().unwrap() + fields[12].parse::<u64>().unwrap();
    ticks as f64 / 100.0
}

/// Whether the test can run: `faketime` runs here (CI must have it; elsewhere the test says
/// SKIPPED).
fn faketime_or_skip() -> bool {
    if faketime_runs() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "CI must install faketime (.ci/run)"
    );
    eprintln!("SKIPPED: faketime is not installed");
    false
}

#[test]
fn skewed_clocks_agree_on_every_winner_without_flooding_the_log() {
    const OFFSETS: [u64; 3] = [0, 200, 400];
    if !faketime_or_skip() {
        return;
    }
    let mut nodes: Vec<Node> = Vec::new();
    for offset in OFFSETS {
        let mut extra = Vec::new();
        let first = nodes.first().map(|n| n.listen_addr());
        if let Some(addr) = &first {
            extra = vec!["--peer", addr.as_str()];
        }
        let mut node = Node::init(&extra);
        // libfaketime preloaded through `env`, which execs: the pid is the daemon's (the
        // `faketime` program forks, so stopping it left the daemon running, and the CPU
        // measured below was the wrapper's).
        node.wrapper = meshsync::lab::peers::clock_wrapper(offset as i64).unwrap();
        node.start_with_default_log();
        nodes.push(node);
    }
    let token = nodes[0].create_records_share("data");
    for node in &nodes[1..] {
        node.join_records_share(&token, "data");
    }
    let ids: Vec<String> = nodes.iter().map(|n| n.peer_id.clone()).collect();
    wait_until("every node to see the others as members", WAIT, || {
        nodes.iter().all(|n| {
            let members = n.share_members("data");
            ids.iter()
                .filter(|id| **id != n.peer_id)
                .all(|id| members.contains(id))
        })
    });
    let lines_before: Vec<usize> = nodes.iter().map(|n| n.log().lines().count()).collect();

    // The same key written on every peer at once, and a key of each peer's own.
    std::thread::scope(|scope| {
        for (i, node) in nodes.iter().enumerate() {
            scope.spawn(move || {
                let api = Api::of(node);
                api.put("data", "shared", &format!("from {i}"));
                api.put("data", &format!("own{i}"), "v");
            });
        }
    });
    let started = Instant::now();
    let listing = |node: &Node| node.kv_list_json("data");
    wait_until("every peer to show the same keys and winners", WAIT, || {
        let first = listing(&nodes[0]);
        first
            .as_array()
            .is_some_and(|l| l.len() == 1 + OFFSETS.len())
            && nodes[1..].iter().all(|n| listing(n) == first)
    });
    let converged = started.elapsed();
    let winner = listing(&nodes[0]);
    eprintln!("converged in {converged:?}: {winner}");

    // Each peer measures the others' clocks.
    for (i, node) in nodes.iter().enumerate() {
        let status = node.status();
        for (j, other) in nodes.iter().enumerate().filter(|(j, _)| *j != i) {
            let Some(peer) = status["peers"]
                .as_array()
                .unwrap()
                .iter()
                .find(|p| p["peer_id"] == other.peer_id.as_str())
            else {
                continue; // Not connected directly (the two joiners may meet only through 0).
            };
            let offset = peer["clock_offset_ms"]
                .as_f64()
                .unwrap_or_else(|| panic!("node {i} shows no clock offset for node {j}: {peer}"));
            let expected = (OFFSETS[j] as f64 - OFFSETS[i] as f64) * 1000.0;
            assert!(
                (offset - expected).abs() < 5_000.0,
                "node {i} sees node {j}'s clock {offset} ms off, expected about {expected}"
            );
        }
    }

    // Quiet and idle afterwards: a few seconds of CPU time measured, then the log counted.
    let cpu_before: Vec<f64> = nodes.iter().map(cpu_seconds).collect();
    std::thread::sleep(Duration::from_secs(5));
    for (i, node) in nodes.iter().enumerate() {
        let used = cpu_seconds(node) - cpu_before[i];
        assert!(
            used < 1.0,
            "node {i} used {used:.2} CPU-s in 5 s after the writes"
        );
        let grown: Vec<String> = node
            .log()
            .lines()
            .skip(lines_before[i])
            .map(str::to_owned)
            .collect();
        assert!(
            grown.len() < 100,
            "node {i}'s log grew by {} lines:\n{}",
            grown.len(),
            grown
                .iter()
                .take(20)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
}

/// A peer's clock offset is measured again while connected, not only when it connects: a clock
/// running at twice the speed (1 s ahead more every second) shows a growing offset.
#[test]
fn a_drifting_clock_is_seen_drifting() {
    if !faketime_or_skip() {
        return;
    }
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    // Only the wall clock runs fast; the daemon's timers keep real time.
    b.wrapper = meshsync::lab::peers::faketime_wrapper("+0 x2").unwrap();
    b.wrapper.insert(1, "FAKETIME_DONT_FAKE_MONOTONIC=1".into());
    b.start();
    let offset_of_b = || {
        a.status()["peers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["peer_id"] == b.peer_id.as_str())
            .and_then(|p| p["clock_offset_ms"].as_f64())
    };
    wait_until("A to measure B's clock", WAIT, || offset_of_b().is_some());
    let first = offset_of_b().unwrap();
    // Measured again every 30 s (`net::CLOCK_CHECK_INTERVAL`); by then B is 30 s further ahead.
    let bound = meshsync::net::CLOCK_CHECK_INTERVAL * 2 + WAIT;
    wait_until("A to see B's clock drift ahead", bound, || {
        offset_of_b().is_some_and(|now| now > first + 10_000.0)
    });
    eprintln!(
        "B's offset as A sees it: first {first} ms, later {} ms",
        offset_of_b().unwrap()
    );
}
