use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use super::*;
use crate::folder::error::WriteFailure;
use crate::folder::model::{Content, EntryKind, Hash, MARKER_DIR};
use crate::folder::write::testkit::{data, folder, hash, temps_in};

const MTIME: (i64, u32) = (1_700_000_000, 123_000_000);

/// A one-chunk file of `bytes` at `rel`, expected absent, with its chunk in hand.
fn small(root: &Path, rel: &str, bytes: &[u8]) -> SmallFile {
    let chunk = ChunkRef {
        hash: hash(bytes),
        len: bytes.len() as u32,
    };
    SmallFile {
        root: root.to_path_buf(),
        rel: rel.to_owned(),
        meta: FileMeta {
            kind: EntryKind::File,
            mode: 0o640,
            mtime_secs: MTIME.0,
            mtime_nanos: MTIME.1,
            size: bytes.len() as u64,
            hash: hash(bytes),
            content: Content::Inline(vec![chunk]),
            target: None,
        },
        chunks: vec![chunk],
        contents: vec![Some(CheckedChunk::check(&chunk, bytes.to_vec()).unwrap())],
        mark: None,
        keep_old: false,
        expect: Expect::Absent,
        counters: Arc::new(Counters::default()),
    }
}

fn assert_written(root: &Path, rel: &str, bytes: &[u8], record: &ScanRecord) {
    let path = root.join(rel);
    assert_eq!(fs::read(&path).unwrap(), bytes, "{rel}");
    let meta = fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o640, "{rel}");
    assert_eq!((meta.mtime(), meta.mtime_nsec() as u32), MTIME, "{rel}");
    assert_eq!(record.meta.hash, hash(bytes), "{rel}");
    assert_eq!(record.inode, meta.ino(), "{rel}");
    // Taken after the rename, which changes the inode's ctime: else the next scan would take
    // every received file for a local edit and hash it again.
    assert_eq!(
        (record.ctime_secs, record.ctime_nanos),
        (meta.ctime(), meta.ctime_nsec() as u32),
        "{rel}"
    );
}

fn temp_of(rel: &str, content: &Hash) -> String {
    write::temp_name(rel, content)
}

#[test]
fn a_batch_writes_every_file_and_fails_only_those_that_cannot_be_written() {
    let dir = folder();
    let root = dir.path();
    fs::write(root.join("replaced.txt"), b"the old version").unwrap();
    fs::write(root.join("taken.txt"), b"written here meanwhile").unwrap();

    let mut batch = Vec::new();
    let mut outcomes = Vec::new();
    let mut add = |file: SmallFile| {
        let (reply, outcome) = oneshot::channel();
        batch.push(Waiting { file, reply });
        outcomes.push(outcome);
    };
    let contents: Vec<(String, Vec<u8>)> = (0..40)
        .map(|i| (format!("d{}/f{i}.bin", i % 3), data(i, 1 + 97 * i as usize)))
        .collect();
    for (rel, bytes) in &contents {
        add(small(root, rel, bytes));
    }
    let mut replacing = small(root, "replaced.txt", b"the new version");
    replacing.keep_old = true;
    replacing.expect = Expect::of(&fs::symlink_metadata(root.join("replaced.txt")).unwrap());
    add(replacing);
    // Something appeared where the file was to be new: a conflict, and the temp file stays.
    add(small(root, "taken.txt", b"ours"));
    // A chunk that could not be had: the file is incomplete.
    let mut incomplete = small(root, "incomplete.txt", b"never whole");
    incomplete.contents = vec![None];
    add(incomplete);

    write_batch(batch);

    let mut outcomes: Vec<Result<Written, WriteError>> = outcomes
        .into_iter()
        .map(|outcome| outcome.blocking_recv().expect("every file is answered"))
        .collect();
    let incomplete = outcomes.pop().unwrap();
    let taken = outcomes.pop().unwrap();
    let replaced = outcomes
        .pop()
        .unwrap()
        .expect("the replacing file is written");
    for ((rel, bytes), outcome) in contents.iter().zip(&outcomes) {
        let written = outcome.as_ref().expect("a new file is written");
        assert_written(root, rel, bytes, &written.record);
        assert!(written.kept.is_none());
    }

    assert_eq!(
        fs::read(root.join("replaced.txt")).unwrap(),
        b"the new version"
    );
    let kept = replaced.kept.expect("the replaced file was kept");
    assert_eq!(fs::read(root.join(kept)).unwrap(), b"the old version");

    assert!(matches!(taken, Err(WriteError::Conflict { .. })));
    assert_eq!(
        fs::read(root.join("taken.txt")).unwrap(),
        b"written here meanwhile"
    );
    assert!(matches!(incomplete, Err(WriteError::Incomplete { .. })));
    assert!(!root.join("incomplete.txt").exists());

    // Kept in the folder's incoming directory, none beside their targets.
    assert!(temps_in(root).is_empty());
    let mut temps = temps_in(&root.join(MARKER_DIR).join(write::INCOMING_DIR));
    temps.sort();
    let mut expected = vec![
        temp_of("taken.txt", &hash(b"ours")),
        temp_of("incomplete.txt", &hash(b"never whole")),
    ];
    expected.sort();
    assert_eq!(
        temps, expected,
        "only the conflict's and the incomplete file's temps stay"
    );
    for d in 0..3 {
        assert!(temps_in(&root.join(format!("d{d}"))).is_empty());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_written_from_many_tasks_all_arrive_and_a_lone_one_too() {
    let dir = folder();
    let root = dir.path().to_path_buf();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u64 {
        let root = root.clone();
        tasks.spawn(async move {
            let rel = format!("many/f{i}");
            let bytes = data(i, 10 + i as usize);
            let written = write(small(&root, &rel, &bytes)).await;
            (rel, bytes, written)
        });
    }
    while let Some(done) = tasks.join_next().await {
        let (rel, bytes, written) = done.unwrap();
        let written = written.unwrap_or_else(|_| panic!("{rel} was not written"));
        assert_written(&root, &rel, &bytes, &written.record);
    }
    let lone = write(small(&root, "lone.txt", b"alone")).await;
    assert_written(&root, "lone.txt", b"alone", &lone.ok().unwrap().record);
    let conflict = write(small(&root, "lone.txt", b"again, as new")).await;
    assert!(matches!(conflict, Err(WriteFailure::Conflict)));
    assert!(temps_in(&root.join("many")).is_empty());
}
