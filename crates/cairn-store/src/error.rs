//! The crate's one error type.
//!
//! Callers act on the variant: `Sled`, `LogEngine` and `Corrupt` are fatal for the replica (the disk
//! can no longer be trusted, so the node must stop serving the shard); `Raft` carries
//! the log errors raft-rs itself understands (`Compacted`, `Unavailable`, ...) and is
//! handed back to it unchanged; `Invalid` and `AlreadyApplied` are caller bugs or
//! replays the caller can detect and skip.

use crate::ShardId;

/// Everything that can go wrong in `cairn-store`.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// sled failed (IO error, or sled found its own files corrupt). Fatal.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The Raft log engine failed (IO error, or it found its own files corrupt). Fatal.
    #[error("raft log engine: {0}")]
    LogEngine(#[from] raft_engine::Error),
    /// Bytes read from disk do not decode. `what` names the tree and key. Fatal: never
    /// served, never "repaired" silently.
    #[error("corrupt data on disk: {what}")]
    Corrupt {
        /// Which record failed to decode, and why.
        what: String,
    },
    /// A Raft storage condition (`Compacted`, `Unavailable`, `SnapshotOutOfDate`,
    /// `SnapshotTemporarilyUnavailable`) or a protobuf encoding failure; passed back to
    /// raft-rs as is.
    #[error("raft storage: {0}")]
    Raft(#[from] raft::Error),
    /// The caller asked for something the log cannot do (a gap when appending,
    /// overwriting compacted entries, compacting past the last entry). A bug in the caller.
    #[error("invalid store request: {reason}")]
    Invalid {
        /// What was asked and why it cannot be done.
        reason: String,
    },
    /// `ShardState::apply` was given a log index the state machine has already applied
    /// (a replay after restart or after a snapshot). Nothing was written; the caller
    /// should skip the entry. Re-applying would evaluate conditions against later state.
    #[error("shard {shard}: entry {index} already applied (applied index {applied})")]
    AlreadyApplied {
        /// The shard.
        shard: ShardId,
        /// The index that was offered.
        index: u64,
        /// The shard's applied index.
        applied: u64,
    },
    /// A read asked for a version older than the shard's history horizon: the versions
    /// it needs may have been collected. Never answered with whatever is left.
    #[error("history below version {horizon} has been collected")]
    HistoryCollected {
        /// The oldest version still readable.
        horizon: u64,
    },
}

/// `Result` with [`StoreError`].
pub type Result<T> = std::result::Result<T, StoreError>;

impl StoreError {
    pub(crate) fn corrupt(what: impl Into<String>) -> StoreError {
        StoreError::Corrupt { what: what.into() }
    }

    pub(crate) fn invalid(reason: impl Into<String>) -> StoreError {
        StoreError::Invalid {
            reason: reason.into(),
        }
    }

    pub(crate) fn raft_storage(e: raft::StorageError) -> StoreError {
        StoreError::Raft(raft::Error::Store(e))
    }
}

/// raft-rs only understands its own error type: its storage conditions pass through,
/// everything else becomes `StorageError::Other`, which makes raft-rs stop the replica
/// (the documented contract for any storage failure).
impl From<StoreError> for raft::Error {
    fn from(e: StoreError) -> raft::Error {
        match e {
            StoreError::Raft(e) => e,
            other => raft::Error::Store(raft::StorageError::Other(Box::new(other))),
        }
    }
}
