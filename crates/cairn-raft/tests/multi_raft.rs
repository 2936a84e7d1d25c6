//! Three multi-raft hosts in one process, talking over real loopback TCP with fast
//! ticks: replication, the NotLeader contract, failover and catch-up after a restart.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_raft::{
    Consistency, ControlPath, ControlRequest, MemberChange, MultiRaft, RaftConfig, RaftError,
    ShardError, ShardRequest, ShardResponse,
};
use cairn_store::{ApplyOutcome, Command, Condition, NodeStore, OpKind, WriteOp};

const SHARDS: u32 = 3;

fn put(key: &str, value: &str) -> Command {
    Command::Batch(vec![WriteOp {
        key: key.as_bytes().to_vec(),
        kind: OpKind::Put(value.as_bytes().to_vec()),
        condition: Condition::Always,
    }])
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

struct TestCluster {
    dir: tempfile::TempDir,
    peers: BTreeMap<u64, SocketAddr>,
    hosts: BTreeMap<u64, MultiRaft>,
    controls: BTreeMap<u64, ControlPath>,
    stores: BTreeMap<u64, NodeStore>,
}

impl TestCluster {
    async fn start() -> TestCluster {
        let peers: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
        let mut cluster = TestCluster {
            dir: tempfile::tempdir().expect("tempdir"),
            peers,
            hosts: BTreeMap::new(),
            controls: BTreeMap::new(),
            stores: BTreeMap::new(),
        };
        for id in 1..=3 {
            cluster.start_host(id).await;
        }
        cluster
    }

    async fn start_host(&mut self, id: u64) {
        let store = NodeStore::open(&self.dir.path().join(format!("n{id}"))).expect("store");
        let config = RaftConfig {
            node_id: id,
            cluster_id: "test".into(),
            shards: SHARDS,
            peers: self.peers.iter().map(|(&n, &a)| (n, a.into())).collect(),
            placement: cairn_raft::Placement::Everywhere,
            listen: self.peers[&id],
            tick: Duration::from_millis(20),
            election_ticks: 10,
            heartbeat_ticks: 2,
            log_compact_entries: 20,
            request_ticks: 100,
            replica_threads: 2,
            limits: Default::default(),
            lease_reads: false,
            tls: None,
        };
        // While a host is down, the others keep dialling it, and any outgoing
        // connection of this process may take its (ephemeral-range) port as a local
        // port for a moment: retry the bind rather than fail on that race. A start
        // that fails to bind has started nothing.
        let mut attempts = 0;
        let host = loop {
            match MultiRaft::start(config.clone(), store.clone()).await {
                Err(RaftError::Io(e))
                    if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 100 =>
                {
                    attempts += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                other => break other.expect("start"),
            }
        };
        let control = host.take_control().expect("the control path");
        assert!(host.take_control().is_none(), "handed out twice");
        self.hosts.insert(id, host);
        self.controls.insert(id, control);
        self.stores.insert(id, store);
    }

    async fn stop_host(&mut self, id: u64) {
        self.controls.remove(&id);
        if let Some(host) = self.hosts.remove(&id) {
            host.shutdown().await;
        }
        // The last handle closes the database (and releases sled's lock on it).
        self.stores.remove(&id);
    }

    /// Wait until every running host agrees on a leader for `shard` that is running.
    async fn leader(&self, shard: u32) -> u64 {
        for _ in 0..500 {
            let seen: Vec<Option<u64>> = self.hosts.values().map(|h| h.leader_of(shard)).collect();
            if let Some(Some(leader)) = seen.first() {
                if self.hosts.contains_key(leader) && seen.iter().all(|l| l == &Some(*leader)) {
                    return *leader;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no agreed leader for shard {shard}");
    }

    /// A leader of `shard` that the hosts other than `except` agree on.
    async fn leader_among(&self, shard: u32, except: u64) -> u64 {
        for _ in 0..500 {
            let seen: Vec<Option<u64>> = self
                .hosts
                .iter()
                .filter(|(&id, _)| id != except)
                .map(|(_, h)| h.leader_of(shard))
                .collect();
            if let Some(Some(leader)) = seen.first() {
                if *leader != except && seen.iter().all(|l| l == &Some(*leader)) {
                    return *leader;
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("no agreed leader for shard {shard} among the hosts but {except}");
    }

    async fn put(&self, shard: u32, key: &str, value: &str) -> u64 {
        match self.propose(shard, put(key, value)).await {
            Ok(ShardResponse::Written(ApplyOutcome::Applied { version, .. })) => version,
            other => panic!("put {key}: {other:?}"),
        }
    }

    async fn propose(&self, shard: u32, command: Command) -> Result<ShardResponse, ShardError> {
        let leader = self.leader(shard).await;
        let request = ControlRequest::Propose { shard, command };
        self.controls[&leader].local(request).await
    }

    async fn get(
        &self,
        host: u64,
        shard: u32,
        key: &str,
        consistency: Consistency,
    ) -> Result<Option<Vec<u8>>, ShardError> {
        let request = ShardRequest::Get {
            shard,
            key: key.as_bytes().to_vec(),
            consistency,
        };
        match self.hosts[&host].local().execute(request).await? {
            ShardResponse::Value(v) => Ok(v.map(|v| v.value)),
            other => panic!("get answered {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_replicate_and_followers_refuse_with_a_leader_hint() {
    let cluster = TestCluster::start().await;
    for shard in 0..SHARDS {
        let version = cluster.put(shard, &format!("k{shard}"), "v").await;
        assert!(version > 0);
        let leader = cluster.leader(shard).await;
        assert_eq!(
            cluster
                .get(
                    leader,
                    shard,
                    &format!("k{shard}"),
                    Consistency::Linearizable
                )
                .await,
            Ok(Some(b"v".to_vec()))
        );
        for (&id, _) in cluster.hosts.iter().filter(|(&id, _)| id != leader) {
            // A follower refuses linearizable work and names the leader...
            let refused = cluster
                .get(id, shard, &format!("k{shard}"), Consistency::Linearizable)
                .await;
            assert_eq!(
                refused,
                Err(ShardError::NotLeader {
                    shard,
                    leader: Some(leader)
                })
            );
            // ...and its own replica converges (stale reads are local).
            let mut converged = false;
            for _ in 0..200 {
                if cluster
                    .get(id, shard, &format!("k{shard}"), Consistency::Stale)
                    .await
                    == Ok(Some(b"v".to_vec()))
                {
                    converged = true;
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert!(
                converged,
                "follower {id} never applied shard {shard}'s write"
            );
        }
    }
}

/// The meta group holds the cluster's own records: a client call (what the HTTP API
/// and a forwarded client request can send) never reaches it, locally or forwarded,
/// while the control path reads and writes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_calls_never_reach_the_meta_group_and_control_calls_do() {
    let cluster = TestCluster::start().await;
    let meta = SHARDS;
    let leader = cluster.leader(meta).await;
    let follower = *cluster.hosts.keys().find(|&&id| id != leader).unwrap();
    let Command::Batch(ops) = put("s/forged", "x") else {
        unreachable!()
    };
    let write = ShardRequest::Write {
        shard: meta,
        ops: ops.clone(),
    };
    let read = ShardRequest::Get {
        shard: meta,
        key: b"s/forged".to_vec(),
        consistency: Consistency::Stale,
    };
    for request in [write.clone(), read] {
        let local = cluster.hosts[&leader]
            .local()
            .execute(request.clone())
            .await;
        assert!(
            matches!(local, Err(ShardError::Refused { shard, .. }) if shard == meta),
            "{local:?}"
        );
        // Forwarded from a follower to the leader: refused by the receiver too.
        let forwarded = cluster.hosts[&follower]
            .forward(leader, request, Duration::from_secs(2))
            .await;
        assert!(
            matches!(forwarded, Err(ShardError::Refused { .. })),
            "{forwarded:?}"
        );
    }
    // The same batch through the control path is written, forwarded or not.
    let outcome = cluster.controls[&follower]
        .forward(
            leader,
            ControlRequest::Propose {
                shard: meta,
                command: Command::Batch(ops),
            },
            Duration::from_secs(2),
        )
        .await
        .and_then(|answer| answer.into_written(meta));
    assert!(
        matches!(outcome, Ok(ApplyOutcome::Applied { .. })),
        "{outcome:?}"
    );
    let got = cluster.controls[&leader]
        .local(ControlRequest::Get {
            shard: meta,
            key: b"s/forged".to_vec(),
        })
        .await
        .and_then(|answer| answer.into_value(meta));
    assert_eq!(got.map(|v| v.map(|v| v.value)), Ok(Some(b"x".to_vec())));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_takes_over_and_a_restarted_host_catches_up_by_snapshot() {
    let mut cluster = TestCluster::start().await;
    let shard = 0;
    let old_leader = cluster.leader(shard).await;
    cluster.put(shard, "before", "1").await;
    cluster.stop_host(old_leader).await;

    // The survivors elect a new leader and keep accepting writes; enough of them
    // that the log is compacted past what the stopped host has.
    let new_leader = cluster.leader(shard).await;
    assert_ne!(new_leader, old_leader);
    for i in 0..60 {
        cluster.put(shard, &format!("after/{i}"), "2").await;
    }
    let first_index = cluster.hosts[&new_leader]
        .status(shard)
        .expect("status")
        .first_index;
    assert!(
        first_index > 2,
        "the log was not compacted (first index {first_index})"
    );

    cluster.start_host(old_leader).await;
    let mut caught_up = false;
    for _ in 0..500 {
        let value = cluster
            .get(old_leader, shard, "after/59", Consistency::Stale)
            .await;
        if value == Ok(Some(b"2".to_vec())) {
            caught_up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(caught_up, "the restarted host never caught up");
    // The install makes the data visible first and updates the replica's figures
    // right after, so the figures are awaited, not sampled.
    let mut status = None;
    for _ in 0..300 {
        status = cluster.hosts[&old_leader].status(shard);
        if status.as_ref().is_some_and(|s| s.snapshots_installed >= 1) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let all: Vec<_> = cluster
        .hosts
        .iter()
        .map(|(id, h)| (id, h.status(shard)))
        .collect();
    assert!(
        status.as_ref().is_some_and(|s| s.snapshots_installed >= 1),
        "caught up without a snapshot although the log was compacted: {status:?}; all: {all:?}"
    );
    assert_eq!(
        cluster
            .get(old_leader, shard, "before", Consistency::Stale)
            .await,
        Ok(Some(b"1".to_vec())),
        "the snapshot lost data written before the restart"
    );
    for id in [1, 2, 3] {
        cluster.stop_host(id).await;
    }
}

/// How long a held answer is watched to stay held. Holding is deterministic (nothing
/// but a release ends it before the deadline), so this only bounds the wait.
const HELD_FOR: Duration = Duration::from_millis(400);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answers_after_a_cut_wait_for_the_release_even_across_a_leader_change() {
    let mut cluster = TestCluster::start().await;
    let shard = 1;
    cluster.put(shard, "k", "before").await;
    let cut = match cluster.propose(shard, Command::Marker { epoch: 1 }).await {
        Ok(ShardResponse::Written(ApplyOutcome::Marked { cut })) => cut,
        other => panic!("marker: {other:?}"),
    };

    {
        // A write after the cut is applied but not answered while epoch 1 is open.
        let write = cluster.put(shard, "k", "after");
        tokio::pin!(write);
        assert!(
            tokio::time::timeout(HELD_FOR, &mut write).await.is_err(),
            "a write after an open cut was answered before the release"
        );
        // So is a linearizable read, which would reveal it.
        let leader = cluster.leader(shard).await;
        let read = cluster.get(leader, shard, "k", Consistency::Linearizable);
        tokio::pin!(read);
        assert!(
            tokio::time::timeout(HELD_FOR, &mut read).await.is_err(),
            "a read of state after an open cut was answered before the release"
        );
        // Reads served without the leader do not reveal it either: a stale read is
        // served just below the window, on every host, and a fixed version above the
        // cut is not served until the window closes.
        for id in [1, 2, 3] {
            assert_eq!(
                cluster.get(id, shard, "k", Consistency::Stale).await,
                Ok(Some(b"before".to_vec())),
                "a stale read on host {id} revealed a write after an open cut"
            );
            assert!(
                matches!(
                    cluster
                        .get(id, shard, "k", Consistency::AtVersion(cut + 1))
                        .await,
                    Err(ShardError::Unavailable { .. })
                ),
                "host {id} served a version above an open cut"
            );
        }
        // The snapshot's own state is readable at once, on any replica.
        for id in [1, 2, 3] {
            let mut got = Err(ShardError::ShuttingDown);
            for _ in 0..200 {
                got = cluster
                    .get(id, shard, "k", Consistency::AtVersion(cut - 1))
                    .await;
                if got.is_ok() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            assert_eq!(
                got,
                Ok(Some(b"before".to_vec())),
                "snapshot read on host {id}"
            );
        }

        cluster
            .propose(shard, Command::Release { epoch: 1 })
            .await
            .expect("release");
        let version = write.await;
        assert!(version > cut);
        assert_eq!(read.await, Ok(Some(b"after".to_vec())));
    }

    // Epoch 2 opens; its leader stops; the new leader re-derives the hold from its
    // log and holds a write after the cut just the same.
    let cut = match cluster.propose(shard, Command::Marker { epoch: 2 }).await {
        Ok(ShardResponse::Written(ApplyOutcome::Marked { cut })) => cut,
        other => panic!("marker: {other:?}"),
    };
    let old_leader = cluster.leader(shard).await;
    cluster.stop_host(old_leader).await;
    // The new leader first, so that the election's own delay cannot fill the window
    // the write must be held for.
    let new_leader = cluster.leader(shard).await;
    assert_ne!(new_leader, old_leader);
    {
        let write = cluster.put(shard, "k", "under a new leader");
        tokio::pin!(write);
        assert!(
            tokio::time::timeout(HELD_FOR, &mut write).await.is_err(),
            "the new leader answered a write after an open cut"
        );
        cluster
            .propose(shard, Command::Release { epoch: 2 })
            .await
            .expect("release");
        assert!(write.await > cut);
    }
    for id in [1, 2, 3] {
        cluster.stop_host(id).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_locked_keys_wait_for_the_resolve_even_across_a_leader_change() {
    let mut cluster = TestCluster::start().await;
    let shard = 2;
    cluster.put(shard, "k", "before").await;
    let txn = 7 << 40;
    let prepare = Command::Prepare {
        txn,
        ops: vec![WriteOp {
            key: b"k".to_vec(),
            kind: OpKind::Put(b"committed".to_vec()),
            condition: Condition::Always,
        }],
    };
    match cluster.propose(shard, prepare).await {
        Ok(ShardResponse::Written(ApplyOutcome::Prepared { existed })) => {
            assert_eq!(existed, vec![true])
        }
        other => panic!("prepare: {other:?}"),
    }
    // A write of the locked key is refused, and changes nothing.
    match cluster.propose(shard, put("k", "blind")).await {
        Ok(ShardResponse::Written(ApplyOutcome::Locked { op: 0, txn: t })) => assert_eq!(t, txn),
        other => panic!("write of a locked key: {other:?}"),
    }
    // A linearizable read of it waits (the transaction may be committed elsewhere);
    // a read of another key does not, nor does a scan of a range without locks.
    let leader = cluster.leader(shard).await;
    assert_eq!(
        cluster
            .get(leader, shard, "other", Consistency::Linearizable)
            .await,
        Ok(None)
    );
    let scan = |prefix: &str| ShardRequest::Scan {
        shard,
        prefix: prefix.as_bytes().to_vec(),
        start_after: None,
        limit: 10.into(),
        consistency: Consistency::Linearizable,
    };
    assert!(cluster.hosts[&leader]
        .local()
        .execute(scan("x"))
        .await
        .is_ok());
    {
        let read = cluster.get(leader, shard, "k", Consistency::Linearizable);
        tokio::pin!(read);
        assert!(
            tokio::time::timeout(HELD_FOR, &mut read).await.is_err(),
            "a read of a locked key was answered before the resolve"
        );
        let scan_all = cluster.hosts[&leader].local().execute(scan(""));
        tokio::pin!(scan_all);
        assert!(
            tokio::time::timeout(HELD_FOR, &mut scan_all).await.is_err(),
            "a scan over a locked key was answered before the resolve"
        );
        // Stale reads never wait: they promise nothing across shards.
        assert_eq!(
            cluster.get(leader, shard, "k", Consistency::Stale).await,
            Ok(Some(b"before".to_vec()))
        );
    }
    {
        // The leader changes: the lock is in the applied state, so the new leader
        // holds reads just the same.
        cluster.stop_host(leader).await;
        let leader = cluster.leader(shard).await;
        let read2 = cluster.get(leader, shard, "k", Consistency::Linearizable);
        tokio::pin!(read2);
        assert!(
            tokio::time::timeout(HELD_FOR, &mut read2).await.is_err(),
            "the new leader answered a read of a locked key"
        );
        match cluster
            .propose(shard, Command::Resolve { txn, commit: true })
            .await
        {
            Ok(ShardResponse::Written(ApplyOutcome::Resolved {
                committed: true,
                version: Some(_),
            })) => {}
            other => panic!("resolve: {other:?}"),
        }
        assert_eq!(read2.await, Ok(Some(b"committed".to_vec())));
    }
    cluster.put(shard, "k", "after").await;
    for id in [1, 2, 3] {
        cluster.stop_host(id).await;
    }
}

/// A command larger than the entry limit is refused before it reaches the log: an
/// entry no Raft message could carry would stop its shard from replicating. The log
/// does not move, and the shard goes on accepting writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposal_over_the_entry_limit_is_refused_and_the_log_does_not_move() {
    let cluster = TestCluster::start().await;
    let limit = cairn_raft::RaftLimits::default().max_entry_bytes;
    // Let the first elections settle: a new leader's own entry would take an index.
    let mut first = cluster.put(0, "small", "v").await;
    loop {
        let next = cluster.put(0, "small", "v").await;
        if next == first + 1 {
            first = next;
            break;
        }
        first = next;
    }
    let leader = cluster.leader(0).await;
    let term = cluster.hosts[&leader].status(0).expect("status").term;
    let huge = "x".repeat(limit + 1);
    match cluster.propose(0, put("huge", &huge)).await {
        Err(ShardError::TooLarge {
            shard: 0,
            bytes,
            limit: l,
            ..
        }) => assert!(bytes > limit && l == limit, "{bytes} {l}"),
        other => panic!("expected TooLarge, got {other:?}"),
    }
    // The next write takes the very next index (in the same term): the refused one
    // took none. A new leader would have put an empty entry of its own in between;
    // its voters persisted its term before it led, so a term that no host has moved
    // past proves there was none. (The old leader's own figure alone can lag: a slow
    // node may not yet know it was deposed.)
    let after = cluster.put(0, "after", "v").await;
    let same_term = cluster
        .hosts
        .values()
        .all(|host| host.status(0).is_some_and(|s| s.term == term));
    if same_term {
        assert_eq!(after, first + 1, "the refused command took a log index");
    }
    let leader = cluster.leader(0).await;
    assert_eq!(
        cluster
            .get(leader, 0, "huge", Consistency::Linearizable)
            .await,
        Ok(None)
    );
}

/// Issue 13: every acknowledged write must follow a durable sync (`fdatasync`) of the
/// Raft log on a quorum, the leader included: writes acknowledged one after another
/// cannot share one, so the leader's count of log syncs grows by at least one per
/// write. Reverting the store to sled's `flush()` alone (which does not reach the
/// disk), or group commit to syncing sled instead of the log engine, stops the count,
/// and this test fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_follows_a_durable_sync() {
    let cluster = TestCluster::start().await;
    cluster.put(0, "warm", "up").await;
    let leader = cluster.leader(0).await;
    let syncs = |id: u64| cluster.stores[&id].log_syncs();
    let before: BTreeMap<u64, u64> = cluster.stores.keys().map(|&id| (id, syncs(id))).collect();
    let writes = 20;
    for i in 0..writes {
        let at_start = syncs(leader);
        cluster.put(0, &format!("k{i}"), "v").await;
        if cluster.leader(0).await == leader {
            assert!(
                syncs(leader) > at_start,
                "write {i} was acknowledged without a durable sync on its leader"
            );
        }
    }
    let grown: Vec<u64> = cluster
        .stores
        .keys()
        .map(|&id| syncs(id) - before[&id])
        .collect();
    assert!(
        grown.iter().filter(|&&g| g >= writes).count() >= 2,
        "a quorum must sync every write durably: syncs per node {grown:?} for {writes} writes"
    );
}

/// A leader asked to remove itself refuses (raft-rs would keep it leading without
/// its own progress, and it would panic at its next append): leadership must move
/// first. The group keeps its voters and its leader, and takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_refuses_to_remove_itself() {
    let cluster = TestCluster::start().await;
    let shard = 0;
    let leader = cluster.leader(shard).await;
    let other = *cluster.hosts.keys().find(|&&id| id != leader).unwrap();
    for change in [
        MemberChange::Replace {
            add: other,
            remove: leader,
        },
        MemberChange::RemoveLearner { node: leader },
    ] {
        let answer = cluster.controls[&leader]
            .local(ControlRequest::ChangeMembers { shard, change })
            .await;
        match answer {
            Err(ShardError::Unavailable { reason, .. }) => {
                assert!(reason.contains("cannot remove itself"), "{reason}")
            }
            other => panic!("{change:?} answered {other:?}"),
        }
    }
    let members = cluster.controls[&leader]
        .local(ControlRequest::Members { shard })
        .await;
    let Ok(ShardResponse::Members(members)) = members else {
        panic!("members: {members:?}");
    };
    assert_eq!(members.voters, vec![1, 2, 3]);
    assert_eq!(members.leader, Some(leader));
    cluster.put(shard, "after", "refusal").await;
}

/// Leadership that comes back to a voter while a change removing it is under way:
/// the leader proposes a joint configuration that removes B, and at once hands
/// leadership to B, which then leads the group out of the joint configuration and
/// out of its own membership. B must step down (raft-rs would keep it leading
/// without its own progress, and panic at its next append); the others elect a
/// leader and the group takes writes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_removed_by_a_change_it_finished_steps_down() {
    let cluster = TestCluster::start().await;
    let shard = 0;
    let leader = cluster.leader(shard).await;
    let removed = *cluster.hosts.keys().find(|&&id| id != leader).unwrap();
    // Node 4 does not exist: the new configuration's quorum is the two others.
    let change = ControlRequest::ChangeMembers {
        shard,
        change: MemberChange::Replace {
            add: 4,
            remove: removed,
        },
    };
    let control = cluster.controls[&leader].clone();
    let proposed = tokio::spawn(async move { control.local(change).await });
    // Long enough for the proposal to reach the leader's log, too short for the
    // group to leave the joint configuration it enters.
    tokio::time::sleep(Duration::from_millis(2)).await;
    cluster.controls[&leader]
        .local(ControlRequest::TransferLeader { shard, to: removed })
        .await
        .expect("transfer");
    let answered = proposed.await;
    let mut voters = Vec::new();
    for _ in 0..300 {
        let host = cluster
            .hosts
            .keys()
            .copied()
            .find(|&h| h != removed)
            .unwrap();
        if let Ok(ShardResponse::Members(m)) = cluster.controls[&host]
            .local(ControlRequest::Members { shard })
            .await
        {
            voters = m.voters.clone();
            if m.outgoing.is_empty() && !m.voters.contains(&removed) {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        !voters.contains(&removed),
        "voters {voters:?}; the change answered {answered:?}"
    );
    let new_leader = cluster.leader_among(shard, removed).await;
    assert_ne!(new_leader, removed);
    let request = ControlRequest::Propose {
        shard,
        command: put("after", "stepping down"),
    };
    let written = cluster.controls[&new_leader].local(request).await;
    assert!(
        matches!(written, Ok(ShardResponse::Written(_))),
        "{written:?}"
    );
    assert!(
        cluster.hosts[&removed].leader_of(shard) != Some(removed),
        "the removed replica still believes it leads"
    );
}
