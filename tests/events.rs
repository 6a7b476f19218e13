//! The event stream, black box: `meshsync events --json` on one daemon while a scripted
//! sequence of changes happens on another (and one here) delivers every change, in order, with
//! who made it; a reader that starts later replays them with `--since`; a peer leaving and the
//! share's state changing show too.

mod support;

use serde_json::Value;
use support::{Api, FolderShare, LineReader, Node, WAIT, wait_until};

/// A running `meshsync events`; killed when dropped.
struct EventReader(LineReader);

impl EventReader {
    fn start(node: &Node, args: &[&str]) -> EventReader {
        let args: Vec<&str> = std::iter::once("events")
            .chain(args.iter().copied())
            .collect();
        EventReader(LineReader::start(node, &args))
    }

    fn events(&self) -> Vec<Value> {
        self.0
            .lines()
            .iter()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn text(&self) -> String {
        self.0.text()
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

#[test]
fn every_change_of_a_scripted_sequence_arrives_in_order_with_who_made_it() {
    let mut a = Node::init(&[]);
    a.start();
    let mut b = Node::init(&["--peer", &a.listen_addr(), "--name", "desk"]);
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
    let del = reader.wait_for(&[
        ("type", "record_deleted"),
        ("key", "k"),
        ("peer", b_id),
        ("peer_name", "desk"),
    ]);
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
    let f_events: Vec<&Value> = events.iter().filter(|e| e["path"] == "f.txt").collect();
    let kinds: Vec<&str> = f_events
        .iter()
        .map(|e| e["type"].as_str().unwrap())
        .collect();
    // The change and the delete each kept the file as it was on A.
    assert_eq!(
        kinds,
        [
            "file_added",
            "file_changed",
            "version_kept",
            "file_deleted",
            "version_kept"
        ],
        "{events:?}"
    );
    // B's events name it by its device name.
    assert!(
        f_events.iter().all(|e| e["peer_name"] == "desk"),
        "{f_events:?}"
    );
    reader.wait_for(&[
        ("type", "peer_connected"),
        ("peer", b_id),
        ("peer_name", "desk"),
    ]);
    let ids: Vec<u64> = events.iter().map(|e| e["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    assert!(events.iter().all(|e| e["time"].as_str().is_some()));

    // A rename on B: the new path's add and the old one's delete, then the rename itself.
    std::fs::write(on_b.join("g.txt"), "to be renamed").unwrap();
    reader.wait_for(&[("type", "file_added"), ("path", "g.txt"), ("peer", b_id)]);
    std::fs::rename(on_b.join("g.txt"), on_b.join("h.txt")).unwrap();
    reader.wait_for(&[
        ("type", "file_renamed"),
        ("path", "h.txt"),
        ("from", "g.txt"),
        ("peer", b_id),
    ]);

    // A reader started now replays what the daemon holds, filtered to one share, as text.
    let replay = EventReader::start(&a, &["--since", "0", "--share", "notes"]);
    wait_until("the replay to show the record's delete", WAIT, || {
        replay
            .text()
            .contains("record_deleted  [notes]  k  by desk (")
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
