//! One epoch's life in the meta group, as I/O-free state machines: allocation, the
//! final record, the close, and what the sweeper does with an epoch left open.
//!
//! The registry's writes are where snapshots and transactions meet (the gate), where
//! two coordinators race for an id, and where a coordinator and the sweeper race to
//! finish an epoch. So the code that builds those batches and reads their answers is
//! kept here, free of I/O: a machine asks for one [`MetaStep`] at a time (read this
//! key, write this batch, wait) and is fed the meta group's answer. It reads no clock
//! (the time to label a record with is passed in, and whether a wait is still allowed
//! is the driver's deadline) and draws no random numbers (a want's nonce is passed
//! in). The production [`Registry`](crate::Registry) drives these machines through
//! `Meta`; the deterministic simulator drives the same machines through its simulated
//! meta group, so its seeds check this code, not a copy.
//!
//! What this module must never do: send, sleep, or look at a clock. Marking itself
//! (one marker per shard, the decision) is [`crate::Marking`]'s.

use cairn_cluster::meta::{delete, put, MetaStep, ReadAnswer, WriteAnswer};
use cairn_store::{Condition, Versioned, WriteOp};

use crate::error::SnapshotError;
use crate::gate;
use crate::registry::{
    be_u64, decode, id_key, name_key, open_key, time_key, SnapshotRecord, SnapshotState, Tracked,
    MAX_NAME_BYTES,
};
use cairn_cluster::keyspace::SNAPSHOT_NEXT as NEXT;

/// A step of an allocation: its result is the pending record, tracked.
pub type AllocationStep = MetaStep<Result<Tracked, SnapshotError>>;

/// Allocations that lost the race for `s/next` this often give up (`Contended`).
pub const MAX_CONTENDED: u32 = 16;

/// Registering a new pending epoch: read `s/next`, then one conditional batch that
/// takes the id, writes the pending record, opens the epoch (`s/open/e`) and starts
/// its marking (`s/marking/e`), provided no transaction is committing (the gate).
///
/// If the gate is shut and the driver can still wait, a want (`s/want/{nonce}`) is
/// written first so new commits hold back, and the allocation's own batch deletes
/// it; if it gives up at the gate or in the race for `s/next`, the want is deleted on
/// the way out. (A failed read ends the allocation at once and leaves the want to
/// the sweeper, which drops it after `gate::WANT_EXPIRES`.) Losing the race for
/// `s/next` reads it again (and the name, which the winner may have taken).
#[derive(Debug)]
pub struct Allocation {
    name: Option<String>,
    auto: bool,
    awaiting: Awaiting,
    want: Option<Vec<u8>>,
    contended: u32,
    /// The result, held while the want is deleted.
    result: Option<Result<Tracked, SnapshotError>>,
}

#[derive(Debug)]
enum Awaiting {
    Nothing,
    /// The name's key: before the first attempt, or after a lost race.
    Name {
        first: bool,
    },
    Next,
    /// The allocation batch for this record.
    Batch(SnapshotRecord),
    /// The want's write.
    Want(Vec<u8>),
    /// The pause the gate asked for.
    Resume,
    /// The want's delete on the way out; its answer does not matter.
    Cleanup,
}

impl Allocation {
    /// A new allocation, or `BadName` if `name` cannot name a snapshot.
    pub fn new(name: Option<&str>, auto: bool) -> Result<Allocation, SnapshotError> {
        if let Some(name) = name {
            if name.is_empty() || name.len() > MAX_NAME_BYTES || name.parse::<u64>().is_ok() {
                return Err(SnapshotError::BadName(format!(
                    "a snapshot name must be 1 to {MAX_NAME_BYTES} bytes and not a number"
                )));
            }
        }
        Ok(Allocation {
            name: name.map(str::to_owned),
            auto,
            awaiting: Awaiting::Nothing,
            want: None,
            contended: 0,
            result: None,
        })
    }

    /// Whether the name check is behind it: the gate's wait (`GATE_WAIT`) is counted
    /// from here on.
    pub fn past_name_check(&self) -> bool {
        !matches!(
            self.awaiting,
            Awaiting::Nothing | Awaiting::Name { first: true }
        )
    }

    /// The first step.
    pub fn start(&mut self) -> AllocationStep {
        self.read_name_or_next(true)
    }

    /// Check the name is free (if the snapshot has one), else read `s/next`: the
    /// first step, and again after losing the race for `s/next`.
    fn read_name_or_next(&mut self, first: bool) -> AllocationStep {
        match &self.name {
            Some(name) => {
                let key = name_key(name);
                self.awaiting = Awaiting::Name { first };
                MetaStep::Read(key)
            }
            None => self.read_next(),
        }
    }

    fn read_next(&mut self) -> AllocationStep {
        if self.contended >= MAX_CONTENDED {
            return self.end(Err(SnapshotError::Contended));
        }
        self.awaiting = Awaiting::Next;
        MetaStep::Read(NEXT.to_vec())
    }

    /// Finish with `result`, deleting the want first if one was written.
    fn end(&mut self, result: Result<Tracked, SnapshotError>) -> AllocationStep {
        match self.want.take() {
            Some(key) => {
                self.result = Some(result);
                self.awaiting = Awaiting::Cleanup;
                MetaStep::Write(vec![delete(key)])
            }
            None => {
                self.awaiting = Awaiting::Nothing;
                MetaStep::Done(result)
            }
        }
    }

    fn misused(&mut self, what: &str) -> AllocationStep {
        let awaiting = std::mem::replace(&mut self.awaiting, Awaiting::Nothing);
        MetaStep::Done(Err(SnapshotError::Corrupt(format!(
            "allocation fed {what} while awaiting {awaiting:?}"
        ))))
    }

    /// The answer to a `Read`; `now_ms` labels the record about to be written.
    pub fn on_read(&mut self, answer: ReadAnswer, now_ms: u64) -> AllocationStep {
        match std::mem::replace(&mut self.awaiting, Awaiting::Nothing) {
            Awaiting::Name { first } => match answer {
                Err(e) => MetaStep::Done(Err(e.into())),
                Ok(Some(_)) => {
                    let taken = SnapshotError::NameTaken(self.name.clone().unwrap_or_default());
                    if first {
                        MetaStep::Done(Err(taken))
                    } else {
                        self.end(Err(taken))
                    }
                }
                Ok(None) => self.read_next(),
            },
            Awaiting::Next => {
                let next = match answer {
                    Ok(next) => next,
                    Err(e) => return MetaStep::Done(Err(e.into())),
                };
                match self.batch(next.as_ref(), now_ms) {
                    Ok((record, ops)) => {
                        self.awaiting = Awaiting::Batch(record);
                        MetaStep::Write(ops)
                    }
                    Err(e) => MetaStep::Done(Err(e)),
                }
            }
            other => {
                self.awaiting = other;
                self.misused("a read")
            }
        }
    }

    /// The allocation batch for the `s/next` just read.
    fn batch(
        &self,
        next: Option<&Versioned>,
        now_ms: u64,
    ) -> Result<(SnapshotRecord, Vec<WriteOp>), SnapshotError> {
        let (id, condition) = match next {
            Some(v) => (be_u64(&v.value)?, Condition::Version(v.version)),
            None => (1, Condition::Absent),
        };
        let record = SnapshotRecord {
            id,
            name: self.name.clone(),
            auto: self.auto,
            time_ms: now_ms,
            state: SnapshotState::Pending,
        };
        let encoded =
            serde_json::to_vec(&record).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        let mut ops = vec![
            gate::no_commit_in_flight(),
            put(NEXT.to_vec(), (id + 1).to_be_bytes().to_vec(), condition),
            put(id_key(id), encoded, Condition::Always),
            put(open_key(id), Vec::new(), Condition::Always),
            put(gate::marking_key(id), Vec::new(), Condition::Always),
        ];
        if let Some(name) = &self.name {
            ops.push(put(
                name_key(name),
                id.to_be_bytes().to_vec(),
                Condition::Absent,
            ));
        }
        if let Some(key) = &self.want {
            ops.push(delete(key.clone()));
        }
        Ok((record, ops))
    }

    /// The answer to a `Write`. `can_wait`: whether the driver's gate deadline still
    /// allows a pause; `nonce` names the want if one is written now (at `now_ms`).
    pub fn on_written(
        &mut self,
        answer: WriteAnswer,
        can_wait: bool,
        nonce: u64,
        now_ms: u64,
    ) -> AllocationStep {
        match std::mem::replace(&mut self.awaiting, Awaiting::Nothing) {
            Awaiting::Batch(record) => match answer {
                Err(e) => self.end(Err(e.into())),
                // The batch deleted the want itself.
                Ok(Ok(version)) => MetaStep::Done(Ok(Tracked { record, version })),
                // Op 0 is the gate's check: a transaction is committing, and it
                // resolves within a round trip.
                Ok(Err(0)) if can_wait => match self.want {
                    None => {
                        let key = gate::want_key(nonce);
                        self.awaiting = Awaiting::Want(key.clone());
                        let label = now_ms.to_be_bytes().to_vec();
                        MetaStep::Write(vec![put(key, label, Condition::Always)])
                    }
                    Some(_) => {
                        self.awaiting = Awaiting::Resume;
                        MetaStep::Wait
                    }
                },
                Ok(Err(0)) => self.end(Err(SnapshotError::Blocked)),
                // Another allocation took the id (or the name).
                Ok(Err(_)) => {
                    self.contended += 1;
                    self.read_name_or_next(false)
                }
            },
            Awaiting::Want(key) => match answer {
                Err(e) => self.end(Err(e.into())),
                Ok(_) => {
                    self.want = Some(key);
                    self.awaiting = Awaiting::Resume;
                    MetaStep::Wait
                }
            },
            // Best effort: the sweeper removes a want whose delete failed.
            Awaiting::Cleanup => MetaStep::Done(self.result.take().unwrap_or(Err(
                SnapshotError::Corrupt("allocation cleaned up without a result".into()),
            ))),
            other => {
                self.awaiting = other;
                self.misused("a write's answer")
            }
        }
    }

    /// The pause asked for by `Wait` is over.
    pub fn resume(&mut self) -> AllocationStep {
        match std::mem::replace(&mut self.awaiting, Awaiting::Nothing) {
            Awaiting::Resume => self.read_next(),
            other => {
                self.awaiting = other;
                self.misused("a resume")
            }
        }
    }
}

/// A step of finishing an epoch: its result is the record as it ends up.
pub type FinishStep = MetaStep<Result<SnapshotRecord, SnapshotError>>;

/// Moving a pending record to done or aborted, conditionally on the version it was
/// read at, so that a coordinator and the sweeper cannot both win: if the write is
/// refused, the record is read back and whatever it says stands. Done or aborted,
/// `s/marking/e` goes in the same batch (the gate opens for commits).
#[derive(Debug)]
pub struct Finish {
    record: SnapshotRecord,
    read_back: bool,
}

impl Finish {
    /// Finish `pending` as `state`; a done record is relabelled `now_ms` (never
    /// earlier than its request). Returns the machine and its first step.
    pub fn new(
        pending: &Tracked,
        state: SnapshotState,
        now_ms: u64,
    ) -> Result<(Finish, FinishStep), SnapshotError> {
        let mut record = pending.record.clone();
        let done = matches!(state, SnapshotState::Done { .. });
        if done {
            record.time_ms = now_ms.max(record.time_ms);
        }
        record.state = state;
        let encoded =
            serde_json::to_vec(&record).map_err(|e| SnapshotError::Corrupt(e.to_string()))?;
        let mut ops = vec![
            put(
                id_key(record.id),
                encoded,
                Condition::Version(pending.version),
            ),
            delete(gate::marking_key(record.id)),
        ];
        if done {
            ops.push(put(
                time_key(record.time_ms, record.id),
                Vec::new(),
                Condition::Always,
            ));
        }
        let finish = Finish {
            record,
            read_back: false,
        };
        Ok((finish, MetaStep::Write(ops)))
    }

    /// The answer to the finishing write.
    pub fn on_written(&mut self, answer: WriteAnswer) -> FinishStep {
        match answer {
            Err(e) => MetaStep::Done(Err(e.into())),
            Ok(Ok(_)) => MetaStep::Done(Ok(self.record.clone())),
            // Someone else finished it first: the record says how.
            Ok(Err(_)) => {
                self.read_back = true;
                MetaStep::Read(id_key(self.record.id))
            }
        }
    }

    /// The answer to reading the record back.
    pub fn on_read(&mut self, answer: ReadAnswer) -> FinishStep {
        if !self.read_back {
            return MetaStep::Done(Err(SnapshotError::Corrupt(
                "finish fed a read it did not ask for".into(),
            )));
        }
        MetaStep::Done(match answer {
            Err(e) => Err(e.into()),
            Ok(Some(value)) => decode(&value).map(|t| t.record),
            Ok(None) => Err(SnapshotError::NotFound(self.record.id.to_string())),
        })
    }
}

/// The batch that closes epoch `id` once every shard applied its release: nothing is
/// left to sweep, and the gate is open.
pub fn close_ops(id: u64) -> Vec<WriteOp> {
    vec![delete(open_key(id)), delete(gate::marking_key(id))]
}

/// What opens the gate for an epoch whose marking is over but whose record could not
/// be finished: transactions may commit again, and the epoch stays open for the
/// sweeper, which finishes the record and closes it. Safe because the marking was
/// decided: if the record lands done, every marker was applied already; if aborted,
/// late markers are never read.
pub fn open_gate_ops(id: u64) -> Vec<WriteOp> {
    vec![delete(gate::marking_key(id))]
}

/// What the sweeper does with an epoch still open in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sweep {
    /// No record: close it.
    Close,
    /// Pending too long (its coordinator died or stalled): finish it aborted, with
    /// [`SWEPT`] as the reason, then release it.
    Abort,
    /// Finished but not closed: release it (again), then close it.
    Release,
    /// Pending, and young enough that its coordinator may still finish it.
    Leave,
}

/// Why the sweeper aborted an epoch.
pub const SWEPT: &str = "its coordinator did not finish it in time";

impl Sweep {
    /// The sweeper's choice for an open epoch with this record. `aged` answers, for a
    /// pending record labelled at the given wall-clock millisecond, whether it has
    /// been pending long enough to abort (the driver's clocks decide).
    pub fn of(record: Option<&SnapshotRecord>, aged: impl FnOnce(u64) -> bool) -> Sweep {
        match record {
            None => Sweep::Close,
            Some(r) if r.state == SnapshotState::Pending => {
                if aged(r.time_ms) {
                    Sweep::Abort
                } else {
                    Sweep::Leave
                }
            }
            Some(_) => Sweep::Release,
        }
    }
}

/// The wants (under `s/want/`) labelled before `cutoff_ms`: left by allocations that
/// gave up or died, and holding commits back.
pub fn stale_wants(wants: &[(Vec<u8>, Versioned)], cutoff_ms: u64) -> Vec<Vec<u8>> {
    let mut stale = Vec::new();
    for (key, value) in wants {
        match be_u64(&value.value) {
            Ok(written_ms) if written_ms >= cutoff_ms => {}
            Ok(_) => stale.push(key.clone()),
            // A want that does not decode holds commits back like any other, and no
            // allocation will ever delete it: drop it rather than stop every sweep.
            Err(_) => stale.push(key.clone()),
        }
    }
    stale
}

#[cfg(test)]
mod tests {
    use super::*;
    use cairn_cluster::MetaError;
    use cairn_raft::ShardError;

    fn versioned(value: Vec<u8>, version: u64) -> Versioned {
        Versioned { value, version }
    }

    #[test]
    fn stale_and_undecodable_wants_go_and_fresh_ones_stay() {
        let want = |nonce: u64, value: Vec<u8>| (gate::want_key(nonce), versioned(value, 1));
        let wants = [
            want(1, 500u64.to_be_bytes().to_vec()),
            want(2, 2_000u64.to_be_bytes().to_vec()),
            want(3, b"garbage".to_vec()),
        ];
        assert_eq!(
            stale_wants(&wants, 1_000),
            vec![gate::want_key(1), gate::want_key(3)]
        );
    }

    #[test]
    fn an_allocation_takes_the_next_id_behind_the_gate() {
        let mut a = Allocation::new(None, false).expect("no name");
        assert!(matches!(a.start(), MetaStep::Read(k) if k == NEXT));
        let next = versioned(7u64.to_be_bytes().to_vec(), 40);
        let MetaStep::Write(ops) = a.on_read(Ok(Some(next)), 1_000) else {
            panic!("expected the allocation batch")
        };
        assert_eq!(
            ops[0],
            gate::no_commit_in_flight(),
            "the gate's check is op 0"
        );
        assert_eq!(ops[1].condition, Condition::Version(40));
        assert!(ops.iter().any(|op| op.key == gate::marking_key(7)));
        match a.on_written(Ok(Ok(41)), true, 0, 1_000) {
            MetaStep::Done(Ok(t)) => {
                assert_eq!((t.record.id, t.version, t.record.time_ms), (7, 41, 1_000));
                assert_eq!(t.record.state, SnapshotState::Pending);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_shut_gate_writes_a_want_waits_and_deletes_it_with_the_allocation() {
        let mut a = Allocation::new(None, true).expect("no name");
        a.start();
        assert!(matches!(a.on_read(Ok(None), 5), MetaStep::Write(_)));
        let MetaStep::Write(want) = a.on_written(Ok(Err(0)), true, 99, 5) else {
            panic!("expected the want")
        };
        assert_eq!(want[0].key, gate::want_key(99));
        assert!(matches!(
            a.on_written(Ok(Ok(3)), true, 0, 5),
            MetaStep::Wait
        ));
        assert!(matches!(a.resume(), MetaStep::Read(k) if k == NEXT));
        let MetaStep::Write(ops) = a.on_read(Ok(None), 6) else {
            panic!("expected the allocation batch")
        };
        assert_eq!(
            ops.last().map(|op| op.key.clone()),
            Some(gate::want_key(99))
        );
        // Past the deadline: blocked, and the want is deleted on the way out.
        let MetaStep::Write(cleanup) = a.on_written(Ok(Err(0)), false, 0, 7) else {
            panic!("expected the want's delete")
        };
        assert_eq!(cleanup, vec![delete(gate::want_key(99))]);
        let unknown = MetaError::Shard(ShardError::ShuttingDown);
        assert!(matches!(
            a.on_written(Err(unknown), false, 0, 7),
            MetaStep::Done(Err(SnapshotError::Blocked))
        ));
    }

    #[test]
    fn a_lost_race_reads_again_and_a_taken_name_ends_it() {
        let mut a = Allocation::new(Some("nightly"), false).expect("a good name");
        assert!(matches!(a.start(), MetaStep::Read(k) if k == name_key("nightly")));
        assert!(
            !a.past_name_check(),
            "the gate's wait starts after the name check"
        );
        assert!(matches!(a.on_read(Ok(None), 1), MetaStep::Read(k) if k == NEXT));
        assert!(a.past_name_check());
        assert!(matches!(a.on_read(Ok(None), 1), MetaStep::Write(_)));
        assert!(matches!(
            a.on_written(Ok(Err(1)), true, 0, 1),
            MetaStep::Read(k) if k == name_key("nightly")
        ));
        let taken = versioned(1u64.to_be_bytes().to_vec(), 3);
        assert!(matches!(
            a.on_read(Ok(Some(taken)), 1),
            MetaStep::Done(Err(SnapshotError::NameTaken(_)))
        ));
        assert!(Allocation::new(Some("12"), false).is_err());
    }

    #[test]
    fn a_refused_finish_reports_what_the_record_says() {
        let record = SnapshotRecord {
            id: 4,
            name: None,
            auto: false,
            time_ms: 10,
            state: SnapshotState::Pending,
        };
        let pending = Tracked {
            record: record.clone(),
            version: 8,
        };
        let done = SnapshotState::Done {
            cuts: [(0, 5)].into(),
        };
        let (mut f, first) = Finish::new(&pending, done, 20).expect("encodes");
        let MetaStep::Write(ops) = first else {
            panic!("expected the finishing write")
        };
        assert_eq!(ops[0].condition, Condition::Version(8));
        assert!(matches!(f.on_written(Ok(Err(0))), MetaStep::Read(k) if k == id_key(4)));
        let aborted = SnapshotRecord {
            state: SnapshotState::Aborted {
                reason: SWEPT.into(),
            },
            ..record
        };
        let stored = versioned(serde_json::to_vec(&aborted).expect("json"), 9);
        assert!(matches!(f.on_read(Ok(Some(stored))), MetaStep::Done(Ok(r)) if r == aborted));
    }
}
