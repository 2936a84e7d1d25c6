//! Cross-shard transactions on three real multi-raft hosts in one process: atomic
//! commits, refusals that leave nothing behind, readers that never see half a
//! transaction, snapshots that never split one, the gate between the two protocols,
//! and the sweeper finishing what a dead coordinator left.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_cluster::clock::now_ms;
use cairn_cluster::meta::put as meta_put;
use cairn_cluster::{Meta, Shards};
use cairn_raft::{Consistency, ControlRequest, ShardError, ShardRequest, ShardResponse};
use cairn_snapshot::testing::LocalCluster;
use cairn_snapshot::{gate, Coordinator, SnapshotConfig, SnapshotError};
use cairn_store::{shard_for_key, txn_id, ApplyOutcome, Command, Condition, OpKind, WriteOp};
use cairn_txn::record::txn_key;
use cairn_txn::{Transactions, TxnConfig, TxnError, TxnRecord, TxnState};

const SHARDS: u32 = 3;
const TIMEOUT: Duration = Duration::from_secs(5);

/// One key per shard: `names[s]` hashes to shard `s`.
fn key_per_shard(tag: &str) -> Vec<String> {
    (0..SHARDS)
        .map(|shard| {
            (0..)
                .map(|i| format!("{tag}-{i}"))
                .find(|k| shard_for_key(k.as_bytes(), SHARDS) == shard)
                .expect("some key hashes to every shard")
        })
        .collect()
}

fn put(key: &str, value: &str) -> WriteOp {
    WriteOp {
        key: key.as_bytes().to_vec(),
        kind: OpKind::Put(value.as_bytes().to_vec()),
        condition: Condition::Always,
    }
}

fn config() -> TxnConfig {
    TxnConfig {
        abort_after: Duration::from_millis(300),
        resolve_after: Duration::from_millis(100),
        ..TxnConfig::default()
    }
}

async fn get(cluster: &LocalCluster, key: &str, consistency: Consistency) -> Option<Vec<u8>> {
    let request = ShardRequest::Get {
        shard: shard_for_key(key.as_bytes(), SHARDS),
        key: key.as_bytes().to_vec(),
        consistency,
    };
    match cluster.route(request).await {
        Ok(ShardResponse::Value(v)) => v.map(|v| v.value),
        other => panic!("get {key}: {other:?}"),
    }
}

/// Stop the hosts once background work (a coordinator dropping a finished record)
/// has let go of them.
async fn stop_cluster(mut cluster: Arc<LocalCluster>) {
    for _ in 0..200 {
        match Arc::try_unwrap(cluster) {
            Ok(local) => return local.stop().await,
            Err(shared) => cluster = shared,
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the cluster is still in use");
}

/// Every host's every shard has no pending transaction, and the meta group no record.
async fn assert_nothing_left(cluster: &LocalCluster) {
    let meta = Meta::new(cluster);
    let mut left = Vec::new();
    for _ in 0..100 {
        left.clear();
        for (id, host) in &cluster.hosts {
            for shard in 0..SHARDS {
                let state = host.local().state(shard).expect("shard state");
                if !state.pending_txns().expect("pending").is_empty() {
                    left.push(format!("host {id} shard {shard}: pending transaction"));
                }
            }
        }
        for prefix in [cairn_txn::record::TXN, gate::COMMITTING] {
            if !meta
                .scan(prefix, None, 10)
                .await
                .expect("scan")
                .items
                .is_empty()
            {
                left.push(format!("meta: {}", String::from_utf8_lossy(prefix)));
            }
        }
        if left.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("left behind: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_commits_on_every_shard_or_on_none() {
    let cluster = Arc::new(LocalCluster::start(SHARDS).await);
    let txns = Transactions::new(cluster.clone(), 1, config());
    let keys = key_per_shard("atomic");

    let ops: Vec<WriteOp> = keys.iter().map(|k| put(k, "one")).collect();
    let outcome = txns.commit(ops, TIMEOUT).await.expect("commit");
    assert_eq!(outcome.existed, vec![false; keys.len()]);
    for (key, version) in keys.iter().zip(&outcome.versions) {
        let version = version.expect("every shard resolved");
        let request = ShardRequest::Get {
            shard: shard_for_key(key.as_bytes(), SHARDS),
            key: key.as_bytes().to_vec(),
            consistency: Consistency::Linearizable,
        };
        match cluster.route(request).await {
            Ok(ShardResponse::Value(Some(v))) => {
                assert_eq!((v.version, v.value), (version, b"one".to_vec()))
            }
            other => panic!("{key}: {other:?}"),
        }
    }
    assert_nothing_left(&cluster).await;

    // One failed condition (on the last shard's key) and nothing is written anywhere.
    let mut ops: Vec<WriteOp> = keys.iter().map(|k| put(k, "two")).collect();
    let last = ops.len() - 1;
    ops[last].condition = Condition::Version(outcome.versions[last].expect("version") + 1000);
    match txns.commit(ops, TIMEOUT).await {
        Err(TxnError::Rejected { op, current }) => {
            assert_eq!(op, last);
            assert_eq!(current, outcome.versions[last]);
        }
        other => panic!("expected a refusal: {other:?}"),
    }
    for key in &keys {
        assert_eq!(
            get(&cluster, key, Consistency::Linearizable).await,
            Some(b"one".to_vec())
        );
    }
    assert_nothing_left(&cluster).await;

    // Conditions that hold, deletes included.
    let mut ops: Vec<WriteOp> = keys
        .iter()
        .zip(&outcome.versions)
        .map(|(k, v)| WriteOp {
            key: k.as_bytes().to_vec(),
            kind: OpKind::Delete,
            condition: Condition::Version(v.expect("version")),
        })
        .collect();
    ops.push(WriteOp {
        condition: Condition::Absent,
        ..put("fresh", "x")
    });
    let deleted = txns.commit(ops, TIMEOUT).await.expect("commit");
    assert_eq!(
        deleted.existed,
        [vec![true; keys.len()], vec![false]].concat()
    );
    for key in &keys {
        assert_eq!(get(&cluster, key, Consistency::Linearizable).await, None);
    }
    assert_eq!(
        get(&cluster, "fresh", Consistency::Linearizable).await,
        Some(b"x".to_vec())
    );
    drop(txns);
    stop_cluster(cluster).await;
}

/// The cluster, with every resolve on the last shard arriving 50 ms late: the window
/// in which a transaction is visible on some shards and not yet on that one.
struct SlowLastResolve(Arc<LocalCluster>);

impl Shards for SlowLastResolve {
    fn shard_count(&self) -> u32 {
        SHARDS
    }

    async fn control(&self, request: ControlRequest) -> Result<ShardResponse, ShardError> {
        if let ControlRequest::Propose {
            shard,
            command: Command::Resolve { .. },
        } = &request
        {
            if *shard == SHARDS - 1 {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
        self.0.route(request).await
    }

    async fn applied_here(&self, shard: u32, index: u64, timeout: Duration) -> bool {
        self.0.applied_here(shard, index, timeout).await
    }

    fn leads_meta(&self) -> bool {
        true
    }

    async fn writes_seen(&self) -> Option<u64> {
        Some(self.0.writes_applied())
    }
}

/// A writer commits `(a, b, c) = i` for i = 1, 2, ... (c's shard resolves late);
/// readers read a, then b, then c, each linearizably. Having seen `a = i`, a later
/// read of `c` must see at least `i`, even though c's shard has not resolved
/// transaction i yet. Snapshots taken meanwhile must hold every transaction entirely
/// or not at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn readers_and_snapshots_never_see_half_a_transaction() {
    let cluster = Arc::new(LocalCluster::start(SHARDS).await);
    let slow = Arc::new(SlowLastResolve(cluster.clone()));
    let txns = Arc::new(Transactions::new(slow.clone(), 1, config()));
    let snapshots = Arc::new(Coordinator::new(cluster.clone(), SnapshotConfig::default()));
    let keys = Arc::new(key_per_shard("visible"));
    let stop = Arc::new(AtomicBool::new(false));

    let writer = {
        let (txns, keys) = (txns.clone(), keys.clone());
        tokio::spawn(async move {
            for i in 1..=40u64 {
                let ops = keys.iter().map(|k| put(k, &i.to_string())).collect();
                txns.commit(ops, TIMEOUT).await.expect("commit");
            }
        })
    };
    let read_number = |cluster: Arc<LocalCluster>, key: String, consistency| async move {
        get(&cluster, &key, consistency)
            .await
            .map(|v| {
                String::from_utf8(v)
                    .expect("utf-8")
                    .parse::<u64>()
                    .expect("number")
            })
            .unwrap_or(0)
    };
    let mut readers = Vec::new();
    for _ in 0..2 {
        let (cluster, keys, stop) = (cluster.clone(), keys.clone(), stop.clone());
        readers.push(tokio::spawn(async move {
            let mut checked = 0;
            while !stop.load(Ordering::Relaxed) {
                let mut seen = Vec::new();
                for key in keys.iter() {
                    seen.push(
                        read_number(cluster.clone(), key.clone(), Consistency::Linearizable).await,
                    );
                }
                assert!(
                    seen.windows(2).all(|w| w[1] >= w[0]),
                    "read {seen:?} in key order: a later read missed a transaction an earlier one saw"
                );
                checked += 1;
            }
            checked
        }));
    }
    let snapshotter = {
        let (cluster, snapshots, keys, stop) = (
            cluster.clone(),
            snapshots.clone(),
            keys.clone(),
            stop.clone(),
        );
        tokio::spawn(async move {
            let mut checked = 0;
            while !stop.load(Ordering::Relaxed) {
                let record = match snapshots.take(None).await {
                    Ok(record) => record,
                    Err(SnapshotError::Blocked | SnapshotError::Aborted { .. }) => continue,
                    Err(e) => panic!("snapshot: {e}"),
                };
                let mut seen = Vec::new();
                for key in keys.iter() {
                    let shard = shard_for_key(key.as_bytes(), SHARDS);
                    let at = record.read_version(shard).expect("cut");
                    seen.push(
                        read_number(cluster.clone(), key.clone(), Consistency::AtVersion(at)).await,
                    );
                }
                assert!(
                    seen.windows(2).all(|w| w[0] == w[1]),
                    "snapshot {} split a transaction: {seen:?}",
                    record.id
                );
                checked += 1;
            }
            checked
        })
    };
    writer.await.expect("writer");
    stop.store(true, Ordering::Relaxed);
    let mut reads = 0;
    for r in readers {
        reads += r.await.expect("reader");
    }
    let snapped = snapshotter.await.expect("snapshots");
    assert!(reads > 10, "readers checked too little ({reads})");
    assert!(snapped > 3, "too few snapshots checked ({snapped})");
    assert_nothing_left(&cluster).await;
    drop((txns, snapshots, slow));
    stop_cluster(cluster).await;
}

/// Transactions whose commit windows overlap all the time (slow resolves, several
/// committers) must not starve snapshots: an allocation that has to wait makes new
/// commits wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_stream_of_transactions_does_not_starve_snapshots() {
    let cluster = Arc::new(LocalCluster::start(SHARDS).await);
    let slow = Arc::new(SlowLastResolve(cluster.clone()));
    let txns = Arc::new(Transactions::new(slow.clone(), 1, config()));
    let snapshots = Coordinator::new(cluster.clone(), SnapshotConfig::default());
    let stop = Arc::new(AtomicBool::new(false));
    let mut committers = Vec::new();
    for client in 0..4 {
        let (txns, stop) = (txns.clone(), stop.clone());
        let keys = key_per_shard(&format!("stream{client}"));
        committers.push(tokio::spawn(async move {
            let mut committed = 0;
            while !stop.load(Ordering::Relaxed) {
                let ops = keys.iter().map(|k| put(k, "x")).collect();
                txns.commit(ops, TIMEOUT).await.expect("commit");
                committed += 1;
            }
            committed
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..8 {
        snapshots
            .take(None)
            .await
            .unwrap_or_else(|e| panic!("snapshot {i} under a stream of transactions: {e}"));
    }
    stop.store(true, Ordering::Relaxed);
    let mut committed = 0;
    for c in committers {
        committed += c.await.expect("committer");
    }
    assert!(
        committed > 8,
        "the stream committed too little ({committed})"
    );
    // A want whose allocation died is swept, and commits go on.
    Meta::new(&*cluster)
        .write(vec![meta_put(
            gate::want_key(1),
            1u64.to_be_bytes().to_vec(),
            Condition::Always,
        )])
        .await
        .expect("stale want");
    snapshots
        .sweep(&mut HashMap::new())
        .await
        .expect("snapshot sweep");
    let ops = key_per_shard("after-want")
        .iter()
        .map(|k| put(k, "x"))
        .collect();
    txns.commit(ops, Duration::from_millis(500))
        .await
        .expect("commit after the stale want was swept");
    assert_nothing_left(&cluster).await;
    drop((txns, snapshots, slow));
    stop_cluster(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_transactions_on_the_same_keys_serialise() {
    let cluster = Arc::new(LocalCluster::start(SHARDS).await);
    let txns = Arc::new(Transactions::new(cluster.clone(), 1, config()));
    let keys = Arc::new(key_per_shard("contended"));
    let mut tasks = Vec::new();
    for client in 0..4 {
        let (txns, keys) = (txns.clone(), keys.clone());
        tasks.push(tokio::spawn(async move {
            let mut committed = 0;
            for i in 0..8 {
                let value = format!("{client}/{i}");
                let ops = keys.iter().map(|k| put(k, &value)).collect();
                // Wait-die: whoever loses a conflict retries with its first start
                // time, so within the deadline everyone gets through (a generous one:
                // four clients serialise on the same keys on a loaded machine).
                match txns.commit(ops, 3 * TIMEOUT).await {
                    Ok(_) => committed += 1,
                    Err(e) => panic!("client {client}: {e}"),
                }
            }
            committed
        }));
    }
    let mut committed = 0;
    for t in tasks {
        committed += t.await.expect("client");
    }
    assert_eq!(
        committed, 32,
        "every transaction commits within its deadline"
    );
    let mut values = Vec::new();
    for key in keys.iter() {
        values.push(get(&cluster, key, Consistency::Linearizable).await);
    }
    assert!(
        values.windows(2).all(|w| w[0] == w[1]),
        "the last transaction did not win on every shard: {values:?}"
    );
    assert_nothing_left(&cluster).await;
    // Serialised means one order: every shard applied the 32 transactions once each,
    // and in the same order as every other shard (and every replica agrees).
    let mut orders = Vec::new();
    for (id, host) in &cluster.hosts {
        for key in keys.iter() {
            let shard = shard_for_key(key.as_bytes(), SHARDS);
            let state = host.local().state(shard).expect("shard state");
            let upto = state.applied().expect("applied").index;
            let mut history: Vec<(u64, Vec<u8>)> = state
                .history(cairn_store::HistoryRange::Between { after: 0, upto })
                .map(|v| v.expect("history"))
                .filter(|v| v.key == key.as_bytes())
                .map(|v| (v.version, v.value.expect("never deleted")))
                .collect();
            history.sort();
            let order: Vec<Vec<u8>> = history.into_iter().map(|(_, v)| v).collect();
            assert_eq!(
                order.len(),
                32,
                "host {id}: {key} holds {} versions for 32 transactions",
                order.len()
            );
            orders.push(order);
        }
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "shards applied the transactions in different orders"
    );
    drop(txns);
    stop_cluster(cluster).await;
}

/// Leave a record and prepares behind, as a coordinator that died would.
async fn abandon(cluster: &LocalCluster, state: TxnState, keys: &[String], value: &str) -> u64 {
    let started_ms = now_ms();
    let id = txn_id(started_ms, 7);
    let record = TxnRecord {
        id,
        state,
        shards: (0..SHARDS).collect(),
        started_ms,
        node: 9,
    };
    let mut ops = vec![meta_put(
        txn_key(id),
        record.encode().expect("encode"),
        Condition::Absent,
    )];
    if state == TxnState::Committed {
        ops.push(meta_put(
            gate::committing_key(id),
            Vec::new(),
            Condition::Always,
        ));
    }
    Meta::new(cluster).write(ops).await.expect("record");
    for key in keys {
        let shard = shard_for_key(key.as_bytes(), SHARDS);
        let command = Command::Prepare {
            txn: id,
            ops: vec![put(key, value)],
        };
        match cluster
            .route(ControlRequest::Propose { shard, command })
            .await
        {
            Ok(ShardResponse::Written(ApplyOutcome::Prepared { .. })) => {}
            other => panic!("prepare: {other:?}"),
        }
    }
    id
}

async fn sweep_until_clean(cluster: &LocalCluster, txns: &Transactions<LocalCluster>) {
    let mut first_seen = HashMap::new();
    for _ in 0..50 {
        txns.sweep(&mut first_seen).await.expect("sweep");
        if Meta::new(cluster)
            .scan(cairn_txn::record::TXN, None, 1)
            .await
            .expect("scan")
            .items
            .is_empty()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_nothing_left(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_finishes_what_a_dead_coordinator_left() {
    let cluster = Arc::new(LocalCluster::start(SHARDS).await);
    let txns = Transactions::new(cluster.clone(), 1, config());
    let snapshots = Coordinator::new(cluster.clone(), SnapshotConfig::default());

    // Died after preparing: the keys stay locked (a write is refused) until the
    // sweeper aborts; then nothing of it is visible.
    let keys = key_per_shard("pending");
    abandon(&cluster, TxnState::Pending, &keys, "never").await;
    let shard = shard_for_key(keys[0].as_bytes(), SHARDS);
    let blind = vec![put(&keys[0], "blind")];
    match cluster
        .route(ShardRequest::Write { shard, ops: blind })
        .await
    {
        Ok(ShardResponse::Written(ApplyOutcome::Locked { .. })) => {}
        other => panic!("a write of a locked key: {other:?}"),
    }
    sweep_until_clean(&cluster, &txns).await;
    for key in &keys {
        assert_eq!(get(&cluster, key, Consistency::Linearizable).await, None);
    }

    // Died after deciding commit: no snapshot can start (the gate), and once the
    // sweeper resolved it, every shard shows it and snapshots work again.
    let keys = key_per_shard("decided");
    abandon(&cluster, TxnState::Committed, &keys, "done").await;
    match snapshots.take(None).await {
        Err(SnapshotError::Blocked) => {}
        other => panic!("a snapshot started while a commit was unresolved: {other:?}"),
    }
    sweep_until_clean(&cluster, &txns).await;
    for key in &keys {
        assert_eq!(
            get(&cluster, key, Consistency::Linearizable).await,
            Some(b"done".to_vec())
        );
    }
    let record = snapshots.take(None).await.expect("snapshot after resolve");
    for key in &keys {
        let at = record
            .read_version(shard_for_key(key.as_bytes(), SHARDS))
            .expect("cut");
        assert_eq!(
            get(&cluster, key, Consistency::AtVersion(at)).await,
            Some(b"done".to_vec())
        );
    }
    drop((txns, snapshots));
    stop_cluster(cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_waits_for_marking_epochs_and_gives_up_cleanly() {
    let cluster = Arc::new(LocalCluster::start(SHARDS).await);
    let txns = Transactions::new(cluster.clone(), 1, config());
    let keys = key_per_shard("gated");
    // An epoch that is placing markers (and, here, never finishes).
    Meta::new(&*cluster)
        .write(vec![meta_put(
            gate::marking_key(77),
            Vec::new(),
            Condition::Always,
        )])
        .await
        .expect("marking");
    let ops = keys.iter().map(|k| put(k, "blocked")).collect();
    match txns.commit(ops, Duration::from_millis(600)).await {
        Err(TxnError::Aborted { reason }) => assert!(reason.contains("snapshot"), "{reason}"),
        other => panic!("committed across a marking epoch: {other:?}"),
    }
    assert_nothing_left(&cluster).await;
    for key in &keys {
        assert_eq!(get(&cluster, key, Consistency::Linearizable).await, None);
    }
    // The epoch ends: commits go through again.
    Meta::new(&*cluster)
        .write(vec![cairn_cluster::meta::delete(gate::marking_key(77))])
        .await
        .expect("unmark");
    let ops = keys.iter().map(|k| put(k, "free")).collect();
    txns.commit(ops, TIMEOUT).await.expect("commit");
    drop(txns);
    stop_cluster(cluster).await;
}
