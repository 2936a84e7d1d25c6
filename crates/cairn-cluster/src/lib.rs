//! Cluster plumbing shared by every protocol that runs over Cairn's shards.
//!
//! It owns how the protocols reach the shards ([`Shards`]: control calls, routed to
//! leaders by the server), the meta group as a small replicated key-value store
//! ([`Meta`]), the table of the meta group's keyspace ([`keyspace`]) and the wall
//! clock ([`clock`]). The snapshot, transaction and backup crates and the server's
//! reverts build on it; it knows none of them.
//!
//! What it must never do: route or execute a call itself (the server's `Control` and
//! the replicas do), or give meaning to any record it stores.

pub mod clock;
pub mod keyspace;
pub mod meta;

use std::future::Future;
use std::time::Duration;

use cairn_raft::{ControlRequest, ShardError, ShardResponse};
use cairn_store::{ApplyOutcome, Command, HistoryRange, KeyVersion, PageLimit, ShardId, Versioned};

pub use meta::{Meta, MetaError, MetaStep, ReadAnswer, WriteAnswer};

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

    /// One page of `shard`'s history (a backup's read), from a replica that has
    /// applied all of `range`, resumed after `after`: its versions, and whether more
    /// follow.
    fn history_page(
        &self,
        shard: ShardId,
        range: HistoryRange,
        after: Option<(Vec<u8>, u64)>,
        limit: PageLimit,
    ) -> impl Future<Output = Result<(Vec<KeyVersion>, bool), ShardError>> + Send {
        async move {
            self.control(ControlRequest::History {
                shard,
                range,
                after,
                limit,
            })
            .await?
            .into_history(shard)
        }
    }

    /// Whether this node holds a replica of `shard` (a backup reads a local replica
    /// when there is one, and another node's otherwise).
    fn hosts(&self, shard: ShardId) -> bool {
        let _ = shard;
        true
    }

    /// Wait until this node's replica of `shard` has applied `index`; false if it did
    /// not within `timeout` (backups read the local replica at a snapshot's cut).
    fn applied_here(
        &self,
        shard: ShardId,
        index: u64,
        timeout: Duration,
    ) -> impl Future<Output = bool> + Send;

    /// `key` of the meta group as this node's own replica has applied it, asking no
    /// leader: `None` if this node holds no voter of the meta group (or cannot say).
    /// It may be stale, so it is only for a value whose use a conditional write
    /// checks (a compare-and-set on its version): a stale guess costs a refused
    /// write and a proper read, a fresh one saves a round trip.
    fn meta_get_here(&self, key: &[u8]) -> Option<Versioned> {
        let _ = key;
        None
    }

    /// Whether this node's replica leads the meta group (the sweeper runs only there).
    fn leads_meta(&self) -> bool;

    /// A number that moves whenever data is written (automatic snapshots are taken
    /// only when it moved); `None` if it could not be learned (then assume it moved).
    fn writes_seen(&self) -> impl Future<Output = Option<u64>> + Send;

    /// The byte budget of one page read from a shard: what a forwarded answer may
    /// carry (the node's `max_page_bytes`, which fits the peer transport's frames).
    fn page_bytes(&self) -> usize {
        cairn_store::page::DEFAULT_PAGE_BYTES
    }
}
