//! Making one path match its entry's effective winner: writing a file, directory or symlink,
//! keeping a losing local version as a conflict copy, or removing what was deleted.

use std::path::Path;
use std::sync::atomic::Ordering;

use libp2p::PeerId;
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use super::assemble::fill;
use super::error::{MaterialiseError, WriteFailure};
use super::model::{self, CheckedChunk, EntryKind, FileMeta, Hash};
use super::plan::{self, Desired};
use super::register_batch::Register;
use super::scan::{self, ScanRecord};
use super::source::{self, ChunkLocation, Sources};
use super::state::Synced;
use super::status::Counters;
use super::write::{self, Expect};
use super::{received, small_writes, versions};
use crate::merge::{PeerKey, VersionVector};

/// Files up to this size are fetched whole into memory and written in one blocking call.
pub const SMALL_FILE_BYTES: u64 = 1024 * 1024;

/// The outcome of materialising one path.
pub(super) struct Materialised {
    pub(super) path: String,
    /// A directory to delete still has entries; retried when its children are gone.
    pub(super) not_empty: bool,
    /// What is on disk now, and the version vector it came from (`None` if now absent).
    pub(super) synced: Option<Synced>,
    /// Set when the target had changed under us: rescan it before anything else.
    pub(super) conflict: bool,
    pub(super) error: Option<MaterialiseError>,
    /// Pages learned while fetching.
    pub(super) new_chunks: Vec<(Hash, ChunkLocation)>,
    /// Who wrote the version now on disk (the winner's author), when a peer did.
    pub(super) author: Option<PeerId>,
    /// Where our losing version was kept, when it lost a conflict.
    pub(super) conflict_copy: Option<String>,
    /// Where the file this change replaced or deleted was kept (in the versions).
    pub(super) kept_version: Option<String>,
    /// Nothing was done: the path already was what the winner says (or there is no entry).
    /// `synced` is then only the snapshot taken when the download started, possibly stale.
    pub(super) unchanged: bool,
    /// When our losing version was kept as a conflict copy (whether or not the winner could be
    /// written in its place): that version's vector. The actor records a delete of the path
    /// on it, which withdraws our kept version there and nothing else (the winner is
    /// concurrent with it and stays). Left live, our kept version came back whenever the
    /// winner was deleted by someone who had seen only the winner ("an edit beats a delete"),
    /// and every member wanted its content — gone from everywhere once the copy was edited or
    /// deleted, so the folder never converged (found by `meshsync lab`).
    pub(super) resolved: Option<VersionVector>,
}

/// What writing a file learned besides its scan record.
#[derive(Default)]
pub(super) struct Found {
    /// Where chunks are now: in the new file, and in the old one where it was kept.
    pub(super) chunks: Vec<(Hash, ChunkLocation)>,
    /// Where the file it replaced was kept.
    pub(super) kept: Option<String>,
}

/// The scan record of a path we just wrote with `meta`, so the scanner does not take our own
/// write for a local edit. Racy (re-read once by the next scan) only when a local write now could
/// leave the same mtime ([`scan::written_is_racy`]).
pub(super) fn record_for(root: &Path, rel: &str, meta: FileMeta) -> std::io::Result<ScanRecord> {
    let stat = std::fs::symlink_metadata(root.join(rel))?;
    Ok(record_from(&stat, meta))
}

/// What a scan will compare the disk with for an entry written as `meta`, from its inode's
/// `stat` (taken on the path, or on the open file just published).
pub(super) fn record_from(stat: &std::fs::Metadata, mut meta: FileMeta) -> ScanRecord {
    use std::os::unix::fs::MetadataExt;
    if meta.kind != EntryKind::File {
        meta.mtime_secs = stat.mtime();
        meta.mtime_nanos = stat.mtime_nsec() as u32;
        meta.mode = stat.mode() & 0o7777;
    }
    let ctime = (stat.ctime(), stat.ctime_nsec() as u32);
    let racy = meta.kind != EntryKind::File
        || scan::written_is_racy(
            (meta.mtime_secs, meta.mtime_nanos),
            ctime,
            std::time::SystemTime::now(),
        );
    ScanRecord {
        meta,
        ctime_secs: ctime.0,
        ctime_nanos: ctime.1,
        inode: stat.ino(),
        dev: stat.dev(),
        racy,
    }
}

/// Makes the disk at `path` match the entry's effective winner.
pub(super) async fn materialise(
    shared: Sources,
    path: String,
    register: Register,
    synced: Option<Synced>,
    local_key: PeerKey,
) -> Materialised {
    let mut outcome = Materialised {
        path: path.clone(),
        not_empty: false,
        synced: synced.clone(),
        conflict: false,
        error: None,
        new_chunks: Vec::new(),
        author: None,
        conflict_copy: None,
        kept_version: None,
        unchanged: false,
        resolved: None,
    };
    if let Err(e) = materialise_into(&shared, register, &local_key, &mut outcome).await {
        outcome.error = Some(e);
    }
    outcome
}

/// The steps of [`materialise`]; fills `outcome` as it goes.
async fn materialise_into(
    shared: &Sources,
    register: Register,
    local_key: &PeerKey,
    outcome: &mut Materialised,
) -> Result<(), MaterialiseError> {
    let path = outcome.path.clone();
    model::check_rel_path(&path).map_err(MaterialiseError::Refused)?;
    let Some(register) = register.read(&path).await? else {
        outcome.unchanged = true;
        return Ok(());
    };
    let Some(winner) = plan::effective_winner(&register).cloned() else {
        outcome.unchanged = true;
        return Ok(());
    };
    outcome.author = PeerId::from_bytes(winner.origin().as_bytes()).ok();
    let desired = plan::desired(&register);
    let on_disk = outcome.synced.as_ref().map(|s| s.record.meta.clone());
    match (&desired, on_disk.as_ref().map(plan::normalised)) {
        (Desired::Present(want), Some(disk)) if *want == disk => {
            outcome.unchanged = true;
            return Ok(());
        }
        (Desired::Absent, None) => {
            outcome.unchanged = true;
            return Ok(());
        }
        _ => {}
    }
    debug!(path = %path, ?desired, present = on_disk.is_some(), "materialising");
    if let (Desired::Present(want), Some(disk)) = (&desired, &on_disk)
        && let Some(ours) = plan::losing_local_version(&register, &winner, local_key, want, disk)
    {
        // Our own version lost a conflict and its content is what is on disk: keep it aside.
        let millis = ours.hlc().millis;
        let kept = ours.vv().clone();
        outcome.conflict_copy = Some(keep_conflict_copy(shared, &path, millis).await?);
        outcome.synced = None;
        outcome.resolved = Some(kept);
    }
    let expect = plan::expect_for(outcome.synced.as_ref());
    match desired {
        Desired::Absent => remove_entry(shared, on_disk, expect, outcome).await,
        Desired::Present(meta) => {
            let replacing =
                on_disk.filter(|m| m.kind == EntryKind::File && outcome.synced.is_some());
            let mark = received::mark(&shared.share, &path, &meta, winner.vv());
            let mut found = Found::default();
            let written =
                write_entry(shared, &path, &meta, expect, replacing, mark, &mut found).await;
            outcome.new_chunks.append(&mut found.chunks);
            outcome.kept_version = found.kept;
            match written {
                Ok(record) => {
                    let base = winner.vv().clone();
                    outcome.synced = Some(Synced { record, base });
                    Ok(())
                }
                Err(WriteFailure::Conflict) => {
                    outcome.conflict = true;
                    Ok(())
                }
                Err(WriteFailure::Failed(e)) => Err(e),
            }
        }
    }
}

/// Renames our losing version at `path` to its conflict-copy name, which then syncs like any
/// file.
async fn keep_conflict_copy(
    shared: &Sources,
    path: &str,
    ours_millis: u64,
) -> Result<String, MaterialiseError> {
    let conflict_rel = write::conflict_name(path, ours_millis, &shared.conflict_tag);
    let root = shared.root.clone();
    let (from, to) = (path.to_owned(), conflict_rel.clone());
    tokio::task::spawn_blocking(move || write::rename_to_conflict_copy(&root, &from, &to))
        .await?
        .map_err(MaterialiseError::ConflictCopy)?;
    info!(path = %path, "kept our conflicting version as {conflict_rel}");
    Ok(conflict_rel)
}

/// Removes what a peer deleted: a file goes to the trash (if it is still what we last synced),
/// a directory only once it is empty.
async fn remove_entry(
    shared: &Sources,
    on_disk: Option<FileMeta>,
    expect: Expect,
    outcome: &mut Materialised,
) -> Result<(), MaterialiseError> {
    let (root, rel) = (shared.root.clone(), outcome.path.clone());
    let is_file = on_disk.as_ref().is_some_and(|m| m.kind == EntryKind::File);
    let removed = tokio::task::spawn_blocking(move || {
        if is_file {
            versions::keep_deleted(&root, &rel, expect).map(Removal::Trashed)
        } else {
            write::remove(&root, &rel, expect).map(Removal::Removed)
        }
    })
    .await?;
    match removed {
        Ok(Removal::Removed(write::Removed::DirNotEmpty)) => {
            // Its children are still going; the last child's removal queues it again.
            outcome.not_empty = true;
        }
        Ok(Removal::Trashed(trash_rel)) => {
            outcome.kept_version = Some(trash_rel.clone());
            // Keep its chunks findable: a rename elsewhere in the folder reuses them. Indexed
            // here rather than returned to the actor: a download running concurrently may be
            // looking for these chunks now.
            if let Some(meta) = on_disk {
                let moved =
                    source::chunk_locations(&shared.store, shared.share, &trash_rel, &meta, None)
                        .await;
                shared.chunks.add_recent(moved);
            }
            outcome.synced = None;
        }
        Ok(_) => outcome.synced = None,
        Err(write::WriteError::Conflict { .. }) => outcome.conflict = true,
        Err(e) => return Err(MaterialiseError::Write(e)),
    }
    Ok(())
}

/// How a removal went.
enum Removal {
    Removed(write::Removed),
    Trashed(String),
}

/// Marks a file being received as such ([`received`]). Without the mark the file is still
/// written: only a crash right after it would then take it for a local edit. A file system that
/// refuses marks is said once per folder.
pub(super) fn mark_received(
    assembly: &write::Assembly,
    mark: Option<&[u8]>,
    rel: &str,
    counters: &Counters,
) {
    let Some(mark) = mark else {
        return;
    };
    if let Err(e) = assembly.set_attribute(received::ATTRIBUTE, mark)
        && !counters.marks_unsupported.swap(true, Ordering::Relaxed)
    {
        warn!(
            path = %rel,
            "cannot mark received files ({e}): after a crash, a file received just before it \
             may be sent out as a local edit"
        );
    }
}

/// Commits an assembly. When it replaces a file, the old version first goes to the trash
/// (hard-linked, no copy): nothing a peer sends ever destroys the only copy of a file, and its
/// chunks stay at hand if the new version turns out to be short-lived. Returns the trash path,
/// and the committed file's inode as it is after the rename (see [`write::Sealed::stat`]).
pub(super) fn commit_keeping_old(
    root: &Path,
    rel: &str,
    assembly: write::Assembly,
    keep_old: bool,
    expect: Expect,
    mode: u32,
    mtime: (i64, u32),
) -> Result<(Option<String>, std::fs::Metadata), write::WriteError> {
    let mut sealed = assembly.seal(mode, mtime)?;
    sealed.flush_content()?;
    let kept = publish_keeping_old(root, rel, &mut sealed, keep_old, expect)?;
    sealed.flush_name()?;
    Ok((kept, sealed.stat()?))
}

/// Publishes a sealed file whose content is durable, first keeping the file it replaces in the
/// trash when `keep_old`. Returns where it was kept. When publishing fails, nothing is kept.
/// (Once published, the kept file stays even if a later step fails: it is the only copy of
/// what was replaced.)
pub(super) fn publish_keeping_old(
    root: &Path,
    rel: &str,
    sealed: &mut write::Sealed,
    keep_old: bool,
    expect: Expect,
) -> Result<Option<String>, write::WriteError> {
    let kept = if keep_old {
        versions::keep_replaced(root, rel)
    } else {
        None
    };
    match sealed.publish(expect) {
        Ok(()) => Ok(kept),
        Err(e) => {
            if let Some(kept) = &kept {
                let _ = std::fs::remove_file(root.join(kept));
            }
            Err(e)
        }
    }
}

/// Keeps the chunks of a replaced file findable where it was kept in the trash (`kept`), for a
/// rename elsewhere in the folder that reuses them.
async fn index_kept(
    shared: &Sources,
    kept: Option<String>,
    replacing: Option<FileMeta>,
    found: &mut Found,
) {
    if let (Some(kept), Some(old)) = (kept, replacing) {
        let moved = source::chunk_locations(&shared.store, shared.share, &kept, &old, None).await;
        found.chunks.extend(moved);
        found.kept = Some(kept);
    }
}

/// Writes a small file: fetches every chunk it needs first, then hands it to the writers of
/// small files, which write it with others in one batch ([`small_writes`]). Per file that saves
/// several hand-offs between threads, which is what receiving thousands of small files costs
/// most.
pub(super) async fn write_small_file(
    shared: &Sources,
    path: &str,
    meta: &FileMeta,
    (expect, replacing, mark): (Expect, Option<FileMeta>, Option<Vec<u8>>),
    found: &mut Found,
) -> Result<ScanRecord, WriteFailure> {
    let chunks = source::chunk_list(shared, meta).await?;
    let mut fetches = JoinSet::new();
    for (index, chunk) in chunks.iter().copied().enumerate() {
        let shared = shared.clone();
        fetches.spawn(async move { (index, source::fetch_chunk(&shared, &chunk).await) });
    }
    let mut contents: Vec<Option<CheckedChunk>> = vec![None; chunks.len()];
    while let Some(done) = fetches.join_next().await {
        let (index, bytes) = done?;
        contents[index] = Some(bytes?);
    }
    let file = small_writes::SmallFile {
        root: shared.root.clone(),
        rel: path.to_owned(),
        meta: meta.clone(),
        chunks: chunks.clone(),
        contents,
        mark,
        keep_old: replacing.is_some(),
        expect,
        counters: shared.counters.clone(),
    };
    let small_writes::Written { kept, record } = small_writes::write(file).await?;
    index_kept(shared, kept, replacing, found).await;
    found
        .chunks
        .extend(source::locations_in(path, &chunks, record.stamp()));
    Ok(record)
}

/// Writes one file, directory or symlink and returns its new scan record.
pub(super) async fn write_entry(
    shared: &Sources,
    path: &str,
    meta: &FileMeta,
    expect: Expect,
    replacing: Option<FileMeta>,
    mark: Option<Vec<u8>>,
    found: &mut Found,
) -> Result<ScanRecord, WriteFailure> {
    let root = shared.root.clone();
    let rel = path.to_owned();
    match meta.kind {
        EntryKind::Dir => {
            let mode = meta.mode;
            blocking(move || write::make_dir(&root, &rel, mode)).await?;
        }
        EntryKind::Symlink => {
            let target = meta.target.clone().unwrap_or_default();
            blocking(move || write::make_symlink(&root, &rel, &target, expect)).await?;
        }
        EntryKind::File if meta.size <= SMALL_FILE_BYTES => {
            let written = (expect, replacing, mark);
            return write_small_file(shared, path, meta, written, found).await;
        }
        EntryKind::File => {
            let chunks = source::chunk_list(shared, meta).await?;
            let (size, hash, mode, mtime) = (
                meta.size,
                meta.hash,
                meta.mode,
                (meta.mtime_secs, meta.mtime_nanos),
            );
            let (r2, p2, c2) = (root.clone(), rel.clone(), chunks.clone());
            let assembly =
                blocking(move || write::Assembly::open(&r2, &p2, size, hash, &c2)).await?;
            let missing = assembly.missing();
            let assembly = fill(shared, path, &chunks, assembly, missing).await?;
            let keep_old = replacing.is_some();
            let (r2, p2, counters) = (root.clone(), rel.clone(), shared.counters.clone());
            let (kept, stat) = blocking(move || {
                mark_received(&assembly, mark.as_deref(), &p2, &counters);
                commit_keeping_old(&r2, &p2, assembly, keep_old, expect, mode, mtime)
            })
            .await?;
            index_kept(shared, kept, replacing, found).await;
            found
                .chunks
                .extend(source::locations_in(&rel, &chunks, None));
            // From the committed file itself, as for small files (`small_writes`).
            return Ok(record_from(&stat, meta.clone()));
        }
    }
    if matches!(meta.kind, EntryKind::Dir) {
        // Keep the directory's own mtime (see `normalised`); only its mode is synced.
        let (root, rel, mode) = (shared.root.clone(), path.to_owned(), meta.mode);
        blocking(move || {
            let current = std::fs::symlink_metadata(root.join(&rel)).map_err(|source| {
                write::WriteError::Io {
                    action: "inspect",
                    path: root.join(&rel),
                    source,
                }
            })?;
            let mtime = (
                std::os::unix::fs::MetadataExt::mtime(&current),
                std::os::unix::fs::MetadataExt::mtime_nsec(&current) as u32,
            );
            write::set_meta(&root, &rel, mode, mtime)
        })
        .await?;
    }
    let (root, rel, meta) = (shared.root.clone(), path.to_owned(), meta.clone());
    blocking(move || {
        record_for(&root, &rel, meta).map_err(|source| write::WriteError::Io {
            action: "inspect",
            path: root.join(&rel),
            source,
        })
    })
    .await
}

pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, write::WriteError> + Send + 'static,
) -> Result<T, WriteFailure> {
    tokio::task::spawn_blocking(f)
        .await?
        .map_err(WriteFailure::from)
}

#[cfg(test)]
mod tests;
