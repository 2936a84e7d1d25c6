//! The cut table: markers and releases applied through the state machine, and carried
//! exactly by Raft snapshots.

use cairn_store::{
    AppliedState, ApplyOutcome, Command, Condition, Cut, NodeStore, OpKind, WriteOp,
};

fn put(key: &str, value: &str) -> Command {
    Command::Batch(vec![WriteOp {
        key: key.as_bytes().to_vec(),
        kind: OpKind::Put(value.as_bytes().to_vec()),
        condition: Condition::Always,
    }])
}

fn delete(key: &str) -> Command {
    Command::Batch(vec![WriteOp {
        key: key.as_bytes().to_vec(),
        kind: OpKind::Delete,
        condition: Condition::Always,
    }])
}

#[test]
fn markers_record_cuts_and_releases_close_them() {
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let state = store.shard_state(0).unwrap();
    state.apply(1, 1, Some(&put("a", "1"))).unwrap();
    assert_eq!(
        state
            .apply(2, 1, Some(&Command::Marker { epoch: 5 }))
            .unwrap(),
        ApplyOutcome::Marked { cut: 2 }
    );
    state.apply(3, 1, Some(&put("a", "2"))).unwrap();
    // A repeated marker (a retried proposal) keeps the first cut.
    assert_eq!(
        state
            .apply(4, 1, Some(&Command::Marker { epoch: 5 }))
            .unwrap(),
        ApplyOutcome::Marked { cut: 2 }
    );
    assert_eq!(state.open_cuts().unwrap().len(), 1);
    // The snapshot's view: versions below the cut.
    let at = state.cut(5).unwrap().unwrap().index - 1;
    assert_eq!(state.get(b"a", at).unwrap().unwrap().value, b"1");
    assert_eq!(state.get(b"a", u64::MAX).unwrap().unwrap().value, b"2");

    assert_eq!(
        state
            .apply(5, 1, Some(&Command::Release { epoch: 5 }))
            .unwrap(),
        ApplyOutcome::Released
    );
    assert!(state.open_cuts().unwrap().is_empty());
    assert_eq!(
        state.cut(5).unwrap(),
        Some(Cut {
            epoch: 5,
            index: 2,
            released_at: Some(5)
        })
    );
    // Releasing twice changes nothing.
    state
        .apply(6, 1, Some(&Command::Release { epoch: 5 }))
        .unwrap();
    assert_eq!(state.cut(5).unwrap().unwrap().released_at, Some(5));
}

#[test]
fn a_release_before_its_marker_opens_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let state = store.shard_state(0).unwrap();
    state
        .apply(1, 1, Some(&Command::Release { epoch: 9 }))
        .unwrap();
    assert_eq!(
        state
            .apply(2, 1, Some(&Command::Marker { epoch: 9 }))
            .unwrap(),
        ApplyOutcome::Marked { cut: 0 },
        "a late marker of a released epoch reports no cut"
    );
    assert!(state.open_cuts().unwrap().is_empty());
}

#[test]
fn raft_snapshots_carry_the_cut_table_as_of_their_index() {
    let dir = tempfile::tempdir().unwrap();
    let leader = NodeStore::open(&dir.path().join("leader")).unwrap();
    let state = leader.shard_state(0).unwrap();
    state.apply(1, 1, Some(&put("a", "1"))).unwrap();
    state
        .apply(2, 1, Some(&Command::Marker { epoch: 1 }))
        .unwrap();
    state
        .apply(3, 1, Some(&Command::Release { epoch: 1 }))
        .unwrap();
    state
        .apply(4, 1, Some(&Command::Marker { epoch: 2 }))
        .unwrap();
    state
        .apply(5, 1, Some(&Command::Release { epoch: 2 }))
        .unwrap();
    state
        .apply(6, 1, Some(&Command::Marker { epoch: 3 }))
        .unwrap();

    // A snapshot at index 4: epoch 1 released, epoch 2 marked but still open there,
    // epoch 3 not yet marked.
    let follower = NodeStore::open(&dir.path().join("follower")).unwrap();
    let stage = follower.snapshot_stage(0).unwrap();
    let pairs: Vec<_> = state.export(4).collect::<Result<_, _>>().unwrap();
    stage.write(&pairs).unwrap();
    let installed = follower.shard_state(0).unwrap();
    installed
        .install(&stage, AppliedState { index: 4, term: 1 })
        .unwrap();
    assert_eq!(
        installed.cuts().unwrap(),
        vec![
            Cut {
                epoch: 1,
                index: 2,
                released_at: Some(3)
            },
            Cut {
                epoch: 2,
                index: 4,
                released_at: None
            },
        ]
    );
    assert_eq!(installed.open_cuts().unwrap().len(), 1);
    assert_eq!(installed.get(b"a", 1).unwrap().unwrap().value, b"1");
}

#[test]
fn diff_lists_keys_whose_visible_value_changed_between_two_versions() {
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let state = store.shard_state(0).unwrap();
    state.apply(1, 1, Some(&put("same", "1"))).unwrap();
    state.apply(2, 1, Some(&put("changed", "1"))).unwrap();
    state.apply(3, 1, Some(&put("deleted", "1"))).unwrap();
    state.apply(4, 1, Some(&put("rewritten", "1"))).unwrap();
    // from = 4
    state.apply(5, 1, Some(&put("changed", "2"))).unwrap();
    state.apply(6, 1, Some(&delete("deleted"))).unwrap();
    state.apply(7, 1, Some(&put("created", "1"))).unwrap();
    state.apply(8, 1, Some(&put("rewritten", "2"))).unwrap();
    state.apply(9, 1, Some(&put("rewritten", "1"))).unwrap();
    state.apply(10, 1, Some(&put("temporary", "1"))).unwrap();
    state.apply(11, 1, Some(&delete("temporary"))).unwrap();
    // to = 11; later writes must not show.
    state.apply(12, 1, Some(&put("same", "late"))).unwrap();

    let diff = state.diff(b"", None, 100, 4, 11).unwrap().items;
    let summary: Vec<(String, Option<String>)> = diff
        .iter()
        .map(|(k, v)| {
            (
                String::from_utf8(k.clone()).unwrap(),
                v.as_ref()
                    .map(|v| String::from_utf8(v.value.clone()).unwrap()),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("changed".into(), Some("2".into())),
            ("created".into(), Some("1".into())),
            ("deleted".into(), None),
            // Same bytes, but written again: a new version is a change.
            ("rewritten".into(), Some("1".into())),
        ],
        "`same` is unchanged in (4, 11]; `temporary` came and went"
    );
    // Paging and prefixes.
    let first = state.diff(b"", None, 2, 4, 11).unwrap().items;
    assert_eq!(first.len(), 2);
    let rest = state
        .diff(b"", Some(&first[1].0), 100, 4, 11)
        .unwrap()
        .items;
    assert_eq!(rest.len(), 2);
    assert_eq!(rest[0].0, b"deleted");
    assert_eq!(state.diff(b"cr", None, 100, 4, 11).unwrap().items.len(), 1);
    assert!(state.diff(b"", None, 100, 4, 4).unwrap().items.is_empty());
}

#[test]
fn compaction_refuses_old_reads_and_collection_keeps_what_newer_reads_see() {
    use cairn_store::StoreError;
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(dir.path()).unwrap();
    let state = store.shard_state(0).unwrap();
    state.apply(1, 1, Some(&put("a", "1"))).unwrap();
    state.apply(2, 1, Some(&put("a", "2"))).unwrap();
    state.apply(3, 1, Some(&put("gone", "1"))).unwrap();
    state.apply(4, 1, Some(&delete("gone"))).unwrap();
    state.apply(5, 1, Some(&put("a", "3"))).unwrap();
    state.apply(6, 1, Some(&put("b", "1"))).unwrap();
    // Horizon 5: reads at 5 and above must not change; below, they are refused.
    let before: Vec<_> = [5, 6, u64::MAX]
        .iter()
        .map(|&at| state.scan(b"", None, 100, at).unwrap().items)
        .collect();
    assert_eq!(
        state
            .apply(7, 1, Some(&Command::Compact { horizon: 5 }))
            .unwrap(),
        ApplyOutcome::Compacted { horizon: 5 }
    );
    // A horizon is never lowered, and never reaches the compaction entry itself.
    assert_eq!(
        state
            .apply(8, 1, Some(&Command::Compact { horizon: 2 }))
            .unwrap(),
        ApplyOutcome::Compacted { horizon: 5 }
    );
    assert!(matches!(
        state.get(b"a", 4),
        Err(StoreError::HistoryCollected { horizon: 5 })
    ));
    assert!(matches!(
        state.scan(b"", None, 10, 1),
        Err(StoreError::HistoryCollected { .. })
    ));

    // Versions 1 and 2 of `a` (older than its version 5) and both versions of `gone`
    // (a tombstone hides nothing once everything older is gone) are collected.
    assert_eq!(state.collect(5, 2).unwrap(), 4);
    assert_eq!(state.collect(5, 2).unwrap(), 0, "collection is idempotent");
    let after: Vec<_> = [5, 6, u64::MAX]
        .iter()
        .map(|&at| state.scan(b"", None, 100, at).unwrap().items)
        .collect();
    assert_eq!(before, after, "reads at or above the horizon are unchanged");

    // A Raft snapshot carries the horizon: the receiver refuses the same reads.
    let follower = NodeStore::open(&dir.path().join("follower")).unwrap();
    let stage = follower.snapshot_stage(0).unwrap();
    let pairs: Vec<_> = state.export(8).collect::<Result<_, _>>().unwrap();
    stage.write(&pairs).unwrap();
    let installed = follower.shard_state(0).unwrap();
    installed
        .install(&stage, AppliedState { index: 8, term: 1 })
        .unwrap();
    assert_eq!(installed.horizon().unwrap(), 5);
    assert!(installed.get(b"a", 4).is_err());
    assert_eq!(installed.get(b"a", 5).unwrap().unwrap().value, b"3");
}
