//! Errors a shard request can end in. They cross the peer transport (a forwarded
//! request's error comes back to the node that forwarded it), so they are plain data.

use cairn_store::{NodeId, ShardId};
use serde::{Deserialize, Serialize};

/// Why a shard request failed, phrased as what the caller should do next.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
pub enum ShardError {
    /// This replica is not the shard's leader: forward to `leader` if known, otherwise
    /// wait for an election and retry.
    #[error("this node is not the leader of shard {shard}")]
    NotLeader {
        shard: ShardId,
        leader: Option<NodeId>,
    },
    /// The shard cannot serve right now (no quorum, queue full, peer unreachable);
    /// nothing was changed and the request may be retried.
    #[error("shard {shard} is unavailable: {reason}")]
    Unavailable { shard: ShardId, reason: String },
    /// A write was proposed but this node lost track of it (leadership lost or the
    /// deadline passed): it may or may not have been applied.
    #[error("outcome of the write on shard {shard} is unknown: {reason}")]
    OutcomeUnknown { shard: ShardId, reason: String },
    /// The local store failed; the request did not complete.
    #[error("storage error on shard {shard}: {reason}")]
    Storage { shard: ShardId, reason: String },
    /// The read asked for a version below the shard's history horizon; that history
    /// may have been collected. Reading elsewhere will not help.
    #[error("shard {shard} no longer holds history below version {horizon}")]
    HistoryCollected { shard: ShardId, horizon: u64 },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A proposal, or a call or its answer on the peer transport, is larger than the
    /// limit that keeps every Raft entry and frame deliverable. Nothing was changed;
    /// the same request will fail again: make it smaller (fewer or smaller values, a
    /// smaller page).
    #[error("{what} on shard {shard} is {bytes} bytes, over the limit of {limit}")]
    TooLarge {
        shard: ShardId,
        what: String,
        bytes: usize,
        limit: usize,
    },
    /// A client call named a group that only control calls may reach (the meta
    /// group): nothing was changed. The HTTP API never builds such a call, so seeing
    /// this means a peer or a caller is broken or hostile.
    #[error("shard {shard} is not reachable by client calls: {reason}")]
    Refused { shard: ShardId, reason: String },
    /// A peer answered with the wrong kind of answer for the call: the two nodes
    /// disagree on the protocol. The call's outcome is unknown.
    #[error("protocol fault on shard {shard}: {reason}")]
    Protocol { shard: ShardId, reason: String },
}

impl ShardError {
    /// True when retrying (after forwarding or a short wait) cannot apply a write twice.
    pub fn is_retryable(&self) -> bool {
        self.retry_at().is_some()
    }

    /// Where to try again, for an error after which nothing changed: `Some(leader)`
    /// (the leader this replica named, if any) for `NotLeader`, `Some(None)` for
    /// `Unavailable`; `None` when the call must not be repeated blindly. Every router
    /// (the server's, the simulator's) decides by this.
    pub fn retry_at(&self) -> Option<Option<NodeId>> {
        match self {
            ShardError::NotLeader { leader, .. } => Some(*leader),
            ShardError::Unavailable { .. } => Some(None),
            _ => None,
        }
    }
}

/// A failure inside a replica's Raft loop. Memory and disk may be out of step, so the
/// replica must not go on: the thread loop aborts the process and a restart recovers
/// from disk; the simulator fails the run.
#[derive(Debug, thiserror::Error)]
pub enum ReplicaError {
    #[error(transparent)]
    Store(#[from] cairn_store::StoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("undecodable membership change: {0}")]
    ConfChange(#[from] protobuf::ProtobufError),
    /// The durability layer could not make writes durable.
    #[error(transparent)]
    Sync(#[from] crate::commit::SyncError),
}

/// Errors starting or running the multi-raft host itself (not a single request).
#[derive(Debug, thiserror::Error)]
pub enum RaftError {
    #[error(transparent)]
    Store(#[from] cairn_store::StoreError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("peer transport: {0}")]
    Io(#[from] std::io::Error),
    #[error("invalid configuration: {0}")]
    Config(String),
}
