//! `cairn-chaos`: black-box fault-injection runs against real `cairn` processes.
//!
//! Two modes:
//!
//! - **replay / one run**: `--faults kill-leader,loss,...` plays exactly those faults
//!   in one run with `--seed` (what a failure prints);
//! - **soak** (no `--faults`): runs of `--round` length back to back for `--duration`,
//!   each on a fresh cluster with a fault about every `--fault-every`, kinds drawn by
//!   the seed. Every round prints its figures; the first failing round stops the soak
//!   and prints the exact command that replays it.
//!
//! The `cairn` binary is looked up next to this one (`cargo build` puts both in
//! `target/<profile>/`) unless `--cairn-bin` says otherwise.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_chaos::nemesis::FaultKind;
use cairn_chaos::{Run, Scenario};
use clap::Parser;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

#[derive(Parser)]
#[command(
    name = "cairn-chaos",
    about = "Fault-injection runs against a real Cairn cluster"
)]
struct Args {
    /// Seed of every choice (printed; default: from the clock).
    #[arg(long)]
    seed: Option<u64>,
    /// Play exactly these faults, in order, in one run (comma-separated:
    /// kill-follower, kill-leader, pause, restart-all, partition, isolate-leader,
    /// one-way, loss, delay, duplicate, slow-markers, crash-point). `crash-point`
    /// needs a `cairn` built by `cargo build -p cairn-server --features failpoints`.
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Soak: total time (e.g. 30m).
    #[arg(long, default_value = "5m")]
    duration: humantime::Duration,
    /// Soak: length of one run (one fresh cluster).
    #[arg(long, default_value = "60s")]
    round: humantime::Duration,
    /// Soak: about one fault this often.
    #[arg(long, default_value = "10s")]
    fault_every: humantime::Duration,
    /// The `cairn` binary (default: next to this one).
    #[arg(long)]
    cairn_bin: Option<PathBuf>,
    /// Workload clients per run.
    #[arg(long, default_value_t = 10)]
    clients: usize,
    /// Nodes per cluster (with `--server-args "--replication-factor 3"`, more nodes
    /// than replicas).
    #[arg(long, default_value_t = 3)]
    nodes: usize,
    /// Nodes that `join` faults add to the running cluster (at most one join each).
    #[arg(long, default_value_t = 0)]
    spares: usize,
    /// Put values of this many bytes, under scaled-down size limits (pages, entries
    /// and frames near their caps); 0: small values.
    #[arg(long, default_value_t = 0)]
    value_bytes: usize,
    /// More flags for every node's `cairn server` command line, as one string split at
    /// spaces (e.g. `--server-args "--lease-reads true"`).
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    server_args: String,
    /// Run the nodes with TLS (HTTPS, mutual TLS between peers); process faults only.
    #[arg(long)]
    tls: bool,
}

fn cairn_binary(args: &Args) -> anyhow::Result<PathBuf> {
    if let Some(path) = &args.cairn_bin {
        return Ok(path.clone());
    }
    let me = std::env::current_exe().context("locating this executable")?;
    let path = me.with_file_name("cairn");
    if !path.exists() {
        bail!(
            "no cairn binary at {} (build it with `cargo build -p cairn-server`, or pass --cairn-bin)",
            path.display()
        );
    }
    Ok(path)
}

fn parse_faults(names: &[String]) -> anyhow::Result<Vec<FaultKind>> {
    names
        .iter()
        .map(|n| {
            FaultKind::parse(n.trim()).with_context(|| {
                let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
                format!("unknown fault `{n}` (known: {})", known.join(", "))
            })
        })
        .collect()
}

fn replay_command(seed: u64, faults: &[FaultKind], args: &Args) -> String {
    let names: Vec<&str> = faults.iter().map(|f| f.name()).collect();
    format!(
        "cargo build -p cairn-server --features failpoints && cargo build -p cairn-chaos && target/debug/cairn-chaos --seed {seed} --faults {} --nodes {} --spares {} --clients {} --value-bytes {} --server-args {:?}{}",
        names.join(","),
        args.nodes,
        args.spares,
        args.clients,
        args.value_bytes,
        args.server_args,
        if args.tls { " --tls" } else { "" }
    )
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,cairn_chaos=info")),
        )
        .with_writer(std::io::stderr)
        .init();
    if args.nodes == 0 || args.nodes > 9 {
        bail!("--nodes must be from 1 to 9");
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let binary = cairn_binary(&args)?;
    eprintln!(
        "cairn-chaos: seed {seed}, cairn binary {}",
        binary.display()
    );
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        if !args.faults.is_empty() {
            let faults = parse_faults(&args.faults)?;
            let mut scenario = Scenario::new("replay", seed, faults.clone(), &binary);
            if args.value_bytes > 0 {
                scenario = scenario.with_large_values(args.value_bytes);
            }
            scenario.clients = args.clients;
            scenario.nodes = args.nodes;
            scenario.spares = args.spares;
            scenario.tls = args.tls;
            scenario
                .server_args
                .extend(args.server_args.split_whitespace().map(String::from));
            scenario.replay = replay_command(seed, &faults, &args);
            return one(&scenario).await;
        }
        let total: Duration = args.duration.into();
        let round: Duration = args.round.into();
        let every: Duration = args.fault_every.into();
        let per_round = (round.as_secs_f64() / every.as_secs_f64().max(1.0))
            .round()
            .max(1.0) as usize;
        let mut rng = StdRng::seed_from_u64(seed);
        let started = Instant::now();
        let mut index = 0;
        while started.elapsed() < total {
            let round_seed: u64 = rng.gen();
            let faults = soak_faults(&mut rng, per_round, &args);
            let mut scenario =
                Scenario::new(format!("soak-{index}"), round_seed, faults.clone(), &binary);
            if args.value_bytes > 0 {
                scenario = scenario.with_large_values(args.value_bytes);
            }
            scenario.clients = args.clients;
            scenario.nodes = args.nodes;
            scenario.spares = args.spares;
            scenario.tls = args.tls;
            scenario
                .server_args
                .extend(args.server_args.split_whitespace().map(String::from));
            // A fault about every `every`: the hold and the recovery take part of it.
            scenario.gap = (every.mul_f64(0.2), every.mul_f64(0.5));
            scenario.replay = replay_command(round_seed, &faults, &args);
            one(&scenario).await?;
            index += 1;
        }
        eprintln!(
            "cairn-chaos: {index} runs passed in {:.0?}",
            started.elapsed()
        );
        Ok(())
    })
}

/// A soak round's faults, drawn at random among those the cluster has room for:
/// `join` while spares remain, and membership changes only with more nodes than the
/// default three replicas (one decommission per round, so enough nodes stay active).
fn soak_faults(rng: &mut StdRng, count: usize, args: &Args) -> Vec<FaultKind> {
    let mut spares = args.spares;
    // More founders than a group's three replicas: a move has somewhere to go, and a
    // decommission leaves three active nodes.
    let room = args.nodes > 3;
    let mut decommissions = usize::from(room);
    let mut faults = Vec::with_capacity(count);
    while faults.len() < count {
        let kind = FaultKind::ALL[rng.gen_range(0..FaultKind::ALL.len())];
        let fits = match kind {
            FaultKind::Join if spares > 0 => {
                spares -= 1;
                true
            }
            FaultKind::Join => false,
            FaultKind::Decommission if decommissions > 0 && room => {
                decommissions -= 1;
                true
            }
            FaultKind::Decommission => false,
            FaultKind::MoveKill => room,
            // No peer-link proxy under TLS.
            network if args.tls && network.is_network() => false,
            _ => true,
        };
        if fits {
            faults.push(kind);
        }
    }
    faults
}

async fn one(scenario: &Scenario) -> anyhow::Result<()> {
    eprintln!(
        "cairn-chaos: run {} seed {} faults {:?}",
        scenario.name, scenario.seed, scenario.faults
    );
    let report = Run::execute(scenario).await?;
    if !report.passed() {
        bail!("{}", report.failure());
    }
    eprintln!("{}", report.summary());
    Ok(())
}
