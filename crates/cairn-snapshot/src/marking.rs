//! One epoch's marking as an I/O-free state machine: the coordinator proposes
//! `Marker(e)` on every shard, feeds each shard's answer in, and reads the decision
//! out. It sends nothing, waits for nothing and reads no clock, so the production
//! coordinator (which sends through `Shards` under a deadline) and the deterministic
//! simulator (which sends through its virtual network) run this same code.
//!
//! The rule it keeps: the epoch is done only if every shard placed its marker, each
//! at a cut above zero (a zero cut means the epoch was released on that shard before
//! its marker landed, so the shard holds nothing for it); any other answer, or none
//! by the deadline, aborts the epoch. Either way every shard is then sent
//! `Release(e)`, which closes the alignment windows the markers opened.

use std::collections::BTreeMap;

use cairn_store::{ApplyOutcome, Command, ShardId};

use crate::registry::SnapshotState;

/// The marking of epoch `epoch` on shards `0..shards`.
#[derive(Debug, Clone)]
pub struct Marking {
    epoch: u64,
    shards: u32,
    cuts: BTreeMap<ShardId, u64>,
    failures: BTreeMap<ShardId, String>,
}

impl Marking {
    pub fn new(epoch: u64, shards: u32) -> Marking {
        Marking {
            epoch,
            shards,
            cuts: BTreeMap::new(),
            failures: BTreeMap::new(),
        }
    }

    /// What to propose on every shard to mark the epoch.
    pub fn marker(&self) -> Command {
        Command::Marker { epoch: self.epoch }
    }

    /// What to propose on every shard once the epoch is decided.
    pub fn release(&self) -> Command {
        Command::Release { epoch: self.epoch }
    }

    /// Shard `shard`'s answer to the marker: the outcome it applied, or why it gave
    /// none (an error, a timeout). Only a shard's first answer counts.
    pub fn on_answer(&mut self, shard: ShardId, answer: Result<ApplyOutcome, String>) {
        if self.answered(shard) || shard >= self.shards {
            return;
        }
        match answer {
            Ok(ApplyOutcome::Marked { cut }) if cut > 0 => {
                self.cuts.insert(shard, cut);
            }
            Ok(ApplyOutcome::Marked { .. }) => {
                self.failures.insert(
                    shard,
                    "the epoch was released before its marker landed".into(),
                );
            }
            Ok(other) => {
                self.failures
                    .insert(shard, format!("a marker applied as {other:?}"));
            }
            Err(reason) => {
                self.failures.insert(shard, reason);
            }
        }
    }

    /// The deadline passed: every shard that has not answered failed with `reason`.
    pub fn on_deadline(&mut self, reason: &str) {
        for shard in 0..self.shards {
            if !self.answered(shard) {
                self.failures.insert(shard, reason.to_owned());
            }
        }
    }

    fn answered(&self, shard: ShardId) -> bool {
        self.cuts.contains_key(&shard) || self.failures.contains_key(&shard)
    }

    /// This shard's cut, if it placed its marker.
    pub fn cut(&self, shard: ShardId) -> Option<u64> {
        self.cuts.get(&shard).copied()
    }

    /// The epoch's fate, once every shard has answered: done with every shard's cut,
    /// or aborted naming each shard that failed.
    pub fn decision(&self) -> Option<SnapshotState> {
        if (0..self.shards).any(|s| !self.answered(s)) {
            return None;
        }
        if self.failures.is_empty() {
            return Some(SnapshotState::Done {
                cuts: self.cuts.clone(),
            });
        }
        let reason = self
            .failures
            .iter()
            .map(|(shard, why)| format!("shard {shard}: {why}"))
            .collect::<Vec<_>>()
            .join("; ");
        Some(SnapshotState::Aborted { reason })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn done_only_when_every_shard_placed_a_marker_above_zero() {
        let mut m = Marking::new(4, 3);
        assert_eq!(m.marker(), Command::Marker { epoch: 4 });
        m.on_answer(0, Ok(ApplyOutcome::Marked { cut: 10 }));
        m.on_answer(2, Ok(ApplyOutcome::Marked { cut: 7 }));
        assert_eq!(m.decision(), None, "shard 1 has not answered");
        m.on_answer(1, Ok(ApplyOutcome::Marked { cut: 3 }));
        // A second answer does not change the first.
        m.on_answer(1, Err("late".into()));
        let cuts = BTreeMap::from([(0, 10), (1, 3), (2, 7)]);
        assert_eq!(m.decision(), Some(SnapshotState::Done { cuts }));
    }

    #[test]
    fn a_zero_cut_an_error_or_the_deadline_aborts() {
        let mut m = Marking::new(5, 3);
        m.on_answer(0, Ok(ApplyOutcome::Marked { cut: 0 }));
        m.on_answer(1, Err("no quorum".into()));
        m.on_deadline("no marker placed within 2s");
        match m.decision() {
            Some(SnapshotState::Aborted { reason }) => {
                assert!(
                    reason.contains("shard 0: the epoch was released"),
                    "{reason}"
                );
                assert!(reason.contains("shard 1: no quorum"), "{reason}");
                assert!(reason.contains("shard 2: no marker placed"), "{reason}");
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(m.cut(0), None);
    }
}
