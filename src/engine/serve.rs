//! Answering peers' requests: announcements, reconciliation steps, entries and folder content.
//!
//! Every request about a share is refused, the same way whether the share exists here or not,
//! unless the peer proved membership of it; entries pushed with an announcement are only taken
//! from members that proved they may write. Anything that waits on the store, a folder or the
//! network is answered from a task of its own, so the engine loop never waits; folder content is
//! paced per peer by [`crate::net::guard::ServeRate`].

use libp2p::PeerId;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::membership::AuthAsk;
use super::schedule::SyncReason;
use super::{EngineActor, TaskResult};
use crate::folder::FolderHandle;
use crate::net::Reply;
use crate::net::protocol::{
    CHUNKS_RESPONSE_BUDGET, ENTRIES_RESPONSE_BUDGET, MAX_CHUNKS_PER_REQUEST,
    MAX_ENTRIES_PER_MESSAGE, MAX_IDS_PER_REQUEST, NOT_A_MEMBER, Request, Response, WireEntry,
    WireHash, frame_len,
};
use crate::store::{ShareId, ShareState};

/// What a folder content request asks for.
#[derive(Debug, Clone, Copy)]
enum ContentKind {
    Chunk,
    /// `len` bytes of a chunk from `offset`.
    ChunkPart {
        offset: u32,
        len: u32,
    },
    Page,
}

impl EngineActor {
    /// A peer's request: each kind is answered by its own method.
    pub(super) fn on_request(&mut self, peer: PeerId, request: Request, channel: Reply) {
        let received = frame_len(&request) as u64;
        match request {
            Request::Hello(_) => self.respond(
                None,
                channel,
                Response::Error("hello is answered by the network layer".into()),
            ),
            Request::Auth { nonce, tag, writer } => {
                let ask = AuthAsk {
                    nonce: *nonce,
                    tag: *tag,
                    writer: writer.map(|w| *w),
                };
                self.answer_auth(peer, ask, received, channel)
            }
            Request::Announce {
                share,
                root,
                count: _,
                entries,
            } => self.answer_announce(peer, (*share, *root), entries, received, channel),
            Request::Progress {
                share,
                root,
                files,
                bytes,
            } => {
                let progress = super::progress::Progress {
                    root: *root,
                    files,
                    bytes,
                };
                self.answer_progress(peer, *share, progress, received, channel)
            }
            Request::Reconcile { share, message } => {
                self.answer_reconcile(peer, *share, &message, received, channel)
            }
            Request::GetChunk { share, hash } => {
                self.serve_content(peer, *share, *hash, ContentKind::Chunk, received, channel)
            }
            Request::GetChunkPart {
                share,
                hash,
                offset,
                len,
            } => {
                let kind = ContentKind::ChunkPart { offset, len };
                self.serve_content(peer, *share, *hash, kind, received, channel)
            }
            Request::GetPage { share, hash } => {
                self.serve_content(peer, *share, *hash, ContentKind::Page, received, channel)
            }
            Request::GetChunks { share, hashes } => {
                self.serve_chunks(peer, *share, hashes, received, channel)
            }
            Request::GetEntries { share, ids } => {
                self.serve_entries(peer, *share, ids, received, channel)
            }
        }
    }

    /// Sends an answer from a task of its own, counting its bytes for the share.
    pub(super) fn respond(&mut self, share: Option<ShareId>, channel: Reply, response: Response) {
        let sent = frame_len(&response) as u64;
        if let Some(share) = share {
            self.counters(share).bytes_sent += sent;
        }
        let net = self.net.clone();
        tokio::spawn(async move { net.respond(channel, response).await });
    }

    /// Refusal for anything about a share the peer has not proved membership of. It is the same
    /// whether the share exists here or not.
    fn refuse(&mut self, channel: Reply) {
        self.respond(None, channel, Response::Error(NOT_A_MEMBER.into()));
    }

    /// The share, if `peer` proved membership of it (counting the request's bytes for it).
    fn member_share(
        &mut self,
        peer: &PeerId,
        share: &ShareId,
        received: u64,
    ) -> Option<ShareState> {
        if !self.roster.is_member(share, peer) {
            debug!(%peer, "refused a request for a share it has not proved membership of");
            return None;
        }
        self.counters(*share).bytes_received += received;
        self.store.share(share)
    }

    /// The folder of a folder share `peer` is a member of.
    fn member_folder(
        &mut self,
        peer: &PeerId,
        share: &ShareId,
        received: u64,
    ) -> Option<FolderHandle> {
        let folder = self.folders.get(share).cloned()?;
        self.member_share(peer, share, received).map(|_| folder)
    }

    /// A member's progress with a share: remembered for `status`.
    fn answer_progress(
        &mut self,
        peer: PeerId,
        share: ShareId,
        progress: super::progress::Progress,
        received: u64,
        channel: Reply,
    ) {
        if self.member_share(&peer, &share, received).is_none() {
            return self.refuse(channel);
        }
        self.progress
            .reported((peer, share), progress, Instant::now());
        self.respond(Some(share), channel, Response::Ack);
    }

    /// A member's new root, maybe with the entries that changed: merged (from writers only) in a
    /// task that acknowledges once they are stored; a session follows if the roots differ.
    fn answer_announce(
        &mut self,
        peer: PeerId,
        (share, their_root): (ShareId, [u8; 32]),
        entries: Vec<WireEntry>,
        received: u64,
        channel: Reply,
    ) {
        let Some(state) = self.member_share(&peer, &share, received) else {
            return self.refuse(channel);
        };
        if entries.len() > MAX_ENTRIES_PER_MESSAGE {
            let response = Response::Error("too many entries".into());
            return self.respond(Some(share), channel, response);
        }
        if !entries.is_empty() && !self.roster.is_writer(&share, &peer) {
            // Read-only members may announce (their root) but never push entries.
            self.counters(share).refused_entries += entries.len() as u64;
            warn!(
                %peer, share = %state.meta.name,
                "refused {} entries from a member that may not write (read-only token)",
                entries.len()
            );
            let response = Response::Error("read-only members cannot write".into());
            return self.respond(Some(share), channel, response);
        }
        if entries.is_empty() {
            self.respond(Some(share), channel, Response::Ack);
            let ours = state.summary.read().expect("summary lock").root();
            if ours != their_root {
                self.want_session(peer, share, SyncReason::RootDiffers);
            }
            return;
        }
        let store = self.store.clone();
        let net = self.net.clone();
        self.tasks.spawn(async move {
            let entries = entries
                .into_iter()
                .map(|e| (e.key.into_vec(), e.register))
                .collect();
            // Acknowledged once merged, so a pusher that waits for the answer knows the
            // entries are here and does not send them again.
            let response = match store.merge(share, entries, peer).await {
                Ok(_) => Response::Ack,
                Err(e) if e.is_logged_by_store() => Response::Error("cannot merge".into()),
                Err(e) => {
                    warn!(%peer, "cannot merge announced entries: {e}");
                    Response::Error("cannot merge".into())
                }
            };
            let sent = frame_len(&response) as u64;
            net.respond(channel, response).await;
            TaskResult::Merged {
                peer,
                share,
                their_root,
                sent,
            }
        });
    }

    /// Entries a member pushed were merged: reconcile if the roots still differ.
    pub(super) fn on_merged(&mut self, peer: PeerId, share: ShareId, their_root: [u8; 32]) {
        let ours = self
            .store
            .share(&share)
            .map(|s| s.summary.read().expect("summary lock").root());
        if ours.is_some_and(|r| r != their_root) {
            self.want_session(peer, share, SyncReason::MergedButDiffers);
        }
    }

    /// One reconciliation step, answered from the summary at once.
    fn answer_reconcile(
        &mut self,
        peer: PeerId,
        share: ShareId,
        message: &[u8],
        received: u64,
        channel: Reply,
    ) {
        let Some(state) = self.member_share(&peer, &share, received) else {
            return self.refuse(channel);
        };
        let answer = {
            let summary = state.summary.read().expect("summary lock");
            crate::reconcile::respond_bytes(&summary, message)
        };
        match answer {
            Ok(bytes) => self.respond(Some(share), channel, Response::Reconcile(bytes.into())),
            // The store says once why it cannot be read; the peer hears it too.
            Err(e @ crate::reconcile::ReconcileError::OwnItems(_)) => {
                debug!(%peer, "cannot answer a reconciliation request: {e}");
                self.respond(Some(share), channel, Response::Error(e.to_string()));
            }
            Err(e) => {
                warn!(%peer, "bad reconciliation request: {e}");
                self.respond(Some(share), channel, Response::Error(e.to_string()));
            }
        }
    }

    /// Entries by id, up to [`ENTRIES_RESPONSE_BUDGET`] bytes (at least one).
    fn serve_entries(
        &mut self,
        peer: PeerId,
        share: ShareId,
        ids: Vec<WireHash>,
        received: u64,
        channel: Reply,
    ) {
        if self.member_share(&peer, &share, received).is_none() {
            return self.refuse(channel);
        }
        if ids.len() > MAX_IDS_PER_REQUEST {
            let response = Response::Error("too many ids".into());
            return self.respond(Some(share), channel, response);
        }
        let store = self.store.clone();
        let net = self.net.clone();
        self.tasks.spawn(async move {
            let ids = ids.into_iter().map(|id| *id).collect();
            let entries = match store.by_ids(share, ids).await {
                Ok(entries) => entries,
                Err(e) => {
                    // An error, not an empty answer: the asker must not take it for "none of
                    // these exist here".
                    warn!("cannot read entries to serve: {e}");
                    let response = Response::Error("cannot read entries here".into());
                    let sent = frame_len(&response) as u64;
                    net.respond(channel, response).await;
                    return TaskResult::Answered { share, sent };
                }
            };
            let mut out = Vec::new();
            let mut budget = 0;
            for (key, register) in entries {
                let entry = WireEntry {
                    key: key.into(),
                    register,
                };
                budget += frame_len(&entry);
                if !out.is_empty() && budget > ENTRIES_RESPONSE_BUDGET {
                    break;
                }
                out.push(entry);
            }
            let response = Response::Entries(out);
            let sent = frame_len(&response) as u64;
            net.respond(channel, response).await;
            TaskResult::Answered { share, sent }
        });
    }

    /// Answers a member's request for folder content (a chunk or a chunk-list page) by hash.
    fn serve_content(
        &mut self,
        peer: PeerId,
        share: ShareId,
        hash: [u8; 32],
        kind: ContentKind,
        received: u64,
        channel: Reply,
    ) {
        let Some(folder) = self.member_folder(&peer, &share, received) else {
            return self.refuse(channel);
        };
        let net = self.net.clone();
        let pace = self.serve_rate.clone();
        self.tasks.spawn(async move {
            let bytes = match kind {
                ContentKind::Chunk | ContentKind::ChunkPart { .. } => {
                    folder.serve_chunk(hash).await
                }
                ContentKind::Page => folder.serve_page(hash).await,
            };
            // A part is paced as the whole chunk read for it: asking for tiny parts must not
            // buy more reads from our disk than whole chunks would.
            if let Some(bytes) = &bytes {
                let wait = pace.take(peer, bytes.len(), std::time::Instant::now());
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
            }
            let bytes = match kind {
                ContentKind::ChunkPart { offset, len } => {
                    bytes.and_then(|chunk| part_of(chunk, offset, len))
                }
                _ => bytes,
            };
            let response = match (kind, bytes) {
                (ContentKind::Chunk | ContentKind::ChunkPart { .. }, Some(b)) => {
                    Response::Chunk(b.into())
                }
                (ContentKind::Page, Some(b)) => Response::Page(b.into()),
                (ContentKind::ChunkPart { .. }, None) => {
                    Response::Error("unknown hash, or a part outside the chunk".into())
                }
                (_, None) => Response::Error("unknown hash".into()),
            };
            let sent = frame_len(&response) as u64;
            net.respond(channel, response).await;
            TaskResult::Answered { share, sent }
        });
    }

    /// Answers a member's request for many chunks at once, up to [`CHUNKS_RESPONSE_BUDGET`]
    /// bytes.
    fn serve_chunks(
        &mut self,
        peer: PeerId,
        share: ShareId,
        hashes: Vec<WireHash>,
        received: u64,
        channel: Reply,
    ) {
        let Some(folder) = self.member_folder(&peer, &share, received) else {
            return self.refuse(channel);
        };
        if hashes.len() > MAX_CHUNKS_PER_REQUEST {
            let response = Response::Error("too many chunks".into());
            return self.respond(Some(share), channel, response);
        }
        let net = self.net.clone();
        let pace = self.serve_rate.clone();
        self.tasks.spawn(async move {
            let hashes = hashes.into_iter().map(|h| *h).collect();
            let chunks = folder
                .serve_chunks(hashes, CHUNKS_RESPONSE_BUDGET)
                .await
                .unwrap_or_default();
            let bytes: usize = chunks.iter().flatten().map(Vec::len).sum();
            let wait = pace.take(peer, bytes, std::time::Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
            let response =
                Response::Chunks(chunks.into_iter().map(|c| c.map(Into::into)).collect());
            let sent = frame_len(&response) as u64;
            net.respond(channel, response).await;
            TaskResult::Answered { share, sent }
        });
    }
}

/// Bytes `offset..offset + len` of `chunk` (fewer where the chunk ends sooner); `None` for an
/// empty part, or one that starts at or past the chunk's end or asks for more than
/// [`CHUNK_PART_MAX`](crate::net::protocol::CHUNK_PART_MAX).
fn part_of(mut chunk: Vec<u8>, offset: u32, len: u32) -> Option<Vec<u8>> {
    let (offset, len) = (offset as usize, len as usize);
    if len == 0 || len > crate::net::protocol::CHUNK_PART_MAX as usize || offset >= chunk.len() {
        return None;
    }
    let end = chunk.len().min(offset + len);
    chunk.truncate(end);
    Some(chunk.split_off(offset))
}

#[cfg(test)]
mod part_tests {
    use super::part_of;

    #[test]
    fn a_part_is_the_asked_range_cut_at_the_chunks_end() {
        let chunk: Vec<u8> = (0..100u8).collect();
        assert_eq!(part_of(chunk.clone(), 0, 10), Some((0..10).collect()));
        assert_eq!(part_of(chunk.clone(), 90, 50), Some((90..100).collect()));
        assert_eq!(part_of(chunk.clone(), 99, 1), Some(vec![99]));
        assert_eq!(part_of(chunk.clone(), 100, 1), None, "past the end");
        assert_eq!(part_of(chunk.clone(), 0, 0), None, "empty");
        assert_eq!(part_of(chunk, u32::MAX, u32::MAX), None, "no overflow");
    }
}
