//! The checks run on every seed once the healed cluster has converged.
//!
//! They compare the recorded [`History`] with the shards' final MVCC trees, which keep
//! every version (the simulator never collects history), so the trees are a complete
//! record of what each shard applied and at which index:
//!
//! - [`convergence`]: every replica of a shard holds the same state (versions, cut
//!   table, transaction records) at a common applied index;
//! - [`durability`]: no acknowledged write lost, no write applied twice or applied
//!   after it was refused, every batch at one version, every read served the tree's
//!   state at the version it was served at;
//! - [`linearizable`]: per key, the linearizable reads and the writes have a legal
//!   sequential order (Wing–Gong–Lowe, `todc-utils`);
//! - [`snapshots`]: no answer above an open cut before the epoch's release, and every
//!   completed snapshot satisfies the design's four guarantees;
//! - `registry`: the meta group's records agree with what was observed (an epoch
//!   recorded done has its markers' cuts, an aborted one was never reported done,
//!   committed transactions were recorded committed), and its log keeps the gate (no
//!   commit while an epoch is marking);
//! - liveness is the run itself: it only gets here if a final write committed on
//!   every shard and every replica applied it.

pub mod convergence;
pub mod durability;
pub mod linearizable;
pub(crate) mod registry;
pub mod snapshots;

use std::collections::BTreeMap;

use cairn_store::{Cut, HistoryRange, ShardId, ShardState};

use crate::history::{parse_value, History};

/// One version of a key in a final tree: its index and the write id (`None`: tombstone).
pub type Version = (u64, Option<u64>);

/// A shard's final tree, from one replica (the others were checked equal to it).
#[derive(Debug, Clone, Default)]
pub struct ShardFinal {
    /// The applied index every replica reached.
    pub applied: u64,
    /// Per key, every version, oldest first.
    pub keys: BTreeMap<String, Vec<Version>>,
    pub cuts: Vec<Cut>,
}

impl ShardFinal {
    /// Read a replica's tree. Values that are not simulator values are an error.
    pub fn read(state: &ShardState, applied: u64) -> Result<ShardFinal, String> {
        let mut keys: BTreeMap<String, Vec<Version>> = BTreeMap::new();
        for item in state.history(HistoryRange::Between {
            after: 0,
            upto: applied,
        }) {
            let kv = item.map_err(|e| e.to_string())?;
            let key = String::from_utf8(kv.key.clone())
                .map_err(|_| format!("a key no client wrote: {:?}", kv.key))?;
            let id = match &kv.value {
                None => None,
                Some(v) => Some(parse_value(v).ok_or_else(|| {
                    format!(
                        "key {key} version {}: a value no client wrote: {:?}",
                        kv.version,
                        String::from_utf8_lossy(v)
                    )
                })?),
            };
            keys.entry(key).or_default().push((kv.version, id));
        }
        for versions in keys.values_mut() {
            versions.sort_unstable();
        }
        let cuts = state.cuts().map_err(|e| e.to_string())?;
        Ok(ShardFinal {
            applied,
            keys,
            cuts,
        })
    }

    /// The key's newest version at or below `at`.
    pub fn at(&self, key: &str, at: u64) -> Option<Version> {
        self.keys
            .get(key)?
            .iter()
            .rev()
            .find(|(v, _)| *v <= at)
            .copied()
    }

    /// What the key held at exactly version `v`, if a version was written there.
    pub fn exact(&self, key: &str, v: u64) -> Option<Option<u64>> {
        self.keys
            .get(key)?
            .iter()
            .find(|(version, _)| *version == v)
            .map(|(_, id)| *id)
    }
}

/// What the checks looked at, for the run's figures.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CheckStats {
    pub ops: u64,
    pub acknowledged_writes: u64,
    pub unknown_writes: u64,
    pub reads: u64,
    pub keys_checked: u64,
    pub versions_checked: u64,
    pub snapshots_done: u64,
    pub snapshots_aborted: u64,
    pub txns_committed: u64,
    pub txns_aborted: u64,
}

/// Run every check on a converged run. `Err` lists every violation found.
pub fn all(
    history: &History,
    finals: &BTreeMap<ShardId, ShardFinal>,
    shard_of: &dyn Fn(&str) -> ShardId,
) -> Result<CheckStats, Vec<String>> {
    let mut violations = Vec::new();
    let mut stats = CheckStats::default();
    durability::check(history, finals, shard_of, &mut stats, &mut violations);
    linearizable::check(history, finals, shard_of, &mut stats, &mut violations);
    snapshots::check(history, finals, shard_of, &mut stats, &mut violations);
    if violations.is_empty() {
        Ok(stats)
    } else {
        Err(violations)
    }
}
