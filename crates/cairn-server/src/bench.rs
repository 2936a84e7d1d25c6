//! `cairn bench`: write and read throughput and latency against a running cluster.
//!
//! Many concurrent clients, spread over the given endpoints, first write a key space
//! for `--duration`, then read it back (linearizable reads) for `--duration`. With
//! `--snapshots`, it instead preloads `--keys` keys and measures snapshots: their
//! latency, point-in-time versus current reads, and writes with and without a snapshot
//! every 100 ms. Figures are printed, never asserted: this is a measuring tool.

use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::Client;
use futures::StreamExt as _;

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
    /// Measure snapshots instead (see the module doc).
    #[arg(long)]
    snapshots: bool,
    /// Shard count of the cluster (to preload with single-shard batches).
    #[arg(long, default_value_t = 8)]
    shards: u32,
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
    if args.snapshots {
        return snapshots(&args, &endpoints, value).await;
    }
    for write in [true, false] {
        let phase = phase(&args, &endpoints, value.clone(), write, None).await;
        report(if write { "writes" } else { "reads" }, phase);
    }
    Ok(())
}

async fn snapshots(
    args: &BenchArgs,
    endpoints: &[String],
    value: Arc<Vec<u8>>,
) -> anyhow::Result<()> {
    let client = Client::new(endpoints[0].clone());
    // Preload with single-shard batches of 500 keys, 8 in flight.
    let started = Instant::now();
    let mut by_shard: Vec<Vec<u64>> = vec![Vec::new(); args.shards as usize];
    for i in 0..args.keys {
        let shard = cairn_store::shard_for_key(key(i).as_bytes(), args.shards);
        by_shard[shard as usize].push(i);
    }
    let batches: Vec<Vec<u64>> = by_shard
        .into_iter()
        .flat_map(|ids| ids.chunks(500).map(<[u64]>::to_vec).collect::<Vec<_>>())
        .collect();
    let mut loaded = futures::stream::iter(batches.into_iter().enumerate().map(|(n, ids)| {
        let client = Client::new(endpoints[n % endpoints.len()].clone());
        let value = value.clone();
        async move {
            let ops = ids
                .iter()
                .map(|&i| cairn_client::api::BatchOp::put(key(i).as_bytes(), &value))
                .collect();
            client.batch(ops).await
        }
    }))
    .buffer_unordered(8);
    let mut failed = 0;
    while let Some(result) = loaded.next().await {
        failed += usize::from(result.is_err());
    }
    anyhow::ensure!(failed == 0, "{failed} preload batches failed");
    println!(
        "preloaded {} keys in {:.1} s",
        args.keys,
        started.elapsed().as_secs_f64()
    );

    let mut latencies = Vec::new();
    let mut last = None;
    for _ in 0..20 {
        let t = Instant::now();
        last = Some(client.create_snapshot(None).await?);
        latencies.push(t.elapsed());
    }
    report_latencies("snapshot", &mut latencies);
    let snapshot = last.map(|s| s.id.to_string()).unwrap_or_default();

    for at in [None, Some(cairn_client::ReadAt::Snapshot(snapshot))] {
        let mut latencies = Vec::new();
        for n in 0..2000u64 {
            let k = key((n * 7919) % args.keys);
            let t = Instant::now();
            match &at {
                None => drop(client.get(k.as_bytes()).await?),
                Some(at) => drop(client.get_at(k.as_bytes(), at).await?),
            }
            latencies.push(t.elapsed());
        }
        report_latencies(
            if at.is_some() {
                "read@snapshot"
            } else {
                "read latest"
            },
            &mut latencies,
        );
    }

    for every in [None, Some(Duration::from_millis(100))] {
        let phase = phase(args, endpoints, value.clone(), true, every).await;
        report(
            if every.is_some() {
                "writes+snap/100ms"
            } else {
                "writes"
            },
            phase,
        );
    }
    Ok(())
}

fn key(i: u64) -> String {
    format!("bench/{i:08}")
}

fn report_latencies(name: &str, latencies: &mut [Duration]) {
    latencies.sort_unstable();
    let pct = |p: f64| {
        let i = ((latencies.len() as f64 * p) as usize).min(latencies.len().saturating_sub(1));
        latencies
            .get(i)
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{name:>18}: n={}  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

async fn phase(
    args: &BenchArgs,
    endpoints: &[String],
    value: Arc<Vec<u8>>,
    write: bool,
    snapshot_every: Option<Duration>,
) -> Phase {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let snapshotter = snapshot_every.map(|every| {
        let client = Client::new(endpoints[0].clone());
        tokio::spawn(async move {
            let mut taken = 0u64;
            while Instant::now() < deadline {
                if client.create_snapshot(None).await.is_ok() {
                    taken += 1;
                }
                tokio::time::sleep(every).await;
            }
            taken
        })
    });
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
                    let key = key((n * 7919) % keys);
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
    if let Some(snapshotter) = snapshotter {
        if let Ok(taken) = snapshotter.await {
            println!("  ({taken} snapshots taken during the phase)");
        }
    }
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
        "{name:>18}: {:>9.0} ops/s  ({} ok, {} errors in {:.1} s)  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        phase.ops as f64 / phase.elapsed.as_secs_f64(),
        phase.ops,
        phase.errors,
        phase.elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
}
