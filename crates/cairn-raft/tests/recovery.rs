//! Recovery of one replica from a disk left by a crash at an awkward point, driven by
//! hand: no threads, no sockets, a stub outbox and durability.

mod common;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use cairn_raft::replica::{Outbox, Replica, ReplicaGauges, ReplicaMsg, ReplicaSeed};
use cairn_store::{AppliedState, NodeStore, ShardId, ShardState};
use raft::prelude::{ConfState, Entry, HardState, Message, MessageType};

#[derive(Default)]
struct Sent(Vec<Message>);

impl Outbox<ShardState> for Sent {
    fn send_raft(&mut self, _: ShardId, msg: Message) -> bool {
        self.0.push(msg);
        true
    }
    fn send_snapshot(&mut self, _: ShardId, msg: Message, _: ShardState) -> bool {
        self.0.push(msg);
        true
    }
}

/// Shard 0's replica on node 2 of three, opened from `store` as a restart would, with
/// a fixed election timeout so nothing is drawn.
fn open_replica(
    store: &NodeStore,
    gauges: &Arc<ReplicaGauges>,
) -> Replica<ShardState, Sent, common::NoSync> {
    Replica::open_seeded(
        0,
        &common::config(2, 3, 1),
        store.clone(),
        common::NoSync,
        Sent::default(),
        gauges.clone(),
        ReplicaSeed {
            proposal_ids: 1,
            election_timeout: Some(15),
        },
    )
    .unwrap()
}

fn entry(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        ..Default::default()
    }
}

/// A follower whose log had diverged (entries 1..=10 of term 1, never committed) was
/// sent a Raft snapshot at index 6 of term 2 and crashed after installing its data but
/// before moving the log. Its log still reaches past the snapshot, so "state ahead of
/// the log" is not the only sign of that crash: the log's entry at the applied index
/// has the wrong term. Found while building cairn-sim's crash model (a crash between
/// the two writes of a snapshot install); before the fix the follower refused the
/// leader's appends forever, its divergent entries counted as committed.
#[test]
fn a_crash_inside_a_snapshot_install_over_a_longer_divergent_log_recovers() {
    let store = NodeStore::open_temporary().unwrap();
    let log = store.raft_log(0).unwrap();
    log.initialize(&ConfState::from((vec![1, 2, 3], vec![])))
        .unwrap();
    let divergent: Vec<Entry> = (1..=10).map(|i| entry(i, 1)).collect();
    let hs = HardState {
        term: 1,
        vote: 0,
        commit: 0,
        ..Default::default()
    };
    log.persist(&divergent, Some(&hs)).unwrap();
    let state = store.shard_state(0).unwrap();
    let stage = store.snapshot_stage(0).unwrap();
    state
        .install(&stage, AppliedState { index: 6, term: 2 })
        .unwrap();

    let gauges = Arc::new(ReplicaGauges::new());
    let mut replica = open_replica(&store, &gauges);

    // The leader of term 2 appends after its snapshot point.
    let mut append = Message {
        msg_type: MessageType::MsgAppend,
        from: 1,
        to: 2,
        term: 2,
        index: 6,
        log_term: 2,
        commit: 8,
        ..Default::default()
    };
    append.set_entries(vec![entry(7, 2), entry(8, 2)].into());
    replica.handle(ReplicaMsg::Raft(Box::new(append)));
    replica.process().unwrap();

    assert_eq!(
        log.term_of(6).unwrap(),
        2,
        "the log moved to the snapshot point"
    );
    assert_eq!(
        log.last_index().unwrap(),
        8,
        "the leader's entries were accepted"
    );
    assert_eq!(gauges.applied.load(Ordering::Relaxed), 8);
}

/// A replica applied a joint conf change (index 2) and the change that leaves it
/// (index 3), and crashed after the second wrote the configuration but before the
/// state machine recorded index 3 as applied. Left alone, raft-rs replays entry 3
/// onto the configuration it already produced and stops ("can't leave a non-joint
/// config"); seen when a node that had just received a moved replica was SIGKILLed.
/// The replica opens, with the applied point completed and the final configuration.
#[test]
fn a_crash_between_a_conf_change_and_its_applied_point_recovers() {
    use cairn_store::Committed;
    use protobuf::Message as _;
    use raft::prelude::{
        ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, EntryType,
    };

    let store = NodeStore::open_temporary().unwrap();
    let log = store.raft_log(0).unwrap();
    log.initialize(&ConfState::from((vec![1, 2, 3], vec![])))
        .unwrap();
    let conf_entry = |index: u64, cc: &ConfChangeV2| Entry {
        index,
        term: 1,
        entry_type: EntryType::EntryConfChangeV2,
        data: cc.write_to_bytes().unwrap().into(),
        ..Default::default()
    };
    let mut enter = ConfChangeV2::default();
    enter.set_changes(
        vec![
            ConfChangeSingle {
                change_type: ConfChangeType::AddNode,
                node_id: 4,
                ..Default::default()
            },
            ConfChangeSingle {
                change_type: ConfChangeType::RemoveNode,
                node_id: 3,
                ..Default::default()
            },
        ]
        .into(),
    );
    enter.set_transition(ConfChangeTransition::Auto);
    let leave = ConfChangeV2::default();
    let entries = vec![entry(1, 1), conf_entry(2, &enter), conf_entry(3, &leave)];
    let hs = HardState {
        term: 1,
        vote: 1,
        commit: 3,
        ..Default::default()
    };
    log.persist(&entries, Some(&hs)).unwrap();
    // Entries 1 and 2 fully applied; entry 3's configuration written, its applied
    // point lost.
    let state = store.shard_state(0).unwrap();
    cairn_raft::StateMachine::apply(
        &state,
        &[
            Committed {
                index: 1,
                term: 1,
                data: &[],
            },
            Committed {
                index: 2,
                term: 1,
                data: &[],
            },
        ],
    )
    .unwrap();
    log.set_conf_state_at(&ConfState::from((vec![1, 2, 4], vec![])), 3)
        .unwrap();

    let gauges = Arc::new(ReplicaGauges::new());
    let mut replica = open_replica(&store, &gauges);
    replica.process().expect("nothing to apply again");
    assert_eq!(gauges.applied.load(Ordering::Relaxed), 3);
    assert_eq!(gauges.voters(), vec![1, 2, 4]);
    assert_eq!(store.shard_state(0).unwrap().applied().unwrap().index, 3);
}

/// Copy a directory tree, skipping the entries `skip` names at its top.
fn copy_tree(from: &std::path::Path, to: &std::path::Path, skip: &[&str]) {
    std::fs::create_dir_all(to).unwrap();
    for item in std::fs::read_dir(from).unwrap() {
        let item = item.unwrap();
        let name = item.file_name();
        if skip.iter().any(|s| name == *s) {
            continue;
        }
        if item.file_type().unwrap().is_dir() {
            copy_tree(&item.path(), &to.join(&name), &[]);
        } else {
            std::fs::copy(item.path(), to.join(&name)).unwrap();
        }
    }
}

/// sled reopens in a moment once a dropped database's threads let go of its lock.
fn reopen(path: &std::path::Path) -> NodeStore {
    for _ in 0..100 {
        if let Ok(store) = NodeStore::open(path) {
            return store;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    NodeStore::open(path).unwrap()
}

/// With the log in the engine, group commit syncs the log and not sled, so a power
/// loss can bring sled back *behind* the log: here the state machine had applied
/// entries 1..=10 but only its state at 4 (synced when the log was compacted to 3)
/// survived, while the log, synced at every write, kept 4..=10 (4 is kept, as a
/// compaction keeps the entry at its index). The replica must
/// replay 5..=10 from the log at start, and every acknowledged write is back. The
/// power loss is made by hand: sled's files as they were at the sync, the engine's
/// as they were at the end.
#[test]
fn a_state_machine_that_lost_unsynced_applies_replays_them_from_the_engine_log() {
    use cairn_store::{Command, Condition, OpKind, WriteOp};

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("n2");
    let synced = dir.path().join("sled-at-the-sync");
    let put = |i: u64| {
        Command::Batch(vec![WriteOp {
            key: format!("k{i}").into_bytes(),
            kind: OpKind::Put(format!("v{i}").into_bytes()),
            condition: Condition::Always,
        }])
    };
    let entries: Vec<Entry> = (1..=10)
        .map(|i| Entry {
            index: i,
            term: 1,
            data: put(i).encode().into(),
            ..Default::default()
        })
        .collect();
    {
        let store = NodeStore::open(&path).unwrap();
        assert!(store.logs_in_engine());
        let log = store.raft_log(0).unwrap();
        log.initialize(&ConfState::from((vec![1, 2, 3], vec![])))
            .unwrap();
        let hs = HardState {
            term: 1,
            vote: 1,
            commit: 10,
            ..Default::default()
        };
        log.persist(&entries, Some(&hs)).unwrap();
        store.sync_log().unwrap();
        let state = store.shard_state(0).unwrap();
        for i in 1..=4 {
            state.apply(i, 1, Some(&put(i))).unwrap();
        }
        // Compaction makes sled durable first (closing it flushes too): this is the
        // state that survives.
        log.compact(4).unwrap();
        store.sync_log().unwrap();
    }
    copy_tree(&path, &synced, &["raft-log"]);
    {
        let store = reopen(&path);
        let state = store.shard_state(0).unwrap();
        for i in 5..=10 {
            state.apply(i, 1, Some(&put(i))).unwrap();
        }
        assert_eq!(state.applied().unwrap().index, 10);
    }
    // The power loss: sled as synced, the log engine as it was.
    for item in std::fs::read_dir(&path).unwrap() {
        let item = item.unwrap();
        if item.file_name() != "raft-log" {
            let p = item.path();
            if p.is_dir() {
                std::fs::remove_dir_all(p).unwrap();
            } else {
                std::fs::remove_file(p).unwrap();
            }
        }
    }
    copy_tree(&synced, &path, &[]);

    let store = reopen(&path);
    let state = store.shard_state(0).unwrap();
    assert_eq!(
        state.applied().unwrap().index,
        4,
        "sled came back at its sync"
    );
    assert_eq!(state.get(b"k7", u64::MAX).unwrap(), None);
    let gauges = Arc::new(ReplicaGauges::new());
    let mut replica = open_replica(&store, &gauges);
    replica.process().unwrap();
    assert_eq!(gauges.applied.load(Ordering::Relaxed), 10);
    assert_eq!(state.applied().unwrap().index, 10);
    for i in 1..=10 {
        let got = state.get(format!("k{i}").as_bytes(), u64::MAX).unwrap();
        assert_eq!(
            got.map(|v| (v.version, v.value)),
            Some((i, format!("v{i}").into_bytes())),
            "write {i} after the replay"
        );
    }
}
