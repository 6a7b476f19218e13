//! The messages the handle sends to the store thread, each with the channel for its answer.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::local_state::{LocalIndexChange, LocalStateRow, LocalStateRows};
use super::{Entry, LocalWrite, RecordRegister, ShareId, ShareMeta, StoreError};
use crate::reconcile::Id;

/// What the handle asks of the store thread.
pub(super) enum Action {
    CreateShare {
        meta: ShareMeta,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    UpdateShare {
        meta: ShareMeta,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    RemoveShare {
        share: ShareId,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    CountAuthored {
        share: ShareId,
        reply: oneshot::Sender<Result<u64, StoreError>>,
    },
    Put {
        share: ShareId,
        records: Vec<LocalWrite>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Merge {
        share: ShareId,
        entries: Vec<Entry>,
        from: libp2p::PeerId,
        reply: oneshot::Sender<Result<usize, StoreError>>,
    },
    Get {
        share: ShareId,
        key: Vec<u8>,
        reply: oneshot::Sender<Result<Option<RecordRegister>, StoreError>>,
    },
    GetMany {
        share: ShareId,
        keys: Vec<Vec<u8>>,
        reply: oneshot::Sender<Result<Vec<Option<RecordRegister>>, StoreError>>,
    },
    List {
        share: ShareId,
        prefix: Vec<u8>,
        /// Only keys after this one.
        after: Option<Vec<u8>>,
        /// At most this many entries.
        limit: usize,
        reply: oneshot::Sender<Result<Vec<Entry>, StoreError>>,
    },
    ByIds {
        share: ShareId,
        ids: Vec<Id>,
        reply: oneshot::Sender<Result<Vec<Entry>, StoreError>>,
    },
    PutPages {
        share: ShareId,
        pages: Vec<([u8; 32], Vec<u8>)>,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    SaveLocalState {
        share: ShareId,
        rows: Vec<LocalStateRow>,
        index: LocalIndexChange,
        reply: oneshot::Sender<Result<(), StoreError>>,
    },
    Page {
        share: ShareId,
        hash: [u8; 32],
        reply: oneshot::Sender<Result<Option<Vec<u8>>, StoreError>>,
    },
    LocalState {
        share: ShareId,
        reply: oneshot::Sender<Result<LocalStateRows, StoreError>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

impl Action {
    /// Whether the action only reads (reads are answered before a batch's writes).
    pub(super) fn is_read(&self) -> bool {
        matches!(
            self,
            Action::Get { .. }
                | Action::GetMany { .. }
                | Action::List { .. }
                | Action::ByIds { .. }
                | Action::CountAuthored { .. }
                | Action::Page { .. }
                | Action::LocalState { .. }
        )
    }

    /// Answers the action with `error`: the batch it came in could not be applied, or the
    /// database cannot be reached.
    pub(super) fn fail(self, error: &Arc<StoreError>) {
        let failed = || StoreError::BatchFailed(error.clone());
        match self {
            Action::CreateShare { reply, .. }
            | Action::UpdateShare { reply, .. }
            | Action::RemoveShare { reply, .. }
            | Action::Put { reply, .. }
            | Action::PutPages { reply, .. }
            | Action::SaveLocalState { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Action::CountAuthored { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Action::Merge { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Action::Get { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Action::GetMany { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Action::List { reply, .. } | Action::ByIds { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Action::Page { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Action::LocalState { reply, .. } => {
                let _ = reply.send(Err(failed()));
            }
            Action::Shutdown { reply } => {
                let _ = reply.send(());
            }
        }
    }
}
