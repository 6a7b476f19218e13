//! The meshsync wire protocol.
//!
//! # Goals
//! - One request-response protocol, [`PROTOCOL`], carried over libp2p streams on connections that
//!   Noise has already authenticated: the remote's [`libp2p::PeerId`] is known and cannot be forged.
//! - Every message is one frame: its length as an unsigned LEB128 varint (at most 5 bytes), then
//!   that many bytes of CBOR (`ciborium`). The length is checked against [`MAX_REQUEST_BYTES`] or [`MAX_RESPONSE_BYTES`]
//!   *before* anything is read, so a peer cannot make us allocate more than that, and a frame that
//!   does not decode closes that stream only: the peer and the daemon carry on.
//! - Messages are enums that later versions extend with new variants; a peer that receives a
//!   variant it does not know fails that one request, which the sender sees as an error.
//!   Variant and field names on the wire are short (`rec`, `s`, `m`, …): a reconciliation
//!   round trip between equal shares costs under 200 bytes, framing included.
//!
//! # Non-goals
//! - Transport security and peer authentication: Noise does that below us.
//! - Streaming of large payloads: big data moves as many bounded requests.
//!
//! # Messages
//! - [`Request::Hello`] → [`Response::Hello`]: each side says which protocol version and software
//!   it runs, right after a connection is established. Peers with another major
//!   [`PROTOCOL_VERSION`] are disconnected with a log line that says why.
//! - [`Request::Auth`] → [`Response::Auth`]: share membership, proved without naming the share
//!   or revealing its secret. The asker sends a fresh nonce and
//!   `tag = MAC(secret, "initiator" ‖ asker ‖ answerer ‖ nonce)`; the answerer looks for a share
//!   of its own that gives the same tag and, if it has one, answers with
//!   `proof = MAC(secret, "responder" ‖ asker ‖ answerer ‖ nonce)`, else with `None` — the same
//!   answer whether or not the share exists. Both peer ids are the Noise-authenticated ones, so a
//!   tag cannot be replayed by or to anyone else. Read-write members add a signature over the
//!   same fields with the share's write key, which every member checks; entries are accepted
//!   only from members that did. See [`crate::share`].
//! - [`Request::Announce`] → [`Response::Ack`]: a member's new summary root for a share, with the
//!   changed entries themselves when they are few (so most changes arrive in one message).
//!   Only ever sent to authenticated members of that share.
//! - [`Request::Progress`] → [`Response::Ack`]: a member's summary root and what it still has
//!   to fetch, sent when it changes; only to authenticated members.
//! - [`Request::Reconcile`] → [`Response::Reconcile`]: one round of set reconciliation; the
//!   payload is [`crate::reconcile`]'s own encoding.
//! - [`Request::GetEntries`] → [`Response::Entries`]: entries by summary id. Answers are cut at
//!   [`ENTRIES_RESPONSE_BUDGET`] bytes; the asker asks again for what is missing.
//! - [`Request::GetChunk`] → [`Response::Chunk`], [`Request::GetChunks`] →
//!   [`Response::Chunks`], [`Request::GetPage`] → [`Response::Page`]: file content of folder
//!   shares, by hash, one chunk or many at a time; the asker verifies every byte against the
//!   hash. Only members get any, whatever hashes they know.
//! - [`Request::GetChunkPart`] → [`Response::Chunk`]: a range of one chunk, for links too slow
//!   for a whole chunk within a request's timeout; only to peers whose hello offers it.
//! - [`Response::Error`]: a request was understood but refused (for example, the asker is not a
//!   member of the share: the answer is the same whether or not the share exists).

use std::io;

use futures::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use libp2p::{PeerId, StreamProtocol};
use serde::{Deserialize, Serialize, de::DeserializeOwned};

use super::budget::{BudgetError, Hold, InboundBudget, READ_PIECE};

/// The libp2p protocol name; the trailing number is [`PROTOCOL_VERSION`].
pub const PROTOCOL: StreamProtocol = StreamProtocol::new("/meshsync/sync/1");
/// Version carried in [`Hello`]; peers with another version are not spoken to.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request frame we read. Requests are small (summaries, lists of ids).
pub const MAX_REQUEST_BYTES: usize = 2 * 1024 * 1024;
/// Largest response frame we read. Responses carry values and chunks, each bounded well below.
pub const MAX_RESPONSE_BYTES: usize = 8 * 1024 * 1024;
/// Longest agent string accepted in a [`Hello`]; anything longer is cut for display.
pub const MAX_AGENT_CHARS: usize = 128;

/// Most ids in one [`Request::GetEntries`].
pub const MAX_IDS_PER_REQUEST: usize = 4096;
/// Most entries in one [`Request::Announce`] or [`Response::Entries`].
pub const MAX_ENTRIES_PER_MESSAGE: usize = 4096;
/// Bytes of entries one [`Response::Entries`] carries at most (beyond one entry); the largest
/// value (1 MiB) plus overhead always fits, and the frame stays under [`MAX_RESPONSE_BYTES`].
pub const ENTRIES_RESPONSE_BUDGET: usize = 4 * 1024 * 1024;
/// Most chunks asked for in one [`Request::GetChunks`].
pub const MAX_CHUNKS_PER_REQUEST: usize = 1024;
/// Bytes of chunks one [`Response::Chunks`] carries at most (beyond one chunk, which is at most
/// 256 KiB), so that the frame stays under [`MAX_RESPONSE_BYTES`].
pub const CHUNKS_RESPONSE_BUDGET: usize = 6 * 1024 * 1024;
/// Most bytes one [`Request::GetChunkPart`] asks for: a whole chunk of the largest size (the
/// folder's `CHUNK_MAX`, which checks that they agree).
pub const CHUNK_PART_MAX: u32 = 256 * 1024;
/// Bytes of entries pushed inside one [`Request::Announce`]; more are left to reconciliation.
pub const ANNOUNCE_PUSH_BUDGET: usize = 256 * 1024;
/// The [`Response::Error`] for anything about a share the asker is not (or no longer) a member
/// of here: the asker drops us from that share's members and asks us to prove membership again.
pub const NOT_A_MEMBER: &str = "not a member";

/// A share id on the wire.
pub type WireShareId = serde_bytes::ByteArray<32>;
/// A 32-byte hash on the wire.
pub type WireHash = serde_bytes::ByteArray<32>;
/// An Ed25519 signature on the wire.
pub type WireSignature = serde_bytes::ByteArray<64>;

/// One record entry on the wire: the key and its whole register.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireEntry {
    /// The record key.
    #[serde(rename = "k")]
    pub key: serde_bytes::ByteBuf,
    /// Its register (every concurrent version).
    #[serde(rename = "v")]
    pub register: crate::merge::RecordRegister,
}

/// What a peer asks of another.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Version exchange, sent once per new connection.
    #[serde(rename = "hello")]
    Hello(Hello),
    /// "Do you hold the share this tag was made with?"
    #[serde(rename = "auth")]
    Auth {
        /// Fresh random nonce.
        #[serde(rename = "n")]
        nonce: WireHash,
        /// MAC over both peer ids and the nonce, keyed by the share secret.
        #[serde(rename = "t")]
        tag: WireHash,
        /// From read-write members: their signature with the share's write key
        /// ([`crate::share::writer_sign`]).
        #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
        writer: Option<WireSignature>,
    },
    /// A share changed on the sender.
    #[serde(rename = "ann")]
    Announce {
        /// The share.
        #[serde(rename = "s")]
        share: WireShareId,
        /// The sender's summary root after the change.
        #[serde(rename = "r")]
        root: WireHash,
        /// The sender's entry count.
        #[serde(rename = "c")]
        count: u64,
        /// The changed entries, when they fit [`ANNOUNCE_PUSH_BUDGET`].
        #[serde(rename = "e")]
        entries: Vec<WireEntry>,
    },
    /// How far the sender has got with a share: its summary root and what it knows it still
    /// has to fetch. Sent to members when it changes (at most about once a second), so each
    /// member can show the others' completion.
    #[serde(rename = "prog")]
    Progress {
        /// The share.
        #[serde(rename = "s")]
        share: WireShareId,
        /// The sender's summary root.
        #[serde(rename = "r")]
        root: WireHash,
        /// Files (folder shares) the sender knows of and has not yet written.
        #[serde(rename = "f")]
        files: u64,
        /// Bytes of content the sender still has to fetch for them.
        #[serde(rename = "b")]
        bytes: u64,
    },
    /// One reconciliation message (the [`crate::reconcile`] encoding).
    #[serde(rename = "rec")]
    Reconcile {
        /// The share.
        #[serde(rename = "s")]
        share: WireShareId,
        /// The encoded [`crate::reconcile::Request`].
        #[serde(rename = "m")]
        message: serde_bytes::ByteBuf,
    },
    /// Entries by summary id.
    #[serde(rename = "get")]
    GetEntries {
        /// The share.
        #[serde(rename = "s")]
        share: WireShareId,
        /// At most [`MAX_IDS_PER_REQUEST`] ids.
        #[serde(rename = "i")]
        ids: Vec<WireHash>,
    },
    /// One chunk of a folder share's file content, by BLAKE3 hash.
    #[serde(rename = "chunk")]
    GetChunk {
        /// The share.
        #[serde(rename = "s")]
        share: WireShareId,
        /// The chunk's hash.
        #[serde(rename = "h")]
        hash: WireHash,
    },
    /// Part of one chunk: `len` bytes from `offset` (fewer at the chunk's end). Asked of a
    /// member whose link is too slow for the whole chunk to arrive within a request's timeout;
    /// the asker checks the assembled chunk against its hash. Only sent to peers whose
    /// [`Hello::chunk_parts`] says they answer it.
    #[serde(rename = "part")]
    GetChunkPart {
        /// The share.
        #[serde(rename = "s")]
        share: WireShareId,
        /// The chunk's hash.
        #[serde(rename = "h")]
        hash: WireHash,
        /// The first byte wanted.
        #[serde(rename = "o")]
        offset: u32,
        /// Bytes wanted (at most [`CHUNK_PART_MAX`]).
        #[serde(rename = "l")]
        len: u32,
    },
    /// Several chunks at once (at most [`MAX_CHUNKS_PER_REQUEST`]), by BLAKE3 hash.
    #[serde(rename = "chunks")]
    GetChunks {
        /// The share.
        #[serde(rename = "s")]
        share: WireShareId,
        /// The chunks' hashes.
        #[serde(rename = "h")]
        hashes: Vec<WireHash>,
    },
    /// One page of a large file's chunk list, by BLAKE3 hash of its encoding.
    #[serde(rename = "page")]
    GetPage {
        /// The share.
        #[serde(rename = "s")]
        share: WireShareId,
        /// The page's hash.
        #[serde(rename = "h")]
        hash: WireHash,
    },
}

/// The answer to a [`Request`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Response {
    /// Answer to [`Request::Hello`].
    #[serde(rename = "hello")]
    Hello(Hello),
    /// Answer to [`Request::Auth`]: the responder's proofs, or `None`.
    #[serde(rename = "auth")]
    Auth(Option<AuthProof>),
    /// Answer to [`Request::Announce`].
    #[serde(rename = "ack")]
    Ack,
    /// Answer to [`Request::Reconcile`] (the [`crate::reconcile`] encoding).
    #[serde(rename = "rec")]
    Reconcile(serde_bytes::ByteBuf),
    /// Answer to [`Request::GetEntries`].
    #[serde(rename = "ent")]
    Entries(Vec<WireEntry>),
    /// Answer to [`Request::GetChunk`]: the chunk's bytes; to [`Request::GetChunkPart`]: the
    /// part's.
    #[serde(rename = "chunk")]
    Chunk(serde_bytes::ByteBuf),
    /// Answer to [`Request::GetPage`]: the page's encoding.
    #[serde(rename = "page")]
    Page(serde_bytes::ByteBuf),
    /// Answer to [`Request::GetChunks`]: one item per hash asked for, in order; `None` for a
    /// chunk not held, or left out because the answer reached [`CHUNKS_RESPONSE_BUDGET`].
    #[serde(rename = "chunks")]
    Chunks(Vec<Option<serde_bytes::ByteBuf>>),
    /// The request was refused; the text is for logs only.
    #[serde(rename = "err")]
    Error(String),
}

/// A member's answer to [`Request::Auth`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthProof {
    /// MAC proving membership.
    #[serde(rename = "p")]
    pub member: WireHash,
    /// From read-write members: their signature with the share's write key.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub writer: Option<WireSignature>,
}

/// Who we are, in protocol terms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub protocol_version: u32,
    /// Software name and version, e.g. `meshsync/0.1.0`.
    pub agent: String,
    /// The sender's wall clock when it sent this, in milliseconds since the Unix epoch, so the
    /// receiver can tell how far apart their clocks are. Absent from older peers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_ms: Option<u64>,
    /// The sender's device name (`name` in its config), for people to tell peers apart.
    /// Absent from older peers and peers without a name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Whether the sender answers [`Request::GetChunkPart`]. Absent (false) from older peers,
    /// which would fail to decode it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub chunk_parts: bool,
}

/// A peer's device name is cut to this many characters.
pub use crate::config::MAX_NAME_CHARS;

impl Hello {
    /// Our own hello, with our device name, stamped with our wall clock now.
    pub fn ours(name: Option<String>) -> Hello {
        Hello {
            protocol_version: PROTOCOL_VERSION,
            agent: agent_version(),
            wall_ms: Some(wall_clock_ms()),
            name,
            chunk_parts: true,
        }
    }
}

/// Our wall clock, in milliseconds since the Unix epoch.
pub fn wall_clock_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// `meshsync/<crate version>`, as announced in hello and identify.
pub fn agent_version() -> String {
    format!("meshsync/{}", env!("CARGO_PKG_VERSION"))
}

/// The request-response codec: length-prefixed CBOR with enforced size limits; request frames
/// are read within the inbound buffer budget of the peer the codec's connection is with.
#[derive(Debug, Default)]
pub struct Codec {
    budget: InboundBudget,
    /// The remote peer, for a connection's codec (see `super::sync`).
    peer: Option<PeerId>,
}

impl Codec {
    /// A codec whose connections' request frames all draw on `budget`.
    pub fn new(budget: InboundBudget) -> Codec {
        Codec { budget, peer: None }
    }
}

impl Clone for Codec {
    fn clone(&self) -> Self {
        Codec {
            budget: self.budget.clone(),
            peer: super::budget::take_connection_peer().or(self.peer),
        }
    }
}

/// Reads one frame of at most `limit` bytes into memory reserved piece by piece in `hold`
/// (never the size the prefix announces), and decodes it. Fails at once when the budget
/// refuses a piece or evicts the hold: the stream is then reset, its buffer freed.
pub async fn read_frame_within<T, R>(io: &mut R, limit: usize, hold: &mut Hold) -> io::Result<T>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin + Send,
{
    let len = read_frame_len(io, limit).await?;
    let over_budget = |e: BudgetError| io::Error::new(io::ErrorKind::OutOfMemory, e);
    let mut buf: Vec<u8> = Vec::new();
    let mut reserved = 0;
    while buf.len() < len {
        let piece = (len - buf.len()).min(READ_PIECE);
        let needed = buf.len() + piece;
        if needed > reserved {
            // Doubling, so a big frame is not copied once per piece; what is reserved is the
            // capacity, which is what the frame really costs.
            let capacity = needed.max(reserved * 2).min(len);
            hold.grow(capacity - reserved).map_err(over_budget)?;
            buf.reserve_exact(capacity - buf.len());
            reserved = capacity;
        }
        let start = buf.len();
        buf.resize(needed, 0);
        let mut filled = start;
        while filled < needed {
            let read = std::future::poll_fn(|cx| {
                if hold.poll_evicted(cx).is_ready() {
                    return std::task::Poll::Ready(Err(over_budget(BudgetError::Evicted)));
                }
                std::pin::Pin::new(&mut *io).poll_read(cx, &mut buf[filled..needed])
            })
            .await?;
            if read == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("frame truncated: {filled} of {len} bytes"),
                ));
            }
            filled += read;
        }
    }
    decode(&buf)
}

/// Reads one frame of at most `limit` bytes and decodes it.
pub async fn read_frame<T, R>(io: &mut R, limit: usize) -> io::Result<T>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin + Send,
{
    let len = read_frame_len(io, limit).await?;
    // `take` + `read_to_end` grows the buffer as bytes arrive, so a peer that announces a large
    // frame and sends nothing costs us nothing.
    let mut buf = Vec::new();
    io.take(len as u64).read_to_end(&mut buf).await?;
    if buf.len() != len {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("frame truncated: {} of {len} bytes", buf.len()),
        ));
    }
    decode(&buf)
}

/// Encodes `value` and writes it as one frame, refusing to send more than `limit` bytes.
pub async fn write_frame<T, W>(io: &mut W, value: &T, limit: usize) -> io::Result<()>
where
    T: Serialize,
    W: AsyncWrite + Unpin + Send,
{
    let buf = encode(value)?;
    if buf.len() > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "message of {} bytes exceeds the limit of {limit} bytes",
                buf.len()
            ),
        ));
    }
    io.write_all(&varint(buf.len())).await?;
    io.write_all(&buf).await?;
    io.flush().await
}

/// Reads a frame's length prefix and refuses a frame over `limit` before any of it is read.
async fn read_frame_len<R: AsyncRead + Unpin + Send>(
    io: &mut R,
    limit: usize,
) -> io::Result<usize> {
    let len = read_varint(io).await?;
    if len > limit {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("frame of {len} bytes exceeds the limit of {limit} bytes"),
        ));
    }
    Ok(len)
}

/// Longest length prefix: 5 bytes of 7 bits cover every `u32`.
const MAX_VARINT_BYTES: usize = 5;

/// Encodes a frame length as an unsigned LEB128 varint (1 byte below 128, 2 below 16 KiB), with
/// `unsigned-varint`.
pub fn varint(n: usize) -> Vec<u8> {
    unsigned_varint::encode::usize(n, &mut unsigned_varint::encode::usize_buffer()).to_vec()
}

/// Reads a frame length prefix of at most [`MAX_VARINT_BYTES`] bytes.
///
/// The bytes are read one at a time (a prefix is never read ahead of, so the payload stays in
/// the stream) and decoded by `unsigned-varint` as a `u64`, which holds the 35 bits five bytes
/// can carry. Not `unsigned_varint::aio::read_u32`: its `u32` decoding drops the bits of a fifth
/// byte above bit 31, so a prefix of 2^32 + 5 would read as 5 rather than be refused as too long.
/// Also refused: a prefix that is not minimal (`[0x80, 0x00]` for 0), which no encoder writes.
async fn read_varint<R: AsyncRead + Unpin + Send>(io: &mut R) -> io::Result<usize> {
    let mut buf = [0u8; MAX_VARINT_BYTES];
    for i in 0..MAX_VARINT_BYTES {
        io.read_exact(&mut buf[i..=i]).await?;
        if unsigned_varint::decode::is_last(buf[i]) {
            let (value, _) = unsigned_varint::decode::u64(&buf[..=i]).map_err(|e| {
                io::Error::new(io::ErrorKind::InvalidData, format!("bad frame length: {e}"))
            })?;
            return usize::try_from(value)
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "frame length overflows"));
        }
    }
    Err(io::Error::new(
        io::ErrorKind::InvalidData,
        "frame length prefix longer than 5 bytes",
    ))
}

/// Size of `value` as one frame on the wire, for byte counters.
pub fn frame_len<T: Serialize>(value: &T) -> usize {
    let payload = crate::cbor::encoded_len(value);
    payload + varint(payload).len()
}

/// CBOR-encodes a message ([`crate::cbor::encode`] with the codec's `io::Error`).
pub fn encode<T: Serialize>(value: &T) -> io::Result<Vec<u8>> {
    crate::cbor::encode(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
}

/// Decodes a CBOR message, turning every failure into `InvalidData`.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> io::Result<T> {
    crate::cbor::decode(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("bad CBOR message: {e}")))
}

impl libp2p::request_response::Codec for Codec {
    type Protocol = StreamProtocol;
    type Request = Request;
    type Response = Response;

    async fn read_request<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Request>
    where
        T: AsyncRead + Unpin + Send,
    {
        let mut hold = self.budget.hold(self.peer);
        read_frame_within(io, MAX_REQUEST_BYTES, &mut hold).await
    }

    async fn read_response<T>(&mut self, _: &StreamProtocol, io: &mut T) -> io::Result<Response>
    where
        T: AsyncRead + Unpin + Send,
    {
        read_frame(io, MAX_RESPONSE_BYTES).await
    }

    async fn write_request<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        req: Request,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &req, MAX_REQUEST_BYTES).await
    }

    async fn write_response<T>(
        &mut self,
        _: &StreamProtocol,
        io: &mut T,
        res: Response,
    ) -> io::Result<()>
    where
        T: AsyncWrite + Unpin + Send,
    {
        write_frame(io, &res, MAX_RESPONSE_BYTES).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::io::Cursor;
    use proptest::prelude::*;

    /// Hands out its bytes in pieces of the given sizes (cycled), as a network would.
    struct Pieces {
        data: Vec<u8>,
        at: usize,
        sizes: Vec<usize>,
        turn: usize,
    }

    impl AsyncRead for Pieces {
        fn poll_read(
            mut self: std::pin::Pin<&mut Self>,
            _: &mut std::task::Context<'_>,
            buf: &mut [u8],
        ) -> std::task::Poll<io::Result<usize>> {
            let size = self.sizes[self.turn % self.sizes.len()].max(1);
            self.turn += 1;
            let n = size.min(buf.len()).min(self.data.len() - self.at);
            buf[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            std::task::Poll::Ready(Ok(n))
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Whatever the frame's size and however the bytes arrive, the budgeted reader gets the
        /// same message back, never holds more than twice the frame, and gives it all back;
        /// a frame cut short is an error, not a message.
        #[test]
        fn the_budgeted_reader_reads_any_frame_within_its_budget(
            len in 0usize..600_000,
            sizes in proptest::collection::vec(1usize..100_000, 1..8),
            cut in proptest::option::of(0usize..600_000),
        ) {
            let payload = serde_bytes::ByteBuf::from(vec![7u8; len]);
            let mut bytes = framed(&encode(&payload).unwrap());
            let whole = bytes.len();
            if let Some(cut) = cut {
                bytes.truncate(cut.min(whole));
            }
            let budget = InboundBudget::default();
            let mut hold = budget.hold(Some(PeerId::random()));
            let mut io = Pieces { data: bytes, at: 0, sizes, turn: 0 };
            let read: io::Result<serde_bytes::ByteBuf> = futures::executor::block_on(
                read_frame_within(&mut io, MAX_REQUEST_BYTES, &mut hold),
            );
            prop_assert!(budget.total() <= 2 * whole);
            match cut.filter(|c| *c < whole) {
                None => prop_assert_eq!(read.unwrap(), payload),
                Some(_) => prop_assert!(read.is_err()),
            }
            drop(hold);
            prop_assert_eq!(budget.total(), 0);
        }
    }

    #[tokio::test]
    async fn a_peer_over_its_share_is_refused_before_its_bytes_are_read() {
        let budget = InboundBudget::new(crate::net::budget::Limits {
            total: 1 << 20,
            per_peer: 100_000,
        });
        let peer = Some(PeerId::random());
        let mut first = budget.hold(peer);
        first.grow(90_000).unwrap();
        let payload = serde_bytes::ByteBuf::from(vec![1u8; 50_000]);
        let bytes = framed(&encode(&payload).unwrap());
        let mut hold = budget.hold(peer);
        let err = read_frame_within::<serde_bytes::ByteBuf, _>(
            &mut Cursor::new(bytes.clone()),
            MAX_REQUEST_BYTES,
            &mut hold,
        )
        .await
        .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
        let mut other = budget.hold(Some(PeerId::random()));
        let back: serde_bytes::ByteBuf =
            read_frame_within(&mut Cursor::new(bytes), MAX_REQUEST_BYTES, &mut other)
                .await
                .unwrap();
        assert_eq!(back, payload, "another peer is served");
    }

    #[tokio::test]
    async fn an_evicted_reader_stops_waiting_at_once() {
        let budget = InboundBudget::new(crate::net::budget::Limits {
            total: 200_000,
            per_peer: 150_000,
        });
        // A stalled sender: the prefix of a big frame and 100,000 bytes, then nothing.
        let (tx, rx) = futures::channel::mpsc::unbounded::<io::Result<Vec<u8>>>();
        let mut start = varint(1_000_000);
        start.extend(vec![0u8; 100_000]);
        tx.unbounded_send(Ok(start)).unwrap();
        let mut stalled = futures::TryStreamExt::into_async_read(rx);
        let mut hold = budget.hold(Some(PeerId::random()));
        let reader = tokio::spawn({
            let budget = budget.clone();
            async move {
                let _keep = budget;
                read_frame_within::<serde_bytes::ByteBuf, _>(&mut stalled, 2_000_000, &mut hold)
                    .await
            }
        });
        tokio::time::timeout(std::time::Duration::from_secs(10), async {
            while budget.total() < 100_000 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the reader holds what it read");
        let mut newcomer = budget.hold(Some(PeerId::random()));
        newcomer.grow(150_000).unwrap();
        let err = tokio::time::timeout(std::time::Duration::from_secs(10), reader)
            .await
            .expect("the evicted reader returns without more bytes")
            .unwrap()
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::OutOfMemory);
        drop(tx);
    }

    fn framed(payload: &[u8]) -> Vec<u8> {
        let mut out = varint(payload.len());
        out.extend_from_slice(payload);
        out
    }

    #[tokio::test]
    async fn hello_round_trips() {
        let mut buf = Vec::new();
        // One hello: two carry different wall clocks.
        let hello = Request::Hello(Hello::ours(None));
        write_frame(&mut Cursor::new(&mut buf), &hello, MAX_REQUEST_BYTES)
            .await
            .unwrap();
        let back: Request = read_frame(&mut Cursor::new(buf), MAX_REQUEST_BYTES)
            .await
            .unwrap();
        assert_eq!(back, hello);
    }

    #[tokio::test]
    async fn oversized_frame_is_refused_before_reading() {
        let mut bytes = varint(MAX_REQUEST_BYTES + 1);
        bytes.extend_from_slice(&[0; 16]);
        let err = read_frame::<Request, _>(&mut Cursor::new(bytes), MAX_REQUEST_BYTES)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds"));
    }

    /// The hand-written LEB128 encoder this module had before `unsigned-varint`.
    fn old_varint(mut n: usize) -> Vec<u8> {
        let mut out = Vec::new();
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return out;
            }
            out.push(byte | 0x80);
        }
    }

    #[test]
    fn varint_encodes_as_before() {
        let mut values = vec![
            0,
            1,
            127,
            128,
            255,
            300,
            16_383,
            16_384,
            10 << 30,
            usize::MAX,
        ];
        values.extend([MAX_REQUEST_BYTES, MAX_RESPONSE_BYTES, u32::MAX as usize]);
        values.extend((0..64).map(|shift| 1usize << shift));
        values.extend((1..64).map(|shift| (1usize << shift) - 1));
        for n in values {
            assert_eq!(varint(n), old_varint(n), "{n}");
        }
    }

    async fn prefix(bytes: &[u8]) -> io::Result<usize> {
        read_varint(&mut Cursor::new(bytes.to_vec())).await
    }

    #[tokio::test]
    async fn length_prefix_is_bounded() {
        for n in [
            0,
            1,
            127,
            128,
            MAX_RESPONSE_BYTES,
            u32::MAX as usize,
            (1 << 35) - 1,
        ] {
            assert_eq!(prefix(&varint(n)).await.unwrap(), n);
        }
        // Only the prefix is consumed.
        let mut io = Cursor::new([varint(300), vec![7]].concat());
        assert_eq!(read_varint(&mut io).await.unwrap(), 300);
        assert_eq!(io.position(), 2);
        // 2^32 + 5 needs all five bytes; it must not be read as 5.
        assert_eq!(prefix(&varint((1 << 32) + 5)).await.unwrap(), (1 << 32) + 5);
        for (bytes, kind) in [
            (
                &[0x80, 0x80, 0x80, 0x80, 0x80, 0x01][..],
                io::ErrorKind::InvalidData,
            ),
            (&[0xff; 5][..], io::ErrorKind::InvalidData),
            (&[0x80, 0x00][..], io::ErrorKind::InvalidData),
            (&[0x80, 0x80][..], io::ErrorKind::UnexpectedEof),
            (&[][..], io::ErrorKind::UnexpectedEof),
        ] {
            assert_eq!(prefix(bytes).await.unwrap_err().kind(), kind, "{bytes:?}");
        }
        let mut huge = varint((1 << 32) + 5);
        huge.extend_from_slice(&[0; 16]);
        let err = read_frame::<Request, _>(&mut Cursor::new(huge), MAX_REQUEST_BYTES)
            .await
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(err.to_string().contains("exceeds"), "{err}");
    }

    #[tokio::test]
    async fn garbage_and_truncation_are_errors() {
        for bytes in [
            framed(&[0xff, 0x00, 0x13, 0x37]),
            framed(b"definitely not cbor"),
            framed(&[]),
            vec![0, 0],
            {
                let mut b = framed(&encode(&Request::Hello(Hello::ours(None))).unwrap());
                b.truncate(b.len() - 3);
                b
            },
        ] {
            assert!(
                read_frame::<Request, _>(&mut Cursor::new(bytes.clone()), MAX_REQUEST_BYTES)
                    .await
                    .is_err(),
                "{bytes:?}"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..512)) {
            let _ = decode::<Request>(&bytes);
            let _ = decode::<Response>(&bytes);
        }
    }
}
