//! What the store's file holds, table by table: entries and bytes, read from a snapshot of the
//! committed state (`GET /v1/store`, `meshsync store`). The file's size alone says little: redb
//! grows its file in steps and keeps freed pages for reuse, so this is how an operator (or a
//! benchmark) learns where the bytes per file or record go.
//!
//! Every page of every table is visited: on a store of 10^7 records that is seconds of reading,
//! done on a blocking thread, beside the store thread (a read transaction does not stop writes).

use std::path::Path;

use redb::{Database, ReadableDatabase, ReadableTableMetadata, TableHandle};
use serde::{Deserialize, Serialize};

use super::StoreError;

/// The store file and its tables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoreUsage {
    /// The database file.
    pub path: String,
    /// Its size on disk (what `ls` shows): the tables below, redb's own metadata, and free
    /// pages kept for reuse.
    pub file_bytes: u64,
    /// Bytes the tables' pages take in all (`stored + overhead + fragmented` summed).
    pub tables_bytes: u64,
    /// One row per table, by name.
    pub tables: Vec<TableUsage>,
}

/// One table of the store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableUsage {
    /// The table's name (see `store/schema.rs`).
    pub name: String,
    /// Its rows.
    pub entries: u64,
    /// Bytes of keys and values.
    pub stored_bytes: u64,
    /// Bytes of B-tree structure: branch pages and the leaves' own headers.
    pub overhead_bytes: u64,
    /// Bytes of its pages that hold nothing (pages are 4 KiB; rows do not fill them).
    pub fragmented_bytes: u64,
}

impl TableUsage {
    /// All the bytes its pages take.
    pub fn bytes(&self) -> u64 {
        self.stored_bytes + self.overhead_bytes + self.fragmented_bytes
    }
}

/// Reads the usage of `db`, whose file is `file`, from one read transaction.
pub(super) fn read(db: &Database, file: &Path) -> Result<StoreUsage, StoreError> {
    let file_bytes = std::fs::metadata(file)
        .map_err(|source| StoreError::Io {
            action: "read the size of",
            path: file.to_owned(),
            source,
        })?
        .len();
    let txn = db.begin_read()?;
    let mut tables = Vec::new();
    for handle in txn.list_tables()? {
        let table = txn.open_untyped_table(handle)?;
        let stats = table.stats()?;
        tables.push(TableUsage {
            name: table.name().to_owned(),
            entries: table.len()?,
            stored_bytes: stats.stored_bytes(),
            overhead_bytes: stats.metadata_bytes(),
            fragmented_bytes: stats.fragmented_bytes(),
        });
    }
    tables.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(StoreUsage {
        path: file.display().to_string(),
        file_bytes,
        tables_bytes: tables.iter().map(TableUsage::bytes).sum(),
        tables,
    })
}
