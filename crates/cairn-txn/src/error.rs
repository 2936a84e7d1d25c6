//! How a transaction can fail, phrased as what the caller can do.

use cairn_raft::ShardError;

#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    /// The condition of op `op` (an index into the caller's ops) did not hold;
    /// nothing was written.
    #[error("the condition on op {op} failed; nothing was written")]
    Rejected {
        op: usize,
        /// The key's live version (`None`: absent).
        current: Option<u64>,
    },
    /// Op `op`'s key stayed locked by another transaction until the deadline;
    /// nothing was written. Retry.
    #[error("op {op}'s key is locked by transaction {txn}; nothing was written")]
    Locked { op: usize, txn: u64 },
    /// The transaction was aborted (a shard could not prepare in time, or the
    /// sweeper gave up on it); nothing was written. Retry.
    #[error("the transaction was aborted ({reason}); nothing was written")]
    Aborted { reason: String },
    /// The commit decision could not be learned before the deadline: the
    /// transaction may or may not have been committed. Read before retrying.
    #[error("the outcome of transaction {txn} is unknown: {reason}")]
    OutcomeUnknown { txn: u64, reason: String },
    /// A shard or the meta group could not serve; nothing was written.
    #[error(transparent)]
    Shard(#[from] ShardError),
    /// The meta group answered something this version cannot read.
    #[error("meta group: {0}")]
    Meta(String),
    #[error("corrupt transaction record: {0}")]
    Corrupt(String),
}
