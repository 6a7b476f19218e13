//! Fetching chunks from members, many per request.
//!
//! Every download of a folder hands the chunks it cannot find locally to one [`Fetcher`]. While
//! [`BATCHES_IN_FLIGHT`] requests are out, new wants queue up; each free slot takes the queued
//! wants that go to the same member (up to [`MAX_CHUNKS_PER_REQUEST`] and
//! [`BATCH_BUDGET`] bytes) as one [`Request::GetChunks`]. Ten thousand small files then cost a
//! few hundred requests instead of ten thousand, each of which is a new stream and a protocol
//! negotiation.
//!
//! Only the first [`EAGER_BATCHES`] request to a member goes out as soon as there is anything to
//! ask it; further ones wait until [`MIN_BATCH_BYTES`] or [`MIN_BATCH_CHUNKS`] wants are queued
//! for it (or its requests are answered). Wants arrive one at a time as downloads make room, and
//! sending each at once split a 256 MiB file into about 1,300 requests, most of them for one
//! chunk; 100,000 files of 1 KiB, whose chunks never add up to [`MIN_BATCH_BYTES`], went out in
//! 9,000–22,000 requests of 2 chunks (median) while two could go out at once. Counting per
//! member keeps a member that is slow to answer from holding back the wants bound for others.
//!
//! How many bytes are out to one member at once, and how long a member that failed waits
//! before it is asked again, is [`Pacing`]'s call: it sizes each member's window to what the
//! member delivers, so a request on a slow link is answered in seconds instead of timing out.
//!
//! A chunk larger than what a member's link delivers within its window is fetched in parts
//! ([`Request::GetChunkPart`], from members whose hello offers it), each sized to the window: a
//! request is answered whole within the network layer's timeout (30 s) or not at all, so over a
//! link slower than one chunk per timeout (~70 kbit/s for the largest, 256 KiB) a whole chunk
//! never arrived. The parts come from one member and are kept across its failed requests
//! ([`super::chunk_part`]); the assembled chunk is checked like any other.
//!
//! Every chunk is checked against its hash. A chunk that does not match is discarded, counted,
//! reported as a strike against the member, and asked of another member; so is one the member
//! did not send. After [`MAX_ATTEMPTS`] the want fails, and the download retries later.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use libp2p::PeerId;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;

use super::chunk_part::{Added, Part};
use super::error::{FetchError, MemberFailure};
use super::model::{CheckedChunk, ChunkRef};
use super::pacing::Pacing;
use super::status::Counters;
use crate::net::NetClient;
use crate::net::protocol::{CHUNK_PART_MAX, MAX_CHUNKS_PER_REQUEST, Request, Response};
use crate::store::ShareId;

/// Chunk requests out at once, per folder.
pub const BATCHES_IN_FLIGHT: usize = 8;
/// Bytes of chunks asked for in one request (the answer's budget is larger, so a full batch
/// always fits).
pub const BATCH_BUDGET: usize = 4 * 1024 * 1024;
/// Requests to one member sent however little is queued for it, so a lone want is never kept
/// waiting. One: with two, each answer let the next request go out with whatever had queued
/// meanwhile (see the module's documentation).
pub const EAGER_BATCHES: usize = 1;
/// Bytes queued for a member before a request to it beyond the first [`EAGER_BATCHES`] is sent.
pub const MIN_BATCH_BYTES: usize = 1024 * 1024;
/// Wants queued for a member before a request to it beyond the first [`EAGER_BATCHES`] is sent,
/// however few bytes they are: the chunks of small files never add up to [`MIN_BATCH_BYTES`].
pub const MIN_BATCH_CHUNKS: usize = 64;
/// Members asked for one chunk before its download fails (and is retried later).
pub const MAX_ATTEMPTS: usize = 6;
/// A request unanswered for [`HEDGE_AFTER_MIN`] plus its bytes at [`HEDGE_RATE`] (or at half
/// the member's measured rate, if that is slower) is taken as stuck when another member could
/// be asked: its chunks are asked of that one instead (a frozen or cut-off member would
/// otherwise hold them until it is found dead or the request times out). A member that
/// delivers at the rate it was measured at is never second-guessed.
pub const HEDGE_AFTER_MIN: std::time::Duration = std::time::Duration::from_secs(2);
/// See [`HEDGE_AFTER_MIN`]: the rate below which a request counts as stuck (bytes/s).
pub const HEDGE_RATE: u64 = 256 * 1024;
/// The smallest part of a chunk asked for at once (a window may have less room left).
pub const PART_MIN: u32 = super::model::CHUNK_MIN;

const _: () = assert!(CHUNK_PART_MAX == super::model::CHUNK_MAX);

/// How often requests out are checked against the hedge deadline.
pub const HEDGE_CHECK: std::time::Duration = std::time::Duration::from_millis(250);

struct Want {
    chunk: ChunkRef,
    reply: oneshot::Sender<Result<CheckedChunk, FetchError>>,
    /// Members that failed it, and how often it was asked.
    failed: Vec<PeerId>,
    attempts: usize,
    /// What has arrived of it in parts (at most one chunk's bytes).
    part: Option<Part>,
}

impl Want {
    /// Whether its next request is for a part: it is larger than `budget`, or parts of it
    /// from `peer` have arrived already (the rest is asked of it in parts too).
    fn in_parts(&self, peer: &PeerId, budget: usize) -> bool {
        self.chunk.len as usize > budget
            || self
                .part
                .as_ref()
                .is_some_and(|p| p.member() == *peer && p.offset() > 0)
    }
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
            asked: HashMap::new(),
            suspect: HashSet::new(),
            pacing: Pacing::default(),
        };
        tokio::spawn(task.run(rx));
        Fetcher { wants }
    }

    /// The chunk's bytes, verified, from some member.
    pub async fn fetch(&self, chunk: ChunkRef) -> Result<CheckedChunk, FetchError> {
        let (reply, rx) = oneshot::channel();
        self.wants
            .send(Want {
                chunk,
                reply,
                failed: Vec::new(),
                attempts: 0,
                part: None,
            })
            .map_err(|_| FetchError::Stopped)?;
        rx.await.map_err(|_| FetchError::Stopped)?
    }
}

type BatchResult = Result<Response, MemberFailure>;

struct FetchTask {
    share: ShareId,
    net: NetClient,
    members: watch::Receiver<Vec<PeerId>>,
    counters: Arc<Counters>,
    queue: VecDeque<Want>,
    batches: JoinSet<BatchResult>,
    /// Each request in `batches`: to whom, for what, since when. A request taken out of here
    /// (its member left, or it was stuck) is abandoned; its answer is dropped.
    asked: HashMap<tokio::task::Id, Asked>,
    /// Members with a request found stuck, asked nothing new while another member can be,
    /// until one of their answers arrives.
    suspect: HashSet<PeerId>,
    pacing: Pacing,
}

/// One request out.
struct Asked {
    peer: PeerId,
    wants: Vec<Want>,
    /// For a request for part of its one want's chunk: the part's offset and length.
    part: Option<(u32, u32)>,
    since: tokio::time::Instant,
    abort: tokio::task::AbortHandle,
}

impl Asked {
    /// The bytes of chunks it asks for.
    fn bytes(&self) -> u64 {
        match self.part {
            Some((_, len)) => u64::from(len),
            None => bytes_of(&self.wants),
        }
    }

    /// When it counts as stuck: [`HEDGE_AFTER_MIN`] plus its bytes at [`HEDGE_RATE`], or at
    /// half the member's measured `rate` where that is slower.
    fn stuck_at(&self, rate: Option<f64>) -> tokio::time::Instant {
        let hedge_rate = rate.map_or(HEDGE_RATE as f64, |r| (r / 2.0).min(HEDGE_RATE as f64));
        let secs = self.bytes() as f64 / hedge_rate.max(1.0);
        self.since + HEDGE_AFTER_MIN + std::time::Duration::from_secs_f64(secs.min(3600.0))
    }
}

fn bytes_of(wants: &[Want]) -> u64 {
    wants.iter().map(|w| u64::from(w.chunk.len)).sum()
}

impl FetchTask {
    async fn run(mut self, mut rx: mpsc::UnboundedReceiver<Want>) {
        let mut closed = false;
        let mut hedge = tokio::time::interval(HEDGE_CHECK);
        hedge.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            if closed && self.batches.is_empty() {
                return;
            }
            tokio::select! {
                Ok(()) = self.members.changed() => self.abandon_gone_members(),
                // Also while wants wait for a member that is held back after a failure.
                _ = hedge.tick(), if !self.asked.is_empty() || !self.queue.is_empty() => {
                    self.hedge_stuck()
                }
                want = rx.recv(), if !closed => match want {
                    Some(want) => {
                        self.queue.push_back(want);
                        while let Ok(more) = rx.try_recv() {
                            self.queue.push_back(more);
                        }
                    }
                    None => closed = true,
                },
                Some(done) = self.batches.join_next_with_id() => match done {
                    Ok((id, result)) => {
                        if let Some(asked) = self.asked.remove(&id) {
                            self.suspect.remove(&asked.peer);
                            match asked.part {
                                Some((offset, len)) => {
                                    self.on_part(asked.peer, asked.wants, offset, len, result)
                                        .await
                                }
                                None => self.on_answer(asked.peer, asked.wants, result).await,
                            }
                        }
                    }
                    Err(e) => {
                        if let Some(asked) = self.asked.remove(&e.id()) {
                            let now = tokio::time::Instant::now();
                            self.pacing.failed(asked.peer, asked.bytes(), now);
                            let why = MemberFailure::Request {
                                peer: asked.peer,
                                message: e.to_string(),
                            };
                            self.retry(asked.wants, why);
                        }
                    }
                },
            }
            self.dispatch();
        }
    }

    /// Requests out to members that left are given up: their chunks go to the queue for the
    /// others at once, not when the requests time out.
    fn abandon_gone_members(&mut self) {
        let members = self.members.borrow().clone();
        self.suspect.retain(|p| members.contains(p));
        self.pacing.retain(&members);
        let gone: Vec<tokio::task::Id> = self
            .asked
            .iter()
            .filter(|(_, a)| !members.contains(&a.peer))
            .map(|(id, _)| *id)
            .collect();
        for id in gone {
            if let Some(asked) = self.asked.remove(&id) {
                asked.abort.abort();
                let why = MemberFailure::Request {
                    peer: asked.peer,
                    message: "no longer a member".into(),
                };
                self.retry(asked.wants, why);
            }
        }
    }

    /// Requests stuck past their deadline ([`Asked::stuck_at`]) are given up when another
    /// member could be asked; that one is, and so are all the other requests out to the same
    /// member (they wait on the same silence). A hedge does not count as an attempt.
    fn hedge_stuck(&mut self) {
        let now = tokio::time::Instant::now();
        let members = self.members.borrow().clone();
        let stuck_peers: HashSet<PeerId> = self
            .asked
            .values()
            .filter(|a| {
                a.stuck_at(self.pacing.rate(&a.peer)) <= now && members.iter().any(|m| *m != a.peer)
            })
            .map(|a| a.peer)
            .collect();
        let stuck: Vec<tokio::task::Id> = self
            .asked
            .iter()
            .filter(|(_, a)| stuck_peers.contains(&a.peer))
            .map(|(id, _)| *id)
            .collect();
        for id in stuck {
            if let Some(asked) = self.asked.remove(&id) {
                asked.abort.abort();
                self.pacing.shrink(asked.peer, asked.bytes());
                tracing::debug!(peer = %asked.peer, "chunk request stuck; asking another member");
                self.suspect.insert(asked.peer);
                for mut want in asked.wants {
                    want.failed.retain(|p| *p != asked.peer);
                    want.failed.push(asked.peer);
                    self.queue.push_back(want);
                }
            }
        }
    }

    /// The member to ask for `want` next, spread by hash: one of the `trusted` members that has
    /// not failed it; else any member that has not (a suspect or held-back member may be the
    /// only one that holds it: left out for good, the want would fail on the others until the
    /// download gives up, every time); else any member.
    fn pick(trusted: &[PeerId], members: &[PeerId], want: &Want) -> Option<PeerId> {
        let spread = want.chunk.hash[1] as usize;
        // Without collecting: this runs for every queued want at every dispatch.
        let fresh = |set: &[PeerId]| -> Option<PeerId> {
            let not_failed = || set.iter().filter(|m| !want.failed.contains(m));
            match not_failed().count() {
                0 => None,
                count => not_failed().nth(spread % count).copied(),
            }
        };
        fresh(trusted)
            .or_else(|| fresh(members))
            .or_else(|| members.get(spread % members.len().max(1)).copied())
    }

    fn dispatch(&mut self) {
        while self.batches.len() < BATCHES_IN_FLIGHT && !self.queue.is_empty() {
            let members = self.members.borrow().clone();
            if members.is_empty() {
                for want in self.queue.drain(..) {
                    let _ = want.reply.send(Err(FetchError::NoMember));
                }
                return;
            }
            // Suspects, and members held back after a failure, are left out while anyone else
            // can be asked.
            let now = tokio::time::Instant::now();
            let trusted: Vec<PeerId> = members
                .iter()
                .filter(|m| !self.suspect.contains(m) && !self.pacing.held_back(m, now))
                .copied()
                .collect();
            // Where each queued want goes; members is not empty, so every want has one.
            let picked: Vec<Option<PeerId>> = self
                .queue
                .iter()
                .map(|w| Self::pick(&trusted, &members, w))
                .collect();
            // Bytes and wants queued for each member.
            let mut waiting: HashMap<PeerId, (usize, usize)> = HashMap::new();
            for (want, peer) in self.queue.iter().zip(&picked) {
                if let Some(peer) = peer {
                    let queued = waiting.entry(*peer).or_default();
                    queued.0 += want.chunk.len as usize;
                    queued.1 += 1;
                }
            }
            // Whether each member with wants queued may be asked now: decided once per member,
            // not once per want, as the queue may hold thousands of small files' chunks.
            let ready: HashMap<PeerId, bool> = waiting
                .iter()
                .map(|(peer, &(bytes, wants))| {
                    let room = self.pacing.room(peer, now) as usize;
                    let out = self.asked.values().filter(|a| a.peer == *peer).count();
                    let ready = room > 0
                        && (out < EAGER_BATCHES
                            || bytes >= MIN_BATCH_BYTES.min(room)
                            || wants >= MIN_BATCH_CHUNKS);
                    (*peer, ready)
                })
                .collect();
            // The member of the oldest want that may be asked now.
            let Some(peer) = picked.iter().flatten().copied().find(|peer| ready[peer]) else {
                return;
            };
            let budget = BATCH_BUDGET.min(self.pacing.room(&peer, now) as usize);
            let first = picked
                .iter()
                .position(|to| *to == Some(peer))
                .expect("the member was picked for a want");
            if self.queue[first].in_parts(&peer, budget) && self.net.takes_chunk_parts(&peer) {
                let want = self.queue.remove(first).expect("a queued want");
                self.ask_part(peer, want, budget, now);
                continue;
            }
            let mut bytes = 0;
            let mut batch = Vec::new();
            let mut rest = VecDeque::with_capacity(self.queue.len());
            for (want, to) in self.queue.drain(..).zip(picked) {
                let fits = batch.len() < MAX_CHUNKS_PER_REQUEST
                    && (batch.is_empty() || bytes + want.chunk.len as usize <= budget);
                if fits && to == Some(peer) {
                    bytes += want.chunk.len as usize;
                    batch.push(want);
                } else {
                    rest.push_back(want);
                }
            }
            self.queue = rest;
            tracing::trace!(%peer, chunks = batch.len(), bytes, "asking for chunks");
            let request = Request::GetChunks {
                share: serde_bytes::ByteArray::new(self.share),
                hashes: batch
                    .iter()
                    .map(|w| serde_bytes::ByteArray::new(w.chunk.hash))
                    .collect(),
            };
            self.send(peer, request, batch, None, bytes as u64, now);
        }
    }

    /// Sends `request` for `wants` (`part`: the offset and length, for a part) to `peer`,
    /// counts its `bytes` out to it, and keeps it in [`FetchTask::asked`] until it is answered.
    fn send(
        &mut self,
        peer: PeerId,
        request: Request,
        wants: Vec<Want>,
        part: Option<(u32, u32)>,
        bytes: u64,
        now: tokio::time::Instant,
    ) {
        self.pacing.sent(peer, bytes, now);
        let net = self.net.clone();
        let abort = self.batches.spawn(async move {
            net.request(peer, request)
                .await
                .map_err(|e| MemberFailure::Request {
                    peer,
                    message: e.to_string(),
                })
        });
        let asked = Asked {
            peer,
            wants,
            part,
            since: now,
            abort,
        };
        self.asked.insert(asked.abort.id(), asked);
    }

    /// Asks `peer` for the next part of `want`'s chunk: `budget` bytes (at least [`PART_MIN`]),
    /// from where the parts it sent so far end.
    fn ask_part(&mut self, peer: PeerId, mut want: Want, budget: usize, now: tokio::time::Instant) {
        let offset = Part::for_member(&mut want.part, peer).offset();
        let len = (budget.max(PART_MIN as usize) as u32)
            .min(want.chunk.len.saturating_sub(offset))
            .min(CHUNK_PART_MAX);
        let request = Request::GetChunkPart {
            share: serde_bytes::ByteArray::new(self.share),
            hash: serde_bytes::ByteArray::new(want.chunk.hash),
            offset,
            len,
        };
        self.send(
            peer,
            request,
            vec![want],
            Some((offset, len)),
            u64::from(len),
            now,
        );
    }

    async fn on_answer(
        &mut self,
        peer: PeerId,
        wants: Vec<Want>,
        result: Result<Response, MemberFailure>,
    ) {
        let asked = bytes_of(&wants);
        let now = tokio::time::Instant::now();
        let chunks = match result {
            Ok(Response::Chunks(chunks)) if chunks.len() == wants.len() => {
                let delivered = chunks.iter().flatten().map(|c| c.len() as u64).sum();
                self.pacing.answered(peer, asked, delivered, now);
                chunks
            }
            Err(e @ MemberFailure::Request { .. }) => {
                self.pacing.failed(peer, asked, now);
                return self.retry(wants, e);
            }
            Err(e) => {
                self.pacing.shrink(peer, asked);
                return self.retry(wants, e);
            }
            Ok(other) => {
                self.pacing.shrink(peer, asked);
                return self.unusable(peer, wants, other);
            }
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
                MemberFailure::Lied { peer }
            } else {
                MemberFailure::Missing { peer }
            };
            self.retry(missing, why);
        }
    }

    /// An answer to a request for `len` bytes of a chunk from `offset`: the part is added to
    /// what arrived before, and the chunk checked and handed out once it is whole; until then
    /// the want goes back to the front of the queue for its next part.
    async fn on_part(
        &mut self,
        peer: PeerId,
        mut wants: Vec<Want>,
        offset: u32,
        len: u32,
        result: Result<Response, MemberFailure>,
    ) {
        let now = tokio::time::Instant::now();
        let Some(mut want) = wants.pop() else {
            return;
        };
        let end = want.chunk.len;
        let bytes = match result {
            Ok(Response::Chunk(bytes)) if Part::is_a_part(bytes.len(), offset, len, end) => {
                self.pacing
                    .answered(peer, u64::from(len), bytes.len() as u64, now);
                bytes.into_vec()
            }
            Err(e @ MemberFailure::Request { .. }) => {
                self.pacing.failed(peer, u64::from(len), now);
                return self.retry(vec![want], e);
            }
            Err(e) => {
                self.pacing.shrink(peer, u64::from(len));
                return self.retry(vec![want], e);
            }
            Ok(other) => {
                self.pacing.shrink(peer, u64::from(len));
                return self.unusable(peer, vec![want], other);
            }
        };
        let whole = match Part::add(&mut want.part, peer, offset, &bytes, end) {
            Added::Whole(whole) => whole,
            // Not whole yet, or stale (another member's parts started it over in between).
            Added::More | Added::Stale => {
                self.queue.push_front(want);
                return;
            }
        };
        match CheckedChunk::check(&want.chunk, whole) {
            Ok(checked) => {
                self.counters
                    .fetched
                    .fetch_add(checked.bytes().len() as u64, Relaxed);
                let _ = want.reply.send(Ok(checked));
            }
            Err(_) => {
                self.counters.bad_chunks.fetch_add(1, Relaxed);
                self.net
                    .strike(
                        peer,
                        "sent content that does not match its hash; discarded".into(),
                    )
                    .await;
                self.retry(vec![want], MemberFailure::Lied { peer });
            }
        }
    }

    /// Puts back the wants of an answer that is not their chunks.
    fn unusable(&mut self, peer: PeerId, wants: Vec<Want>, answer: Response) {
        let why = match answer {
            Response::Chunks(chunks) => MemberFailure::Unexpected {
                peer,
                what: format!("{} chunks for {} asked", chunks.len(), wants.len()),
            },
            Response::Error(message) => MemberFailure::Refused { peer, message },
            other => MemberFailure::Unexpected {
                peer,
                what: format!("{other:?}"),
            },
        };
        self.retry(wants, why);
    }

    /// Puts wants back in the queue for another member, or fails those asked too often.
    fn retry(&mut self, wants: Vec<Want>, why: MemberFailure) {
        let peer = why.peer();
        let mut by_error: HashMap<bool, usize> = HashMap::new();
        for mut want in wants {
            want.attempts += 1;
            want.failed.push(peer);
            if want.attempts >= MAX_ATTEMPTS {
                *by_error.entry(true).or_default() += 1;
                let _ = want.reply.send(Err(FetchError::Exhausted {
                    attempts: want.attempts,
                    last: why.clone(),
                }));
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

#[cfg(test)]
mod tests;
