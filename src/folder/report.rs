//! What the folder did to its paths, as events: `file_added`, `file_changed` and
//! `file_deleted` with who made the change (`local`, or the peer that wrote the version now on
//! disk), and `conflict` where our losing version was kept aside. Reported once the change is
//! on disk (a peer's) or recorded (ours), never for a download that failed.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// How close an add and a delete of the same content by the same author must come to be
/// reported as a rename too.
pub const RENAME_WINDOW: Duration = Duration::from_secs(10);
/// Recent adds remembered for that (the oldest are forgotten first).
pub const MAX_RECENT_ADDS: usize = 256;

/// Files recently added, to tell a rename (an add, then the delete of the same content by the
/// same author) from an add and a delete.
#[derive(Debug, Default)]
pub(super) struct RecentAdds {
    adds: VecDeque<(String, [u8; 32], Option<PeerId>, Instant)>,
}

impl RecentAdds {
    fn added(&mut self, path: &str, hash: [u8; 32], author: Option<PeerId>, now: Instant) {
        if self.adds.len() >= MAX_RECENT_ADDS {
            self.adds.pop_front();
        }
        self.adds.push_back((path.to_owned(), hash, author, now));
    }

    /// The path the deleted `path` (with content `hash`) was renamed to, if it was.
    fn renamed_to(
        &mut self,
        path: &str,
        hash: [u8; 32],
        author: Option<PeerId>,
        now: Instant,
    ) -> Option<String> {
        self.adds
            .retain(|(_, _, _, at)| now.duration_since(*at) <= RENAME_WINDOW);
        let at = self
            .adds
            .iter()
            .position(|(p, h, a, _)| *h == hash && *a == author && p != path)?;
        self.adds.remove(at).map(|(p, ..)| p)
    }
}

/// The last author's name as events show it (a peer id in base 58, which took more of a
/// receiver's CPU than the rest of the report: a sync's files mostly come from one author).
#[derive(Debug, Default)]
pub(super) struct AuthorName {
    last: Option<(PeerId, String)>,
}

impl AuthorName {
    fn of(&mut self, peer: PeerId) -> String {
        match &self.last {
            Some((known, name)) if *known == peer => name.clone(),
            _ => {
                let name = peer.to_string();
                self.last = Some((peer, name.clone()));
                name
            }
        }
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
        let Some(event) = path_event(&self.name, path, before, after) else {
            return;
        };
        let author = author.filter(|peer| *peer != self.local);
        let by = author.map_or_else(
            || "local".to_owned(),
            |peer| {
                let mut names = self.author_name.lock().unwrap_or_else(|e| e.into_inner());
                names.of(peer)
            },
        );
        let kind = event.kind;
        self.events.emit(event.peer(by.clone()));
        let now = Instant::now();
        let mut recent = self.recent_adds.lock().unwrap_or_else(|e| e.into_inner());
        match (kind, before, after) {
            (EventType::FileAdded, _, Some(new)) if new.kind == EntryKind::File => {
                recent.added(path, new.hash, author, now);
            }
            (EventType::FileDeleted, Some(old), _) if old.kind == EntryKind::File => {
                if let Some(to) = recent.renamed_to(path, old.hash, author, now) {
                    let mut renamed = Event::new(EventType::FileRenamed, Some(&self.name))
                        .path(to)
                        .entry("file")
                        .peer(by);
                    renamed.from = Some(path.to_owned());
                    self.events.emit(renamed);
                }
            }
            _ => {}
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

    #[test]
    fn an_authors_name_is_its_peer_id_whichever_came_before() {
        let mut names = AuthorName::default();
        let (a, b) = (PeerId::random(), PeerId::random());
        for peer in [a, a, b, a, b, b] {
            assert_eq!(names.of(peer), peer.to_string());
        }
    }

    #[test]
    fn a_delete_of_content_the_same_author_just_added_elsewhere_is_a_rename() {
        let mut recent = RecentAdds::default();
        let (peer, other) = (Some(PeerId::random()), Some(PeerId::random()));
        let t0 = Instant::now();
        recent.added("new", [1; 32], peer, t0);
        assert_eq!(
            recent.renamed_to("old", [1; 32], other, t0),
            None,
            "another author"
        );
        assert_eq!(
            recent.renamed_to("old", [2; 32], peer, t0),
            None,
            "other content"
        );
        assert_eq!(
            recent.renamed_to("new", [1; 32], peer, t0),
            None,
            "the same path"
        );
        assert_eq!(
            recent.renamed_to("old", [1; 32], peer, t0).as_deref(),
            Some("new")
        );
        assert_eq!(
            recent.renamed_to("old2", [1; 32], peer, t0),
            None,
            "used once"
        );
        recent.added("late", [3; 32], None, t0);
        let later = t0 + RENAME_WINDOW + Duration::from_millis(1);
        assert_eq!(
            recent.renamed_to("x", [3; 32], None, later),
            None,
            "too long ago"
        );
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
