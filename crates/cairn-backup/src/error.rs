//! What can go wrong writing, reading or verifying a backup. Errors about a file name
//! the file, so an operator knows which object is bad.

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// A file's bytes do not decode, or do not match the manifest.
    #[error("corrupt backup data: {0}")]
    Corrupt(String),
    /// A named file of a backup is bad; `reason` says how.
    #[error("{file}: {reason}")]
    BadFile { file: String, reason: String },
    /// A file the manifest (or a chain) needs is not at the destination.
    #[error("{0}: missing")]
    Missing(String),
    /// The caller asked for something impossible (records out of order, bad URL).
    #[error("{0}")]
    Invalid(String),
    #[error("{what}: {source}")]
    Io {
        what: &'static str,
        source: std::io::Error,
    },
    #[error("object store: {0}")]
    Store(#[from] object_store::Error),
    /// No backup (in the catalog or at the destination) is the one asked for; the
    /// message says which and what there is instead.
    #[error("{0}")]
    NotFound(String),
    /// An incremental backup cannot be taken: the history since its parent is gone.
    #[error("{0}")]
    HistoryGone(String),
    /// The backup's snapshot could not be taken or read.
    #[error("snapshot: {0}")]
    Snapshot(#[from] cairn_snapshot::SnapshotError),
    /// This node's replica of a shard could not be read.
    #[error("local replica: {0}")]
    Local(#[from] cairn_store::StoreError),
    /// Reading a shard held by other nodes failed.
    #[error("reading a shard from its replicas: {0}")]
    Remote(#[from] cairn_raft::ShardError),
    /// The destination is outside every allowed root (`--backup-allow`): a client may
    /// not make the node write wherever it likes.
    #[error("{0}")]
    NotAllowed(String),
    /// The backup key is missing, unreadable or not the one the backup needs.
    #[error("backup key: {0}")]
    Key(String),
    /// A backup to the same destination is running.
    #[error("{0}")]
    Busy(String),
    /// Someone else (the sweeper) decided this backup's fate first.
    #[error("{0}")]
    Superseded(String),
}

impl BackupError {
    /// An `Io` error maker for `map_err`.
    pub(crate) fn io(what: &'static str) -> impl Fn(std::io::Error) -> BackupError {
        move |source| BackupError::Io { what, source }
    }

    /// The same error, said of `file`.
    pub(crate) fn in_file(self, file: &str) -> BackupError {
        match self {
            BackupError::BadFile { .. } | BackupError::Missing(_) => self,
            other => BackupError::BadFile {
                file: file.to_owned(),
                reason: other.to_string(),
            },
        }
    }
}

/// The catalog lives in the meta group: its faults read as the snapshot registry's
/// did (the same HTTP answers, the same retry advice).
impl From<cairn_cluster::MetaError> for BackupError {
    fn from(e: cairn_cluster::MetaError) -> BackupError {
        BackupError::Snapshot(e.into())
    }
}
