//! Alignment holds and the snapshot guarantees (docs/ARCHITECTURE.md,
//! "Guarantees"), against the history and the final cut tables.
//!
//! **Holds.** While epoch `e` is open on shard `s` (marker applied at cut `c`, release
//! not yet), no answer may reveal state above `c`: no write acknowledged at a version
//! above `c`, no read (linearizable or stale) served above it, no resolve answered
//! above it. Every such answer must come after `e` was decided, by its coordinator or
//! by the sweeper, whichever released first (releases are proposed only then).
//!
//! **Guarantees**, for every epoch whose markers were all placed (a write is "in S"
//! when its version on its shard is below that shard's cut):
//!
//! 1. a write acknowledged before S was requested is in S;
//! 2. a write invoked after S was decided is not in S;
//! 3. if a write W1 was observed (acknowledged, or returned by a read) before W2 was
//!    invoked, W2 in S implies W1 in S;
//! 4. a transaction's writes are all in S or all out of it.
//!
//! The coordinator's reported cuts must also equal the shards' cut tables.

use std::collections::BTreeMap;

use cairn_store::ShardId;

use crate::check::{CheckStats, ShardFinal};
use crate::history::{op_of, Action, History, Outcome, Stamp};

pub fn check(
    history: &History,
    finals: &BTreeMap<ShardId, ShardFinal>,
    _shard_of: &dyn Fn(&str) -> ShardId,
    stats: &mut CheckStats,
    violations: &mut Vec<String>,
) {
    // Answers that reveal a version: (shard, version, when, what).
    let mut answers: Vec<(ShardId, u64, Stamp, String)> = Vec::new();
    // When each write id was first observed by a client.
    let mut observed: BTreeMap<u64, Stamp> = BTreeMap::new();
    let mut observe = |id: u64, at: Stamp| {
        let e = observed.entry(id).or_insert(at);
        *e = (*e).min(at);
    };
    for op in &history.ops {
        let Some(done) = op.completed else { continue };
        match (&op.request, &op.outcome) {
            (Action::Batch { shard, writes }, Outcome::Applied { version, .. }) => {
                answers.push((*shard, *version, done, format!("write {}", op.id)));
                for w in writes {
                    if let Some(id) = w.value {
                        observe(id, done);
                    }
                }
            }
            (Action::Get { shard, stale, .. }, Outcome::Read { at, value }) => {
                let kind = if *stale { "stale read" } else { "read" };
                answers.push((*shard, *at, done, format!("{kind} {}", op.id)));
                if let Some((_, id)) = value {
                    observe(*id, done);
                }
            }
            (Action::Scan { shard, .. }, Outcome::Scanned { at, items }) => {
                answers.push((*shard, *at, done, format!("scan {}", op.id)));
                for &(_, id) in items.values() {
                    observe(id, done);
                }
            }
            (Action::Txn { writes, .. }, Outcome::TxnCommitted { resolved }) => {
                for (s, (v, at)) in resolved {
                    answers.push((*s, *v, *at, format!("resolve of operation {}", op.id)));
                }
                for (_, w) in writes {
                    if let Some(id) = w.value {
                        observe(id, done);
                    }
                }
            }
            _ => {}
        }
    }

    // Where each write landed: id -> (shard, version).
    let mut placed: BTreeMap<u64, (ShardId, u64)> = BTreeMap::new();
    for (&s, fin) in finals {
        for versions in fin.keys.values() {
            for &(v, id) in versions {
                if let Some(id) = id {
                    placed.insert(id, (s, v));
                }
            }
        }
    }

    for epoch in &history.epochs {
        if epoch.done {
            stats.snapshots_done += 1;
        } else {
            stats.snapshots_aborted += 1;
        }
        let never = Stamp {
            ms: u64::MAX,
            seq: u64::MAX,
        };
        let decided = epoch.decided.unwrap_or(never);
        let mut cuts: BTreeMap<ShardId, u64> = BTreeMap::new();
        for (&s, fin) in finals {
            let Some(cut) = fin.cuts.iter().find(|c| c.epoch == epoch.id) else {
                continue;
            };
            if cut.index > 0 {
                cuts.insert(s, cut.index);
            }
            if let Some(&reported) = epoch.cuts.get(&s) {
                if reported != cut.index {
                    violations.push(format!(
                        "epoch {}: the coordinator was told cut {reported} on shard {s}, the cut table says {}",
                        epoch.id, cut.index
                    ));
                }
            }
        }
        // Holds.
        for (s, v, at, what) in &answers {
            if let Some(&cut) = cuts.get(s) {
                if *v > cut && *at < decided {
                    violations.push(format!(
                        "alignment hold broken: {what} answered at {}ms with version {v} on shard {s}, above epoch {}'s open cut {cut}, before the epoch was decided ({}ms)",
                        at.ms, epoch.id, decided.ms
                    ));
                }
            }
        }
        if !epoch.done {
            continue;
        }
        if cuts.len() != finals.len() {
            violations.push(format!(
                "epoch {} is done but only shards {:?} recorded its cut",
                epoch.id,
                cuts.keys().collect::<Vec<_>>()
            ));
            continue;
        }
        let in_s = |id: u64| placed.get(&id).map(|&(s, v)| v < cuts[&s]);
        // The earliest observation of a write not in S, and which.
        let mut first_out: Option<(Stamp, u64)> = None;
        for (&id, &(s, v)) in &placed {
            let Some(op) = history.ops.get(op_of(id)) else {
                continue;
            };
            let inside = v < cuts[&s];
            if op.outcome.acknowledged() {
                if let Some(ack) = op.completed {
                    if ack < epoch.requested && !inside {
                        violations.push(format!(
                            "snapshot {} guarantee 1: write {id} (operation {}) was acknowledged at {}ms, before the snapshot was requested ({}ms), but is not in it (shard {s} version {v} >= cut {})",
                            epoch.id, op.id, ack.ms, epoch.requested.ms, cuts[&s]
                        ));
                    }
                }
            }
            if op.invoked > decided && inside {
                violations.push(format!(
                    "snapshot {} guarantee 2: write {id} (operation {}) was sent at {}ms, after the snapshot completed ({}ms), but is in it",
                    epoch.id, op.id, op.invoked.ms, decided.ms
                ));
            }
            if !inside {
                if let Some(&obs) = observed.get(&id) {
                    if first_out.is_none_or(|(t, _)| obs < t) {
                        first_out = Some((obs, id));
                    }
                }
            }
        }
        if let Some((obs, w1)) = first_out {
            for (&id, _) in placed.iter().filter(|(&id, _)| in_s(id) == Some(true)) {
                let Some(op) = history.ops.get(op_of(id)) else {
                    continue;
                };
                if op.invoked > obs {
                    violations.push(format!(
                        "snapshot {} guarantee 3: write {w1} (not in the snapshot) was observed at {}ms, before write {id} (in it) was sent at {}ms",
                        epoch.id, obs.ms, op.invoked.ms
                    ));
                    break;
                }
            }
        }
        for op in &history.ops {
            if let (Action::Txn { txn, writes }, Outcome::TxnCommitted { .. }) =
                (&op.request, &op.outcome)
            {
                let sides: Vec<Option<bool>> = writes
                    .iter()
                    .filter_map(|(_, w)| w.value)
                    .map(in_s)
                    .collect();
                if sides.windows(2).any(|p| p[0] != p[1]) {
                    violations.push(format!(
                        "snapshot {} guarantee 4: transaction {txn} is split by the cut: {sides:?}",
                        epoch.id
                    ));
                }
            }
        }
    }
}
