//! The database's tables, its schema version, and opening it: creating the tables, migrating
//! older layouts, and loading shares and summaries.
//!
//! Schema versions (the `meta` table's `"schema"` row, a little-endian `u32`):
//! - 1 (no row): entries here; each folder share's own state in a second database,
//!   `folder-<share id>.redb`, beside this one (tables `synced` and `pages`).
//! - 2: everything in this one database. Opening a version-1 store copies every
//!   `folder-*.redb` into the `local_state` and `pages` tables, in the same transaction that
//!   records version 2, and only then deletes the old files.
//! - 3: adds the `local_index` table (empty: its owner fills it from its local state, and keeps
//!   its own note of having done so there).
//!
//! A store written by a newer meshsync (a higher version) is refused rather than misread.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use tracing::info;

use super::database::DbSlot;
use super::id_index::load_summary;
use super::{ShareId, ShareMeta, ShareState, Shares, StoreError};
use crate::merge::{Hlc, HlcClock};

/// `share` → CBOR [`ShareMeta`].
pub(super) const SHARES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("shares");
/// `share ‖ key` → CBOR register, ordered by key (for `kv list --prefix`).
pub(super) const RECORDS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("records");
/// `share ‖ blake3(key)` → `digest ‖ key`: what the summary is built from at start-up without
/// decoding any register, and how entries are found by id during reconciliation.
pub(super) const INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("index");
/// `"hlc"` → the newest clock reading; `"schema"` → [`SCHEMA_VERSION`].
pub(super) const META: TableDefinition<&str, &[u8]> = TableDefinition::new("meta");
/// `share ‖ key` → bytes the local node keeps about a key and never sends (for a folder: what
/// was last synced at that path). Opaque to the store.
pub(super) const LOCAL_STATE: TableDefinition<&[u8], &[u8]> = TableDefinition::new("local_state");
/// `share ‖ key` → bytes: rows an owner derives from its local state to find it by something
/// other than its key (for a folder: chunk hash and path → where the chunk lies in the file).
/// Written in the same transactions as the local-state rows they derive from; opaque to the
/// store.
pub(super) const LOCAL_INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("local_index");
/// `share ‖ blake3(bytes)` → bytes: content-addressed pages a share's entries refer to (for a
/// folder: chunk lists too long to keep inline).
pub(super) const PAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pages");

/// The layout this code reads and writes (see the module comment for the history).
pub const SCHEMA_VERSION: u32 = 3;

const SCHEMA_KEY: &str = "schema";
/// The tables of a version-1 folder database.
const LEGACY_SYNCED: TableDefinition<&str, &[u8]> = TableDefinition::new("synced");
const LEGACY_PAGES: TableDefinition<&[u8], &[u8]> = TableDefinition::new("pages");

/// Creates missing tables, refuses a newer schema, and migrates an older one. `dir` is the
/// store's directory, where version 1 kept its folder databases.
pub(super) fn prepare(db: &Database, dir: &Path) -> Result<(), StoreError> {
    let found = schema_version(db)?;
    if found > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found,
            supported: SCHEMA_VERSION,
        });
    }
    let legacy = legacy_folder_databases(dir)?;
    if found == SCHEMA_VERSION {
        // Copied already, by a migration whose deletion of the old file did not finish.
        for (_, path) in legacy {
            remove_legacy(&path)?;
        }
        return Ok(());
    }
    let txn = db.begin_write()?;
    {
        // Creating the tables up front lets readers open them without special cases.
        txn.open_table(SHARES)?;
        txn.open_table(RECORDS)?;
        txn.open_table(INDEX)?;
        txn.open_table(LOCAL_STATE)?;
        txn.open_table(PAGES)?;
        txn.open_table(LOCAL_INDEX)?;
        let mut local_state = txn.open_table(LOCAL_STATE)?;
        let mut pages = txn.open_table(PAGES)?;
        for (share, path) in &legacy {
            let (rows, page_count) = copy_legacy(path, share, &mut local_state, &mut pages)?;
            info!(
                "migrated {}: {rows} synced paths, {page_count} chunk-list pages",
                path.display()
            );
        }
        let mut meta = txn.open_table(META)?;
        meta.insert(SCHEMA_KEY, SCHEMA_VERSION.to_le_bytes().as_slice())?;
    }
    txn.commit()?;
    for (_, path) in legacy {
        remove_legacy(&path)?;
    }
    Ok(())
}

/// The schema version recorded in `db`; 1 for a store from before versions were recorded, or
/// a new, empty one.
fn schema_version(db: &Database) -> Result<u32, StoreError> {
    let txn = db.begin_read()?;
    let meta = match txn.open_table(META) {
        Ok(meta) => meta,
        Err(redb::TableError::TableDoesNotExist(_)) => return Ok(1),
        Err(e) => return Err(e.into()),
    };
    match meta.get(SCHEMA_KEY)? {
        None => Ok(1),
        Some(v) => {
            let bytes: [u8; 4] = v
                .value()
                .try_into()
                .map_err(|_| StoreError::Corrupt("the schema version is not 4 bytes".into()))?;
            Ok(u32::from_le_bytes(bytes))
        }
    }
}

/// Version-1 folder databases in `dir`: `folder-<64 hex digits>.redb`, with their share ids.
fn legacy_folder_databases(dir: &Path) -> Result<Vec<(ShareId, PathBuf)>, StoreError> {
    let entries = std::fs::read_dir(dir).map_err(|source| StoreError::Io {
        action: "list",
        path: dir.to_owned(),
        source,
    })?;
    let mut found = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(id) = name
            .to_str()
            .and_then(|n| n.strip_prefix("folder-"))
            .and_then(|n| n.strip_suffix(".redb"))
            .and_then(|hex_id| hex::decode(hex_id).ok())
            .and_then(|bytes| ShareId::try_from(bytes.as_slice()).ok())
        else {
            continue;
        };
        found.push((id, entry.path()));
    }
    found.sort();
    Ok(found)
}

/// Copies one version-1 folder database into the open tables; returns how many synced rows and
/// pages it held.
fn copy_legacy(
    path: &Path,
    share: &ShareId,
    local_state: &mut redb::Table<&[u8], &[u8]>,
    pages: &mut redb::Table<&[u8], &[u8]>,
) -> Result<(usize, usize), StoreError> {
    let legacy = Database::open(path).map_err(|e| StoreError::Open {
        path: path.to_owned(),
        message: e.to_string(),
    })?;
    let txn = legacy.begin_read()?;
    let mut rows = 0;
    match txn.open_table(LEGACY_SYNCED) {
        Ok(table) => {
            for row in table.iter()? {
                let (k, v) = row?;
                let key = super::join_key(share, k.value().as_bytes());
                local_state.insert(key.as_slice(), v.value())?;
                rows += 1;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    let mut page_count = 0;
    match txn.open_table(LEGACY_PAGES) {
        Ok(table) => {
            for row in table.iter()? {
                let (k, v) = row?;
                let key = super::join_key(share, k.value());
                pages.insert(key.as_slice(), v.value())?;
                page_count += 1;
            }
        }
        Err(redb::TableError::TableDoesNotExist(_)) => {}
        Err(e) => return Err(e.into()),
    }
    Ok((rows, page_count))
}

fn remove_legacy(path: &Path) -> Result<(), StoreError> {
    std::fs::remove_file(path).map_err(|source| StoreError::Io {
        action: "remove the migrated",
        path: path.to_owned(),
        source,
    })
}

/// Reads shares, rebuilds summaries (their items stay in the store, reached through `slot`)
/// and resumes the clock.
pub(super) fn load(
    db: &Database,
    shares: &Shares,
    slot: &Arc<DbSlot>,
) -> Result<HlcClock, StoreError> {
    let txn = db.begin_read()?;
    let share_table = txn.open_table(SHARES)?;
    let index = txn.open_table(INDEX)?;
    let mut map = HashMap::new();
    for row in share_table.iter()? {
        let (_, value) = row?;
        let meta: ShareMeta = crate::cbor::decode(value.value())
            .map_err(|e| StoreError::Corrupt(format!("share record: {e}")))?;
        let summary = load_summary(&index, &meta.id, slot)?;
        map.insert(
            meta.id,
            ShareState {
                meta,
                summary: Arc::new(RwLock::new(summary)),
            },
        );
    }
    *shares.write().expect("shares lock") = map;
    let meta = txn.open_table(META)?;
    let clock = match meta.get("hlc")? {
        Some(v) => {
            let hlc: Hlc = crate::cbor::decode(v.value())
                .map_err(|e| StoreError::Corrupt(format!("clock: {e}")))?;
            HlcClock::resume(hlc, super::wall_millis())
        }
        None => HlcClock::new(),
    };
    Ok(clock)
}
