//! A model of the marker protocol, checked exhaustively with stateright.
//!
//! # What is modelled
//!
//! Two data shards, each a Raft group reduced to its log ([`shard`]): a leader proposes
//! the requests it receives, entries commit in order and are never lost once committed,
//! and every replica's state machine is the replay of a prefix of the log, exactly as
//! `ShardState::apply` defines it: a marker's index is the cut of its epoch, a repeated
//! marker reports the first cut, a release before the marker is recorded with cut 0 so
//! that the late marker opens nothing, a `Prepare` locks the shard's key, a `Resolve`
//! makes a transaction's write visible at its own index and unlocks, a `Prepare` after
//! its `Resolve` is refused. The leader holds back every answer whose version is above
//! an open cut (`Replica::is_held` / `answer` / `release_held`): acknowledgements of
//! writes and of committing resolves, and linearizable reads, which are answered at the
//! leader's applied index. Marker, release and prepare answers are never held. Stale
//! reads are served at `min(applied, lowest open cut)` (`unheld_version`).
//!
//! Around the shards ([`system`]): clients that send scripted writes, a write possibly
//! only after another was acknowledged to or read by some client; snapshot
//! coordinators that allocate an epoch in the meta group, propose `Marker(e)` to every
//! shard, record `Done(cuts)` or `Aborted` conditionally on the record still being
//! pending (or whose finishing write has an unknown outcome and may be applied later;
//! they release anyway, as `Coordinator::take` does), and propose `Release(e)`; the
//! sweeper, which aborts a pending epoch and re-releases finished open ones; and
//! cross-shard transactions: `t/txn/T := Pending`, `Prepare` to each shard, one
//! conditional commit batch that fails while any `s/marking/e` exists, `Resolve` to
//! each shard, `t/commit/T` deleted once all resolved; aborts by the coordinator or by
//! the sweeper (which also rolls committed ones forward), and allocation conditional on
//! no `t/commit/*`. The meta group is a linearizable store of conditional batches, one
//! step per batch. Between clients and coordinators and the shard leaders, the network
//! ([`network`]) reorders, loses and (a bounded number of times) duplicates requests.
//! Leaders change.
//!
//! # What is abstracted away, and why that is sound
//!
//! Every abstraction below either keeps all behaviours or replaces some by behaviours
//! that are harder for the properties, which are all monotone: an acknowledgement or an
//! observation that comes earlier can only add obligations, one that never comes can
//! only remove them.
//!
//! - **Time.** No clocks. A timeout is a choice open at every step: a coordinator may
//!   give up on missing cuts at any moment, the sweeper may abort any pending epoch or
//!   transaction at any moment (the code already argues that an early abort is safe;
//!   the model checks it). A crashed coordinator is one that never acts again.
//! - **Answers** reach the proposer at once or never: delivering later only delays an
//!   obligation, losing one (a deadline, a leader change) removes it.
//! - **The leader applies an entry in the step that commits it**, and followers are not
//!   tracked. A hold decision depends only on the log prefix, not on when it is made,
//!   so applying later only delays answers. A follower's state is a function of its
//!   applied index and `min(applied, lowest open cut)` never decreases as it applies,
//!   so a stale read at a replica that has applied everything committed reveals the
//!   most any replica can; one such read stands for every replica of any replication
//!   factor. A fixed-version read serves a version at most that, so it reveals less.
//! - **Leader changes.** By default an entry commits when it is proposed: an entry
//!   lost with an old leader's uncommitted tail is a lost request, and one that survives
//!   commits without an answer, which is weaker than with one. What is left of a leader
//!   change is what it does to the protocol's state: the old leader's held answers and
//!   reads are failed, and the new leader's holds come from its log (which is what the
//!   `LeaderForgetsHolds` mutation breaks). `tails: true` models uncommitted tails, terms
//!   and "keep any prefix, lose the rest" explicitly; the bigger configurations check it.
//! - **Dead requests** are dropped: a request whose delivery could now change nothing
//!   but the indexes of later entries (a repeated release, a marker of an epoch whose
//!   coordinator has its cut, a prepare nobody waits for). An entry that changes nothing
//!   shifts every later index alike, so no cut, hold or membership can tell. For the
//!   same reason a write refused by a lock is not appended (without `tails`); its
//!   client's resend is recorded with what the client knows by then.
//! - **One key per shard**, and a read sees the whole shard: every write conflicts with
//!   a transaction's lock on its shard, and a read reveals everything at its version.
//! - **A transaction is acknowledged** when its commit batch is applied (the earliest a
//!   client could learn of it), and it is "sent" when its coordinator writes the
//!   pending record (no earlier than the client sent it).
//! - Left out: the meta group's own Raft (its batches are linearizable, one step
//!   each), history GC, automatic snapshots, Raft snapshots and membership changes.
//!   None of them decides a cut or a hold; a Raft snapshot carries the cut table and
//!   the replica reloads its open cuts from it, so installing one is one more way of
//!   applying a prefix.
//!
//! # Properties
//!
//! In every reachable state, for every snapshot recorded Done ([`properties`]):
//!
//! 1. every write acknowledged before the snapshot was requested is entirely in it;
//! 2. no write sent after it completed is in it, even partly;
//! 3. if W1 was acknowledged to or read by any client before W2 was sent, and W2 is (even
//!    partly) in it, W1 is entirely in it;
//! 4. every batch, cross-shard transactions included, is entirely in or entirely out;
//!
//! and a shard never makes a transaction visible without having prepared it. `sometimes`
//! properties show the checks are not vacuous: a snapshot completes, one includes a
//! write and excludes another, an answer is held, a causal write is sent, a snapshot
//! completes across a leader change, one holds and one excludes a committed transaction.
//!
//! The mutation tests switch off one mechanism each and require a counterexample:
//! the alignment hold, the new leader's holds, `hold_from` for stale reads (each breaks
//! property 3), and the meta group's mutual exclusion of marking and committing (a
//! snapshot then holds half a transaction).
//!
//! # Running
//!
//! `cargo test -p cairn-snapshot --test model` runs the two small configurations
//! (67k and 104k states), the four mutation checks, and the bigger ones (a longer
//! causal chain, two concurrent snapshots, more transactions, duplicated transaction
//! requests, explicit Raft tails: 0.3 to 2.2 million states each), about two minutes
//! of CPU in a debug build, so CI checks every configuration, the commit-on-proposal
//! shortcut's justification among them; add `-- --nocapture` for state counts and
//! the counterexamples. `docs/MODEL.md` has the figures.

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
/// the transaction was seen; one snapshot, a leader change. No loss (a lost request is
/// one never delivered, which adds no state the properties can see), duplicates or
/// reads here, to keep `cargo test` short: the bigger configurations add them.
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

/// `config` with one mechanism broken. No duplicates: none of the counterexamples
/// needs one, and without them the shortest is also the plainest.
fn mutated(config: Config, mutation: Mutation) -> Config {
    Config {
        mutation: Some(mutation),
        duplicates: 0,
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

/// The bigger configuration of the marker protocol: a causal chain that crosses back
/// (write 0 on shard 0, write 1 on shard 1 after it, write 2 on shard 0 after that),
/// two leader changes, longer logs, every fault of the small one.
fn bigger_snapshots() -> Config {
    Config {
        writes: vec![single(0, None), single(1, Some(0)), single(0, Some(1))],
        max_log: 5,
        leader_changes: 2,
        ..snapshots()
    }
}

/// Two snapshots at once, so two epochs' holds overlap and `hold_from` is the lower
/// cut. Reordering only: every further fault multiplies this past an hour.
fn concurrent_snapshots() -> Config {
    Config {
        snapshots: 2,
        max_log: 5,
        leader_changes: 0,
        lossy: false,
        duplicates: 0,
        late_finish: false,
        stale_reads: false,
        linearizable_reads: false,
        ..snapshots()
    }
}

/// Transactions in a longer chain: a write, a transaction sent after it was seen, a
/// write on the other shard after the transaction was seen; reads.
fn bigger_transactions() -> Config {
    Config {
        writes: vec![single(0, None), txn(0b11, Some(0)), single(1, Some(1))],
        max_log: 6,
        stale_reads: true,
        linearizable_reads: true,
        ..transactions()
    }
}

/// The transaction configuration with a duplicated request, so that a `Prepare` can
/// land after its `Resolve` (and must be refused).
fn duplicated_transactions() -> Config {
    Config {
        duplicates: 1,
        ..transactions()
    }
}

/// Explicit Raft tails: entries wait uncommitted in the leader's log, and a leader
/// change keeps any prefix of them (committed later, unanswered) and loses the rest.
/// Checks the abstraction the other configurations make (commit on proposal).
fn explicit_tails() -> Config {
    Config {
        tails: true,
        lossy: false,
        duplicates: 0,
        stale_reads: false,
        linearizable_reads: false,
        ..snapshots()
    }
}

/// Like [`check`], depth first: the bigger configurations need no shortest paths, and
/// depth first keeps only fingerprints and one path in memory.
fn check_all(name: &str, config: Config) {
    let started = Instant::now();
    let checker = Cluster::new(config).checker().spawn_dfs().join();
    println!(
        "{name}: {} unique states ({} generated), depth {}, {:.1?}",
        checker.unique_state_count(),
        checker.state_count(),
        checker.max_depth(),
        started.elapsed()
    );
    checker.assert_properties();
}

#[test]

fn bigger_snapshots_keep_their_guarantees() {
    check_all("bigger snapshots", bigger_snapshots());
}

#[test]

fn concurrent_snapshots_keep_their_guarantees() {
    check_all("concurrent snapshots", concurrent_snapshots());
}

#[test]

fn bigger_transactions_keep_snapshots_consistent() {
    check_all("bigger transactions", bigger_transactions());
}

#[test]

fn duplicated_transaction_requests_keep_snapshots_consistent() {
    check_all("duplicated transactions", duplicated_transactions());
}

#[test]

fn explicit_raft_tails_keep_the_guarantees() {
    check_all("explicit tails", explicit_tails());
}

#[test]

fn explicit_raft_tails_still_need_the_new_leader_to_hold() {
    counterexample(
        "explicit tails, leader forgets holds",
        mutated(explicit_tails(), Mutation::LeaderForgetsHolds),
        properties::CAUSAL,
    );
}
