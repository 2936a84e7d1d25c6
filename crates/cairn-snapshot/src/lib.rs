//! Consistent cross-shard snapshots for Cairn, by markers in every shard's Raft log.
//!
//! A snapshot is an epoch `e`: a `Marker(e)` entry in every shard's log, whose index
//! is that shard's cut, plus a record in the meta group. It copies nothing: the shards
//! keep every version (MVCC), and reading the snapshot means reading each shard at
//! its cut minus one. This crate owns the protocol ([`coordinator`]) and the record of
//! snapshots ([`registry`]). What decides lives in I/O-free state machines that the
//! async coordinator and the deterministic simulator both drive: [`Marking`] (one
//! epoch's markers to its fate) and [`epoch`] (the epoch's registry writes:
//! allocation behind the gate, the conditional finish, the close, the sweeper's
//! choice); the alignment window that makes the cut respect real time
//! lives in each replica (`cairn_raft`), derived from the markers and releases it
//! applies.
//!
//! It reaches shards only through the `cairn_cluster::Shards` trait, so it never knows where a
//! leader is or how a request travels; it must never read or write a shard's tree
//! directly.

pub mod coordinator;
pub mod epoch;
pub mod error;
pub mod gate;
pub mod marking;
pub mod registry;
#[cfg(feature = "testing")]
pub mod testing;

pub use coordinator::{Coordinator, SnapshotConfig};
pub use epoch::{Allocation, Finish, Sweep};
pub use error::SnapshotError;
pub use marking::Marking;
pub use registry::{Registry, SnapshotRecord, SnapshotState};
