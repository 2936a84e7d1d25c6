//! Errors of the node as a whole (starting, identity, configuration). Request errors
//! are [`crate::api::ApiError`].

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The configuration is incomplete or contradictory; the message names the setting.
    #[error("configuration: {0}")]
    Config(String),
    /// The data directory belongs to another node or cluster; starting would mix data.
    #[error("{0}")]
    Identity(String),
    #[error(transparent)]
    Store(#[from] cairn_store::StoreError),
    #[error(transparent)]
    Raft(#[from] cairn_raft::RaftError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
}
