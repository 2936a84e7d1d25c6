//! The seam between consensus and what is agreed on: a [`StateMachine`] is fed a
//! shard's committed log by its replica and says, for every entry, what to answer the
//! proposer and what the entry means for answers still waiting ([`Effects`]).
//!
//! The replica driver (`replica/`, the pool, group commit) is written against this
//! trait alone: it never decodes a command, never knows that a marker opens a hold or
//! that a resolve releases a lock. Cairn's key-value shard ([`ShardState`]) is the one
//! machine the node runs today; a new replicated protocol plugs in by implementing
//! this trait, and its commands then ride the same Raft groups, gates and sync rounds.
//!
//! Every method runs on the replica's thread, between Raft steps: it must be
//! deterministic in the log (replicas apply the same entries and must reach the same
//! state and effects), and it must never block on anything but its own storage.
//! Errors are storage failures: the replica stops and the process restarts from disk.

use cairn_store::{
    AppliedPoint, AppliedState, ApplyOutcome, Command, Committed, Effects, Hold, NodeStore,
    ReadScope, ShardId, ShardState, SnapshotStage, StoreError,
};

/// A deterministic state machine driven by one shard's Raft log (see the module doc).
/// Clones share one state: the replica applies through one, readers and the Raft
/// snapshot sender use others.
pub trait StateMachine: Clone + Send + 'static {
    /// What a client proposes.
    type Command: Send + 'static;
    /// What applying a client's entry answers it.
    type Outcome: Send + 'static;
    /// What a linearizable read will look at, so a lock on it can hold the read back.
    type Scope: Send + 'static;

    /// A command's bytes in the log. [`StateMachine::apply`] gets them back.
    fn encode(command: &Self::Command) -> Vec<u8>;

    /// Open shard `shard`'s machine in the node's store (every replica of a node
    /// keeps its state in the one store).
    fn open(store: &NodeStore, shard: ShardId) -> Result<Self, StoreError>;

    /// The last entry applied; `(0, 0)` for a machine that applied nothing.
    fn applied(&self) -> Result<AppliedState, StoreError>;

    /// How the shard's log learns the applied point, for the Raft snapshots it
    /// describes.
    fn applied_point(&self) -> AppliedPoint;

    /// Apply a prefix of `entries` (at least the first), durably and atomically with
    /// the applied point, and return each applied entry's outcome and effects, in
    /// order. Entries with empty data carry no command (a new leader's empty entry, a
    /// configuration change) and only move the applied point.
    ///
    /// A prefix rather than all: the replica acts on one entry's effects (a hold
    /// opening) before a later entry's state becomes visible, so the machine must stop
    /// a prefix at any entry whose effects matter to what follows.
    fn apply(&self, entries: &[Committed<'_>])
        -> Result<Vec<(Self::Outcome, Effects)>, StoreError>;

    /// The holds open in the current state, re-derived after opening the machine or
    /// installing a Raft snapshot (the effects that opened them are not replayed).
    fn open_holds(&self) -> Result<Vec<Hold>, StoreError>;

    /// The owner of a lock covering `scope` at the applied point, if any: a read of
    /// it waits until an entry's effects release that owner.
    fn lock_in(&self, scope: &Self::Scope) -> Result<Option<u64>, StoreError>;

    /// Replace the whole state with a received Raft snapshot's staged pairs, applied
    /// up to `applied`.
    fn install(&self, stage: &SnapshotStage, applied: AppliedState) -> Result<(), StoreError>;
}

/// Cairn's key-value shard: MVCC data, snapshot cuts and transaction locks
/// (`cairn-store`).
impl StateMachine for ShardState {
    type Command = Command;
    type Outcome = ApplyOutcome;
    type Scope = ReadScope;

    fn encode(command: &Command) -> Vec<u8> {
        command.encode()
    }

    fn open(store: &NodeStore, shard: ShardId) -> Result<ShardState, StoreError> {
        store.shard_state(shard)
    }

    fn applied(&self) -> Result<AppliedState, StoreError> {
        ShardState::applied(self)
    }

    fn applied_point(&self) -> AppliedPoint {
        ShardState::applied_point(self)
    }

    fn apply(&self, entries: &[Committed<'_>]) -> Result<Vec<(ApplyOutcome, Effects)>, StoreError> {
        self.apply_entries(entries)
    }

    fn open_holds(&self) -> Result<Vec<Hold>, StoreError> {
        ShardState::open_holds(self)
    }

    fn lock_in(&self, scope: &ReadScope) -> Result<Option<u64>, StoreError> {
        ShardState::lock_in(self, scope)
    }

    fn install(&self, stage: &SnapshotStage, applied: AppliedState) -> Result<(), StoreError> {
        ShardState::install(self, stage, applied)
    }
}
