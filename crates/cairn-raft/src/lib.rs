//! Multi-raft for Cairn: every shard of a node is its own Raft group, driven here.
//!
//! This crate owns the moving parts between an accepted request and durable, replicated
//! state: one [`replica`] per shard owning its raft-rs `RawNode`, driven by a few pool
//! threads that each make one sync cover all of their replicas; the [`commit`]
//! flusher that lets one fsync cover every shard of the node; the
//! [`transport`] that carries Raft messages (batched per peer), forwarded requests and
//! streamed Raft snapshots between nodes; and [`MultiRaft`], which starts and stops
//! them together and serves requests with the local replicas.
//!
//! What it must never do: decide where a request goes (the server's router does),
//! interpret commands, keys or values (the replica is generic over a [`StateMachine`]:
//! applying entries returns their outcomes and their `Effects` on held answers, which
//! the replica acts on without knowing why; Cairn's key-value shard is the machine the
//! node runs), or block an async worker on Raft or disk work (replicas
//! run on their pool threads; tree reads off the hot path run on the blocking pool).
//!
//! The guarantees it provides: a write is answered only after its entry is committed by
//! a quorum, fsync'd on this node, and applied; a linearizable read is answered only
//! after a ReadIndex round confirmed leadership and the state machine caught up to it;
//! a request whose fate is unknown (leadership lost, deadline passed) says so
//! ([`ShardError::OutcomeUnknown`]) instead of guessing.

pub mod call;
pub mod commit;
pub mod config;
pub mod error;
mod hosted;
pub mod machine;
pub mod multi_raft;
pub mod replica;
pub mod retry;
pub mod transport;

pub use call::{
    Call, Consistency, ControlRequest, MemberChange, Members, Progress, ShardRequest, ShardResponse,
};
pub use config::{PeerAddr, Placement, RaftConfig, RaftLimits};
pub use error::{RaftError, ReplicaError, ShardError};
pub use machine::StateMachine;
pub use multi_raft::{ControlPath, LocalShards, MultiRaft, ReplicaStatus};
pub use retry::Backoff;
pub use transport::LinkStatus;
