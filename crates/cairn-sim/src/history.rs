//! The record of a run: every client operation with its invocation and completion in
//! virtual time, and every snapshot epoch with its cuts.
//!
//! Every value ever written is unique (`v{id}`, the id naming the operation and the
//! op's place in it), so a value found in a replica's tree names the one write that
//! put it there. That is what makes "no command applied twice" and "no acknowledged
//! write lost" checkable from the final trees, and what lets the linearizability
//! checker's state be a write id instead of bytes.
//!
//! An operation whose fate the client could not learn (its reply was lost with a
//! crashed node, or the replica said `OutcomeUnknown`) is recorded as `Unknown`, never
//! as failed: it may take effect at any point after its invocation, or never.
//! `NotApplied` is reserved for answers that guarantee nothing changed.

use std::collections::BTreeMap;

use cairn_store::ShardId;

use crate::config::Millis;

/// Index of an operation in [`History::ops`].
pub type OpId = usize;

/// A point in the run: virtual time, and a sequence number that orders everything the
/// clients observed (events at the same millisecond still happen one after another).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub ms: Millis,
    pub seq: u64,
}

/// A write's precondition on its key, as the client sent it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cond {
    Always,
    Absent,
    Exists,
    /// The key's live version is exactly this one.
    Version(u64),
}

/// One op of a batch or transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyWrite {
    pub key: String,
    /// The unique value written (see [`value_bytes`]), or `None` for a delete.
    pub value: Option<u64>,
    pub cond: Cond,
}

/// What a client asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// A single-shard batch (one entry, one version).
    Batch {
        shard: ShardId,
        writes: Vec<KeyWrite>,
    },
    /// A read of one key: linearizable (ReadBarrier, then the tree at that version),
    /// or stale (the local replica's unheld version).
    Get {
        shard: ShardId,
        key: String,
        stale: bool,
    },
    /// A linearizable scan of every live key under `prefix` in one shard; `keys` are
    /// the workload's keys there (the ones it must report on, live or not).
    Scan {
        shard: ShardId,
        prefix: String,
        keys: Vec<String>,
    },
    /// A cross-shard transaction.
    Txn {
        txn: u64,
        writes: Vec<(ShardId, KeyWrite)>,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Not finished (only while the run is going).
    Pending,
    Applied {
        version: u64,
        existed: Vec<bool>,
    },
    /// A condition failed: nothing written. `current` is the failing key's live version.
    Rejected {
        op: usize,
        current: Option<u64>,
    },
    /// A key was locked by a transaction: nothing written.
    Locked,
    /// Refused in a way that guarantees nothing changed (every attempt was
    /// `NotLeader` or `Unavailable` until the deadline).
    NotApplied(String),
    /// May or may not have taken effect.
    Unknown(String),
    /// A read: the version it was served at and what it saw, `(version, value id)`.
    Read {
        at: u64,
        value: Option<(u64, u64)>,
    },
    /// A scan: the version it was served at and every live key it saw with
    /// `(version, value id)`.
    Scanned {
        at: u64,
        items: BTreeMap<String, (u64, u64)>,
    },
    /// A read that was refused (no effect, no observation).
    ReadFailed(String),
    /// Committed: per shard, the version its resolve wrote at and when the coordinator
    /// learned it.
    TxnCommitted {
        resolved: BTreeMap<ShardId, (u64, Stamp)>,
    },
    /// Aborted: nothing written anywhere.
    TxnAborted,
}

impl Outcome {
    /// Whether the client was told the write happened (so it must never be lost).
    pub fn acknowledged(&self) -> bool {
        matches!(self, Outcome::Applied { .. } | Outcome::TxnCommitted { .. })
    }
}

/// One client operation: the record every harness shares (`cairn_lincheck::Op`), with
/// the simulator's actions and outcomes. `via` is always `None` (a call follows the
/// shard's leader); `completed` is `None` while the operation runs.
pub type Op = cairn_lincheck::Op<Stamp, Action, Outcome>;

/// A snapshot epoch as the simulated coordinator ran it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Epoch {
    pub id: u64,
    /// When it was requested (markers proposed right after).
    pub requested: Stamp,
    /// When the epoch was first known decided done or aborted and its releases began:
    /// by its coordinator, or by the sweeper, whichever came first.
    pub decided: Option<Stamp>,
    /// Every shard reported a cut.
    pub done: bool,
    /// Cuts reported to the coordinator.
    pub cuts: BTreeMap<ShardId, u64>,
}

/// Everything recorded in one run.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct History {
    pub ops: Vec<Op>,
    pub epochs: Vec<Epoch>,
}

/// The id of the `i`-th op of operation `op`.
pub fn write_id(op: OpId, i: usize) -> u64 {
    (op as u64) << 8 | i as u64
}

/// The operation a write id belongs to.
pub fn op_of(write: u64) -> OpId {
    (write >> 8) as OpId
}

/// The bytes stored for a write id.
pub fn value_bytes(write: u64) -> Vec<u8> {
    format!("v{write}").into_bytes()
}

/// The write id stored in `bytes`, if they are a simulator value.
pub fn parse_value(bytes: &[u8]) -> Option<u64> {
    std::str::from_utf8(bytes)
        .ok()?
        .strip_prefix('v')?
        .parse()
        .ok()
}

impl History {
    pub fn push(&mut self, client: usize, action: Action, invoked: Stamp) -> OpId {
        let id = self.ops.len();
        self.ops.push(Op {
            id,
            client,
            via: None,
            request: action,
            invoked,
            completed: None,
            outcome: Outcome::Pending,
        });
        id
    }

    pub fn complete(&mut self, op: OpId, at: Stamp, outcome: Outcome) {
        let op = &mut self.ops[op];
        op.completed = Some(at);
        op.outcome = outcome;
    }
}
