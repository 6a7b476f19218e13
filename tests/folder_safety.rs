//! Folder safety nets, black box through real daemons: the mass-deletion breaker.

mod support;

use std::fs;

use support::{
    FolderShare, Mesh, Mount, Node, WAIT, now_ms, random_bytes, session_succeeded, tree, wait_until,
};

const DIRS: usize = 10;
const FILES_PER_DIR: usize = 100;

fn fill(dir: &std::path::Path) {
    for d in 0..DIRS {
        fs::create_dir_all(dir.join(format!("d{d}"))).unwrap();
        for f in 0..FILES_PER_DIR {
            fs::write(dir.join(format!("d{d}/f{f:03}")), format!("{d}/{f}")).unwrap();
        }
    }
}

/// Takes 80 % of the files (8 of the 10 directories) away at once: the directories are moved out
/// of the folder (beside it, in the test's own directory), so the daemon sees them all gone in
/// one scan. Removed file by file instead, a loaded machine's scan could come in the middle and
/// send a first part alone, which a peer's breaker rightly let through (found in CI: 492 of
/// 1,010 paths applied before the hold).
fn delete_most(dir: &std::path::Path) {
    let name = dir.file_name().unwrap().to_string_lossy().into_owned();
    let away = (0..)
        .map(|i| dir.with_file_name(format!("{name}-taken-away-{i}")))
        .find(|away| !away.exists())
        .unwrap();
    fs::create_dir(&away).unwrap();
    for d in 0..8 {
        fs::rename(dir.join(format!("d{d}")), away.join(format!("d{d}"))).unwrap();
    }
}

fn wait_held(share: &FolderShare, node: &Node) -> String {
    wait_until("the share to be held by the breaker", WAIT, || {
        share.status(node)["state"] == "held"
    });
    share.status(node)["reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn resume(node: &Node, share: &str, how: &str) {
    let out = node.cli(&["share", "resume", share, how]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn a_mass_delete_is_held_until_the_user_restores_or_accepts_it() {
    let mesh = Mesh::full_static(3);
    mesh.wait_fully_connected();
    let share = mesh.share_folder();
    let (a, b, c) = (&mesh.nodes[0], &mesh.nodes[1], &mesh.nodes[2]);
    fill(&share.dirs[0]);
    let everything = share.wait_identical();
    assert_eq!(everything.len(), DIRS * (FILES_PER_DIR + 1));

    // 80 % of the files deleted on A: held, nothing sent.
    delete_most(&share.dirs[0]);
    let reason = wait_held(&share, a);
    assert!(reason.contains("808 of 1010"), "{reason}");
    let held_ms = now_ms();
    // Evidence that A was heard from after it held: B and C each reconcile with it. Only an
    // anti-entropy round starts such a session: 10 s after a change, then at pauses doubling
    // to 80 s, each round with the next member in turn. A file written on B is that change
    // for B, and for C once it arrives there: both reach A within their second round. (With
    // the mesh left quiet, the rounds had backed off, and with a member picked at random a
    // three-minute wait missed A in CI.)
    const PROBE: &str = "written-after-the-hold";
    fs::write(share.dirs[1].join(PROBE), "B").unwrap();
    wait_until("B's new file to reach C", WAIT, || {
        fs::read(share.dirs[2].join(PROBE)).is_ok_and(|text| text == b"B")
    });
    for node in [b, c] {
        node.wait_session_within(
            "a session with the held A",
            &a.peer_id,
            &share.name,
            held_ms,
            session_succeeded,
            WAIT * 2,
        );
    }
    let mut with_probe = everything.clone();
    with_probe.insert(PROBE.to_owned());
    for dir in &share.dirs[1..] {
        assert_eq!(tree(dir).len(), with_probe.len(), "{}", dir.display());
    }
    // A resume of a share that is not held is refused.
    let out = b.cli(&["share", "resume", &share.name, "--restore"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not held"));

    // --restore: A gets its files back, the others never lost any.
    resume(a, &share.name, "--restore");
    assert_eq!(share.wait_identical(), with_probe);
    wait_until("A to be idle again", WAIT, || {
        share.status(a)["state"] == "idle"
    });

    // Deleted again and accepted this time: the deletes reach everyone.
    delete_most(&share.dirs[0]);
    wait_held(&share, a);
    resume(a, &share.name, "--accept-deletes");
    let rest = share.wait_identical();
    assert_eq!(rest.len(), 2 * (FILES_PER_DIR + 1) + 1, "{rest:?}");
    assert_eq!(tree(&share.dirs[2]).len(), rest.len());
}

/// A file written without pause (appended every 5 ms) still syncs while the writes go on, as
/// some consistent version, and its final version arrives once they stop.
#[test]
fn a_file_that_never_settles_still_syncs_while_it_changes() {
    use std::io::Write;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::{Duration, Instant};

    const WRITES_FOR_AT_MOST: Duration = Duration::from_secs(30);
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = mesh.share_folder();
    let (a_file, b_file) = (share.dirs[0].join("log.txt"), share.dirs[1].join("log.txt"));
    let stop = AtomicBool::new(false);
    let arrived_while_writing = std::thread::scope(|scope| {
        let writer = scope.spawn(|| {
            let mut file = fs::File::create(&a_file).unwrap();
            let mut line = 0u64;
            let started = Instant::now();
            while !stop.load(Ordering::Relaxed) && started.elapsed() < WRITES_FOR_AT_MOST {
                writeln!(file, "line {line}").unwrap();
                line += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            started.elapsed() < WRITES_FOR_AT_MOST
        });
        // B must get a version of the file while A still writes it.
        let deadline = Instant::now() + WRITES_FOR_AT_MOST + Duration::from_secs(5);
        let (mut seen, mut listed) = (None, false);
        while Instant::now() < deadline && !writer.is_finished() {
            listed |= share.status(&mesh.nodes[0])["changing"]
                .as_array()
                .is_some_and(|paths| paths.iter().any(|p| p == "log.txt"));
            if let Ok(text) = fs::read_to_string(&b_file)
                && !text.is_empty()
                && listed
            {
                seen = Some(text);
                break;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, Ordering::Relaxed);
        let still_writing = writer.join().unwrap();
        seen.filter(|_| still_writing)
    });
    let seen = arrived_while_writing
        .expect("a version arrived on B, and A listed the file as changing, while A kept writing");
    // A consistent version: whole lines, in order, from the first.
    for (i, line) in seen.lines().enumerate() {
        assert_eq!(
            line,
            format!("line {i}"),
            "B's copy is a prefix of A's writes"
        );
    }
    assert!(seen.ends_with('\n'), "B's copy ends with a whole line");
    share.wait_identical();
    wait_until(
        "A to list nothing as changing once the writes stopped",
        WAIT,
        || share.status(&mesh.nodes[0])["changing"] == serde_json::json!([]),
    );
}

/// A receiver on a small file system: old versions give way first, and a full disk waits, says
/// so once, and completes by itself once space is freed — no partial file ever at a final path.
#[test]
fn a_full_disk_frees_old_versions_first_and_recovers_by_itself() {
    const MIB: usize = 1 << 20;
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let small = mesh.nodes[1].home.parent().unwrap().join("small");
    let tmpfs = Mount::tmpfs(&small, "16m");
    let junk = small.join("junk");
    fs::write(&junk, random_bytes(6 * MIB, 1)).unwrap();
    let dirs = vec![
        mesh.nodes[0].home.parent().unwrap().join("folder"),
        small.join("folder"),
    ];
    let share = {
        let nodes: Vec<&Node> = mesh.nodes.iter().collect();
        FolderShare::among_at(&nodes, dirs)
    };
    let (a, b) = (&share.dirs[0], &share.dirs[1]);
    let put = |name: &str, len: usize, seed: u64| {
        let staging = a.parent().unwrap().join("staging");
        fs::write(&staging, random_bytes(len, seed)).unwrap();
        fs::rename(&staging, a.join(name)).unwrap();
    };

    // 4 MiB replaced by another 4 MiB: the old copy is kept as a version (junk 6 + 4 + 4 MiB).
    put("big1", 4 * MIB, 2);
    share.wait_identical();
    put("big1", 4 * MIB, 3);
    share.wait_identical();
    let node_b = &mesh.nodes[1];
    assert_eq!(
        versions_of(node_b, &share.name, None).len(),
        1,
        "the old big1"
    );
    // 3 MiB more fits only once the old version is gone.
    put("big2", 3 * MIB, 4);
    share.wait_identical();
    assert!(
        versions_of(node_b, &share.name, None).is_empty(),
        "the versions went first"
    );

    // 5 MiB more cannot fit (about 3 MiB free): B waits and says so.
    let warned_before = node_b.log_lines_with(&["disk full"]);
    put("big3", 5 * MIB, 5);
    wait_until("B to report the full disk", WAIT, || {
        let status = share.status(node_b);
        status["state"] == "error"
            && status["reason"]
                .as_str()
                .is_some_and(|r| r.starts_with("disk full — "))
    });
    assert!(
        !b.join("big3").exists(),
        "nothing partial at the final path"
    );
    // The share says it too, for records and folders alike, and so does the human status.
    let shares = node_b.status()["shares"].clone();
    let whole = &shares[0];
    assert_eq!(whole["state"], "error", "{whole}");
    assert!(
        whole["reason"]
            .as_str()
            .is_some_and(|r| r.starts_with("disk full — ")),
        "{whole}"
    );
    let human = String::from_utf8(node_b.cli(&["status"]).stdout).unwrap();
    assert!(human.contains("disk full"), "{human}");
    // Space freed outside the folder: B completes without anyone asking it to.
    fs::remove_file(&junk).unwrap();
    share.wait_identical();
    wait_until("B to be idle", WAIT, || {
        share.status(node_b)["state"] == "idle"
    });
    assert_eq!(
        node_b.log_lines_with(&["disk full"]) - warned_before,
        1,
        "the full disk is logged once, not once per retry"
    );
    mesh.nodes[1].stop();
    drop(tmpfs);
}

fn versions_of(node: &Node, share: &str, path: Option<&str>) -> Vec<serde_json::Value> {
    let mut args = vec!["share", "versions", share];
    args.extend(path);
    args.push("--json");
    let out = node.cli(&args);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What peers' changes replace or delete is kept under its own path, listed, restored as a new
/// edit that syncs, and pruned by the policy's limits.
#[test]
fn replaced_and_deleted_files_are_kept_as_versions_and_restored() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = mesh.share_folder();
    let (a, b) = (share.dirs[0].clone(), share.dirs[1].clone());
    fs::create_dir_all(a.join("d")).unwrap();
    fs::write(a.join("d/f.txt"), "v1").unwrap();
    fs::write(a.join("other.txt"), "gone soon").unwrap();
    share.wait_identical();
    fs::write(a.join("d/f.txt"), "v2").unwrap();
    fs::remove_file(a.join("other.txt")).unwrap();
    share.wait_identical();

    let node_b = &mesh.nodes[1];
    let of_f = versions_of(node_b, &share.name, Some("d/f.txt"));
    assert_eq!(of_f.len(), 1, "{of_f:?}");
    assert_eq!(of_f[0]["path"], "d/f.txt");
    assert_eq!(of_f[0]["size"], 2);
    assert!(of_f[0]["at"].as_str().unwrap().ends_with('Z'), "{of_f:?}");
    let kept_at = of_f[0]["kept_at"].as_str().unwrap();
    assert!(
        kept_at.starts_with(".meshsync/versions/d/f.txt~"),
        "{kept_at}"
    );
    assert_eq!(fs::read_to_string(b.join(kept_at)).unwrap(), "v1");
    let all = versions_of(node_b, &share.name, None);
    let paths: Vec<&str> = all.iter().map(|v| v["path"].as_str().unwrap()).collect();
    assert_eq!(paths.len(), 2, "{paths:?}");
    assert!(paths.contains(&"other.txt"), "{paths:?}");

    // Restored on B as new edits: they reach A.
    for path in ["d/f.txt", "other.txt"] {
        let out = node_b.cli(&["share", "restore", &share.name, path]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    wait_until("the restored versions to reach A", WAIT, || {
        fs::read_to_string(a.join("d/f.txt")).is_ok_and(|t| t == "v1")
            && fs::read_to_string(a.join("other.txt")).is_ok_and(|t| t == "gone soon")
    });
    share.wait_identical();
    // The copy the restore replaced is itself kept.
    assert_eq!(versions_of(node_b, &share.name, Some("d/f.txt")).len(), 2);
    let out = node_b.cli(&["share", "restore", &share.name, "never/there"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no kept version"));

    // Limits: with a maximum age of 0 days every version goes at the next start.
    mesh.nodes[1].pin_listen_port();
    mesh.nodes[1].stop();
    let config = mesh.nodes[1].home.join("config.toml");
    let mut text = fs::read_to_string(&config).unwrap();
    text.push_str("\n[shares.folder]\nversions_max_age_days = 0\n");
    fs::write(&config, text).unwrap();
    mesh.nodes[1].start();
    wait_until("B to prune every version", WAIT, || {
        versions_of(&mesh.nodes[1], &share.name, None).is_empty()
    });
}

/// A peer whose own breaker is off deletes most of the folder: a receiver with
/// `breaker_remote = true` holds instead of applying it; `--restore` puts the files back
/// everywhere, `--accept-deletes` applies them.
#[test]
fn a_peers_mass_delete_is_held_until_the_user_decides() {
    let mut mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    // A lets any delete out; B holds peers' mass deletes too.
    mesh.nodes[0].restart_with_config_line("breaker_percent = 50", "breaker_percent = 100");
    mesh.nodes[1].restart_with_config_line("breaker_remote = false", "breaker_remote = true");
    mesh.wait_fully_connected();
    let share = mesh.share_folder();
    fill(&share.dirs[0]);
    let everything = share.wait_identical();

    delete_most(&share.dirs[0]);
    let reason = wait_held(&share, &mesh.nodes[1]);
    assert!(reason.contains("peers' changes would delete"), "{reason}");
    assert_eq!(
        tree(&share.dirs[1]).len(),
        everything.len(),
        "B applied none"
    );
    // A itself is not held: it finishes sending its deletes (those after the first batch wait
    // until deleting stops, so it may still be `syncing` when B holds) and goes idle.
    wait_until("A to be idle, not held", WAIT, || {
        let state = share.status(&mesh.nodes[0])["state"].clone();
        assert_ne!(state, "held", "A itself is not held");
        state == "idle"
    });

    // --restore on B: the files come back on A too, and B never removed them on the way (it
    // once applied the held deletes with the peer's register it had kept, then wrote the files
    // back from its trash; a file whose copy there it could not find was lost everywhere).
    resume(&mesh.nodes[1], &share.name, "--restore");
    assert_eq!(share.wait_identical(), everything);
    assert_eq!(
        versions_of(&mesh.nodes[1], &share.name, None),
        Vec::<serde_json::Value>::new(),
        "B kept no version: it deleted nothing"
    );

    delete_most(&share.dirs[0]);
    wait_held(&share, &mesh.nodes[1]);
    resume(&mesh.nodes[1], &share.name, "--accept-deletes");
    assert_eq!(share.wait_identical().len(), 2 * (FILES_PER_DIR + 1));
}

/// Local paths that cannot be synced are listed with the reason in `status`, and each is
/// logged once, not at every scan.
#[test]
fn unsyncable_local_files_are_listed_with_the_reason() {
    use std::os::unix::ffi::OsStrExt;
    let mesh = Mesh::full_static(2);
    mesh.wait_fully_connected();
    let share = mesh.share_folder();
    let a = &share.dirs[0];
    let fifo = a.join("pipe");
    let mode = rustix::fs::Mode::from_raw_mode(0o644);
    rustix::fs::mkfifoat(rustix::fs::CWD, &fifo, mode).unwrap();
    fs::write(a.join(std::ffi::OsStr::from_bytes(b"bad\xffname")), "x").unwrap();
    fs::write(a.join("back\\slash"), "x").unwrap();
    fs::write(a.join("fine.txt"), "fine").unwrap();
    wait_until("A to list the three unsyncable paths", WAIT, || {
        share.status(&mesh.nodes[0])["unsyncable_count"] == 3
    });
    let status = share.status(&mesh.nodes[0]);
    let listed = status["unsyncable"].as_array().unwrap();
    let reason_of = |path: &str| -> String {
        listed
            .iter()
            .find(|u| u["path"] == path)
            .map(|u| u["reason"].as_str().unwrap().to_owned())
            .unwrap_or_else(|| panic!("{path} not listed: {status}"))
    };
    assert!(reason_of("pipe").contains("fifo"));
    assert!(reason_of("bad\u{fffd}name").contains("not UTF-8"));
    assert!(reason_of("back\\slash").contains("backslash"));
    // More scans (each file written is one) do not say them again.
    // (Not `wait_identical`: reading the FIFO would block.)
    for i in 0..5 {
        let name = format!("later{i}");
        fs::write(a.join(&name), "x").unwrap();
        wait_until("the later file to arrive", WAIT, || {
            share.dirs[1].join(&name).exists()
        });
    }
    assert_eq!(mesh.nodes[0].log_lines_with(&["pipe: skipped"]), 1);
    assert!(!share.dirs[1].join("pipe").exists());
}

/// How long the tree tests wait for each step.
const TREE_WAIT: std::time::Duration = std::time::Duration::from_secs(600);

/// Rounds of the tree tests: 2, or `MESHSYNC_STRESS_ROUNDS` to loop them longer.
fn tree_rounds() -> usize {
    std::env::var("MESHSYNC_STRESS_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(2)
}

/// Two peers sharing a folder, without the breaker: a whole tree goes at once, and the tree
/// tests are about directories, not the breaker.
fn two_peers_without_breaker() -> (Mesh, FolderShare) {
    let mut mesh = Mesh::full_static(2);
    for node in &mut mesh.nodes {
        node.restart_with_config_line("breaker_percent = 50", "breaker_percent = 100");
    }
    mesh.wait_fully_connected();
    let share = mesh.share_folder();
    (mesh, share)
}

/// Writes `top` × `sub` directories of `files` files each under `tree` in `dir`, and waits for
/// all of them in `to`.
fn write_tree_and_wait(
    dir: &std::path::Path,
    to: &std::path::Path,
    shape: [usize; 3],
    round: usize,
) {
    let [top, sub, files] = shape;
    for t in 0..top {
        for s in 0..sub {
            let dir = dir.join(format!("tree/t{t:02}/s{s:02}"));
            fs::create_dir_all(&dir).unwrap();
            for f in 0..files {
                fs::write(dir.join(format!("f{f:02}")), format!("{round} {t} {s} {f}")).unwrap();
            }
        }
    }
    let last = to.join(format!(
        "tree/t{:02}/s{:02}/f{:02}",
        top - 1,
        sub - 1,
        files - 1
    ));
    wait_until("B to get the whole tree", TREE_WAIT, || {
        last.exists() && count_files(&to.join("tree")) == top * sub * files
    });
}

/// Waits for positive evidence that both peers are done with what came before: a file written
/// on each side afterwards reaches the other, and neither has anything left to do.
fn wait_both_done(mesh: &Mesh, share: &FolderShare, round: usize) {
    let (a, b) = (&share.dirs[0], &share.dirs[1]);
    let sentinel = format!("after-{round}");
    fs::write(b.join(&sentinel), "b").unwrap();
    wait_until("B's later write to reach A", TREE_WAIT, || {
        a.join(&sentinel).exists()
    });
    fs::write(a.join(&sentinel), "a").unwrap();
    wait_until("A's later write to reach B", TREE_WAIT, || {
        fs::read_to_string(b.join(&sentinel)).is_ok_and(|t| t == "a")
    });
    for node in &mesh.nodes {
        wait_until("both peers to be idle", TREE_WAIT, || {
            let status = share.status(node);
            status["needed_files"] == 0 && status["deletes_waiting"] == 0
        });
    }
}

/// Asserts that `tree` is gone from both peers' folders.
fn assert_tree_gone(share: &FolderShare, round: usize) {
    for dir in &share.dirs {
        assert!(
            !dir.join("tree").exists(),
            "round {round}: the removed tree came back in {}: {:?}",
            dir.display(),
            tree(&dir.join("tree"))
                .into_iter()
                .take(20)
                .collect::<Vec<_>>()
        );
    }
}

/// `rm -rf` of a big tree of directories right after it synced, several times over: no directory
/// comes back on any peer, whatever order the deletes, the directory removals and the rescans on
/// either side happen in.
#[test]
fn a_removed_tree_of_many_directories_stays_removed() {
    // 20,000 files in 1,000 directories, as reported.
    let (mesh, share) = two_peers_without_breaker();
    let (a, b) = (share.dirs[0].clone(), share.dirs[1].clone());
    for round in 0..tree_rounds() {
        write_tree_and_wait(&a, &b, [50, 20, 20], round);
        fs::remove_dir_all(a.join("tree")).unwrap();
        wait_until("the tree to be gone on B", TREE_WAIT, || {
            !b.join("tree").exists()
        });
        wait_both_done(&mesh, &share, round);
        // The directories and files of the tree were removed side by side: a file's delete
        // whose directory went first is done, not retried with a warning.
        for node in &mesh.nodes {
            let log = node.log();
            let retried: Vec<&str> = log
                .lines()
                .filter(|l| l.contains("cannot sync (retrying)"))
                .collect();
            assert!(
                retried.is_empty(),
                "round {round}: deletes were retried: {retried:#?}"
            );
        }
        assert_tree_gone(&share, round);
    }
}

/// Regular files under `dir`, counted without reading them.
fn count_files(dir: &std::path::Path) -> usize {
    let Ok(entries) = fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => count_files(&e.path()),
            Ok(t) if t.is_file() => 1,
            _ => 0,
        })
        .sum()
}

/// Every directory and file under `dir`, `dir` included.
fn entries_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = vec![dir.to_owned()];
    let mut i = 0;
    while i < out.len() {
        if out[i].is_dir() {
            let children: Vec<_> = fs::read_dir(&out[i])
                .unwrap()
                .map(|e| e.unwrap().path())
                .collect();
            out.extend(children);
        }
        i += 1;
    }
    out
}

/// Sends `signal` (as `kill` names it) to `node`'s daemon.
fn signal(node: &Node, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &node.pid().expect("running").to_string()])
        .status()
        .unwrap();
    assert!(status.success(), "kill {signal}");
}

#[test]
fn a_tree_a_peer_removed_while_we_rescan_everything_stays_removed() {
    // Found in CI: a full rescan (after watch events were lost) walked B's directories while B
    // removed them for A's delete. Each one it had seen was then taken for a new directory of
    // B's, and a directory newer than the delete came back on both peers. Here B's watch
    // loses events (more than the kernel queues, `fs.inotify.max_queued_events`, while B is
    // frozen), and A's deletes reach B while its full rescan reads every file.
    let queued: usize = fs::read_to_string("/proc/sys/fs/inotify/max_queued_events")
        .ok()
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(16_384);
    let (mesh, share) = two_peers_without_breaker();
    let (a, b) = (share.dirs[0].clone(), share.dirs[1].clone());
    let noise: Vec<_> = (0..2).map(|i| b.join(format!("noise-{i}"))).collect();
    for path in &noise {
        fs::write(path, "noise").unwrap();
    }
    let full_scans = |node: &Node| {
        node.log()
            .matches("DEBUG scan folder=folder full=true")
            .count()
    };
    for round in 0..tree_rounds() {
        write_tree_and_wait(&a, &b, [40, 25, 8], round);
        for node in &mesh.nodes {
            wait_until("both peers to be idle", TREE_WAIT, || {
                share.status(node)["needed_files"] == 0
            });
        }
        signal(&mesh.nodes[1], "-STOP");
        fs::remove_dir_all(a.join("tree")).unwrap();
        wait_until("A to take the tree's removal in", TREE_WAIT, || {
            share.status(&mesh.nodes[0])["directories"] == 0
        });
        // Each of B's entries changed in status only (its mode set as it is): thawed, B reads
        // every file again while it applies A's deletes. Then times set on two other files by
        // turns (the kernel merges an event only into an identical one just before it), until
        // the watch has lost events and B rescans everything.
        let mut events = 0;
        for path in entries_under(&b.join("tree")) {
            let mode = fs::metadata(&path).unwrap().permissions();
            fs::set_permissions(&path, mode).unwrap();
            events += 1;
        }
        for i in events..queued + 1_000 {
            let when = std::time::UNIX_EPOCH + std::time::Duration::from_secs(i as u64);
            let file = fs::File::options().write(true).open(&noise[i % 2]).unwrap();
            file.set_modified(when).unwrap();
        }
        let scans_before = full_scans(&mesh.nodes[1]);
        signal(&mesh.nodes[1], "-CONT");
        wait_until("B's full rescan to start", TREE_WAIT, || {
            full_scans(&mesh.nodes[1]) > scans_before
        });
        wait_until("the tree to be gone on B", TREE_WAIT, || {
            !b.join("tree").exists()
        });
        wait_both_done(&mesh, &share, round);
        assert_tree_gone(&share, round);
    }
}

/// Received small files are assembled in the receiver's `.meshsync/incoming` and renamed into
/// place: no temp file is left beside a target or in there, and directories inside the folder
/// on another file system (a tmpfs mounted there) or on another mount of the same one (a bind
/// mount, which a rename cannot cross even on one file system) get every file all the same,
/// without an error.
#[test]
fn small_files_reach_directories_on_other_mounts_inside_the_folder() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let b_dir = b.home.parent().unwrap().join("folder");
    let elsewhere = b.home.parent().unwrap().join("elsewhere");
    fs::create_dir_all(&elsewhere).unwrap();
    let _other_fs = Mount::tmpfs(&b_dir.join("other-fs"), "16m");
    let _bound = Mount::bind(&elsewhere, &b_dir.join("bound"));
    let dirs = vec![a.home.parent().unwrap().join("folder"), b_dir.clone()];
    let share = FolderShare::among_at(&[&a, &b], dirs);
    let a_dir = &share.dirs[0];

    let places = [
        "",
        "plain/",
        "other-fs/",
        "other-fs/deep/",
        "bound/",
        "bound/deep/",
    ];
    for (i, place) in places.iter().enumerate() {
        fs::create_dir_all(a_dir.join(place)).unwrap();
        for j in 0..5 {
            let bytes = random_bytes(100 + 50 * j, (10 * i + j) as u64);
            fs::write(a_dir.join(format!("{place}f{j}.bin")), bytes).unwrap();
        }
    }
    let paths = share.wait_identical();
    assert!(paths.contains("bound/deep/f4.bin"), "{paths:?}");
    // Through the bind mount, into the directory it shows.
    assert_eq!(
        fs::read(elsewhere.join("deep/f4.bin")).unwrap(),
        fs::read(a_dir.join("bound/deep/f4.bin")).unwrap()
    );
    let temps: Vec<String> = tree(&b_dir)
        .into_iter()
        .map(|(path, _)| path)
        .filter(|path| path.contains(".meshsync-tmp-"))
        .collect();
    assert!(temps.is_empty(), "{temps:?}");
    wait_until("B to be idle with nothing needed", WAIT, || {
        let status = share.status(&b);
        status["state"] == "idle" && status["needed_files"] == 0
    });
    let status = share.status(&b);
    assert!(status["last_error"].is_null(), "{status}");
    let incoming: Vec<_> = fs::read_dir(b_dir.join(".meshsync/incoming"))
        .expect("B received small files through its incoming directory")
        .map(|entry| entry.unwrap().file_name())
        .collect();
    assert!(incoming.is_empty(), "{incoming:?}");
    assert!(a.stop() && b.stop());
}
