//! Snapshots and cross-shard transactions keep out of each other's way in the meta log.
//!
//! A cross-shard transaction becomes visible shard by shard, at each shard's `Resolve`
//! entry. For a snapshot to hold it entirely or not at all (guarantee 4), every shard's
//! resolve must land on the same side of that shard's marker. The meta log orders both
//! protocols, so one rule suffices: **no transaction is committed while an epoch is
//! placing its markers, and no epoch is allocated while a committed transaction is
//! still being resolved.**
//!
//! - Allocating epoch `e` writes `s/marking/e` in one conditional batch that also
//!   checks nothing is under `t/commit/`. Recording `e` done or aborted deletes it.
//! - Committing transaction `T` writes `t/commit/T` in one conditional batch that also
//!   checks nothing is under `s/marking/`. Once every shard has resolved `T`, it is
//!   deleted.
//!
//! So the meta log never has both an epoch marking and a transaction committing. A
//! transaction committed before `e` was allocated was resolved on every shard before
//! any marker of `e` was proposed: it is below every cut. One committed after `e` was
//! recorded done is resolved after every marker of `e` was applied: above every cut.
//! Aborted epochs are never read, so their late markers do not matter.
//!
//! Both sides only wait for the other briefly: an epoch marks for about one Raft round
//! trip (the sweeper aborts it within seconds if its coordinator dies), and a
//! committed transaction resolves in one round trip (the transaction sweeper finishes
//! it if its coordinator dies).
//!
//! **Fairness.** Under a steady stream of transactions, their commit windows overlap
//! and `t/commit/` might never be empty, starving snapshots. So an allocation that
//! finds commits in flight first writes `s/want/{nonce}` (its wall-clock time): new
//! commits wait while any want exists, the ones in flight resolve, and the allocation
//! gets its turn (its batch deletes the want). A want left by a coordinator that died
//! is removed by the snapshot sweeper after [`WANT_EXPIRES`].

use cairn_store::{Condition, OpKind, WriteOp};

/// Transactions committed and not yet resolved on every shard.
pub use cairn_cluster::keyspace::GATE_COMMITTING as COMMITTING;
/// Epochs whose markers may still be in flight.
pub use cairn_cluster::keyspace::GATE_MARKING as MARKING;
/// Allocations waiting for commits in flight to resolve.
pub use cairn_cluster::keyspace::GATE_WANT as WANT;
/// How old a want may grow before the sweeper removes it as abandoned.
pub const WANT_EXPIRES: std::time::Duration = std::time::Duration::from_secs(10);

pub fn want_key(nonce: u64) -> Vec<u8> {
    [WANT, &nonce.to_be_bytes()].concat()
}

pub fn marking_key(epoch: u64) -> Vec<u8> {
    [MARKING, &epoch.to_be_bytes()].concat()
}

pub fn committing_key(txn: u64) -> Vec<u8> {
    [COMMITTING, &txn.to_be_bytes()].concat()
}

fn nothing_under(prefix: &[u8]) -> WriteOp {
    WriteOp {
        key: prefix.to_vec(),
        kind: OpKind::Check,
        condition: Condition::NothingUnder,
    }
}

/// The check an epoch allocation carries: no transaction is committing.
pub fn no_commit_in_flight() -> WriteOp {
    nothing_under(COMMITTING)
}

/// The checks a transaction's commit carries: no epoch is placing markers, and none
/// is waiting for its turn.
pub fn no_epoch_marking() -> [WriteOp; 2] {
    [nothing_under(MARKING), nothing_under(WANT)]
}
