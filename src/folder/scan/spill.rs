//! The files a scan read, past [`SPILL_FROM`] of them, kept in a temporary file instead of in
//! memory. The first scan of a big tree reads every file, and held until the scan ended their
//! descriptions took ~300 bytes a file (most of a 10^6-file first index's peak). Past the
//! threshold each is written out (CBOR, one after another) and only its path's 16-byte digest
//! stays, for telling what is gone; the folder reads them back once, in batches, as it writes
//! them to its store.
//!
//! The file has no name (`O_TMPFILE` where the file system has it): nothing is left behind by a
//! crash, and nothing appears in the folder. It lives in the folder's marker directory, on the
//! folder's own disk, not in `/tmp`, which is often memory.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::fs::File;
use std::io::{self, BufReader, Seek, SeekFrom, Write};
use std::path::Path;

use super::walk::ancestors_or_self;
use super::{ScanRecord, Warnings};
use crate::folder::path_digest::{DigestList, DigestSet, PathDigest};

/// Files a scan keeps in memory (with its directories and symlinks, which always stay); the
/// files it reads beyond go to its spill file.
pub const SPILL_FROM: usize = 16_384;

/// Entries written to the file at once: held until written, so that a failed write (a full
/// disk) gives them back to be kept in memory instead of losing them.
const WRITE_BATCH: usize = 256;

/// Where a scan keeps the files it reads: in memory up to [`SPILL_FROM`], then in a spill file
/// when it was given a directory for one.
pub(super) struct Spilling<'a> {
    dir: Option<&'a Path>,
    file: Option<File>,
    /// Not written yet.
    batch: Vec<(String, ScanRecord)>,
    encoded: Vec<u8>,
    digests: DigestList,
    count: u64,
}

impl<'a> Spilling<'a> {
    /// Spills into a new file in `dir`, if given one.
    pub(super) fn new(dir: Option<&'a Path>) -> Self {
        Spilling {
            dir,
            file: None,
            batch: Vec::new(),
            encoded: Vec::new(),
            digests: DigestList::default(),
            count: 0,
        }
    }

    /// Keeps one entry the scan read: in `memory`, or in the spill file once `memory` holds
    /// [`SPILL_FROM`]. If the file cannot be written, what it was to hold stays in memory.
    pub(super) fn put(
        &mut self,
        rel: String,
        record: ScanRecord,
        memory: &mut BTreeMap<String, ScanRecord>,
        warnings: &mut Warnings,
    ) {
        let Some(dir) = self.dir.filter(|_| memory.len() >= SPILL_FROM) else {
            memory.insert(rel, record);
            return;
        };
        self.digests.push(PathDigest::of(&rel));
        self.batch.push((rel, record));
        if self.batch.len() >= WRITE_BATCH
            && let Err(e) = self.write_batch(dir)
        {
            unwritable(warnings, dir, &e);
            self.keep_batch_in(memory);
            self.dir = None;
        }
    }

    fn write_batch(&mut self, dir: &Path) -> io::Result<()> {
        self.encoded.clear();
        for entry in &self.batch {
            ciborium::into_writer(entry, &mut self.encoded)
                .map_err(|e| io::Error::other(e.to_string()))?;
        }
        let file = match &mut self.file {
            Some(file) => file,
            None => self.file.insert(tempfile::tempfile_in(dir)?),
        };
        file.write_all(&self.encoded)?;
        self.count += self.batch.len() as u64;
        self.batch.clear();
        Ok(())
    }

    fn keep_batch_in(&mut self, memory: &mut BTreeMap<String, ScanRecord>) {
        // The batch's digests are the last ones pushed.
        self.digests.forget_last(self.batch.len());
        for (rel, record) in self.batch.drain(..) {
            memory.insert(rel, record);
        }
    }

    /// Ends the writing: the spilled entries, if there are any. Those under `unknown` paths
    /// (unknown this time, as in [`super::ScanOutput::unstable`]) will be passed over when
    /// read. If the last ones cannot be written, they join `memory`.
    pub(super) fn finish(
        mut self,
        unknown: &BTreeSet<String>,
        memory: &mut BTreeMap<String, ScanRecord>,
        warnings: &mut Warnings,
    ) -> Option<SpilledEntries> {
        if let Some(dir) = self.dir
            && !self.batch.is_empty()
            && let Err(e) = self.write_batch(dir)
        {
            unwritable(warnings, dir, &e);
        }
        self.keep_batch_in(memory);
        let file = self.file.filter(|_| self.count > 0)?;
        Some(SpilledEntries {
            file,
            digests: self.digests.into_set(),
            count: self.count,
            unknown: unknown.clone(),
        })
    }
}

/// Says that the spill file in `dir` cannot be written (what it was to hold stays in memory).
fn unwritable(warnings: &mut Warnings, dir: &Path, e: &io::Error) {
    warnings.push(format!(
        "cannot write this scan's entries to a temporary file in {}: {e}; they are kept in \
         memory",
        dir.display()
    ));
}

/// The entries a finished scan wrote to its spill file.
pub struct SpilledEntries {
    file: File,
    digests: DigestSet,
    count: u64,
    unknown: BTreeSet<String>,
}

impl fmt::Debug for SpilledEntries {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SpilledEntries({} entries)", self.count)
    }
}

impl SpilledEntries {
    /// How many entries were written (those under unknown paths are passed over when read).
    pub fn written(&self) -> u64 {
        self.count
    }

    /// Whether an entry for `rel` was written.
    pub fn contains(&self, rel: &str) -> bool {
        self.contains_digest(&PathDigest::of(rel))
    }

    pub(super) fn contains_digest(&self, digest: &PathDigest) -> bool {
        self.digests.contains(digest)
    }

    /// The entries, from the first, in the order they were written. Each call starts over.
    pub fn read(&self) -> io::Result<SpillReader<'_>> {
        let mut file = self.file.try_clone()?;
        file.seek(SeekFrom::Start(0))?;
        Ok(SpillReader {
            file: BufReader::new(file),
            left: self.count,
            unknown: &self.unknown,
        })
    }
}

/// Reads a spill file's entries back.
pub struct SpillReader<'a> {
    file: BufReader<File>,
    left: u64,
    unknown: &'a BTreeSet<String>,
}

impl Iterator for SpillReader<'_> {
    type Item = io::Result<(String, ScanRecord)>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.left == 0 {
                return None;
            }
            self.left -= 1;
            let entry: (String, ScanRecord) = match ciborium::from_reader(&mut self.file) {
                Ok(entry) => entry,
                Err(e) => {
                    // Nothing more can be read in step after a failure.
                    self.left = 0;
                    return Some(Err(match e {
                        ciborium::de::Error::Io(e) => e,
                        other => io::Error::new(io::ErrorKind::InvalidData, other.to_string()),
                    }));
                }
            };
            if ancestors_or_self(&entry.0).any(|a| self.unknown.contains(a)) {
                continue;
            }
            return Some(Ok(entry));
        }
    }
}
