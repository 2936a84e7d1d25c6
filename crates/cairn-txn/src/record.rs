//! The meta group's record of a transaction.
//!
//! ```text
//! t/txn/{id BE}     the record (JSON): state, shards, start time, coordinator node
//! t/commit/{id BE}  present from the commit decision until every shard resolved
//!                   (`cairn_snapshot::gate`: no epoch is allocated meanwhile)
//! ```
//!
//! A record changes only by writes conditional on the version its writer read, so a
//! coordinator committing and the sweeper aborting cannot both win.

use cairn_cluster::{Meta, MetaError};
use cairn_store::{ShardId, Versioned};
use serde::{Deserialize, Serialize};

use crate::error::TxnError;

/// Prefix of every transaction record.
pub use cairn_cluster::keyspace::TXN;

pub fn txn_key(id: u64) -> Vec<u8> {
    [TXN, &id.to_be_bytes()].concat()
}

/// Where a transaction stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TxnState {
    /// Shards are preparing; nothing is decided.
    Pending,
    /// Decided: every shard must apply the ops.
    Committed,
    /// Decided: no shard may apply them.
    Aborted,
}

/// One transaction as the meta group records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnRecord {
    pub id: u64,
    pub state: TxnState,
    /// Every shard that may hold a prepare of it: all of them must be resolved.
    pub shards: Vec<ShardId>,
    /// Wall clock of the coordinator when it started (labels and ages; never orders).
    pub started_ms: u64,
    /// The coordinating node.
    pub node: u64,
}

impl TxnRecord {
    pub fn encode(&self) -> Result<Vec<u8>, TxnError> {
        serde_json::to_vec(self).map_err(|e| TxnError::Corrupt(e.to_string()))
    }

    pub fn decode(value: &Versioned) -> Result<TxnRecord, TxnError> {
        serde_json::from_slice(&value.value)
            .map_err(|e| TxnError::Corrupt(format!("transaction record: {e}")))
    }
}

/// A record and the meta version it was read at.
#[derive(Debug, Clone)]
pub struct Tracked {
    pub record: TxnRecord,
    pub version: u64,
}

/// The current record of `id`, if any.
pub async fn read<S: cairn_cluster::Shards>(
    meta: &Meta<'_, S>,
    id: u64,
) -> Result<Option<Tracked>, TxnError> {
    match meta.get(txn_key(id)).await.map_err(meta_error)? {
        Some(v) => Ok(Some(Tracked {
            record: TxnRecord::decode(&v)?,
            version: v.version,
        })),
        None => Ok(None),
    }
}

pub fn meta_error(e: MetaError) -> TxnError {
    match e {
        MetaError::Shard(e) => TxnError::Shard(e),
        other => TxnError::Meta(other.to_string()),
    }
}
