//! The download queue: which paths wait to be materialised, which run, which wait to be retried,
//! and how much memory the running ones may hold. Pure state: the actor asks it what to start
//! next and tells it what finished; it does no I/O and keeps no clock of its own.

use std::collections::{HashMap, HashSet, VecDeque};

use tokio::time::Instant;

use super::assemble::MAX_CHUNKS_IN_FLIGHT;
use super::digest_map::DigestMap;
use super::materialise::SMALL_FILE_BYTES;
use super::model;
use super::path_digest::PathDigest;

/// Files materialised at once. Many small files are bound by fsync latency, not bandwidth, and
/// the file system commits concurrent fsyncs together: creating, fsyncing and renaming 10,000
/// files took 2.5 s with 16 writers, 1.4 s with 64 and 1.3 s with 256; in the folder benchmark
/// 1,024 at once was no faster than 256 and used more memory.
pub const MAX_CONCURRENT_DOWNLOADS: usize = 256;
/// Memory the downloads in flight may hold together, each counted as what it buffers at most
/// (a small file whole, a large one [`MAX_CHUNKS_IN_FLIGHT`] chunks); one download always runs.
pub const DOWNLOAD_BUFFER_BUDGET: u64 = 64 * 1024 * 1024;

/// The most a download of a `size`-byte file holds in memory at once.
pub fn download_buffer(size: u64) -> u64 {
    if size <= SMALL_FILE_BYTES {
        size
    } else {
        size.min(MAX_CHUNKS_IN_FLIGHT as u64 * u64::from(model::CHUNK_MAX))
    }
}

/// What the queue says to do next.
#[derive(Debug, PartialEq, Eq)]
pub enum Next {
    /// Start materialising this path (`delete`: it is a deletion).
    Start {
        /// The path.
        path: String,
        /// Whether the entry is to be removed.
        delete: bool,
    },
    /// This path was dropped from the queue because it waits for a retry; whatever the actor
    /// cached for it is stale.
    WaitsForRetry(String),
}

/// Files to create or change kept by path, in order, at most; past it a queued path is kept as
/// its 16-byte digest and found again in a listing of the store when the window has room
/// (see [`DownloadQueue::wants_listing`]). A peer's first sync of a million files queued a
/// million paths three times over (queue, set, sizes: ~230 bytes a path).
pub const QUEUE_WINDOW: usize = 8192;

/// Paths to materialise, running downloads, and retries.
#[derive(Default)]
pub struct DownloadQueue {
    /// Paths to create or change, in order, without duplicates; at most [`QUEUE_WINDOW`].
    pending: VecDeque<String>,
    /// Deletions, started once no creation is queued or running, so a file that moved is
    /// created from the old copy's chunks before the old copy goes to the trash. Kept whole:
    /// the breaker for peers' deletes counts them and a restore names each.
    pending_deletes: VecDeque<String>,
    /// Everything in `pending` and `pending_deletes`.
    pending_set: HashSet<PathDigest>,
    /// Of the paths in `noted`, how many are queued beyond the window (not in `pending`).
    beyond_window: usize,
    /// Where a listing of the store finds every path queued beyond the window: the key they
    /// all come after (`None`: the first). Set whenever one is.
    listed_after: Option<Option<Vec<u8>>>,
    /// Running downloads.
    in_flight: HashMap<String, Running>,
    /// The sum of their buffers.
    in_flight_buffered: u64,
    /// The sum of their file sizes, kept as they change: [`Self::running_bytes`] is asked
    /// before each download starts, and summing 256 entries of `noted` each time (a map of
    /// every queued file: a cache miss each) was 3 % of a receiver's CPU. Wide enough for
    /// any sizes peers claim.
    in_flight_sizes: u128,
    /// Running deletions.
    deletes_in_flight: HashSet<String>,
    /// Paths that changed again while being written: queued once the write is done.
    again: HashSet<String>,
    /// Failed paths and when to try them again.
    retry_at: HashMap<String, Instant>,
    /// The paths queued beyond the window, and the bytes each queued or running file will
    /// need at most (chunks found locally are not fetched): [`Noted`] values.
    noted: DigestMap,
    /// The sum of the file sizes in `noted`, kept as they change (status asks for it, and
    /// summing a million entries each time would take milliseconds).
    noted_bytes: u128,
}

/// What the queue keeps of a path queued beyond its window, or of a file it queued or runs, in
/// 8 bytes: the file's size (at most 2^62 - 1: a peer may claim any size, and needed bytes are
/// an upper bound anyway), or that it is not a file; and whether it waits beyond the window.
/// One map of these replaced a set of the paths beyond the window beside a map of every queued
/// file's size: a first sync of 10^6 files held both whole (~88 MB of hash tables, a third of
/// the receiver's peak), then one (~52 MB), now a [`DigestMap`] (~24 MB).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Noted(u64);

/// A running download: what it may buffer (see [`DOWNLOAD_BUFFER_BUDGET`]) and the size of the
/// file it writes (0: not a file).
struct Running {
    buffer: u64,
    size: u64,
}

impl Noted {
    const BEYOND_WINDOW: u64 = 1 << 63;
    const NOT_A_FILE: u64 = 1 << 62;
    const MAX_SIZE: u64 = Self::NOT_A_FILE - 1;

    fn new(file_size: Option<u64>, beyond_window: bool) -> Noted {
        let size = file_size.map_or(Self::NOT_A_FILE, |size| size.min(Self::MAX_SIZE));
        let beyond = if beyond_window {
            Self::BEYOND_WINDOW
        } else {
            0
        };
        Noted(size | beyond)
    }

    fn file_size(self) -> Option<u64> {
        (self.0 & Self::NOT_A_FILE == 0).then_some(self.0 & Self::MAX_SIZE)
    }

    fn is_beyond_window(self) -> bool {
        self.0 & Self::BEYOND_WINDOW != 0
    }
}

impl DownloadQueue {
    fn noted(&self, digest: &PathDigest) -> Option<Noted> {
        self.noted.get(digest).map(Noted)
    }

    fn noted_size(&self, digest: &PathDigest) -> Option<u64> {
        self.noted(digest).and_then(Noted::file_size)
    }

    fn note(&mut self, digest: PathDigest, noted: Noted) {
        let old = self.noted.insert(digest, noted.0).map(Noted);
        self.noted_bytes += u128::from(noted.file_size().unwrap_or(0));
        self.noted_bytes -= u128::from(old.and_then(Noted::file_size).unwrap_or(0));
    }

    fn unnote(&mut self, digest: &PathDigest) {
        let old = self.noted.remove(digest).map(Noted);
        self.noted_bytes -= u128::from(old.and_then(Noted::file_size).unwrap_or(0));
    }

    /// Gives back the room its collections grew to for a burst (a hash map keeps its size when
    /// emptied: 100,000 queued paths left ~150 bytes a path behind). Call once it is idle.
    pub fn release_spare_room(&mut self) {
        self.pending.shrink_to_fit();
        self.pending_deletes.shrink_to_fit();
        self.pending_set.shrink_to_fit();
        self.in_flight.shrink_to_fit();
        self.deletes_in_flight.shrink_to_fit();
        self.again.shrink_to_fit();
        self.retry_at.shrink_to_fit();
        self.noted.shrink_to_fit();
    }

    /// Queues a path (once); a deletion goes to the deletions' queue, a file past the window
    /// is left to a listing of the store.
    pub fn push(&mut self, path: String, delete: bool) {
        let digest = PathDigest::of(&path);
        if self.pending_set.contains(&digest) || self.is_beyond_window(&digest) {
            return;
        }
        if delete {
            self.pending_set.insert(digest);
            self.pending_deletes.push_back(path);
        } else if self.pending.len() < QUEUE_WINDOW {
            self.pending_set.insert(digest);
            self.pending.push_back(path);
        } else {
            let size = self.noted_size(&digest);
            self.note(digest, Noted::new(size, true));
            self.beyond_window += 1;
            let from = Some(key_before(&path));
            self.listed_after = match self.listed_after.take() {
                Some(after) => Some(after.min(from)),
                None => Some(from),
            };
        }
    }

    /// Where a listing of the store should resume to bring files queued beyond the window into
    /// it (the key to list after; `None`: from the first), once the window is half empty.
    pub fn wants_listing(&self) -> Option<Option<Vec<u8>>> {
        if self.beyond_window == 0 || self.pending.len() > QUEUE_WINDOW / 2 {
            return None;
        }
        self.listed_after.clone()
    }

    /// Takes the keys of one page of the store's entries, listed after `after` (as
    /// [`Self::wants_listing`] said), in key order: the paths queued beyond the window among
    /// them join it while it has room. `ended`: the listing has no more entries.
    pub fn take_listed(&mut self, after: Option<Vec<u8>>, keys: Vec<Vec<u8>>, ended: bool) {
        // A path pushed beyond the window meanwhile may have moved the listing back.
        let moved_back = self.listed_after.clone().filter(|now| *now != after);
        let last = keys.last().cloned();
        // Where to resume if the window fills before the page ends.
        let mut full_at = None;
        for key in keys {
            let Ok(path) = String::from_utf8(key) else {
                continue;
            };
            let digest = PathDigest::of(&path);
            let Some(noted) = self.noted(&digest).filter(|n| n.is_beyond_window()) else {
                continue;
            };
            if self.pending.len() >= QUEUE_WINDOW {
                full_at = Some(key_before(&path));
                break;
            }
            match noted.file_size() {
                Some(size) => self.note(digest, Noted::new(Some(size), false)),
                None => self.unnote(&digest),
            }
            self.beyond_window -= 1;
            self.pending_set.insert(digest);
            self.pending.push_back(path);
        }
        self.listed_after = match (moved_back, full_at) {
            (Some(back), _) => Some(back),
            (None, Some(full_at)) => Some(Some(full_at)),
            (None, None) if ended => None,
            (None, None) => Some(last),
        };
        if self.listed_after.is_none() {
            // Left over: queued, yet not in the store (an entry it no longer has).
            self.forget_unlisted();
        }
        if self.beyond_window == 0 {
            self.listed_after = None;
        }
    }

    /// How many files are queued beyond the window.
    pub fn past_window(&self) -> usize {
        self.beyond_window
    }

    fn is_beyond_window(&self, digest: &PathDigest) -> bool {
        self.noted(digest).is_some_and(Noted::is_beyond_window)
    }

    /// Forgets the files queued beyond the window (the store cannot list them now): a full
    /// comparison of the store with the disk queues them again.
    pub fn forget_unlisted(&mut self) {
        let bytes = &mut self.noted_bytes;
        self.noted.retain(|noted| {
            let noted = Noted(noted);
            if noted.is_beyond_window() {
                *bytes -= u128::from(noted.file_size().unwrap_or(0));
            }
            !noted.is_beyond_window()
        });
        self.beyond_window = 0;
        self.listed_after = None;
    }

    /// Remembers how many bytes a queued path needs: `Some(size)` for a file, `None` otherwise.
    pub fn note_needed(&mut self, path: &str, file_size: Option<u64>) {
        if let Some(running) = self.in_flight.get_mut(path) {
            // A newer version of a running file: its new size counts.
            let size = Noted::new(file_size, false).file_size().unwrap_or(0);
            self.in_flight_sizes =
                self.in_flight_sizes - u128::from(running.size) + u128::from(size);
            running.size = size;
        }
        let digest = PathDigest::of(path);
        let beyond = self.is_beyond_window(&digest);
        if file_size.is_some() || beyond {
            self.note(digest, Noted::new(file_size, beyond));
        } else {
            self.unnote(&digest);
        }
    }

    /// Forgets the size of a file no longer queued or running, unless it is queued beyond the
    /// window again.
    fn forget_needs(&mut self, path: &str) {
        let digest = PathDigest::of(path);
        if !self.is_beyond_window(&digest) {
            self.unnote(&digest);
        }
    }

    /// Whether `path` is being materialised now.
    pub fn is_running(&self, path: &str) -> bool {
        self.in_flight.contains_key(path)
    }

    /// The next thing to do, or `None` when nothing may start now (nothing in the window, too
    /// many running, or the memory budget is used up).
    pub fn next(&mut self) -> Option<Next> {
        loop {
            if self.in_flight.len() >= MAX_CONCURRENT_DOWNLOADS {
                return None;
            }
            let creations_waiting =
                self.in_flight.len() > self.deletes_in_flight.len() || self.beyond_window > 0;
            let (path, delete) = match self.pending.pop_front() {
                Some(path) => (path, false),
                None if !creations_waiting => (self.pending_deletes.pop_front()?, true),
                None => return None,
            };
            let digest = PathDigest::of(&path);
            self.pending_set.remove(&digest);
            if self.in_flight.contains_key(&path) {
                self.again.insert(path);
                continue;
            }
            if self.retry_at.contains_key(&path) {
                return Some(Next::WaitsForRetry(path));
            }
            let size = self.noted_size(&digest);
            let buffer = size.map_or(0, download_buffer);
            if !self.in_flight.is_empty()
                && self.in_flight_buffered + buffer > DOWNLOAD_BUFFER_BUDGET
            {
                // Back to the front: it starts when enough of the running downloads finish.
                self.pending_set.insert(digest);
                if delete {
                    self.pending_deletes.push_front(path);
                } else {
                    self.pending.push_front(path);
                }
                return None;
            }
            if delete {
                self.deletes_in_flight.insert(path.clone());
            }
            let size = size.unwrap_or(0);
            self.in_flight_buffered += buffer;
            self.in_flight_sizes += u128::from(size);
            self.in_flight
                .insert(path.clone(), Running { buffer, size });
            return Some(Next::Start { path, delete });
        }
    }

    /// A download ended (whatever its outcome); a path that changed meanwhile is queued again.
    pub fn finish(&mut self, path: &str) {
        self.stop_running(path);
        self.deletes_in_flight.remove(path);
        if self.again.remove(path) {
            // Its new size was noted when it changed.
            self.push(path.to_owned(), false);
        } else {
            self.forget_needs(path);
        }
    }

    /// A download that was handed out by [`DownloadQueue::next`] is not started after all (no
    /// room on the disk): it waits until `at`, still counted as needed.
    pub fn defer(&mut self, path: String, at: Instant) {
        self.stop_running(&path);
        self.deletes_in_flight.remove(&path);
        if self.again.remove(&path) {
            self.push(path.clone(), false);
        }
        self.retry_at.insert(path, at);
    }

    /// A download (not a deletion) handed out by [`DownloadQueue::next`] is not started after
    /// all: back to the front of the queue.
    pub fn unstart(&mut self, path: String) {
        self.stop_running(&path);
        if self.pending_set.insert(PathDigest::of(&path)) {
            self.pending.push_front(path);
        }
    }

    /// A deletion handed out by [`DownloadQueue::next`] is not started after all: back to the
    /// front of the deletions.
    pub fn unstart_delete(&mut self, path: String) {
        self.stop_running(&path);
        self.deletes_in_flight.remove(&path);
        if self.pending_set.insert(PathDigest::of(&path)) {
            self.pending_deletes.push_front(path);
        }
    }

    /// The deletions waiting to start.
    pub fn pending_deletes(&self) -> impl Iterator<Item = &String> {
        self.pending_deletes.iter()
    }

    /// The size of the file a queued or running path needs, if it is one.
    pub fn file_size(&self, path: &str) -> Option<u64> {
        self.noted_size(&PathDigest::of(path))
    }

    /// The bytes the running downloads will write at most.
    pub fn running_bytes(&self) -> u64 {
        #[cfg(test)]
        assert_eq!(
            self.in_flight_sizes,
            self.in_flight
                .values()
                .map(|r| u128::from(r.size))
                .sum::<u128>()
        );
        u64::try_from(self.in_flight_sizes).unwrap_or(u64::MAX)
    }

    /// Takes `path` out of the running downloads.
    fn stop_running(&mut self, path: &str) {
        if let Some(running) = self.in_flight.remove(path) {
            self.in_flight_buffered -= running.buffer;
            self.in_flight_sizes -= u128::from(running.size);
        }
    }
    /// Tries `path` again at `at` (it is not started before).
    pub fn retry_at(&mut self, path: String, at: Instant) {
        self.retry_at.insert(path, at);
    }

    /// Makes every waiting retry due at `now` at the latest (the cause they waited out is
    /// gone).
    pub fn retry_all_by(&mut self, now: Instant) {
        for at in self.retry_at.values_mut() {
            *at = (*at).min(now);
        }
    }

    /// When the next retry is due.
    pub fn next_retry(&self) -> Option<Instant> {
        self.retry_at.values().min().copied()
    }

    /// Queues every path whose retry is due at `now`.
    pub fn queue_due_retries(&mut self, now: Instant) {
        let due: Vec<String> = self
            .retry_at
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(p, _)| p.clone())
            .collect();
        for path in due {
            self.retry_at.remove(&path);
            self.push(path, false);
        }
    }

    /// Paths queued, running or waiting for a retry (a path that failed is still needed).
    pub fn needed_files(&self) -> u64 {
        let waiting = self
            .retry_at
            .keys()
            .filter(|path| {
                let digest = PathDigest::of(path);
                !self.pending_set.contains(&digest)
                    && !self.is_beyond_window(&digest)
                    && !self.in_flight.contains_key(*path)
            })
            .count();
        let queued = self.pending.len() + self.pending_deletes.len() + self.beyond_window;
        (queued + self.in_flight.len() + waiting) as u64
    }

    /// Bytes the queued and running files need at most.
    pub fn needed_bytes(&self) -> u64 {
        #[cfg(test)]
        assert_eq!(
            self.noted_bytes,
            self.noted
                .values()
                .filter_map(|noted| Noted(noted).file_size())
                .map(u128::from)
                .sum::<u128>()
        );
        u64::try_from(self.noted_bytes).unwrap_or(u64::MAX)
    }

    /// Whether nothing is queued, running or waiting for a retry.
    pub fn is_idle(&self) -> bool {
        self.needed_files() == 0
    }
}

/// A key that comes before `path` and after every key that does, but for those that start with
/// `path` less its last byte (listed again, and passed over: harmless).
fn key_before(path: &str) -> Vec<u8> {
    let bytes = path.as_bytes();
    bytes[..bytes.len().saturating_sub(1)].to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::time::Duration;

    fn started(queue: &mut DownloadQueue) -> Vec<(String, bool)> {
        let mut out = Vec::new();
        while let Some(next) = queue.next() {
            match next {
                Next::Start { path, delete } => out.push((path, delete)),
                Next::WaitsForRetry(path) => panic!("{path} waits for a retry"),
            }
        }
        out
    }

    #[test]
    fn a_download_not_started_after_all_is_next_again() {
        let mut q = DownloadQueue::default();
        q.note_needed("a", Some(10));
        q.push("a".into(), false);
        q.push("b".into(), false);
        let Some(Next::Start { path, delete }) = q.next() else {
            panic!("a starts");
        };
        assert_eq!((path.as_str(), delete, q.running_bytes()), ("a", false, 10));
        q.unstart(path);
        assert_eq!(q.running_bytes(), 0, "nothing runs");
        assert!(!q.is_running("a"));
        assert_eq!(q.needed_files(), 2, "both still wanted");
        assert!(
            matches!(q.next(), Some(Next::Start { path, .. }) if path == "a"),
            "back at the front"
        );
    }

    #[test]
    fn running_bytes_are_the_current_sizes_of_the_running_files() {
        let mut q = DownloadQueue::default();
        for (i, size) in [10u64, 20, 30].into_iter().enumerate() {
            q.push(format!("f{i}"), false);
            q.note_needed(&format!("f{i}"), Some(size));
        }
        q.push("gone".into(), true);
        assert_eq!(q.running_bytes(), 0);
        assert_eq!(started(&mut q).len(), 3, "the deletion waits for the files");
        assert_eq!(q.running_bytes(), 60);
        // A newer version of a running file was announced: its new size counts.
        q.note_needed("f1", Some(25));
        assert_eq!(q.running_bytes(), 65);
        q.finish("f0");
        assert_eq!(q.running_bytes(), 55);
        q.defer("f2".into(), Instant::now() + Duration::from_secs(1));
        assert_eq!(q.running_bytes(), 25);
        q.finish("f1");
        assert_eq!(q.running_bytes(), 0);
    }

    /// A store's keys, listed as the store lists them: after `after`, `limit` at a time.
    fn list(
        keys: &BTreeSet<String>,
        after: &Option<Vec<u8>>,
        limit: usize,
    ) -> (Vec<Vec<u8>>, bool) {
        let page: Vec<Vec<u8>> = keys
            .iter()
            .map(|k| k.as_bytes().to_vec())
            .filter(|k| after.as_ref().is_none_or(|after| k > after))
            .take(limit)
            .collect();
        let ended = page.len() < limit;
        (page, ended)
    }

    /// Runs and finishes downloads until the queue asks for a listing or has nothing to start.
    fn run_until_listing_wanted(q: &mut DownloadQueue) -> Vec<(String, bool)> {
        let mut done = Vec::new();
        while q.wants_listing().is_none() {
            let batch = started(q);
            if batch.is_empty() {
                break;
            }
            for (path, delete) in batch {
                q.finish(&path);
                done.push((path, delete));
            }
        }
        done
    }

    /// Lists the store into the queue as the folder does, then runs and finishes everything.
    fn run_with_store(q: &mut DownloadQueue, store: &BTreeSet<String>) -> Vec<(String, bool)> {
        let mut done = Vec::new();
        loop {
            while let Some(after) = q.wants_listing() {
                let (keys, ended) = list(store, &after, 1000);
                q.take_listed(after, keys, ended);
            }
            let batch = started(q);
            if batch.is_empty() {
                return done;
            }
            for (path, delete) in batch {
                q.finish(&path);
                done.push((path, delete));
            }
        }
    }

    #[test]
    fn files_past_the_window_are_found_again_in_the_store_and_deletions_wait_for_them() {
        let total = QUEUE_WINDOW + 3000;
        let name = |i: usize| format!("d/f{i:06}");
        let mut store: BTreeSet<String> = (0..total).map(name).collect();
        store.extend(["a/unrelated".to_owned(), "old".to_owned()]);
        let mut q = DownloadQueue::default();
        q.push("old".into(), true);
        for i in 0..total {
            q.note_needed(&name(i), Some(10));
            q.push(name(i), false);
            q.push(name(i), false);
        }
        assert_eq!(
            q.pending.len(),
            QUEUE_WINDOW,
            "the window holds paths, no more"
        );
        assert_eq!(
            q.needed_files(),
            total as u64 + 1,
            "every queued path counts"
        );
        assert_eq!(q.needed_bytes(), total as u64 * 10);
        assert_eq!(q.wants_listing(), None, "the window is full");

        let mut done = run_until_listing_wanted(&mut q);
        assert!(q.pending.len() <= QUEUE_WINDOW / 2);
        assert_eq!(
            q.wants_listing(),
            Some(Some(b"d/f00819".to_vec())),
            "from just before the first path left out"
        );
        // Without the listing, the window runs dry, and the deletion still waits.
        while let Some(Next::Start { path, delete }) = q.next() {
            assert!(!delete, "{path} deleted while creations wait in the store");
            q.finish(&path);
            done.push((path, delete));
        }
        assert_eq!(q.needed_files(), (total - QUEUE_WINDOW) as u64 + 1);
        assert_eq!(q.needed_bytes(), (total - QUEUE_WINDOW) as u64 * 10);

        done.extend(run_with_store(&mut q, &store));
        assert_eq!(done.len(), total + 1, "each once");
        assert_eq!(
            done.last(),
            Some(&("old".to_owned(), true)),
            "the deletion last"
        );
        let created: BTreeSet<&String> = done.iter().filter(|(_, d)| !d).map(|(p, _)| p).collect();
        assert_eq!(created.len(), total);
        assert!(q.is_idle());
        assert_eq!((q.needed_bytes(), q.wants_listing()), (0, None));
    }

    #[test]
    fn a_path_queued_behind_a_listing_in_progress_moves_it_back() {
        let name = |i: usize| format!("m{i:06}");
        let mut q = DownloadQueue::default();
        for i in 0..QUEUE_WINDOW + 10 {
            q.push(name(i), false);
        }
        let mut store: BTreeSet<String> = (0..QUEUE_WINDOW + 10).map(name).collect();
        run_until_listing_wanted(&mut q);
        let after = q.wants_listing().expect("room in the window");
        let (keys, ended) = list(&store, &after, 3);
        // Meanwhile the window fills up again, and a path before the listing is queued past it.
        for i in 0..QUEUE_WINDOW {
            q.push(format!("n{i:06}"), false);
        }
        q.push("a".into(), false);
        store.insert("a".into());
        q.take_listed(after, keys, ended);
        assert_eq!(q.listed_after, Some(Some(Vec::new())), "back to before `a`");
        let done = run_with_store(&mut q, &store);
        assert!(done.contains(&("a".to_owned(), false)));
        assert!(q.is_idle());
    }

    #[test]
    fn a_queued_path_the_store_no_longer_has_is_forgotten_when_its_listing_ends() {
        let mut q = DownloadQueue::default();
        for i in 0..=QUEUE_WINDOW {
            q.note_needed(&format!("p{i:06}"), Some(7));
            q.push(format!("p{i:06}"), false);
        }
        let done = run_with_store(&mut q, &BTreeSet::new());
        assert_eq!(done.len(), QUEUE_WINDOW);
        assert!(q.is_idle());
        assert_eq!(q.needed_bytes(), 0);
    }

    #[test]
    fn retries_waiting_for_a_cause_that_is_gone_all_come_due() {
        let mut q = DownloadQueue::default();
        let now = Instant::now();
        q.retry_at("soon".into(), now + Duration::from_secs(2));
        q.retry_at("late".into(), now + Duration::from_secs(60));
        q.retry_all_by(now);
        assert_eq!(q.next_retry(), Some(now));
        q.queue_due_retries(now);
        let mut names: Vec<String> = started(&mut q).into_iter().map(|(p, _)| p).collect();
        names.sort();
        assert_eq!(names, ["late", "soon"]);
    }

    #[test]
    fn download_buffers_count_small_files_whole_and_large_ones_by_their_window() {
        assert_eq!(download_buffer(4096), 4096);
        assert_eq!(download_buffer(SMALL_FILE_BYTES), SMALL_FILE_BYTES);
        let window = MAX_CHUNKS_IN_FLIGHT as u64 * u64::from(model::CHUNK_MAX);
        assert_eq!(download_buffer(256 << 20), window);
        assert_eq!(download_buffer(SMALL_FILE_BYTES + 1), SMALL_FILE_BYTES + 1);
    }

    #[test]
    fn deletions_wait_until_no_creation_is_queued_or_running() {
        let mut q = DownloadQueue::default();
        q.push("old".into(), true);
        q.push("new".into(), false);
        q.push("new".into(), false);
        assert_eq!(started(&mut q), vec![("new".to_owned(), false)]);
        assert_eq!(q.needed_files(), 2);
        q.finish("new");
        assert_eq!(started(&mut q), vec![("old".to_owned(), true)]);
        q.finish("old");
        assert!(q.is_idle());
    }

    #[test]
    fn a_path_queued_while_running_runs_again_after_it_finishes() {
        let mut q = DownloadQueue::default();
        q.push("a".into(), false);
        assert_eq!(started(&mut q).len(), 1);
        q.push("a".into(), false);
        assert_eq!(started(&mut q), vec![], "not twice at once");
        q.finish("a");
        assert_eq!(started(&mut q), vec![("a".to_owned(), false)]);
    }

    #[test]
    fn the_memory_budget_holds_back_large_files_but_one_always_runs() {
        let size = 100 << 20;
        let window = download_buffer(size);
        let fit = (DOWNLOAD_BUFFER_BUDGET / window) as usize;
        let mut q = DownloadQueue::default();
        for i in 0..fit + 2 {
            q.note_needed(&format!("big{i}"), Some(size));
            q.push(format!("big{i}"), false);
        }
        assert_eq!(started(&mut q).len(), fit.max(1));
        q.note_needed("small", Some(10));
        q.push("small".into(), false);
        assert_eq!(
            started(&mut q),
            vec![],
            "the next big file is first in line and does not fit"
        );
        q.finish("big0");
        assert_eq!(started(&mut q)[0].0, format!("big{}", fit.max(1)));
        assert_eq!(q.needed_files(), (fit + 2) as u64, "{fit} fit");
        assert_eq!(q.needed_bytes(), (fit as u64 + 1) * size + 10);
    }

    #[test]
    fn at_most_the_concurrency_limit_runs() {
        let mut q = DownloadQueue::default();
        for i in 0..MAX_CONCURRENT_DOWNLOADS + 5 {
            q.push(format!("f{i}"), false);
        }
        assert_eq!(started(&mut q).len(), MAX_CONCURRENT_DOWNLOADS);
        q.finish("f0");
        assert_eq!(
            started(&mut q),
            vec![(format!("f{MAX_CONCURRENT_DOWNLOADS}"), false)]
        );
    }

    #[test]
    fn failed_paths_wait_for_their_retry() {
        let mut q = DownloadQueue::default();
        let t0 = Instant::now();
        q.push("a".into(), false);
        assert_eq!(started(&mut q).len(), 1);
        q.note_needed("a", Some(10));
        q.finish("a");
        q.note_needed("a", Some(10));
        q.retry_at("a".into(), t0 + Duration::from_secs(2));
        // Still needed while it waits, once, with its bytes.
        assert_eq!((q.needed_files(), q.needed_bytes()), (1, 10));
        assert!(!q.is_idle());
        q.push("a".into(), false);
        assert_eq!(q.needed_files(), 1);
        assert_eq!(q.next(), Some(Next::WaitsForRetry("a".into())));
        assert_eq!(q.next_retry(), Some(t0 + Duration::from_secs(2)));
        q.queue_due_retries(t0 + Duration::from_secs(1));
        assert_eq!(q.next(), None, "not due yet");
        q.queue_due_retries(t0 + Duration::from_secs(2));
        assert_eq!(q.next_retry(), None);
        assert_eq!(started(&mut q), vec![("a".to_owned(), false)]);
    }

    /// A running file queued again while the window is full waits beyond it with its new
    /// size: its download ending does not forget it, and the listing brings it back.
    #[test]
    fn a_running_file_queued_again_beyond_the_window_is_listed_after_it_ends() {
        let name = |i: usize| format!("w{i:06}");
        let mut q = DownloadQueue::default();
        q.note_needed("a", Some(10));
        q.push("a".into(), false);
        assert_eq!(started(&mut q), vec![("a".to_owned(), false)]);
        for i in 0..QUEUE_WINDOW {
            q.push(name(i), false);
        }
        q.note_needed("a", Some(20));
        q.push("a".into(), false);
        assert_eq!((q.past_window(), q.file_size("a")), (1, Some(20)));
        q.finish("a");
        assert_eq!(
            q.file_size("a"),
            Some(20),
            "still queued, with its new size"
        );
        assert_eq!(q.needed_files(), QUEUE_WINDOW as u64 + 1);
        let store: BTreeSet<String> = (0..QUEUE_WINDOW).map(name).chain(["a".into()]).collect();
        let done = run_with_store(&mut q, &store);
        assert_eq!(done.len(), QUEUE_WINDOW + 1, "each once");
        assert!(done.contains(&("a".to_owned(), false)));
        assert!(q.is_idle());
        assert_eq!((q.needed_bytes(), q.past_window()), (0, 0));
    }

    /// A size no file has (a peer may claim any) is kept as the largest one, and never taken
    /// for one of the flags.
    #[test]
    fn a_claimed_size_beyond_any_file_is_clamped_not_taken_for_a_flag() {
        for beyond in [false, true] {
            let noted = Noted::new(Some(u64::MAX), beyond);
            assert_eq!(noted.file_size(), Some(Noted::MAX_SIZE));
            assert_eq!(noted.is_beyond_window(), beyond);
            for size in [None, Some(0), Some(u64::MAX)] {
                let noted = Noted::new(size, beyond);
                assert_ne!(
                    noted.0,
                    DigestMap::VACANT,
                    "a value the queue's map can hold"
                );
            }
            let not_a_file = Noted::new(None, beyond);
            assert_eq!(not_a_file.file_size(), None);
            assert_eq!(not_a_file.is_beyond_window(), beyond);
        }
        assert_eq!(Noted::new(Some(0), false).file_size(), Some(0));
    }

    /// Running files whose claimed sizes add up past what 64 bits hold are counted as the most
    /// there can be, without overflowing; the count comes down as they end.
    #[test]
    fn claimed_sizes_of_running_files_add_up_without_overflow() {
        let mut q = DownloadQueue::default();
        for i in 0..8 {
            q.push(format!("huge{i}"), false);
            q.note_needed(&format!("huge{i}"), Some(u64::MAX));
        }
        // Each file buffers at most a few chunks, so all of them run at once.
        assert_eq!(started(&mut q).len(), 8);
        assert_eq!(q.running_bytes(), u64::MAX);
        for i in 0..7 {
            q.finish(&format!("huge{i}"));
        }
        assert_eq!(q.running_bytes(), Noted::MAX_SIZE);
        q.note_needed("huge7", Some(5));
        assert_eq!(q.running_bytes(), 5, "a newer version's size counts");
        q.finish("huge7");
        assert_eq!(q.running_bytes(), 0);
    }
}
