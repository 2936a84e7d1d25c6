//! Micro-benchmarks of the storage engine under the Raft loop: applying commands to a
//! shard's MVCC tree, point reads (latest and at an older version), scans, and raft
//! log appends with and without fsync. Run with `cargo bench -p cairn-store`.

use cairn_store::{Command, Condition, NodeStore, OpKind, WriteOp};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};
use raft::prelude::{Entry, HardState};

fn put(key: &[u8], value: &[u8]) -> Command {
    Command::Batch(vec![WriteOp {
        key: key.to_vec(),
        kind: OpKind::Put(value.to_vec()),
        condition: Condition::Always,
    }])
}

fn key(i: u64) -> Vec<u8> {
    format!("user/{:08}", i).into_bytes()
}

fn mvcc(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = NodeStore::open(dir.path()).expect("open");
    let state = store.shard_state(0).expect("shard");
    let value = vec![b'x'; 100];
    let n = 10_000u64;
    let mut index = 0;
    for i in 0..n {
        index += 1;
        state
            .apply(index, 1, Some(&put(&key(i), &value)))
            .expect("apply");
    }
    // A second version of every key, so reads at the first version skip one.
    for i in 0..n {
        index += 1;
        state
            .apply(index, 1, Some(&put(&key(i), &value)))
            .expect("apply");
    }

    let mut group = c.benchmark_group("mvcc");
    group.throughput(Throughput::Elements(1));
    group.bench_function("apply_put_100B", |b| {
        let mut i = 0u64;
        b.iter(|| {
            index += 1;
            i += 1;
            state
                .apply(index, 1, Some(&put(&key(i % n), &value)))
                .expect("apply")
        })
    });
    group.bench_function("get_latest", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 7919;
            state.get(&key(i % n), u64::MAX).expect("get")
        })
    });
    group.bench_function("get_at_old_version", |b| {
        let mut i = 0u64;
        b.iter(|| {
            i += 7919;
            state.get(&key(i % n), n).expect("get")
        })
    });
    group.throughput(Throughput::Elements(100));
    group.bench_function("scan_100", |b| {
        b.iter(|| state.scan(b"user/0000", None, 100, u64::MAX).expect("scan"))
    });
    group.finish();
}

fn raft_log(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = NodeStore::open(dir.path()).expect("open");
    let log = store.raft_log(0).expect("log");
    let mut next = 1u64;
    let mut batch = |count: u64| {
        let entries: Vec<Entry> = (0..count)
            .map(|i| Entry {
                index: next + i,
                term: 1,
                data: vec![0u8; 128].into(),
                ..Default::default()
            })
            .collect();
        next += count;
        entries
    };
    let hs = HardState {
        term: 1,
        ..Default::default()
    };
    let mut group = c.benchmark_group("raft_log");
    group.throughput(Throughput::Elements(16));
    group.bench_function("append_16_entries", |b| {
        b.iter_batched(
            || batch(16),
            |entries| log.persist(&entries, Some(&hs)).expect("persist"),
            BatchSize::SmallInput,
        )
    });
    group.bench_function("append_16_entries_and_fsync", |b| {
        b.iter_batched(
            || batch(16),
            |entries| {
                log.persist(&entries, Some(&hs)).expect("persist");
                store.flush().expect("flush")
            },
            BatchSize::SmallInput,
        )
    });
    group.finish();
}

criterion_group!(benches, mvcc, raft_log);
criterion_main!(benches);
