//! The meta group's keyspace: every record the cluster keeps about itself, in one
//! table. Each owner writes only under its own prefixes; this file is where a new one
//! is claimed, so two owners can never collide.
//!
//! ```text
//! prefix         owner            holds
//! s/next         cairn-snapshot   next epoch to allocate (u64 BE)
//! s/id/          cairn-snapshot   snapshot records (JSON) by !id BE, newest first
//! s/name/        cairn-snapshot   name -> id of named snapshots
//! s/time/        cairn-snapshot   !millis BE ++ id BE -> completed snapshots by time
//! s/open/        cairn-snapshot   epochs whose shards may still hold a window
//! s/auto/        cairn-snapshot   millis BE ++ id BE: automatic snapshots (retention)
//! s/marking/     snapshot gate    epochs whose markers may still be in flight
//! s/want/        snapshot gate    allocations waiting for commits to resolve
//! t/commit/      snapshot gate    transactions committed, not resolved everywhere
//! t/txn/         cairn-txn        transaction records by id
//! b/next         cairn-backup     next backup number
//! b/id/          cairn-backup     backup records
//! b/sched/       cairn-backup     schedule state (last tick fired, last result)
//! r/             cairn-server     revert audit records by millis BE ++ node BE
//! n/state/       cairn-server     node id BE -> a node's state (`decommissioning`, ...)
//! n/member/      cairn-server     node id BE -> peer address of a node that joined
//! a/token/       cairn-server     token id -> the token's role, name and secret's hash
//! a/audit/       cairn-server     !millis BE ++ node BE ++ seq BE -> an admin action
//! ```

/// Next epoch to allocate.
pub const SNAPSHOT_NEXT: &[u8] = b"s/next";
/// Snapshot records by id.
pub const SNAPSHOT_ID: &[u8] = b"s/id/";
/// Named snapshots' ids.
pub const SNAPSHOT_NAME: &[u8] = b"s/name/";
/// Completed snapshots by time.
pub const SNAPSHOT_TIME: &[u8] = b"s/time/";
/// Epochs whose shards may still hold an alignment window.
pub const SNAPSHOT_OPEN: &[u8] = b"s/open/";
/// Automatic snapshots, oldest first.
pub const SNAPSHOT_AUTO: &[u8] = b"s/auto/";
/// Epochs whose markers may still be in flight (the snapshot/transaction gate).
pub const GATE_MARKING: &[u8] = b"s/marking/";
/// Allocations waiting for commits in flight to resolve (the gate's fairness).
pub const GATE_WANT: &[u8] = b"s/want/";
/// Transactions committed and not yet resolved on every shard (the gate).
pub const GATE_COMMITTING: &[u8] = b"t/commit/";
/// Transaction records.
pub const TXN: &[u8] = b"t/txn/";
/// Next backup number.
pub const BACKUP_NEXT: &[u8] = b"b/next";
/// Backup records.
pub const BACKUP_ID: &[u8] = b"b/id/";
/// Backup schedule state.
pub const BACKUP_SCHEDULE: &[u8] = b"b/sched/";
/// Revert audit records.
pub const REVERT_AUDIT: &[u8] = b"r/";

/// Node states other than active, by node id.
pub const NODE_STATE: &[u8] = b"n/state/";

/// Nodes that joined after the cluster was founded, by node id: their peer address.
pub const NODE_MEMBER: &[u8] = b"n/member/";

/// Bearer tokens by id: role, name and the hash of the secret (never the secret).
pub const AUTH_TOKEN: &[u8] = b"a/token/";

/// The audit log of admin actions, newest first.
pub const AUDIT: &[u8] = b"a/audit/";

/// Every prefix above, for checks.
pub const ALL: &[&[u8]] = &[
    SNAPSHOT_NEXT,
    SNAPSHOT_ID,
    SNAPSHOT_NAME,
    SNAPSHOT_TIME,
    SNAPSHOT_OPEN,
    SNAPSHOT_AUTO,
    GATE_MARKING,
    GATE_WANT,
    GATE_COMMITTING,
    TXN,
    BACKUP_NEXT,
    BACKUP_ID,
    BACKUP_SCHEDULE,
    REVERT_AUDIT,
    NODE_STATE,
    NODE_MEMBER,
    AUTH_TOKEN,
    AUDIT,
];

#[cfg(test)]
mod tests {
    use super::*;

    /// A prefix inside another would let one owner's scan see the other's records.
    #[test]
    fn no_prefix_lies_inside_another() {
        for (i, a) in ALL.iter().enumerate() {
            for (j, b) in ALL.iter().enumerate() {
                if i != j {
                    assert!(
                        !b.starts_with(a),
                        "{} lies inside {}",
                        String::from_utf8_lossy(b),
                        String::from_utf8_lossy(a)
                    );
                }
            }
        }
    }
}
