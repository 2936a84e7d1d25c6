//! Commands: what a shard's Raft log entries carry, and their on-log encoding.
//!
//! An entry's data is one format-version byte followed by the bincode of [`Command`].
//! Log entries outlive binaries (they are replayed after upgrades and shipped to peers
//! running other versions), so a new encoding gets a new version byte and an unknown
//! byte is `Corrupt`, never a guess.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};

/// Format version of [`Command::encode`].
const FORMAT_V1: u8 = 1;

/// A command in a shard's Raft log, proposed by the shard's leader and applied by every
/// replica with [`crate::ShardState::apply`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Conditional writes applied atomically at one version (the entry's log index):
    /// all of them or, if any condition fails, none.
    Batch(Vec<WriteOp>),
    /// A snapshot's marker: the entry's log index becomes this shard's cut for `epoch`
    /// and opens its alignment hold. A repeated marker of the same epoch changes
    /// nothing and reports the first one's cut.
    Marker { epoch: u64 },
    /// Ends `epoch`'s alignment hold (the snapshot completed or aborted).
    Release { epoch: u64 },
    /// Raise the history horizon to `horizon`: reads below it are refused from now on,
    /// and versions no read at or above it can see may be collected. Never lowers it.
    Compact { horizon: u64 },
    /// Phase one of a cross-shard transaction (see [`crate::txn`]): check the ops'
    /// conditions and lock their keys, or refuse and lock nothing. The ops take effect
    /// only when a `Resolve { commit: true }` of the same transaction is applied.
    Prepare { txn: u64, ops: Vec<WriteOp> },
    /// Phase two: apply (`commit`) or drop the transaction's prepared ops and unlock
    /// its keys. Idempotent; a resolve that arrives before its prepare is remembered,
    /// so the late prepare is refused.
    Resolve { txn: u64, commit: bool },
    /// Forget resolved transactions started before `before_ms` (their id's clock
    /// part) and refuse any later prepare of such a transaction. Never lowered.
    TxnHorizon { before_ms: u64 },
}

/// One write of a batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WriteOp {
    /// The user key.
    pub key: Vec<u8>,
    /// What to write.
    pub kind: OpKind,
    /// What must hold for `key` before the batch for the batch to apply.
    pub condition: Condition,
}

/// The effect of a [`WriteOp`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpKind {
    /// Set the key's value.
    Put(Vec<u8>),
    /// Delete the key (writes a tombstone if it was live, nothing otherwise).
    Delete,
    /// Write nothing: only the condition counts. Used by the cluster's own records to
    /// make a batch depend on keys it does not change.
    Check,
}

/// A precondition on a key's state before the batch.
///
/// New variants go at the end: conditions are in log entries, which outlive binaries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Condition {
    /// No condition.
    Always,
    /// The key has no live value (never written, or deleted).
    Absent,
    /// The key has a live value.
    Exists,
    /// The key has a live value written at exactly this version. Versions are log
    /// indexes (>= 1), so `Version(0)` never holds; use `Absent` for "not there".
    Version(u64),
    /// No live key starts with the op's key (read as a prefix). Evaluated by the
    /// state machine with a scan, not by [`Condition::holds`].
    NothingUnder,
    /// The key has a live value written at one of these versions (HTTP's `If-Match`
    /// with a list of ETags). An empty list never holds.
    VersionIn(Vec<u64>),
}

impl Condition {
    /// Whether the condition holds for a key whose live version is `current`.
    /// `NothingUnder` depends on other keys than the op's own, so it never holds here;
    /// the state machine evaluates it itself.
    pub fn holds(&self, current: Option<u64>) -> bool {
        match self {
            Condition::Always => true,
            Condition::Absent => current.is_none(),
            Condition::Exists => current.is_some(),
            Condition::Version(v) => current == Some(*v),
            Condition::NothingUnder => false,
            Condition::VersionIn(versions) => current.is_some_and(|c| versions.contains(&c)),
        }
    }
}

impl Command {
    /// Bytes for a log entry's data: version byte, then bincode.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![FORMAT_V1];
        // Serializing owned Vecs and enums into a Vec cannot fail; if bincode ever
        // disagrees, that is a bug worth crashing on rather than proposing garbage.
        bincode::serialize_into(&mut out, self).expect("bincode serialization of Command");
        out
    }

    /// Decode a log entry's data; an unknown version or bad bincode is `Corrupt`.
    pub fn decode(bytes: &[u8]) -> Result<Command> {
        match bytes.split_first() {
            Some((&FORMAT_V1, body)) => {
                crate::exact_bincode(body).map_err(|e| StoreError::corrupt(format!("command: {e}")))
            }
            Some((v, _)) => Err(StoreError::corrupt(format!(
                "command: unknown format version {v}"
            ))),
            None => Err(StoreError::corrupt("command: empty")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_version_check() {
        let c = Command::Batch(vec![
            WriteOp {
                key: b"a\x00".to_vec(),
                kind: OpKind::Put(b"v".to_vec()),
                condition: Condition::Version(7),
            },
            WriteOp {
                key: b"b".to_vec(),
                kind: OpKind::Delete,
                condition: Condition::Always,
            },
        ]);
        let bytes = c.encode();
        assert_eq!(bytes[0], FORMAT_V1);
        assert_eq!(Command::decode(&bytes).unwrap(), c);

        let mut unknown = bytes.clone();
        unknown[0] = 2;
        assert!(matches!(
            Command::decode(&unknown),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            Command::decode(&[]),
            Err(StoreError::Corrupt { .. })
        ));
        assert!(matches!(
            Command::decode(&bytes[..bytes.len() - 1]),
            Err(StoreError::Corrupt { .. })
        ));
    }
}
