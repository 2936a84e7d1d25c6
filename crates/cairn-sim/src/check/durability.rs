//! Durability and exactly-once, read from the final trees.
//!
//! Every value names its write, so the final trees say exactly which writes were
//! applied, where and how often:
//!
//! - a write id found twice was applied twice (a retried or duplicated command);
//! - an acknowledged write must be there, at the version it was acknowledged with
//!   (a batch's ops all at that one version; an acknowledged delete of a live key
//!   leaves a tombstone there);
//! - a write refused in a way that promises "nothing changed" (`Rejected`, `Locked`,
//!   `NotApplied`, an aborted transaction) must not be there at all;
//! - a write of unknown outcome is there whole or not at all;
//! - a read served at version `at` returned the tree's state at `at`.

use std::collections::BTreeMap;

use cairn_store::ShardId;

use crate::check::{CheckStats, ShardFinal};
use crate::history::{op_of, Action, History, KeyWrite, Outcome};

pub fn check(
    history: &History,
    finals: &BTreeMap<ShardId, ShardFinal>,
    shard_of: &dyn Fn(&str) -> ShardId,
    stats: &mut CheckStats,
    violations: &mut Vec<String>,
) {
    // Where each write id was applied: (shard, key, version).
    let mut placed: BTreeMap<u64, (ShardId, String, u64)> = BTreeMap::new();
    for (&shard, fin) in finals {
        for (key, versions) in &fin.keys {
            for &(version, id) in versions {
                stats.versions_checked += 1;
                let Some(id) = id else { continue };
                if let Some((s0, k0, v0)) = placed.get(&id) {
                    violations.push(format!(
                        "applied twice: write {id} is at {k0}@{v0} (shard {s0}) and at {key}@{version} (shard {shard})"
                    ));
                    continue;
                }
                placed.insert(id, (shard, key.clone(), version));
                let op = op_of(id);
                let i = (id & 0xFF) as usize;
                let wrote = history.ops.get(op).and_then(|o| match &o.request {
                    Action::Batch { writes, .. } => writes.get(i).cloned(),
                    Action::Txn { writes, .. } => writes.get(i).map(|(_, w)| w.clone()),
                    Action::Get { .. } | Action::Scan { .. } => None,
                });
                match wrote {
                    Some(w) if w.key == *key && w.value == Some(id) => {}
                    _ => violations.push(format!(
                        "write {id} found at {key}@{version} on shard {shard}, but operation {op} wrote no such value there"
                    )),
                }
            }
        }
    }
    let place = |id: u64| placed.get(&id).map(|(_, k, v)| (k.as_str(), *v));

    for op in &history.ops {
        stats.ops += 1;
        match (&op.request, &op.outcome) {
            (Action::Batch { shard, writes }, outcome) => {
                let puts: Vec<&KeyWrite> = writes.iter().filter(|w| w.value.is_some()).collect();
                match outcome {
                    Outcome::Applied { version, existed } => {
                        stats.acknowledged_writes += 1;
                        for w in &puts {
                            let id = w.value.expect("filtered puts");
                            if place(id) != Some((w.key.as_str(), *version)) {
                                violations.push(format!(
                                    "acknowledged write lost: operation {} put {} at version {version} on shard {shard}; the tree has it at {:?}",
                                    op.id, w.key, place(id)
                                ));
                            }
                        }
                        for (i, w) in writes.iter().enumerate() {
                            let was_live = existed.get(i).copied().unwrap_or(false);
                            if w.value.is_none() && was_live {
                                let fin = &finals[shard];
                                if fin.exact(&w.key, *version) != Some(None) {
                                    violations.push(format!(
                                        "acknowledged delete lost: operation {} deleted live {} at version {version}, no tombstone there",
                                        op.id, w.key
                                    ));
                                }
                            }
                        }
                    }
                    Outcome::Unknown(_) => {
                        stats.unknown_writes += 1;
                        let at: Vec<Option<u64>> = puts
                            .iter()
                            .map(|w| place(w.value.expect("puts")).map(|(_, v)| v))
                            .collect();
                        let whole = at.iter().all(|v| v.is_some() && *v == at[0])
                            || at.iter().all(Option::is_none);
                        if !whole {
                            violations.push(format!(
                                "batch {} (unknown outcome) applied in part: versions {at:?}",
                                op.id
                            ));
                        }
                    }
                    Outcome::Rejected { .. } | Outcome::Locked | Outcome::NotApplied(_) => {
                        for w in &puts {
                            if let Some(p) = place(w.value.expect("puts")) {
                                violations.push(format!(
                                    "refused write applied: operation {} ({:?}) is in the tree at {p:?}",
                                    op.id, op.outcome
                                ));
                            }
                        }
                    }
                    Outcome::Pending => violations.push(format!(
                        "operation {} never completed although the run settled",
                        op.id
                    )),
                    other => {
                        violations.push(format!("operation {} (a batch) ended as {other:?}", op.id))
                    }
                }
            }
            (Action::Txn { txn, writes }, outcome) => match outcome {
                Outcome::TxnCommitted { resolved } => {
                    stats.txns_committed += 1;
                    stats.acknowledged_writes += 1;
                    for (s, w) in writes {
                        let id = w.value.expect("transactions only put");
                        let want = resolved.get(s).map(|(v, _)| (w.key.as_str(), *v));
                        if want.is_none() || place(id) != want {
                            violations.push(format!(
                                "committed transaction {txn} (operation {}): write of {} expected at {want:?}, the tree has {:?}",
                                op.id, w.key, place(id)
                            ));
                        }
                    }
                }
                Outcome::TxnAborted => {
                    stats.txns_aborted += 1;
                    for (_, w) in writes {
                        if let Some(p) = place(w.value.expect("puts")) {
                            violations.push(format!(
                                "aborted transaction {txn} (operation {}) applied: {} at {p:?}",
                                op.id, w.key
                            ));
                        }
                    }
                }
                other => violations.push(format!(
                    "transaction {txn} (operation {}) ended as {other:?}",
                    op.id
                )),
            },
            (Action::Get { shard, key, .. }, Outcome::Read { at, value }) => {
                stats.reads += 1;
                let fin = &finals[shard];
                debug_assert_eq!(shard_of(key), *shard);
                if *at > fin.applied {
                    violations.push(format!(
                        "read {} was served at version {at}, above the final applied index {}",
                        op.id, fin.applied
                    ));
                    continue;
                }
                let tree = fin.at(key, *at);
                let agrees = match (value, tree) {
                    (Some((v, id)), Some((tv, Some(tid)))) => *v == tv && *id == tid,
                    (None, None) | (None, Some((_, None))) => true,
                    _ => false,
                };
                if !agrees {
                    violations.push(format!(
                        "read {} of {key} at version {at} returned {value:?}; the shard's tree holds {tree:?} there",
                        op.id
                    ));
                }
            }
            (
                Action::Scan {
                    shard,
                    prefix,
                    keys,
                },
                Outcome::Scanned { at, items },
            ) => {
                stats.reads += 1;
                let fin = &finals[shard];
                for (key, seen) in items {
                    if !key.starts_with(prefix.as_str()) || !keys.contains(key) {
                        violations.push(format!(
                            "scan {} under {prefix:?} of shard {shard} returned {key}, not one of its keys",
                            op.id
                        ));
                    }
                    let _ = seen;
                }
                for key in keys {
                    let seen = items.get(key).map(|&(v, id)| (v, Some(id)));
                    let tree = fin.at(key, *at).filter(|(_, id)| id.is_some());
                    if seen != tree {
                        violations.push(format!(
                            "scan {} at version {at} saw {key} as {seen:?}; the shard's tree holds {tree:?} there",
                            op.id
                        ));
                    }
                }
            }
            (Action::Get { .. } | Action::Scan { .. }, Outcome::ReadFailed(_)) => {}
            (Action::Scan { .. }, other) => {
                violations.push(format!("scan {} ended as {other:?}", op.id))
            }
            (Action::Get { .. }, other) => {
                violations.push(format!("read {} ended as {other:?}", op.id))
            }
        }
    }
}
