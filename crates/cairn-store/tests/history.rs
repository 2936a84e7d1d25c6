//! Backup reads of a shard's history and the loading of a restored shard.

use cairn_store::{
    AppliedState, Command, Condition, HistoryRange, KeyVersion, NodeStore, OpKind, RaftLog,
    ShardState, StoreError, WriteOp,
};
use proptest::prelude::*;

fn open() -> (tempfile::TempDir, NodeStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(&dir.path().join("db")).unwrap();
    (dir, store)
}

fn op(key: &[u8], value: Option<&[u8]>) -> WriteOp {
    WriteOp {
        key: key.to_vec(),
        kind: match value {
            Some(v) => OpKind::Put(v.to_vec()),
            None => OpKind::Delete,
        },
        condition: Condition::Always,
    }
}

fn read(state: &ShardState, range: HistoryRange) -> Result<Vec<KeyVersion>, StoreError> {
    state.history(range).collect()
}

fn kv(key: &[u8], version: u64, value: Option<&[u8]>) -> KeyVersion {
    KeyVersion {
        key: key.to_vec(),
        version,
        value: value.map(<[u8]>::to_vec),
    }
}

/// 1: a=1, b=1   2: a=2   3: del b   4: c=1 (with a NUL in the key)   5: a=3
fn sample(state: &ShardState) {
    let batches: Vec<Vec<WriteOp>> = vec![
        vec![op(b"a", Some(b"1")), op(b"b", Some(b"1"))],
        vec![op(b"a", Some(b"2"))],
        vec![op(b"b", None)],
        vec![op(b"c\0", Some(b"1"))],
        vec![op(b"a", Some(b"3"))],
    ];
    for (i, ops) in batches.into_iter().enumerate() {
        state
            .apply(i as u64 + 1, 1, Some(&Command::Batch(ops)))
            .unwrap();
    }
}

#[test]
fn state_at_is_each_live_key_newest_version_at_or_below() {
    let (_dir, store) = open();
    let state = store.shard_state(0).unwrap();
    sample(&state);
    assert_eq!(
        read(&state, HistoryRange::StateAt { at: 2 }).unwrap(),
        vec![kv(b"a", 2, Some(b"2")), kv(b"b", 1, Some(b"1"))]
    );
    // b was deleted at 3: a full backup holds no tombstones.
    assert_eq!(
        read(&state, HistoryRange::StateAt { at: 4 }).unwrap(),
        vec![kv(b"a", 2, Some(b"2")), kv(b"c\0", 4, Some(b"1"))]
    );
}

#[test]
fn between_is_every_version_in_the_half_open_range_tombstones_included() {
    let (_dir, store) = open();
    let state = store.shard_state(0).unwrap();
    sample(&state);
    assert_eq!(
        read(&state, HistoryRange::Between { after: 1, upto: 4 }).unwrap(),
        vec![
            kv(b"a", 2, Some(b"2")),
            kv(b"b", 3, None),
            kv(b"c\0", 4, Some(b"1"))
        ]
    );
    assert_eq!(
        read(&state, HistoryRange::Between { after: 4, upto: 5 }).unwrap(),
        vec![kv(b"a", 5, Some(b"3"))]
    );
}

#[test]
fn reads_below_the_horizon_are_refused() {
    let (_dir, store) = open();
    let state = store.shard_state(0).unwrap();
    sample(&state);
    state
        .apply(6, 1, Some(&Command::Compact { horizon: 3 }))
        .unwrap();
    state.collect(3, 100).unwrap();
    for range in [
        HistoryRange::StateAt { at: 2 },
        HistoryRange::Between { after: 1, upto: 5 },
    ] {
        match read(&state, range) {
            Err(StoreError::HistoryCollected { horizon: 3 }) => {}
            other => panic!("{range:?}: expected HistoryCollected, got {other:?}"),
        }
    }
    // At or above the horizon everything needed is still there.
    assert_eq!(
        read(&state, HistoryRange::Between { after: 3, upto: 5 }).unwrap(),
        vec![kv(b"a", 5, Some(b"3")), kv(b"c\0", 4, Some(b"1"))]
    );
}

#[test]
fn a_loaded_shard_reads_like_the_original_at_the_restored_point() {
    let (_dir, store) = open();
    let original = store.shard_state(0).unwrap();
    sample(&original);
    let (_dir2, fresh) = open();
    let restored = fresh.shard_state(0).unwrap();
    let versions = read(&original, HistoryRange::StateAt { at: 4 }).unwrap();
    let applied = AppliedState { index: 5, term: 1 };
    assert_eq!(restored.load(versions, applied, 5, 1).unwrap(), 2);
    assert_eq!(restored.applied().unwrap(), applied);
    assert_eq!(
        restored.scan(b"", None, 10, u64::MAX).unwrap().items,
        original.scan(b"", None, 10, 4).unwrap().items
    );
    assert!(matches!(
        restored.get(b"a", 4),
        Err(StoreError::HistoryCollected { horizon: 5 })
    ));
    // New writes continue above the restored index.
    restored
        .apply(6, 2, Some(&Command::Batch(vec![op(b"a", Some(b"4"))])))
        .unwrap();
    assert_eq!(restored.get(b"a", u64::MAX).unwrap().unwrap().version, 6);
    // Loading over data is refused.
    assert!(restored.load(Vec::new(), applied, 5, 1).is_err());
}

#[test]
fn load_refuses_versions_above_the_restored_index() {
    let (_dir, store) = open();
    let state = store.shard_state(0).unwrap();
    let err = state
        .load(
            vec![kv(b"a", 9, Some(b"x"))],
            AppliedState { index: 5, term: 1 },
            5,
            10,
        )
        .unwrap_err();
    assert!(
        err.to_string().contains("above the restored index"),
        "{err}"
    );
}

#[test]
fn a_restored_log_starts_after_the_restored_index() {
    let (_dir, store) = open();
    let log: RaftLog = store.raft_log(0).unwrap();
    log.start_at(42, 1, vec![1, 2, 3]).unwrap();
    assert_eq!(log.first_index().unwrap(), 43);
    assert_eq!(log.last_index().unwrap(), 42);
    assert_eq!(log.conf_state().unwrap().voters, vec![1, 2, 3]);
    assert!(
        log.start_at(50, 1, vec![1]).is_err(),
        "a used log is never restarted"
    );
}

proptest! {
    /// Replaying a full read at `a` and then the incremental (a, b] gives the state at
    /// any point in (a, b], key for key: the restore algebra backups rely on.
    #[test]
    fn full_plus_incremental_is_the_state_at_any_point(
        writes in prop::collection::vec((0u8..6, prop::option::of(0u8..4)), 1..40),
        split in 0usize..40,
        pick in 0usize..40,
    ) {
        let (_dir, store) = open();
        let state = store.shard_state(0).unwrap();
        for (i, (k, v)) in writes.iter().enumerate() {
            let value = v.map(|v| vec![v]);
            state.apply(i as u64 + 1, 1, Some(&Command::Batch(vec![op(&[*k], value.as_deref())]))).unwrap();
        }
        let top = writes.len() as u64;
        let a = (split as u64) % (top + 1);
        let at = a + (pick as u64) % (top - a + 1);
        let full = read(&state, HistoryRange::StateAt { at: a }).unwrap();
        let incr = read(&state, HistoryRange::Between { after: a, upto: top }).unwrap();
        let mut rebuilt = std::collections::BTreeMap::new();
        for r in full {
            rebuilt.insert(r.key, r.value);
        }
        // Oldest first, so the newest version at or below `at` wins.
        let mut incr: Vec<_> = incr.into_iter().filter(|r| r.version <= at).collect();
        incr.sort_by_key(|r| r.version);
        for r in incr {
            rebuilt.insert(r.key, r.value);
        }
        let rebuilt: Vec<(Vec<u8>, Vec<u8>)> = rebuilt.into_iter().filter_map(|(k, v)| v.map(|v| (k, v))).collect();
        let expected: Vec<(Vec<u8>, Vec<u8>)> = state.scan(b"", None, 100, at).unwrap().items.into_iter().map(|(k, v)| (k, v.value)).collect();
        prop_assert_eq!(rebuilt, expected);
    }
}

/// Reading a history one version per call, each resumed after the last version the
/// previous call returned, gives exactly the read in one go: what a backup reading a
/// shard from another node over the peer transport relies on.
#[test]
fn a_history_read_in_pages_resumes_where_it_stopped() {
    let (_dir, store) = open();
    let state = store.shard_state(0).unwrap();
    sample(&state);
    let ranges = [
        HistoryRange::StateAt { at: 5 },
        HistoryRange::StateAt { at: 2 },
        HistoryRange::Between { after: 0, upto: 5 },
        HistoryRange::Between { after: 1, upto: 4 },
    ];
    for range in ranges {
        let whole = read(&state, range).unwrap();
        for page in 1..=3 {
            let mut paged = Vec::new();
            loop {
                let after = paged
                    .last()
                    .map(|v: &KeyVersion| (v.key.clone(), v.version));
                let next: Vec<KeyVersion> = state
                    .history_after(range, after.as_ref().map(|(k, v)| (k.as_slice(), *v)))
                    .take(page)
                    .collect::<Result<_, _>>()
                    .unwrap();
                if next.is_empty() {
                    break;
                }
                paged.extend(next);
            }
            assert_eq!(paged, whole, "{range:?} in pages of {page}");
        }
    }
}
