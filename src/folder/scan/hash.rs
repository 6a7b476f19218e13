//! Reading the files a scan found changed: on up to [`MAX_HASH_WORKERS`] threads, largest first,
//! each through one descriptor and retried until the read is consistent ([`check_stable`]) or
//! [`MAX_HASH_ATTEMPTS`] are spent.

use std::fs::{self, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, SystemTime};

use rustix::fs::OFlags;

use super::ScanRecord;
use super::stat::{Seen, Stat, is_racy};
use crate::folder::content::{
    FileHash, PIPELINE_FROM, Previous, hash_reader, hash_reader_pipelined,
};
use crate::folder::model::{self, ChunkRef, EntryKind, FileMeta, PageRef};

/// Most threads hashing files at once. Hashing is CPU-bound (BLAKE3 and the CDC gear hash,
/// together ~0.5 GB/s per thread); more threads than this would starve the daemon's other work
/// and make a spinning disk seek between files.
pub const MAX_HASH_WORKERS: usize = 4;

/// How many times a file is read before it is reported unstable: the first read and one retry.
pub const MAX_HASH_ATTEMPTS: u32 = 2;

/// How long a read that caught a file mid-change ([`Seen::mid_change`]) waits before the next.
pub const MID_CHANGE_WAIT: Duration = Duration::from_millis(50);
/// How many such waits before what is read is taken as it is: a size change within the same
/// clock tick as the previous scan's read leaves the change time as it was for good.
pub const MID_CHANGE_WAITS: u32 = 20;

/// A file to read. A first scan lists every file before it reads the largest first, so this is
/// held once per file of the tree: 32 bytes and the path's own allocation, where a `String` and
/// an inline `Seen` took 80 (in a vector that doubles as it grows: ~130 MB for 10^6 files, and
/// more while it grew, most of a first index's peak).
pub(super) struct Job {
    /// Its normalised relative path.
    pub(super) rel: Box<str>,
    /// Its size when listed: the largest are read first.
    pub(super) size: u64,
    /// What the previous scan saw of it, if it was a file then (a rescan only).
    seen: Option<Box<Seen>>,
}

impl Job {
    pub(super) fn new(rel: String, size: u64, seen: Option<Seen>) -> Job {
        Job {
            rel: rel.into_boxed_str(),
            size,
            seen: seen.map(Box::new),
        }
    }
}

/// What reading one file gave.
pub(super) enum Outcome {
    /// A consistent description.
    Done(ScanRecord, Vec<(PageRef, Vec<ChunkRef>)>),
    /// No consistent read within [`MAX_HASH_ATTEMPTS`]; why.
    Unstable(Unstable),
}

/// Reading one file: the outcome and the work it took.
pub(super) struct Hashed {
    /// What came of it.
    pub(super) outcome: Outcome,
    /// Reads started (a retry counts twice).
    pub(super) reads: u64,
    /// Bytes read over all attempts.
    pub(super) bytes: u64,
}

/// Reads `jobs` (their paths relative to `base`) on up to [`MAX_HASH_WORKERS`] threads (the calling one included), largest first
/// so one big file does not start last.
pub(super) fn hash_all(
    mut jobs: Vec<Job>,
    base: &Path,
    previous_chunks: &(dyn Fn(&Job) -> Option<Previous> + Sync),
) -> Vec<(Job, Hashed)> {
    if jobs.is_empty() {
        return Vec::new();
    }
    jobs.sort_by_key(|job| std::cmp::Reverse(job.size));
    let workers = thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(MAX_HASH_WORKERS)
        .min(jobs.len());
    let next = AtomicUsize::new(0);
    let work = || {
        let mut done = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else {
                return done;
            };
            done.push((
                i,
                hash_job(
                    &base.join(&*job.rel),
                    job.seen.as_deref().copied(),
                    previous_chunks(job).as_ref(),
                ),
            ));
        }
    };
    let mut results: Vec<(usize, Hashed)> = thread::scope(|s| {
        let work = &work;
        let handles: Vec<_> = (1..workers)
            .filter_map(|n| {
                thread::Builder::new()
                    .name(format!("meshsync-hash-{n}"))
                    .spawn_scoped(s, work)
                    .ok()
            })
            .collect();
        let mut all = work();
        for handle in handles {
            match handle.join() {
                Ok(done) => all.extend(done),
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        all
    });
    results.sort_by_key(|(i, _)| *i);
    jobs.into_iter()
        .zip(results)
        .map(|(job, (_, hashed))| (job, hashed))
        .collect()
}

/// Why a file could not be described this time: the next scan tries again.
#[derive(Debug, thiserror::Error)]
pub(super) enum Unstable {
    /// A system call on the file failed.
    #[error("cannot {action}")]
    Io {
        /// What was being done (`open`, `stat`, `read`).
        action: &'static str,
        /// The underlying error.
        #[source]
        source: io::Error,
    },
    /// The path no longer names a regular file.
    #[error("no longer a regular file")]
    NotRegular,
    /// The byte count or the size moved during the read.
    #[error("size changed while read ({before} before, {read} read, {after} after)")]
    SizeChanged {
        /// `fstat` size before the read.
        before: u64,
        /// Bytes read.
        read: u64,
        /// `fstat` size after the read.
        after: u64,
    },
    /// The mtime or ctime moved during the read.
    #[error("modified while read")]
    Modified,
    /// Another file (inode or device) is at the path after the read.
    #[error("replaced while read")]
    Replaced,
    /// The path's `lstat` after the read differs from the descriptor's `fstat`.
    #[error("changed while read")]
    Changed,
}

impl Unstable {
    /// The reason with its cause, for a warning line.
    pub(super) fn describe(&self) -> String {
        match std::error::Error::source(self) {
            Some(cause) => format!("{self}: {cause}"),
            None => self.to_string(),
        }
    }
}

/// Reads one file until it reads consistently, at most [`MAX_HASH_ATTEMPTS`] times, and not
/// in the middle of a change ([`Seen::mid_change`]) unless that lasts [`MID_CHANGE_WAITS`].
fn hash_job(abs: &Path, seen: Option<Seen>, previous: Option<&Previous>) -> Hashed {
    let (mut reads, mut bytes, mut waits) = (0, 0, 0);
    loop {
        let started = SystemTime::now();
        reads += 1;
        let outcome = match hash_once(abs, &mut bytes, previous) {
            Ok((stat, _))
                if waits < MID_CHANGE_WAITS && seen.is_some_and(|s| s.mid_change(&stat)) =>
            {
                waits += 1;
                reads -= 1;
                thread::sleep(MID_CHANGE_WAIT);
                continue;
            }
            Ok((stat, content)) => {
                let (described, pages) = model::describe(content.chunks);
                let meta = FileMeta {
                    kind: EntryKind::File,
                    mode: stat.mode,
                    mtime_secs: stat.mtime.0,
                    mtime_nanos: stat.mtime.1,
                    size: content.size,
                    hash: content.hash,
                    content: described,
                    target: None,
                };
                Outcome::Done(stat.record(meta, is_racy(&stat, started)), pages)
            }
            Err(why) if reads >= u64::from(MAX_HASH_ATTEMPTS) => Outcome::Unstable(why),
            Err(_) => continue,
        };
        return Hashed {
            outcome,
            reads,
            bytes,
        };
    }
}

/// One consistent read of the regular file at `abs`, or why it was not consistent. Adds the
/// bytes read to `bytes`.
fn hash_once(
    abs: &Path,
    bytes: &mut u64,
    previous: Option<&Previous>,
) -> Result<(Stat, FileHash), Unstable> {
    let io = |action: &'static str| move |source: io::Error| Unstable::Io { action, source };
    // O_NOFOLLOW: a symlink swapped in is not followed; O_NONBLOCK: a fifo swapped in does not
    // block the open.
    let file = OpenOptions::new()
        .read(true)
        .custom_flags((OFlags::NOFOLLOW | OFlags::NONBLOCK).bits() as i32)
        .open(abs)
        .map_err(io("open"))?;
    let md = file.metadata().map_err(io("stat"))?;
    if !md.is_file() {
        return Err(Unstable::NotRegular);
    }
    let before = Stat::of(&md);
    let mut reader = CountingReader {
        inner: &file,
        count: 0,
    };
    let result = if before.size >= PIPELINE_FROM {
        hash_reader_pipelined(&mut reader, previous)
    } else {
        hash_reader(&mut reader)
    };
    *bytes += reader.count;
    let content = result.map_err(io("read"))?;
    let after = Stat::of(&file.metadata().map_err(io("stat"))?);
    let at_path = Stat::of(&fs::symlink_metadata(abs).map_err(io("stat"))?);
    check_stable(&before, &after, &at_path, content.size)?;
    Ok((before, content))
}

/// Whether a read saw one consistent file: the descriptor's stat before and after, the path's
/// stat after, and the byte count all agree.
fn check_stable(before: &Stat, after: &Stat, at_path: &Stat, bytes: u64) -> Result<(), Unstable> {
    if bytes != before.size || after.size != before.size {
        return Err(Unstable::SizeChanged {
            before: before.size,
            read: bytes,
            after: after.size,
        });
    }
    if after.mtime != before.mtime || after.ctime != before.ctime {
        return Err(Unstable::Modified);
    }
    if (at_path.ino, at_path.dev) != (before.ino, before.dev) {
        return Err(Unstable::Replaced);
    }
    if at_path != after {
        return Err(Unstable::Changed);
    }
    Ok(())
}

/// Counts the bytes read through it, failed reads included.
struct CountingReader<R> {
    /// Where the bytes come from.
    inner: R,
    /// Bytes read so far.
    count: u64,
}

impl<R: Read> Read for CountingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::super::scan_all;
    use super::super::testkit::*;
    use super::*;
    use crate::folder::content::hash_file;
    use crate::folder::model::{CHUNK_MAX, CHUNK_MIN, Content};
    use std::collections::BTreeMap;
    use std::time::Duration;

    /// A first scan holds one job per file of the tree at once.
    #[test]
    fn a_job_is_held_in_32_bytes_and_its_path() {
        assert!(
            std::mem::size_of::<Job>() <= 32,
            "{}",
            std::mem::size_of::<Job>()
        );
        let stat = sample_stat();
        let seen = Seen::of(&stat.record(stat.bare_meta(EntryKind::File, None), false));
        assert!(seen.is_some());
        let job = Job::new("a/b".into(), 7, seen);
        assert_eq!((&*job.rel, job.size), ("a/b", 7));
        assert_eq!(job.seen.as_deref().copied(), seen);
    }

    #[test]
    fn a_read_must_be_consistent() {
        let stat = sample_stat();
        assert!(check_stable(&stat, &stat, &stat, 10).is_ok());
        assert!(check_stable(&stat, &stat, &stat, 9).is_err());
        let grown = Stat { size: 12, ..stat };
        assert!(check_stable(&stat, &grown, &grown, 10).is_err());
        let touched = Stat {
            ctime: (1_000, 901),
            ..stat
        };
        assert!(check_stable(&stat, &touched, &touched, 10).is_err());
        let replaced = Stat { ino: 8, ..stat };
        assert!(check_stable(&stat, &stat, &replaced, 10).is_err());
    }

    /// What a scan would have recorded of the file at `path` when it had `size` bytes, with
    /// its current change time.
    fn seen_with_size(path: &Path, size: u64) -> Seen {
        let stat = Stat::of(&fs::symlink_metadata(path).unwrap());
        let meta = FileMeta {
            size,
            ..stat.bare_meta(EntryKind::File, None)
        };
        Seen::of(&stat.record(meta, false)).unwrap()
    }

    fn described_size(hashed: &Hashed) -> u64 {
        match &hashed.outcome {
            Outcome::Done(record, _) => record.meta.size,
            Outcome::Unstable(why) => panic!("unstable: {why}"),
        }
    }

    #[test]
    fn a_file_caught_mid_truncate_is_read_again_once_its_change_time_moves() {
        let dir = folder();
        let path = dir.path().join("doc");
        // The kernel's window: the new size (0) is set, the times are not yet.
        fs::write(&path, b"").unwrap();
        let seen = seen_with_size(&path, 10);
        let writer = {
            let path = path.clone();
            std::thread::spawn(move || {
                std::thread::sleep(MID_CHANGE_WAIT * 3);
                fs::write(&path, b"new content").unwrap();
            })
        };
        let hashed = hash_job(&path, Some(seen), None);
        writer.join().unwrap();
        assert_eq!(
            described_size(&hashed),
            11,
            "the empty moment is not described"
        );
    }

    #[test]
    fn a_size_change_that_never_moves_the_change_time_is_taken_after_the_waits() {
        let dir = folder();
        let path = dir.path().join("doc");
        fs::write(&path, b"").unwrap();
        let started = std::time::Instant::now();
        let hashed = hash_job(&path, Some(seen_with_size(&path, 10)), None);
        assert_eq!(described_size(&hashed), 0);
        assert!(started.elapsed() >= MID_CHANGE_WAIT * MID_CHANGE_WAITS);
        // Without a previous size, or with the same one, there is no wait.
        let started = std::time::Instant::now();
        let hashed = hash_job(&path, Some(seen_with_size(&path, 0)), None);
        assert_eq!(described_size(&hashed), 0);
        assert!(started.elapsed() < MID_CHANGE_WAIT * MID_CHANGE_WAITS);
    }

    #[test]
    fn a_file_changing_while_read_never_gets_a_wrong_size() {
        let dir = folder();
        let path = dir.path().join("growing");
        fs::write(&path, random(1, 8 << 20)).unwrap();
        let stop = std::sync::atomic::AtomicBool::new(false);
        thread::scope(|s| {
            s.spawn(|| {
                let mut file = fs::OpenOptions::new().append(true).open(&path).unwrap();
                while !stop.load(Ordering::Relaxed) {
                    io::Write::write_all(&mut file, &[1; 4096]).unwrap();
                    thread::sleep(Duration::from_micros(200));
                }
            });
            for _ in 0..3 {
                let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
                match out.entries.get("growing") {
                    Some(record) => {
                        let chunks = chunks_of(&record.meta, &out.pages);
                        let sum: u64 = chunks.iter().map(|c| u64::from(c.len)).sum();
                        assert_eq!(sum, record.meta.size);
                    }
                    None => assert_eq!(out.unstable, ["growing"]),
                }
            }
            stop.store(true, Ordering::Relaxed);
        });
    }

    #[test]
    fn chunks_reassemble_to_the_file() {
        let data = random(7, 3 << 20);
        let dir = folder();
        write(dir.path(), "f", &data);
        let hashed = hash_file(&dir.path().join("f")).unwrap();
        assert_eq!(hashed.size, data.len() as u64);
        assert_eq!(hashed.hash, *blake3::hash(&data).as_bytes());
        let mut offset = 0usize;
        for (i, chunk) in hashed.chunks.iter().enumerate() {
            let len = chunk.len as usize;
            assert!(len <= CHUNK_MAX as usize);
            assert!(len >= CHUNK_MIN as usize || i + 1 == hashed.chunks.len());
            assert_eq!(
                chunk.hash,
                *blake3::hash(&data[offset..offset + len]).as_bytes()
            );
            offset += len;
        }
        assert_eq!(offset, data.len());

        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        let meta = &out.entries["f"].meta;
        assert!(matches!(meta.content, Content::Paged(_)));
        assert_eq!(chunks_of(meta, &out.pages), hashed.chunks);
        assert_eq!(meta.hash, hashed.hash);
    }

    #[test]
    fn empty_files_have_no_chunks() {
        let dir = folder();
        write(dir.path(), "empty", b"");
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        let meta = &out.entries["empty"].meta;
        assert_eq!((meta.size, &meta.content), (0, &Content::Empty));
        assert_eq!(meta.hash, *blake3::hash(b"").as_bytes());
    }

    #[test]
    fn identical_content_gives_identical_chunks() {
        let data = random(3, 1 << 20);
        let dir = folder();
        write(dir.path(), "a", &data);
        write(dir.path(), "x/b", &data);
        let out = scan_all(dir.path(), &BTreeMap::new()).unwrap();
        let (a, b) = (&out.entries["a"].meta, &out.entries["x/b"].meta);
        assert!(a.same_content(b));
        assert_eq!(a.content, b.content);
    }

    /// Throughput, in release mode:
    /// `cargo test --release -- --ignored --nocapture hashing_throughput`.
    #[test]
    #[ignore = "a measurement, not a check"]
    fn hashing_throughput() {
        use std::time::Instant;
        let dir = folder();
        let root = dir.path();
        write(root, "big", &random(1, 256 << 20));
        for i in 0..10_000u64 {
            write(root, &format!("small/{:02}/{i}", i % 100), &random(i, 4096));
        }
        let start = Instant::now();
        let single = hash_file(&root.join("big")).unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!("hash_file 256 MiB: {secs:.3} s, {:.0} MiB/s", 256.0 / secs);
        assert_eq!(single.size, 256 << 20);

        settle();
        let start = Instant::now();
        let out = scan_all(root, &BTreeMap::new()).unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "scan_all first (256 MiB + 10,000 × 4 KiB, {} files): {secs:.3} s, {:.0} MiB/s",
            out.hashed_files,
            out.hashed_bytes as f64 / (1 << 20) as f64 / secs
        );
        let start = Instant::now();
        let again = scan_all(root, &out.entries).unwrap();
        println!(
            "scan_all unchanged ({} entries, {} re-read): {:.3} s",
            again.entries.len(),
            again.hashed_files,
            start.elapsed().as_secs_f64()
        );
        fs::remove_file(root.join("big")).unwrap();
        let start = Instant::now();
        let small = scan_all(root, &BTreeMap::new()).unwrap();
        let secs = start.elapsed().as_secs_f64();
        println!(
            "scan_all 10,000 × 4 KiB only: {secs:.3} s, {:.0} files/s",
            small.hashed_files as f64 / secs
        );
    }
}
