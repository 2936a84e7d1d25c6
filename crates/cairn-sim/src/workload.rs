//! The clients the simulator plays, and where every call's end goes.
//!
//! **Clients** run one operation at a time: linearizable and stale reads, linearizable
//! scans of a shard, puts, conditional puts and deletes (on versions they observed),
//! single-shard batches of two or three keys, and cross-shard transactions (some
//! conditional). Every value is unique (see [`crate::history`]).
//!
//! The coordinators are not played here: a transaction is handed to
//! [`crate::txns`], epochs run in [`crate::epochs`], and both decide with the
//! production crates' own machines through the simulated meta group
//! ([`crate::meta`]), swept by [`crate::sweeper`]. This module only routes each
//! call's end to whoever is waiting for it, and after healing waits for everything
//! to settle and for the final writes.

use std::collections::BTreeMap;

use cairn_store::{txn_id, ApplyOutcome, Command, Condition, OpKind, ShardId, WriteOp};
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::SimConfig;
use crate::epochs::{Epochs, RunId, SweeperMemory};
use crate::history::{
    parse_value, value_bytes, write_id, Action, Cond, KeyWrite, OpId, Outcome, Stamp,
};
use crate::meta::MetaAnswer;
use crate::sweeper::Scan;
use crate::txns::TxnRun;
use crate::world::{CallEnd, Event, Phase, Req, World};

/// Who is waiting for a call (or a pause).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Owner {
    /// A client's batch or read.
    Op(OpId),
    /// Transaction run (index into `Workload::txns`) preparing on a shard.
    Prepare(usize, ShardId),
    Resolve(usize, ShardId),
    /// A transaction run's meta step (record, commit, abort, read, forget).
    TxnMeta(usize),
    /// Epoch run's marker or release on a shard.
    Marker(RunId, ShardId),
    Release(RunId, ShardId),
    /// An epoch run's meta step (allocation, finish, close, the sweeper's read).
    EpochMeta(RunId),
    /// A sweep's scan of the meta group.
    Sweep(Scan),
    /// The sweeper's delete of a stale want.
    SweepDelete,
    /// The write that shows the healed cluster is live.
    Final(ShardId, OpId),
}

/// A client's memory: the live version it last saw per key (`None`: absent).
#[derive(Default)]
struct Client {
    known: BTreeMap<String, Option<u64>>,
}

pub(crate) struct Workload {
    /// Every key and its shard.
    keys: Vec<(String, ShardId)>,
    clients: Vec<Client>,
    /// Transaction runs: the clients' and the sweeper's.
    pub(crate) txns: Vec<TxnRun>,
    /// Epoch runs in flight, and what their coordinators reported.
    pub(crate) epochs: Epochs,
    pub(crate) sweeper: SweeperMemory,
    /// Per sweep scan: the meta index the last one found nothing at, if it did.
    pub(crate) drained: [Option<u64>; 3],
    final_keys: Vec<String>,
    pub(crate) final_versions: BTreeMap<ShardId, u64>,
    txn_counter: u64,
}

/// Client calls give up after this long (the replica itself fails them after 1 s).
const CALL_MS: u64 = 3_000;
/// The simulated wall clock at virtual time zero: transaction ids carry a start time
/// and records a label; any base far from zero will do.
pub(crate) const WALL_BASE_MS: u64 = 1_700_000_000_000;

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
            epochs: Epochs::default(),
            sweeper: SweeperMemory::default(),
            drained: [None; 3],
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
                    WALL_BASE_MS + self.clock.now(),
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
                let started_ms = self.wall_ms();
                self.txn_start(op, client, txn, ops, started_ms, deadline);
            }
        }
    }

    pub(crate) fn next_op_later(&mut self, client: usize) {
        let think = self.rng.gen_range(1..=30);
        self.clock.after(think, Event::ClientNext(client));
    }

    /// `read`: whether the call was a read (its end alone may not say).
    pub(crate) fn on_call_end(
        &mut self,
        owner: Owner,
        shard: ShardId,
        end: CallEnd,
        at: Stamp,
        read: bool,
    ) {
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
            Owner::Prepare(t, s) => self.on_prepare_end(t, s, end),
            Owner::Resolve(t, s) => self.on_resolve_end(t, s, end, at),
            Owner::Marker(run, s) => self.on_marker_end(run, s, end),
            Owner::Release(run, _) => self.on_release_end(run, end),
            Owner::TxnMeta(t) => {
                let answer = MetaAnswer::of(end, read, self.meta_group());
                self.on_txn_meta(t, answer);
            }
            Owner::EpochMeta(run) => {
                let answer = MetaAnswer::of(end, read, self.meta_group());
                self.on_epoch_meta(run, answer);
            }
            Owner::Sweep(scan) => {
                let answer = MetaAnswer::of(end, read, self.meta_group());
                self.on_sweep_scan(scan, answer);
            }
            Owner::SweepDelete => {}
        }
        let _ = shard;
    }

    /// A pause asked for by `owner` is over.
    pub(crate) fn on_resume(&mut self, owner: Owner) {
        match owner {
            Owner::TxnMeta(t) => self.on_txn_resume(t),
            Owner::EpochMeta(run) => self.on_epoch_resume(run),
            other => self.fail(format!("{other:?} asked for a pause")),
        }
    }

    /// The history's outcome for a batch or read call's end.
    fn outcome_of(&mut self, op: OpId, end: CallEnd) -> Outcome {
        let is_read = matches!(
            self.history.ops[op].request,
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
        match (&o.request, outcome) {
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
                let txns_open = self.work.txns.iter().any(TxnRun::open);
                let drained = self.work.drained.iter().all(Option::is_some);
                let busy = txns_open || self.work.epochs.busy() || !drained;
                if self.calls.is_empty() && !busy {
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
                // The meta group too: every replica at the same index.
                let converged = (0..=self.shards).all(|s| {
                    let applied = self.applied(s);
                    let target = self.work.final_versions.get(&s).copied().unwrap_or(0);
                    applied.len() == self.cfg.nodes as usize
                        && applied
                            .iter()
                            .all(|&(_, a)| a >= target && a == applied[0].1)
                });
                // And nothing landed in the meta group since a sweep found it drained.
                let meta = self.applied(self.shards).first().map(|&(_, a)| a);
                let drained = self.work.drained.iter().all(|d| d.is_some() && *d == meta);
                if converged && drained {
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
        let applied: Vec<String> = (0..=self.shards)
            .map(|s| format!("shard {s}: {:?}", self.applied(s)))
            .collect();
        let txns = self.work.txns.iter().filter(|t| t.open()).count();
        format!(
            "phase {:?}; {} calls open [{}]; {txns} transaction runs open, epoch runs in flight: {}, registry drained (open epochs, records, wants): {:?}; final versions {:?}; applied {}",
            self.phase,
            self.calls.len(),
            calls.join("; "),
            self.work.epochs.busy(),
            self.work.drained,
            self.work.final_versions,
            applied.join(", ")
        )
    }
}
