//! The guarantees of a completed snapshot, checked in every reachable state, and the
//! examples that show the model is not vacuous.

use stateright::Property;

use crate::shard::{View, WriteId};
use crate::system::{Cluster, Config, Record, State, TxnRecord, WriteKind};

/// Which writes a completed snapshot holds: `any` has a write with at least one of its
/// shards' effects below that shard's cut, `all` with all of them (bit sets).
#[derive(Clone, Copy, Debug)]
pub struct Membership {
    pub any: u16,
    pub all: u16,
}

/// Every completed snapshot with its index, its record's cuts and its membership.
pub fn completed(config: &Config, state: &State) -> Vec<(usize, Membership)> {
    state
        .snapshots
        .iter()
        .enumerate()
        .filter_map(|(e, snapshot)| match snapshot.record {
            Record::Done { cuts } => Some((e, membership(config, state, &cuts))),
            _ => None,
        })
        .collect()
}

fn membership(config: &Config, state: &State, cuts: &[u8]) -> Membership {
    // The snapshot holds exactly the entries below each shard's cut.
    let below: Vec<View> = state
        .shards
        .iter()
        .zip(cuts)
        .map(|(shard, &cut)| shard.below(cut))
        .collect();
    let mut m = Membership { any: 0, all: 0 };
    for (w, spec) in config.writes.iter().enumerate() {
        let shards: Vec<u8> = match spec.kind {
            WriteKind::Single { shard } => vec![shard],
            WriteKind::Txn { shards } => (0..config.shards)
                .filter(|s| shards & 1 << s != 0)
                .collect(),
        };
        let inside = shards
            .iter()
            .filter(|&&s| below[s as usize].visible[w].is_some())
            .count();
        if inside > 0 {
            m.any |= 1 << w;
        }
        if inside == shards.len() {
            m.all |= 1 << w;
        }
    }
    m
}

/// Guarantee 1: every write acknowledged before the snapshot was requested is in it
/// (entirely).
fn acked_before_request_included(model: &Cluster, state: &State) -> bool {
    completed(&model.config, state)
        .into_iter()
        .all(|(e, m)| state.snapshots[e].acked_at_request & !m.all == 0)
}

/// Guarantee 2: no write sent after the snapshot completed is in it (even partly).
fn invoked_after_done_excluded(model: &Cluster, state: &State) -> bool {
    completed(&model.config, state)
        .into_iter()
        .all(|(e, m)| m.any & !state.snapshots[e].invoked_at_done == 0)
}

/// Guarantee 3: if W1 was acknowledged or read before W2 was sent, W2 in S implies W1
/// (entirely) in S.
fn causal(model: &Cluster, state: &State) -> bool {
    completed(&model.config, state).into_iter().all(|(_, m)| {
        (0..model.config.writes.len())
            .all(|w2| m.any & 1 << w2 == 0 || state.clients.known[w2] & !m.all == 0)
    })
}

/// Guarantee 4: a batch (a cross-shard transaction included) is entirely in or
/// entirely out.
fn atomic(model: &Cluster, state: &State) -> bool {
    completed(&model.config, state)
        .into_iter()
        .all(|(_, m)| m.any == m.all)
}

/// A shard never makes a transaction's writes visible without having prepared it.
fn committed_only_where_prepared(_: &Cluster, state: &State) -> bool {
    state
        .shards
        .iter()
        .all(|shard| !View::replay(&shard.log, shard.committed).commit_unprepared)
}

fn txn_committed(state: &State, t: WriteId) -> bool {
    state.txns[t as usize].is_some_and(|txn| txn.record == TxnRecord::Committed)
}

pub const ACKED_BEFORE_REQUEST: &str = "1. acknowledged before the request => in the snapshot";
pub const INVOKED_AFTER_DONE: &str = "2. sent after completion => not in the snapshot";
pub const CAUSAL: &str = "3. W1 seen before W2 sent, W2 in the snapshot => W1 in it";
pub const ATOMIC: &str = "4. a batch or transaction is entirely in or entirely out";
pub const PREPARED: &str = "a transaction commits only where it was prepared";

fn snapshot_completes(_: &Cluster, s: &State) -> bool {
    s.snapshots
        .iter()
        .any(|s| matches!(s.record, Record::Done { .. }))
}

fn write_acknowledged(_: &Cluster, s: &State) -> bool {
    s.clients.acked != 0
}

fn answer_held(_: &Cluster, s: &State) -> bool {
    s.shards
        .iter()
        .any(|shard| !shard.held.is_empty() || shard.read.is_some())
}

fn snapshot_separates(model: &Cluster, s: &State) -> bool {
    completed(&model.config, s)
        .iter()
        .any(|(_, m)| m.any != 0 && s.clients.invoked & !m.any != 0)
}

fn causal_write_sent(model: &Cluster, s: &State) -> bool {
    model
        .config
        .writes
        .iter()
        .enumerate()
        .any(|(w, spec)| spec.after.is_some() && s.clients.invoked & 1 << w != 0)
}

fn completes_across_leader_change(_: &Cluster, s: &State) -> bool {
    s.snapshots
        .iter()
        .any(|s| s.leader_changed && matches!(s.record, Record::Done { .. }))
}

fn holds_committed_txn(model: &Cluster, s: &State) -> bool {
    completed(&model.config, s).iter().any(|(_, m)| {
        (0..model.config.writes.len() as WriteId)
            .any(|t| txn_committed(s, t) && m.all & 1 << t != 0)
    })
}

fn excludes_committed_txn(model: &Cluster, s: &State) -> bool {
    completed(&model.config, s).iter().any(|(_, m)| {
        (0..model.config.writes.len() as WriteId)
            .any(|t| txn_committed(s, t) && m.any & 1 << t == 0)
    })
}

pub fn all(config: &Config) -> Vec<Property<Cluster>> {
    let mut properties = vec![
        Property::always(ACKED_BEFORE_REQUEST, acked_before_request_included),
        Property::always(INVOKED_AFTER_DONE, invoked_after_done_excluded),
        Property::always(CAUSAL, causal),
        Property::always(ATOMIC, atomic),
        Property::always(PREPARED, committed_only_where_prepared),
        Property::sometimes("a snapshot completes", snapshot_completes),
        Property::sometimes("a write is acknowledged", write_acknowledged),
        Property::sometimes("an answer is held back by an open cut", answer_held),
        Property::sometimes(
            "a completed snapshot holds one write and not another",
            snapshot_separates,
        ),
        Property::sometimes("a write is sent after another was seen", causal_write_sent),
    ];
    if config.leader_changes > 0 {
        properties.push(Property::sometimes(
            "a snapshot completes across a leader change",
            completes_across_leader_change,
        ));
    }
    if config.has_txns() {
        properties.push(Property::sometimes(
            "a completed snapshot holds a committed transaction",
            holds_committed_txn,
        ));
        properties.push(Property::sometimes(
            "a completed snapshot excludes a committed transaction",
            excludes_committed_txn,
        ));
    }
    properties
}
