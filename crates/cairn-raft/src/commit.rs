//! Group commit: one fsync covers the writes of every replica of the node that were
//! waiting when it started.
//!
//! Replicas append their entries and hard state to the node's Raft log (which only
//! hands them to the OS), then call [`GroupCommit::sync`] and block until a sync that
//! began *after* their write has finished. The flusher thread takes every waiter queued
//! so far, calls [`NodeStore::sync_log`] once (one `fdatasync` of the log engine), and
//! wakes them all; writers that arrive during a sync wait for the next one. Under load
//! one sync therefore serves many shards, which is what lets a node's write rate exceed
//! its disk's fsync rate.
//!
//! The replica sees durability only through the [`Durability`] trait, so the decision
//! code never knows whether an fsync happens or a simulation merely records what a
//! crash at that moment would leave on disk (`cairn-sim`).

use std::thread::JoinHandle;

use cairn_store::NodeStore;
use crossbeam_channel::{bounded, unbounded, Receiver, Sender};

type Waiter = Sender<Result<(), SyncError>>;

/// Why writes could not be made durable. Either is fatal to the replica that asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SyncError {
    /// The flusher is gone (the node is stopping).
    #[error("group commit stopped")]
    Stopped,
    /// The store's sync failed; what it said.
    #[error("fsync failed: {0}")]
    Failed(String),
}

/// How a replica makes what it wrote to the store durable.
///
/// Contract: when `sync` returns `Ok`, every write the calling replica made to its Raft
/// log before the call survives a crash (an error is fatal to the replica). Writes not
/// yet synced may survive a crash or not, but always as a prefix of each store's
/// stream: the log engine and sled apply each batch atomically and recover a prefix.
/// The state machine (sled) may come back behind the log, and is replayed from it;
/// the log never drops entries before sled is durable past them (`cairn_store`).
pub trait Durability {
    /// Block until everything the caller wrote to the store before the call is durable.
    fn sync(&self) -> Result<(), SyncError>;

    /// One atomic batch just reached the store, not yet durable. Production has
    /// nothing to do; a simulation records what a crash from here on could leave on
    /// disk, which is how it reaches the states between two syncs (the middle of a
    /// snapshot install, an apply ahead of the log's commit index).
    fn written(&self) {}
}

/// Handle to the node's flusher thread. Cloning shares the same thread.
#[derive(Clone)]
pub struct GroupCommit {
    tx: Sender<Waiter>,
}

impl GroupCommit {
    /// Start the flusher. It stops once every `GroupCommit` clone is dropped.
    pub fn start(store: NodeStore, node: u64) -> (GroupCommit, JoinHandle<()>) {
        let (tx, rx) = unbounded::<Waiter>();
        let handle = std::thread::Builder::new()
            .name(format!("group-commit-{node}"))
            .spawn(move || {
                let span = tracing::info_span!("group_commit", node);
                let _enter = span.enter();
                run(store, rx)
            })
            .expect("spawning the group-commit thread");
        (GroupCommit { tx }, handle)
    }

    /// Block until everything this thread wrote to the store before the call is on disk.
    pub fn sync(&self) -> Result<(), SyncError> {
        let (tx, rx) = bounded(1);
        self.tx.send(tx).map_err(|_| SyncError::Stopped)?;
        rx.recv().map_err(|_| SyncError::Stopped)?
    }
}

impl Durability for GroupCommit {
    fn sync(&self) -> Result<(), SyncError> {
        GroupCommit::sync(self)
    }
}

fn run(store: NodeStore, rx: Receiver<Waiter>) {
    while let Ok(first) = rx.recv() {
        let mut waiters = vec![first];
        waiters.extend(rx.try_iter());
        let started = std::time::Instant::now();
        let result = store
            .sync_log()
            .map_err(|e| SyncError::Failed(e.to_string()));
        metrics::histogram!("cairn_fsync_seconds").record(started.elapsed().as_secs_f64());
        if let Err(e) = &result {
            tracing::error!(error = %e, "fsync failed");
        }
        metrics::counter!("cairn_fsyncs_total").increment(1);
        metrics::histogram!("cairn_group_commit_batch").record(waiters.len() as f64);
        for waiter in waiters {
            // A waiter that gave up is not our concern.
            let _ = waiter.send(result.clone());
        }
    }
    tracing::debug!("group commit stopped");
}
