//! The multi-raft host: every replica of this node, the group-commit flusher and the
//! peer transport, started together and stopped together.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use cairn_store::{
    Command, HistoryRange, NodeId, NodeStore, PageLimit, ReadScope, ShardId, ShardState,
};
use crossbeam_channel::{bounded, Sender};
use futures::future::BoxFuture;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;

use crate::call::{Call, Consistency, ControlRequest, Progress, ShardRequest, ShardResponse};
use crate::commit::GroupCommit;
use crate::config::RaftConfig;
use crate::error::{RaftError, ShardError};
use crate::hosted::{HostedReplicas, Slot};
use crate::replica::inbox::{self, Inbox, Mailbox};
use crate::replica::pool;
use crate::replica::{Replica, ReplicaGauges, ReplicaMsg};
use crate::transport::{CallHandler, Transport};

/// Requests queued per replica before callers are told to back off.
const REPLICA_INBOX: usize = 16 * 1024;

/// This node's replicas, as seen by request handling: their inboxes, trees and gauges,
/// by group id, and the means to open and drop replicas as the groups' members change.
pub struct LocalShards {
    node_id: NodeId,
    /// Groups below this are data shards, open to client calls; the rest (the meta
    /// group) take control calls only.
    data_shards: u32,
    hosted: Arc<HostedReplicas>,
    /// How replicas are opened and dropped at run time; set once the node's parts
    /// (transport, group commit, pool threads) exist.
    /// Taken away when the node stops: its group-commit handle must go for the
    /// flusher to end.
    opener: Mutex<Option<Arc<Opener>>>,
}

/// What opening a replica at run time takes.
struct Opener {
    cfg: RaftConfig,
    store: NodeStore,
    commit: GroupCommit,
    transport: Transport,
    /// Each pool thread's door for a new replica.
    pools: Vec<PoolDoor>,
    /// One open or drop at a time: each rewrites the recorded list of hosted groups.
    changing: tokio::sync::Mutex<()>,
}

/// How a replica reaches a pool thread: the door it is handed through at run time,
/// and the bell its inbox rings.
struct PoolDoor {
    adopt: Sender<pool::Owned<ShardState, Transport, GroupCommit>>,
    bell: Sender<ShardId>,
}

impl PoolDoor {
    fn inbox(&self, shard: ShardId) -> (Inbox<ShardState>, Mailbox<ShardState>) {
        inbox::inbox(shard, REPLICA_INBOX, self.bell.clone())
    }
}

impl LocalShards {
    /// Serve a client call with this node's replica of its shard. Writes and
    /// linearizable reads need the replica to lead; otherwise they fail with
    /// `NotLeader` and the caller forwards. This never forwards by itself, so
    /// forwarding cannot loop. Only data shards take client calls.
    pub async fn execute(&self, req: ShardRequest) -> Result<ShardResponse, ShardError> {
        let shard = req.shard();
        if shard >= self.data_shards {
            return Err(ShardError::Refused {
                shard,
                reason: "the meta group takes control calls only".into(),
            });
        }
        match req {
            ShardRequest::Write { ops, .. } => {
                let outcome = self.propose(shard, Command::Batch(ops)).await?;
                Ok(ShardResponse::Written(outcome))
            }
            ShardRequest::Get {
                key, consistency, ..
            } => self.get(shard, key, consistency).await,
            ShardRequest::Scan {
                prefix,
                start_after,
                limit,
                consistency,
                ..
            } => {
                self.scan(shard, prefix, start_after, limit, consistency)
                    .await
            }
            ShardRequest::Diff {
                prefix,
                start_after,
                limit,
                from,
                to,
                ..
            } => {
                let (inbox, state) = self.replica(shard)?;
                self.read_version(
                    &inbox,
                    Consistency::AtVersion(from.max(to)),
                    shard,
                    ReadScope::Nothing,
                )
                .await?;
                let page = tokio::task::spawn_blocking(move || {
                    state.diff(&prefix, start_after.as_deref(), limit, from, to)
                })
                .await
                .map_err(|_| ShardError::ShuttingDown)?
                .map_err(|e| storage(shard, e))?;
                Ok(ShardResponse::Changes(page))
            }
        }
    }

    /// Serve a control call with this node's replica of its group (any group). Same
    /// rules as [`LocalShards::execute`]: proposals and reads need the leader. Reached
    /// only through a [`ControlPath`] or from a peer.
    async fn control(&self, req: ControlRequest) -> Result<ShardResponse, ShardError> {
        match req {
            ControlRequest::Propose { shard, command } => {
                Ok(ShardResponse::Written(self.propose(shard, command).await?))
            }
            ControlRequest::Get { shard, key } => {
                self.get(shard, key, Consistency::Linearizable).await
            }
            ControlRequest::Scan {
                shard,
                prefix,
                start_after,
                limit,
            } => {
                self.scan(shard, prefix, start_after, limit, Consistency::Linearizable)
                    .await
            }
            ControlRequest::History {
                shard,
                range,
                after,
                limit,
            } => self.history(shard, range, after, limit).await,
            ControlRequest::Progress { shard } => {
                self.replica(shard)?;
                let writes_applied = self
                    .gauges(shard)
                    .map_or(0, |g| g.writes_applied.load(Ordering::Relaxed));
                Ok(ShardResponse::Progress(Progress {
                    writes_applied,
                    leads: self.leads(),
                }))
            }
            ControlRequest::Members { shard } => {
                let (inbox, _) = self.replica(shard)?;
                let (reply, rx) = oneshot::channel();
                inbox
                    .try_send(ReplicaMsg::Members { reply })
                    .map_err(|_| overloaded(shard))?;
                let members = rx.await.map_err(|_| ShardError::ShuttingDown)?;
                if members.leader != Some(self.node_id) {
                    return Err(ShardError::NotLeader {
                        shard,
                        leader: members.leader,
                    });
                }
                Ok(ShardResponse::Members(members))
            }
            ControlRequest::ChangeMembers { shard, change } => {
                let (inbox, _) = self.replica(shard)?;
                let (reply, rx) = oneshot::channel();
                inbox
                    .try_send(ReplicaMsg::ChangeMembers { change, reply })
                    .map_err(|_| overloaded(shard))?;
                rx.await.map_err(|_| ShardError::ShuttingDown)??;
                Ok(ShardResponse::Done)
            }
            ControlRequest::TransferLeader { shard, to } => {
                let leader = self.gauges(shard).and_then(|g| g.leader());
                if self.hosts(shard) && leader != Some(self.node_id) {
                    return Err(ShardError::NotLeader { shard, leader });
                }
                self.transfer_leader(shard, to)?;
                Ok(ShardResponse::Done)
            }
            ControlRequest::OpenReplica { shard } => self.open_replica(shard).await,
            ControlRequest::DropReplica { shard, members } => {
                self.drop_replica(shard, members).await
            }
        }
    }

    fn opener(&self) -> Option<Arc<Opener>> {
        self.opener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// Open an empty replica of `shard` here and start it (see
    /// [`ControlRequest::OpenReplica`]). It knows no configuration until the group's
    /// leader sends it a Raft snapshot, so it neither votes nor campaigns before.
    async fn open_replica(&self, shard: ShardId) -> Result<ShardResponse, ShardError> {
        if shard as usize >= self.hosted.groups() {
            return Err(ShardError::Unavailable {
                shard,
                reason: "no such shard".into(),
            });
        }
        let opener = self.opener().ok_or(ShardError::ShuttingDown)?;
        let _one_at_a_time = opener.changing.lock().await;
        if self.hosts(shard) {
            return Ok(ShardResponse::Done);
        }
        let store = opener.store.clone();
        let mut hosted = self.hosted.ids();
        hosted.push(shard);
        hosted.sort_unstable();
        let (cfg, commit, transport) = (
            opener.cfg.clone(),
            opener.commit.clone(),
            opener.transport.clone(),
        );
        let gauges = Arc::new(ReplicaGauges::new());
        let replica_gauges = gauges.clone();
        let opened = tokio::task::spawn_blocking(move || {
            // Whatever an earlier replica of the group left (a drop cut short) goes:
            // this one starts empty, with an empty configuration that no later boot
            // replaces with the placement the cluster was created with.
            store.drop_shard(shard)?;
            store
                .raft_log(shard)?
                .initialize(&raft::prelude::ConfState::default())?;
            store.set_hosted_groups(&hosted)?;
            let state = store.shard_state(shard)?;
            let replica = Replica::<ShardState, _, _>::open(
                shard,
                &cfg,
                store,
                commit,
                transport,
                replica_gauges,
            )?;
            Ok::<_, RaftError>((replica, state))
        })
        .await
        .map_err(|_| ShardError::ShuttingDown)?;
        let (replica, state) = opened.map_err(|e| ShardError::Storage {
            shard,
            reason: e.to_string(),
        })?;
        let pool = &opener.pools[shard as usize % opener.pools.len()];
        let (inbox, mailbox) = pool.inbox(shard);
        self.hosted.set(
            shard,
            Some(Slot {
                inbox,
                state,
                gauges,
            }),
        );
        pool.adopt
            .send((replica, mailbox))
            .map_err(|_| ShardError::ShuttingDown)?;
        tracing::info!(shard, "opened a replica");
        Ok(ShardResponse::Done)
    }

    /// Stop this node's replica of `shard` and delete its data (see
    /// [`ControlRequest::DropReplica`]).
    async fn drop_replica(
        &self,
        shard: ShardId,
        members: Vec<NodeId>,
    ) -> Result<ShardResponse, ShardError> {
        if members.contains(&self.node_id) {
            return Err(ShardError::Refused {
                shard,
                reason: format!(
                    "the group's configuration still names node {}; remove it first",
                    self.node_id
                ),
            });
        }
        let opener = self.opener().ok_or(ShardError::ShuttingDown)?;
        let _one_at_a_time = opener.changing.lock().await;
        let Some(slot) = self.hosted.get(shard) else {
            return Ok(ShardResponse::Done);
        };
        let (reply, retired) = oneshot::channel();
        slot.inbox
            .try_send(ReplicaMsg::Retire { reply })
            .map_err(|_| overloaded(shard))?;
        // Once the pool has let go of the replica nothing writes its trees.
        retired.await.map_err(|_| ShardError::ShuttingDown)?;
        self.hosted.set(shard, None);
        let hosted = self.hosted.ids();
        let store = opener.store.clone();
        tokio::task::spawn_blocking(move || {
            // The list first: a crash before the trees go leaves data nobody opens,
            // and the next replica of the group clears it.
            store.set_hosted_groups(&hosted)?;
            store.drop_shard(shard)
        })
        .await
        .map_err(|_| ShardError::ShuttingDown)?
        .map_err(|e| storage(shard, e))?;
        tracing::info!(
            shard,
            "dropped the replica: the group no longer names this node"
        );
        Ok(ShardResponse::Done)
    }

    /// A page of `shard`'s history (see [`ControlRequest::History`]), once this
    /// replica has applied all of `range`.
    async fn history(
        &self,
        shard: ShardId,
        range: HistoryRange,
        after: Option<(Vec<u8>, u64)>,
        limit: PageLimit,
    ) -> Result<ShardResponse, ShardError> {
        let (_, state) = self.replica(shard)?;
        let upto = match range {
            HistoryRange::StateAt { at } => at,
            HistoryRange::Between { upto, .. } => upto,
        };
        let applied = self
            .gauges(shard)
            .map_or(0, |g| g.applied.load(Ordering::Relaxed));
        if applied < upto {
            return Err(ShardError::Unavailable {
                shard,
                reason: format!("version {upto} is not yet applied here (applied {applied})"),
            });
        }
        tokio::task::spawn_blocking(move || {
            let after = after.as_ref().map(|(k, v)| (k.as_slice(), *v));
            let mut versions = Vec::new();
            let mut bytes = 0;
            for version in state.history_after(range, after) {
                if versions.len() >= limit.items.max(1)
                    || (bytes >= limit.bytes && !versions.is_empty())
                {
                    return Ok(ShardResponse::History {
                        versions,
                        more: true,
                    });
                }
                let version = version.map_err(|e| storage(shard, e))?;
                bytes += version.key.len() + version.value.as_ref().map_or(0, Vec::len) + 16;
                versions.push(version);
            }
            Ok(ShardResponse::History {
                versions,
                more: false,
            })
        })
        .await
        .map_err(|_| ShardError::ShuttingDown)?
    }

    /// Serve either kind of call through its own entry point.
    async fn serve(&self, call: Call) -> Result<ShardResponse, ShardError> {
        match call {
            Call::Client(req) => self.execute(req).await,
            Call::Control(req) => self.control(req).await,
        }
    }

    fn replica(&self, shard: ShardId) -> Result<(Inbox<ShardState>, ShardState), ShardError> {
        match self.hosted.get(shard) {
            Some(slot) => Ok((slot.inbox, slot.state)),
            None if shard as usize >= self.hosted.groups() => Err(ShardError::Unavailable {
                shard,
                reason: "no such shard".into(),
            }),
            None => Err(ShardError::Unavailable {
                shard,
                reason: format!("node {} holds no replica of it", self.node_id),
            }),
        }
    }

    async fn propose(
        &self,
        shard: ShardId,
        command: Command,
    ) -> Result<cairn_store::ApplyOutcome, ShardError> {
        let (inbox, _) = self.replica(shard)?;
        let (reply, rx) = oneshot::channel();
        inbox
            .try_send(ReplicaMsg::Propose { command, reply })
            .map_err(|_| overloaded(shard))?;
        rx.await.map_err(|_| ShardError::ShuttingDown)?
    }

    async fn get(
        &self,
        shard: ShardId,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> Result<ShardResponse, ShardError> {
        let (inbox, state) = self.replica(shard)?;
        let scope = ReadScope::Key(key.clone());
        let at = self.read_version(&inbox, consistency, shard, scope).await?;
        let value = state.get(&key, at).map_err(|e| storage(shard, e))?;
        Ok(ShardResponse::Value(value))
    }

    async fn scan(
        &self,
        shard: ShardId,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: PageLimit,
        consistency: Consistency,
    ) -> Result<ShardResponse, ShardError> {
        let (inbox, state) = self.replica(shard)?;
        let scope = ReadScope::Range {
            prefix: prefix.clone(),
            start_after: start_after.clone(),
        };
        let at = self.read_version(&inbox, consistency, shard, scope).await?;
        let page = tokio::task::spawn_blocking(move || {
            state.scan(&prefix, start_after.as_deref(), limit, at)
        })
        .await
        .map_err(|_| ShardError::ShuttingDown)?
        .map_err(|e| storage(shard, e))?;
        Ok(ShardResponse::Items(page))
    }

    /// The version a read must see: the leader's confirmed, unheld version for a
    /// linearizable read (once no transaction locks a key in `scope`); everything
    /// applied for a stale one; the given version for a fixed-version read, once this
    /// replica has applied it.
    ///
    /// Only linearizable reads wait for locks. A fixed version is a snapshot's cut,
    /// and no transaction is ever resolved on one side of a cut and not the other (the
    /// meta group keeps commits and epoch allocations apart); a stale read promises
    /// nothing across shards.
    async fn read_version(
        &self,
        inbox: &Inbox<ShardState>,
        consistency: Consistency,
        shard: ShardId,
        scope: ReadScope,
    ) -> Result<u64, ShardError> {
        match consistency {
            // Local reads never see past an open epoch's cut (guarantee 3): a stale
            // read is served just below the window, a fixed version above it waits.
            Consistency::Stale => Ok(self.gauges(shard).map(|g| g.unheld_version()).unwrap_or(0)),
            Consistency::AtVersion(version) => {
                let unheld = self.gauges(shard).map(|g| g.unheld_version()).unwrap_or(0);
                if unheld < version {
                    return Err(ShardError::Unavailable {
                        shard,
                        reason: format!(
                            "version {version} is not yet readable here (readable up to {unheld}: not applied, or an open snapshot's window)"
                        ),
                    });
                }
                Ok(version)
            }
            Consistency::Linearizable => {
                let (reply, rx) = oneshot::channel();
                inbox
                    .try_send(ReplicaMsg::ReadBarrier { scope, reply })
                    .map_err(|_| overloaded(shard))?;
                rx.await.map_err(|_| ShardError::ShuttingDown)?
            }
        }
    }

    /// Physically delete, in every local group, the versions below its history
    /// horizon that no read can see any more. Blocking; runs off the Raft threads.
    /// `collected[g]` remembers the horizon already collected for group `g`.
    pub fn collect_history(&self, collected: &mut Vec<u64>) -> Result<usize, ShardError> {
        collected.resize(self.hosted.groups(), 0);
        let mut removed = 0;
        for (shard, slot) in self.hosted.all() {
            let group = shard as usize;
            let state = slot.state;
            let horizon = state.horizon().map_err(|e| storage(shard, e))?;
            if horizon > collected[group] {
                removed += state
                    .collect(horizon, 1000)
                    .map_err(|e| storage(shard, e))?;
                collected[group] = horizon;
            }
        }
        Ok(removed)
    }

    /// This node's replica of `shard`'s state machine, for reads that need no
    /// leader (backups, status, tests).
    pub fn state(&self, shard: ShardId) -> Option<ShardState> {
        self.hosted.get(shard).map(|s| s.state)
    }

    /// The gauges of this node's replica of `shard`; `None` if it holds none.
    pub fn gauges(&self, shard: ShardId) -> Option<Arc<ReplicaGauges>> {
        self.hosted.gauges(shard)
    }

    /// Whether this node holds a replica of `shard` (a voter's, or a learner's that
    /// may still be catching up).
    pub fn hosts(&self, shard: ShardId) -> bool {
        self.hosted.contains(shard)
    }

    /// Whether this node's replica of `shard` is one of its voters: caught up at
    /// some point, so its state may answer reads that need no leader.
    pub fn votes_in(&self, shard: ShardId) -> bool {
        self.gauges(shard).is_some_and(|g| g.is_voter(self.node_id))
    }

    /// The groups this node holds replicas of.
    pub fn hosted(&self) -> Vec<ShardId> {
        self.hosted.ids()
    }

    /// How many groups this node's replicas lead.
    pub fn leads(&self) -> u32 {
        let me = Some(self.node_id);
        self.hosted
            .all()
            .iter()
            .filter(|(_, s)| s.gauges.leader() == me)
            .count() as u32
    }

    /// Ask this node's replica of `shard` to hand its leadership to `to` (see
    /// [`ReplicaMsg::TransferLeader`]); it does so only if it leads.
    pub fn transfer_leader(&self, shard: ShardId, to: NodeId) -> Result<(), ShardError> {
        let (inbox, _) = self.replica(shard)?;
        inbox
            .try_send(ReplicaMsg::TransferLeader { to })
            .map_err(|_| overloaded(shard))
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }
}

fn overloaded(shard: ShardId) -> ShardError {
    ShardError::Unavailable {
        shard,
        reason: "replica queue is full".into(),
    }
}

fn storage(shard: ShardId, e: cairn_store::StoreError) -> ShardError {
    if let cairn_store::StoreError::HistoryCollected { horizon } = e {
        return ShardError::HistoryCollected { shard, horizon };
    }
    tracing::error!(shard, error = %e, "read failed");
    ShardError::Storage {
        shard,
        reason: e.to_string(),
    }
}

impl CallHandler for LocalShards {
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<'static, Result<ShardResponse, ShardError>> {
        Box::pin(async move { self.serve(call).await })
    }
}

/// The right to make control calls (markers, releases, compactions, transaction
/// phases, meta records): handed out once per node, to the composition root, which
/// gives it to the coordinators. Code holding only the [`MultiRaft`] (the HTTP API)
/// can make client calls and read status, nothing more.
#[derive(Clone)]
pub struct ControlPath {
    local: Arc<LocalShards>,
    transport: Transport,
}

impl ControlPath {
    /// Serve a control call with this node's replica of its group.
    pub async fn local(&self, req: ControlRequest) -> Result<ShardResponse, ShardError> {
        self.local.control(req).await
    }

    /// Send a control call to another node's replica of its group.
    pub async fn forward(
        &self,
        to: NodeId,
        req: ControlRequest,
        timeout: Duration,
    ) -> Result<ShardResponse, ShardError> {
        self.transport.call(to, Call::Control(req), timeout).await
    }
}

/// A replica's figures for status pages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplicaStatus {
    pub shard: ShardId,
    pub leader: Option<NodeId>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    pub first_index: u64,
    pub snapshots_installed: u64,
}

/// Every replica of this node, running.
pub struct MultiRaft {
    cfg: RaftConfig,
    local: Arc<LocalShards>,
    transport: Transport,
    cancel: CancellationToken,
    stop_replicas: Option<Sender<()>>,
    threads: Vec<JoinHandle<()>>,
    commit: Option<GroupCommit>,
    commit_thread: Option<JoinHandle<()>>,
    /// Taken once by [`MultiRaft::take_control`].
    control: Mutex<Option<ControlPath>>,
}

impl MultiRaft {
    /// Open every shard of `store` and start its replica, the flusher and the transport.
    pub async fn start(cfg: RaftConfig, store: NodeStore) -> Result<MultiRaft, RaftError> {
        cfg.validate()?;
        let node = cfg.node_id;
        // The groups this node holds: as last recorded, or, on a directory's first
        // boot, as the cluster's placement says.
        let hosted_groups = match store.hosted_groups()? {
            Some(groups) => groups,
            None => {
                let groups: Vec<ShardId> = cfg.groups().filter(|&g| cfg.hosts(g)).collect();
                store.set_hosted_groups(&groups)?;
                groups
            }
        };
        let hosted = Arc::new(HostedReplicas::new(cfg.groups().count()));
        // Shards are dealt round-robin to the pool's threads (see `replica/pool.rs`);
        // each thread has a door for replicas opened later and a bell for its inboxes.
        let pools = cfg.replica_threads.max(1);
        let mut doors = Vec::new();
        let mut entrances = Vec::new();
        for _ in 0..pools {
            let (adopt, adopted) = bounded(64);
            let (bell, rung) = crossbeam_channel::unbounded();
            doors.push(PoolDoor { adopt, bell });
            entrances.push((adopted, rung));
        }
        let mut mailboxes = Vec::new();
        for &shard in &hosted_groups {
            let (inbox, mailbox) = doors[shard as usize % pools].inbox(shard);
            let gauges = Arc::new(ReplicaGauges::new());
            mailboxes.push((shard, mailbox, gauges.clone()));
            let slot = Slot {
                inbox,
                state: store.shard_state(shard)?,
                gauges,
            };
            hosted.set(shard, Some(slot));
        }
        let local = Arc::new(LocalShards {
            node_id: node,
            data_shards: cfg.shards,
            hosted: hosted.clone(),
            opener: Mutex::new(None),
        });
        let cancel = CancellationToken::new();
        let transport =
            Transport::start(&cfg, hosted, store.clone(), local.clone(), cancel.clone()).await?;
        let (commit, commit_thread) = GroupCommit::start(store.clone(), node);
        let (stop_tx, stop_rx) = bounded::<()>(0);
        let mut owned: Vec<Vec<_>> = (0..pools).map(|_| Vec::new()).collect();
        for (shard, mailbox, gauges) in mailboxes {
            let replica = Replica::<ShardState, _, _>::open(
                shard,
                &cfg,
                store.clone(),
                commit.clone(),
                transport.clone(),
                gauges,
            )?;
            owned[shard as usize % pools].push((replica, mailbox));
        }
        let mut threads = Vec::new();
        for (index, (replicas, (adopt, bell))) in owned.into_iter().zip(entrances).enumerate() {
            let stop = stop_rx.clone();
            let tick = cfg.tick;
            let commit = commit.clone();
            let handle = std::thread::Builder::new()
                .name(format!("replicas-{node}-{index}"))
                .spawn(move || {
                    let span = tracing::info_span!("replica_pool", node, index);
                    let _enter = span.enter();
                    pool::run(replicas, adopt, bell, commit, stop, tick)
                })?;
            threads.push(handle);
        }
        *local
            .opener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(Opener {
            cfg: cfg.clone(),
            store: store.clone(),
            commit: commit.clone(),
            transport: transport.clone(),
            pools: doors,
            changing: tokio::sync::Mutex::new(()),
        }));
        let control = ControlPath {
            local: local.clone(),
            transport: transport.clone(),
        };
        Ok(MultiRaft {
            cfg,
            local,
            transport,
            control: Mutex::new(Some(control)),
            cancel,
            stop_replicas: Some(stop_tx),
            threads,
            commit: Some(commit),
            commit_thread: Some(commit_thread),
        })
    }

    pub fn config(&self) -> &RaftConfig {
        &self.cfg
    }

    /// This node's replicas.
    pub fn local(&self) -> &LocalShards {
        &self.local
    }

    /// See [`LocalShards::collect_history`].
    pub fn collect_history(&self, collected: &mut Vec<u64>) -> Result<usize, ShardError> {
        self.local.collect_history(collected)
    }

    /// The shard's leader as this node last heard, if any.
    pub fn leader_of(&self, shard: ShardId) -> Option<NodeId> {
        self.local.gauges(shard).and_then(|g| g.leader())
    }

    /// Send a client call to another node's replica of its shard.
    pub async fn forward(
        &self,
        to: NodeId,
        req: ShardRequest,
        timeout: Duration,
    ) -> Result<ShardResponse, ShardError> {
        self.transport.call(to, Call::Client(req), timeout).await
    }

    /// The node's [`ControlPath`]: the first caller gets it, every later one `None`.
    pub fn take_control(&self) -> Option<ControlPath> {
        self.control
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take()
    }

    /// Every member of the cluster (this node included) and its peer address: the
    /// founding members and those that joined since.
    pub fn members(&self) -> std::collections::BTreeMap<NodeId, crate::config::PeerAddr> {
        let mut all: std::collections::BTreeMap<_, _> =
            self.transport.peers().into_iter().collect();
        if let Some(addr) = self.cfg.peers.get(&self.cfg.node_id) {
            all.insert(self.cfg.node_id, addr.clone());
        }
        all
    }

    /// Start talking to a member that joined (see [`Transport::add_peer`]); false if
    /// it was known.
    pub fn add_member(&self, id: NodeId, addr: crate::config::PeerAddr) -> bool {
        self.transport.add_peer(id, addr)
    }

    /// Whether `peer` looks reachable now ([`Transport::reachable`]); this node is.
    pub fn reachable(&self, peer: NodeId) -> bool {
        peer == self.cfg.node_id || self.transport.reachable(peer)
    }

    /// The state of this node's link to every peer.
    pub fn links(&self) -> Vec<crate::transport::LinkStatus> {
        self.transport.links()
    }

    /// Write batches this node's voters of the data shards have applied since start.
    pub fn writes_applied(&self) -> u64 {
        (0..self.cfg.shards)
            .filter(|&s| self.local.votes_in(s))
            .filter_map(|s| self.local.gauges(s))
            .map(|g| g.writes_applied.load(Ordering::Relaxed))
            .sum()
    }

    pub fn status(&self, shard: ShardId) -> Option<ReplicaStatus> {
        let g = self.local.gauges(shard)?;
        Some(ReplicaStatus {
            shard,
            leader: g.leader(),
            term: g.term.load(Ordering::Relaxed),
            commit: g.commit.load(Ordering::Relaxed),
            applied: g.applied.load(Ordering::Relaxed),
            first_index: g.first_index.load(Ordering::Relaxed),
            snapshots_installed: g.snapshots_installed.load(Ordering::Relaxed),
        })
    }

    /// Stop the transport, then every replica (each fails what it still holds), then
    /// the flusher, after one last fsync.
    pub async fn shutdown(mut self) {
        self.local
            .opener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.cancel.cancel();
        drop(self.stop_replicas.take());
        let threads = std::mem::take(&mut self.threads);
        let commit = self.commit.take();
        let commit_thread = self.commit_thread.take();
        let _ = tokio::task::spawn_blocking(move || {
            for t in threads {
                let _ = t.join();
            }
            if let Some(commit) = commit {
                if let Err(e) = commit.sync() {
                    tracing::error!(error = %e, "final fsync failed");
                }
            }
            if let Some(t) = commit_thread {
                let _ = t.join();
            }
        })
        .await;
    }
}

impl Drop for MultiRaft {
    fn drop(&mut self) {
        // Without an explicit shutdown the threads still stop: closing the stop channel
        // ends every replica loop, and the flusher ends with its last handle.
        self.local
            .opener
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .take();
        self.cancel.cancel();
        drop(self.stop_replicas.take());
    }
}
