//! Crashes at crash points (`crash_point!`, the `fail` crate; armed through
//! `FAILPOINTS` in test builds) in real `cairn` processes, and what must hold after a
//! restart:
//!
//! - `write_path_crashes_lose_no_acknowledged_write`: before and after log append,
//!   hard-state write, fsync, apply and log compaction, each on a different node while
//!   clients write: the node aborts, restarts, and every acknowledged write is there,
//!   on its replica too.
//! - `raft_snapshot_crashes_recover`: a follower that needs a Raft snapshot crashes
//!   while installing one (before and after the data, before the log metadata), and
//!   leaders crash as they start sending one; after restarts all replicas agree.
//! - `coordinator_crashes_leave_nothing_half_done`: the node coordinating a snapshot,
//!   a cross-shard batch or a backup crashes at each stage; the sweepers end what it
//!   began (a pending epoch aborted, a transaction aborted or committed *entirely*, a
//!   backup failed and absent from its destination) and the cluster keeps working.
//! - `restore_crashes_write_nothing`: `cairn restore` killed at each stage leaves no
//!   data directory; run again, it succeeds.
//!
//! Each case checks that its point really fired (the node died of SIGABRT with the
//! point's name in its log), so a renamed point cannot pass silently.

mod harness;

use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::time::Duration;

use cairn_client::api::{BatchOp, CreateBackup};
use cairn_client::{Client, Consistency};
use harness::{eventually, shard_of, Cluster, ClusterOptions};

/// How long a case waits for its point to fire.
const FIRE_WITHIN: Duration = Duration::from_secs(30);

fn options(extra: &[&str]) -> ClusterOptions {
    ClusterOptions {
        extra_args: extra.iter().map(|s| s.to_string()).collect(),
        ..ClusterOptions::default()
    }
}

/// Restart node `id` with `point` armed to crash after `skip` passes.
async fn arm(cluster: &mut Cluster, id: usize, point: &str, skip: u32) {
    if cluster.is_running(id) {
        cluster.kill(id).await;
    }
    let spec = format!("{point}={skip}*off->return");
    cluster.start_node_with_env(id, &[("FAILPOINTS", &spec)]);
}

/// Wait for node `id` to die at `point` (SIGABRT, and the point named in its log).
async fn assert_fired(cluster: &mut Cluster, id: usize, point: &str) {
    let Some(status) = cluster.wait_exit(id, FIRE_WITHIN).await else {
        cluster.print_log_tail(id, 40);
        panic!("crash point {point} did not fire on node {id} within {FIRE_WITHIN:?}");
    };
    let log = std::fs::read_to_string(cluster.stderr_path(id)).unwrap_or_default();
    assert!(
        status.signal() == Some(libc::SIGABRT)
            && log.contains(&format!("crash point `{point}` fired")),
        "node {id} exited with {status}, not at crash point {point}"
    );
}

/// Writes `prefix{n}` through every node in turn, eight at a time, until `stop(n)`
/// says so, keeping what was acknowledged.
async fn write_until(
    cluster: &Cluster,
    prefix: &str,
    acked: &mut BTreeMap<Vec<u8>, Vec<u8>>,
    mut stop: impl FnMut(usize) -> bool,
) {
    let clients: Vec<Client> = cluster.ids().iter().map(|&id| cluster.client(id)).collect();
    let mut n = 0;
    while !stop(n) {
        let writes = (n..n + 8).map(|i| {
            let key = format!("{prefix}{i:05}").into_bytes();
            let value = format!("v{i}").into_bytes();
            let client = clients[i % clients.len()].clone();
            async move {
                // An error (the crashing node, or its leadership) leaves the write
                // unknown: it is not required, and not forbidden, afterwards.
                let put = tokio::time::timeout(Duration::from_secs(6), client.put(&key, &value));
                put.await.is_ok_and(|r| r.is_ok()).then_some((key, value))
            }
        });
        acked.extend(
            futures::future::join_all(writes)
                .await
                .into_iter()
                .flatten(),
        );
        n += 8;
    }
}

/// Every acknowledged write is readable through every node, and node `id`'s own
/// replica (a stale read) has caught up with all of them.
async fn assert_kept(cluster: &Cluster, id: usize, acked: &BTreeMap<Vec<u8>, Vec<u8>>) {
    for reader in cluster.ids() {
        let client = cluster.client(reader);
        for (key, value) in acked {
            let got = client.get(key).await.expect("read").map(|g| g.value);
            assert_eq!(
                got.as_deref(),
                Some(value.as_slice()),
                "acknowledged write {} lost (read via node {reader})",
                String::from_utf8_lossy(key)
            );
        }
    }
    let client = cluster.client(id);
    eventually(
        "the restarted replica catches up",
        Duration::from_secs(20),
        || async {
            for (key, value) in acked {
                let got = client
                    .get_with(key, Consistency::Stale)
                    .await
                    .map_err(|e| e.to_string())?
                    .map(|g| g.value);
                if got.as_deref() != Some(value.as_slice()) {
                    return Err(format!("{} not there yet", String::from_utf8_lossy(key)));
                }
            }
            Ok(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn write_path_crashes_lose_no_acknowledged_write() {
    let mut cluster = Cluster::start(options(&["--log-compact-entries", "40"])).await;
    let points = [
        ("log.append.before", 30),
        ("log.append.after", 30),
        ("log.hard_state.before", 30),
        ("log.hard_state.after", 30),
        ("store.fsync.before", 30),
        ("store.fsync.after", 30),
        ("state.apply.before", 30),
        ("state.apply.after", 30),
        ("log.compact.before", 2),
        ("log.compact.after", 2),
    ];
    let mut acked = BTreeMap::new();
    for (i, (point, skip)) in points.into_iter().enumerate() {
        let victim = 1 + i % 3;
        arm(&mut cluster, victim, point, skip).await;
        let prefix = format!("w/{point}/");
        let deadline = std::time::Instant::now() + FIRE_WITHIN;
        let mut down = false;
        write_until(&cluster, &prefix, &mut acked, |n| {
            // Keep writing a little after the crash: the survivors must serve.
            if !down {
                down = std::fs::read_to_string(cluster.stderr_path(victim))
                    .unwrap_or_default()
                    .contains(&format!("crash point `{point}` fired"));
            }
            (down && n % 40 == 32) || std::time::Instant::now() > deadline
        })
        .await;
        assert_fired(&mut cluster, victim, point).await;
        cluster.start_node(victim);
        cluster.wait_ready().await;
        assert_kept(&cluster, victim, &acked).await;
    }
    assert!(
        acked.len() > 200,
        "too few acknowledged writes ({})",
        acked.len()
    );
}

/// Issue 14's fail-stop: a replica thread that panics takes the whole process down
/// with a message, rather than leaving it serving HTTP with a dead replica; restarted,
/// the node catches up.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_panicking_replica_thread_stops_the_whole_process() {
    let mut cluster = Cluster::start(options(&[])).await;
    cluster.kill(2).await;
    cluster.start_node_with_env(2, &[("FAILPOINTS", "state.apply.before=20*off->panic")]);
    let mut acked = BTreeMap::new();
    let deadline = std::time::Instant::now() + FIRE_WITHIN;
    write_until(&cluster, "panic/", &mut acked, |n| {
        n >= 100 || std::time::Instant::now() > deadline
    })
    .await;
    let Some(status) = cluster.wait_exit(2, FIRE_WITHIN).await else {
        cluster.print_log_tail(2, 40);
        panic!("node 2 kept running after its replica thread panicked");
    };
    let log = std::fs::read_to_string(cluster.stderr_path(2)).unwrap_or_default();
    assert!(
        status.signal() == Some(libc::SIGABRT) && log.contains("stopping the whole process"),
        "node 2 exited with {status}:\n{}",
        cluster.log_tail(2, 20)
    );
    cluster.start_node(2);
    cluster.wait_ready().await;
    assert_kept(&cluster, 2, &acked).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn raft_snapshot_crashes_recover() {
    let mut cluster = Cluster::start(options(&["--log-compact-entries", "40"])).await;
    let mut acked = BTreeMap::new();
    // The receiving side: a follower kept down past compaction needs a snapshot of
    // every shard, and crashes installing the first one.
    for (i, point) in [
        "state.snapshot_install.before",
        "state.snapshot_install.after",
        "log.snapshot_metadata.before",
    ]
    .into_iter()
    .enumerate()
    {
        let follower = 1 + i % 3;
        cluster.kill(follower).await;
        // Enough per shard (8 shards) to compact past where the follower stopped.
        write_until(&cluster, &format!("s/{point}/"), &mut acked, |n| n >= 720).await;
        arm(&mut cluster, follower, point, 0).await;
        assert_fired(&mut cluster, follower, point).await;
        cluster.start_node(follower);
        cluster.wait_ready().await;
        assert_kept(&cluster, follower, &acked).await;
    }
    // The sending side: the two others are armed to crash as they start streaming a
    // snapshot to the third, kept down past compaction; whichever leads crashes.
    let point = "state.snapshot_export";
    cluster.kill(3).await;
    write_until(&cluster, "s/export/", &mut acked, |n| n >= 720).await;
    for sender in [1, 2] {
        arm(&mut cluster, sender, point, 0).await;
    }
    cluster.wait_ready().await;
    cluster.start_node(3);
    let mut fired = 0;
    for sender in [1, 2] {
        if let Some(status) = cluster.wait_exit(sender, FIRE_WITHIN).await {
            assert_eq!(
                status.signal(),
                Some(libc::SIGABRT),
                "node {sender}: {status}"
            );
            fired += 1;
        }
    }
    assert!(fired > 0, "no leader crashed at {point}");
    for sender in [1, 2] {
        if !cluster.is_running(sender) {
            cluster.start_node(sender);
        } else {
            cluster.kill(sender).await;
            cluster.start_node(sender);
        }
    }
    cluster.wait_ready().await;
    assert_kept(&cluster, 3, &acked).await;
}

/// One key per shard, under `prefix`.
fn key_per_shard(prefix: &str) -> Vec<Vec<u8>> {
    (0..8u32)
        .map(|shard| {
            (0..)
                .map(|i| format!("{prefix}{i}").into_bytes())
                .find(|k| shard_of(k, 8) == shard)
                .expect("a key for every shard")
        })
        .collect()
}

/// Take a full backup to `destination` and wait until it is done.
async fn backup_done(client: &Client, destination: &str) {
    let request = CreateBackup {
        destination: Some(destination.to_owned()),
        ..CreateBackup::default()
    };
    let id = client.create_backup(&request).await.expect("backup").id;
    eventually("the backup completes", Duration::from_secs(30), || async {
        match client
            .backup(&id)
            .await
            .map_err(|e| e.to_string())?
            .state
            .as_str()
        {
            "done" => Ok(()),
            state => Err(state.to_owned()),
        }
    })
    .await;
}

fn manifests(dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok())
        .filter(|e| e.path().join("manifest.json").exists())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect()
}

/// What a snapshot coordinator that crashed at `point` left of its epoch: a finished
/// one (recorded done before the crash) is listed and readable; a pending one is
/// neither (404, or 503 `snapshot_aborted` once the sweeper aborted it).
async fn check_epoch(client: &Client, point: &str, epoch: u64) {
    let listed = client.list_all_snapshots().await.expect("list snapshots");
    let is_listed = listed.iter().any(|s| s.id == epoch);
    let shown = client.snapshot(&epoch.to_string()).await;
    let read = client
        .get_at(b"c/0", &cairn_client::ReadAt::id(epoch))
        .await;
    if point == "snapshot.finished" {
        assert!(is_listed, "{point}: snapshot {epoch} is not listed");
        assert!(shown.is_ok(), "{point}: snapshot {epoch}: {shown:?}");
        let read = read.unwrap_or_else(|e| panic!("{point}: read at {epoch}: {e}"));
        assert_eq!(read.snapshot, epoch);
    } else {
        assert!(
            !is_listed,
            "{point}: the unfinished snapshot {epoch} is listed"
        );
        for (what, code) in [
            (
                "show",
                shown.err().and_then(|e| e.code().map(str::to_owned)),
            ),
            ("read", read.err().and_then(|e| e.code().map(str::to_owned))),
        ] {
            assert!(
                matches!(
                    code.as_deref(),
                    Some("snapshot_not_found" | "snapshot_aborted")
                ),
                "{point}: {what} of the unfinished snapshot {epoch} answered {code:?}"
            );
        }
    }
}

/// The state (`pending`, `done`, `aborted`) the snapshot registry records for
/// `epoch`, read from node `node`'s replica of the meta group (group 8).
async fn registry_state(cluster: &Cluster, node: usize, epoch: u64) -> Option<String> {
    let key = [&b"s/id/"[..], &(!epoch).to_be_bytes()].concat();
    let url = format!(
        "http://{}/v1/debug/versions?shard=8",
        cluster.http_addr(node)
    );
    let body: serde_json::Value = reqwest::get(&url).await.ok()?.json().await.ok()?;
    let item = body["versions"]
        .as_array()
        .into_iter()
        .chain(body["base"].as_array())
        .flatten()
        .find(|v| version_key(v).as_deref() == Some(key.as_slice()))?;
    let record: serde_json::Value = serde_json::from_str(item["value"].as_str()?).ok()?;
    match &record["state"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.keys().next().cloned(),
        _ => None,
    }
}

/// The key of a `/v1/debug/versions` item, whichever form carries it.
fn version_key(item: &serde_json::Value) -> Option<Vec<u8>> {
    use base64::Engine as _;
    match (item["key"].as_str(), item["key_b64"].as_str()) {
        (Some(text), _) => Some(text.as_bytes().to_vec()),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64).ok(),
        _ => None,
    }
}

/// Every version of `key` on node `node`'s replica, newest first (`None`: deleted).
async fn key_history(cluster: &Cluster, node: usize, key: &[u8]) -> Vec<(u64, Option<Vec<u8>>)> {
    let shard = shard_of(key, 8);
    let url = format!(
        "http://{}/v1/debug/versions?shard={shard}",
        cluster.http_addr(node)
    );
    let body: serde_json::Value = reqwest::get(&url)
        .await
        .expect("debug versions")
        .json()
        .await
        .expect("debug versions JSON");
    let text = |v: &serde_json::Value| v.as_str().map(|s| s.as_bytes().to_vec());
    body["versions"]
        .as_array()
        .into_iter()
        .chain(body["base"].as_array())
        .flatten()
        .filter(|v| text(&v["key"]).as_deref() == Some(key))
        .map(|v| {
            let value = if v["deleted"].as_bool() == Some(true) {
                None
            } else {
                text(&v["value"])
            };
            (v["version"].as_u64().unwrap_or(0), value)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn coordinator_crashes_leave_nothing_half_done() {
    // No automatic snapshots: the points below fire only where a request sends them.
    let mut cluster = Cluster::start(options(&["--snapshot-interval-ms", "0"])).await;
    let backups = tempfile::tempdir().expect("backup dir");
    let destination = backups.path().display().to_string();
    let client = cluster.client(1);
    for i in 0..40 {
        client
            .put(format!("c/{i}").as_bytes(), b"x")
            .await
            .expect("seed");
    }
    for (i, point) in [
        "snapshot.allocated",
        "snapshot.marked",
        "snapshot.finished",
        "txn.prepared",
        "txn.decided",
        "backup.shard_file.before",
        "backup.shard_file.after",
        "backup.manifest.before",
        "backup.manifest.after",
    ]
    .into_iter()
    .enumerate()
    {
        let victim = 1 + i % 3;
        let other = cluster.client(1 + (i + 1) % 3);
        arm(&mut cluster, victim, point, 0).await;
        cluster.wait_ready().await;
        let coordinator = cluster.client(victim);
        let keys = key_per_shard(&format!("t/{point}/"));
        let mut backup_id = None;
        // Epochs are numbered in order and nothing else allocates one meanwhile: the
        // crashing coordinator's epoch is the one after a snapshot taken just before.
        let epoch = other
            .create_snapshot(None)
            .await
            .expect("snapshot before")
            .id
            + 1;
        match point.split('.').next() {
            Some("snapshot") => {
                let _ = coordinator.create_snapshot(None).await;
            }
            Some("txn") => {
                let ops = keys.iter().map(|k| BatchOp::put(k, b"all")).collect();
                let _ = coordinator.batch(ops).await;
            }
            _ => {
                let request = CreateBackup {
                    destination: Some(destination.clone()),
                    ..CreateBackup::default()
                };
                backup_id = Some(
                    coordinator
                        .create_backup(&request)
                        .await
                        .expect("backup started")
                        .id,
                );
            }
        }
        assert_fired(&mut cluster, victim, point).await;
        if point.starts_with("snapshot.") {
            // Before recovery: a pending epoch is not readable, a finished one is.
            check_epoch(&other, point, epoch).await;
        }
        cluster.start_node(victim);
        cluster.wait_ready().await;

        // What the dead coordinator began is ended by the others, and the cluster
        // works: writes are not held, snapshots and batches go through.
        match point {
            "txn.prepared" => {
                // Not decided: aborted by the sweeper; nothing of it visible.
                eventually(
                    "the transaction is aborted",
                    Duration::from_secs(20),
                    || async {
                        for k in &keys {
                            if other.get(k).await.map_err(|e| e.to_string())?.is_some() {
                                return Err("a key of an undecided transaction appeared".into());
                            }
                        }
                        Ok(())
                    },
                )
                .await;
            }
            "txn.decided" => {
                // Decided: committed on every shard, never half.
                eventually(
                    "the transaction is resolved",
                    Duration::from_secs(20),
                    || async {
                        for k in &keys {
                            let got = other.get(k).await.map_err(|e| e.to_string())?;
                            if got.map(|g| g.value).as_deref() != Some(b"all".as_slice()) {
                                return Err(format!(
                                    "{} not committed",
                                    String::from_utf8_lossy(k)
                                ));
                            }
                        }
                        Ok(())
                    },
                )
                .await;
            }
            _ => {}
        }
        if let Some(id) = backup_id {
            let record = eventually("the backup is failed", Duration::from_secs(20), || async {
                let record = other.backup(&id).await.map_err(|e| e.to_string())?;
                match record.state.as_str() {
                    "failed" => Ok(record),
                    state => Err(format!("backup {id} is {state}")),
                }
            })
            .await;
            assert!(record.error.is_some(), "{record:?}");
            assert!(
                !manifests(backups.path()).contains(&id),
                "{point}: a failed backup is still published at its destination"
            );
        }
        eventually("snapshots work again", Duration::from_secs(20), || async {
            other
                .create_snapshot(None)
                .await
                .map(drop)
                .map_err(|e| e.to_string())
        })
        .await;
        if point.starts_with("snapshot.") {
            // After recovery: the sweeper aborted a pending epoch (never readable,
            // never listed) or released a finished one (readable, listed). The
            // registry itself is read (the meta group, through the debug view):
            // through the API a pending epoch and an aborted one look alike.
            let node = 1 + (i + 1) % 3;
            let want = if point == "snapshot.finished" {
                "done"
            } else {
                "aborted"
            };
            eventually(
                &format!("{point}: epoch {epoch} {want} in the registry"),
                Duration::from_secs(20),
                || async {
                    let state = registry_state(&cluster, node, epoch).await;
                    (state.as_deref() == Some(want))
                        .then_some(())
                        .ok_or(format!("{state:?}"))
                },
            )
            .await;
            check_epoch(&other, point, epoch).await;
        }
        // Leaders may still be moving after the restart: a batch refused with
        // "nothing was written" (aborted, unavailable) is retried, as a client would.
        eventually(
            "a batch after the crash",
            Duration::from_secs(20),
            || async {
                let ops = keys.iter().map(|k| BatchOp::put(k, b"after")).collect();
                match other.batch(ops).await {
                    Ok(_) => Ok(()),
                    Err(e) if matches!(e.code(), Some("transaction_aborted" | "unavailable")) => {
                        Err(e.to_string())
                    }
                    Err(e) => panic!("a batch after the crash: {e}"),
                }
            },
        )
        .await;
        if point.starts_with("txn.") {
            // Each key's whole history, not only its value now: an undecided
            // transaction never wrote, a decided one wrote exactly once per key, and
            // the later batch came after.
            let writes = if point == "txn.prepared" { 0 } else { 1 };
            for k in &keys {
                // The debug view reads one node's replica, which may be a follower
                // that has not applied the batch yet: wait until it has.
                let node = 1 + (i + 1) % 3;
                let history = eventually(
                    "the batch applied on the replica read",
                    Duration::from_secs(10),
                    || async {
                        let history = key_history(&cluster, node, k).await;
                        match history.first() {
                            Some((_, Some(v))) if v.as_slice() == b"after" => Ok(history),
                            _ => Err(format!("{history:?}")),
                        }
                    },
                )
                .await;
                let values: Vec<Option<&[u8]>> =
                    history.iter().map(|(_, v)| v.as_deref()).collect();
                assert_eq!(
                    values
                        .iter()
                        .filter(|v| **v == Some(b"all".as_slice()))
                        .count(),
                    writes,
                    "{point}: {} has history {values:?}",
                    String::from_utf8_lossy(k)
                );
                assert_eq!(
                    values.first().copied().flatten(),
                    Some(b"after".as_slice()),
                    "{point}: {} has history {values:?}",
                    String::from_utf8_lossy(k)
                );
            }
        }
        other
            .put(format!("c/after/{point}").as_bytes(), b"x")
            .await
            .expect("a write after the crash");
    }
    // Every backup published at the destination is complete and verifies.
    backup_done(&client, &destination).await;
    let args: Vec<String> = ["backup", "verify", &destination]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let verified = Cluster::command(&args)
        .output()
        .expect("cairn backup verify");
    assert!(
        verified.status.success(),
        "verify after the crashes: {}",
        String::from_utf8_lossy(&verified.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn restore_crashes_write_nothing() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let backups = tempfile::tempdir().expect("backup dir");
    let destination = backups.path().display().to_string();
    let client = cluster.client(1);
    for i in 0..50 {
        client
            .put(format!("r/{i}").as_bytes(), b"x")
            .await
            .expect("seed");
    }
    backup_done(&client, &destination).await;
    let target = tempfile::tempdir().expect("restore dir");
    let dir = target.path().join("node1");
    let dir_text = dir.display().to_string();
    let args: Vec<String> = [
        "restore",
        "--from",
        &destination,
        "--to-data-dir",
        &dir_text,
        "--node-id",
        "1",
        "--initial-cluster",
        cluster.initial_cluster(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    for point in [
        "restore.write.before",
        "restore.shard.after",
        "restore.rename.before",
    ] {
        let output = Cluster::command(&args)
            .env("FAILPOINTS", format!("{point}=return"))
            .output()
            .expect("cairn restore");
        assert_eq!(
            output.status.signal(),
            Some(libc::SIGABRT),
            "{point}: restore did not crash there: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            !dir.exists(),
            "{point}: a crashed restore left {} behind",
            dir.display()
        );
    }
    let output = Cluster::command(&args).output().expect("cairn restore");
    assert!(
        output.status.success(),
        "restore after the crashes: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(dir.join("db").exists() || dir.exists(), "nothing restored");
    // Neither the staging directory nor the download spool is left beside it.
    let beside: Vec<_> = std::fs::read_dir(target.path())
        .expect("target's parent")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(beside, vec![std::ffi::OsString::from("node1")]);
}

/// A move whose driving node crashes right after the new node opened its empty
/// replica, before the group added it as a learner: nothing will ever finish that
/// move, so the new node must notice that the group does not name it and drop the
/// replica (it would otherwise host a group it can never learn a leader of, and
/// report itself not ready for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_cut_short_after_opening_leaves_no_replica_behind() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 4,
        shards: 4,
        extra_args: ["--replication-factor", "3", "--rebalance-rate", "0"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
        ..ClusterOptions::default()
    })
    .await;
    let status = cluster.status(1).await;
    let (shard, from, to) = status
        .placement
        .iter()
        .filter(|p| !p.meta)
        .find_map(|p| {
            let from = *p.replicas.iter().find(|&&n| n != 1)?;
            let to = (1..=4u64).find(|n| !p.replicas.contains(n) && *n != 1)?;
            Some((p.id, from, to))
        })
        .expect("a shard node 1 can move between two other nodes");
    arm(&mut cluster, 1, "move.opened", 0).await;
    cluster.wait_ready().await;
    let driver = cluster.client(1);
    let _ = tokio::time::timeout(
        Duration::from_secs(10),
        driver.move_replica(shard, from, to),
    )
    .await;
    assert_fired(&mut cluster, 1, "move.opened").await;
    cluster.start_node(1);
    let target = cluster.client(to as usize);
    let hosts =
        |status: &cairn_client::api::ClusterStatus| status.shards.iter().any(|s| s.id == shard);
    // The crash came after the replica was opened: it is there, knowing no leader.
    assert!(
        hosts(&cluster.status(to as usize).await),
        "node {to} should host the replica the move opened"
    );
    eventually(
        "the replica the cut-short move opened is dropped",
        Duration::from_secs(45),
        || async {
            let status = target.cluster().await.map_err(|e| e.to_string())?;
            if hosts(&status) {
                return Err(format!("node {to} still hosts shard {shard}"));
            }
            match target.ready().await {
                Ok(true) => Ok(()),
                other => Err(format!("node {to} not ready: {other:?}")),
            }
        },
    )
    .await;
    // The group kept its voters and serves.
    let after = cluster.status(2).await;
    let placed = after
        .placement
        .iter()
        .find(|p| p.id == shard)
        .expect("the shard's placement");
    assert!(placed.replicas.contains(&from) && !placed.replicas.contains(&to));
    assert!(placed.learners.is_empty(), "learners {:?}", placed.learners);
}
