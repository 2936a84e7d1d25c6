//! The replica pool (`replica::pool`), driven by hand: the writes that several replicas
//! of one thread took in a round become durable with one sync, and only then are they
//! applied and answered; a round visits only the replicas whose inbox rang; a message
//! wakes the pool thread without waiting for a tick.

mod common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_raft::commit::{Durability, SyncError};
use cairn_raft::replica::inbox::{self, Inbox, Mailbox};
use cairn_raft::replica::pool;
use cairn_raft::replica::{Outbox, Replica, ReplicaGauges, ReplicaMsg, ReplicaSeed};
use cairn_store::{
    ApplyOutcome, Command, Condition, NodeStore, OpKind, ShardId, ShardState, WriteOp,
};
use crossbeam_channel::{unbounded, Receiver};
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

type Owned = (Replica<ShardState, Nowhere, Counted>, Mailbox<ShardState>);

fn put(key: &str) -> Command {
    Command::Batch(vec![WriteOp {
        key: key.as_bytes().to_vec(),
        kind: OpKind::Put(b"v".to_vec()),
        condition: Condition::Always,
    }])
}

/// Three single-voter groups on one pool, each elected leader by ticking rounds by
/// hand: their inboxes, the pool's bell, and the replicas.
struct Pool {
    inboxes: Vec<Inbox<ShardState>>,
    bell: Receiver<ShardId>,
    replicas: Vec<Owned>,
    syncs: Counted,
}

fn elected_pool() -> Pool {
    let store = NodeStore::open_temporary().unwrap();
    let syncs = Counted::default();
    let (ring, bell) = unbounded();
    let mut inboxes = Vec::new();
    let mut gauges = Vec::new();
    let mut replicas: Vec<Owned> = Vec::new();
    for shard in 0..3 {
        let (tx, rx) = inbox::inbox(shard, 64, ring.clone());
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
    let all: BTreeSet<ShardId> = (0..3).collect();
    // Each single-voter group elects itself once its timeout passes.
    for _ in 0..30 {
        for (replica, _) in &mut replicas {
            replica.tick();
        }
        assert!(pool::round(&mut replicas, &all, &syncs).unwrap().all_open);
    }
    assert!(
        gauges.iter().all(|g| g.leader() == Some(1)),
        "not leaders yet"
    );
    Pool {
        inboxes,
        bell,
        replicas,
        syncs,
    }
}

fn propose(inbox: &Inbox<ShardState>, key: &str) -> tokio::sync::oneshot::Receiver<WriteAnswer> {
    let (reply, answer) = tokio::sync::oneshot::channel();
    inbox
        .try_send(ReplicaMsg::Propose {
            command: put(key),
            reply,
        })
        .unwrap();
    answer
}

type WriteAnswer = Result<ApplyOutcome, cairn_raft::ShardError>;

fn applied(mut answer: tokio::sync::oneshot::Receiver<WriteAnswer>) -> bool {
    matches!(answer.try_recv(), Ok(Ok(ApplyOutcome::Applied { .. })))
}

#[test]
fn one_sync_covers_the_writes_of_every_replica_in_a_round() {
    let Pool {
        inboxes,
        bell,
        mut replicas,
        syncs,
    } = elected_pool();
    let before = syncs.0.load(Ordering::SeqCst);
    let replies: Vec<_> = inboxes
        .iter()
        .enumerate()
        .map(|(shard, inbox)| propose(inbox, &format!("k{shard}")))
        .collect();
    let due: BTreeSet<ShardId> = bell.try_iter().collect();
    assert_eq!(due.len(), 3, "each inbox rang");
    let visited = pool::round(&mut replicas, &due, &syncs).unwrap();
    assert_eq!(visited.replicas, 3);
    // Three replicas appended in this round; one sync made all three durable.
    assert_eq!(syncs.0.load(Ordering::SeqCst), before + 1);
    for answer in replies {
        assert!(applied(answer), "write not applied after its round");
    }
}

#[test]
fn a_round_visits_only_the_replicas_whose_inbox_rang() {
    let Pool {
        inboxes,
        bell,
        mut replicas,
        syncs,
    } = elected_pool();
    let _ = bell.try_iter().count();
    // Three messages for shard 1 ring its bell once; the others stay quiet.
    let replies: Vec<_> = (0..3)
        .map(|i| propose(&inboxes[1], &format!("k{i}")))
        .collect();
    let due: BTreeSet<ShardId> = bell.try_iter().collect();
    assert_eq!(due, BTreeSet::from([1]));
    let visited = pool::round(&mut replicas, &due, &syncs).unwrap();
    assert_eq!(
        visited.replicas, 1,
        "a round touched replicas that had no mail"
    );
    assert!(visited.undrained.is_empty());
    for answer in replies {
        assert!(applied(answer), "write not applied after its round");
    }
    // Drained, the inbox rings again for its next message.
    let answer = propose(&inboxes[1], "again");
    assert_eq!(bell.try_iter().collect::<Vec<_>>(), vec![1]);
    let visited = pool::round(&mut replicas, &BTreeSet::from([1]), &syncs).unwrap();
    assert_eq!(visited.replicas, 1);
    assert!(applied(answer));
}

#[test]
fn a_message_wakes_the_pool_thread_without_waiting_for_a_tick() {
    let Pool {
        inboxes,
        bell,
        replicas,
        syncs,
    } = elected_pool();
    let (_adopt_door, adopt) = crossbeam_channel::bounded(1);
    let (stop, stopped) = crossbeam_channel::bounded::<()>(0);
    // A tick an hour long: only the bell can wake the thread in time.
    let thread = std::thread::spawn(move || {
        pool::run(
            replicas,
            adopt,
            bell,
            syncs,
            stopped,
            Duration::from_secs(3600),
        )
    });
    // Let the thread settle into waiting first.
    std::thread::sleep(Duration::from_millis(200));
    let answer = propose(&inboxes[2], "wake");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let outcome = runtime
        .block_on(async { tokio::time::timeout(Duration::from_secs(10), answer).await })
        .expect("the write waited for a tick: the bell did not wake the pool thread")
        .unwrap();
    assert!(matches!(outcome, Ok(ApplyOutcome::Applied { .. })));
    drop(stop);
    thread.join().unwrap();
}
