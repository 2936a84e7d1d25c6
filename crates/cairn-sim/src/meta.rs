//! The simulated meta group's edge: how the coordinators' meta steps become calls.
//!
//! The meta group is one more Raft group (id = the number of data shards) with a real
//! replica on every node, like the data shards. The production coordinators'
//! I/O-free machines (`cairn_snapshot::epoch`, `cairn_txn::decision`) ask for
//! [`MetaStep`]s; here a `Read` becomes a linearizable read call (a `ReadBarrier`, then
//! the tree at that version), a `Write` a `Command::Batch` proposal, each retried
//! exactly as data calls are (`NotLeader` follows the hint, `Unavailable` waits and
//! tries again, until the deadline), and a `Wait` a pause in virtual time. The call's
//! end is turned back into the answer the machine takes, with the same error kinds
//! production's `Meta` gives (`Unavailable`: nothing changed, `OutcomeUnknown`).
//!
//! What this module must never do: decide anything about a record. It only carries.

use cairn_cluster::meta::{MetaStep, ReadAnswer, WriteAnswer};
use cairn_cluster::MetaError;
use cairn_raft::ShardError;
use cairn_store::{ApplyOutcome, Command, ShardId, Versioned};
use rand::Rng;

use crate::config::Millis;
use crate::workload::Owner;
use crate::world::{CallEnd, Event, Req, World};

/// Meta calls give up after this long, as client calls do.
pub(crate) const META_CALL_MS: Millis = 3_000;

/// A scan's answer: the meta index it was served at and every live key under the
/// prefix, or why there is none.
pub(crate) type ScanAnswer = Result<(u64, Vec<(Vec<u8>, Versioned)>), String>;

/// A meta call's end, as the machine that asked for it takes it.
#[derive(Debug)]
pub(crate) enum MetaAnswer {
    Read(ReadAnswer),
    Written(WriteAnswer),
    /// A scan of a prefix (the sweeper's): the meta index it was served at and every
    /// live key under it, or why not.
    Scanned(ScanAnswer),
}

impl MetaAnswer {
    /// Turn a call's end into an answer; `read` says what the call was.
    pub(crate) fn of(end: CallEnd, read: bool, meta: ShardId) -> MetaAnswer {
        let failed = |e: ShardError| MetaError::Shard(e);
        match end {
            CallEnd::Read { value, .. } => MetaAnswer::Read(Ok(value)),
            CallEnd::Scanned { at, items } => MetaAnswer::Scanned(Ok((at, items))),
            CallEnd::Written(ApplyOutcome::Applied { version, .. }) => {
                MetaAnswer::Written(Ok(Ok(version)))
            }
            CallEnd::Written(ApplyOutcome::Rejected { op, .. }) => MetaAnswer::Written(Ok(Err(op))),
            CallEnd::Written(other) => MetaAnswer::Written(Err(MetaError::Corrupt(format!(
                "a batch on the meta group applied as {other:?}"
            )))),
            CallEnd::NotApplied(reason) if read => {
                MetaAnswer::Read(Err(failed(ShardError::Unavailable {
                    shard: meta,
                    reason,
                })))
            }
            CallEnd::Unknown(reason) if read => {
                MetaAnswer::Read(Err(failed(ShardError::Unavailable {
                    shard: meta,
                    reason,
                })))
            }
            CallEnd::NotApplied(reason) => {
                MetaAnswer::Written(Err(failed(ShardError::Unavailable {
                    shard: meta,
                    reason,
                })))
            }
            CallEnd::Unknown(reason) => {
                MetaAnswer::Written(Err(failed(ShardError::OutcomeUnknown {
                    shard: meta,
                    reason,
                })))
            }
        }
    }

    /// Whether a scan failed or a read/write answer came where a scan was asked.
    pub(crate) fn scanned(self) -> ScanAnswer {
        match self {
            MetaAnswer::Scanned(items) => items,
            MetaAnswer::Read(Err(e)) | MetaAnswer::Written(Err(e)) => Err(e.to_string()),
            other => Err(format!("a scan answered {other:?}")),
        }
    }
}

impl World {
    /// The meta group's id: the group after the data shards.
    pub(crate) fn meta_group(&self) -> ShardId {
        self.shards
    }

    /// The simulation's wall clock, as the coordinators label records with it (no
    /// skew between nodes: wall time only labels and ages, and ageing is by the
    /// older of label and first sighting, which skew cannot lengthen).
    pub(crate) fn wall_ms(&self) -> u64 {
        crate::workload::WALL_BASE_MS + self.clock.now()
    }

    /// Carry out `step` for `owner`: a call on the meta group, or a pause that ends in
    /// `Event::Resume(owner)`. Returns the machine's result once it is done.
    /// `idempotent`: writes whose repetition is harmless (deletes) are repeated after
    /// an unknown outcome, where production leaves them to the sweeper, which writes
    /// the same deletes.
    pub(crate) fn meta_step<T>(
        &mut self,
        owner: Owner,
        step: MetaStep<T>,
        idempotent: bool,
    ) -> Option<T> {
        let meta = self.meta_group();
        let deadline = if idempotent {
            Millis::MAX
        } else {
            self.clock.now() + META_CALL_MS
        };
        match step {
            MetaStep::Read(key) => {
                let req = Req::Read {
                    key,
                    stale: false,
                    scan: false,
                };
                self.call(owner, meta, req, self.clock.now() + META_CALL_MS, false);
                None
            }
            MetaStep::Write(ops) => {
                let req = Req::Write(Command::Batch(ops));
                self.call(owner, meta, req, deadline, idempotent);
                None
            }
            MetaStep::Wait => {
                let pause = self.rng.gen_range(PAUSE_MS.0..=PAUSE_MS.1);
                self.clock.after(pause, Event::Resume(owner));
                None
            }
            MetaStep::Done(t) => Some(t),
        }
    }

    /// Scan every live key under `prefix` on the meta group for `owner`.
    pub(crate) fn meta_scan(&mut self, owner: Owner, prefix: &[u8]) {
        let req = Req::Read {
            key: prefix.to_vec(),
            stale: false,
            scan: true,
        };
        let meta = self.meta_group();
        self.call(owner, meta, req, self.clock.now() + META_CALL_MS, false);
    }

    /// Whether a pause of the longest kind still ends before `deadline` (production's
    /// `Backoff::can_wait`).
    pub(crate) fn can_wait(&self, deadline: Millis) -> bool {
        self.clock.now() + PAUSE_MS.1 <= deadline
    }
}

/// A wait at the gate: production's contention backoff pauses 2 to 50 ms.
const PAUSE_MS: (Millis, Millis) = (2, 30);
