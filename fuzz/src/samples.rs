//! Small, valid values of every fuzzed type, for the seed corpus and the prepared sessions.

use meshsync::folder::model::{self, ChunkRef, Content, EntryKind, FileMeta};
use meshsync::folder::scan::ScanRecord;
use meshsync::merge::{Hlc, Payload, PeerKey};
use meshsync::net::protocol::{self, AuthProof, Hello, WireEntry};
use meshsync::reconcile::{
    self, Answer, ChildSummaries, Descent, IdList, Initiator, Item, ItemFps, Mask, Prefix, RangeFp,
    Step, Summary,
};
use meshsync::share::Token;
use meshsync::store::{RecordRegister, ShareKind, ShareMeta};
use serde_bytes::{ByteArray, ByteBuf};

use crate::SALT;

fn hash(tag: &str, n: u64) -> [u8; 32] {
    let mut h = blake3::Hasher::new();
    h.update(tag.as_bytes());
    h.update(&n.to_le_bytes());
    *h.finalize().as_bytes()
}

fn peer(b: u8) -> PeerKey {
    PeerKey::new(vec![b; 38]).unwrap()
}

/// CBOR encoding with ciborium, as the store writes it.
pub fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).unwrap();
    out
}

// ---------------------------------------------------------------------------------------------
// Registers and folder values
// ---------------------------------------------------------------------------------------------

/// A register holding one value written by one peer.
pub fn register_single(value: &[u8]) -> RecordRegister {
    let mut r = RecordRegister::new();
    r.write_local(
        &peer(1),
        Hlc::new(1_760_000_000_000, 0),
        Payload::Value(ByteBuf::from(value.to_vec())),
    )
    .unwrap();
    r
}

/// Two concurrent writes (a conflict), one of them based on an earlier common write.
pub fn register_conflict() -> RecordRegister {
    let mut a = register_single(b"base");
    let mut b = a.clone();
    a.write_local(
        &peer(1),
        Hlc::new(1_760_000_000_100, 0),
        Payload::Value(ByteBuf::from(b"from a".to_vec())),
    )
    .unwrap();
    b.write_local(
        &peer(2),
        Hlc::new(1_760_000_000_200, 1),
        Payload::Value(ByteBuf::from(b"from b".to_vec())),
    )
    .unwrap();
    a.merge(&b);
    a
}

/// A deleted key.
pub fn register_tombstone() -> RecordRegister {
    let mut r = register_single(b"gone soon");
    r.write_local(&peer(3), Hlc::new(1_760_000_000_300, 0), Payload::Tombstone)
        .unwrap();
    r
}

/// A folder entry's register: its value is a CBOR [`FileMeta`].
pub fn register_folder(meta: &FileMeta) -> RecordRegister {
    register_single(&cbor(meta))
}

/// Chunk references of lengths `CHUNK_MIN..`, `n` of them.
pub fn chunks(n: u32) -> Vec<ChunkRef> {
    (0..n)
        .map(|i| ChunkRef {
            hash: hash("chunk", u64::from(i)),
            len: model::CHUNK_MIN + i * 7,
        })
        .collect()
}

fn file_of(chunks: Vec<ChunkRef>) -> FileMeta {
    let size = chunks.iter().map(|c| u64::from(c.len)).sum();
    let (content, _) = model::describe(chunks);
    FileMeta {
        kind: EntryKind::File,
        mode: 0o644,
        mtime_secs: 1_760_000_000,
        mtime_nanos: 123_456_789,
        size,
        hash: hash("file", size),
        content,
        target: None,
    }
}

/// A file with inline chunks, one with paged chunks, an empty file, a directory and a symlink.
pub fn file_metas() -> Vec<(&'static str, FileMeta)> {
    let empty = FileMeta {
        kind: EntryKind::File,
        mode: 0o600,
        mtime_secs: -1,
        mtime_nanos: 0,
        size: 0,
        hash: [0; 32],
        content: Content::Empty,
        target: None,
    };
    let dir = FileMeta {
        kind: EntryKind::Dir,
        mode: 0o755,
        hash: [0; 32],
        ..empty.clone()
    };
    let link = FileMeta {
        kind: EntryKind::Symlink,
        mode: 0o777,
        target: Some("../elsewhere/file".into()),
        ..empty.clone()
    };
    vec![
        ("file-inline", file_of(chunks(3))),
        ("file-paged", file_of(chunks(40))),
        ("file-empty", empty),
        ("dir", dir),
        ("symlink", link),
    ]
}

/// Pages of chunk references.
pub fn pages() -> Vec<(&'static str, Vec<ChunkRef>)> {
    vec![
        ("page-empty", Vec::new()),
        ("page-3", chunks(3)),
        ("page-40", chunks(40)),
    ]
}

/// Rows of the `shares` table.
pub fn share_metas() -> Vec<(&'static str, ShareMeta)> {
    vec![
        (
            "share-records",
            ShareMeta {
                id: hash("share", 1),
                name: "notes".into(),
                kind: ShareKind::Records,
                secret: hash("secret", 1),
                seed_addrs: vec![
                    "/ip4/127.0.0.1/tcp/4001/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
                        .into(),
                ],
                path: None,
                writers: meshsync::share::writer_public(&hash("write", 1)),
                write_key: Some(hash("write", 1)),
                trusted_peers: Vec::new(),
            },
        ),
        (
            "share-folder",
            ShareMeta {
                id: hash("share", 2),
                name: "photos".into(),
                kind: ShareKind::Folder,
                secret: hash("secret", 2),
                seed_addrs: Vec::new(),
                path: Some("/home/user/Photos".into()),
                writers: meshsync::share::writer_public(&hash("write", 2)),
                write_key: None,
                trusted_peers: vec!["12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp".into()],
            },
        ),
    ]
}

/// A scanner record.
pub fn scan_record() -> ScanRecord {
    ScanRecord {
        meta: file_of(chunks(2)),
        ctime_secs: 1_760_000_001,
        ctime_nanos: 5,
        inode: 1234,
        dev: 66,
        racy: true,
    }
}

// ---------------------------------------------------------------------------------------------
// Tokens
// ---------------------------------------------------------------------------------------------

/// Share tokens as `meshsync share invite` prints them.
pub fn tokens() -> Vec<(&'static str, Token)> {
    let with_addrs = Token {
        id: ByteArray::new(hash("share", 1)),
        secret: ByteArray::new(hash("secret", 1)),
        kind: ShareKind::Records,
        addrs: vec![
            "/ip4/192.0.2.7/tcp/4001/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
                .into(),
            "/ip6/::1/udp/4001/quic-v1/p2p/12D3KooWEyoppNCUx8Yx66oV9fJnriXwCcXwDDUA2kj6vnc6iDEp"
                .into(),
            "/dns4/example.org/tcp/4001".into(),
        ],
        writers: ByteArray::new(meshsync::share::writer_public(&hash("write", 1))),
        write: Some(ByteArray::new(hash("write", 1))),
    };
    let bare = Token {
        id: ByteArray::new(hash("share", 2)),
        secret: ByteArray::new(hash("secret", 2)),
        kind: ShareKind::Folder,
        addrs: Vec::new(),
        writers: ByteArray::new(meshsync::share::writer_public(&hash("write", 2))),
        write: None,
    };
    vec![("token-addrs", with_addrs), ("token-read-only", bare)]
}

// ---------------------------------------------------------------------------------------------
// Reconciliation
// ---------------------------------------------------------------------------------------------

/// An id whose first nibble is `nibble`.
fn id_in(nibble: u8, k: u64) -> [u8; 32] {
    let mut id = hash("id", k);
    id[0] = (nibble << 4) | (id[0] & 0x0f);
    id
}

/// Two summaries whose first round of queries has a compare (child 0: 40 vs 41 items), two item
/// listings (child 1: 5 items with one digest changed; child 2: only on the responder), and an
/// offer without a query (child 3: only on the initiator); child 4 is equal.
pub fn session_summaries() -> (Summary, Summary) {
    let item = |nibble, k, version| Item {
        id: id_in(nibble, k),
        digest: hash(if version == 0 { "digest" } else { "digest'" }, k),
    };
    let mut initiator = Vec::new();
    let mut responder = Vec::new();
    for k in 0..40 {
        initiator.push(item(0, k, 0));
        responder.push(item(0, k, u8::from(k % 17 == 3)));
    }
    responder.push(item(0, 40, 0));
    for k in 100..105 {
        initiator.push(item(1, k, 0));
        responder.push(item(1, k, u8::from(k == 102)));
    }
    for k in 200..203 {
        responder.push(item(2, k, 0));
    }
    for k in 300..303 {
        initiator.push(item(3, k, 0));
    }
    for k in 400..420 {
        initiator.push(item(4, k, 0));
        responder.push(item(4, k, 0));
    }
    (
        Summary::from_items(initiator),
        Summary::from_items(responder),
    )
}

/// An initiator of the prepared session that has sent its first round, and that round.
pub fn first_round() -> (Initiator, reconcile::Request) {
    let (initiator_side, responder_side) = &*crate::SUMMARIES;
    let (mut init, hello) = Initiator::start(initiator_side, SALT);
    let reply = reconcile::respond(responder_side, &hello).unwrap();
    match init.on_response(initiator_side, reply).unwrap() {
        Step::Send(round) => (init, round),
        Step::Done(_) => unreachable!("the prepared summaries differ"),
    }
}

/// Every message of a complete session between the prepared summaries, in order.
pub fn session_messages() -> Vec<(reconcile::Request, reconcile::Response)> {
    let (initiator_side, responder_side) = &*crate::SUMMARIES;
    let (mut init, mut req) = Initiator::start(initiator_side, SALT);
    let mut out = Vec::new();
    loop {
        let res = reconcile::respond(responder_side, &req).unwrap();
        out.push((req, res.clone()));
        match init.on_response(initiator_side, res).unwrap() {
            Step::Send(next) => req = next,
            Step::Done(_) => return out,
        }
    }
}

fn summaries(seed: u64) -> ChildSummaries {
    ChildSummaries(Box::new(std::array::from_fn(|n| {
        let count = if n % 3 == 0 { 0 } else { seed + n as u64 * 300 };
        let mut fp = [0; reconcile::FP_LEN];
        if count > 0 {
            fp.copy_from_slice(&hash("fp", count)[..reconcile::FP_LEN]);
        }
        RangeFp { count, fp }
    })))
}

/// Hand-made responses covering every answer and descent kind.
pub fn reconcile_responses() -> Vec<reconcile::Response> {
    let ids = IdList(vec![id_in(5, 1), id_in(5, 2)]);
    let fps = ItemFps(vec![
        [1; reconcile::ITEM_FP_LEN],
        [2; reconcile::ITEM_FP_LEN],
    ]);
    vec![
        reconcile::Response::Hello(reconcile::HelloReply {
            root: hash("root", 0),
            count: 7,
            children: None,
        }),
        reconcile::Response::Round(reconcile::RoundReply {
            answers: vec![
                Answer::Descend(vec![
                    Descent::Children(1, summaries(1)),
                    Descent::Ids(5, ids.clone()),
                    Descent::Items(9, ids.clone(), fps),
                ]),
                Answer::Diff(ids, Mask(vec![0b101])),
                Answer::Split(summaries(2)),
                Answer::Deferred,
                Answer::Descend(Vec::new()),
            ],
        }),
    ]
}

/// Hand-made requests with deep prefixes.
pub fn reconcile_requests() -> Vec<reconcile::Request> {
    let id = id_in(0xa, 9);
    vec![reconcile::Request::Round(reconcile::Round {
        salt: SALT,
        queries: vec![
            reconcile::Query::Compare(Prefix::of(&id, 3), summaries(3)),
            reconcile::Query::Items(
                Prefix::of(&id, 61),
                ItemFps(vec![[3; reconcile::ITEM_FP_LEN]]),
            ),
            reconcile::Query::Items(Prefix::ROOT, ItemFps::default()),
        ],
    })]
}

// ---------------------------------------------------------------------------------------------
// Wire messages
// ---------------------------------------------------------------------------------------------

fn signature() -> [u8; 64] {
    let mut sig = [0; 64];
    sig[..32].copy_from_slice(&hash("sig", 0));
    sig[32..].copy_from_slice(&hash("sig", 1));
    sig
}

fn share_id() -> ByteArray<32> {
    ByteArray::new(hash("share", 1))
}

fn entries() -> Vec<WireEntry> {
    let metas = file_metas();
    vec![
        WireEntry {
            key: ByteBuf::from(b"greeting".to_vec()),
            register: register_single(b"hello, world"),
        },
        WireEntry {
            key: ByteBuf::from(b"contested".to_vec()),
            register: register_conflict(),
        },
        WireEntry {
            key: ByteBuf::from(b"deleted".to_vec()),
            register: register_tombstone(),
        },
        WireEntry {
            key: ByteBuf::from(crate::FOLDER_KEY.to_vec()),
            register: register_folder(&metas[0].1),
        },
    ]
}

/// One of each request.
pub fn wire_requests() -> Vec<(&'static str, protocol::Request)> {
    let (_, round) = first_round();
    vec![
        ("req-hello", protocol::Request::Hello(Hello::ours(None))),
        (
            "req-auth",
            protocol::Request::Auth {
                nonce: ByteArray::new(hash("nonce", 0)),
                tag: ByteArray::new(hash("tag", 0)),
                writer: None,
            },
        ),
        (
            "req-auth-writer",
            protocol::Request::Auth {
                nonce: ByteArray::new(hash("nonce", 1)),
                tag: ByteArray::new(hash("tag", 1)),
                writer: Some(ByteArray::new(signature())),
            },
        ),
        (
            "req-announce",
            protocol::Request::Announce {
                share: share_id(),
                root: ByteArray::new(hash("root", 1)),
                count: 4,
                entries: entries(),
            },
        ),
        (
            "req-reconcile",
            protocol::Request::Reconcile {
                share: share_id(),
                message: ByteBuf::from(round.encode().unwrap()),
            },
        ),
        (
            "req-get",
            protocol::Request::GetEntries {
                share: share_id(),
                ids: vec![ByteArray::new(id_in(1, 1)), ByteArray::new(id_in(2, 2))],
            },
        ),
        (
            "req-chunk",
            protocol::Request::GetChunk {
                share: share_id(),
                hash: ByteArray::new(hash("chunk", 0)),
            },
        ),
        (
            "req-chunks",
            protocol::Request::GetChunks {
                share: share_id(),
                hashes: (0..3).map(|i| ByteArray::new(hash("chunk", i))).collect(),
            },
        ),
        (
            "req-page",
            protocol::Request::GetPage {
                share: share_id(),
                hash: ByteArray::new(hash("page", 0)),
            },
        ),
    ]
}

/// One of each response.
pub fn wire_responses() -> Vec<(&'static str, protocol::Response)> {
    let (_, round) = first_round();
    let reply = reconcile::respond(&crate::SUMMARIES.1, &round).unwrap();
    vec![
        ("res-hello", protocol::Response::Hello(Hello::ours(None))),
        (
            "res-auth",
            protocol::Response::Auth(Some(AuthProof {
                member: ByteArray::new(hash("proof", 0)),
                writer: None,
            })),
        ),
        (
            "res-auth-writer",
            protocol::Response::Auth(Some(AuthProof {
                member: ByteArray::new(hash("proof", 1)),
                writer: Some(ByteArray::new(signature())),
            })),
        ),
        ("res-auth-none", protocol::Response::Auth(None)),
        ("res-ack", protocol::Response::Ack),
        (
            "res-reconcile",
            protocol::Response::Reconcile(ByteBuf::from(reply.encode().unwrap())),
        ),
        ("res-entries", protocol::Response::Entries(entries())),
        (
            "res-chunk",
            protocol::Response::Chunk(ByteBuf::from(b"chunk bytes ".repeat(8))),
        ),
        (
            "res-chunks",
            protocol::Response::Chunks(vec![
                Some(ByteBuf::from(b"first chunk".to_vec())),
                None,
                Some(ByteBuf::from(Vec::new())),
            ]),
        ),
        (
            "res-page",
            protocol::Response::Page(ByteBuf::from(model::encode_page(&chunks(3)))),
        ),
        (
            "res-error",
            protocol::Response::Error("not a member of that share".into()),
        ),
    ]
}

/// `value` as one frame: length prefix, then the CBOR.
pub fn framed<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let bytes = protocol::encode(value).unwrap();
    let mut out = protocol::varint(bytes.len());
    out.extend_from_slice(&bytes);
    out
}
