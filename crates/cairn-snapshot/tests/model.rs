//! (essay to come)

#[path = "model/network.rs"]
mod network;
#[path = "model/properties.rs"]
mod properties;
#[path = "model/shard.rs"]
mod shard;
#[path = "model/system.rs"]
mod system;
#[path = "model/trace.rs"]
mod trace;

use std::collections::BTreeSet;
use std::time::Instant;

use stateright::{Checker, HasDiscoveries, Model};

use system::{Cluster, Config, Mutation, WriteKind, WriteSpec};

const fn single(shard: u8, after: Option<u8>) -> WriteSpec {
    WriteSpec {
        kind: WriteKind::Single { shard },
        after,
    }
}

const fn txn(shards: u8, after: Option<u8>) -> WriteSpec {
    WriteSpec {
        kind: WriteKind::Txn { shards },
        after,
    }
}

/// Two shards, one snapshot, write 0 on shard 0 and write 1 on shard 1 sent after
/// write 0 was seen; every fault on, one of each kind.
fn snapshots() -> Config {
    Config {
        shards: 2,
        writes: vec![single(0, None), single(1, Some(0))],
        snapshots: 1,
        max_log: 4,
        leader_changes: 1,
        tails: false,
        lossy: true,
        duplicates: 1,
        late_finish: true,
        stale_reads: true,
        linearizable_reads: true,
        mutation: None,
    }
}

/// A transaction on both shards, then a write on shard 0 (its lock's shard) sent after
/// the transaction was seen; one snapshot, a leader change.
fn transactions() -> Config {
    Config {
        writes: vec![txn(0b11, None), single(0, Some(0))],
        max_log: 5,
        lossy: false,
        duplicates: 0,
        stale_reads: false,
        linearizable_reads: false,
        ..snapshots()
    }
}

fn mutated(config: Config, mutation: Mutation) -> Config {
    Config {
        mutation: Some(mutation),
        ..config
    }
}

/// Explore every reachable state; panic on a counterexample or a missing example.
fn check(name: &str, config: Config) {
    let started = Instant::now();
    let checker = Cluster::new(config).checker().spawn_bfs().join();
    println!(
        "{name}: {} unique states ({} generated), depth {}, {:.1?}",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    checker.assert_properties();
}

/// Explore until `property` fails; return the (shortest) counterexample, printed.
fn counterexample(name: &str, config: Config, property: &'static str) -> String {
    let started = Instant::now();
    let model = Cluster::new(config);
    let checker = Cluster::new(model.config.clone())
        .checker()
        .finish_when(HasDiscoveries::AnyOf(BTreeSet::from([property])))
        .spawn_bfs()
        .join();
    let path = checker
        .discovery(property)
        .unwrap_or_else(|| panic!("{name}: the checker found no counterexample to {property:?}"));
    let text = trace::render(&model, &path.into_vec());
    println!(
        "{name}: counterexample to {property:?} after {} unique states, {:.1?}:\n{text}",
        checker.unique_state_count(),
        started.elapsed()
    );
    text
}

#[test]
fn snapshots_keep_their_guarantees() {
    check("snapshots", snapshots());
}

#[test]
fn transactions_keep_snapshots_consistent() {
    check("transactions", transactions());
}

#[test]
fn without_the_alignment_hold_causality_breaks() {
    counterexample(
        "no alignment hold",
        mutated(snapshots(), Mutation::NoAlignmentHold),
        properties::CAUSAL,
    );
}

#[test]
fn a_leader_that_forgets_the_holds_breaks_causality() {
    counterexample(
        "leader forgets holds",
        mutated(snapshots(), Mutation::LeaderForgetsHolds),
        properties::CAUSAL,
    );
}

#[test]
fn stale_reads_past_an_open_cut_break_causality() {
    counterexample(
        "stale reads ignore hold_from",
        mutated(snapshots(), Mutation::StaleReadsIgnoreHold),
        properties::CAUSAL,
    );
}

#[test]
fn without_the_meta_mutex_a_snapshot_splits_a_transaction() {
    counterexample(
        "no meta mutex",
        mutated(transactions(), Mutation::NoMetaMutex),
        properties::ATOMIC,
    );
}
