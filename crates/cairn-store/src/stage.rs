//! Staging area for a Raft snapshot streamed from a peer.
//!
//! The pairs arrive in chunks over the network; writing them to their own tree
//! (`shard/{id}/incoming`) keeps the live state untouched until the whole snapshot is
//! here, and [`crate::ShardState::install`] then swaps it in with one batch. A crash
//! mid-transfer leaves only a stale stage, which the next transfer clears.

use crate::error::Result;

/// Where a Raft snapshot streamed from a peer is written before it is installed.
#[derive(Clone)]
pub struct SnapshotStage {
    tree: sled::Tree,
}

impl std::fmt::Debug for SnapshotStage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SnapshotStage")
            .field("len", &self.tree.len())
            .finish()
    }
}

impl SnapshotStage {
    pub(crate) fn new(tree: sled::Tree) -> SnapshotStage {
        SnapshotStage { tree }
    }

    /// Drop everything staged (before a new transfer, or after installing).
    pub fn clear(&self) -> Result<()> {
        self.tree.clear()?;
        Ok(())
    }

    /// Stage raw pairs as produced by [`crate::ShardState::export`]. Validated on install.
    pub fn write(&self, pairs: &[(Vec<u8>, Vec<u8>)]) -> Result<()> {
        let mut batch = sled::Batch::default();
        for (k, v) in pairs {
            batch.insert(k.as_slice(), v.as_slice());
        }
        self.tree.apply_batch(batch)?;
        Ok(())
    }

    /// Number of staged pairs. O(n) in sled.
    pub fn len(&self) -> usize {
        self.tree.len()
    }

    /// Whether nothing is staged.
    pub fn is_empty(&self) -> bool {
        self.tree.is_empty()
    }

    pub(crate) fn iter(&self) -> sled::Iter {
        self.tree.iter()
    }
}
