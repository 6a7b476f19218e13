//! What `status` says a share is doing, black box: every share, records or folder, has `state`,
//! `reason` (null when there is none) and `last_error` (null or `{message, at}`), and they tell
//! the truth: waiting while no member is reachable, in-sync once everything is exchanged,
//! paused when the folder is gone.

mod support;

use serde_json::Value;
use support::{Api, FolderShare, LineReader, Mount, Node, WAIT, wait_until};

/// The share named `name` in `node`'s `status --json`.
fn share(node: &Node, name: &str) -> Value {
    node.status()["shares"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .cloned()
        .unwrap_or_else(|| panic!("no share {name}"))
}

#[test]
fn a_records_share_says_waiting_in_sync_and_waiting_again_when_its_member_goes() {
    let mut a = Node::init(&[]);
    a.start();
    let token = a.create_records_share("notes");
    let alone = share(&a, "notes");
    assert_eq!(alone["state"], "waiting", "{alone}");
    assert!(
        alone["reason"]
            .as_str()
            .is_some_and(|r| r.contains("no other member")),
        "{alone}"
    );
    assert!(alone["last_error"].is_null(), "present and null: {alone}");

    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    b.join_records_share(&token, "notes");
    Api::of(&a).put("notes", "k", "v");
    wait_until("both to be in sync", WAIT, || {
        let (on_a, on_b) = (share(&a, "notes"), share(&b, "notes"));
        on_a["state"] == "in-sync"
            && on_b["state"] == "in-sync"
            && on_a["root"] == on_b["root"]
            && on_a["reason"].is_null()
            && on_a["member_status"][0]["completion"] == 100.0
    });
    let member = &share(&a, "notes")["member_status"][0];
    assert_eq!(member["needed_files"], 0, "{member}");
    assert_eq!(member["needed_bytes"], 0, "{member}");
    let human = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(
        human.contains("in-sync (1 of 1 members connected)"),
        "{human}"
    );
    assert!(
        human.starts_with("notes: in sync with 1 of 1 member\n"),
        "the answer comes first: {human}"
    );

    assert!(b.stop());
    wait_until("A to say it is waiting for a member", WAIT, || {
        share(&a, "notes")["state"] == "waiting"
    });
    let waiting = share(&a, "notes");
    assert!(
        waiting["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("no member reachable since 20")),
        "{waiting}"
    );
    let human = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(
        human.contains("waiting: no member reachable since"),
        "{human}"
    );
    assert!(
        human.starts_with("notes: waiting — no member reachable since 20"),
        "{human}"
    );
}

#[test]
fn a_folder_share_says_in_sync_then_paused_with_the_reason_when_its_folder_goes() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let folder = FolderShare::among(&[&a, &b]);
    std::fs::write(folder.dirs[0].join("hello.txt"), "hi").unwrap();
    folder.wait_identical();
    wait_until("both folders to say in-sync", WAIT, || {
        [&a, &b]
            .iter()
            .all(|n| share(n, &folder.name)["state"] == "in-sync")
    });
    let status = share(&a, &folder.name);
    assert!(status["last_error"].is_null(), "{status}");

    std::fs::remove_dir_all(&folder.dirs[1]).unwrap();
    wait_until("B to say its folder is paused", WAIT, || {
        share(&b, &folder.name)["state"] == "paused"
    });
    let paused = share(&b, &folder.name);
    assert!(paused["reason"].as_str().is_some(), "{paused}");
    // Nothing of it was sent as deletes: A keeps its file.
    assert!(folder.dirs[0].join("hello.txt").exists());
}

#[test]
fn metrics_parse_as_prometheus_text_and_agree_with_status() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let token = a.create_records_share("notes");
    b.join_records_share(&token, "notes");
    Api::of(&a).put("notes", "k", "v");
    wait_until("A to be in sync, and to know B is", WAIT, || {
        let on_a = share(&a, "notes");
        on_a["state"] == "in-sync"
            && share(&b, "notes")["entries"] == 1
            && on_a["member_status"][0]["completion"] == 100.0
    });

    // Without the token: refused like the rest of the API.
    let anonymous: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .build()
        .into();
    let refused = anonymous
        .get(format!("http://{}/metrics", a.api_addr()))
        .call()
        .unwrap();
    assert_eq!(refused.status().as_u16(), 401);

    let (code, body) = Api::of(&a).get("/metrics");
    assert_eq!(code, 200);
    let text = body.as_str().expect("text, not JSON").to_owned();
    let lines = text.lines().map(|l| Ok(l.to_owned()));
    let scrape = prometheus_parse::Scrape::parse(lines).expect("Prometheus text format");
    assert!(!scrape.samples.is_empty());
    for sample in &scrape.samples {
        assert!(sample.metric.starts_with("meshsync_"), "{}", sample.metric);
    }
    let value = |metric: &str, labels: &[(&str, &str)]| -> f64 {
        let sample = scrape
            .samples
            .iter()
            .find(|s| s.metric == metric && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .unwrap_or_else(|| panic!("no {metric} {labels:?} in\n{text}"));
        match sample.value {
            prometheus_parse::Value::Counter(v)
            | prometheus_parse::Value::Gauge(v)
            | prometheus_parse::Value::Untyped(v) => v,
            ref other => panic!("{metric}: {other:?}"),
        }
    };
    assert_eq!(value("meshsync_peers_connected", &[]), 1.0);
    let in_sync = [("share", "notes"), ("state", "in-sync")];
    assert_eq!(value("meshsync_share_state", &in_sync), 1.0);
    let waiting = [("share", "notes"), ("state", "waiting")];
    assert_eq!(value("meshsync_share_state", &waiting), 0.0);
    assert_eq!(value("meshsync_share_entries", &[("share", "notes")]), 1.0);
    assert!(value("meshsync_share_sent_bytes_total", &[("share", "notes")]) > 0.0);
    assert!(value("meshsync_resident_memory_bytes", &[]) > 1e6);
    assert_eq!(value("meshsync_change_notice_backlog_limit", &[]), 8192.0);
    assert_eq!(value("meshsync_merges_waiting", &[]), 0.0);
    assert_eq!(value("meshsync_merges_waited_total", &[]), 0.0);
    let b_complete = [("share", "notes"), ("peer", b.peer_id.as_str())];
    assert_eq!(
        value("meshsync_share_member_completion_percent", &b_complete),
        100.0
    );
    // libp2p's own metrics, under our prefix: B's connection came in (on loopback TCP).
    let incoming = scrape
        .samples
        .iter()
        .filter(|s| s.metric == "meshsync_libp2p_swarm_connections_incoming_total")
        .map(|s| match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => 0.0,
        })
        .sum::<f64>();
    assert!(incoming >= 1.0, "{text}");
    assert_eq!(text.matches("# EOF").count(), 1, "one text, one end");
}

#[test]
fn a_folder_on_a_read_only_file_system_says_error_with_the_reason_and_recovers() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let disk = Mount::tmpfs(&b.home.parent().unwrap().join("disk"), "16m");
    let dirs = vec![
        a.home.parent().unwrap().join("folder"),
        disk.path().join("folder"),
    ];
    let folder = FolderShare::among_at(&[&a, &b], dirs);
    std::fs::write(folder.dirs[0].join("one.txt"), "1").unwrap();
    folder.wait_identical();
    // How far A sees B: everything, once B has said so.
    let b_id = b.peer_id.clone();
    let b_on_a = |a: &Node| {
        share(a, &folder.name)["member_status"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["peer_id"] == b_id.as_str())
            .cloned()
            .unwrap_or_default()
    };
    wait_until("A to see B complete", WAIT, || {
        b_on_a(&a)["completion"] == 100.0
    });
    assert_eq!(b_on_a(&a)["needed_files"], 0);

    disk.remount("ro");
    std::fs::write(folder.dirs[0].join("two.txt"), "22").unwrap();
    wait_until("B to say its folder cannot be written", WAIT, || {
        let status = share(&b, &folder.name);
        status["state"] == "error"
            && status["reason"]
                .as_str()
                .is_some_and(|r| r.contains("read-only file system"))
    });
    let status = share(&b, &folder.name);
    assert!(status["last_error"]["at"].as_str().is_some(), "{status}");
    let human = String::from_utf8(b.cli(&["status"]).stdout).unwrap();
    assert!(human.contains("read-only file system"), "{human}");
    assert!(!folder.dirs[1].join("two.txt").exists());
    // A sees that B lacks the file it cannot write.
    wait_until("A to see B short of one file", WAIT, || {
        let b = b_on_a(&a);
        b["needed_files"] == 1 && b["completion"].as_f64().is_some_and(|c| c < 100.0)
    });
    let human = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(
        human.contains(" at ") && human.contains("1 file to go"),
        "{human}"
    );

    disk.remount("rw");
    folder.wait_identical();
    wait_until("B to be in sync again", WAIT, || {
        share(&b, &folder.name)["state"] == "in-sync"
    });
    wait_until("A to see B complete again", WAIT, || {
        let b = b_on_a(&a);
        b["completion"] == 100.0 && b["needed_files"] == 0 && b["needed_bytes"] == 0
    });
    assert!(b.stop());
}

/// A folder whose file system runs out of inodes while it has bytes to spare: found by
/// `bench-scale.sh` at 10^6 files on a 20 GiB ext4 (1.3 million inodes for two trees): the
/// receiver read plenty of free bytes before each round of downloads, took the disk for
/// recovered, started them all again and each failed: 1.3 million "disk full" warnings and as
/// many "space available again" lines in 8 minutes (360 MB of log), while `status` said
/// `syncing`. It must say the disk is full, once, keep saying it, and resume by itself.
#[test]
fn a_folder_out_of_inodes_says_disk_full_once_and_resumes_when_there_are_inodes_again() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    // Room for ~30 files and directories: the folder, its marker directory, and a few files.
    let disk = Mount::tmpfs_with_inodes(&b.home.parent().unwrap().join("disk"), "64m", 32);
    let dirs = vec![
        a.home.parent().unwrap().join("folder"),
        disk.path().join("folder"),
    ];
    let folder = FolderShare::among_at(&[&a, &b], dirs);
    for i in 0..80 {
        std::fs::write(folder.dirs[0].join(format!("f{i:02}.txt")), format!("{i}")).unwrap();
    }
    let full = |b: &Node| {
        let status = share(b, &folder.name);
        status["state"] == "error"
            && status["reason"]
                .as_str()
                .is_some_and(|r| r.contains("disk full"))
    };
    wait_until("B to say its disk is full", WAIT, || full(&b));
    // Evidence that B looked at its disk again meanwhile (where it used to find it
    // "available again"), twice.
    let checked = |b: &Node| share(b, &folder.name)["folder"]["disk_checked_at"].clone();
    for _ in 0..2 {
        let before = checked(&b);
        assert!(before.is_string(), "{}", share(&b, &folder.name));
        wait_until("B to look at its disk again", WAIT, || {
            checked(&b) != before
        });
    }
    assert!(full(&b), "{}", share(&b, &folder.name));
    let human = String::from_utf8(b.cli(&["status"]).stdout).unwrap();
    assert!(human.contains("disk full"), "{human}");
    // The files that wait are not written here, and not deletions either.
    assert!(human.contains("deleted or not here yet"), "{human}");
    let warnings = b.log_lines_with(&[" WARN ", "disk full"]);
    assert_eq!(warnings, 1, "said once for the condition:\n{}", b.log());
    assert_eq!(b.log_lines_with(&["available again"]), 0, "{}", b.log());

    disk.remount("nr_inodes=4096");
    folder.wait_identical();
    wait_until("B to be in sync again", WAIT, || {
        share(&b, &folder.name)["state"] == "in-sync"
    });
    assert_eq!(b.log_lines_with(&[" WARN ", "disk full"]), 1, "{}", b.log());
    let human = String::from_utf8(b.cli(&["status"]).stdout).unwrap();
    assert!(human.contains(" 0 deleted,"), "{human}");
    assert!(b.stop());
    assert!(a.stop());
}

/// The log a user gets (no `RUST_LOG`) through an ordinary session — start, join, sync records
/// and files, a peer leaving — has no warnings and no colour codes (it is not a terminal).
#[test]
fn an_ordinary_session_logs_no_warnings_and_no_colour_codes() {
    let mut a = Node::init(&[]);
    a.start_with_default_log();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start_with_default_log();
    let folder = FolderShare::among(&[&a, &b]);
    let token = a.create_records_share("notes");
    b.join_records_share(&token, "notes");
    Api::of(&a).put("notes", "k", "v");
    std::fs::write(folder.dirs[0].join("f.txt"), "f").unwrap();
    folder.wait_identical();
    wait_until("the record on B", WAIT, || {
        Api::of(&b).list("notes").to_string().contains("\"k\"")
    });
    assert!(b.stop());
    wait_until("A to see B gone", WAIT, || {
        share(&a, "notes")["state"] == "waiting"
    });
    assert!(a.stop());
    for (who, log) in [("A", a.log()), ("B", b.log())] {
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains(" WARN ")).collect();
        assert!(
            warnings.is_empty(),
            "{who} warned:\n{}",
            warnings.join("\n")
        );
        assert!(
            !log.contains('\u{1b}'),
            "{who}'s log has colour codes:\n{log}"
        );
        assert!(
            log.contains(" INFO "),
            "{who} logged nothing at all:\n{log}"
        );
    }
}

/// A folder share counts its files, directories and deleted entries apart (`entries` counts
/// them all).
#[test]
fn a_folder_share_counts_files_directories_and_deleted_entries_apart() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let folder = FolderShare::among(&[&a, &b]);
    let dir = &folder.dirs[0];
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    for name in ["one", "two", "sub/three", "gone"] {
        std::fs::write(dir.join(name), name).unwrap();
    }
    folder.wait_identical();
    std::fs::remove_file(dir.join("gone")).unwrap();
    folder.wait_identical();
    for node in [&a, &b] {
        wait_until("the counts to settle", WAIT, || {
            let s = share(node, &folder.name);
            s["files"] == 3 && s["directories"] == 1 && s["deleted"] == 1 && s["entries"] == 5
        });
    }
    let status = share(&b, &folder.name);
    assert_eq!(status["folder"]["files"], 3, "{status}");
}

/// `status --watch` into a pipe prints each share's line when it changes, with the time: the
/// share waiting alone, then in sync once a member joined; a line that did not change is not
/// printed again.
#[test]
fn status_watch_prints_each_change_once_with_the_time() {
    let mut a = Node::init(&[]);
    a.start();
    let token = a.create_records_share("notes");
    let watch = LineReader::start(&a, &["status", "--watch", "--interval", "0.2"]);
    wait_until("the watch to say the share waits", WAIT, || {
        watch.text().contains("notes: waiting")
    });

    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    b.join_records_share(&token, "notes");
    Api::of(&a).put("notes", "k", "v");
    wait_until("the watch to say the share is in sync", WAIT, || {
        watch.text().contains("notes: in sync with 1 of 1 member")
    });
    // B's own progress line shows too, complete.
    wait_until("the watch to show B complete", WAIT, || {
        watch.text().contains(": 100.0 %")
    });
    let lines = watch.lines();
    for line in &lines {
        let (time, _) = line.split_once(' ').unwrap();
        assert!(time.starts_with("20") && time.ends_with('Z'), "{line}");
    }
    // Several polls ran (0.2 s apart) while waiting, yet each line is new.
    let shares: Vec<&str> = lines
        .iter()
        .map(|l| l.split_once(' ').unwrap().1)
        .filter(|l| l.starts_with("notes:"))
        .collect();
    for pair in shares.windows(2) {
        assert_ne!(pair[0], pair[1], "printed twice: {lines:?}");
    }

    let refused = a.cli(&["status", "--watch", "--interval", "0"]);
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("--interval"),
        "{refused:?}"
    );
}

/// A folder with more directories than the kernel lets the daemon watch (its user namespace's
/// `max_inotify_watches`, set low; no effect outside it): `status` says it is not watched and
/// why, the log says it once, changes still sync by rescans, and once the limit is raised the
/// folder is watched again by itself.
#[test]
fn a_folder_over_the_inotify_watch_limit_says_so_syncs_by_rescans_and_recovers() {
    let in_userns = std::process::Command::new("unshare")
        .args(["--user", "--map-root-user", "true"])
        .status()
        .is_ok_and(|s| s.success());
    if !in_userns {
        assert!(
            std::env::var_os("MESHSYNC_REQUIRE_NETNS").is_none(),
            "user namespaces are required here"
        );
        eprintln!("skipped: cannot create a user namespace");
        return;
    }
    const LIMIT: &str = "40";
    let wrapper: Vec<String> = [
        "unshare",
        "--user",
        "--map-root-user",
        "sh",
        "-c",
        &format!("echo {LIMIT} > /proc/sys/user/max_inotify_watches && exec \"$0\" \"$@\""),
    ]
    .map(str::to_owned)
    .to_vec();
    let mut a = Node::init_in(wrapper, &["--listen", "/ip4/127.0.0.1/tcp/0", "--no-mdns"]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let share = FolderShare::among(&[&a, &b]);
    let (dir_a, dir_b) = (&share.dirs[0], &share.dirs[1]);
    let folder = |node: &Node| share.status(node);
    wait_until("A's folder to be watched", WAIT, || {
        folder(&a)["watching"] == true && folder(&a)["watch_problem"].is_null()
    });

    // More directories than the limit allows.
    for i in 0..60 {
        let sub = dir_a.join(format!("d{i:02}"));
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("f.txt"), format!("file {i}")).unwrap();
    }
    wait_until("A to say it is not watched, and why", WAIT, || {
        let f = folder(&a);
        f["watching"] == false
            && f["watch_problem"]
                .as_str()
                .is_some_and(|p| p.contains("inotify watch limit") && p.contains(LIMIT))
    });
    let text = String::from_utf8(a.cli(&["status"]).stdout).unwrap();
    assert!(text.contains("not watched"), "{text}");
    wait_until("every file at B (a full rescan found them)", WAIT, || {
        (0..60).all(|i| dir_b.join(format!("d{i:02}/f.txt")).exists())
    });

    // Written after that rescan: only the next one finds it (it tries to watch first, and
    // fails again the same way).
    std::fs::write(dir_a.join("d07/later.txt"), "later").unwrap();
    wait_until("later.txt at B", WAIT, || {
        dir_b.join("d07/later.txt").exists()
    });
    assert_eq!(
        a.log_lines_with(&["inotify watch limit"]),
        1,
        "said once, not at every try:\n{}",
        a.log()
    );

    // The user raises the limit in the daemon's namespace: watched again at the next try.
    let pid = a.pid().unwrap().to_string();
    let raised = std::process::Command::new("nsenter")
        .args(["--user", "--target", &pid, "sh", "-c"])
        .arg("echo 100000 > /proc/sys/user/max_inotify_watches")
        .status()
        .unwrap();
    assert!(raised.success());
    wait_until("A to be watched again", WAIT * 2, || {
        folder(&a)["watching"] == true && folder(&a)["watch_problem"].is_null()
    });
    a.wait_for_log("the recovery said", &["watched again"], 0);
    // And a change is seen as it happens again (well before the next full rescan).
    std::fs::write(dir_a.join("d59/now.txt"), "now").unwrap();
    wait_until("now.txt at B", WAIT, || dir_b.join("d59/now.txt").exists());
    a.stop();
    b.stop();
}

/// The disk under a daemon's store fills up: every share says so (state `error`, the reason
/// naming the store and the cause), the condition is logged once, writes through the API get a
/// clear error, and once space is freed the daemon reopens its store and catches up by itself.
#[test]
fn a_full_disk_under_the_store_says_error_once_and_recovers_by_itself() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    let disk = Mount::tmpfs(&b.home.join("state"), "64m");
    b.start();
    let token = a.create_records_share("notes");
    b.join_records_share(&token, "notes");
    let folder = FolderShare::among(&[&a, &b]);
    let (api_a, api_b) = (Api::of(&a), Api::of(&b));
    api_a.put("notes", "first", "1");
    wait_until("B to get the first record", WAIT, || {
        b.kv_list_json("notes").to_string().contains("first")
    });
    std::fs::write(folder.dirs[0].join("one.txt"), "1").unwrap();
    folder.wait_identical();

    // Fill what the store's file system has left.
    let junk = disk.path().join("junk");
    {
        use std::io::Write;
        let mut file = std::fs::File::create(&junk).unwrap();
        let block = vec![7u8; 64 * 1024];
        while file.write_all(&block).is_ok() {}
        let _ = file.sync_all();
    }
    let warnings_before = b.log_lines_with(&["WARN"]);
    // A's records go on until one of B's commits needs space it does not have.
    let value = "x".repeat(16 * 1024);
    let mut sent = 0;
    wait_until("B to say its store cannot be written", WAIT, || {
        api_a.put("notes", &format!("full{sent}"), &value);
        sent += 1;
        let status = share(&b, "notes");
        status["state"] == "error"
            && status["reason"]
                .as_str()
                .is_some_and(|r| r.contains("store") && r.contains("No space left"))
    });
    std::fs::write(folder.dirs[0].join("two.txt"), "22").unwrap();
    let on_folder = share(&b, &folder.name);
    assert_eq!(
        on_folder["state"], "error",
        "every share says it: {on_folder}"
    );
    let human = String::from_utf8(b.cli(&["status"]).stdout).unwrap();
    assert!(human.contains("No space left"), "{human}");
    let (code, body) = api_b.post(
        "/v1/kv/notes/put",
        &serde_json::json!({"key": "on-b", "value": "1"}),
    );
    assert!(
        code >= 500 && body.to_string().contains("store"),
        "a write on B gets a clear error: {code} {body}"
    );

    let listing = b.cli(&["kv", "list", "notes"]);
    assert!(
        !listing.status.success()
            && String::from_utf8_lossy(&listing.stderr).contains("No space left"),
        "reads say why while the store is closed: {listing:?}"
    );

    std::fs::remove_file(&junk).unwrap();
    let last = format!("full{}", sent - 1);
    wait_until("B to catch up by itself", WAIT, || {
        let listing = b.cli(&["kv", "list", "notes", "--json"]);
        listing.status.success() && String::from_utf8_lossy(&listing.stdout).contains(&last)
    });
    folder.wait_identical();
    wait_until("B to be in sync again", WAIT, || {
        share(&b, "notes")["state"] == "in-sync"
    });
    api_b.put("notes", "on-b", "1");
    wait_until("B's write to reach A", WAIT, || {
        a.kv_list_json("notes").to_string().contains("on-b")
    });
    let warnings: Vec<String> = b
        .log()
        .lines()
        .filter(|l| l.contains("WARN"))
        .skip(warnings_before)
        .map(str::to_owned)
        .collect();
    assert_eq!(
        warnings.len(),
        1,
        "the full disk is logged once, not once per write: {warnings:#?}"
    );
    assert!(b.stop());
    assert!(a.stop());
    drop(disk);
}

/// Shares a new folder of `dirs` directories of `per_dir` empty files each from `node`;
/// returns how many files.
fn share_empty_files(node: &Node, dirs: usize, per_dir: usize) -> u64 {
    let dir = node.home.parent().unwrap().join("folder");
    for d in 0..dirs {
        let sub = dir.join(format!("d{d:03}"));
        std::fs::create_dir_all(&sub).unwrap();
        for f in 0..per_dir {
            std::fs::write(sub.join(format!("f{f:03}")), b"").unwrap();
        }
    }
    let out = node.cli(&["share", "create", "--folder", dir.to_str().unwrap()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (dirs * per_dir) as u64
}

/// The first share's status, from the API.
fn first_share(node: &Node) -> Value {
    let (code, status) = Api::of(node).get("/v1/status");
    assert_eq!(code, 200, "{status}");
    status["shares"][0].clone()
}

fn folder_status(node: &Node) -> Value {
    first_share(node)["folder"].clone()
}

/// A first index of a big tree is written in batches for a while after its walk: `status`
/// answers meanwhile, saying `scanning` with the entries written so far (it used to wait until
/// every entry was written: with 10^6 files, ~110 s of CLI timeouts). A stop meanwhile is
/// clean and loses nothing: the next start indexes the rest, without reading again what was
/// written before the stop.
#[test]
fn status_answers_while_a_big_first_index_is_written_and_a_stop_meanwhile_loses_nothing() {
    let mut a = Node::init(&[]);
    a.start();
    let total = share_empty_files(&a, 200, 200);
    wait_until(
        "status while the first half of the index is written",
        WAIT * 4,
        || {
            let folder = folder_status(&a);
            let files = folder["files"].as_u64().unwrap_or(0);
            assert!(
                files < total / 2,
                "status never answered while the index was being written: {folder}"
            );
            if files > 0 {
                assert_eq!(folder["state"], "scanning", "{folder}");
            }
            files > 0
        },
    );
    assert!(a.stop(), "the daemon did not stop cleanly:\n{}", a.log());
    a.start();
    let mut folder = folder_status(&a);
    wait_until(
        "every file to be indexed after the restart",
        WAIT * 4,
        || {
            folder = folder_status(&a);
            folder["files"] == total && folder["state"] == "idle"
        },
    );
    let read_again = folder["hashed_files"].as_u64().unwrap();
    assert!(
        read_again > 0 && read_again < total,
        "after a stop mid-index, {read_again} of {total} files read again: {folder}"
    );
}

/// A resume asked while a first index is written waits for the index (the folder acts on it
/// from its loop), but `status` does not wait behind it: it used to, the kept resume stopping
/// the folder from reading its commands until the last batch was written.
#[test]
fn status_answers_while_a_resume_waits_for_a_big_first_index() {
    let mut a = Node::init(&[]);
    a.start();
    let total = share_empty_files(&a, 200, 200);
    wait_until("the first batch of the index", WAIT * 4, || {
        folder_status(&a)["files"].as_u64().unwrap_or(0) > 0
    });
    let share = first_share(&a)["name"].as_str().unwrap().to_owned();
    let api = Api::of(&a);
    let resume = std::thread::spawn(move || {
        api.post(
            &format!("/v1/shares/{share}/resume"),
            &serde_json::json!({"accept_deletes": true}),
        )
    });
    // Answers that saw more files each time: batches were written after the resume was sent,
    // so it reached the folder, and status was answered behind it.
    let mut seen = std::collections::BTreeSet::new();
    wait_until("status to answer while the resume waits", WAIT * 4, || {
        let folder = folder_status(&a);
        assert!(
            !resume.is_finished(),
            "the resume was answered before status answered three times behind it \
             (files seen: {seen:?}): {folder}"
        );
        let files = folder["files"].as_u64().unwrap_or(0);
        assert!(files < total, "the index ended first: {folder}");
        assert_eq!(folder["state"], "scanning", "{folder}");
        seen.insert(files);
        seen.len() >= 3
    });
    let (code, answer) = resume.join().unwrap();
    assert!(
        (400..500).contains(&code),
        "a resume of a share not held is refused: {code} {answer}"
    );
    wait_until("every file to be indexed", WAIT * 4, || {
        let folder = folder_status(&a);
        folder["files"] == total && folder["state"] == "idle"
    });
}

/// At start a folder reads every synced row to count its files (seconds at 10^6): `status`
/// answers meanwhile, saying `scanning` and `loaded: false`, with the share's counts `null`
/// rather than zeros (which would make every entry look deleted); then the counts. It used to
/// wait until every row was read.
#[test]
fn status_answers_while_a_restarted_folder_reads_what_was_synced() {
    let mut a = Node::init(&[]);
    a.start();
    let total = share_empty_files(&a, 300, 200);
    wait_until("every file to be indexed", WAIT * 4, || {
        let folder = folder_status(&a);
        folder["files"] == total && folder["state"] == "idle"
    });
    assert!(a.stop(), "the daemon did not stop cleanly:\n{}", a.log());
    a.start();
    let mut while_loading = Vec::new();
    wait_until("the folder to read what was synced", WAIT, || {
        let share = first_share(&a);
        if share["folder"]["loaded"] == false {
            while_loading.push(share);
            return false;
        }
        share["folder"]["loaded"] == true
    });
    assert!(
        !while_loading.is_empty(),
        "status never answered while the folder read what was synced"
    );
    for share in &while_loading {
        assert_eq!(share["folder"]["state"], "scanning", "{share}");
        assert!(
            share["files"].is_null() && share["deleted"].is_null(),
            "{share}"
        );
    }
    wait_until("the counts", WAIT, || {
        let share = first_share(&a);
        share["files"] == total && share["deleted"] == 0
    });
}
