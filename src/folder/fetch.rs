//! Fetching chunks from members, many per request.
//!
//! Every download of a folder hands the chunks it cannot find locally to one [`Fetcher`]. While
//! [`BATCHES_IN_FLIGHT`] requests are out, new wants queue up; each free slot takes the queued
//! wants that go to the same member (up to [`MAX_CHUNKS_PER_REQUEST`] and
//! [`BATCH_BUDGET`] bytes) as one [`Request::GetChunks`]. Ten thousand small files then cost a
//! few hundred requests instead of ten thousand, each of which is a new stream and a protocol
//! negotiation.
//!
//! Every chunk is checked against its hash. A chunk that does not match is discarded, counted,
//! reported as a strike against the member, and asked of another member; so is one the member
//! did not send. After [`MAX_ATTEMPTS`] the want fails, and the download retries later.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::model::{CheckedChunk, ChunkRef};
use super::sync::Counters;
use crate::net::NetClient;
use crate::net::protocol::{MAX_CHUNKS_PER_REQUEST, Request, Response};
use crate::store::ShareId;

/// Chunk requests out at once, per folder.
pub const BATCHES_IN_FLIGHT: usize = 8;
/// Bytes of chunks asked for in one request (the answer's budget is larger, so a full batch
/// always fits).
pub const BATCH_BUDGET: usize = 4 * 1024 * 1024;
/// Members asked for one chunk before its download fails (and is retried later).
pub const MAX_ATTEMPTS: usize = 6;

struct Want {
    chunk: ChunkRef,
    reply: oneshot::Sender<Result<CheckedChunk, String>>,
    /// Members that failed it, and how often it was asked.
    failed: Vec<PeerId>,
    attempts: usize,
    last_error: String,
}

/// Hands out chunks fetched from members; cheap to clone.
#[derive(Clone)]
pub struct Fetcher {
    wants: mpsc::UnboundedSender<Want>,
}

impl Fetcher {
    /// Starts the fetcher of one folder share; it stops when every handle is gone.
    pub(super) fn spawn(
        share: ShareId,
        net: NetClient,
        members: watch::Receiver<Vec<PeerId>>,
        counters: Arc<Counters>,
    ) -> Fetcher {
        let (wants, rx) = mpsc::unbounded_channel();
        let task = FetchTask {
            share,
            net,
            members,
            counters,
            queue: VecDeque::new(),
            batches: JoinSet::new(),
        };
        tokio::spawn(task.run(rx));
        Fetcher { wants }
    }

    /// The chunk's bytes, verified, from some member.
    pub async fn fetch(&self, chunk: ChunkRef) -> Result<CheckedChunk, String> {
        let (reply, rx) = oneshot::channel();
        self.wants
            .send(Want {
                chunk,
                reply,
                failed: Vec::new(),
                attempts: 0,
                last_error: String::new(),
            })
            .map_err(|_| "the fetcher has stopped".to_string())?;
        rx.await
            .map_err(|_| "the fetcher has stopped".to_string())?
    }
}

type BatchResult = (PeerId, Vec<Want>, Result<Response, String>);

struct FetchTask {
    share: ShareId,
    net: NetClient,
    members: watch::Receiver<Vec<PeerId>>,
    counters: Arc<Counters>,
    queue: VecDeque<Want>,
    batches: JoinSet<BatchResult>,
}

impl FetchTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Want>) {
        let mut closed = false;
        loop {
            if closed && self.batches.is_empty() {
                return;
            }
            tokio::select! {
                want = rx.recv(), if !closed => match want {
                    Some(want) => {
                        self.queue.push_back(want);
                        while let Ok(more) = rx.try_recv() {
                            self.queue.push_back(more);
                        }
                    }
                    None => closed = true,
                },
                Some(done) = self.batches.join_next() => {
                    if let Ok((peer, wants, result)) = done {
                        self.on_answer(peer, wants, result).await;
                    }
                }
            }
            self.dispatch();
        }
    }

    /// The member to ask for `want` next: spread by hash, skipping those that failed it.
    fn pick(members: &[PeerId], want: &Want) -> Option<PeerId> {
        let fresh: Vec<PeerId> = members
            .iter()
            .filter(|m| !want.failed.contains(m))
            .copied()
            .collect();
        let from = if fresh.is_empty() { members } else { &fresh };
        if from.is_empty() {
            return None;
        }
        Some(from[want.chunk.hash[1] as usize % from.len()])
    }

    fn dispatch(&mut self) {
        while self.batches.len() < BATCHES_IN_FLIGHT && !self.queue.is_empty() {
            let members = self.members.borrow().clone();
            if members.is_empty() {
                for want in self.queue.drain(..) {
                    let _ = want
                        .reply
                        .send(Err("no member is connected to fetch from".into()));
                }
                return;
            }
            let first = self.queue.pop_front().expect("not empty");
            let Some(peer) = Self::pick(&members, &first) else {
                return;
            };
            let mut bytes = first.chunk.len as usize;
            let mut batch = vec![first];
            let mut rest = VecDeque::with_capacity(self.queue.len());
            while let Some(want) = self.queue.pop_front() {
                let fits = batch.len() < MAX_CHUNKS_PER_REQUEST
                    && bytes + want.chunk.len as usize <= BATCH_BUDGET;
                if fits && Self::pick(&members, &want) == Some(peer) {
                    bytes += want.chunk.len as usize;
                    batch.push(want);
                } else {
                    rest.push_back(want);
                }
            }
            self.queue = rest;
            let request = Request::GetChunks {
                share: serde_bytes::ByteArray::new(self.share),
                hashes: batch
                    .iter()
                    .map(|w| serde_bytes::ByteArray::new(w.chunk.hash))
                    .collect(),
            };
            let net = self.net.clone();
            self.batches.spawn(async move {
                let result = net.request(peer, request).await.map_err(|e| e.to_string());
                (peer, batch, result)
            });
        }
    }

    async fn on_answer(
        &mut self,
        peer: PeerId,
        wants: Vec<Want>,
        result: Result<Response, String>,
    ) {
        let chunks = match result {
            Ok(Response::Chunks(chunks)) if chunks.len() == wants.len() => chunks,
            Ok(Response::Chunks(_)) => {
                return self.retry(peer, wants, "answered the wrong number of chunks");
            }
            Ok(Response::Error(e)) => return self.retry(peer, wants, &e),
            Ok(other) => return self.retry(peer, wants, &format!("answered {other:?}")),
            Err(e) => return self.retry(peer, wants, &e),
        };
        let mut missing = Vec::new();
        let mut lies = 0;
        for (want, bytes) in wants.into_iter().zip(chunks) {
            match bytes.map(|bytes| CheckedChunk::check(&want.chunk, bytes.into_vec())) {
                Some(Ok(checked)) => {
                    self.counters
                        .fetched
                        .fetch_add(checked.bytes().len() as u64, Relaxed);
                    let _ = want.reply.send(Ok(checked));
                }
                Some(Err(_)) => {
                    lies += 1;
                    self.counters.bad_chunks.fetch_add(1, Relaxed);
                    missing.push(want);
                }
                None => missing.push(want),
            }
        }
        for _ in 0..lies {
            // The network layer logs it and bans the peer after a few.
            self.net
                .strike(
                    peer,
                    "sent content that does not match its hash; discarded".into(),
                )
                .await;
        }
        if !missing.is_empty() {
            let why = if lies > 0 {
                "sent bytes that do not match their hash"
            } else {
                "does not have it"
            };
            self.retry(peer, missing, why);
        }
    }

    /// Puts wants back in the queue for another member, or fails those asked too often.
    fn retry(&mut self, peer: PeerId, wants: Vec<Want>, why: &str) {
        let mut by_error: HashMap<bool, usize> = HashMap::new();
        for mut want in wants {
            want.attempts += 1;
            want.failed.push(peer);
            want.last_error = format!("{peer}: {why}");
            if want.attempts >= MAX_ATTEMPTS {
                *by_error.entry(true).or_default() += 1;
                let _ = want.reply.send(Err(want.last_error));
            } else {
                *by_error.entry(false).or_default() += 1;
                self.queue.push_back(want);
            }
        }
        tracing::debug!(
            %peer,
            "chunks not fetched ({why}): {} retried, {} failed",
            by_error.get(&false).copied().unwrap_or(0),
            by_error.get(&true).copied().unwrap_or(0)
        );
    }
}
