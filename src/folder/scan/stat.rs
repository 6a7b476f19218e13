//! What the scanner compares between scans: the `lstat` fields of an entry ([`Stat`]), the
//! unchanged-file rule ([`reusable`], [`Stamp`]) and the racy rules that make a file modified
//! too close to its read be read again ([`is_racy`], [`written_is_racy`]).

use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::ScanRecord;
use crate::folder::model::{Content, EntryKind, FileMeta};

/// A file whose mtime or ctime is this close to (or after) the moment its read began is
/// re-read by the next scan: a later write in the same clock tick could leave its timestamps
/// unchanged. Covers the kernel's coarse clock (≤ 10 ms) with a wide margin.
pub const RACY_WINDOW_FINE: Duration = Duration::from_millis(100);

/// The racy window for files whose timestamps are whole seconds (nanoseconds both zero): likely
/// a filesystem with 1 s (ext3, HFS+) or 2 s (FAT, exFAT) granularity.
pub const RACY_WINDOW_COARSE: Duration = Duration::from_secs(2);

/// The `lstat`/`fstat` fields the scanner compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Stat {
    /// Permission bits (`st_mode & 0o7777`).
    pub(super) mode: u32,
    /// Size in bytes.
    pub(super) size: u64,
    /// Modification time (seconds, nanoseconds).
    pub(super) mtime: (i64, u32),
    /// Status-change time (seconds, nanoseconds).
    pub(super) ctime: (i64, u32),
    /// Inode number.
    pub(super) ino: u64,
    /// Device number.
    pub(super) dev: u64,
}

impl Stat {
    pub(super) fn of(md: &Metadata) -> Stat {
        let nanos = |n: i64| u32::try_from(n).unwrap_or(0);
        Stat {
            mode: md.mode() & 0o7777,
            size: md.size(),
            mtime: (md.mtime(), nanos(md.mtime_nsec())),
            ctime: (md.ctime(), nanos(md.ctime_nsec())),
            ino: md.ino(),
            dev: md.dev(),
        }
    }

    /// A record of this stat for `meta`.
    pub(super) fn record(&self, meta: FileMeta, racy: bool) -> ScanRecord {
        ScanRecord {
            meta,
            ctime_secs: self.ctime.0,
            ctime_nanos: self.ctime.1,
            inode: self.ino,
            dev: self.dev,
            racy,
        }
    }

    /// Metadata without content (directories, symlinks).
    pub(super) fn bare_meta(&self, kind: EntryKind, target: Option<String>) -> FileMeta {
        FileMeta {
            kind,
            mode: self.mode,
            mtime_secs: self.mtime.0,
            mtime_nanos: self.mtime.1,
            size: 0,
            hash: [0; 32],
            content: Content::Empty,
            target,
        }
    }
}

/// What a previous scan saw of a regular file that bears on how it can change: every size
/// change (truncate, write past the end) moves the change time. But not at once: the kernel
/// sets the new size, frees or allocates blocks, and only then the times, so an `fstat` in
/// between shows the new size with the old times (ext4 under load, found by `meshsync lab`: a
/// file being truncated to be rewritten was sent as an empty file with its old mtime). A read
/// that sees the size moved without the change time is taken as caught mid-change and repeated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Seen {
    size: u64,
    ctime: (i64, u32),
    ino: u64,
    dev: u64,
}

impl Seen {
    /// What `record` says of its regular file (none for other kinds).
    pub(super) fn of(record: &ScanRecord) -> Option<Seen> {
        (record.meta.kind == EntryKind::File).then_some(Seen {
            size: record.meta.size,
            ctime: (record.ctime_secs, record.ctime_nanos),
            ino: record.inode,
            dev: record.dev,
        })
    }

    /// Whether `now` is the same file with another size and the same change time.
    pub(super) fn mid_change(&self, now: &Stat) -> bool {
        (now.ino, now.dev) == (self.ino, self.dev)
            && now.ctime == self.ctime
            && now.size != self.size
    }
}

/// The unchanged-file rule (see the module docs): whether `previous` still describes a regular
/// file whose `lstat` is `now`.
pub(super) fn reusable(previous: &ScanRecord, now: &Stat) -> bool {
    previous.stamp().is_some_and(|stamp| stamp.0 == *now)
}

/// What `lstat` said of a regular file when a scan described it. A file that has the same stamp
/// now is taken to hold the same bytes: the rule by which a rescan does not re-read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp(Stat);

impl Stamp {
    /// Whether `md` (`fstat` of an open file, or `lstat` of a path) is still this file,
    /// unchanged.
    pub fn matches(&self, md: &Metadata) -> bool {
        Stat::of(md) == self.0
    }

    /// The stamp in 16 bytes instead of 64, for an index that keeps one per chunk.
    pub fn digest(&self) -> StampDigest {
        let s = &self.0;
        let mut h = blake3::Hasher::new();
        h.update(&s.mode.to_le_bytes());
        h.update(&s.size.to_le_bytes());
        h.update(&s.mtime.0.to_le_bytes());
        h.update(&s.mtime.1.to_le_bytes());
        h.update(&s.ctime.0.to_le_bytes());
        h.update(&s.ctime.1.to_le_bytes());
        h.update(&s.ino.to_le_bytes());
        h.update(&s.dev.to_le_bytes());
        let bytes = h.finalize();
        let half = |at: usize| {
            u64::from_le_bytes(bytes.as_bytes()[at..at + 8].try_into().expect("8 bytes"))
        };
        StampDigest([half(0), half(8)])
    }
}

/// A [`Stamp`] as 128 bits of its BLAKE3: equal stamps have equal digests, and two different
/// ones share a digest with a chance of 2^-128. What it vouches for is checked again anyway
/// (a file copied from chunks it vouches for is checked whole against its hash).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StampDigest([u64; 2]);

impl StampDigest {
    /// Whether `md` is still the file the stamp was taken of, unchanged.
    pub fn matches(&self, md: &Metadata) -> bool {
        Stamp(Stat::of(md)).digest() == *self
    }

    /// Its 16 bytes, as stored (little-endian halves).
    pub fn to_bytes(self) -> [u8; 16] {
        let mut bytes = [0; 16];
        bytes[..8].copy_from_slice(&self.0[0].to_le_bytes());
        bytes[8..].copy_from_slice(&self.0[1].to_le_bytes());
        bytes
    }

    /// The digest [`Self::to_bytes`] gave.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        let half = |at: usize| u64::from_le_bytes(bytes[at..at + 8].try_into().expect("8 bytes"));
        StampDigest([half(0), half(8)])
    }
}

impl ScanRecord {
    /// The stamp of the regular file this record describes, unless it was modified too close to
    /// its read (racy) for its stamp to vouch for its content.
    pub fn stamp(&self) -> Option<Stamp> {
        let meta = &self.meta;
        (meta.kind == EntryKind::File && !self.racy).then_some(Stamp(Stat {
            mode: meta.mode,
            size: meta.size,
            mtime: (meta.mtime_secs, meta.mtime_nanos),
            ctime: (self.ctime_secs, self.ctime_nanos),
            ino: self.inode,
            dev: self.dev,
        }))
    }
}

/// Whether a file with `stat`, read from `started` on, must be re-read next time (see
/// [`RACY_WINDOW_FINE`]).
pub(super) fn is_racy(stat: &Stat, started: SystemTime) -> bool {
    let window = if stat.mtime.1 == 0 && stat.ctime.1 == 0 {
        RACY_WINDOW_COARSE
    } else {
        RACY_WINDOW_FINE
    };
    let Ok(started) = started.duration_since(UNIX_EPOCH) else {
        return true;
    };
    let nanos = |(secs, nanos): (i64, u32)| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
    let newest = nanos(stat.mtime).max(nanos(stat.ctime));
    newest + window.as_nanos() as i128 > started.as_nanos() as i128
}

/// Whether a file the writer just put in place with its mtime set to `mtime` (and `ctime` from
/// the rename) must be re-read by the next scan. Any later local write moves the mtime to the
/// clock's "now", which shows unless that equals `mtime`, i.e. unless `mtime` is itself within
/// the racy window of `now`. (A program restoring that exact mtime within the same clock tick as
/// our rename is the one edit left unseen.) Most received files are older than that, and
/// re-reading them cost as much as receiving them: all of a 256 MiB file, right after writing it.
pub fn written_is_racy(mtime: (i64, u32), ctime: (i64, u32), now: SystemTime) -> bool {
    let window = if mtime.1 == 0 && ctime.1 == 0 {
        RACY_WINDOW_COARSE
    } else {
        RACY_WINDOW_FINE
    };
    let Ok(now) = now.duration_since(UNIX_EPOCH) else {
        return true;
    };
    let mtime = i128::from(mtime.0) * 1_000_000_000 + i128::from(mtime.1);
    (mtime - now.as_nanos() as i128).abs() < window.as_nanos() as i128
}

#[cfg(test)]
mod tests {
    use super::super::testkit::sample_stat;
    use super::*;

    #[test]
    fn a_written_file_is_racy_only_if_a_write_now_could_keep_its_mtime() {
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        let ctime = (1_000, 700);
        // A file from a peer, last changed a while ago: a local write would show as a new mtime.
        assert!(!written_is_racy((990, 5), ctime, at(1_000, 800)));
        // Changed on the peer just now: a local write in the same tick could keep that mtime.
        assert!(written_is_racy((1_000, 5), ctime, at(1_000, 800)));
        // A peer clock slightly ahead of ours is within the window too; far ahead is not.
        assert!(written_is_racy((1_000, 50_000_000), ctime, at(1_000, 800)));
        assert!(!written_is_racy((1_060, 0), ctime, at(1_000, 800)));
        // Whole-second timestamps (FAT, HFS+) get the coarse window.
        assert!(written_is_racy((999, 0), (1_000, 0), at(1_000, 0)));
        assert!(!written_is_racy((990, 0), (1_000, 0), at(1_000, 0)));
    }

    #[test]
    fn the_racy_and_reuse_rules() {
        let stat = sample_stat();
        let at = |secs: u64, nanos: u32| UNIX_EPOCH + Duration::new(secs, nanos);
        assert!(is_racy(&stat, at(1_000, 50_000_000)));
        assert!(!is_racy(&stat, at(1_001, 0)));
        let coarse = Stat {
            mtime: (1_000, 0),
            ctime: (1_000, 0),
            ..stat
        };
        assert!(is_racy(&coarse, at(1_001, 0)));
        assert!(!is_racy(&coarse, at(1_003, 0)));

        let meta = FileMeta {
            kind: EntryKind::File,
            mode: 0o644,
            mtime_secs: 1_000,
            mtime_nanos: 500,
            size: 10,
            hash: [1; 32],
            content: Content::Empty,
            target: None,
        };
        let record = stat.record(meta, false);
        assert!(reusable(&record, &stat));
        assert!(!reusable(
            &ScanRecord {
                racy: true,
                ..record.clone()
            },
            &stat
        ));
        for changed in [
            Stat { size: 11, ..stat },
            Stat {
                mtime: (1_000, 501),
                ..stat
            },
            Stat {
                ctime: (1_000, 901),
                ..stat
            },
            Stat { ino: 8, ..stat },
            Stat { dev: 2, ..stat },
        ] {
            assert!(!reusable(&record, &changed), "{changed:?}");
        }
    }
}
