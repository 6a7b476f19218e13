//! Pausing, resuming and leaving shares, black box: a paused share exchanges nothing and says
//! so in `status`; resumed, it catches up both ways; a share left is forgotten, its files stay,
//! and joining it again starts afresh.

mod support;

use serde_json::Value;
use support::{Api, FolderShare, Node, WAIT, wait_until};

fn share(node: &Node, name: &str) -> Option<Value> {
    node.status()["shares"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
}

fn cli_ok(node: &Node, args: &[&str]) -> String {
    let out = node.cli(args);
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn a_paused_share_exchanges_nothing_and_catches_up_when_resumed() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let folder = FolderShare::among(&[&a, &b]);
    let (on_a, on_b) = (&folder.dirs[0], &folder.dirs[1]);

    let said = cli_ok(&b, &["share", "pause", &folder.name]);
    assert!(said.contains("paused"), "{said}");
    let paused = share(&b, &folder.name).unwrap();
    assert_eq!(paused["state"], "paused", "{paused}");
    assert_eq!(paused["folder"]["state"], "paused", "{paused}");
    assert!(
        paused["reason"]
            .as_str()
            .is_some_and(|r| r.contains("paused by the user")),
        "{paused}"
    );
    let human = cli_ok(&b, &["status"]);
    assert!(human.contains("paused by the user"), "{human}");
    // A sees B leave the share (B no longer answers for it).
    wait_until("A to see B gone from the folder share", WAIT, || {
        !share(&a, &folder.name).unwrap()["members"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| *m == b.peer_id.as_str())
    });

    std::fs::write(on_a.join("from_a.txt"), "a").unwrap();
    std::fs::write(on_b.join("from_b.txt"), "b").unwrap();
    // A recorded its file (scanned), and B's paused folder was not scanned at all.
    wait_until("A to record its new file", WAIT, || {
        share(&a, &folder.name).unwrap()["entries"] == 1
    });
    assert_eq!(share(&b, &folder.name).unwrap()["entries"], 0);
    assert!(!on_b.join("from_a.txt").exists());
    assert!(!on_a.join("from_b.txt").exists());
    // Pausing again changes nothing and says so.
    assert!(cli_ok(&b, &["share", "pause", &folder.name]).contains("already paused"));

    let said = cli_ok(&b, &["share", "resume", &folder.name]);
    assert!(said.contains("resumed"), "{said}");
    folder.wait_identical();
    assert!(on_b.join("from_a.txt").exists() && on_a.join("from_b.txt").exists());
    wait_until("B's share to be in sync again", WAIT, || {
        share(&b, &folder.name).unwrap()["state"] == "in-sync"
    });
    assert!(cli_ok(&b, &["share", "resume", &folder.name]).contains("was not paused"));
}

#[test]
fn two_folders_of_the_same_name_are_shared_under_names_of_their_own() {
    let mut a = Node::init(&[]);
    a.start();
    let base = a.home.parent().unwrap().to_owned();
    let (work, home) = (base.join("work/docs"), base.join("home/docs"));
    cli_ok(&a, &["share", "create", "--folder", work.to_str().unwrap()]);
    let out = a.cli(&["share", "create", "--folder", home.to_str().unwrap()]);
    assert!(!out.status.success(), "the same name twice is refused");
    assert!(String::from_utf8_lossy(&out.stderr).contains("docs"));
    let named = [
        "share",
        "create",
        "--folder",
        home.to_str().unwrap(),
        "--name",
        "home-docs",
    ];
    cli_ok(&a, &named);
    assert_eq!(
        share(&a, "docs").unwrap()["folder"]["path"],
        work.to_str().unwrap()
    );
    assert_eq!(
        share(&a, "home-docs").unwrap()["folder"]["path"],
        home.to_str().unwrap()
    );
    let out = a.cli(&["share", "create", "--records", "r", "--name", "x"]);
    assert!(!out.status.success(), "--name is for folders");
}

#[test]
fn a_share_left_is_forgotten_its_files_stay_and_it_can_be_joined_again() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let folder = FolderShare::among(&[&a, &b]);
    let token = a.create_records_share("notes");
    b.join_records_share(&token, "notes");
    std::fs::write(folder.dirs[0].join("kept.txt"), "kept").unwrap();
    Api::of(&a).put("notes", "k1", "v1");
    folder.wait_identical();
    wait_until("k1 on B", WAIT, || {
        Api::of(&b).list("notes").to_string().contains("k1")
    });

    let said = cli_ok(&b, &["share", "leave", &folder.name]);
    assert!(said.contains("files stay"), "{said}");
    cli_ok(&b, &["share", "leave", "notes"]);
    assert!(share(&b, &folder.name).is_none() && share(&b, "notes").is_none());
    assert_eq!(
        std::fs::read_to_string(folder.dirs[1].join("kept.txt")).unwrap(),
        "kept",
        "leaving keeps the files"
    );
    let out = b.cli(&["kv", "get", "notes", "k1"]);
    assert!(!out.status.success(), "the records share is gone");
    // A's share is untouched, and A sees B gone from both.
    assert!(folder.dirs[0].join("kept.txt").exists());
    wait_until("A to see B leave both shares", WAIT, || {
        ["notes", folder.name.as_str()].iter().all(|name| {
            !share(&a, name).unwrap()["members"]
                .as_array()
                .unwrap()
                .iter()
                .any(|m| *m == b.peer_id.as_str())
        })
    });

    // Joined again with the same name, it starts afresh and gets everything.
    Api::of(&a).put("notes", "k2", "v2");
    b.join_records_share(&token, "notes");
    wait_until("k1 and k2 on B again", WAIT, || {
        let list = Api::of(&b).list("notes").to_string();
        list.contains("k1") && list.contains("k2")
    });
    let out = b.cli(&["share", "leave", "no-such-share"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-share"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
