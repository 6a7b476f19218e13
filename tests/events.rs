//! The event stream, black box: `meshsync events --json` on one daemon while a scripted
//! sequence of changes happens on another (and one here) delivers every change, in order, with
//! who made it; a reader that starts later replays them with `--since`; a peer leaving and the
//! share's state changing show too.

mod support;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use support::{Api, FolderShare, Node, WAIT, bin, wait_until};

/// A running `meshsync events` whose lines are collected; killed when dropped.
struct EventReader {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl EventReader {
    fn start(node: &Node, args: &[&str]) -> EventReader {
        let mut child = Command::new(bin())
            .arg("--home")
            .arg(&node.home)
            .arg("events")
            .args(args)
            .env_remove("MESHSYNC_HOME")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("cannot run meshsync events");
        let stdout = child.stdout.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        EventReader { child, lines }
    }

    fn events(&self) -> Vec<Value> {
        self.lines
            .lock()
            .unwrap()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    /// Waits for an event with these fields; returns its id.
    fn wait_for(&self, what: &[(&str, &str)]) -> u64 {
        let mut found = 0;
        wait_until(&format!("an event {what:?}"), WAIT, || {
            found = self
                .events()
                .iter()
                .find(|e| what.iter().all(|(k, v)| e[*k] == *v))
                .map_or(0, |e| e["id"].as_u64().unwrap());
            found > 0
        });
        found
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn every_change_of_a_scripted_sequence_arrives_in_order_with_who_made_it() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr()]);
    b.start();
    let folder = FolderShare::among(&[&a, &b]);
    let token = a.create_records_share("notes");
    b.join_records_share(&token, "notes");
    // From the first event held, so nothing is missed while the reader connects.
    let reader = EventReader::start(&a, &["--json", "--since", "0"]);
    let (on_a, on_b) = (&folder.dirs[0], &folder.dirs[1]);
    let b_id = b.peer_id.clone();
    let b_id = b_id.as_str();
    let f = on_a.join("f.txt");

    std::fs::write(on_b.join("f.txt"), "one").unwrap();
    wait_until("f.txt on A", WAIT, || {
        std::fs::read(&f).ok().as_deref() == Some(b"one")
    });
    let added = reader.wait_for(&[("type", "file_added"), ("path", "f.txt"), ("peer", b_id)]);
    std::fs::write(on_b.join("f.txt"), "two, longer").unwrap();
    let changed = reader.wait_for(&[("type", "file_changed"), ("path", "f.txt"), ("peer", b_id)]);
    std::fs::remove_file(on_b.join("f.txt")).unwrap();
    let deleted = reader.wait_for(&[("type", "file_deleted"), ("path", "f.txt"), ("peer", b_id)]);
    Api::of(&b).put("notes", "k", "v1");
    let put = reader.wait_for(&[("type", "record_put"), ("key", "k"), ("peer", b_id)]);
    assert!(Api::of(&b).del("notes", "k"));
    let del = reader.wait_for(&[("type", "record_deleted"), ("key", "k"), ("peer", b_id)]);
    std::fs::write(on_a.join("mine.txt"), "local").unwrap();
    let local = reader.wait_for(&[
        ("type", "file_added"),
        ("path", "mine.txt"),
        ("peer", "local"),
        ("share", &folder.name),
        ("entry", "file"),
    ]);
    assert!(
        added < changed && changed < deleted && deleted < put && put < del && del < local,
        "out of order: {added} {changed} {deleted} {put} {del} {local}"
    );
    // Each change was reported once, and ids only grow.
    let events = reader.events();
    let f_events = events.iter().filter(|e| e["path"] == "f.txt").count();
    assert_eq!(f_events, 3, "{events:?}");
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(events.iter().all(|e| e["time"].as_str().is_some()));

    // A reader started now replays what the daemon holds, filtered to one share, as text.
    let replay = EventReader::start(&a, &["--since", "0", "--share", "notes"]);
    wait_until("the replay to show the record's delete", WAIT, || {
        replay.text().contains("record_deleted  [notes]  k  by")
    });
    assert!(!replay.text().contains("f.txt"), "{}", replay.text());

    // B goes: A says the peer left and the records share is waiting for a member.
    assert!(b.stop());
    reader.wait_for(&[("type", "peer_disconnected"), ("peer", b_id)]);
    reader.wait_for(&[
        ("type", "share_state"),
        ("share", "notes"),
        ("state", "waiting"),
    ]);
}
