//! The transaction coordinator and the transaction half of the sweeper, as the
//! simulator plays them: production's own machines, carried through the simulated
//! network.
//!
//! A transaction run is one attempt of `cairn_txn::Transactions::commit`: the record
//! (`decision::create_ops`), `Prepare` on every shard involved decided by
//! [`Ballot`], then [`Commit`] in the meta group behind the snapshot gate, or
//! [`Abort`]; `Resolve` on every shard the way the record says until each applied it;
//! then the record and its place in the gate are forgotten (`decision::forget_ops`).
//! A run whose decision it could not learn (the commit's outcome unknown past the
//! deadline, an abort left to the sweeper) keeps reading the record until the
//! sweeper decided it, then resolves that way, as a client that reads before
//! retrying would learn the outcome.
//!
//! The sweeper's runs ([`TxnSweep`]) are the same runs entered half way: abort a
//! record pending too long, resolve and forget a decided one.
//!
//! The history records a transaction as committed or aborted by what its shards
//! applied, and every shard's resolve must agree with the record's decision.

use std::collections::BTreeMap;

use cairn_cluster::meta::MetaStep;
use cairn_store::{ApplyOutcome, Command, ShardId, WriteOp};
use cairn_txn::decision::{create_ops, forget_ops, state_in, AbortStep, CommitStep};
use cairn_txn::record::{txn_key, Tracked};
use cairn_txn::{Abort, Ballot, Commit, CommitEnd, TxnRecord, TxnState, TxnSweep};

use crate::config::Millis;
use crate::history::{OpId, Outcome, Stamp};
use crate::meta::MetaAnswer;
use crate::workload::Owner;
use crate::world::{CallEnd, Event, Req, World};

/// The sweeper aborts a transaction pending this long (`TxnConfig::abort_after`).
pub(crate) const TXN_ABORT_AFTER_MS: Millis = 5_000;
/// The sweeper resolves a decided transaction left this long (`resolve_after`).
pub(crate) const TXN_RESOLVE_AFTER_MS: Millis = 1_000;
/// How often a run that lost track of its decision reads the record again.
const ORPHAN_POLL_MS: Millis = 300;

pub(crate) struct TxnRun {
    /// The client's operation, or `None` for the sweeper's runs.
    pub(crate) client_op: Option<(OpId, usize)>,
    pub(crate) txn: u64,
    pub(crate) ops: BTreeMap<ShardId, Vec<WriteOp>>,
    deadline: Millis,
    record: TxnRecord,
    /// The meta version the record was written or read at.
    version: u64,
    ballot: Ballot,
    stage: Stage,
    /// The decision the shards are resolved with; `None` with `Resolving`: learn it
    /// from the shards (the record is gone: every shard resolved already).
    commit: Option<bool>,
    /// Per shard: version written, when, and which way the shard resolved.
    resolved: BTreeMap<ShardId, (Option<u64>, Stamp, bool)>,
}

enum Stage {
    Creating,
    Preparing,
    Committing(Commit),
    Aborting(Abort),
    /// Reading the record until someone decided it.
    Orphaned,
    Resolving,
    Forgetting,
    Finished,
}

impl TxnRun {
    /// Still doing something (the run settles only when none is).
    pub(crate) fn open(&self) -> bool {
        !matches!(self.stage, Stage::Finished)
    }
}

impl World {
    /// Start a client's transaction: record it in the meta group first.
    pub(crate) fn txn_start(
        &mut self,
        op: OpId,
        client: usize,
        txn: u64,
        ops: BTreeMap<ShardId, Vec<WriteOp>>,
        started_ms: u64,
        deadline: Millis,
    ) {
        let record = TxnRecord {
            id: txn,
            state: TxnState::Pending,
            shards: ops.keys().copied().collect(),
            started_ms,
            node: client as u64,
        };
        let creating = create_ops(&record);
        let t = self.work.txns.len();
        self.work.txns.push(TxnRun {
            client_op: Some((op, client)),
            txn,
            ballot: Ballot::new(ops.keys().copied()),
            ops,
            deadline,
            record,
            version: 0,
            stage: Stage::Creating,
            commit: None,
            resolved: BTreeMap::new(),
        });
        match creating {
            Ok(ops) => {
                self.meta_step::<()>(Owner::TxnMeta(t), MetaStep::Write(ops), false);
            }
            Err(e) => self.fail(format!("transaction {txn}: {e}")),
        }
    }

    fn tracked(&self, t: usize) -> Tracked {
        let run = &self.work.txns[t];
        Tracked {
            record: run.record.clone(),
            version: run.version,
        }
    }

    fn prepare(&mut self, t: usize, version: u64) {
        let run = &mut self.work.txns[t];
        run.stage = Stage::Preparing;
        run.version = version;
        let (txn, deadline) = (run.txn, run.deadline);
        let prepares: Vec<(ShardId, Command)> = run
            .ops
            .iter()
            .map(|(&s, ops)| {
                let ops = ops.clone();
                (s, Command::Prepare { txn, ops })
            })
            .collect();
        for (s, command) in prepares {
            self.call(Owner::Prepare(t, s), s, Req::Write(command), deadline, true);
        }
    }

    pub(crate) fn on_prepare_end(&mut self, t: usize, shard: ShardId, end: CallEnd) {
        let answer = match end {
            CallEnd::Written(outcome) => Ok(outcome),
            other => Err(format!("{other:?}")),
        };
        let run = &mut self.work.txns[t];
        if !matches!(run.stage, Stage::Preparing) {
            return;
        }
        run.ballot.on_answer(shard, answer);
        let Some(decision) = run.ballot.decision() else {
            return;
        };
        let all = decision.is_ok();
        let tracked = self.tracked(t);
        if all {
            match Commit::new(tracked) {
                Ok((commit, step)) => {
                    self.work.txns[t].stage = Stage::Committing(commit);
                    self.commit_step(t, step);
                }
                Err(e) => self.fail(format!("transaction {}: {e}", self.work.txns[t].txn)),
            }
        } else {
            self.abort(t, &tracked);
        }
    }

    /// Decide abort (the gate kept the commit waiting past the deadline, a shard
    /// refused, or the sweeper gave up on it). After a shut gate, production then
    /// reads the record to tell its caller (`decision::after_gate_abort`); here the
    /// shards' resolves tell the history.
    fn abort(&mut self, t: usize, tracked: &Tracked) {
        match Abort::new(tracked) {
            Ok((abort, step)) => {
                self.work.txns[t].stage = Stage::Aborting(abort);
                self.abort_step(t, step);
            }
            Err(e) => self.fail(format!("transaction {}: {e}", tracked.record.id)),
        }
    }

    fn commit_step(&mut self, t: usize, step: CommitStep) {
        let Some(end) = self.meta_step(Owner::TxnMeta(t), step, false) else {
            return;
        };
        match end {
            CommitEnd::Committed => self.resolve(t, Some(true)),
            // The record was aborted (by the sweeper): resolve as it says.
            CommitEnd::Failed(cairn_txn::TxnError::Aborted { .. }) => self.resolve(t, Some(false)),
            CommitEnd::Failed(_) => self.orphan(t),
            CommitEnd::AbortFirst => {
                let tracked = self.tracked(t);
                self.abort(t, &tracked);
            }
        }
    }

    fn abort_step(&mut self, t: usize, step: AbortStep) {
        let Some(decided) = self.meta_step(Owner::TxnMeta(t), step, false) else {
            return;
        };
        match decided {
            Some(commit) => self.resolve(t, Some(commit)),
            // A sweeper's abort that could not decide ends, as production's does
            // (`Transactions::abort`): the next sweep decides afresh. Polling instead
            // would wait forever, since a sweep leaves a record alone while a sweeper
            // run for it is open.
            None if self.work.txns[t].client_op.is_none() => {
                self.work.txns[t].stage = Stage::Finished;
            }
            None => self.orphan(t),
        }
    }

    /// The run no longer knows the decision: read the record until there is one.
    fn orphan(&mut self, t: usize) {
        self.work.txns[t].stage = Stage::Orphaned;
        self.clock
            .after(ORPHAN_POLL_MS, Event::Resume(Owner::TxnMeta(t)));
    }

    fn resolve(&mut self, t: usize, commit: Option<bool>) {
        let run = &mut self.work.txns[t];
        run.stage = Stage::Resolving;
        run.commit = commit;
        run.resolved.clear();
        let txn = run.txn;
        let shards: Vec<ShardId> = run.record.shards.clone();
        for s in shards {
            let command = Command::Resolve {
                txn,
                commit: commit.unwrap_or(false),
            };
            self.call(
                Owner::Resolve(t, s),
                s,
                Req::Write(command),
                Millis::MAX,
                true,
            );
        }
    }

    pub(crate) fn on_resolve_end(&mut self, t: usize, shard: ShardId, end: CallEnd, at: Stamp) {
        let txn = self.work.txns[t].txn;
        let (committed, version) = match end {
            CallEnd::Written(ApplyOutcome::Resolved { committed, version }) => (committed, version),
            other => {
                return self.fail(format!(
                    "a resolve of transaction {txn} on shard {shard} ended {other:?}"
                ))
            }
        };
        let run = &mut self.work.txns[t];
        if let Some(commit) = run.commit {
            if commit != committed {
                return self.fail(format!(
                    "transaction {txn}: its record says {} but shard {shard} resolved it {}",
                    if commit { "committed" } else { "aborted" },
                    if committed { "committed" } else { "aborted" }
                ));
            }
        }
        run.resolved.insert(shard, (version, at, committed));
        if run.resolved.len() < run.record.shards.len() {
            return;
        }
        let sides: Vec<bool> = run.resolved.values().map(|&(_, _, c)| c).collect();
        if sides.windows(2).any(|p| p[0] != p[1]) {
            return self.fail(format!(
                "transaction {txn}: its shards resolved it both ways: {sides:?}"
            ));
        }
        let commit = sides.first().copied().unwrap_or(false);
        let outcome = if commit {
            let mut resolved = BTreeMap::new();
            for (&s, &(version, stamp, _)) in &run.resolved {
                match version {
                    Some(v) => {
                        resolved.insert(s, (v, stamp));
                    }
                    None => {
                        return self.fail(format!(
                            "transaction {txn} committed but its resolve on shard {s} wrote nothing"
                        ))
                    }
                }
            }
            Outcome::TxnCommitted { resolved }
        } else {
            Outcome::TxnAborted
        };
        run.stage = Stage::Forgetting;
        if let Some((op, client)) = run.client_op {
            self.history.complete(op, at, outcome);
            self.next_op_later(client);
        }
        let forget = MetaStep::Write(forget_ops(txn));
        self.meta_step::<()>(Owner::TxnMeta(t), forget, true);
    }

    /// A meta call of transaction run `t` ended.
    pub(crate) fn on_txn_meta(&mut self, t: usize, answer: MetaAnswer) {
        let can_wait = self.can_wait(self.work.txns[t].deadline);
        let run = &mut self.work.txns[t];
        let txn = run.txn;
        match (&mut run.stage, answer) {
            (Stage::Creating, MetaAnswer::Written(Ok(Ok(version)))) => self.prepare(t, version),
            // Nothing is prepared: whatever happened, nothing was written.
            (Stage::Creating, MetaAnswer::Written(_)) => {
                run.stage = Stage::Finished;
                if let Some((op, client)) = run.client_op {
                    let at = self.stamp();
                    self.history.complete(op, at, Outcome::TxnAborted);
                    self.next_op_later(client);
                }
            }
            (Stage::Committing(commit), MetaAnswer::Written(a)) => {
                let step = commit.on_written(a, can_wait);
                self.commit_step(t, step);
            }
            (Stage::Committing(commit), MetaAnswer::Read(a)) => {
                let step = commit.on_read(a, can_wait);
                self.commit_step(t, step);
            }
            (Stage::Aborting(abort), MetaAnswer::Written(a)) => {
                let step = abort.on_written(a);
                self.abort_step(t, step);
            }
            (Stage::Aborting(abort), MetaAnswer::Read(a)) => {
                let step = abort.on_read(a);
                self.abort_step(t, step);
            }
            (Stage::Orphaned, MetaAnswer::Read(a)) => match state_in(a) {
                Ok(Some(TxnState::Committed)) => self.resolve(t, Some(true)),
                Ok(Some(TxnState::Aborted)) => self.resolve(t, Some(false)),
                // Forgotten: every shard resolved it; they say which way.
                Ok(None) => self.resolve(t, None),
                Ok(Some(TxnState::Pending)) | Err(_) => self.orphan(t),
            },
            (Stage::Forgetting, MetaAnswer::Written(Ok(Ok(_)))) => run.stage = Stage::Finished,
            (_, other) => self.fail(format!(
                "transaction {txn}: an unexpected meta answer {other:?}"
            )),
        }
    }

    /// A pause asked for by run `t` is over.
    pub(crate) fn on_txn_resume(&mut self, t: usize) {
        let run = &mut self.work.txns[t];
        match &mut run.stage {
            Stage::Committing(commit) => {
                let step = commit.resume();
                self.commit_step(t, step);
            }
            Stage::Orphaned => {
                let key = txn_key(run.txn);
                self.meta_step::<()>(Owner::TxnMeta(t), MetaStep::Read(key), false);
            }
            _ => {}
        }
    }

    /// The sweeper found transaction record `tracked`.
    pub(crate) fn sweep_txn(&mut self, tracked: Tracked) {
        let id = tracked.record.id;
        if self
            .work
            .txns
            .iter()
            .any(|r| r.client_op.is_none() && r.txn == id && r.open())
        {
            return;
        }
        let now = self.clock.now();
        let wall = self.wall_ms();
        let seen = *self.work.sweeper.txn_first_seen.entry(id).or_insert(now);
        let age = (now - seen).max(wall.saturating_sub(tracked.record.started_ms));
        let sweep = TxnSweep::of(
            tracked.record.state,
            std::time::Duration::from_millis(age),
            std::time::Duration::from_millis(TXN_ABORT_AFTER_MS),
            std::time::Duration::from_millis(TXN_RESOLVE_AFTER_MS),
        );
        if sweep == TxnSweep::Leave {
            return;
        }
        let t = self.work.txns.len();
        self.work.txns.push(TxnRun {
            client_op: None,
            txn: id,
            ops: BTreeMap::new(),
            deadline: now + TXN_ABORT_AFTER_MS,
            ballot: Ballot::new(tracked.record.shards.iter().copied()),
            record: tracked.record.clone(),
            version: tracked.version,
            stage: Stage::Finished,
            commit: None,
            resolved: BTreeMap::new(),
        });
        match sweep {
            TxnSweep::Abort => self.abort(t, &tracked),
            TxnSweep::Resolve { commit } => self.resolve(t, Some(commit)),
            TxnSweep::Leave => {}
        }
    }
}
