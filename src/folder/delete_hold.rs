//! Local deletes wait for the deleting to stop before they are sent.
//!
//! `rm -rf` of a shared folder, or a disk being unmounted, removes files one by one before the
//! folder's root and marker go; a scan that runs in between sees the files gone while the root
//! is still there. Sent at once, those deletes would remove the files on every member although
//! the user only removed (or lost) this copy of the folder. So a path found gone is *held*
//! until no new path has gone for [`DELETE_SETTLE`]; then the folder's root, marker and id are
//! checked and each held path is looked at again, and only what is still gone is sent. If the
//! folder pauses meanwhile (its root or marker went too), every held delete is dropped. A
//! stream of deletes that never pauses is still checked after [`DELETE_HOLD_MAX`], so that
//! nothing waits forever.
//!
//! Pure bookkeeping: the folder actor checks and sends.

use std::collections::BTreeSet;
use std::time::Duration;

use tokio::time::Instant;

/// How long no new local delete must appear before held deletes are checked and sent.
pub const DELETE_SETTLE: Duration = Duration::from_secs(1);
/// The longest a delete is held while new deletes keep appearing.
pub const DELETE_HOLD_MAX: Duration = Duration::from_secs(10);

/// The local deletes found but not yet sent.
#[derive(Debug, Default)]
pub(super) struct DeleteHold {
    paths: BTreeSet<String>,
    /// When the oldest held delete was found.
    first: Option<Instant>,
    /// When the last new path was added.
    last_new: Option<Instant>,
}

impl DeleteHold {
    /// The number of held deletes.
    pub(super) fn len(&self) -> usize {
        self.paths.len()
    }

    /// Holds the paths a scan found gone (already filtered to paths that were synced).
    pub(super) fn hold(&mut self, gone: impl IntoIterator<Item = String>, now: Instant) {
        let before = self.paths.len();
        self.paths.extend(gone);
        if self.paths.len() > before {
            self.first.get_or_insert(now);
            self.last_new = Some(now);
        }
    }

    /// When the held deletes should be checked and, if still gone, sent.
    pub(super) fn due_at(&self) -> Option<Instant> {
        let (first, last_new) = (self.first?, self.last_new?);
        Some((last_new + DELETE_SETTLE).min(first + DELETE_HOLD_MAX))
    }

    /// Every held path, once due; the hold is then empty. Nothing before.
    pub(super) fn take_due(&mut self, now: Instant) -> Vec<String> {
        if self.due_at().is_none_or(|due| due > now) {
            return Vec::new();
        }
        let paths = std::mem::take(&mut self.paths).into_iter().collect();
        self.clear();
        paths
    }

    /// A held path is there again (recreated, or moved back): no delete.
    pub(super) fn release(&mut self, path: &str) {
        self.paths.remove(path);
        if self.paths.is_empty() {
            self.clear();
        }
    }

    /// Drops every held delete (the folder paused, or is treated as new).
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn paths(names: &[&str]) -> Vec<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_delete_is_due_only_after_a_quiet_settle() {
        let t0 = Instant::now();
        let mut hold = DeleteHold::default();
        hold.hold(paths(&["a"]), t0);
        assert_eq!(hold.due_at(), Some(t0 + DELETE_SETTLE));
        assert!(hold.take_due(t0 + DELETE_SETTLE / 2).is_empty());
        // Seeing the same path gone again is no new delete: the settle is not pushed back.
        hold.hold(paths(&["a"]), t0 + DELETE_SETTLE / 2);
        assert_eq!(hold.due_at(), Some(t0 + DELETE_SETTLE));
        assert_eq!(hold.take_due(t0 + DELETE_SETTLE), paths(&["a"]));
        assert_eq!(hold.len(), 0);
        assert_eq!(hold.due_at(), None);
    }

    #[test]
    fn new_deletes_push_the_hold_back_until_the_maximum() {
        let t0 = Instant::now();
        let mut hold = DeleteHold::default();
        let mut t = t0;
        let mut i = 0;
        let sent = loop {
            i += 1;
            t += DELETE_SETTLE / 2;
            hold.hold([format!("f{i}")], t);
            let sent = hold.take_due(t);
            if !sent.is_empty() {
                break sent;
            }
            assert!(t <= t0 + DELETE_HOLD_MAX + DELETE_SETTLE, "held forever");
        };
        assert!(t >= t0 + DELETE_HOLD_MAX);
        assert_eq!(sent.len(), i);
    }

    #[test]
    fn a_path_back_before_the_settle_is_not_deleted() {
        let t0 = Instant::now();
        let mut hold = DeleteHold::default();
        hold.hold(paths(&["a", "b"]), t0);
        hold.release("a");
        assert_eq!(hold.take_due(t0 + DELETE_SETTLE), paths(&["b"]));
        hold.hold(paths(&["c"]), t0);
        hold.release("c");
        assert_eq!(hold.due_at(), None);
    }

    #[test]
    fn clearing_drops_everything() {
        let mut hold = DeleteHold::default();
        hold.hold(paths(&["a"]), Instant::now());
        hold.clear();
        assert_eq!(hold.len(), 0);
        assert_eq!(hold.due_at(), None);
    }
}
