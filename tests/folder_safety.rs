//! Folder safety nets, black box through real daemons: the mass-deletion breaker.

mod support;

use std::fs;

use support::{FolderShare, Mesh, Node, WAIT, now_ms, session_succeeded, tree, wait_until};

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

/// Removes 80 % of the files (8 of the 10 directories).
fn delete_most(dir: &std::path::Path) {
    for d in 0..8 {
        fs::remove_dir_all(dir.join(format!("d{d}"))).unwrap();
    }
}

fn wait_held(share: &FolderShare, node: &Node) -> String {
    wait_until("A's share to be held by the breaker", WAIT, || {
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
    let nodes: Vec<&Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
    let (a, b, c) = (&mesh.nodes[0], &mesh.nodes[1], &mesh.nodes[2]);
    fill(&share.dirs[0]);
    let everything = share.wait_identical();
    assert_eq!(everything.len(), DIRS * (FILES_PER_DIR + 1));

    // 80 % of the files deleted on A: held, nothing sent.
    delete_most(&share.dirs[0]);
    let reason = wait_held(&share, a);
    assert!(reason.contains("808 of 1010"), "{reason}");
    let held_ms = now_ms();
    // Evidence that A was heard from after it held: B and C each reconcile with it.
    for node in [b, c] {
        node.wait_session(
            "a session with the held A",
            &a.peer_id,
            &share.name,
            held_ms,
            session_succeeded,
        );
    }
    for dir in &share.dirs[1..] {
        assert_eq!(tree(dir).len(), everything.len(), "{}", dir.display());
    }
    // A resume of a share that is not held is refused.
    let out = b.cli(&["share", "resume", &share.name, "--restore"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not held"));

    // --restore: A gets its files back, the others never lost any.
    resume(a, &share.name, "--restore");
    assert_eq!(share.wait_identical(), everything);
    wait_until("A to be idle again", WAIT, || {
        share.status(a)["state"] == "idle"
    });

    // Deleted again and accepted this time: the deletes reach everyone.
    delete_most(&share.dirs[0]);
    wait_held(&share, a);
    resume(a, &share.name, "--accept-deletes");
    let rest = share.wait_identical();
    assert_eq!(rest.len(), 2 * (FILES_PER_DIR + 1), "{rest:?}");
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
    let nodes: Vec<&Node> = mesh.nodes.iter().collect();
    let share = FolderShare::among(&nodes);
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
