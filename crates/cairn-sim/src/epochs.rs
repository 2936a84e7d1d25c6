//! The snapshot coordinators and the snapshot half of the sweeper, as the simulator
//! plays them: production's own machines, carried through the simulated network.
//!
//! An epoch run is what `cairn_snapshot::Coordinator::take` does, step for step:
//! [`Allocation`] in the meta group (behind the gate), `Marker(e)` on every shard
//! decided by [`Marking`] (2 s to place them all), [`Finish`] in the meta group
//! (conditional on the pending record; whatever the registry then says is what the
//! coordinator reports), `Release(e)` on every shard until each applied it, and the
//! close (`epoch::close_ops`). Two coordinators run side by side (any node may
//! coordinate), so epochs overlap and a shard can hold two open cuts at once.
//!
//! The sweeper's runs ([`Sweep`]: an epoch left open by a coordinator whose
//! allocation's outcome it never learned, or whose finish or close failed) are the
//! same runs entered half way: read the record, abort it if pending too long, release,
//! close.
//!
//! What the simulator keeps for the checks: each epoch a coordinator allocated (its
//! request, its markers' cuts, when it was decided and what the registry said) in
//! `History::epochs`, and, per epoch id, how its coordinator's finish ended.

use std::collections::BTreeMap;

use cairn_cluster::meta::MetaStep;
use cairn_snapshot::epoch::{close_ops, open_gate_ops, Finish, FinishStep, Sweep, SWEPT};
use cairn_snapshot::registry::Tracked;
use cairn_snapshot::{Allocation, Marking, SnapshotRecord, SnapshotState};
use cairn_store::{ApplyOutcome, ShardId};
use rand::Rng;

use crate::config::Millis;
use crate::history::{Epoch, Stamp};
use crate::meta::MetaAnswer;
use crate::workload::Owner;
use crate::world::{CallEnd, Event, Phase, Req, World};

/// An epoch whose markers are not all placed by then aborts.
const MARKING_MS: Millis = 2_000;
/// How long an allocation waits at a shut gate (`registry::GATE_WAIT`).
const GATE_WAIT_MS: Millis = 2_000;
/// The sweeper aborts an epoch pending this long (`SnapshotConfig::abort_after`).
pub(crate) const EPOCH_ABORT_AFTER_MS: Millis = 3_000;

/// Index into `Workload::epochs`' runs.
pub(crate) type RunId = u64;

/// How a coordinator's epoch ended, as it reported it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reported {
    /// The registry said done, with these cuts.
    Done(BTreeMap<ShardId, u64>),
    Aborted,
    /// The finishing write failed: the registry decides (the check reads it).
    Unknown,
}

pub(crate) struct EpochRun {
    /// Which coordinator runs it; `None`: the sweeper.
    coordinator: Option<usize>,
    stage: Stage,
}

enum Stage {
    Allocating {
        allocation: Allocation,
        requested: Stamp,
        gate_deadline: Millis,
    },
    Marking {
        pending: Tracked,
        marking: Marking,
        /// Index in `History::epochs`.
        index: usize,
    },
    /// The sweeper reads the record of an open epoch.
    Inspecting {
        id: u64,
    },
    Finishing {
        finish: Finish,
        id: u64,
        index: Option<usize>,
    },
    /// Releasing on every shard; then closing, if the record is known final.
    Releasing {
        id: u64,
        left: usize,
        close: bool,
    },
    Closing {
        id: u64,
    },
}

#[derive(Default)]
pub(crate) struct Epochs {
    runs: BTreeMap<RunId, EpochRun>,
    next_run: RunId,
    /// Per epoch id: what its coordinator reported.
    pub(crate) reported: BTreeMap<u64, Reported>,
    /// Allocations that failed (blocked at the gate, unknown outcome, ...).
    pub(crate) allocations_failed: u64,
}

impl Epochs {
    /// Whether any run is in flight.
    pub(crate) fn busy(&self) -> bool {
        !self.runs.is_empty()
    }

    /// Whether the sweeper already works on epoch `id`.
    fn sweeping(&self, id: u64) -> bool {
        self.runs.values().any(|r| {
            r.coordinator.is_none()
                && matches!(r.stage,
                    Stage::Inspecting { id: e } | Stage::Finishing { id: e, .. }
                    | Stage::Releasing { id: e, .. } | Stage::Closing { id: e } if e == id)
        })
    }

    fn add(&mut self, run: EpochRun) -> RunId {
        let id = self.next_run;
        self.next_run += 1;
        self.runs.insert(id, run);
        id
    }
}

impl World {
    /// Coordinator `coordinator` starts its next epoch.
    pub(crate) fn epoch_start(&mut self, coordinator: usize) {
        if self.phase != Phase::Active {
            return;
        }
        let mut allocation = match Allocation::new(None, true) {
            Ok(a) => a,
            Err(e) => return self.fail(format!("an unnamed allocation refused: {e}")),
        };
        let step = allocation.start();
        let run = EpochRun {
            coordinator: Some(coordinator),
            stage: Stage::Allocating {
                allocation,
                requested: self.stamp(),
                gate_deadline: self.clock.now() + GATE_WAIT_MS,
            },
        };
        let id = self.work.epochs.add(run);
        self.allocation_step(id, step);
    }

    fn allocation_step(
        &mut self,
        run: RunId,
        step: MetaStep<Result<Tracked, cairn_snapshot::SnapshotError>>,
    ) {
        let Some(result) = self.meta_step(Owner::EpochMeta(run), step, false) else {
            return;
        };
        match result {
            Ok(pending) => self.mark(run, pending),
            Err(_) => {
                self.work.epochs.allocations_failed += 1;
                self.end_run(run);
            }
        }
    }

    /// The epoch is allocated: propose its marker on every shard.
    fn mark(&mut self, run: RunId, pending: Tracked) {
        let Some(r) = self.work.epochs.runs.get_mut(&run) else {
            return;
        };
        let Stage::Allocating { requested, .. } = r.stage else {
            return self.fail(format!("epoch run {run} marked while not allocating"));
        };
        let id = pending.record.id;
        self.history.epochs.push(Epoch {
            id,
            requested,
            decided: None,
            done: false,
            cuts: BTreeMap::new(),
        });
        let marking = Marking::new(id, self.shards);
        let marker = marking.marker();
        r.stage = Stage::Marking {
            pending,
            marking,
            index: self.history.epochs.len() - 1,
        };
        let deadline = self.clock.now() + MARKING_MS;
        for s in 0..self.shards {
            let req = Req::Write(marker.clone());
            self.call(Owner::Marker(run, s), s, req, deadline, true);
        }
    }

    pub(crate) fn on_marker_end(&mut self, run: RunId, shard: ShardId, end: CallEnd) {
        let answer = match end {
            CallEnd::Written(outcome) => Ok(outcome),
            other => Err(format!("{other:?}")),
        };
        let now_ms = self.wall_ms();
        let Some(r) = self.work.epochs.runs.get_mut(&run) else {
            return;
        };
        let Stage::Marking {
            pending,
            marking,
            index,
        } = &mut r.stage
        else {
            return;
        };
        marking.on_answer(shard, answer);
        if let Some(c) = marking.cut(shard) {
            self.history.epochs[*index].cuts.insert(shard, c);
        }
        let Some(state) = marking.decision() else {
            return;
        };
        let (pending, index) = (pending.clone(), *index);
        let id = pending.record.id;
        match Finish::new(&pending, state, now_ms) {
            Ok((finish, step)) => {
                r.stage = Stage::Finishing {
                    finish,
                    id,
                    index: Some(index),
                };
                self.finish_step(run, step);
            }
            Err(e) => self.fail(format!("epoch {id}: cannot encode its record: {e}")),
        }
    }

    fn finish_step(&mut self, run: RunId, step: FinishStep) {
        let Some(result) = self.meta_step(Owner::EpochMeta(run), step, false) else {
            return;
        };
        let Some(r) = self.work.epochs.runs.get_mut(&run) else {
            return;
        };
        let Stage::Finishing { id, index, .. } = r.stage else {
            return;
        };
        if index.is_none() && result.is_err() {
            // The sweeper's finish failed: production's sweep stops there and tries
            // again at the next pass.
            return self.end_run(run);
        }
        if let Some(index) = index {
            // The coordinator reports what the registry says, and releases either way
            // (`Coordinator::take`: the windows must close).
            let reported = match &result {
                Ok(SnapshotRecord {
                    state: SnapshotState::Done { cuts },
                    ..
                }) => Reported::Done(cuts.clone()),
                Ok(_) => Reported::Aborted,
                Err(_) => Reported::Unknown,
            };
            let decided = self.stamp();
            let epoch = &mut self.history.epochs[index];
            // The sweeper may have decided and released it first (`release`).
            epoch.decided = Some(epoch.decided.map_or(decided, |d| d.min(decided)));
            epoch.done = matches!(reported, Reported::Done(_));
            self.work.epochs.reported.insert(id, reported);
        }
        self.release(run, id, result.is_ok());
    }

    fn release(&mut self, run: RunId, id: u64, close: bool) {
        if !self.work.epochs.runs.contains_key(&run) {
            return;
        }
        // Whoever releases knows the epoch is decided (or, for a coordinator whose
        // finish went unanswered, gives up waiting): the windows may close from now.
        // The sweeper releases without the coordinator's run learning of it, so the
        // decision is stamped here too, or the holds check would count answers after
        // a sweeper's release as early.
        let now = self.stamp();
        if let Some(epoch) = self.history.epochs.iter_mut().find(|e| e.id == id) {
            epoch.decided = Some(epoch.decided.map_or(now, |d| d.min(now)));
        }
        let Some(r) = self.work.epochs.runs.get_mut(&run) else {
            return;
        };
        r.stage = Stage::Releasing {
            id,
            left: self.shards as usize,
            close,
        };
        let release = Marking::new(id, self.shards).release();
        for s in 0..self.shards {
            let req = Req::Write(release.clone());
            self.call(Owner::Release(run, s), s, req, Millis::MAX, true);
        }
    }

    pub(crate) fn on_release_end(&mut self, run: RunId, end: CallEnd) {
        if !matches!(end, CallEnd::Written(ApplyOutcome::Released)) {
            return self.fail(format!("epoch run {run}: a release ended {end:?}"));
        }
        let Some(r) = self.work.epochs.runs.get_mut(&run) else {
            return;
        };
        let Stage::Releasing { id, left, close } = &mut r.stage else {
            return;
        };
        *left -= 1;
        if *left > 0 {
            return;
        }
        // Not closed if the record is not known final: left open for the sweeper,
        // which finishes the record first; only the gate opens.
        let (id, ops) = if *close {
            (*id, close_ops(*id))
        } else {
            (*id, open_gate_ops(*id))
        };
        r.stage = Stage::Closing { id };
        self.meta_step::<()>(Owner::EpochMeta(run), MetaStep::Write(ops), true);
    }

    /// A meta call of an epoch run ended.
    pub(crate) fn on_epoch_meta(&mut self, run: RunId, answer: MetaAnswer) {
        let now_ms = self.wall_ms();
        let Some(r) = self.work.epochs.runs.get_mut(&run) else {
            return;
        };
        match (&mut r.stage, answer) {
            (
                Stage::Allocating {
                    allocation,
                    gate_deadline,
                    ..
                },
                answer,
            ) => {
                let step = match answer {
                    MetaAnswer::Read(a) => allocation.on_read(a, now_ms),
                    MetaAnswer::Written(a) => {
                        let can_wait = self.clock.now() + 30 <= *gate_deadline;
                        let nonce = self.rng.gen();
                        allocation.on_written(a, can_wait, nonce, now_ms)
                    }
                    MetaAnswer::Scanned(_) => return self.fail("allocation: a scan answer".into()),
                };
                self.allocation_step(run, step);
            }
            (Stage::Finishing { finish, .. }, answer) => {
                let step = match answer {
                    MetaAnswer::Read(a) => finish.on_read(a),
                    MetaAnswer::Written(a) => finish.on_written(a),
                    MetaAnswer::Scanned(_) => return self.fail("finish: a scan answer".into()),
                };
                self.finish_step(run, step);
            }
            (&mut Stage::Inspecting { id }, MetaAnswer::Read(answer)) => {
                self.inspected(run, id, answer)
            }
            (Stage::Closing { .. }, MetaAnswer::Written(Ok(Ok(_)))) => self.end_run(run),
            (Stage::Closing { id }, other) => {
                let id = *id;
                self.fail(format!("epoch {id}: its close ended {other:?}"))
            }
            (_, other) => self.fail(format!(
                "epoch run {run}: an unexpected meta answer {other:?}"
            )),
        }
    }

    /// A pause asked for by an allocation is over.
    pub(crate) fn on_epoch_resume(&mut self, run: RunId) {
        let Some(r) = self.work.epochs.runs.get_mut(&run) else {
            return;
        };
        if let Stage::Allocating { allocation, .. } = &mut r.stage {
            let step = allocation.resume();
            self.allocation_step(run, step);
        }
    }

    fn end_run(&mut self, run: RunId) {
        let Some(r) = self.work.epochs.runs.remove(&run) else {
            return;
        };
        if let (Some(coordinator), Phase::Active) = (r.coordinator, &self.phase) {
            let next = self.rng.gen_range(300..=1500);
            self.clock.after(next, Event::EpochStart(coordinator));
        }
    }

    /// The sweeper found epoch `id` open in the registry.
    pub(crate) fn sweep_epoch(&mut self, id: u64) {
        if self.work.epochs.sweeping(id) {
            return;
        }
        let run = self.work.epochs.add(EpochRun {
            coordinator: None,
            stage: Stage::Inspecting { id },
        });
        let key = cairn_snapshot::registry::id_key(id);
        self.meta_step::<()>(Owner::EpochMeta(run), MetaStep::Read(key), false);
    }

    fn inspected(&mut self, run: RunId, id: u64, answer: cairn_cluster::meta::ReadAnswer) {
        let tracked = match answer {
            Ok(value) => match value
                .map(|v| cairn_snapshot::registry::decode(&v))
                .transpose()
            {
                Ok(t) => t,
                Err(e) => return self.fail(format!("epoch {id}: {e}")),
            },
            // Try again at the next sweep.
            Err(_) => return self.end_run(run),
        };
        let now = self.clock.now();
        let wall = self.wall_ms();
        let first_seen = *self.work.sweeper.first_seen.entry(id).or_insert(now);
        let aged = |time_ms: u64| {
            let seen = now - first_seen;
            seen.max(wall.saturating_sub(time_ms)) >= EPOCH_ABORT_AFTER_MS
        };
        match (
            Sweep::of(tracked.as_ref().map(|t| &t.record), aged),
            tracked,
        ) {
            (Sweep::Close, _) => {
                if let Some(r) = self.work.epochs.runs.get_mut(&run) {
                    r.stage = Stage::Closing { id };
                }
                self.meta_step::<()>(Owner::EpochMeta(run), MetaStep::Write(close_ops(id)), true);
            }
            (Sweep::Abort, Some(tracked)) => {
                let aborted = SnapshotState::Aborted {
                    reason: SWEPT.into(),
                };
                match Finish::new(&tracked, aborted, wall) {
                    Ok((finish, step)) => {
                        if let Some(r) = self.work.epochs.runs.get_mut(&run) {
                            r.stage = Stage::Finishing {
                                finish,
                                id,
                                index: None,
                            };
                        }
                        self.finish_step(run, step);
                    }
                    Err(e) => self.fail(format!("epoch {id}: {e}")),
                }
            }
            (Sweep::Release, _) => self.release(run, id, true),
            (Sweep::Abort, None) | (Sweep::Leave, _) => self.end_run(run),
        }
    }
}

/// What the sweeper remembers between sweeps (production's `first_seen`).
#[derive(Default)]
pub(crate) struct SweeperMemory {
    pub(crate) first_seen: BTreeMap<u64, Millis>,
    pub(crate) txn_first_seen: BTreeMap<u64, Millis>,
}
