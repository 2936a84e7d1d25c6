//! A replica's live figures, published through atomics so that routing, status pages
//! and waiters never queue behind the Raft loop.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use cairn_store::NodeId;

/// A replica's live figures, written by the replica thread only.
#[derive(Debug, Default)]
pub struct ReplicaGauges {
    /// The leader's node id, 0 when unknown.
    pub leader: AtomicU64,
    pub term: AtomicU64,
    pub commit: AtomicU64,
    pub applied: AtomicU64,
    pub first_index: AtomicU64,
    pub snapshots_installed: AtomicU64,
    /// Write batches applied since the process started (markers and releases do not
    /// count): how automatic snapshots tell whether anything was written.
    pub writes_applied: AtomicU64,
    /// The lowest cut of an open snapshot epoch, `u64::MAX` when none is open. Reads
    /// served without the leader (stale and fixed-version reads) must not reveal state
    /// above it. Stored before `applied` moves past a marker (release/acquire).
    pub hold_from: AtomicU64,
    /// Batches of reads served on the leader lease, with no ReadIndex round.
    pub lease_reads: AtomicU64,
    /// The group's voters as this replica's configuration names them (both halves
    /// of a joint one), sorted.
    voters: std::sync::Mutex<Vec<NodeId>>,
    /// Its learners, likewise.
    learners: std::sync::Mutex<Vec<NodeId>>,
    /// The applied index again, for waiters ([`ReplicaGauges::wait_applied`]): sent
    /// once per batch of applied entries, not per entry.
    applied_watch: tokio::sync::watch::Sender<u64>,
}

impl ReplicaGauges {
    /// A fresh set: nothing known, nothing held.
    pub fn new() -> ReplicaGauges {
        ReplicaGauges {
            hold_from: AtomicU64::new(u64::MAX),
            ..ReplicaGauges::default()
        }
    }

    /// Record the applied index and wake whoever waits for it.
    pub(super) fn set_applied(&self, index: u64) {
        self.applied.store(index, Ordering::Release);
        self.applied_watch.send_replace(index);
    }

    /// Wait until this replica has applied `index`, or `timeout` passes (false).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut applied = self.applied_watch.subscribe();
        let reached = tokio::time::timeout(timeout, applied.wait_for(|&a| a >= index)).await;
        matches!(reached, Ok(Ok(_)))
    }

    /// The newest version a read without the leader may see: everything applied, but
    /// nothing above an open epoch's cut (the version at the cut equals the state
    /// below it, since a marker writes no data).
    pub fn unheld_version(&self) -> u64 {
        let applied = self.applied.load(Ordering::Acquire);
        applied.min(self.hold_from.load(Ordering::Acquire))
    }

    pub(super) fn set_members(&self, voters: Vec<NodeId>, learners: Vec<NodeId>) {
        *self
            .voters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = voters;
        *self
            .learners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = learners;
    }

    /// Whether `node` is one of the group's voters as this replica last knew them.
    pub fn is_voter(&self, node: NodeId) -> bool {
        self.voters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&node)
    }

    /// The group's learners as this replica last knew them.
    pub fn learners(&self) -> Vec<NodeId> {
        self.learners
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The group's voters as this replica last knew them (empty for a replica that
    /// has not yet received its group's configuration).
    pub fn voters(&self) -> Vec<NodeId> {
        self.voters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    pub fn leader(&self) -> Option<NodeId> {
        match self.leader.load(Ordering::Relaxed) {
            0 => None,
            id => Some(id),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_waiter_wakes_when_the_applied_index_reaches_its_index() {
        let gauges = std::sync::Arc::new(ReplicaGauges::new());
        gauges.set_applied(3);
        assert!(gauges.wait_applied(3, Duration::from_secs(5)).await);
        let waiter = {
            let gauges = gauges.clone();
            tokio::spawn(async move { gauges.wait_applied(5, Duration::from_secs(60)).await })
        };
        gauges.set_applied(4);
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished(), "woke before index 5 was applied");
        gauges.set_applied(5);
        assert!(waiter.await.expect("the waiter"));
        // Never reached: false at the timeout, not a hang.
        assert!(!gauges.wait_applied(9, Duration::from_millis(10)).await);
    }
}
