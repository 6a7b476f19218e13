use super::*;
use crate::folder::model::MARKER_DIR;
use crate::folder::write::testkit::*;
use tempfile::TempDir;

#[test]
fn assembles_a_multi_chunk_file_in_random_order_with_mode_and_mtime() {
    let root = folder();
    let cut = sample();
    assert!(cut.chunks.len() > 5);
    let mut asm = cut.open(root.path(), "deep/er/file.bin").unwrap();
    let mut order = asm.missing();
    assert_eq!(order, (0..cut.chunks.len()).collect::<Vec<_>>());
    // Deterministic shuffle.
    let noise = data(3, order.len());
    for i in (1..order.len()).rev() {
        order.swap(i, noise[i] as usize % (i + 1));
    }
    write_all(&mut asm, &cut, &order);
    assert!(asm.missing().is_empty());
    asm.commit(Expect::Absent, 0o4751, (1_700_000_000, 123_456_789))
        .unwrap();
    let path = root.path().join("deep/er/file.bin");
    assert_eq!(fs::read(&path).unwrap(), cut.data);
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o7777, 0o751, "setuid masked");
    assert_eq!(
        (meta.mtime(), meta.mtime_nsec()),
        (1_700_000_000, 123_456_789)
    );
    assert!(temps_in(&root.path().join("deep/er")).is_empty());
}

#[test]
fn empty_files_and_old_mtimes_commit() {
    let root = folder();
    let cut = Cut::new(Vec::new(), &[1]);
    let asm = cut.open(root.path(), "empty").unwrap();
    assert!(asm.missing().is_empty());
    asm.commit(Expect::Absent, 0o600, (-86_400, 5)).unwrap();
    let meta = fs::metadata(root.path().join("empty")).unwrap();
    assert_eq!(
        (meta.len(), meta.mtime(), meta.mtime_nsec()),
        (0, -86_400, 5)
    );
}

#[test]
fn wrong_chunks_are_rejected_and_nothing_is_written() {
    let root = folder();
    let cut = sample();
    let mut asm = cut.open(root.path(), "f").unwrap();
    let mut wrong = cut.chunk(1).to_vec();
    wrong[10] ^= 1;
    let err = asm.write_chunk(1, &wrong).unwrap_err();
    assert!(
        matches!(err, WriteError::HashMismatch { index: 1, .. }),
        "{err}"
    );
    assert!(matches!(
        asm.write_chunk(1, &cut.chunk(1)[1..]),
        Err(WriteError::HashMismatch { .. })
    ));
    assert!(matches!(
        asm.write_chunk(0, cut.chunk(1)),
        Err(WriteError::HashMismatch { .. })
    ));
    assert!(matches!(
        asm.write_chunk(99, cut.chunk(1)),
        Err(WriteError::NoSuchChunk { index: 99, .. })
    ));
    assert_eq!(asm.missing().len(), cut.chunks.len());
    let temp = root.path().join(&temps_in(root.path())[0]);
    let on_disk = fs::read(temp).unwrap();
    assert!(on_disk[cut.ranges[1].clone()].iter().all(|b| *b == 0));
    let err = asm.commit(Expect::Absent, 0o644, (0, 0)).unwrap_err();
    assert!(matches!(err, WriteError::Incomplete { .. }), "{err}");
    assert!(!root.path().join("f").exists());
}

#[test]
fn inconsistent_chunk_lists_and_file_hashes_are_refused() {
    let root = folder();
    let cut = sample();
    let size = cut.data.len() as u64;
    let too_big = Assembly::open(root.path(), "f", size + 1, hash(&cut.data), &cut.chunks);
    assert!(matches!(too_big, Err(WriteError::BadChunkList { .. })));
    // Chunks that are each right but do not make the announced file.
    let mut asm = Assembly::open(root.path(), "f", size, [9; 32], &cut.chunks).unwrap();
    let missing = asm.missing();
    write_all(&mut asm, &cut, &missing);
    let err = asm.commit(Expect::Absent, 0o644, (0, 0)).unwrap_err();
    assert!(matches!(err, WriteError::FileHashMismatch { .. }), "{err}");
    assert!(!root.path().join("f").exists());
    assert!(temps_in(root.path()).is_empty(), "bad temp discarded");
}

#[test]
fn in_order_hash_matches_whatever_the_arrival_order() {
    let chunks: Vec<Vec<u8>> = (0..20u8).map(|i| vec![i; 1000 + i as usize]).collect();
    let whole: Vec<u8> = chunks.concat();
    let expected = blake3::hash(&whole);
    let orders: [Vec<usize>; 3] = [
        (0..20).collect(),
        (0..20).rev().collect(),
        vec![
            3, 1, 0, 2, 2, 7, 5, 4, 6, 8, 19, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 0,
        ],
    ];
    for order in orders {
        let mut in_order = InOrder {
            hasher: blake3::Hasher::new(),
            next: 0,
            early: Default::default(),
            early_bytes: 0,
        };
        for i in order {
            assert!(in_order.take(i, &chunks[i]));
        }
        assert_eq!(in_order.next, 20);
        assert_eq!(in_order.hasher.finalize(), expected);
    }
    let mut in_order = InOrder {
        hasher: blake3::Hasher::new(),
        next: 0,
        early: Default::default(),
        early_bytes: 0,
    };
    let big = vec![0u8; MAX_EARLY_BYTES];
    assert!(in_order.take(1, &big));
    assert!(
        !in_order.take(2, b"x"),
        "too much held early: give up, read back"
    );
}

#[test]
fn resume_after_a_crash_needs_only_the_missing_chunks() {
    let root = folder();
    let cut = sample();
    let n = cut.chunks.len();
    {
        let mut asm = cut.open(root.path(), "dir/f").unwrap();
        write_all(&mut asm, &cut, &[0, 2, 3, n - 1]);
        // Dropped here without commit, like a crash.
    }
    // Damage chunk 3 in the temp file, as a torn write could.
    let temp = root
        .path()
        .join("dir")
        .join(temp_name("dir/f", &hash(&cut.data)));
    let file = OpenOptions::new().write(true).open(&temp).unwrap();
    file.write_all_at(b"garbage", cut.ranges[3].start as u64)
        .unwrap();
    drop(file);

    let mut asm = cut.open(root.path(), "dir/f").unwrap();
    let missing = asm.missing();
    let expected: Vec<usize> = (0..n).filter(|i| ![0, 2, n - 1].contains(i)).collect();
    assert_eq!(missing, expected);
    write_all(&mut asm, &cut, &missing);
    asm.commit(Expect::Absent, 0o644, (1, 0)).unwrap();
    assert_eq!(fs::read(root.path().join("dir/f")).unwrap(), cut.data);

    // Another version of the same path gets another temp file: no cross-talk.
    let other = Cut::new(data(8, 1000), &[300]);
    assert_ne!(
        temp_name("dir/f", &hash(&other.data)),
        temp_name("dir/f", &hash(&cut.data))
    );
}

#[test]
fn a_second_assembly_of_the_same_content_is_busy() {
    let root = folder();
    let cut = sample();
    let _first = cut.open(root.path(), "f").unwrap();
    let err = cut.open(root.path(), "f").unwrap_err();
    assert!(matches!(err, WriteError::Busy { .. }), "{err}");
}

#[test]
fn nothing_appears_at_the_final_path_before_commit() {
    let root = folder();
    let cut = sample();
    let path = root.path().join("new");
    let mut asm = cut.open(root.path(), "new").unwrap();
    let missing = asm.missing();
    write_all(&mut asm, &cut, &missing);
    assert!(!path.exists());
    asm.commit(Expect::Absent, 0o644, (1, 0)).unwrap();
    assert!(path.exists());

    // Replacing: the old content stays intact until the rename.
    let old = root.path().join("old");
    fs::write(&old, b"old content").unwrap();
    let expect = Expect::current(&old).unwrap();
    let mut asm = cut.open(root.path(), "old").unwrap();
    let missing = asm.missing();
    write_all(&mut asm, &cut, &missing);
    assert_eq!(fs::read(&old).unwrap(), b"old content");
    asm.commit(expect, 0o644, (1, 0)).unwrap();
    assert_eq!(fs::read(&old).unwrap(), cut.data);
}

#[test]
fn a_local_change_before_commit_is_a_conflict() {
    let root = folder();
    let cut = sample();
    let path = root.path().join("f");
    fs::write(&path, b"base").unwrap();
    let expect = Expect::current(&path).unwrap();
    let mut asm = cut.open(root.path(), "f").unwrap();
    let missing = asm.missing();
    write_all(&mut asm, &cut, &missing);
    fs::write(&path, b"local edit").unwrap();
    let err = asm.commit(expect, 0o644, (1, 0)).unwrap_err();
    assert!(matches!(err, WriteError::Conflict { .. }), "{err}");
    assert_eq!(fs::read(&path).unwrap(), b"local edit");
    // The complete temp file was kept: a retry has nothing to fetch.
    let asm = cut.open(root.path(), "f").unwrap();
    assert!(asm.missing().is_empty());
    asm.commit(Expect::current(&path).unwrap(), 0o644, (1, 0))
        .unwrap();
    assert_eq!(fs::read(&path).unwrap(), cut.data);

    // Expected absent, but a local file appeared.
    let small = Cut::new(b"peer".to_vec(), &[4]);
    let mut asm = small.open(root.path(), "g").unwrap();
    write_all(&mut asm, &small, &[0]);
    fs::write(root.path().join("g"), b"local").unwrap();
    assert!(matches!(
        asm.commit(Expect::Absent, 0o644, (1, 0)),
        Err(WriteError::Conflict { .. })
    ));
    assert_eq!(fs::read(root.path().join("g")).unwrap(), b"local");

    // Expected a file, but it was deleted locally; or a directory is there now.
    let mut asm = small.open(root.path(), "h").unwrap();
    write_all(&mut asm, &small, &[0]);
    fs::write(root.path().join("h"), b"x").unwrap();
    let expect = Expect::current(&root.path().join("h")).unwrap();
    fs::remove_file(root.path().join("h")).unwrap();
    assert!(matches!(
        asm.commit(expect, 0o644, (1, 0)),
        Err(WriteError::Conflict { .. })
    ));
    fs::create_dir(root.path().join("h")).unwrap();
    let asm = small.open(root.path(), "h").unwrap();
    assert!(matches!(
        asm.commit(Expect::Anything, 0o644, (1, 0)),
        Err(WriteError::Conflict { .. })
    ));
}

#[test]
fn checked_chunks_are_written_without_hashing_again_but_only_at_their_index() {
    let root = folder();
    let cut = Cut::new(data(8, 40_000), &[10_000]);
    let checked = |i: usize| {
        CheckedChunk::check(&cut.chunks[i], cut.data[cut.ranges[i].clone()].to_vec()).unwrap()
    };
    assert!(CheckedChunk::check(&cut.chunks[0], cut.data[1..10_001].to_vec()).is_err());
    let mut asm = cut.open(root.path(), "f").unwrap();
    let err = asm.write_checked(1, &checked(0)).unwrap_err();
    assert!(
        matches!(err, WriteError::HashMismatch { index: 1, .. }),
        "{err}"
    );
    for i in 0..cut.chunks.len() {
        asm.write_checked(i, &checked(i)).unwrap();
    }
    asm.commit(Expect::Absent, 0o644, (1, 0)).unwrap();
    assert_eq!(fs::read(root.path().join("f")).unwrap(), cut.data);
}

#[test]
fn a_full_disk_while_writing_removes_the_temp_and_abandons_the_assembly() {
    // Where `fallocate` is unsupported, ENOSPC shows up at write time instead of at open.
    let root = folder();
    let cut = sample();
    let mut asm = cut.open(root.path(), "f").unwrap();
    asm.write_chunk(0, cut.chunk(0)).unwrap();
    let err = asm.fail("write chunk to", rustix::io::Errno::NOSPC.into());
    assert!(matches!(&err, WriteError::DiskFull { path, .. } if path.ends_with("f")));
    assert!(temps_in(root.path()).is_empty());
    assert!(matches!(
        asm.write_chunk(1, cut.chunk(1)),
        Err(WriteError::Abandoned { .. })
    ));
    assert!(matches!(
        asm.commit(Expect::Absent, 0o644, (0, 0)),
        Err(WriteError::Abandoned { .. })
    ));
    assert!(!root.path().join("f").exists());
    // A new assembly starts over.
    assert_eq!(
        cut.open(root.path(), "f").unwrap().missing().len(),
        cut.chunks.len()
    );
}

/// A 1 MiB tmpfs mounted for one test, unmounted when dropped.
struct SmallDisk {
    dir: TempDir,
}

impl SmallDisk {
    fn mount() -> Option<SmallDisk> {
        let dir = tempfile::tempdir().ok()?;
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=1m", "none"])
            .arg(dir.path())
            .stderr(std::process::Stdio::null())
            .status()
            .ok()?;
        status.success().then_some(SmallDisk { dir })
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg(self.dir.path())
            .status();
    }
}

#[test]
fn a_full_disk_fails_cleanly_and_frees_the_temp_file() {
    let Some(disk) = SmallDisk::mount() else {
        println!("SKIPPED: cannot mount a tmpfs (not root?)");
        return;
    };
    let r = disk.dir.path();
    fs::create_dir(r.join(MARKER_DIR)).unwrap();
    fs::write(r.join("f"), data(2, 100_000)).unwrap();
    let expect = Expect::current(&r.join("f")).unwrap();
    let big = Cut::new(data(3, 2 << 20), &[CHUNK_MAX as usize]);
    let err = big.open(r, "f").unwrap_err();
    assert!(matches!(err, WriteError::DiskFull { .. }), "{err}");
    assert!(err.to_string().contains("disk full"), "{err}");
    assert_eq!(
        fs::read(r.join("f")).unwrap(),
        data(2, 100_000),
        "old file intact"
    );
    assert!(temps_in(r).is_empty(), "temp file removed");
    // The space is really back: a file that fits still goes through.
    let fits = Cut::new(data(4, 600_000), &[CHUNK_MAX as usize]);
    let mut asm = fits.open(r, "f").unwrap();
    let missing = asm.missing();
    write_all(&mut asm, &fits, &missing);
    asm.commit(expect, 0o644, (1, 0)).unwrap();
    assert_eq!(fs::read(r.join("f")).unwrap(), fits.data);
    // Two downloads that do not fit together: the second fails at open, before any fetch.
    let half = Cut::new(data(5, 300_000), &[CHUNK_MAX as usize]);
    let _a = half.open(r, "g").unwrap();
    let err = half.open(r, "h").unwrap_err();
    assert!(matches!(err, WriteError::DiskFull { .. }), "{err}");
    assert_eq!(temps_in(r).len(), 1);
}

/// `open_in_batch` creates the temp file with the mode it is meant to get, and `seal` leaves
/// it then; a different final mode, or a temp file left by an earlier attempt with another
/// mode, is still set.
#[test]
fn a_temp_file_created_with_a_mode_ends_with_the_mode_sealed() {
    let root = folder();
    let cut = Cut::new(b"small".to_vec(), &[5]);
    let file_hash = hash(&cut.data);
    let open = |rel: &str, mode: u32| {
        let mut asm = Assembly::open_in_batch(
            &mut BatchFolder::new(root.path()),
            rel,
            cut.data.len() as u64,
            file_hash,
            &cut.chunks,
            mode,
        )
        .unwrap();
        write_all(&mut asm, &cut, &[0]);
        asm
    };
    let mode_of = |rel: &str| {
        fs::symlink_metadata(root.path().join(rel))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    for (rel, created, sealed) in [
        ("same", 0o640, 0o640),
        ("other", 0o640, 0o604),
        ("setuid", 0o4750, 0o4750),
        ("none", 0o000, 0o000),
    ] {
        open(rel, created)
            .commit(Expect::Absent, sealed, (1_700_000_000, 0))
            .unwrap();
        assert_eq!(mode_of(rel), sealed & 0o777, "{rel}");
    }
    // Left by an earlier attempt (dropped, kept for resuming) with the temp mode, resumed by
    // one that would have created it with 0o644.
    drop(open("resumed", TEMP_MODE));
    open("resumed", 0o644)
        .commit(Expect::Absent, 0o644, (1_700_000_000, 0))
        .unwrap();
    assert_eq!(mode_of("resumed"), 0o644);
}

/// A small file assembled in the folder's incoming directory leaves no temp file beside its
/// target and none in the incoming directory once published; moved beside its target (for a
/// target on another mount), it keeps its content, mode, mtime and received mark.
#[test]
fn a_file_assembled_in_the_incoming_directory_is_published_whole_from_it_or_beside_its_target() {
    let root = folder();
    let r = root.path();
    let incoming_dir = r.join(MARKER_DIR).join(super::super::INCOMING_DIR);
    let cut = Cut::new(b"small file".to_vec(), &[10]);
    let file_hash = hash(&cut.data);
    let sealed_at = |rel: &str| {
        let mut asm = Assembly::open_in_batch(
            &mut BatchFolder::new(r),
            rel,
            cut.data.len() as u64,
            file_hash,
            &cut.chunks,
            0o640,
        )
        .unwrap();
        write_all(&mut asm, &cut, &[0]);
        asm.set_attribute("user.meshsync.test", b"mark").unwrap();
        let sealed = asm.seal(0o640, (1_000_000, 7)).unwrap();
        assert_eq!(temps_in(&incoming_dir).len(), 1);
        assert!(temps_in(&r.join("d")).is_empty());
        sealed
    };
    let check = |rel: &str| {
        let path = r.join(rel);
        assert_eq!(fs::read(&path).unwrap(), cut.data);
        let meta = fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o640);
        assert_eq!((meta.mtime(), meta.mtime_nsec()), (1_000_000, 7));
        let mark = sys::attribute(&path, "user.meshsync.test", 16).unwrap();
        assert_eq!(mark.as_deref(), Some(&b"mark"[..]));
    };

    let mut sealed = sealed_at("d/straight");
    flush_contents(std::slice::from_mut(&mut sealed))
        .remove(0)
        .unwrap();
    sealed.publish(Expect::Absent).unwrap();
    check("d/straight");
    assert!(temps_in(&incoming_dir).is_empty());

    let mut sealed = sealed_at("d/moved");
    sealed.move_beside_target().unwrap();
    assert!(temps_in(&incoming_dir).is_empty());
    assert_eq!(temps_in(&r.join("d")).len(), 1);
    sealed.publish(Expect::Absent).unwrap();
    check("d/moved");
    assert!(temps_in(&r.join("d")).is_empty());
}
