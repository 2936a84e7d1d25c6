//! Online prefix revert: set every key under a prefix back to its value at a snapshot,
//! deleting the keys created since, as one atomic change.
//!
//! The change is computed per shard from a linearizable scan of now and a scan at the
//! snapshot, then applied as **one cross-shard transaction** (`cairn-txn`) whose every
//! op is conditional on the version it replaces. Readers see the prefix either all
//! before or all after the revert, and a snapshot holds it entirely or not at all. If
//! a concurrent write slips in between planning and prepare, the transaction is
//! refused as a whole and planned again, so a revert never overwrites a write it did
//! not see. Each revert leaves an audit record in the meta group (`GET /v1/reverts`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_client::api::{RevertResponse, RevertShard};
use cairn_cluster::clock::now_ms;
use cairn_cluster::meta::{put, Meta};
use cairn_raft::{Consistency, ShardError};
use cairn_snapshot::SnapshotRecord;
use cairn_store::{Condition, OpKind, Page, PageLimit, ShardId, WriteOp};
use cairn_txn::{Transactions, TxnError};
use serde::{Deserialize, Serialize};

use crate::router::{Control, Router};

use cairn_cluster::keyspace::REVERT_AUDIT as AUDIT;
/// Most keys one shard's part of a revert may change; more is refused (use a restore).
pub const MAX_REVERT_KEYS: usize = 10_000;
/// Most bytes of keys and values a revert reads from one shard's prefix, per side
/// (now and at the snapshot), in entries' worth: a revert holds what it compares in
/// memory, and what it changes must fit one entry anyway.
const READ_ENTRIES: usize = 4;
const PAGE: usize = 1000;
const ATTEMPTS: usize = 8;

/// Why a revert did not happen. In every case nothing was changed.
#[derive(Debug, thiserror::Error)]
pub enum RevertError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Txn(TxnError),
    #[error("reverting shard {shard} {what}; revert a narrower prefix, or restore from a backup")]
    TooLarge { shard: ShardId, what: String },
    #[error("keys under the prefix kept changing under the revert ({ATTEMPTS} attempts); nothing was changed")]
    Contended,
    #[error("{0}")]
    Meta(String),
}

/// The audit record of one revert.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RevertAudit {
    pub id: u64,
    pub time_ms: u64,
    /// The prefix, base64.
    pub prefix_b64: String,
    pub snapshot: u64,
    pub node: u64,
    pub shards: Vec<RevertShard>,
    /// The transaction that applied it (absent if nothing changed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transaction: Option<u64>,
}

/// Online reverts: planned from the router's reads, applied as one transaction,
/// recorded in the meta group's audit log (through the control path).
pub struct Reverts {
    router: Arc<Router>,
    control: Arc<Control>,
    txns: Arc<Transactions<Control>>,
    timeout: Duration,
    node: u64,
}

impl Reverts {
    pub fn new(
        router: Arc<Router>,
        control: Arc<Control>,
        txns: Arc<Transactions<Control>>,
        timeout: Duration,
        node: u64,
    ) -> Reverts {
        Reverts {
            router,
            control,
            txns,
            timeout,
            node,
        }
    }

    /// Revert `prefix` to `snapshot` on every shard in one transaction, then record
    /// it; with `dry_run`, plan it and answer what it would change, changing nothing.
    pub async fn revert(
        &self,
        prefix: &[u8],
        snapshot: &SnapshotRecord,
        dry_run: bool,
    ) -> Result<RevertResponse, RevertError> {
        revert(self, prefix, snapshot, dry_run).await
    }

    /// Every recorded revert, oldest first.
    pub async fn audit_log(&self) -> Result<Vec<RevertAudit>, RevertError> {
        Meta::new(&*self.control)
            .scan_all(AUDIT)
            .await
            .map_err(|e| RevertError::Meta(e.to_string()))?
            .iter()
            .map(|(_, v)| {
                serde_json::from_slice(&v.value)
                    .map_err(|e| RevertError::Meta(format!("audit record: {e}")))
            })
            .collect()
    }
}

async fn revert(
    reverts: &Reverts,
    prefix: &[u8],
    snapshot: &SnapshotRecord,
    dry_run: bool,
) -> Result<RevertResponse, RevertError> {
    let Reverts {
        router,
        control,
        txns,
        timeout,
        node,
    } = reverts;
    let (timeout, node) = (*timeout, *node);
    let mut attempt = 0;
    let (shards, transaction) = loop {
        attempt += 1;
        let mut ops = Vec::new();
        let mut parts = Vec::new();
        for shard in 0..router.shard_count() {
            let at = snapshot.read_version(shard).ok_or_else(|| {
                RevertError::Meta(format!(
                    "snapshot {} has no cut for shard {shard}",
                    snapshot.id
                ))
            })?;
            let shard_ops = plan_shard(router, shard, prefix, at).await?;
            let restored = shard_ops
                .iter()
                .filter(|op| matches!(op.kind, OpKind::Put(_)))
                .count() as u64;
            parts.push(RevertShard {
                shard,
                version: None,
                restored,
                deleted: shard_ops.len() as u64 - restored,
            });
            ops.extend(shard_ops);
        }
        if dry_run {
            return Ok(RevertResponse {
                id: 0,
                dry_run: true,
                snapshot: snapshot.id,
                restored: parts.iter().map(|s| s.restored).sum(),
                deleted: parts.iter().map(|s| s.deleted).sum(),
                shards: parts,
            });
        }
        if ops.is_empty() {
            break (parts, None);
        }
        let shard_of: Vec<ShardId> = ops.iter().map(|op| router.shard_of(&op.key)).collect();
        match txns.commit(ops, timeout).await {
            Ok(outcome) => {
                for (shard, version) in shard_of.iter().zip(&outcome.versions) {
                    if let Some(part) = parts.iter_mut().find(|p| p.shard == *shard) {
                        part.version = part.version.max(*version);
                    }
                }
                break (parts, Some(outcome.txn));
            }
            // A key changed since the plan: plan again from the new state.
            Err(TxnError::Rejected { .. }) if attempt < ATTEMPTS => {}
            Err(TxnError::Rejected { .. }) => return Err(RevertError::Contended),
            Err(e) => return Err(RevertError::Txn(e)),
        }
    };
    let time_ms = now_ms();
    let audit = RevertAudit {
        id: time_ms,
        time_ms,
        prefix_b64: base64_of(prefix),
        snapshot: snapshot.id,
        node,
        shards: shards.clone(),
        transaction,
    };
    let record = serde_json::to_vec(&audit).map_err(|e| RevertError::Meta(e.to_string()))?;
    let key = [AUDIT, &time_ms.to_be_bytes(), &node.to_be_bytes()].concat();
    Meta::new(&**control)
        .write(vec![put(key, record, Condition::Always)])
        .await
        .map_err(|e| RevertError::Meta(format!("recording the revert: {e}")))?;
    tracing::info!(snapshot = snapshot.id, prefix = %String::from_utf8_lossy(prefix), ?transaction, "prefix reverted");
    Ok(RevertResponse {
        id: audit.id,
        dry_run: false,
        snapshot: snapshot.id,
        restored: shards.iter().map(|s| s.restored).sum(),
        deleted: shards.iter().map(|s| s.deleted).sum(),
        shards,
    })
}

/// The conditional ops that take `shard`'s keys under `prefix` back to version `at`.
async fn plan_shard(
    router: &Router,
    shard: ShardId,
    prefix: &[u8],
    at: u64,
) -> Result<Vec<WriteOp>, RevertError> {
    let now = scan_shard(router, shard, prefix, Consistency::Linearizable).await?;
    let then = scan_shard(router, shard, prefix, Consistency::AtVersion(at)).await?;
    let entry = router.raft().config().limits.max_entry_bytes;
    let mut ops = Vec::new();
    for (key, (_, value)) in &then {
        match now.get(key) {
            // Same value (even if rewritten since): nothing to do.
            Some((_, current_value)) if current_value == value => {}
            Some((current, _)) => ops.push(WriteOp {
                key: key.clone(),
                kind: OpKind::Put(value.clone()),
                condition: Condition::Version(*current),
            }),
            None => ops.push(WriteOp {
                key: key.clone(),
                kind: OpKind::Put(value.clone()),
                condition: Condition::Absent,
            }),
        }
    }
    for (key, (current, _)) in &now {
        if !then.contains_key(key) {
            ops.push(WriteOp {
                key: key.clone(),
                kind: OpKind::Delete,
                condition: Condition::Version(*current),
            });
        }
    }
    if ops.len() > MAX_REVERT_KEYS {
        return Err(RevertError::TooLarge {
            shard,
            what: format!("would change {} keys, over {MAX_REVERT_KEYS}", ops.len()),
        });
    }
    // The shard's part of the transaction is one Raft entry (its prepare).
    let bytes: usize = ops.iter().map(op_bytes).sum();
    if bytes > entry {
        return Err(RevertError::TooLarge {
            shard,
            what: format!(
                "would write about {bytes} bytes, over the entry limit of {entry} (--max-entry-bytes)"
            ),
        });
    }
    Ok(ops)
}

/// What an op costs in its shard's prepare entry, about.
fn op_bytes(op: &WriteOp) -> usize {
    let value = match &op.kind {
        OpKind::Put(value) => value.len(),
        OpKind::Delete | OpKind::Check => 0,
    };
    Page::<()>::cost(op.key.len(), value)
}

type Keys = BTreeMap<Vec<u8>, (u64, Vec<u8>)>;

async fn scan_shard(
    router: &Router,
    shard: ShardId,
    prefix: &[u8],
    consistency: Consistency,
) -> Result<Keys, RevertError> {
    let budget = READ_ENTRIES * router.raft().config().limits.max_entry_bytes;
    let mut keys = Keys::new();
    let mut bytes = 0;
    let mut start_after = None;
    loop {
        let limit = PageLimit {
            items: PAGE,
            bytes: router.page_bytes(),
        };
        let page = router
            .scan_shard(shard, prefix, start_after.as_deref(), limit, consistency)
            .await?;
        start_after = page.items.last().map(|(k, _)| k.clone());
        for (key, v) in page.items {
            bytes += Page::<()>::cost(key.len(), v.value.len());
            keys.insert(key, (v.version, v.value));
        }
        if keys.len() > 2 * MAX_REVERT_KEYS {
            return Err(RevertError::TooLarge {
                shard,
                what: format!("would compare more than {} keys", 2 * MAX_REVERT_KEYS),
            });
        }
        if bytes > budget {
            return Err(RevertError::TooLarge {
                shard,
                what: format!("would compare more than {budget} bytes of keys and values"),
            });
        }
        if !page.more {
            return Ok(keys);
        }
    }
}

fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
