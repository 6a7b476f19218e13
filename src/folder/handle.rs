//! The cloneable handle through which the engine talks to a folder's actor.

use tokio::sync::{mpsc, oneshot};

use super::model::Hash;
use super::status::FolderStatus;

/// What the user decides for a held share.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Resume {
    /// Send the held deletes: they were meant.
    AcceptDeletes,
    /// Fetch the deleted files back from members: they were not.
    Restore,
}

/// What the engine asks of a folder's actor.
pub(super) enum Command {
    ServeChunks {
        hashes: Vec<Hash>,
        budget: usize,
        reply: oneshot::Sender<Vec<Option<Vec<u8>>>>,
    },
    ServePage {
        hash: Hash,
        reply: oneshot::Sender<Option<Vec<u8>>>,
    },
    Status {
        reply: oneshot::Sender<FolderStatus>,
    },
    Resume {
        choice: Resume,
        reply: oneshot::Sender<Result<u64, String>>,
    },
    Shutdown {
        reply: oneshot::Sender<()>,
    },
}

/// Handle to one folder's actor.
#[derive(Clone)]
pub struct FolderHandle {
    pub(super) commands: mpsc::Sender<Command>,
}

impl FolderHandle {
    async fn call<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Option<T> {
        let (reply, rx) = oneshot::channel();
        self.commands.send(make(reply)).await.ok()?;
        rx.await.ok()
    }

    /// The bytes of a chunk we hold, verified against its hash.
    pub async fn serve_chunk(&self, hash: Hash) -> Option<Vec<u8>> {
        self.serve_chunks(vec![hash], usize::MAX)
            .await?
            .pop()
            .flatten()
    }

    /// Chunks we hold, in the order asked, until `budget` bytes (always at least one); `None`
    /// for those we do not hold or that did not fit.
    pub async fn serve_chunks(
        &self,
        hashes: Vec<Hash>,
        budget: usize,
    ) -> Option<Vec<Option<Vec<u8>>>> {
        self.call(|reply| Command::ServeChunks {
            hashes,
            budget,
            reply,
        })
        .await
    }

    /// The encoding of a chunk-list page we hold.
    pub async fn serve_page(&self, hash: Hash) -> Option<Vec<u8>> {
        self.call(|reply| Command::ServePage { hash, reply })
            .await
            .flatten()
    }

    /// The folder's status.
    pub async fn status(&self) -> Option<FolderStatus> {
        self.call(|reply| Command::Status { reply }).await
    }

    /// Ends a hold of the mass-deletion breaker as the user decided; how many paths it concerned,
    /// or why there is nothing to resume. `None` if the actor is gone.
    pub async fn resume(&self, choice: Resume) -> Option<Result<u64, String>> {
        self.call(|reply| Command::Resume { choice, reply }).await
    }

    /// Stops the actor.
    pub async fn shutdown(&self) {
        let _ = self.call(|reply| Command::Shutdown { reply }).await;
    }
}
