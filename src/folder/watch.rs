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

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::{info, warn};

use super::model::TEMP_PREFIX;
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
    /// A file renamed into `path` from `temp`, a name in the same directory that only our
    /// writer makes ([`TEMP_PREFIX`]): most likely a received file put in place, which needs
    /// no scan. The folder checks `temp` against the temp name its writer would have used for
    /// what is synced at `path` ([`crate::folder::write::temp_name`]); anything else is
    /// scanned like [`WatchEvent::Paths`].
    RenamedFromTemp { path: String, temp: String },
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
    let mut renames = TempRenames::default();
    let handler = move |result: notify::Result<notify::Event>| {
        if let Some(wait) = pace.before_event(std::time::Instant::now()) {
            std::thread::sleep(wait);
            pace.waited(std::time::Instant::now());
        }
        let result = match result {
            Ok(event) => match renames.take(&base, event) {
                Some(event) => Ok(event),
                None => return,
            },
            Err(e) => Err(e),
        };
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

/// Files renamed from a temp name whose close is awaited, at most (~1 MB of paths). Past it,
/// those awaited are forgotten: their closes are passed on (each costs a scan, as every
/// received file did before).
pub const AWAITED_CLOSES_MAX: usize = 8_192;

/// Follows renames from our writer's temp names, so that a received file does not make the
/// folder scan it again (every file received was scanned once more, a fifth of the receiver's
/// work besides writing it).
///
/// A rename reaches the handler as three events (notify pairs inotify's `IN_MOVED_FROM` and
/// `IN_MOVED_TO` by their cookie): the old name ("from"), the new name ("to"), then both. For a
/// rename from a temp name, the "to" is dropped and the "both" becomes
/// [`WatchEvent::RenamedFromTemp`] (see [`to_watch_event`]).
///
/// Our writer closes a file after renaming it (it makes the new name durable through it), so
/// its `IN_CLOSE_WRITE` comes under the new name. The first close of a renamed path is dropped
/// if no other event of the path came between. Nothing is lost by it: the rename made a new
/// inode appear there, which only the writer has open; another program writes it only after an
/// open (`IN_OPEN`) of its own, which ends the wait, and its writes, its truncation and its
/// changes of times or mode have events of their own. (The close of a file the rename
/// replaced comes under the same name, and is about a file no longer in the folder.)
#[derive(Default)]
struct TempRenames {
    /// The cookie of the last "from" event, if it was from a temp name.
    from_temp: Option<usize>,
    /// Paths renamed from a temp name whose first close is awaited.
    awaited_closes: HashSet<PathBuf>,
}

impl TempRenames {
    /// The event to pass on, if any.
    fn take(&mut self, root: &Path, event: notify::Event) -> Option<notify::Event> {
        use notify::event::{AccessKind, AccessMode, ModifyKind, RenameMode};
        if event.need_rescan() {
            // Everything is scanned: nothing is awaited any more.
            *self = Self::default();
            return Some(event);
        }
        if !self.awaited_closes.is_empty() {
            let mut awaited = false;
            for path in &event.paths {
                awaited |= self.awaited_closes.remove(path);
            }
            let close = notify::EventKind::Access(AccessKind::Close(AccessMode::Write));
            if awaited && event.kind == close && event.paths.len() == 1 {
                return None;
            }
            if self.awaited_closes.is_empty() {
                // Its room back once the burst is over.
                self.awaited_closes.shrink_to_fit();
            }
        }
        match event.kind {
            notify::EventKind::Modify(ModifyKind::Name(RenameMode::From)) => {
                self.from_temp = event
                    .tracker()
                    .filter(|_| event.paths.first().is_some_and(|p| is_temp(root, p)));
            }
            notify::EventKind::Modify(ModifyKind::Name(RenameMode::To))
                if event.tracker().is_some() && event.tracker() == self.from_temp =>
            {
                // Its "both" follows (notify pairs a "to" with the last "from" by the same
                // cookie, as this does).
                return None;
            }
            notify::EventKind::Modify(ModifyKind::Name(RenameMode::Both)) => {
                self.from_temp = None;
                if let Some((_, to)) = renamed_from_temp_paths(root, &event) {
                    if self.awaited_closes.len() >= AWAITED_CLOSES_MAX {
                        // Closes that never came (lost in an overflow, say): passed on if
                        // they come after all.
                        self.awaited_closes.clear();
                    }
                    self.awaited_closes.insert(to.to_owned());
                }
            }
            _ => {}
        }
        Some(event)
    }
}

/// Whether `path` is the name our writer gives a file's temp file ([`TEMP_PREFIX`] and hex
/// digits; a symlink's temp name is not: it has no close to wait for), under `root`.
fn is_temp(root: &Path, path: &Path) -> bool {
    path.starts_with(root)
        && path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_prefix(TEMP_PREFIX))
            .is_some_and(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// A rename from one of our writer's temp names to a name beside it: both paths.
fn renamed_from_temp_paths<'e>(
    root: &Path,
    event: &'e notify::Event,
) -> Option<(&'e Path, &'e Path)> {
    use notify::event::{ModifyKind, RenameMode};
    let notify::EventKind::Modify(ModifyKind::Name(RenameMode::Both)) = event.kind else {
        return None;
    };
    let [from, to] = event.paths.as_slice() else {
        return None;
    };
    (is_temp(root, from) && from.parent() == to.parent()).then_some((from, to))
}

/// A rename from one of our writer's temp names to a name beside it: the new name, relative to
/// `root`, and the temp's name.
fn renamed_from_temp(root: &Path, event: &notify::Event) -> Option<(String, String)> {
    let (from, to) = renamed_from_temp_paths(root, event)?;
    let temp = from.file_name()?.to_str()?.to_owned();
    let rel = to.strip_prefix(root).ok()?.to_str()?;
    if rel.is_empty() || scan::is_ignored_builtin(rel) {
        return None;
    }
    Some((rel.to_owned(), temp))
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
            if let Some((path, temp)) = renamed_from_temp(root, &event) {
                return Some(WatchEvent::RenamedFromTemp { path, temp });
            }
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

    /// What the watcher said about each path, until it named `end` (written last).
    async fn events_until(watching: &mut Watching, end: &str) -> Vec<String> {
        let mut seen = Vec::new();
        let read = tokio::time::timeout(Duration::from_secs(60), async {
            loop {
                match watching.next_event().await {
                    Some(WatchEvent::Paths { paths, .. }) => {
                        let done = paths.iter().any(|p| p == end);
                        seen.extend(paths.into_iter().map(|p| format!("scan {p}")));
                        if done {
                            break;
                        }
                    }
                    Some(WatchEvent::RenamedFromTemp { path, temp }) => {
                        seen.push(format!("renamed {path} from {temp}"));
                    }
                    Some(WatchEvent::Rescan) => seen.push("rescan".to_owned()),
                    Some(WatchEvent::LimitReached(why)) => panic!("{why}"),
                    None => panic!("the watch ended"),
                }
            }
        });
        read.await.expect("the last file's event");
        seen
    }

    fn watched() -> (tempfile::TempDir, Watching) {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let mut watching = Watching::default();
        watching.ensure(dir.path(), "test");
        assert!(watching.is_on());
        (dir, watching)
    }

    /// A received file, written as our writer does (a temp file beside it, renamed into place,
    /// closed after the rename), is named once, as renamed from its temp: not as a path to
    /// scan, which every received file cost before.
    #[tokio::test]
    async fn a_file_renamed_from_our_temp_then_closed_is_not_a_path_to_scan() {
        let (dir, mut watching) = watched();
        let temp = dir.path().join(format!("d/{TEMP_PREFIX}0123"));
        let mut file = std::fs::File::create(&temp).unwrap();
        std::io::Write::write_all(&mut file, b"received").unwrap();
        std::fs::rename(&temp, dir.path().join("d/f")).unwrap();
        drop(file);
        std::fs::write(dir.path().join("end"), b"x").unwrap();
        let seen = events_until(&mut watching, "end").await;
        assert_eq!(
            seen,
            [
                format!("renamed d/f from {TEMP_PREFIX}0123"),
                "scan end".to_owned()
            ]
        );
    }

    /// A program that opens the renamed file before our writer closes it (and may write it
    /// through a mapping, which makes no write event) ends the wait: the closes are passed on.
    #[tokio::test]
    async fn a_renamed_file_opened_by_another_before_our_close_is_scanned() {
        let (dir, mut watching) = watched();
        let temp = dir.path().join(format!("d/{TEMP_PREFIX}0123"));
        let ours = std::fs::File::create(&temp).unwrap();
        std::fs::rename(&temp, dir.path().join("d/f")).unwrap();
        let theirs = std::fs::OpenOptions::new()
            .write(true)
            .open(dir.path().join("d/f"))
            .unwrap();
        drop(theirs);
        drop(ours);
        std::fs::write(dir.path().join("end"), b"x").unwrap();
        let seen = events_until(&mut watching, "end").await;
        assert!(
            seen.contains(&format!("renamed d/f from {TEMP_PREFIX}0123")),
            "{seen:?}"
        );
        assert!(seen.contains(&"scan d/f".to_owned()), "{seen:?}");
    }

    /// A rename from any other name, and a write after ours, are paths to scan as before.
    #[tokio::test]
    async fn other_renames_and_later_writes_are_paths_to_scan() {
        let (dir, mut watching) = watched();
        std::fs::write(dir.path().join("d/draft"), b"user").unwrap();
        std::fs::rename(dir.path().join("d/draft"), dir.path().join("d/g")).unwrap();
        let temp = dir.path().join(format!("d/{TEMP_PREFIX}0123"));
        std::fs::write(&temp, b"received").unwrap();
        std::fs::rename(&temp, dir.path().join("d/f")).unwrap();
        std::fs::write(dir.path().join("d/f"), b"edited").unwrap();
        std::fs::write(dir.path().join("end"), b"x").unwrap();
        let seen = events_until(&mut watching, "end").await;
        assert!(seen.contains(&"scan d/g".to_owned()), "{seen:?}");
        let renamed = seen
            .iter()
            .position(|e| e == &format!("renamed d/f from {TEMP_PREFIX}0123"))
            .unwrap_or_else(|| panic!("{seen:?}"));
        assert!(
            seen[renamed..].contains(&"scan d/f".to_owned()),
            "the edit after the rename: {seen:?}"
        );
    }
}
