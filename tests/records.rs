//! Replicated records through real daemons: convergence, restarts, crashes, conflicts, and
//! peers without the token.

mod support;

use std::time::Duration;

use serde_json::{Value, json};
use support::{Api, Mesh, Node, WAIT, copy_dir, now_ms, wait_converged, wait_until};

/// Shares one records store among all nodes of a mesh: node 0 creates it, the others join with
/// the token. Returns the share name used on every node.
fn share_among(mesh: &Mesh) -> &'static str {
    let token = mesh.nodes[0].create_records_share("data");
    for node in &mesh.nodes[1..] {
        node.join_records_share(&token, "data");
    }
    let ids = mesh.ids();
    wait_until("every node to see every other as a member", WAIT, || {
        mesh.nodes.iter().all(|n| {
            let members = n.share_members("data");
            ids.iter()
                .filter(|id| **id != n.peer_id)
                .all(|id| members.contains(id))
        })
    });
    "data"
}

/// A tiny deterministic generator so each test's ops are reproducible.
struct Lcg(u64);
impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self
            .0
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

fn concurrent_random_writes_converge(n: usize) {
    let mesh = Mesh::full_static(n);
    mesh.wait_fully_connected();
    let share = share_among(&mesh);
    std::thread::scope(|scope| {
        for (i, node) in mesh.nodes.iter().enumerate() {
            scope.spawn(move || {
                let api = Api::of(node);
                let mut rng = Lcg(i as u64 * 7919 + 1);
                for op in 0..60 {
                    // 25 keys shared by everyone: plenty of concurrent writes to the same key.
                    let key = format!("k{:02}", rng.next() % 25);
                    if rng.next().is_multiple_of(4) {
                        api.del(share, &key);
                    } else {
                        api.put(share, &key, &format!("node{i}-op{op}"));
                    }
                }
            });
        }
    });
    let listing = wait_converged(&mesh.nodes.iter().map(|n| (n, share)).collect::<Vec<_>>());
    assert!(!listing.as_array().unwrap().is_empty());
    // The CLI shows the same as the API on every node.
    let via_cli: Vec<Value> = mesh.nodes.iter().map(|n| n.kv_list_json(share)).collect();
    assert!(via_cli.iter().all(|l| *l == listing));
}

#[test]
fn two_peers_converge_under_concurrent_writes() {
    concurrent_random_writes_converge(2);
}

#[test]
fn three_peers_converge_under_concurrent_writes() {
    concurrent_random_writes_converge(3);
}

#[test]
fn five_peers_converge_under_concurrent_writes() {
    concurrent_random_writes_converge(5);
}

#[test]
fn kv_cli_round_trip_and_errors() {
    let mut node = Node::init(&[]);
    node.start();
    node.create_records_share("notes");
    let ok = |args: &[&str]| {
        let out = node.cli(args);
        assert!(
            out.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    ok(&["kv", "put", "notes", "greeting", "hello world"]);
    assert_eq!(ok(&["kv", "get", "notes", "greeting"]), b"hello world");

    // `-` reads stdin; non-UTF-8 values come back byte for byte and list as base64.
    let mut child = std::process::Command::new(support::bin())
        .args([
            "--home",
            node.home.to_str().unwrap(),
            "kv",
            "put",
            "notes",
            "blob",
            "-",
        ])
        .stdin(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&[0xff, 0x00, 0xfe])
        .unwrap();
    assert!(child.wait().unwrap().success());
    assert_eq!(ok(&["kv", "get", "notes", "blob"]), vec![0xff, 0x00, 0xfe]);
    let listed: Value = serde_json::from_slice(&ok(&["kv", "list", "notes", "--json"])).unwrap();
    assert_eq!(
        listed,
        json!([{"key": "blob", "value_base64": "/wD+"}, {"key": "greeting", "value": "hello world"}])
    );
    assert_eq!(
        ok(&["kv", "list", "notes", "--prefix", "gr"]),
        b"greeting\n"
    );

    ok(&["kv", "del", "notes", "greeting"]);
    let out = node.cli(&["kv", "get", "notes", "greeting"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no key `greeting`"));

    // Limits give clear errors.
    let long_key = "k".repeat(1025);
    let out = node.cli(&["kv", "put", "notes", &long_key, "v"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("limit is 1024"));
    let api = Api::of(&node);
    let (status, body) = api.post(
        "/v1/kv/notes/put",
        &json!({"key": "big", "value": "x".repeat(1024 * 1024 + 1)}),
    );
    assert_eq!(status, 400, "{body}");
    assert!(body["error"].as_str().unwrap().contains("1 MiB"), "{body}");
    let out = node.cli(&["kv", "get", "nosuchshare", "k"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no share named `nosuchshare`"));

    // Batch put.
    let records: Vec<Value> = (0..500)
        .map(|i| json!({"key": format!("b{i:03}"), "value": "v"}))
        .collect();
    let (status, body) = api.post("/v1/kv/notes/batch", &json!({"records": records}));
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["count"], 500);
    assert_eq!(api.list("notes").as_array().unwrap().len(), 501);

    // `store` says what the store file holds: 501 records and the tombstone of `greeting`, each
    // with its row in the id index.
    let usage: Value = serde_json::from_slice(&ok(&["store", "--json"])).unwrap();
    let table = |name: &str| {
        usage["tables"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["name"] == name)
            .unwrap_or_else(|| panic!("no table {name} in {usage}"))
            .clone()
    };
    assert_eq!(table("records")["entries"], 502, "{usage}");
    assert_eq!(table("index")["entries"], 502, "{usage}");
    let in_tables = usage["tables_bytes"].as_u64().unwrap();
    assert!(
        table("records")["stored_bytes"].as_u64().unwrap() > 500 * 20,
        "{usage}"
    );
    assert!(
        in_tables <= usage["file_bytes"].as_u64().unwrap(),
        "{usage}"
    );
    let text = String::from_utf8(ok(&["store"])).unwrap();
    assert!(
        text.contains("meshsync.redb") && text.contains("records"),
        "{text}"
    );

    // A bad token for join is refused clearly.
    let out = node.cli(&["share", "join", "meshsync1-garbage", "--records", "x"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("damaged"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(node.stop());
}

#[test]
fn watch_reports_local_and_remote_changes() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = share_among(&mesh);
    let b = &mesh.nodes[1];
    let mut watch = std::process::Command::new(support::bin())
        .args(["--home", b.home.to_str().unwrap(), "kv", "watch", share])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = watch.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(stdout).lines() {
            if tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // The watch shows only changes made after it subscribed: write probes on B until one shows
    // up, and from then on skip the probes that may still follow.
    let mut probes = 0;
    wait_until("the watch to show a change", WAIT, || {
        probes += 1;
        Api::of(b).put(share, &format!("probe{probes}"), "");
        rx.recv_timeout(Duration::from_millis(100)).is_ok()
    });
    let next_line = || loop {
        let line: Value =
            serde_json::from_str(&rx.recv_timeout(WAIT).expect("a watch line")).unwrap();
        if !line["key"].as_str().unwrap().starts_with("probe") {
            return line;
        }
    };
    Api::of(&mesh.nodes[0]).put(share, "remote-key", "from A");
    let line = next_line();
    assert_eq!(line["key"], "remote-key");
    assert_eq!(line["value"], "from A");
    assert_eq!(line["origin"], mesh.nodes[0].peer_id.as_str());
    assert_eq!(line["from"], mesh.nodes[0].peer_id.as_str());
    Api::of(b).put(share, "local-key", "from B");
    let line = next_line();
    assert_eq!(line["key"], "local-key");
    assert_eq!(line["from"], "local");
    // An open watch does not keep the daemon from stopping, and the watch ends with it.
    assert!(
        mesh.nodes[1].stop(),
        "clean, prompt exit on SIGTERM with a watch open"
    );
    let status = watch.wait().unwrap();
    assert!(
        status.success(),
        "the watch ends cleanly when the daemon stops"
    );
}

#[test]
fn stopped_peer_catches_up_and_killed_peer_loses_nothing() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = share_among(&mesh);
    let a = Api::of(&mesh.nodes[0]);
    for i in 0..50 {
        a.put(share, &format!("before{i}"), "x");
    }
    wait_converged(&[(&mesh.nodes[0], share), (&mesh.nodes[1], share)]);

    // B stops; A keeps writing; B comes back and catches up.
    assert!(mesh.nodes[1].stop());
    for i in 0..200 {
        a.put(share, &format!("while-down{i:03}"), "y");
    }
    a.del(share, "before0");
    mesh.nodes[1].start();
    let listing = wait_converged(&[(&mesh.nodes[0], share), (&mesh.nodes[1], share)]);
    assert_eq!(listing.as_array().unwrap().len(), 249);

    // kill -9 right after an acknowledged put: the write is there after restart.
    let b = Api::of(&mesh.nodes[1]);
    b.put(share, "acked", "durable");
    mesh.nodes[1].kill();
    mesh.nodes[1].start();
    let out = mesh.nodes[1].cli(&["kv", "get", share, "acked"]);
    assert_eq!(out.stdout, b"durable");
    wait_converged(&[(&mesh.nodes[0], share), (&mesh.nodes[1], share)]);
}

/// Puts records `{prefix}{i:05}` = `{value}{i}` for every `i` of `keys` in one batch.
fn put_batch(api: &Api, share: &str, keys: std::ops::Range<usize>, prefix: &str, value: &str) {
    let records: Vec<Value> = keys
        .map(|i| json!({"key": format!("{prefix}{i:05}"), "value": format!("{value}{i}")}))
        .collect();
    let (status, body) = api.post(
        &format!("/v1/kv/{share}/batch"),
        &json!({ "records": records }),
    );
    assert_eq!(status, 200, "{body}");
}

/// Two peers that each wrote apart, one 20,000 records, the other 300 of the same keys and
/// 5,000 of its own, meet again and converge. A session this big pulls what it needs between
/// its rounds, a request's worth at a time (it used to hold every id it needed until the end),
/// whichever side starts it, and the keys written on both sides move both ways: each side
/// pulls what it lacks, neither pushes more than 4,096 (both used to push everything the other
/// lacked while the other pulled it too).
#[test]
fn peers_that_wrote_apart_converge_on_twenty_thousand_records() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = share_among(&mesh);
    let batch = |api: &Api, keys: std::ops::Range<usize>, prefix: &str, value: &str| {
        put_batch(api, share, keys, prefix, value)
    };
    for node in &mesh.nodes {
        node.pin_listen_port();
    }
    assert!(mesh.nodes[1].stop());
    batch(&Api::of(&mesh.nodes[0]), 0..20_000, "k", "from a ");
    assert!(mesh.nodes[0].stop());
    mesh.nodes[1].start();
    let b = Api::of(&mesh.nodes[1]);
    batch(&b, 0..300, "k", "from b ");
    batch(&b, 0..5_000, "b", "only b ");
    mesh.nodes[0].start();
    let listing = wait_converged(&[(&mesh.nodes[0], share), (&mesh.nodes[1], share)]);
    let listing = listing.as_array().unwrap();
    assert_eq!(listing.len(), 25_000);
    // The keys both wrote hold one winner on both sides, whichever it is.
    let k0 = listing.iter().find(|r| r["key"] == "k00000").unwrap();
    assert!(
        k0["value"] == "from a 0" || k0["value"] == "from b 0",
        "{k0}"
    );
    // Whoever started the session pulled the other's records while they reconciled.
    let sessions: Vec<Value> = mesh
        .nodes
        .iter()
        .flat_map(|node| {
            Api::of(node).get("/v1/status").1["sessions"]
                .as_array()
                .unwrap()
                .clone()
        })
        .collect();
    let pulled_early: u64 = sessions
        .iter()
        .map(|s| s["pulled_between_rounds"].as_u64().unwrap())
        .sum();
    assert!(pulled_early >= 4096, "{sessions:?}");
    // Neither side pushed a big difference while the other pulled it: each offered more than
    // a push's worth (4,096) and told the other to pull instead.
    for session in &sessions {
        assert!(session["pushed"].as_u64().unwrap() <= 4096, "{session}");
    }
    assert!(
        sessions.iter().any(|s| s["left_to_peer"] == true),
        "{sessions:?}"
    );
}

/// A member that joins late and pulls 30,000 records costs the member it pulls from a few
/// sessions, not one per batch it merged: what a member merged from us is not announced back
/// to us (each such announcement started a session here, one every ~0.2 s through a first sync
/// once sessions stopped pushing big differences).
#[test]
fn a_late_member_pulling_thirty_thousand_records_costs_the_sender_few_sessions() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = share_among(&mesh);
    for node in &mesh.nodes {
        node.pin_listen_port();
    }
    assert!(mesh.nodes[1].stop());
    let a = Api::of(&mesh.nodes[0]);
    for part in 0..3 {
        put_batch(&a, share, part * 10_000..(part + 1) * 10_000, "k", "v");
    }
    mesh.nodes[1].start();
    let listing = wait_converged(&[(&mesh.nodes[0], share), (&mesh.nodes[1], share)]);
    assert_eq!(listing.as_array().unwrap().len(), 30_000);
    let b_id = mesh.nodes[1].peer_id.clone();
    let sessions: Vec<Value> = a.get("/v1/status").1["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["peer"] == b_id.as_str())
        .cloned()
        .collect();
    assert!(
        sessions.len() <= 4,
        "{} sessions: {sessions:?}",
        sessions.len()
    );
    // B pulled them, in sessions of its own.
    let merged_by_b: u64 = Api::of(&mesh.nodes[1]).get("/v1/status").1["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["merged"].as_u64().unwrap())
        .sum();
    assert!(merged_by_b > 0, "B's sessions merged nothing");
}

#[test]
fn concurrent_writes_pick_the_same_winner_and_keep_the_loser() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = share_among(&mesh);
    Api::of(&mesh.nodes[0]).put(share, "k", "original");
    wait_converged(&[(&mesh.nodes[0], share), (&mesh.nodes[1], share)]);

    // Partition by stopping one side at a time, so neither write sees the other.
    mesh.nodes[0].pin_listen_port();
    mesh.nodes[0].kill();
    Api::of(&mesh.nodes[1]).put(share, "k", "written on B");
    let b_wrote_ms = now_ms();
    mesh.nodes[1].kill();
    mesh.nodes[0].start();
    // A writes later by the clock, so its write carries the higher hybrid clock.
    wait_until("the clock to pass B's write", WAIT, || {
        now_ms() > b_wrote_ms
    });
    Api::of(&mesh.nodes[0]).put(share, "k", "written on A");
    mesh.nodes[1].start();
    mesh.wait_fully_connected();
    wait_converged(&[(&mesh.nodes[0], share), (&mesh.nodes[1], share)]);

    let views: Vec<Value> = mesh
        .nodes
        .iter()
        .map(|n| {
            let out = n.cli(&["kv", "get", share, "k", "--conflicts"]);
            assert!(out.status.success());
            serde_json::from_slice(&out.stdout).unwrap()
        })
        .collect();
    assert_eq!(views[0], views[1], "same winner and conflicts everywhere");
    let view = &views[0];
    // A wrote later, so its hybrid clock is higher: it wins; B's write stays readable.
    assert_eq!(view["value"], "written on A");
    assert_eq!(view["origin"], mesh.nodes[0].peer_id.as_str());
    let conflicts = view["conflicts"].as_array().unwrap();
    assert_eq!(conflicts.len(), 1, "{view}");
    assert_eq!(conflicts[0]["value"], "written on B");
    assert_eq!(conflicts[0]["origin"], mesh.nodes[1].peer_id.as_str());

    // A new write supersedes both.
    Api::of(&mesh.nodes[1]).put(share, "k", "resolved");
    wait_until("the resolution to replicate", WAIT, || {
        let out = mesh.nodes[0].cli(&["kv", "get", share, "k", "--conflicts"]);
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        v["value"] == "resolved" && v["conflicts"].as_array().is_some_and(|c| c.is_empty())
    });
}

#[test]
fn peer_without_the_token_gets_nothing() {
    let mesh = Mesh::full_static(3);
    mesh.wait_fully_connected();
    // Nodes 0 and 1 share; node 2 is connected to both but has no token.
    let token = mesh.nodes[0].create_records_share("secret");
    mesh.nodes[1].join_records_share(&token, "secret");
    wait_until("0 and 1 to be members", WAIT, || {
        mesh.nodes[1]
            .share_members("secret")
            .contains(&mesh.nodes[0].peer_id)
    });
    let a = Api::of(&mesh.nodes[0]);
    for i in 0..20 {
        a.put("secret", &format!("k{i}"), "classified");
    }
    wait_converged(&[(&mesh.nodes[0], "secret"), (&mesh.nodes[1], "secret")]);
    // The members asked the outsider to prove membership of "secret" when they created and
    // joined it; it answered (no). It has no share of its own yet, so it has asked them nothing.
    let outsider_id = mesh.nodes[2].peer_id.clone();
    for member in &mesh.nodes[..2] {
        wait_until(
            "the outsider to answer the member's membership check",
            WAIT,
            || mesh.nodes[2].answered_from(&member.peer_id) >= 1,
        );
        assert_eq!(member.answered_from(&outsider_id), 0);
    }
    // The outsider gets a share of its own, so it runs the membership check against both too;
    // each member answers it (no).
    mesh.nodes[2].create_records_share("other");
    for member in &mesh.nodes[..2] {
        wait_until(
            "the member to answer the outsider's membership check",
            WAIT,
            || member.answered_from(&outsider_id) >= 1,
        );
    }

    let outsider = mesh.nodes[2].status();
    let shares = outsider["shares"].as_array().unwrap();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0]["name"], "other");
    assert_eq!(shares[0]["entries"], 0);
    assert_eq!(shares[0]["bytes_received"], 0, "{outsider}");
    assert!(shares[0]["members"].as_array().unwrap().is_empty());
    for member in &mesh.nodes[..2] {
        let status = member.status();
        let share = &status["shares"][0];
        assert!(
            !share["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| m == mesh.nodes[2].peer_id.as_str()),
            "outsider is not a member: {share}"
        );
        assert!(
            status["sessions"]
                .as_array()
                .unwrap()
                .iter()
                .all(|s| s["peer"] != mesh.nodes[2].peer_id.as_str()),
            "no session with the outsider"
        );
    }
    let db = std::fs::read(mesh.nodes[2].home.join("state/meshsync.redb")).unwrap();
    assert!(
        !db.windows(b"classified".len()).any(|w| w == b"classified"),
        "no share data in the outsider's store"
    );
}

#[test]
fn members_find_each_other_through_the_dht_without_token_addresses() {
    // A and C each know only B, which is not a member, and the token C gets carries no address:
    // C meets A through Kademlia (its lookups, and the provider record A announces under a key
    // derived from the share secret).
    let mut b = Node::init(&[]);
    b.start();
    let b_addr = b.listen_addr();
    let no_autodial = |node: &Node| {
        let config = node.home.join("config.toml");
        let text = std::fs::read_to_string(&config).unwrap();
        std::fs::write(
            &config,
            text.replace("max_discovered_peers = 64", "max_discovered_peers = 0"),
        )
        .unwrap();
    };
    let mut a = Node::init(&["--peer", &b_addr]);
    no_autodial(&a);
    a.start();
    let mut c = Node::init(&["--peer", &b_addr]);
    no_autodial(&c);
    c.start();
    wait_until("A and C to reach B", WAIT, || {
        a.connected_peers().contains(&b.peer_id) && c.connected_peers().contains(&b.peer_id)
    });

    let token = a.create_records_share("dht");
    // Strip the creator's addresses from the token: C must find A through the DHT.
    let mut parsed = meshsync::share::Token::parse(&token).unwrap();
    parsed.addrs.clear();
    c.join_records_share(&parsed.encode(), "dht");
    Api::of(&a).put("dht", "found", "via provider record");
    wait_until("C to find A through the DHT and sync", WAIT, || {
        c.cli(&["kv", "get", "dht", "found"]).stdout == b"via provider record"
    });
    assert!(c.share_members("dht").contains(&a.peer_id));
    assert!(
        b.status()["shares"].as_array().unwrap().is_empty(),
        "B never joined"
    );
    assert!(a.stop() && b.stop() && c.stop());
}

/// `meshsync kv list | head` ends quietly when `head` has read enough (it panicked on the
/// closed pipe, printing a backtrace).
#[test]
fn a_listing_into_a_closed_pipe_ends_quietly() {
    let mut node = Node::init(&[]);
    node.start();
    node.create_records_share("big");
    // 300 KiB of listing, far beyond what a pipe buffers.
    let records: Vec<Value> = (0..3000)
        .map(|i| json!({"key": format!("key-{i:05}-{}", "x".repeat(90)), "value": "v"}))
        .collect();
    let (code, body) = Api::of(&node).post("/v1/kv/big/batch", &json!({ "records": records }));
    assert_eq!(code, 200, "{body}");
    let script = format!(
        "{} --home {} kv list big | head -c 10 >/dev/null",
        support::bin(),
        node.home.display()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", &script])
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(node.stop());
}

/// Resident memory of a process and its peak since the peak was last reset, in KiB.
fn rss_and_peak_kib(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_long_listing_is_streamed_a_page_at_a_time() {
    // 100,000 records listed: held at once (entries, their JSON, the answer's text) they took
    // tens of MiB, 10^7 of them gigabytes; streamed from the store a page at a time the
    // daemon's peak memory hardly moves. Their 12 MiB of JSON is also more than the CLI's
    // HTTP client read into memory (10 MiB: `kv list` failed), so the CLI prints as it reads.
    const COUNT: usize = 100_000;
    let value = |i: usize| format!("value number {i} {}", "x".repeat(80));
    let mut node = Node::init(&[]);
    node.start();
    node.create_records_share("big");
    let api = Api::of(&node);
    let records: Vec<Value> = (0..COUNT)
        .map(|i| json!({"key": format!("k{i:06}"), "value": value(i)}))
        .collect();
    let (status, body) = api.post("/v1/kv/big/batch", &json!({ "records": records }));
    assert_eq!(status, 200, "{body}");
    drop(records);
    api.put("big", "zz-deleted", "x");
    assert!(api.del("big", "zz-deleted"));
    // The batch's own buffers are given back about a second after they are freed (jemalloc's
    // decay); the peak is then reset (`clear_refs` 5), so it measures the listing alone.
    let pid = node.pid().unwrap();
    std::thread::sleep(Duration::from_secs(3));
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").unwrap();
    let (before, _) = rss_and_peak_kib(pid);

    let out = node.cli(&["kv", "list", "big", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (_, peak) = rss_and_peak_kib(pid);
    let listed: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed = listed.as_array().unwrap();
    assert_eq!(listed.len(), COUNT, "every record, the deleted one not");
    for (i, record) in listed.iter().enumerate() {
        assert_eq!(record["key"], format!("k{i:06}"), "in key order, each once");
        assert_eq!(record["value"], value(i));
    }
    let grew_mib = peak.saturating_sub(before) / 1024;
    assert!(
        grew_mib < 12,
        "listing {COUNT} records raised the daemon's peak memory by {grew_mib} MiB"
    );

    // The text form lists the keys, one a line, and a prefix narrows it.
    let out = node.cli(&["kv", "list", "big", "--prefix", "k09999"]);
    assert!(out.status.success());
    let keys: Vec<String> = (99_990..100_000).map(|i| format!("k{i:06}")).collect();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        keys.join("\n") + "\n"
    );
    // `--json` prints what it always printed: the array, pretty, as one value.
    let out = node.cli(&["kv", "list", "big", "--prefix", "k09999", "--json"]);
    let expected: Vec<Value> = (99_990..100_000)
        .map(|i| json!({"key": format!("k{i:06}"), "value": value(i)}))
        .collect();
    assert_eq!(
        String::from_utf8(out.stdout).unwrap(),
        serde_json::to_string_pretty(&expected).unwrap() + "\n"
    );
    let out = node.cli(&["kv", "list", "big", "--prefix", "nothing", "--json"]);
    assert_eq!(String::from_utf8(out.stdout).unwrap(), "[]\n");
    let (status, body) = api.get("/v1/kv/big/list?prefix=nothing");
    assert_eq!((status, body), (200, json!([])));
    assert!(node.stop());
}

/// A daemon whose home is restored from a backup (its store older than what it wrote since)
/// must not reuse the versions it wrote after the backup: its next write is its newest, and
/// wins everywhere, instead of being taken for an old write that its own lost writes, still
/// held by its peers, already replaced.
#[test]
fn a_write_after_the_home_is_restored_from_a_backup_wins_everywhere() {
    let mut a = Node::init(&[]);
    a.start();
    a.pin_listen_port();
    a.stop();
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let token = a.create_records_share("r");
    b.join_records_share(&token, "r");
    let value_on = |node: &Node| {
        let out = node.cli(&["kv", "get", "r", "k"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    Api::of(&b).put("r", "k", "v1");
    wait_until("v1 on A", WAIT, || value_on(&a) == "v1");

    b.stop();
    let state = b.home.join("state");
    let backup = b.home.parent().unwrap().join("state-backup");
    copy_dir(&state, &backup);
    b.start();
    Api::of(&b).put("r", "k", "v2");
    Api::of(&b).put("r", "k", "v3");
    wait_until("v3 on A", WAIT, || value_on(&a) == "v3");

    a.stop();
    b.stop();
    std::fs::remove_dir_all(&state).unwrap();
    copy_dir(&backup, &state);
    b.start();
    assert_eq!(value_on(&b), "v1", "B's store is the backup's");
    Api::of(&b).put("r", "k", "v4");
    a.start();
    wait_until("A and B to agree on k after B's restore", WAIT, || {
        value_on(&a) == value_on(&b)
    });
    assert_eq!(value_on(&a), "v4", "B's last write was lost");
    assert_eq!(value_on(&b), "v4");
}
