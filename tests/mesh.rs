//! Multi-peer tests of the daemon foundation, through the real binary.

mod support;

use std::process::Command;
use std::time::Instant;

use support::{Mesh, Node, WAIT, bin, meshsync, wait_until};

/// What the daemon's log says about a connection it denied (a blocked peer, or one outside
/// `trusted_peers`): `incoming connection from … failed: Listen error: Denied: …`.
const DENIED: &str = "Denied";

#[test]
fn three_daemons_connect_through_static_peers() {
    let mesh = Mesh::full_static(3);
    mesh.wait_fully_connected();
    for node in &mesh.nodes {
        let status = node.status();
        assert_eq!(status["peer_id"], node.peer_id.as_str());
        let listen = status["listen_addrs"].as_array().unwrap();
        assert!(!listen.is_empty());
        for addr in listen {
            assert!(
                addr.as_str()
                    .unwrap()
                    .ends_with(&format!("/p2p/{}", node.peer_id)),
                "{addr}"
            );
        }
        for peer in status["peers"].as_array().unwrap() {
            let found_by = peer["found_by"].as_str().unwrap();
            assert!(["static", "inbound"].contains(&found_by), "{peer}");
            assert_eq!(
                peer["agent"],
                format!("meshsync/{}", env!("CARGO_PKG_VERSION"))
            );
            assert_eq!(
                peer["addrs"].as_array().unwrap().len(),
                1,
                "one connection per pair: {peer}"
            );
        }
    }
    // The last node configured both others as static peers and says so.
    let last = mesh.nodes[2].status();
    let statics: Vec<&str> = last["peers"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["found_by"] == "static")
        .map(|p| p["peer_id"].as_str().unwrap())
        .collect();
    assert_eq!(statics.len(), 2, "{last}");
}

#[test]
fn five_daemons_find_each_other_through_kademlia() {
    let started = Instant::now();
    let mesh = Mesh::star(5);
    mesh.wait_fully_connected();
    eprintln!(
        "5 daemons fully connected {:?} after the first start",
        started.elapsed()
    );
    wait_until("duplicate connections to be closed", WAIT, || {
        mesh.nodes.iter().all(|n| {
            n.status()["peers"]
                .as_array()
                .unwrap()
                .iter()
                .all(|p| p["addrs"].as_array().unwrap().len() == 1)
        })
    });
    // Nodes 1..4 only know node 0, so each connection between two of them was made by one side
    // dialling a peer that Kademlia told it about.
    for (i, node) in mesh.nodes.iter().enumerate().skip(1) {
        let status = node.status();
        for peer in status["peers"].as_array().unwrap() {
            let found_by = peer["found_by"].as_str().unwrap();
            if peer["peer_id"] == mesh.nodes[0].peer_id.as_str() {
                assert_eq!(found_by, "static");
            } else {
                assert!(["kad", "inbound"].contains(&found_by), "node {i}: {peer}");
            }
        }
    }
    let kad_dials: usize = mesh.nodes[1..]
        .iter()
        .map(|n| {
            n.status()["peers"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|p| p["found_by"] == "kad")
                .count()
        })
        .sum();
    assert_eq!(
        kad_dials, 6,
        "each of the 6 pairs among nodes 1..4 is one kad dial"
    );
}

#[test]
fn restarted_daemon_keeps_its_id_and_reconnects() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let id_before = mesh.nodes[1].peer_id.clone();

    // Node 1 dials node 0 again when it comes back.
    assert!(mesh.nodes[1].stop(), "clean exit on SIGTERM");
    wait_until("node 0 to notice the disconnect", WAIT, || {
        !mesh.nodes[0].connected_peers().contains(&id_before)
    });
    mesh.nodes[1].start();
    assert_eq!(mesh.nodes[1].status()["peer_id"], id_before.as_str());
    let out = mesh.nodes[1].cli(&["id"]);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), id_before);
    mesh.wait_fully_connected();

    // Node 0 comes back on the same port after being killed: node 1 redials it with backoff.
    mesh.nodes[0].pin_listen_port();
    let node0 = mesh.nodes[0].peer_id.clone();
    let failed_dials = mesh.nodes[1].log_lines_with(&["dial failed", &node0]);
    mesh.nodes[0].kill();
    wait_until("node 1 to notice the disconnect", WAIT, || {
        mesh.nodes[1].connected_peers().is_empty()
    });
    // Node 0 only comes back once node 1 has tried to redial it and failed, so that the
    // reconnection below is the backoff's doing.
    mesh.nodes[1].wait_for_log(
        "node 1 to fail a redial of node 0",
        &["dial failed", &node0],
        failed_dials,
    );
    mesh.nodes[0].start();
    mesh.wait_fully_connected();
}

#[test]
fn init_is_idempotent_and_files_are_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let first = meshsync(&home, &["init", "--no-mdns", "--api", "127.0.0.1:0"]);
    assert!(first.status.success());
    let id = String::from_utf8(first.stdout).unwrap();
    let config = std::fs::read(home.join("config.toml")).unwrap();
    let second = meshsync(&home, &["init", "--listen", "/ip4/127.0.0.1/tcp/1"]);
    assert!(second.status.success());
    assert_eq!(String::from_utf8(second.stdout).unwrap(), id);
    assert!(String::from_utf8_lossy(&second.stderr).contains("already initialised"));
    assert_eq!(
        std::fs::read(home.join("config.toml")).unwrap(),
        config,
        "nothing changed"
    );
    for file in ["identity.key", "api-token"] {
        let mode = std::fs::metadata(home.join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
    let id_out = meshsync(&home, &["id"]);
    assert_eq!(String::from_utf8(id_out.stdout).unwrap(), id);
    // Every key is present in the generated config, commented.
    let text = String::from_utf8(config).unwrap();
    for key in [
        "listen",
        "api",
        "api_allow_remote",
        "peers",
        "bootstrap",
        "mdns",
        "max_discovered_peers",
    ] {
        assert!(
            text.contains(&format!("\n{key} = ")),
            "{key} missing:\n{text}"
        );
    }
}

#[test]
fn bad_config_gives_a_clear_error() {
    let node = Node::init(&[]);
    let config = node.home.join("config.toml");
    let original = std::fs::read_to_string(&config).unwrap();
    let cases = [
        (format!("{original}\nlisten_port = 5\n"), "listen_port"),
        (original.replace("mdns = false", "mdns = \"no\""), "mdns"),
        (
            format!("{original}\npeers = [\"/ip4/1.2.3.4/tcp/notaport\"]\n"),
            "peers",
        ),
        (
            original.replace(
                "\npeers = []",
                "\npeers = [\"/ip4/127.0.0.1/tcp/9/garbage\"]",
            ),
            "key `peers[0]`",
        ),
        (
            original.replace("blocked_peers = []", "blocked_peers = [\"nope\"]"),
            "blocked_peers[0]",
        ),
        (
            original.replace("api = \"127.0.0.1:0\"", "api = \"0.0.0.0:0\""),
            "api_allow_remote",
        ),
        ("this is [not toml".to_owned(), "config.toml"),
    ];
    for (text, expected) in cases {
        std::fs::write(&config, &text).unwrap();
        let out = meshsync(&node.home, &["run"]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(
            stderr.contains(expected),
            "expected `{expected}` in: {stderr}"
        );
        assert!(
            stderr.contains("config.toml"),
            "the file is named: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn bad_identity_gives_a_clear_error() {
    let node = Node::init(&[]);
    std::fs::write(node.home.join("identity.key"), b"not a key").unwrap();
    let out = meshsync(&node.home, &["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("identity.key") && stderr.contains("corrupt"),
        "{stderr}"
    );
}

#[test]
fn a_bad_worker_thread_count_gives_a_clear_error() {
    let node = Node::init(&[]);
    for bad in ["0", "many", "-2"] {
        let out = Command::new(bin())
            .arg("--home")
            .arg(&node.home)
            .arg("run")
            .env_remove("MESHSYNC_HOME")
            .env("TOKIO_WORKER_THREADS", bad)
            .output()
            .expect("cannot run meshsync");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{bad}: {stderr}");
        assert!(
            stderr.contains(&format!("TOKIO_WORKER_THREADS is `{bad}`")),
            "{stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

#[test]
fn bad_multiaddr_flags_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let home = dir.path().join("h");
    let out = meshsync(&home, &["init", "--peer", "127.0.0.1:7465"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("127.0.0.1:7465") && stderr.contains("multiaddr"),
        "{stderr}"
    );
    assert!(!home.exists(), "a refused init leaves nothing behind");
}

#[test]
fn cli_without_daemon_gives_a_clear_error() {
    let node = Node::init(&[]);
    for args in [
        &["status"][..],
        &["status", "--json"],
        &["peers"],
        &["peer", "add", "/ip4/127.0.0.1/tcp/1"],
    ] {
        let out = node.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains("no meshsync daemon is running"), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert!(out.stdout.is_empty());
    }
    let dir = tempfile::tempdir().unwrap();
    let out = meshsync(&dir.path().join("nothing"), &["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("init"), "{stderr}");
}

#[test]
fn api_requires_the_token() {
    let mut node = Node::init(&[]);
    node.start();
    let base = format!("http://{}", node.api_addr());
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let get = |path: &str, token: Option<&str>| {
        let mut request = agent.get(format!("{base}{path}"));
        if let Some(token) = token {
            request = request.header("Authorization", format!("Bearer {token}"));
        }
        let mut response = request.call().unwrap();
        let body = response.body_mut().read_to_string().unwrap();
        (response.status().as_u16(), body)
    };
    assert_eq!(get("/health", None).0, 200);
    let token = node.token();
    let (code, body) = get("/v1/status", Some(&token));
    assert_eq!(code, 200);
    assert!(body.contains(&node.peer_id));
    for bad in [
        None,
        Some("wrong"),
        Some(""),
        Some(&token[..token.len() - 1]),
    ] {
        let (code, body) = get("/v1/status", bad);
        assert_eq!(code, 401, "{bad:?}");
        assert_eq!(body, r#"{"error":"unauthorized"}"#, "nothing else leaks");
    }
    // A web page on another origin cannot drive the API, even with the token.
    let mut response = agent
        .get(format!("{base}/v1/status"))
        .header("Authorization", format!("Bearer {token}"))
        .header("Origin", "http://evil.example")
        .call()
        .unwrap();
    assert_eq!(response.status().as_u16(), 403);
    assert!(
        !response
            .body_mut()
            .read_to_string()
            .unwrap()
            .contains(&node.peer_id)
    );

    // The CLI with a wrong token says so.
    std::fs::write(node.home.join("api-token"), "00ff").unwrap();
    let out = node.cli(&["status"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("refused the API token"), "{stderr}");
    assert!(node.stop());
}

#[test]
fn peer_add_dials_and_remembers() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&[]);
    b.start();
    let addr = a.listen_addr();
    let out = b.cli(&["peer", "add", &addr]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(&format!("connected to {}", a.peer_id)),
        "{said}"
    );
    wait_until("b to connect to a", WAIT, || {
        b.connected_peers().contains(&a.peer_id)
    });
    let config = std::fs::read_to_string(b.home.join("config.toml")).unwrap();
    assert!(config.contains(&addr), "{config}");
    assert!(config.contains("# Static peers"), "comments kept");
    let peers: serde_json::Value =
        serde_json::from_slice(&b.cli(&["peers", "--json"]).stdout).unwrap();
    assert_eq!(peers[0]["peer_id"], a.peer_id.as_str());
    assert_eq!(peers[0]["found_by"], "static");

    // A wrong address is an error, not silence (it stays configured, and is said so).
    let nobody = "/ip4/127.0.0.1/tcp/1";
    let out = b.cli(&["peer", "add", nobody]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("did not answer"), "{stderr}");
    let out = b.cli(&["peer", "remove", nobody]);
    assert!(out.status.success());
    let out = b.cli(&["peer", "add", "--no-wait", nobody]);
    assert!(out.status.success(), "--no-wait only stores and dials it");
    assert!(b.cli(&["peer", "remove", nobody]).status.success());

    let out = b.cli(&["peer", "add", "not/a/multiaddr"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr.contains("not/a/multiaddr") && stderr.contains("multiaddr"),
        "{stderr}"
    );

    // Remembered across a restart.
    assert!(b.stop());
    b.start();
    wait_until("b to reconnect to a", WAIT, || {
        b.connected_peers().contains(&a.peer_id)
    });

    // Removed by its peer id: out of the config and no longer dialled, also after a restart.
    let out = b.cli(&["peer", "remove", &a.peer_id]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&addr));
    let config = std::fs::read_to_string(b.home.join("config.toml")).unwrap();
    assert!(!config.contains(&addr), "{config}");
    assert!(config.contains("# Static peers"), "comments kept");
    assert_eq!(b.status()["static_peers"], serde_json::json!([]));
    let out = b.cli(&["peer", "remove", &a.peer_id]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no configured peer"));
    assert!(b.stop());
    b.start();
    let status = b.status();
    assert_eq!(status["static_peers"], serde_json::json!([]), "{status}");
    assert_eq!(
        status["static_peer_status"],
        serde_json::json!([]),
        "{status}"
    );
}

#[test]
fn second_daemon_on_the_same_home_is_refused() {
    let mut node = Node::init(&[]);
    node.start();
    let out = node.cli(&["run"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr.contains("already running"), "{stderr}");
    assert!(node.is_running());
}

#[test]
fn sigterm_stops_cleanly_and_removes_api_addr() {
    let mut node = Node::init(&[]);
    node.start();
    assert!(node.home.join("api.addr").exists());
    assert!(node.stop(), "exit code 0 after SIGTERM");
    assert!(!node.home.join("api.addr").exists());
    let out = node.cli(&["status"]);
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn a_blocked_peer_is_disconnected_and_stays_out_until_unblocked() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let b = mesh.nodes[1].peer_id.clone();
    let denied_before = mesh.nodes[0].log_lines_with(&[DENIED]);
    let out = mesh.nodes[0].cli(&["peer", "block", &b]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("B to be disconnected", WAIT, || {
        !mesh.nodes[0].connected_peers().contains(&b)
    });
    // B keeps redialling A (A is its static peer); A keeps refusing, also after a restart. A
    // logs each connection it denies; B is the only one that dials A here.
    mesh.nodes[0].wait_for_log("A to deny B's redial", &[DENIED], denied_before);
    assert!(!mesh.nodes[0].connected_peers().contains(&b));
    let config = std::fs::read_to_string(mesh.nodes[0].home.join("config.toml")).unwrap();
    assert!(
        config.contains(&format!("blocked_peers = [\"{b}\"]")),
        "{config}"
    );
    mesh.nodes[0].pin_listen_port();
    assert!(mesh.nodes[0].stop());
    let denied = mesh.nodes[0].log_lines_with(&[DENIED]);
    mesh.nodes[0].start();
    mesh.nodes[0].wait_for_log("A to deny B's redial after its restart", &[DENIED], denied);
    assert!(!mesh.nodes[0].connected_peers().contains(&b));
    let out = mesh.nodes[0].cli(&["peer", "block", "not-a-peer-id"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a peer id"));

    // Unblocked: B's next redial gets in, and the config forgets the block.
    let out = mesh.nodes[0].cli(&["peer", "unblock", &b]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("unblocked {b}")
    );
    wait_until("B to be let in again", WAIT, || {
        mesh.nodes[0].connected_peers().contains(&b)
    });
    let config = std::fs::read_to_string(mesh.nodes[0].home.join("config.toml")).unwrap();
    assert!(!config.contains(&b), "{config}");
    let out = mesh.nodes[0].cli(&["peer", "unblock", &b]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("{b} was not blocked")
    );
}

#[test]
fn only_trusted_peers_may_connect() {
    let mut a = Node::init(&[]);
    let friend = Node::init(&[]);
    let config = a.home.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace(
            "trusted_peers = []",
            &format!("trusted_peers = [\"{}\"]", friend.peer_id),
        ),
    )
    .unwrap();
    a.start();
    let addr = a.listen_addr();
    let mut stranger = Node::init(&["--peer", &addr]);
    stranger.start();
    let mut friend = friend;
    let friend_config = friend.home.join("config.toml");
    let text = std::fs::read_to_string(&friend_config).unwrap();
    std::fs::write(
        &friend_config,
        text.replace("\npeers = []", &format!("\npeers = [\"{addr}\"]")),
    )
    .unwrap();
    friend.start();
    wait_until("the trusted peer to connect", WAIT, || {
        a.connected_peers().contains(&friend.peer_id)
    });
    // The stranger dials A at start and again with backoff; A logs each connection it denies,
    // and only the stranger gets denied here.
    a.wait_for_log("A to deny the stranger's connection", &[DENIED], 0);
    assert!(
        !a.connected_peers().contains(&stranger.peer_id),
        "a peer outside trusted_peers is refused"
    );
}

/// A static peer that cannot be reached is shown as such in `status`, with the reason and the
/// time of the next try, instead of silently missing from the peer list.
#[test]
fn an_unreachable_static_peer_shows_why_in_status() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("/ip4/127.0.0.1/tcp/{port}");
    let mut node = Node::init(&["--peer", &addr]);
    node.start();
    wait_until("a failed dial to show in status", WAIT, || {
        node.status()["static_peer_status"]
            .as_array()
            .and_then(|peers| peers.first())
            .is_some_and(|p| p["failed_dials"].as_u64().unwrap_or(0) >= 2)
    });
    let status = node.status();
    let peer = &status["static_peer_status"][0];
    assert_eq!(peer["addr"], addr.as_str());
    assert_eq!(peer["connected"], false);
    assert!(
        peer["last_error"].as_str().is_some_and(|e| !e.is_empty()),
        "{peer}"
    );
    assert!(peer["next_dial_in_ms"].is_u64(), "{peer}");
    let human = String::from_utf8(node.cli(&["status"]).stdout).unwrap();
    assert!(
        human.contains(&format!("static peer {addr} not connected")),
        "{human}"
    );
}

/// Device names: `init --name` sets this device's; peers learn it in the hello and show it in
/// `status` (ours, and each member's), `peers`, and the human output. A bad name is refused
/// with the key named.
#[test]
fn device_names_are_shown_to_peers() {
    let mut a = Node::init(&["--name", "laptop"]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr(), "--name", "desk top"]);
    b.start();
    let token = a.create_records_share("notes");
    b.join_records_share(&token, "notes");
    wait_until("A to see B as a member", WAIT, || {
        a.share_members("notes").contains(&b.peer_id)
    });
    let status = a.status();
    assert_eq!(status["name"], "laptop", "{status}");
    let peer = &status["peers"][0];
    assert_eq!(peer["peer_id"], b.peer_id.as_str());
    assert_eq!(peer["name"], "desk top", "{peer}");
    let member = &status["shares"][0]["member_status"][0];
    assert_eq!(member["name"], "desk top", "{member}");
    assert!(member["last_seen"].is_null(), "connected: {member}");
    let human = String::from_utf8(a.cli(&["peers"]).stdout).unwrap();
    assert!(human.contains("desk top"), "{human}");

    // Gone: last_seen is a time.
    assert!(b.stop());
    wait_until("A to see B gone", WAIT, || {
        a.status()["shares"][0]["member_status"][0]["connected"] == false
    });
    let member = a.status()["shares"][0]["member_status"][0].clone();
    assert!(
        member["last_seen"]
            .as_str()
            .is_some_and(|t| t.starts_with("20") && t.ends_with('Z')),
        "{member}"
    );

    let bad = Node::init(&[]);
    let config = bad.home.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        text.replace("name = \"\"", "name = \"tab\\there\""),
    )
    .unwrap();
    let out = bad.cli(&["run"]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("`name`"), "{stderr}");
}
