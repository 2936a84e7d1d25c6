//! The clients and the two coordinators the simulator plays: what they ask for, and
//! what they record.
//!
//! **Clients** run one operation at a time: linearizable and stale reads, linearizable
//! scans of a shard, puts, conditional puts and deletes (on versions they observed),
//! single-shard batches of two or three keys, and cross-shard transactions (some
//! conditional). Every value is unique (see [`crate::history`]).
//!
//! **Transactions** follow `cairn-txn`'s protocol through the shards' own logs:
//! `Prepare` on every shard involved, commit only if all prepared (decided by
//! `cairn-txn`'s own [`cairn_txn::Ballot`]), then `Resolve` on
//! every shard until each has applied it. The decision, which production records in
//! the meta group, is the simulator's own: the meta group is not simulated.
//!
//! **Snapshots** run `cairn-snapshot`'s own marking state machine
//! ([`cairn_snapshot::Marking`], the code the production coordinator decides with):
//! `Marker(e)` on every shard (2 s to place them all, else the epoch aborts), then
//! `Release(e)` everywhere until each has applied it. Two coordinators run side by side (any node may coordinate), so
//! epochs overlap and a shard can hold two open cuts at once. The meta group's gate is kept here too: an epoch does not start
//! while a committed transaction is still resolving, and a transaction that would
//! commit while an epoch is marking aborts instead.

use std::collections::BTreeMap;

use cairn_snapshot::{Marking, SnapshotState};
use cairn_store::{txn_id, ApplyOutcome, Command, Condition, OpKind, ShardId, WriteOp};
use cairn_txn::Ballot;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::SimConfig;
use crate::history::{
    parse_value, value_bytes, write_id, Action, Cond, Epoch, KeyWrite, OpId, Outcome, Stamp,
};
use crate::world::{CallEnd, Event, Phase, Req, World};

/// Who is waiting for a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A client's batch or read.
    Op(OpId),
    /// Transaction (index into `Workload::txns`) preparing on a shard.
    Prepare(usize, ShardId),
    Resolve(usize, ShardId),
    /// Epoch `e`'s marker or release on a shard.
    Marker(u64, ShardId),
    Release(u64, ShardId),
    /// The write that shows the healed cluster is live.
    Final(ShardId, OpId),
}

/// A client's memory: the live version it last saw per key (`None`: absent).
#[derive(Default)]
struct Client {
    known: BTreeMap<String, Option<u64>>,
}

struct TxnRun {
    op: OpId,
    client: usize,
    txn: u64,
    ops: BTreeMap<ShardId, Vec<WriteOp>>,
    /// The production coordinator's own prepare round.
    ballot: Ballot,
    commit: Option<bool>,
    resolved: BTreeMap<ShardId, (Option<u64>, Stamp)>,
}

impl TxnRun {
    fn committed_unresolved(&self) -> bool {
        self.commit == Some(true) && self.resolved.len() < self.ops.len()
    }
}

struct EpochRun {
    /// Index in `History::epochs`.
    index: usize,
    /// Which coordinator runs it.
    coordinator: usize,
    /// The production coordinator's own marking state machine.
    marking: Marking,
    decided: bool,
    releases_left: usize,
}

pub(crate) struct Workload {
    /// Every key and its shard.
    keys: Vec<(String, ShardId)>,
    clients: Vec<Client>,
    txns: Vec<TxnRun>,
    /// Epochs in flight, by id.
    epochs: BTreeMap<u64, EpochRun>,
    final_keys: Vec<String>,
    pub(crate) final_versions: BTreeMap<ShardId, u64>,
    txn_counter: u64,
}

/// Client calls give up after this long (the replica itself fails them after 1 s).
const CALL_MS: u64 = 3_000;
/// An epoch whose markers are not all placed by then aborts.
const MARKING_MS: u64 = 2_000;
/// Transaction ids carry a start time; any base far from zero will do.
const TXN_EPOCH_MS: u64 = 1_700_000_000_000;

impl Workload {
    pub(crate) fn new(cfg: &SimConfig, shards: u32, _rng: &mut ChaCha8Rng) -> Workload {
        let keys = (0..cfg.keys)
            .map(|i| {
                let name = format!("k{i:02}");
                let shard = cairn_store::shard_for_key(name.as_bytes(), shards);
                (name, shard)
            })
            .collect();
        let final_keys = (0..shards)
            .map(|s| {
                (0..)
                    .map(|i| format!("final/{i}"))
                    .find(|k| cairn_store::shard_for_key(k.as_bytes(), shards) == s)
                    .expect("some key hashes to every shard")
            })
            .collect();
        Workload {
            keys,
            clients: (0..cfg.clients).map(|_| Client::default()).collect(),
            txns: Vec::new(),
            epochs: BTreeMap::new(),
            final_keys,
            final_versions: BTreeMap::new(),
            txn_counter: 0,
        }
    }

    fn keys_of(&self, shard: ShardId) -> Vec<&str> {
        self.keys
            .iter()
            .filter(|(_, s)| *s == shard)
            .map(|(k, _)| k.as_str())
            .collect()
    }
}

fn condition(cond: Cond) -> Condition {
    match cond {
        Cond::Always => Condition::Always,
        Cond::Absent => Condition::Absent,
        Cond::Exists => Condition::Exists,
        Cond::Version(v) => Condition::Version(v),
    }
}

fn write_op(w: &KeyWrite) -> WriteOp {
    WriteOp {
        key: w.key.clone().into_bytes(),
        kind: match w.value {
            Some(id) => OpKind::Put(value_bytes(id)),
            None => OpKind::Delete,
        },
        condition: condition(w.cond),
    }
}

impl World {
    pub(crate) fn client_next(&mut self, client: usize) {
        if self.phase != Phase::Active {
            return;
        }
        let op = self.history.ops.len();
        let (name, shard) = {
            let k = &self.work.keys[self.rng.gen_range(0..self.work.keys.len())];
            (k.0.clone(), k.1)
        };
        let known = self.work.clients[client].known.get(&name).copied();
        let cond_on_known = |rng: &mut ChaCha8Rng| match known {
            Some(Some(v)) if rng.gen_bool(0.8) => Cond::Version(v),
            Some(Some(_)) => Cond::Exists,
            Some(None) => Cond::Absent,
            None => Cond::Absent,
        };
        let roll = self.rng.gen_range(0..100);
        let action = match roll {
            0..=4 => Action::Scan {
                shard,
                prefix: "k".into(),
                keys: self
                    .work
                    .keys_of(shard)
                    .into_iter()
                    .map(str::to_owned)
                    .collect(),
            },
            5..=34 => Action::Get {
                shard,
                key: name,
                stale: false,
            },
            35..=41 => Action::Get {
                shard,
                key: name,
                stale: true,
            },
            42..=61 => Action::Batch {
                shard,
                writes: vec![KeyWrite {
                    key: name,
                    value: Some(write_id(op, 0)),
                    cond: Cond::Always,
                }],
            },
            62..=69 => {
                let cond = cond_on_known(&mut self.rng);
                Action::Batch {
                    shard,
                    writes: vec![KeyWrite {
                        key: name,
                        value: Some(write_id(op, 0)),
                        cond,
                    }],
                }
            }
            70..=77 => {
                let cond = if self.rng.gen_bool(0.5) {
                    Cond::Always
                } else {
                    cond_on_known(&mut self.rng)
                };
                Action::Batch {
                    shard,
                    writes: vec![KeyWrite {
                        key: name,
                        value: None,
                        cond,
                    }],
                }
            }
            78..=89 => {
                let mut keys = self.work.keys_of(shard);
                let n = keys.len().min(self.rng.gen_range(2..=3));
                let mut writes = Vec::new();
                for i in 0..n {
                    let k = keys.swap_remove(self.rng.gen_range(0..keys.len()));
                    writes.push(KeyWrite {
                        key: k.to_owned(),
                        value: Some(write_id(op, i)),
                        cond: Cond::Always,
                    });
                }
                Action::Batch { shard, writes }
            }
            _ if self.cfg.transactions && self.shards >= 2 => {
                let other = loop {
                    let s = self.rng.gen_range(0..self.shards);
                    if s != shard && !self.work.keys_of(s).is_empty() {
                        break s;
                    }
                };
                let others = self.work.keys_of(other);
                let k2 = others[self.rng.gen_range(0..others.len())].to_owned();
                // Now and then a condition, so that some prepares are refused.
                let cond = if self.rng.gen_bool(0.3) {
                    cond_on_known(&mut self.rng)
                } else {
                    Cond::Always
                };
                self.work.txn_counter += 1;
                let txn = txn_id(
                    TXN_EPOCH_MS + self.clock.now(),
                    self.work.txn_counter & 0xF_FFFF,
                );
                Action::Txn {
                    txn,
                    writes: vec![
                        (
                            shard,
                            KeyWrite {
                                key: name,
                                value: Some(write_id(op, 0)),
                                cond,
                            },
                        ),
                        (
                            other,
                            KeyWrite {
                                key: k2,
                                value: Some(write_id(op, 1)),
                                cond: Cond::Always,
                            },
                        ),
                    ],
                }
            }
            _ => Action::Batch {
                shard,
                writes: vec![KeyWrite {
                    key: name,
                    value: Some(write_id(op, 0)),
                    cond: Cond::Always,
                }],
            },
        };
        let invoked = self.stamp();
        let op = self.history.push(client, action.clone(), invoked);
        let deadline = self.clock.now() + CALL_MS;
        match action {
            Action::Batch { shard, writes } => {
                let command = Command::Batch(writes.iter().map(write_op).collect());
                self.call(Owner::Op(op), shard, Req::Write(command), deadline, false);
            }
            Action::Get { shard, key, stale } => {
                let req = Req::Read {
                    key: key.into_bytes(),
                    stale,
                    scan: false,
                };
                self.call(Owner::Op(op), shard, req, deadline, false);
            }
            Action::Scan { shard, prefix, .. } => {
                let req = Req::Read {
                    key: prefix.into_bytes(),
                    stale: false,
                    scan: true,
                };
                self.call(Owner::Op(op), shard, req, deadline, false);
            }
            Action::Txn { txn, writes } => {
                let mut ops: BTreeMap<ShardId, Vec<WriteOp>> = BTreeMap::new();
                for (s, w) in &writes {
                    ops.entry(*s).or_default().push(write_op(w));
                }
                let index = self.work.txns.len();
                let ballot = Ballot::new(ops.keys().copied());
                for (&s, shard_ops) in &ops {
                    let command = Command::Prepare {
                        txn,
                        ops: shard_ops.clone(),
                    };
                    self.call(
                        Owner::Prepare(index, s),
                        s,
                        Req::Write(command),
                        deadline,
                        true,
                    );
                }
                self.work.txns.push(TxnRun {
                    op,
                    client,
                    txn,
                    ops,
                    ballot,
                    commit: None,
                    resolved: BTreeMap::new(),
                });
            }
        }
    }

    fn next_op_later(&mut self, client: usize) {
        let think = self.rng.gen_range(1..=30);
        self.clock.after(think, Event::ClientNext(client));
    }

    pub(crate) fn on_call_end(&mut self, owner: Owner, shard: ShardId, end: CallEnd, at: Stamp) {
        match owner {
            Owner::Op(op) => {
                let outcome = self.outcome_of(op, end);
                self.learn(op, &outcome);
                self.history.complete(op, at, outcome);
                let client = self.history.ops[op].client;
                self.next_op_later(client);
            }
            Owner::Final(s, op) => {
                let outcome = self.outcome_of(op, end);
                self.history.complete(op, at, outcome.clone());
                match outcome {
                    Outcome::Applied { version, .. } => {
                        self.work.final_versions.insert(s, version);
                    }
                    _ => self.final_write(s),
                }
            }
            Owner::Prepare(t, s) => {
                let answer = match end {
                    CallEnd::Written(outcome) => Ok(outcome),
                    other => Err(format!("{other:?}")),
                };
                self.work.txns[t].ballot.on_answer(s, answer);
                self.maybe_decide(t);
            }
            Owner::Resolve(t, s) => {
                let version = match end {
                    CallEnd::Written(ApplyOutcome::Resolved { version, .. }) => version,
                    other => {
                        self.fail(format!(
                            "a resolve of transaction {} on shard {s} ended {other:?}",
                            self.work.txns[t].txn
                        ));
                        return;
                    }
                };
                self.work.txns[t].resolved.insert(s, (version, at));
                self.maybe_finish_txn(t, at);
            }
            Owner::Marker(e, s) => {
                let answer = match end {
                    CallEnd::Written(outcome) => Ok(outcome),
                    other => Err(format!("{other:?}")),
                };
                if let Some(epoch) = self.work.epochs.get_mut(&e) {
                    epoch.marking.on_answer(s, answer);
                    if let Some(c) = epoch.marking.cut(s) {
                        self.history.epochs[epoch.index].cuts.insert(s, c);
                    }
                }
                self.maybe_decide_epoch(e);
            }
            Owner::Release(e, _) => {
                let Some(epoch) = self.work.epochs.get_mut(&e) else {
                    return;
                };
                epoch.releases_left -= 1;
                if epoch.releases_left == 0 {
                    let coordinator = epoch.coordinator;
                    self.work.epochs.remove(&e);
                    if self.phase == Phase::Active {
                        let next = self.rng.gen_range(300..=1500);
                        self.clock.after(next, Event::EpochStart(coordinator));
                    }
                }
            }
        }
        let _ = shard;
    }

    /// The history's outcome for a batch or read call's end.
    fn outcome_of(&mut self, op: OpId, end: CallEnd) -> Outcome {
        let is_read = matches!(
            self.history.ops[op].action,
            Action::Get { .. } | Action::Scan { .. }
        );
        match end {
            CallEnd::Written(ApplyOutcome::Applied { version, existed }) => {
                Outcome::Applied { version, existed }
            }
            CallEnd::Written(ApplyOutcome::Rejected { op, current }) => {
                Outcome::Rejected { op, current }
            }
            CallEnd::Written(ApplyOutcome::Locked { .. }) => Outcome::Locked,
            CallEnd::Written(other) => {
                self.fail(format!("operation {op}: a batch answered {other:?}"));
                Outcome::Unknown("unexpected answer".into())
            }
            CallEnd::Read { at, value } => {
                let value = match value {
                    None => None,
                    Some(v) => match parse_value(&v.value) {
                        Some(id) => Some((v.version, id)),
                        None => {
                            self.fail(format!(
                                "operation {op}: read a value no client wrote: {:?}",
                                String::from_utf8_lossy(&v.value)
                            ));
                            None
                        }
                    },
                };
                Outcome::Read { at, value }
            }
            CallEnd::Scanned { at, items } => {
                let mut seen = BTreeMap::new();
                for (key, v) in items {
                    let key = String::from_utf8_lossy(&key).into_owned();
                    match parse_value(&v.value) {
                        Some(id) => {
                            seen.insert(key, (v.version, id));
                        }
                        None => self.fail(format!(
                            "operation {op}: scanned a value no client wrote at {key}"
                        )),
                    }
                }
                Outcome::Scanned { at, items: seen }
            }
            CallEnd::NotApplied(why) if is_read => Outcome::ReadFailed(why),
            CallEnd::Unknown(why) if is_read => Outcome::ReadFailed(why),
            CallEnd::NotApplied(why) => Outcome::NotApplied(why),
            CallEnd::Unknown(why) => Outcome::Unknown(why),
        }
    }

    /// Remember versions the client saw, for its conditional writes.
    fn learn(&mut self, op: OpId, outcome: &Outcome) {
        let o = &self.history.ops[op];
        let client = o.client;
        let mut seen = Vec::new();
        match (&o.action, outcome) {
            (Action::Get { key, .. }, Outcome::Read { value, .. }) => {
                seen.push((key.clone(), value.map(|(v, _)| v)));
            }
            (Action::Scan { keys, .. }, Outcome::Scanned { items, .. }) => {
                for k in keys {
                    seen.push((k.clone(), items.get(k).map(|(v, _)| *v)));
                }
            }
            (Action::Batch { writes, .. }, Outcome::Applied { version, .. }) => {
                for w in writes {
                    seen.push((w.key.clone(), w.value.map(|_| *version)));
                }
            }
            _ => {}
        }
        let known = &mut self.work.clients[client].known;
        for (k, v) in seen {
            known.insert(k, v);
        }
    }

    fn maybe_decide(&mut self, t: usize) {
        let run = &self.work.txns[t];
        if run.commit.is_some() {
            return;
        }
        let Some(decision) = run.ballot.decision() else {
            return;
        };
        let all = decision.is_ok();
        // The gate: no commit while an epoch is marking.
        let marking = self.work.epochs.values().any(|e| !e.decided);
        let commit = all && !marking;
        let run = &mut self.work.txns[t];
        run.commit = Some(commit);
        let txn = run.txn;
        let shards: Vec<ShardId> = run.ops.keys().copied().collect();
        for s in shards {
            self.call(
                Owner::Resolve(t, s),
                s,
                Req::Write(Command::Resolve { txn, commit }),
                u64::MAX,
                true,
            );
        }
    }

    fn maybe_finish_txn(&mut self, t: usize, at: Stamp) {
        let run = &self.work.txns[t];
        if run.resolved.len() < run.ops.len() {
            return;
        }
        let outcome = if run.commit == Some(true) {
            let mut resolved = BTreeMap::new();
            for (&s, &(version, stamp)) in &run.resolved {
                match version {
                    Some(v) => {
                        resolved.insert(s, (v, stamp));
                    }
                    None => {
                        let txn = run.txn;
                        self.fail(format!(
                            "transaction {txn} committed but its resolve on shard {s} wrote nothing"
                        ));
                        return;
                    }
                }
            }
            Outcome::TxnCommitted { resolved }
        } else {
            Outcome::TxnAborted
        };
        let (op, client) = (run.op, run.client);
        self.history.complete(op, at, outcome);
        self.next_op_later(client);
    }

    /// Coordinator `coordinator` starts its next epoch.
    pub(crate) fn epoch_start(&mut self, coordinator: usize) {
        if self.phase != Phase::Active {
            return;
        }
        // The gate: no epoch while a committed transaction is still resolving.
        if self.work.txns.iter().any(TxnRun::committed_unresolved) {
            self.clock.after(20, Event::EpochStart(coordinator));
            return;
        }
        let id = self.history.epochs.len() as u64 + 1;
        let requested = self.stamp();
        self.history.epochs.push(Epoch {
            id,
            requested,
            decided: None,
            done: false,
            cuts: BTreeMap::new(),
        });
        let run = EpochRun {
            index: self.history.epochs.len() - 1,
            coordinator,
            marking: Marking::new(id, self.shards),
            decided: false,
            releases_left: self.shards as usize,
        };
        self.work.epochs.insert(id, run);
        let deadline = self.clock.now() + MARKING_MS;
        let marker = Marking::new(id, self.shards).marker();
        for s in 0..self.shards {
            self.call(
                Owner::Marker(id, s),
                s,
                Req::Write(marker.clone()),
                deadline,
                true,
            );
        }
    }

    fn maybe_decide_epoch(&mut self, e: u64) {
        let Some(epoch) = self.work.epochs.get_mut(&e) else {
            return;
        };
        if epoch.decided {
            return;
        }
        let Some(state) = epoch.marking.decision() else {
            return;
        };
        epoch.decided = true;
        let release = epoch.marking.release();
        let done = matches!(state, SnapshotState::Done { .. });
        let index = epoch.index;
        let decided = self.stamp();
        let record = &mut self.history.epochs[index];
        record.decided = Some(decided);
        record.done = done;
        let id = record.id;
        for s in 0..self.shards {
            self.call(
                Owner::Release(id, s),
                s,
                Req::Write(release.clone()),
                u64::MAX,
                true,
            );
        }
    }

    /// One write per shard that must commit once the cluster is healed.
    fn final_write(&mut self, shard: ShardId) {
        let key = self.work.final_keys[shard as usize].clone();
        let op = self.history.ops.len();
        let action = Action::Batch {
            shard,
            writes: vec![KeyWrite {
                key,
                value: Some(write_id(op, 0)),
                cond: Cond::Always,
            }],
        };
        let invoked = self.stamp();
        let op = self.history.push(self.cfg.clients, action.clone(), invoked);
        let Action::Batch { writes, .. } = action else {
            unreachable!("built above")
        };
        let command = Command::Batch(writes.iter().map(write_op).collect());
        let deadline = self.clock.now() + CALL_MS;
        self.call(
            Owner::Final(shard, op),
            shard,
            Req::Write(command),
            deadline,
            false,
        );
    }

    /// Once per tick after healing: start the final writes when nothing else is in
    /// flight, then wait for every replica to apply them.
    pub(crate) fn on_settle_tick(&mut self) {
        match self.phase {
            Phase::Settling => {
                let txns_open = self
                    .work
                    .txns
                    .iter()
                    .any(|t| t.commit.is_none() || t.resolved.len() < t.ops.len());
                if self.calls.is_empty() && !txns_open && self.work.epochs.is_empty() {
                    self.phase = Phase::Final;
                    for s in 0..self.shards {
                        self.final_write(s);
                    }
                }
            }
            Phase::Final => {
                if self.work.final_versions.len() < self.shards as usize {
                    return;
                }
                let converged = (0..self.shards).all(|s| {
                    let applied = self.applied(s);
                    let target = self.work.final_versions[&s];
                    applied.len() == self.cfg.nodes as usize
                        && applied
                            .iter()
                            .all(|&(_, a)| a >= target && a == applied[0].1)
                });
                if converged {
                    self.phase = Phase::Done;
                }
            }
            Phase::Active | Phase::Done => {}
        }
    }

    /// What the run is still waiting for (for a liveness failure).
    pub(crate) fn settle_status(&self) -> String {
        let calls: Vec<String> = self
            .calls
            .values()
            .take(8)
            .map(|c| format!("{:?} on shard {}: {}", c.owner, c.shard, c.last_error))
            .collect();
        let applied: Vec<String> = (0..self.shards)
            .map(|s| format!("shard {s}: {:?}", self.applied(s)))
            .collect();
        format!(
            "phase {:?}; {} calls open [{}]; final versions {:?}; applied {}",
            self.phase,
            self.calls.len(),
            calls.join("; "),
            self.work.final_versions,
            applied.join(", ")
        )
    }
}
