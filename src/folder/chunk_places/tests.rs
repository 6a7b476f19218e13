use super::*;
use crate::folder::model::{Content, EntryKind, FileMeta, describe};
use crate::folder::scan::ScanRecord;
use crate::folder::state::{self, RowSender, Synced};
use crate::merge::VersionVector;
use crate::store::local_state::LocalIndexChange;
use crate::store::tests::new_test_share;
use crate::store::{ShareId, ShareKind, StoreHandle};
use tokio::sync::watch;

fn chunk(i: u32) -> ChunkRef {
    ChunkRef {
        hash: *blake3::hash(&i.to_le_bytes()).as_bytes(),
        len: 4096,
    }
}

async fn store() -> (tempfile::TempDir, StoreHandle, ShareId) {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreHandle::open(
        dir.path(),
        libp2p::PeerId::random(),
        crate::folder::validate_remote_entry,
    )
    .unwrap();
    let meta = new_test_share("f", ShareKind::Folder);
    store.create_share(meta.clone()).await.unwrap();
    (dir, store, meta.id)
}

/// The synced row of a file made of `chunks` (its pages stored when it has any), with a stamp
/// from `inode`.
async fn file(store: &StoreHandle, share: ShareId, chunks: Vec<ChunkRef>, inode: u64) -> Synced {
    let size = chunks.iter().map(|c| u64::from(c.len)).sum();
    let (content, pages) = describe(chunks);
    if !pages.is_empty() {
        let pending = store
            .put_pages(share, state::encoded_pages(&pages))
            .await
            .unwrap();
        pending.done().await.unwrap();
    }
    Synced {
        record: ScanRecord {
            meta: FileMeta {
                kind: EntryKind::File,
                mode: 0o644,
                mtime_secs: 1_000,
                mtime_nanos: 0,
                size,
                hash: [0; 32],
                content,
                target: None,
            },
            ctime_secs: 1_000,
            ctime_nanos: 0,
            inode,
            dev: 1,
            racy: false,
        },
        base: VersionVector::default(),
    }
}

fn dir_row() -> Synced {
    Synced {
        record: ScanRecord {
            meta: FileMeta {
                kind: EntryKind::Dir,
                mode: 0o755,
                mtime_secs: 0,
                mtime_nanos: 0,
                size: 0,
                hash: [0; 32],
                content: Content::Empty,
                target: None,
            },
            ctime_secs: 0,
            ctime_nanos: 0,
            inode: 9,
            dev: 1,
            racy: false,
        },
        base: VersionVector::default(),
    }
}

/// The folder's state writer and a way to hand it a batch and wait for its commit.
struct Writer {
    rows: RowSender,
    committed: watch::Receiver<u64>,
    batch: u64,
    _task: tokio::task::JoinHandle<()>,
}

impl Writer {
    fn spawn(store: &StoreHandle, share: ShareId) -> Self {
        let (committed_tx, committed) = watch::channel(0);
        let (rows, task) = state::spawn_writer(store.clone(), share, "f".into(), committed_tx);
        Writer {
            rows,
            committed,
            batch: 0,
            _task: task,
        }
    }

    async fn write(&mut self, rows: Vec<(&str, Option<Synced>)>) {
        self.batch += 1;
        let rows = rows.into_iter().map(|(p, s)| (p.to_owned(), s)).collect();
        self.rows.send((self.batch, rows)).unwrap();
        let batch = self.batch;
        self.committed
            .wait_for(|&done| done >= batch)
            .await
            .unwrap();
    }
}

/// A share whose writer has committed one file, `a`, of chunk 1; and its places.
async fn with_file_a() -> (tempfile::TempDir, StoreHandle, ShareId, ChunkPlaces, Writer) {
    let (dir, store, share) = store().await;
    let places = ChunkPlaces::new(store.local_state_reader(share));
    let mut writer = Writer::spawn(&store, share);
    writer
        .write(vec![(
            "a",
            Some(file(&store, share, vec![chunk(1)], 1).await),
        )])
        .await;
    (dir, store, share, places, writer)
}

/// Where the places say chunk `i` is: its path and offset.
fn place_of(places: &ChunkPlaces, i: u32) -> Option<(String, u64)> {
    places
        .get(&chunk(i).hash)
        .map(|l| (l.path.to_string(), l.offset))
}

#[tokio::test]
async fn the_places_follow_the_synced_rows_the_writer_commits() {
    let (_dir, store, share, places, mut writer) = with_file_a().await;
    let found = places.get(&chunk(1).hash).expect("a's chunk is found");
    assert_eq!((&*found.path, found.offset, found.len), ("a", 0, 4096));
    let stamp = file(&store, share, vec![chunk(1)], 1).await.record.stamp();
    assert_eq!(found.stamp, stamp.map(|s| s.digest()), "with a's stamp");

    // a grows a chunk; b holds one of a's.
    let a = file(&store, share, vec![chunk(1), chunk(3)], 2).await;
    let b = file(&store, share, vec![chunk(3)], 3).await;
    writer.write(vec![("a", Some(a)), ("b", Some(b))]).await;
    assert_eq!(place_of(&places, 1), Some(("a".into(), 0)));
    assert!(
        [Some(("a".into(), 4096)), Some(("b".into(), 0))].contains(&place_of(&places, 3)),
        "{:?}",
        place_of(&places, 3)
    );

    // a is rewritten: its old chunks are no longer there; b still holds chunk 3.
    writer
        .write(vec![(
            "a",
            Some(file(&store, share, vec![chunk(4)], 4).await),
        )])
        .await;
    assert_eq!(place_of(&places, 1), None);
    assert_eq!(place_of(&places, 3), Some(("b".into(), 0)));
    assert_eq!(place_of(&places, 4), Some(("a".into(), 0)));

    // b is removed; a directory adds nothing.
    writer
        .write(vec![("b", None), ("d", Some(dir_row()))])
        .await;
    assert_eq!(place_of(&places, 3), None);

    // A large file, its chunk list in pages: 3,000 chunks, then an edit that keeps the first
    // 2,000 and replaces the rest.
    let big = file(&store, share, (0..3000).map(chunk).collect(), 5).await;
    assert!(matches!(big.record.meta.content, Content::Paged(_)));
    writer.write(vec![("big", Some(big))]).await;
    assert_eq!(place_of(&places, 2999), Some(("big".into(), 2999 * 4096)));
    let edited: Vec<ChunkRef> = (0..2000).chain(5000..6000).map(chunk).collect();
    let edited = file(&store, share, edited, 6).await;
    writer.write(vec![("big", Some(edited))]).await;
    assert_eq!(place_of(&places, 2500), None);
    assert_eq!(place_of(&places, 10), Some(("big".into(), 10 * 4096)));
    assert_eq!(place_of(&places, 5500), Some(("big".into(), 2500 * 4096)));

    // The folder was replaced: every synced path is forgotten, and every place with them.
    let forget = vec!["a".to_owned(), "big".to_owned(), "d".to_owned()];
    state::record_instance(
        &store,
        share,
        [7; crate::folder::instance::INSTANCE_ID_BYTES],
        forget,
        true,
    )
    .await
    .unwrap();
    assert_eq!(place_of(&places, 4), None);
    assert_eq!(place_of(&places, 10), None);
}

#[tokio::test]
async fn a_store_from_before_the_index_gets_it_written_once() {
    let (_dir, store, share) = store().await;
    // Synced rows written without places (as an older meshsync did), and a place left by a
    // build that did not finish, for a path that is gone.
    // Three large files: more place rows than one write of the build takes.
    let small = file(&store, share, vec![chunk(1), chunk(2)], 1).await;
    let big = file(&store, share, (100..3100).map(chunk).collect(), 2).await;
    let big2 = file(&store, share, (10_000..13_000).map(chunk).collect(), 3).await;
    let big3 = file(&store, share, (20_000..23_000).map(chunk).collect(), 4).await;
    const { assert!(3 * 3000 > state::CHUNK_INDEX_ROWS_AT_ONCE) };
    let rows = [
        ("small", small),
        ("big", big),
        ("big2", big2),
        ("big3", big3),
    ]
    .into_iter()
    .map(|(path, synced)| {
        let bytes = crate::cbor::encode(&synced).unwrap();
        (path.as_bytes().to_vec(), Some(bytes))
    })
    .collect();
    let stale = LocalIndexChange {
        clear: false,
        rows: row_changes(
            "gone",
            None,
            Some(FilePlaces {
                chunks: &[chunk(9)],
                stamp: None,
            }),
        ),
    };
    store.save_local_state(share, rows, stale).await.unwrap();
    let stored = store.local_state_reader(share);
    let places = ChunkPlaces::new(stored.clone());
    assert_eq!(place_of(&places, 1), None, "not indexed yet");

    let loaded = state::load(&stored, &mut |_, _| {}).unwrap();
    assert!(!loaded.chunks_indexed);
    assert_eq!(loaded.counts.files, 4);
    let (store2, stored2) = (store.clone(), stored.clone());
    let runtime = tokio::runtime::Handle::current();
    let files = tokio::task::spawn_blocking(move || {
        state::build_chunk_index(&stored2, &store2, share, &runtime)
    })
    .await
    .unwrap()
    .unwrap();
    assert_eq!(files, 4);
    assert_eq!(place_of(&places, 2), Some(("small".into(), 4096)));
    assert_eq!(place_of(&places, 3099), Some(("big".into(), 2999 * 4096)));
    for i in (10_000..13_000).chain(20_000..23_000).step_by(97) {
        let (path, offset) = place_of(&places, i).expect("every chunk has its place");
        let (start, name) = if i < 20_000 {
            (10_000, "big2")
        } else {
            (20_000, "big3")
        };
        assert_eq!((path.as_str(), offset), (name, u64::from(i - start) * 4096));
    }
    assert_eq!(
        place_of(&places, 9),
        None,
        "the unfinished build's rows are gone"
    );
    assert!(state::load(&stored, &mut |_, _| {}).unwrap().chunks_indexed);
}

#[tokio::test]
async fn recent_places_come_first_and_are_bounded() {
    let (_dir, _store, _share, places, _writer) = with_file_a().await;
    let trash = |i: u32| {
        let location = ChunkLocation {
            path: format!(".trash/{i}").into(),
            offset: 0,
            len: 4096,
            stamp: None,
        };
        (chunk(i).hash, location)
    };
    places.add_recent([trash(1)]);
    assert_eq!(place_of(&places, 1), Some((".trash/1".into(), 0)));

    // Past the bound the oldest go; adding a hash again makes it new.
    let more = MAX_RECENT_PLACES as u32;
    places.add_recent((2..more).map(trash));
    places.add_recent([trash(1)]);
    // Three more: out go 1's first addition (its place is newer: kept), 2 and 3.
    places.add_recent((more..more + 3).map(trash));
    assert_eq!(place_of(&places, 2), None, "the oldest were dropped");
    assert_eq!(place_of(&places, 3), None);
    assert_eq!(place_of(&places, 4), Some((".trash/4".into(), 0)));
    assert_eq!(place_of(&places, 1), Some((".trash/1".into(), 0)));
    let recent = places.recent.lock().unwrap();
    assert!(recent.places.len() <= MAX_RECENT_PLACES);
    assert!(recent.order.len() <= MAX_RECENT_PLACES);
    drop(recent);

    places.clear_recent();
    assert_eq!(
        place_of(&places, 1),
        Some(("a".into(), 0)),
        "the stored place"
    );
    assert_eq!(place_of(&places, 4), None);
}

#[test]
fn a_repeated_chunk_has_one_row_and_kept_chunks_are_not_removed() {
    let old = [chunk(1), chunk(2)];
    let new = [chunk(2), chunk(3), chunk(2)];
    let rows = row_changes(
        "p",
        Some(FilePlaces {
            chunks: &old,
            stamp: None,
        }),
        Some(FilePlaces {
            chunks: &new,
            stamp: None,
        }),
    );
    let removed: Vec<_> = rows.iter().filter(|(_, v)| v.is_none()).collect();
    assert_eq!(removed, [&(place_key(&chunk(1).hash, "p"), None)]);
    let written: Vec<_> = rows.iter().filter(|(_, v)| v.is_some()).collect();
    assert_eq!(
        written.len(),
        2,
        "chunk 2 once, at its first place; chunk 3"
    );
    let (key, value) = written[0];
    let place = decode_place(key, value.as_ref().unwrap()).unwrap();
    assert_eq!((&*place.path, place.offset), ("p", 0));
    assert_eq!(decode_place(&[PLACE_ROW], &[0; 12]).map(|_| ()), None);
    assert!(
        decode_place(key, &[0; 13]).is_none(),
        "a damaged row is no place"
    );
}
