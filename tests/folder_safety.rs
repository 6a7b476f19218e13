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
