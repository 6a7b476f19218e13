//! What a user does to a share after joining it: pause it (nothing exchanged, the folder left
//! alone), resume it, or leave it (stop syncing and forget its state; files stay).

use tracing::info;

use super::{EngineActor, EngineError};
use crate::store::ShareMeta;

/// Why a share that the user paused is paused, as `status` says it.
pub fn paused_reason(name: &str) -> String {
    format!("paused by the user; `meshsync share resume {name}` resumes it")
}

impl EngineActor {
    /// Pauses (`paused`) or resumes the share; false if it already was so.
    pub(super) async fn set_paused(
        &mut self,
        share: &str,
        paused: bool,
    ) -> Result<bool, EngineError> {
        let state = self.store.resolve(share)?;
        if state.meta.paused == paused {
            return Ok(false);
        }
        let meta = ShareMeta {
            paused,
            ..state.meta.clone()
        };
        self.store.update_share(meta.clone()).await?;
        if paused {
            self.stop_syncing(&meta).await;
            info!(share = %meta.name, "paused: nothing is exchanged with its members until it is resumed");
        } else {
            self.start_folder(&meta);
            for peer in self.roster.connected() {
                self.start_auth(peer, meta.id);
            }
            info!(share = %meta.name, "resumed");
        }
        Ok(true)
    }

    /// Leaves the share: stops syncing it and forgets everything the store holds of it. A
    /// folder's files (and its marker directory with the versions kept) stay where they are.
    /// Returns the share's name.
    pub(super) async fn leave(&mut self, share: &str) -> Result<String, EngineError> {
        let state = self.store.resolve(share)?;
        self.stop_syncing(&state.meta).await;
        self.store.remove_share(state.meta.id).await?;
        self.counters.remove(&state.meta.id);
        info!(share = %state.meta.name, "left: no longer synced, its state forgotten");
        Ok(state.meta.name.clone())
    }

    /// Stops the share's folder actor and drops its members, so that nothing of it is sent,
    /// served or written any more.
    async fn stop_syncing(&mut self, meta: &ShareMeta) {
        if let Some(folder) = self.folders.remove(&meta.id) {
            folder.shutdown().await;
        }
        self.member_watch.remove(&meta.id);
        self.roster.forget_share(&meta.id);
        self.progress.forget_share(&meta.id);
    }
}
