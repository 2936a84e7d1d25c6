//! The simulated world: nodes, network and clients driven by one event loop.
//!
//! Everything happens on one thread, one event at a time, in virtual time. An event
//! touches at most a few replicas; after it, each touched replica runs
//! [`Replica::process`](cairn_raft::replica::Replica::process) (its Ready), what it sent
//! goes to the network, and every client call whose reply arrived is completed. A
//! replica therefore sees the same sequence of inputs a production replica thread can
//! see: messages, ticks and proposals, each followed by a Ready.
//!
//! Client requests are *calls*: one shard, one request, retried the way the router
//! retries (`NotLeader` follows the hint, `Unavailable` waits and tries again) until a
//! deadline. An answer that leaves the outcome open (`OutcomeUnknown`, or a reply lost
//! with a crashed node) ends the call as unknown, unless the command is idempotent
//! (markers, releases, prepares, resolves, the meta group's deletes), which the
//! coordinators simply repeat. Calls to the meta group (group id = the number of data
//! shards, a replica on every node) are calls like any other.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use cairn_raft::replica::ReplicaMsg;
use cairn_raft::{RaftConfig, ShardError};
use cairn_store::{ApplyOutcome, Command, NodeId, ReadScope, ShardId, ShardState, Versioned};
use raft::prelude::Message;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use tokio::sync::oneshot;

use crate::clock::Clock;
use crate::config::{Millis, SimConfig, TICK_MS};
use crate::history::{History, Stamp};
use crate::network::Network;
use crate::node::{raft_config, Outgoing, SimNode, SimReplica, ELECTION_TICKS};
use crate::sweeper::SWEEP_EVERY_MS;
use crate::workload::{Owner, Workload};

/// Something that happens at a point of virtual time.
pub(crate) enum Event {
    /// A node's clock ticks every replica (only in the life `inc`).
    Tick(NodeId, u64),
    Raft {
        from: NodeId,
        to: NodeId,
        shard: ShardId,
        msg: Box<Message>,
    },
    /// A Raft snapshot stream reaching `to` (sent by `from` in its life `from_inc`).
    Snapshot {
        from: NodeId,
        from_inc: u64,
        to: NodeId,
        shard: ShardId,
        msg: Box<Message>,
        state: ShardState,
    },
    /// The sender learns how its stream ended.
    SnapshotSent {
        node: NodeId,
        inc: u64,
        shard: ShardId,
        peer: NodeId,
        ok: bool,
    },
    /// Try (again) to deliver a call to a node.
    Attempt(CallId),
    /// A client starts its next operation.
    ClientNext(usize),
    /// Snapshot coordinator `c` starts an epoch.
    EpochStart(usize),
    /// A coordinator's pause (at the gate, or before reading a record again) is over.
    Resume(Owner),
    /// The meta leader's sweepers look at the registry and the transaction records.
    Sweep,
    /// The nemesis picks its next fault.
    Fault,
    /// An armed crash fires (if the node is still in life `inc`); it stays down
    /// `down` ms.
    Crash {
        node: NodeId,
        inc: u64,
        down: Millis,
    },
    /// A crashed node comes back (if still in the life it crashed in).
    Restart(NodeId, u64),
    /// Partition links come back.
    Uncut(Vec<(NodeId, NodeId)>),
    /// A storm ends: the network is calm again.
    Calm(u64),
    /// The active phase ends: heal everything, stop new operations, settle.
    Heal,
}

pub(crate) type CallId = u64;

/// A request to one shard, and how to retry it.
pub(crate) struct Call {
    pub owner: Owner,
    pub shard: ShardId,
    pub req: Req,
    /// Where the next attempt goes (a leader hint), else a random node.
    pub target: Option<NodeId>,
    pub deadline: Millis,
    /// Retry after an unknown outcome: the command is idempotent.
    pub idempotent: bool,
    /// Some attempt may have been applied: giving up now is "unknown".
    pub maybe_applied: bool,
    pub waiting: Option<Waiting>,
    pub last_error: String,
}

pub(crate) enum Req {
    Write(Command),
    /// A read of `key`, or with `scan` of every live key under the prefix `key`.
    Read {
        key: Vec<u8>,
        stale: bool,
        scan: bool,
    },
}

pub(crate) enum Waiting {
    Write {
        rx: oneshot::Receiver<Result<ApplyOutcome, ShardError>>,
    },
    Read {
        node: NodeId,
        inc: u64,
        key: Vec<u8>,
        scan: bool,
        rx: oneshot::Receiver<Result<u64, ShardError>>,
    },
}

/// Read the tree at `at` as the request asks: the key, or the live keys under it.
fn read_tree(state: &ShardState, key: &[u8], scan: bool, at: u64) -> Result<CallEnd, String> {
    if scan {
        let items = state
            .scan(key, None, SCAN_LIMIT, at)
            .map_err(|e| e.to_string())?
            .items;
        Ok(CallEnd::Scanned { at, items })
    } else {
        let value = state.get(key, at).map_err(|e| e.to_string())?;
        Ok(CallEnd::Read { at, value })
    }
}

/// Scans return every workload key: far more than a shard holds.
const SCAN_LIMIT: usize = 1000;

/// How a call ended.
#[derive(Debug, Clone)]
pub(crate) enum CallEnd {
    Written(ApplyOutcome),
    Read {
        at: u64,
        value: Option<Versioned>,
    },
    Scanned {
        at: u64,
        items: Vec<(Vec<u8>, Versioned)>,
    },
    /// Nothing changed (every attempt was refused before proposing).
    NotApplied(String),
    Unknown(String),
}

/// Faults the nemesis injected, by kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FaultStats {
    pub crashes: u64,
    /// Crashes that lost writes made after the node's last sync.
    pub crashes_losing_unsynced: u64,
    /// Crashes armed just before a Raft snapshot install.
    pub crashes_during_install: u64,
    pub full_restarts: u64,
    pub partitions: u64,
    pub one_way_partitions: u64,
    pub storms: u64,
    /// Nodes stopped (SIGSTOP) for a while, then resumed.
    pub pauses: u64,
    pub snapshot_streams_failed: u64,
}

impl FaultStats {
    /// Faults injected (crashes of a full restart count one by one).
    pub fn total(&self) -> u64 {
        self.crashes
            + self.partitions
            + self.one_way_partitions
            + self.storms
            + self.pauses
            + self.snapshot_streams_failed
    }
}

/// Which part of the run we are in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Phase {
    Active,
    /// Healed; waiting for outstanding calls and coordinators.
    Settling,
    /// Final writes proposed; waiting for them and for convergence.
    Final,
    Done,
}

pub struct World {
    pub(crate) cfg: SimConfig,
    pub(crate) rng: ChaCha8Rng,
    pub(crate) clock: Clock<Event>,
    pub(crate) net: Network,
    pub(crate) nodes: Vec<SimNode>,
    pub(crate) raft_cfgs: Vec<RaftConfig>,
    pub(crate) shards: u32,
    pub(crate) history: History,
    seq: u64,
    pub(crate) calls: BTreeMap<CallId, Call>,
    next_call: CallId,
    pub(crate) work: Workload,
    pub(crate) phase: Phase,
    pub(crate) faults: FaultStats,
    /// Chance that a Raft snapshot stream breaks half way.
    pub(crate) snapshot_fail: f64,
    pub(crate) storm: u64,
    /// The first thing that went wrong inside the simulation (a storage error in a
    /// replica, a broken invariant): ends the run as a failure.
    pub(crate) error: Option<String>,
    pub(crate) events: u64,
}

impl World {
    pub fn new(seed: u64, cfg: SimConfig) -> Result<World, String> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let shards = rng.gen_range(cfg.shards.0..=cfg.shards.1);
        let compact = rng.gen_range(cfg.log_compact_entries.0..=cfg.log_compact_entries.1);
        let raft_cfgs = (1..=cfg.nodes)
            .map(|id| raft_config(id, cfg.nodes, shards, compact, cfg.lease_reads))
            .collect();
        let nodes = (1..=cfg.nodes)
            .map(|id| SimNode::new(id, TICK_MS - 1 + rng.gen_range(0..=2)))
            .collect();
        let work = Workload::new(&cfg, shards, &mut rng);
        let mut world = World {
            cfg,
            rng,
            clock: Clock::new(),
            net: Network::new(),
            nodes,
            raft_cfgs,
            shards,
            history: History::default(),
            seq: 0,
            calls: BTreeMap::new(),
            next_call: 1,
            work,
            phase: Phase::Active,
            faults: FaultStats::default(),
            snapshot_fail: 0.0,
            storm: 0,
            error: None,
            events: 0,
        };
        for id in 1..=world.cfg.nodes {
            world.start_node(id)?;
        }
        Ok(world)
    }

    /// A stamp for something a client observes now.
    pub(crate) fn stamp(&mut self) -> Stamp {
        self.seq += 1;
        Stamp {
            ms: self.clock.now(),
            seq: self.seq,
        }
    }

    pub(crate) fn node(&self, id: NodeId) -> &SimNode {
        &self.nodes[(id - 1) as usize]
    }

    fn node_mut(&mut self, id: NodeId) -> &mut SimNode {
        &mut self.nodes[(id - 1) as usize]
    }

    pub(crate) fn is_up(&self, id: NodeId) -> bool {
        self.node(id).live.is_some()
    }

    pub(crate) fn fail(&mut self, why: String) {
        if self.error.is_none() {
            self.error = Some(why);
        }
    }

    /// Start (or restart) a node from its disk image. Each shard's replica gets a fixed
    /// election timeout no other replica of that shard has now.
    pub(crate) fn start_node(&mut self, id: NodeId) -> Result<(), String> {
        let mut timeouts = Vec::new();
        // The data shards and the meta group.
        for shard in 0..=self.shards as usize {
            let taken: Vec<usize> = self
                .nodes
                .iter()
                .filter(|n| n.id != id)
                .filter_map(|n| n.election_timeouts.get(shard).copied())
                .collect();
            let free: Vec<usize> = (ELECTION_TICKS..2 * ELECTION_TICKS)
                .filter(|t| !taken.contains(t))
                .collect();
            timeouts.push(
                *free
                    .choose(&mut self.rng)
                    .expect("more timeouts than nodes"),
            );
        }
        let cfg = self.raft_cfgs[(id - 1) as usize].clone();
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.gen());
        let node = self.node_mut(id);
        node.start(&cfg, timeouts, &mut rng)?;
        node.missed_ticks = 0;
        let (inc, tick) = (node.incarnation, node.tick_ms);
        let phase = self.rng.gen_range(0..tick);
        self.clock.after(phase, Event::Tick(id, inc));
        Ok(())
    }

    /// Arm a crash of `id` that fires within a few milliseconds and keeps it down for
    /// `down` ms; until it fires, each write between syncs becomes a possible crash
    /// state with `prefix_chance`.
    pub(crate) fn arm_crash(&mut self, id: NodeId, down: Millis, prefix_chance: f64) {
        let node = self.node(id);
        if node.live.is_none() {
            return;
        }
        node.arm_crash(prefix_chance);
        let inc = node.incarnation;
        let after = self.rng.gen_range(1..=40);
        self.clock.after(
            after,
            Event::Crash {
                node: id,
                inc,
                down,
            },
        );
    }

    /// Crash a node now: its replicas and pending replies vanish, and its disk keeps
    /// only what a crash may keep.
    fn crash_node(&mut self, id: NodeId) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.rng.gen());
        match self.node_mut(id).crash(&mut rng) {
            Ok(pick) => {
                self.faults.crashes += 1;
                if pick != usize::MAX {
                    self.faults.crashes_losing_unsynced += 1;
                }
            }
            Err(e) => self.fail(format!("crashing node {id}: {e}")),
        }
    }

    /// Run `f` on a live replica, then its Ready, then send what it sent.
    pub(crate) fn with_replica<T>(
        &mut self,
        node: NodeId,
        shard: ShardId,
        f: impl FnOnce(&mut SimReplica) -> T,
    ) -> Option<T> {
        let live = self.node_mut(node).live.as_mut()?;
        let replica = live.replicas.get_mut(shard as usize)?;
        let out = f(replica);
        if let Err(e) = replica.process() {
            self.fail(format!(
                "node {node} shard {shard}: storage error in the replica: {e}"
            ));
        }
        if let Some(e) = self.node(node).disk_error() {
            self.fail(format!("node {node}: {e}"));
        }
        self.flush_outbox(node);
        Some(out)
    }

    /// Hand what a node's replicas sent to the network.
    fn flush_outbox(&mut self, node: NodeId) {
        let Some(live) = self.node(node).live.as_ref() else {
            return;
        };
        let out: Vec<Outgoing> = live.outbox.borrow_mut().drain(..).collect();
        let inc = self.node(node).incarnation;
        for o in out {
            match o {
                Outgoing::Raft { shard, msg } => {
                    let to = msg.to;
                    for delay in self.net.fate(&mut self.rng) {
                        self.clock.after(
                            delay,
                            Event::Raft {
                                from: node,
                                to,
                                shard,
                                msg: Box::new(msg.clone()),
                            },
                        );
                    }
                }
                Outgoing::Snapshot { shard, msg, state } => {
                    // Streams take a while; in a storm some arrive very late, after
                    // the receiver caught up another way.
                    let delay = if self.net.weather.long_delay > 0.0 && self.rng.gen_bool(0.2) {
                        self.rng.gen_range(200..=2000)
                    } else {
                        self.rng.gen_range(5..=60)
                    };
                    let to = msg.to;
                    self.clock.after(
                        delay,
                        Event::Snapshot {
                            from: node,
                            from_inc: inc,
                            to,
                            shard,
                            msg: Box::new(msg),
                            state,
                        },
                    );
                }
            }
        }
    }

    /// Run until the checks can start (`Ok`) or the run failed (`Err`).
    pub(crate) fn run(&mut self) -> Result<(), String> {
        self.clock.after(self.cfg.active_ms, Event::Heal);
        if self.cfg.faults {
            let first = self.rng.gen_range(300..1500);
            self.clock.after(first, Event::Fault);
        }
        if self.cfg.snapshots || self.cfg.transactions {
            let first = self.rng.gen_range(0..SWEEP_EVERY_MS);
            self.clock.after(first, Event::Sweep);
        }
        if self.cfg.snapshots {
            for coordinator in 0..2 {
                let first = self.rng.gen_range(200..1500);
                self.clock.after(first, Event::EpochStart(coordinator));
            }
        }
        for c in 0..self.cfg.clients {
            let first = self.rng.gen_range(0..100);
            self.clock.after(first, Event::ClientNext(c));
        }
        let limit = self.cfg.active_ms + self.cfg.settle_ms;
        while self.phase != Phase::Done {
            let Some(event) = self.clock.pop() else {
                return Err("the event queue ran dry".into());
            };
            self.events += 1;
            self.on_event(event);
            self.poll_calls();
            if let Some(e) = self.error.take() {
                return Err(e);
            }
            if self.clock.now() > limit {
                return Err(format!(
                    "liveness: not settled {} ms after healing ({})",
                    self.cfg.settle_ms,
                    self.settle_status()
                ));
            }
        }
        Ok(())
    }

    /// The time a paused node resumes, if `node` is paused now.
    fn paused(&self, node: NodeId) -> Option<Millis> {
        let until = self.node(node).paused_until;
        (until > self.clock.now()).then_some(until)
    }

    fn on_event(&mut self, event: Event) {
        // A paused process handles nothing; what reaches it waits in its socket
        // buffers and inbox, in arrival order, until it resumes.
        let waits_for = match &event {
            Event::Raft { to, .. } | Event::Snapshot { to, .. } => self.paused(*to),
            Event::SnapshotSent { node, .. } => self.paused(*node),
            _ => None,
        };
        if let Some(until) = waits_for {
            let now = self.clock.now();
            self.clock.after(until - now, event);
            return;
        }
        match event {
            Event::Tick(node, inc) => {
                let n = self.node(node);
                if n.live.is_none() || n.incarnation != inc {
                    return;
                }
                if self.paused(node).is_some() {
                    // A stopped process misses its ticks.
                    self.node_mut(node).missed_ticks += 1;
                    let tick = self.node(node).tick_ms;
                    self.clock.after(tick, Event::Tick(node, inc));
                    return;
                }
                let periods = 1 + std::mem::take(&mut self.node_mut(node).missed_ticks);
                for shard in 0..=self.shards {
                    self.with_replica(node, shard, |r| r.tick_periods(periods));
                }
                let tick = self.node(node).tick_ms;
                self.clock.after(tick, Event::Tick(node, inc));
                if node == 1 {
                    self.on_settle_tick();
                }
            }
            Event::Raft {
                from,
                to,
                shard,
                msg,
            } => {
                if self.is_up(to) && self.net.passes(from, to) {
                    self.with_replica(to, shard, |r| r.handle(ReplicaMsg::Raft(msg)));
                }
            }
            Event::Snapshot {
                from,
                from_inc,
                to,
                shard,
                msg,
                state,
            } => self.deliver_snapshot(from, from_inc, to, shard, *msg, state),
            Event::SnapshotSent {
                node,
                inc,
                shard,
                peer,
                ok,
            } => {
                if self.is_up(node) && self.node(node).incarnation == inc {
                    self.with_replica(node, shard, |r| {
                        r.handle(ReplicaMsg::SnapshotSent { to: peer, ok })
                    });
                }
            }
            Event::Attempt(id) => self.attempt(id),
            Event::ClientNext(c) => self.client_next(c),
            Event::EpochStart(c) => self.epoch_start(c),
            Event::Resume(owner) => self.on_resume(owner),
            Event::Sweep => self.sweep(),
            Event::Fault => self.fault(),
            Event::Crash { node, inc, down } => {
                let n = self.node(node);
                // Healing cancels a crash still armed.
                if n.live.is_some() && n.incarnation == inc && self.phase == Phase::Active {
                    self.crash_node(node);
                    self.clock.after(down, Event::Restart(node, inc));
                }
            }
            Event::Restart(node, inc) => {
                let n = self.node(node);
                if n.live.is_none() && n.incarnation == inc {
                    if let Err(e) = self.start_node(node) {
                        self.fail(format!("restarting node {node}: {e}"));
                    }
                }
            }
            Event::Uncut(links) => self.net.uncut(&links),
            Event::Calm(storm) => {
                if storm == self.storm {
                    self.calm();
                }
            }
            Event::Heal => self.heal(),
        }
    }

    /// The real receive path, minus the socket: export at the snapshot's index from the
    /// sender's tree, stage on the receiver, hand the replica `StagedSnapshot`, and
    /// tell the sender how it went.
    fn deliver_snapshot(
        &mut self,
        from: NodeId,
        from_inc: u64,
        to: NodeId,
        shard: ShardId,
        msg: Message,
        state: ShardState,
    ) {
        // A stream dies with its sender; nobody is left to hear about it.
        if !self.is_up(from) || self.node(from).incarnation != from_inc {
            return;
        }
        let report = |world: &mut World, ok: bool| {
            let delay = world.rng.gen_range(1..=10);
            world.clock.after(
                delay,
                Event::SnapshotSent {
                    node: from,
                    inc: from_inc,
                    shard,
                    peer: to,
                    ok,
                },
            );
        };
        if !self.is_up(to) || !self.net.passes(from, to) {
            report(self, false);
            return;
        }
        let upto = msg.get_snapshot().get_metadata().index;
        let pairs: Result<Vec<(Vec<u8>, Vec<u8>)>, _> = state.export(upto).collect();
        drop(state);
        let Ok(pairs) = pairs else {
            report(self, false);
            return;
        };
        let broken = self.snapshot_fail > 0.0 && self.rng.gen_bool(self.snapshot_fail);
        let live = self.node(to).live.as_ref().expect("checked up");
        let staged = live.store.snapshot_stage(shard).and_then(|stage| {
            stage.clear()?;
            if broken {
                // Half the chunks arrived before the stream broke: a stale stage that
                // the next transfer must clear.
                stage.write(&pairs[..pairs.len() / 2])
            } else {
                stage.write(&pairs)
            }
        });
        if let Err(e) = staged {
            self.fail(format!("node {to}: staging a snapshot: {e}"));
            return;
        }
        if broken {
            self.faults.snapshot_streams_failed += 1;
            report(self, false);
            return;
        }
        // The install is where a crash is most delicate (data installed, log not yet
        // moved): now and then crash right there, keeping every intermediate state.
        if self.phase == Phase::Active
            && self.cfg.faults
            && self.rng.gen_bool(self.cfg.install_crash_chance)
        {
            self.faults.crashes_during_install += 1;
            let down = self.rng.gen_range(20..=500);
            self.arm_crash(to, down, 1.0);
        }
        let (done, handled) = oneshot::channel();
        self.with_replica(to, shard, |r| {
            r.handle(ReplicaMsg::StagedSnapshot {
                msg: Box::new(msg),
                done,
            })
        });
        let mut handled = handled;
        match handled.try_recv() {
            Ok(()) => report(self, true),
            Err(_) => self.fail(format!(
                "node {to} shard {shard}: a staged snapshot was not handled in its Ready"
            )),
        }
    }

    /// Queue a new call, first attempt now.
    pub(crate) fn call(
        &mut self,
        owner: Owner,
        shard: ShardId,
        req: Req,
        deadline: Millis,
        idempotent: bool,
    ) {
        let id = self.next_call;
        self.next_call += 1;
        self.calls.insert(
            id,
            Call {
                owner,
                shard,
                req,
                target: None,
                deadline,
                idempotent,
                maybe_applied: false,
                waiting: None,
                last_error: String::new(),
            },
        );
        self.clock.after(0, Event::Attempt(id));
    }

    fn attempt(&mut self, id: CallId) {
        let now = self.clock.now();
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        if now >= call.deadline {
            let why = format!("deadline passed; last error: {}", call.last_error);
            let end = if call.maybe_applied {
                CallEnd::Unknown(why)
            } else {
                CallEnd::NotApplied(why)
            };
            self.finish(id, end);
            return;
        }
        let target = call.target.take();
        let shard = call.shard;
        let node = target.unwrap_or_else(|| self.rng.gen_range(1..=self.cfg.nodes));
        if !self.is_up(node) {
            self.retry(id, None, format!("node {node} is down"));
            return;
        }
        if let Some(until) = self.paused(node) {
            // The request sits in the paused node's inbox.
            let call = self.calls.get_mut(&id).expect("present above");
            call.target = Some(node);
            self.clock.after(until - now, Event::Attempt(id));
            return;
        }
        let inc = self.node(node).incarnation;
        let call = self.calls.get_mut(&id).expect("present above");
        match &call.req {
            Req::Write(command) => {
                let command = command.clone();
                let (reply, rx) = oneshot::channel();
                call.waiting = Some(Waiting::Write { rx });
                self.with_replica(node, shard, |r| {
                    r.handle(ReplicaMsg::Propose { command, reply })
                });
            }
            &Req::Read {
                ref key,
                stale: true,
                scan,
            } => {
                // A stale read never asks the replica thread: the published unheld
                // version and the tree, as `LocalShards` serves it.
                let key = key.clone();
                let live = self.node(node).live.as_ref().expect("checked up");
                let at = live.gauges[shard as usize].unheld_version();
                match read_tree(&live.states[shard as usize], &key, scan, at) {
                    Ok(end) => self.finish(id, end),
                    Err(e) => self.fail(format!("node {node}: stale read: {e}")),
                }
            }
            &Req::Read {
                ref key,
                stale: false,
                scan,
            } => {
                let key = key.clone();
                let (reply, rx) = oneshot::channel();
                call.waiting = Some(Waiting::Read {
                    node,
                    inc,
                    key: key.clone(),
                    scan,
                    rx,
                });
                let scope = if scan {
                    ReadScope::Range {
                        prefix: key,
                        start_after: None,
                    }
                } else {
                    ReadScope::Key(key)
                };
                self.with_replica(node, shard, |r| {
                    r.handle(ReplicaMsg::ReadBarrier { scope, reply })
                });
            }
        }
    }

    /// Try again later: at `hint` (a leader) soon, elsewhere after a pause.
    fn retry(&mut self, id: CallId, hint: Option<NodeId>, why: String) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.waiting = None;
        call.last_error = why;
        call.target = hint;
        let delay = if hint.is_some() {
            self.rng.gen_range(1..=5)
        } else {
            self.rng.gen_range(10..=40)
        };
        self.clock.after(delay, Event::Attempt(id));
    }

    /// An attempt's outcome is open: repeat an idempotent command, else end unknown.
    fn unknown(&mut self, id: CallId, why: String) {
        let Some(call) = self.calls.get_mut(&id) else {
            return;
        };
        call.maybe_applied = true;
        if call.idempotent {
            self.retry(id, None, why);
        } else {
            self.finish(id, CallEnd::Unknown(why));
        }
    }

    /// Complete every call whose reply has arrived, in call order.
    fn poll_calls(&mut self) {
        let waiting: Vec<CallId> = self
            .calls
            .iter()
            .filter(|(_, c)| c.waiting.is_some())
            .map(|(&id, _)| id)
            .collect();
        for id in waiting {
            let Some(call) = self.calls.get_mut(&id) else {
                continue;
            };
            let shard = call.shard;
            match call.waiting.as_mut().expect("filtered") {
                Waiting::Write { rx, .. } => match rx.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => {}
                    Err(oneshot::error::TryRecvError::Closed) => {
                        self.unknown(id, "the reply was lost with its node".into())
                    }
                    Ok(Ok(outcome)) => self.finish(id, CallEnd::Written(outcome)),
                    Ok(Err(e)) => match e.retry_at() {
                        Some(hint) => self.retry(id, hint, e.to_string()),
                        None => self.unknown(id, e.to_string()),
                    },
                },
                Waiting::Read {
                    node,
                    inc,
                    key,
                    scan,
                    rx,
                } => match rx.try_recv() {
                    Err(oneshot::error::TryRecvError::Empty) => {}
                    Err(oneshot::error::TryRecvError::Closed) => {
                        self.retry(id, None, "the reply was lost with its node".into())
                    }
                    Ok(Ok(at)) => {
                        let (node, inc, key, scan) = (*node, *inc, key.clone(), *scan);
                        let n = self.node(node);
                        match n.live.as_ref().filter(|_| n.incarnation == inc) {
                            Some(live) => {
                                match read_tree(&live.states[shard as usize], &key, scan, at) {
                                    Ok(end) => self.finish(id, end),
                                    Err(e) => self.fail(format!("node {node}: read at {at}: {e}")),
                                }
                            }
                            None => self.retry(id, None, "node restarted before the read".into()),
                        }
                    }
                    // A read changed nothing: always try again.
                    Ok(Err(e)) => self.retry(id, e.retry_at().flatten(), e.to_string()),
                },
            }
        }
    }

    fn finish(&mut self, id: CallId, end: CallEnd) {
        let Some(call) = self.calls.remove(&id) else {
            return;
        };
        let at = self.stamp();
        let read = matches!(call.req, Req::Read { .. });
        self.on_call_end(call.owner, call.shard, end, at, read);
    }

    /// The live replicas of `shard`: (node, applied index).
    pub(crate) fn applied(&self, shard: ShardId) -> Vec<(NodeId, u64)> {
        self.nodes
            .iter()
            .filter_map(|n| {
                let live = n.live.as_ref()?;
                Some((
                    n.id,
                    live.gauges[shard as usize].applied.load(Ordering::Acquire),
                ))
            })
            .collect()
    }
}
