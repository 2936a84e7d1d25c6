//! `cairn-sim`: run many seeds of the deterministic simulation, or replay one.
//!
//! ```text
//! cargo run -p cairn-sim --release -- --seeds 10000 --from 1
//! cargo run -p cairn-sim --release -- --seed 4242 --profile default
//! ```
//!
//! Exits non-zero on the first failing seed (or after all, with `--keep-going`),
//! printing the violation and the command that replays it.

use std::time::Instant;

use anyhow::{bail, Context};
use clap::Parser;

#[derive(Parser, Debug)]
#[command(about = "Deterministic simulation of Cairn's replicas: many seeds, or one replayed")]
struct Args {
    /// Replay exactly this seed (prints its report).
    #[arg(long)]
    seed: Option<u64>,
    /// How many consecutive seeds to run.
    #[arg(long, default_value_t = 100)]
    seeds: u64,
    /// The first seed of the range.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// default (8 s of faults), long (30 s), installs (snapshot installs crashed), or calm
    /// (no faults).
    #[arg(long, default_value = "default")]
    profile: String,
    /// Run every seed even after a failure.
    #[arg(long)]
    keep_going: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    cairn_sim::profile(&args.profile)
        .with_context(|| format!("no profile named {:?}", args.profile))?;
    if let Some(seed) = args.seed {
        let started = Instant::now();
        match cairn_sim::run_profile(seed, &args.profile) {
            Ok(report) => {
                println!("{report:#?}");
                println!("passed in {:.2?}", started.elapsed());
                return Ok(());
            }
            Err(failure) => bail!("{failure}"),
        }
    }
    let started = Instant::now();
    let (mut passed, mut failed) = (0u64, Vec::new());
    let (mut ops, mut faults, mut virtual_ms) = (0u64, 0u64, 0u64);
    for seed in args.from..args.from + args.seeds {
        match cairn_sim::run_profile(seed, &args.profile) {
            Ok(r) => {
                passed += 1;
                ops += r.checked.ops;
                virtual_ms += r.virtual_ms;
                faults += r.faults.total();
            }
            Err(failure) => {
                eprintln!("{failure}");
                failed.push(seed);
                if !args.keep_going {
                    break;
                }
            }
        }
        let done = passed + failed.len() as u64;
        if done.is_multiple_of(100) {
            eprintln!(
                "{done} seeds, {} failed, {:.1} seeds/s",
                failed.len(),
                done as f64 / started.elapsed().as_secs_f64()
            );
        }
    }
    let secs = started.elapsed().as_secs_f64();
    let done = passed + failed.len() as u64;
    println!(
        "{done} seeds from {} ({} profile): {passed} passed, {} failed {failed:?}; {ops} operations checked, {faults} faults injected, {:.0} virtual s; {secs:.1} s wall, {:.2} seeds/s",
        args.from,
        args.profile,
        failed.len(),
        virtual_ms as f64 / 1000.0,
        done as f64 / secs
    );
    if !failed.is_empty() {
        bail!("{} seeds failed", failed.len());
    }
    Ok(())
}
