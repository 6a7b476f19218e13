//! When watched paths are scanned: once they settle, and files that never settle regularly.
//!
//! Each watcher event pushes the scan of its path back by [`WATCH_DEBOUNCE`], so a file being
//! saved is read once, when it is done. But a file written without pause (a log appended every
//! few milliseconds) would then never be read, and nothing would say so. So the scan waits at
//! most [`SETTLE_MAX`] after the first pending event, and a path still receiving events then waits on its own: once it has been
//! changing for [`CHANGING_SYNC_INTERVAL`] it is read as it is (the scanner checks the read
//! against a stat before and after, so what is sent is a consistent version), again every
//! interval while the writes go on, and it is listed in `status` until it settles, when its
//! final version is read as usual. A file copied in for a few seconds is thus read once,
//! complete.
//!
//! A file created or written through a descriptor not closed yet (`IN_CREATE`, `IN_MODIFY`
//! without the `IN_CLOSE_WRITE` that ends a save) is likely to be written again at once: a
//! program that saves in place truncates the file, then writes it. Read between the two, it
//! would be sent empty or half-written to every member. So such a path waits for its close, or
//! [`OPEN_WRITE_QUIET`] without events (a file written through a descriptor kept open, or by
//! `truncate`, is still read soon after its last write).
//!
//! Pure bookkeeping: the folder actor scans.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use tokio::time::Instant;

/// Pause after the last watcher event before the changed paths are scanned, so that a file
/// being written is read once, when it is done, while a saved edit still leaves in milliseconds.
pub const WATCH_DEBOUNCE: Duration = Duration::from_millis(15);
/// How long a path written through a descriptor still open waits, after its last event, for
/// the close that says the write is done.
pub const OPEN_WRITE_QUIET: Duration = Duration::from_secs(2);
/// The longest events keep the scan waiting (before this bound there was none). Kept at the
/// changing interval rather than shorter: a scan forced while the daemon itself writes many
/// files (each rename is an event) re-reads what it just wrote, for nothing.
pub const SETTLE_MAX: Duration = Duration::from_secs(10);
/// A file that keeps changing is still read and sent this often.
pub const CHANGING_SYNC_INTERVAL: Duration = Duration::from_secs(10);

/// The watched paths' timing.
#[derive(Debug, Default)]
pub(super) struct Settle {
    /// The first event not yet followed by a scan.
    first: Option<Instant>,
    /// The events per path not yet scanned.
    events: HashMap<String, Pending>,
    /// Paths that were read while still changing, and when.
    changing: BTreeMap<String, Instant>,
}

/// A path's events since it was last scanned.
#[derive(Debug, Clone, Copy)]
struct Pending {
    first: Instant,
    last: Instant,
    /// The last event left the file open for writing.
    still_open: bool,
}

impl Pending {
    /// How long the path must go without events to count as settled.
    fn quiet(&self) -> Duration {
        if self.still_open {
            OPEN_WRITE_QUIET
        } else {
            WATCH_DEBOUNCE
        }
    }
}

/// Which of the paths to scan now, and which wait.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Split {
    pub(super) now: Vec<String>,
    pub(super) later: Vec<String>,
    /// When the first of `later` is due.
    pub(super) due: Option<Instant>,
}

impl Settle {
    /// Events for `paths` (`still_open`: see [`Pending::still_open`]); returns when to scan.
    pub(super) fn events(&mut self, paths: &[String], still_open: bool, now: Instant) -> Instant {
        for path in paths {
            self.events
                .entry(path.clone())
                .and_modify(|p| {
                    p.last = now;
                    p.still_open = still_open;
                })
                .or_insert(Pending {
                    first: now,
                    last: now,
                    still_open,
                });
        }
        let first = *self.first.get_or_insert(now);
        (now + WATCH_DEBOUNCE).min(first + SETTLE_MAX)
    }

    /// Files found written just now while their directory was scanned, with no event of their
    /// own yet (see [`crate::folder::scan::ScanOutput::fresh`]): they wait as if still open
    /// for writing. A path with pending events keeps them (its close may have arrived).
    pub(super) fn written_unseen(&mut self, paths: &[String], now: Instant) {
        for path in paths {
            self.events.entry(path.clone()).or_insert(Pending {
                first: now,
                last: now,
                still_open: true,
            });
        }
    }

    /// A scan starts with `paths`: splits off the changing paths read too recently.
    pub(super) fn split(&mut self, paths: Vec<String>, now: Instant) -> Split {
        self.first = None;
        let mut split = Split {
            now: Vec::new(),
            later: Vec::new(),
            due: None,
        };
        for path in paths {
            let Some(&pending) = self
                .events
                .get(&path)
                .filter(|p| now.duration_since(p.last) < p.quiet())
            else {
                // Settled (or dirty for another reason than an event): read now.
                self.events.remove(&path);
                self.changing.remove(&path);
                split.now.push(path);
                continue;
            };
            // Changing since its first event, or since it was last read while changing.
            let since = self.changing.get(&path).copied().unwrap_or(pending.first);
            let changing_due = since + CHANGING_SYNC_INTERVAL;
            if now < changing_due {
                // Read when it settles, or when it has changed for the interval.
                let due = changing_due.min(pending.last + pending.quiet());
                split.due = Some(split.due.map_or(due, |d| d.min(due)));
                split.later.push(path);
            } else {
                self.changing.insert(path.clone(), now);
                self.events.remove(&path);
                split.now.push(path);
            }
        }
        split
    }

    /// The paths read while changing and not settled since.
    pub(super) fn changing(&self) -> impl Iterator<Item = &String> {
        self.changing.keys()
    }

    /// Forgets everything (the folder paused or is rescanned whole).
    pub(super) fn clear(&mut self) {
        *self = Self::default();
    }

    /// Gives back the room its map of events grew to in a burst (see
    /// `DownloadQueue::release_spare_room`).
    pub(super) fn release_spare_room(&mut self) {
        self.events.shrink_to_fit();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(name: &str) -> Vec<String> {
        vec![name.to_owned()]
    }

    #[test]
    fn a_saved_file_is_scanned_once_it_settles() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        assert_eq!(s.events(&p("a"), false, t0), t0 + WATCH_DEBOUNCE);
        let split = s.split(p("a"), t0 + WATCH_DEBOUNCE);
        assert_eq!(split.now, p("a"));
        assert!(s.changing().next().is_none());
    }

    #[test]
    fn events_without_pause_delay_the_scan_at_most_settle_max() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        let mut t = t0;
        let mut scan_at = s.events(&p("log"), false, t);
        while t < t0 + SETTLE_MAX * 2 {
            t += Duration::from_millis(5);
            scan_at = s.events(&p("log"), false, t);
        }
        assert_eq!(scan_at, t0 + SETTLE_MAX);
    }

    #[test]
    fn a_changing_file_is_read_every_interval_then_once_settled() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        s.events(&p("log"), false, t0);
        // A scan (for other paths) while events go on: not read before it has changed for the
        // interval (a copy taking a few seconds is read once, complete).
        let t_early = t0 + Duration::from_secs(1);
        s.events(&p("log"), false, t_early);
        let split = s.split(p("log"), t_early);
        assert_eq!(split.later, p("log"));
        assert_eq!(split.due, Some(t_early + WATCH_DEBOUNCE));
        let t1 = t0 + CHANGING_SYNC_INTERVAL;
        s.events(&p("log"), false, t1);
        assert_eq!(s.split(p("log"), t1).now, p("log"));
        assert_eq!(s.changing().collect::<Vec<_>>(), ["log"]);
        // A second later, still changing: waits until the interval is over.
        let t2 = t1 + Duration::from_secs(1);
        s.events(&p("log"), false, t2);
        let split = s.split(p("log"), t2);
        assert_eq!(split.later, p("log"));
        assert_eq!(split.due, Some(t2 + WATCH_DEBOUNCE));
        let t3 = t1 + CHANGING_SYNC_INTERVAL;
        s.events(&p("log"), false, t3);
        assert_eq!(s.split(p("log"), t3).now, p("log"));
        // The writes stop: the next scan reads it as settled, and it is no longer changing.
        let t4 = t3 + WATCH_DEBOUNCE * 2;
        assert_eq!(s.split(p("log"), t4).now, p("log"));
        assert!(s.changing().next().is_none());
    }

    #[test]
    fn a_file_still_open_for_writing_waits_for_its_close() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        // Truncated on open: the scan it asks for finds the file still open and defers it.
        s.events(&p("doc"), true, t0);
        let t1 = t0 + WATCH_DEBOUNCE;
        let split = s.split(p("doc"), t1);
        assert_eq!(split.later, p("doc"));
        assert_eq!(split.due, Some(t0 + OPEN_WRITE_QUIET));
        // Written and closed: read as soon as it is quiet.
        let t2 = t1 + Duration::from_millis(1);
        s.events(&p("doc"), false, t2);
        assert!(s.split(p("doc"), t2).now.is_empty());
        assert_eq!(s.split(p("doc"), t2 + WATCH_DEBOUNCE).now, p("doc"));
    }

    #[test]
    fn a_file_found_written_just_now_waits_like_an_open_one_unless_closed_since() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        s.written_unseen(&p("found"), t0);
        let split = s.split(p("found"), t0 + WATCH_DEBOUNCE);
        assert_eq!(split.later, p("found"));
        assert_eq!(split.due, Some(t0 + OPEN_WRITE_QUIET));
        assert_eq!(s.split(p("found"), t0 + OPEN_WRITE_QUIET).now, p("found"));
        // Its close arrived before the scan said it was fresh: read once quiet, as usual.
        s.events(&p("closed"), false, t0);
        s.written_unseen(&p("closed"), t0);
        assert_eq!(s.split(p("closed"), t0 + WATCH_DEBOUNCE).now, p("closed"));
    }

    #[test]
    fn a_file_left_open_is_read_once_quiet_for_the_open_write_wait() {
        let t0 = Instant::now();
        let mut s = Settle::default();
        s.events(&p("kept-open"), true, t0);
        assert_eq!(
            s.split(p("kept-open"), t0 + OPEN_WRITE_QUIET / 2).later,
            p("kept-open")
        );
        assert_eq!(
            s.split(p("kept-open"), t0 + OPEN_WRITE_QUIET).now,
            p("kept-open")
        );
    }
}
