//! The read path: linearizable reads batched into one ReadIndex per round.
//!
//! Reads that arrive between two rounds share one ReadIndex request; once raft-rs
//! confirms the leader's commit index for it (a quorum heard a heartbeat) and the
//! replica has applied that far, the readers pass through the gates (`gate.rs`)
//! and are told the version to read at. They read the tree themselves, off this thread.

use std::sync::atomic::Ordering;

use super::{Outbox, ReadReply, Replica};
use crate::commit::Durability;
use crate::error::{ReplicaError, ShardError};
use crate::machine::StateMachine;

/// A linearizable read waiting for its barrier: what it will read, and where to
/// send the version it may read at.
pub(super) struct Reader<M: StateMachine> {
    pub(super) scope: M::Scope,
    pub(super) reply: ReadReply,
}

/// Reads waiting for a read index to be confirmed, then applied.
pub(super) struct PendingReads<M: StateMachine> {
    pub(super) deadline: u64,
    pub(super) readers: Vec<Reader<M>>,
}

impl<M: StateMachine> PendingReads<M> {
    pub(super) fn fail(self, err: ShardError) {
        for reader in self.readers {
            let _ = reader.reply.send(Err(err.clone()));
        }
    }
}

impl<M: StateMachine, O: Outbox<M>, D: Durability> Replica<M, O, D> {
    /// Issue one ReadIndex for every read that arrived since the last one. raft-rs drops
    /// a ReadIndex silently until the leader has committed an entry of its own term, so
    /// reads wait for that here.
    pub(super) fn issue_reads(&mut self) {
        if self.reads_unissued.is_empty() || !self.raw.raft.commit_to_current_term() {
            return;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let reads = PendingReads {
            deadline: self.now + self.request_ticks,
            readers: std::mem::take(&mut self.reads_unissued),
        };
        self.reads_inflight.insert(id, reads);
        self.raw.read_index(id.to_be_bytes().to_vec());
    }

    pub(super) fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        let Some(id) = ctx.try_into().ok().map(u64::from_be_bytes) else {
            return;
        };
        if let Some(reads) = self.reads_inflight.remove(&id) {
            self.reads_confirmed.entry(index).or_default().push(reads);
        }
    }

    pub(super) fn release_reads(&mut self) -> Result<(), ReplicaError> {
        let applied = self.gauges.applied.load(Ordering::Relaxed);
        let later = self.reads_confirmed.split_off(&(applied + 1));
        for (_, batch) in std::mem::replace(&mut self.reads_confirmed, later) {
            for reads in batch {
                self.release_unlocked(applied, reads.deadline, reads.readers)?;
            }
        }
        Ok(())
    }
}
