//! Where backups live, through the `object_store` crate: a local directory today
//! (`file:///path` or a plain path); S3-compatible stores plug in here.

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path as ObjectPath;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::BackupError;

/// A backup destination: an object store and a prefix in it.
#[derive(Clone)]
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    display: String,
}

impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl Destination {
    /// Parse `file:///abs/path` or a plain path (created if missing).
    pub fn parse(url: &str) -> Result<Destination, BackupError> {
        let path = match url.strip_prefix("file://") {
            Some(rest) => rest,
            None if url.contains("://") => {
                return Err(BackupError::Invalid(format!(
                    "unsupported backup destination {url} (use a directory or file:///path)"
                )))
            }
            None => url,
        };
        std::fs::create_dir_all(path).map_err(BackupError::io("creating the backup directory"))?;
        let store = object_store::local::LocalFileSystem::new_with_prefix(path)?;
        Ok(Destination {
            store: Arc::new(store),
            display: url.to_owned(),
        })
    }

    /// Write an object whole (the local store writes a temporary file and renames it,
    /// so a reader never sees half an object).
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), BackupError> {
        self.store
            .put(&ObjectPath::from(name), PutPayload::from(bytes))
            .await?;
        Ok(())
    }

    /// Read an object whole; `Missing` names it if absent.
    pub async fn get(&self, name: &str) -> Result<Bytes, BackupError> {
        match self.store.get(&ObjectPath::from(name)).await {
            Ok(object) => Ok(object.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(BackupError::Missing(name.to_owned())),
            Err(e) => Err(e.into()),
        }
    }
}
