//! Real processes, real faults: concurrent writers, a leader SIGKILLed under load, a
//! whole-cluster crash, catch-up of a lagging node by Raft snapshot, refusal of a
//! foreign data dir, and clean shutdown on SIGTERM.
//!
//! The promise under test: while a majority of each shard's replicas survives, no
//! acknowledged write is lost. A write that failed may or may not have been applied,
//! so the oracle accepts, for each key, its last acknowledged value or any value
//! attempted (and not acknowledged) after it.

#[path = "harness/mod.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cairn_client::{Client, Consistency};
use harness::{eventually, shard_of, Cluster, ClusterOptions};

const SHARDS: u32 = 8;

/// What a key may hold after a run of writes: the last acknowledged value, or one of
/// the values whose write failed after it (their outcome is unknown).
#[derive(Debug, Default, Clone)]
struct KeyHistory {
    acked: Option<Vec<u8>>,
    unknown_since_ack: Vec<Vec<u8>>,
}

impl KeyHistory {
    fn allows(&self, value: Option<&[u8]>) -> bool {
        match value {
            None => self.acked.is_none(),
            Some(v) => {
                self.acked.as_deref() == Some(v) || self.unknown_since_ack.iter().any(|u| u == v)
            }
        }
    }
}

type Oracle = Arc<Mutex<HashMap<Vec<u8>, KeyHistory>>>;

/// Reads every key of `expected` from node `node`, asserting its exact value.
async fn assert_all_values(
    cluster: &Cluster,
    node: usize,
    expected: &BTreeMap<Vec<u8>, Vec<u8>>,
    consistency: Consistency,
) {
    let client = cluster.client(node);
    for (key, value) in expected {
        let got = client
            .get_with(key, consistency)
            .await
            .unwrap_or_else(|e| panic!("{consistency:?} read of {key:?} on node {node}: {e}"));
        assert_eq!(
            got.as_ref().map(|g| g.value.as_slice()),
            Some(value.as_slice()),
            "{consistency:?} read of {:?} on node {node}",
            String::from_utf8_lossy(key)
        );
    }
}

/// Writes `key = value` through `clients`, moving on to the next node on errors,
/// until acknowledged or `timeout` passes.
async fn put_retrying(clients: &[Client], key: &[u8], value: &[u8], timeout: Duration) -> u64 {
    let deadline = Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        let client = &clients[attempt % clients.len()];
        match client.put(key, value).await {
            Ok(version) => return version,
            Err(e) if Instant::now() > deadline => panic!(
                "put {:?} not acknowledged within {timeout:?}; last error from {}: {e}",
                String::from_utf8_lossy(key),
                client.base()
            ),
            Err(_) => {
                attempt += 1;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Shard -> commit index, each taken from the view of the shard's leader.
async fn leader_commits(cluster: &Cluster) -> BTreeMap<u32, u64> {
    let mut commits = BTreeMap::new();
    for node in cluster.running() {
        let status = cluster.status(node).await;
        for shard in status.shards {
            if shard.leader == Some(node as u64) {
                commits.insert(shard.id, shard.commit);
            }
        }
    }
    commits
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_on_every_node() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let commits_before = cluster.status(1).await;

    let mut writers = Vec::new();
    for w in 0..8usize {
        let client = cluster.client(1 + w % 3);
        writers.push(tokio::spawn(async move {
            for j in 0..50 {
                let key = format!("cw/{w}/{j}");
                let value = format!("value {w}.{j}");
                client
                    .put(key.as_bytes(), value.as_bytes())
                    .await
                    .unwrap_or_else(|e| panic!("writer {w} on {}: put {key}: {e}", client.base()));
            }
        }));
    }
    for writer in writers {
        writer.await.expect("writer task");
    }

    let expected: BTreeMap<Vec<u8>, Vec<u8>> = (0..8)
        .flat_map(|w| (0..50).map(move |j| (w, j)))
        .map(|(w, j)| {
            (
                format!("cw/{w}/{j}").into_bytes(),
                format!("value {w}.{j}").into_bytes(),
            )
        })
        .collect();
    assert_eq!(expected.len(), 400);
    let shards: BTreeSet<u32> = expected.keys().map(|k| shard_of(k, SHARDS)).collect();
    assert_eq!(shards.len(), SHARDS as usize, "the keys span every shard");
    for node in cluster.ids() {
        assert_all_values(&cluster, node, &expected, Consistency::Linearizable).await;
        let scanned = cluster
            .client(node)
            .scan_all(b"cw/", Consistency::Linearizable)
            .await
            .unwrap();
        let scanned: BTreeMap<Vec<u8>, Vec<u8>> =
            scanned.into_iter().map(|(k, v, _)| (k, v)).collect();
        assert!(scanned == expected, "scan on node {node}");
    }
    // Every shard's log grew: each shard received writes.
    let after = cluster.status(1).await;
    for shard in &after.shards {
        let before = commits_before
            .shards
            .iter()
            .find(|s| s.id == shard.id)
            .expect("same shards");
        assert!(
            shard.commit > before.commit,
            "shard {} received no writes: {before:?} -> {shard:?}",
            shard.id
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leader_sigkill_under_load_loses_no_acknowledged_write() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let clients: Vec<Client> = cluster
        .ids()
        .into_iter()
        .map(|id| cluster.client(id))
        .collect();
    let oracle: Oracle = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let acks = Arc::new(Mutex::new(Vec::<(Instant, u32)>::new()));

    // Six writers, each owning 40 keys it overwrites in turn; on an error a writer
    // moves on to the next node.
    let mut writers = Vec::new();
    for w in 0..6usize {
        let clients = clients.clone();
        let oracle = oracle.clone();
        let stop = stop.clone();
        let acks = acks.clone();
        writers.push(tokio::spawn(async move {
            let mut node = w % clients.len();
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let key = format!("lk/{w}/{}", seq % 40).into_bytes();
                let value = format!("{w}:{seq}").into_bytes();
                seq += 1;
                match clients[node].put(&key, &value).await {
                    Ok(_) => {
                        let mut oracle = oracle.lock().unwrap();
                        let h = oracle.entry(key.clone()).or_default();
                        h.acked = Some(value);
                        h.unknown_since_ack.clear();
                        acks.lock()
                            .unwrap()
                            .push((Instant::now(), shard_of(&key, SHARDS)));
                    }
                    Err(_) => {
                        oracle
                            .lock()
                            .unwrap()
                            .entry(key)
                            .or_default()
                            .unknown_since_ack
                            .push(value);
                        node = (node + 1) % clients.len();
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            }
        }));
    }

    // Under load first: every writer has writes acknowledged.
    let acked_by = |since: Instant| {
        acks.lock()
            .unwrap()
            .iter()
            .filter(|(t, _)| *t > since)
            .count()
    };
    let start = Instant::now();
    eventually("writes under way", Duration::from_secs(30), || async {
        let n = acked_by(start);
        (n >= 60)
            .then_some(())
            .ok_or(format!("{n} writes acknowledged"))
    })
    .await;
    // Kill the node leading the most shards.
    let status = cluster.status(1).await;
    let mut led: BTreeMap<u64, usize> = BTreeMap::new();
    for shard in &status.shards {
        *led.entry(shard.leader.expect("leader")).or_default() += 1;
    }
    let victim = led
        .iter()
        .max_by_key(|(_, n)| **n)
        .map(|(id, _)| *id as usize)
        .expect("a leader");
    let killed_at = Instant::now();
    cluster.kill(victim).await;

    // Every shard accepts writes again through the survivors (the time it took is
    // printed; a test never fails on timing, only on a shard that never recovers).
    let survivors: Vec<Client> = cluster
        .running()
        .into_iter()
        .map(|id| cluster.client(id))
        .collect();
    for shard in 0..SHARDS {
        let key = (0..)
            .map(|n| format!("probe/{n}"))
            .find(|k| shard_of(k.as_bytes(), SHARDS) == shard)
            .expect("a key in every shard");
        put_retrying(
            &survivors,
            key.as_bytes(),
            b"after kill",
            Duration::from_secs(60),
        )
        .await;
    }
    let recovered = killed_at.elapsed();
    eprintln!("killed node {victim} (leader of {led:?}); all shards writable after {recovered:?}");

    // The victim comes back while the writers go on; they stop once it is ready and
    // more writes were acknowledged after that.
    cluster.start_node(victim);
    cluster.wait_ready().await;
    let restarted = Instant::now();
    eventually(
        "writes after the restart",
        Duration::from_secs(30),
        || async {
            let n = acked_by(restarted);
            (n >= 30)
                .then_some(())
                .ok_or(format!("{n} writes acknowledged"))
        },
    )
    .await;
    stop.store(true, Ordering::Relaxed);
    for writer in writers {
        writer.await.expect("writer task");
    }
    cluster.wait_ready().await;
    let acked_after_kill: BTreeSet<u32> = acks
        .lock()
        .unwrap()
        .iter()
        .filter(|(t, _)| *t > killed_at)
        .map(|(_, shard)| *shard)
        .collect();
    assert!(
        !acked_after_kill.is_empty(),
        "writers made no progress after the kill"
    );

    // Every acknowledged write reads back, linearizably, from every node.
    let oracle = oracle.lock().unwrap().clone();
    assert!(
        oracle.values().filter(|h| h.acked.is_some()).count() >= 100,
        "too few acknowledged writes"
    );
    let mut final_values: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for node in cluster.ids() {
        let client = cluster.client(node);
        for (key, history) in &oracle {
            let got = client
                .get(key)
                .await
                .unwrap_or_else(|e| {
                    panic!(
                        "read {:?} on node {node}: {e}",
                        String::from_utf8_lossy(key)
                    )
                })
                .map(|g| g.value);
            assert!(
                history.allows(got.as_deref()),
                "{:?} on node {node} reads {:?}, but the last acknowledged value is {:?} (unacknowledged since: {:?})",
                String::from_utf8_lossy(key),
                got.as_deref().map(String::from_utf8_lossy),
                history.acked.as_deref().map(String::from_utf8_lossy),
                history.unknown_since_ack.iter().map(|v| String::from_utf8_lossy(v)).collect::<Vec<_>>()
            );
            let previous = final_values.insert(key.clone(), got.clone());
            if let Some(previous) = previous {
                assert_eq!(
                    previous,
                    got,
                    "nodes disagree on {:?}",
                    String::from_utf8_lossy(key)
                );
            }
        }
    }

    // The restarted node catches up: its stale reads converge on the same values.
    let client = cluster.client(victim);
    eventually(
        &format!("stale reads on restarted node {victim}"),
        Duration::from_secs(30),
        || {
            let client = client.clone();
            let final_values = final_values.clone();
            async move {
                for (key, want) in &final_values {
                    let got = client
                        .get_with(key, Consistency::Stale)
                        .await
                        .map_err(|e| e.to_string())?
                        .map(|g| g.value);
                    if &got != want {
                        return Err(format!(
                            "{:?}: {got:?} != {want:?}",
                            String::from_utf8_lossy(key)
                        ));
                    }
                }
                Ok(())
            }
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn whole_cluster_sigkill_keeps_acknowledged_writes() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for i in 0..300usize {
        let key = format!("crash/{i}").into_bytes();
        let value = format!("value {i}").into_bytes();
        cluster
            .client(1 + i % 3)
            .put(&key, &value)
            .await
            .expect("put");
        expected.insert(key, value);
    }
    for i in (0..300).step_by(7) {
        let key = format!("crash/{i}").into_bytes();
        assert!(
            cluster
                .client(1 + i % 3)
                .delete(&key)
                .await
                .expect("delete")
                .deleted
        );
        expected.remove(&key);
    }
    let batch_keys: Vec<Vec<u8>> = {
        let shard = shard_of(b"crashbatch/0", SHARDS);
        (0..)
            .map(|n| format!("crashbatch/{n}").into_bytes())
            .filter(|k| shard_of(k, SHARDS) == shard)
            .take(5)
            .collect()
    };
    let ops = batch_keys
        .iter()
        .map(|k| cairn_client::api::BatchOp::put(k, b"batched"))
        .collect();
    cluster.client(2).batch(ops).await.expect("batch");
    for key in batch_keys {
        expected.insert(key, b"batched".to_vec());
    }

    // Without a majority, a node stops claiming readiness.
    cluster.kill(2).await;
    cluster.kill(3).await;
    let ready = format!("http://{}/ready", cluster.http_addr(1));
    eventually(
        "node 1 alone reports 503 not_ready",
        Duration::from_secs(20),
        || {
            let ready = ready.clone();
            async move {
                let resp = reqwest::get(&ready).await.map_err(|e| e.to_string())?;
                let status = resp.status().as_u16();
                let body = resp.text().await.map_err(|e| e.to_string())?;
                let code = serde_json::from_str::<cairn_client::api::ErrorBody>(&body)
                    .map(|b| b.error.code)
                    .unwrap_or_default();
                if status == 503 && code == "not_ready" {
                    Ok(())
                } else {
                    Err(format!("{status} {body}"))
                }
            }
        },
    )
    .await;
    assert!(!cluster.client(1).ready().await.expect("GET /ready"));

    cluster.restart_all().await;

    for node in cluster.ids() {
        assert_all_values(&cluster, node, &expected, Consistency::Linearizable).await;
        let all = cluster
            .client(node)
            .scan_all(b"crash", Consistency::Linearizable)
            .await
            .unwrap();
        let all: BTreeMap<Vec<u8>, Vec<u8>> = all.into_iter().map(|(k, v, _)| (k, v)).collect();
        assert!(
            all == expected,
            "after restart, node {node} scans {} keys, want {}",
            all.len(),
            expected.len()
        );
    }
    // And the cluster still takes writes.
    cluster
        .client(3)
        .put(b"crash/after", b"yes")
        .await
        .expect("put after restart");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lagging_node_catches_up_by_snapshot() {
    let mut cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--log-compact-entries".into(), "50".into()],
        ..ClusterOptions::default()
    })
    .await;
    cluster.kill(3).await;

    let writers: Vec<Client> = vec![cluster.client(1), cluster.client(2)];
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for i in 0..600usize {
        let key = format!("snap/{i:04}").into_bytes();
        let value = format!("snapshot value {i}").into_bytes();
        let order = [writers[i % 2].clone(), writers[(i + 1) % 2].clone()];
        put_retrying(&order, &key, &value, Duration::from_secs(20)).await;
        expected.insert(key, value);
    }
    let per_shard: BTreeMap<u32, usize> = expected.keys().fold(BTreeMap::new(), |mut m, k| {
        *m.entry(shard_of(k, SHARDS)).or_default() += 1;
        m
    });
    eprintln!("keys per shard: {per_shard:?}");

    // The live replicas compacted their logs past the point node 3 last saw.
    let c1 = cluster.client(1);
    eventually("log compaction on node 1", Duration::from_secs(15), || {
        let c1 = c1.clone();
        async move {
            let status = c1.cluster().await.map_err(|e| e.to_string())?;
            let uncompacted: Vec<_> = status
                .shards
                .iter()
                .filter(|s| s.first_index <= 1)
                .map(|s| s.id)
                .collect();
            if uncompacted.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "shards {uncompacted:?} still have first_index <= 1: {:?}",
                    status.shards
                ))
            }
        }
    })
    .await;

    let target = leader_commits(&cluster).await;
    assert_eq!(
        target.len(),
        SHARDS as usize,
        "every shard has a live leader: {target:?}"
    );
    cluster.start_node(3);
    let c3 = cluster.client(3);
    let status = eventually("node 3 catches up", Duration::from_secs(30), || {
        let c3 = c3.clone();
        let target = target.clone();
        async move {
            let status = c3.cluster().await.map_err(|e| e.to_string())?;
            for shard in &status.shards {
                let want = target.get(&shard.id).copied().unwrap_or(u64::MAX);
                if shard.applied < want {
                    return Err(format!(
                        "shard {} applied {} < {want}",
                        shard.id, shard.applied
                    ));
                }
            }
            if status.shards.len() != SHARDS as usize {
                return Err(format!("{} shards", status.shards.len()));
            }
            Ok(status)
        }
    })
    .await;
    let installed: Vec<(u32, u64)> = status
        .shards
        .iter()
        .map(|s| (s.id, s.snapshots_installed))
        .collect();
    assert!(
        installed.iter().any(|(_, n)| *n > 0),
        "node 3 caught up without installing any snapshot: {installed:?}"
    );
    assert_all_values(&cluster, 3, &expected, Consistency::Stale).await;
    cluster.wait_ready().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_data_dir_is_refused() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    cluster.client(1).put(b"mine", b"node data").await.unwrap();
    cluster.kill_all().await;

    // Node 1's configuration, exactly, but node 3's data dir.
    let node3_dir = cluster.data_dir(3);
    let mut args = cluster.node_args(1);
    set_arg(&mut args, "--data-dir", &node3_dir.display().to_string());
    let (status, stderr) = run_to_exit(&args).await;
    assert!(
        !status.success(),
        "node 1 started on node 3's data dir; stderr:\n{stderr}"
    );
    assert_names_data_dir(&stderr, &node3_dir.display().to_string());
    let lower = stderr.to_lowercase();
    assert!(
        ["node id", "node_id", "node-id", "node 3"]
            .iter()
            .any(|s| lower.contains(s)),
        "stderr does not name the node id mismatch:\n{stderr}"
    );

    // Node 3's own configuration, but another cluster: another shard count, or
    // other members.
    let node3 = cluster.node_args(3);
    let mut other_shards = node3.clone();
    set_arg(&mut other_shards, "--shards", "4");
    let mut other_members = node3.clone();
    set_arg(
        &mut other_members,
        "--initial-cluster",
        &format!("3={}", cluster.peer_addr(3)),
    );
    for (what, args, word) in [
        ("another shard count", other_shards, "shard"),
        ("other members", other_members, "cluster"),
    ] {
        let (status, stderr) = run_to_exit(&args).await;
        assert!(
            !status.success(),
            "node 3 started on its data dir with {what}; stderr:\n{stderr}"
        );
        assert_names_data_dir(&stderr, &node3_dir.display().to_string());
        assert!(
            stderr.to_lowercase().contains(word),
            "stderr does not explain the mismatch ({what}):\n{stderr}"
        );
    }

    // The rightful owners still start on their own data.
    cluster.restart_all().await;
    let got = cluster
        .client(2)
        .get(b"mine")
        .await
        .unwrap()
        .map(|g| g.value);
    assert_eq!(got.as_deref(), Some(&b"node data"[..]));
}

/// Issue 14: a follower whose data directory was wiped, started again, initialised a
/// new directory and its replica threads panicked inside raft-rs while the process
/// kept serving HTTP. It must stop, whole, and say that it lost what it had
/// acknowledged (its peers refuse its new data incarnation); the other two keep
/// serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wiped_node_stops_and_says_why() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let client = cluster.client(1);
    for i in 0..40u32 {
        put_retrying(
            std::slice::from_ref(&client),
            format!("wiped/{i}").as_bytes(),
            b"before",
            Duration::from_secs(10),
        )
        .await;
    }
    // Every shard's leader must have counted node 3's acknowledgements: wait until
    // node 3 has applied what each leader committed.
    let commits = leader_commits(&cluster).await;
    eventually(
        "node 3 to apply every shard's writes",
        Duration::from_secs(20),
        || {
            let cluster = &cluster;
            let commits = &commits;
            async move {
                let status = cluster.status(3).await;
                let behind: Vec<u32> = status
                    .shards
                    .iter()
                    .filter(|s| commits.get(&s.id).is_some_and(|&c| s.applied < c))
                    .map(|s| s.id)
                    .collect();
                if behind.is_empty() {
                    Ok(())
                } else {
                    Err(format!("shards {behind:?} behind"))
                }
            }
        },
    )
    .await;

    cluster.kill(3).await;
    std::fs::remove_dir_all(cluster.data_dir(3)).unwrap();
    cluster.start_node(3);
    let Some(status) = cluster.wait_exit(3, Duration::from_secs(30)).await else {
        cluster.print_log_tail(3, 40);
        panic!("node 3 kept running on a wiped data directory");
    };
    let log = std::fs::read_to_string(cluster.stderr_path(3)).unwrap_or_default();
    assert!(!status.success(), "node 3 exited with {status}");
    // Its peers refuse its new data directory, or a leader's heartbeat shows the
    // gap in its log: whichever comes first, it says it must not rejoin.
    assert!(
        log.contains("must not rejoin as a voter"),
        "node 3 did not say why it stopped:\n{}",
        cluster.log_tail(3, 40)
    );
    // The survivors still serve every shard.
    for i in 0..40u32 {
        let key = format!("wiped/{i}");
        let got = client.get(key.as_bytes()).await.unwrap().map(|g| g.value);
        assert_eq!(got.as_deref(), Some(&b"before"[..]), "{key}");
    }
    put_retrying(
        std::slice::from_ref(&client),
        b"wiped/after",
        b"after",
        Duration::from_secs(10),
    )
    .await;
}

/// Issue 14, "Addresses": peers named by host name (as compose services and
/// StatefulSets name them), resolved at each dial. Three fresh nodes whose
/// `--initial-cluster` and `--peer` say `localhost` form a cluster that replicates and
/// forwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_named_by_host_name_form_a_cluster() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    cluster.kill_all().await;
    let mut children = Vec::new();
    for id in cluster.ids() {
        std::fs::remove_dir_all(cluster.data_dir(id)).unwrap();
        let mut args = cluster.node_args(id);
        let peer = cluster.peer_addr(id);
        for flag in ["--peer", "--initial-cluster"] {
            let at = args.iter().position(|a| a == flag).unwrap() + 1;
            args[at] = args[at].replace("127.0.0.1:", "localhost:");
        }
        assert!(!args.iter().any(|a| a == "--peer-listen"), "{args:?}");
        args.extend(["--peer-listen".into(), peer.to_string()]);
        let mut command = tokio::process::Command::from(Cluster::command(&args));
        command
            .kill_on_drop(true)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(cluster.dir().join(format!("named-{id}.log"))).unwrap());
        children.push(command.spawn().expect("start cairn"));
    }
    let client = |id: usize| cluster.client(id);
    eventually(
        "the named cluster to be ready",
        Duration::from_secs(30),
        || {
            let c = client(3);
            async move {
                match c.put(b"named/probe", b"x").await {
                    Ok(_) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
        },
    )
    .await;
    put_retrying(
        &[client(1)],
        b"named/k",
        b"through a name",
        Duration::from_secs(10),
    )
    .await;
    for id in cluster.ids() {
        let got = client(id).get(b"named/k").await.unwrap().map(|g| g.value);
        assert_eq!(got.as_deref(), Some(&b"through a name"[..]), "node {id}");
    }
    let status = cluster.status(1).await;
    assert!(
        status
            .nodes
            .iter()
            .all(|n| n.peer_addr.starts_with("localhost:")),
        "{:?}",
        status.nodes
    );
    drop(children);
}

fn set_arg(args: &mut [String], flag: &str, value: &str) {
    let at = args
        .iter()
        .position(|a| a == flag)
        .unwrap_or_else(|| panic!("{flag} in {args:?}"));
    args[at + 1] = value.to_owned();
}

#[track_caller]
fn assert_names_data_dir(stderr: &str, dir: &str) {
    let lower = stderr.to_lowercase();
    assert!(
        ["data dir", "data_dir", "data-dir"]
            .iter()
            .any(|s| lower.contains(s))
            || stderr.contains(dir),
        "stderr does not name the data dir:\n{stderr}"
    );
}

/// Runs `cairn` with `args` until it exits (at most 20 s, then SIGKILL and panic).
async fn run_to_exit(args: &[String]) -> (std::process::ExitStatus, String) {
    let mut command = tokio::process::Command::from(Cluster::command(args));
    command
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(Duration::from_secs(20), command.output())
        .await
        .unwrap_or_else(|_| {
            panic!("cairn {args:?} still running after 20 s; it should have refused to start")
        })
        .expect("run cairn");
    (
        output.status,
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_is_a_clean_shutdown_and_the_node_restarts_with_its_data() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for i in 0..100usize {
        let key = format!("term/{i}").into_bytes();
        let value = format!("v{i}").into_bytes();
        cluster.client(1 + i % 3).put(&key, &value).await.unwrap();
        expected.insert(key, value);
    }
    // Node 2 has applied everything before it stops.
    let c2 = cluster.client(2);
    let want = expected.clone();
    eventually(
        "node 2 applied every write",
        Duration::from_secs(10),
        || {
            let c2 = c2.clone();
            let want = want.clone();
            async move {
                let all = c2
                    .scan_all(b"term/", Consistency::Stale)
                    .await
                    .map_err(|e| e.to_string())?;
                let got: BTreeMap<Vec<u8>, Vec<u8>> =
                    all.into_iter().map(|(k, v, _)| (k, v)).collect();
                if got == want {
                    Ok(())
                } else {
                    Err(format!("{} of {} keys", got.len(), want.len()))
                }
            }
        },
    )
    .await;
    let applied_before: BTreeMap<u32, u64> = cluster
        .status(2)
        .await
        .shards
        .iter()
        .map(|s| (s.id, s.applied))
        .collect();

    cluster.stop(2).await;
    cluster.start_node(2);
    cluster.wait_ready().await;

    let status = cluster.status(2).await;
    for shard in &status.shards {
        assert!(
            shard.applied >= applied_before[&shard.id],
            "shard {} on node 2 went back from applied {} to {}",
            shard.id,
            applied_before[&shard.id],
            shard.applied
        );
    }
    assert_all_values(&cluster, 2, &expected, Consistency::Stale).await;
    assert_all_values(&cluster, 2, &expected, Consistency::Linearizable).await;
    cluster
        .client(2)
        .put(b"term/after", b"yes")
        .await
        .expect("put after restart");

    // SIGTERM of every node is clean too.
    for id in cluster.ids() {
        cluster.stop(id).await;
    }
}

/// Issue 11: a scan of large values through a follower built an answer larger than a
/// peer frame; the leader's writer for that connection stopped while its reader went
/// on executing forwarded calls, so every later write through the followers timed out
/// (`outcome_unknown`) until a restart. Now every page has a byte budget, every limit
/// fits under the frame cap by construction, an answer that still cannot be framed is
/// an error answer, and a link that stops answering is re-dialled.
///
/// The limits are scaled down (a 4 MiB frame, 512 KiB values) so the sequence runs
/// in seconds: 24 values hold 12 MiB, three frames' worth, in two shards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_values_page_by_bytes_through_every_node_and_links_keep_answering() {
    const VALUE: usize = 500_000;
    const PAGE_BYTES: usize = 1 << 20;
    const ENTRY_BYTES: usize = 2 << 20;
    let args = [
        ("--max-frame-bytes", 4usize << 20),
        ("--max-entry-bytes", ENTRY_BYTES),
        ("--max-request-bytes", 1 << 20),
        ("--max-value-bytes", 512 << 10),
        ("--max-page-bytes", PAGE_BYTES),
    ];
    let cluster = Cluster::start(ClusterOptions {
        shards: 2,
        extra_args: args
            .iter()
            .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
            .collect(),
        ..Default::default()
    })
    .await;
    let clients: Vec<Client> = cluster.ids().iter().map(|&id| cluster.client(id)).collect();
    let key = |i: usize| format!("big{i:02}").into_bytes();
    let value = |i: usize, round: u8| vec![b'a' + (i % 26) as u8 + round; VALUE];
    let keys = 24;

    let before = clients[0].create_snapshot(Some("before")).await.unwrap();
    for i in 0..keys {
        // Spread over the nodes: two of every three writes are forwarded.
        put_retrying(
            &clients[i % 3..=i % 3],
            &key(i),
            &value(i, 0),
            Duration::from_secs(20),
        )
        .await;
    }
    clients[0].create_snapshot(Some("written")).await.unwrap();
    let all_written: Vec<(Vec<u8>, Vec<u8>)> = (0..keys).map(|i| (key(i), value(i, 0))).collect();

    // A full page (limit 1000) through every node, the followers included: pages end
    // at the byte budget, and following them yields every key exactly once.
    for (n, client) in clients.iter().enumerate() {
        let mut got = Vec::new();
        let mut pages = 0;
        let mut opts = cairn_client::ScanOptions {
            prefix: b"big".to_vec(),
            start_after: None,
            limit: Some(1000),
            consistency: Consistency::Linearizable,
        };
        loop {
            let page = client
                .scan(&opts)
                .await
                .unwrap_or_else(|e| panic!("scan through node {}: {e}", n + 1));
            pages += 1;
            let bytes: usize = page
                .items
                .iter()
                .map(|i| i.key_bytes().unwrap().len() + i.value_bytes().unwrap().len())
                .sum();
            assert!(
                page.items.len() == 1 || bytes <= PAGE_BYTES,
                "a page of {} items holds {bytes} bytes, over the budget",
                page.items.len()
            );
            for item in &page.items {
                got.push((item.key_bytes().unwrap(), item.value_bytes().unwrap()));
            }
            match page.next_start_after {
                Some(next) => {
                    opts.start_after = Some(percent_encoding::percent_decode_str(&next).collect())
                }
                None => break,
            }
        }
        assert_eq!(got, all_written, "scan through node {}", n + 1);
        assert!(
            pages >= 6,
            "12 MiB in pages of 1 MiB took only {pages} pages"
        );
    }
    writes_through_every_node(&clients, "after-scan").await;

    // The same for a diff between two snapshots.
    for (n, client) in clients.iter().enumerate() {
        let mut changed = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = client
                .diff("before", "written", b"big", after.as_deref(), Some(1000))
                .await
                .unwrap_or_else(|e| panic!("diff through node {}: {e}", n + 1));
            for change in &page.changes {
                let key = cairn_client::api::join_bytes(&change.key, &change.key_b64).unwrap();
                let value =
                    cairn_client::api::join_bytes(&change.value, &change.value_b64).unwrap();
                changed.push((key, value));
            }
            match page.next_start_after {
                Some(next) => after = Some(percent_encoding::percent_decode_str(&next).collect()),
                None => break,
            }
        }
        assert_eq!(changed, all_written, "diff through node {}", n + 1);
    }
    writes_through_every_node(&clients, "after-diff").await;

    // A revert that would write more than one entry per shard is refused (413) before
    // anything is proposed, and changes nothing; a narrower one goes through.
    for i in 0..keys {
        clients[0].put(&key(i), b"small").await.unwrap();
    }
    for client in &clients {
        match client.revert(b"big", "written").await {
            Err(e) => {
                assert_eq!(e.code(), Some("revert_too_large"), "{e}");
                assert!(e.to_string().contains("entry limit"), "{e}");
            }
            Ok(r) => panic!("a 12 MiB revert was accepted: {r:?}"),
        }
    }
    let now = clients[1]
        .scan_all(b"big", Consistency::Linearizable)
        .await
        .unwrap();
    assert!(
        now.iter().all(|(_, v, _)| v == b"small"),
        "a refused revert changed something"
    );
    assert_eq!(now.len(), keys);
    let reverted = clients[2].revert(b"big00", "written").await.unwrap();
    assert_eq!(reverted.restored, 1);
    let got = clients[1].get(&key(0)).await.unwrap().unwrap();
    assert_eq!(got.value, value(0, 0));
    // Reverting to before the writes deletes them: small entries, accepted.
    let deleted = clients[1]
        .revert(b"big", &before.id.to_string())
        .await
        .unwrap();
    assert_eq!(deleted.deleted as usize, keys);
    writes_through_every_node(&clients, "after-revert").await;

    // A batch near the request limit is one entry within the entry limit.
    let ops = (0..2)
        .map(|i| {
            cairn_client::api::BatchOp::put(format!("batch{i}").as_bytes(), &value(i, 1)[..400_000])
        })
        .collect();
    clients[1].batch(ops).await.unwrap();

    // No frame was refused and no link had to be re-dialled: the budgets kept every
    // answer under the cap.
    for (n, client) in clients.iter().enumerate() {
        let status = client.cluster().await.unwrap();
        assert_eq!(status.links.len(), 2, "node {}", n + 1);
        for link in &status.links {
            assert_eq!(link.state, "up", "node {} link {link:?}", n + 1);
            assert_eq!(
                (link.resets, link.oversized_frames),
                (0, 0),
                "node {} link {link:?}",
                n + 1
            );
        }
    }
}

/// A small write through every node must succeed (forwarded from two of them).
async fn writes_through_every_node(clients: &[Client], tag: &str) {
    for (n, client) in clients.iter().enumerate() {
        let key = format!("{tag}/{}", n + 1);
        let version =
            tokio::time::timeout(Duration::from_secs(10), client.put(key.as_bytes(), b"x"))
                .await
                .unwrap_or_else(|_| panic!("a write through node {} hung", n + 1))
                .unwrap_or_else(|e| panic!("a write through node {}: {e}", n + 1));
        assert!(version > 0);
    }
}

/// SIGTERM drains: requests in flight when the signal arrives finish and are
/// acknowledged (and durable), and the process exits cleanly. The writes are held inside node 1's handler by the delay point
/// `api.write.delay`, and the signal is sent once its log shows every one of them
/// there, so they are in flight for certain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_requests_in_flight_finish() {
    let mut cluster = Cluster::start(ClusterOptions::default()).await;
    cluster.kill(1).await;
    cluster.start_node_with_env(1, &[("FAILPOINTS", "api.write.delay=return(2000)")]);
    cluster.wait_ready().await;
    let node1 = cluster.client(1);
    let writes = 6;
    let in_flight: Vec<_> = (0..writes)
        .map(|i| {
            let client = node1.clone();
            tokio::spawn(async move {
                client
                    .put(format!("drain/{i}").as_bytes(), b"in flight")
                    .await
            })
        })
        .collect();
    let log = cluster.stderr_path(1);
    eventually(
        "every write is in node 1's handler",
        Duration::from_secs(20),
        || {
            let log = log.clone();
            async move {
                let text = std::fs::read_to_string(&log).map_err(|e| e.to_string())?;
                let held = text.matches("api.write.delay: holding a write").count();
                (held >= writes).then_some(()).ok_or(format!("{held} held"))
            }
        },
    )
    .await;
    // SIGTERM, and wait for the process to exit: it must drain, not abandon, them.
    let status = cluster.terminate(1).await;
    assert!(status.success(), "node 1 exited with {status}");
    for (i, write) in in_flight.into_iter().enumerate() {
        let answer = write.await.expect("writer task");
        assert!(answer.is_ok(), "write {i} in flight at SIGTERM: {answer:?}");
    }
    cluster.start_node(1);
    cluster.wait_ready().await;
    for i in 0..writes {
        let got = cluster
            .client(1)
            .get(format!("drain/{i}").as_bytes())
            .await
            .unwrap();
        assert_eq!(
            got.map(|g| g.value),
            Some(b"in flight".to_vec()),
            "drain/{i}"
        );
    }
}
