//! A shard's half of cross-shard transactions: prepare locks and checks, resolve
//! applies or drops, late prepares are refused, the horizon forgets, and Raft
//! snapshots carry pending transactions exactly as of their index.

use cairn_store::{
    txn_id, AppliedState, ApplyOutcome, Command, Condition, NodeStore, OpKind, ReadScope,
    ShardState, WriteOp,
};

fn op(key: &str, kind: OpKind, condition: Condition) -> WriteOp {
    WriteOp {
        key: key.as_bytes().to_vec(),
        kind,
        condition,
    }
}

fn put(key: &str, value: &str) -> WriteOp {
    op(
        key,
        OpKind::Put(value.as_bytes().to_vec()),
        Condition::Always,
    )
}

struct Shard {
    _dir: tempfile::TempDir,
    store: NodeStore,
    state: ShardState,
    index: u64,
}

impl Shard {
    fn new() -> Shard {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(dir.path()).unwrap();
        let state = store.shard_state(0).unwrap();
        Shard {
            _dir: dir,
            store,
            state,
            index: 0,
        }
    }

    fn apply(&mut self, command: Command) -> ApplyOutcome {
        self.index += 1;
        self.state.apply(self.index, 1, Some(&command)).unwrap()
    }

    fn value(&self, key: &str) -> Option<(u64, Vec<u8>)> {
        self.state
            .get(key.as_bytes(), u64::MAX)
            .unwrap()
            .map(|v| (v.version, v.value))
    }
}

const T1: u64 = 1 << 40;
const T2: u64 = 2 << 40;

#[test]
fn prepare_locks_and_commit_writes_at_the_resolve_index() {
    let mut s = Shard::new();
    s.apply(Command::Batch(vec![put("a", "0")]));
    let prepared = s.apply(Command::Prepare {
        txn: T1,
        ops: vec![put("a", "1"), put("b", "1")],
    });
    assert_eq!(
        prepared,
        ApplyOutcome::Prepared {
            existed: vec![true, false]
        }
    );
    // Prepared ops are invisible; the keys are locked.
    assert_eq!(s.value("a").map(|v| v.1), Some(b"0".to_vec()));
    assert_eq!(s.value("b"), None);
    assert_eq!(s.state.lock_holder(b"a").unwrap(), Some(T1));
    assert_eq!(
        s.state.lock_in(&ReadScope::Key(b"b".to_vec())).unwrap(),
        Some(T1)
    );
    assert_eq!(
        s.state
            .lock_in(&ReadScope::Range {
                prefix: Vec::new(),
                start_after: Some(b"a".to_vec())
            })
            .unwrap(),
        Some(T1),
        "b is after a"
    );
    assert_eq!(
        s.state
            .lock_in(&ReadScope::Range {
                prefix: b"c".to_vec(),
                start_after: None
            })
            .unwrap(),
        None
    );
    assert_eq!(s.state.pending_txns().unwrap(), vec![T1]);

    // A batch on a locked key is refused and writes nothing; other keys are free.
    assert_eq!(
        s.apply(Command::Batch(vec![put("c", "x"), put("b", "x")])),
        ApplyOutcome::Locked { op: 1, txn: T1 }
    );
    assert_eq!(s.value("c"), None);
    // So is another transaction's prepare.
    assert_eq!(
        s.apply(Command::Prepare {
            txn: T2,
            ops: vec![put("a", "2")]
        }),
        ApplyOutcome::Locked { op: 0, txn: T1 }
    );
    // A repeated prepare of the same transaction gives the same answer.
    assert_eq!(
        s.apply(Command::Prepare {
            txn: T1,
            ops: vec![put("a", "1"), put("b", "1")],
        }),
        prepared
    );

    let outcome = s.apply(Command::Resolve {
        txn: T1,
        commit: true,
    });
    let at = s.index;
    assert_eq!(
        outcome,
        ApplyOutcome::Resolved {
            committed: true,
            version: Some(at)
        }
    );
    assert_eq!(s.value("a"), Some((at, b"1".to_vec())));
    assert_eq!(s.value("b"), Some((at, b"1".to_vec())));
    assert_eq!(s.state.lock_holder(b"a").unwrap(), None);
    assert!(s.state.pending_txns().unwrap().is_empty());
    // The old state stays readable below the resolve.
    assert_eq!(
        s.state.get(b"a", at - 1).unwrap().map(|v| v.value),
        Some(b"0".to_vec())
    );
    // A repeated resolve changes nothing and repeats the outcome.
    assert_eq!(
        s.apply(Command::Resolve {
            txn: T1,
            commit: true
        }),
        outcome
    );
    assert_eq!(s.value("a"), Some((at, b"1".to_vec())));
    // Unlocked: ordinary writes go through again.
    assert!(matches!(
        s.apply(Command::Batch(vec![put("b", "2")])),
        ApplyOutcome::Applied { .. }
    ));
}

#[test]
fn a_failed_condition_locks_nothing_and_abort_writes_nothing() {
    let mut s = Shard::new();
    s.apply(Command::Batch(vec![put("a", "0")]));
    let version = s.index;
    assert_eq!(
        s.apply(Command::Prepare {
            txn: T1,
            ops: vec![
                op("b", OpKind::Delete, Condition::Always),
                op("a", OpKind::Delete, Condition::Version(version + 7)),
            ],
        }),
        ApplyOutcome::Rejected {
            op: 1,
            current: Some(version)
        }
    );
    assert_eq!(s.state.lock_holder(b"b").unwrap(), None);
    assert_eq!(s.state.txn(T1).unwrap(), None);

    s.apply(Command::Prepare {
        txn: T2,
        ops: vec![op("a", OpKind::Delete, Condition::Version(version))],
    });
    assert_eq!(
        s.apply(Command::Resolve {
            txn: T2,
            commit: false
        }),
        ApplyOutcome::Resolved {
            committed: false,
            version: None
        }
    );
    assert_eq!(s.value("a"), Some((version, b"0".to_vec())));
    assert_eq!(s.state.lock_holder(b"a").unwrap(), None);
}

#[test]
fn a_prepare_after_its_resolve_is_refused() {
    let mut s = Shard::new();
    // The coordinator gave up and aborted before its prepare arrived here.
    assert_eq!(
        s.apply(Command::Resolve {
            txn: T1,
            commit: false
        }),
        ApplyOutcome::Resolved {
            committed: false,
            version: None
        }
    );
    assert_eq!(
        s.apply(Command::Prepare {
            txn: T1,
            ops: vec![put("a", "1")]
        }),
        ApplyOutcome::TxnClosed
    );
    assert_eq!(s.state.lock_holder(b"a").unwrap(), None);
    // Likewise once a transaction was committed and resolved here.
    s.apply(Command::Prepare {
        txn: T2,
        ops: vec![put("a", "2")],
    });
    s.apply(Command::Resolve {
        txn: T2,
        commit: true,
    });
    assert_eq!(
        s.apply(Command::Prepare {
            txn: T2,
            ops: vec![put("a", "2")]
        }),
        ApplyOutcome::TxnClosed
    );
    assert_eq!(s.state.lock_holder(b"a").unwrap(), None);
}

#[test]
fn the_horizon_forgets_resolved_transactions_and_refuses_older_prepares() {
    let mut s = Shard::new();
    let old = txn_id(1_000, 1);
    let pending = txn_id(1_500, 2);
    let young = txn_id(5_000, 3);
    s.apply(Command::Resolve {
        txn: old,
        commit: false,
    });
    s.apply(Command::Prepare {
        txn: pending,
        ops: vec![put("p", "1")],
    });
    assert_eq!(
        s.apply(Command::TxnHorizon { before_ms: 2_000 }),
        ApplyOutcome::TxnsForgotten { forgotten: 1 }
    );
    assert_eq!(s.state.txn(old).unwrap(), None);
    // A pending transaction is never forgotten: its locks and ops stay until resolved.
    assert!(s.state.txn(pending).unwrap().is_some());
    assert_eq!(s.state.lock_holder(b"p").unwrap(), Some(pending));
    // Forgotten or not, a transaction older than the horizon cannot prepare.
    assert_eq!(
        s.apply(Command::Prepare {
            txn: old,
            ops: vec![put("a", "1")]
        }),
        ApplyOutcome::TxnClosed
    );
    assert_eq!(
        s.apply(Command::Prepare {
            txn: txn_id(1_999, 4),
            ops: vec![put("a", "1")]
        }),
        ApplyOutcome::TxnClosed
    );
    assert!(matches!(
        s.apply(Command::Prepare {
            txn: young,
            ops: vec![put("a", "1")]
        }),
        ApplyOutcome::Prepared { .. }
    ));
    // Never lowered.
    s.apply(Command::TxnHorizon { before_ms: 10 });
    assert_eq!(s.state.txn_horizon().unwrap().before_ms, 2_000);
    // The pending one still commits.
    assert!(matches!(
        s.apply(Command::Resolve {
            txn: pending,
            commit: true
        }),
        ApplyOutcome::Resolved {
            committed: true,
            version: Some(_)
        }
    ));
    assert_eq!(s.value("p").map(|v| v.1), Some(b"1".to_vec()));
}

#[test]
fn raft_snapshots_carry_pending_transactions_as_of_their_index() {
    let mut s = Shard::new();
    s.apply(Command::Batch(vec![put("a", "0")]));
    s.apply(Command::Prepare {
        txn: T1,
        ops: vec![put("a", "1"), put("b", "1")],
    });
    let upto = s.index;
    // After the snapshot index the transaction commits and another one prepares.
    s.apply(Command::Resolve {
        txn: T1,
        commit: true,
    });
    s.apply(Command::Prepare {
        txn: T2,
        ops: vec![put("c", "2")],
    });

    let dir = tempfile::tempdir().unwrap();
    let follower = NodeStore::open(dir.path()).unwrap();
    let stage = follower.snapshot_stage(0).unwrap();
    let pairs: Vec<_> = s.state.export(upto).collect::<Result<_, _>>().unwrap();
    stage.write(&pairs).unwrap();
    let installed = follower.shard_state(0).unwrap();
    installed
        .install(
            &stage,
            AppliedState {
                index: upto,
                term: 1,
            },
        )
        .unwrap();
    // As of `upto`: T1 pending (locked, ops kept), T2 unknown.
    assert_eq!(installed.pending_txns().unwrap(), vec![T1]);
    assert_eq!(installed.lock_holder(b"b").unwrap(), Some(T1));
    assert_eq!(installed.lock_holder(b"c").unwrap(), None);
    assert_eq!(installed.txn(T2).unwrap(), None);
    assert_eq!(
        installed.get(b"a", u64::MAX).unwrap().map(|v| v.value),
        Some(b"0".to_vec())
    );
    // Replaying the log after `upto` reaches the leader's state.
    let mut index = upto;
    for command in [
        Command::Resolve {
            txn: T1,
            commit: true,
        },
        Command::Prepare {
            txn: T2,
            ops: vec![put("c", "2")],
        },
    ] {
        index += 1;
        installed.apply(index, 1, Some(&command)).unwrap();
    }
    for key in ["a", "b", "c"] {
        assert_eq!(
            installed.get(key.as_bytes(), u64::MAX).unwrap(),
            s.state.get(key.as_bytes(), u64::MAX).unwrap(),
            "key {key}"
        );
        assert_eq!(
            installed.lock_holder(key.as_bytes()).unwrap(),
            s.state.lock_holder(key.as_bytes()).unwrap()
        );
    }
    drop(s.store);
}

#[test]
fn a_snapshot_older_than_the_horizon_entry_is_refused() {
    let mut s = Shard::new();
    s.apply(Command::Resolve {
        txn: txn_id(1, 1),
        commit: false,
    });
    let upto = s.index;
    s.apply(Command::TxnHorizon { before_ms: 100 });
    let exported: Result<Vec<_>, _> = s.state.export(upto).collect();
    assert!(
        exported.is_err(),
        "the tombstone the snapshot needs is gone: the export must fail, not lie"
    );
    assert!(s
        .state
        .export(s.index)
        .collect::<Result<Vec<_>, _>>()
        .is_ok());
}

#[test]
fn check_ops_and_prefix_conditions_write_nothing() {
    let mut s = Shard::new();
    s.apply(Command::Batch(vec![put("t/commit/1", "")]));
    let guarded = || {
        Command::Batch(vec![
            put("s/marking/9", ""),
            op("t/commit/", OpKind::Check, Condition::NothingUnder),
        ])
    };
    assert!(matches!(
        s.apply(guarded()),
        ApplyOutcome::Rejected { op: 1, .. }
    ));
    assert_eq!(s.value("s/marking/9"), None);
    s.apply(Command::Batch(vec![op(
        "t/commit/1",
        OpKind::Delete,
        Condition::Always,
    )]));
    assert!(matches!(s.apply(guarded()), ApplyOutcome::Applied { .. }));
    assert!(s.value("s/marking/9").is_some());
    assert_eq!(s.value("t/commit/"), None, "a check writes nothing");
}
