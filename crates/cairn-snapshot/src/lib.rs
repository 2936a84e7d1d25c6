//! Consistent cross-shard snapshots for Cairn, by markers in every shard's Raft log.
//!
//! A snapshot is an epoch `e`: a `Marker(e)` entry in every shard's log, whose index
//! is that shard's cut, plus a record in the meta group. It copies nothing: the shards
//! keep every version (MVCC), and reading the snapshot means reading each shard at
//! its cut minus one. This crate owns the protocol ([`coordinator`]) and the record of
//! snapshots ([`registry`]); the alignment window that makes the cut respect real time
//! lives in each replica (`cairn_raft`), derived from the markers and releases it
//! applies.
//!
//! It reaches shards only through the [`Shards`] trait, so it never knows where a
//! leader is or how a request travels; it must never read or write a shard's tree
//! directly.

pub mod coordinator;
pub mod error;
pub mod gate;
pub mod meta;
pub mod registry;
#[cfg(feature = "testing")]
pub mod testing;

use std::future::Future;
use std::time::Duration;

use cairn_raft::{ControlRequest, ShardError, ShardResponse};
use cairn_store::{ApplyOutcome, Command, ShardId};

pub use coordinator::{Coordinator, SnapshotConfig};
pub use error::SnapshotError;
pub use meta::Meta;
pub use registry::{Registry, SnapshotRecord, SnapshotState};

/// How the cluster's own protocols (snapshots, transactions, backups) reach its groups:
/// by control calls, which no HTTP handler can make (the server's control router).
pub trait Shards: Send + Sync + 'static {
    /// Number of data shards; the meta group is the group right after them.
    fn shard_count(&self) -> u32;

    /// Serve a control call on its group's leader.
    fn control(
        &self,
        request: ControlRequest,
    ) -> impl Future<Output = Result<ShardResponse, ShardError>> + Send;

    /// Propose `command` on `shard` and wait for it to apply.
    fn propose(
        &self,
        shard: ShardId,
        command: Command,
    ) -> impl Future<Output = Result<ApplyOutcome, ShardError>> + Send {
        async move {
            self.control(ControlRequest::Propose { shard, command })
                .await?
                .into_written(shard)
        }
    }

    /// Wait until this node's replica of `shard` has applied `index`; false if it did
    /// not within `timeout` (backups read the local replica at a snapshot's cut).
    fn applied_here(
        &self,
        shard: ShardId,
        index: u64,
        timeout: Duration,
    ) -> impl Future<Output = bool> + Send;

    /// Whether this node's replica leads the meta group (the sweeper runs only there).
    fn leads_meta(&self) -> bool;

    /// A number that grows whenever data is written (automatic snapshots are taken
    /// only when it moved).
    fn writes_seen(&self) -> u64;

    /// The byte budget of one page read from a shard: what a forwarded answer may
    /// carry (the node's `max_page_bytes`, which fits the peer transport's frames).
    fn page_bytes(&self) -> usize {
        cairn_store::page::DEFAULT_PAGE_BYTES
    }
}
