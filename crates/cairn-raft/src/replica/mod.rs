//! One shard's replica on this node: the only owner of its `RawNode`.
//!
//! A replica is driven by one thread of the node's replica pool ([`pool`]: raft-rs is
//! synchronous, and its Ready handling blocks on fsync), which selects over its inbox
//! of [`ReplicaMsg`]s, a ticker and the node's shutdown signal. Everyone else talks to
//! it by message and waits on a oneshot reply; its live figures (leader, term,
//! indexes) are published through atomics in [`ReplicaGauges`] so routing and status
//! never queue behind the Raft loop.
//!
//! Time inside the replica is counted in ticks: requests that wait too long are failed
//! after `request_ticks`, not after a wall-clock duration.
//!
//! Answers to clients are matched to log entries by a per-proposal id carried in the
//! entry's context, never by queue position: an entry proposed by an old leader and
//! overwritten later can never answer a new request.
//!
//! The deciding code is independent of what is replicated, threads, sockets and wall
//! time: what the log drives is a [`StateMachine`] (Cairn's key-value shard in the
//! node), what leaves the
//! replica goes through an [`Outbox`] (the peer transport in production), what must
//! become durable through a [`Durability`] ([`GroupCommit`]), and what production draws
//! at random can be fixed with a [`ReplicaSeed`]. The thread loop ([`pool`], a thread
//! that drives several replicas) only selects over their inputs and calls
//! [`Replica::handle`], [`Replica::tick`] and the two halves of [`Replica::process`];
//! the deterministic simulator (`cairn-sim`) calls `handle`, `tick` and `process` on a
//! virtual clock, so what it checks is this code, not a model of it.
//!
//! Files: this one is the driver (inputs, proposals, the Ready loop, apply);
//! `read.rs` batches linearizable reads into ReadIndex rounds; `gate.rs` holds answers
//! back for snapshot alignment windows and transaction locks; `snapshot.rs` installs
//! Raft snapshots and compacts the log; `gauges.rs` publishes the live figures.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;

use cairn_store::{Committed, Effects, NodeId, NodeStore, RaftLog, ShardId};
use protobuf::Message as _;
use raft::prelude::{ConfChange, ConfChangeV2, Entry, EntryType, Message, MessageType};
use raft::{RawNode, SnapshotStatus, StateRole};
use tokio::sync::oneshot;

use crate::call::{MemberChange, Members};
use crate::commit::{Durability, GroupCommit};
use crate::config::RaftConfig;
use crate::error::{ReplicaError, ShardError};
use crate::machine::StateMachine;

mod gate;
mod gauges;
pub mod inbox;
pub mod pool;
mod read;
mod snapshot;

use gate::{lowest_hold, Answer, Held, LockWait};
pub use gauges::ReplicaGauges;
use read::{PendingReads, Reader};

/// A message to a replica. Every variant documents who sends it and whether it may be
/// dropped.
pub enum ReplicaMsg<M: StateMachine> {
    /// From the router: propose a write. Answered once it is applied, or with
    /// `NotLeader` at once on a follower. Never dropped silently: if the replica is
    /// gone, the dropped reply sender tells the caller.
    Propose {
        command: M::Command,
        reply: WriteReply<M>,
    },
    /// From the router: a linearizable-read barrier. Answered, with the version the
    /// caller must read the shard's tree at, once this leader has confirmed its
    /// leadership (ReadIndex), applied up to the read index, no transaction holds a
    /// lock on a key in `scope`, and no alignment hold covers that version.
    ReadBarrier { scope: M::Scope, reply: ReadReply },
    /// From the transport: a Raft message from a peer. May be dropped (Raft retries).
    Raft(Box<Message>),
    /// From the snapshot receiver: a `MsgSnapshot` whose data has been staged in this
    /// shard's snapshot stage. `done` fires once the replica has handled it (installed
    /// or rejected), so the receiver can release the stage.
    StagedSnapshot {
        msg: Box<Message>,
        done: oneshot::Sender<()>,
    },
    /// From the snapshot sender: how streaming a snapshot to `to` ended.
    SnapshotSent { to: NodeId, ok: bool },
    /// From the leader balancer: hand leadership to voter `to` (Raft's leader
    /// transfer). Ignored unless this replica leads and `to` is another voter, and
    /// always with lease reads on: the transferee's forced election would override
    /// the lease this leader may still be reading on.
    TransferLeader { to: NodeId },
    /// From the placement code: the group's members as this replica sees them (how
    /// far each has caught up is known to a leader only). Answered at once.
    Members { reply: oneshot::Sender<Members> },
    /// From the placement code: change the group's members (leader only), answered
    /// once the change is applied here. raft-rs turns a change proposed while another
    /// is pending into an empty entry, so the caller checks the members afterwards.
    ChangeMembers {
        change: MemberChange,
        reply: WriteReply<M>,
    },
    /// From the node, which is dropping this replica (the group no longer names this
    /// node): fail what waits and leave the pool; `reply` fires once the pool has let
    /// go of the replica, after which nothing writes its trees.
    Retire { reply: oneshot::Sender<()> },
}

/// Where a replica's outbound traffic goes. Production: the peer transport; the
/// simulator: its virtual network. Both may drop what they are given (Raft retries).
pub trait Outbox<M: StateMachine> {
    /// Send a Raft message to peer `msg.to`. Returns false if it was dropped at once.
    fn send_raft(&mut self, shard: ShardId, msg: Message) -> bool;

    /// Start sending a Raft snapshot (`msg` is the `MsgSnapshot`; its data is `state`
    /// as it stands at the snapshot's index). How it ended must come back to the
    /// replica as [`ReplicaMsg::SnapshotSent`]. Returns false if it could not even be
    /// started.
    fn send_snapshot(&mut self, shard: ShardId, msg: Message, state: M) -> bool;
}

/// What a replica would otherwise draw at random, fixed by a caller whose runs must
/// repeat exactly (the simulator). Production uses [`ReplicaSeed::random`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicaSeed {
    /// The first proposal id. Ids only need to differ from those of entries another
    /// incarnation or leader may still commit; a random start makes a collision after
    /// a restart negligible.
    pub proposal_ids: u64,
    /// A fixed election timeout in ticks (at least `election_ticks`) instead of
    /// raft-rs's, which it draws from `thread_rng` in `[election, 2 * election)`.
    pub election_timeout: Option<usize>,
}

impl ReplicaSeed {
    /// Production's choice: a random first id and raft-rs's randomised timeouts.
    pub fn random() -> ReplicaSeed {
        ReplicaSeed {
            proposal_ids: rand::random::<u64>() >> 1,
            election_timeout: None,
        }
    }
}

type WriteReply<M> = oneshot::Sender<Result<<M as StateMachine>::Outcome, ShardError>>;
type ReadReply = oneshot::Sender<Result<u64, ShardError>>;

/// A write waiting to be applied.
struct PendingWrite<M: StateMachine> {
    /// The term of the proposal's entry: an entry is this write's only if it carries
    /// its id and is of this term. (Its index is in `writes_by_index`.)
    term: u64,
    deadline: u64,
    reply: WriteReply<M>,
}

/// One shard's replica. `M` is the state machine its log drives; `O` and `D` are its
/// outbound side and its durability, so the same code runs on threads and sockets or
/// inside the simulator.
pub struct Replica<M: StateMachine, O: Outbox<M>, D: Durability = GroupCommit> {
    shard: ShardId,
    raw: RawNode<RaftLog>,
    log: RaftLog,
    state: M,
    store: NodeStore,
    commit: D,
    transport: O,
    gauges: Arc<ReplicaGauges>,
    log_compact_entries: u64,
    request_ticks: u64,
    /// The largest command this replica proposes (`RaftLimits::max_entry_bytes`).
    max_entry_bytes: usize,
    /// Logical clock: tick periods since start (a late tick counts every period it
    /// missed, so deadlines and the lease follow real time).
    now: u64,
    /// Ticks a leader lease lasts ([`RaftConfig::lease_ticks`]); `None`: every read
    /// takes a ReadIndex round.
    lease_ticks: Option<u64>,
    /// The lease this leader holds, if any.
    lease: Option<read::Lease>,
    /// Votes are refused until `now` reaches this, with lease reads on: before its
    /// crash this replica may have acknowledged the heartbeat a leader's lease rests
    /// on, and raft-rs's own refusal needs a leader this replica no longer remembers.
    votes_from: u64,
    next_id: u64,
    role: StateRole,
    // Ordered maps throughout: iteration order decides the order of replies, which a
    // simulated run must repeat exactly.
    writes: BTreeMap<u64, PendingWrite<M>>,
    /// `(index of its entry, id)` of every write in `writes`. May name ids already
    /// answered (they are skipped): it is only ever read from its low end, as entries
    /// apply. (An index can come twice: a replica that leads again after its entries
    /// were cut away may propose at an index one of its old writes had.)
    writes_by_index: BTreeSet<(u64, u64)>,
    /// Reads that arrived since the last ReadIndex was issued.
    reads_unissued: Vec<Reader<M>>,
    /// ReadIndex requests in flight, by context id.
    reads_inflight: BTreeMap<u64, PendingReads<M>>,
    /// Confirmed read indexes waiting for apply to catch up.
    reads_confirmed: BTreeMap<u64, Vec<PendingReads<M>>>,
    /// Open holds (by id: a snapshot epoch) and the version each lets answers
    /// reveal, derived from the applied log's [`Effects`], so a new leader
    /// re-establishes them by itself.
    holds: BTreeMap<u64, u64>,
    /// Answers held back by the alignment window.
    held: Vec<Held<M>>,
    /// Reads waiting for a transaction (by id) to resolve here.
    lock_waits: BTreeMap<u64, Vec<LockWait<M>>>,
    /// Snapshot receivers waiting for their staged snapshot to be handled.
    snapshot_done: Vec<oneshot::Sender<()>>,
    /// A Ready written by [`Replica::ready_write`], waiting for its sync.
    ready: Option<raft::Ready>,
    /// Set once the node asked this replica to retire ([`ReplicaMsg::Retire`]).
    retire: Option<oneshot::Sender<()>>,
}

impl<M: StateMachine, O: Outbox<M>, D: Durability> Replica<M, O, D> {
    /// Open the shard's log and state, initialising a brand-new shard with every peer
    /// as a voter, and repair the log if the state machine is ahead of it (a crash
    /// between installing a snapshot's data and its log metadata).
    pub fn open(
        shard: ShardId,
        cfg: &RaftConfig,
        store: NodeStore,
        commit: D,
        transport: O,
        gauges: Arc<ReplicaGauges>,
    ) -> Result<Replica<M, O, D>, crate::error::RaftError> {
        Self::open_seeded(
            shard,
            cfg,
            store,
            commit,
            transport,
            gauges,
            ReplicaSeed::random(),
        )
    }

    /// [`Replica::open`] with what it would draw at random fixed by `seed`.
    pub fn open_seeded(
        shard: ShardId,
        cfg: &RaftConfig,
        store: NodeStore,
        commit: D,
        transport: O,
        gauges: Arc<ReplicaGauges>,
        seed: ReplicaSeed,
    ) -> Result<Replica<M, O, D>, crate::error::RaftError> {
        let state = M::open(&store, shard)?;
        let mut log = store.raft_log(shard)?;
        log.attach_applied(state.applied_point());
        let voters = cfg.voters(shard);
        log.initialize(&raft::prelude::ConfState::from((voters, vec![])))?;

        let mut applied = state.applied()?;
        // Applying a conf change writes the configuration (log tree), then the applied
        // point (data tree); a crash in between leaves the configuration one entry
        // ahead, and raft-rs would apply that entry to it again (and stop: "can't
        // leave a non-joint config"). sled recovers a prefix of its writes, so all
        // that is missing is that entry's applied point; it carries no command, so
        // apply it to the state machine now.
        let conf_index = log.conf_index()?;
        if conf_index == applied.index + 1
            && conf_index >= log.first_index()?
            && conf_index <= log.last_index()?
        {
            let term = log.term_of(conf_index)?;
            state.apply(&[Committed {
                index: conf_index,
                term,
                data: &[],
            }])?;
            commit.written();
            applied = state.applied()?;
            tracing::info!(
                shard,
                index = conf_index,
                "completed a conf change's apply cut short by a crash"
            );
        }
        let mut hs = log.hard_state()?;
        // A crash between installing a snapshot's data and moving the log leaves the
        // state machine at a point the log does not hold: beyond its end, or, over a
        // divergent log that reaches further, at an index holding another term. Left
        // alone, the second case marks the divergent entries committed, and the
        // leader's appends are then refused forever. (An applied point at or below the
        // compacted prefix is the log being ahead, which is fine.)
        let holds_applied = applied.index < log.first_index()?
            || (applied.index <= log.last_index()? && log.term_of(applied.index)? == applied.term);
        if !holds_applied {
            let mut meta = raft::prelude::SnapshotMetadata {
                index: applied.index,
                term: applied.term,
                ..Default::default()
            };
            meta.set_conf_state(raft::Storage::initial_state(&log)?.conf_state);
            log.apply_snapshot_metadata(&meta)?;
            commit.written();
            hs = log.hard_state()?;
        }
        if hs.commit < applied.index {
            // Applying an entry proves it was committed; the commit index write may
            // simply not have reached the disk before a crash.
            log.set_commit(applied.index)?;
            commit.written();
        }

        // A fixed timeout is the one-value range [t, t + 1): raft-rs then draws nothing.
        let (min_election_tick, max_election_tick) = match seed.election_timeout {
            Some(t) => (t, t + 1),
            None => (0, 0),
        };
        let raft_cfg = raft::Config {
            id: cfg.node_id,
            election_tick: cfg.election_ticks,
            heartbeat_tick: cfg.heartbeat_ticks,
            min_election_tick,
            max_election_tick,
            applied: applied.index,
            max_size_per_msg: crate::config::MAX_MSG_ENTRY_BYTES as u64,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..Default::default()
        };
        raft_cfg.validate()?;
        let logger = slog::Logger::root(
            slog::Drain::fuse(slog_stdlog::StdLog),
            slog::o!("shard" => shard, "node" => cfg.node_id),
        );
        let raw = RawNode::new(&raft_cfg, log.clone(), &logger)?;

        gauges
            .first_index
            .store(log.first_index()?, Ordering::Relaxed);
        let holds = state
            .open_holds()?
            .into_iter()
            .map(|h| (h.id, h.from))
            .collect();
        gauges
            .hold_from
            .store(lowest_hold(&holds), Ordering::Release);
        gauges.set_applied(applied.index);
        Ok(Replica {
            shard,
            raw,
            log,
            state,
            store,
            commit,
            transport,
            gauges,
            log_compact_entries: cfg.log_compact_entries,
            request_ticks: cfg.request_ticks,
            max_entry_bytes: cfg.limits.max_entry_bytes,
            now: 0,
            lease_ticks: cfg.lease_ticks(),
            lease: None,
            votes_from: if cfg.lease_reads {
                cfg.election_ticks as u64
            } else {
                0
            },
            next_id: seed.proposal_ids,
            role: StateRole::Follower,
            writes: BTreeMap::new(),
            writes_by_index: BTreeSet::new(),
            reads_unissued: Vec::new(),
            reads_inflight: BTreeMap::new(),
            reads_confirmed: BTreeMap::new(),
            holds,
            held: Vec::new(),
            lock_waits: BTreeMap::new(),
            snapshot_done: Vec::new(),
            ready: None,
            retire: None,
        })
        .inspect(Replica::publish_members)
    }

    /// This replica's shard.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// The state machine this replica's log drives.
    pub fn machine(&self) -> &M {
        &self.state
    }

    /// Whether the node asked this replica to retire: its pool lets go of it after
    /// the round, then answers [`Replica::retired`].
    pub(crate) fn retiring(&self) -> bool {
        self.retire.is_some()
    }

    /// The pool has let go of this retiring replica: tell the node.
    pub(crate) fn retired(mut self) {
        self.stop();
        if let Some(reply) = self.retire.take() {
            let _ = reply.send(());
        }
    }

    /// The node is stopping: answer everything still waiting.
    pub(crate) fn stop(&mut self) {
        self.fail_pending(|| ShardError::ShuttingDown, || ShardError::ShuttingDown);
    }

    /// After a batch of inputs ([`Replica::handle`], [`Replica::tick`]): issue one
    /// ReadIndex for the reads that arrived, handle the Ready, and tell snapshot
    /// receivers their staged snapshot was handled. An error is a storage failure:
    /// memory and disk may be out of step, so the caller must stop this replica (the
    /// thread loop aborts the process; a restart recovers from disk).
    pub fn process(&mut self) -> Result<(), ReplicaError> {
        if self.process_write()? {
            self.commit.sync()?;
        }
        self.process_finish()
    }

    /// Whether Raft has work for this replica that no input has to trigger (a Ready
    /// left over, such as committed entries beyond one Ready's size limit).
    pub fn has_ready(&self) -> bool {
        self.ready.is_none() && self.raw.has_ready()
    }

    /// The first half of [`Replica::process`]: everything up to the sync. Returns
    /// whether what it wrote must be durable before [`Replica::process_finish`]; a
    /// caller driving several replicas (a [`pool`] thread) makes one sync cover them
    /// all.
    pub fn process_write(&mut self) -> Result<bool, ReplicaError> {
        self.issue_reads();
        self.ready_write()
    }

    /// The second half of [`Replica::process`], once what
    /// [`Replica::process_write`] wrote is durable.
    pub fn process_finish(&mut self) -> Result<(), ReplicaError> {
        self.ready_finish()?;
        // Reads served on the lease may need no Ready at all.
        self.release_reads()?;
        for done in self.snapshot_done.drain(..) {
            let _ = done.send(());
        }
        Ok(())
    }

    /// Take one input. Cheap: Raft work waits for the next [`Replica::process`], so a
    /// drained inbox shares one Ready (one fsync).
    pub fn handle(&mut self, msg: ReplicaMsg<M>) {
        match msg {
            ReplicaMsg::Propose { command, reply } => self.propose(command, reply),
            ReplicaMsg::ReadBarrier { scope, reply } => {
                if self.role == StateRole::Leader {
                    self.reads_unissued.push(Reader { scope, reply });
                } else {
                    let _ = reply.send(Err(self.not_leader()));
                }
            }
            ReplicaMsg::Raft(msg) => {
                if self.lost_acknowledged_entries(&msg) {
                    let last = self.raw.raft.raft_log.last_index();
                    fatal(
                        self.shard,
                        &format!(
                            "leader {} counts this replica as holding entries up to {} (its \
                             commit index for us), but the log ends at {last}: entries this \
                             node acknowledged are gone (its data directory was wiped or \
                             rolled back). A node that lost acknowledged entries must not \
                             rejoin as a voter, or committed writes can be lost; keep it \
                             stopped, the other replicas keep serving (docs/OPERATIONS.md)",
                            msg.from, msg.commit
                        ),
                    );
                }
                if msg.msg_type == MessageType::MsgAppend
                    && msg.index == 0
                    && self.raw.raft.prs().conf().voters().ids().is_empty()
                {
                    // A replica that has not yet received its group's configuration
                    // (a new member) takes it from a Raft snapshot only: entries from
                    // the log's start would leave it without the configuration the
                    // group was created with, which is in no entry.
                    tracing::debug!(from = msg.from, "append from the log's start refused");
                    return;
                }
                if self.now < self.votes_from && read::asks_for_vote(&msg) {
                    tracing::debug!(from = msg.from, "vote refused: lease reads, just started");
                    return;
                }
                if let Err(e) = self.raw.step(*msg) {
                    tracing::debug!(error = %e, "dropped raft message");
                }
            }
            ReplicaMsg::StagedSnapshot { msg, done } => {
                if let Err(e) = self.raw.step(*msg) {
                    tracing::warn!(error = %e, "dropped raft snapshot message");
                }
                self.snapshot_done.push(done);
            }
            ReplicaMsg::SnapshotSent { to, ok } => {
                let status = if ok {
                    SnapshotStatus::Finish
                } else {
                    SnapshotStatus::Failure
                };
                self.raw.report_snapshot(to, status);
            }
            ReplicaMsg::TransferLeader { to } => {
                let voter = self.raw.raft.prs().conf().voters().contains(to);
                if self.role == StateRole::Leader
                    && self.lease_ticks.is_none()
                    && voter
                    && to != self.raw.raft.id
                {
                    tracing::info!(to, "transferring leadership");
                    self.raw.transfer_leader(to);
                }
            }
            ReplicaMsg::Members { reply } => {
                let _ = reply.send(self.members());
            }
            ReplicaMsg::ChangeMembers { change, reply } => self.change_members(change, reply),
            ReplicaMsg::Retire { reply } => {
                let shard = self.shard;
                let leader = self.gauges.leader();
                self.fail_pending(
                    || ShardError::OutcomeUnknown {
                        shard,
                        reason: "the replica was removed before the write was applied".into(),
                    },
                    || ShardError::NotLeader { shard, leader },
                );
                self.retire = Some(reply);
            }
        }
    }

    /// The group's members as this replica's configuration names them.
    fn members(&self) -> Members {
        let conf = self.raw.raft.prs().conf().to_conf_state();
        let sorted = |ids: &[NodeId]| {
            let mut ids = ids.to_vec();
            ids.sort_unstable();
            ids
        };
        let leads = self.role == StateRole::Leader;
        let mut learners = sorted(&conf.learners);
        learners.extend(&conf.learners_next);
        Members {
            voters: sorted(&conf.voters),
            outgoing: sorted(&conf.voters_outgoing),
            learners,
            leader: self.gauges.leader(),
            commit: self.raw.raft.raft_log.committed,
            matched: if leads {
                let mut m: Vec<(NodeId, u64)> = self
                    .raw
                    .raft
                    .prs()
                    .iter()
                    .map(|(&id, pr)| (id, pr.matched))
                    .collect();
                m.sort_unstable();
                m
            } else {
                Vec::new()
            },
        }
    }

    /// Publish the voters (both halves of a joint configuration) and the learners for
    /// status pages and routing.
    fn publish_members(&self) {
        let conf = self.raw.raft.prs().conf();
        let mut voters: Vec<NodeId> = conf.voters().ids().iter().collect();
        voters.sort_unstable();
        let mut learners: Vec<NodeId> = conf.learners().iter().copied().collect();
        learners.sort_unstable();
        self.gauges.set_members(voters, learners);
    }

    /// Propose a change of members (see [`ReplicaMsg::ChangeMembers`]).
    fn change_members(&mut self, change: MemberChange, reply: WriteReply<M>) {
        use raft::prelude::{ConfChangeSingle, ConfChangeTransition, ConfChangeType};
        if self.role != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let single = |change_type, node_id| ConfChangeSingle {
            change_type,
            node_id,
            ..Default::default()
        };
        // raft-rs keeps a leader that removed itself leading, without its own
        // progress, and panics at its next persisted append (TiKV refuses these too):
        // leadership must move first.
        let removes = match change {
            MemberChange::AddLearner { .. } => None,
            MemberChange::Replace { remove, .. } => Some(remove),
            MemberChange::RemoveLearner { node } => Some(node),
        };
        if removes == Some(self.raw.raft.id) {
            let _ = reply.send(Err(ShardError::Unavailable {
                shard: self.shard,
                reason: format!(
                    "node {} leads the group and cannot remove itself; hand leadership to another \
                     voter first",
                    self.raw.raft.id
                ),
            }));
            return;
        }
        let changes = match change {
            MemberChange::AddLearner { node } => vec![single(ConfChangeType::AddLearnerNode, node)],
            MemberChange::Replace { add, remove } => vec![
                single(ConfChangeType::AddNode, add),
                single(ConfChangeType::RemoveNode, remove),
            ],
            MemberChange::RemoveLearner { node } => {
                vec![single(ConfChangeType::RemoveNode, node)]
            }
        };
        let mut cc = ConfChangeV2::default();
        cc.set_changes(changes.into());
        // Auto: a change of several members goes through a joint configuration that
        // the leader leaves by itself once it is applied.
        cc.set_transition(ConfChangeTransition::Auto);
        tracing::info!(?change, "proposing a change of members");
        self.track(reply, |raw, ctx| raw.propose_conf_change(ctx, cc));
    }

    /// Propose under a fresh proposal id (the entry's context) and keep `reply` until
    /// the entry is applied. raft-rs refuses before appending (e.g. a leader transfer
    /// is under way), so a refusal means nothing was written.
    fn track(
        &mut self,
        reply: WriteReply<M>,
        propose: impl FnOnce(&mut RawNode<RaftLog>, Vec<u8>) -> raft::Result<()>,
    ) {
        // raft-rs forwards a follower's proposal to the leader it knows, where it
        // would be appended at an index and term this replica cannot know, and a
        // pending write is matched to its entry by both. Raft may have stepped down
        // since `self.role` was last updated (a message of a higher term, handled in
        // this round): ask it. The router forwards to leaders itself.
        if self.raw.raft.state != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let before = self.raw.raft.raft_log.last_index();
        match propose(&mut self.raw, id.to_be_bytes().to_vec()) {
            // Appended here, by a leader, as the log's next entry: its index is known.
            Ok(())
                if self.raw.raft.state != StateRole::Leader
                    || self.raw.raft.raft_log.last_index() != before + 1 =>
            {
                let _ = reply.send(Err(ShardError::OutcomeUnknown {
                    shard: self.shard,
                    reason: "the proposal was not appended by this leader".into(),
                }));
            }
            Ok(()) => {
                let index = before + 1;
                let pending = PendingWrite {
                    term: self.raw.raft.term,
                    deadline: self.now + self.request_ticks,
                    reply,
                };
                self.writes.insert(id, pending);
                self.writes_by_index.insert((index, id));
            }
            Err(e) => {
                let _ = reply.send(Err(ShardError::Unavailable {
                    shard: self.shard,
                    reason: e.to_string(),
                }));
            }
        }
    }

    /// Whether `msg` shows this replica lost entries it acknowledged: a leader's
    /// heartbeat carries `min(what we acknowledged, its commit index)`, and committed
    /// entries that a replica acknowledged are never truncated from it, so a commit
    /// index beyond our log's end means our log went backwards. (raft-rs would panic
    /// on it; this names the cause first.)
    fn lost_acknowledged_entries(&self, msg: &Message) -> bool {
        msg.msg_type == MessageType::MsgHeartbeat
            && msg.term >= self.raw.raft.term
            && msg.commit > self.raw.raft.raft_log.last_index()
    }

    fn not_leader(&self) -> ShardError {
        ShardError::NotLeader {
            shard: self.shard,
            leader: self.gauges.leader(),
        }
    }

    fn propose(&mut self, command: M::Command, reply: WriteReply<M>) {
        if self.role != StateRole::Leader {
            let _ = reply.send(Err(self.not_leader()));
            return;
        }
        let data = M::encode(&command);
        let limit = self.max_entry_bytes;
        if data.len() > limit {
            // Refused before the log: an entry no Raft message could carry would stop
            // the shard replicating for good.
            let _ = reply.send(Err(ShardError::TooLarge {
                shard: self.shard,
                what: "the proposal".into(),
                bytes: data.len(),
                limit,
            }));
            return;
        }
        self.track(reply, |raw, ctx| raw.propose(ctx, data));
    }

    /// One logical clock tick: elections, heartbeats and request deadlines move.
    pub fn tick(&mut self) {
        self.tick_periods(1);
    }

    /// A tick that comes `periods` tick lengths after the last one (a thread that was
    /// busy or stopped missed some). Raft still moves one tick, as it always did after
    /// a stall; deadlines and the leader lease move by every period, so a leader that
    /// was stopped never serves a read on a lease that ran out while it was.
    pub fn tick_periods(&mut self, periods: u64) {
        self.now += periods.max(1);
        self.raw.tick();
        let now = self.now;
        let shard = self.shard;
        // Expire what has waited too long; a write's fate is then unknown.
        for (_, w) in self.writes.extract_if(.., |_, w| w.deadline <= now) {
            let _ = w.reply.send(Err(ShardError::OutcomeUnknown {
                shard,
                reason: "not applied before the deadline".into(),
            }));
        }
        for (_, r) in self.reads_inflight.extract_if(.., |_, r| r.deadline <= now) {
            r.fail(ShardError::Unavailable {
                shard,
                reason: "could not confirm leadership for a read in time".into(),
            });
        }
        for (txn, waits) in self.lock_waits.iter_mut() {
            for w in waits.extract_if(.., |w| w.deadline <= now) {
                let _ = w.reader.reply.send(Err(ShardError::Unavailable {
                    shard,
                    reason: format!(
                        "the key is locked by transaction {txn}, which did not resolve in time"
                    ),
                }));
            }
        }
        self.lock_waits.retain(|_, waits| !waits.is_empty());
        // An alignment window normally closes within a round trip; one that outlives
        // the request's deadline (a coordinator that died) fails the request rather
        // than holding it forever. The meta leader aborts such epochs.
        let (expired, kept): (Vec<Held<M>>, Vec<Held<M>>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|h| h.deadline <= now);
        self.held = kept;
        for held in expired {
            held.fail(
                ShardError::OutcomeUnknown {
                    shard,
                    reason: "applied, but held by a snapshot that did not complete in time".into(),
                },
                ShardError::Unavailable {
                    shard,
                    reason: "held by a snapshot that did not complete in time".into(),
                },
            );
        }
    }

    /// Handle one Ready, in the order raft-rs requires, up to its sync: returns whether
    /// a sync must come before [`Replica::ready_finish`]. The Ready waits in
    /// `self.ready` meanwhile.
    fn ready_write(&mut self) -> Result<bool, ReplicaError> {
        if self.ready.is_some() || !self.raw.has_ready() {
            return Ok(false);
        }
        let mut ready = self.raw.ready();

        if let Some(ss) = ready.ss() {
            self.on_soft_state(ss.leader_id, ss.raft_state);
        }

        // 1. Messages a leader may send before its own append is durable (appends,
        //    heartbeats): Raft counts the leader's own copy only once it is persisted.
        self.send(ready.take_messages());

        // 2. A snapshot from the leader: install its data, then its log metadata. The
        //    data goes first so a crash in between leaves the state machine ahead of
        //    the log, which `open` repairs; the other order would lose entries.
        if !ready.snapshot().is_empty() {
            self.install_snapshot(ready.snapshot())?;
        }

        // 3. Committed entries: they are durable on a quorum (this one included), so
        //    they may be applied before this Ready's new entries are written.
        self.apply(ready.take_committed_entries())?;

        // 4. New entries and hard state, in one sled batch, then one fsync shared with
        //    every other replica of the node (group commit). Only after that may this
        //    replica vote or acknowledge appends.
        if !ready.entries().is_empty() || ready.hs().is_some() {
            self.log.persist(ready.entries(), ready.hs())?;
            self.commit.written();
        }
        let sync = ready.must_sync() || !ready.snapshot().is_empty();
        self.ready = Some(ready);
        Ok(sync)
    }

    /// The rest of the Ready [`Replica::ready_write`] began, once its writes are durable.
    fn ready_finish(&mut self) -> Result<(), ReplicaError> {
        let Some(mut ready) = self.ready.take() else {
            return Ok(());
        };
        if let Some(hs) = ready.hs() {
            self.gauges.term.store(hs.term, Ordering::Relaxed);
        }

        // 5. Messages that promise durability (votes, append responses): now safe.
        self.send(ready.take_persisted_messages());

        // 6. Confirmed read indexes.
        for rs in ready.take_read_states() {
            self.on_read_state(rs.index, &rs.request_ctx);
        }

        // 7. Advance; the light ready may carry a new commit index, more messages and
        //    more committed entries. The commit index is written before applying so a
        //    durable apply never outruns the recorded commit.
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.log.set_commit(commit)?;
            self.commit.written();
        }
        self.send(light.take_messages());
        self.apply(light.take_committed_entries())?;
        self.raw.advance_apply();

        self.release_reads()?;
        self.gauges
            .commit
            .store(self.raw.raft.raft_log.committed, Ordering::Relaxed);
        self.maybe_compact()?;
        Ok(())
    }

    fn on_soft_state(&mut self, leader: NodeId, role: StateRole) {
        self.gauges.leader.store(leader, Ordering::Relaxed);
        if self.role == StateRole::Leader && role != StateRole::Leader {
            // Writes in flight stay: their entries may still commit under the next
            // leader (a leader transfer hands over a log that has them all), and
            // applying one here answers its writer, as a leader would. Those whose
            // entries another leader overwrote are failed as nothing-written once
            // the entry that took their index applies (`applied_one`).
            let shard = self.shard;
            let hint = (leader != 0).then_some(leader);
            self.fail_reads_and_holds(
                || ShardError::OutcomeUnknown {
                    shard,
                    reason: "leadership lost before the write was answered".into(),
                },
                || ShardError::NotLeader {
                    shard,
                    leader: hint,
                },
            );
        }
        if role == StateRole::Leader && self.role != StateRole::Leader {
            tracing::info!(term = self.raw.raft.term, "became leader");
        }
        if role != StateRole::Leader {
            self.lease = None;
        }
        self.role = role;
    }

    /// Apply committed entries through the state machine, and act on what each means
    /// for held answers (its [`Effects`]): this code never interprets a command.
    ///
    /// The state machine applies a prefix at a time ([`StateMachine::apply`]; the
    /// key-value shard puts runs of plain writes in one sled batch and anything else
    /// alone), so the effects of one entry are acted on before a later entry's data
    /// becomes visible.
    fn apply(&mut self, entries: Vec<Entry>) -> Result<(), ReplicaError> {
        let mut rest = &entries[..];
        while let Some(first) = rest.first() {
            // A conf change reaches raft-rs (and the log's conf state) before the state
            // machine moves past its entry, which carries no command.
            let committed: Vec<Committed<'_>> = if first.entry_type == EntryType::EntryNormal {
                rest.iter()
                    .take_while(|e| e.entry_type == EntryType::EntryNormal)
                    .map(|e| Committed {
                        index: e.index,
                        term: e.term,
                        data: &e.data,
                    })
                    .collect()
            } else {
                self.apply_conf_change(first)?;
                vec![Committed {
                    index: first.index,
                    term: first.term,
                    data: &[],
                }]
            };
            let results = self.state.apply(&committed)?;
            self.commit.written();
            let (done, later) = rest.split_at(results.len());
            rest = later;
            for (entry, (outcome, effects)) in done.iter().zip(results) {
                self.applied_one(entry, outcome, effects)?;
            }
            if let Some(last) = done.last() {
                self.gauges.set_applied(last.index);
            }
        }
        Ok(())
    }

    /// Act on one applied entry's effects and answer its writer, if it is ours.
    fn applied_one(
        &mut self,
        entry: &Entry,
        outcome: M::Outcome,
        effects: Effects,
    ) -> Result<(), ReplicaError> {
        let (index, term) = (entry.index, entry.term);
        if effects.wrote_data {
            // Automatic snapshots follow this figure.
            self.gauges.writes_applied.fetch_add(1, Ordering::Relaxed);
        }
        if let Some(hold) = effects.opens {
            self.holds.insert(hold.id, hold.from);
            // Before `applied` passes the hold's version, so that no local read can
            // see past it.
            self.publish_hold();
        }
        if let Some(id) = effects.closes {
            if self.holds.remove(&id).is_some() {
                self.publish_hold();
                self.release_held();
            }
        }

        self.gauges.applied.store(index, Ordering::Release);
        if let Some(owner) = effects.unlocks {
            if let Some(waits) = self.lock_waits.remove(&owner) {
                for w in waits {
                    self.release_unlocked(index, w.deadline, vec![w.reader])?;
                }
            }
        }

        let id = entry
            .context
            .as_ref()
            .try_into()
            .ok()
            .map(u64::from_be_bytes);
        // The id names our proposal only if the entry is of the term we proposed it
        // in: an entry of another leader's term with the same id (ids start at a
        // random point per replica) is someone else's.
        let ours = id.filter(|id| self.writes.get(id).is_some_and(|w| w.term == term));
        if let Some(w) = ours.and_then(|id| self.writes.remove(&id)) {
            if effects.reveals_nothing {
                // Never hold these, or a snapshot could wait on a hold of its own.
                let _ = w.reply.send(Ok(outcome));
            } else {
                self.answer(Held {
                    version: index,
                    deadline: w.deadline,
                    answer: Answer::Write(w.reply, outcome),
                });
            }
        }
        // A write of ours whose entry was at or below this index and was not this
        // entry lost its place to another leader's entry: committed entries are never
        // replaced (Log Matching), so it was not applied and never will be.
        self.settle_writes_through(index, |shard| ShardError::Unavailable {
            shard,
            reason: "another leader's entry took the write's place in the log; nothing was \
                     written"
                .into(),
        });
        Ok(())
    }

    /// Fail every write still waiting whose entry was at or below `index`, which this
    /// replica has now applied (or installed a snapshot past).
    fn settle_writes_through(&mut self, index: u64, err: impl Fn(ShardId) -> ShardError) {
        while let Some(&(at, id)) = self.writes_by_index.first() {
            if at > index {
                break;
            }
            self.writes_by_index.pop_first();
            if let Some(w) = self.writes.remove(&id) {
                let _ = w.reply.send(Err(err(self.shard)));
            }
        }
    }

    fn apply_conf_change(&mut self, entry: &Entry) -> Result<(), ReplicaError> {
        let cs = if entry.entry_type == EntryType::EntryConfChange {
            let cc = ConfChange::parse_from_bytes(&entry.data)?;
            self.raw.apply_conf_change(&cc)
        } else {
            let cc = ConfChangeV2::parse_from_bytes(&entry.data)?;
            self.raw.apply_conf_change(&cc)
        }?;
        self.log.set_conf_state_at(&cs, entry.index)?;
        self.commit.written();
        // A leader removed by a change it did not propose itself (leadership came
        // back to it during a joint configuration, which it then left) steps down,
        // as etcd's raft does: raft-rs would keep it leading without its own progress
        // and panic at its next append. The remaining voters elect a leader.
        let me = self.raw.raft.id;
        if self.role == StateRole::Leader
            && !cs.voters.contains(&me)
            && !cs.voters_outgoing.contains(&me)
        {
            tracing::warn!("this leader is no longer a voter of the group: stepping down");
            let term = self.raw.raft.term;
            self.raw.raft.become_follower(term, raft::INVALID_ID);
        }
        self.publish_members();
        tracing::info!(
            voters = ?cs.voters,
            outgoing = ?cs.voters_outgoing,
            learners = ?cs.learners,
            "applied a change of members"
        );
        Ok(())
    }

    fn send(&mut self, msgs: Vec<Message>) {
        for msg in msgs {
            if msg.msg_type == MessageType::MsgSnapshot {
                let to = msg.to;
                if !self
                    .transport
                    .send_snapshot(self.shard, msg, self.state.clone())
                {
                    self.raw.report_snapshot(to, SnapshotStatus::Failure);
                }
            } else if !self.transport.send_raft(self.shard, msg) {
                // The peer's queue is full or the peer is down: Raft resends, but a
                // steady count here means a peer that cannot keep up.
                metrics::counter!("cairn_raft_messages_dropped_total").increment(1);
            }
        }
    }

    /// Answer every write and read this replica holds: writes with `write_err`, reads
    /// with `read_err`.
    fn fail_pending(
        &mut self,
        write_err: impl Fn() -> ShardError,
        read_err: impl Fn() -> ShardError,
    ) {
        for (_, w) in std::mem::take(&mut self.writes) {
            let _ = w.reply.send(Err(write_err()));
        }
        self.writes_by_index.clear();
        self.fail_reads_and_holds(write_err, read_err);
    }

    /// Answer every read this replica holds with `read_err`, and every answer held
    /// back by the gate (writes with `write_err`); writes still waiting for their
    /// entries stay.
    fn fail_reads_and_holds(
        &mut self,
        write_err: impl Fn() -> ShardError,
        read_err: impl Fn() -> ShardError,
    ) {
        for reader in self.reads_unissued.drain(..) {
            let _ = reader.reply.send(Err(read_err()));
        }
        for (_, waits) in std::mem::take(&mut self.lock_waits) {
            for w in waits {
                let _ = w.reader.reply.send(Err(read_err()));
            }
        }
        for (_, r) in std::mem::take(&mut self.reads_inflight) {
            r.fail(read_err());
        }
        for (_, batch) in std::mem::take(&mut self.reads_confirmed) {
            for r in batch {
                r.fail(read_err());
            }
        }
        for held in self.held.drain(..) {
            held.fail(write_err(), read_err());
        }
    }
}

/// A storage failure inside the Raft loop leaves the replica's memory and disk out of
/// step; continuing could apply a command twice or ack an unsynced write. Stop the
/// process and let a restart recover from disk.
pub(crate) fn fatal(shard: ShardId, error: &str) -> ! {
    tracing::error!(
        shard,
        error,
        "fatal storage error in the raft loop; aborting"
    );
    eprintln!("cairn: fatal storage error on shard {shard}: {error}");
    std::process::abort();
}
