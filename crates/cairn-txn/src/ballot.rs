//! A transaction's prepare round as an I/O-free state machine: the coordinator
//! proposes `Prepare(T, ops)` on every shard involved, feeds each shard's answer in,
//! and reads out whether `T` may commit. It sends nothing and reads no clock, so the
//! production coordinator and the deterministic simulator decide with this same code.
//!
//! The rule: `T` may commit only if every shard prepared (checked its conditions and
//! locked its keys). A refused condition is reported in preference to anything else,
//! since it is the client's answer (412); otherwise the first refusal seen (a lock held
//! by a younger transaction, a prepare refused as too old, an error) is.

use std::collections::{BTreeMap, BTreeSet};

use cairn_store::{ApplyOutcome, ShardId};

/// Why a prepare did not succeed on one shard (`op` indexes that shard's ops).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    Rejected {
        shard: ShardId,
        op: usize,
        current: Option<u64>,
    },
    Locked {
        shard: ShardId,
        op: usize,
        txn: u64,
    },
    Failed(String),
}

/// The prepare round of one transaction over `shards`.
#[derive(Debug, Clone)]
pub struct Ballot {
    shards: BTreeSet<ShardId>,
    /// Per prepared shard: whether each of its ops' keys had a live value.
    prepared: BTreeMap<ShardId, Vec<bool>>,
    refused: BTreeSet<ShardId>,
    refusal: Option<Refusal>,
}

impl Ballot {
    pub fn new(shards: impl IntoIterator<Item = ShardId>) -> Ballot {
        Ballot {
            shards: shards.into_iter().collect(),
            prepared: BTreeMap::new(),
            refused: BTreeSet::new(),
            refusal: None,
        }
    }

    /// Shard `shard`'s answer to its prepare. Only a shard's first answer counts.
    pub fn on_answer(&mut self, shard: ShardId, answer: Result<ApplyOutcome, String>) {
        if !self.shards.contains(&shard)
            || self.prepared.contains_key(&shard)
            || self.refused.contains(&shard)
        {
            return;
        }
        let refusal = match answer {
            Ok(ApplyOutcome::Prepared { existed }) => {
                self.prepared.insert(shard, existed);
                return;
            }
            Ok(ApplyOutcome::Rejected { op, current }) => {
                self.refused.insert(shard);
                // The client's own answer wins over any other refusal.
                self.refusal = Some(Refusal::Rejected { shard, op, current });
                return;
            }
            Ok(ApplyOutcome::Locked { op, txn }) => Refusal::Locked { shard, op, txn },
            Ok(ApplyOutcome::TxnClosed) => Refusal::Failed(format!(
                "shard {shard} refused the prepare as too old (is this node's clock behind the meta leader's?)"
            )),
            Ok(other) => Refusal::Failed(format!("shard {shard} answered {other:?}")),
            Err(e) => Refusal::Failed(format!("shard {shard}: {e}")),
        };
        self.refused.insert(shard);
        self.refusal.get_or_insert(refusal);
    }

    /// Once every shard answered: `Ok` with each shard's `existed` flags if all
    /// prepared (the transaction may commit), or the refusal that aborts it.
    pub fn decision(&self) -> Option<Result<&BTreeMap<ShardId, Vec<bool>>, &Refusal>> {
        if self.prepared.len() + self.refused.len() < self.shards.len() {
            return None;
        }
        Some(match &self.refusal {
            None => Ok(&self.prepared),
            Some(refusal) => Err(refusal),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commits_only_when_every_shard_prepared() {
        let mut b = Ballot::new([0, 2]);
        b.on_answer(
            0,
            Ok(ApplyOutcome::Prepared {
                existed: vec![true],
            }),
        );
        assert_eq!(b.decision(), None);
        b.on_answer(1, Err("not involved".into()));
        assert_eq!(
            b.decision(),
            None,
            "a shard outside the ballot does not count"
        );
        b.on_answer(
            2,
            Ok(ApplyOutcome::Prepared {
                existed: vec![false],
            }),
        );
        let prepared = BTreeMap::from([(0, vec![true]), (2, vec![false])]);
        assert_eq!(b.decision(), Some(Ok(&prepared)));
    }

    #[test]
    fn a_refused_condition_is_reported_over_other_refusals() {
        let mut b = Ballot::new([0, 1, 2]);
        b.on_answer(0, Ok(ApplyOutcome::Locked { op: 0, txn: 9 }));
        b.on_answer(
            1,
            Ok(ApplyOutcome::Rejected {
                op: 1,
                current: Some(4),
            }),
        );
        b.on_answer(2, Ok(ApplyOutcome::TxnClosed));
        let rejected = Refusal::Rejected {
            shard: 1,
            op: 1,
            current: Some(4),
        };
        assert_eq!(b.decision(), Some(Err(&rejected)));

        let mut b = Ballot::new([0, 1]);
        b.on_answer(1, Err("no quorum".into()));
        b.on_answer(0, Ok(ApplyOutcome::Locked { op: 0, txn: 9 }));
        match b.decision() {
            Some(Err(Refusal::Failed(why))) => assert!(why.contains("no quorum"), "{why}"),
            other => panic!("{other:?}"),
        }
    }
}
