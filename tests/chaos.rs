//! The CI slice of the black-box fault-injection harness (`crates/cairn-chaos`): real
//! `cairn` processes behind the fault proxy, ten recorded clients, snapshots every
//! 1–2 s, and a few faults per run; every run is checked for per-key linearizability,
//! lost or twice-applied writes, replica convergence and the four snapshot
//! guarantees, and fails if a fault never fired or the workload did too little.
//!
//! Every fault kind appears at least once across the slice; seeds are fixed so a
//! failure reproduces (`CAIRN_TEST_SEED` replaces a test's seed). Runs take turns
//! (one cluster at a time), so the slice's wall time is the sum of its runs. The
//! long version is the `cairn-chaos` binary; see docs/TESTING.md.

use cairn_chaos::nemesis::FaultKind::{self, *};
use cairn_chaos::{Run, Scenario};

/// One cluster at a time: runs in parallel would only slow each other down.
static ONE_RUN_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

async fn chaos(name: &str, default_seed: u64, faults: &[FaultKind]) {
    run(name, default_seed, faults, |s| s).await;
}

async fn run(
    name: &str,
    default_seed: u64,
    faults: &[FaultKind],
    shape: impl FnOnce(Scenario) -> Scenario,
) {
    let _turn = ONE_RUN_AT_A_TIME.lock().await;
    // The harness's own log (each fault as it is injected and healed) on stderr, so
    // a run that cannot complete still shows what it did.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new("warn,cairn_chaos=info"))
        .with_ansi(false)
        .with_test_writer()
        .try_init();
    let seed = match std::env::var("CAIRN_TEST_SEED") {
        Ok(text) => text.parse().expect("CAIRN_TEST_SEED must be a u64"),
        Err(_) => default_seed,
    };
    eprintln!("chaos {name}: seed {seed} (set CAIRN_TEST_SEED to replay another)");
    let mut scenario = shape(Scenario::new(
        name,
        seed,
        faults.to_vec(),
        env!("CARGO_BIN_EXE_cairn"),
    ));
    let names: Vec<&str> = faults.iter().map(|f| f.name()).collect();
    // Large values set their own flags (`--value-bytes` gives them to the binary).
    let mut flags = if scenario.value_bytes == 0 && !scenario.server_args.is_empty() {
        format!(" --server-args {:?}", scenario.server_args.join(" "))
    } else {
        String::new()
    };
    if scenario.nodes != 3 {
        flags.push_str(&format!(" --nodes {}", scenario.nodes));
    }
    if scenario.spares != 0 {
        flags.push_str(&format!(" --spares {}", scenario.spares));
    }
    if scenario.tls {
        flags.push_str(" --tls");
    }
    scenario.replay = format!(
        "CAIRN_TEST_SEED={seed} cargo test -p cairn-server --test chaos {name} -- --nocapture   (or: target/debug/cairn-chaos --seed {seed} --faults {}{flags})",
        names.join(",")
    );
    let report = match Run::execute(&scenario).await {
        Ok(report) => report,
        Err(e) => panic!("{e}"),
    };
    eprintln!("{}", report.summary());
    assert!(report.passed(), "{}", report.failure());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_and_follower_crashes() {
    chaos(
        "leader_and_follower_crashes",
        101,
        &[KillLeader, KillFollower, CrashPoint],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_node_and_full_restart() {
    chaos(
        "paused_node_and_full_restart",
        102,
        &[Pause, RestartAll, Pause],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions() {
    chaos("partitions", 103, &[Partition, IsolateLeader, OneWay]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lossy_slow_network() {
    chaos("lossy_slow_network", 104, &[Loss, Delay, Delay]).await;
}

/// Regression: a duplicated peer frame ran a forwarded write twice (fixed in the
/// transport; `transport::tests::a_duplicated_forwarded_write_runs_once`). With seed 2
/// the unfixed code showed 91 writes applied twice and 6 keys not linearizable.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicated_frames() {
    chaos("duplicated_frames", 2, &[Duplicate, Duplicate]).await;
}

/// Markers reach some shards hundreds of milliseconds after others: without the
/// alignment hold, writes acknowledged after one shard's cut are followed by writes
/// landing before another's (with the hold disabled, seed 12 showed 13 violations of
/// guarantee 3).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_markers() {
    chaos("slow_markers", 12, &[SlowMarkers, SlowMarkers, KillLeader]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_faults() {
    chaos(
        "mixed_faults",
        106,
        &[
            Duplicate,
            KillLeader,
            Loss,
            IsolateLeader,
            RestartAll,
            SlowMarkers,
        ],
    )
    .await;
}

/// The cluster under TLS (HTTPS, mutual TLS between peers): leaders killed, a node
/// paused, everything restarted, crash points; every peer connection is re-dialled and
/// re-authenticated many times over. Process faults only: the peer-link proxy cannot
/// read frames under TLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_process_faults() {
    run(
        "tls_process_faults",
        111,
        &[KillLeader, Pause, RestartAll, CrashPoint],
        |mut s| {
            s.tls = true;
            s
        },
    )
    .await;
}

/// Reads on leader leases (`--lease-reads`): a paused leader wakes up past its lease
/// and must not answer from it, an isolated leader must stop answering before a new
/// one commits, a killed one's followers must not vote on its old lease at restart.
/// The per-key linearizability check catches a stale read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_reads() {
    run(
        "lease_reads",
        108,
        &[Pause, IsolateLeader, KillLeader, Pause],
        |mut s| {
            s.server_args
                .extend(["--lease-reads".into(), "true".into()]);
            s
        },
    )
    .await;
}

/// Five nodes with three replicas of each shard: every node lacks some shards, so
/// requests forward to nodes the client never named, snapshots mark groups on
/// different node sets, and a killed node takes a different set of replicas with it
/// each time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_nodes_three_replicas() {
    run(
        "five_nodes_three_replicas",
        109,
        &[KillLeader, Partition, KillFollower],
        |mut s| {
            s.nodes = 5;
            s.server_args
                .extend(["--replication-factor".into(), "3".into()]);
            s
        },
    )
    .await;
}

/// Members change under load (issue 14): a replica move cut short by SIGKILL of its
/// source, its target, the group's leader or the node driving it; a fifth node
/// joining, which rebalancing then fills while a leader dies; a decommission, half
/// the time with the node driving it killed part-way. Every move is finished by
/// asking again, and the usual checks hold across the changed placement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_changes() {
    run(
        "membership_changes",
        110,
        &[MoveKill, Join, KillLeader, Decommission, MoveKill],
        |mut s| {
            s.nodes = 4;
            s.spares = 1;
            s.server_args.extend([
                "--replication-factor".into(),
                "3".into(),
                "--rebalance-rate".into(),
                "30".into(),
            ]);
            s
        },
    )
    .await;
}

/// Issue 11: large values through followers once wedged a peer link (an answer larger
/// than a frame). Every put writes 100 KB under scaled-down limits (a 4 MiB frame,
/// 1 MiB pages), so scans end at their byte budget, batches and cross-shard prepares
/// come near their caps, and Raft snapshots stream large versions, while leaders die
/// and the network drops frames.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values() {
    run("large_values", 107, &[KillLeader, Loss, Partition], |s| {
        s.with_large_values(100_000)
    })
    .await;
}
