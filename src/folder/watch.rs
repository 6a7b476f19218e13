//! The file watcher: turns inotify events into paths to rescan, or into "rescan everything"
//! when events were lost or too many arrived to track one by one.

use std::path::{Path, PathBuf};

use tokio::sync::mpsc;

use super::scan;

/// Watcher events buffered before the actor falls back to a full rescan.
pub const WATCH_CHANNEL_CAPACITY: usize = 4096;

/// What the watcher saw.
pub(super) enum WatchEvent {
    /// These paths (relative to the root) changed.
    Paths {
        paths: Vec<String>,
        /// The change was a file created or written through a descriptor not closed yet: more
        /// writes are likely to follow (a program truncates, then writes), so the scan waits
        /// for the close (see `settle`).
        still_open: bool,
    },
    /// Events were lost: only a full rescan is safe.
    Rescan,
}

/// A running watcher of a folder and the events it sends.
pub(super) struct Watch {
    /// Kept alive for as long as events are wanted.
    _watcher: notify::RecommendedWatcher,
    pub(super) events: mpsc::Receiver<WatchEvent>,
}

/// Watches `root` recursively.
pub(super) fn start(root: &Path) -> notify::Result<Watch> {
    use notify::Watcher;
    let (tx, rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
    let base: PathBuf = root.to_owned();
    let handler = move |result: notify::Result<notify::Event>| {
        let Some(event) = to_watch_event(&base, result) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(event) {
            // Too many events to track one by one; a full rescan covers them all.
            let _ = tx.try_send(WatchEvent::Rescan);
        }
    };
    let mut watcher = notify::recommended_watcher(handler)?;
    watcher.watch(root, notify::RecursiveMode::Recursive)?;
    Ok(Watch {
        _watcher: watcher,
        events: rx,
    })
}

fn to_watch_event(root: &Path, result: notify::Result<notify::Event>) -> Option<WatchEvent> {
    match result {
        Ok(event) if event.need_rescan() => Some(WatchEvent::Rescan),
        // Opening or reading a file changes nothing; reacting to it would make every scan
        // (which opens everything) trigger the next one. A close after writing does matter:
        // the file is complete.
        Ok(event) if is_read_only_access(&event.kind) => None,
        Ok(event) => {
            let mut paths: Vec<String> = Vec::new();
            for rel in event.paths.iter().filter_map(|p| p.strip_prefix(root).ok()) {
                // A name that is not UTF-8 cannot be scanned by itself: its nearest nameable
                // directory is (which lists it as unsyncable), the whole folder at the top.
                match rel.ancestors().find_map(|a| a.to_str()) {
                    Some("") if rel.to_str() != Some("") => return Some(WatchEvent::Rescan),
                    Some(p) if !p.is_empty() && !scan::is_ignored_builtin(p) => {
                        paths.push(p.to_owned())
                    }
                    _ => {}
                }
            }
            // Writes to an unnamed file (`O_TMPFILE`, as our writer makes them) are reported
            // on its directory: a directory is never "open for writing".
            let still_open =
                is_write_through_open_file(&event.kind) && !event.paths.iter().any(|p| p.is_dir());
            (!paths.is_empty()).then_some(WatchEvent::Paths { paths, still_open })
        }
        Err(_) => Some(WatchEvent::Rescan),
    }
}

fn is_read_only_access(kind: &notify::EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(
        kind,
        notify::EventKind::Access(
            AccessKind::Any
                | AccessKind::Read
                | AccessKind::Open(_)
                | AccessKind::Other
                | AccessKind::Close(
                    AccessMode::Read | AccessMode::Execute | AccessMode::Any | AccessMode::Other
                )
        )
    )
}

/// A file created (`IN_CREATE`: open for writing) or written (`IN_MODIFY`, truncation
/// included) through a descriptor that stays open until `IN_CLOSE_WRITE`.
fn is_write_through_open_file(kind: &notify::EventKind) -> bool {
    use notify::event::{CreateKind, ModifyKind};
    matches!(
        kind,
        notify::EventKind::Create(CreateKind::File)
            | notify::EventKind::Modify(ModifyKind::Data(_))
    )
}

/// The next event of a watch, or never when there is none (for `select!`).
pub(super) async fn next_event(watch: &mut Option<Watch>) -> Option<WatchEvent> {
    match watch {
        Some(watch) => watch.events.recv().await,
        None => std::future::pending().await,
    }
}
