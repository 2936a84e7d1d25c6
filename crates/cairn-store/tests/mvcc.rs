//! The MVCC state machine: versions, conditions, scans, snapshot export/install.

use cairn_store::{
    keys, AppliedState, ApplyOutcome, Command, Condition, NodeStore, OpKind, ShardState,
    StoreError, Versioned, WriteOp,
};

fn open() -> (tempfile::TempDir, NodeStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = NodeStore::open(&dir.path().join("db")).unwrap();
    (dir, store)
}

fn put(key: &[u8], value: &[u8]) -> WriteOp {
    put_if(key, value, Condition::Always)
}

fn put_if(key: &[u8], value: &[u8], condition: Condition) -> WriteOp {
    WriteOp {
        key: key.to_vec(),
        kind: OpKind::Put(value.to_vec()),
        condition,
    }
}

fn del(key: &[u8]) -> WriteOp {
    WriteOp {
        key: key.to_vec(),
        kind: OpKind::Delete,
        condition: Condition::Always,
    }
}

fn apply(state: &ShardState, index: u64, ops: Vec<WriteOp>) -> ApplyOutcome {
    state.apply(index, 1, Some(&Command::Batch(ops))).unwrap()
}

fn value(state: &ShardState, key: &[u8], at: u64) -> Option<(u64, Vec<u8>)> {
    state
        .get(key, at)
        .unwrap()
        .map(|Versioned { version, value }| (version, value))
}

fn scan_keys(
    state: &ShardState,
    prefix: &[u8],
    after: Option<&[u8]>,
    limit: usize,
    at: u64,
) -> Vec<Vec<u8>> {
    state
        .scan(prefix, after, limit, at)
        .unwrap()
        .items
        .into_iter()
        .map(|(k, _)| k)
        .collect()
}

#[test]
fn put_get_overwrite_delete() {
    let (_d, store) = open();
    let s = store.shard_state(0).unwrap();
    assert_eq!(s.applied().unwrap(), AppliedState::default());
    assert_eq!(
        apply(&s, 1, vec![put(b"a", b"1"), put(b"b", b"1")]),
        ApplyOutcome::Applied {
            version: 1,
            existed: vec![false, false]
        }
    );
    assert_eq!(
        apply(&s, 2, vec![put(b"a", b"2"), del(b"b"), del(b"c")]),
        ApplyOutcome::Applied {
            version: 2,
            existed: vec![true, true, false]
        }
    );
    s.apply(3, 2, None).unwrap();
    assert_eq!(s.applied().unwrap(), AppliedState { index: 3, term: 2 });

    let latest = u64::MAX;
    assert_eq!(value(&s, b"a", latest), Some((2, b"2".to_vec())));
    assert_eq!(value(&s, b"b", latest), None);
    assert_eq!(value(&s, b"c", latest), None);
    // Older versions stay readable.
    assert_eq!(value(&s, b"a", 1), Some((1, b"1".to_vec())));
    assert_eq!(value(&s, b"b", 1), Some((1, b"1".to_vec())));
    assert_eq!(value(&s, b"a", 0), None);
    assert_eq!(s.live_keys().unwrap(), 1);

    // Deleting an absent key writes nothing: no tombstone at version 4 for "c".
    apply(&s, 4, vec![del(b"c")]);
    let exported: Vec<_> = s.export(u64::MAX).map(|r| r.unwrap()).collect();
    assert_eq!(exported.len(), 4, "a@1, a@2, b@1, b@2 (tombstone)");

    // Re-applying an applied index is refused and changes nothing.
    assert!(matches!(
        s.apply(4, 2, Some(&Command::Batch(vec![put(b"a", b"x")]))),
        Err(StoreError::AlreadyApplied {
            index: 4,
            applied: 4,
            ..
        })
    ));
    assert_eq!(value(&s, b"a", latest), Some((2, b"2".to_vec())));
}

#[test]
fn later_op_on_same_key_wins() {
    let (_d, store) = open();
    let s = store.shard_state(0).unwrap();
    assert_eq!(
        apply(
            &s,
            1,
            vec![put(b"k", b"1"), put(b"k", b"2"), put(b"j", b"x"), del(b"j")]
        ),
        ApplyOutcome::Applied {
            version: 1,
            existed: vec![false, false, false, false]
        }
    );
    assert_eq!(value(&s, b"k", u64::MAX), Some((1, b"2".to_vec())));
    assert_eq!(value(&s, b"j", u64::MAX), None);
    apply(&s, 2, vec![del(b"k"), put(b"k", b"3")]);
    assert_eq!(value(&s, b"k", u64::MAX), Some((2, b"3".to_vec())));
}

#[test]
fn conditions_accept_and_reject() {
    let (_d, store) = open();
    let s = store.shard_state(0).unwrap();
    apply(&s, 1, vec![put_if(b"a", b"1", Condition::Absent)]);
    apply(&s, 2, vec![put(b"gone", b"x")]);
    apply(&s, 3, vec![del(b"gone")]);

    // Each failing condition rejects the whole batch, reporting the first failing op.
    let cases = [
        (put_if(b"a", b"x", Condition::Absent), Some(1)),
        (put_if(b"new", b"x", Condition::Exists), None),
        (put_if(b"gone", b"x", Condition::Exists), None),
        (put_if(b"a", b"x", Condition::Version(2)), Some(1)),
        (put_if(b"new", b"x", Condition::Version(0)), None),
    ];
    let mut index = 4;
    for (bad, current) in cases {
        let outcome = apply(&s, index, vec![put(b"side", b"effect"), bad.clone()]);
        assert_eq!(
            outcome,
            ApplyOutcome::Rejected { op: 1, current },
            "{bad:?}"
        );
        assert_eq!(
            s.applied().unwrap().index,
            index,
            "applied index still moves"
        );
        index += 1;
    }
    assert_eq!(
        value(&s, b"side", u64::MAX),
        None,
        "rejected batches write nothing"
    );
    assert_eq!(value(&s, b"a", u64::MAX), Some((1, b"1".to_vec())));

    // And each holding condition applies.
    let ok = vec![
        put_if(b"a", b"2", Condition::Version(1)),
        put_if(b"b", b"1", Condition::Absent),
        put_if(b"gone", b"back", Condition::Absent),
        WriteOp {
            key: b"a".to_vec(),
            kind: OpKind::Delete,
            condition: Condition::Exists,
        },
    ];
    assert_eq!(
        apply(&s, index, ok),
        ApplyOutcome::Applied {
            version: index,
            existed: vec![true, false, false, true]
        }
    );
    // Conditions see the state before the batch, not the batch's own earlier ops.
    assert_eq!(value(&s, b"a", u64::MAX), None);
    assert_eq!(
        value(&s, b"gone", u64::MAX),
        Some((index, b"back".to_vec()))
    );
    assert_eq!(
        apply(
            &s,
            index + 1,
            vec![put(b"c", b"1"), put_if(b"c", b"2", Condition::Exists)]
        ),
        ApplyOutcome::Rejected {
            op: 1,
            current: None
        }
    );
}

#[test]
fn scan_prefix_start_after_limit_at() {
    let (_d, store) = open();
    let s = store.shard_state(0).unwrap();
    apply(
        &s,
        1,
        vec![
            put(b"app", b"1"),
            put(b"apple", b"1"),
            put(b"apply", b"1"),
            put(b"b", b"1"),
            put(b"ap", b"1"),
        ],
    );
    apply(&s, 2, vec![del(b"apple"), put(b"apz", b"2")]);
    let k = |v: &[&[u8]]| v.iter().map(|x| x.to_vec()).collect::<Vec<_>>();
    let max = u64::MAX;
    assert_eq!(
        scan_keys(&s, b"ap", None, 10, max),
        k(&[b"ap", b"app", b"apply", b"apz"])
    );
    assert_eq!(
        scan_keys(&s, b"ap", None, 10, 1),
        k(&[b"ap", b"app", b"apple", b"apply"])
    );
    assert_eq!(
        scan_keys(&s, b"ap", Some(b"app"), 10, max),
        k(&[b"apply", b"apz"])
    );
    assert_eq!(scan_keys(&s, b"ap", Some(b"app"), 1, max), k(&[b"apply"]));
    assert_eq!(
        scan_keys(&s, b"ap", Some(b"a"), 2, max),
        k(&[b"ap", b"app"])
    );
    assert_eq!(scan_keys(&s, b"ap", Some(b"zzz"), 10, max), k(&[]));
    assert_eq!(scan_keys(&s, b"", None, 0, max), k(&[]));
    assert_eq!(
        scan_keys(&s, b"", None, 100, max),
        k(&[b"ap", b"app", b"apply", b"apz", b"b"])
    );
    assert_eq!(scan_keys(&s, b"", None, 100, 0), k(&[]));
    let got = s.scan(b"apz", None, 10, max).unwrap().items;
    assert_eq!(
        got,
        vec![(
            b"apz".to_vec(),
            Versioned {
                version: 2,
                value: b"2".to_vec()
            }
        )]
    );
}

#[test]
fn scan_skips_long_histories() {
    let (_d, store) = open();
    let s = store.shard_state(0).unwrap();
    apply(&s, 1, vec![put(b"a", b"0"), put(b"c", b"0")]);
    for i in 2..60 {
        apply(&s, i, vec![put(b"b", i.to_string().as_bytes())]);
    }
    apply(&s, 60, vec![del(b"c")]);
    let got = s.scan(b"", None, 10, u64::MAX).unwrap().items;
    let keys: Vec<_> = got.iter().map(|(k, v)| (k.clone(), v.version)).collect();
    assert_eq!(keys, vec![(b"a".to_vec(), 1), (b"b".to_vec(), 59)]);
    let at30: Vec<_> = s
        .scan(b"", None, 10, 30)
        .unwrap()
        .items
        .into_iter()
        .map(|(k, v)| (k, v.version))
        .collect();
    assert_eq!(
        at30,
        vec![(b"a".to_vec(), 1), (b"b".to_vec(), 30), (b"c".to_vec(), 1)]
    );
}

#[test]
fn keys_with_zero_and_ff_bytes() {
    let (_d, store) = open();
    let s = store.shard_state(0).unwrap();
    let ks: Vec<&[u8]> = vec![
        b"",
        b"\x00",
        b"\x00\x00",
        b"\x00\xff",
        b"\x00\x01",
        b"\x01",
        b"\xff",
        b"\xff\x00",
        b"\xff\xff",
        b"a\x00b",
        b"a",
    ];
    let ops = ks.iter().map(|k| put(k, k)).collect();
    apply(&s, 1, ops);
    for k in &ks {
        assert_eq!(value(&s, k, u64::MAX), Some((1, k.to_vec())), "{k:02x?}");
    }
    let mut sorted: Vec<Vec<u8>> = ks.iter().map(|k| k.to_vec()).collect();
    sorted.sort();
    assert_eq!(scan_keys(&s, b"", None, 100, u64::MAX), sorted);
    assert_eq!(
        scan_keys(&s, b"\x00", None, 100, u64::MAX),
        sorted
            .iter()
            .filter(|k| k.starts_with(b"\x00"))
            .cloned()
            .collect::<Vec<_>>()
    );
    assert_eq!(
        scan_keys(&s, b"", Some(b"\x00"), 2, u64::MAX),
        vec![b"\x00\x00".to_vec(), b"\x00\x01".to_vec()]
    );
    assert_eq!(
        scan_keys(&s, b"\xff", Some(b"\xff"), 100, u64::MAX),
        vec![b"\xff\x00".to_vec(), b"\xff\xff".to_vec()]
    );
    assert_eq!(s.live_keys().unwrap(), ks.len() as u64);
}

#[test]
fn export_stage_install_reproduces_state_at_cut() {
    let (_d1, src_store) = open();
    let src = src_store.shard_state(3).unwrap();
    for i in 1..=20u64 {
        let key = format!("k{}", i % 7).into_bytes();
        let op = if i % 5 == 0 {
            del(&key)
        } else {
            put(&key, &i.to_be_bytes())
        };
        apply(&src, i, vec![op, put(b"\x00z", &i.to_le_bytes())]);
    }
    let cut = 12;
    let pairs: Vec<_> = src.export(cut).map(|r| r.unwrap()).collect();
    assert!(pairs
        .iter()
        .all(|(k, _)| keys::decode_key(k).unwrap().1 <= cut));

    let (_d2, dst_store) = open();
    let stage = dst_store.snapshot_stage(3).unwrap();
    assert!(stage.is_empty());
    for chunk in pairs.chunks(5) {
        stage.write(chunk).unwrap();
    }
    assert_eq!(stage.len(), pairs.len());
    let dst = dst_store.shard_state(3).unwrap();
    // Stale state in the destination is replaced, not merged.
    apply(&dst, 1, vec![put(b"stale", b"x")]);
    let applied = AppliedState {
        index: cut,
        term: 4,
    };
    dst.install(&stage, applied).unwrap();
    assert_eq!(dst.applied().unwrap(), applied);
    assert_eq!(value(&dst, b"stale", u64::MAX), None);

    let all_keys: Vec<Vec<u8>> = (0..7)
        .map(|i| format!("k{i}").into_bytes())
        .chain([b"\x00z".to_vec()])
        .collect();
    for at in 0..=cut {
        for k in &all_keys {
            assert_eq!(
                dst.get(k, at).unwrap(),
                src.get(k, at).unwrap(),
                "{k:?}@{at}"
            );
        }
        assert_eq!(
            dst.scan(b"", None, 100, at).unwrap().items,
            src.scan(b"", None, 100, at).unwrap().items
        );
    }
    // Versions after the cut were not shipped.
    assert_eq!(
        dst.scan(b"", None, 100, u64::MAX).unwrap().items,
        src.scan(b"", None, 100, cut).unwrap().items
    );
    assert_ne!(
        dst.scan(b"", None, 100, u64::MAX).unwrap().items,
        src.scan(b"", None, 100, u64::MAX).unwrap().items
    );
    // The installed replica carries on applying after the cut.
    apply(&dst, cut + 1, vec![put(b"k1", b"after")]);
    assert_eq!(
        value(&dst, b"k1", u64::MAX),
        Some((cut + 1, b"after".to_vec()))
    );
    stage.clear().unwrap();
    assert!(stage.is_empty());
}

#[test]
fn export_carries_a_horizon_raised_while_it_streams() {
    let (_d1, src_store) = open();
    let src = src_store.shard_state(0).unwrap();
    for i in 1..=10u64 {
        apply(&src, i, vec![put(b"k", &i.to_be_bytes())]);
    }
    // The export is lazy: history GC runs between its start and its first pair.
    let export = src.export(10);
    src.apply(11, 1, Some(&Command::Compact { horizon: 8 }))
        .unwrap();
    assert!(src.collect(8, 100).unwrap() > 0);
    let pairs: Vec<_> = export.map(|r| r.unwrap()).collect();

    let (_d2, dst_store) = open();
    let stage = dst_store.snapshot_stage(0).unwrap();
    stage.write(&pairs).unwrap();
    let dst = dst_store.shard_state(0).unwrap();
    dst.install(&stage, AppliedState { index: 10, term: 1 })
        .unwrap();
    assert_eq!(dst.horizon().unwrap(), 8);
    // Below the horizon both replicas refuse; neither answers from missing versions.
    for s in [&src, &dst] {
        assert!(matches!(
            s.get(b"k", 5),
            Err(StoreError::HistoryCollected { horizon: 8 })
        ));
    }
    assert_eq!(value(&dst, b"k", 9), Some((9, 9u64.to_be_bytes().to_vec())));
}

#[test]
fn install_rejects_non_data_pairs() {
    let (_d, store) = open();
    let s = store.shard_state(0).unwrap();
    apply(&s, 1, vec![put(b"keep", b"1")]);
    let stage = store.snapshot_stage(0).unwrap();
    let good = (keys::encode_key(b"x", 1), keys::encode_value(Some(b"v")));
    for bad in [
        (keys::APPLIED_KEY.to_vec(), vec![0u8; 16]),
        (b"dnot-a-key".to_vec(), vec![1]),
        (keys::encode_key(b"x", 2), vec![7]),
    ] {
        stage.clear().unwrap();
        stage.write(&[good.clone(), bad]).unwrap();
        assert!(matches!(
            s.install(&stage, AppliedState { index: 5, term: 1 }),
            Err(StoreError::Corrupt { .. })
        ));
        // Nothing was written.
        assert_eq!(value(&s, b"keep", u64::MAX), Some((1, b"1".to_vec())));
        assert_eq!(value(&s, b"x", u64::MAX), None);
        assert_eq!(s.applied().unwrap().index, 1);
    }
}

#[test]
fn applied_state_and_data_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let store = NodeStore::open(&path).unwrap();
        let s = store.shard_state(2).unwrap();
        apply(&s, 1, vec![put(b"a", b"1")]);
        s.apply(2, 3, None).unwrap();
        store.flush().unwrap();
    }
    let store = NodeStore::open(&path).unwrap();
    let s = store.shard_state(2).unwrap();
    assert_eq!(s.applied().unwrap(), AppliedState { index: 2, term: 3 });
    assert_eq!(value(&s, b"a", u64::MAX), Some((1, b"1".to_vec())));
    // Shards are independent trees.
    assert_eq!(
        store.shard_state(1).unwrap().applied().unwrap(),
        AppliedState::default()
    );
}
