//! Deterministic simulation of Cairn's own replica code.
//!
//! A simulated run is three nodes, each with one real sled database holding a real
//! [`Replica`](cairn_raft::replica::Replica) of every shard: the same Ready handling,
//! apply, alignment holds, lock waits and read barriers, the same `RaftLog` and
//! `ShardState` on sled, the same Raft snapshot export, stage and install. What is not
//! real is everything around them, replaced by deterministic stand-ins: a virtual
//! clock that ticks the replicas ([`clock`]), a virtual network that loses, delays,
//! reorders and duplicates their messages and partitions the nodes ([`network`]), a
//! disk that forgets what was never synced when a node crashes ([`node`]), and
//! clients that propose writes, reads and transactions the way Cairn's router does
//! ([`workload`]). The meta group is one more real replicated group on every node;
//! the snapshot and transaction coordinators and their sweepers run the production
//! crates' own I/O-free machines (`cairn_snapshot::{Marking, epoch}`,
//! `cairn_txn::{Ballot, decision}`) against it through the same faulty network, so
//! the registry, the gate and the commit decisions under test are the shipped code.
//!
//! Everything is drawn from one seeded generator and runs on one thread in virtual
//! time, so a seed is a complete description of a run: the same seed gives the same
//! interleaving, the same faults and the same history, which [`Report::trace`]
//! fingerprints. A failing seed is a bug report that replays exactly.
//!
//! After the active phase the nemesis heals everything; the run then waits for the
//! cluster to finish what was in flight, commit a final write on every shard and
//! converge, and runs the [`check`]s: linearizability per key, no acknowledged write
//! lost, no write applied twice, replicas equal (the meta group's too), alignment
//! holds respected, the snapshot guarantees, and the meta group's records against
//! what was observed (the gate kept in its log).
//!
//! Not simulated: the TCP transport and the HTTP API (their retries and batching are
//! modelled, not run), the async shells of the coordinators (their timers, parallel
//! sends and crash points; the simulator sends their steps itself), automatic
//! snapshots' schedule, history GC, and sled's own recovery from torn files (a crash
//! restarts from a logical image; see `cairn_store::StoreImage`).

pub mod check;
pub mod clock;
pub mod config;
mod epochs;
mod faults;
pub mod history;
mod meta;
pub mod network;
pub mod node;
mod sweeper;
mod txns;
pub mod workload;
pub mod world;

use std::collections::BTreeMap;

use cairn_store::{ShardId, ShardState};

pub use config::SimConfig;

use crate::check::{CheckStats, ShardFinal};
use crate::network::NetStats;
use crate::node::DiskStats;
use crate::world::{FaultStats, World};

/// What a passing run did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    pub seed: u64,
    pub shards: u32,
    /// Virtual time the run took.
    pub virtual_ms: u64,
    pub events: u64,
    pub checked: CheckStats,
    pub faults: FaultStats,
    pub net: NetStats,
    pub disk: DiskStats,
    pub raft_snapshots_installed: u64,
    /// Batches of reads served on a leader lease (only with `lease_reads`).
    pub lease_reads: u64,
    /// A fingerprint of the history and the final replicas: equal for equal seeds.
    pub trace: u64,
}

/// A failing run: what went wrong and how to see it again.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("seed {seed} failed ({profile} profile): {message}\nreplay: {replay}")]
pub struct Failure {
    pub seed: u64,
    pub profile: String,
    pub message: String,
    pub replay: String,
}

/// The command that replays `seed` with the named profile.
pub fn replay_command(seed: u64, profile: &str) -> String {
    format!("cargo run -p cairn-sim --release -- --profile {profile} --seed {seed}   (or: CAIRN_SIM_SEED={seed} CAIRN_SIM_PROFILE={profile} cargo test -p cairn-sim --test seeds replay -- --nocapture)")
}

/// A named configuration, so a failing seed names everything needed to replay it.
pub fn profile(name: &str) -> Option<SimConfig> {
    match name {
        "default" => Some(SimConfig::default()),
        "long" => Some(SimConfig::long()),
        "installs" => Some(SimConfig::installs()),
        "leases" => Some(SimConfig::leases()),
        "calm" => Some(SimConfig {
            faults: false,
            ..SimConfig::default()
        }),
        _ => None,
    }
}

/// Run one seed with the named profile.
pub fn run_profile(seed: u64, name: &str) -> Result<Report, Failure> {
    let cfg = profile(name).ok_or_else(|| Failure {
        seed,
        profile: name.to_owned(),
        message: format!("no profile named {name:?} (default, long, installs, leases, calm)"),
        replay: String::new(),
    })?;
    run(seed, name, cfg)
}

/// Run one seed: simulate, settle, check. A panic inside Cairn's code (raft-rs's
/// fatal checks among them) is a failure of the seed like any other.
pub fn run(seed: u64, profile: &str, cfg: SimConfig) -> Result<Report, Failure> {
    let failure = |message: String| Failure {
        seed,
        profile: profile.to_owned(),
        message,
        replay: replay_command(seed, profile),
    };
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_checked(seed, cfg))) {
        Ok(result) => result.map_err(failure),
        Err(panic) => {
            let what = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_else(|| "a panic without a message".to_owned());
            Err(failure(format!("panicked: {what}")))
        }
    }
}

fn run_checked(seed: u64, cfg: SimConfig) -> Result<Report, String> {
    let mut world = World::new(seed, cfg)?;
    world.run()?;
    let (finals, digests, (meta, meta_at)) = converge(&world)?;
    let shards = world.shards;
    let shard_of = |key: &str| cairn_store::shard_for_key(key.as_bytes(), shards);
    // The registry's word on each epoch is what the snapshot checks hold it to.
    let mut history = world.history.clone();
    let mut violations =
        check::registry::check(&mut history, &world.work.epochs.reported, &meta, meta_at);
    let checked = match check::all(&history, &finals, &shard_of) {
        Ok(stats) if violations.is_empty() => stats,
        Ok(_) => return Err(violations.join("\n")),
        Err(more) => {
            violations.extend(more);
            return Err(violations.join("\n"));
        }
    };

    let mut trace = xxhash_rust::xxh3::Xxh3::new();
    trace.update(format!("{:?}", world.history).as_bytes());
    trace.update(format!("{digests:?}").as_bytes());
    let mut disk = DiskStats::default();
    let mut installed = 0;
    let mut lease_reads = 0;
    for n in &world.nodes {
        lease_reads += n.lease_reads();
        let d = n.disk_stats();
        disk.syncs += d.syncs;
        disk.images += d.images;
        installed += n.snapshots_installed();
    }
    Ok(Report {
        seed,
        shards,
        virtual_ms: world.clock.now(),
        events: world.events,
        checked,
        faults: world.faults.clone(),
        net: world.net.stats.clone(),
        disk,
        raft_snapshots_installed: installed,
        lease_reads,
        trace: trace.digest(),
    })
}

/// Compare every group's replicas at their common applied index and read the trees:
/// the data shards' finals, every group's digest, and the meta group's state with
/// the index it was compared at.
type Converged = (
    BTreeMap<ShardId, ShardFinal>,
    BTreeMap<ShardId, u64>,
    (ShardState, u64),
);

fn converge(world: &World) -> Result<Converged, String> {
    let mut finals = BTreeMap::new();
    let mut digests = BTreeMap::new();
    let mut meta = None;
    for shard in 0..=world.shards {
        let applied = world.applied(shard);
        let at = applied.iter().map(|&(_, a)| a).min().unwrap_or(0);
        let replicas: Vec<_> = world
            .nodes
            .iter()
            .filter_map(|n| {
                let live = n.live.as_ref()?;
                Some((n.id, live.states[shard as usize].clone()))
            })
            .collect();
        let digest = check::convergence::check(shard, &replicas, at)?;
        digests.insert(shard, digest);
        let (_, state) = replicas
            .first()
            .ok_or_else(|| format!("shard {shard}: no live replica to read"))?;
        if shard == world.shards {
            meta = Some((state.clone(), at));
        } else {
            finals.insert(shard, ShardFinal::read(state, at)?);
        }
    }
    let meta = meta.ok_or_else(|| "the meta group has no live replica".to_owned())?;
    Ok((finals, digests, meta))
}
