//! The scanner's tests.

use super::testkit::settle;
use super::testkit::*;
use super::*;

#[test]
fn large_files_are_given_their_previous_chunks_and_described_the_same() {
    use std::sync::Mutex;
    let dir = folder();
    let root = dir.path();
    let mut data = random(5, 6 << 20);
    write(root, "big", &data);
    write(root, "small", &random(6, 1000));
    settle();
    let first = scan_all(root, &BTreeMap::new()).unwrap();
    data[3 << 20..(3 << 20) + 5000].copy_from_slice(&random(7, 5000));
    fs::write(root.join("big"), &data).unwrap();
    fs::write(root.join("small"), random(8, 1000)).unwrap();
    settle();
    let asked = Mutex::new(Vec::new());
    let lists = |meta: &FileMeta| {
        asked.lock().unwrap().push(meta.size);
        Some(chunks_of(meta, &first.pages))
    };
    let paths = ["big".to_owned(), "small".to_owned()];
    let reusing = scan_paths_reusing(root, &paths, &first.entries, &lists, None, None).unwrap();
    // Only the large file is worth a lookup.
    assert_eq!(*asked.lock().unwrap(), [6 << 20]);
    let plain = scan_paths(root, &paths, &first.entries).unwrap();
    assert_eq!(reusing.entries, plain.entries);
    assert_eq!(reusing.pages, plain.pages);
    assert_eq!(
        plain.entries["big"].meta.hash,
        *blake3::hash(&data).as_bytes()
    );
}

#[test]
fn a_tree_of_more_files_than_one_round_is_read_whole_and_once() {
    let dir = folder();
    let root = dir.path();
    let files = HASH_ROUND + HASH_ROUND / 2 + 3;
    for i in 0..files {
        // Sizes spread over the rounds: every size occurs in several of them.
        write(
            root,
            &format!("d{}/f{i}", i % 7),
            &random(i as u64, 1 + i % 300),
        );
    }
    settle();
    let out = scan_all(root, &BTreeMap::new()).unwrap();
    assert_eq!(out.hashed_files, files as u64, "each file read once");
    let described = out
        .entries
        .values()
        .filter(|r| r.meta.kind == EntryKind::File)
        .count();
    assert_eq!(described, files);
    for i in [0, HASH_ROUND - 1, HASH_ROUND, files - 1] {
        let record = &out.entries[&format!("d{}/f{i}", i % 7)];
        let data = random(i as u64, 1 + i % 300);
        assert_eq!(record.meta.hash, *blake3::hash(&data).as_bytes(), "f{i}");
    }
}

/// The entries of a scan, those it spilled included.
fn all_entries(out: &ScanOutput) -> BTreeMap<String, ScanRecord> {
    let mut all = out.entries.clone();
    if let Some(spilled) = &out.spilled {
        for entry in spilled.read().unwrap() {
            let (rel, record) = entry.unwrap();
            assert!(all.insert(rel, record).is_none(), "each entry once");
        }
    }
    all
}

#[test]
fn files_read_past_the_spill_threshold_are_kept_in_a_file_and_read_back_whole() {
    let dir = folder();
    let root = dir.path();
    let marker = root.join(MARKER_DIR);
    let files = SPILL_FROM + 700;
    let name = |i: usize| format!("d{}/f{i}", i % 9);
    for i in 0..files {
        write(root, &name(i), &random(i as u64, 1 + i % 200));
    }
    settle();
    let plain = scan_all(root, &BTreeMap::new()).unwrap();
    assert!(
        plain.spilled.is_none(),
        "without a directory for it, nothing spills"
    );
    let spilled = scan_all_reusing(root, &BTreeMap::new(), &|_| None, Some(&marker)).unwrap();
    assert_eq!(
        spilled.entries.len(),
        SPILL_FROM,
        "memory holds the threshold's worth"
    );
    assert!(
        spilled.entries.contains_key("d0"),
        "directories stay in memory"
    );
    let written = spilled.spilled.as_ref().expect("spilled").written();
    assert_eq!(written as usize, files + 9 - SPILL_FROM);
    assert_eq!(
        all_entries(&spilled),
        plain.entries,
        "the same entries, each once"
    );
    assert_eq!(
        all_entries(&spilled),
        all_entries(&spilled),
        "read again from the start"
    );
    assert_eq!(
        fs::read_dir(&marker).unwrap().count(),
        0,
        "the spill file has no name in the folder"
    );

    // Rewritten files are read again, and spilled; two files are gone: only they are said gone.
    let previous = plain.entries;
    for i in 0..files {
        write(root, &name(i), &random(i as u64 + 1, 1 + i % 200));
    }
    fs::remove_file(root.join(name(0))).unwrap();
    fs::remove_file(root.join(name(files - 1))).unwrap();
    settle();
    let again = scan_all_reusing(root, &previous, &|_| None, Some(&marker)).unwrap();
    assert!(again.spilled.is_some());
    assert_eq!(again.gone, vec![name(0), name(files - 1)]);
    let all = all_entries(&again);
    assert_eq!(all.len(), files - 2 + 9);
    let i = 5;
    let data = random(i as u64 + 1, 1 + i % 200);
    assert_eq!(all[&name(i)].meta.hash, *blake3::hash(&data).as_bytes());
}

/// Previous records of a caller that keeps them itself.
struct KeptElsewhere(BTreeMap<String, ScanRecord>);

impl PreviousRecords for KeptElsewhere {
    fn record(&self, rel: &str) -> Option<ScanRecord> {
        self.0.record(rel)
    }
    fn for_each_path_within(&self, dir: &str, visit: &mut dyn FnMut(&str)) {
        self.0.for_each_path_within(dir, visit)
    }
    fn for_each_path_in(&self, range: &PathRange, visit: &mut dyn FnMut(&str)) {
        self.0.for_each_path_in(range, visit)
    }
    fn slice_end(&self, after: Option<&str>, count: usize) -> Option<String> {
        self.0.slice_end(after, count)
    }
    fn omit_unchanged(&self) -> bool {
        true
    }
}

#[test]
fn unchanged_files_can_be_left_out_and_are_still_not_taken_for_gone() {
    let dir = folder();
    let root = dir.path();
    for name in ["a", "b", "d/c", "d/e"] {
        write(root, name, name.as_bytes());
    }
    settle();
    let first = scan_all(root, &BTreeMap::new()).unwrap();
    fs::write(root.join("b"), b"changed").unwrap();
    fs::remove_file(root.join("d/e")).unwrap();
    write(root, "new", b"new");
    settle();
    let previous = KeptElsewhere(first.entries.clone());
    let out = scan_all(root, &previous).unwrap();
    // Left out: the unchanged files `a` and `d/c`; directories are always described.
    assert_eq!(keys(&out), ["b", "d", "new"]);
    assert_eq!(out.unchanged, 2);
    assert_eq!(out.gone, ["d/e"], "unchanged files are not gone");
    assert_eq!(out.hashed_files, 2);
    // A partial scan of a directory says the same of what it covers.
    let paths = ["d".to_owned()];
    let part = scan_paths(root, &paths, &previous).unwrap();
    assert_eq!(keys(&part), ["d"]);
    assert_eq!(part.gone, ["d/e"]);
}

#[test]
fn unchanged_files_are_not_reread_and_modified_ones_are() {
    let dir = folder();
    let root = dir.path();
    for i in 0..20 {
        write(root, &format!("d/f{i}"), &random(i, 1000 + i as usize));
    }
    settle();
    let first = scan_all(root, &BTreeMap::new()).unwrap();
    assert_eq!(first.hashed_files, 20);
    assert!(first.entries.values().all(|r| !r.racy));

    let second = scan_all(root, &first.entries).unwrap();
    assert_eq!(second.hashed_files, 0);
    assert_eq!(second.entries, first.entries);
    assert!(second.gone.is_empty());

    // Same size, mtime put back: only the ctime tells.
    let path = root.join("d/f3");
    let mtime = fs::metadata(&path).unwrap().modified().unwrap();
    fs::write(&path, random(99, 1003)).unwrap();
    fs::File::options()
        .write(true)
        .open(&path)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    settle();
    let third = scan_all(root, &second.entries).unwrap();
    assert_eq!(third.hashed_files, 1);
    assert_eq!(third.hashed_bytes, 1003);
    let (old, new) = (&second.entries["d/f3"].meta, &third.entries["d/f3"].meta);
    assert_eq!((old.size, old.mtime_secs), (new.size, new.mtime_secs));
    assert_ne!(old.hash, new.hash);
    assert_eq!(new.hash, *blake3::hash(&random(99, 1003)).as_bytes());
}

#[test]
fn a_racy_file_is_reread_by_the_next_scan() {
    let dir = folder();
    write(dir.path(), "fresh", b"just written");
    let first = scan_all(dir.path(), &BTreeMap::new()).unwrap();
    assert!(first.entries["fresh"].racy);
    let second = scan_all(dir.path(), &first.entries).unwrap();
    assert_eq!(second.hashed_files, 1);
    settle();
    let third = scan_all(dir.path(), &second.entries).unwrap();
    assert_eq!(third.hashed_files, u64::from(second.entries["fresh"].racy));
}

#[test]
fn a_missing_root_or_marker_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let none = BTreeMap::new();
    let missing = dir.path().join("missing");
    assert!(matches!(
        scan_all(&missing, &none),
        Err(ScanError::RootMissing { .. })
    ));
    write(dir.path(), "file", b"x");
    assert!(matches!(
        scan_all(&dir.path().join("file"), &none),
        Err(ScanError::RootNotDirectory { .. })
    ));
    assert!(matches!(
        scan_all(dir.path(), &none),
        Err(ScanError::MarkerMissing { .. })
    ));
    let paths = ["file".to_owned()];
    assert!(matches!(
        scan_paths(dir.path(), &paths, &none),
        Err(ScanError::MarkerMissing { .. })
    ));
    let err = scan_all(dir.path(), &none).unwrap_err().to_string();
    assert!(err.contains(dir.path().to_str().unwrap()), "{err}");
}

#[test]
fn partial_scans_report_gone_paths_and_subtrees() {
    let dir = folder();
    let root = dir.path();
    for rel in ["a/1", "a/2", "a/sub/3", "b/4", "c"] {
        write(root, rel, rel.as_bytes());
    }
    let full = scan_all(root, &BTreeMap::new()).unwrap();
    fs::remove_file(root.join("c")).unwrap();
    fs::remove_file(root.join("a/sub/3")).unwrap();
    write(root, "a/new", b"new");
    write(root, "b/5", b"not requested");

    let paths = ["c".to_owned(), "a/".to_owned(), "never".to_owned()];
    let out = scan_paths(root, &paths, &full.entries).unwrap();
    assert_eq!(keys(&out), ["a", "a/1", "a/2", "a/new", "a/sub"]);
    assert_eq!(out.gone, ["a/sub/3", "c", "never"]);
    assert!(out.unstable.is_empty());

    let root_too = scan_paths(root, &[String::new()], &full.entries).unwrap();
    assert_eq!(
        root_too.entries,
        scan_all(root, &full.entries).unwrap().entries
    );

    for bad in ["/abs", "a/../b", "a//b", "a/./b"] {
        assert!(matches!(
            scan_paths(root, &[bad.to_owned()], &full.entries),
            Err(ScanError::InvalidPath { .. })
        ));
    }
}

#[test]
fn requested_unchanged_files_are_neither_walked_nor_read() {
    let dir = folder();
    let root = dir.path();
    for rel in ["a/1", "a/2", "b/3"] {
        write(root, rel, rel.as_bytes());
    }
    settle();
    let full = scan_all(root, &BTreeMap::new()).unwrap();
    let paths = ["a/1".to_owned(), "b/3".to_owned()];
    let out = scan_paths(root, &paths, &full.entries).unwrap();
    assert_eq!(out.hashed_files, 0);
    assert_eq!(keys(&out), ["a/1", "b/3"]);
    assert_eq!(out.entries["a/1"], full.entries["a/1"]);
    // A caller that keeps the records itself is told only that they are unchanged.
    let out = scan_paths(root, &paths, &KeptElsewhere(full.entries.clone())).unwrap();
    assert!(out.entries.is_empty() && out.gone.is_empty(), "{out:?}");
    assert_eq!((out.unchanged, out.hashed_files), (2, 0));

    // Changed, replaced, or under a requested directory: the walk and a read decide.
    write(root, "a/1", b"changed");
    fs::remove_file(root.join("b/3")).unwrap();
    write(root, "b/3", b"b/3");
    let out = scan_paths(root, &paths, &full.entries).unwrap();
    assert_eq!(out.hashed_files, 2);
    let with_parent = ["a".to_owned(), "a/2".to_owned()];
    let out = scan_paths(root, &with_parent, &full.entries).unwrap();
    assert!(out.entries.contains_key("a/2"));
    assert!(
        out.entries["a/1"].meta.size == 7,
        "the walk saw the change under `a`"
    );
}

#[test]
fn files_written_just_now_under_a_requested_directory_are_left_unread() {
    let dir = folder();
    let root = dir.path();
    write(root, "d/old", b"old");
    settle();
    let full = scan_all(root, &BTreeMap::new()).unwrap();
    write(root, "d/new", b"half of a sa");
    write(root, "d/old", b"being rewritten");
    let window = Some(Duration::from_secs(60));
    let paths = ["d".to_owned()];
    let out = scan_paths_reusing(root, &paths, &full.entries, &|_| None, window, None).unwrap();
    assert_eq!(out.fresh, ["d/new", "d/old"]);
    assert_eq!(out.hashed_files, 0);
    // Neither described nor gone: the caller keeps what it had, as for unstable paths.
    assert_eq!(keys(&out), ["d"]);
    assert!(out.gone.is_empty() && out.unstable.is_empty());
    // A file requested by itself (its own events said it is done) is read, fresh or not.
    let paths = ["d".to_owned(), "d/new".to_owned()];
    let out = scan_paths_reusing(root, &paths, &full.entries, &|_| None, window, None).unwrap();
    assert_eq!(out.fresh, ["d/old"]);
    assert_eq!(out.entries["d/new"].meta.size, 12);
    // Without the window (and in full scans) everything is read as it is.
    let out = scan_paths(root, &["d".to_owned()], &full.entries).unwrap();
    assert!(out.fresh.is_empty() && out.hashed_files == 2);
}

#[test]
fn records_round_trip_through_cbor() {
    let dir = folder();
    write(dir.path(), "f", &random(5, 300_000));
    let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
    let mut bytes = Vec::new();
    ciborium::into_writer(&out.entries, &mut bytes).unwrap();
    let back: BTreeMap<String, ScanRecord> = ciborium::from_reader(bytes.as_slice()).unwrap();
    assert_eq!(back, out.entries);
}

/// The slices of a verification walk, one after the other from the first path, find what one
/// full scan finds: every entry once, in its slice, and the same paths gone. Names around '/'
/// in byte order ("a-b" < "a/x" < "a0") and a subtree split across slices included.
#[test]
fn a_walk_in_slices_finds_what_a_full_scan_finds() {
    let dir = folder();
    let root = dir.path();
    let names = [
        "a",
        "a-b",
        "a/x",
        "a/y/1",
        "a/y/2",
        "a/y/3",
        "a/z",
        "a0",
        "b/c/d/e",
        "b/c/f",
        "c",
        "d/.meshignore",
        "d/kept",
        "d/skip.tmp",
        "e/1",
        "e/2",
        "e/3",
        "e/4",
    ];
    for name in names {
        if name == "a" {
            continue; // "a" is a directory.
        }
        let data = if name.ends_with(IGNORE_FILE) {
            b"*.tmp\n".to_vec()
        } else {
            name.as_bytes().to_vec()
        };
        write(root, name, &data);
    }
    settle();
    let first = scan_all(root, &BTreeMap::new()).unwrap();
    // Changes for the walk to find: an edit, deletes (one a whole subtree), new files.
    fs::write(root.join("a/y/2"), b"edited").unwrap();
    fs::remove_file(root.join("a-b")).unwrap();
    fs::remove_dir_all(root.join("b/c/d")).unwrap();
    write(root, "a/y/0", b"new");
    write(root, "zz/new", b"new");
    settle();
    let previous = KeptElsewhere(first.entries.clone());
    let full = scan_all(root, &previous).unwrap();
    for per_slice in [1, 2, 3, 5, 100] {
        let mut after: Option<String> = None;
        let (mut entries, mut gone, mut unchanged) = (BTreeMap::new(), Vec::new(), 0);
        let mut slices = 0;
        loop {
            let upto = previous.slice_end(after.as_deref(), per_slice);
            let range = PathRange {
                after: after.clone(),
                upto: upto.clone(),
            };
            let out = scan_range_reusing(root, range.clone(), &previous, &|_| None, None).unwrap();
            for (path, record) in out.entries {
                assert!(range.contains(&path), "{path} outside {range:?}");
                assert!(entries.insert(path, record).is_none(), "found twice");
            }
            assert!(out.gone.iter().all(|path| range.contains(path)));
            gone.extend(out.gone);
            unchanged += out.unchanged;
            slices += 1;
            match upto {
                Some(upto) => after = Some(upto),
                None => break,
            }
        }
        assert_eq!(entries, full.entries, "{per_slice} paths a slice");
        assert_eq!(gone, full.gone, "{per_slice} paths a slice");
        assert_eq!(unchanged, full.unchanged);
        assert_eq!(
            slices,
            previous.0.len() / per_slice + 1,
            "{per_slice} paths a slice"
        );
    }
    assert!(full.gone.contains(&"b/c/d/e".to_owned()), "{:?}", full.gone);
    assert!(full.entries.contains_key("zz/new") && full.entries.contains_key("a/y/2"));
}
