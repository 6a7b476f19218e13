//! A file's content as the sync sees it: cut into content-defined chunks (FastCDC 2020, see
//! [`crate::folder::model`] for the sizes), each named by its BLAKE3 hash, plus the BLAKE3 of
//! the whole.
//!
//! The cut points are exactly those of fastcdc's `StreamCDC` with our sizes and its default
//! normalisation (level 1): peers and earlier versions must agree on them, or unchanged data
//! would look new. [`Cutter`] finds them with fastcdc's own `cut` over large blocks instead of
//! through `StreamCDC`, which copies every chunk out of a 256 KiB buffer and then shifts the
//! rest of that buffer down: about three copies of every byte, a third of the time it took to
//! describe a large file.
//!
//! A file read again after an edit is usually mostly the same. Given its [`Previous`] chunks,
//! the cutter checks whether the next chunk is the one that followed there before (by hashing
//! just those bytes) instead of running the rolling hash over them, and falls back to cutting
//! where it is not: the result is the same, at the cost of hashing alone.

use std::collections::HashMap;
use std::fs;
use std::io::{self, Read};
use std::path::Path;
use std::sync::mpsc;

use fastcdc::v2020::{Normalization, cut, select_masks};

use crate::folder::model::{CHUNK_AVG, CHUNK_MAX, CHUNK_MIN, ChunkRef, Hash};

/// A file's content as the sync sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileHash {
    /// Number of bytes read (the sum of the chunk lengths).
    pub size: u64,
    /// BLAKE3 of all the bytes.
    pub hash: Hash,
    /// The content-defined chunks, in order.
    pub chunks: Vec<ChunkRef>,
}

/// Reads the file at `path` (following a symlink, unlike the scanner) and describes its content.
/// Streams: memory stays within a few [`BLOCK`]s whatever the file's size, plus the chunk list
/// (36 bytes per ~64 KiB).
pub fn hash_file(path: &Path) -> io::Result<FileHash> {
    hash_reader(fs::File::open(path)?)
}

/// Cuts what `reader` yields into content-defined chunks and hashes them and the whole. The same
/// bytes always give the same result, whatever the reader's read sizes.
pub fn hash_reader<R: Read>(reader: R) -> io::Result<FileHash> {
    let mut cutter = Cutter::new(reader, BLOCK);
    let mut hashes = Hashes::default();
    let mut spare = Vec::new();
    while let Some(block) = cutter.next_block(spare)? {
        hashes.add_block(&block);
        spare = block.data;
    }
    Ok(hashes.finish())
}

/// Files of at least this many bytes are hashed by [`hash_reader_pipelined`].
pub const PIPELINE_FROM: u64 = 4 * 1024 * 1024;
/// Blocks read and cut but not yet hashed, at most, in [`hash_reader_pipelined`].
const PIPELINE_DEPTH: usize = 2;

/// [`hash_reader`] on two threads: this one reads and cuts, a helper hashes the chunks and the
/// whole, a block at a time. Small files are not worth the thread. A 256 MiB file in the page
/// cache took 0.23–0.24 s on one thread and 0.14–0.15 s like this (0.20 s through `StreamCDC`).
///
/// With the chunks of a `previous` version, chunks found unchanged are hashed (to know they
/// are) on this thread instead of cut, and the helper hashes only the whole.
pub fn hash_reader_pipelined<R: Read>(
    reader: R,
    previous: Option<&Previous>,
) -> io::Result<FileHash> {
    std::thread::scope(|scope| {
        let (cut_tx, cut_rx) = mpsc::sync_channel::<Block>(PIPELINE_DEPTH);
        // Hashed blocks come back to be filled again: a fresh 2 MiB buffer per block would
        // cost a page fault per 4 KiB.
        let (spare_tx, spare_rx) = mpsc::channel::<Vec<u8>>();
        let hasher = scope.spawn(move || {
            let mut hashes = Hashes::default();
            for block in cut_rx {
                hashes.add_block(&block);
                let _ = spare_tx.send(block.data);
            }
            hashes.finish()
        });
        let mut cutter = Cutter::new(reader, BLOCK);
        cutter.previous = previous;
        let mut buffers = 0;
        let failed = loop {
            // A few buffers go round; waiting for one is waiting for the hasher anyway.
            let spare = match spare_rx.try_recv() {
                Ok(spare) => spare,
                Err(_) if buffers < PIPELINE_DEPTH + 2 => {
                    buffers += 1;
                    Vec::new()
                }
                Err(_) => spare_rx.recv().unwrap_or_default(),
            };
            match cutter.next_block(spare) {
                // The hasher only stops early by panicking, which the join below reports.
                Ok(Some(block)) => {
                    if cut_tx.send(block).is_err() {
                        break None;
                    }
                }
                Ok(None) => break None,
                Err(e) => break Some(e),
            }
        };
        drop(cut_tx);
        let hashed = hasher
            .join()
            .map_err(|_| io::Error::other("the hashing thread panicked"))?;
        if previous.is_some() {
            tracing::debug!(
                found_again = cutter.reused,
                chunks = hashed.chunks.len(),
                "re-read with the previous chunk list"
            );
        }
        failed.map_or(Ok(hashed), Err)
    })
}

/// Bytes read at once by [`Cutter`]: large enough that carrying a block's uncut tail (under
/// [`CHUNK_MAX`]) over to the next costs little.
pub const BLOCK: usize = 2 * 1024 * 1024;

/// Bytes of the stream with the chunks that end in them.
struct Block {
    data: Vec<u8>,
    /// End offsets in `data` of its chunks, in order; the last is `data.len()`.
    ends: Vec<usize>,
    /// The chunks' hashes, when the cutter had to compute them (see [`Previous`]).
    hashes: Option<Vec<Hash>>,
}

/// The chunks of an earlier version of a file, to find again in the new one.
///
/// Taken to be how the cutter cut that version. A list cut some other way (a peer can send any
/// list that adds up) only costs speed and canonical cuts: every chunk reused is still checked
/// against the bytes, and only chunks of [`CHUNK_MIN`]..=[`CHUNK_MAX`] bytes are tried.
pub struct Previous {
    chunks: Vec<ChunkRef>,
    /// Where each chunk started.
    offsets: Vec<u64>,
    size: u64,
    /// Chunk hash → the index of (one of) its places.
    index: HashMap<Hash, usize>,
}

impl Previous {
    pub fn new(chunks: Vec<ChunkRef>) -> Self {
        let mut offsets = Vec::with_capacity(chunks.len());
        let mut size = 0;
        for chunk in &chunks {
            offsets.push(size);
            size += u64::from(chunk.len);
        }
        let index = chunks
            .iter()
            .enumerate()
            .map(|(i, c)| (c.hash, i))
            .collect();
        Previous {
            chunks,
            offsets,
            size,
            index,
        }
    }

    /// Chunk `i`, if at least [`CHUNK_MAX`] bytes followed its start. Only then was where it
    /// ended decided by its bytes alone: nearer the end, by how many bytes were left.
    fn chunk_decided_by_bytes(&self, i: usize) -> Option<&ChunkRef> {
        let chunk = self.chunks.get(i)?;
        let plausible = (CHUNK_MIN..=CHUNK_MAX).contains(&chunk.len);
        (plausible && self.size - self.offsets[i] >= u64::from(CHUNK_MAX)).then_some(chunk)
    }
}

impl Block {
    fn chunks(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(&self.ends)
            .map(|(start, &end)| &self.data[start..end])
    }
}

/// Reads a stream a block at a time and cuts it where `StreamCDC` would.
///
/// A cut depends only on the bytes from the previous cut up to [`CHUNK_MAX`] further (and on
/// how many there are, when fewer remain): so a block is cut as far as [`CHUNK_MAX`] bytes
/// remain after the last cut, or to its end at the end of the stream, and the rest is carried
/// into the next block.
struct Cutter<'p, R> {
    reader: R,
    block: usize,
    /// Bytes after the last cut, for the next block.
    carry: Vec<u8>,
    eof: bool,
    mask_s: u64,
    mask_l: u64,
    /// The earlier version's chunks, if known.
    previous: Option<&'p Previous>,
    /// The previous chunk that may come next: the one after the chunk just cut, if that was
    /// one of the previous version's (the first one at the start).
    expect: Option<usize>,
    /// Chunks found again without cutting.
    reused: usize,
}

impl<R: Read> Cutter<'_, R> {
    /// `block` must exceed [`CHUNK_MAX`], so every full block holds a cut.
    fn new(reader: R, block: usize) -> Self {
        assert!(
            block > CHUNK_MAX as usize,
            "a block must hold a whole chunk"
        );
        let (mask_s, mask_l) = select_masks(CHUNK_AVG as usize, Normalization::Level1);
        Cutter {
            reader,
            block,
            carry: Vec::new(),
            eof: false,
            mask_s,
            mask_l,
            previous: None,
            expect: Some(0),
            reused: 0,
        }
    }

    /// The next block of whole chunks, filled into `data` (whose contents are discarded), or
    /// `None` at the end of the stream.
    fn next_block(&mut self, mut data: Vec<u8>) -> io::Result<Option<Block>> {
        data.clear();
        data.reserve(self.block);
        data.extend_from_slice(&self.carry);
        self.carry.clear();
        while !self.eof && data.len() < self.block {
            let want = (self.block - data.len()) as u64;
            // `read_to_end` retries interrupted reads and fills spare capacity without zeroing
            // it first.
            if (&mut self.reader).take(want).read_to_end(&mut data)? == 0 {
                self.eof = true;
            }
        }
        if data.is_empty() {
            return Ok(None);
        }
        let (min, avg, max) = (CHUNK_MIN as usize, CHUNK_AVG as usize, CHUNK_MAX as usize);
        let mut ends = Vec::with_capacity(data.len() / avg + 1);
        let mut hashes = self.previous.map(|_| Vec::with_capacity(ends.capacity()));
        let mut start = 0;
        while start < data.len() && (self.eof || data.len() - start >= max) {
            if let (Some(previous), Some(hashes)) = (self.previous, hashes.as_mut())
                && let Some((i, chunk)) = self.found_again(previous, &data[start..])
            {
                start += chunk.len as usize;
                ends.push(start);
                hashes.push(chunk.hash);
                self.expect = Some(i + 1);
                self.reused += 1;
                continue;
            }
            let (_, len) = cut(
                &data[start..],
                min,
                avg,
                max,
                self.mask_s,
                self.mask_l,
                self.mask_s << 1,
                self.mask_l << 1,
            );
            if let (Some(previous), Some(hashes)) = (self.previous, hashes.as_mut()) {
                let hash = *blake3::hash(&data[start..start + len]).as_bytes();
                self.expect = previous.index.get(&hash).map(|i| i + 1);
                hashes.push(hash);
            }
            start += len;
            ends.push(start);
        }
        self.carry.extend_from_slice(&data[start..]);
        data.truncate(start);
        Ok(Some(Block { data, ends, hashes }))
    }

    /// The previous chunk expected next, with its index, if `rest` starts with it: the same
    /// bytes, after the same kind of cut, with at least [`CHUNK_MAX`] bytes ahead both then and
    /// now, make the same chunk.
    fn found_again(&self, previous: &Previous, rest: &[u8]) -> Option<(usize, ChunkRef)> {
        let i = self.expect?;
        let chunk = *previous.chunk_decided_by_bytes(i)?;
        let same = rest.len() >= CHUNK_MAX as usize
            && blake3::hash(&rest[..chunk.len as usize]).as_bytes() == &chunk.hash;
        same.then_some((i, chunk))
    }
}

/// The hashes of a file's chunks and of the whole, fed in file order.
#[derive(Default)]
struct Hashes {
    whole: blake3::Hasher,
    chunks: Vec<ChunkRef>,
    size: u64,
}

impl Hashes {
    fn add_block(&mut self, block: &Block) {
        self.whole.update(&block.data);
        self.size += block.data.len() as u64;
        let len = |data: &[u8]| u32::try_from(data.len()).expect("chunks are at most CHUNK_MAX");
        match &block.hashes {
            Some(hashes) => self
                .chunks
                .extend(block.chunks().zip(hashes).map(|(data, &hash)| ChunkRef {
                    hash,
                    len: len(data),
                })),
            None => self.chunks.extend(block.chunks().map(|data| ChunkRef {
                hash: *blake3::hash(data).as_bytes(),
                len: len(data),
            })),
        }
    }

    fn finish(self) -> FileHash {
        FileHash {
            size: self.size,
            hash: *self.whole.finalize().as_bytes(),
            chunks: self.chunks,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use fastcdc::v2020::StreamCDC;

    use super::*;
    use crate::folder::testdata::pseudo_random;

    /// Hands out at most `step` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            let n = buf.len().min(self.1).min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    /// What fastcdc's `StreamCDC` makes of `data`: the cut points every peer must agree on.
    fn reference(data: &[u8]) -> FileHash {
        let stream = StreamCDC::new(
            data,
            CHUNK_MIN as usize,
            CHUNK_AVG as usize,
            CHUNK_MAX as usize,
        );
        let chunks = stream
            .map(|chunk| {
                let chunk = chunk.unwrap();
                ChunkRef {
                    hash: *blake3::hash(&chunk.data).as_bytes(),
                    len: chunk.length as u32,
                }
            })
            .collect();
        FileHash {
            size: data.len() as u64,
            hash: *blake3::hash(data).as_bytes(),
            chunks,
        }
    }

    /// Every block size `Cutter` may be given gives `StreamCDC`'s chunks.
    fn cut_with_block(data: &[u8], step: usize, block: usize) -> FileHash {
        let mut cutter = Cutter::new(Trickle(data, step), block);
        let mut hashes = Hashes::default();
        while let Some(block) = cutter.next_block(Vec::new()).unwrap() {
            assert_eq!(block.ends.last(), Some(&block.data.len()));
            hashes.add_block(&block);
        }
        hashes.finish()
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn cuts_are_streamcdcs_whatever_the_reads_and_blocks(
            len in 0usize..1_500_000,
            step in 1usize..300_000,
            extra in 1usize..400_000,
            seed: u64,
        ) {
            let data = pseudo_random(seed, len);
            let expected = reference(&data);
            let block = CHUNK_MAX as usize + extra;
            proptest::prop_assert_eq!(&cut_with_block(&data, step, block), &expected);
            proptest::prop_assert_eq!(&hash_reader(Trickle(&data, step)).unwrap(), &expected);
            proptest::prop_assert_eq!(
                &hash_reader_pipelined(Trickle(&data, step), None).unwrap(),
                &expected
            );
        }
    }

    /// `data` with one of a few kinds of edit, chosen by `kind`, at `at` (a fraction).
    fn edited(data: &[u8], kind: u8, at: f64, len: usize, seed: u64) -> Vec<u8> {
        let i = (data.len() as f64 * at) as usize;
        let patch = pseudo_random(seed ^ 0x5eed, len);
        let mut out = data[..i].to_vec();
        match kind % 4 {
            0 => {
                // Overwrite in place.
                out.extend_from_slice(&patch);
                out.extend_from_slice(data.get(i + len..).unwrap_or_default());
            }
            1 => {
                // Insert.
                out.extend_from_slice(&patch);
                out.extend_from_slice(&data[i..]);
            }
            2 => out.extend_from_slice(data.get(i + len..).unwrap_or_default()), // delete
            _ => {
                // Append.
                out.extend_from_slice(data);
                out.truncate(data.len());
                out.extend_from_slice(&patch);
            }
        }
        out
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(24))]
        #[test]
        fn reusing_previous_chunks_cuts_exactly_as_without(
            len in 0usize..3_000_000,
            kind: u8,
            at in 0.0f64..1.0,
            patch in 0usize..300_000,
            step in 1usize..3_000_000,
            seed: u64,
        ) {
            let old = pseudo_random(seed, len);
            let new = edited(&old, kind, at, patch, seed);
            let expected = reference(&new);
            let previous = Previous::new(reference(&old).chunks);
            let reused = hash_reader_pipelined(Trickle(&new, step), Some(&previous)).unwrap();
            proptest::prop_assert_eq!(&reused, &expected);
            // Another file's chunks: nothing to find, nothing changes.
            let unrelated = Previous::new(reference(&pseudo_random(!seed, len)).chunks);
            let unhelped = hash_reader_pipelined(Trickle(&new, step), Some(&unrelated)).unwrap();
            proptest::prop_assert_eq!(&unhelped, &expected);
        }
    }

    #[test]
    fn unchanged_chunks_are_found_again_not_cut() {
        let old = pseudo_random(22, 16 << 20);
        let previous = Previous::new(reference(&old).chunks);
        for (what, new) in [
            ("1 MiB overwritten", edited(&old, 0, 0.5, 1 << 20, 1)),
            ("1 byte inserted at the start", edited(&old, 1, 0.0, 1, 2)),
            ("64 KiB deleted", edited(&old, 2, 0.3, 64 << 10, 3)),
        ] {
            let expected = reference(&new);
            let mut cutter = Cutter::new(new.as_slice(), BLOCK);
            cutter.previous = Some(&previous);
            let mut hashes = Hashes::default();
            while let Some(block) = cutter.next_block(Vec::new()).unwrap() {
                hashes.add_block(&block);
            }
            assert_eq!(hashes.finish(), expected, "{what}");
            let total = expected.chunks.len();
            // All but the edited chunks, the first after them and the last CHUNK_MAX bytes.
            assert!(
                cutter.reused + 30 >= total,
                "{what}: {} of {total}",
                cutter.reused
            );
        }
    }

    #[test]
    fn previous_chunks_that_are_wrong_or_absurd_change_nothing() {
        let data = pseudo_random(21, 6 << 20);
        let expected = reference(&data);
        let mut wrong = expected.chunks.clone();
        for (i, chunk) in wrong.iter_mut().enumerate() {
            match i % 3 {
                0 => chunk.hash[0] ^= 1,
                1 => chunk.len = chunk.len.saturating_mul(7),
                _ => chunk.len = 0,
            }
        }
        let previous = Previous::new(wrong);
        let got = hash_reader_pipelined(data.as_slice(), Some(&previous)).unwrap();
        assert_eq!(got, expected);
    }

    #[test]
    fn large_inputs_match_across_many_blocks() {
        // Low-entropy stretches make chunks of CHUNK_MAX (forced cuts) and of the minimum.
        let mut data = pseudo_random(3, 9 << 20);
        data[1 << 20..2 << 20].fill(0);
        data[5 << 20..(5 << 20) + 70_000].fill(7);
        let expected = reference(&data);
        assert!(expected.chunks.iter().any(|c| c.len == CHUNK_MAX));
        assert_eq!(hash_reader(data.as_slice()).unwrap(), expected);
        assert_eq!(
            hash_reader_pipelined(data.as_slice(), None).unwrap(),
            expected
        );
        assert_eq!(cut_with_block(&data, 1 << 20, BLOCK), expected);
    }

    #[test]
    fn pipelined_hashing_reports_read_errors() {
        let data = pseudo_random(7, 5 << 20);
        /// Yields its bytes, then fails.
        struct Failing<'a>(&'a [u8]);
        impl Read for Failing<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                if self.0.is_empty() {
                    return Err(io::Error::other("disk on fire"));
                }
                let n = buf.len().min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let err = hash_reader_pipelined(Failing(&data), None).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
        let err = hash_reader(Failing(&data)).unwrap_err();
        assert!(err.to_string().contains("disk on fire"), "{err}");
    }

    #[test]
    fn interrupted_reads_are_retried() {
        /// Fails every other read with `Interrupted`, as a signal would.
        struct Jumpy<'a>(&'a [u8], bool);
        impl Read for Jumpy<'_> {
            fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
                self.1 = !self.1;
                if self.1 {
                    return Err(io::ErrorKind::Interrupted.into());
                }
                let n = buf.len().min(self.0.len()).min(10_000);
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let data = pseudo_random(9, 600_000);
        assert_eq!(hash_reader(Jumpy(&data, false)).unwrap(), reference(&data));
    }

    fn changed_chunks(before: &[u8], after: &[u8]) -> (usize, usize) {
        let old = hash_reader(before).unwrap().chunks;
        let new = hash_reader(after).unwrap().chunks;
        let old: BTreeSet<_> = old.into_iter().collect();
        let fresh = new.iter().filter(|c| !old.contains(c)).count();
        (fresh, new.len())
    }

    #[test]
    fn inserting_a_byte_changes_only_the_first_chunks() {
        let data = pseudo_random(11, 4 << 20);
        let mut edited = vec![0x42];
        edited.extend_from_slice(&data);
        let (fresh, total) = changed_chunks(&data, &edited);
        assert!(fresh <= 2, "{fresh} of {total} chunks changed");
    }

    #[test]
    fn overwriting_a_mebibyte_changes_few_chunks() {
        let data = pseudo_random(12, 16 << 20);
        let mut edited = data.clone();
        edited[8 << 20..9 << 20].copy_from_slice(&pseudo_random(13, 1 << 20));
        let (fresh, total) = changed_chunks(&data, &edited);
        assert!(fresh <= 20, "{fresh} of {total} chunks changed");
    }
}
