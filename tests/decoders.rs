//! Robustness of every decoder of untrusted bytes, on stable Rust (the quick twin of `fuzz/`).
//!
//! Arbitrary bytes, and valid encodings with flipped bits, overwritten bytes and truncations, go
//! through each decoder: wire frames from peers, reconciliation messages, share tokens, and what
//! the store reads back from disk (registers, file descriptions, chunk-list pages, share rows,
//! the clock, scan records). Nothing may panic, and whatever decodes must re-encode to an equal
//! value whose encoding is a fixed point.

use std::sync::LazyLock;

use futures::executor::block_on;
use futures::io::Cursor;
use meshsync::folder::Synced;
use meshsync::folder::model::{self, ChunkRef, Content, EntryKind, FileMeta};
use meshsync::folder::scan::ScanRecord;
use meshsync::merge::{Hlc, Payload, PeerKey};
use meshsync::net::protocol::{
    self, AuthProof, Hello, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, WireEntry,
};
use meshsync::reconcile::{self, Initiator, Item, Step, Summary};
use meshsync::share::{MAX_TOKEN_CHARS, Token};
use meshsync::store::{RecordRegister, ShareKind, ShareMeta};
use proptest::prelude::*;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_bytes::{ByteArray, ByteBuf};

const FOLDER_KEY: &[u8] = b"docs/report.txt";

// ---------------------------------------------------------------------------------------------
// Every decoder, with the checks that hold when it succeeds
// ---------------------------------------------------------------------------------------------

fn cbor<T: Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("encodes");
    out
}

/// Re-encodes a decoded value, decodes it again, and checks equality and the fixed point.
fn round_trips<T>(value: &T)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = cbor(value);
    let back: T = ciborium::from_reader(bytes.as_slice()).expect("a re-encoding decodes");
    assert_eq!(&back, value);
    assert_eq!(cbor(&back), bytes);
}

fn check_register(reg: &RecordRegister) {
    let _ = (reg.winner(), reg.conflicts(), reg.value(), reg.is_deleted());
    let seen = reg.seen();
    assert!(seen.dominates(reg.superseded()));
    for v in reg.versions() {
        assert!(v.vv().get(v.origin()) > 0);
        assert!(seen.dominates(v.vv()));
    }
    let bytes = reg.to_cbor().expect("re-encodes");
    let back = RecordRegister::from_cbor(&bytes).expect("re-decodes");
    assert_eq!(&back, reg);
    assert_eq!(back.to_cbor().unwrap(), bytes);
    let mut twice = reg.clone();
    twice.merge(reg);
    assert_eq!(&twice, reg, "merge is idempotent");
    let _ = meshsync::folder::validate_remote_entry(ShareKind::Folder, FOLDER_KEY, reg);
}

fn check_wire<T>(msg: &T, limit: usize)
where
    T: Serialize + DeserializeOwned + PartialEq + std::fmt::Debug,
{
    let bytes = protocol::encode(msg).unwrap();
    assert_eq!(&protocol::decode::<T>(&bytes).unwrap(), msg);
    assert_eq!(
        protocol::frame_len(msg),
        protocol::varint(bytes.len()).len() + bytes.len()
    );
    let mut framed = Cursor::new(Vec::new());
    block_on(protocol::write_frame(&mut framed, msg, limit)).unwrap();
    let mut io = Cursor::new(framed.into_inner());
    assert_eq!(
        &block_on(protocol::read_frame::<T, _>(&mut io, limit)).unwrap(),
        msg
    );
}

fn check_request(req: &protocol::Request) {
    check_wire(req, MAX_REQUEST_BYTES);
    match req {
        protocol::Request::Announce { entries, .. } => {
            entries.iter().for_each(|e| check_register(&e.register))
        }
        protocol::Request::Reconcile { message, .. } => reconcile_bytes(message),
        _ => {}
    }
}

fn check_response(res: &protocol::Response) {
    check_wire(res, MAX_RESPONSE_BYTES);
    match res {
        protocol::Response::Entries(entries) => {
            entries.iter().for_each(|e| check_register(&e.register))
        }
        protocol::Response::Reconcile(message) => reconcile_bytes(message),
        protocol::Response::Page(bytes) => page(bytes),
        _ => {}
    }
}

/// Reads `bytes` as a stream of frames, as the daemon reads a peer's stream.
fn frames<T: DeserializeOwned>(bytes: &[u8], limit: usize, check: fn(&T)) {
    let mut io = Cursor::new(bytes);
    while let Ok(msg) = block_on(protocol::read_frame::<T, _>(&mut io, limit)) {
        check(&msg);
    }
}

fn wire(bytes: &[u8]) {
    if let Ok(req) = protocol::decode::<protocol::Request>(bytes) {
        check_request(&req);
    }
    if let Ok(res) = protocol::decode::<protocol::Response>(bytes) {
        check_response(&res);
    }
    frames(bytes, MAX_REQUEST_BYTES, check_request);
    frames(bytes, MAX_RESPONSE_BYTES, check_response);
    frames(bytes, 64, check_request);
}

/// The two sides of a small session: the responder answers fuzzed requests and the initiator
/// takes fuzzed responses.
static SUMMARIES: LazyLock<(Summary, Summary)> = LazyLock::new(|| {
    let item = |k: u64, v: u64| Item {
        id: *blake3::hash(&k.to_le_bytes()).as_bytes(),
        digest: *blake3::hash(&(k * 1000 + v).to_le_bytes()).as_bytes(),
    };
    let mine = (0..60).map(|k| item(k, 0));
    let theirs = (5..70).map(|k| item(k, u64::from(k % 9 == 0)));
    (Summary::from_items(mine), Summary::from_items(theirs))
});

fn reconcile_bytes(bytes: &[u8]) {
    let (initiator_side, responder_side) = &*SUMMARIES;
    if let Ok(req) = reconcile::Request::decode(bytes) {
        if let Ok(again) = req.encode() {
            assert_eq!(reconcile::Request::decode(&again).unwrap(), req);
        }
        if let Ok(res) = reconcile::respond(responder_side, &req) {
            let encoded = res.encode().expect("a reply always fits");
            assert_eq!(reconcile::Response::decode(&encoded).unwrap(), res);
        }
    }
    if let Ok(res) = reconcile::Response::decode(bytes) {
        if let Ok(again) = res.encode() {
            assert_eq!(reconcile::Response::decode(&again).unwrap(), res);
        }
        let (mut init, _) = Initiator::start(initiator_side, [3; 16]);
        if let Ok(Step::Send(next)) = init.on_response(initiator_side, res) {
            next.encode().expect("the initiator's requests fit");
        }
    }
}

fn token(bytes: &[u8]) {
    let text = String::from_utf8_lossy(bytes);
    if let Ok(token) = Token::parse(&text) {
        let _ = token.dialable_addrs();
        let encoded = token.encode();
        if encoded.len() <= MAX_TOKEN_CHARS {
            assert_eq!(Token::parse(&encoded).unwrap(), token);
        }
    }
}

fn file_meta(meta: &FileMeta) {
    round_trips(meta);
    let path = std::str::from_utf8(FOLDER_KEY).unwrap();
    let _ = model::check_meta(path, meta);
    for path in ["", "a", ".meshsync/x", "../up", "/abs", "x//y", "ok/😀"] {
        let _ = model::check_rel_path(path);
        let _ = model::check_meta(path, meta);
    }
}

fn page(bytes: &[u8]) {
    if let Ok(chunks) = ciborium::from_reader::<Vec<ChunkRef>, _>(bytes) {
        let encoded = model::encode_page(&chunks);
        let back: Vec<ChunkRef> = ciborium::from_reader(encoded.as_slice()).unwrap();
        assert_eq!(back, chunks);
        let _ = model::describe(chunks);
    }
}

fn disk(bytes: &[u8]) {
    if let Ok(reg) = RecordRegister::from_cbor(bytes) {
        check_register(&reg);
    }
    if let Ok(meta) = ciborium::from_reader::<FileMeta, _>(bytes) {
        file_meta(&meta);
    }
    page(bytes);
    if let Ok(meta) = ciborium::from_reader::<ShareMeta, _>(bytes) {
        round_trips(&meta);
    }
    if let Ok(hlc) = ciborium::from_reader::<Hlc, _>(bytes) {
        round_trips(&hlc);
    }
    if let Ok(record) = ciborium::from_reader::<ScanRecord, _>(bytes) {
        round_trips(&record);
    }
    if let Ok(synced) = ciborium::from_reader::<Synced, _>(bytes) {
        round_trips(&synced);
    }
    if let Ok(path) = std::str::from_utf8(bytes) {
        let _ = model::check_rel_path(path);
    }
}

fn decode_everything(bytes: &[u8]) {
    wire(bytes);
    reconcile_bytes(bytes);
    token(bytes);
    disk(bytes);
}

// ---------------------------------------------------------------------------------------------
// Valid encodings to damage
// ---------------------------------------------------------------------------------------------

fn hash(tag: &str, n: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(tag.as_bytes());
    h.update(&n.to_le_bytes());
    *h.finalize().as_bytes()
}

fn peer(b: u8) -> PeerKey {
    PeerKey::new(vec![b; 38]).unwrap()
}

fn register(writes: &[(u8, u64, Option<Vec<u8>>)]) -> RecordRegister {
    let mut merged = RecordRegister::new();
    for (p, millis, value) in writes {
        // Every writer starts from what the last merge knew, so some writes are concurrent.
        let mut own = merged.clone();
        let payload = match value {
            Some(v) => Payload::Value(ByteBuf::from(v.clone())),
            None => Payload::Tombstone,
        };
        own.write_local(&peer(*p), Hlc::new(*millis, 0), payload)
            .unwrap();
        if p % 2 == 0 {
            merged.merge(&own);
        } else {
            merged = own;
        }
    }
    merged
}

fn chunks(n: u32) -> Vec<ChunkRef> {
    (0..n)
        .map(|i| ChunkRef {
            hash: hash("chunk", u64::from(i)),
            len: model::CHUNK_MIN + i,
        })
        .collect()
}

fn file(n: u32) -> FileMeta {
    let chunks = chunks(n);
    let size = chunks.iter().map(|c| u64::from(c.len)).sum();
    let (content, _) = model::describe(chunks);
    FileMeta {
        kind: EntryKind::File,
        mode: 0o644,
        mtime_secs: 1_760_000_000,
        mtime_nanos: 7,
        size,
        hash: hash("file", size),
        content,
        target: None,
    }
}

fn framed<T: Serialize>(value: &T) -> Vec<u8> {
    let bytes = protocol::encode(value).unwrap();
    [protocol::varint(bytes.len()), bytes].concat()
}

/// One valid encoding (or more) for every decoder.
static VALID: LazyLock<Vec<Vec<u8>>> = LazyLock::new(|| {
    let (mine, theirs) = &*SUMMARIES;
    let (mut init, hello) = Initiator::start(mine, [3; 16]);
    let hello_reply = reconcile::respond(theirs, &hello).unwrap();
    let Ok(Step::Send(round)) = init.on_response(mine, hello_reply.clone()) else {
        panic!("the sample summaries differ");
    };
    let round_reply = reconcile::respond(theirs, &round).unwrap();

    let conflict = register(&[
        (1, 10, Some(b"a".to_vec())),
        (2, 20, Some(b"b".to_vec())),
        (4, 15, None),
    ]);
    let folder = register(&[(1, 10, Some(cbor(&file(40))))]);
    let entries = vec![
        WireEntry {
            key: ByteBuf::from(b"k".to_vec()),
            register: conflict.clone(),
        },
        WireEntry {
            key: ByteBuf::from(FOLDER_KEY.to_vec()),
            register: folder.clone(),
        },
    ];
    let share = ByteArray::new(hash("share", 0));
    let requests = [
        protocol::Request::Hello(Hello::ours(None)),
        protocol::Request::Auth {
            nonce: ByteArray::new(hash("nonce", 0)),
            tag: ByteArray::new(hash("tag", 0)),
            writer: Some(ByteArray::new([9; 64])),
        },
        protocol::Request::Announce {
            share,
            root: ByteArray::new(hash("root", 0)),
            count: 2,
            entries: entries.clone(),
        },
        protocol::Request::Reconcile {
            share,
            message: ByteBuf::from(round.encode().unwrap()),
        },
        protocol::Request::GetEntries {
            share,
            ids: vec![ByteArray::new(hash("id", 1))],
        },
        protocol::Request::GetChunk {
            share,
            hash: ByteArray::new(hash("chunk", 0)),
        },
        protocol::Request::GetChunks {
            share,
            hashes: vec![
                ByteArray::new(hash("chunk", 0)),
                ByteArray::new(hash("chunk", 1)),
            ],
        },
        protocol::Request::GetChunkPart {
            share,
            hash: ByteArray::new(hash("chunk", 0)),
            offset: 65_536,
            len: 16_384,
        },
    ];
    let responses = [
        protocol::Response::Hello(Hello::ours(None)),
        protocol::Response::Auth(Some(AuthProof {
            member: ByteArray::new(hash("proof", 0)),
            writer: None,
        })),
        protocol::Response::Ack,
        protocol::Response::Reconcile(ByteBuf::from(round_reply.encode().unwrap())),
        protocol::Response::Entries(entries),
        protocol::Response::Page(ByteBuf::from(model::encode_page(&chunks(3)))),
        protocol::Response::Chunks(vec![Some(ByteBuf::from(b"chunk".to_vec())), None]),
        protocol::Response::Error("no".into()),
    ];
    let write_key = hash("write", 0);
    let token = Token {
        id: ByteArray::new(hash("share", 0)),
        secret: ByteArray::new(hash("secret", 0)),
        kind: ShareKind::Folder,
        addrs: vec![
            "/ip4/192.0.2.1/tcp/4001/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
                .into(),
        ],
        writers: ByteArray::new(meshsync::share::writer_public(&write_key)),
        write: Some(ByteArray::new(write_key)),
    };
    let share_meta = ShareMeta {
        id: hash("share", 0),
        name: "photos".into(),
        kind: ShareKind::Folder,
        secret: hash("secret", 0),
        seed_addrs: token.addrs.clone(),
        path: Some("/home/u/Photos".into()),
        writers: *token.writers,
        write_key: Some(write_key),
        trusted_peers: Vec::new(),
        paused: false,
    };
    let symlink = FileMeta {
        kind: EntryKind::Symlink,
        size: 0,
        hash: [0; 32],
        content: Content::Empty,
        target: Some("../x".into()),
        ..file(0)
    };

    let mut out = Vec::new();
    for r in &requests {
        out.push(protocol::encode(r).unwrap());
        out.push(framed(r));
    }
    for r in &responses {
        out.push(protocol::encode(r).unwrap());
        out.push(framed(r));
    }
    out.push(requests.iter().flat_map(framed).collect());
    out.extend([
        hello.encode().unwrap(),
        hello_reply.encode().unwrap(),
        round.encode().unwrap(),
        round_reply.encode().unwrap(),
        token.encode().into_bytes(),
        conflict.to_cbor().unwrap(),
        folder.to_cbor().unwrap(),
        cbor(&file(3)),
        cbor(&file(40)),
        cbor(&symlink),
        model::encode_page(&chunks(5)),
        cbor(&share_meta),
        cbor(&Hlc::new(1_760_000_000_000, 2)),
        cbor(&ScanRecord {
            meta: file(2),
            ctime_secs: 1,
            ctime_nanos: 2,
            inode: 3,
            dev: 4,
            racy: false,
        }),
        cbor(&Synced {
            record: ScanRecord {
                meta: file(1),
                ctime_secs: 5,
                ctime_nanos: 6,
                inode: 7,
                dev: 8,
                racy: true,
            },
            base: {
                let mut base = meshsync::merge::VersionVector::new();
                base.raise(&meshsync::merge::PeerKey::new(vec![9u8; 38]).unwrap(), 2);
                base
            },
        }),
    ]);
    out
});

/// One way to damage an encoding.
#[derive(Clone, Debug)]
enum Damage {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Insert(usize, u8),
    Remove(usize),
    Truncate(usize),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        3 => (any::<usize>(), 0..8u8).prop_map(|(i, b)| Damage::FlipBit(i, b)),
        2 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::SetByte(i, b)),
        1 => (any::<usize>(), any::<u8>()).prop_map(|(i, b)| Damage::Insert(i, b)),
        1 => any::<usize>().prop_map(Damage::Remove),
        1 => any::<usize>().prop_map(Damage::Truncate),
    ]
}

fn apply(bytes: &mut Vec<u8>, d: &Damage) {
    let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
    let len = bytes.len();
    match *d {
        Damage::FlipBit(i, b) if len > 0 => bytes[at(i, len)] ^= 1 << b,
        Damage::SetByte(i, v) if len > 0 => bytes[at(i, len)] = v,
        Damage::Insert(i, v) => bytes.insert(at(i, len + 1), v),
        Damage::Remove(i) if len > 0 => {
            bytes.remove(at(i, len));
        }
        Damage::Truncate(i) => bytes.truncate(at(i, len + 1)),
        _ => {}
    }
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

#[test]
fn valid_encodings_decode_and_round_trip() {
    for bytes in VALID.iter() {
        decode_everything(bytes);
    }
    // Each sample decodes as what it is.
    let decoded = VALID
        .iter()
        .filter(|b| {
            protocol::decode::<protocol::Request>(b).is_ok()
                || protocol::decode::<protocol::Response>(b).is_ok()
                || reconcile::Request::decode(b).is_ok()
                || reconcile::Response::decode(b).is_ok()
                || Token::parse(&String::from_utf8_lossy(b)).is_ok()
                || RecordRegister::from_cbor(b).is_ok()
                || ciborium::from_reader::<FileMeta, _>(b.as_slice()).is_ok()
                || ciborium::from_reader::<Vec<ChunkRef>, _>(b.as_slice()).is_ok()
                || ciborium::from_reader::<ShareMeta, _>(b.as_slice()).is_ok()
                || ciborium::from_reader::<Hlc, _>(b.as_slice()).is_ok()
                || ciborium::from_reader::<ScanRecord, _>(b.as_slice()).is_ok()
                || ciborium::from_reader::<Synced, _>(b.as_slice()).is_ok()
                || block_on(protocol::read_frame::<protocol::Request, _>(
                    &mut Cursor::new(b.as_slice()),
                    MAX_REQUEST_BYTES,
                ))
                .is_ok()
                || block_on(protocol::read_frame::<protocol::Response, _>(
                    &mut Cursor::new(b.as_slice()),
                    MAX_RESPONSE_BYTES,
                ))
                .is_ok()
        })
        .count();
    assert_eq!(decoded, VALID.len());
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        decode_everything(&bytes);
    }

    #[test]
    fn damaged_valid_encodings_never_panic(
        index in any::<prop::sample::Index>(),
        damages in proptest::collection::vec(damage(), 1..6),
    ) {
        let mut bytes = index.get(&VALID).clone();
        for d in &damages {
            apply(&mut bytes, d);
        }
        decode_everything(&bytes);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn generated_registers_and_pages_round_trip(
        writes in proptest::collection::vec(
            (1..6u8, 1..1_000u64, proptest::option::of(proptest::collection::vec(any::<u8>(), 0..16))),
            1..8,
        ),
        n_chunks in 0..80u32,
        flip in any::<(usize, u8)>(),
    ) {
        let reg = register(&writes);
        let bytes = reg.to_cbor().unwrap();
        prop_assert_eq!(&RecordRegister::from_cbor(&bytes).unwrap(), &reg);
        check_register(&reg);
        let meta = file(n_chunks);
        prop_assert!(model::check_meta("a/b", &meta).is_ok());
        file_meta(&meta);
        for mut encoded in [bytes, cbor(&meta), model::encode_page(&chunks(n_chunks))] {
            decode_everything(&encoded);
            if !encoded.is_empty() {
                let i = flip.0 % encoded.len();
                encoded[i] ^= 1 << (flip.1 % 8);
                decode_everything(&encoded);
            }
        }
    }
}
