//! Making what sled wrote survive a power loss, not only a process crash.
//!
//! sled 0.34's `flush()` writes its log and, on Linux, calls
//! `sync_file_range(WAIT_BEFORE | WRITE | WAIT_AFTER)` on it: the pages reach the drive,
//! but neither the drive's volatile cache nor the file's metadata (its size, as the log
//! grows) is flushed, so a power loss can lose writes that were acknowledged on every
//! replica at once. And an item larger than a quarter of a segment goes to a file of
//! its own under `blobs/`, which sled writes and never syncs at all.
//!
//! [`DurableFiles::sync`] closes both gaps after each flush: it `fsync`s every blob file
//! it has not synced before and the `blobs/` directory that names them, then
//! `fdatasync`s the log file. Blobs go first so that the log record pointing at a blob
//! is not made durable ahead of the blob (sled's flush may already have put the log's
//! pages on the drive, so this narrows, but cannot close, the window in which a power
//! loss leaves a durable record of an *unacknowledged* write whose blob is lost; an
//! acknowledged write always has both). Every sync is counted, so a test can prove the
//! write path reaches it: reverting to `flush()` alone makes that test fail.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// sled's log file inside its directory.
const LOG_FILE: &str = "db";
/// sled's directory of items too large for a log segment.
const BLOB_DIR: &str = "blobs";

/// The files of one sled database that a durable sync covers.
#[derive(Debug)]
pub(crate) struct DurableFiles {
    dir: PathBuf,
    log: File,
    /// Blob files already synced (names under `blobs/`), with the length they had.
    /// sled writes a blob once, by appending, while other threads may be syncing: a
    /// blob seen half-written is synced again once its length has changed.
    blobs_synced: Mutex<BTreeMap<OsString, u64>>,
    syncs: AtomicU64,
}

impl DurableFiles {
    /// The files of the sled database at `dir` (opened there already). Syncs the
    /// directory itself and its parent once, so the database's files, and the
    /// directory if it was just created, survive a power loss from the start.
    pub(crate) fn open(dir: &Path) -> std::io::Result<DurableFiles> {
        let log = File::open(dir.join(LOG_FILE))?;
        sync_dir(dir)?;
        sync_parent_dir(dir)?;
        let files = DurableFiles {
            dir: dir.to_owned(),
            log,
            blobs_synced: Mutex::new(BTreeMap::new()),
            syncs: AtomicU64::new(0),
        };
        files.sync_blobs()?;
        Ok(files)
    }

    /// Make everything sled has flushed durable: new blob files and their directory,
    /// then the log (see the module doc for the order).
    pub(crate) fn sync(&self) -> std::io::Result<()> {
        self.sync_blobs()?;
        self.log.sync_data()?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Durable syncs completed since this database was opened.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    fn sync_blobs(&self) -> std::io::Result<()> {
        let blob_dir = self.dir.join(BLOB_DIR);
        let entries = match std::fs::read_dir(&blob_dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        };
        let mut synced = self.blobs_synced.lock().unwrap_or_else(|p| p.into_inner());
        let mut present = BTreeMap::new();
        let mut new = false;
        for entry in entries {
            let entry = entry?;
            let name = entry.file_name();
            // The length before the sync: bytes appended after it are synced next time.
            let len = match entry.metadata() {
                Ok(meta) => meta.len(),
                // sled collected it meanwhile: nothing to make durable.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            if synced.get(&name) != Some(&len) {
                match File::open(entry.path()) {
                    Ok(file) => file.sync_all()?,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(e),
                }
                new |= !synced.contains_key(&name);
            }
            present.insert(name, len);
        }
        if new {
            sync_dir(&blob_dir)?;
        }
        // Forget collected blobs, so the set tracks the directory.
        *synced = present;
        Ok(())
    }
}

/// `fsync` the directory holding `path` (`.` for a bare name), making `path`'s own
/// name durable.
pub fn sync_parent_dir(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        Some(_) => sync_dir(Path::new(".")),
        None => Ok(()),
    }
}

/// `fsync` a directory, making the names in it (files created, renamed or removed
/// there) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use crate::{Command, Condition, NodeStore, OpKind, WriteOp};

    /// sled keeps an item larger than a quarter of a segment (512 KiB) in a file of its
    /// own under `blobs/`, which it never syncs: a flush must sync every such file,
    /// at the length it has, and count the sync.
    #[test]
    fn a_flush_syncs_the_log_and_every_blob_file_sled_wrote() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(dir.path()).unwrap();
        let state = store.shard_state(0).unwrap();
        let put = |key: &[u8], len: usize| {
            Command::Batch(vec![WriteOp {
                key: key.to_vec(),
                kind: OpKind::Put(vec![7; len]),
                condition: Condition::Always,
            }])
        };
        let durable = store.disk.durable.as_ref().unwrap();
        let opened = durable.syncs();
        state.apply(1, 1, Some(&put(b"small", 10))).unwrap();
        store.flush().unwrap();
        assert_eq!(durable.syncs(), opened + 1);
        state.apply(2, 1, Some(&put(b"large", 600 * 1024))).unwrap();
        store.flush().unwrap();
        assert_eq!(durable.syncs(), opened + 2);

        let on_disk: std::collections::BTreeMap<_, _> =
            std::fs::read_dir(dir.path().join(super::BLOB_DIR))
                .unwrap()
                .map(|e| {
                    let e = e.unwrap();
                    (e.file_name(), e.metadata().unwrap().len())
                })
                .collect();
        assert!(!on_disk.is_empty(), "a 600 KiB item should be a blob");
        let synced = durable.blobs_synced.lock().unwrap().clone();
        assert_eq!(synced, on_disk, "every blob file synced at its length");
    }
}
