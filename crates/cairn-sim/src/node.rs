//! A simulated node: one sled database holding a replica of every shard and of the
//! meta group, with a disk that forgets what was never synced.
//!
//! The replicas are Cairn's own [`Replica`]s, opened with [`Replica::open_seeded`] on
//! a real [`NodeStore`] (a temporary sled database). Only their two edges are the
//! simulator's: [`SimOutbox`] collects what they send, for the virtual network, and
//! [`SimDurability`] stands in for group commit.
//!
//! # The disk
//!
//! Production's promise is about fsync: what a replica synced survives a crash, what
//! it did not may or may not, as a prefix of sled's write stream. The simulated disk
//! keeps [`StoreImage`]s of the database as the states a crash may leave, and a crash
//! throws the live database away and restarts the node from one of them. Restart
//! then goes through `Replica::open` exactly as after a real crash, repairs included.
//!
//! Which images: a crash is *armed* a few milliseconds before it fires. Arming takes an
//! image (sled may well have persisted everything written so far); every `sync` while
//! armed replaces the candidates with a new image (everything written by every replica
//! of the node is then durable: that is what group commit's flush does); and, by
//! chance, a write between syncs adds one (a prefix of what followed the sync). When
//! the crash fires, the node restarts from one candidate or from everything written.
//! Imaging only while armed rather than at every sync is what makes a debug-build run
//! affordable (an image costs about a millisecond there, a run syncs thousands of
//! times); it loses no coverage of what matters, the writes after the last durable
//! point, since arming happens at an arbitrary point between replica steps.
//!
//! Images are taken on the simulator's only thread while no replica is running, so
//! each is a consistent cut of the database.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::rc::Rc;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use cairn_raft::commit::Durability;
use cairn_raft::replica::{Outbox, Replica, ReplicaGauges, ReplicaSeed};
use cairn_raft::RaftConfig;
use cairn_store::{NodeId, NodeStore, ShardId, ShardState, StoreImage};
use raft::prelude::Message;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::config::TICK_MS;

/// Something a replica sent, waiting for the network.
pub enum Outgoing {
    Raft {
        shard: ShardId,
        msg: Message,
    },
    /// A Raft snapshot to stream: `state` is the sender's tree, exported on delivery.
    Snapshot {
        shard: ShardId,
        msg: Message,
        state: ShardState,
    },
}

/// The replicas' outbound edge: everything goes into the node's queue.
pub struct SimOutbox {
    queue: Rc<RefCell<Vec<Outgoing>>>,
}

impl Outbox<ShardState> for SimOutbox {
    fn send_raft(&mut self, shard: ShardId, msg: Message) -> bool {
        self.queue.borrow_mut().push(Outgoing::Raft { shard, msg });
        true
    }

    fn send_snapshot(&mut self, shard: ShardId, msg: Message, state: ShardState) -> bool {
        self.queue
            .borrow_mut()
            .push(Outgoing::Snapshot { shard, msg, state });
        true
    }
}

/// What the disk has recorded, and how often.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DiskStats {
    pub syncs: u64,
    pub images: u64,
}

/// The node's database and the images a crash may leave.
pub struct Disk {
    store: NodeStore,
    /// While a crash is armed: the states it may leave, oldest first (the first is the
    /// state at arming or at the last sync since).
    candidates: Option<Vec<StoreImage>>,
    /// While armed: the chance that a write between syncs is recorded as a possible
    /// crash state.
    prefix_chance: f64,
    rng: ChaCha8Rng,
    error: Option<String>,
    pub stats: DiskStats,
}

impl Disk {
    /// A crash is coming: from now on record what it may leave, keeping each write
    /// between syncs with `prefix_chance`.
    pub fn arm(&mut self, prefix_chance: f64) {
        self.prefix_chance = prefix_chance;
        let image = self.image();
        self.candidates = image.map(|i| vec![i]);
    }

    fn image(&mut self) -> Option<StoreImage> {
        match self.store.image() {
            Ok(image) => {
                self.stats.images += 1;
                Some(image)
            }
            Err(e) => {
                self.error = Some(format!("taking a disk image: {e}"));
                None
            }
        }
    }
}

/// The replicas' durability: a sync records the durable image.
pub struct SimDurability {
    disk: Rc<RefCell<Disk>>,
}

impl Durability for SimDurability {
    fn sync(&self) -> Result<(), cairn_raft::commit::SyncError> {
        let mut disk = self.disk.borrow_mut();
        disk.stats.syncs += 1;
        if disk.candidates.is_some() {
            // Everything written so far is durable: no crash can leave less.
            let image = disk.image();
            disk.candidates = image.map(|i| vec![i]);
        }
        Ok(())
    }

    fn written(&self) {
        let mut disk = self.disk.borrow_mut();
        let chance = disk.prefix_chance;
        if disk.candidates.is_some() && chance > 0.0 && disk.rng.gen_bool(chance) {
            if let Some(image) = disk.image() {
                disk.candidates.get_or_insert_with(Vec::new).push(image);
            }
        }
    }
}

pub type SimReplica = Replica<ShardState, SimOutbox, SimDurability>;

/// A running node.
pub struct Live {
    pub store: NodeStore,
    pub disk: Rc<RefCell<Disk>>,
    pub replicas: Vec<SimReplica>,
    pub gauges: Vec<Arc<ReplicaGauges>>,
    pub states: Vec<ShardState>,
    pub outbox: Rc<RefCell<Vec<Outgoing>>>,
}

/// One node of the simulated cluster, up or down.
pub struct SimNode {
    pub id: NodeId,
    /// Bumped at every start: messages and replies of an earlier life are void.
    pub incarnation: u64,
    pub live: Option<Live>,
    /// The disk while the node is down: the image it will restart from.
    pub down_image: StoreImage,
    /// Each node's ticks run a little fast or slow (9 to 11 ms): clock drift.
    pub tick_ms: u64,
    /// A paused node (SIGSTOP) does nothing until then; what reaches it waits.
    pub paused_until: u64,
    /// Ticks that fell while it was paused: the first tick after counts them, as a
    /// node's replica pool counts the periods it missed.
    pub missed_ticks: u64,
    /// Per shard, the fixed election timeout of the current life.
    pub election_timeouts: Vec<usize>,
    /// Disk figures of earlier lives.
    pub past_disk: DiskStats,
    pub past_snapshots_installed: u64,
    pub past_lease_reads: u64,
}

/// The multi-raft configuration every simulated node uses (addresses are never dialled).
pub fn raft_config(
    node: NodeId,
    nodes: u64,
    shards: u32,
    log_compact_entries: u64,
    lease_reads: bool,
) -> RaftConfig {
    let peers: BTreeMap<NodeId, SocketAddr> = (1..=nodes)
        .map(|id| {
            (
                id,
                SocketAddr::from((Ipv4Addr::LOCALHOST, 7000 + id as u16)),
            )
        })
        .collect();
    RaftConfig {
        node_id: node,
        cluster_id: "sim".into(),
        shards,
        listen: peers[&node],
        peers: peers.iter().map(|(&n, &a)| (n, a.into())).collect(),
        placement: cairn_raft::Placement::Everywhere,
        tick: Duration::from_millis(TICK_MS),
        election_ticks: ELECTION_TICKS,
        heartbeat_ticks: 2,
        log_compact_entries,
        request_ticks: 100,
        replica_threads: 1,
        limits: Default::default(),
        lease_reads,
        tls: None,
    }
}

/// raft-rs's base election timeout; each replica's fixed timeout is drawn from
/// `ELECTION_TICKS..2 * ELECTION_TICKS`, distinct among a shard's replicas so that two
/// of them never time out together forever.
pub const ELECTION_TICKS: usize = 10;

impl SimNode {
    pub fn new(id: NodeId, tick_ms: u64) -> SimNode {
        SimNode {
            id,
            incarnation: 0,
            live: None,
            down_image: StoreImage::default(),
            tick_ms,
            paused_until: 0,
            missed_ticks: 0,
            election_timeouts: Vec::new(),
            past_disk: DiskStats::default(),
            past_snapshots_installed: 0,
            past_lease_reads: 0,
        }
    }

    /// Start from `down_image` with these election timeouts, drawing proposal ids and
    /// the disk's chances from `rng`.
    pub fn start(
        &mut self,
        cfg: &RaftConfig,
        timeouts: Vec<usize>,
        rng: &mut ChaCha8Rng,
    ) -> Result<(), String> {
        let store = NodeStore::open_image(&self.down_image).map_err(|e| e.to_string())?;
        let disk = Rc::new(RefCell::new(Disk {
            store: store.clone(),
            candidates: None,
            prefix_chance: 0.0,
            rng: ChaCha8Rng::seed_from_u64(rng.gen()),
            error: None,
            stats: DiskStats::default(),
        }));
        let outbox = Rc::new(RefCell::new(Vec::new()));
        let mut replicas = Vec::new();
        let mut gauges = Vec::new();
        let mut states = Vec::new();
        // The data shards, then the meta group.
        for shard in cfg.groups() {
            let g = Arc::new(ReplicaGauges::new());
            let seed = ReplicaSeed {
                proposal_ids: rng.gen::<u64>() >> 1,
                election_timeout: Some(timeouts[shard as usize]),
            };
            let replica = Replica::open_seeded(
                shard,
                cfg,
                store.clone(),
                SimDurability { disk: disk.clone() },
                SimOutbox {
                    queue: outbox.clone(),
                },
                g.clone(),
                seed,
            )
            .map_err(|e| format!("opening shard {shard}: {e}"))?;
            replicas.push(replica);
            gauges.push(g);
            states.push(store.shard_state(shard).map_err(|e| e.to_string())?);
        }
        self.election_timeouts = timeouts;
        self.incarnation += 1;
        self.live = Some(Live {
            store,
            disk,
            replicas,
            gauges,
            states,
            outbox,
        });
        Ok(())
    }

    /// Crash: forget the live database and keep one of the states a crash could leave
    /// (see the module doc). Returns which: 0 = the last durable point, 1.. = a prefix
    /// after it, or `usize::MAX` = everything written.
    pub fn crash(&mut self, rng: &mut ChaCha8Rng) -> Result<usize, String> {
        let Some(live) = self.live.take() else {
            return Ok(0);
        };
        self.past_snapshots_installed += gauges_sum(&live, |g| &g.snapshots_installed);
        self.past_lease_reads += gauges_sum(&live, |g| &g.lease_reads);
        let Live {
            store,
            disk,
            replicas,
            ..
        } = live;
        // The replicas go first: their pending replies are dropped with them, as a
        // killed process's are.
        drop(replicas);
        let mut disk = match Rc::try_unwrap(disk) {
            Ok(d) => d.into_inner(),
            Err(_) => return Err("the disk is still shared after the replicas stopped".into()),
        };
        if let Some(e) = disk.error.take() {
            return Err(e);
        }
        self.past_disk.syncs += disk.stats.syncs;
        self.past_disk.images += disk.stats.images;
        // Choices: each candidate, or nothing lost.
        let mut candidates = disk.candidates.take().unwrap_or_default();
        let pick = rng.gen_range(0..=candidates.len());
        let lost_nothing = pick == candidates.len();
        self.down_image = if lost_nothing {
            store.image().map_err(|e| e.to_string())?
        } else {
            candidates.swap_remove(pick)
        };
        drop(store);
        Ok(if lost_nothing { usize::MAX } else { pick })
    }

    /// Disk figures over every life so far.
    pub fn disk_stats(&self) -> DiskStats {
        let mut s = self.past_disk.clone();
        if let Some(live) = &self.live {
            let d = live.disk.borrow();
            s.syncs += d.stats.syncs;
            s.images += d.stats.images;
        }
        s
    }

    /// Raft snapshots installed over every life so far.
    pub fn snapshots_installed(&self) -> u64 {
        self.past_snapshots_installed + self.live_sum(|g| &g.snapshots_installed)
    }

    /// Batches of reads leaders served on their lease, over every life so far.
    pub fn lease_reads(&self) -> u64 {
        self.past_lease_reads + self.live_sum(|g| &g.lease_reads)
    }

    /// One counter summed over this life's replicas (0 while down).
    fn live_sum(&self, counter: impl Fn(&ReplicaGauges) -> &AtomicU64) -> u64 {
        self.live.as_ref().map_or(0, |l| gauges_sum(l, counter))
    }

    /// Arm a crash of this node (see the module doc).
    pub fn arm_crash(&self, prefix_chance: f64) {
        if let Some(live) = &self.live {
            live.disk.borrow_mut().arm(prefix_chance);
        }
    }

    /// A disk error recorded during the last step, if any.
    pub fn disk_error(&self) -> Option<String> {
        self.live
            .as_ref()
            .and_then(|l| l.disk.borrow_mut().error.take())
    }
}

/// One counter summed over a live node's replicas.
fn gauges_sum(live: &Live, counter: impl Fn(&ReplicaGauges) -> &AtomicU64) -> u64 {
    live.gauges
        .iter()
        .map(|g| counter(g).load(std::sync::atomic::Ordering::Relaxed))
        .sum()
}
