//! The file watcher: turns inotify events into paths to rescan, or into "rescan everything"
//! when events were lost or too many arrived to track one by one.
//!
//! A folder with more directories than the kernel lets one user watch
//! (`fs.inotify.max_user_watches`), or a daemon out of inotify instances, cannot be watched:
//! a watch that covers only part of the tree would leave the rest unseen while the folder
//! trusts its watcher to rescan rarely. Such a folder is not watched at all, says why in
//! `status` (once in the log), is rescanned whole at a paced interval instead, and tries to
//! watch again after [`WATCH_RETRY_MIN`], doubling to [`WATCH_RETRY_MAX`] (each try walks
//! the tree's directories).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::model::MARKER_DIR;
use super::scan;
use crate::backoff::Backoff;

/// Watcher events buffered before the actor falls back to a full rescan (~100 bytes each, a few
/// MB when full). Receiving files makes ~4 events each (our own writes), ~14,000 a second:
/// 4,096 filled whenever the folder's loop was held up for a third of a second, and each
/// overflow cost a full rescan in the middle of a first sync of 10^6 files.
pub const WATCH_CHANNEL_CAPACITY: usize = 65_536;
/// How long the watcher's thread waits, once woken by an event, before taking it, so that the
/// events following it are read together. Receiving files (~9 events each, our own writes),
/// the thread woke for every few events: 150,000 times for 10^5 files, half of its CPU and
/// the workers' 180,000 preemptions. Waiting this long once per wake-up, it woke ~5,000
/// times, at half the CPU. Well under [`super::settle::WATCH_DEBOUNCE`], which every scan
/// the watcher asks for waits anyway.
pub const WATCH_READ_PACE: Duration = Duration::from_millis(5);
/// A gap this long since the previous event means the watcher's thread waited for this one
/// (events read together come microseconds apart).
pub const WATCH_WAKE_GAP: Duration = Duration::from_micros(50);
/// The first wait before a folder that could not be watched is tried again.
pub const WATCH_RETRY_MIN: Duration = Duration::from_secs(10);
/// The longest wait between tries.
pub const WATCH_RETRY_MAX: Duration = Duration::from_secs(600);

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
    /// The kernel refused to watch a new directory (its limit of watches): the watch no longer
    /// covers the folder. Why, for the user.
    LimitReached(String),
}

/// A running watcher of a folder and the events it sends.
pub(super) struct Watch {
    /// Kept alive for as long as events are wanted.
    _watcher: notify::RecommendedWatcher,
    events: mpsc::Receiver<WatchEvent>,
    /// Set when an event found the channel full and was dropped; the next event read is
    /// then a [`WatchEvent::Rescan`] (see [`Watch::next`]).
    lost: Arc<AtomicBool>,
}

impl Watch {
    /// The next event; a full rescan in place of it once any was lost.
    async fn next(&mut self) -> Option<WatchEvent> {
        let event = self.events.recv().await?;
        if self.lost.swap(false, Ordering::AcqRel) {
            return Some(WatchEvent::Rescan);
        }
        Some(event)
    }
}

/// Watches `root` recursively.
pub(super) fn start(root: &Path) -> notify::Result<Watch> {
    use notify::Watcher;
    let (tx, rx) = mpsc::channel(WATCH_CHANNEL_CAPACITY);
    let base: PathBuf = root.to_owned();
    let lost = Arc::new(AtomicBool::new(false));
    let lost_in_handler = Arc::clone(&lost);
    let mut pace = ReadPace::new(std::time::Instant::now());
    let handler = move |result: notify::Result<notify::Event>| {
        if let Some(wait) = pace.before_event(std::time::Instant::now()) {
            std::thread::sleep(wait);
            pace.waited(std::time::Instant::now());
        }
        let Some(event) = to_watch_event(&base, result) else {
            return;
        };
        if let Err(mpsc::error::TrySendError::Full(_)) = tx.try_send(event) {
            // Too many events to track one by one; a full rescan covers them all. A rescan
            // event cannot be queued into a full channel, so the loss is marked first: the
            // events still in the channel are read after it, and the first read turns into
            // a rescan. If the folder read them all meanwhile, the rescan event goes in.
            lost_in_handler.store(true, Ordering::Release);
            let _ = tx.try_send(WatchEvent::Rescan);
        }
    };
    let mut watcher = notify::recommended_watcher(handler)?;
    watcher.watch(root, notify::RecursiveMode::Recursive)?;
    // Nothing in the marker directory is synced; received small files are assembled there
    // (`write::Incoming`), and unwatched it costs the watcher nothing. If it is missing now
    // (the folder pauses then) or is made again later, its events are dropped as before.
    let _ = watcher.unwatch(&root.join(MARKER_DIR));
    Ok(Watch {
        _watcher: watcher,
        events: rx,
        lost,
    })
}

/// When the watcher's thread waits before taking an event ([`WATCH_READ_PACE`]): at the first
/// event after it waited for one, found by the time since the previous event.
struct ReadPace {
    last_event: std::time::Instant,
}

impl ReadPace {
    fn new(now: std::time::Instant) -> Self {
        Self { last_event: now }
    }

    /// The wait before taking an event that arrives `now`, if any.
    fn before_event(&mut self, now: std::time::Instant) -> Option<Duration> {
        let woken = now.duration_since(self.last_event) > WATCH_WAKE_GAP;
        self.last_event = now;
        woken.then_some(WATCH_READ_PACE)
    }

    /// The wait ended `now`: the events read after it come together.
    fn waited(&mut self, now: std::time::Instant) {
        self.last_event = now;
    }
}

fn to_watch_event(root: &Path, result: notify::Result<notify::Event>) -> Option<WatchEvent> {
    match result {
        Ok(event) if event.need_rescan() => Some(WatchEvent::Rescan),
        Err(err) if matches!(err.kind, notify::ErrorKind::MaxFilesWatch) => {
            Some(WatchEvent::LimitReached(describe_failure(&err)))
        }
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
            if paths.is_empty() {
                // Our own temp files, mostly: several events for each file received, so
                // nothing more is asked of the disk for them (the `is_dir` below is a stat).
                return None;
            }
            // Writes to an unnamed file (`O_TMPFILE`, as our writer makes them) are reported
            // on its directory: a directory is never "open for writing".
            let still_open =
                is_write_through_open_file(&event.kind) && !event.paths.iter().any(|p| p.is_dir());
            Some(WatchEvent::Paths { paths, still_open })
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

/// Why a folder cannot be watched, for `status` and the log; for the kernel's limits, which
/// one and how to raise it.
pub(super) fn describe_failure(err: &notify::Error) -> String {
    let too_many_open = matches!(&err.kind, notify::ErrorKind::Io(io)
        if io.raw_os_error() == Some(libc::EMFILE));
    if matches!(err.kind, notify::ErrorKind::MaxFilesWatch) {
        format!(
            "not watched: the inotify watch limit is reached ({}); changes are found by full \
             rescans instead. Raise it: sysctl fs.inotify.max_user_watches=1048576",
            inotify_limit("watches")
        )
    } else if too_many_open {
        format!(
            "not watched: no inotify instance left ({}) or too many open files; changes are \
             found by full rescans instead. Raise it: sysctl fs.inotify.max_user_instances=1024",
            inotify_limit("instances")
        )
    } else {
        format!("not watched ({err}); changes are found by full rescans instead")
    }
}

/// The kernel's limit of inotify `watches` or `instances` per user, as the lowest of the
/// system-wide setting and this user namespace's, named by its sysctl.
fn inotify_limit(what: &str) -> String {
    let read = |path: String| {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|text| text.trim().parse::<u64>().ok())
    };
    let global = read(format!("/proc/sys/fs/inotify/max_user_{what}"));
    let here = read(format!("/proc/sys/user/max_inotify_{what}"));
    match (global, here) {
        (Some(g), Some(h)) if h < g => format!("user.max_inotify_{what} = {h}"),
        (Some(g), _) => format!("fs.inotify.max_user_{what} = {g}"),
        (None, Some(h)) => format!("user.max_inotify_{what} = {h}"),
        (None, None) => format!("fs.inotify.max_user_{what}"),
    }
}

/// A folder's watcher, or why it has none and when to try again.
pub(super) struct Watching {
    watch: Option<Watch>,
    /// Why the folder is not watched, once a try failed; cleared when one succeeds.
    problem: Option<String>,
    retry: Backoff,
    retry_at: Option<Instant>,
}

impl Default for Watching {
    fn default() -> Self {
        Watching {
            watch: None,
            problem: None,
            retry: Backoff::new(WATCH_RETRY_MIN, WATCH_RETRY_MAX),
            retry_at: None,
        }
    }
}

impl Watching {
    /// Whether the folder's changes are seen as they happen.
    pub(super) fn is_on(&self) -> bool {
        self.watch.is_some()
    }

    /// Why the folder is not watched, if a try failed.
    pub(super) fn problem(&self) -> Option<&str> {
        self.problem.as_deref()
    }

    /// When a folder that could not be watched is tried again.
    pub(super) fn retry_at(&self) -> Option<Instant> {
        self.retry_at.filter(|_| self.watch.is_none())
    }

    /// Watches `root` unless it is watched already or the last failed try is too recent.
    pub(super) fn ensure(&mut self, root: &Path, folder: &str) {
        if self.watch.is_some() || self.retry_at.is_some_and(|at| Instant::now() < at) {
            return;
        }
        match start(root) {
            Ok(watch) => {
                self.watch = Some(watch);
                self.retry.reset();
                self.retry_at = None;
                if self.problem.take().is_some() {
                    info!(folder, "watched again: changes are seen as they happen");
                }
            }
            Err(err) => self.failed(describe_failure(&err), folder),
        }
    }

    /// The watch broke or could not start, for `why`: not watched until the next try. Said
    /// once per cause.
    pub(super) fn failed(&mut self, why: String, folder: &str) {
        self.watch = None;
        self.retry_at = Some(Instant::now() + self.retry.next());
        if self.problem.as_ref() != Some(&why) {
            warn!(folder, "{why}");
        }
        self.problem = Some(why);
    }

    /// Stops watching (the folder paused); the next [`Watching::ensure`] starts again.
    pub(super) fn stop(&mut self) {
        self.watch = None;
        self.retry_at = None;
    }

    /// The next event of the watch, or never when there is none (for `select!`).
    pub(super) async fn next_event(&mut self) -> Option<WatchEvent> {
        match &mut self.watch {
            Some(watch) => watch.next().await,
            None => std::future::pending().await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The thread waits once per wake-up: at an event after a gap, not at the events read
    /// with it, and again at the next event after a gap (a wait's own length is no gap).
    #[test]
    fn the_watcher_waits_once_per_wake_up() {
        let start = std::time::Instant::now();
        let at = |micros: u64| start + Duration::from_micros(micros);
        let mut pace = ReadPace::new(start);
        assert_eq!(pace.before_event(at(1_000)), Some(WATCH_READ_PACE));
        pace.waited(at(6_000));
        assert_eq!(pace.before_event(at(6_002)), None);
        assert_eq!(pace.before_event(at(6_010)), None);
        assert_eq!(pace.before_event(at(6_030)), None);
        assert_eq!(pace.before_event(at(9_000)), Some(WATCH_READ_PACE));
        pace.waited(at(14_000));
        assert_eq!(pace.before_event(at(14_001)), None);
    }

    /// Events the folder did not take in time (more than the channel holds) must still
    /// end in a full rescan: without one, what they named is found only by the next paced
    /// full rescan, a minute or more later.
    #[tokio::test]
    async fn events_lost_to_a_full_channel_end_in_a_rescan() {
        let dir = tempfile::tempdir().unwrap();
        let mut watching = Watching::default();
        watching.ensure(dir.path(), "test");
        assert!(watching.is_on());
        // Nobody reads while these are made: each file is several events.
        for i in 0..WATCH_CHANNEL_CAPACITY {
            std::fs::write(dir.path().join(format!("f{i}")), b"x").unwrap();
        }
        // Events come in order: a file made last is seen after the rest, unless its events
        // were lost too; a rescan must come before it either way.
        std::fs::write(dir.path().join("last"), b"x").unwrap();
        let mut rescan = false;
        let drained = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match watching.next_event().await {
                    Some(WatchEvent::Rescan) => {
                        rescan = true;
                        break;
                    }
                    Some(WatchEvent::Paths { paths, .. }) if paths.iter().any(|p| p == "last") => {
                        break;
                    }
                    Some(_) => {}
                    None => panic!("the watch ended"),
                }
            }
        });
        let _ = drained.await;
        assert!(rescan, "no rescan after events were lost");
    }
}
