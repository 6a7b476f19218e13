//! The store's change notices, as the folder takes them: peers' changes queued for download,
//! and, during a long piece of work, our own taken at once and others' set aside.
//!
//! Methods of the folder actor, kept apart from its loop.

use std::sync::Arc;
use tokio::sync::broadcast;
use tracing::debug;

use super::actor::{FolderActor, LATEST_REGISTERS_KEPT};
use crate::store::{Change, Origin};

impl FolderActor {
    /// Between the batches of a long piece of work (a big scan's writes): hands the synced
    /// rows so far to the writer (which indexes their chunks), answers the commands that wait
    /// ([`Self::answer_commands`]), and takes the store's change notices out of the channel.
    /// Left there until the work ends, a big scan's own notices (each holds a register) pile
    /// up, and past the channel's size they overflow it, which costs a comparison of every
    /// store entry with what was synced (and holds back peers' merges meanwhile). Our own
    /// writes' notices are taken now; others' go to `deferred`, for [`Self::on_changes`] after
    /// the work, where the run loop would have taken them.
    pub(super) fn between_batches(&mut self, deferred: &mut Vec<ChangeNotice>) {
        self.flush_synced();
        self.answer_commands();
        while let Some(notice) = self.waiting_notice() {
            match notice {
                Ok(change) if matches!(change.origin, Origin::Local) => self.on_change(Ok(change)),
                _ if deferred.len() >= DEFERRED_NOTICES_MAX => {
                    // As if the channel had overflowed: everything is compared again afterwards.
                    if !matches!(deferred.last(), Some(Err(_))) {
                        deferred.push(Err(broadcast::error::RecvError::Lagged(1)));
                    }
                }
                other => deferred.push(other),
            }
        }
    }

    /// Takes the change notices waiting in the channel, between the pages of a long listing:
    /// left there, they hold back peers' merges (`StoreHandle::merge` waits for readers).
    pub(super) fn take_notices(&mut self) {
        while let Some(notice) = self.waiting_notice() {
            self.on_change(notice);
        }
    }

    /// Takes a notice and those waiting behind it (up to [`NOTICES_TAKEN_AT_ONCE`]) in one turn
    /// of the folder's loop: a merge of thousands of peers' entries sends a notice for each at
    /// once, and the loop's work after each turn (refilling the download window, starting
    /// downloads) is done once for them all.
    pub(super) fn on_change_and_waiting(&mut self, first: ChangeNotice) {
        self.on_change(first);
        for _ in 1..NOTICES_TAKEN_AT_ONCE {
            let Some(notice) = self.waiting_notice() else {
                return;
            };
            self.on_change(notice);
        }
    }

    /// The next notice in the channel, if one is there now.
    fn waiting_notice(&mut self) -> Option<ChangeNotice> {
        match self.changes.try_recv() {
            Ok(change) => Some(Ok(change)),
            Err(broadcast::error::TryRecvError::Lagged(n)) => {
                Some(Err(broadcast::error::RecvError::Lagged(n)))
            }
            Err(_) => None,
        }
    }

    /// Takes change notices set aside by [`Self::between_batches`].
    pub(super) fn on_changes(&mut self, notices: Vec<ChangeNotice>) {
        for notice in notices {
            self.on_change(notice);
        }
    }

    pub(super) fn on_change(&mut self, change: ChangeNotice) {
        match change {
            Ok(change) if change.share == self.sources.share => {
                if matches!(change.origin, Origin::Remote(_))
                    && let Ok(path) = String::from_utf8(change.key.clone())
                {
                    if self.latest.len() < LATEST_REGISTERS_KEPT {
                        self.latest.insert(path.clone(), change.register.clone());
                    } else {
                        // Read from the store when its download starts instead.
                        self.latest.remove(&path);
                    }
                    self.queue_remote(path, &change.register);
                } else if let Ok(path) = std::str::from_utf8(&change.key) {
                    // Our own write: the register a queued download would use is outdated.
                    self.latest.remove(path);
                }
            }
            Ok(_) => {}
            Err(broadcast::error::RecvError::Lagged(lost)) => {
                // Lost notices were about the store, not the disk: what they would have queued
                // is found by comparing every entry with what was synced, without a walk of
                // the tree (at 10^6 files a walk after each loss was most of a first sync).
                debug!(folder = %self.name, lost, "change notices lost: every entry is compared with what was synced");
                self.latest.clear();
                self.requeue_remote = true;
            }
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }
}

/// Others' change notices set aside while a scan's changes are written, at most; past it the
/// folder compares every store entry with what was synced afterwards, as when the channel
/// overflows.
pub const DEFERRED_NOTICES_MAX: usize = 4096;

/// Change notices taken in one turn of the folder's loop, at most; its other work waits
/// meanwhile.
pub const NOTICES_TAKEN_AT_ONCE: usize = 4096;

/// A notice from the store's change channel.
pub(super) type ChangeNotice = Result<Arc<Change>, broadcast::error::RecvError>;
