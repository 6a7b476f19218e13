//! Members that stop answering, black box: a member frozen with SIGSTOP is shown as not
//! connected within seconds, the others keep syncing among themselves meanwhile, and the frozen
//! one catches up once it runs again.

mod support;

use std::time::Instant;

use support::{Mesh, Node, WAIT, wait_until};

/// From the freeze: three times the time after which a link that answers no ping is taken for dead
/// (`net::LIVENESS_TIMEOUT`, 10 s), for a loaded test machine; with libp2p's ping defaults it
/// took a minute.
const DETECTED: std::time::Duration = std::time::Duration::from_secs(30);

fn signal(node: &Node, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &node.pid().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// How `viewer` sees `member` in a share's `member_status`, if it lists it.
fn member_status(viewer: &Node, share: &str, member: &Node) -> Option<serde_json::Value> {
    let status = viewer.status();
    status["shares"]
        .as_array()?
        .iter()
        .find(|s| s["name"] == share)?["member_status"]
        .as_array()?
        .iter()
        .find(|m| m["peer_id"] == member.peer_id.as_str())
        .cloned()
}

#[test]
fn a_frozen_member_is_shown_gone_and_the_others_keep_syncing() {
    let mesh = Mesh::full_static(3);
    mesh.wait_fully_connected();
    let share = mesh.share_folder();
    let (a, c) = (&mesh.nodes[0], &mesh.nodes[2]);
    std::fs::write(share.dirs[0].join("before.txt"), "everyone has this").unwrap();
    share.wait_identical();
    let connected = |viewer: &Node, member: &Node| {
        member_status(viewer, &share.name, member).map(|m| m["connected"] == true)
    };
    assert_eq!(
        connected(a, c),
        Some(true),
        "{:?}",
        member_status(a, &share.name, c)
    );

    signal(c, "-STOP");
    let frozen = Instant::now();
    // Files written on A while C is frozen reach B: chunks asked of C are asked of A once
    // C's requests are found stuck (about 2 s), well before C is found dead (about 10 s).
    for i in 0..20 {
        std::fs::write(
            share.dirs[0].join(format!("during-{i}.bin")),
            support::random_bytes(300_000, i),
        )
        .unwrap();
    }
    let last = share.dirs[1].join("during-19.bin");
    wait_until("B to get A's files while C is frozen", WAIT, || {
        (0..20).all(|i| {
            std::fs::metadata(share.dirs[1].join(format!("during-{i}.bin")))
                .is_ok_and(|m| m.len() == 300_000)
        })
    });
    let synced_in = frozen.elapsed();
    wait_until(
        "A to show C as not connected",
        DETECTED.saturating_sub(frozen.elapsed()),
        || connected(a, c) == Some(false),
    );
    let shown_gone_in = frozen.elapsed();
    let seen = member_status(a, &share.name, c).unwrap();
    assert!(seen["last_seen_ms"].as_u64().is_some(), "{seen}");
    eprintln!(
        "while C was frozen: B had A's files after {synced_in:?}; A showed C gone after {shown_gone_in:?}"
    );
    assert!(last.exists());

    signal(c, "-CONT");
    share.wait_identical();
    wait_until("A to show C connected again", WAIT, || {
        connected(a, c) == Some(true)
    });
}

/// From the freeze of a member nothing is being asked of: an idle link is pinged after 20 s of
/// quiet and taken for dead 8 s after an unanswered ping (`net::QUIET_BEFORE_PING`,
/// `net::PING_ANSWER_WITHIN`), sooner if an anti-entropy round asks the member something;
/// three times that for a loaded test machine.
const IDLE_DETECTED: std::time::Duration = std::time::Duration::from_secs(90);

#[test]
fn an_idle_frozen_member_is_shown_gone_too() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = mesh.share_folder();
    let (a, b) = (&mesh.nodes[0], &mesh.nodes[1]);
    std::fs::write(share.dirs[0].join("before.txt"), "both have this").unwrap();
    share.wait_identical();
    wait_until("A to show B connected", WAIT, || {
        member_status(a, &share.name, b).is_some_and(|m| m["connected"] == true)
    });

    signal(b, "-STOP");
    let frozen = Instant::now();
    wait_until(
        "A to show the idle, frozen B as not connected",
        IDLE_DETECTED,
        || member_status(a, &share.name, b).is_some_and(|m| m["connected"] == false),
    );
    eprintln!("A showed the idle B gone after {:?}", frozen.elapsed());

    signal(b, "-CONT");
    wait_until("A to show B connected again", WAIT, || {
        member_status(a, &share.name, b).is_some_and(|m| m["connected"] == true)
    });
}

/// B is downloading a backlog of files from its only member when that member freezes: once it
/// is taken for gone, B's downloads wait for a member instead of failing in a loop, and resume
/// when it is back. Before, every queued file was tried again every 2 s and failed at once ("no
/// member is connected"), thousands of tries a second while the backlog lasted.
#[test]
fn downloads_without_a_member_wait_for_one_instead_of_retrying_in_a_loop() {
    const FILES: u64 = 12_000;
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let (a, b) = (&mesh.nodes[0], &mesh.nodes[1]);
    // In A's folder before it is shared, so that B learns of many at once.
    let folder_a = a.home.parent().unwrap().join("folder");
    for i in 0..FILES {
        let dir = folder_a.join(format!("d{}", i % 60));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(
            dir.join(format!("f{i}.txt")),
            support::random_bytes(1024, i),
        )
        .unwrap();
    }
    let share = mesh.share_folder();
    wait_until("B to have a backlog to fetch", WAIT, || {
        share.status(b)["needed_files"].as_u64().unwrap_or(0) >= 2000
    });
    signal(a, "-STOP");
    wait_until("B to show A as not connected", DETECTED, || {
        member_status(b, &share.name, a).is_some_and(|m| m["connected"] == false)
    });
    // Evidence that the downloads met the situation: they found no member to fetch from.
    b.wait_for_log(
        "B's downloads to find no member",
        &["no member is connected to fetch from"],
        0,
    );
    // Enough to show: with 2,000 such files B used more than a core.
    let needed = share.status(b)["needed_files"].as_u64().unwrap_or(0);
    assert!(
        needed >= 1000,
        "the backlog was fetched before A froze: {needed} left"
    );
    let before = b.cpu_time().expect("B's CPU time");
    let watched = Instant::now();
    std::thread::sleep(std::time::Duration::from_secs(10));
    let used = b.cpu_time().expect("B's CPU time") - before;
    let wall = watched.elapsed();
    eprintln!("B, {needed} files to fetch and no member: {used:?} of CPU in {wall:?}");
    assert!(
        used < wall / 4,
        "B used {used:?} of CPU in {wall:?} with nobody to fetch from"
    );

    // And it says so.
    let state = |node: &Node| {
        node.status()["shares"]
            .as_array()
            .and_then(|shares| shares.iter().find(|s| s["name"] == share.name.as_str()))
            .map(|s| s["state"].clone())
    };
    assert_eq!(state(b), Some(serde_json::json!("waiting")));

    signal(a, "-CONT");
    wait_until("every file at B once A is back", WAIT * 2, || {
        share.status(b)["needed_files"].as_u64() == Some(0)
            && share.dirs[1]
                .join(format!("d59/f{}.txt", FILES - 1))
                .exists()
    });
}
