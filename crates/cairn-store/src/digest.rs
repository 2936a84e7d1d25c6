//! Replica digests: a short fingerprint of a shard's state machine at a version, so
//! that the replicas of a shard on different nodes can be compared without shipping
//! their data. The chaos harness reads them after healing a cluster
//! (`GET /v1/debug/digest`) to check that every replica converged.
//!
//! A digest covers a version `at` the replica has applied, never "whatever it has now",
//! because replicas apply at their own pace; comparing at a common `at` (at most every
//! replica's applied index) makes equal logs give equal digests. It has two parts:
//!
//! - **state at `at`**: every live key's newest version at or below `at`, as
//!   (key, version, value). History GC never changes it for an `at` at or above the
//!   horizon, so replicas that collected at different moments still agree.
//! - **history in `(after, at]`**: every version in that range, tombstones included.
//!   GC deletes nothing above the horizon, so with `after` at or above every replica's
//!   horizon this is exact too, and it sees what the state has overwritten (a value
//!   written twice, a tombstone under a later write).
//!
//! Both are BLAKE3 over length-prefixed fields in tree order, so no two different
//! sequences of versions hash alike by concatenation. Non-goal: speed. A digest reads
//! the shard's whole data tree; it is a test and operations tool, not a hot path.

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::history::{HistoryRange, KeyVersion};
use crate::state::ShardState;
use crate::ShardId;

/// A replica's fingerprint at one version (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardDigest {
    /// The shard.
    pub shard: ShardId,
    /// The version the digest describes.
    pub at: u64,
    /// The replica's applied index when it was computed (at least `at`).
    pub applied: u64,
    /// The replica's history horizon when it was computed.
    pub horizon: u64,
    /// Live keys at `at`.
    pub live_keys: u64,
    /// BLAKE3 (hex) of the state at `at`.
    pub state: String,
    /// The exclusive lower end of the history part.
    pub after: u64,
    /// Versions in `(after, at]`, tombstones included.
    pub versions: u64,
    /// BLAKE3 (hex) of the versions in `(after, at]`.
    pub history: String,
}

impl ShardState {
    /// The digest of this replica at `at`, with the history part over `(after, at]`.
    ///
    /// `Invalid` if `at` is above the applied index (that state is not decided here
    /// yet) or `after > at`; `HistoryCollected` if `at` or `after` is below the horizon.
    pub fn digest(&self, at: u64, after: u64) -> Result<ShardDigest> {
        let applied = self.applied()?.index;
        if at > applied {
            return Err(StoreError::invalid(format!(
                "shard {}: digest at {at}, but only {applied} is applied here",
                self.shard()
            )));
        }
        if after > at {
            return Err(StoreError::invalid(format!(
                "shard {}: digest history from {after} to {at} is an empty range",
                self.shard()
            )));
        }
        let horizon = self.horizon()?;
        let (live_keys, state) = fold(self.history(HistoryRange::StateAt { at }))?;
        let (versions, history) = fold(self.history(HistoryRange::Between { after, upto: at }))?;
        Ok(ShardDigest {
            shard: self.shard(),
            at,
            applied,
            horizon,
            live_keys,
            state,
            after,
            versions,
            history,
        })
    }
}

/// Count and hash a sequence of versions.
fn fold(versions: impl Iterator<Item = Result<KeyVersion>>) -> Result<(u64, String)> {
    let mut hasher = blake3::Hasher::new();
    let mut count = 0u64;
    for version in versions {
        let v = version?;
        count += 1;
        hasher.update(&(v.key.len() as u64).to_be_bytes());
        hasher.update(&v.key);
        hasher.update(&v.version.to_be_bytes());
        match &v.value {
            None => {
                hasher.update(&[0]);
            }
            Some(value) => {
                hasher.update(&[1]);
                hasher.update(&(value.len() as u64).to_be_bytes());
                hasher.update(value);
            }
        }
    }
    Ok((count, hasher.finalize().to_hex().to_string()))
}

#[cfg(test)]
mod tests {
    use crate::command::{Command, Condition, OpKind, WriteOp};
    use crate::{NodeStore, ShardState};

    fn put(key: &str, value: &str) -> Command {
        Command::Batch(vec![WriteOp {
            key: key.as_bytes().to_vec(),
            kind: OpKind::Put(value.as_bytes().to_vec()),
            condition: Condition::Always,
        }])
    }

    fn delete(key: &str) -> Command {
        Command::Batch(vec![WriteOp {
            key: key.as_bytes().to_vec(),
            kind: OpKind::Delete,
            condition: Condition::Always,
        }])
    }

    fn replica(dir: &tempfile::TempDir, name: &str, log: &[Command]) -> ShardState {
        let store = NodeStore::open(&dir.path().join(name)).unwrap();
        let state = store.shard_state(0).unwrap();
        for (i, command) in log.iter().enumerate() {
            state.apply(i as u64 + 1, 1, Some(command)).unwrap();
        }
        state
    }

    #[test]
    fn equal_logs_give_equal_digests_and_any_difference_shows() {
        let dir = tempfile::tempdir().unwrap();
        let log = vec![put("a", "1"), put("b", "2"), delete("a"), put("c", "3")];
        let one = replica(&dir, "one", &log);
        let mut longer = log.clone();
        longer.push(put("d", "4"));
        let two = replica(&dir, "two", &longer);
        // At a common version the replicas agree, although one applied more.
        assert_eq!(
            one.digest(4, 0).unwrap().state,
            two.digest(4, 0).unwrap().state
        );
        assert_eq!(
            one.digest(4, 0).unwrap().history,
            two.digest(4, 0).unwrap().history
        );
        assert_ne!(
            two.digest(5, 0).unwrap().state,
            two.digest(4, 0).unwrap().state
        );
        let d = one.digest(4, 0).unwrap();
        assert_eq!((d.live_keys, d.versions, d.applied), (2, 4, 4));
        // One different value, same versions: both parts differ.
        let mut other = log.clone();
        other[1] = put("b", "2'");
        let three = replica(&dir, "three", &other);
        assert_ne!(three.digest(4, 0).unwrap().state, d.state);
        assert_ne!(three.digest(4, 0).unwrap().history, d.history);
        // A write applied twice shows in the history part: its value at two versions.
        let twice = replica(
            &dir,
            "twice",
            &[put("a", "1"), put("b", "2"), put("b", "2"), put("c", "3")],
        );
        let reference = replica(
            &dir,
            "reference",
            &[put("a", "1"), put("x", "0"), put("b", "2"), put("c", "3")],
        );
        let (t, r) = (twice.digest(4, 1).unwrap(), reference.digest(4, 1).unwrap());
        assert_ne!(t.history, r.history);
        assert_eq!((t.versions, r.versions), (3, 3));
        // Above both copies, the parts agree again.
        let (t, r) = (twice.digest(4, 3).unwrap(), reference.digest(4, 3).unwrap());
        assert_eq!(t.history, r.history);
    }

    #[test]
    fn a_digest_beyond_the_applied_index_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let state = replica(&dir, "one", &[put("a", "1")]);
        assert!(state.digest(2, 0).is_err());
        assert!(state.digest(1, 2).is_err());
        assert!(state.digest(1, 1).is_ok());
    }
}
