//! Assembling a received file from verified chunks in a hidden temp file next to its target
//! ([`Assembly`]), hashing the whole file in order as chunks arrive ([`InOrder`]) and publishing
//! it atomically and durably at commit.

use std::collections::HashMap;
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use tracing::{debug, warn};

use super::batch_folder::BatchFolder;
use super::dir_sync::sync_dir_shared;
use super::fs_flush::{flush, flush_everything};
use super::group_commit::Failure;
use super::incoming;
use super::ops::{check_expect, parent_of, publish, system_time};
use super::path::{checked_path, ensure_parents, validate_rel_path};
use super::{Expect, MODE_MASK, TEMP_ID_BYTES, WriteError, hex, io_error, is_disk_full, sys};
use crate::folder::model::{CHUNK_MAX, CheckedChunk, ChunkRef, Hash, TEMP_PREFIX};

/// Mode of a temp file while it is assembled: private until committed with its real mode.
/// Every temp file has these bits, whatever its final mode: we must be able to reopen it to
/// resume it.
const TEMP_MODE: u32 = 0o600;

/// How often [`Assembly::open`] retries when a sweep removes the temp file between its open and
/// its lock.
const OPEN_ATTEMPTS: usize = 3;

/// The name of the temp file a file at `rel` with content `file_hash` is assembled in:
/// [`TEMP_PREFIX`] and the hex of the first [`TEMP_ID_BYTES`] of BLAKE3(rel ‖ file_hash).
/// Deterministic, so an interrupted download finds its temp again; different for different
/// content, so a stale half-download of another version is never mistaken for this one. (`rel`
/// is followed by a fixed-size hash, so the concatenation is unambiguous.)
pub fn temp_name(rel: &str, file_hash: &Hash) -> String {
    let mut hasher = blake3::Hasher::new();
    hasher.update(rel.as_bytes());
    hasher.update(file_hash);
    format!(
        "{TEMP_PREFIX}{}",
        hex(&hasher.finalize().as_bytes()[..TEMP_ID_BYTES])
    )
}

/// Bytes written to a temp file after which its writeback is started, well before its fsync.
pub const WRITEBACK_EVERY: u64 = 8 * 1024 * 1024;

/// A file being assembled from verified chunks in a hidden temp file next to its target.
///
/// Dropping an assembly keeps the temp file so a later [`Assembly::open`] of the same (path,
/// content) resumes it; [`Assembly::discard`] removes it, and
/// [`sweep_temp_files`](super::sweep_temp_files) removes abandoned ones. While an assembly is
/// open it holds an exclusive `flock` on its temp file, so a second assembly of the same content
/// fails with [`WriteError::Busy`] and a sweep skips it.
#[derive(Debug)]
pub struct Assembly {
    /// The final path.
    target: PathBuf,
    /// The temp file's path, in the target's directory or the folder's incoming directory.
    temp: PathBuf,
    /// Whether the temp file is in the folder's incoming directory ([`Incoming`]).
    in_incoming: bool,
    /// The open, locked temp file.
    file: File,
    /// The device of the file system it is on.
    dev: u64,
    /// Its permission bits when opened: `seal` sets the final mode only if they differ.
    mode_when_opened: u32,
    /// The file's size.
    size: u64,
    /// BLAKE3 of the whole content.
    file_hash: Hash,
    /// The chunks, in file order.
    chunks: Vec<ChunkRef>,
    /// Each chunk's offset in the file.
    offsets: Vec<u64>,
    /// Whether each chunk is known to be in the temp file with the right hash.
    done: Vec<bool>,
    /// Set when an error removed the temp file; every later call fails.
    abandoned: bool,
    /// Bytes written since writeback was last started.
    unflushed: u64,
    /// The whole-file hash, fed as chunks are written in file order; `None` once that is not
    /// possible (resumed file, chunks too far out of order), and then the commit reads back.
    /// Boxed: a hasher is about 2 KB, which every move of an assembly (a batch of small files
    /// moves each several times) would copy.
    in_order: Option<Box<InOrder>>,
}

/// Most bytes of chunks that arrived ahead of their turn kept for [`InOrder`].
const MAX_EARLY_BYTES: usize = 16 * 1024 * 1024;

/// Hashes a file's chunks in order as they are written, keeping the few that arrive early.
/// This is the same check as reading the file back after the last chunk (which would read the
/// same page cache), without a second pass over it.
#[derive(Debug)]
struct InOrder {
    hasher: blake3::Hasher,
    next: usize,
    early: std::collections::BTreeMap<usize, Vec<u8>>,
    early_bytes: usize,
}

impl InOrder {
    /// Takes chunk `index`; false if it can no longer keep up.
    fn take(&mut self, index: usize, bytes: &[u8]) -> bool {
        if index < self.next || self.early.contains_key(&index) {
            // Written again: the same verified bytes, already counted.
            return true;
        }
        if index > self.next {
            if self.early_bytes + bytes.len() > MAX_EARLY_BYTES {
                return false;
            }
            self.early_bytes += bytes.len();
            self.early.insert(index, bytes.to_vec());
            return true;
        }
        self.hasher.update(bytes);
        self.next += 1;
        while let Some(early) = self.early.remove(&self.next) {
            self.early_bytes -= early.len();
            self.hasher.update(&early);
            self.next += 1;
        }
        true
    }
}

impl Assembly {
    /// Starts (or resumes) assembling the file `rel` of `size` bytes, BLAKE3 `file_hash`, cut into
    /// `chunks`. Creates missing parent directories, opens the temp file, marks the chunks an
    /// existing temp file already holds (verified by hash) as done, and reserves the file's full
    /// size so that a full disk shows up here, before anything is downloaded.
    pub fn open(
        root: &Path,
        rel: &str,
        size: u64,
        file_hash: Hash,
        chunks: &[ChunkRef],
    ) -> Result<Assembly, WriteError> {
        let target = checked_path(root, rel)?;
        // The chunk list is checked before any directory is made for it.
        let offsets = chunk_offsets(&target, size, chunks)?;
        ensure_parents(root, rel)?;
        let temp = Temp::new(target, temp_name(rel, &file_hash), None);
        let mut assembly = Self::open_temp(temp, size, file_hash, chunks, offsets, TEMP_MODE)?;
        assembly.reserve()?;
        Ok(assembly)
    }

    /// [`Assembly::open`] without reserving space, for a batch of small files whose every chunk
    /// is in hand and written right away: a full disk then fails the first write just as early,
    /// and the reservation (a `fallocate`, a metadata update) cost 3% of the CPU of receiving
    /// many small files. A new temp file is created with `mode & MODE_MASK` (plus owner read and
    /// write, to resume it), so that [`Assembly::seal`] with the same mode has nothing to change
    /// (a `chmod` per received small file, under the umask's usual 022); the caller writes it
    /// right away, so it is not readable any longer than the finished file will be. The temp
    /// file is made in the folder's incoming directory when the target's directory is on its
    /// file system; the folder's root and the file's directories are checked once per batch
    /// ([`BatchFolder`]).
    pub fn open_in_batch(
        folder: &mut BatchFolder,
        rel: &str,
        size: u64,
        file_hash: Hash,
        chunks: &[ChunkRef],
        mode: u32,
    ) -> Result<Assembly, WriteError> {
        validate_rel_path(rel)?;
        folder.check_root()?;
        let target = folder.root().join(rel);
        // The chunk list is checked before any directory is made for it.
        let offsets = chunk_offsets(&target, size, chunks)?;
        let parent_dev = folder.ensure_parents(rel)?;
        let name = temp_name(rel, &file_hash);
        let in_incoming = folder
            .incoming()
            .and_then(|incoming| incoming.temp_path(parent_dev, &name));
        let temp = Temp::new(target, name, in_incoming);
        Self::open_temp(temp, size, file_hash, chunks, offsets, mode)
    }

    /// Opens (or resumes) the temp file and marks what it already holds.
    fn open_temp(
        temp: Temp,
        size: u64,
        file_hash: Hash,
        chunks: &[ChunkRef],
        offsets: Vec<u64>,
        mode: u32,
    ) -> Result<Assembly, WriteError> {
        let Temp {
            target,
            temp,
            in_incoming,
        } = temp;
        let create_mode = (mode & MODE_MASK) | TEMP_MODE;
        let (file, opened) = open_locked_temp(&target, &temp, create_mode)?;
        let mut assembly = Assembly {
            target,
            temp,
            in_incoming,
            file,
            dev: opened.dev(),
            mode_when_opened: opened.mode() & 0o7777,
            size,
            file_hash,
            chunks: chunks.to_vec(),
            offsets,
            done: vec![false; chunks.len()],
            abandoned: false,
            unflushed: 0,
            in_order: Some(Box::new(InOrder {
                hasher: blake3::Hasher::new(),
                next: 0,
                early: Default::default(),
                early_bytes: 0,
            })),
        };
        assembly.resume(opened.len())?;
        Ok(assembly)
    }

    /// Sets an extended attribute on the temp file, so that it arrives with the content.
    pub fn set_attribute(&self, name: &str, value: &[u8]) -> std::io::Result<()> {
        super::sys::set_attribute(&self.file, name, value)
    }

    /// Indices of the chunks still to write, in file order.
    pub fn missing(&self) -> Vec<usize> {
        (0..self.done.len()).filter(|&i| !self.done[i]).collect()
    }

    /// The final path this assembly commits to.
    pub fn target(&self) -> &Path {
        &self.target
    }

    /// Writes chunk `index` at its offset, after checking that `bytes` have the chunk's length and
    /// BLAKE3 (else [`WriteError::HashMismatch`] and nothing is written). Writing a chunk twice is
    /// harmless.
    pub fn write_chunk(&mut self, index: usize, bytes: &[u8]) -> Result<(), WriteError> {
        let chunk = self.chunk_at(index)?;
        if bytes.len() != chunk.len as usize || blake3::hash(bytes).as_bytes() != &chunk.hash {
            return Err(WriteError::HashMismatch {
                path: self.target.clone(),
                index,
            });
        }
        self.put(index, bytes)
    }

    /// [`Assembly::write_chunk`] without the hash check, for a local copy from a file whose
    /// stamp shows it unchanged since it was described (the scanner's own rule for not reading
    /// it again). The whole file is still checked against its hash before it is published, so a
    /// file that changed behind an unchanged stamp only fails this assembly.
    pub fn write_vouched(&mut self, index: usize, bytes: &[u8]) -> Result<(), WriteError> {
        let chunk = self.chunk_at(index)?;
        if bytes.len() != chunk.len as usize {
            return Err(WriteError::HashMismatch {
                path: self.target.clone(),
                index,
            });
        }
        self.put(index, bytes)
    }

    /// [`Assembly::write_chunk`] for bytes already checked against their hash: only compares
    /// that they are this index's chunk ([`WriteError::HashMismatch`] if not), without hashing
    /// them again.
    pub fn write_checked(
        &mut self,
        index: usize,
        checked: &CheckedChunk,
    ) -> Result<(), WriteError> {
        if self.chunk_at(index)? != *checked.chunk() {
            return Err(WriteError::HashMismatch {
                path: self.target.clone(),
                index,
            });
        }
        self.put(index, checked.bytes())
    }

    fn chunk_at(&self, index: usize) -> Result<ChunkRef, WriteError> {
        self.check_usable()?;
        self.chunks
            .get(index)
            .copied()
            .ok_or_else(|| WriteError::NoSuchChunk {
                path: self.target.clone(),
                index,
                count: self.chunks.len(),
            })
    }

    /// Writes chunk `index`, whose bytes are known to be right, and feeds the in-order hash.
    fn put(&mut self, index: usize, bytes: &[u8]) -> Result<(), WriteError> {
        if let Err(e) = self.file.write_all_at(bytes, self.offsets[index]) {
            return Err(self.fail("write chunk to", e));
        }
        self.done[index] = true;
        if let Some(in_order) = &mut self.in_order
            && !in_order.take(index, bytes)
        {
            self.in_order = None;
        }
        self.unflushed += bytes.len() as u64;
        if self.unflushed >= WRITEBACK_EVERY {
            self.unflushed = 0;
            sys::start_writeback(&self.file);
        }
        Ok(())
    }

    /// Publishes the assembled file at its target, atomically and durably.
    ///
    /// [`Assembly::seal`]s it, fsyncs the temp file (shared with other writers flushing on the
    /// same file system, `fs_flush`), then [`Sealed::publish`]es it and fsyncs its directory
    /// ([`Sealed::flush_name`]). Writers of many files at once do the same steps with one flush for all
    /// their contents and one for all their names ([`flush_contents`], [`flush_names`]).
    pub fn commit(
        self,
        expect_current: Expect,
        mode: u32,
        mtime: (i64, u32),
    ) -> Result<(), WriteError> {
        let mut sealed = self.seal(mode, mtime)?;
        sealed.flush_content()?;
        sealed.publish(expect_current)?;
        sealed.flush_name()
    }

    /// Checks the assembled content and gives it its mode and mtime: what is left is to make it
    /// durable and to publish it.
    ///
    /// Checks that every chunk was written, then checks the whole file's BLAKE3 against the file
    /// hash (hashed in order as chunks were written, or else read back: chunks arrive in any
    /// order and some were already on disk from an earlier attempt; it costs one pass over data
    /// that is still in the page cache). A mismatch removes the temp file. Then sets
    /// `mode & MODE_MASK` and the mtime on the temp file.
    pub fn seal(mut self, mode: u32, mtime: (i64, u32)) -> Result<Sealed, WriteError> {
        self.check_usable()?;
        let missing = self.done.iter().filter(|d| !**d).count();
        if missing > 0 {
            return Err(WriteError::Incomplete {
                path: self.target.clone(),
                missing,
            });
        }
        let modified = system_time(&self.target, mtime)?;
        if !self.whole_file_matches()? {
            self.discard_temp();
            return Err(WriteError::FileHashMismatch {
                path: self.target.clone(),
            });
        }
        let times = FileTimes::new().set_modified(modified);
        let mode = mode & MODE_MASK;
        let set_mode = || match self.mode_when_opened == mode {
            // Created with it (and nobody else writes our locked temp file).
            true => Ok(()),
            false => self.file.set_permissions(Permissions::from_mode(mode)),
        };
        if let Err(e) = set_mode().and_then(|()| self.file.set_times(times)) {
            return Err(self.fail("set mode and mtime of", e));
        }
        Ok(Sealed { assembly: self })
    }

    /// Gives up on this file: removes the temp file (for when the version will never be wanted
    /// again; a plain drop keeps it for resuming).
    pub fn discard(mut self) {
        self.discard_temp();
    }

    fn check_usable(&self) -> Result<(), WriteError> {
        if self.abandoned {
            return Err(WriteError::Abandoned {
                path: self.target.clone(),
            });
        }
        Ok(())
    }

    /// Turns an I/O error on the temp file into a [`WriteError`]; a full disk also removes the
    /// temp file to give its space back.
    fn fail(&mut self, action: &'static str, e: io::Error) -> WriteError {
        if is_disk_full(&e) {
            self.discard_temp();
            WriteError::DiskFull {
                path: self.target.clone(),
                source: e,
            }
        } else {
            io_error(action, &self.temp, e)
        }
    }

    fn discard_temp(&mut self) {
        self.abandoned = true;
        if let Err(e) = fs::remove_file(&self.temp)
            && e.kind() != io::ErrorKind::NotFound
        {
            warn!(path = %self.temp.display(), error = %e, "cannot remove temp file");
        }
    }

    /// Marks as done the chunks an existing temp file (`existing` bytes long when opened)
    /// already holds with the right hash.
    fn resume(&mut self, existing: u64) -> Result<(), WriteError> {
        if existing == 0 {
            return Ok(());
        }
        // Chunks already on disk were never seen by the in-order hasher.
        self.in_order = None;
        if existing > self.size
            && let Err(e) = self.file.set_len(self.size)
        {
            return Err(self.fail("truncate", e));
        }
        let mut buf = vec![0u8; CHUNK_MAX as usize];
        for (i, chunk) in self.chunks.iter().enumerate() {
            let offset = self.offsets[i];
            if offset + u64::from(chunk.len) > existing {
                break;
            }
            let buf = &mut buf[..chunk.len as usize];
            if let Err(e) = self.file.read_exact_at(buf, offset) {
                return Err(io_error("read back", &self.temp, e));
            }
            self.done[i] = blake3::hash(buf).as_bytes() == &chunk.hash;
        }
        debug!(
            path = %self.target.display(),
            have = self.done.iter().filter(|d| **d).count(),
            of = self.done.len(),
            "resuming assembly"
        );
        Ok(())
    }

    /// Reserves the whole size now, so that a full disk fails here and not halfway through.
    fn reserve(&mut self) -> Result<(), WriteError> {
        if let Err(e) = sys::allocate(&self.file, self.size) {
            return Err(self.fail("reserve space for", e));
        }
        Ok(())
    }

    fn whole_file_matches(&mut self) -> Result<bool, WriteError> {
        if let Some(in_order) = self.in_order.take()
            && in_order.next == self.chunks.len()
        {
            debug!(path = %self.target.display(), "whole file hashed as written");
            return match self.file.metadata() {
                Ok(meta) => Ok(meta.len() == self.size
                    && in_order.hasher.finalize().as_bytes() == &self.file_hash),
                Err(e) => Err(io_error("inspect", &self.temp, e)),
            };
        }
        let mut hasher = blake3::Hasher::new();
        let mut reader = &self.file;
        let result = reader
            .seek(SeekFrom::Start(0))
            .and_then(|_| hasher.update_reader(reader.take(self.size)).map(|_| ()))
            .and_then(|()| self.file.metadata());
        match result {
            Ok(meta) => {
                Ok(meta.len() == self.size && hasher.finalize().as_bytes() == &self.file_hash)
            }
            Err(e) => Err(io_error("read back", &self.temp, e)),
        }
    }
}

/// An assembled file whose content is checked and carries its mode and mtime
/// ([`Assembly::seal`]), not yet published. Its content must be made durable
/// ([`flush_contents`]) before it is published ([`Sealed::publish`]), and its name after
/// ([`flush_names`]). Dropping it keeps the complete temp file for a retry.
#[derive(Debug)]
pub struct Sealed {
    assembly: Assembly,
}

impl Sealed {
    /// The final path.
    pub fn target(&self) -> &Path {
        &self.assembly.target
    }

    /// Makes this file's content durable: its own fsync, shared with other writers flushing on
    /// the same file system at once (`fs_flush`).
    pub fn flush_content(&mut self) -> Result<(), WriteError> {
        let file = &self.assembly.file;
        let result = flush(file, self.assembly.dev, || file.sync_all());
        result.map_err(|e| self.assembly.fail("fsync", e))
    }

    /// Renames the temp file over the target, after checking that the target is still as
    /// `expect_current` says (else [`WriteError::Conflict`], and the complete temp file is kept
    /// for a retry). A directory at the target is always a conflict. The content must already
    /// be durable.
    pub fn publish(&mut self, expect_current: Expect) -> Result<(), WriteError> {
        // Checked last, after the slow steps, to keep the race with local writers short.
        check_expect(&self.assembly.target, expect_current)?;
        let mut published = publish(&self.assembly.temp, &self.assembly.target, expect_current);
        if self.assembly.in_incoming && published.as_ref().is_err_and(is_across_mounts) {
            incoming::mark_unusable(&self.assembly.temp);
            self.move_beside_target()?;
            published = publish(&self.assembly.temp, &self.assembly.target, expect_current);
        }
        if let Err(e) = published {
            if matches!(e, WriteError::DiskFull { .. }) {
                self.assembly.discard_temp();
            }
            return Err(e);
        }
        Ok(())
    }

    /// Moves the sealed temp file from the incoming directory to beside its target, for a
    /// target the incoming directory cannot be renamed to (another mount of the same file
    /// system): a copy of its content, mode, mtime and extended attributes (the received mark),
    /// made durable by its own fsync before the original is removed. Rare, so not batched.
    fn move_beside_target(&mut self) -> Result<(), WriteError> {
        let assembly = &mut self.assembly;
        let Some(name) = assembly.temp.file_name() else {
            return Err(io_error(
                "name temp file",
                &assembly.temp,
                io::Error::other("no file name"),
            ));
        };
        let beside = assembly.target.with_file_name(name);
        let sealed = assembly
            .file
            .metadata()
            .map_err(|e| io_error("inspect", &assembly.temp, e))?;
        let (mut copy, found) = open_locked_temp(&assembly.target, &beside, TEMP_MODE)?;
        let copied = (|| {
            if found.len() > 0 {
                copy.set_len(0)?;
            }
            let mut source = &assembly.file;
            source.seek(SeekFrom::Start(0))?;
            io::copy(&mut source, &mut copy)?;
            sys::copy_attributes(&assembly.file, &copy)?;
            copy.set_permissions(Permissions::from_mode(sealed.mode() & MODE_MASK))?;
            copy.set_times(FileTimes::new().set_modified(sealed.modified()?))?;
            copy.sync_all()
        })();
        if let Err(e) = copied {
            let _ = fs::remove_file(&beside);
            return Err(match is_disk_full(&e) {
                true => WriteError::DiskFull {
                    path: assembly.target.clone(),
                    source: e,
                },
                false => io_error("copy temp file to", &beside, e),
            });
        }
        if let Err(e) = fs::remove_file(&assembly.temp) {
            warn!(path = %assembly.temp.display(), error = %e, "cannot remove temp file");
        }
        assembly.temp = beside;
        assembly.in_incoming = false;
        assembly.dev = found.dev();
        assembly.file = copy;
        Ok(())
    }

    /// The written file's inode as it is now: once published, what is at the target unless
    /// something replaced it since (then the next scan sees another inode there, a local
    /// change, where a look at the path would have taken that file for ours).
    pub fn stat(&self) -> Result<fs::Metadata, WriteError> {
        self.assembly
            .file
            .metadata()
            .map_err(|e| io_error("inspect", &self.assembly.target, e))
    }

    /// Makes the published name durable: an fsync of its directory, shared with the writers
    /// finishing in it and with those flushing on the same file system.
    pub fn flush_name(&mut self) -> Result<(), WriteError> {
        let parent = parent_of(&self.assembly.target);
        flush(&self.assembly.file, self.assembly.dev, || {
            sync_dir_shared(parent)
        })
        .map_err(|e| io_error("fsync directory", parent, e))
    }
}

/// Makes the contents of `files` durable before they are published: a file alone on its file
/// system with its own fsync ([`Assembly::commit`]'s), the others with one `syncfs` per file
/// system. Each file's outcome, in order.
pub fn flush_contents(files: &mut [Sealed]) -> Vec<Result<(), WriteError>> {
    flush_per_device(files, Sealed::flush_content, |sealed, e| {
        sealed.assembly.fail("fsync", e)
    })
}

/// Makes the names of published `files` durable, as [`flush_contents`] does their contents
/// (alone: an fsync of the file's directory).
pub fn flush_names(files: &mut [Sealed]) -> Vec<Result<(), WriteError>> {
    flush_per_device(files, Sealed::flush_name, |sealed, e| {
        io_error("sync the file system of", sealed.target(), e)
    })
}

/// Runs `alone` for each file that is the only one on its file system in `files`, and one
/// `syncfs` for each file system holding several, whose failure is each of theirs (`failed`).
fn flush_per_device(
    files: &mut [Sealed],
    alone: fn(&mut Sealed) -> Result<(), WriteError>,
    failed: fn(&mut Sealed, io::Error) -> WriteError,
) -> Vec<Result<(), WriteError>> {
    let mut on_device: HashMap<u64, usize> = HashMap::new();
    for file in files.iter() {
        *on_device.entry(file.assembly.dev).or_default() += 1;
    }
    let mut flushed: HashMap<u64, Result<(), Failure>> = HashMap::new();
    files
        .iter_mut()
        .map(|file| {
            if on_device[&file.assembly.dev] == 1 {
                return alone(file);
            }
            let outcome = flushed.entry(file.assembly.dev).or_insert_with(|| {
                flush_everything(&file.assembly.file, file.assembly.dev)
                    .map_err(|e| Failure::of(&e))
            });
            match outcome {
                Ok(()) => Ok(()),
                Err(failure) => {
                    let e = failure.error();
                    Err(failed(file, e))
                }
            }
        })
        .collect()
}

/// Whether a rename failed because its two paths are on different mounts.
fn is_across_mounts(e: &WriteError) -> bool {
    matches!(e, WriteError::Io { source, .. } if sys::is_errno(source, rustix::io::Errno::XDEV))
}

/// Each chunk's offset, after checking that the chunks are non-empty, at most [`CHUNK_MAX`] long,
/// and add up to `size`.
fn chunk_offsets(target: &Path, size: u64, chunks: &[ChunkRef]) -> Result<Vec<u64>, WriteError> {
    let bad = |reason| {
        Err(WriteError::BadChunkList {
            path: target.to_path_buf(),
            reason,
        })
    };
    if i64::try_from(size).is_err() {
        return bad("file too large");
    }
    let mut offsets = Vec::with_capacity(chunks.len());
    let mut offset = 0u64;
    for chunk in chunks {
        if chunk.len == 0 || chunk.len > CHUNK_MAX {
            return bad("chunk length out of range");
        }
        offsets.push(offset);
        offset += u64::from(chunk.len);
        if offset > size {
            return bad("chunks longer than the file");
        }
    }
    if offset != size {
        return bad("chunks shorter than the file");
    }
    Ok(offsets)
}

/// Opens (creating if needed) and exclusively locks a temp file, making sure the locked file is
/// still the one at the path (a sweep may have removed it between our open and our lock).
/// Returns it with what it was when locked (its length: what an earlier attempt left).
/// Where an assembly's temp file goes.
struct Temp {
    target: PathBuf,
    temp: PathBuf,
    in_incoming: bool,
}

impl Temp {
    /// The temp file `name` in the incoming directory (`in_incoming`), or else beside `target`.
    fn new(target: PathBuf, name: String, in_incoming: Option<PathBuf>) -> Temp {
        match in_incoming {
            Some(temp) => Temp {
                target,
                temp,
                in_incoming: true,
            },
            None => Temp {
                temp: target.with_file_name(name),
                target,
                in_incoming: false,
            },
        }
    }
}

fn open_locked_temp(
    target: &Path,
    temp: &Path,
    create_mode: u32,
) -> Result<(File, fs::Metadata), WriteError> {
    for _ in 0..OPEN_ATTEMPTS {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .mode(create_mode)
            .custom_flags(sys::O_NOFOLLOW)
            .open(temp)
            .map_err(|e| match is_disk_full(&e) {
                true => WriteError::DiskFull {
                    path: target.to_path_buf(),
                    source: e,
                },
                false => io_error("open temp file", temp, e),
            })?;
        if !sys::try_lock(&file).map_err(|e| io_error("lock", temp, e))? {
            return Err(WriteError::Busy {
                path: target.to_path_buf(),
            });
        }
        let ours = file.metadata().map_err(|e| io_error("inspect", temp, e))?;
        if !ours.is_file() {
            return Err(io_error(
                "open temp file",
                temp,
                io::Error::other("not a regular file"),
            ));
        }
        match fs::symlink_metadata(temp) {
            Ok(now) if now.ino() == ours.ino() && now.dev() == ours.dev() => {
                return Ok((file, ours));
            }
            _ => continue,
        }
    }
    Err(WriteError::Busy {
        path: target.to_path_buf(),
    })
}

#[cfg(test)]
mod tests;
