//! What a shard can be asked to do, and what it answers. These travel between nodes
//! when a request is forwarded to the shard's leader, so they are serde data.

use cairn_store::{ApplyOutcome, Command, Page, PageLimit, ShardId, Versioned};
use serde::{Deserialize, Serialize};

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Linearizable: the leader confirms it still leads (Raft ReadIndex) and the read
    /// waits until that index is applied.
    #[default]
    Linearizable,
    /// Whatever the local replica has applied; may lag the leader.
    Stale,
    /// The state at a fixed version (a snapshot's cut minus one). It never changes, so
    /// any replica that has applied that far serves it without asking the leader.
    AtVersion(u64),
}

/// A request addressed to one shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardRequest {
    /// Propose a command; answered once it is committed and applied.
    Write { shard: ShardId, command: Command },
    /// The newest live version of a key.
    Get {
        shard: ShardId,
        key: Vec<u8>,
        consistency: Consistency,
    },
    /// Live keys under a prefix, strictly after `start_after`, in key order: one page
    /// within `limit` (its bytes keep the answer under the transport's frame cap).
    Scan {
        shard: ShardId,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: PageLimit,
        consistency: Consistency,
    },
    /// Keys under a prefix whose visible value differs between versions `from` and
    /// `to` (two snapshots' read versions), with their value at `to`: one page within
    /// `limit`. Served like a fixed-version read at `max(from, to)`.
    Diff {
        shard: ShardId,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: PageLimit,
        from: u64,
        to: u64,
    },
}

impl ShardRequest {
    pub fn shard(&self) -> ShardId {
        match self {
            ShardRequest::Write { shard, .. }
            | ShardRequest::Get { shard, .. }
            | ShardRequest::Scan { shard, .. }
            | ShardRequest::Diff { shard, .. } => *shard,
        }
    }

    fn consistency(&self) -> Option<Consistency> {
        match self {
            ShardRequest::Write { .. } => None,
            ShardRequest::Diff { from, to, .. } => Some(Consistency::AtVersion(*from.max(to))),
            ShardRequest::Get { consistency, .. } | ShardRequest::Scan { consistency, .. } => {
                Some(*consistency)
            }
        }
    }

    /// Whether the local replica may answer without involving the leader.
    pub fn is_local_read(&self) -> bool {
        matches!(
            self.consistency(),
            Some(Consistency::Stale | Consistency::AtVersion(_))
        )
    }

    /// Whether this reads a fixed version, which the leader can serve if the local
    /// replica has not applied it yet.
    pub fn reads_fixed_version(&self) -> bool {
        matches!(self.consistency(), Some(Consistency::AtVersion(_)))
    }
}

/// The answer to a [`ShardRequest`], variant by variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardResponse {
    Written(ApplyOutcome),
    Value(Option<Versioned>),
    Items(Page<Versioned>),
    /// Changed keys with their value at the later version (`None`: deleted).
    Changes(Page<Option<Versioned>>),
}
