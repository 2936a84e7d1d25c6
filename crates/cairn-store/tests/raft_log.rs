//! RaftLog behaviour, persistence across reopen, and conformance with raft-rs's
//! MemStorage (the reference semantics of `raft::Storage`).

use cairn_store::{AppliedState, Command, NodeStore, RaftLog, StoreError};
use protobuf::Message;
use raft::prelude::{ConfState, Entry, HardState, SnapshotMetadata};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, Storage, StorageError};

fn ent(index: u64, term: u64) -> Entry {
    Entry {
        index,
        term,
        data: format!("data-{index}-{term}").into_bytes().into(),
        ..Default::default()
    }
}

fn ctx() -> GetEntriesContext {
    GetEntriesContext::empty(false)
}

fn open() -> (tempfile::TempDir, NodeStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(&dir.path().join("db")).unwrap();
    (dir, store)
}

fn store_err(e: StorageError) -> raft::Error {
    raft::Error::Store(e)
}

#[test]
fn append_read_and_terms() {
    let (_d, store) = open();
    let log = store.raft_log(1).unwrap();
    assert_eq!(Storage::first_index(&log).unwrap(), 1);
    assert_eq!(Storage::last_index(&log).unwrap(), 0);
    assert_eq!(log.term(0).unwrap(), 0);

    log.persist(&[ent(1, 1), ent(2, 1), ent(3, 2)], None)
        .unwrap();
    assert_eq!(Storage::first_index(&log).unwrap(), 1);
    assert_eq!(Storage::last_index(&log).unwrap(), 3);
    assert_eq!(log.term(3).unwrap(), 2);
    assert_eq!(log.term(4), Err(store_err(StorageError::Unavailable)));
    assert_eq!(
        log.entries(1, 4, None, ctx()).unwrap(),
        vec![ent(1, 1), ent(2, 1), ent(3, 2)]
    );
    assert_eq!(log.entries(2, 3, None, ctx()).unwrap(), vec![ent(2, 1)]);
    assert!(log.entries(2, 2, None, ctx()).unwrap().is_empty());
    assert_eq!(
        log.entries(1, 5, None, ctx()),
        Err(store_err(StorageError::Unavailable))
    );

    // Appending with a gap, or non-contiguous entries, is refused and changes nothing.
    assert!(matches!(
        log.persist(&[ent(5, 2)], None),
        Err(StoreError::Invalid { .. })
    ));
    assert!(matches!(
        log.persist(&[ent(4, 2), ent(6, 2)], None),
        Err(StoreError::Invalid { .. })
    ));
    assert_eq!(Storage::last_index(&log).unwrap(), 3);

    // Other shards do not see this log.
    let other = store.raft_log(2).unwrap();
    assert_eq!(Storage::last_index(&other).unwrap(), 0);
}

#[test]
fn overwrite_conflicting_suffix() {
    let (_d, store) = open();
    let log = store.raft_log(0).unwrap();
    log.persist(&[ent(1, 1), ent(2, 1), ent(3, 1), ent(4, 1)], None)
        .unwrap();
    // A new leader's entry at 2 replaces 2..=4.
    log.persist(&[ent(2, 2)], None).unwrap();
    assert_eq!(Storage::last_index(&log).unwrap(), 2);
    assert_eq!(log.term(2).unwrap(), 2);
    assert_eq!(log.term(3), Err(store_err(StorageError::Unavailable)));
    assert_eq!(
        log.entries(1, 3, None, ctx()).unwrap(),
        vec![ent(1, 1), ent(2, 2)]
    );
    // Overwrite in the middle with a longer run.
    log.persist(&[ent(2, 3), ent(3, 3), ent(4, 3), ent(5, 3)], None)
        .unwrap();
    assert_eq!(Storage::last_index(&log).unwrap(), 5);
    assert_eq!(
        log.entries(4, 6, None, ctx()).unwrap(),
        vec![ent(4, 3), ent(5, 3)]
    );
}

#[test]
fn state_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let mut hs = HardState {
        term: 5,
        vote: 2,
        commit: 2,
        ..Default::default()
    };
    let cs = ConfState::from((vec![1, 2, 3], vec![]));
    {
        let store = NodeStore::open(&path).unwrap();
        let log = store.raft_log(4).unwrap();
        log.initialize(&cs).unwrap();
        log.persist(&[ent(1, 1), ent(2, 5)], Some(&hs)).unwrap();
        log.set_commit(3).unwrap();
        store.flush().unwrap();
    }
    let store = NodeStore::open(&path).unwrap();
    let log = store.raft_log(4).unwrap();
    let state = log.initial_state().unwrap();
    hs.commit = 3;
    assert_eq!(state.hard_state, hs);
    assert_eq!(state.conf_state, cs);
    assert!(state.initialized());
    assert_eq!(Storage::last_index(&log).unwrap(), 2);
    assert_eq!(
        log.entries(1, 3, None, ctx()).unwrap(),
        vec![ent(1, 1), ent(2, 5)]
    );

    // initialize is a no-op once a conf state exists.
    log.initialize(&ConfState::from((vec![9], vec![]))).unwrap();
    assert_eq!(log.conf_state().unwrap(), cs);
    // set_conf_state replaces it.
    let cs2 = ConfState::from((vec![1, 2, 3, 4], vec![5]));
    log.set_conf_state(&cs2).unwrap();
    assert_eq!(log.initial_state().unwrap().conf_state, cs2);
}

/// The log's metadata is mirrored in memory (`raft_log.rs`): every handle of a shard
/// must answer from the same mirror, and a reopened store must load the same answers
/// from disk, after appends, an overwritten suffix and a compaction.
#[test]
fn every_handle_sees_one_log_and_a_reopen_loads_the_same() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let answers = |log: &RaftLog| {
        let first = Storage::first_index(log).unwrap();
        let last = Storage::last_index(log).unwrap();
        let terms: Vec<u64> = (first - 1..=last).map(|i| log.term(i).unwrap()).collect();
        (first, last, terms, log.initial_state().unwrap().hard_state)
    };
    let before = {
        let store = NodeStore::open(&path).unwrap();
        let writer = store.raft_log(3).unwrap();
        let reader = store.raft_log(3).unwrap();
        writer
            .persist(&(1..=6).map(|i| ent(i, 1)).collect::<Vec<_>>(), None)
            .unwrap();
        writer.persist(&[ent(4, 2), ent(5, 2)], None).unwrap();
        writer.compact(3).unwrap();
        writer.set_commit(4).unwrap();
        assert_eq!(answers(&reader), answers(&writer));
        assert_eq!(Storage::first_index(&reader).unwrap(), 3);
        assert_eq!(Storage::last_index(&reader).unwrap(), 5);
        assert_eq!(reader.term(2).unwrap(), 1);
        assert_eq!(reader.term(4).unwrap(), 2);
        assert_eq!(reader.term(6), Err(store_err(StorageError::Unavailable)));
        assert_eq!(reader.term(1), Err(store_err(StorageError::Compacted)));
        store.flush().unwrap();
        answers(&writer)
    };
    // sled releases its file lock once its background threads let go of the dropped
    // database; under a loaded test run that can take a moment.
    let mut store = NodeStore::open(&path);
    for _ in 0..100 {
        if store.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        store = NodeStore::open(&path);
    }
    assert_eq!(answers(&store.unwrap().raft_log(3).unwrap()), before);
}

#[test]
fn compaction() {
    let (_d, store) = open();
    let log = store.raft_log(0).unwrap();
    log.persist(&(1..=6).map(|i| ent(i, i)).collect::<Vec<_>>(), None)
        .unwrap();
    log.compact(4).unwrap();
    assert_eq!(Storage::first_index(&log).unwrap(), 4);
    assert_eq!(Storage::last_index(&log).unwrap(), 6);
    // The term at the truncated index is kept for matching.
    assert_eq!(log.term(3).unwrap(), 3);
    assert_eq!(log.term(2), Err(store_err(StorageError::Compacted)));
    assert_eq!(
        log.entries(3, 5, None, ctx()),
        Err(store_err(StorageError::Compacted))
    );
    assert_eq!(log.entries(4, 5, None, ctx()).unwrap(), vec![ent(4, 4)]);
    // Compacting at or below first_index is a no-op.
    log.compact(2).unwrap();
    log.compact(4).unwrap();
    assert_eq!(Storage::first_index(&log).unwrap(), 4);
    // Past last + 1 is refused.
    assert!(matches!(log.compact(8), Err(StoreError::Invalid { .. })));
    // Appending over compacted entries is refused.
    assert!(matches!(
        log.persist(&[ent(3, 9)], None),
        Err(StoreError::Invalid { .. })
    ));
    // Compacting everything keeps last_index and its term.
    log.compact(7).unwrap();
    assert_eq!(Storage::first_index(&log).unwrap(), 7);
    assert_eq!(Storage::last_index(&log).unwrap(), 6);
    assert_eq!(log.term(6).unwrap(), 6);
    log.persist(&[ent(7, 7)], None).unwrap();
    assert_eq!(log.entries(7, 8, None, ctx()).unwrap(), vec![ent(7, 7)]);
}

#[test]
fn snapshot_metadata_replaces_log() {
    let (_d, store) = open();
    let log = store.raft_log(0).unwrap();
    let hs = HardState {
        term: 2,
        commit: 3,
        ..Default::default()
    };
    log.persist(&(1..=5).map(|i| ent(i, 2)).collect::<Vec<_>>(), Some(&hs))
        .unwrap();

    let mut meta = SnapshotMetadata {
        index: 10,
        term: 4,
        ..Default::default()
    };
    meta.set_conf_state(ConfState::from((vec![1, 2], vec![3])));
    log.apply_snapshot_metadata(&meta).unwrap();
    assert_eq!(Storage::first_index(&log).unwrap(), 11);
    assert_eq!(Storage::last_index(&log).unwrap(), 10);
    assert_eq!(log.term(10).unwrap(), 4);
    assert_eq!(log.term(5), Err(store_err(StorageError::Compacted)));
    let state = log.initial_state().unwrap();
    assert_eq!(state.hard_state.commit, 10);
    assert_eq!(state.hard_state.term, 4);
    assert_eq!(state.conf_state, *meta.get_conf_state());
    log.persist(&[ent(11, 4)], None).unwrap();
    assert_eq!(log.entries(11, 12, None, ctx()).unwrap(), vec![ent(11, 4)]);

    // An older snapshot is out of date.
    meta.index = 9;
    assert_eq!(
        log.apply_snapshot_metadata(&meta)
            .map_err(raft::Error::from),
        Err(store_err(StorageError::SnapshotOutOfDate))
    );
    // A snapshot never lowers commit or term.
    let mut hs = log.hard_state().unwrap();
    hs.commit = 30;
    hs.term = 9;
    log.persist(&[], Some(&hs)).unwrap();
    meta.index = 20;
    meta.term = 5;
    log.apply_snapshot_metadata(&meta).unwrap();
    let hs = log.hard_state().unwrap();
    assert_eq!((hs.commit, hs.term), (30, 9));
}

#[test]
fn max_size_limits_entries() {
    let (_d, store) = open();
    let log = store.raft_log(0).unwrap();
    let ents: Vec<Entry> = (1..=4).map(|i| ent(i, 1)).collect();
    log.persist(&ents, None).unwrap();
    let size = |i: usize| u64::from(ents[i].compute_size());
    let cases = [
        (0, 1),
        (size(0), 1),
        (size(0) + size(1) - 1, 1),
        (size(0) + size(1), 2),
        (size(0) + size(1) + size(2), 3),
        (u64::MAX, 4),
    ];
    for (max, want) in cases {
        let got = log.entries(1, 5, Some(max), ctx()).unwrap();
        assert_eq!(got, ents[..want].to_vec(), "max_size {max}");
    }
    assert_eq!(log.entries(1, 5, None, ctx()).unwrap().len(), 4);
}

#[test]
fn snapshot_describes_attached_state() {
    let (_d, store) = open();
    let mut log = store.raft_log(0).unwrap();
    let cs = ConfState::from((vec![1, 2, 3], vec![]));
    log.initialize(&cs).unwrap();
    let unavailable = Err(store_err(StorageError::SnapshotTemporarilyUnavailable));
    // Without a state machine there is nothing to describe.
    assert_eq!(log.snapshot(0, 2).map(|_| ()), unavailable);

    let state = store.shard_state(0).unwrap();
    log.attach_applied(state.applied_point());
    let cmd = Command::Batch(vec![]);
    state.apply(1, 1, None).unwrap();
    state.apply(2, 1, Some(&cmd)).unwrap();
    state.apply(3, 2, Some(&cmd)).unwrap();
    assert_eq!(state.applied().unwrap(), AppliedState { index: 3, term: 2 });

    assert_eq!(log.snapshot(4, 2).map(|_| ()), unavailable);
    let snap = log.snapshot(3, 2).unwrap();
    assert_eq!(snap.get_metadata().index, 3);
    assert_eq!(snap.get_metadata().term, 2);
    assert_eq!(*snap.get_metadata().get_conf_state(), cs);
    assert!(snap.data.is_empty());
    assert_eq!(log.snapshot(1, 2).unwrap().get_metadata().index, 3);
}

/// One step of the conformance script, run on both implementations.
#[derive(Debug, Clone)]
enum Op {
    Append(Vec<Entry>),
    Compact(u64),
    ApplySnapshot(u64, u64),
}

fn run_on_mem(mem: &MemStorage, op: &Op) {
    match op {
        Op::Append(ents) => mem.wl().append(ents).unwrap(),
        Op::Compact(i) => mem.wl().compact(*i).unwrap(),
        Op::ApplySnapshot(index, term) => {
            let mut snap = raft::prelude::Snapshot::default();
            snap.mut_metadata().index = *index;
            snap.mut_metadata().term = *term;
            mem.wl().apply_snapshot(snap).unwrap();
        }
    }
}

fn run_on_log(log: &RaftLog, op: &Op) {
    match op {
        Op::Append(ents) => log.persist(ents, None).unwrap(),
        Op::Compact(i) => log.compact(*i).unwrap(),
        Op::ApplySnapshot(index, term) => {
            let meta = SnapshotMetadata {
                index: *index,
                term: *term,
                ..Default::default()
            };
            log.apply_snapshot_metadata(&meta).unwrap();
        }
    }
}

/// Compare every observable answer of `raft::Storage` on both implementations.
fn compare(mem: &MemStorage, log: &RaftLog, step: usize) {
    let first = mem.first_index().unwrap();
    let last = mem.last_index().unwrap();
    assert_eq!(
        Storage::first_index(log).unwrap(),
        first,
        "first_index, step {step}"
    );
    assert_eq!(
        Storage::last_index(log).unwrap(),
        last,
        "last_index, step {step}"
    );
    // MemStorage forgets the term at the truncated index after `compact` (it only keeps
    // it after a snapshot); RaftLog keeps it, which raft-rs's matching relies on. So
    // compare from first - 1 only where MemStorage answers.
    // Below that, MemStorage still answers the index of its last snapshot after later
    // compactions; the trait only defines terms in [first - 1, last], and RaftLog says
    // Compacted.
    for idx in 0..first.saturating_sub(1) {
        assert_eq!(
            log.term(idx),
            Err(store_err(StorageError::Compacted)),
            "term({idx}), step {step}"
        );
    }
    for idx in first.saturating_sub(1)..=last + 2 {
        let m = mem.term(idx);
        if idx + 1 == first && m.is_err() {
            assert!(
                log.term(idx).is_ok(),
                "term({idx}) at truncated index, step {step}"
            );
            continue;
        }
        assert_eq!(log.term(idx), m, "term({idx}), step {step}");
    }
    // MemStorage indexes its (empty) entry vector even for an empty range.
    let has_entries = first <= last;
    for low in (first..=last + 1).filter(|_| has_entries) {
        for high in low..=last + 1 {
            for max in [0, 40, 90, u64::MAX] {
                assert_eq!(
                    log.entries(low, high, max, ctx()),
                    mem.entries(low, high, max, ctx()),
                    "entries({low}, {high}, {max}), step {step}"
                );
            }
        }
    }
    if first > 1 && has_entries {
        assert_eq!(
            log.entries(first - 1, last + 1, None, ctx()),
            mem.entries(first - 1, last + 1, None, ctx()),
            "entries below first, step {step}"
        );
    }
    assert_eq!(
        log.initial_state().unwrap().hard_state.term,
        mem.initial_state().unwrap().hard_state.term,
        "hard state term, step {step}"
    );
}

#[test]
fn conformance_with_mem_storage() {
    let e = |i: u64, t: u64| ent(i, t);
    let script = vec![
        Op::Append(vec![e(1, 1), e(2, 1), e(3, 1)]),
        Op::Append(vec![e(4, 2), e(5, 2)]),
        Op::Append(vec![e(3, 3), e(4, 3)]),
        Op::Append(vec![e(5, 3), e(6, 3), e(7, 3), e(8, 3)]),
        Op::Compact(3),
        Op::Compact(2),
        Op::Append(vec![e(6, 4)]),
        Op::Compact(5),
        Op::Append(vec![e(7, 4), e(8, 4), e(9, 5)]),
        Op::ApplySnapshot(12, 6),
        Op::Append(vec![e(13, 6), e(14, 6), e(15, 7)]),
        Op::Append(vec![e(14, 8)]),
        Op::Compact(14),
        Op::Append(vec![e(15, 8), e(16, 8)]),
    ];
    // Both stores a log can live in: the engine (every new directory) and sled
    // (directories made before it, and the simulator's temporary stores).
    let (_d, engine) = open();
    assert!(engine.logs_in_engine());
    let sled = NodeStore::open_temporary().unwrap();
    assert!(!sled.logs_in_engine());
    for store in [engine, sled] {
        let mem = MemStorage::new();
        let log = store.raft_log(7).unwrap();
        compare(&mem, &log, 0);
        for (step, op) in script.iter().enumerate() {
            run_on_mem(&mem, op);
            run_on_log(&log, op);
            compare(&mem, &log, step + 1);
        }
        // What the script left is what a reopen finds (the engine's recovery; for
        // sled, `every_handle_sees_one_log_and_a_reopen_loads_the_same`).
        if store.logs_in_engine() {
            let first = Storage::first_index(&log).unwrap();
            let last = Storage::last_index(&log).unwrap();
            let entries = log.entries(first, last + 1, None, ctx()).unwrap();
            let hs = log.hard_state().unwrap();
            let truncated_term = log.term(first - 1).unwrap();
            let path = _d.path().join("db");
            drop(log);
            drop(store);
            let store = reopen(&path);
            let log = store.raft_log(7).unwrap();
            assert_eq!(Storage::first_index(&log).unwrap(), first);
            assert_eq!(Storage::last_index(&log).unwrap(), last);
            assert_eq!(log.entries(first, last + 1, None, ctx()).unwrap(), entries);
            assert_eq!(log.hard_state().unwrap(), hs);
            assert_eq!(log.term(first - 1).unwrap(), truncated_term);
        }
    }
}

/// sled releases its file lock once its background threads let go of a dropped
/// database; under a loaded test run that can take a moment.
fn reopen(path: &std::path::Path) -> NodeStore {
    let mut store = NodeStore::open(path);
    for _ in 0..100 {
        if store.is_ok() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
        store = NodeStore::open(path);
    }
    store.unwrap()
}

/// A Raft snapshot over a log with a divergent tail drops the tail too, and a reopen
/// (the engine replaying its files) agrees: the stale entries must not come back as
/// log entries after the truncated point.
#[test]
fn a_snapshot_over_a_divergent_tail_leaves_nothing_of_it_after_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = NodeStore::open(&path).unwrap();
        let log = store.raft_log(2).unwrap();
        log.persist(&(1..=10).map(|i| ent(i, 1)).collect::<Vec<_>>(), None)
            .unwrap();
        let mut meta = SnapshotMetadata {
            index: 6,
            term: 2,
            ..Default::default()
        };
        meta.set_conf_state(ConfState::from((vec![1, 2, 3], vec![])));
        log.apply_snapshot_metadata(&meta).unwrap();
        assert_eq!(Storage::last_index(&log).unwrap(), 6);
        store.flush().unwrap();
    }
    let store = reopen(&path);
    let log = store.raft_log(2).unwrap();
    assert_eq!(Storage::first_index(&log).unwrap(), 7);
    assert_eq!(Storage::last_index(&log).unwrap(), 6);
    assert_eq!(log.term(6).unwrap(), 2);
    assert_eq!(log.hard_state().unwrap().commit, 6);
    assert_eq!(log.conf_state().unwrap().voters, vec![1, 2, 3]);
    log.persist(&[ent(7, 2), ent(8, 2)], None).unwrap();
    assert_eq!(
        log.entries(7, 9, None, ctx()).unwrap(),
        vec![ent(7, 2), ent(8, 2)]
    );
}

/// With the log in the engine, sled is synced only where the log is about to drop
/// entries: a compaction must make the state machine durable first, or a crash
/// could leave it behind a log that can no longer replay what it lost.
#[test]
fn compacting_the_engine_log_first_makes_the_state_machine_durable() {
    let (_d, store) = open();
    let log = store.raft_log(0).unwrap();
    log.persist(&(1..=6).map(|i| ent(i, 1)).collect::<Vec<_>>(), None)
        .unwrap();
    let before = store.state_syncs();
    log.compact(4).unwrap();
    assert!(
        store.state_syncs() > before,
        "compaction dropped entries without syncing the state machine"
    );
}

/// A data directory made before the engine keeps its logs in sled, readable as they
/// were; a new directory gets the engine.
#[test]
fn a_directory_made_before_the_engine_keeps_its_logs_in_sled() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        // The format of those directories: entries under `e` ++ index, the term in
        // front of each.
        let db = sled::open(&path).unwrap();
        let tree = db.open_tree("shard/5/log").unwrap();
        for i in 1..=3u64 {
            let mut value = 1u64.to_be_bytes().to_vec();
            value.extend(ent(i, 1).write_to_bytes().unwrap());
            let mut key = vec![b'e'];
            key.extend(i.to_be_bytes());
            tree.insert(key, value).unwrap();
        }
        db.flush().unwrap();
    }
    let store = reopen(&path);
    assert!(!store.logs_in_engine());
    assert!(!path.join("raft-log").exists());
    let log = store.raft_log(5).unwrap();
    assert_eq!(Storage::last_index(&log).unwrap(), 3);
    assert_eq!(
        log.entries(2, 4, None, ctx()).unwrap(),
        vec![ent(2, 1), ent(3, 1)]
    );
    drop(log);
    drop(store);
    // And stays so: the choice is recorded, not guessed again.
    let store = reopen(&path);
    assert!(!store.logs_in_engine());
}

/// A log in the engine keeps its newest entries in memory and reads older ones from
/// the engine's files: a read across the boundary, and one after an overwrite that
/// shortens the log, must return exactly the log.
#[test]
fn reads_across_the_entries_kept_in_memory_return_the_log() {
    let (_d, store) = open();
    let log = store.raft_log(1).unwrap();
    for chunk in (1..=3000u64).collect::<Vec<_>>().chunks(64) {
        let ents: Vec<Entry> = chunk.iter().map(|&i| ent(i, 1)).collect();
        log.persist(&ents, None).unwrap();
    }
    let all: Vec<Entry> = (1..=3000).map(|i| ent(i, 1)).collect();
    assert_eq!(log.entries(1, 3001, None, ctx()).unwrap(), all);
    assert_eq!(
        log.entries(1500, 2500, None, ctx()).unwrap(),
        all[1499..2499]
    );
    assert_eq!(log.entries(2990, 3001, None, ctx()).unwrap(), all[2989..]);
    // An overwrite from 2000 on, at a new term, shorter than what it replaces.
    log.persist(&[ent(2000, 2), ent(2001, 2)], None).unwrap();
    assert_eq!(Storage::last_index(&log).unwrap(), 2001);
    let mut expected = all[..1999].to_vec();
    expected.extend([ent(2000, 2), ent(2001, 2)]);
    assert_eq!(log.entries(1, 2002, None, ctx()).unwrap(), expected);
    assert_eq!(
        log.entries(1999, 2002, None, ctx()).unwrap(),
        expected[1998..]
    );
    log.compact(2001).unwrap();
    assert_eq!(
        log.entries(2001, 2002, None, ctx()).unwrap(),
        vec![ent(2001, 2)]
    );
}

/// A replica removed from a node drops its shard (the engine cleans the group), and a
/// later replica of the same group on that node starts again from a Raft snapshot:
/// after a reopen, what the engine replays is the new replica's log, with nothing of
/// the old one.
#[test]
fn a_group_dropped_and_made_again_reopens_as_the_new_one() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = NodeStore::open(&path).unwrap();
        let old = store.raft_log(3).unwrap();
        old.persist(&(1..=8).map(|i| ent(i, 1)).collect::<Vec<_>>(), None)
            .unwrap();
        drop(old);
        store.drop_shard(3).unwrap();
        let new = store.raft_log(3).unwrap();
        assert_eq!(
            Storage::last_index(&new).unwrap(),
            0,
            "nothing of the old log"
        );
        let mut meta = SnapshotMetadata {
            index: 50,
            term: 4,
            ..Default::default()
        };
        meta.set_conf_state(ConfState::from((vec![1, 2, 4], vec![])));
        new.apply_snapshot_metadata(&meta).unwrap();
        new.persist(&[ent(51, 4), ent(52, 4)], None).unwrap();
        store.flush().unwrap();
    }
    let store = reopen(&path);
    let log = store.raft_log(3).unwrap();
    assert_eq!(Storage::first_index(&log).unwrap(), 51);
    assert_eq!(Storage::last_index(&log).unwrap(), 52);
    assert_eq!(
        log.entries(51, 53, None, ctx()).unwrap(),
        vec![ent(51, 4), ent(52, 4)]
    );
    assert_eq!(log.conf_state().unwrap().voters, vec![1, 2, 4]);
}

/// The log engine's directory gone while sled still holds shards: opening refuses,
/// rather than start the state machines over an empty log that forgot its votes.
#[test]
fn a_directory_whose_log_engine_is_gone_refuses_to_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = NodeStore::open(&path).unwrap();
        let log = store.raft_log(0).unwrap();
        log.initialize(&ConfState::from((vec![1, 2, 3], vec![])))
            .unwrap();
        log.persist(&[ent(1, 1)], None).unwrap();
        store.flush().unwrap();
    }
    std::fs::remove_dir_all(path.join("raft-log")).unwrap();
    let mut opened = NodeStore::open(&path);
    for _ in 0..100 {
        // Only sled's lock may still be held a moment by the dropped database.
        match &opened {
            Err(StoreError::Sled(_)) => {
                std::thread::sleep(std::time::Duration::from_millis(20));
                opened = NodeStore::open(&path);
            }
            _ => break,
        }
    }
    match opened {
        Err(StoreError::Corrupt { what }) => assert!(what.contains("raft-log"), "{what}"),
        other => panic!("expected a refusal, got {other:?}"),
    }
}
