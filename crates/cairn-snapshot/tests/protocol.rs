//! The marker protocol on three real multi-raft hosts in one process: a snapshot that
//! completes, one that aborts because a shard cannot place its marker, and an epoch
//! abandoned by its coordinator that the sweeper aborts. In each case the alignment
//! window ends: held answers are released. And the allocation's guess of the next id
//! from the local meta replica: used when fresh, refused when stale.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_cluster::Shards;
use cairn_raft::{Call, Consistency, ControlRequest, ShardError, ShardRequest, ShardResponse};
use cairn_snapshot::testing::LocalCluster;
use cairn_snapshot::{Coordinator, SnapshotConfig, SnapshotError, SnapshotState};
use cairn_store::{ApplyOutcome, Command, Condition, OpKind, Versioned, WriteOp};
use tokio::sync::Notify;

const SHARDS: u32 = 3;

const NEXT: &[u8] = cairn_cluster::keyspace::SNAPSHOT_NEXT;

/// Three hosts, routing each request to the shard's leader. `broken` makes one
/// shard's markers never commit, as in a shard without quorum; `marked` is told when
/// shard 0's marker has been placed; releases wait while `releases_go` says false.
struct Cluster {
    local: LocalCluster,
    broken: Option<u32>,
    marked: Arc<Notify>,
    releases_go: tokio::sync::watch::Sender<bool>,
    /// What this node's own meta replica is said to hold for `s/next`.
    guess: Mutex<Guess>,
    /// Reads of `s/next` sent to the meta group's leader.
    next_reads: AtomicUsize,
}

/// How [`Shards::meta_get_here`] answers.
enum Guess {
    /// As host 1's meta replica has applied it.
    Here,
    /// This value, whatever the meta group holds.
    Fixed(Versioned),
}

impl Cluster {
    async fn start(broken: Option<u32>) -> Cluster {
        let local = LocalCluster::start(SHARDS).await;
        Cluster {
            local,
            broken,
            marked: Arc::new(Notify::new()),
            releases_go: tokio::sync::watch::Sender::new(true),
            guess: Mutex::new(Guess::Here),
            next_reads: AtomicUsize::new(0),
        }
    }

    async fn stop(self) {
        self.local.stop().await
    }

    /// Route a client or control call to its shard's leader.
    async fn execute(&self, request: impl Into<Call>) -> Result<ShardResponse, ShardError> {
        let request: Call = request.into();
        let shard = request.shard();
        if matches!(&request, Call::Control(ControlRequest::Get { key, .. }) if key == NEXT) {
            self.next_reads.fetch_add(1, Ordering::SeqCst);
        }
        let marker = matches!(
            request,
            Call::Control(ControlRequest::Propose {
                command: Command::Marker { .. },
                ..
            })
        );
        let release = matches!(
            request,
            Call::Control(ControlRequest::Propose {
                command: Command::Release { .. },
                ..
            })
        );
        if release {
            let mut go = self.releases_go.subscribe();
            let _ = go.wait_for(|go| *go).await;
        }
        if marker && self.broken == Some(shard) {
            tokio::time::sleep(Duration::from_secs(30)).await;
            return Err(ShardError::Unavailable {
                shard,
                reason: "no quorum (simulated)".into(),
            });
        }
        let answer = self.local.route(request).await;
        if marker && shard == 0 && answer.is_ok() {
            self.marked.notify_waiters();
        }
        answer
    }
}

impl Shards for Cluster {
    fn shard_count(&self) -> u32 {
        SHARDS
    }

    async fn control(&self, request: ControlRequest) -> Result<ShardResponse, ShardError> {
        self.execute(request).await
    }

    async fn applied_here(&self, shard: u32, index: u64, timeout: Duration) -> bool {
        self.local.applied_here(shard, index, timeout).await
    }

    fn leads_meta(&self) -> bool {
        true
    }

    fn meta_get_here(&self, key: &[u8]) -> Option<Versioned> {
        match &*self.guess.lock().unwrap() {
            Guess::Here => self.local.meta_get_here(key),
            Guess::Fixed(value) => Some(value.clone()),
        }
    }

    async fn writes_seen(&self) -> Option<u64> {
        Some(self.local.writes_applied())
    }
}

fn put(key: &str, value: &str) -> ShardRequest {
    ShardRequest::Write {
        shard: 0,
        ops: vec![WriteOp {
            key: key.as_bytes().to_vec(),
            kind: OpKind::Put(value.as_bytes().to_vec()),
            condition: Condition::Always,
        }],
    }
}

fn config() -> SnapshotConfig {
    SnapshotConfig {
        marker_timeout: Duration::from_millis(1500),
        abort_after: Duration::from_millis(300),
        sweep_every: Duration::from_millis(100),
        auto_interval: None,
        retention: Duration::from_secs(3600),
        gc_every: Duration::from_secs(3600),
    }
}

/// Once the releases still running after a snapshot's answer have ended, no epoch is
/// open.
async fn assert_no_open_epochs(coordinator: &Coordinator<Cluster>) {
    coordinator.settled().await;
    let open = coordinator.registry().open_epochs().await.expect("open");
    assert!(open.is_empty(), "epochs still open: {open:?}");
}

/// Let the coordinator's background work end, then stop the hosts.
async fn wind_down(coordinator: Coordinator<Cluster>, cluster: Arc<Cluster>) {
    coordinator.settled().await;
    drop(coordinator);
    Arc::try_unwrap(cluster)
        .ok()
        .expect("sole owner")
        .stop()
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_complete_snapshot_reads_the_state_at_its_cuts() {
    let cluster = Arc::new(Cluster::start(None).await);
    cluster.execute(put("k", "before")).await.expect("put");
    let coordinator = Coordinator::new(cluster.clone(), config());
    let snapshot = coordinator.take(Some("one")).await.expect("snapshot");
    cluster.execute(put("k", "after")).await.expect("put");

    let SnapshotState::Done { cuts } = &snapshot.state else {
        panic!("not done: {snapshot:?}");
    };
    assert_eq!(cuts.len(), SHARDS as usize, "a cut for every shard");
    let at = snapshot.read_version(0).expect("shard 0 cut");
    let read = ShardRequest::Get {
        shard: 0,
        key: b"k".to_vec(),
        consistency: Consistency::AtVersion(at),
    };
    match cluster.execute(read).await {
        Ok(ShardResponse::Value(Some(v))) => assert_eq!(v.value, b"before"),
        other => panic!("read at snapshot: {other:?}"),
    }
    let found = coordinator.registry().lookup("one").await.expect("by name");
    assert_eq!(found.id, snapshot.id);
    assert_no_open_epochs(&coordinator).await;
    wind_down(coordinator, cluster).await;
}

/// A snapshot is answered once its record is final; the releases that close the
/// windows run on behind it, and a write after the cut waits for them, not for the
/// snapshot's caller.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_answered_before_its_releases_land() {
    let cluster = Arc::new(Cluster::start(None).await);
    cluster.execute(put("warm", "up")).await.expect("put");
    let coordinator = Coordinator::new(cluster.clone(), config());
    cluster.releases_go.send_replace(false);

    let snapshot = tokio::time::timeout(Duration::from_secs(5), coordinator.take(None))
        .await
        .expect("answered while its releases wait")
        .expect("taken");
    assert!(matches!(snapshot.state, SnapshotState::Done { .. }));
    let open = coordinator.registry().open_epochs().await.expect("open");
    assert_eq!(
        open,
        vec![snapshot.id],
        "the epoch stays open until released"
    );
    // Inside the window: a write after the cut is held until the release lands.
    let held = tokio::spawn({
        let cluster = cluster.clone();
        async move { cluster.execute(put("k", "after")).await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !held.is_finished(),
        "a write after the cut was answered inside the window"
    );

    cluster.releases_go.send_replace(true);
    assert_no_open_epochs(&coordinator).await;
    tokio::time::timeout(Duration::from_secs(2), held)
        .await
        .expect("released")
        .expect("task")
        .expect("put");
    wind_down(coordinator, cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_without_quorum_aborts_the_snapshot_and_releases_held_answers() {
    let cluster = Arc::new(Cluster::start(Some(2)).await);
    cluster.execute(put("warm", "up")).await.expect("put");
    let coordinator = Coordinator::new(cluster.clone(), config());

    {
        let marked = cluster.marked.clone();
        let placed = marked.notified();
        tokio::pin!(placed);
        placed.as_mut().enable();
        let snapshot = coordinator.take(None);
        tokio::pin!(snapshot);
        // Once shard 0 has its marker, a write to shard 0 after it must wait for the
        // snapshot to end: here its abort, when shard 2's marker times out.
        let registry = coordinator.registry();
        let held_write = async {
            placed.await;
            let answer = cluster.execute(put("k", "during")).await;
            // What the registry says the moment the answer arrives: the epoch must
            // already be over (aborted), or the write was answered inside its window.
            let (records, _) = registry.list(None, 10).await.expect("list");
            (answer, records.first().map(|r| r.state.clone()))
        };
        let (aborted, (written, state_at_answer)) = tokio::join!(&mut snapshot, held_write);
        match aborted {
            Err(SnapshotError::Aborted { reason, .. }) => {
                assert!(
                    reason.contains("shard 2"),
                    "the reason names the shard: {reason}"
                )
            }
            other => panic!("expected an abort, got {other:?}"),
        }
        assert!(
            matches!(
                written,
                Ok(ShardResponse::Written(ApplyOutcome::Applied { .. }))
            ),
            "the held write is answered after the abort: {written:?}"
        );
        // Answered only once the window closed: by then the abort was recorded.
        assert!(
            matches!(state_at_answer, Some(SnapshotState::Aborted { .. })),
            "the write after the cut was answered while the snapshot was {state_at_answer:?}"
        );
    }
    let (record, _) = coordinator.registry().list(None, 10).await.expect("list");
    assert!(matches!(record[0].state, SnapshotState::Aborted { .. }));
    assert_no_open_epochs(&coordinator).await;
    // Nothing is held any more: a new write is answered at once.
    tokio::time::timeout(Duration::from_secs(2), cluster.execute(put("k", "later")))
        .await
        .expect("not held")
        .expect("put");
    wind_down(coordinator, cluster).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_aborts_an_epoch_whose_coordinator_died() {
    let cluster = Arc::new(Cluster::start(None).await);
    let coordinator = Coordinator::new(cluster.clone(), config());
    // A coordinator that allocates and places markers, then dies.
    let pending = coordinator
        .registry()
        .allocate(None, false)
        .await
        .expect("allocate");
    let epoch = pending.record.id;
    for shard in 0..SHARDS {
        let marker = ControlRequest::Propose {
            shard,
            command: Command::Marker { epoch },
        };
        cluster.execute(marker).await.expect("marker");
    }
    {
        let write = cluster.execute(put("k", "v"));
        tokio::pin!(write);
        assert!(
            tokio::time::timeout(Duration::from_millis(400), &mut write)
                .await
                .is_err(),
            "a write after an open cut was answered with no coordinator to end the window"
        );
        let mut first_seen = HashMap::new();
        let sweeping = async {
            for _ in 0..50 {
                coordinator.sweep(&mut first_seen).await.expect("sweep");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        };
        tokio::select! {
            answered = &mut write => assert!(answered.is_ok(), "{answered:?}"),
            _ = sweeping => panic!("the sweeper never released the abandoned epoch"),
        }
    }
    let record = coordinator
        .registry()
        .get(epoch)
        .await
        .expect("get")
        .expect("record");
    assert!(
        matches!(record.record.state, SnapshotState::Aborted { .. }),
        "{record:?}"
    );
    wind_down(coordinator, cluster).await;
}

/// Read `key` of shard 0 at `version` on every host.
async fn read_everywhere(
    cluster: &Cluster,
    key: &str,
    version: u64,
) -> Vec<Result<Option<Vec<u8>>, ShardError>> {
    let mut answers = Vec::new();
    for host in cluster.local.hosts.values() {
        let request = ShardRequest::Get {
            shard: 0,
            key: key.as_bytes().to_vec(),
            consistency: Consistency::AtVersion(version),
        };
        let mut answer = host.local().execute(request.clone()).await;
        for _ in 0..200 {
            if !matches!(answer, Err(ShardError::Unavailable { .. })) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
            answer = host.local().execute(request.clone()).await;
        }
        answers.push(answer.map(|r| match r {
            ShardResponse::Value(v) => v.map(|v| v.value),
            other => panic!("{other:?}"),
        }));
    }
    answers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_gc_keeps_what_retained_snapshots_read_and_refuses_the_rest() {
    let cluster = Arc::new(Cluster::start(None).await);
    let coordinator = Coordinator::new(cluster.clone(), config());
    cluster.execute(put("k", "1")).await.expect("put");
    let s1 = coordinator.take(Some("s1")).await.expect("s1");
    cluster.execute(put("k", "2")).await.expect("put");
    let s2 = coordinator.take(Some("s2")).await.expect("s2");
    for v in 3..10 {
        cluster
            .execute(put("k", &v.to_string()))
            .await
            .expect("put");
    }
    let (v1, v2) = (s1.read_version(0).unwrap(), s2.read_version(0).unwrap());

    // Both retained: the horizon is the older one's, and both still read right after
    // every host collected.
    let horizons = coordinator.gc_round().await.expect("gc");
    assert_eq!(horizons.get(&0), Some(&v1));
    collect_everywhere(&cluster, &horizons).await;
    for answer in read_everywhere(&cluster, "k", v1).await {
        assert_eq!(answer, Ok(Some(b"1".to_vec())));
    }
    for answer in read_everywhere(&cluster, "k", v2).await {
        assert_eq!(answer, Ok(Some(b"2".to_vec())));
    }

    // s1 deleted: the horizon moves to s2; s2 still reads right; s1's version is
    // refused on every host, never answered with what is left.
    let registry = coordinator.registry();
    registry
        .delete(&registry.lookup("s1").await.expect("s1"))
        .await
        .expect("delete");
    let horizons = coordinator.gc_round().await.expect("gc");
    assert_eq!(horizons.get(&0), Some(&v2));
    collect_everywhere(&cluster, &horizons).await;
    for answer in read_everywhere(&cluster, "k", v2).await {
        assert_eq!(answer, Ok(Some(b"2".to_vec())));
    }
    for answer in read_everywhere(&cluster, "k", v1).await {
        assert!(
            matches!(answer, Err(ShardError::HistoryCollected { horizon, .. }) if horizon == v2),
            "{answer:?}"
        );
    }
    wind_down(coordinator, cluster).await;
}

/// Every host applies the compaction (a log entry: waited for on each host's own
/// replica, not guessed with a sleep) and then collects.
async fn collect_everywhere(cluster: &Cluster, horizons: &std::collections::BTreeMap<u32, u64>) {
    for (id, host) in &cluster.local.hosts {
        for (&shard, &horizon) in horizons {
            let state = host.local().state(shard).expect("shard state");
            let mut now = 0;
            for _ in 0..500 {
                now = state.horizon().expect("horizon");
                if now >= horizon {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                now >= horizon,
                "host {id} shard {shard}: horizon {now}, the compaction to {horizon} never applied"
            );
        }
    }
    for host in cluster.local.hosts.values() {
        let mut collected = Vec::new();
        host.collect_history(&mut collected).expect("collect");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fresh_guess_of_the_next_id_saves_the_read_and_a_stale_one_is_refused() {
    let cluster = Arc::new(Cluster::start(None).await);
    let coordinator = Coordinator::new(cluster.clone(), config());
    // The first snapshot: no `s/next` yet, nothing to guess from.
    let first = coordinator.take(None).await.expect("first");
    assert_eq!(first.id, 1);
    let reads = cluster.next_reads.load(Ordering::SeqCst);
    // Once host 1's meta replica has applied the allocation, its guess is right and
    // no read goes to the leader.
    let meta = cluster.local.shard_count();
    let next = loop {
        if let Some(next) = cluster.local.meta_get_here(NEXT) {
            break next;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(
        next.value,
        2u64.to_be_bytes(),
        "s/next in meta group {meta}"
    );
    let second = coordinator.take(None).await.expect("second");
    assert_eq!(second.id, 2);
    assert_eq!(
        cluster.next_reads.load(Ordering::SeqCst),
        reads,
        "a fresh guess still read s/next from the leader"
    );
    // A stale guess (the first allocation's s/next) loses the compare-and-set: the
    // id is read from the leader, and no id is handed out twice.
    *cluster.guess.lock().unwrap() = Guess::Fixed(next);
    let third = coordinator.take(None).await.expect("third");
    assert_eq!(third.id, 3, "a stale guess reused an id");
    assert_eq!(cluster.next_reads.load(Ordering::SeqCst), reads + 1);
    wind_down(coordinator, cluster).await;
}
