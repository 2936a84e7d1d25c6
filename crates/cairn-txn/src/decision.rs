//! A transaction's life in the meta group, as I/O-free state machines: the record,
//! the commit decision behind the snapshot gate, the abort, the cleanup, and what
//! the sweeper does with a record left behind.
//!
//! The commit point of a transaction is one conditional meta batch, and it is where
//! transactions meet snapshots (the gate) and where a coordinator meets the sweeper.
//! So what builds those batches and reads their answers lives here, free of I/O: a
//! machine asks for one [`MetaStep`] at a time and is fed the meta group's answer;
//! whether a wait is still allowed is the driver's deadline, passed in with the
//! answer. The production coordinator ([`crate::Transactions`]) drives these
//! machines through `Meta`; the deterministic simulator drives the same ones through
//! its simulated meta group, so its seeds check this code, not a copy.
//!
//! What this module must never do: send, sleep, look at a clock or draw an id.
//! Preparing (who refused, who is locked) is [`crate::Ballot`]'s.

use std::time::Duration;

use cairn_cluster::meta::{delete, put, MetaStep, ReadAnswer, WriteAnswer};
use cairn_snapshot::gate;
use cairn_store::{Condition, WriteOp};

use crate::error::TxnError;
use crate::record::{meta_error, txn_key, Tracked, TxnRecord, TxnState};

/// The batch that records a new pending transaction; refused if the id is taken.
pub fn create_ops(record: &TxnRecord) -> Result<Vec<WriteOp>, TxnError> {
    Ok(vec![put(
        txn_key(record.id),
        record.encode()?,
        Condition::Absent,
    )])
}

/// The batch that forgets a transaction every shard resolved: its record, and its
/// place in the gate (`t/commit/T`), so epochs may be allocated again.
pub fn forget_ops(id: u64) -> Vec<WriteOp> {
    vec![delete(txn_key(id)), delete(gate::committing_key(id))]
}

/// The commit batch: the record marked committed (conditional on the version it was
/// read at) and `t/commit/T` written, provided no epoch is marking or waiting to
/// (the gate's checks, ops [`GATE_OPS`] onwards).
pub fn commit_ops(tracked: &Tracked) -> Result<Vec<WriteOp>, TxnError> {
    let committed = TxnRecord {
        state: TxnState::Committed,
        ..tracked.record.clone()
    };
    let mut ops = vec![
        put(
            txn_key(committed.id),
            committed.encode()?,
            Condition::Version(tracked.version),
        ),
        put(
            gate::committing_key(committed.id),
            Vec::new(),
            Condition::Always,
        ),
    ];
    ops.extend(gate::no_epoch_marking());
    Ok(ops)
}

/// The index of the first of the gate's checks in [`commit_ops`]: a refusal at or
/// after it means a snapshot epoch is marking (or wants to), not that the record
/// changed.
pub const GATE_OPS: usize = 2;

/// How a commit decision ended.
#[derive(Debug)]
pub enum CommitEnd {
    /// The record says committed: the transaction must be resolved as committed.
    Committed,
    /// Not committed; report this.
    Failed(TxnError),
    /// The gate stayed shut past the deadline: abort the transaction (the usual
    /// abort, resolves included), then read its record and ask [`after_gate_abort`].
    AbortFirst,
}

/// A step of the commit decision.
pub type CommitStep = MetaStep<CommitEnd>;

/// Writing the commit decision. It waits while a snapshot epoch is marking; if the
/// write is refused for another reason, or its outcome is unknown, the record says
/// what happened (a sweeper may have aborted it, or the write may have applied).
#[derive(Debug)]
pub struct Commit {
    tracked: Tracked,
    reading: bool,
}

impl Commit {
    /// The machine and its first step.
    pub fn new(tracked: Tracked) -> Result<(Commit, CommitStep), TxnError> {
        let ops = commit_ops(&tracked)?;
        let commit = Commit {
            tracked,
            reading: false,
        };
        Ok((commit, MetaStep::Write(ops)))
    }

    fn write_again(&mut self) -> CommitStep {
        self.reading = false;
        match commit_ops(&self.tracked) {
            Ok(ops) => MetaStep::Write(ops),
            Err(e) => MetaStep::Done(CommitEnd::Failed(e)),
        }
    }

    /// The answer to the commit batch; `can_wait`: whether the deadline allows a pause.
    pub fn on_written(&mut self, answer: WriteAnswer, can_wait: bool) -> CommitStep {
        match answer {
            Ok(Ok(_)) => MetaStep::Done(CommitEnd::Committed),
            // A snapshot is placing markers (or waits to): it finishes within a round
            // trip.
            Ok(Err(op)) if op >= GATE_OPS && can_wait => MetaStep::Wait,
            Ok(Err(op)) if op >= GATE_OPS => MetaStep::Done(CommitEnd::AbortFirst),
            // The record changed (the sweeper decided), or the outcome is unknown.
            Ok(Err(_)) | Err(_) => {
                self.reading = true;
                MetaStep::Read(txn_key(self.tracked.record.id))
            }
        }
    }

    /// The answer to reading the record after an unclear write.
    pub fn on_read(&mut self, answer: ReadAnswer, can_wait: bool) -> CommitStep {
        if !self.reading {
            return MetaStep::Done(CommitEnd::Failed(TxnError::Meta(
                "a commit fed a read it did not ask for".into(),
            )));
        }
        let id = self.tracked.record.id;
        match state_in(answer) {
            Ok(Some(TxnState::Committed)) => MetaStep::Done(CommitEnd::Committed),
            Ok(Some(TxnState::Pending)) if can_wait => MetaStep::Wait,
            Ok(Some(TxnState::Aborted)) => MetaStep::Done(CommitEnd::Failed(TxnError::Aborted {
                reason: "the sweeper aborted it before it could commit".into(),
            })),
            // No record: the sweeper resolved it and forgot it, either way (a commit
            // whose answer was lost, then resolved, is forgotten just the same), so
            // this is no proof of an abort.
            Ok(None) | Ok(Some(TxnState::Pending)) | Err(_) => {
                MetaStep::Done(CommitEnd::Failed(TxnError::OutcomeUnknown {
                    txn: id,
                    reason: "the meta group did not confirm the commit decision in time".into(),
                }))
            }
        }
    }

    /// The pause asked for by `Wait` is over: write the decision again.
    pub fn resume(&mut self) -> CommitStep {
        self.write_again()
    }
}

/// The end of a commit that had to abort first ([`CommitEnd::AbortFirst`]), from the
/// record read after the abort: committed only if someone committed it meanwhile.
pub fn after_gate_abort(answer: ReadAnswer) -> Result<(), TxnError> {
    match state_in(answer) {
        Ok(Some(TxnState::Committed)) => Ok(()),
        _ => Err(TxnError::Aborted {
            reason: "snapshots kept the commit waiting past the deadline".into(),
        }),
    }
}

/// The state a read of a record found.
pub fn state_in(answer: ReadAnswer) -> Result<Option<TxnState>, TxnError> {
    match answer.map_err(meta_error)? {
        Some(v) => Ok(Some(TxnRecord::decode(&v)?.state)),
        None => Ok(None),
    }
}

/// How to resolve a transaction whose abort was attempted: `Some(commit)` resolve
/// every shard so, `None` leave it to the sweeper (the record is still pending, or
/// could not be read).
pub type AbortStep = MetaStep<Option<bool>>;

/// Deciding abort, unless someone decided first: conditional on the version the
/// record was read at; if refused or unknown, the record says which way to resolve.
#[derive(Debug)]
pub struct Abort {
    id: u64,
    reading: bool,
}

impl Abort {
    /// The machine and its first step (the abort batch).
    pub fn new(tracked: &Tracked) -> Result<(Abort, AbortStep), TxnError> {
        let aborted = TxnRecord {
            state: TxnState::Aborted,
            ..tracked.record.clone()
        };
        let ops = vec![put(
            txn_key(aborted.id),
            aborted.encode()?,
            Condition::Version(tracked.version),
        )];
        let abort = Abort {
            id: aborted.id,
            reading: false,
        };
        Ok((abort, MetaStep::Write(ops)))
    }

    /// The answer to the abort batch.
    pub fn on_written(&mut self, answer: WriteAnswer) -> AbortStep {
        match answer {
            Ok(Ok(_)) => MetaStep::Done(Some(false)),
            // Someone decided first, or the write's fate is unknown: follow the record.
            Ok(Err(_)) | Err(_) => {
                self.reading = true;
                MetaStep::Read(txn_key(self.id))
            }
        }
    }

    /// The answer to reading the record back.
    pub fn on_read(&mut self, answer: ReadAnswer) -> AbortStep {
        if !self.reading {
            return MetaStep::Done(None);
        }
        MetaStep::Done(match state_in(answer) {
            Ok(Some(TxnState::Aborted)) => Some(false),
            Ok(Some(TxnState::Committed)) => Some(true),
            // Leave it to the sweeper, which will abort it.
            _ => None,
        })
    }
}

/// What the sweeper does with a transaction record it finds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnSweep {
    /// Pending past `abort_after`: its coordinator died or stalled. Abort it.
    Abort,
    /// Decided and left past `resolve_after`: resolve every shard so, then forget it.
    Resolve { commit: bool },
    /// Young enough for its coordinator to finish.
    Leave,
}

impl TxnSweep {
    /// The sweeper's choice for a record in `state`, `age` old (the driver's clocks
    /// decide the age).
    pub fn of(
        state: TxnState,
        age: Duration,
        abort_after: Duration,
        resolve_after: Duration,
    ) -> TxnSweep {
        match state {
            TxnState::Pending if age >= abort_after => TxnSweep::Abort,
            TxnState::Committed | TxnState::Aborted if age >= resolve_after => TxnSweep::Resolve {
                commit: state == TxnState::Committed,
            },
            _ => TxnSweep::Leave,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_cluster::MetaError;
    use cairn_raft::ShardError;
    use cairn_store::Versioned;

    fn tracked(state: TxnState, version: u64) -> Tracked {
        Tracked {
            record: TxnRecord {
                id: 77,
                state,
                shards: vec![0, 1],
                started_ms: 5,
                node: 1,
            },
            version,
        }
    }

    fn stored(state: TxnState) -> Versioned {
        let t = tracked(state, 0);
        Versioned {
            value: t.record.encode().expect("encodes"),
            version: 9,
        }
    }

    fn unknown() -> MetaError {
        MetaError::Shard(ShardError::OutcomeUnknown {
            shard: 2,
            reason: "leader lost".into(),
        })
    }

    #[test]
    fn a_commit_carries_the_gate_and_waits_while_it_is_shut() {
        let (mut c, first) = Commit::new(tracked(TxnState::Pending, 4)).expect("encodes");
        let MetaStep::Write(ops) = first else {
            panic!("expected the commit batch")
        };
        assert_eq!(ops[0].condition, Condition::Version(4));
        assert_eq!(ops[1].key, gate::committing_key(77));
        assert_eq!(ops[GATE_OPS..], gate::no_epoch_marking());
        assert!(matches!(c.on_written(Ok(Err(2)), true), MetaStep::Wait));
        assert!(matches!(c.resume(), MetaStep::Write(_)));
        assert!(matches!(
            c.on_written(Ok(Err(3)), false),
            MetaStep::Done(CommitEnd::AbortFirst)
        ));
        assert!(after_gate_abort(Ok(Some(stored(TxnState::Aborted)))).is_err());
        assert!(after_gate_abort(Ok(Some(stored(TxnState::Committed)))).is_ok());
    }

    #[test]
    fn an_unknown_commit_follows_the_record() {
        let (mut c, _) = Commit::new(tracked(TxnState::Pending, 4)).expect("encodes");
        assert!(matches!(
            c.on_written(Err(unknown()), true),
            MetaStep::Read(_)
        ));
        assert!(matches!(
            c.on_read(Ok(Some(stored(TxnState::Pending))), true),
            MetaStep::Wait
        ));
        assert!(matches!(c.resume(), MetaStep::Write(_)));
        assert!(matches!(c.on_written(Ok(Err(0)), true), MetaStep::Read(_)));
        assert!(matches!(
            c.on_read(Ok(Some(stored(TxnState::Committed))), true),
            MetaStep::Done(CommitEnd::Committed)
        ));
        // A record already forgotten proves nothing: it may have been committed.
        let (mut c, _) = Commit::new(tracked(TxnState::Pending, 4)).expect("encodes");
        c.on_written(Err(unknown()), true);
        assert!(matches!(
            c.on_read(Ok(None), true),
            MetaStep::Done(CommitEnd::Failed(TxnError::OutcomeUnknown { .. }))
        ));
        let (mut c, _) = Commit::new(tracked(TxnState::Pending, 4)).expect("encodes");
        c.on_written(Err(unknown()), false);
        assert!(matches!(
            c.on_read(Ok(Some(stored(TxnState::Pending))), false),
            MetaStep::Done(CommitEnd::Failed(TxnError::OutcomeUnknown { .. }))
        ));
    }

    #[test]
    fn an_abort_that_lost_follows_the_record() {
        let (mut a, first) = Abort::new(&tracked(TxnState::Pending, 4)).expect("encodes");
        assert!(matches!(first, MetaStep::Write(_)));
        assert!(matches!(a.on_written(Ok(Err(0))), MetaStep::Read(_)));
        assert!(matches!(
            a.on_read(Ok(Some(stored(TxnState::Committed)))),
            MetaStep::Done(Some(true))
        ));
        let (mut a, _) = Abort::new(&tracked(TxnState::Pending, 4)).expect("encodes");
        a.on_written(Err(unknown()));
        assert!(matches!(
            a.on_read(Ok(Some(stored(TxnState::Pending)))),
            MetaStep::Done(None)
        ));
    }

    #[test]
    fn the_sweeper_aborts_old_pending_records_and_resolves_decided_ones() {
        let (abort, resolve) = (Duration::from_secs(5), Duration::from_secs(1));
        let sweep = |state, secs| TxnSweep::of(state, Duration::from_secs(secs), abort, resolve);
        assert_eq!(sweep(TxnState::Pending, 4), TxnSweep::Leave);
        assert_eq!(sweep(TxnState::Pending, 5), TxnSweep::Abort);
        assert_eq!(
            sweep(TxnState::Committed, 1),
            TxnSweep::Resolve { commit: true }
        );
        assert_eq!(sweep(TxnState::Aborted, 0), TxnSweep::Leave);
    }
}
