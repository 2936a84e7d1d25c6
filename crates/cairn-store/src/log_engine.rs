//! The node's Raft log engine: every group's entries, hard state and compaction point
//! in one append-only log (TiKV's `raft-engine`), beside the sled database that holds
//! the state machines.
//!
//! Why not sled: with the log in per-shard sled trees, every Raft append became a sled
//! batch, every group commit a sled flush, and sled 0.34 turned each flush into work
//! for its I/O thread pool (a third of a loaded node's CPU samples were that pool
//! waking up). raft-engine appends each batch to one file and makes it durable with
//! one `fdatasync`, which is all a Raft log needs; sled keeps what it is good at, the
//! ordered MVCC trees (`docs/ARCHITECTURE.md`, "Two stores").
//!
//! Durability: [`LogEngine::write`] only appends (the bytes reach the OS, so a process
//! crash keeps them); [`LogEngine::sync`] makes every append before it durable.
//! raft-engine 0.4.2's own `Engine::sync` writes nothing when handed an empty batch, so
//! it never reaches `fdatasync`; a sync here appends one small record (the sync count,
//! in a group no shard uses) with the engine's `sync` flag, which `fdatasync`s the
//! active file. Rotated files were synced when they were closed.
//!
//! Never here: anything about state machines, or deciding when to sync (group commit
//! decides).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use raft::prelude::Entry;
use raft_engine::{Config, Engine, LogBatch, MessageExt, ReadableSize};

use crate::error::{Result, StoreError};

/// The group id of the sync record: shards are `u32`, so no shard's group is this.
const SYNC_GROUP: u64 = u64::MAX;
const SYNC_KEY: &[u8] = b"sync";
/// How often, at most, [`LogEngine::purge`] asks the engine to drop files that hold
/// only compacted entries.
const PURGE_EVERY: Duration = Duration::from_secs(10);

/// raft-engine's view of a Raft entry: where its index is.
#[derive(Clone, Copy, Debug)]
pub(crate) struct EntryExt;

impl MessageExt for EntryExt {
    type Entry = Entry;

    fn index(e: &Entry) -> u64 {
        e.index
    }
}

/// The log engine of one node. Shared by every shard's [`crate::RaftLog`].
pub(crate) struct LogEngine {
    engine: Engine,
    syncs: AtomicU64,
    purged_at: Mutex<Instant>,
}

impl std::fmt::Debug for LogEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogEngine")
            .field("dir", &self.engine.path())
            .finish_non_exhaustive()
    }
}

impl LogEngine {
    /// Open (or create) the engine in `dir`, replaying its files. A torn tail (a crash
    /// in the middle of an append) is dropped: it was never synced, so never
    /// acknowledged.
    pub(crate) fn open(dir: &Path) -> Result<LogEngine> {
        let dir = dir
            .to_str()
            .ok_or_else(|| StoreError::invalid(format!("{} is not UTF-8", dir.display())))?;
        let cfg = Config {
            dir: dir.to_owned(),
            // Two cores: recovery threads beyond them only contend.
            recovery_threads: 2,
            // raft-engine drops (or recycles) files only once the log's files pass
            // `purge_threshold`; below it they stay. TiKV's 10 GB suits its disks; a
            // node here keeps about `--log-compact-entries` entries per shard live
            // (a few MB each under load), so 64 MB bounds the log's share of the disk
            // (on-disk size is one of the things Cairn is judged by) while leaving
            // room before lagging groups' entries must be rewritten to free a file.
            target_file_size: ReadableSize::mb(8),
            purge_threshold: ReadableSize::mb(64),
            ..Config::default()
        };
        let engine = Engine::open(cfg)?;
        Ok(LogEngine {
            engine,
            syncs: AtomicU64::new(0),
            purged_at: Mutex::new(Instant::now()),
        })
    }

    /// The engine itself, for reads.
    pub(crate) fn engine(&self) -> &Engine {
        &self.engine
    }

    /// Append `batch` (not yet durable; see the module doc).
    pub(crate) fn write(&self, batch: &mut LogBatch) -> Result<()> {
        self.engine.write(batch, false)?;
        Ok(())
    }

    /// Make every write before this call durable: one `fdatasync`.
    pub(crate) fn sync(&self) -> Result<()> {
        let n = self.syncs.load(Ordering::Relaxed) + 1;
        let mut batch = LogBatch::default();
        batch.put(SYNC_GROUP, SYNC_KEY.to_vec(), n.to_be_bytes().to_vec())?;
        self.engine.write(&mut batch, true)?;
        self.syncs.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Syncs completed since the engine was opened.
    pub(crate) fn syncs(&self) -> u64 {
        self.syncs.load(Ordering::Relaxed)
    }

    /// Drop log files that hold nothing live any more, at most every
    /// [`PURGE_EVERY`]. raft-engine rewrites the few live records of a group that
    /// never compacts (an idle shard) into its rewrite queue so that old files can go.
    pub(crate) fn purge(&self) -> Result<()> {
        {
            let mut at = self
                .purged_at
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            if at.elapsed() < PURGE_EVERY {
                return Ok(());
            }
            *at = Instant::now();
        }
        let lagging = self.engine.purge_expired_files()?;
        if !lagging.is_empty() {
            // Groups whose uncompacted entries hold old files: they compact on their
            // own schedule; named so an operator can see why the log is not shrinking.
            tracing::debug!(groups = ?lagging, "raft log files kept for lagging groups");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_sync_appends_a_record_so_the_engine_reaches_fdatasync() {
        // raft-engine's own `sync` appends nothing and so never syncs (module doc): a
        // sync that stopped writing its record would be that again.
        let dir = tempfile::tempdir().unwrap();
        let log = LogEngine::open(dir.path()).unwrap();
        log.sync().unwrap();
        log.sync().unwrap();
        assert_eq!(log.syncs(), 2);
        assert_eq!(
            log.engine().get(SYNC_GROUP, SYNC_KEY),
            Some(2u64.to_be_bytes().to_vec())
        );
    }
}
