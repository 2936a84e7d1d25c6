//! The replica pool's round (`replica::pool::round`), driven by hand: the writes that
//! several replicas of one thread took in a round become durable with one sync, and
//! only then are they applied and answered.

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use cairn_raft::commit::{Durability, SyncError};
use cairn_raft::replica::pool;
use cairn_raft::replica::{Outbox, Replica, ReplicaGauges, ReplicaMsg, ReplicaSeed};
use cairn_store::{
    ApplyOutcome, Command, Condition, NodeStore, OpKind, ShardId, ShardState, WriteOp,
};
use crossbeam_channel::{bounded, Receiver, Sender};
use raft::prelude::Message;

/// Single-voter groups send nothing anyone needs.
struct Nowhere;

impl Outbox<ShardState> for Nowhere {
    fn send_raft(&mut self, _: ShardId, _: Message) -> bool {
        true
    }
    fn send_snapshot(&mut self, _: ShardId, _: Message, _: ShardState) -> bool {
        true
    }
}

/// Counts syncs.
#[derive(Clone, Default)]
struct Counted(Arc<AtomicUsize>);

impl Durability for Counted {
    fn sync(&self) -> Result<(), SyncError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

type Owned = (
    Replica<ShardState, Nowhere, Counted>,
    Receiver<ReplicaMsg<ShardState>>,
);

fn put(key: &str) -> Command {
    Command::Batch(vec![WriteOp {
        key: key.as_bytes().to_vec(),
        kind: OpKind::Put(b"v".to_vec()),
        condition: Condition::Always,
    }])
}

#[test]
fn one_sync_covers_the_writes_of_every_replica_in_a_round() {
    let store = NodeStore::open_temporary().unwrap();
    let syncs = Counted::default();
    let mut inboxes: Vec<Sender<ReplicaMsg<ShardState>>> = Vec::new();
    let mut gauges = Vec::new();
    let mut replicas: Vec<Owned> = Vec::new();
    for shard in 0..3 {
        let (tx, rx) = bounded(64);
        let g = Arc::new(ReplicaGauges::new());
        let seed = ReplicaSeed {
            proposal_ids: 1,
            election_timeout: Some(10),
        };
        let replica = Replica::open_seeded(
            shard,
            &common::config(1, 1, 3),
            store.clone(),
            syncs.clone(),
            Nowhere,
            g.clone(),
            seed,
        )
        .unwrap();
        inboxes.push(tx);
        gauges.push(g);
        replicas.push((replica, rx));
    }
    // Each single-voter group elects itself once its timeout passes.
    for _ in 0..30 {
        for (replica, _) in &mut replicas {
            replica.tick();
        }
        assert!(pool::round(&mut replicas, &syncs).unwrap());
    }
    assert!(
        gauges.iter().all(|g| g.leader() == Some(1)),
        "not leaders yet"
    );

    let before = syncs.0.load(Ordering::SeqCst);
    let mut replies = Vec::new();
    for (shard, inbox) in inboxes.iter().enumerate() {
        let (reply, answer) = tokio::sync::oneshot::channel();
        inbox
            .send(ReplicaMsg::Propose {
                command: put(&format!("k{shard}")),
                reply,
            })
            .unwrap();
        replies.push(answer);
    }
    assert!(pool::round(&mut replicas, &syncs).unwrap());
    // Three replicas appended in this round; one sync made all three durable.
    assert_eq!(syncs.0.load(Ordering::SeqCst), before + 1);
    for mut answer in replies {
        match answer.try_recv() {
            Ok(Ok(ApplyOutcome::Applied { .. })) => {}
            other => panic!("write not applied after its round: {other:?}"),
        }
    }
}
