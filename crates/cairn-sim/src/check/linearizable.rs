//! Per-key linearizability of a simulated history, with the model and search every
//! harness shares (`cairn-lincheck`, the Wing–Gong–Lowe checker of `todc-utils`).
//!
//! Linearizability is compositional, so each key is checked alone. Its state is the
//! write it holds (`Option<write id>`). Operations, from the history:
//!
//! - a linearizable read returning write `w` (or nothing) is legal exactly in that state;
//! - a write acknowledged `Applied` needs its condition to hold and, for the `existed`
//!   flag the shard returned, the key to be live or not; it then sets the state;
//! - a write `Rejected` on this key needs its condition to fail, and the state to be
//!   the `current` version the shard reported; it changes nothing;
//! - a write of unknown outcome takes effect if its condition holds where it is
//!   placed; its response is put after everything else, so "never happened" is the
//!   same as being placed last and needs no case of its own;
//! - a committed transaction's write is an unconditional write whose response is the
//!   resolve's acknowledgement on this key's shard.
//!
//! Conditions name versions; the final tree maps each version of the key to the write
//! it holds (the durability check has already compared that map with every
//! acknowledgement and read).
//!
//! Stale reads, refused writes and aborted transactions have no effect and promise no
//! freshness, so they are left out. The search gets a step budget (deterministic,
//! unlike a deadline); a key that exhausts it is *undecided*, which fails the run:
//! never a pass.

use std::collections::BTreeMap;

use cairn_lincheck::{Budget, Cond as KCond, Expect, KeyHistories, KeyOp as KOp, Verdict};
use cairn_store::ShardId;

use crate::check::{CheckStats, ShardFinal};
use crate::history::{Action, Cond, History, KeyWrite, Outcome, Stamp};

/// Steps of the sequential specification one key may take before it is undecided
/// (a step budget, unlike a deadline, keeps runs deterministic).
const STEP_BUDGET: u64 = 2_000_000;

fn cond_of(cond: Cond, key: &str, fin: &ShardFinal) -> KCond<u64> {
    match cond {
        Cond::Always => KCond::Always,
        Cond::Absent => KCond::Absent,
        Cond::Exists => KCond::Exists,
        Cond::Version(v) => match fin.exact(key, v) {
            Some(Some(id)) => KCond::Holds(id),
            _ => KCond::Never,
        },
    }
}

pub fn check(
    history: &History,
    finals: &BTreeMap<ShardId, ShardFinal>,
    shard_of: &dyn Fn(&str) -> ShardId,
    stats: &mut CheckStats,
    violations: &mut Vec<String>,
) {
    let mut keys: KeyHistories<Stamp, u64> = KeyHistories::default();
    let mut add = |key: &str, invoked: Stamp, completed: Option<Stamp>, op: KOp<u64>| {
        keys.add(key, invoked, completed, op);
    };
    for op in &history.ops {
        match (&op.request, &op.outcome) {
            (
                Action::Get {
                    key, stale: false, ..
                },
                Outcome::Read { value, .. },
            ) => add(
                key,
                op.invoked,
                op.completed,
                KOp::Read(value.map(|(_, id)| id)),
            ),
            (Action::Scan { keys, .. }, Outcome::Scanned { items, .. }) => {
                // Per key a read at the scan's point (the scan is atomic per shard,
                // which this per-key view does not even need).
                for key in keys {
                    let saw = items.get(key).map(|&(_, id)| id);
                    add(key, op.invoked, op.completed, KOp::Read(saw));
                }
            }
            (Action::Batch { shard, writes }, outcome) => {
                let fin = &finals[shard];
                let kop = |w: &KeyWrite, expect| KOp::Write {
                    cond: cond_of(w.cond, &w.key, fin),
                    effect: w.value,
                    expect,
                };
                match outcome {
                    Outcome::Applied { existed, .. } => {
                        for (i, w) in writes.iter().enumerate() {
                            let expect = Expect::Applied {
                                existed: existed.get(i).copied(),
                            };
                            add(&w.key, op.invoked, op.completed, kop(w, expect));
                        }
                    }
                    Outcome::Rejected {
                        op: failed,
                        current,
                    } => {
                        if let Some(w) = writes.get(*failed) {
                            let current = match current {
                                None => Some(None),
                                Some(v) => match fin.exact(&w.key, *v) {
                                    Some(Some(id)) => Some(Some(id)),
                                    _ => {
                                        violations.push(format!(
                                            "operation {} was rejected with {} live at version {v}, which the tree does not hold",
                                            op.id, w.key
                                        ));
                                        None
                                    }
                                },
                            };
                            add(
                                &w.key,
                                op.invoked,
                                op.completed,
                                kop(w, Expect::Refused { current }),
                            );
                        }
                    }
                    Outcome::Unknown(_) => {
                        for w in writes {
                            add(&w.key, op.invoked, None, kop(w, Expect::Unknown));
                        }
                    }
                    _ => {}
                }
            }
            (Action::Txn { writes, .. }, Outcome::TxnCommitted { resolved }) => {
                for (s, w) in writes {
                    let completed = resolved.get(s).map(|(_, at)| *at);
                    // The condition held at the prepare, and the lock kept the key
                    // unchanged until the resolve wrote it.
                    add(
                        &w.key,
                        op.invoked,
                        completed,
                        KOp::Write {
                            cond: cond_of(w.cond, &w.key, &finals[s]),
                            effect: w.value,
                            expect: Expect::Applied { existed: None },
                        },
                    );
                }
            }
            _ => {}
        }
    }
    let budget = || Budget {
        steps: Some(STEP_BUDGET),
        deadline: None,
    };
    // One thread: the step budget already makes every verdict repeatable, and seeds
    // run side by side.
    for key in keys.check(1, budget, |_, _| None) {
        stats.keys_checked += 1;
        let shown = key.shown.as_deref().unwrap_or_default();
        match key.verdict {
            Verdict::Linearizable => {}
            Verdict::Violation => violations.push(format!(
                "linearizability: key {} (shard {}) has no legal order for its {} operations:\n{shown}",
                key.key,
                shard_of(&key.key),
                key.ops,
            )),
            Verdict::Undecided(why) => violations.push(format!(
                "linearizability undecided: key {} ({} operations): {why}",
                key.key, key.ops
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::{write_id, Op};

    fn stamp(ms: u64) -> Stamp {
        Stamp { ms, seq: ms }
    }

    fn put(id: usize, key: &str, from: u64, to: Option<u64>, outcome: Outcome) -> Op {
        Op {
            id,
            client: id,
            via: None,
            request: Action::Batch {
                shard: 0,
                writes: vec![KeyWrite {
                    key: key.into(),
                    value: Some(write_id(id, 0)),
                    cond: Cond::Always,
                }],
            },
            invoked: stamp(from),
            completed: to.map(stamp),
            outcome,
        }
    }

    fn get(id: usize, key: &str, from: u64, to: u64, saw: Option<(u64, u64)>) -> Op {
        Op {
            id,
            client: id,
            via: None,
            request: Action::Get {
                shard: 0,
                key: key.into(),
                stale: false,
            },
            invoked: stamp(from),
            completed: Some(stamp(to)),
            outcome: Outcome::Read { at: 10, value: saw },
        }
    }

    fn verdict(ops: Vec<Op>) -> Vec<String> {
        let history = History {
            ops,
            epochs: Vec::new(),
        };
        let finals = BTreeMap::from([(0, ShardFinal::default())]);
        let mut stats = CheckStats::default();
        let mut violations = Vec::new();
        check(&history, &finals, &|_| 0, &mut stats, &mut violations);
        violations
    }

    fn applied(version: u64) -> Outcome {
        Outcome::Applied {
            version,
            existed: vec![false],
        }
    }

    #[test]
    fn a_read_after_an_acknowledged_write_must_see_it() {
        let w = write_id(0, 0);
        // The write is acknowledged at 2; a read from 3 to 4 sees nothing: stale.
        let stale = vec![put(0, "k", 1, Some(2), applied(5)), get(1, "k", 3, 4, None)];
        assert_eq!(verdict(stale).len(), 1);
        // Overlapping the write, either answer is legal.
        let early = vec![put(0, "k", 1, Some(4), applied(5)), get(1, "k", 2, 3, None)];
        assert!(verdict(early).is_empty());
        let fresh = vec![
            put(0, "k", 1, Some(2), applied(5)),
            get(1, "k", 3, 4, Some((5, w))),
        ];
        assert!(verdict(fresh).is_empty());
    }

    #[test]
    fn an_unknown_write_may_land_late_or_never_but_not_come_back() {
        let w = write_id(0, 0);
        let unknown = || put(0, "k", 1, None, Outcome::Unknown("lost".into()));
        // Seen late, after a read that missed it: fine.
        let late = vec![
            unknown(),
            get(1, "k", 2, 3, None),
            get(2, "k", 4, 5, Some((5, w))),
        ];
        assert!(verdict(late).is_empty());
        // Seen, then gone without another write: not linearizable.
        let flicker = vec![
            unknown(),
            get(1, "k", 2, 3, Some((5, w))),
            get(2, "k", 4, 5, None),
        ];
        assert_eq!(verdict(flicker).len(), 1);
    }
}
