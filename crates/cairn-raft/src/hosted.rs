//! The replicas this node hosts right now, by group id: what request handling and the
//! peer transport look a group up in.
//!
//! Placement changes at run time (a replica is opened when a group adds this node, and
//! dropped when it removes it), so the table is shared and changes under a lock that
//! is only ever held to copy a slot out: nothing waits on a replica while holding it,
//! and the Raft loop never takes it.

use std::sync::{Arc, RwLock};

use crate::replica::inbox::Inbox;
use crate::replica::ReplicaGauges;
use cairn_store::{ShardId, ShardState};

/// One hosted replica, as the rest of the node reaches it.
#[derive(Clone)]
pub(crate) struct Slot {
    pub inbox: Inbox<ShardState>,
    pub state: ShardState,
    pub gauges: Arc<ReplicaGauges>,
}

/// Every group's slot on this node (`None`: another node holds the group).
pub(crate) struct HostedReplicas {
    slots: RwLock<Vec<Option<Slot>>>,
}

impl HostedReplicas {
    /// A table for `groups` groups, none hosted yet.
    pub fn new(groups: usize) -> HostedReplicas {
        HostedReplicas {
            slots: RwLock::new(vec![None; groups]),
        }
    }

    /// How many groups the cluster has (hosted or not).
    pub fn groups(&self) -> usize {
        self.read().len()
    }

    /// Whether `group` has a replica here (nothing cloned: routing asks per request).
    pub fn contains(&self, group: ShardId) -> bool {
        self.read().get(group as usize).is_some_and(Option::is_some)
    }

    pub fn get(&self, group: ShardId) -> Option<Slot> {
        self.read().get(group as usize).cloned().flatten()
    }

    pub fn inbox(&self, group: ShardId) -> Option<Inbox<ShardState>> {
        self.read()
            .get(group as usize)
            .and_then(|s| s.as_ref().map(|s| s.inbox.clone()))
    }

    pub fn gauges(&self, group: ShardId) -> Option<Arc<ReplicaGauges>> {
        self.read()
            .get(group as usize)
            .and_then(|s| s.as_ref().map(|s| s.gauges.clone()))
    }

    /// Every hosted slot with its group id.
    pub fn all(&self) -> Vec<(ShardId, Slot)> {
        self.read()
            .iter()
            .enumerate()
            .filter_map(|(g, s)| s.clone().map(|s| (g as ShardId, s)))
            .collect()
    }

    /// The hosted groups' ids, ascending.
    pub fn ids(&self) -> Vec<ShardId> {
        self.read()
            .iter()
            .enumerate()
            .filter(|(_, s)| s.is_some())
            .map(|(g, _)| g as ShardId)
            .collect()
    }

    /// Put (or, with `None`, take away) a group's slot; returns the one it replaced.
    pub fn set(&self, group: ShardId, slot: Option<Slot>) -> Option<Slot> {
        let mut slots = self
            .slots
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        match slots.get_mut(group as usize) {
            Some(place) => std::mem::replace(place, slot),
            None => None,
        }
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Option<Slot>>> {
        // A slot is replaced whole; a panicked writer leaves nothing half-written.
        self.slots
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}
