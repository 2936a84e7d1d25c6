//! The nemesis: which faults, when, against whom, and proof that each one fired.
//!
//! A run's faults are a list of [`FaultKind`]s played in order; the seed gives each
//! its quiet gap before it, how long it holds, and its parameters (loss rate, delay
//! range, which group's leader). Faults that target "a leader" pick a Raft group (a
//! data shard, or the meta group, whose leader coordinates snapshots' sweeping and
//! schedules) and ask `GET /v1/cluster` who leads it at that moment.
//!
//! | fault | injection | healing | it fired when |
//! |---|---|---|---|
//! | `kill-follower` | SIGKILL a node that does not lead the chosen group | restart it | the process was killed |
//! | `kill-leader` | SIGKILL the chosen group's leader | restart it | the process was killed |
//! | `pause` | SIGSTOP a node (half the time a leader) | SIGCONT | the process was stopped |
//! | `restart-all` | SIGKILL every node | start them all | every process was killed |
//! | `partition` | one node cut off from the others both ways (minority / majority) | heal | frames were dropped |
//! | `isolate-leader` | the chosen group's leader cut off both ways | heal | frames were dropped |
//! | `one-way` | frames from the leader to the others dropped, or the reverse | heal | frames were dropped |
//! | `loss` | 10–35 % of Raft messages, calls and replies dropped | heal | frames were lost |
//! | `delay` | every frame delayed up to 50–250 ms, or one node's outbound frames 50–400 ms | heal | frames were delayed |
//! | `duplicate` | 20–50 % of Raft messages, calls and replies sent twice | heal | frames were duplicated |
//! | `slow-markers` | forwarded markers and releases delayed 100–600 ms, so shards' cuts land far apart | heal | a marker was delayed |
//! | `crash-point` | restart a node with a write-path crash point armed (`FAILPOINTS`, after 5–60 passes) | start it without | it aborted at that point |
//! | `join` | start a spare node with `--join` (the cluster rebalances onto it) | none: it stays | it became an active member |
//! | `decommission` | `POST /v1/nodes/{id}/decommission` for an active node, and half the time SIGKILL the node driving it part-way | restart it, ask again until it answers | the node ended `decommissioned` holding no replica |
//! | `kill-during-move` | `POST /v1/shards/{id}/move` of one voter to a node without one, and SIGKILL the source, the target, the group's leader or the node driving the move part-way | restart it, ask again until it answers | the kill landed while the move was unfinished |
//!
//! Membership faults need room: `join` a spare ([`crate::Scenario::spares`]),
//! `decommission` and `kill-during-move` more active nodes than a group has replicas.
//! Healing one finishes what it started, so the checks after the run see a settled
//! placement; the run's automatic rebalancing may go on moving replicas meanwhile.
//!
//! A fault that did not fire (no leader to find, no frame crossed the proxy while it
//! held) fails the run: a harness that cannot hurt the cluster must not pass.

use std::fmt;
use std::time::{Duration, Instant};

use cairn_client::api::ClusterStatus;
use cairn_store::NodeId;
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::Rng;

use crate::cluster::Cluster;
use crate::error::{ChaosError, Result};
use crate::network::{FrameCounts, LinkFaults, Network};

/// The kinds of fault (see the module doc's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FaultKind {
    KillFollower,
    KillLeader,
    Pause,
    RestartAll,
    Partition,
    IsolateLeader,
    OneWay,
    Loss,
    Delay,
    Duplicate,
    SlowMarkers,
    CrashPoint,
    Join,
    Decommission,
    MoveKill,
}

/// The crash points a node passes all the time while it serves writes (the rest of
/// `docs/TESTING.md`'s list needs a particular request, which `tests/failpoints.rs`
/// makes).
const WRITE_PATH_POINTS: [&str; 8] = [
    "log.append.before",
    "log.append.after",
    "log.hard_state.before",
    "log.hard_state.after",
    "store.fsync.before",
    "store.fsync.after",
    "state.apply.before",
    "state.apply.after",
];

impl FaultKind {
    pub const ALL: [FaultKind; 15] = [
        FaultKind::KillFollower,
        FaultKind::KillLeader,
        FaultKind::Pause,
        FaultKind::RestartAll,
        FaultKind::Partition,
        FaultKind::IsolateLeader,
        FaultKind::OneWay,
        FaultKind::Loss,
        FaultKind::Delay,
        FaultKind::Duplicate,
        FaultKind::SlowMarkers,
        FaultKind::CrashPoint,
        FaultKind::Join,
        FaultKind::Decommission,
        FaultKind::MoveKill,
    ];

    pub fn name(self) -> &'static str {
        match self {
            FaultKind::KillFollower => "kill-follower",
            FaultKind::KillLeader => "kill-leader",
            FaultKind::Pause => "pause",
            FaultKind::RestartAll => "restart-all",
            FaultKind::Partition => "partition",
            FaultKind::IsolateLeader => "isolate-leader",
            FaultKind::OneWay => "one-way",
            FaultKind::Loss => "loss",
            FaultKind::Delay => "delay",
            FaultKind::Duplicate => "duplicate",
            FaultKind::SlowMarkers => "slow-markers",
            FaultKind::CrashPoint => "crash-point",
            FaultKind::Join => "join",
            FaultKind::Decommission => "decommission",
            FaultKind::MoveKill => "kill-during-move",
        }
    }

    pub fn parse(name: &str) -> Option<FaultKind> {
        FaultKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// Whether the fault needs the frame-aware proxy on the peer links (which cannot
    /// read frames under TLS).
    pub fn is_network(self) -> bool {
        matches!(
            self,
            FaultKind::Partition
                | FaultKind::IsolateLeader
                | FaultKind::OneWay
                | FaultKind::Loss
                | FaultKind::Delay
                | FaultKind::Duplicate
                | FaultKind::SlowMarkers
        )
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One fault as the seed planned it.
#[derive(Debug, Clone)]
pub struct FaultPlan {
    pub kind: FaultKind,
    /// Quiet time before it.
    pub gap: Duration,
    /// How long it holds.
    pub hold: Duration,
}

/// Plan `kinds` in order, gaps and holds drawn from the ranges.
pub fn plan(
    kinds: &[FaultKind],
    gap: (Duration, Duration),
    hold: (Duration, Duration),
    rng: &mut StdRng,
) -> Vec<FaultPlan> {
    kinds
        .iter()
        .map(|&kind| FaultPlan {
            kind,
            gap: rng.gen_range(gap.0..=gap.1),
            // A full restart is its own outage; keep the dark time short.
            hold: if kind == FaultKind::RestartAll {
                rng.gen_range(Duration::from_millis(200)..=Duration::from_millis(1500))
            } else {
                rng.gen_range(hold.0..=hold.1)
            },
        })
        .collect()
}

/// What a fault did, for the report.
#[derive(Debug, Clone)]
pub struct FaultRecord {
    pub kind: FaultKind,
    /// Whom it hit and how, in words.
    pub target: String,
    pub injected: Duration,
    pub healed: Duration,
    /// The proxy's counts over the fault's hold (network faults).
    pub frames: FrameCounts,
    pub fired: bool,
}

impl fmt::Display for FaultRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} [{:.1}s, {:.1}s] {}",
            self.kind,
            self.injected.as_secs_f64(),
            self.healed.as_secs_f64(),
            self.target
        )?;
        if self.kind.is_network() {
            let c = &self.frames;
            write!(
                f,
                " (frames: {} forwarded, {} blocked, {} lost, {} duplicated, {} delayed, {} snapshot streams cut)",
                c.forwarded, c.blocked, c.lost, c.duplicated, c.delayed, c.streams_cut
            )?;
        }
        if !self.fired {
            write!(f, " NEVER FIRED")?;
        }
        Ok(())
    }
}

/// A fault in force, and what healing it must undo.
pub struct Injected {
    kind: FaultKind,
    target: String,
    injected: Duration,
    killed: Vec<NodeId>,
    paused: Vec<NodeId>,
    network: bool,
    counts: FrameCounts,
    /// A node armed to crash at a point, and whether it did.
    crash: Option<(NodeId, &'static str)>,
    crashed: bool,
    /// A change of members in progress, which healing finishes.
    change: Option<Change>,
}

/// A change of members a fault started, and how to finish it.
enum Change {
    Join {
        node: NodeId,
    },
    Decommission {
        node: NodeId,
        call: tokio::task::JoinHandle<String>,
    },
    Move {
        shard: u32,
        from: NodeId,
        to: NodeId,
        call: tokio::task::JoinHandle<String>,
        /// The kill landed before the call answered.
        cut: bool,
    },
}

/// How long healing may take to finish a change of members (a move waits for a Raft
/// snapshot to reach its new replica; a decommission makes several moves).
const FINISH_CHANGE: Duration = Duration::from_secs(120);

/// Injects and heals faults on a cluster and its network.
pub struct Nemesis {
    rng: StdRng,
    clock: Instant,
}

/// How long to look for a leader before declaring the fault could not fire.
const FIND_LEADER: Duration = Duration::from_secs(15);

/// Between two looks at the cluster while waiting for it.
const LOOK_AGAIN: Duration = Duration::from_millis(200);

/// Between two asks of a change that has not finished yet.
const ASK_AGAIN: Duration = Duration::from_millis(500);

impl Nemesis {
    pub fn new(rng: StdRng, clock: Instant) -> Nemesis {
        Nemesis { rng, clock }
    }

    /// A group to aim at: the meta group a quarter of the time, else a data shard.
    fn group(&mut self, shards: u32) -> (Option<u32>, String) {
        if self.rng.gen_bool(0.25) {
            (None, "the meta group".into())
        } else {
            let shard = self.rng.gen_range(0..shards);
            (Some(shard), format!("shard {shard}"))
        }
    }

    /// The current leader of `group` (`None`: the meta group), waiting for one.
    async fn leader(&self, cluster: &Cluster, group: Option<u32>) -> Result<NodeId> {
        let what = || format!("a leader of group {group:?} to aim a fault at");
        until(what, FIND_LEADER, LOOK_AGAIN, async || {
            let leaders = match cluster.leaders().await {
                Ok(leaders) => leaders,
                Err(e) => return Ok(Look::NotYet(e.to_string())),
            };
            let leader = match group {
                None => leaders.meta,
                Some(s) => leaders
                    .shards
                    .iter()
                    .find(|(id, _)| *id == s)
                    .and_then(|(_, l)| *l),
            };
            Ok(match leader {
                Some(l) if cluster.responsive().contains(&l) => Look::Done(l),
                Some(l) => Look::NotYet(format!("leader {l} is not responsive")),
                None => Look::NotYet("no leader known".into()),
            })
        })
        .await
    }

    /// A replica to move: a group not in the middle of a change (the meta group a
    /// quarter of the time), one of its voters, an active node holding none of its
    /// replicas, a responsive node to drive the move, and the group's leader.
    async fn choose_move(
        &mut self,
        cluster: &Cluster,
    ) -> Result<(u32, NodeId, NodeId, NodeId, Option<NodeId>)> {
        let status = settled_view(cluster).await?;
        let active = active_members(cluster, &status);
        let meta = self.rng.gen_bool(0.25);
        let choices: Vec<_> = status
            .placement
            .iter()
            .filter(|p| p.meta == meta && p.learners.is_empty() && !p.replicas.is_empty())
            .filter_map(|p| {
                let free: Vec<NodeId> = active
                    .iter()
                    .copied()
                    .filter(|n| !p.replicas.contains(n))
                    .collect();
                (!free.is_empty()).then(|| (p.id, p.replicas.clone(), free, p.leader))
            })
            .collect();
        let (shard, voters, free, leader) =
            choices.choose(&mut self.rng).cloned().ok_or_else(|| {
                ChaosError::Misuse(format!(
                    "no group to move: every active node ({active:?}) holds a replica of each"
                ))
            })?;
        let none = || ChaosError::Misuse("nothing to choose from".into());
        let from = *voters.choose(&mut self.rng).ok_or_else(none)?;
        let to = *free.choose(&mut self.rng).ok_or_else(none)?;
        let driver = *cluster
            .responsive()
            .choose(&mut self.rng)
            .ok_or_else(none)?;
        Ok((shard, from, to, driver, leader))
    }

    /// Inject one fault.
    pub async fn inject(
        &mut self,
        kind: FaultKind,
        cluster: &mut Cluster,
        network: &Network,
    ) -> Result<Injected> {
        let ids = cluster.ids();
        let shards = cluster.shards();
        let mut killed = Vec::new();
        let mut paused = Vec::new();
        let mut crash = None;
        let mut change = None;
        let counts = network.counts();
        let target = match kind {
            FaultKind::KillFollower | FaultKind::KillLeader => {
                let (group, name) = self.group(shards);
                let leader = self.leader(cluster, group).await?;
                let victim = if kind == FaultKind::KillLeader {
                    leader
                } else {
                    let followers: Vec<NodeId> = cluster
                        .responsive()
                        .into_iter()
                        .filter(|&n| n != leader)
                        .collect();
                    *followers
                        .choose(&mut self.rng)
                        .ok_or_else(|| ChaosError::Misuse("no follower to kill".into()))?
                };
                cluster.kill(victim)?;
                killed.push(victim);
                format!("SIGKILL node {victim} ({name} was led by node {leader})")
            }
            FaultKind::Pause => {
                let victim = if self.rng.gen_bool(0.5) {
                    let (group, _) = self.group(shards);
                    self.leader(cluster, group).await?
                } else {
                    *cluster
                        .responsive()
                        .choose(&mut self.rng)
                        .ok_or_else(|| ChaosError::Misuse("no node to pause".into()))?
                };
                cluster.pause(victim)?;
                paused.push(victim);
                format!("SIGSTOP node {victim}")
            }
            FaultKind::RestartAll => {
                killed = cluster.running();
                cluster.kill_all()?;
                format!("SIGKILL nodes {killed:?}, then start them all")
            }
            FaultKind::Partition => {
                let victim = *ids
                    .choose(&mut self.rng)
                    .ok_or_else(|| ChaosError::Misuse("no nodes".into()))?;
                network.set(LinkFaults::isolate(victim, &ids));
                format!("node {victim} partitioned from {:?}", others(&ids, victim))
            }
            FaultKind::IsolateLeader => {
                let (group, name) = self.group(shards);
                let leader = self.leader(cluster, group).await?;
                network.set(LinkFaults::isolate(leader, &ids));
                format!("node {leader}, leader of {name}, isolated")
            }
            FaultKind::OneWay => {
                let (group, name) = self.group(shards);
                let leader = self.leader(cluster, group).await?;
                let outbound = self.rng.gen_bool(0.5);
                let blocked = others(&ids, leader)
                    .into_iter()
                    .map(|o| if outbound { (leader, o) } else { (o, leader) })
                    .collect();
                network.set(LinkFaults {
                    blocked,
                    ..LinkFaults::default()
                });
                if outbound {
                    format!("frames from node {leader} (leader of {name}) to the others dropped")
                } else {
                    format!("frames to node {leader} (leader of {name}) from the others dropped")
                }
            }
            FaultKind::Loss => {
                let loss = self.rng.gen_range(0.10..=0.35);
                network.set(LinkFaults {
                    loss,
                    ..LinkFaults::default()
                });
                format!("{:.0}% of frames lost", loss * 100.0)
            }
            FaultKind::Delay if self.rng.gen_bool(0.5) => {
                let low = Duration::from_millis(self.rng.gen_range(0..=20));
                let high = Duration::from_millis(self.rng.gen_range(50..=250));
                network.set(LinkFaults {
                    delay: Some((low, high)),
                    ..LinkFaults::default()
                });
                format!("frames delayed {low:?} to {high:?}")
            }
            FaultKind::Delay => {
                // One slow node: what it sends (Raft traffic, the snapshot markers it
                // coordinates, forwarded writes) lags while the rest is fast.
                let slow = *ids
                    .choose(&mut self.rng)
                    .ok_or_else(|| ChaosError::Misuse("no nodes".into()))?;
                let low = Duration::from_millis(self.rng.gen_range(50..=100));
                let high = Duration::from_millis(self.rng.gen_range(200..=400));
                network.set(LinkFaults {
                    delay: Some((low, high)),
                    slow: others(&ids, slow).into_iter().map(|o| (slow, o)).collect(),
                    ..LinkFaults::default()
                });
                format!("frames from node {slow} delayed {low:?} to {high:?}")
            }
            FaultKind::SlowMarkers => {
                let low = Duration::from_millis(self.rng.gen_range(100..=200));
                let high = Duration::from_millis(self.rng.gen_range(300..=600));
                network.set(LinkFaults {
                    slow_control: Some((low, high)),
                    ..LinkFaults::default()
                });
                format!("forwarded markers and releases delayed {low:?} to {high:?}")
            }
            FaultKind::CrashPoint => {
                let victim = *cluster
                    .responsive()
                    .choose(&mut self.rng)
                    .ok_or_else(|| ChaosError::Misuse("no node to crash".into()))?;
                let point = *WRITE_PATH_POINTS
                    .choose(&mut self.rng)
                    .ok_or_else(|| ChaosError::Misuse("no crash points".into()))?;
                let skip = self.rng.gen_range(5..=60);
                cluster.kill(victim)?;
                let spec = format!("{point}={skip}*off->return");
                cluster.start_node_with_env(victim, &[("FAILPOINTS", &spec)])?;
                // Healing starts it again, without the point.
                killed.push(victim);
                crash = Some((victim, point));
                format!("node {victim} restarted to crash at `{point}` after {skip} passes")
            }
            FaultKind::Join => {
                let node = *cluster
                    .spares()
                    .first()
                    .ok_or_else(|| ChaosError::Misuse("no spare node left to join".into()))?;
                cluster.join(node)?;
                change = Some(Change::Join { node });
                format!("node {node} joins with --join")
            }
            FaultKind::Decommission => {
                let status = settled_view(cluster).await?;
                let active = active_members(cluster, &status);
                let widest = widest_group(&status);
                if active.len() <= widest {
                    return Err(ChaosError::Misuse(format!(
                        "decommission needs more active nodes than the {widest} replicas of a group; active: {active:?}"
                    )));
                }
                let node = *active
                    .choose(&mut self.rng)
                    .ok_or_else(|| ChaosError::Misuse("no active node".into()))?;
                let driver = *others(&cluster.responsive(), node)
                    .choose(&mut self.rng)
                    .ok_or_else(|| ChaosError::Misuse("no node to drive it".into()))?;
                let client = cluster.client(driver)?;
                let call = tokio::spawn(async move {
                    match client.decommission(node).await {
                        Ok(answer) => format!("moved {} replicas", answer.moved.len()),
                        Err(e) => e.to_string(),
                    }
                });
                let mut target = format!("decommission node {node}, driven by node {driver}");
                if self.rng.gen_bool(0.5) {
                    let after = Duration::from_millis(self.rng.gen_range(300..=2000));
                    tokio::time::sleep(after).await;
                    if !call.is_finished() {
                        cluster.kill(driver)?;
                        killed.push(driver);
                        target.push_str(&format!("; SIGKILL node {driver} after {after:?}"));
                    }
                }
                change = Some(Change::Decommission { node, call });
                target
            }
            FaultKind::MoveKill => {
                // A small group moves in well under a second: if the move answers
                // before the kill, it was a move without a fault; try another, with
                // less time before the kill.
                let mut longest = 800;
                let mut attempt = 0;
                loop {
                    attempt += 1;
                    let (shard, from, to, driver, leader) = self.choose_move(cluster).await?;
                    let client = cluster.client(driver)?;
                    let call = tokio::spawn(async move {
                        match client.move_replica(shard, from, to).await {
                            Ok(answer) => format!("voters {:?}", answer.voters),
                            Err(e) => e.to_string(),
                        }
                    });
                    let after = Duration::from_millis(self.rng.gen_range(20..=longest));
                    tokio::time::sleep(after).await;
                    let cut = !call.is_finished();
                    if !cut && attempt < 4 {
                        tracing::info!(
                            shard,
                            from,
                            to,
                            ?after,
                            "the move answered before the kill; another"
                        );
                        longest = (longest / 2).max(40);
                        continue;
                    }
                    let responsive = cluster.responsive();
                    let mut suspects: Vec<NodeId> = [Some(from), Some(to), Some(driver), leader]
                        .into_iter()
                        .flatten()
                        .filter(|n| responsive.contains(n))
                        .collect();
                    suspects.sort_unstable();
                    suspects.dedup();
                    let victim = suspects
                        .choose(&mut self.rng)
                        .copied()
                        .ok_or_else(|| ChaosError::Misuse("no node of the move runs".into()))?;
                    cluster.kill(victim)?;
                    killed.push(victim);
                    let role = match victim {
                        v if v == from => "the source",
                        v if v == to => "the target",
                        v if v == driver => "the node driving it",
                        _ => "the group's leader",
                    };
                    change = Some(Change::Move {
                        shard,
                        from,
                        to,
                        call,
                        cut,
                    });
                    break format!(
                        "move group {shard} from node {from} to node {to}, driven by node {driver} (attempt {attempt}); SIGKILL node {victim} ({role}) after {after:?}{}",
                        if cut { "" } else { ", after the move had answered" }
                    );
                }
            }
            FaultKind::Duplicate => {
                let duplicate = self.rng.gen_range(0.20..=0.50);
                network.set(LinkFaults {
                    duplicate,
                    ..LinkFaults::default()
                });
                format!("{:.0}% of frames duplicated", duplicate * 100.0)
            }
        };
        tracing::info!(fault = %kind, %target, "fault injected");
        Ok(Injected {
            kind,
            target,
            injected: self.clock.elapsed(),
            killed,
            paused,
            network: kind.is_network(),
            counts,
            crash,
            crashed: false,
            change,
        })
    }

    /// At the end of a fault's hold, before the cluster is checked: a node armed with
    /// a crash point is expected to have died of it (waited for a few seconds more),
    /// and is reaped; one that did not is killed, and the fault did not fire.
    pub async fn settle(&mut self, injected: &mut Injected, cluster: &mut Cluster) -> Result<()> {
        let Some((node, point)) = injected.crash else {
            return Ok(());
        };
        match cluster.wait_exit(node, Duration::from_secs(10)).await? {
            Some(status) => {
                let log = std::fs::read_to_string(cluster.stderr_path(node)).unwrap_or_default();
                injected.crashed = log.contains(&format!("crash point `{point}` fired"));
                if !injected.crashed {
                    return Err(ChaosError::NodeExited {
                        node,
                        status: status.to_string(),
                        log: cluster.log_tail(node, 40),
                    });
                }
            }
            None => cluster.kill(node)?,
        }
        Ok(())
    }

    /// Undo a fault: restart what was killed, continue what was stopped, heal the
    /// network, and finish a change of members the fault started. Does not otherwise
    /// wait for the cluster to recover.
    pub async fn heal(
        &mut self,
        injected: Injected,
        cluster: &mut Cluster,
        network: &Network,
    ) -> Result<FaultRecord> {
        let frames = network.counts().since(&injected.counts);
        if injected.network {
            network.heal();
        }
        for &node in &injected.paused {
            cluster.resume(node)?;
        }
        for &node in &injected.killed {
            cluster.start_node(node)?;
        }
        let (finished, target) = match injected.change {
            Some(change) => {
                let (finished, how) = finish(change, cluster, &mut self.rng).await?;
                (finished, format!("{}; {how}", injected.target))
            }
            None => (false, injected.target),
        };
        let fired = match injected.kind {
            FaultKind::Partition | FaultKind::IsolateLeader | FaultKind::OneWay => {
                frames.blocked + frames.streams_cut > 0
            }
            FaultKind::Loss => frames.lost > 0,
            FaultKind::Delay | FaultKind::SlowMarkers => frames.delayed > 0,
            FaultKind::Duplicate => frames.duplicated > 0,
            FaultKind::KillFollower | FaultKind::KillLeader | FaultKind::RestartAll => {
                !injected.killed.is_empty()
            }
            FaultKind::Pause => !injected.paused.is_empty(),
            FaultKind::CrashPoint => injected.crashed,
            FaultKind::Join | FaultKind::Decommission | FaultKind::MoveKill => finished,
        };
        let record = FaultRecord {
            kind: injected.kind,
            target,
            injected: injected.injected,
            healed: self.clock.elapsed(),
            frames,
            fired,
        };
        tracing::info!(fault = %record, "fault healed");
        Ok(record)
    }
}

/// Finish a change of members once its fault is healed: wait for a joined node to be
/// an active member; ask again for a decommission or a move until it answers (every
/// step of both can be repeated). Returns whether the change did what its fault is
/// for, and what happened, for the report.
async fn finish(change: Change, cluster: &mut Cluster, rng: &mut StdRng) -> Result<(bool, String)> {
    cluster.wait_ready(FINISH_CHANGE).await?;
    let cluster = &*cluster;
    match change {
        Change::Join { node } => {
            let what = || format!("node {node} to join");
            until(what, FINISH_CHANGE, LOOK_AGAIN, async || {
                let status = settled_view(cluster).await?;
                let state = status
                    .nodes
                    .iter()
                    .find(|n| n.id == node)
                    .map(|n| n.state.clone());
                Ok(if state.as_deref() == Some("active") {
                    Look::Done((true, format!("node {node} is an active member")))
                } else {
                    Look::NotYet(format!("its state: {state:?}"))
                })
            })
            .await
        }
        Change::Decommission { node, call } => {
            let first = call.await.unwrap_or_else(|e| e.to_string());
            let mut last = first.clone();
            let mut asked = 1;
            let what = || format!("node {node} to be decommissioned");
            until(what, FINISH_CHANGE, ASK_AGAIN, async || {
                let status = settled_view(cluster).await?;
                let state = status
                    .nodes
                    .iter()
                    .find(|n| n.id == node)
                    .map(|n| n.state.clone());
                let holds: Vec<u32> = status
                    .placement
                    .iter()
                    .filter(|p| p.replicas.contains(&node) || p.learners.contains(&node))
                    .map(|p| p.id)
                    .collect();
                if state.as_deref() == Some("decommissioned") && holds.is_empty() {
                    return Ok(Look::Done((
                        true,
                        format!("node {node} decommissioned after {asked} asks (first: {first})"),
                    )));
                }
                let seen = format!("state {state:?}, holding {holds:?}; last answer: {last}");
                let driver = others(&cluster.responsive(), node)
                    .choose(rng)
                    .copied()
                    .ok_or_else(|| ChaosError::Misuse("no node to drive it".into()))?;
                asked += 1;
                last = match cluster.client(driver)?.decommission(node).await {
                    Ok(answer) => format!("moved {} replicas", answer.moved.len()),
                    Err(e) => e.to_string(),
                };
                Ok(Look::NotYet(seen))
            })
            .await
        }
        Change::Move {
            shard,
            from,
            to,
            call,
            cut,
        } => {
            let first = call.await.unwrap_or_else(|e| e.to_string());
            let mut asked = 1;
            let what = || format!("the move of group {shard} from node {from} to node {to}");
            until(what, FINISH_CHANGE, ASK_AGAIN, async || {
                let driver = cluster
                    .responsive()
                    .choose(rng)
                    .copied()
                    .ok_or_else(|| ChaosError::Misuse("no node to drive it".into()))?;
                asked += 1;
                Ok(
                    match cluster.client(driver)?.move_replica(shard, from, to).await {
                        Ok(answer) => Look::Done((
                            cut,
                            format!(
                            "the move finished after {asked} asks (first: {first}); voters {:?}",
                            answer.voters
                        ),
                        )),
                        // Moot: another change (rebalancing) moved the replica meanwhile.
                        Err(e) if e.code() == Some("bad_move") => Look::Done((
                            cut,
                            format!("the move was overtaken: {e} (first: {first})"),
                        )),
                        Err(e) => Look::NotYet(e.to_string()),
                    },
                )
            })
            .await
        }
    }
}

/// The cluster as the first responsive node that knows every group's placement sees
/// it.
async fn settled_view(cluster: &Cluster) -> Result<ClusterStatus> {
    let what = || "a node's view of the placement".to_string();
    until(what, FIND_LEADER, LOOK_AGAIN, async || {
        let mut last = String::from("no responsive node");
        for node in cluster.responsive() {
            match cluster.status(node).await {
                Ok(status) if !status.placement.is_empty() => return Ok(Look::Done(status)),
                Ok(_) => last = format!("node {node} knows no placement"),
                Err(e) => last = e.to_string(),
            }
        }
        Ok(Look::NotYet(last))
    })
    .await
}

/// What one look at the cluster found: the answer, or what it saw instead.
enum Look<T> {
    Done(T),
    NotYet(String),
}

/// Look until `look` finds its answer, pausing `pause` between looks, for at most
/// `waited`; then fail naming `what` and what the last look saw. An error from a look
/// ends the wait at once.
async fn until<T>(
    what: impl FnOnce() -> String,
    waited: Duration,
    pause: Duration,
    mut look: impl AsyncFnMut() -> Result<Look<T>>,
) -> Result<T> {
    let deadline = Instant::now() + waited;
    loop {
        let last = match look().await? {
            Look::Done(answer) => return Ok(answer),
            Look::NotYet(last) => last,
        };
        if Instant::now() > deadline {
            return Err(ChaosError::Timeout {
                what: what(),
                waited,
                last,
            });
        }
        tokio::time::sleep(pause).await;
    }
}

/// Members in the state `active`.
fn active_members(cluster: &Cluster, status: &ClusterStatus) -> Vec<NodeId> {
    let members = cluster.ids();
    status
        .nodes
        .iter()
        .filter(|n| n.state == "active" && members.contains(&n.id))
        .map(|n| n.id)
        .collect()
}

/// The most replicas any group has.
fn widest_group(status: &ClusterStatus) -> usize {
    status
        .placement
        .iter()
        .map(|p| p.replicas.len())
        .max()
        .unwrap_or(0)
}

fn others(ids: &[NodeId], node: NodeId) -> Vec<NodeId> {
    ids.iter().copied().filter(|&o| o != node).collect()
}
