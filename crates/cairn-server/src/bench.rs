//! `cairn bench`: write and read throughput and latency against a running cluster.
//!
//! Many concurrent clients, spread over the given endpoints, first write a key space
//! for `--duration`, then read it back (linearizable reads) for `--duration`. Figures
//! are printed, never asserted: this is a measuring tool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::Client;

#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Comma-separated HTTP addresses of the nodes.
    #[arg(
        long,
        default_value = "http://127.0.0.1:8081,http://127.0.0.1:8082,http://127.0.0.1:8083"
    )]
    endpoints: String,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
}

struct Phase {
    ops: u64,
    errors: u64,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let endpoints: Vec<String> = args.endpoints.split(',').map(str::to_owned).collect();
    anyhow::ensure!(!endpoints.is_empty(), "no endpoints");
    anyhow::ensure!(
        args.keys > 0 && args.concurrency > 0,
        "keys and concurrency must be positive"
    );
    let value = Arc::new(vec![b'x'; args.value_size]);
    println!(
        "cairn bench: {} clients over {} endpoints, {} keys, {} B values, {} s per phase",
        args.concurrency,
        endpoints.len(),
        args.keys,
        args.value_size,
        args.duration
    );
    for write in [true, false] {
        let phase = phase(&args, &endpoints, value.clone(), write).await;
        report(if write { "writes" } else { "reads" }, phase);
    }
    Ok(())
}

async fn phase(args: &BenchArgs, endpoints: &[String], value: Arc<Vec<u8>>, write: bool) -> Phase {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let tasks: Vec<_> = (0..args.concurrency)
        .map(|i| {
            let client = Client::new(endpoints[i % endpoints.len()].clone());
            let value = value.clone();
            let keys = args.keys;
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut errors = 0;
                let mut n = i as u64;
                while Instant::now() < deadline {
                    let key = format!("bench/{:08}", (n * 7919) % keys);
                    n += 1;
                    let t = Instant::now();
                    let ok = if write {
                        client.put(key.as_bytes(), &value).await.is_ok()
                    } else {
                        client.get(key.as_bytes()).await.is_ok()
                    };
                    if ok {
                        latencies.push(t.elapsed());
                    } else {
                        errors += 1;
                    }
                }
                (latencies, errors)
            })
        })
        .collect();
    let mut all = Phase {
        ops: 0,
        errors: 0,
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        if let Ok((latencies, errors)) = task.await {
            all.ops += latencies.len() as u64;
            all.errors += errors;
            all.latencies.extend(latencies);
        }
    }
    all.elapsed = start.elapsed();
    all
}

fn report(name: &str, mut phase: Phase) {
    phase.latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((phase.latencies.len() as f64 * p) as usize)
            .min(phase.latencies.len().saturating_sub(1));
        phase
            .latencies
            .get(i)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{name:>6}: {:>9.0} ops/s  ({} ok, {} errors in {:.1} s)  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        phase.ops as f64 / phase.elapsed.as_secs_f64(),
        phase.ops,
        phase.errors,
        phase.elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
}
