//! Folder sync through real daemons: the everyday operations, conflicts, deltas, crashes and the
//! safety rules.

mod support;

use std::fs;
use std::time::Duration;

use support::{
    FolderShare, Mesh, Node, WAIT, copy_dir, now_ms, random_bytes, session_succeeded, tree,
    wait_until,
};

#[test]
fn create_modify_delete_rename_and_move_across_three_peers() {
    let mesh = Mesh::full_static(3);
    mesh.wait_fully_connected();
    let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    let [a, b, c] = [&share.dirs[0], &share.dirs[1], &share.dirs[2]];

    fs::write(a.join("hello.txt"), "hello").unwrap();
    fs::create_dir_all(a.join("docs/deep")).unwrap();
    fs::write(a.join("docs/deep/notes.md"), "# notes").unwrap();
    fs::create_dir_all(a.join("empty")).unwrap();
    std::os::unix::fs::symlink("hello.txt", a.join("link")).unwrap();
    let paths = share.wait_identical();
    for p in ["hello.txt", "docs/deep/notes.md", "empty", "link"] {
        assert!(paths.contains(p), "{p} synced: {paths:?}");
    }
    assert!(
        fs::symlink_metadata(c.join("link"))
            .unwrap()
            .file_type()
            .is_symlink()
    );

    // Modify on B, delete on C, rename on A, move a directory on B.
    fs::write(b.join("hello.txt"), "hello, world").unwrap();
    share.wait_identical();
    assert_eq!(
        fs::read_to_string(c.join("hello.txt")).unwrap(),
        "hello, world"
    );
    fs::remove_file(c.join("link")).unwrap();
    share.wait_identical();
    assert!(!a.join("link").exists() && fs::symlink_metadata(a.join("link")).is_err());
    fs::rename(a.join("hello.txt"), a.join("renamed.txt")).unwrap();
    share.wait_identical();
    assert!(!b.join("hello.txt").exists());
    assert_eq!(
        fs::read_to_string(b.join("renamed.txt")).unwrap(),
        "hello, world"
    );
    fs::rename(b.join("docs"), b.join("moved")).unwrap();
    let paths = share.wait_identical();
    assert!(
        paths.contains("moved/deep/notes.md") && !paths.contains("docs"),
        "{paths:?}"
    );

    // Mode bits travel too.
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(a.join("renamed.txt"), fs::Permissions::from_mode(0o600)).unwrap();
    wait_until("mode to sync", WAIT, || {
        fs::metadata(c.join("renamed.txt"))
            .map(|m| m.permissions().mode() & 0o777)
            .ok()
            == Some(0o600)
    });
}

#[test]
fn a_thousand_file_tree_syncs() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    for d in 0..20 {
        let dir = share.dirs[0].join(format!("d{d:02}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..50 {
            fs::write(
                dir.join(format!("f{f:02}.txt")),
                random_bytes(1000 + f * 10, (d * 100 + f) as u64),
            )
            .unwrap();
        }
    }
    let paths = share.wait_identical();
    assert_eq!(paths.len(), 1020);
}

/// Files rewritten on the sender while the receiver downloads them all end at their last
/// version. The receiver does not read an entry back after writing it: a newer version's change
/// notice queues the path again, and the queue starts it once the running download ends.
#[test]
fn files_rewritten_while_the_receiver_downloads_them_end_at_their_last_version() {
    const DIRS: usize = 20;
    const FILES: usize = 200;
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    let write_all = |version: usize| {
        for d in 0..DIRS {
            let dir = share.dirs[0].join(format!("d{d:02}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..FILES {
                let seed = (version * DIRS * FILES + d * FILES + f) as u64;
                fs::write(dir.join(format!("f{f:03}")), random_bytes(8192, seed)).unwrap();
            }
        }
    };
    let received = || {
        (0..DIRS)
            .map(|d| {
                fs::read_dir(share.dirs[1].join(format!("d{d:02}")))
                    .map(|entries| {
                        entries
                            .flatten()
                            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
                            .count()
                    })
                    .unwrap_or(0)
            })
            .sum::<usize>()
    };
    write_all(1);
    wait_until("the receiver to write its first files", WAIT, || {
        received() > 0
    });
    let before_rewrite = received();
    write_all(2);
    assert!(
        before_rewrite < DIRS * FILES,
        "the receiver had every file before the rewrite: the test shows nothing"
    );
    let paths = share.wait_identical();
    assert_eq!(paths.len(), DIRS * FILES + DIRS);
    for d in 0..DIRS {
        for f in 0..FILES {
            let seed = (2 * DIRS * FILES + d * FILES + f) as u64;
            let path = share.dirs[1].join(format!("d{d:02}/f{f:03}"));
            assert!(
                fs::read(&path).unwrap() == random_bytes(8192, seed),
                "{} is not at its last version",
                path.display()
            );
        }
    }
}

/// A folder's first scan of more files than it keeps in memory (16,384: the rest go to a
/// temporary file), received by a peer that queues more than it keeps by path (8,192: the rest
/// wait as digests and are found again in a listing of its store). Then a file moved among
/// thousands of new ones: its old path is deleted only once every creation is done.
#[test]
fn a_big_first_scan_and_a_big_download_queue_lose_nothing() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let folder_a = mesh.nodes[0].home.parent().unwrap().join("folder");
    let write_tree = |root: &std::path::Path, prefix: &str, dirs: usize| {
        for d in 0..dirs {
            let dir = root.join(format!("{prefix}{d:03}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..100 {
                fs::write(dir.join(format!("f{f:02}")), format!("{prefix}{d}/{f}")).unwrap();
            }
        }
    };
    write_tree(&folder_a, "d", 170);
    fs::write(folder_a.join("old.txt"), b"moved among many").unwrap();
    let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    let paths = share.wait_identical_within(Duration::from_secs(600));
    assert_eq!(paths.len(), 170 * 100 + 170 + 1);
    let spilled = nodes[0]
        .log()
        .lines()
        .filter(|l| l.contains("scanned folder") && !l.contains("spilled=0 "))
        .count();
    assert!(
        spilled > 0,
        "the first scan spilled nothing: the test shows nothing"
    );

    write_tree(&share.dirs[0], "e", 100);
    fs::rename(share.dirs[0].join("old.txt"), share.dirs[0].join("new.txt")).unwrap();
    let paths = share.wait_identical_within(Duration::from_secs(600));
    assert_eq!(paths.len(), 270 * 100 + 270 + 1);
    assert!(paths.contains("new.txt") && !paths.contains("old.txt"));
    assert!(
        nodes[1].log_lines_with(&["listed from the store"]) > 0,
        "the receiver's queue never went past its window: the test shows nothing"
    );
}

#[test]
fn concurrent_edits_leave_one_conflict_copy_and_edits_beat_deletes() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = {
        let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
        FolderShare::among(&nodes)
    };
    fs::write(share.dirs[0].join("doc.txt"), "original").unwrap();
    fs::write(share.dirs[0].join("gone.txt"), "keep me?").unwrap();
    share.wait_identical();
    wait_until("both to hold the same summary", WAIT, || {
        mesh.nodes[0].share_root(&share.name) == mesh.nodes[1].share_root(&share.name)
    });

    // Partition: each side edits while the other is down. Each edit is recorded (the share's
    // summary root moves) before the next one and before the node stops or the other comes
    // back, so that neither side's edit knows of the other's.
    let recorded = |node: &Node, edit: &dyn Fn()| {
        let before = node.share_root(&share.name);
        edit();
        wait_until("the edit to be recorded", WAIT, || {
            node.share_root(&share.name) != before
        });
    };
    // Device names, set while each is down: conflict copies are tagged with their device's.
    let name = |node: &Node, name: &str| {
        let config = node.home.join("config.toml");
        let text = fs::read_to_string(&config).unwrap();
        let named = text.replace("\nname = \"\"\n", &format!("\nname = \"{name}\"\n"));
        assert_ne!(text, named);
        fs::write(&config, named).unwrap();
    };
    mesh.nodes[0].pin_listen_port();
    mesh.nodes[1].stop();
    name(&mesh.nodes[1], "dev b");
    recorded(&mesh.nodes[0], &|| {
        fs::write(share.dirs[0].join("doc.txt"), "edited on A").unwrap()
    });
    recorded(&mesh.nodes[0], &|| {
        fs::remove_file(share.dirs[0].join("gone.txt")).unwrap()
    });
    mesh.nodes[0].stop();
    name(&mesh.nodes[0], "dev a");
    mesh.nodes[1].start();
    recorded(&mesh.nodes[1], &|| {
        fs::write(share.dirs[1].join("doc.txt"), "edited on B").unwrap()
    });
    recorded(&mesh.nodes[1], &|| {
        fs::write(share.dirs[1].join("gone.txt"), "edited, not deleted").unwrap()
    });
    mesh.nodes[0].start();
    mesh.wait_fully_connected();
    let paths = share.wait_identical();

    let conflicts: Vec<&String> = paths
        .iter()
        .filter(|p| p.contains(".sync-conflict-"))
        .collect();
    assert_eq!(conflicts.len(), 1, "exactly one conflict copy: {paths:?}");
    assert!(conflicts[0].starts_with("doc.sync-conflict-") && conflicts[0].ends_with(".txt"));
    let winner = fs::read_to_string(share.dirs[0].join("doc.txt")).unwrap();
    let loser = fs::read_to_string(share.dirs[0].join(conflicts[0])).unwrap();
    let mut both = [winner.as_str(), loser.as_str()];
    both.sort();
    assert_eq!(both, ["edited on A", "edited on B"]);
    let tag = if loser == "edited on A" {
        "-deva.txt"
    } else {
        "-devb.txt"
    };
    assert!(
        conflicts[0].ends_with(tag),
        "{} is tagged with its device's name",
        conflicts[0]
    );
    // The delete lost to the concurrent edit.
    assert_eq!(
        fs::read_to_string(share.dirs[0].join("gone.txt")).unwrap(),
        "edited, not deleted"
    );
}

/// After a conflict, the copy of the losing version is deleted, then the file itself: both
/// stay gone everywhere. Found by `meshsync lab` (two LANs, 1 run in ~15): the losing version
/// stayed a live concurrent version of the path after it was kept as a copy, so the delete (by
/// a peer that had only seen the winner) lost to it as "an edit", and every member then wanted
/// its content back — which existed nowhere any more: the folder never converged.
#[test]
fn a_deleted_conflict_copy_and_file_stay_deleted() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = {
        let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
        FolderShare::among(&nodes)
    };
    fs::write(share.dirs[0].join("doc.txt"), "original").unwrap();
    share.wait_identical();
    wait_until("both to hold the same summary", WAIT, || {
        mesh.nodes[0].share_root(&share.name) == mesh.nodes[1].share_root(&share.name)
    });
    let recorded = |node: &Node, edit: &dyn Fn()| {
        let before = node.share_root(&share.name);
        edit();
        wait_until("the edit to be recorded", WAIT, || {
            node.share_root(&share.name) != before
        });
    };
    // Concurrent edits: each made while the other side is down.
    mesh.nodes[0].pin_listen_port();
    mesh.nodes[1].stop();
    recorded(&mesh.nodes[0], &|| {
        fs::write(share.dirs[0].join("doc.txt"), "edited on A").unwrap()
    });
    mesh.nodes[0].stop();
    mesh.nodes[1].start();
    recorded(&mesh.nodes[1], &|| {
        fs::write(share.dirs[1].join("doc.txt"), "edited on B").unwrap()
    });
    mesh.nodes[0].start();
    mesh.wait_fully_connected();
    let paths = share.wait_identical();
    let copy = paths
        .iter()
        .find(|p| p.contains(".sync-conflict-"))
        .unwrap_or_else(|| panic!("a conflict copy: {paths:?}"))
        .clone();

    fs::remove_file(share.dirs[0].join(&copy)).unwrap();
    wait_until("the copy to be gone on both", WAIT, || {
        !share.dirs[1].join(&copy).exists()
    });
    fs::remove_file(share.dirs[1].join("doc.txt")).unwrap();
    wait_until("doc.txt to be gone on A", WAIT, || {
        !share.dirs[0].join("doc.txt").exists()
    });
    wait_until("both in sync with nothing needed", WAIT, || {
        mesh.nodes.iter().all(|node| {
            let status = share.status(node);
            status["state"] == "idle" && status["needed_files"] == 0
        })
    });
    // Nothing came back, on either.
    for dir in &share.dirs {
        assert!(!dir.join("doc.txt").exists(), "{}", dir.display());
        assert!(!dir.join(&copy).exists(), "{}", dir.display());
    }
}

#[test]
fn big_file_edits_move_only_the_changed_chunks() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = mesh.share_folder();
    let mut data = random_bytes(64 << 20, 42);
    fs::write(share.dirs[0].join("big.bin"), &data).unwrap();
    share.wait_identical();
    let fetched = |s: &FolderShare, b: &Node| s.status(b)["fetched_bytes"].as_u64().unwrap();
    let initial = fetched(&share, &mesh.nodes[1]);
    assert!(
        initial >= 64 << 20,
        "the first copy moves the whole file: {initial}"
    );

    // 1 MiB overwritten in the middle.
    let middle = 32 << 20;
    data[middle..middle + (1 << 20)].copy_from_slice(&random_bytes(1 << 20, 7));
    fs::write(share.dirs[0].join("big.bin"), &data).unwrap();
    share.wait_identical();
    let after_overwrite = fetched(&share, &mesh.nodes[1]);
    assert!(
        after_overwrite - initial < 2 << 20,
        "fetched {} bytes",
        after_overwrite - initial
    );

    // One byte inserted at the start.
    data.insert(0, 0xAB);
    fs::write(share.dirs[0].join("big.bin"), &data).unwrap();
    share.wait_identical();
    let after_insert = fetched(&share, &mesh.nodes[1]);
    assert!(
        after_insert - after_overwrite < 512 << 10,
        "fetched {} bytes",
        after_insert - after_overwrite
    );

    // B restarted: where its chunks lie is read from its store, not rebuilt.
    mesh.nodes[1].pin_listen_port();
    mesh.nodes[1].stop();
    mesh.nodes[1].start();
    mesh.wait_fully_connected();
    wait_until("B's folder to be back", WAIT, || {
        share.status(&mesh.nodes[1])["fetched_bytes"].is_u64()
    });
    // Its counters start again.
    let after_insert = fetched(&share, &mesh.nodes[1]);

    // Copied: B builds the copy from the file it has.
    fs::copy(
        share.dirs[0].join("big.bin"),
        share.dirs[0].join("copy.bin"),
    )
    .unwrap();
    share.wait_identical();
    assert_eq!(
        fetched(&share, &mesh.nodes[1]),
        after_insert,
        "no chunk fetched for a copy of a file B has"
    );
    fs::remove_file(share.dirs[0].join("copy.bin")).unwrap();
    share.wait_identical();

    // Renamed: nothing but metadata moves.
    let before = mesh.nodes[1].status()["shares"][0]["bytes_received"]
        .as_u64()
        .unwrap();
    fs::rename(
        share.dirs[0].join("big.bin"),
        share.dirs[0].join("renamed.bin"),
    )
    .unwrap();
    share.wait_identical();
    assert_eq!(
        fetched(&share, &mesh.nodes[1]),
        after_insert,
        "no chunk fetched for a rename"
    );
    let after = mesh.nodes[1].status()["shares"][0]["bytes_received"]
        .as_u64()
        .unwrap();
    assert!(
        after - before < 64 << 10,
        "rename cost {} bytes",
        after - before
    );
}

/// A receiver killed during a large download, whose file was replaced by another version
/// while it was down, never resumes that temp file: it must not stay in the folder.
#[test]
fn a_crashed_download_of_a_version_no_longer_wanted_leaves_no_temp_file() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = {
        let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
        FolderShare::among(&nodes)
    };
    let temps = |dir: &std::path::Path| -> Vec<String> {
        tree(dir)
            .into_iter()
            .map(|(p, _)| p)
            .filter(|p| p.contains(".meshsync-tmp-"))
            .collect()
    };
    let staging = share.dirs[0].parent().unwrap().join("large.bin.staging");
    fs::write(&staging, random_bytes(96 << 20, 11)).unwrap();
    fs::rename(&staging, share.dirs[0].join("large.bin")).unwrap();
    wait_until("B to start writing its temp file", WAIT, || {
        !temps(&share.dirs[1]).is_empty()
    });
    mesh.nodes[1].kill();
    assert!(!temps(&share.dirs[1]).is_empty());
    fs::write(&staging, random_bytes(1 << 20, 12)).unwrap();
    fs::rename(&staging, share.dirs[0].join("large.bin")).unwrap();
    mesh.nodes[1].start();
    share.wait_identical();
    wait_until("no temp file left in B's idle folder", WAIT, || {
        temps(&share.dirs[1]).is_empty()
    });
}

#[test]
fn killed_receiver_never_shows_a_partial_file_and_resumes() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = {
        let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
        FolderShare::among(&nodes)
    };
    let data = random_bytes(96 << 20, 9);
    let expected = blake3::hash(&data);
    // Written beside the folder and moved in whole: this test is about what the receiver shows,
    // and a sender's scan that reads a file while a stalled writer is half-way through it can
    // publish that half as a version (a separate defect of the scanner, not tested here).
    let staging = share.dirs[0].parent().unwrap().join("large.bin.staging");
    fs::write(&staging, &data).unwrap();
    fs::rename(&staging, share.dirs[0].join("large.bin")).unwrap();
    let target = share.dirs[1].join("large.bin");
    // Kill B as soon as it has started fetching.
    wait_until("B to start fetching", WAIT, || {
        share.status(&mesh.nodes[1])["fetched_bytes"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    mesh.nodes[1].kill();
    if let Ok(bytes) = fs::read(&target) {
        assert_eq!(
            blake3::hash(&bytes),
            expected,
            "a file at the final path is always complete"
        );
    }
    mesh.nodes[1].start();
    share.wait_identical();
    assert_eq!(blake3::hash(&fs::read(&target).unwrap()), expected);
    let leftovers: Vec<_> = tree(&share.dirs[1])
        .into_iter()
        .filter(|(p, _)| p.contains(".meshsync-tmp-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}

#[test]
fn removed_root_sends_no_deletes() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    for i in 0..10 {
        fs::write(share.dirs[0].join(format!("f{i}")), format!("{i}")).unwrap();
    }
    share.wait_identical();
    // B's folder vanishes (an unmounted disk, a deleted directory).
    fs::remove_dir_all(&share.dirs[1]).unwrap();
    wait_until("B to pause", WAIT, || {
        share.status(&mesh.nodes[1])["state"] == "paused"
    });
    let reason = share.status(&mesh.nodes[1])["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert!(!reason.is_empty());
    let paused_ms = now_ms();
    // A keeps reconciling with B (anti-entropy): B has nothing A lacks, no deletes among it.
    let session = mesh.nodes[0].wait_session(
        "A to reconcile with the paused B",
        &mesh.nodes[1].peer_id,
        &share.name,
        paused_ms,
        session_succeeded,
    );
    assert!(session["need"] == 0 && session["merged"] == 0, "{session}");
    assert_eq!(tree(&share.dirs[0]).len(), 10, "A still has every file");
}

/// `rm -rf` (or an unmount) takes files away one by one before the root goes; a scan in between
/// sees them gone while the root is still there. None of those deletes may reach a member.
#[test]
fn a_folder_removed_file_by_file_sends_no_deletes() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    for i in 0..10 {
        fs::write(share.dirs[0].join(format!("f{i}")), format!("{i}")).unwrap();
    }
    share.wait_identical();
    // Slower than the watcher, so each removal is scanned on its own, as a big tree's would be.
    for i in 0..10 {
        fs::remove_file(share.dirs[1].join(format!("f{i}"))).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    fs::remove_dir_all(&share.dirs[1]).unwrap();
    wait_until("B to pause", WAIT, || {
        share.status(&mesh.nodes[1])["state"] == "paused"
    });
    let paused_ms = now_ms();
    let session = mesh.nodes[0].wait_session(
        "A to reconcile with the paused B",
        &mesh.nodes[1].peer_id,
        &share.name,
        paused_ms,
        session_succeeded,
    );
    assert!(session["merged"] == 0, "{session}");
    assert_eq!(tree(&share.dirs[0]).len(), 10, "A still has every file");
}

#[test]
fn meshignore_rules_are_respected() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    fs::write(share.dirs[0].join(".meshignore"), "*.tmp\nbuild/\n").unwrap();
    fs::write(share.dirs[0].join("keep.txt"), "k").unwrap();
    fs::write(share.dirs[0].join("skip.tmp"), "s").unwrap();
    fs::create_dir_all(share.dirs[0].join("build")).unwrap();
    fs::write(share.dirs[0].join("build/out.o"), "o").unwrap();
    // Written after the ignored files, so indexed no earlier than they would be.
    fs::write(share.dirs[0].join("last.txt"), "l").unwrap();
    wait_until(
        "B to hold all A has, with nothing left to write",
        WAIT,
        || {
            share.dirs[1].join("keep.txt").exists()
                && share.dirs[1].join("last.txt").exists()
                && mesh.nodes[0].share_root(&share.name) == mesh.nodes[1].share_root(&share.name)
                && share.status(&mesh.nodes[1])["needed_files"] == 0
        },
    );
    let indexed = &mesh.nodes[0].status()["shares"][0];
    assert_eq!(
        indexed["entries"], 3,
        ".meshignore, keep.txt and last.txt only: {indexed}"
    );
    assert!(share.dirs[1].join(".meshignore").exists());
    assert!(!share.dirs[1].join("skip.tmp").exists());
    assert!(!share.dirs[1].join("build").exists());
}

#[test]
fn an_idle_folder_stays_quiet() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    for d in 0..10 {
        let dir = share.dirs[0].join(format!("d{d}"));
        fs::create_dir_all(&dir).unwrap();
        for f in 0..5 {
            fs::write(dir.join(format!("f{f}")), format!("{d}-{f}")).unwrap();
        }
    }
    share.wait_identical();
    wait_until(
        "both folders to be idle with the same summary",
        WAIT,
        || {
            mesh.nodes
                .iter()
                .all(|n| share.status(n)["state"] == "idle")
                && mesh.nodes[0].share_root(&share.name) == mesh.nodes[1].share_root(&share.name)
        },
    );
    for node in &mesh.nodes {
        let status = share.status(node);
        let obj = status.as_object().unwrap();
        assert!(
            obj["last_error"].is_null() && obj["last_error_at"].is_null(),
            "{status}"
        );
    }
    let scans = |i: usize| share.status(&mesh.nodes[i])["scans"].as_u64().unwrap();
    let before = [scans(0), scans(1)];
    // A fixed window, not a wait for evidence: a scan that triggers the next one shows only over
    // time, and the daemon reports nothing (such as watcher events seen, or scans that found no
    // change) that would show it sooner. Waiting longer only makes the test stricter.
    std::thread::sleep(Duration::from_secs(3));
    let after = [scans(0), scans(1)];
    // Scanning opens every file and directory; that must not look like a change worth a scan.
    assert!(
        after[0] - before[0] <= 1 && after[1] - before[1] <= 1,
        "scans while idle: {before:?} -> {after:?}"
    );
}

/// A crash leaves `.meshsync-tmp-*` files behind (a download being assembled). The daemon
/// removes those nobody has touched for a while when it starts (and at every full rescan),
/// wherever they are in the folder, keeps recent ones (a restarted download resumes from them),
/// and never syncs either.
#[test]
fn leftover_temp_files_are_removed_at_start_or_once_idle() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = {
        let nodes: Vec<&Node> = mesh.nodes.iter().collect();
        FolderShare::among(&nodes)
    };
    let a = share.dirs[0].clone();
    fs::write(a.join("kept.txt"), "real content").unwrap();
    share.wait_identical();

    // The peer dials A again at the same address after the restart.
    mesh.nodes[0].pin_listen_port();
    mesh.nodes[0].stop();
    fs::create_dir_all(a.join("sub/deeper")).unwrap();
    let stale = a.join("sub/deeper/.meshsync-tmp-0123456789abcdef-crashed");
    fs::write(&stale, vec![7u8; 64 * 1024]).unwrap();
    let an_hour_ago = std::time::SystemTime::now() - Duration::from_secs(3600);
    fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(an_hour_ago)
        .unwrap();
    let recent = a.join(".meshsync-tmp-fedcba9876543210-resumable");
    fs::write(&recent, b"half a download").unwrap();
    let swept_before = mesh.nodes[0].log_lines_with(&["removed 1 stale temp files"]);
    mesh.nodes[0].start();

    mesh.nodes[0].wait_for_log(
        "the start-up sweep of stale temp files",
        &["removed 1 stale temp files"],
        swept_before,
    );
    assert!(!stale.exists(), "the stale temp file is gone");
    // No download resumes from the recent one: once the folder is idle, it goes too.
    wait_until("the idle sweep of temp files", WAIT, || !recent.exists());
    assert_eq!(fs::read(a.join("kept.txt")).unwrap(), b"real content");
    // A later change still syncs, and no temp file ever reached the peer.
    fs::write(a.join("after.txt"), "after the restart").unwrap();
    let without_temps = |dir: &std::path::Path| -> Vec<(String, String)> {
        tree(dir)
            .into_iter()
            .filter(|(p, _)| !p.contains(".meshsync-tmp-"))
            .collect()
    };
    wait_until("the edit after the restart to arrive", WAIT, || {
        fs::read(share.dirs[1].join("after.txt")).is_ok_and(|b| b == b"after the restart")
            && without_temps(&a) == without_temps(&share.dirs[1])
    });
    assert!(
        tree(&share.dirs[1])
            .iter()
            .all(|(p, _)| !p.contains(".meshsync-tmp-")),
        "temp files are never synced"
    );
}

/// A shared folder removed and re-created empty with its marker (what the README says to do
/// when a share pauses for a missing marker) is not a deletion of everything in it: it is
/// treated as newly joined and refilled from members, whether the daemon ran through it or
/// was stopped meanwhile. Before this was fixed, B announced a delete for every file and A lost
/// them all.
#[test]
fn a_recreated_folder_is_refilled_and_deletes_nothing_elsewhere() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = {
        let nodes: Vec<&Node> = mesh.nodes.iter().collect();
        FolderShare::among(&nodes)
    };
    let (a, b) = (share.dirs[0].clone(), share.dirs[1].clone());
    for d in 0..4 {
        fs::create_dir_all(a.join(format!("dir{d}"))).unwrap();
        for f in 0..5 {
            fs::write(a.join(format!("dir{d}/f{f}.txt")), format!("{d}/{f}")).unwrap();
        }
    }
    fs::write(a.join("big.bin"), random_bytes(3 << 20, 7)).unwrap();
    share.wait_identical();
    let mut expected = tree(&a);

    // While B runs: the folder goes away (moved off, then deleted), B pauses, the user
    // re-creates it with its marker.
    let gone = b.with_extension("removed");
    fs::rename(&b, &gone).unwrap();
    fs::remove_dir_all(&gone).unwrap();
    wait_until("B to pause for its missing folder", WAIT, || {
        share.status(&mesh.nodes[1])["state"] == "paused"
    });
    fs::create_dir_all(b.join(".meshsync")).unwrap();
    wait_until("B's re-created folder to be refilled", WAIT, || {
        tree(&b) == expected
    });
    // Evidence that whatever B announced has reached A: a later file from B arrives.
    fs::write(b.join("later.txt"), "written after the re-creation").unwrap();
    wait_until("B's later file to reach A", WAIT, || {
        a.join("later.txt").exists()
    });
    expected = tree(&b);
    assert_eq!(tree(&a), expected, "A lost nothing");

    // While B is stopped: the same, with the daemon finding the new folder at start.
    mesh.nodes[1].stop();
    fs::remove_dir_all(&b).unwrap();
    fs::create_dir_all(b.join(".meshsync")).unwrap();
    mesh.nodes[1].start();
    wait_until(
        "B's folder, re-created while it was stopped, to be refilled",
        WAIT,
        || tree(&b) == expected,
    );
    fs::write(b.join("later2.txt"), "after the restart").unwrap();
    wait_until("B's second later file to reach A", WAIT, || {
        a.join("later2.txt").exists()
    });
    assert_eq!(tree(&a), tree(&b), "A lost nothing");
    assert!(
        tree(&a).iter().all(|(p, _)| !p.contains(".sync-conflict-")),
        "no conflict copies: only A ever wrote these files"
    );
}

/// What a receiver wrote stays received across a crash. A receiver killed right after writing
/// files it got (before it noted them as synced), while the sender already edited them again,
/// must not take its copies for its own new edits when it restarts: those would win over the
/// sender's newer edits, which would survive only as conflict copies, although only the sender
/// ever edited. Several rounds, each killing the receiver while it writes.
#[test]
fn a_receiver_killed_while_writing_never_turns_received_files_into_its_edits() {
    const FILES: usize = 150;
    const ROUNDS: usize = 4;
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = {
        let nodes: Vec<&Node> = mesh.nodes.iter().collect();
        FolderShare::among(&nodes)
    };
    let (a, b) = (share.dirs[0].clone(), share.dirs[1].clone());
    for round in 0..ROUNDS {
        let dir = format!("round{round}");
        fs::create_dir_all(a.join(&dir)).unwrap();
        for f in 0..FILES {
            fs::write(
                a.join(format!("{dir}/f{f:03}")),
                format!("first {round} {f}"),
            )
            .unwrap();
        }
        wait_until("B to start writing this round's files", WAIT, || {
            fs::read_dir(b.join(&dir)).is_ok_and(|d| d.count() >= FILES / 4)
        });
        // The sender edits every file again while the receiver is still writing the first
        // versions, and the receiver dies a moment later, having heard of some new versions.
        for f in 0..FILES {
            fs::write(
                a.join(format!("{dir}/f{f:03}")),
                format!("second {round} {f}"),
            )
            .unwrap();
        }
        std::thread::sleep(Duration::from_millis(60 + 40 * round as u64));
        mesh.nodes[1].kill();
        mesh.nodes[1].start();
        share.wait_identical();
    }
    let paths = tree(&a);
    assert!(
        paths.iter().all(|(p, _)| !p.contains(".sync-conflict-")),
        "only A edited, so no conflict copy may exist: {:?}",
        paths
            .iter()
            .filter(|(p, _)| p.contains(".sync-conflict-"))
            .collect::<Vec<_>>()
    );
    for round in 0..ROUNDS {
        for f in 0..FILES {
            let path = format!("round{round}/f{f:03}");
            assert_eq!(
                fs::read_to_string(a.join(&path)).unwrap(),
                format!("second {round} {f}"),
                "{path}: A's last edit won"
            );
        }
    }
}

/// A restart reads no unchanged file again: the scan knows files by their `lstat`, and files
/// received by the stamp recorded when they were written. `hashed_files` in `status` counts
/// what scans read.
#[test]
fn a_restarted_daemon_reads_no_unchanged_file_again() {
    const FILES: u64 = 40;
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let a = mesh.nodes[0].home.parent().unwrap().join("folder");
    fs::create_dir_all(&a).unwrap();
    for i in 0..FILES {
        fs::write(a.join(format!("f{i}.txt")), format!("file {i}")).unwrap();
    }
    // A file read within 100 ms of its last change is read again by the next scan (its
    // timestamps cannot vouch for it yet): let that window pass before the first scan.
    std::thread::sleep(Duration::from_millis(300));
    let share = mesh.share_folder();
    share.wait_identical();
    let counts = |node: &Node| {
        let f = share.status(node);
        (
            f["state"].as_str().unwrap_or_default().to_owned(),
            f["scans"].as_u64().unwrap_or(0),
            f["hashed_files"].as_u64().unwrap(),
        )
    };
    wait_until("A to have read every file once", WAIT, || {
        counts(&mesh.nodes[0]).2 == FILES
    });
    wait_until("B to have received every file", WAIT, || {
        share.status(&mesh.nodes[1])["files"].as_u64() == Some(FILES)
    });
    assert_eq!(
        counts(&mesh.nodes[1]).2,
        0,
        "B never reads what it received"
    );

    for i in 0..2 {
        mesh.nodes[i].pin_listen_port();
        mesh.nodes[i].stop();
        mesh.nodes[i].start();
    }
    for node in &mesh.nodes {
        wait_until("the first full scan after the restart", WAIT, || {
            let (state, scans, _) = counts(node);
            state == "idle" && scans >= 1
        });
        assert_eq!(counts(node).2, 0, "nothing is read again after a restart");
    }
}

/// A directory moved into the folder with a file its program is still writing (found by the
/// lab: peers briefly held a file with content the workload never wrote). The directory's scan
/// leaves that file until its writer is done; peers only ever get its complete content.
#[test]
fn a_file_still_being_written_in_a_new_directory_is_sent_only_complete() {
    use std::io::Write;
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let nodes: Vec<&Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    let (a, b) = (&share.dirs[0], &share.dirs[1]);
    // Made beside the folder (same filesystem) and moved in by one rename: the daemon hears of
    // the directory, and finds its files only by walking it.
    let staged = a.with_file_name("staged-dir");
    fs::create_dir(&staged).unwrap();
    fs::write(staged.join("done.txt"), "done").unwrap();
    let mut saving = fs::File::create(staged.join("saving.bin")).unwrap();
    let mut written = b"first part; ".to_vec();
    saving.write_all(&written).unwrap();
    fs::rename(&staged, a.join("new")).unwrap();
    // The save goes on, a little at a time, until B holds the directory's finished file and
    // has nothing left to fetch: the scan that found both has been sent.
    wait_until("done.txt at B, with nothing more to fetch", WAIT, || {
        saving.write_all(b"more; ").unwrap();
        written.extend_from_slice(b"more; ");
        let status = share.status(&mesh.nodes[1]);
        b.join("new/done.txt").exists() && status["state"] == "idle" && status["needed_files"] == 0
    });
    assert!(
        !b.join("new/saving.bin").exists(),
        "a file still being written reached B: {:?}",
        fs::read(b.join("new/saving.bin"))
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
    );
    saving.write_all(b"the end").unwrap();
    written.extend_from_slice(b"the end");
    drop(saving);
    wait_until("the complete file at B", WAIT, || {
        fs::read(b.join("new/saving.bin")).ok().as_deref() == Some(&written[..])
    });
    share.wait_identical();
}

/// A change the watcher cannot see is found by the periodic verification walk (a watched
/// folder walks itself a slice at a time): the file is rewritten in place through a hard link
/// outside the folder, and inotify tells only the link's directory. `status` says when the
/// folder was last verified, and how many paths that walk checked.
#[test]
fn a_change_the_watcher_cannot_see_is_found_by_the_verification_walk() {
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let nodes: Vec<&support::Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    let (a, b) = (&share.dirs[0], &share.dirs[1]);
    fs::write(a.join("hidden.txt"), "before").unwrap();
    share.wait_identical();
    let verified_at = || share.status(&mesh.nodes[0])["last_verified_at"].clone();
    wait_until("the first scan to count as a verification", WAIT, || {
        verified_at().is_string()
    });
    let first_verified = verified_at();
    let outside = a.parent().unwrap().join("outside-link");
    fs::hard_link(a.join("hidden.txt"), &outside).unwrap();
    fs::write(&outside, "after, where no watcher looks").unwrap();
    // Evidence the watcher missed it: a later change it does see arrives first.
    fs::write(a.join("seen.txt"), "seen").unwrap();
    wait_until("the seen change to arrive", WAIT, || {
        fs::read_to_string(b.join("seen.txt")).is_ok_and(|s| s == "seen")
    });
    if verified_at() == first_verified {
        assert_eq!(
            fs::read_to_string(b.join("hidden.txt")).unwrap(),
            "before",
            "no verification ran, yet the hidden change arrived: the test shows nothing"
        );
    }
    // The verification is due a minute after the first scan.
    wait_until(
        "the verification walk to find the hidden change",
        WAIT * 3,
        || fs::read_to_string(b.join("hidden.txt")).is_ok_and(|s| s.starts_with("after")),
    );
    let status = share.status(&mesh.nodes[0]);
    assert_ne!(status["last_verified_at"], first_verified, "{status}");
    assert!(
        status["verified_paths"].as_u64().unwrap() >= 2,
        "both files checked: {status}"
    );
    assert!(status["verifying"].is_boolean(), "{status}");
}

/// Files received after the backup a daemon's home is restored from are still received, not
/// the daemon's edits: while it was down the sender edited one of them again, and that newer
/// edit wins, with no conflict copy, although the restored store never held the version the
/// file was received at (its mark says which, for this share). The restored daemon scans
/// before it hears from the sender, so its first scan judges the files alone.
#[test]
fn files_received_after_the_backup_a_home_is_restored_from_stay_received() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    mesh.nodes[0].pin_listen_port();
    mesh.nodes[0].stop();
    mesh.nodes[0].start();
    let share = {
        let nodes: Vec<&Node> = mesh.nodes.iter().collect();
        FolderShare::among(&nodes)
    };
    let (a, b) = (share.dirs[0].clone(), share.dirs[1].clone());
    fs::write(a.join("f.txt"), "one").unwrap();
    share.wait_identical();

    mesh.nodes[1].stop();
    let state = mesh.nodes[1].home.join("state");
    let backup = mesh.nodes[1].home.parent().unwrap().join("state-backup");
    copy_dir(&state, &backup);
    mesh.nodes[1].start();
    fs::write(a.join("f.txt"), "two").unwrap();
    fs::write(a.join("g.txt"), "new").unwrap();
    share.wait_identical();

    mesh.nodes[1].stop();
    fs::remove_dir_all(&state).unwrap();
    copy_dir(&backup, &state);
    let hashed = |node: &Node| share.status(node)["hashed_files"].as_u64().unwrap();
    let before = hashed(&mesh.nodes[0]);
    fs::write(a.join("f.txt"), "three").unwrap();
    // Read by A's scan, whose write the graceful stop below waits for.
    wait_until("A to read its edit", WAIT, || {
        hashed(&mesh.nodes[0]) > before
    });
    mesh.nodes[0].stop();
    mesh.nodes[1].start();
    wait_until("B's first scan after the restore", WAIT, || {
        let status = share.status(&mesh.nodes[1]);
        status["scans"].as_u64().unwrap_or(0) >= 1 && status["state"] != "scanning"
    });
    mesh.nodes[0].start();
    wait_until("f.txt to reach B again", WAIT, || {
        fs::read_to_string(b.join("f.txt")).is_ok_and(|t| t == "three")
    });
    let tree = share.wait_identical();
    assert!(
        tree.iter().all(|p| !p.contains(".sync-conflict-")),
        "only A edited: {tree:?}"
    );
    assert_eq!(fs::read_to_string(a.join("f.txt")).unwrap(), "three");
    assert_eq!(fs::read_to_string(a.join("g.txt")).unwrap(), "new");
}
