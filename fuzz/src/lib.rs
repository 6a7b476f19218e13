//! Fuzz harnesses for every meshsync decoder that sees bytes from outside the process: the wire
//! protocol (frames from peers), reconciliation messages, share tokens (pasted by users) and the
//! on-disk encodings (a damaged or hostile database file).
//!
//! Each harness only decodes and checks; it never panics on bad input. Where a decode succeeds it
//! asserts the properties the types promise: re-encoding and decoding again gives an equal value,
//! and the re-encoding is a fixed point (encoding the decoded re-encoding gives the same bytes).
//! The fuzz targets in `fuzz_targets/` are one-line wrappers, and `gen_seeds` runs every seed
//! through these same functions on stable Rust.

use std::sync::LazyLock;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use futures::executor::block_on;
use futures::io::Cursor;
use meshsync::folder::model::{self, ChunkRef, Content, EntryKind, FileMeta};
use meshsync::folder::scan::ScanRecord;
use meshsync::merge::{Causality, Hlc, MAX_VERSIONS, Payload, PeerKey};
use meshsync::net::protocol::{self, MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES};
use meshsync::reconcile::{self, Initiator, ReconcileError, Step, Summary};
use meshsync::share::{MAX_TOKEN_CHARS, TOKEN_PREFIX, Token};
use meshsync::store::{RecordRegister, ShareKind, ShareMeta};
use serde_bytes::ByteBuf;

pub mod samples;

/// The path under which decoded folder entries are validated.
pub const FOLDER_KEY: &[u8] = b"docs/report.txt";

/// A small frame limit, so that the refusal path of `read_frame` is reached by realistic frames.
pub const SMALL_LIMIT: usize = 64;

// ---------------------------------------------------------------------------------------------
// wire: frames of the libp2p request-response protocol
// ---------------------------------------------------------------------------------------------

/// Decodes `data` as a bare CBOR [`protocol::Request`] and [`protocol::Response`], then reads it
/// as a stream of frames with `read_frame`, as the daemon does, with the request and response
/// limits and with a small limit.
pub fn wire(data: &[u8]) {
    if let Ok(req) = protocol::decode::<protocol::Request>(data) {
        check_wire_request(&req);
    }
    if let Ok(res) = protocol::decode::<protocol::Response>(data) {
        check_wire_response(&res);
    }
    read_frames(data, MAX_REQUEST_BYTES, check_wire_request);
    read_frames(data, MAX_RESPONSE_BYTES, check_wire_response);
    read_frames(data, SMALL_LIMIT, check_wire_request);
    read_frames(data, SMALL_LIMIT, check_wire_response);
}

/// Reads frames from `data` until the first error, checking each decoded message and that
/// `read_frame` agrees with a plain decode of the frame's payload.
fn read_frames<T>(data: &[u8], limit: usize, check: fn(&T))
where
    T: serde::de::DeserializeOwned + std::fmt::Debug + PartialEq,
{
    let mut io = Cursor::new(data);
    loop {
        let start = io.position() as usize;
        let Ok(msg) = block_on(protocol::read_frame::<T, _>(&mut io, limit)) else {
            return;
        };
        let end = io.position() as usize;
        assert!(end > start, "read_frame succeeded without consuming input");
        let frame = &data[start..end];
        let (len, prefix) = parse_varint(frame).expect("read_frame accepted a bad length prefix");
        assert!(
            len <= limit,
            "read_frame accepted {len} bytes over limit {limit}"
        );
        assert_eq!(
            prefix + len,
            frame.len(),
            "read_frame consumed a wrong length"
        );
        let plain: T = protocol::decode(&frame[prefix..]).expect("payload decodes on its own");
        assert_eq!(plain, msg, "read_frame and decode disagree");
        check(&msg);
    }
}

/// The frame length prefix (unsigned LEB128, at most 5 bytes): `(length, prefix bytes)`.
pub fn parse_varint(b: &[u8]) -> Option<(usize, usize)> {
    let mut v = 0u64;
    for (i, &byte) in b.iter().enumerate().take(5) {
        v |= u64::from(byte & 0x7f) << (7 * i);
        if byte & 0x80 == 0 {
            return Some((usize::try_from(v).ok()?, i + 1));
        }
    }
    None
}

/// Round trip of a wire message: bare, and framed through `write_frame` / `read_frame`.
fn wire_round_trip<T>(msg: &T, limit: usize)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug + PartialEq,
{
    let bytes = protocol::encode(msg).expect("a decoded message re-encodes");
    let back: T = protocol::decode(&bytes).expect("a re-encoded message decodes");
    assert_eq!(&back, msg, "wire round trip changed the message");
    assert_eq!(
        protocol::encode(&back).unwrap(),
        bytes,
        "wire re-encoding is not a fixed point"
    );
    assert_eq!(
        protocol::frame_len(msg),
        protocol::varint(bytes.len()).len() + bytes.len()
    );
    if bytes.len() <= limit {
        let mut framed = Cursor::new(Vec::new());
        block_on(protocol::write_frame(&mut framed, msg, limit)).expect("write_frame");
        let mut io = Cursor::new(framed.into_inner());
        let back: T = block_on(protocol::read_frame(&mut io, limit)).expect("framed round trip");
        assert_eq!(&back, msg, "framed round trip changed the message");
    }
}

/// Everything the daemon does with a decoded request's payloads, decoded the same way.
pub fn check_wire_request(req: &protocol::Request) {
    wire_round_trip(req, MAX_REQUEST_BYTES);
    match req {
        protocol::Request::Announce { entries, .. } => entries.iter().for_each(check_wire_entry),
        protocol::Request::Reconcile { message, .. } => {
            if let Ok(r) = reconcile::Request::decode(message) {
                check_reconcile_request(&r);
            }
        }
        _ => {}
    }
}

/// Everything the daemon does with a decoded response's payloads, decoded the same way.
pub fn check_wire_response(res: &protocol::Response) {
    wire_round_trip(res, MAX_RESPONSE_BYTES);
    match res {
        protocol::Response::Entries(entries) => entries.iter().for_each(check_wire_entry),
        protocol::Response::Reconcile(message) => {
            if let Ok(r) = reconcile::Response::decode(message) {
                check_reconcile_response(&r);
            }
        }
        protocol::Response::Page(bytes) => page(bytes),
        _ => {}
    }
}

fn check_wire_entry(entry: &protocol::WireEntry) {
    check_register(&entry.register);
    let _ = meshsync::store::check_entry(ShareKind::Records, &entry.key, None);
    let _ = meshsync::store::check_entry(ShareKind::Folder, &entry.key, None);
    let _ = meshsync::folder::validate_remote_entry(ShareKind::Folder, &entry.key, &entry.register);
    assert!(
        meshsync::folder::validate_remote_entry(ShareKind::Records, &entry.key, &entry.register)
            .is_ok(),
        "records entries are not validated beyond the generic limits"
    );
}

// ---------------------------------------------------------------------------------------------
// reconcile: set-reconciliation messages
// ---------------------------------------------------------------------------------------------

/// Salt of the prepared sessions.
pub const SALT: reconcile::Salt = [7; 16];

/// The two sides of the prepared session: `.0` initiates, `.1` responds.
pub static SUMMARIES: LazyLock<(Summary, Summary)> = LazyLock::new(samples::session_summaries);

/// Decodes `data` as a reconciliation request and response. A request is answered by the
/// responder of the prepared session; a response is fed to a fresh initiator (awaiting a hello
/// reply) and to one that sent its first round of queries.
pub fn reconcile(data: &[u8]) {
    let (initiator_side, responder_side) = &*SUMMARIES;
    if let Ok(req) = reconcile::Request::decode(data) {
        check_reconcile_request(&req);
        let answered = reconcile::respond(responder_side, &req);
        let bytes = reconcile::respond_bytes(responder_side, data);
        match (answered, bytes) {
            (Ok(res), Ok(bytes)) => {
                check_reconcile_response(&res);
                assert_eq!(
                    res.encode().unwrap(),
                    bytes,
                    "respond and respond_bytes differ"
                );
            }
            (Err(_), Err(_)) => {}
            (a, b) => panic!("respond and respond_bytes disagree: {a:?} vs {b:?}"),
        }
    } else {
        assert!(reconcile::respond_bytes(responder_side, data).is_err());
    }
    if let Ok(res) = reconcile::Response::decode(data) {
        check_reconcile_response(&res);
        let (mut fresh, _) = Initiator::start(initiator_side, SALT);
        check_step(fresh.on_response(initiator_side, res.clone()));
        let (mut after_round_one, _) = samples::first_round();
        check_step(after_round_one.on_response(initiator_side, res));
    }
}

fn check_step(step: Result<Step, ReconcileError>) {
    match step {
        Ok(Step::Send(req)) => {
            let bytes = req
                .encode()
                .expect("the initiator's requests fit MAX_MESSAGE_BYTES");
            assert_eq!(reconcile::Request::decode(&bytes).unwrap(), req);
        }
        Ok(Step::Done(outcome)) => {
            assert!(
                outcome.need.windows(2).all(|w| w[0] < w[1]),
                "need not sorted/unique"
            );
            assert!(
                outcome.offer.windows(2).all(|w| w[0] < w[1]),
                "offer not sorted/unique"
            );
        }
        Err(_) => {}
    }
}

/// Round trip of a decoded reconciliation request.
pub fn check_reconcile_request(req: &reconcile::Request) {
    match req.encode() {
        Ok(bytes) => {
            let back = reconcile::Request::decode(&bytes).expect("re-encoded request decodes");
            assert_eq!(&back, req, "reconcile request round trip");
            assert_eq!(back.encode().unwrap(), bytes, "not a fixed point");
        }
        // A peer may use a denser encoding than ours (structs as arrays, say), so a message
        // near MAX_MESSAGE_BYTES may not fit again; nothing ever re-encodes a received one.
        Err(ReconcileError::MessageTooLarge { .. }) => {}
        Err(e) => panic!("decoded request does not re-encode: {e}"),
    }
}

/// Round trip of a decoded reconciliation response.
pub fn check_reconcile_response(res: &reconcile::Response) {
    match res.encode() {
        Ok(bytes) => {
            let back = reconcile::Response::decode(&bytes).expect("re-encoded response decodes");
            assert_eq!(&back, res, "reconcile response round trip");
            assert_eq!(back.encode().unwrap(), bytes, "not a fixed point");
        }
        Err(ReconcileError::MessageTooLarge { .. }) => {}
        Err(e) => panic!("decoded response does not re-encode: {e}"),
    }
}

// ---------------------------------------------------------------------------------------------
// token: share tokens
// ---------------------------------------------------------------------------------------------

/// Parses `data` (lossily converted to UTF-8) as a share token, and parses a token made of
/// `data` as its CBOR body: mutations of the text rarely keep the base64 valid, so the CBOR
/// decoder and the checks after it are reached through the second form.
pub fn token(data: &[u8]) {
    token_text(&String::from_utf8_lossy(data));
    token_text(&format!("{TOKEN_PREFIX}{}", URL_SAFE_NO_PAD.encode(data)));
}

fn token_text(text: &str) {
    let Ok(token) = Token::parse(text) else {
        return;
    };
    let _ = token.dialable_addrs();
    if let Some(write) = &token.write {
        assert_eq!(meshsync::share::writer_public(write), *token.writers);
    }
    let encoded = token.encode();
    // A token written with a denser encoding than ours can re-encode over the limit.
    if encoded.len() <= MAX_TOKEN_CHARS {
        let back = Token::parse(&encoded).expect("a re-encoded token parses");
        assert_eq!(back, token, "token round trip");
        assert_eq!(
            back.encode(),
            encoded,
            "token encoding is not a fixed point"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// disk_entry: what the store and the folder engine read back from disk or receive as entries
// ---------------------------------------------------------------------------------------------

/// First byte selects the decoder (modulo 6); the rest is its input.
pub fn disk_entry(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    match selector % 7 {
        0 => registers(rest),
        1 => file_meta(rest),
        2 => page(rest),
        3 => share_meta(rest),
        4 => hlc(rest),
        5 => scan_record(rest),
        _ => synced(rest),
    }
}

/// The selector bytes of [`disk_entry`].
pub mod selector {
    /// `RecordRegister::from_cbor`, twice from the same bytes (merge laws on the pair).
    pub const REGISTER: u8 = 0;
    /// `FileMeta` + `check_meta`.
    pub const FILE_META: u8 = 1;
    /// A page: `Vec<ChunkRef>`.
    pub const PAGE: u8 = 2;
    /// `ShareMeta` (the `shares` table).
    pub const SHARE_META: u8 = 3;
    /// `Hlc` (the `meta` table's clock).
    pub const HLC: u8 = 4;
    /// `ScanRecord` (the folder scanner's memory).
    pub const SCAN_RECORD: u8 = 5;
    /// `Synced` (the folder's `synced` table: a scan record and its version vector).
    pub const SYNCED: u8 = 6;
}

/// Decodes one register from `data`; if bytes remain, a second one from them, and checks the
/// merge laws on the pair.
fn registers(data: &[u8]) {
    let Ok(a) = RecordRegister::from_cbor(data) else {
        return;
    };
    check_register(&a);
    // `from_cbor` ignores what follows the first item; decode the rest as a second register.
    let mut reader = data;
    if ciborium::from_reader::<ciborium::Value, _>(&mut reader).is_err() || reader.is_empty() {
        return;
    }
    let Ok(b) = RecordRegister::from_cbor(reader) else {
        return;
    };
    check_register(&b);
    let mut ab = a.clone();
    ab.merge(&b);
    let mut ba = b.clone();
    ba.merge(&a);
    assert_eq!(ab, ba, "register merge is not commutative");
    assert_eq!(ab.to_cbor().unwrap(), ba.to_cbor().unwrap());
    check_register(&ab);
}

/// Accessors, invariants, round trip and the merge laws that hold for one register.
pub fn check_register(reg: &RecordRegister) {
    let versions = reg.versions();
    assert!(
        versions.len() <= MAX_VERSIONS,
        "more than MAX_VERSIONS versions"
    );
    assert_eq!(reg.winner(), versions.first());
    assert_eq!(reg.conflicts().len(), versions.len().saturating_sub(1));
    assert_eq!(reg.is_empty(), versions.is_empty());
    assert_eq!(
        reg.is_deleted(),
        reg.winner().is_some_and(|w| w.is_tombstone())
    );
    assert_eq!(
        reg.value().is_some(),
        reg.winner().is_some_and(|w| !w.is_tombstone())
    );
    let seen = reg.seen();
    assert!(seen.dominates(reg.superseded()));
    for (i, v) in versions.iter().enumerate() {
        assert!(
            v.vv().get(v.origin()) > 0,
            "a version does not count its own write"
        );
        assert!(seen.dominates(v.vv()));
        let _ = (v.hlc(), v.origin().as_bytes(), v.payload());
        for (j, w) in versions.iter().enumerate() {
            if i != j {
                assert_ne!(
                    w.vv().compare(v.vv()),
                    Causality::After,
                    "dominated version kept"
                );
                assert_ne!(v, w, "duplicate version kept");
            }
        }
    }
    for pair in versions.windows(2) {
        assert!(
            (pair[0].hlc(), pair[0].origin()) >= (pair[1].hlc(), pair[1].origin()),
            "versions not sorted by rank"
        );
    }

    let bytes = reg.to_cbor().expect("a decoded register re-encodes");
    let back = RecordRegister::from_cbor(&bytes).expect("a re-encoded register decodes");
    assert_eq!(&back, reg, "register round trip");
    assert_eq!(
        back.to_cbor().unwrap(),
        bytes,
        "register encoding is not a fixed point"
    );
    assert_eq!(reg.digest().unwrap(), *blake3::hash(&bytes).as_bytes());

    let mut twice = reg.clone();
    twice.merge(reg);
    assert_eq!(&twice, reg, "register merge is not idempotent");

    // A local write supersedes everything the register holds.
    let peer = PeerKey::new(b"fuzz-local-peer".to_vec()).unwrap();
    let mut written = reg.clone();
    if let Ok(v) = written.write_local(
        &peer,
        Hlc::new(1, 0),
        Payload::Value(ByteBuf::from(b"x".to_vec())),
    ) {
        assert_eq!(
            written.versions(),
            std::slice::from_ref(&v),
            "a local write left versions"
        );
        assert!(v.vv().dominates(&seen));
    }

    // Folder validation of the same register, as the engine does on receipt.
    let _ = meshsync::folder::validate_remote_entry(ShareKind::Folder, FOLDER_KEY, reg);
    for v in versions {
        if let Payload::Value(bytes) = v.payload()
            && let Ok(meta) = ciborium::from_reader::<FileMeta, _>(bytes.as_slice())
        {
            check_file_meta(&meta);
        }
    }
}

fn cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    ciborium::into_writer(value, &mut out).expect("a decoded value re-encodes");
    out
}

/// Round trip of a ciborium-decoded value, and the fixed point of its encoding.
fn cbor_round_trip<T>(value: &T)
where
    T: serde::Serialize + serde::de::DeserializeOwned + std::fmt::Debug + PartialEq,
{
    let bytes = cbor(value);
    let back: T = ciborium::from_reader(bytes.as_slice()).expect("a re-encoded value decodes");
    assert_eq!(&back, value, "CBOR round trip");
    assert_eq!(cbor(&back), bytes, "CBOR encoding is not a fixed point");
}

fn file_meta(data: &[u8]) {
    if let Ok(meta) = ciborium::from_reader::<FileMeta, _>(data) {
        check_file_meta(&meta);
    }
}

/// Round trip and validation of a file description.
pub fn check_file_meta(meta: &FileMeta) {
    cbor_round_trip(meta);
    assert!(meta.same_as(meta) && meta.same_content(meta));
    let path = std::str::from_utf8(FOLDER_KEY).unwrap();
    let valid = model::check_meta(path, meta).is_ok();
    if valid && meta.kind == EntryKind::File {
        let total: u64 = match &meta.content {
            Content::Empty => 0,
            Content::Inline(chunks) => chunks.iter().map(|c| u64::from(c.len)).sum(),
            Content::Paged(pages) => pages.iter().map(|p| p.bytes).sum(),
        };
        assert_eq!(
            total, meta.size,
            "check_meta accepted a size that does not add up"
        );
    }
    for path in ["a", ".meshsync/x", "../up", "/abs", "x//y", "ok/😀"] {
        let _ = model::check_rel_path(path);
        let _ = model::check_meta(path, meta);
    }
}

/// A chunk-list page: round trip through `encode_page`, and `describe` of its chunks.
pub fn page(data: &[u8]) {
    let Ok(chunks) = ciborium::from_reader::<Vec<ChunkRef>, _>(data) else {
        return;
    };
    let bytes = model::encode_page(&chunks);
    let back: Vec<ChunkRef> = ciborium::from_reader(bytes.as_slice()).expect("page decodes");
    assert_eq!(back, chunks, "page round trip");
    assert_eq!(
        model::encode_page(&back),
        bytes,
        "page encoding is not a fixed point"
    );

    // What the scanner would describe for a file made of these chunks must pass the checks
    // peers apply, and the pages must list the chunks in order.
    let size: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
    let (content, pages) = model::describe(chunks.clone());
    let listed: Vec<ChunkRef> = match &content {
        Content::Empty => Vec::new(),
        Content::Inline(inline) => inline.clone(),
        Content::Paged(refs) => {
            assert_eq!(refs.len(), pages.len());
            for (r, (page_ref, page_chunks)) in refs.iter().zip(&pages) {
                assert_eq!(r, page_ref);
                assert_eq!(
                    &r.hash,
                    blake3::hash(&model::encode_page(page_chunks)).as_bytes()
                );
                assert_eq!(r.chunks as usize, page_chunks.len());
                let bytes: u64 = page_chunks.iter().map(|c| u64::from(c.len)).sum();
                assert_eq!(r.bytes, bytes);
            }
            pages.iter().flat_map(|(_, c)| c.iter().copied()).collect()
        }
    };
    assert_eq!(listed, chunks, "describe lost or reordered chunks");
    if chunks
        .iter()
        .all(|c| c.len > 0 && c.len <= model::CHUNK_MAX)
    {
        let meta = FileMeta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_secs: 0,
            mtime_nanos: 0,
            size,
            hash: [0; 32],
            content,
            target: None,
        };
        let path = std::str::from_utf8(FOLDER_KEY).unwrap();
        if let Err(e) = model::check_meta(path, &meta) {
            panic!("check_meta refuses what describe produced: {e}");
        }
    }
}

fn share_meta(data: &[u8]) {
    if let Ok(meta) = ciborium::from_reader::<ShareMeta, _>(data) {
        cbor_round_trip(&meta);
    }
}

fn hlc(data: &[u8]) {
    if let Ok(h) = ciborium::from_reader::<Hlc, _>(data) {
        cbor_round_trip(&h);
        let mut clock = meshsync::merge::HlcClock::resume(h);
        let next = clock.now(0);
        assert!(
            next > h || h == Hlc::new(u64::MAX, u32::MAX),
            "clock went back"
        );
        if let Ok(observed) = meshsync::merge::HlcClock::new().observe(h, h.millis) {
            assert!(
                observed > h || h == Hlc::new(u64::MAX, u32::MAX),
                "observe went back"
            );
        }
    }
}

fn scan_record(data: &[u8]) {
    if let Ok(record) = ciborium::from_reader::<ScanRecord, _>(data) {
        cbor_round_trip(&record);
    }
}

fn synced(data: &[u8]) {
    if let Ok(synced) = ciborium::from_reader::<meshsync::folder::Synced, _>(data) {
        cbor_round_trip(&synced);
    }
}
