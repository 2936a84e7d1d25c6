//! Consistent backups and point-in-time restore against real processes.
//!
//! - `full_and_incrementals_restore_every_snapshot_into_a_fresh_cluster`: a seeded
//!   workload of puts, overwrites and deletes; snapshots recorded with their
//!   point-in-time scans; a full backup and incrementals taken while writes go on;
//!   then each snapshot of the chain (by id, and one by time) is restored into a new
//!   three-process cluster, whose scan must equal the recorded one byte for byte,
//!   versions included. The restored cluster has a new id and takes writes.
//! - `damaged_backups_are_named_and_restore_writes_nothing`: a flipped byte, a deleted
//!   file and a truncated manifest each make `cairn backup verify` and `cairn restore`
//!   fail naming the file, and leave no data directory behind.
//! - `scheduled_backups_run_once_per_tick_across_a_meta_leader_kill`: a schedule every
//!   few seconds with retention; the meta leader is SIGKILLed while a scheduled backup
//!   runs; that backup ends failed (and is not listed at the destination), later ticks
//!   each produce exactly one good backup, retention keeps every needed parent, and
//!   every listed backup verifies.
//! - `s3_backups_round_trip`: the same round trip through a real S3-compatible server
//!   on loopback.
//! - `prefix_revert_restores_a_snapshot_state`, `bad_backup_requests_change_nothing`.
//!
//! Seeds: `CAIRN_TEST_SEED` overrides each test's fixed seed.

#[path = "harness/mod.rs"]
mod harness;
#[path = "support/s3_server.rs"]
mod s3_server;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Duration;

use cairn_client::api::{BackupInfo, CreateBackup};
use cairn_client::{Client, Consistency, Error, ReadAt};
use harness::{eventually, seed, Cluster, ClusterOptions};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

type Entries = Vec<(Vec<u8>, Vec<u8>, u64)>;

/// Run `cairn` with `args` (no `CAIRN_*` environment), with extra environment `env`.
fn cairn(args: &[&str], env: &[(&str, &str)]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    let mut command = Cluster::command(&args);
    for (k, v) in env {
        command.env(k, v);
    }
    command
        .output()
        .unwrap_or_else(|e| panic!("running cairn {args:?}: {e}"))
}

/// Polls `check` until it gives `Some`, or panics after `timeout`.
async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    eventually(what, timeout, || {
        let pending = check();
        async move { pending.await.ok_or_else(|| "not yet".to_owned()) }
    })
    .await
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// What the workload wrote, in order: each key and its new value (`None`: deleted).
type Ops = Vec<(Vec<u8>, Option<Vec<u8>>)>;

/// The model: every live key and its value, as the workload's acknowledged writes
/// made it. Kept by the test, independently of any read path of the cluster.
type Model = BTreeMap<Vec<u8>, Vec<u8>>;

fn apply(model: &mut Model, ops: &[(Vec<u8>, Option<Vec<u8>>)]) {
    for (key, value) in ops {
        match value {
            Some(v) => model.insert(key.clone(), v.clone()),
            None => model.remove(key),
        };
    }
}

/// A snapshot's scan must be exactly the model (keys and values; versions are the
/// cluster's to number).
#[track_caller]
fn assert_matches_model(what: &str, scan: &Entries, model: &Model) {
    let got: Model = scan
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    assert!(
        got.len() == scan.len() && &got == model,
        "{what}: the snapshot holds {} keys, the workload's model {} ({} differ)",
        scan.len(),
        model.len(),
        model
            .iter()
            .filter(|(k, v)| got.get(*k) != Some(*v))
            .count()
            + got.keys().filter(|k| !model.contains_key(*k)).count()
    );
}

/// Random puts, overwrites and deletes over `keys` keys (some binary); returns them.
async fn workload(client: &Client, rng: &mut StdRng, ops: usize, keys: usize) -> Ops {
    let mut done = Vec::with_capacity(ops);
    for _ in 0..ops {
        let n = rng.gen_range(0..keys);
        let key: Vec<u8> = if n % 7 == 0 {
            vec![b'b', 0, 0xFF, n as u8]
        } else {
            format!("k/{n:04}").into_bytes()
        };
        if rng.gen_bool(0.2) {
            client.delete(&key).await.expect("delete");
            done.push((key, None));
        } else {
            let len = rng.gen_range(0..300);
            let value: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
            client.put(&key, &value).await.expect("put");
            done.push((key, Some(value)));
        }
    }
    done
}

async fn snapshot_scan(client: &Client, snapshot: u64) -> Entries {
    client
        .scan_all_at(b"", &ReadAt::Snapshot(snapshot.to_string()))
        .await
        .expect("point-in-time scan")
        .value
}

async fn wait_backup(client: &Client, id: &str) -> BackupInfo {
    until(
        &format!("backup {id} to finish"),
        Duration::from_secs(60),
        || async {
            let info = client.backup(id).await.ok()?;
            (info.state != "running").then_some(info)
        },
    )
    .await
}

async fn backup(
    client: &Client,
    dest: &str,
    incremental: bool,
    snapshot: Option<u64>,
) -> BackupInfo {
    let started = client
        .create_backup(&CreateBackup {
            destination: Some(dest.to_owned()),
            incremental,
            snapshot: snapshot.map(|s| s.to_string()),
        })
        .await
        .expect("POST /v1/backups");
    assert_eq!(started.state, "running");
    let done = wait_backup(client, &started.id).await;
    assert_eq!(done.state, "done", "backup failed: {done:?}");
    assert_eq!(done.incremental, incremental);
    assert_eq!(done.progress.shards_done, done.progress.shards_total);
    done
}

/// Restore snapshot `target` from `from` into a fresh cluster; its scan and id.
async fn restore_and_scan(from: &str, target: &[&str], env: &[(&str, &str)]) -> (Entries, String) {
    let mut restore_output = None;
    let cluster = Cluster::start_prepared(ClusterOptions::default(), |c| {
        for id in c.ids() {
            let dir = c.data_dir(id).display().to_string();
            let node = id.to_string();
            let mut args = vec![
                "restore",
                "--from",
                from,
                "--to-data-dir",
                &dir,
                "--node-id",
                &node,
                "--initial-cluster",
                c.initial_cluster(),
            ];
            args.extend_from_slice(target);
            let output = cairn(&args, env);
            assert!(output.status.success(), "restore failed: {}", text(&output));
            restore_output = Some(text(&output));
        }
    })
    .await;
    let client = cluster.client(2);
    let scan = client
        .scan_all(b"", Consistency::Linearizable)
        .await
        .expect("scan the restored cluster");
    // The restored cluster is a new cluster that takes writes.
    let status = cluster.status(1).await;
    let version = client
        .put(b"after-restore", b"x")
        .await
        .expect("write after restore");
    assert!(version > 0);
    drop(cluster);
    eprintln!("{}", restore_output.unwrap_or_default());
    (scan, status.cluster_id)
}

fn show(entries: &Entries) -> String {
    entries
        .iter()
        .map(|(k, v, ver)| format!("{}={}b@{ver}", k.escape_ascii(), v.len()))
        .collect::<Vec<_>>()
        .join(" ")
}

fn assert_same(what: &str, got: &Entries, want: &Entries) {
    if got != want {
        panic!(
            "{what}: restored state differs from the point-in-time scan\n got ({}): {}\nwant ({}): {}",
            got.len(),
            show(got),
            want.len(),
            show(want)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn full_and_incrementals_restore_every_snapshot_into_a_fresh_cluster() {
    let mut rng = StdRng::seed_from_u64(seed(20261123));
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let source_id = cluster.status(1).await.cluster_id;
    let client = cluster.client(1);
    // Outside the cluster's directory: the backups outlive the cluster.
    let backups = tempfile::tempdir().unwrap();
    let dest_dir = backups.path().join("backups");
    let dest = dest_dir.display().to_string();
    // Recorded snapshots: id -> (scan, time label). Each scan is first checked
    // against the model, so restores are compared with what the workload wrote, not
    // only with the cluster's own point-in-time read.
    let mut recorded: BTreeMap<u64, (Entries, String)> = BTreeMap::new();
    let mut model = Model::new();

    // Round 1, then a full backup of a given snapshot.
    apply(&mut model, &workload(&client, &mut rng, 300, 120).await);
    let s1 = client.create_snapshot(None).await.expect("snapshot");
    let scan = snapshot_scan(&client, s1.id).await;
    assert_matches_model("snapshot 1", &scan, &model);
    recorded.insert(s1.id, (scan, s1.time.clone()));
    let full = backup(&client, &dest, false, Some(s1.id)).await;
    assert_eq!(full.snapshot, Some(s1.id));

    // Round 2 with a snapshot in the middle (covered by the next incremental), and
    // writes running during the incremental.
    apply(&mut model, &workload(&client, &mut rng, 200, 120).await);
    let s2 = client
        .create_snapshot(Some("middle"))
        .await
        .expect("snapshot");
    let scan = snapshot_scan(&client, s2.id).await;
    assert_matches_model("snapshot 2", &scan, &model);
    recorded.insert(s2.id, (scan, s2.time.clone()));
    apply(&mut model, &workload(&client, &mut rng, 200, 120).await);
    let writer = {
        let client = cluster.client(3);
        let mut rng = StdRng::seed_from_u64(7);
        tokio::spawn(async move { workload(&client, &mut rng, 150, 120).await })
    };
    let inc1 = backup(&client, &dest, true, None).await;
    let concurrent = writer.await.expect("writer");
    assert_eq!(inc1.parent.as_deref(), Some(full.id.as_str()));
    let s3 = inc1.snapshot.expect("the incremental took a snapshot");
    // Taken while the writer ran: the model after some prefix of its writes.
    let scan = snapshot_scan(&client, s3).await;
    let got: Model = scan
        .iter()
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    let mut at = model.clone();
    let mut prefix = None;
    for n in 0..=concurrent.len() {
        if at == got {
            prefix = Some(n);
            break;
        }
        if let Some(op) = concurrent.get(n) {
            apply(&mut at, std::slice::from_ref(op));
        }
    }
    assert!(
        prefix.is_some(),
        "snapshot {s3} is not the model after any prefix of the concurrent writes"
    );
    apply(&mut model, &concurrent);
    recorded.insert(s3, (scan, String::new()));

    // Round 3 and a second incremental.
    apply(&mut model, &workload(&client, &mut rng, 250, 120).await);
    let inc2 = backup(&client, &dest, true, None).await;
    assert_eq!(inc2.parent.as_deref(), Some(inc1.id.as_str()));
    let s4 = inc2.snapshot.expect("snapshot");
    let scan = snapshot_scan(&client, s4).await;
    assert_matches_model("snapshot 4", &scan, &model);
    recorded.insert(s4, (scan, String::new()));
    // An incremental holds only what changed since its parent: at most this round's
    // 250 writes plus the concurrent writer's 150 that may have landed after inc1.
    assert!(
        inc2.progress.versions <= 400,
        "incremental holds {} versions for at most 400 writes",
        inc2.progress.versions
    );

    // The catalog lists all three; the destination lists the chain.
    let listed = client.backups().await.expect("list");
    for b in [&full, &inc1, &inc2] {
        assert!(listed.iter().any(|l| l.id == b.id && l.state == "done"));
    }
    let list = cairn(&["backup", "list", &dest], &[]);
    assert!(list.status.success(), "{}", text(&list));
    let list = text(&list);
    assert!(
        list.contains(&full.id) && list.contains(&format!("incremental on {}", inc1.id)),
        "{list}"
    );
    let verified = cairn(&["backup", "verify", &dest], &[]);
    assert!(verified.status.success(), "{}", text(&verified));

    // Issue 17: a time before every restorable snapshot said "no backup a snapshot at
    // or before the requested time"; it now names what can be restored. A time
    // without an offset names no instant; any offset is taken.
    let early = cairn(
        &[
            "restore",
            "--from",
            &dest,
            "--as-of",
            "2000-01-01T00:00:00+02:00",
            "--dry-run",
        ],
        &[],
    );
    assert!(!early.status.success());
    let oldest = full.snapshot.expect("the full backup's snapshot");
    assert!(
        text(&early).contains("restores a snapshot at or before 1999-12-31T22:00:00")
            && text(&early).contains(&format!("the oldest it can restore is snapshot {oldest}")),
        "{}",
        text(&early)
    );
    let zoneless = cairn(
        &[
            "restore",
            "--from",
            &dest,
            "--as-of",
            "2026-01-01T00:00:00",
            "--dry-run",
        ],
        &[],
    );
    assert!(
        !zoneless.status.success() && text(&zoneless).contains("offset"),
        "{}",
        text(&zoneless)
    );
    // Readers never create a destination that is not there.
    let nowhere = backups.path().join("nowhere").display().to_string();
    for args in [
        vec!["backup", "verify", nowhere.as_str()],
        vec!["backup", "list", nowhere.as_str()],
        vec!["restore", "--from", nowhere.as_str(), "--dry-run"],
    ] {
        let output = cairn(&args, &[]);
        assert!(!output.status.success(), "{args:?}");
        assert!(
            text(&output).contains("no backups at"),
            "{args:?}: {}",
            text(&output)
        );
    }
    assert!(!Path::new(&nowhere).exists(), "a reader created {nowhere}");

    // Dry run: says what, writes nothing.
    let dry_dir = backups.path().join("dry");
    let dry = cairn(
        &[
            "restore",
            "--from",
            &dest,
            "--snapshot",
            &s2.id.to_string(),
            "--dry-run",
        ],
        &[],
    );
    assert!(dry.status.success(), "{}", text(&dry));
    assert!(
        text(&dry).contains(&format!("restoring snapshot {}", s2.id)),
        "{}",
        text(&dry)
    );
    assert!(!dry_dir.exists());

    // One cluster runs at a time: the source goes before the restored ones start.
    drop(cluster);
    // Every snapshot of the chain restores exactly.
    for (id, (want, _)) in &recorded {
        let (got, new_id) = restore_and_scan(&dest, &["--snapshot", &id.to_string()], &[]).await;
        assert_same(&format!("snapshot {id}"), &got, want);
        assert_ne!(new_id, source_id, "the restored cluster must get a new id");
        eprintln!("snapshot {id}: {} keys restored exactly", got.len());
    }
    // By time: the label of the middle snapshot restores it.
    let (got, _) = restore_and_scan(&dest, &["--as-of", &s2.time], &[]).await;
    assert_same(
        "as of the middle snapshot's time",
        &got,
        &recorded[&s2.id].0,
    );
}

/// Damages a copy of a destination; returns the name of the file it damaged.
type Damage<'a> = Box<dyn Fn(&Path) -> String + 'a>;

/// A destination with a full and an incremental backup, for damaging.
async fn two_backups(cluster: &Cluster, dest: &str) -> (BackupInfo, BackupInfo) {
    let client = cluster.client(1);
    let mut rng = StdRng::seed_from_u64(seed(99));
    workload(&client, &mut rng, 200, 80).await;
    let full = backup(&client, dest, false, None).await;
    workload(&client, &mut rng, 100, 80).await;
    let inc = backup(&client, dest, true, None).await;
    (full, inc)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn damaged_backups_are_named_and_restore_writes_nothing() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let good: PathBuf = cluster.dir().join("good");
    let (full, inc) = two_backups(&cluster, &good.display().to_string()).await;
    let damages: Vec<(&str, Damage)> = vec![
        (
            "a flipped byte",
            Box::new(|d: &Path| {
                let name = format!("{}/shard-3.cbk", full.id);
                let path = d.join(&name);
                let mut bytes = std::fs::read(&path).unwrap();
                let i = bytes.len() / 2;
                bytes[i] ^= 0x01;
                std::fs::write(&path, bytes).unwrap();
                name
            }),
        ),
        (
            "a deleted file",
            Box::new(|d: &Path| {
                let name = format!("{}/shard-5.cbk", inc.id);
                std::fs::remove_file(d.join(&name)).unwrap();
                name
            }),
        ),
        (
            "a truncated manifest",
            Box::new(|d: &Path| {
                let name = format!("{}/manifest.json", inc.id);
                let path = d.join(&name);
                let bytes = std::fs::read(&path).unwrap();
                std::fs::write(&path, &bytes[..bytes.len() / 2]).unwrap();
                name
            }),
        ),
    ];
    for (what, damage) in damages {
        let dir = cluster.dir().join(what.replace(' ', "-"));
        copy_dir(&good, &dir);
        let bad_file = damage(&dir);
        let dest = dir.display().to_string();
        let verify = cairn(&["backup", "verify", &dest, "--id", &inc.id], &[]);
        assert!(!verify.status.success(), "{what}: verify passed");
        assert!(
            text(&verify).contains(&bad_file),
            "{what}: verify does not name {bad_file}: {}",
            text(&verify)
        );
        let target = cluster
            .dir()
            .join(format!("restored-{}", what.replace(' ', "-")));
        let target_s = target.display().to_string();
        let restore = cairn(
            &[
                "restore",
                "--from",
                &dest,
                "--to-data-dir",
                &target_s,
                "--node-id",
                "1",
                "--initial-cluster",
                "1=127.0.0.1:1",
            ],
            &[],
        );
        assert!(!restore.status.success(), "{what}: restore succeeded");
        assert!(
            text(&restore).contains(&bad_file),
            "{what}: restore does not name {bad_file}: {}",
            text(&restore)
        );
        // Neither the target nor anything beside it (its staging directory, the
        // download spool): the restore leaves no trace.
        let beside: Vec<_> = std::fs::read_dir(cluster.dir())
            .expect("cluster dir")
            .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
            .filter(|name| name.starts_with("restored-"))
            .collect();
        assert!(beside.is_empty(), "{what}: restore wrote {beside:?}");
        eprintln!("{what}: named {bad_file}, nothing written");
    }
    // The undamaged copy still verifies and restores.
    let ok = cairn(&["backup", "verify", &good.display().to_string()], &[]);
    assert!(ok.status.success(), "{}", text(&ok));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_backup_requests_change_nothing() {
    // No automatic snapshots: the snapshot list must change only if a request does.
    let cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--snapshot-interval-ms".into(), "0".into()],
        ..Default::default()
    })
    .await;
    let client = cluster.client(1);
    client.put(b"k", b"v").await.unwrap();
    let snapshots_before = client.list_all_snapshots().await.unwrap();
    let dest = cluster.dir().join("b").display().to_string();
    // The node's default destination (`--backup-dir`, set by the harness).
    let default_dest = cluster.dir().join("backups");
    let cases = [
        (
            r#"{"destination":"ftp://nowhere"}"#,
            400,
            "bad_backup_request",
        ),
        // Issue 17: these two answered 404 and 400 but created the directory.
        (
            r#"{"destination":"x","incremental":true}"#,
            400,
            "bad_backup_request",
        ),
        (
            r#"{"destination":"x","snapshot":"no-such-snapshot"}"#,
            404,
            "snapshot_not_found",
        ),
        (
            r#"{"snapshot":"no-such-snapshot"}"#,
            404,
            "snapshot_not_found",
        ),
        (r#"{"incremental":true}"#, 400, "bad_backup_request"),
        (
            r#"{"destination":"x","snapshot":987654}"#,
            404,
            "snapshot_not_found",
        ),
        (r#"{"destination":"x","snapshot":-1}"#, 400, "bad_json"),
        (r#"{"unknown":1}"#, 400, "bad_json"),
        (r#"not json"#, 400, "bad_json"),
        // Outside every allowed root (the harness allows the temporary directory).
        (
            r#"{"destination":"/var/tmp/cairn-not-allowed/b"}"#,
            403,
            "destination_not_allowed",
        ),
        (
            r#"{"destination":"x/../../../../../var/tmp/cairn-not-allowed"}"#,
            403,
            "destination_not_allowed",
        ),
        (
            r#"{"destination":"s3://some-bucket/b"}"#,
            403,
            "destination_not_allowed",
        ),
    ];
    let http = reqwest::Client::new();
    let base = format!("http://{}", cluster.http_addr(1));
    let post = |body: String| {
        let request = http
            .post(format!("{base}/v1/backups"))
            .header("content-type", "application/json")
            .body(body);
        async move { request.send().await.unwrap() }
    };
    for (body, status, code) in cases {
        let body = body.replace("\"x", &format!("\"{dest}"));
        let response = post(body.clone()).await;
        assert_eq!(response.status().as_u16(), status, "{body}");
        let error: serde_json::Value = response.json().await.unwrap();
        assert_eq!(error["error"]["code"], code, "{body}: {error}");
        // A refused request changes nothing, on disk included.
        assert!(!Path::new(&dest).exists(), "{body}: created {dest}");
        assert!(
            !default_dest.exists(),
            "{body}: created the default destination"
        );
    }
    assert!(
        client.backups().await.unwrap().is_empty(),
        "a refused request was recorded"
    );
    assert_eq!(
        client.list_all_snapshots().await.unwrap(),
        snapshots_before,
        "a refused request took a snapshot"
    );
    assert!(
        !Path::new("/var/tmp/cairn-not-allowed").exists(),
        "a refused destination was created"
    );
    match client.backup("20260101T000000Z-000042").await {
        Err(Error::Api { status, .. }) => assert_eq!(status, 404),
        other => panic!("unknown backup: {other:?}"),
    }
    // A snapshot id as a JSON number, the form every response prints, is accepted
    // (issue 17: it was `bad_json`).
    let snap = client.create_snapshot(None).await.unwrap();
    let body = format!(r#"{{"destination":{dest:?},"snapshot":{}}}"#, snap.id);
    let response = post(body.clone()).await;
    assert_eq!(response.status().as_u16(), 202, "{body}");
    let started: serde_json::Value = response.json().await.unwrap();
    assert_eq!(started["snapshot"], snap.id, "{started}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn prefix_revert_restores_a_snapshot_state() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let client = cluster.client(1);
    for i in 0..40 {
        client
            .put(format!("app/{i:02}").as_bytes(), format!("v{i}").as_bytes())
            .await
            .unwrap();
        client
            .put(format!("other/{i:02}").as_bytes(), b"keep")
            .await
            .unwrap();
    }
    let snap = client
        .create_snapshot(Some("before-mistake"))
        .await
        .unwrap();
    let want = snapshot_scan(&client, snap.id).await;
    // The mistake: deletes, overwrites and new keys under app/, and a change elsewhere.
    for i in 0..20 {
        client
            .delete(format!("app/{i:02}").as_bytes())
            .await
            .unwrap();
    }
    for i in 20..30 {
        client
            .put(format!("app/{i:02}").as_bytes(), b"wrong")
            .await
            .unwrap();
    }
    client.put(b"app/new", b"created later").await.unwrap();
    client.put(b"other/00", b"changed later").await.unwrap();
    let reverted = client
        .revert(b"app/", "before-mistake")
        .await
        .expect("revert");
    assert_eq!(reverted.restored, 30, "{reverted:?}");
    assert_eq!(reverted.deleted, 1, "{reverted:?}");
    let now = client
        .scan_all(b"app/", Consistency::Linearizable)
        .await
        .unwrap();
    let now: Vec<(Vec<u8>, Vec<u8>)> = now.into_iter().map(|(k, v, _)| (k, v)).collect();
    let then: Vec<(Vec<u8>, Vec<u8>)> = want
        .iter()
        .filter(|(k, _, _)| k.starts_with(b"app/"))
        .map(|(k, v, _)| (k.clone(), v.clone()))
        .collect();
    assert_eq!(now, then, "app/ is not back to the snapshot's state");
    // Outside the prefix nothing moved back.
    let other = client.get(b"other/00").await.unwrap().unwrap();
    assert_eq!(other.value, b"changed later");
    // A second revert changes nothing; an unknown snapshot is a 404, and a refused
    // revert changes nothing either (data, audit log).
    let again = client.revert(b"app/", "before-mistake").await.unwrap();
    assert_eq!((again.restored, again.deleted), (0, 0));
    client.put(b"app/00", b"after the revert").await.unwrap();
    let audit = format!("http://{}/v1/reverts", cluster.http_addr(1));
    let audit_log = || async { reqwest::get(&audit).await.unwrap().text().await.unwrap() };
    let (before, log_before) = (
        client
            .scan_all(b"", Consistency::Linearizable)
            .await
            .unwrap(),
        audit_log().await,
    );
    match client.revert(b"app/", "nope").await {
        Err(Error::Api { status, code, .. }) => {
            assert_eq!((status, code.as_str()), (404, "snapshot_not_found"))
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(
        client
            .scan_all(b"", Consistency::Linearizable)
            .await
            .unwrap(),
        before
    );
    assert_eq!(
        audit_log().await,
        log_before,
        "a refused revert was recorded"
    );
}

/// A revert is one cross-shard transaction: a reader that has seen one key reverted
/// sees every later-read key reverted too, and every snapshot holds the revert
/// entirely or not at all. Readers read the keys in reverse shard order, the order
/// that would catch a revert applied shard by shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_prefix_revert_is_atomic_for_readers_and_snapshots() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let client = cluster.client(1);
    let mut keys: Vec<Vec<u8>> = (0..8u32)
        .map(|shard| {
            (0..)
                .map(|i| format!("flip/{i}").into_bytes())
                .find(|k| harness::shard_of(k, 8) == shard)
                .expect("a key for every shard")
        })
        .collect();
    keys.reverse();
    let keys = std::sync::Arc::new(keys);
    let all = |value: &'static [u8]| -> Vec<cairn_client::api::BatchOp> {
        keys.iter()
            .map(|k| cairn_client::api::BatchOp::put(k, value))
            .collect()
    };
    client.batch(all(b"old")).await.expect("old state");
    client.create_snapshot(Some("old-state")).await.unwrap();
    let (mut passes, mut snapshots) = (0, 0);
    for round in 0..5 {
        client.batch(all(b"new")).await.expect("new state");
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Work done so far by each reader (0..3) and the snapshotter (3): the test
        // waits on these rather than on the clock.
        let done: std::sync::Arc<[std::sync::atomic::AtomicU64; 4]> = Default::default();
        let mut readers = Vec::new();
        for r in 0..3 {
            let (client, keys, stop, done) = (
                cluster.client(1 + r % 3),
                keys.clone(),
                stop.clone(),
                done.clone(),
            );
            readers.push(tokio::spawn(async move {
                let mut passes = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let mut seen = Vec::new();
                    for k in keys.iter() {
                        seen.push(client.get(k).await.unwrap().expect("present").value);
                    }
                    if let Some(first_old) = seen.iter().position(|v| v == b"old") {
                        assert!(
                            seen[first_old..].iter().all(|v| v == b"old"),
                            "round {round}: a reader saw the revert on one shard and not on a later-read one: {:?}",
                            seen.iter().map(|v| String::from_utf8_lossy(v).into_owned()).collect::<Vec<_>>()
                        );
                    }
                    passes += 1;
                    done[r].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                passes
            }));
        }
        let snapshotter = {
            let (client, keys, stop, done) =
                (cluster.client(2), keys.clone(), stop.clone(), done.clone());
            tokio::spawn(async move {
                let mut taken = 0;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let Ok(snap) = client.create_snapshot(None).await else {
                        continue;
                    };
                    let at = ReadAt::Snapshot(snap.id.to_string());
                    let mut seen = Vec::new();
                    for k in keys.iter() {
                        let got = client.get_at(k, &at).await.unwrap();
                        seen.push(got.value.expect("present").value);
                    }
                    assert!(
                        seen.windows(2).all(|w| w[0] == w[1]),
                        "round {round}: snapshot {} holds half a revert",
                        snap.id
                    );
                    taken += 1;
                    done[3].fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
                taken
            })
        };
        // Every reader and the snapshotter under way before the revert, and each has
        // finished work begun after it, before they stop.
        let progress = || -> Vec<u64> {
            done.iter()
                .map(|d| d.load(std::sync::atomic::Ordering::SeqCst))
                .collect()
        };
        let past = |mark: Vec<u64>, what: &str| {
            let progress = &progress;
            let what = what.to_owned();
            async move {
                until(&what, Duration::from_secs(30), || async {
                    progress()
                        .iter()
                        .zip(&mark)
                        .all(|(now, then)| now > then)
                        .then_some(())
                })
                .await
            }
        };
        past(vec![0; 4], "readers and snapshots under way").await;
        let reverted = client.revert(b"flip/", "old-state").await.expect("revert");
        assert_eq!(reverted.restored, 8, "{reverted:?}");
        // A pass that began before the revert may still be running: two more each.
        past(progress(), "work after the revert").await;
        past(progress(), "work begun after the revert").await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in readers {
            passes += r.await.expect("reader");
        }
        snapshots += snapshotter.await.expect("snapshots");
        for k in keys.iter() {
            assert_eq!(client.get(k).await.unwrap().unwrap().value, b"old");
        }
    }
    assert!(passes >= 30, "readers checked too little ({passes} passes)");
    assert!(snapshots >= 5, "too few snapshots checked ({snapshots})");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_backups_round_trip() {
    let server = s3_server::S3Server::start("cairn-backups");
    let o = server.options();
    let config = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        config.path(),
        format!(
            "[backup.s3]\nendpoint = {:?}\nregion = {:?}\naccess_key_id = {:?}\nsecret_access_key = {:?}\nallow_http = true\n",
            o.endpoint, o.region, o.access_key_id, o.secret_access_key
        ),
    )
    .unwrap();
    let cluster = Cluster::start(ClusterOptions {
        extra_args: vec![
            "--config".into(),
            config.path().display().to_string(),
            "--backup-allow".into(),
            server.url("prod"),
        ],
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client(1);
    let url = server.url("prod/cairn");
    let mut rng = StdRng::seed_from_u64(seed(3));
    workload(&client, &mut rng, 200, 60).await;
    let full = backup(&client, &url, false, None).await;
    workload(&client, &mut rng, 100, 60).await;
    let inc = backup(&client, &url, true, None).await;
    assert_eq!(inc.parent.as_deref(), Some(full.id.as_str()));
    let want = snapshot_scan(&client, inc.snapshot.unwrap()).await;
    let env = [
        ("AWS_ENDPOINT", o.endpoint.as_str()),
        ("AWS_REGION", o.region.as_str()),
        ("AWS_ACCESS_KEY_ID", o.access_key_id.as_str()),
        ("AWS_SECRET_ACCESS_KEY", o.secret_access_key.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let verified = cairn(&["backup", "verify", &url], &env);
    assert!(verified.status.success(), "{}", text(&verified));
    drop(cluster);
    let (got, _) = restore_and_scan(&url, &[], &env).await;
    assert_same("restore from S3", &got, &want);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn scheduled_backups_run_once_per_tick_across_a_meta_leader_kill() {
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("scheduled");
    let config = dir.path().join("cairn.toml");
    // Every 4 s; a chain restarts every 10 s; keep the last 2 (and their parents).
    // Throttled so a backup lasts long enough to be killed in the middle.
    std::fs::write(
        &config,
        format!(
            "[backup]\nrate_limit = \"40KiB\"\nstale_after = \"3s\"\n\n[[backup.schedule]]\nname = \"often\"\ncron = \"*/4 * * * * *\"\ndestination = {:?}\nfull_every = \"10s\"\nkeep_last = 2\n",
            dest.display().to_string()
        ),
    )
    .unwrap();
    let mut cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--config".into(), config.display().to_string()],
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client(1);
    let mut rng = StdRng::seed_from_u64(seed(4));
    // ~100 KB of data: a throttled full backup takes a few seconds.
    for i in 0..400 {
        let value: Vec<u8> = (0..250).map(|_| rng.gen()).collect();
        client
            .put(format!("s/{i:04}").as_bytes(), &value)
            .await
            .unwrap();
    }
    // Wait for a scheduled backup to be running, and kill the meta leader (who runs it).
    let running = until(
        "a scheduled backup to run",
        Duration::from_secs(30),
        || async {
            let list = client.backups().await.ok()?;
            list.into_iter()
                .find(|b| b.state == "running" && b.schedule.is_some())
        },
    )
    .await;
    let victim = running.node as usize;
    let meta_leader = cluster.status(1).await.meta.and_then(|m| m.leader);
    eprintln!(
        "killing node {victim} (meta leader {meta_leader:?}) during {}",
        running.id
    );
    cluster.kill(victim).await;
    let survivor = cluster.ids().into_iter().find(|&id| id != victim).unwrap();
    let client = cluster.client(survivor);
    // The killed backup is failed by the new meta leader's sweeper.
    let failed = until(
        "the killed backup to be failed",
        Duration::from_secs(30),
        || async {
            let b = client.backup(&running.id).await.ok()?;
            (b.state != "running").then_some(b)
        },
    )
    .await;
    assert_eq!(failed.state, "failed", "{failed:?}");
    cluster.start_node(victim);
    cluster.wait_ready().await;
    // Three more ticks after the kill, each producing one good backup.
    let later = until(
        "three good backups after the kill, and retention at work",
        Duration::from_secs(60),
        || async {
            // A new chain starts every 10 s; retention can delete the old one only
            // once the new one has two backups, so this also waits for that.
            let list = client.backups().await.ok()?;
            let deleted = list.iter().any(|b| b.deleted);
            let good: Vec<BackupInfo> = list
                .into_iter()
                .filter(|b| b.state == "done" && b.tick_ms > running.tick_ms)
                .collect();
            (good.len() >= 3 && deleted).then_some(good)
        },
    )
    .await;
    assert!(later.len() >= 3);
    let all = client.backups().await.unwrap();
    let mut ticks: BTreeMap<u64, Vec<&BackupInfo>> = BTreeMap::new();
    for b in all.iter().filter(|b| b.schedule.is_some()) {
        ticks.entry(b.tick_ms.unwrap()).or_default().push(b);
    }
    for (tick, backups) in &ticks {
        assert_eq!(
            backups.len(),
            1,
            "tick {tick} ran {} times: {backups:?}",
            backups.len()
        );
    }
    // The failed backup left nothing listed; every listed backup verifies (so no
    // kept incremental lost its parent); retention deleted something.
    let listed = cairn(&["backup", "list", &dest.display().to_string()], &[]);
    let listed = text(&listed);
    assert!(
        !listed.contains(&running.id),
        "the failed backup is listed: {listed}"
    );
    let verified = cairn(&["backup", "verify", &dest.display().to_string()], &[]);
    assert!(verified.status.success(), "{}", text(&verified));
    assert!(
        all.iter().any(|b| b.deleted),
        "retention deleted nothing: {all:?}"
    );
    let schedules = client.backup_schedules().await.unwrap();
    assert_eq!(schedules.len(), 1);
    assert!(schedules[0].next_run_ms.is_some());
    assert!(schedules[0].last_result.is_some());
}

/// With `--backup-key-file`, backups are sealed: no value can be read from the files,
/// verify and restore without the key (or with another) refuse and say which key is
/// needed, a tampered manifest fails verification naming it, and with the key a full
/// and an incremental backup restore exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn encrypted_backups_need_their_key_and_restore_with_it() {
    let keys = tempfile::tempdir().unwrap();
    let key = keys.path().join("backup.key");
    let other = keys.path().join("other.key");
    for path in [&key, &other] {
        let made = cairn(&["backup", "key", path.to_str().unwrap()], &[]);
        assert!(made.status.success(), "{}", text(&made));
    }
    let dest_dir = tempfile::tempdir().unwrap();
    let dest = dest_dir.path().display().to_string();
    let cluster = Cluster::start(ClusterOptions {
        extra_args: vec![
            "--backup-key-file".into(),
            key.display().to_string(),
            "--snapshot-interval-ms".into(),
            "0".into(),
        ],
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client(1);
    let secret = b"a-value-that-must-not-be-readable-at-rest";
    for i in 0..40 {
        client
            .put(format!("enc/{i:02}").as_bytes(), secret)
            .await
            .unwrap();
    }
    let full = backup(&client, &dest, false, None).await;
    client
        .put(b"enc/late", b"after the full backup")
        .await
        .unwrap();
    let incremental = backup(&client, &dest, true, None).await;
    let want = client
        .scan_all(b"", Consistency::Linearizable)
        .await
        .unwrap();
    drop(cluster);

    // Nothing readable at rest.
    for entry in walk(dest_dir.path()) {
        let bytes = std::fs::read(&entry).unwrap();
        if entry.ends_with("manifest.json") {
            let manifest: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
            assert!(manifest["encryption"]["key_id"].is_string(), "{manifest}");
            assert!(manifest["mac"].is_string(), "{manifest}");
        } else {
            assert!(
                !bytes.windows(secret.len()).any(|w| w == secret),
                "{} holds a value in the clear",
                entry.display()
            );
        }
    }

    // Without the key, or with another, nothing verifies or restores; both say why.
    for env in [
        vec![],
        vec![("CAIRN_BACKUP_KEY_FILE", other.to_str().unwrap())],
    ] {
        let verified = cairn(&["backup", "verify", &dest], &env);
        assert!(!verified.status.success());
        assert!(
            text(&verified).contains("encrypted with key"),
            "{}",
            text(&verified)
        );
        let restored = cairn(&["restore", "--from", &dest, "--dry-run"], &env);
        assert!(!restored.status.success());
        assert!(
            text(&restored).contains("encrypted with key"),
            "{}",
            text(&restored)
        );
    }
    let with_key = [("CAIRN_BACKUP_KEY_FILE", key.to_str().unwrap())];
    let verified = cairn(&["backup", "verify", &dest], &with_key);
    assert!(verified.status.success(), "{}", text(&verified));

    // With the key: the incremental restores to the state it captured, the full to
    // its own.
    let (scan, _) = restore_and_scan(&dest, &["--backup", &incremental.id], &with_key).await;
    assert_same("the incremental, restored", &scan, &want);
    let (scan, _) = restore_and_scan(&dest, &["--backup", &full.id], &with_key).await;
    assert_eq!(scan.len(), 40, "the full backup holds the first 40 keys");

    // A manifest altered after the fact fails verification, naming it.
    let manifest = dest_dir.path().join(&full.id).join("manifest.json");
    let altered = std::fs::read_to_string(&manifest).unwrap().replacen(
        "\"schedule\": null",
        "\"schedule\": \"forged\"",
        1,
    );
    std::fs::write(&manifest, altered).unwrap();
    let verified = cairn(&["backup", "verify", &dest, "--id", &full.id], &with_key);
    assert!(!verified.status.success());
    let said = text(&verified);
    assert!(
        said.contains("manifest.json") && said.contains("MAC"),
        "{said}"
    );
}

/// Every file under `dir`.
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            files.extend(walk(&path));
        } else {
            files.push(path);
        }
    }
    files
}

/// One running backup per destination: a second request for the same destination
/// is refused (409, nothing recorded) while the first runs; another destination is
/// not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_running_backup_per_destination() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        shards: 2,
        // Slow enough that the first backup is still running when the second is asked.
        extra_args: vec!["--backup-rate-limit".into(), "1KiB".into()],
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client(1);
    let value = vec![b'v'; 200];
    for i in 0..100 {
        client
            .put(format!("k{i}").as_bytes(), &value)
            .await
            .unwrap();
    }
    let dir = tempfile::tempdir().unwrap();
    let (first, second) = (dir.path().join("a"), dir.path().join("b"));
    let request = |dest: &Path| CreateBackup {
        destination: Some(dest.display().to_string()),
        incremental: false,
        snapshot: None,
    };
    let running = client.create_backup(&request(&first)).await.unwrap();
    assert_eq!(running.state, "running");
    let refused = client.create_backup(&request(&first)).await.unwrap_err();
    assert_eq!(refused.code(), Some("conflict"), "{refused}");
    assert!(refused.to_string().contains(&running.id), "{refused}");
    let elsewhere = client.create_backup(&request(&second)).await.unwrap();
    assert_eq!(elsewhere.state, "running");
    let ids: Vec<String> = client
        .backups()
        .await
        .unwrap()
        .into_iter()
        .map(|b| b.id)
        .collect();
    assert_eq!(ids.len(), 2, "the refused request was recorded: {ids:?}");

    // The catalog comes a page at a time, oldest first.
    let page = |query: String| {
        let url = format!("http://{}/v1/backups?{query}", cluster.http_addr(1));
        async move {
            let page: cairn_client::api::BackupList =
                reqwest::get(url).await.unwrap().json().await.unwrap();
            page
        }
    };
    let first = page("limit=1".into()).await;
    assert_eq!(first.backups.len(), 1);
    assert_eq!(first.backups[0].id, running.id);
    let after = first.next_start_after.expect("a second page");
    let second = page(format!("limit=1&start_after={after}")).await;
    assert_eq!(second.backups.len(), 1);
    assert_eq!(second.backups[0].id, elsewhere.id);
    assert_eq!(second.next_start_after, None);
}
