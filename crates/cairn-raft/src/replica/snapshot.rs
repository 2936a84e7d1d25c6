//! Raft snapshots and log compaction: installing a received snapshot's staged data,
//! and dropping applied log entries once enough have accumulated.

use std::sync::atomic::Ordering;

use cairn_store::AppliedState;
use raft::prelude::Snapshot;

use super::{Outbox, Replica};
use crate::commit::Durability;
use crate::error::{ReplicaError, ShardError};
use crate::machine::StateMachine;

impl<M: StateMachine, O: Outbox<M>, D: Durability> Replica<M, O, D> {
    pub(super) fn install_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), ReplicaError> {
        let meta = snapshot.get_metadata();
        let stage = self.store.snapshot_stage(self.shard)?;
        let applied = AppliedState {
            index: meta.index,
            term: meta.term,
        };
        let staged = stage.len();
        self.state.install(&stage, applied)?;
        self.commit.written();
        self.log.apply_snapshot_metadata(meta)?;
        self.commit.written();
        stage.clear()?;
        self.commit.written();
        // The snapshot replaced the cut table: an epoch open in it must hold here too
        // (this replica may lead before the release arrives).
        self.holds = self
            .state
            .open_holds()?
            .into_iter()
            .map(|h| (h.id, h.from))
            .collect();
        self.publish_hold();
        self.publish_members();
        // Writes whose entries the snapshot covers cannot be told apart from others'
        // any more: whether theirs was applied is unknown.
        self.settle_writes_through(meta.index, |shard| ShardError::OutcomeUnknown {
            shard,
            reason: "a Raft snapshot from the leader replaced the log the write was in".into(),
        });
        self.gauges.set_applied(meta.index);
        self.gauges
            .first_index
            .store(meta.index + 1, Ordering::Relaxed);
        self.gauges
            .snapshots_installed
            .fetch_add(1, Ordering::Relaxed);
        tracing::info!(
            index = meta.index,
            term = meta.term,
            versions = staged,
            "installed raft snapshot"
        );
        Ok(())
    }

    /// Compact the log once it holds more than the configured number of applied
    /// entries. Followers that need what was dropped get a snapshot instead.
    pub(super) fn maybe_compact(&mut self) -> Result<(), ReplicaError> {
        let applied = self.gauges.applied.load(Ordering::Relaxed);
        let first = self.gauges.first_index.load(Ordering::Relaxed);
        if first == 1 && applied >= 1 {
            // The configuration a group was created with is in no entry. A log that
            // still begins at index 1 could be replayed to a member added later, which
            // would then run without it; dropped, every leader sends such a member a
            // Raft snapshot, which carries the configuration.
            self.log.compact(2)?;
            self.commit.written();
            self.gauges
                .first_index
                .store(self.log.first_index()?, Ordering::Relaxed);
            return Ok(());
        }
        if applied < first || applied - first < self.log_compact_entries {
            return Ok(());
        }
        // Keep a tail so briefly lagging followers catch up from the log.
        let keep = (self.log_compact_entries / 4).max(1);
        let compact_to = applied.saturating_sub(keep).max(first);
        self.log.compact(compact_to)?;
        self.commit.written();
        let first = self.log.first_index()?;
        self.gauges.first_index.store(first, Ordering::Relaxed);
        tracing::debug!(first, applied, "compacted raft log");
        Ok(())
    }
}
