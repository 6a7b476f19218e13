//! Received small files written in batches: a writer thread takes every file that is ready (up
//! to [`BATCH_FILES`]), writes and checks them all, makes all their contents durable with one
//! flush, publishes them, and makes all their names durable with one more.
//!
//! Written one per blocking task instead (up to 64 at once, sharing their flushes through
//! `write::fs_flush`), each file cost a thread hand-off to start, two waits on a shared flush
//! and a wake-up of every other waiter after each: on 100,000 files of 1 KiB, those wake-ups
//! were about a sixth of the receiving daemon's CPU, more than the flushes themselves. The
//! guarantees are those of one file's commit: a file's content is durable before its name
//! appears, and its name is durable before it is reported written. A file alone in its batch
//! still gets its own fsyncs, so a single edit never waits for unrelated dirty data on its file
//! system.

use std::collections::VecDeque;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::oneshot;

use super::error::{MaterialiseError, WriteFailure};
use super::materialise::{mark_received, publish_keeping_old, record_from};
use super::model::{CheckedChunk, ChunkRef, FileMeta};
use super::scan::ScanRecord;
use super::status::Counters;
use super::write::{self, Expect, Sealed, WriteError};

/// Most files one writer takes at once, across every share of the daemon. Each holds an open
/// temp file until its batch is done.
pub const BATCH_FILES: usize = 64;

/// Writer threads at most: while one waits on the disk for its flushes, another writes the
/// next batch.
pub const BATCH_WRITERS: usize = 2;

/// A small file whose every chunk is in hand, to be written at its path.
pub(super) struct SmallFile {
    /// The share's folder.
    pub(super) root: PathBuf,
    /// The file's path in it.
    pub(super) rel: String,
    /// What the file becomes.
    pub(super) meta: FileMeta,
    /// Its chunks, in order.
    pub(super) chunks: Vec<ChunkRef>,
    /// Each chunk's checked bytes (`None` only if it could not be had: the file then fails as
    /// incomplete).
    pub(super) contents: Vec<Option<CheckedChunk>>,
    /// The mark of a received file ([`super::received`]), if the share uses one.
    pub(super) mark: Option<Vec<u8>>,
    /// Whether the file it replaces goes to the trash first.
    pub(super) keep_old: bool,
    /// What must be at the path for the write to go ahead.
    pub(super) expect: Expect,
    /// The share's counters (for the once-per-folder warning about marks).
    pub(super) counters: Arc<Counters>,
}

/// A small file written, durably.
pub(super) struct Written {
    /// Where the file it replaced was kept, if it was.
    pub(super) kept: Option<String>,
    /// What is on disk now.
    pub(super) record: ScanRecord,
}

/// Writes `file` in the next batch and returns once it is durable at its path.
pub(super) async fn write(file: SmallFile) -> Result<Written, WriteFailure> {
    let (reply, written) = oneshot::channel();
    let start_writer = {
        let mut queue = lock();
        queue.waiting.push_back(Waiting { file, reply });
        let start = queue.writers < BATCH_WRITERS;
        if start {
            queue.writers += 1;
        }
        start
    };
    if start_writer {
        let writer = Writer { left: false };
        tokio::task::spawn_blocking(move || writer.write_while_waiting());
    }
    match written.await {
        Ok(result) => result.map_err(WriteFailure::from),
        Err(_) => Err(WriteFailure::Failed(MaterialiseError::WriterStopped)),
    }
}

/// The files waiting for a writer, and the writers running.
struct Queue {
    waiting: VecDeque<Waiting>,
    writers: usize,
}

/// A lock, not an actor: writers are blocking threads that take what is waiting and leave when
/// nothing is. It is held only to add or take files, never across I/O.
static QUEUE: Mutex<Queue> = Mutex::new(Queue {
    waiting: VecDeque::new(),
    writers: 0,
});

fn lock() -> MutexGuard<'static, Queue> {
    // Every update under the lock is a push, a drain or a count: consistent even after a panic.
    QUEUE.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A file waiting, with where its outcome goes.
struct Waiting {
    file: SmallFile,
    reply: oneshot::Sender<Result<Written, WriteError>>,
}

/// A running writer, counted in [`Queue::writers`] until it leaves (or is dropped without
/// running, when the runtime is shutting down).
struct Writer {
    left: bool,
}

impl Writer {
    fn write_while_waiting(mut self) {
        loop {
            let batch: Vec<Waiting> = {
                let mut queue = lock();
                if queue.waiting.is_empty() {
                    // Under the lock: a file added after this finds one writer fewer, and
                    // starts one.
                    queue.writers -= 1;
                    self.left = true;
                    return;
                }
                let take = queue.waiting.len().min(BATCH_FILES);
                queue.waiting.drain(..take).collect()
            };
            // A panic fails this batch's files (their replies are dropped), not the writer.
            let _ = catch_unwind(AssertUnwindSafe(|| write_batch(batch)));
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        if !self.left {
            lock().writers -= 1;
        }
    }
}

/// A file of the batch still being written, with the file it replaced once kept.
struct InBatch {
    waiting: Waiting,
    kept: Option<String>,
}

impl InBatch {
    fn answer(self, result: Result<Written, WriteError>) {
        // The download may have been cancelled: nobody is waiting then.
        let _ = self.waiting.reply.send(result);
    }
}

fn write_batch(batch: Vec<Waiting>) {
    let mut files = Vec::with_capacity(batch.len());
    let mut sealed = Vec::with_capacity(batch.len());
    // Each folder, its incoming directory and the files' directories are looked at once per
    // batch, not per file.
    let mut folders: Vec<write::BatchFolder> = Vec::new();
    for mut waiting in batch {
        let root = &waiting.file.root;
        let place = match folders.iter().position(|folder| folder.root() == root) {
            Some(at) => at,
            None => {
                folders.push(write::BatchFolder::new(root));
                folders.len() - 1
            }
        };
        match fill_and_seal(&mut waiting.file, &mut folders[place]) {
            Ok(one) => {
                files.push(InBatch {
                    waiting,
                    kept: None,
                });
                sealed.push(one);
            }
            Err(e) => InBatch {
                waiting,
                kept: None,
            }
            .answer(Err(e)),
        }
    }
    let outcomes = write::flush_contents(&mut sealed);
    let (mut files, mut sealed) = answer_failed(files, sealed, outcomes);
    let outcomes = files
        .iter_mut()
        .zip(&mut sealed)
        .map(|(in_batch, sealed)| {
            let file = &in_batch.waiting.file;
            let kept =
                publish_keeping_old(&file.root, &file.rel, sealed, file.keep_old, file.expect)?;
            in_batch.kept = kept;
            Ok(())
        })
        .collect();
    let (files, mut sealed) = answer_failed(files, sealed, outcomes);
    let outcomes = write::flush_names(&mut sealed);
    let (files, sealed) = answer_failed(files, sealed, outcomes);
    for (in_batch, sealed) in files.into_iter().zip(sealed) {
        let file = &in_batch.waiting.file;
        // From the file still open, not the path: no lookup of the path's every directory,
        // and a file put there by someone else since the rename is not recorded as ours.
        let record = sealed
            .stat()
            .map(|stat| record_from(&stat, file.meta.clone()));
        let kept = in_batch.kept.clone();
        in_batch.answer(record.map(|record| Written { kept, record }));
    }
}

/// Opens the file's temp file (in the folder's incoming directory, if it has one that can be
/// used), writes its chunks and seals it; its bytes are dropped once written.
fn fill_and_seal(
    file: &mut SmallFile,
    folder: &mut write::BatchFolder,
) -> Result<Sealed, WriteError> {
    let meta = &file.meta;
    let mut assembly = write::Assembly::open_in_batch(
        folder,
        &file.rel,
        meta.size,
        meta.hash,
        &file.chunks,
        meta.mode,
    )?;
    let contents = std::mem::take(&mut file.contents);
    for index in assembly.missing() {
        match &contents[index] {
            Some(checked) => assembly.write_checked(index, checked)?,
            // `seal` reports the file as incomplete.
            None => break,
        }
    }
    drop(contents);
    mark_received(&assembly, file.mark.as_deref(), &file.rel, &file.counters);
    assembly.seal(meta.mode, (meta.mtime_secs, meta.mtime_nanos))
}

/// Answers the files whose step failed, and keeps the others for the next step.
fn answer_failed(
    files: Vec<InBatch>,
    sealed: Vec<Sealed>,
    outcomes: Vec<Result<(), WriteError>>,
) -> (Vec<InBatch>, Vec<Sealed>) {
    let mut going_on = (
        Vec::with_capacity(files.len()),
        Vec::with_capacity(files.len()),
    );
    for ((file, sealed), outcome) in files.into_iter().zip(sealed).zip(outcomes) {
        match outcome {
            Ok(()) => {
                going_on.0.push(file);
                going_on.1.push(sealed);
            }
            Err(e) => file.answer(Err(e)),
        }
    }
    going_on
}

#[cfg(test)]
mod tests;
