//! A shard's half of a cross-shard transaction: prepared intents, key locks, and the
//! memory of resolved transactions.
//!
//! A transaction touching several shards is committed in two phases through their own
//! Raft logs (the coordinator, which decides in the meta group, lives in `cairn-txn`):
//!
//! 1. `Prepare { txn, ops }` checks the ops' conditions against the shard's current
//!    state and, if they hold and no key is locked by another transaction, records the
//!    transaction and locks its keys. Nothing is visible yet.
//! 2. `Resolve { txn, commit }` writes the prepared ops at the resolve entry's own
//!    index (`commit`) or drops them, and unlocks the keys.
//!
//! While a key is locked, batches that touch it are refused with
//! [`ApplyOutcome::Locked`] (nothing written; the caller retries), and the shard's
//! leader holds linearizable reads of it (see [`ShardState::lock_in`]). So a reader
//! never sees one shard's half of a committed transaction before the other's: a key
//! whose transaction is decided but not yet resolved here is locked, not stale.
//!
//! Everything here is a pure function of the applied log, like the cut table: every
//! replica refuses and accepts the same prepares. Two rules make a prepare that
//! arrives late (a forwarded request delayed past its coordinator's abort) harmless:
//! a resolve with no prepare before it leaves a *tombstone* record, so the late
//! prepare is refused; and a `TxnHorizon { before_ms }` entry, which the meta leader
//! proposes periodically, forgets resolved records of transactions started before
//! `before_ms` (the clock part of the id, see [`txn_id`]) and refuses their prepares
//! from then on. Clock skew can only make a coordinator's prepares refused, never
//! accepted twice.
//!
//! Layout in the shard's data tree (next to the MVCC data, written in the same
//! batches as the applied index):
//!
//! ```text
//! b'l' ++ escape(key) ++ 00 00   ->  txn id (u64 BE): the key is locked (pending only)
//! b't' ++ txn id (u64 BE)        ->  format byte ++ bincode TxnRecord
//! m/txn_horizon                  ->  before_ms (u64 BE) ++ applied at (u64 BE)
//! ```
//!
//! A resolved record keeps its ops until the horizon forgets it, so that a Raft
//! snapshot can be exported *as of* an index at which the transaction was still
//! pending, while replicas keep applying.

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use crate::command::WriteOp;
use crate::error::{Result, StoreError};
use crate::keys;
use crate::state::{ApplyOutcome, ShardState};

/// Bits of a transaction id below its start time (random, for uniqueness).
const CLOCK_SHIFT: u32 = 20;
const RECORD_V1: u8 = 1;

/// A transaction id: its coordinator's start time in milliseconds, then 20 random
/// bits. The time part is what the transaction horizon compares.
pub fn txn_id(started_ms: u64, random: u64) -> u64 {
    (started_ms << CLOCK_SHIFT) | (random & ((1 << CLOCK_SHIFT) - 1))
}

/// The start time (milliseconds since the Unix epoch) encoded in a transaction id.
pub fn txn_started_ms(txn: u64) -> u64 {
    txn >> CLOCK_SHIFT
}

/// How a transaction ended on this shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resolution {
    /// Log index of the resolve entry (the version its writes were made at).
    pub index: u64,
    /// Whether the ops were applied.
    pub commit: bool,
}

/// This shard's record of one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    /// Log index of the prepare; 0 for a tombstone (resolved before any prepare).
    pub prepared_at: u64,
    /// `None` while pending.
    pub resolved: Option<Resolution>,
    /// The prepared ops (empty in a tombstone).
    pub ops: Vec<WriteOp>,
}

impl TxnRecord {
    /// Prepared here and not yet resolved: its keys are locked.
    pub fn is_pending(&self) -> bool {
        self.prepared_at > 0 && self.resolved.is_none()
    }

    /// The record as it stood after applying entry `upto`, if it existed then.
    pub fn as_of(&self, upto: u64) -> Option<TxnRecord> {
        let created = match (self.prepared_at, self.resolved) {
            (0, Some(r)) => r.index,
            (prepared, _) => prepared,
        };
        if created > upto {
            return None;
        }
        Some(TxnRecord {
            resolved: self.resolved.filter(|r| r.index <= upto),
            ..self.clone()
        })
    }

    fn encode(&self) -> Vec<u8> {
        let mut out = vec![RECORD_V1];
        // Owned vectors and integers always serialize.
        bincode::serialize_into(&mut out, self).expect("bincode serialization of TxnRecord");
        out
    }

    fn decode(txn: u64, bytes: &[u8]) -> Result<TxnRecord> {
        match bytes.split_first() {
            Some((&RECORD_V1, body)) => bincode::deserialize(body)
                .map_err(|e| StoreError::corrupt(format!("transaction {txn} record: {e}"))),
            _ => Err(StoreError::corrupt(format!(
                "transaction {txn} record: unknown format"
            ))),
        }
    }

    /// The distinct keys of the ops, in order.
    fn keys(&self) -> BTreeSet<&[u8]> {
        self.ops.iter().map(|op| op.key.as_slice()).collect()
    }
}

/// The transaction horizon: transactions started before `before_ms` are forgotten.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TxnHorizon {
    pub before_ms: u64,
    /// Log index of the entry that set it (0: never set).
    pub applied_at: u64,
}

impl TxnHorizon {
    fn encode(&self) -> [u8; 16] {
        keys::encode_pair(self.before_ms, self.applied_at)
    }

    fn decode(bytes: &[u8]) -> Result<TxnHorizon> {
        let (before_ms, applied_at) = keys::decode_pair(bytes).ok_or_else(|| {
            StoreError::corrupt(format!("transaction horizon has length {}", bytes.len()))
        })?;
        Ok(TxnHorizon {
            before_ms,
            applied_at,
        })
    }
}

/// What a linearizable read covers, for the lock check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadScope {
    /// Reads no user key (the cluster's own records, or a read that only needs an index).
    Nothing,
    /// One key.
    Key(Vec<u8>),
    /// Every key under `prefix` after `start_after` (a scan page may end anywhere).
    Range {
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
    },
}

fn lock_value(txn: u64) -> [u8; 8] {
    txn.to_be_bytes()
}

fn decode_lock(raw_key: &[u8], value: &[u8]) -> Result<u64> {
    value.try_into().map(u64::from_be_bytes).map_err(|_| {
        StoreError::corrupt(format!(
            "lock {raw_key:02x?} has a value of length {}",
            value.len()
        ))
    })
}

fn txn_of_key(raw: &[u8]) -> Result<u64> {
    raw.get(1..)
        .and_then(|b| b.try_into().ok())
        .map(u64::from_be_bytes)
        .ok_or_else(|| StoreError::corrupt(format!("transaction key {raw:02x?}")))
}

impl ShardState {
    /// The transaction holding `key`'s lock, if any.
    pub fn lock_holder(&self, key: &[u8]) -> Result<Option<u64>> {
        let raw = keys::lock_key(key);
        self.tree()
            .get(&raw)?
            .map(|v| decode_lock(&raw, &v))
            .transpose()
    }

    /// A transaction holding a lock on some key `scope` covers, if any. Exact at the
    /// applied index when called on the thread that applies (the replica's).
    pub fn lock_in(&self, scope: &ReadScope) -> Result<Option<u64>> {
        match scope {
            ReadScope::Nothing => Ok(None),
            ReadScope::Key(key) => self.lock_holder(key),
            ReadScope::Range {
                prefix,
                start_after,
            } => {
                let within = keys::lock_scan_prefix(prefix);
                let lower = match start_after {
                    Some(after) => keys::lock_after_key(after).max(within.clone()),
                    None => within.clone(),
                };
                match self.tree().range(lower..).next() {
                    Some(item) => {
                        let (k, v) = item?;
                        if k.starts_with(&within) {
                            decode_lock(&k, &v).map(Some)
                        } else {
                            Ok(None)
                        }
                    }
                    None => Ok(None),
                }
            }
        }
    }

    /// This shard's record of `txn`, if it has one.
    pub fn txn(&self, txn: u64) -> Result<Option<TxnRecord>> {
        self.tree()
            .get(keys::txn_key(txn))?
            .map(|v| TxnRecord::decode(txn, &v))
            .transpose()
    }

    /// Every record, oldest transaction first.
    pub fn txns(&self) -> Result<Vec<(u64, TxnRecord)>> {
        self.tree()
            .scan_prefix([keys::TXN_PREFIX])
            .map(|item| {
                let (k, v) = item?;
                let txn = txn_of_key(&k)?;
                Ok((txn, TxnRecord::decode(txn, &v)?))
            })
            .collect()
    }

    /// Transactions prepared here and not yet resolved (their keys are locked).
    pub fn pending_txns(&self) -> Result<Vec<u64>> {
        Ok(self
            .txns()?
            .into_iter()
            .filter(|(_, r)| r.is_pending())
            .map(|(txn, _)| txn)
            .collect())
    }

    /// The transaction horizon (zero if never set).
    pub fn txn_horizon(&self) -> Result<TxnHorizon> {
        match self.tree().get(keys::TXN_HORIZON_KEY)? {
            None => Ok(TxnHorizon::default()),
            Some(v) => TxnHorizon::decode(&v),
        }
    }

    /// The first op whose key another transaction than `txn` has locked.
    pub(crate) fn first_locked(
        &self,
        ops: &[WriteOp],
        txn: Option<u64>,
    ) -> Result<Option<(usize, u64)>> {
        for (i, op) in ops.iter().enumerate() {
            if let Some(holder) = self.lock_holder(&op.key)? {
                if Some(holder) != txn {
                    return Ok(Some((i, holder)));
                }
            }
        }
        Ok(None)
    }

    pub(crate) fn apply_prepare(
        &self,
        batch: &mut sled::Batch,
        index: u64,
        txn: u64,
        ops: &[WriteOp],
    ) -> Result<ApplyOutcome> {
        if txn_started_ms(txn) < self.txn_horizon()?.before_ms {
            return Ok(ApplyOutcome::TxnClosed);
        }
        match self.txn(txn)? {
            // A repeated prepare: the keys are still locked, the answer is the same.
            Some(record) if record.is_pending() => {
                let before = self.read_before(&record.ops)?;
                return Ok(ApplyOutcome::Prepared {
                    existed: before.existed(&record.ops),
                });
            }
            Some(_) => return Ok(ApplyOutcome::TxnClosed),
            None => {}
        }
        if let Some((op, holder)) = self.first_locked(ops, Some(txn))? {
            return Ok(ApplyOutcome::Locked { op, txn: holder });
        }
        let before = self.read_before(ops)?;
        if let Some((op, current)) = self.failed_condition(ops, &before)? {
            return Ok(ApplyOutcome::Rejected { op, current });
        }
        let record = TxnRecord {
            prepared_at: index,
            resolved: None,
            ops: ops.to_vec(),
        };
        for key in record.keys() {
            batch.insert(keys::lock_key(key), &lock_value(txn)[..]);
        }
        batch.insert(&keys::txn_key(txn)[..], record.encode());
        Ok(ApplyOutcome::Prepared {
            existed: before.existed(ops),
        })
    }

    pub(crate) fn apply_resolve(
        &self,
        batch: &mut sled::Batch,
        index: u64,
        txn: u64,
        commit: bool,
    ) -> Result<ApplyOutcome> {
        let record = match self.txn(txn)? {
            Some(record) => match record.resolved {
                // Resolved before: the same answer again (the coordinator may retry).
                Some(r) => {
                    return Ok(ApplyOutcome::Resolved {
                        committed: r.commit,
                        version: r
                            .commit
                            .then_some(r.index)
                            .filter(|_| record.prepared_at > 0),
                    })
                }
                None => record,
            },
            // Resolved before its prepare (or after the horizon forgot it): remember
            // the outcome so a late prepare is refused.
            None => {
                let tombstone = TxnRecord {
                    prepared_at: 0,
                    resolved: Some(Resolution { index, commit }),
                    ops: Vec::new(),
                };
                batch.insert(&keys::txn_key(txn)[..], tombstone.encode());
                return Ok(ApplyOutcome::Resolved {
                    committed: commit,
                    version: None,
                });
            }
        };
        if commit {
            let before = self.read_before(&record.ops)?;
            self.write_ops(batch, &record.ops, &before, index);
        }
        for key in record.keys() {
            batch.remove(keys::lock_key(key));
        }
        let resolved = TxnRecord {
            resolved: Some(Resolution { index, commit }),
            ..record
        };
        batch.insert(&keys::txn_key(txn)[..], resolved.encode());
        Ok(ApplyOutcome::Resolved {
            committed: commit,
            version: commit.then_some(index),
        })
    }

    pub(crate) fn apply_txn_horizon(
        &self,
        batch: &mut sled::Batch,
        index: u64,
        before_ms: u64,
    ) -> Result<ApplyOutcome> {
        let current = self.txn_horizon()?;
        let before_ms = before_ms.max(current.before_ms);
        let mut forgotten = 0;
        for (txn, record) in self.txns()? {
            if txn_started_ms(txn) < before_ms && record.resolved.is_some() {
                batch.remove(&keys::txn_key(txn)[..]);
                forgotten += 1;
            }
        }
        let horizon = TxnHorizon {
            before_ms,
            applied_at: index,
        };
        batch.insert(keys::TXN_HORIZON_KEY, &horizon.encode()[..]);
        Ok(ApplyOutcome::TxnsForgotten { forgotten })
    }

    /// The transaction records, their locks and the horizon as they stood after entry
    /// `upto`, for a Raft snapshot. Read at once (they are few), so the rest of the
    /// export can stream while replicas keep applying. If the horizon moved after
    /// `upto`, records the snapshot needs may be gone: that is an error, and the
    /// snapshot is retried at a later index.
    pub(crate) fn export_txns(&self, upto: u64) -> Vec<Result<(Vec<u8>, Vec<u8>)>> {
        let read = || -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
            let horizon = self.txn_horizon()?;
            let records = self.txns()?;
            if horizon.applied_at > upto || self.txn_horizon()? != horizon {
                return Err(StoreError::corrupt(format!(
                    "shard {}: the transaction horizon moved past the snapshot index {upto}; take a newer snapshot",
                    self.shard()
                )));
            }
            let mut out = Vec::new();
            if horizon.applied_at > 0 {
                out.push((keys::TXN_HORIZON_KEY.to_vec(), horizon.encode().to_vec()));
            }
            for (txn, record) in records {
                let Some(record) = record.as_of(upto) else {
                    continue;
                };
                if record.is_pending() {
                    for key in record.keys() {
                        out.push((keys::lock_key(key), lock_value(txn).to_vec()));
                    }
                }
                out.push((keys::txn_key(txn).to_vec(), record.encode()));
            }
            Ok(out)
        };
        match read() {
            Ok(pairs) => pairs.into_iter().map(Ok).collect(),
            Err(e) => vec![Err(e)],
        }
    }
}

/// Whether a staged (key, value) pair is a valid transaction, lock or horizon record.
/// `None` if the key belongs to none of them.
pub(crate) fn validate_staged(key: &[u8], value: &[u8]) -> Option<Result<()>> {
    match key.first() {
        Some(&keys::TXN_PREFIX) => {
            Some(txn_of_key(key).and_then(|txn| TxnRecord::decode(txn, value).map(|_| ())))
        }
        Some(&keys::LOCK_PREFIX) => Some(decode_lock(key, value).map(|_| ())),
        _ if key == keys::TXN_HORIZON_KEY => Some(TxnHorizon::decode(value).map(|_| ())),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_carry_their_start_time() {
        let id = txn_id(1_764_000_000_123, u64::MAX);
        assert_eq!(txn_started_ms(id), 1_764_000_000_123);
        assert_ne!(txn_id(5, 1), txn_id(5, 2));
    }

    #[test]
    fn records_as_of_an_index() {
        let pending = TxnRecord {
            prepared_at: 10,
            resolved: Some(Resolution {
                index: 20,
                commit: true,
            }),
            ops: Vec::new(),
        };
        assert_eq!(pending.as_of(9), None);
        assert!(pending.as_of(15).is_some_and(|r| r.is_pending()));
        assert!(pending.as_of(20).is_some_and(|r| !r.is_pending()));
        let tombstone = TxnRecord {
            prepared_at: 0,
            resolved: Some(Resolution {
                index: 7,
                commit: false,
            }),
            ops: Vec::new(),
        };
        assert_eq!(tombstone.as_of(6), None);
        assert!(tombstone.as_of(7).is_some_and(|r| !r.is_pending()));
        assert!(TxnRecord::decode(1, &[9, 0]).is_err());
        assert_eq!(TxnRecord::decode(1, &pending.encode()).ok(), Some(pending));
    }
}
