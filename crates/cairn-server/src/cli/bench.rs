//! `cairn bench`: write and read throughput and latency against a running cluster.
//!
//! Many concurrent clients, spread over the given endpoints, first write a key space
//! for `--duration`, then read it back (linearizable reads) for `--duration`; with
//! `--batch-keys N`, a third phase writes batches of N keys each, which fall in several
//! shards and so are cross-shard transactions. With
//! `--snapshots`, it instead preloads `--keys` keys and measures snapshots: their
//! latency, point-in-time versus current reads, and writes with and without a snapshot
//! every 100 ms. With `--backup`, it preloads `--keys` keys and measures backups: writes
//! alone, a full backup alone (time, throughput, size against the live data), a second
//! full backup while the same write phase runs (writes counted only while it runs, if
//! it ends first), an incremental holding what that phase wrote, and restore
//! throughput of the full and of the chain (the `cairn-backup` library called in this
//! process into a temporary directory, removed afterwards). Backups go to
//! `--destination`, kept afterwards, or else to a temporary directory removed at the
//! end; either way this process reads them back, so it must be reachable from here (a
//! local directory with the cluster on this machine, or `s3://`). `--random-values`
//! writes incompressible values instead of `x` repeated. Figures are printed, never
//! asserted: this is a measuring tool.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use cairn_backup::restore::{self, Target};
use cairn_backup::{Destination, S3Options};
use cairn_client::api::{BackupInfo, CreateBackup};
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
    #[command(flatten)]
    credentials: super::client::Credentials,
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
    /// Measure backups and restore instead (see the module doc).
    #[arg(long, conflicts_with = "snapshots")]
    backup: bool,
    /// With `--backup`: where the cluster writes the backups (a directory, made
    /// absolute here, or a URL). Default: a temporary directory, removed afterwards.
    #[arg(long, requires = "backup")]
    destination: Option<String>,
    /// Write pseudo-random (incompressible) values, different for every key and write,
    /// instead of `x` repeated.
    #[arg(long)]
    random_values: bool,
    /// After the write and read phases, a phase of batches of this many keys
    /// (spread over shards: cross-shard transactions). 0: no such phase.
    #[arg(long, default_value_t = 0)]
    batch_keys: usize,
    /// Shard count of the cluster (to preload with single-shard batches).
    #[arg(long, default_value_t = 8)]
    shards: u32,
}

struct Phase {
    /// When the phase started.
    start: Instant,
    /// Per successful operation: when it completed (since `start`) and its latency.
    samples: Vec<(Duration, Duration)>,
    /// When each failed operation completed (since `start`), and why it failed.
    errors: Vec<(Duration, String)>,
    elapsed: Duration,
}

/// The values written: `x` repeated, or with `--random-values` pseudo-random bytes
/// that differ for every key and every write.
#[derive(Clone)]
struct Values {
    fixed: Arc<Vec<u8>>,
    random: bool,
}

impl Values {
    /// The value of key `key` in write `write` (0: the preload; each write phase's
    /// client numbers its writes so that no two are equal).
    fn get(&self, key: u64, write: u64) -> Cow<'_, [u8]> {
        if !self.random {
            return Cow::Borrowed(self.fixed.as_slice());
        }
        // splitmix64, seeded by the key and the write.
        let mut state = key.wrapping_mul(0x9E37_79B9_7F4A_7C15)
            ^ write.wrapping_add(1).wrapping_mul(0xD1B5_4A32_D192_ED03);
        let size = self.fixed.len();
        let mut out = Vec::with_capacity(size + 8);
        while out.len() < size {
            state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = state;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            out.extend_from_slice(&(z ^ (z >> 31)).to_le_bytes());
        }
        out.truncate(size);
        Cow::Owned(out)
    }
}

impl Phase {
    /// Only the operations that completed between `from` and `to`.
    fn window(&self, from: Instant, to: Instant) -> Phase {
        let lo = from.saturating_duration_since(self.start);
        let hi = to.saturating_duration_since(self.start).min(self.elapsed);
        let inside = |at: &Duration| lo <= *at && *at <= hi;
        Phase {
            start: self.start + lo,
            samples: self
                .samples
                .iter()
                .filter(|(at, _)| inside(at))
                .copied()
                .collect(),
            errors: self
                .errors
                .iter()
                .filter(|(at, _)| inside(at))
                .cloned()
                .collect(),
            elapsed: hi.saturating_sub(lo),
        }
    }
}

pub async fn run(args: BenchArgs) -> anyhow::Result<()> {
    let endpoints: Vec<String> = args.endpoints.split(',').map(str::to_owned).collect();
    anyhow::ensure!(!endpoints.is_empty(), "no endpoints");
    // Check the token once, so every later client can be made without failing.
    args.credentials.client(&endpoints[0])?;
    anyhow::ensure!(
        args.keys > 0 && args.concurrency > 0 && args.shards > 0,
        "keys, concurrency and shards must be positive"
    );
    let value = Values {
        fixed: Arc::new(vec![b'x'; args.value_size]),
        random: args.random_values,
    };
    println!(
        "cairn bench: {} clients over {} endpoints, {} keys, {} B {} values, {} s per phase",
        args.concurrency,
        endpoints.len(),
        args.keys,
        args.value_size,
        if args.random_values { "random" } else { "'x'" },
        args.duration
    );
    if args.snapshots {
        return snapshots(&args, &endpoints, value).await;
    }
    if args.backup {
        return backup(&args, &endpoints, value).await;
    }
    for workload in [Workload::Put, Workload::Get] {
        let phase = phase(&args, &endpoints, value.clone(), workload, None).await;
        report(workload.name(), phase);
    }
    if args.batch_keys > 0 {
        let workload = Workload::Batch(args.batch_keys);
        let phase = phase(&args, &endpoints, value.clone(), workload, None).await;
        report(workload.name(), phase);
    }
    Ok(())
}

impl BenchArgs {
    /// A client of `endpoint` with its own connection pool.
    fn connect(&self, endpoint: &str) -> Client {
        self.credentials
            .client(endpoint)
            .expect("the token was checked when the bench started")
    }
}

async fn snapshots(args: &BenchArgs, endpoints: &[String], value: Values) -> anyhow::Result<()> {
    let client = args.connect(&endpoints[0]);
    preload(args, endpoints, &value).await?;

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
        let phase = phase(args, endpoints, value.clone(), Workload::Put, every).await;
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

/// Write every key once, with single-shard batches of 500 keys, 8 in flight.
async fn preload(args: &BenchArgs, endpoints: &[String], value: &Values) -> anyhow::Result<()> {
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
        let client = args.connect(&endpoints[n % endpoints.len()]);
        let value = value.clone();
        async move {
            let ops = ids
                .iter()
                .map(|&i| cairn_client::api::BatchOp::put(key(i).as_bytes(), &value.get(i, 0)))
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
    Ok(())
}

const MIB: f64 = 1024.0 * 1024.0;

/// `n` per second over `elapsed` (0 for an empty interval).
fn per_sec(n: f64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        n / secs
    } else {
        0.0
    }
}

/// A name no other run uses, for temporary directories.
fn unique(prefix: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    std::env::temp_dir().join(format!("{prefix}-{}-{nanos}", std::process::id()))
}

async fn backup(args: &BenchArgs, endpoints: &[String], value: Values) -> anyhow::Result<()> {
    // The node writes the backup and this process reads it back, so a directory is
    // made absolute (the node may run elsewhere in the file system's tree).
    let (url, temporary) = match &args.destination {
        Some(d) if d.contains("://") => (d.clone(), None),
        Some(d) => {
            let abs = std::path::absolute(d).with_context(|| format!("--destination {d}"))?;
            (abs.display().to_string(), None)
        }
        None => {
            let dir = unique("cairn-bench-backups");
            (dir.display().to_string(), Some(dir))
        }
    };
    println!(
        "backups go to {url}{}; the node's --backup-rate-limit applies (default 128 MiB/s of uncompressed reads)",
        if temporary.is_some() {
            " (removed afterwards)"
        } else {
            ""
        }
    );
    let result = backup_and_restore(args, endpoints, value, &url).await;
    if let Some(dir) = temporary {
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("could not remove {}: {e}", dir.display());
            }
        }
    }
    result
}

async fn backup_and_restore(
    args: &BenchArgs,
    endpoints: &[String],
    value: Values,
    url: &str,
) -> anyhow::Result<()> {
    let client = args.connect(&endpoints[0]);
    preload(args, endpoints, &value).await?;
    let live: u64 = (0..args.keys)
        .map(|i| (key(i).len() + args.value_size) as u64)
        .sum();
    println!(
        "{:>18}: {} keys, {} bytes of keys and values ({:.1} MiB)",
        "live data",
        args.keys,
        live,
        live as f64 / MIB
    );

    report(
        "writes",
        phase(args, endpoints, value.clone(), Workload::Put, None).await,
    );

    let request = CreateBackup {
        destination: Some(url.to_owned()),
        incremental: false,
        snapshot: None,
    };
    // A full backup alone: what the backup itself can do here.
    let begin = Instant::now();
    let started = client.create_backup(&request).await?;
    let alone = wait_backup(&client, &started.id).await?;
    report_full("full, no writes", &alone, begin.elapsed(), live);

    // Another, with the same write phase running from the moment it starts.
    let backing_up = async {
        let begin = Instant::now();
        let started = client.create_backup(&request).await?;
        let done = wait_backup(&client, &started.id).await?;
        Ok::<_, anyhow::Error>((done, begin, Instant::now()))
    };
    let (writes, backed_up) = futures::join!(
        phase(args, endpoints, value.clone(), Workload::Put, None),
        backing_up
    );
    let (full, begin, end) = backed_up?;
    let wall = end - begin;
    report_full("full, with writes", &full, wall, live);
    if wall < writes.elapsed {
        report("writes in backup", writes.window(begin, end));
    } else {
        println!("  (the backup outlasted the write phase: every write below ran during it)");
    }
    report("writes (phase)", writes);

    // An incremental on it: every version the write phase wrote.
    let begin = Instant::now();
    let started = client
        .create_backup(&CreateBackup {
            incremental: true,
            ..request
        })
        .await?;
    let incremental = wait_backup(&client, &started.id).await?;
    let wall = begin.elapsed();
    println!(
        "{:>18}: {} (snapshot {}) in {:.2} s: {} keys, {} versions, {} bytes ({:.1} MiB) compressed",
        "incremental",
        incremental.id,
        incremental.snapshot.unwrap_or_default(),
        wall.as_secs_f64(),
        incremental.progress.keys,
        incremental.progress.versions,
        incremental.progress.bytes,
        incremental.progress.bytes as f64 / MIB
    );

    let dest = Destination::parse(url, &S3Options::default())
        .with_context(|| format!("backup destination {url}"))?;
    for (name, id) in [
        ("restore full", &full.id),
        ("restore full+incr", &incremental.id),
    ] {
        let dir = unique("cairn-bench-restore");
        let result = restore_once(name, &dest, id, &dir).await;
        for path in [dir.clone(), staging_of(&dir)] {
            if let Err(e) = std::fs::remove_dir_all(&path) {
                if e.kind() != std::io::ErrorKind::NotFound {
                    eprintln!("could not remove {}: {e}", path.display());
                }
            }
        }
        result?;
    }
    Ok(())
}

fn report_full(name: &str, full: &BackupInfo, wall: Duration, live: u64) {
    println!(
        "{name:>18}: {} (snapshot {}, node {}) in {:.2} s: {} keys, {} versions, {} bytes ({:.1} MiB) compressed",
        full.id,
        full.snapshot.unwrap_or_default(),
        full.node,
        wall.as_secs_f64(),
        full.progress.keys,
        full.progress.versions,
        full.progress.bytes,
        full.progress.bytes as f64 / MIB
    );
    println!(
        "{:>18}: {:.1} MiB/s of live data, {:.1} MiB/s written, {:.0} keys/s; size {:.3} of the live data",
        "",
        per_sec(live as f64 / MIB, wall),
        per_sec(full.progress.bytes as f64 / MIB, wall),
        per_sec(full.progress.keys as f64, wall),
        full.progress.bytes as f64 / live as f64
    );
}

/// Poll a backup until it is no longer running; an error unless it is done.
async fn wait_backup(client: &Client, id: &str) -> anyhow::Result<BackupInfo> {
    loop {
        let info = client.backup(id).await?;
        match info.state.as_str() {
            "running" => tokio::time::sleep(Duration::from_millis(50)).await,
            "done" => return Ok(info),
            other => anyhow::bail!(
                "backup {id} {other}: {}",
                info.error.as_deref().unwrap_or("no reason given")
            ),
        }
    }
}

/// Where `restore::write` builds the directory before renaming it to `dir`.
fn staging_of(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".restoring");
    dir.with_file_name(name)
}

/// Restore backup `id` (and its chain) into `dir`, as `cairn restore` does, timed.
async fn restore_once(name: &str, dest: &Destination, id: &str, dir: &Path) -> anyhow::Result<()> {
    let plan = restore::plan(dest, Some(id), &Target::Latest, None).await?;
    let (chain, compressed, versions) = (plan.chain.len(), plan.bytes, plan.versions);
    let begin = Instant::now();
    let fetched = restore::fetch(dest, &plan, dir, |_| {}).await?;
    let fetch = begin.elapsed();
    let identity = cairn_store::NodeIdentity {
        cluster_id: "bench".into(),
        node_id: 1,
        shards: plan.shards,
    };
    let begin = Instant::now();
    let stats = tokio::task::spawn_blocking({
        let dir = dir.to_owned();
        move || {
            restore::write(
                &dir,
                &plan,
                &fetched,
                &identity,
                "bench",
                |_| vec![1, 2, 3],
                |_| {},
            )
        }
    })
    .await
    .context("restore worker")??;
    let write = begin.elapsed();
    let total = fetch + write;
    println!(
        "{name:>18}: chain of {chain}, {compressed} bytes, {versions} versions; fetch+verify {:.2} s ({:.1} MiB/s compressed), write {:.2} s ({:.0} keys/s); {} keys, {} bytes: {:.0} keys/s, {:.1} MiB/s overall",
        fetch.as_secs_f64(),
        per_sec(compressed as f64 / MIB, fetch),
        write.as_secs_f64(),
        per_sec(stats.keys as f64, write),
        stats.keys,
        stats.bytes,
        per_sec(stats.keys as f64, total),
        per_sec(stats.bytes as f64 / MIB, total),
    );
    Ok(())
}

fn key(i: u64) -> String {
    format!("bench/{i:08}")
}

/// The `p` quantile (0..=1) of sorted latencies, in milliseconds (0 when empty).
fn percentile_ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 * p) as usize).min(sorted.len().saturating_sub(1));
    sorted
        .get(i)
        .map(|d| d.as_secs_f64() * 1000.0)
        .unwrap_or(0.0)
}

fn report_latencies(name: &str, latencies: &mut [Duration]) {
    latencies.sort_unstable();
    let pct = |p: f64| percentile_ms(latencies, p);
    println!(
        "{name:>18}: n={}  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        latencies.len(),
        pct(0.5),
        pct(0.99),
        pct(1.0)
    );
}

/// What each client of a phase does, over and over.
#[derive(Debug, Clone, Copy)]
enum Workload {
    /// Put one key.
    Put,
    /// Read one key (linearizable).
    Get,
    /// Put this many keys in one batch (spread over shards).
    Batch(usize),
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Put => "writes",
            Workload::Get => "reads",
            Workload::Batch(_) => "cross-shard batches",
        }
    }
}

async fn phase(
    args: &BenchArgs,
    endpoints: &[String],
    value: Values,
    workload: Workload,
    snapshot_every: Option<Duration>,
) -> Phase {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(args.duration);
    let snapshotter = snapshot_every.map(|every| {
        let client = args.connect(&endpoints[0]);
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
            let client = args.connect(&endpoints[i % endpoints.len()]);
            let value = value.clone();
            let keys = args.keys;
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut errors = Vec::new();
                let mut n = i as u64;
                let mut written = (i as u64 + 1) << 32;
                while Instant::now() < deadline {
                    let id = (n * 7919) % keys;
                    let key = key(id);
                    n += 1;
                    written += 1;
                    let t = Instant::now();
                    let outcome = match workload {
                        Workload::Put => client
                            .put(key.as_bytes(), &value.get(id, written))
                            .await
                            .map(drop),
                        Workload::Get => client.get(key.as_bytes()).await.map(drop),
                        Workload::Batch(len) => {
                            // Clients are one step apart in `n`; shift each one's
                            // batches so that they do not chase each other's locks.
                            let base = id + 56 * i as u64;
                            let ops = (0..len as u64)
                                .map(|j| {
                                    let id = (base + j) % keys;
                                    let key = self::key(id);
                                    cairn_client::api::BatchOp::put(
                                        key.as_bytes(),
                                        &value.get(id, written),
                                    )
                                })
                                .collect();
                            client.batch(ops).await.map(drop)
                        }
                    };
                    let latency = t.elapsed();
                    let at = t.duration_since(start) + latency;
                    match outcome {
                        Ok(()) => samples.push((at, latency)),
                        Err(e) => errors.push((at, e.to_string())),
                    }
                }
                (samples, errors)
            })
        })
        .collect();
    let mut all = Phase {
        start,
        samples: Vec::new(),
        errors: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for task in tasks {
        if let Ok((samples, errors)) = task.await {
            all.samples.extend(samples);
            all.errors.extend(errors);
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

fn report(name: &str, phase: Phase) {
    let mut latencies: Vec<Duration> = phase.samples.iter().map(|&(_, l)| l).collect();
    latencies.sort_unstable();
    let pct = |p: f64| percentile_ms(&latencies, p);
    println!(
        "{name:>18}: {:>9.0} ops/s  ({} ok, {} errors in {:.1} s)  p50 {:.2} ms  p99 {:.2} ms  max {:.2} ms",
        per_sec(latencies.len() as f64, phase.elapsed),
        latencies.len(),
        phase.errors.len(),
        phase.elapsed.as_secs_f64(),
        pct(0.50),
        pct(0.99),
        pct(1.0),
    );
    // Errors are not throughput: say what they were, the commonest first.
    let mut why: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, error) in &phase.errors {
        *why.entry(error.as_str()).or_default() += 1;
    }
    let mut why: Vec<(&str, usize)> = why.into_iter().collect();
    why.sort_by_key(|(_, count)| std::cmp::Reverse(*count));
    for (error, count) in why.iter().take(3) {
        println!("{:>18}  {count} x {error}", "");
    }
}
