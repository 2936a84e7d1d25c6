//! A node database's logical image: every tree's pairs as they stand at one moment,
//! loadable into a fresh database later.
//!
//! The deterministic simulator (`cairn-sim`) uses images to model a crash that loses
//! what was not fsynced. It runs every node on a temporary database and takes an image
//! where production would have made the writes durable (at every group-commit sync),
//! and now and then after other writes, because sled recovers a prefix of its write
//! stream and a crash may keep part of what followed the last sync. A crashed node
//! restarts from one of those images, and `Replica::open` recovers from it exactly as
//! it would from a real disk.
//!
//! Why logical and not a copy of sled's files: a file copy is crash-consistent only
//! while nothing writes, and sled 0.34 writes its I/O buffers from background threads
//! and flushes again when the last handle drops; its segments are also 512 KiB each,
//! too large to copy at every sync of thousands per run. An image taken on the single
//! simulator thread right after a sync is exactly the durable state at that point,
//! and cheap (values are reference-counted). What it does not exercise is sled's own
//! recovery from torn files: that belongs to sled's crash tests, not to Cairn's.
//!
//! Not for production use: a temporary database disappears when its last handle is
//! dropped, by design.

use crate::error::Result;
use crate::NodeStore;

/// Every tree of a node database and its pairs, in tree order. Clone is cheap.
#[derive(Clone, Default)]
pub struct StoreImage {
    trees: Vec<(sled::IVec, Vec<(sled::IVec, sled::IVec)>)>,
}

impl std::fmt::Debug for StoreImage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreImage")
            .field("trees", &self.trees.len())
            .field("pairs", &self.pairs())
            .finish()
    }
}

impl StoreImage {
    /// Number of pairs over all trees.
    pub fn pairs(&self) -> usize {
        self.trees.iter().map(|(_, pairs)| pairs.len()).sum()
    }
}

impl NodeStore {
    /// A database in a temporary file, removed when the last handle is dropped, with
    /// sled's background flusher off: durability is whatever the caller models.
    pub fn open_temporary() -> Result<NodeStore> {
        let db = sled::Config::new()
            .temporary(true)
            .flush_every_ms(None)
            .cache_capacity(16 * 1024 * 1024)
            .open()?;
        Ok(NodeStore {
            db: db.clone(),
            disk: crate::StateDisk { db, durable: None },
            // The simulator's images are of sled alone, so the logs stay there.
            engine: None,
            logs: Default::default(),
        })
    }

    /// The database's contents now. Exact only if nothing writes meanwhile.
    pub fn image(&self) -> Result<StoreImage> {
        let mut trees = Vec::new();
        for name in self.db.tree_names() {
            let tree = self.db.open_tree(&name)?;
            let pairs = tree.iter().collect::<std::result::Result<Vec<_>, _>>()?;
            trees.push((name, pairs));
        }
        Ok(StoreImage { trees })
    }

    /// A new temporary database (see [`NodeStore::open_temporary`]) holding `image`.
    pub fn open_image(image: &StoreImage) -> Result<NodeStore> {
        let store = NodeStore::open_temporary()?;
        for (name, pairs) in &image.trees {
            let tree = store.db.open_tree(name)?;
            let mut batch = sled::Batch::default();
            for (k, v) in pairs {
                batch.insert(k.clone(), v.clone());
            }
            tree.apply_batch(batch)?;
        }
        Ok(store)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_holds_what_was_written_before_it_and_nothing_after() {
        let store = NodeStore::open_temporary().unwrap();
        let state = store.shard_state(0).unwrap();
        state.apply(1, 1, None).unwrap();
        let image = store.image().unwrap();
        state.apply(2, 1, None).unwrap();

        let reopened = NodeStore::open_image(&image).unwrap();
        assert_eq!(reopened.shard_state(0).unwrap().applied().unwrap().index, 1);
        assert_eq!(state.applied().unwrap().index, 2);
        assert!(image.pairs() >= 1);
    }
}
