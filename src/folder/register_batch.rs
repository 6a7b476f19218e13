//! The entries of downloads started together, read from the store in one call.
//!
//! A download starts from its path's register: the one its change notice carried if the folder
//! kept it, otherwise read from the store. Read one by one, each download cost a round trip to
//! the store's thread (two thread wake-ups, a read transaction) — for a first sync, nine in ten
//! of its files. Downloads started in the same round share one read instead, made by whichever
//! of them gets to it first; the others wait for it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::OnceCell;
use tracing::debug;

use crate::merge::RecordRegister;
use crate::store::{ShareId, StoreError, StoreHandle};

/// Where a download finds its path's register.
pub(super) enum Register {
    /// Carried by the path's change notice.
    Known(RecordRegister),
    /// Read with the other downloads of its round.
    Batched(Arc<RegisterBatch>),
}

impl Register {
    /// The register of `path` (`None` if the store has no entry for it).
    pub(super) async fn read(self, path: &str) -> Result<Option<RecordRegister>, StoreError> {
        match self {
            Register::Known(register) => Ok(Some(register)),
            Register::Batched(batch) => batch.take(path).await,
        }
    }
}

/// Each path's register until its download takes it (`None`: the store has no entry).
type Registers = Mutex<HashMap<String, Option<RecordRegister>>>;

/// The registers of the paths of one round of download starts, read once.
pub(super) struct RegisterBatch {
    store: StoreHandle,
    share: ShareId,
    paths: Vec<String>,
    /// `None` if the read failed.
    read: OnceCell<Option<Registers>>,
}

impl RegisterBatch {
    pub(super) fn new(store: StoreHandle, share: ShareId, paths: Vec<String>) -> Arc<Self> {
        Arc::new(RegisterBatch {
            store,
            share,
            paths,
            read: OnceCell::new(),
        })
    }

    /// The register of `path`, one of the batch's. If the batch's read failed (or `path` was
    /// not among its paths), `path` is read alone, and that read's error is the one returned:
    /// it names what went wrong for this download.
    async fn take(&self, path: &str) -> Result<Option<RecordRegister>, StoreError> {
        let read = self.read.get_or_init(|| self.read_all()).await;
        if let Some(registers) = read
            && let Some(register) = registers.lock().expect("register batch lock").remove(path)
        {
            return Ok(register);
        }
        self.store.get(self.share, path.as_bytes().to_vec()).await
    }

    async fn read_all(&self) -> Option<Registers> {
        let keys = self.paths.iter().map(|p| p.as_bytes().to_vec()).collect();
        match self.store.get_many(self.share, keys).await {
            Ok(registers) => Some(Mutex::new(
                self.paths.iter().cloned().zip(registers).collect(),
            )),
            Err(e) => {
                debug!(
                    "cannot read {} entries at once, each is read alone: {e}",
                    self.paths.len()
                );
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::merge::Payload;
    use crate::store::ShareKind;
    use serde_bytes::ByteBuf;

    async fn store_with(keys: &[&str]) -> (tempfile::TempDir, StoreHandle, ShareId) {
        let dir = tempfile::tempdir().unwrap();
        let accept = |_: ShareKind, _: &[u8], _: &RecordRegister| Ok(());
        let store = StoreHandle::open(dir.path(), libp2p::PeerId::random(), accept).unwrap();
        let meta = crate::store::tests::new_test_share("s", ShareKind::Records);
        let share = meta.id;
        store.create_share(meta).await.unwrap();
        let records = keys
            .iter()
            .map(|k| {
                (
                    k.as_bytes().to_vec(),
                    Payload::Value(ByteBuf::from(k.as_bytes())),
                )
            })
            .collect();
        store.put(share, records).await.unwrap();
        (dir, store, share)
    }

    #[tokio::test]
    async fn each_download_of_a_batch_gets_its_own_register_and_an_absent_entry_is_none() {
        let (_dir, store, share) = store_with(&["a", "b/c"]).await;
        let paths = vec!["a".to_owned(), "b/c".to_owned(), "gone".to_owned()];
        let batch = RegisterBatch::new(store.clone(), share, paths);
        let (a, c, gone) = tokio::join!(
            Register::Batched(batch.clone()).read("a"),
            Register::Batched(batch.clone()).read("b/c"),
            Register::Batched(batch.clone()).read("gone"),
        );
        let stored_a = store.get(share, b"a".to_vec()).await.unwrap();
        assert!(stored_a.is_some());
        assert_eq!(a.unwrap(), stored_a);
        assert_eq!(c.unwrap(), store.get(share, b"b/c".to_vec()).await.unwrap());
        assert_eq!(gone.unwrap(), None);
        // A register is handed out once; a path asked again, or not among the batch's, is
        // read alone and still found.
        let again = Register::Batched(batch.clone()).read("a").await.unwrap();
        assert_eq!(again, stored_a);
        let other = Register::Batched(batch).read("b/c").await.unwrap();
        assert!(other.is_some());
    }

    #[tokio::test]
    async fn a_known_register_is_used_as_it_is() {
        let (_dir, store, share) = store_with(&["a"]).await;
        let stored = store.get(share, b"a".to_vec()).await.unwrap().unwrap();
        let read = Register::Known(stored.clone())
            .read("whatever")
            .await
            .unwrap();
        assert_eq!(read, Some(stored));
    }
}
