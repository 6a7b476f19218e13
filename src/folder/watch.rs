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
/// A gap this long between the end of one event and the next may mean the watcher's thread
/// waited for the next one (events read together come microseconds apart); whether it did is
/// then asked of the kernel ([`thread_waits`]). The gap alone misjudged: where handling an
/// event takes longer than this (a debug build, a slow or busy machine), every event looked
/// like a wake-up and was paced, and a backlog of events drained at 200 a second: after a
/// peer's delete of 20,000 files, the folder's own later edits left 11-50 s late.
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
        if let Some(wait) = pace.before_event(std::time::Instant::now(), thread_waits) {
            std::thread::sleep(wait);
            pace.waited(thread_waits());
        }
        let event = to_watch_event(&base, result);
        pace.event_done(std::time::Instant::now());
        let Some(event) = event else {
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
    // (`write::INCOMING_DIR`), and unwatched it costs the watcher nothing. If it is missing now
    // (the folder pauses then) or is made again later, its events are dropped as before.
    let _ = watcher.unwatch(&root.join(MARKER_DIR));
    Ok(Watch {
        _watcher: watcher,
        events: rx,
        lost,
    })
}

/// When the watcher's thread waits before taking an event ([`WATCH_READ_PACE`]): at the first
/// event after it waited for one. A gap since the previous event ([`WATCH_WAKE_GAP`]) says it
/// may have; the thread's count of waits says whether it did.
struct ReadPace {
    /// When the previous event was handled (its handling is no gap).
    last_event_done: std::time::Instant,
    /// The thread's count of waits when last looked at; unknown until the watcher's own
    /// thread looks (this is made on another).
    waits_seen: Option<u64>,
}

impl ReadPace {
    fn new(now: std::time::Instant) -> Self {
        Self {
            last_event_done: now,
            waits_seen: None,
        }
    }

    /// The wait before taking an event that arrives `now`, if any; `waits` reads the thread's
    /// count of waits (asked only after a gap).
    fn before_event(
        &mut self,
        now: std::time::Instant,
        waits: impl FnOnce() -> u64,
    ) -> Option<Duration> {
        if now.duration_since(self.last_event_done) <= WATCH_WAKE_GAP {
            return None;
        }
        let waits = waits();
        let woken = self.waits_seen.is_none_or(|seen| waits > seen);
        self.waits_seen = Some(waits);
        woken.then_some(WATCH_READ_PACE)
    }

    /// The pace's own wait is over (`waits`: the thread's count after it, which it raised).
    fn waited(&mut self, waits: u64) {
        self.waits_seen = Some(waits);
    }

    /// An event was handled `now`.
    fn event_done(&mut self, now: std::time::Instant) {
        self.last_event_done = now;
    }
}

/// How many times the calling thread has waited (its voluntary context switches): a sleep, or
/// a read that found nothing to read. Zero where the kernel does not say.
fn thread_waits() -> u64 {
    // SAFETY: `getrusage` writes into the zeroed `rusage` it is given and keeps no pointer.
    // Through `libc`: rustix (1.1) has no `getrusage`.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let done = unsafe { libc::getrusage(libc::RUSAGE_THREAD, &mut usage) };
    if done == 0 {
        u64::try_from(usage.ru_nvcsw).unwrap_or(0)
    } else {
        0
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

    /// The thread waits once per wake-up: at an event after a gap in which it waited, not at
    /// the events read with it, and again at the next event after a gap in which it waited.
    #[test]
    fn the_watcher_waits_once_per_wake_up() {
        let start = std::time::Instant::now();
        let at = |micros: u64| start + Duration::from_micros(micros);
        let mut pace = ReadPace::new(start);
        assert_eq!(pace.before_event(at(1_000), || 7), Some(WATCH_READ_PACE));
        pace.waited(8);
        pace.event_done(at(6_001));
        for micros in [6_002, 6_010, 6_030] {
            assert_eq!(pace.before_event(at(micros), || 8), None);
            pace.event_done(at(micros + 1));
        }
        assert_eq!(pace.before_event(at(9_000), || 9), Some(WATCH_READ_PACE));
        pace.waited(10);
        pace.event_done(at(14_000));
        assert_eq!(pace.before_event(at(14_001), || 10), None);
    }

    /// Where handling each event takes longer than the gap that may mean a wake-up (a slow
    /// machine, a debug build), a backlog of events is read without waiting: the thread
    /// waited for none of them. Before, each one waited: a backlog of 20,000 drained at
    /// 200 a second.
    #[test]
    fn a_backlog_read_slowly_is_not_paced() {
        let start = std::time::Instant::now();
        let at = |micros: u64| start + Duration::from_micros(micros);
        let mut pace = ReadPace::new(start);
        assert_eq!(pace.before_event(at(1_000), || 3), Some(WATCH_READ_PACE));
        pace.waited(4);
        let mut paced = 0;
        for i in 0..1_000u64 {
            // Each event is handled 80 µs after the previous one ended, the thread busy.
            let arrives = 6_000 + i * 100;
            paced += usize::from(pace.before_event(at(arrives), || 4).is_some());
            pace.event_done(at(arrives + 20));
        }
        assert_eq!(paced, 0);
        // The backlog read, the thread waits for the next event: paced again.
        assert_eq!(pace.before_event(at(200_000), || 5), Some(WATCH_READ_PACE));
    }

    /// The count of waits the pace asks for is the thread's own, and a sleep raises it.
    #[test]
    fn a_sleep_counts_as_a_wait_of_the_thread() {
        let before = thread_waits();
        std::thread::sleep(Duration::from_millis(2));
        assert!(thread_waits() > before);
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
