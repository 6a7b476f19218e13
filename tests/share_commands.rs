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

/// Files a folder received in one share carry marks naming the versions received there. Shared
/// again in a new share after leaving the first, the folder must offer them to its new members:
/// the first scan must not take them for received in the new share, whose store never held
/// those versions.
#[test]
fn a_folder_shared_anew_after_leaving_offers_the_files_it_had_received() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let first = FolderShare::among(&[&a, &b]);
    std::fs::create_dir_all(first.dirs[0].join("sub")).unwrap();
    std::fs::write(first.dirs[0].join("sub/received.txt"), "from a").unwrap();
    std::fs::write(first.dirs[0].join("top.txt"), "from a too").unwrap();
    first.wait_identical();
    cli_ok(&b, &["share", "leave", &first.name]);
    a.stop();

    let on_b = first.dirs[1].to_str().unwrap();
    let token = cli_ok(
        &b,
        &["share", "create", "--folder", on_b, "--name", "again"],
    );
    let mut c = Node::init(&["--peer", &b.listen_addr()]);
    c.start();
    let on_c = c.home.parent().unwrap().join("again");
    cli_ok(
        &c,
        &[
            "share",
            "join",
            token.trim(),
            "--folder",
            on_c.to_str().unwrap(),
        ],
    );
    let again = FolderShare {
        dirs: vec![first.dirs[1].clone(), on_c],
        name: "again".into(),
    };
    let tree = again.wait_identical();
    assert!(
        tree.contains("sub/received.txt") && tree.contains("top.txt"),
        "{tree:?}"
    );
    let on_b = share(&b, "again").unwrap();
    assert_eq!(on_b["entries"], 3, "{on_b}");
}

/// The same folder left and joined again to the same share: what it received before stays
/// what the members have, with no conflict copy, whether the first scan or the first pull comes
/// first; and it syncs both ways again.
#[test]
fn a_folder_left_and_joined_again_keeps_its_files_without_conflict_copies() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let folder = FolderShare::among(&[&a, &b]);
    for i in 0..20 {
        std::fs::write(folder.dirs[0].join(format!("f{i}.txt")), format!("a {i}")).unwrap();
    }
    folder.wait_identical();
    cli_ok(&b, &["share", "leave", &folder.name]);
    let token = cli_ok(&a, &["share", "token", &folder.name]);
    let token = token.trim();
    let on_b = folder.dirs[1].to_str().unwrap();
    cli_ok(&b, &["share", "join", token, "--folder", on_b]);
    std::fs::write(folder.dirs[0].join("later_a.txt"), "a").unwrap();
    std::fs::write(folder.dirs[1].join("later_b.txt"), "b").unwrap();
    let tree = folder.wait_identical();
    assert!(
        tree.contains("later_a.txt") && tree.contains("later_b.txt"),
        "{tree:?}"
    );
    assert!(
        tree.iter().all(|p| !p.contains(".sync-conflict-")),
        "{tree:?}"
    );
    for node in [&a, &b] {
        wait_until("the share to be in sync on both", WAIT, || {
            share(node, &folder.name).unwrap()["state"] == "in-sync"
        });
    }
}

/// A folder share is refused, with the reason and before anything is created, where it would
/// be, hold or lie inside another folder share's folder (two shares writing the same files,
/// each syncing the other's `.meshsync`), or hold the daemon's home (its keys and database
/// sent to members).
#[test]
fn a_folder_overlapping_another_share_or_the_home_is_refused() {
    let mut a = Node::init(&[]);
    a.start();
    let base = a.home.parent().unwrap().canonicalize().unwrap();
    let docs = base.join("docs");
    cli_ok(&a, &["share", "create", "--folder", docs.to_str().unwrap()]);
    let token = cli_ok(&a, &["share", "token", "docs"]);
    let refused = |args: &[&str], why: &str| {
        let out = a.cli(args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(stderr.contains(why), "{args:?}: {stderr}");
    };
    let inner = docs.join("inner");
    let inner = inner.to_str().unwrap();
    refused(&["share", "create", "--folder", inner], "inside");
    let marker = docs.join(".meshsync/x");
    let marker = marker.to_str().unwrap();
    refused(
        &["share", "create", "--folder", marker, "--name", "x"],
        "inside",
    );
    let again = docs.to_str().unwrap();
    let same = ["share", "create", "--folder", again, "--name", "docs2"];
    refused(&same, "already shared as `docs`");
    let around = ["share", "create", "--records", "r"];
    cli_ok(&a, &around);
    let join = [
        "share",
        "join",
        token.trim(),
        "--folder",
        inner,
        "--name",
        "j",
    ];
    refused(&join, "inside");
    let holds = [
        "share",
        "create",
        "--folder",
        base.to_str().unwrap(),
        "--name",
        "b",
    ];
    refused(&holds, "holds");
    let home = a.home.to_str().unwrap();
    refused(
        &["share", "create", "--folder", home, "--name", "h"],
        "daemon's home",
    );
    let state = a.home.join("state");
    let state = state.to_str().unwrap();
    refused(
        &["share", "create", "--folder", state, "--name", "s"],
        "database",
    );
    assert!(!docs.join("inner").exists() && !docs.join(".meshsync/x").exists());
    let beside = base.join("photos");
    cli_ok(
        &a,
        &["share", "create", "--folder", beside.to_str().unwrap()],
    );
    let names: Vec<String> = a.status()["shares"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["docs", "photos", "r"], "only what was accepted");
}

/// Two daemons (two homes) never sync one folder at once: the folder's lock refuses a second
/// share there while a daemon holds it, and a daemon that finds the lock taken when it starts
/// pauses the folder, says why, writes nothing, and takes over once the other stops.
#[test]
fn a_folder_another_daemon_syncs_is_refused_or_paused_until_it_stops() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&[]);
    b.start();
    let dir = a.home.parent().unwrap().join("shared-by-mistake");
    let path = dir.to_str().unwrap();
    cli_ok(&a, &["share", "create", "--folder", path, "--name", "f"]);
    let out = b.cli(&["share", "create", "--folder", path, "--name", "f"]);
    assert!(!out.status.success(), "a second daemon was let in");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("another meshsync daemon"), "{said}");

    a.stop();
    cli_ok(&b, &["share", "create", "--folder", path, "--name", "f"]);
    a.start();
    wait_until("A to pause the folder B holds", WAIT, || {
        share(&a, "f").is_some_and(|s| {
            s["folder"]["state"] == "paused"
                && s["reason"]
                    .as_str()
                    .is_some_and(|r| r.contains("another meshsync daemon"))
        })
    });
    std::fs::write(dir.join("new.txt"), "n").unwrap();
    wait_until("B to record the new file", WAIT, || {
        share(&b, "f").unwrap()["entries"] == 1
    });
    let on_a = share(&a, "f").unwrap();
    assert_eq!(
        on_a["entries"], 0,
        "A took nothing while B held the folder: {on_a}"
    );
    assert_eq!(on_a["folder"]["state"], "paused", "{on_a}");

    b.stop();
    wait_until(
        "A to take the folder over and record the file",
        WAIT,
        || share(&a, "f").is_some_and(|s| s["entries"] == 1 && s["folder"]["state"] != "paused"),
    );
}
