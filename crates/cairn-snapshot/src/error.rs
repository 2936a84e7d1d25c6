//! What can go wrong taking or reading a snapshot, phrased as what the caller can do.

use cairn_raft::ShardError;

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// No snapshot has this id or name (never existed, deleted, or aborted).
    #[error("no snapshot {0}")]
    NotFound(String),
    /// The snapshot could not be completed; nothing can read it and every held
    /// response was released. Taking another one may succeed.
    #[error("snapshot {id} was aborted: {reason}")]
    Aborted { id: u64, reason: String },
    /// Another snapshot already has this name.
    #[error("a snapshot named `{0}` already exists")]
    NameTaken(String),
    #[error("{0}")]
    BadName(String),
    /// Cross-shard transactions kept committing for longer than an allocation waits
    /// (see `gate`); nothing was allocated. Retry.
    #[error("cross-shard transactions are being resolved; no snapshot was started, retry")]
    Blocked,
    /// Too many concurrent snapshot requests raced for the next id; retry.
    #[error("too many concurrent snapshot requests; retry")]
    Contended,
    /// A shard or the meta group could not serve the request.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// The registry holds something this version cannot read.
    #[error("corrupt snapshot registry: {0}")]
    Corrupt(String),
}

impl From<cairn_cluster::MetaError> for SnapshotError {
    fn from(e: cairn_cluster::MetaError) -> SnapshotError {
        match e {
            cairn_cluster::MetaError::Shard(e) => SnapshotError::Shard(e),
            cairn_cluster::MetaError::Corrupt(what) => SnapshotError::Corrupt(what),
        }
    }
}
