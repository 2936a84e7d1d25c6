//! One seeded run: a fresh cluster behind the proxy, the workload, snapshots, the
//! faults one after another, healing, and every check.
//!
//! The timeline:
//!
//! 1. start the nodes (each behind the proxy) and wait until every group has a leader;
//!    take a *base* snapshot before any write, so history GC never passes the run's
//!    first write and the replicas' version history stays complete;
//! 2. start the clients and the snapshot taker; wait until the workload has
//!    [`Scenario::warmup_ops`] acknowledged operations (a run that did too little
//!    before its first fault proves nothing);
//! 3. for each planned fault: a quiet gap, injection, hold, healing, then wait until
//!    every node is ready and the workload acknowledged
//!    [`Scenario::recovery_writes`] more writes (the cluster recovered);
//! 4. a last stretch of workload, then stop clients and snapshots;
//! 5. final linearizable reads of every key (recorded like any operation), and a final
//!    write that must succeed (the cluster is live);
//! 6. checks: replica convergence, the replicas' version history against the record,
//!    per-key linearizability, every snapshot.
//!
//! Waits in 2, 3 and 5 are bounded by generous deadlines rather than fixed sleeps, so a
//! slow machine makes a run longer, not red; a deadline passing is a liveness finding.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use cairn_client::api::SnapshotInfo;
use cairn_client::Client;
use cairn_store::NodeId;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::cluster::{http_client_trusting, Cluster, ClusterOptions};
use crate::error::{ChaosError, Result};
use crate::history::{Answer, History, Operation, Outcome, Request, Shown};
use crate::linearizability::{self, CheckOptions, LinearizabilityReport};
use crate::nemesis::{self, FaultKind, FaultRecord, Nemesis};
use crate::network::Network;
use crate::replicas::{self, ConvergenceReport, VersionIndex};
use crate::snapshots::{self, SnapshotInputs, SnapshotReport, SnapshotTaker};
use crate::workload::{self, Workload, WorkloadOptions};

/// Everything that defines a run.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// For reports and temporary directories.
    pub name: String,
    pub seed: u64,
    /// Played in this order.
    pub faults: Vec<FaultKind>,
    /// The `cairn` binary.
    pub binary: PathBuf,
    pub nodes: usize,
    /// Nodes that a `join` fault adds to the running cluster (see
    /// [`crate::cluster::ClusterOptions::spares`]).
    pub spares: usize,
    pub shards: u32,
    pub clients: usize,
    pub pinned: usize,
    pub keys: usize,
    /// Longest pause of a client between operations.
    pub think: Duration,
    pub warmup_ops: u64,
    pub recovery_writes: u64,
    pub gap: (Duration, Duration),
    pub hold: (Duration, Duration),
    /// Workload after the last fault is healed.
    pub tail: Duration,
    pub snapshot_every: (Duration, Duration),
    /// HTTP deadline of one client operation.
    pub request_timeout: Duration,
    /// Bytes of every value put (0: the write's id alone, a few bytes).
    pub value_bytes: usize,
    /// Appended to every node's command line.
    pub server_args: Vec<String>,
    /// HTTPS and mutual TLS between peers (see [`ClusterOptions::tls`]). The
    /// frame-aware proxy cannot read frames under TLS, so a TLS run has no proxy and
    /// takes process faults only (kills, pauses, restarts, crash points, membership).
    pub tls: bool,
    pub check: CheckOptions,
    /// The command that replays this run, printed with every failure.
    pub replay: String,
}

impl Scenario {
    /// The defaults: three nodes, eight shards, ten clients (five pinned), sixty keys.
    pub fn new(
        name: impl Into<String>,
        seed: u64,
        faults: Vec<FaultKind>,
        binary: impl Into<PathBuf>,
    ) -> Scenario {
        let faults_arg: Vec<&str> = faults.iter().map(|f| f.name()).collect();
        Scenario {
            name: name.into(),
            seed,
            replay: format!(
                "cargo build -p cairn-server --features failpoints && cargo build -p cairn-chaos && target/debug/cairn-chaos --seed {seed} --faults {}",
                faults_arg.join(",")
            ),
            faults,
            binary: binary.into(),
            nodes: 3,
            spares: 0,
            shards: 8,
            clients: 10,
            pinned: 5,
            keys: 60,
            think: Duration::from_millis(40),
            warmup_ops: 150,
            recovery_writes: 10,
            gap: (Duration::from_millis(800), Duration::from_millis(2500)),
            hold: (Duration::from_secs(3), Duration::from_secs(6)),
            tail: Duration::from_secs(2),
            snapshot_every: (Duration::from_millis(1000), Duration::from_millis(2000)),
            request_timeout: Duration::from_secs(6),
            value_bytes: 0,
            tls: false,
            server_args: vec![
                "--request-timeout-ms".into(),
                "3000".into(),
                // Small, so that nodes brought back catch up by Raft snapshot too, and
                // the snapshot streams cross the proxy.
                "--log-compact-entries".into(),
                "120".into(),
            ],
            check: CheckOptions::default(),
        }
    }
}

impl Scenario {
    /// Large values: every put writes `value_bytes` bytes, under limits scaled down
    /// so that pages end at their byte budget, batches come near the request limit,
    /// cross-shard prepares near the entry limit and frames near their cap, all in a
    /// run short enough for CI (issue 11's class of bug: an answer larger than a
    /// frame wedged a peer link).
    pub fn with_large_values(mut self, value_bytes: usize) -> Scenario {
        self.value_bytes = value_bytes;
        for (flag, value) in [
            ("--max-frame-bytes", 4usize << 20),
            ("--max-entry-bytes", 2 << 20),
            ("--max-request-bytes", 1 << 20),
            ("--max-value-bytes", 512 << 10),
            ("--max-page-bytes", 1 << 20),
        ] {
            self.server_args.push(flag.into());
            self.server_args.push(value.to_string());
        }
        self
    }
}

/// What a run did and found.
#[derive(Debug, Clone, Default)]
pub struct RunReport {
    pub name: String,
    pub seed: u64,
    pub replay: String,
    pub elapsed: Duration,
    /// Operations recorded (final reads included): (total, ok, refused, unknown).
    pub ops: (usize, usize, usize, usize),
    /// Refusals by HTTP status and error code.
    pub refusals: BTreeMap<String, usize>,
    pub linearizability: LinearizabilityReport,
    pub faults: Vec<FaultRecord>,
    pub snapshots: SnapshotReport,
    pub convergence: ConvergenceReport,
    /// Versions of the replicas' history checked against the record.
    pub versions_checked: usize,
    /// Acknowledged batches within one shard, and across shards (transactions).
    pub batches: (usize, usize),
    /// Every finding, one line each.
    pub violations: Vec<String>,
    /// Where the cluster's data and logs were kept (a failed run keeps them).
    pub kept: Option<PathBuf>,
}

impl RunReport {
    /// No finding, every key decided, every fault fired.
    pub fn passed(&self) -> bool {
        self.violations.is_empty()
            && self.linearizability.undecided().is_empty()
            && self.snapshots.unreadable.is_empty()
    }

    /// Figures, one paragraph.
    pub fn summary(&self) -> String {
        let (total, ok, refused, unknown) = self.ops;
        let lin = &self.linearizability;
        let decided = lin
            .keys
            .iter()
            .filter(|k| k.ops > 0 && k.verdict == linearizability::Verdict::Linearizable)
            .count();
        let exercised = lin.keys.iter().filter(|k| k.ops > 0).count();
        let s = &self.snapshots;
        let mut out = format!(
            "run {} (seed {}) in {:.1}s: {total} operations ({ok} ok, {refused} refused, {unknown} unknown; {} batches within a shard and {} across shards acknowledged); \
             linearizability: {decided}/{} keys with operations linearizable, {} key-operations checked, {} undecided; \
             faults: {}; snapshots: {} requested, {} completed, {} aborted, {} failed, {} checked on all four guarantees, {} automatic ones on 3 and 4, {} writes inside them; \
             replicas: {} groups converged, {} versions checked, {} raft snapshots installed; {} violations",
            self.name,
            self.seed,
            self.elapsed.as_secs_f64(),
            self.batches.0,
            self.batches.1,
            exercised,
            lin.ops_checked(),
            lin.undecided().len(),
            self.faults.len(),
            s.requested,
            s.completed,
            s.aborted,
            s.failed,
            s.checked_all,
            s.checked_auto,
            s.writes_inside,
            self.convergence.groups,
            self.versions_checked,
            self.convergence.raft_snapshots_installed,
            self.violations.len()
        );
        if !self.refusals.is_empty() {
            let by_code: Vec<String> = self
                .refusals
                .iter()
                .map(|(code, n)| format!("{n} {code}"))
                .collect();
            out.push_str(&format!("\n  refused: {}", by_code.join(", ")));
        }
        for f in &self.faults {
            out.push_str(&format!("\n  fault {f}"));
        }
        out
    }

    /// Everything that made the run fail, with the replay command.
    pub fn failure(&self) -> String {
        let mut lines: Vec<String> = Vec::new();
        lines.extend(self.violations.iter().take(40).cloned());
        if self.violations.len() > 40 {
            lines.push(format!("... and {} more", self.violations.len() - 40));
        }
        lines.extend(self.linearizability.undecided());
        lines.extend(
            self.snapshots
                .unreadable
                .iter()
                .map(|u| format!("unreadable: {u}")),
        );
        format!(
            "chaos run {} FAILED (seed {}):\n{}\n{}\nreplay: {}{}",
            self.name,
            self.seed,
            lines.join("\n"),
            self.summary(),
            self.replay,
            self.kept
                .as_ref()
                .map(|p| format!(
                    "\ndata, logs and the recorded history kept in {}",
                    p.display()
                ))
                .unwrap_or_default()
        )
    }
}

/// Bounds on the waits of a run (see the module doc).
const READY: Duration = Duration::from_secs(60);
const PROGRESS: Duration = Duration::from_secs(90);

/// Runs scenarios.
pub struct Run;

impl Run {
    /// Carry out `scenario` and check it. `Err` when the run could not be carried out
    /// (a node crashed, the cluster never recovered); findings are in the report.
    pub async fn execute(scenario: &Scenario) -> Result<RunReport> {
        let started = Instant::now();
        tracing::info!(name = %scenario.name, seed = scenario.seed, faults = ?scenario.faults, "chaos run starting; replay: {}", scenario.replay);
        let mut rng = StdRng::seed_from_u64(scenario.seed);
        let mut options = ClusterOptions::new(&scenario.binary);
        options.nodes = scenario.nodes;
        options.spares = scenario.spares;
        options.shards = scenario.shards;
        if scenario.tls {
            if let Some(fault) = scenario.faults.iter().find(|f| f.is_network()) {
                return Err(ChaosError::Misuse(format!(
                    "`{}` needs the peer-link proxy, which cannot read frames under TLS; a TLS run takes process faults only",
                    fault.name()
                )));
            }
        }
        options.proxied = !scenario.tls;
        options.tls = scenario.tls;
        options.extra_args = scenario.server_args.clone();
        options.dir_prefix = format!("cairn-chaos-{}-", scenario.name);
        let mut cluster = Cluster::new(options)?;
        let listeners = cluster.take_proxy_listeners();
        let network = Network::start(
            listeners,
            |node| cluster.peer_listen_addr(node).ok(),
            rng.gen(),
        )?;
        let outcome = Run::body(scenario, &mut rng, &mut cluster, &network, started).await;
        // What the nodes say, asked while their links still run.
        let state = match &outcome {
            Err(_) => cluster.describe().await,
            Ok(_) => String::new(),
        };
        network.stop();
        match outcome {
            Ok(mut report) => {
                if !report.passed() {
                    let dir = cluster.keep_dir();
                    report.kept = Some(dir);
                }
                Ok(report)
            }
            Err(e) => {
                // The logs before the directory is kept (the cluster then looks at an
                // empty one).
                let tails = cluster.all_log_tails(30);
                let dir = cluster.keep_dir();
                Err(ChaosError::RunAborted(format!(
                    "chaos run {} (seed {}) could not complete: {e}\nreplay: {}\ndata and logs kept in {}\nthe nodes' view:\n{state}\n{tails}",
                    scenario.name,
                    scenario.seed,
                    scenario.replay,
                    dir.display(),
                )))
            }
        }
    }

    async fn body(
        scenario: &Scenario,
        rng: &mut StdRng,
        cluster: &mut Cluster,
        network: &Network,
        started: Instant,
    ) -> Result<RunReport> {
        cluster.start_all()?;
        cluster.wait_ready(READY).await?;
        let ids = cluster.ids();
        let scheme = cluster.scheme();
        let endpoints: Vec<(NodeId, String)> = ids
            .iter()
            .map(|&id| Ok((id, format!("{scheme}://{}", cluster.http_addr(id)?))))
            .collect::<Result<_>>()?;
        let http = http_client_trusting(scenario.request_timeout, cluster.ca_pem())?;
        let clients: Vec<(NodeId, Client)> = endpoints
            .iter()
            .map(|(id, base)| (*id, Client::with_http(base.clone(), http.clone())))
            .collect();
        let base_info = base_snapshot(&clients[0].1).await?;
        let base = base_info.id;
        let clock = Instant::now();
        let prefix = "chaos/".to_owned();
        let workload = Workload::start(
            &WorkloadOptions {
                clients: scenario.clients,
                pinned: scenario.pinned,
                keys: scenario.keys,
                prefix: prefix.clone(),
                shards: scenario.shards,
                think: scenario.think,
                request_timeout: scenario.request_timeout,
                http: http.clone(),
                seed: rng.gen(),
                // A tenth of the checker's cap is left for operations in flight
                // when a generation ends and for the final reads.
                key_budget: scenario.check.max_ops_per_key - scenario.check.max_ops_per_key / 10,
                value_bytes: scenario.value_bytes,
            },
            &endpoints,
            clock,
        );
        let progress = workload.progress();
        let taker =
            SnapshotTaker::start(clients.clone(), scenario.snapshot_every, clock, rng.gen());
        let mut violations = Vec::new();
        wait_for(cluster, "the workload's warm-up", PROGRESS, || {
            (progress.ok() >= scenario.warmup_ops)
                .then_some(())
                .ok_or_else(|| {
                    format!(
                        "{} of {} operations acknowledged",
                        progress.ok(),
                        scenario.warmup_ops
                    )
                })
        })
        .await?;
        let plans = nemesis::plan(&scenario.faults, scenario.gap, scenario.hold, rng);
        let mut nemesis = Nemesis::new(StdRng::seed_from_u64(rng.gen()), clock);
        let mut faults = Vec::new();
        for plan in plans {
            tokio::time::sleep(plan.gap).await;
            let mut injected = nemesis.inject(plan.kind, cluster, network).await?;
            tokio::time::sleep(plan.hold).await;
            nemesis.settle(&mut injected, cluster).await?;
            cluster.check_alive()?;
            let record = nemesis.heal(injected, cluster, network).await?;
            if !record.fired {
                violations.push(format!("fault {record} never fired"));
            }
            faults.push(record);
            cluster.wait_ready(READY).await?;
            let writes = progress.writes_ok();
            wait_for(
                cluster,
                "writes acknowledged after healing",
                PROGRESS,
                || {
                    (progress.writes_ok() >= writes + scenario.recovery_writes)
                        .then_some(())
                        .ok_or_else(|| {
                            format!("{} writes since healing", progress.writes_ok() - writes)
                        })
                },
            )
            .await?;
        }
        tokio::time::sleep(scenario.tail).await;
        let attempts = taker.stop().await;
        let mut history = workload.stop().await;
        network.heal();
        cluster.wait_ready(READY).await?;
        final_reads(&mut history, &clients, clock, scenario.clients as u32).await?;
        if let Err(e) = final_write(&clients, scenario.seed).await {
            violations.push(format!("the cluster is not live after healing: {e}"));
        }
        // Checks.
        // The snapshots to check are listed before the replicas' versions are read:
        // automatic snapshots go on, and one completed after the read would have cuts
        // beyond what was read (it could not be checked, and was once reported so).
        let listed: Vec<SnapshotInfo> =
            clients[0]
                .1
                .list_all_snapshots()
                .await
                .map_err(|e| ChaosError::Api {
                    node: clients[0].0,
                    what: format!("list snapshots: {e}"),
                })?;
        let groups = scenario.shards;
        let convergence = replicas::converge(cluster, groups, READY).await?;
        violations.extend(convergence.violations.iter().cloned());
        let holders = replicas::holders(cluster).await?;
        let mut shard_versions = Vec::new();
        for shard in 0..scenario.shards {
            // A node holding a replica of the shard reads it.
            let reader = holders
                .get(&shard)
                .and_then(|h| h.first().copied())
                .unwrap_or(ids[0]);
            let status = cluster.status(reader).await?;
            let upto = match convergence.at.get(&shard) {
                Some(&at) => at,
                None => status
                    .shards
                    .iter()
                    .find(|s| s.id == shard)
                    .map(|s| s.applied)
                    .unwrap_or(0),
            };
            shard_versions.push(
                replicas::read_versions(cluster, reader, shard, upto, scenario.value_bytes).await?,
            );
        }
        let index = VersionIndex::new(&shard_versions);
        let versions_checked = shard_versions
            .iter()
            .map(|s| s.versions.len() + s.base.len())
            .sum();
        violations.extend(replicas::check_versions(&history, &index, scenario.shards));
        // Floors: each check must have covered what the run did, or it could pass
        // having looked at nothing.
        if convergence.groups < scenario.shards as usize + 1 {
            violations.push(format!(
                "only {} of {} groups were compared for convergence",
                convergence.groups,
                scenario.shards + 1
            ));
        }
        for s in &shard_versions {
            // The version check starts at `after`: it must lie below every write of
            // the run, which all landed above the base snapshot's cut.
            let cut = base_info.cuts.get(&s.shard).copied().unwrap_or(0);
            if s.after >= cut {
                violations.push(format!(
                    "shard {}'s history was read from version {} on, not below the base snapshot's cut {cut}: writes of the run went unchecked",
                    s.shard, s.after
                ));
            }
        }
        // Versions the acknowledged writes made: a put one, a batch one per put, a
        // delete one if there was something to delete.
        let writes_acked: usize = history
            .ops
            .iter()
            .map(|op| match (&op.request, &op.outcome) {
                (Request::Put { .. }, Outcome::Ok(_)) => 1,
                (Request::Batch { puts, .. }, Outcome::Ok(_)) => puts.len(),
                (Request::Delete { .. }, Outcome::Ok(Answer::Deleted { deleted: true, .. })) => 1,
                _ => 0,
            })
            .sum();
        if versions_checked < writes_acked {
            violations.push(format!(
                "{versions_checked} versions checked, fewer than the {writes_acked} writes acknowledged"
            ));
        }
        let check = scenario.check;
        let checked = history.clone();
        let linearizability =
            tokio::task::spawn_blocking(move || linearizability::check(&checked, check))
                .await
                .map_err(|e| {
                    ChaosError::Misuse(format!("the linearizability checker failed: {e}"))
                })?;
        violations.extend(linearizability.violations());
        let exercised = linearizability.keys.iter().filter(|k| k.ops > 0).count();
        if linearizability.ops_checked() < scenario.warmup_ops as usize
            || exercised < scenario.keys.min(history.keys.len())
        {
            violations.push(format!(
                "the linearizability check decided {} key-operations over {exercised} keys with operations: fewer than the warm-up's {} or the {} keys",
                linearizability.ops_checked(),
                scenario.warmup_ops,
                scenario.keys
            ));
        }
        for (key, verdict) in linearizability
            .keys
            .iter()
            .filter(|k| k.verdict == linearizability::Verdict::Violation)
            .map(|k| (k.key.clone(), k.verdict.clone()))
            .take(3)
        {
            violations.push(format!(
                "history of {key} ({verdict:?}):\n{}",
                truncate_lines(&history.show_key(&key), 120)
            ));
        }
        let snapshots = snapshots::check(SnapshotInputs {
            history: &history,
            taken: &attempts,
            listed: &listed,
            base,
            index: &index,
            shards: scenario.shards,
            readers: &clients,
            seed: scenario.seed,
        })
        .await;
        violations.extend(snapshots.violations.iter().cloned());
        if snapshots.completed == 0 {
            violations.push("no snapshot requested during the run completed".into());
        }
        let (ok, refused, unknown) = history.tally();
        let mut refusals = BTreeMap::new();
        for op in &history.ops {
            if let Outcome::Refused { status, code } = &op.outcome {
                *refusals.entry(format!("{status} {code}")).or_insert(0) += 1;
            }
        }
        let mut batches = (0, 0);
        for op in &history.ops {
            if let (Request::Batch { puts, deletes }, true) = (&op.request, op.outcome.is_ok()) {
                let mut shards: Vec<u32> = puts
                    .iter()
                    .map(|(k, _)| k)
                    .chain(deletes)
                    .map(|k| cairn_store::shard_for_key(k.as_bytes(), scenario.shards))
                    .collect();
                shards.sort_unstable();
                shards.dedup();
                if shards.len() > 1 {
                    batches.1 += 1;
                } else {
                    batches.0 += 1;
                }
            }
        }
        let report = RunReport {
            name: scenario.name.clone(),
            seed: scenario.seed,
            replay: scenario.replay.clone(),
            elapsed: started.elapsed(),
            ops: (history.ops.len(), ok, refused, unknown),
            refusals,
            linearizability,
            faults,
            snapshots,
            convergence,
            versions_checked,
            batches,
            violations,
            kept: None,
        };
        if !report.passed() {
            let dir = cluster.dir().to_path_buf();
            let _ = std::fs::write(
                dir.join("history.txt"),
                history
                    .ops
                    .iter()
                    .map(|o| format!("{}\n", Shown(o)))
                    .collect::<String>(),
            );
            let _ = std::fs::write(dir.join("report.txt"), report.failure());
        }
        Ok(report)
    }
}

/// The snapshot taken before any write; retried while it aborts (a group may still
/// be settling its first leader).
async fn base_snapshot(client: &Client) -> Result<SnapshotInfo> {
    let deadline = Instant::now() + READY;
    loop {
        match client.create_snapshot(Some("chaos-base")).await {
            Ok(info) => return Ok(info),
            Err(e) if Instant::now() > deadline => {
                return Err(ChaosError::Timeout {
                    what: "the base snapshot".into(),
                    waited: READY,
                    last: e.to_string(),
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Poll `check` every 100 ms until it holds; an error after `timeout` or if a node
/// exits.
async fn wait_for(
    cluster: &mut Cluster,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> std::result::Result<(), String>,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        cluster.check_alive()?;
        match check() {
            Ok(()) => return Ok(()),
            Err(last) if Instant::now() > deadline => {
                return Err(ChaosError::Timeout {
                    what: what.into(),
                    waited: timeout,
                    last,
                })
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

/// A linearizable read of every key, after healing, recorded as client `client`'s.
/// Each key is read until a read succeeds.
async fn final_reads(
    history: &mut History,
    clients: &[(NodeId, Client)],
    clock: Instant,
    client: u32,
) -> Result<()> {
    let mut added: Vec<Operation> = Vec::new();
    for (i, key) in history.keys.clone().iter().enumerate() {
        let deadline = Instant::now() + READY;
        loop {
            let (node, c) = &clients[i % clients.len()];
            let request = Request::Get { key: key.clone() };
            let invoked = clock.elapsed();
            let outcome = workload::execute(c, &request, history.value_bytes).await;
            let completed = clock.elapsed();
            let ok = outcome.is_ok();
            let last = format!("{outcome:?}");
            added.push(Operation {
                id: 0,
                client: client as usize,
                via: Some(*node),
                request,
                invoked,
                completed: Some(completed),
                outcome,
            });
            if ok {
                break;
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Timeout {
                    what: format!("a final read of {key}"),
                    waited: READY,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    for mut op in added {
        op.id = history.ops.len();
        history.ops.push(op);
    }
    Ok(())
}

/// A write to a key outside the workload's, which must succeed after healing.
async fn final_write(clients: &[(NodeId, Client)], seed: u64) -> std::result::Result<u64, String> {
    let deadline = Instant::now() + READY;
    let mut last = String::new();
    let mut attempt = 0usize;
    while Instant::now() < deadline {
        let (_, client) = &clients[attempt % clients.len()];
        attempt += 1;
        match client
            .put(b"chaos-final", format!("final {seed}").as_bytes())
            .await
        {
            Ok(version) => return Ok(version),
            // Retrying even an unknown outcome is harmless here: nothing reads this key.
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Err(format!("no write succeeded within {READY:?}; last: {last}"))
}

fn truncate_lines(text: &str, max: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    if lines.len() <= max {
        return text.to_owned();
    }
    format!(
        "{}\n... {} more lines in history.txt",
        lines[..max].join("\n"),
        lines.len() - max
    )
}
