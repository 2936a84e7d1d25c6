//! Reading a shard's history out for a backup, and loading a restored state in.
//!
//! A backup reads a replica's own MVCC tree while `apply` goes on: versions at or
//! below the applied index never change, so a read bounded by a snapshot's cut is
//! exact without stopping anything. What can change underneath is history GC, which
//! deletes versions at or below the horizon; both reads therefore check the horizon
//! before and after they run and fail with `HistoryCollected` if it moved past what
//! they needed (the caller keeps the snapshot it reads retained, so this is a guard,
//! not a path taken in practice).

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::keys;
use crate::state::{AppliedState, ShardState};

/// One version of one key, as backups store it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyVersion {
    pub key: Vec<u8>,
    pub version: u64,
    /// `None`: the key was deleted at this version.
    pub value: Option<Vec<u8>>,
}

/// Which versions a backup read returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum HistoryRange {
    /// The state at `at`: each key's newest version `<= at`, if it is live. A full
    /// backup.
    StateAt { at: u64 },
    /// Every version in `(after, upto]`, tombstones included, newest first per key. An
    /// incremental backup: replayed over the state at `after`, it gives the state at
    /// any version up to `upto`.
    Between { after: u64, upto: u64 },
}

impl HistoryRange {
    /// The lowest version the read needs intact: the horizon must not pass it.
    fn needs(self) -> u64 {
        match self {
            HistoryRange::StateAt { at } => at,
            HistoryRange::Between { after, .. } => after,
        }
    }
}

impl ShardState {
    /// The versions `range` selects, in tree order (key ascending, newest first). Reads
    /// a consistent picture as long as the range lies at or below the applied index.
    ///
    /// `HistoryCollected` if the horizon is (or, checked at the end, became) above the
    /// lowest version the range needs.
    pub fn history(
        &self,
        range: HistoryRange,
    ) -> impl Iterator<Item = Result<KeyVersion>> + Send + 'static {
        self.history_after(range, None)
    }

    /// [`ShardState::history`], resumed after the version `after` (a key and version
    /// it returned before): what a read in pages, one call each, needs. A `StateAt`
    /// read returns one version per key, so it resumes at the next key.
    pub fn history_after(
        &self,
        range: HistoryRange,
        after: Option<(&[u8], u64)>,
    ) -> impl Iterator<Item = Result<KeyVersion>> + Send + 'static {
        let this = self.clone();
        let needs = range.needs();
        let start = self.check_horizon(needs).err();
        let mut failed = start.is_some();
        let mut last_ident: Option<Vec<u8>> = None;
        let from = after.map(|(key, version)| match range {
            HistoryRange::StateAt { .. } => keys::after_key(key),
            HistoryRange::Between { .. } => {
                // The least tree key above (key, version): versions sort newest first.
                let mut next = keys::encode_key(key, version);
                next.push(0);
                next
            }
        });
        let data = self.raw_data_from(from).filter_map(move |item| {
            if failed {
                return None;
            }
            let (k, v) = match item {
                Ok(pair) => pair,
                Err(e) => {
                    failed = true;
                    return Some(Err(e));
                }
            };
            let pick = (|| -> Result<Option<KeyVersion>> {
                let version = keys::key_version(&k)?;
                let ident = keys::key_identity(&k);
                let keep = match range {
                    HistoryRange::StateAt { at } => {
                        if version > at || last_ident.as_deref() == Some(ident) {
                            false
                        } else {
                            // The newest version at or below `at` decides the key.
                            last_ident = Some(ident.to_vec());
                            keys::decode_value(&v)?.is_some()
                        }
                    }
                    HistoryRange::Between { after, upto } => version > after && version <= upto,
                };
                if !keep {
                    return Ok(None);
                }
                let (key, version) = keys::decode_key(&k)?;
                let value = keys::decode_value(&v)?.map(<[u8]>::to_vec);
                Ok(Some(KeyVersion {
                    key,
                    version,
                    value,
                }))
            })();
            match pick {
                Ok(found) => found.map(Ok),
                Err(e) => {
                    failed = true;
                    Some(Err(e))
                }
            }
        });
        // The closing check: if GC raised the horizon past what we read while we read
        // it, some version may have vanished mid-scan.
        let end =
            std::iter::once(()).filter_map(move |()| this.check_horizon(needs).err().map(Err));
        start.map(Err).into_iter().chain(data).chain(end)
    }

    fn check_horizon(&self, needs: u64) -> Result<()> {
        let horizon = self.horizon()?;
        if needs < horizon {
            return Err(StoreError::HistoryCollected { horizon });
        }
        Ok(())
    }

    /// Load a restored shard: `versions` (in any order) become the whole data tree,
    /// the applied state becomes `applied`, and reads below `horizon` are refused (the
    /// history before the restored point is not there). For a fresh data directory
    /// only: it is not atomic, so the caller publishes the directory only after it
    /// returns. It flushes every `flush_every` versions, so sled can drop written
    /// pages and the footprint does not grow with the data.
    ///
    /// Versions go in one insert each, not in batches: nothing needs a batch's
    /// atomicity here, and sled 0.34 applies a batch under its exclusive concurrency
    /// lock with more work per op (single inserts loaded 1.7x faster in a
    /// measurement of 200 000 versions; docs/PERFORMANCE.md).
    pub fn load(
        &self,
        versions: impl IntoIterator<Item = KeyVersion>,
        applied: AppliedState,
        horizon: u64,
        flush_every: usize,
    ) -> Result<u64> {
        if self.raw_data().next().is_some() || self.applied()?.index != 0 {
            return Err(StoreError::invalid(format!(
                "shard {} already holds data; a restore loads only a fresh one",
                self.shard()
            )));
        }
        let mut unflushed = 0;
        let mut loaded = 0;
        for v in versions {
            if v.version > applied.index {
                return Err(StoreError::invalid(format!(
                    "shard {}: restored version {} is above the restored index {}",
                    self.shard(),
                    v.version,
                    applied.index
                )));
            }
            self.insert_raw(
                keys::encode_key(&v.key, v.version),
                keys::encode_value(v.value.as_deref()),
            )?;
            unflushed += 1;
            loaded += 1;
            if unflushed >= flush_every.max(1) {
                self.flush_raw()?;
                unflushed = 0;
            }
        }
        self.insert_raw(keys::HORIZON_KEY.to_vec(), horizon.to_be_bytes().to_vec())?;
        // Last, so a shard that says it applied something holds all of it.
        self.set_applied(applied)?;
        Ok(loaded)
    }
}
