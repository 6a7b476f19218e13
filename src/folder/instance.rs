//! Which copy of a folder this is: a random id kept in the marker directory
//! (`.meshsync/instance`), and the same id recorded in the store when the folder was last
//! scanned.
//!
//! Why: absence is only a delete if the scan that saw it looked at the folder we synced. A
//! folder that was removed and re-created (empty, with a new marker, as a user recovering from
//! a "paused: no marker" would do), or a different disk mounted in its place, has no id or
//! another one. Its scan then says nothing about deletes: the folder is treated as freshly
//! joined, so what it lacks is fetched from members instead of deleted everywhere.

use std::fs;
use std::io;
use std::path::Path;

use super::model::MARKER_DIR;

/// The file inside the marker directory that holds the folder's id.
pub const INSTANCE_FILE: &str = "instance";
/// Bytes of a folder id.
pub const INSTANCE_ID_BYTES: usize = 16;

/// A folder's id.
pub type InstanceId = [u8; INSTANCE_ID_BYTES];

/// What a scan may conclude about the folder it looked at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// The folder we synced: its scan is to be trusted, absences included.
    Same,
    /// No id was recorded yet (a new share, or a store from before ids): trust the scan and
    /// record the folder's id from now on.
    FirstSeen,
    /// The folder is not the one we synced (re-created, or another disk): nothing it lacks
    /// may be taken for a delete.
    Replaced,
}

/// Compares the id recorded in the store with the one found in the folder. Pure.
pub fn judge(recorded: Option<InstanceId>, found: Option<InstanceId>) -> Verdict {
    match (recorded, found) {
        (None, _) => Verdict::FirstSeen,
        (Some(r), Some(f)) if r == f => Verdict::Same,
        (Some(_), _) => Verdict::Replaced,
    }
}

/// Creates the folder (if needed) and its marker directory, for a share being created or joined.
pub fn prepare_root(root: &Path) -> io::Result<()> {
    fs::create_dir_all(root.join(MARKER_DIR))
}

/// The id in the folder's marker directory, if there is a well-formed one. Blocking.
pub fn read(root: &Path) -> io::Result<Option<InstanceId>> {
    match fs::read(root.join(MARKER_DIR).join(INSTANCE_FILE)) {
        Ok(bytes) => Ok(InstanceId::try_from(bytes.as_slice()).ok()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e),
    }
}

/// Gives the folder a new id and writes it (durably) into its marker directory. Blocking.
pub fn create(root: &Path) -> io::Result<InstanceId> {
    let mut id = [0u8; INSTANCE_ID_BYTES];
    getrandom::fill(&mut id).map_err(|e| io::Error::other(e.to_string()))?;
    let path = root.join(MARKER_DIR).join(INSTANCE_FILE);
    crate::atomic_write::write_atomically(&path, &id, Some(0o644))?;
    Ok(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_matching_id_makes_absence_a_delete() {
        let a = [1; INSTANCE_ID_BYTES];
        let b = [2; INSTANCE_ID_BYTES];
        assert_eq!(judge(Some(a), Some(a)), Verdict::Same);
        assert_eq!(judge(Some(a), Some(b)), Verdict::Replaced);
        assert_eq!(judge(Some(a), None), Verdict::Replaced);
        assert_eq!(judge(None, None), Verdict::FirstSeen);
        assert_eq!(judge(None, Some(b)), Verdict::FirstSeen);
    }

    #[test]
    fn ids_round_trip_and_a_recreated_marker_has_none() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir(root.path().join(MARKER_DIR)).unwrap();
        assert_eq!(read(root.path()).unwrap(), None);
        let id = create(root.path()).unwrap();
        assert_eq!(read(root.path()).unwrap(), Some(id));
        let second = create(root.path()).unwrap();
        assert_ne!(second, id, "a new id each time");
        assert_eq!(read(root.path()).unwrap(), Some(second));
        fs::remove_dir_all(root.path().join(MARKER_DIR)).unwrap();
        fs::create_dir(root.path().join(MARKER_DIR)).unwrap();
        assert_eq!(read(root.path()).unwrap(), None);
    }
}
