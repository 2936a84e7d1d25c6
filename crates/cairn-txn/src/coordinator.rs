//! Running transactions: the coordinator's path (record, prepare, decide, resolve) and
//! the sweeper that finishes what a dead coordinator left behind.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use cairn_cluster::clock::now_ms;
use cairn_cluster::{Meta, MetaStep, Shards};
use cairn_raft::{Backoff, ShardError};
use cairn_store::{shard_for_key, txn_id, txn_started_ms, ApplyOutcome, Command, ShardId, WriteOp};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::ballot::{Ballot, Refusal};
use crate::decision::{
    after_gate_abort, create_ops, forget_ops, Abort, Commit, CommitEnd, TxnSweep,
};
use crate::error::TxnError;
use crate::record::{self, meta_error, txn_key, Tracked, TxnRecord, TxnState};

/// Timing of the protocol.
#[derive(Debug, Clone)]
pub struct TxnConfig {
    /// How long a transaction may stay pending before the sweeper aborts it. A live
    /// coordinator finishes well within its request deadline; this bounds how long a
    /// dead one keeps keys locked.
    pub abort_after: Duration,
    /// How long the sweeper leaves a decided transaction to its coordinator before
    /// resolving it itself.
    pub resolve_after: Duration,
    /// How often the sweeper looks at the records.
    pub sweep_every: Duration,
    /// How often the transaction horizon is raised on every shard.
    pub horizon_every: Duration,
    /// How far behind the meta leader's clock the horizon stays: prepares of
    /// transactions started earlier are refused, their resolved records forgotten.
    pub horizon_age: Duration,
}

impl Default for TxnConfig {
    fn default() -> Self {
        TxnConfig {
            abort_after: Duration::from_secs(5),
            resolve_after: Duration::from_secs(1),
            sweep_every: Duration::from_secs(1),
            horizon_every: Duration::from_secs(30),
            horizon_age: Duration::from_secs(60),
        }
    }
}

/// A committed transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnOutcome {
    pub txn: u64,
    /// Per op: the version its key was written at, `None` if its shard had not
    /// confirmed the resolve by the deadline (it is committed; the sweeper finishes it).
    pub versions: Vec<Option<u64>>,
    /// Per op: whether its key had a live value before.
    pub existed: Vec<bool>,
}

/// The caller's ops, grouped by shard, remembering each op's place.
struct Plan {
    by_shard: BTreeMap<ShardId, Vec<(usize, WriteOp)>>,
    /// The shard of each op, in the caller's order.
    shard_of: Vec<ShardId>,
}

impl Plan {
    fn new(ops: Vec<WriteOp>, shards: u32) -> Plan {
        let mut by_shard: BTreeMap<ShardId, Vec<(usize, WriteOp)>> = BTreeMap::new();
        let mut shard_of = Vec::with_capacity(ops.len());
        for (i, op) in ops.into_iter().enumerate() {
            let shard = shard_for_key(&op.key, shards);
            shard_of.push(shard);
            by_shard.entry(shard).or_default().push((i, op));
        }
        Plan { by_shard, shard_of }
    }

    fn shards(&self) -> Vec<ShardId> {
        self.by_shard.keys().copied().collect()
    }

    /// The caller's index of op `op` of `shard`'s part.
    fn op_index(&self, shard: ShardId, op: usize) -> usize {
        self.by_shard
            .get(&shard)
            .and_then(|ops| ops.get(op))
            .map(|(i, _)| *i)
            .unwrap_or(0)
    }
}

/// Whether transaction `a` started before `b` (ids break ties).
fn older(a: u64, b: u64) -> bool {
    (txn_started_ms(a), a) < (txn_started_ms(b), b)
}

/// Every shard resolved: drop the record (and release the snapshot gate).
async fn forget<S: Shards>(shards: &S, id: u64) {
    if let Err(e) = Meta::new(shards).write(forget_ops(id)).await {
        tracing::debug!(txn = id, error = %e, "could not drop the record; the sweeper will");
    }
}

/// Runs cross-shard transactions through [`Shards`].
pub struct Transactions<S: Shards> {
    shards: Arc<S>,
    config: TxnConfig,
    node: u64,
}

impl<S: Shards> Transactions<S> {
    pub fn new(shards: Arc<S>, node: u64, config: TxnConfig) -> Self {
        Transactions {
            shards,
            config,
            node,
        }
    }

    fn meta(&self) -> Meta<'_, S> {
        Meta::new(&self.shards)
    }

    /// Apply `ops` atomically across every shard they touch, or not at all, within
    /// `timeout`. A lock held by another transaction is retried with backoff until
    /// the deadline.
    pub async fn commit(
        &self,
        ops: Vec<WriteOp>,
        timeout: Duration,
    ) -> Result<TxnOutcome, TxnError> {
        let deadline = Instant::now() + timeout;
        let plan = Plan::new(ops, self.shards.shard_count());
        // Every attempt carries the first one's start time: its age decides who waits
        // for whom (wait-die), so a transaction that keeps losing grows old and wins.
        let started_ms = now_ms();
        // Jittered, so two transactions that collided do not collide again.
        let mut backoff = Backoff::election(deadline);
        loop {
            match self.attempt(&plan, started_ms, deadline).await {
                Err(TxnError::Locked { .. }) if backoff.can_wait() => {
                    backoff.wait().await;
                }
                other => return other,
            }
        }
    }

    async fn attempt(
        &self,
        plan: &Plan,
        started_ms: u64,
        deadline: Instant,
    ) -> Result<TxnOutcome, TxnError> {
        let tracked = self.create(plan, started_ms).await?;
        let id = tracked.record.id;
        let mut ballot = Ballot::new(plan.by_shard.keys().copied());
        let prepares = plan.by_shard.iter().map(|(&shard, ops)| {
            let ops: Vec<WriteOp> = ops.iter().map(|(_, op)| op.clone()).collect();
            let command = Command::Prepare { txn: id, ops };
            async move {
                // Wait-die: an older transaction waits for a younger one's lock (it
                // prepares again once that resolves); a younger one dies at once.
                // Waits only ever point from older to younger, so none can cycle.
                let mut backoff = Backoff::contention(deadline);
                loop {
                    let result = self.write(shard, command.clone(), deadline).await;
                    match &result {
                        Ok(ApplyOutcome::Locked { txn: holder, .. })
                            if older(id, *holder) && backoff.can_wait() =>
                        {
                            backoff.wait().await;
                        }
                        _ => return (shard, result),
                    }
                }
            }
        });
        for (shard, result) in futures::future::join_all(prepares).await {
            ballot.on_answer(shard, result.map_err(|e| e.to_string()));
        }
        let mut existed = vec![false; plan.shard_of.len()];
        let refusal = match ballot.decision() {
            Some(Ok(prepared)) => {
                for (&shard, flags) in prepared {
                    for (op, &was) in flags.iter().enumerate() {
                        if let Some(slot) = existed.get_mut(plan.op_index(shard, op)) {
                            *slot = was;
                        }
                    }
                }
                None
            }
            Some(Err(refusal)) => Some(refusal.clone()),
            None => Some(Refusal::Failed("a shard never answered its prepare".into())),
        };
        if let Some(refusal) = refusal {
            self.abort(&tracked, deadline).await;
            metrics::counter!("cairn_txn_aborted_total").increment(1);
            return Err(match refusal {
                Refusal::Rejected { shard, op, current } => TxnError::Rejected {
                    op: plan.op_index(shard, op),
                    current,
                },
                Refusal::Locked { shard, op, txn } => TxnError::Locked {
                    op: plan.op_index(shard, op),
                    txn,
                },
                Refusal::Failed(reason) => TxnError::Aborted { reason },
            });
        }
        cairn_store::crash_point!("txn.prepared");
        self.decide(&tracked, deadline).await?;
        cairn_store::crash_point!("txn.decided");
        metrics::counter!("cairn_txn_committed_total").increment(1);
        let resolved = self.resolve(&tracked.record, true, deadline).await;
        let versions = plan
            .shard_of
            .iter()
            .map(|shard| resolved.get(shard).copied().flatten().flatten())
            .collect();
        if resolved.values().all(Option::is_some) {
            // Off the caller's path: the outcome is known, only bookkeeping is left
            // (and the sweeper does it if this fails).
            let shards = self.shards.clone();
            tokio::spawn(async move { forget(&*shards, id).await });
        }
        Ok(TxnOutcome {
            txn: id,
            versions,
            existed,
        })
    }

    /// Record a new pending transaction under a fresh id.
    async fn create(&self, plan: &Plan, started_ms: u64) -> Result<Tracked, TxnError> {
        for _ in 0..4 {
            let record = TxnRecord {
                id: txn_id(started_ms, rand::random()),
                state: TxnState::Pending,
                shards: plan.shards(),
                started_ms,
                node: self.node,
            };
            let ops = create_ops(&record)?;
            // Nothing is prepared yet: whatever happens here, nothing was written.
            match self.meta().write(ops).await {
                Ok(Some(version)) => return Ok(Tracked { record, version }),
                Ok(None) => continue, // an id collision: draw another
                Err(e) => {
                    return Err(TxnError::Aborted {
                        reason: format!("could not record the transaction: {e}"),
                    })
                }
            }
        }
        Err(TxnError::Aborted {
            reason: "could not draw an unused transaction id".into(),
        })
    }

    /// Write the commit decision. It waits while a snapshot epoch is marking; if the
    /// deadline passes first, the transaction is aborted instead. [`Commit`] decides.
    async fn decide(&self, tracked: &Tracked, deadline: Instant) -> Result<(), TxnError> {
        let mut backoff = Backoff::contention(deadline);
        let (mut commit, mut step) = Commit::new(tracked.clone())?;
        loop {
            step = match step {
                MetaStep::Write(ops) => {
                    let answer = self.meta().try_write(ops).await;
                    commit.on_written(answer, backoff.can_wait())
                }
                MetaStep::Read(key) => {
                    let answer = self.meta().get(key).await;
                    commit.on_read(answer, backoff.can_wait())
                }
                MetaStep::Wait => {
                    backoff.wait().await;
                    commit.resume()
                }
                MetaStep::Done(CommitEnd::Committed) => return Ok(()),
                MetaStep::Done(CommitEnd::Failed(e)) => return Err(e),
                MetaStep::Done(CommitEnd::AbortFirst) => {
                    self.abort(tracked, deadline).await;
                    let answer = self.meta().get(txn_key(tracked.record.id)).await;
                    return after_gate_abort(answer);
                }
            }
        }
    }

    /// Decide abort (unless decided otherwise already) and resolve every shard.
    /// [`Abort`] decides which way the shards are resolved.
    async fn abort(&self, tracked: &Tracked, deadline: Instant) {
        let id = tracked.record.id;
        let (mut abort, mut step) = match Abort::new(tracked) {
            Ok(machine) => machine,
            Err(e) => {
                tracing::error!(txn = id, error = %e, "cannot encode the abort");
                return;
            }
        };
        let commit = loop {
            step = match step {
                MetaStep::Write(ops) => abort.on_written(self.meta().try_write(ops).await),
                MetaStep::Read(key) => abort.on_read(self.meta().get(key).await),
                MetaStep::Wait => MetaStep::Done(None),
                MetaStep::Done(Some(commit)) => break commit,
                // Leave it to the sweeper, which will abort it.
                MetaStep::Done(None) => return,
            }
        };
        let aborted = TxnRecord {
            state: TxnState::Aborted,
            ..tracked.record.clone()
        };
        // Unlock promptly even if the client's deadline is close: other writers wait.
        let deadline = deadline.max(Instant::now() + Duration::from_secs(1));
        let resolved = self.resolve(&aborted, commit, deadline).await;
        if resolved.values().all(Option::is_some) {
            self.forget(id).await;
        }
    }

    /// Resolve `record` on each of its shards, retrying until `deadline`. Per shard:
    /// `Some(version written at, if any)` once resolved, `None` if it did not answer.
    async fn resolve(
        &self,
        record: &TxnRecord,
        commit: bool,
        deadline: Instant,
    ) -> BTreeMap<ShardId, Option<Option<u64>>> {
        let id = record.id;
        let resolves = record.shards.iter().map(|&shard| async move {
            let mut backoff = Backoff::election(deadline);
            loop {
                let command = Command::Resolve { txn: id, commit };
                match self.write(shard, command, deadline).await {
                    Ok(ApplyOutcome::Resolved { committed, version }) => {
                        if committed != commit {
                            tracing::error!(
                                txn = id,
                                shard,
                                committed,
                                "a shard resolved the transaction the other way"
                            );
                        }
                        return (shard, Some(version));
                    }
                    other => {
                        tracing::debug!(txn = id, shard, ?other, "resolve not confirmed; retrying");
                    }
                }
                // Resolving is idempotent: repeating it is always safe.
                if !backoff.wait().await {
                    return (shard, None);
                }
            }
        });
        futures::future::join_all(resolves)
            .await
            .into_iter()
            .collect()
    }

    async fn forget(&self, id: u64) {
        forget(&*self.shards, id).await
    }

    async fn write(
        &self,
        shard: ShardId,
        command: Command,
        deadline: Instant,
    ) -> Result<ApplyOutcome, ShardError> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.shards.propose(shard, command)).await {
            Ok(result) => result,
            Err(_) => Err(ShardError::OutcomeUnknown {
                shard,
                reason: "no answer before the deadline".into(),
            }),
        }
    }

    /// One pass of the sweeper (meta leader only): abort transactions pending for
    /// longer than `abort_after`, resolve decided ones their coordinator left. Aged by
    /// the older of the record's wall-clock label and this leader's first sighting,
    /// as the snapshot sweeper does.
    pub async fn sweep(&self, first_seen: &mut HashMap<u64, Instant>) -> Result<(), TxnError> {
        if !self.shards.leads_meta() {
            first_seen.clear();
            return Ok(());
        }
        let records = self
            .meta()
            .scan_all(record::TXN)
            .await
            .map_err(meta_error)?;
        let mut live = Vec::new();
        for (_, value) in records {
            let tracked = Tracked {
                record: TxnRecord::decode(&value)?,
                version: value.version,
            };
            let id = tracked.record.id;
            live.push(id);
            let seen = *first_seen.entry(id).or_insert_with(Instant::now);
            let age = seen.elapsed().max(Duration::from_millis(
                now_ms().saturating_sub(tracked.record.started_ms),
            ));
            let deadline = Instant::now() + self.config.abort_after;
            let sweep = TxnSweep::of(
                tracked.record.state,
                age,
                self.config.abort_after,
                self.config.resolve_after,
            );
            match sweep {
                TxnSweep::Abort => {
                    tracing::warn!(txn = id, "aborting a transaction its coordinator left");
                    self.abort(&tracked, deadline).await;
                }
                TxnSweep::Resolve { commit } => {
                    let resolved = self.resolve(&tracked.record, commit, deadline).await;
                    if resolved.values().all(Option::is_some) {
                        self.forget(id).await;
                    }
                }
                TxnSweep::Leave => {}
            }
        }
        first_seen.retain(|id, _| live.contains(id));
        Ok(())
    }

    /// Raise the transaction horizon on every data shard (meta leader only).
    pub async fn raise_horizon(&self) -> Result<(), TxnError> {
        if !self.shards.leads_meta() {
            return Ok(());
        }
        let before_ms = now_ms().saturating_sub(self.config.horizon_age.as_millis() as u64);
        let deadline = Instant::now() + self.config.abort_after;
        for shard in 0..self.shards.shard_count() {
            self.write(shard, Command::TxnHorizon { before_ms }, deadline)
                .await?;
        }
        Ok(())
    }

    /// Run the sweeper and the horizon until `cancel` fires.
    pub async fn run_sweeper(self: Arc<Self>, cancel: CancellationToken) {
        let mut first_seen = HashMap::new();
        let mut sweep = tokio::time::interval(self.config.sweep_every);
        sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut horizon = tokio::time::interval(self.config.horizon_every);
        horizon.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = sweep.tick() => {
                    if let Err(e) = self.sweep(&mut first_seen).await {
                        tracing::debug!(error = %e, "transaction sweep incomplete; retrying");
                    }
                }
                _ = horizon.tick() => {
                    if let Err(e) = self.raise_horizon().await {
                        tracing::debug!(error = %e, "transaction horizon not raised everywhere");
                    }
                }
            }
        }
    }
}
