//! What the folder did to its paths, as events: `file_added`, `file_changed` and
//! `file_deleted` with who made the change (`local`, or the peer that wrote the version now on
//! disk), and `conflict` where our losing version was kept aside. Reported once the change is
//! on disk (a peer's) or recorded (ours), never for a download that failed.

use libp2p::PeerId;

use super::actor::FolderActor;
use super::model::{EntryKind, FileMeta};
use crate::events::{Event, EventType};

/// The event for `path` going from `before` to `after` in share `share`, if it changed in a way
/// a user would call a change: a directory's mtime moves whenever its children do, so only its
/// coming and going count.
pub(super) fn path_event(
    share: &str,
    path: &str,
    before: Option<&FileMeta>,
    after: Option<&FileMeta>,
) -> Option<Event> {
    let (kind, now) = match (before, after) {
        (None, None) => return None,
        (None, Some(after)) => (EventType::FileAdded, after),
        (Some(before), None) => (EventType::FileDeleted, before),
        (Some(before), Some(after)) if differs(before, after) => (EventType::FileChanged, after),
        (Some(_), Some(_)) => return None,
    };
    Some(
        Event::new(kind, Some(share))
            .path(path)
            .entry(entry_name(now.kind)),
    )
}

fn differs(before: &FileMeta, after: &FileMeta) -> bool {
    if before.kind != after.kind {
        return true;
    }
    match after.kind {
        EntryKind::Dir => before.mode != after.mode,
        EntryKind::File | EntryKind::Symlink => {
            before.hash != after.hash
                || before.size != after.size
                || before.mode != after.mode
                || before.target != after.target
        }
    }
}

fn entry_name(kind: EntryKind) -> &'static str {
    match kind {
        EntryKind::File => "file",
        EntryKind::Dir => "directory",
        EntryKind::Symlink => "symlink",
    }
}

impl FolderActor {
    /// Reports `path` going from `before` to `after`, changed by `author` (`None`: here).
    pub(super) fn report_path(
        &self,
        path: &str,
        before: Option<&FileMeta>,
        after: Option<&FileMeta>,
        author: Option<PeerId>,
    ) {
        if let Some(event) = path_event(&self.name, path, before, after) {
            let by = match author {
                Some(peer) if peer != self.local => peer.to_string(),
                _ => "local".to_owned(),
            };
            self.events.emit(event.peer(by));
        }
    }

    /// Reports that the file at `path`, replaced or deleted by `author`'s change, was kept in
    /// the versions as `kept`.
    pub(super) fn report_version_kept(&self, path: &str, kept: &str, author: Option<PeerId>) {
        let mut event = Event::new(EventType::VersionKept, Some(&self.name))
            .path(path)
            .entry("file")
            .message(format!("the previous {path} was kept as {kept}"));
        if let Some(peer) = author.filter(|peer| *peer != self.local) {
            event = event.peer(peer.to_string());
        }
        self.events.emit(event);
    }

    /// Reports that our version of `path` lost a conflict and was kept as `copy`.
    pub(super) fn report_conflict(&self, path: &str, copy: &str, winner: Option<PeerId>) {
        let mut event = Event::new(EventType::Conflict, Some(&self.name))
            .path(copy)
            .entry("file")
            .message(format!(
                "our version of {path} lost a conflict and was kept as {copy}"
            ));
        if let Some(peer) = winner {
            event = event.peer(peer.to_string());
        }
        self.events.emit(event);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::folder::model::Content;

    fn file(byte: u8) -> FileMeta {
        FileMeta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_secs: i64::from(byte),
            mtime_nanos: 0,
            size: 1,
            hash: *blake3::hash(&[byte]).as_bytes(),
            content: Content::Inline(Vec::new()),
            target: None,
        }
    }

    fn dir(mtime_secs: i64) -> FileMeta {
        FileMeta {
            kind: EntryKind::Dir,
            mtime_secs,
            size: 0,
            ..file(0)
        }
    }

    fn kind_of(event: Option<Event>) -> Option<EventType> {
        event.map(|e| e.kind)
    }

    #[test]
    fn added_changed_and_deleted_are_told_apart() {
        let (a, b) = (file(1), file(2));
        assert_eq!(
            kind_of(path_event("s", "p", None, Some(&a))),
            Some(EventType::FileAdded)
        );
        assert_eq!(
            kind_of(path_event("s", "p", Some(&a), Some(&b))),
            Some(EventType::FileChanged)
        );
        assert_eq!(
            kind_of(path_event("s", "p", Some(&a), None)),
            Some(EventType::FileDeleted)
        );
        assert_eq!(kind_of(path_event("s", "p", Some(&a), Some(&a))), None);
        assert_eq!(kind_of(path_event("s", "p", None, None)), None);
    }

    #[test]
    fn a_directory_whose_children_changed_did_not_change_itself() {
        assert_eq!(
            kind_of(path_event("s", "d", Some(&dir(1)), Some(&dir(2)))),
            None
        );
        let event = path_event("s", "d", None, Some(&dir(1))).unwrap();
        assert_eq!(event.entry.as_deref(), Some("directory"));
        assert_eq!(event.path.as_deref(), Some("d"));
    }
}
