//! Who may get and change a share, through real daemons: read-only members and per-share peer
//! allowlists.

mod support;

use serde_json::Value;
use support::{Api, Mesh, Node, WAIT, now_ms, wait_until};

fn share_status(node: &Node, name: &str) -> Value {
    let status = node.status();
    status["shares"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no share `{name}` in {status}"))
}

fn token(node: &Node, share: &str, read_only: bool) -> String {
    let mut args = vec!["share", "token", share];
    if read_only {
        args.push("--read-only");
    }
    let out = node.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn has_key(node: &Node, share: &str, key: &str) -> bool {
    Api::of(node)
        .list(share)
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["key"] == key)
}

fn listed(value: &Value) -> Vec<String> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

#[test]
fn read_only_member_receives_everything_and_its_edits_stay_local() {
    let mesh = Mesh::full_static(3);
    mesh.wait_fully_connected();
    let [a, b, c] = [&mesh.nodes[0], &mesh.nodes[1], &mesh.nodes[2]];
    let write_token = a.create_records_share("data");
    b.join_records_share(&write_token, "data");
    let read_token = token(a, "data", true);
    assert!(
        meshsync::share::Token::parse(&read_token)
            .unwrap()
            .write
            .is_none()
    );
    c.join_records_share(&read_token, "data");

    wait_until("a to know b as a writer and c as a member", WAIT, || {
        let share = share_status(a, "data");
        let members = listed(&share["members"]);
        members.contains(&b.peer_id)
            && members.contains(&c.peer_id)
            && listed(&share["writers"]) == vec![b.peer_id.clone()]
    });
    assert_eq!(share_status(c, "data")["read_only"], true);
    assert_eq!(share_status(a, "data")["read_only"], false);

    Api::of(a).put("data", "from-a", "1");
    wait_until("the reader to receive a's write", WAIT, || {
        has_key(c, "data", "from-a")
    });

    // The reader edits: a new key, and an overwrite of a's.
    Api::of(c).put("data", "from-c", "mine");
    Api::of(c).put("data", "from-a", "overwritten by the reader");
    let edited_ms = now_ms();
    // The writers keep writing. The reader merges their news, finds its root still differs from
    // theirs (its own edits) and reconciles with each of them: in those sessions it offers its
    // two edits, and pushes nothing.
    Api::of(b).put("data", "from-b", "2");
    Api::of(a).put("data", "from-a-later", "3");
    wait_until("the reader to receive the writers' news", WAIT, || {
        has_key(c, "data", "from-b") && has_key(c, "data", "from-a-later")
    });
    for writer in [a, b] {
        let session = c.wait_session(
            "the reader to reconcile with a writer after its edits",
            &writer.peer_id,
            "data",
            edited_ms,
            support::session_succeeded,
        );
        assert!(
            session["offer"].as_u64().unwrap() >= 2 && session["pushed"] == 0,
            "{session}"
        );
    }
    for writer in [a, b] {
        assert!(
            !has_key(writer, "data", "from-c"),
            "the reader's key leaked"
        );
        let list = Api::of(writer).list("data");
        let from_a = list
            .as_array()
            .unwrap()
            .iter()
            .find(|r| r["key"] == "from-a")
            .unwrap();
        assert_eq!(
            from_a["value"], "1",
            "the reader's overwrite leaked: {list}"
        );
    }
    let reader = share_status(c, "data");
    assert_eq!(reader["unshared"], 2, "{reader}");
    assert_eq!(share_status(a, "data")["unshared"], 0);

    // A reader can only pass on read-only access.
    let out = c.cli(&["share", "token", "data"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("read-only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let passed_on = token(c, "data", true);
    assert!(
        meshsync::share::Token::parse(&passed_on)
            .unwrap()
            .write
            .is_none()
    );
    let shown = String::from_utf8(c.cli(&["share", "list"]).stdout).unwrap();
    assert!(shown.contains("2 local edits not shared"), "{shown}");
}

#[test]
fn read_only_folder_member_gets_files_and_keeps_its_own() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let [a, b] = [&mesh.nodes[0], &mesh.nodes[1]];
    let dir_a = a.home.parent().unwrap().join("folder");
    let dir_b = b.home.parent().unwrap().join("folder");
    let out = a.cli(&["share", "create", "--folder", dir_a.to_str().unwrap()]);
    assert!(out.status.success());
    let read_token = token(a, "folder", true);
    let out = b.cli(&[
        "share",
        "join",
        &read_token,
        "--folder",
        dir_b.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    wait_until("a to know b as a member", WAIT, || {
        listed(&share_status(a, "folder")["members"]).contains(&b.peer_id)
    });

    std::fs::write(dir_a.join("shared.txt"), b"from the writer").unwrap();
    wait_until("the reader to receive the file", WAIT, || {
        std::fs::read(dir_b.join("shared.txt")).is_ok_and(|b| b == b"from the writer")
    });
    std::fs::write(dir_b.join("mine.txt"), b"the reader's own").unwrap();
    wait_until("the reader to index its file", WAIT, || {
        share_status(b, "folder")["unshared"] == 1
    });
    let indexed_ms = now_ms();
    // The writer adds a file; the reader takes it, finds its root still differs (its own file)
    // and reconciles with the writer: it offers its file, and pushes nothing.
    std::fs::write(dir_a.join("second.txt"), b"more").unwrap();
    wait_until("the reader to receive the second file", WAIT, || {
        dir_b.join("second.txt").exists()
    });
    let session = b.wait_session(
        "the reader to reconcile with the writer after indexing its file",
        &a.peer_id,
        "folder",
        indexed_ms,
        support::session_succeeded,
    );
    assert!(
        session["offer"].as_u64().unwrap() >= 1 && session["pushed"] == 0,
        "{session}"
    );
    assert!(!dir_a.join("mine.txt").exists(), "the reader's file leaked");
    assert_eq!(
        std::fs::read(dir_a.join("shared.txt")).unwrap(),
        b"from the writer"
    );
}

#[test]
fn share_allowlist_admits_only_listed_peers() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let [a, c] = [&mesh.nodes[0], &mesh.nodes[1]];
    let someone_else = Node::init(&[]).peer_id.clone();
    let write_token = a.create_records_share("data");
    let out = a.cli(&["share", "trust", "data", &someone_else]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains(&someone_else));
    Api::of(a).put("data", "k", "v");
    // C has no share yet, so it has asked A nothing; joining makes it ask A to admit it.
    assert_eq!(a.answered_from(&c.peer_id), 0);
    c.join_records_share(&write_token, "data");

    // C holds a valid token and is connected, yet is not admitted: A answers its membership
    // check, and the answer is no.
    wait_until("A to answer C's membership check", WAIT, || {
        a.answered_from(&c.peer_id) >= 1
    });
    assert!(a.share_members("data").is_empty());
    assert!(c.share_members("data").is_empty());
    assert!(Api::of(c).list("data").as_array().unwrap().is_empty());
    assert_eq!(share_status(a, "data")["bytes_sent"], 0);
    assert_eq!(
        listed(&share_status(a, "data")["trusted_peers"]),
        vec![someone_else.clone()]
    );

    let out = a.cli(&["share", "trust", "data", "not-a-peer-id"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a peer id"));

    // Listing C admits it at once.
    let out = a.cli(&["share", "trust", "data", &c.peer_id]);
    assert!(out.status.success());
    wait_until("c to receive the record", WAIT, || has_key(c, "data", "k"));

    // Taking it off again (the list still names someone else) drops it.
    let out = a.cli(&["share", "untrust", "data", &c.peer_id]);
    assert!(out.status.success());
    assert!(!a.share_members("data").contains(&c.peer_id));
    Api::of(a).put("data", "later", "v");
    let later_ms = now_ms();
    // C still counts A as a member and keeps reconciling with it (anti-entropy); A refuses.
    c.wait_session(
        "C to try to reconcile with A after the write",
        &a.peer_id,
        "data",
        later_ms,
        |s| {
            s["error"]
                .as_str()
                .is_some_and(|e| e.contains("not a member"))
        },
    );
    assert!(!has_key(c, "data", "later"));
}

/// Points a node's config at a pre-shared key file.
fn use_psk(node: &Node, key: &std::path::Path) {
    let config = node.home.join("config.toml");
    let text = std::fs::read_to_string(&config).unwrap();
    assert!(text.contains("psk_file = \"\""));
    let text = text.replace(
        "psk_file = \"\"",
        &format!("psk_file = {:?}", key.to_str().unwrap()),
    );
    std::fs::write(&config, text).unwrap();
}

#[test]
fn private_mesh_refuses_peers_without_the_key() {
    use std::os::unix::fs::PermissionsExt;
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("swarm.key");
    let other_key = keys.path().join("other.key");
    let mut a = Node::init(&[]);
    let out = a.cli(&["psk", "new", key.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let again = a.cli(&["psk", "new", key.to_str().unwrap()]);
    assert!(!again.status.success(), "an existing key is never replaced");
    assert!(
        a.cli(&["psk", "new", other_key.to_str().unwrap()])
            .status
            .success()
    );
    use_psk(&a, &key);
    a.start();
    let addr = a.listen_addr();
    let mut with_key = Node::init(&["--peer", &addr]);
    use_psk(&with_key, &key);
    with_key.start();
    let mut wrong_key = Node::init(&["--peer", &addr]);
    use_psk(&wrong_key, &other_key);
    wrong_key.start();
    let mut no_key = Node::init(&["--peer", &addr]);
    no_key.start();

    wait_until("the peer with the key to connect", WAIT, || {
        a.connected_peers().contains(&with_key.peer_id)
    });
    // The others keep redialling (static peers) and keep failing; each logs its failed dials.
    for node in [&wrong_key, &no_key] {
        node.wait_for_log(
            "a peer without the key to fail to dial A",
            &["dial failed", &a.peer_id],
            0,
        );
    }
    assert_eq!(
        a.connected_peers().into_iter().collect::<Vec<_>>(),
        vec![with_key.peer_id.clone()]
    );
    assert!(wrong_key.connected_peers().is_empty());
    assert!(no_key.connected_peers().is_empty());
    for node in [&mut a, &mut with_key, &mut wrong_key, &mut no_key] {
        assert!(node.stop());
    }
}

/// Every way a 32-byte secret could be spelled in text.
fn spellings(secret: &[u8]) -> Vec<String> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
    vec![
        hex::encode(secret),
        hex::encode_upper(secret),
        URL_SAFE_NO_PAD.encode(secret),
        STANDARD.encode(secret),
        format!("{:?}", &secret[..6])
            .trim_end_matches(']')
            .to_owned(),
    ]
}

#[test]
fn secrets_never_appear_in_logs_or_status() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let [a, b] = [&mesh.nodes[0], &mesh.nodes[1]];
    let write_token = a.create_records_share("data");
    b.join_records_share(&write_token, "data");
    let dir_a = a.home.parent().unwrap().join("folder");
    let out = a.cli(&["share", "create", "--folder", dir_a.to_str().unwrap()]);
    assert!(out.status.success());
    let folder_token = String::from_utf8(out.stdout).unwrap().trim().to_owned();
    let dir_b = b.home.parent().unwrap().join("folder");
    assert!(
        b.cli(&[
            "share",
            "join",
            &folder_token,
            "--folder",
            dir_b.to_str().unwrap()
        ])
        .status
        .success()
    );
    Api::of(a).put("data", "k", "v");
    std::fs::write(dir_a.join("f.txt"), b"file").unwrap();
    wait_until("both to sync", WAIT, || {
        has_key(b, "data", "k") && dir_b.join("f.txt").exists()
    });
    // A bad token and a wrong API token get refused, and must not echo anything secret either.
    let _ = b.cli(&[
        "share",
        "join",
        &format!("{write_token}x"),
        "--records",
        "x",
    ]);

    let mut secrets: Vec<(String, Vec<u8>)> = Vec::new();
    for (what, token) in [("records", &write_token), ("folder", &folder_token)] {
        let parsed = meshsync::share::Token::parse(token).unwrap();
        secrets.push((format!("{what} secret"), parsed.secret.to_vec()));
        secrets.push((format!("{what} write key"), parsed.write.unwrap().to_vec()));
    }
    for node in [a, b] {
        let api_token = std::fs::read_to_string(node.home.join("api-token")).unwrap();
        secrets.push(("api token".into(), hex::decode(api_token.trim()).unwrap()));
    }
    let mut outputs = Vec::new();
    for node in [a, b] {
        outputs.push(("log".to_owned(), node.log()));
        outputs.push(("status".to_owned(), node.status().to_string()));
        for args in [
            &["share", "list", "--json"][..],
            &["share", "list"],
            &["status"],
            &["peers", "--json"],
        ] {
            let out = node.cli(args);
            outputs.push((
                args.join(" "),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ));
        }
    }
    assert!(
        outputs
            .iter()
            .any(|(w, text)| w == "log" && text.contains("DEBUG"))
    );
    for (what, secret) in &secrets {
        for spelling in spellings(secret) {
            for (source, text) in &outputs {
                assert!(
                    !text.contains(&spelling),
                    "the {what} appears in {source} as {spelling}"
                );
            }
        }
    }
    for (source, text) in &outputs {
        assert!(!text.contains(&write_token), "a token appears in {source}");
        assert!(!text.contains(&folder_token), "a token appears in {source}");
    }
}
