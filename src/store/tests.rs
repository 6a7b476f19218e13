//! Store tests: durability across reopen, refusals, share names.

use super::*;
use crate::merge::{Hlc, PeerKey};

fn accept_any(_: ShareKind, _: &[u8], _: &RecordRegister) -> Result<(), InvalidEntry> {
    Ok(())
}

fn meta(name: &str) -> ShareMeta {
    new_test_share(name, ShareKind::Records)
}

/// A new share of `kind` named `name`, for tests here and in the store's users.
pub(crate) fn new_test_share(name: &str, kind: ShareKind) -> ShareMeta {
    let (id, secret) = crate::share::new_share();
    ShareMeta {
        id,
        name: name.into(),
        kind,
        secret,
        seed_addrs: vec![],
        path: None,
        writers: [0; 32],
        write_key: None,
        trusted_peers: vec![],
        paused: false,
    }
}

fn value(text: &str) -> Payload<ByteBuf> {
    Payload::Value(ByteBuf::from(text.as_bytes().to_vec()))
}

fn remote_register(peer: &libp2p::PeerId, millis: u64, text: &str) -> RecordRegister {
    let mut register = RecordRegister::new();
    register
        .write_local(
            &PeerKey::new(peer.to_bytes()).unwrap(),
            Hlc::new(millis, 0),
            value(text),
        )
        .unwrap();
    register
}

/// The summary kept in memory is only a tree of counts and hashes over the store's id index:
/// after writes in many batches (leaves filling and splitting) it must equal a summary built
/// afresh from the items stored, and one built from the store when it is opened again.
#[tokio::test]
async fn the_summary_follows_the_stored_items_through_many_batches_and_a_reopen() {
    let (dir, me, share, store) = new_store_with_share().await;
    let root = {
        for batch in 0..20 {
            let records = (0..150)
                .map(|i| {
                    (
                        format!("k{}", (batch * 97 + i * 13) % 2000).into_bytes(),
                        value("v"),
                    )
                })
                .collect();
            store.put(share.id, records).await.unwrap();
        }
        let state = store.share(&share.id).unwrap();
        let summary = state.summary.read().unwrap();
        let stored = summary
            .items(&crate::reconcile::Prefix::ROOT, usize::MAX)
            .unwrap();
        assert!(stored.len() > 1000, "{} items", stored.len());
        assert_eq!(summary.len(), stored.len() as u64);
        let fresh = crate::reconcile::Summary::from_items(stored);
        assert_eq!(
            summary.root(),
            fresh.root(),
            "the tree drifted from the items"
        );
        summary.root()
    };
    let store = reopen(store, &dir, me).await;
    let state = store.resolve("s").unwrap();
    assert_eq!(state.summary.read().unwrap().root(), root);
}

/// A store in a new directory with the records share "s"; [`reopen`] opens it again.
async fn new_store_with_share() -> (tempfile::TempDir, libp2p::PeerId, ShareMeta, StoreHandle) {
    let dir = tempfile::tempdir().unwrap();
    let me = libp2p::PeerId::random();
    let share = meta("s");
    let store = StoreHandle::open(dir.path(), me, accept_any).unwrap();
    store.create_share(share.clone()).await.unwrap();
    (dir, me, share, store)
}

/// Closes `store` and opens its directory again.
async fn reopen(store: StoreHandle, dir: &tempfile::TempDir, me: libp2p::PeerId) -> StoreHandle {
    drop(store);
    // The store thread exits when its handle is dropped; give it a moment to let go.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    StoreHandle::open(dir.path(), me, accept_any).unwrap()
}

#[tokio::test]
async fn writes_survive_reopen_with_the_same_summary() {
    let (dir, me, share, store) = new_store_with_share().await;
    let root = {
        let records = (0..100)
            .map(|i| (format!("k{i}").into_bytes(), value("v")))
            .collect();
        store.put(share.id, records).await.unwrap();
        store
            .put(share.id, vec![(b"k5".to_vec(), Payload::Tombstone)])
            .await
            .unwrap();
        let state = store.share(&share.id).unwrap();
        let root = state.summary.read().unwrap().root();
        assert_eq!(state.summary.read().unwrap().len(), 100);
        root
    };
    let store = reopen(store, &dir, me).await;
    let state = store.resolve("s").unwrap();
    assert_eq!(state.summary.read().unwrap().root(), root);
    assert!(
        store
            .get(share.id, b"k5".to_vec())
            .await
            .unwrap()
            .unwrap()
            .is_deleted()
    );
    assert_eq!(
        store.list(share.id, b"k9".to_vec()).await.unwrap().len(),
        11
    );
    let by_id = store
        .by_ids(share.id, vec![record_id(b"k7"), [0; 32]])
        .await
        .unwrap();
    assert_eq!(by_id.len(), 1);
    assert_eq!(by_id[0].0, b"k7");
}

/// Refusing far-future entries made peers disagree (a peer with a slower clock took what a
/// correct one refused) and pull the refused entries again and again. They are taken, and
/// every peer reaches the same winner; but they move our clock at most `MAX_CLOCK_SKEW` ahead,
/// also across a restart.
#[tokio::test]
async fn remote_entries_from_the_future_are_taken_without_dragging_our_clock() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreHandle::open(dir.path(), libp2p::PeerId::random(), accept_any).unwrap();
    let share = meta("s");
    store.create_share(share.clone()).await.unwrap();
    let peer = libp2p::PeerId::random();
    let now = wall_millis();
    let skewed = remote_register(&peer, now + 3600 * 1000, "from the future");
    let fine = remote_register(&peer, now, "fine");
    let merged = store
        .merge(
            share.id,
            vec![(b"a".to_vec(), skewed), (b"b".to_vec(), fine.clone())],
            peer,
        )
        .await
        .unwrap();
    assert_eq!(merged, 2);
    assert!(store.get(share.id, b"a".to_vec()).await.unwrap().is_some());
    // Merging the same thing again changes nothing (idempotent).
    let merged = store
        .merge(share.id, vec![(b"b".to_vec(), fine)], peer)
        .await
        .unwrap();
    assert_eq!(merged, 0);
    let bound = |now: u64| now + crate::merge::MAX_CLOCK_SKEW_MILLIS + 1000;
    store
        .put(share.id, vec![(b"c".to_vec(), value("mine"))])
        .await
        .unwrap();
    let ours = store.get(share.id, b"c".to_vec()).await.unwrap().unwrap();
    assert!(
        ours.winner().unwrap().hlc().millis <= bound(now),
        "our clock was dragged"
    );
    drop(store);
    // The store thread lets the database go shortly after its handle is dropped.
    let mut tries = 0;
    let store = loop {
        match StoreHandle::open(dir.path(), libp2p::PeerId::random(), accept_any) {
            Ok(store) => break store,
            Err(_) if tries < 250 => {
                tries += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            Err(e) => panic!("cannot reopen the store: {e}"),
        }
    };
    store
        .put(share.id, vec![(b"d".to_vec(), value("mine"))])
        .await
        .unwrap();
    let ours = store.get(share.id, b"d".to_vec()).await.unwrap().unwrap();
    assert!(
        ours.winner().unwrap().hlc().millis <= bound(wall_millis()),
        "our clock was dragged at start-up"
    );
}

#[tokio::test]
async fn oversized_and_invalid_records_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreHandle::open(dir.path(), libp2p::PeerId::random(), accept_any).unwrap();
    let share = meta("s");
    store.create_share(share.clone()).await.unwrap();
    let big = Payload::Value(ByteBuf::from(vec![0u8; MAX_VALUE_BYTES + 1]));
    assert!(matches!(
        store.put(share.id, vec![(b"k".to_vec(), big)]).await,
        Err(StoreError::Invalid(_))
    ));
    let long_key = vec![b'k'; MAX_KEY_BYTES + 1];
    assert!(
        store
            .put(share.id, vec![(long_key, value("v"))])
            .await
            .is_err()
    );
    assert!(
        store
            .put(share.id, vec![(vec![0xff], value("v"))])
            .await
            .is_err()
    );
    // A failed write leaves nothing behind, even its valid neighbours in the same call.
    assert!(
        store
            .put(
                share.id,
                vec![(b"ok".to_vec(), value("v")), (vec![], value("v"))]
            )
            .await
            .is_err()
    );
    assert!(store.get(share.id, b"ok".to_vec()).await.unwrap().is_none());
    assert!(matches!(
        store
            .create_share(ShareMeta {
                id: share.id,
                ..meta("other")
            })
            .await,
        Err(StoreError::AlreadyJoined(_))
    ));
    assert!(matches!(
        store.create_share(meta("s")).await,
        Err(StoreError::NameTaken(_))
    ));
}

#[tokio::test]
async fn version_1_folder_databases_are_migrated_once_and_removed() {
    let dir = tempfile::tempdir().unwrap();
    let share: ShareId = [7; 32];
    let legacy = dir
        .path()
        .join(format!("folder-{}.redb", hex::encode(share)));
    let page = b"a chunk list page".to_vec();
    let page_hash = *blake3::hash(&page).as_bytes();
    {
        let db = redb::Database::create(&legacy).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let synced: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("synced");
            let pages: redb::TableDefinition<&[u8], &[u8]> = redb::TableDefinition::new("pages");
            let mut t = txn.open_table(synced).unwrap();
            t.insert("dir/a.txt", b"row a".as_slice()).unwrap();
            t.insert("b.txt", b"row b".as_slice()).unwrap();
            let mut p = txn.open_table(pages).unwrap();
            p.insert(page_hash.as_slice(), page.as_slice()).unwrap();
        }
        txn.commit().unwrap();
    }
    let me = libp2p::PeerId::random();
    {
        let store = StoreHandle::open(dir.path(), me, accept_any).unwrap();
        assert!(!legacy.exists(), "the old database is removed once copied");
        let rows = store.local_state(share).await.unwrap();
        assert_eq!(
            rows,
            vec![
                (b"b.txt".to_vec(), b"row b".to_vec()),
                (b"dir/a.txt".to_vec(), b"row a".to_vec()),
            ]
        );
        assert_eq!(
            store.page(share, page_hash).await.unwrap(),
            Some(page.clone())
        );
        assert_eq!(
            store.page([8; 32], page_hash).await.unwrap(),
            None,
            "per share"
        );
        store
            .save_local_state(share, vec![(b"b.txt".to_vec(), None)], Default::default())
            .await
            .unwrap();
        store.shutdown().await;
    }
    // A second open migrates nothing again (the removed row stays removed).
    let store = StoreHandle::open(dir.path(), me, accept_any).unwrap();
    let rows = store.local_state(share).await.unwrap();
    assert_eq!(rows, vec![(b"dir/a.txt".to_vec(), b"row a".to_vec())]);
    store.shutdown().await;
}

#[tokio::test]
async fn pages_must_match_their_hash_and_a_newer_schema_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let me = libp2p::PeerId::random();
    {
        let store = StoreHandle::open(dir.path(), me, accept_any).unwrap();
        let share: ShareId = [1; 32];
        let pending = store
            .put_pages(share, vec![([0; 32], b"not that".to_vec())])
            .await
            .unwrap();
        assert!(matches!(pending.done().await, Err(StoreError::Invalid(_))));
        store.shutdown().await;
    }
    {
        let db = redb::Database::open(dir.path().join("meshsync.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        {
            let mut meta = txn.open_table(schema::META).unwrap();
            meta.insert("schema", (SCHEMA_VERSION + 1).to_le_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    match StoreHandle::open(dir.path(), me, accept_any) {
        Err(StoreError::NewerSchema { found, .. }) => assert_eq!(found, SCHEMA_VERSION + 1),
        Err(e) => panic!("wrong error: {e}"),
        Ok(_) => panic!("a newer schema must be refused"),
    }
}

#[tokio::test]
async fn a_removed_share_leaves_nothing_behind_and_others_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let me = libp2p::PeerId::random();
    let (gone, kept) = (meta("gone"), meta("kept"));
    {
        let store = StoreHandle::open(dir.path(), me, accept_any).unwrap();
        for share in [&gone, &kept] {
            store.create_share(share.clone()).await.unwrap();
            store
                .put(share.id, vec![(b"k".to_vec(), value("v"))])
                .await
                .unwrap();
            store
                .save_local_state(
                    share.id,
                    vec![(b"k".to_vec(), Some(b"state".to_vec()))],
                    Default::default(),
                )
                .await
                .unwrap();
        }
        store.remove_share(gone.id).await.unwrap();
        assert!(store.share(&gone.id).is_none());
        assert!(matches!(
            store.remove_share(gone.id).await,
            Err(StoreError::UnknownShare(_))
        ));
    }
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let store = StoreHandle::open(dir.path(), me, accept_any).unwrap();
    assert!(store.resolve("gone").is_err(), "forgotten after a reopen");
    // Joined again, it starts empty: no entries, no local state.
    store.create_share(gone.clone()).await.unwrap();
    assert!(store.list(gone.id, Vec::new()).await.unwrap().is_empty());
    assert!(store.local_state(gone.id).await.unwrap().is_empty());
    assert_eq!(store.list(kept.id, Vec::new()).await.unwrap().len(), 1);
    assert_eq!(store.local_state(kept.id).await.unwrap().len(), 1);
}

#[tokio::test]
async fn a_listing_read_page_by_page_gives_every_entry_once_and_local_state_reads_see_commits() {
    let dir = tempfile::tempdir().unwrap();
    let store = StoreHandle::open(dir.path(), libp2p::PeerId::random(), accept_any).unwrap();
    let share = meta("s");
    store.create_share(share.clone()).await.unwrap();
    // "a" is a prefix of "a\0" and "ab": a page ending at "a" must still give both.
    let mut keys: Vec<Vec<u8>> = (0..25).map(|i| format!("k{i:02}").into_bytes()).collect();
    keys.extend([b"a".to_vec(), b"a\0".to_vec(), b"ab".to_vec()]);
    let records = keys.iter().map(|k| (k.clone(), value("v"))).collect();
    store.put(share.id, records).await.unwrap();
    for limit in [1, 2, 7, 28, 100] {
        let (mut after, mut seen) = (None, Vec::new());
        loop {
            let page = store
                .list_page(share.id, Vec::new(), after.take(), limit)
                .await
                .unwrap();
            assert!(page.len() <= limit);
            let full = page.len() == limit;
            after = page.last().map(|(k, _)| k.clone());
            seen.extend(page.into_iter().map(|(k, _)| k));
            if !full {
                break;
            }
        }
        let mut expected = keys.clone();
        expected.sort();
        assert_eq!(seen, expected, "pages of {limit}");
    }
    let only_k = store
        .list_page(share.id, b"k".to_vec(), Some(b"k20".to_vec()), 100)
        .await
        .unwrap();
    assert_eq!(only_k.len(), 4);

    let reader = store.local_state_reader(share.id);
    assert_eq!(reader.snapshot().unwrap().get(b"p").unwrap(), None);
    let before = reader.snapshot().unwrap();
    store
        .save_local_state(
            share.id,
            vec![(b"p".to_vec(), Some(b"x".to_vec()))],
            Default::default(),
        )
        .await
        .unwrap();
    // A snapshot sees what was committed when it was taken; a new one sees the write.
    assert_eq!(before.get(b"p").unwrap(), None);
    let after = reader.snapshot().unwrap();
    assert_eq!(after.get(b"p").unwrap(), Some(b"x".to_vec()));
    assert!(after.contains(b"p").unwrap());
    let mut rows = Vec::new();
    after
        .for_each_with_prefix(b"", |k, v| {
            rows.push((k.to_vec(), v.to_vec()));
            true
        })
        .unwrap();
    assert_eq!(rows, vec![(b"p".to_vec(), b"x".to_vec())]);
    drop((before, after));

    // Handles and readers left behind do not keep the database open once the store stops: it
    // is closed cleanly, and opens again.
    let kept = store.clone();
    store.shutdown().await;
    assert!(matches!(reader.snapshot(), Err(StoreError::Stopped)));
    let again = StoreHandle::open(dir.path(), libp2p::PeerId::random(), accept_any).unwrap();
    again.shutdown().await;
    drop(kept);
}

/// A read-only member's `status` counts its own edits that nobody takes: that was a read of the
/// whole share at each call (seconds at 10^7 records, with the store thread busy and writes
/// waiting). It is read once, then kept up to date by each commit: it must always equal a count
/// made afresh (here: after a reopen).
#[tokio::test]
async fn the_count_of_our_own_entries_follows_writes_and_merges() {
    let (dir, me, share, store) = new_store_with_share().await;
    let put = |keys: std::ops::Range<u32>| {
        let records = keys
            .map(|i| (format!("k{i}").into_bytes(), value("mine")))
            .collect();
        store.put(share.id, records)
    };
    put(0..10).await.unwrap();
    assert_eq!(store.count_authored(share.id).await.unwrap(), 10);
    // New keys count, a rewrite of one of ours does not count twice.
    put(8..14).await.unwrap();
    assert_eq!(store.count_authored(share.id).await.unwrap(), 14);
    // A peer's entry for a key we never wrote is not ours.
    let peer = libp2p::PeerId::random();
    let theirs = remote_register(&peer, wall_millis(), "theirs");
    store
        .merge(share.id, vec![(b"t".to_vec(), theirs.clone())], peer)
        .await
        .unwrap();
    assert_eq!(store.count_authored(share.id).await.unwrap(), 14);
    // A peer's edit made on top of ours replaces our version: that key is no longer ours...
    let mut replaced = store.get(share.id, b"k0".to_vec()).await.unwrap().unwrap();
    replaced
        .write_local(
            &PeerKey::new(peer.to_bytes()).unwrap(),
            Hlc::new(wall_millis() + 1, 0),
            value("theirs now"),
        )
        .unwrap();
    store
        .merge(share.id, vec![(b"k0".to_vec(), replaced)], peer)
        .await
        .unwrap();
    assert_eq!(store.count_authored(share.id).await.unwrap(), 13);
    // ... and our edit of theirs makes it ours.
    store
        .put(share.id, vec![(b"t".to_vec(), value("mine too"))])
        .await
        .unwrap();
    assert_eq!(store.count_authored(share.id).await.unwrap(), 14);
    // A failed write changes nothing.
    let too_long = vec![b'k'; crate::store::MAX_KEY_BYTES + 1];
    let failed = store
        .put(
            share.id,
            vec![(b"k99".to_vec(), value("v")), (too_long, value("v"))],
        )
        .await;
    assert!(failed.is_err());
    assert_eq!(store.count_authored(share.id).await.unwrap(), 14);
    let store = reopen(store, &dir, me).await;
    assert_eq!(store.count_authored(share.id).await.unwrap(), 14);
}

#[tokio::test]
async fn a_version_2_store_gains_the_local_index_and_keeps_its_rows() {
    let dir = tempfile::tempdir().unwrap();
    let me = libp2p::PeerId::random();
    let share = new_test_share("f", ShareKind::Folder);
    {
        let store = StoreHandle::open(dir.path(), me, accept_any).unwrap();
        store.create_share(share.clone()).await.unwrap();
        let rows = vec![(b"p".to_vec(), Some(b"synced".to_vec()))];
        store
            .save_local_state(share.id, rows, Default::default())
            .await
            .unwrap();
        store.shutdown().await;
    }
    // What version 2 had: no local index table.
    {
        let db = redb::Database::open(dir.path().join("meshsync.redb")).unwrap();
        let txn = db.begin_write().unwrap();
        assert!(txn.delete_table(schema::LOCAL_INDEX).unwrap());
        {
            let mut meta = txn.open_table(schema::META).unwrap();
            meta.insert("schema", 2u32.to_le_bytes().as_slice())
                .unwrap();
        }
        txn.commit().unwrap();
    }
    let store = StoreHandle::open(dir.path(), me, accept_any).unwrap();
    let reader = store.local_state_reader(share.id);
    assert_eq!(
        reader.snapshot().unwrap().get(b"p").unwrap().as_deref(),
        Some(&b"synced"[..])
    );
    let index = reader.index_snapshot().unwrap();
    let mut rows = 0;
    index
        .for_each_with_prefix(b"", |_, _| {
            rows += 1;
            true
        })
        .unwrap();
    assert_eq!(rows, 0, "created empty");
    drop(index);
    let index = local_state::LocalIndexChange {
        clear: false,
        rows: vec![(b"k".to_vec(), Some(b"v".to_vec()))],
    };
    store
        .save_local_state(share.id, vec![], index)
        .await
        .unwrap();
    let index = reader.index_snapshot().unwrap();
    assert_eq!(index.get(b"k").unwrap().as_deref(), Some(&b"v"[..]));
    drop(index);
    // Cleared with the share.
    store.remove_share(share.id).await.unwrap();
    let index = reader.index_snapshot().unwrap();
    assert_eq!(index.get(b"k").unwrap(), None);
}

/// Peers' entries wait while a reader of change notices is more than `CHANGE_BACKLOG_MAX`
/// behind, and go on once it takes them: a reader that keeps up loses none, however many
/// entries come (beyond the channel's `CHANGE_BUFFER`, it lost them and compared everything
/// again).
#[tokio::test]
async fn merges_wait_for_a_reader_of_change_notices_that_falls_behind() {
    const BATCH: usize = 4096;
    let (_dir, _me, share, store) = new_store_with_share().await;
    let mut reader = store.subscribe();
    let peer = libp2p::PeerId::random();
    let batches = CHANGE_BACKLOG_MAX / BATCH + 2;
    let merged = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let merging = {
        let (store, merged) = (store.clone(), merged.clone());
        tokio::spawn(async move {
            for batch in 0..batches {
                let entries = (0..BATCH)
                    .map(|i| {
                        let key = format!("b{batch}-{i}").into_bytes();
                        (key, remote_register(&peer, 1_000 + i as u64, "v"))
                    })
                    .collect();
                store.merge(share.id, entries, peer).await.unwrap();
                merged.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        })
    };
    // The reader takes nothing: the last batch waits once the backlog is past the bound.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.merges_waiting() == 0 {
        assert!(std::time::Instant::now() < deadline, "no merge waited");
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    assert_eq!(
        merged.load(std::sync::atomic::Ordering::SeqCst),
        batches - 1,
        "merges went past the bound"
    );
    assert!(reader.len() > CHANGE_BACKLOG_MAX && reader.len() <= CHANGE_BACKLOG_MAX + BATCH);
    let mut taken = 0;
    while taken < batches * BATCH {
        match reader.recv().await {
            Ok(_) => taken += 1,
            Err(e) => panic!("the reader lost notices after {taken}: {e}"),
        }
    }
    merging.await.unwrap();
    assert_eq!(store.merges_waiting(), 0);
    let notices = store.change_notices();
    assert_eq!(notices.merges_waited, 1, "{notices:?}");
    assert_eq!(notices.backlog, 0, "{notices:?}");
}

/// A merge cancelled while it waits for readers (its session closed) is no longer counted as
/// waiting.
#[tokio::test]
async fn a_merge_cancelled_while_it_waits_for_readers_is_no_longer_counted() {
    let (_dir, _me, share, store) = new_store_with_share().await;
    let _reader = store.subscribe();
    let peer = libp2p::PeerId::random();
    let batch = |name: &str, count: usize| -> Vec<_> {
        (0..count)
            .map(|i| {
                let key = format!("{name}-{i}").into_bytes();
                (key, remote_register(&peer, 1_000 + i as u64, "v"))
            })
            .collect()
    };
    // Past the bound, with a reader that takes nothing.
    store
        .merge(share.id, batch("fill", CHANGE_BACKLOG_MAX + 1), peer)
        .await
        .unwrap();
    let waiting = {
        let store = store.clone();
        let entries = batch("late", 1);
        tokio::spawn(async move { store.merge(share.id, entries, peer).await })
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while store.merges_waiting() == 0 {
        assert!(
            std::time::Instant::now() < deadline,
            "the merge did not wait"
        );
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
    waiting.abort();
    assert!(waiting.await.unwrap_err().is_cancelled());
    assert_eq!(store.merges_waiting(), 0);
}
