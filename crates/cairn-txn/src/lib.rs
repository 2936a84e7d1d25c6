//! Cross-shard atomic batches for Cairn: two-phase commit through the shards' own Raft
//! logs, decided in the meta group.
//!
//! A batch whose keys hash to several shards is a transaction `T`:
//!
//! 1. **Record.** The coordinator (whichever node was asked) writes `t/txn/T`
//!    (pending, with the shards it touches) in the meta group. From here on the meta
//!    leader's sweeper can finish `T` if the coordinator dies.
//! 2. **Prepare.** Every shard applies `Prepare(T, its ops)`: it checks the ops'
//!    conditions and locks their keys, or refuses (a failed condition, a key locked by
//!    another transaction) and locks nothing. Locked keys refuse other writes and hold
//!    linearizable reads (`cairn-store`'s `txn` module, `cairn-raft`'s replica).
//! 3. **Decide.** If every shard prepared, one conditional meta batch marks `T`
//!    committed and writes `t/commit/T`, provided no snapshot epoch is placing markers
//!    (`cairn_snapshot::gate`). That write is the commit point. Otherwise `T` is marked
//!    aborted.
//! 4. **Resolve.** Every shard applies `Resolve(T, commit)`: the ops become visible at
//!    that entry's index, the locks go. Then `t/txn/T` and `t/commit/T` are deleted.
//!
//! Why it is atomic for readers: a key of `T` is locked from its shard's prepare to
//! its shard's resolve, and a linearizable read of a locked key waits. So once any
//! reader has seen one of `T`'s writes, every later read of another of its keys sees
//! it too, even on a shard that has not resolved yet. Why it is atomic for snapshots:
//! the gate keeps every shard's resolve of `T` on the same side of that shard's marker.
//!
//! Failures: a coordinator that dies leaves the record; the sweeper aborts a pending
//! transaction after `abort_after` and re-resolves a decided one. A prepare that
//! reaches a shard after its abort there is refused (the shard remembers resolved
//! transactions until the transaction horizon, which the sweeper raises, forgets
//! them; prepares older than the horizon are refused outright). Conflicts follow
//! wait-die: an older transaction waits for a younger one's lock, a younger one
//! aborts and retries under a new id that keeps its first start time, so waits never
//! form a cycle and a transaction that keeps losing grows old and wins.
//!
//! What decides lives in I/O-free state machines that the async coordinator and the
//! deterministic simulator both drive: [`Ballot`] (the prepare answers to commit or
//! abort) and [`decision`] (the meta-group side: the record, the commit behind the
//! snapshot gate, the abort, the cleanup, the sweeper's choice).
//!
//! This crate reaches shards and the meta group only through
//! [`cairn_cluster::Shards`]; it never reads a tree or knows where a leader is.

pub mod ballot;
mod coordinator;
pub mod decision;
mod error;
pub mod record;

pub use ballot::{Ballot, Refusal};
pub use coordinator::{Transactions, TxnConfig, TxnOutcome};
pub use decision::{Abort, Commit, CommitEnd, TxnSweep};
pub use error::TxnError;
pub use record::{TxnRecord, TxnState};
