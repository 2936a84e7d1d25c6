//! The read path: linearizable reads batched into one ReadIndex per round, or served
//! on a leader lease.
//!
//! Reads that arrive between two rounds share one ReadIndex request; once raft-rs
//! confirms the leader's commit index for it (a quorum heard a heartbeat) and the
//! replica has applied that far, the readers pass through the gates (`gate.rs`)
//! and are told the version to read at. They read the tree themselves, off this thread.
//!
//! With lease reads on, a confirmed round also proves that no other leader can be
//! elected for a while ([`crate::RaftConfig::lease_ticks`] from when it was issued):
//! until then, reads take the commit index as their read index with no round at all,
//! and a round is issued in the background when half the lease is gone.

use std::sync::atomic::Ordering;

use raft::prelude::{Message, MessageType};

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
    /// When its ReadIndex was issued, and in which term: a confirmation extends the
    /// lease from then, never from when the answer came back.
    pub(super) issued: (u64, u64),
}

/// A leader lease: until tick `until` of this replica's clock, no other replica can
/// become leader of a term after `term`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Lease {
    term: u64,
    until: u64,
}

/// Whether `msg` asks for a vote that a restarted replica must not give yet. A
/// leader transfer's campaign is exempt, as it is from raft-rs's own lease check;
/// the leader that starts one gives up its lease first.
pub(super) fn asks_for_vote(msg: &Message) -> bool {
    matches!(
        msg.msg_type,
        MessageType::MsgRequestVote | MessageType::MsgRequestPreVote
    ) && msg.context != raft::CAMPAIGN_TRANSFER
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
        if !self.raw.raft.commit_to_current_term() {
            return;
        }
        let term = self.raw.raft.term;
        let renew = match self.lease_left() {
            Some(left) if !self.reads_unissued.is_empty() => {
                // Within the lease no other leader has committed anything, so this
                // leader's commit index covers every write acknowledged before now.
                let reads = PendingReads {
                    deadline: self.now + self.request_ticks,
                    readers: std::mem::take(&mut self.reads_unissued),
                    issued: (self.now, term),
                };
                let index = self.raw.raft.raft_log.committed;
                self.reads_confirmed.entry(index).or_default().push(reads);
                self.gauges.lease_reads.fetch_add(1, Ordering::Relaxed);
                metrics::counter!("cairn_lease_read_batches_total").increment(1);
                let half = self.lease_ticks.unwrap_or(0) / 2;
                left <= half && self.reads_inflight.is_empty()
            }
            _ => false,
        };
        if self.reads_unissued.is_empty() && !renew {
            return;
        }
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let reads = PendingReads {
            deadline: self.now + self.request_ticks,
            readers: std::mem::take(&mut self.reads_unissued),
            issued: (self.now, term),
        };
        self.reads_inflight.insert(id, reads);
        self.raw.read_index(id.to_be_bytes().to_vec());
    }

    /// Ticks left on this leader's lease, if it holds one now.
    fn lease_left(&self) -> Option<u64> {
        let lease = self.lease?;
        let valid = self.role == raft::StateRole::Leader
            && lease.term == self.raw.raft.term
            && self.raw.raft.lead_transferee.is_none();
        (valid && self.now < lease.until).then(|| lease.until - self.now)
    }

    pub(super) fn on_read_state(&mut self, index: u64, ctx: &[u8]) {
        let Some(id) = ctx.try_into().ok().map(u64::from_be_bytes) else {
            return;
        };
        if let Some(reads) = self.reads_inflight.remove(&id) {
            let (issued_at, term) = reads.issued;
            if let Some(ticks) = self.lease_ticks {
                if term == self.raw.raft.term && self.role == raft::StateRole::Leader {
                    let until = issued_at + ticks;
                    if self.lease.is_none_or(|l| l.term != term || l.until < until) {
                        self.lease = Some(Lease { term, until });
                    }
                }
            }
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
