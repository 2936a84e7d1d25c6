//! The crate's error type: what stopped the harness itself from doing its job.
//!
//! A *finding* (a history that is not linearizable, a lost write, diverged replicas) is
//! not an error: it is data in [`crate::RunReport`], so a run reports every finding it
//! has rather than the first. An error is a run that could not be carried out or
//! judged: a node that would not start, a fault that could not be injected, a cluster
//! that never recovered. The caller fails loudly on both.

use std::path::PathBuf;

use cairn_store::NodeId;

#[derive(Debug, thiserror::Error)]
pub enum ChaosError {
    /// A local IO operation failed (temporary directory, log file, socket).
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// The `cairn` binary could not be started.
    #[error("cannot spawn {binary}: {source}")]
    Spawn {
        binary: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A node the harness did not stop exited on its own (a crash is a finding, but
    /// the run cannot go on without the node); the log tail says why.
    #[error("node {node} exited unexpectedly with {status}; last log lines:\n{log}")]
    NodeExited {
        node: NodeId,
        status: String,
        log: String,
    },
    /// The cluster did not get to the state the harness waited for in time.
    #[error("{what} not reached within {waited:?}; last: {last}")]
    Timeout {
        what: String,
        waited: std::time::Duration,
        last: String,
    },
    /// The harness was asked something that does not fit the cluster (no such node,
    /// a node already running): a bug in the scenario.
    #[error("harness misuse: {0}")]
    Misuse(String),
    /// A run could not be carried to its end (the cause, the replay command and the
    /// nodes' logs are in the message); its findings so far are lost with it.
    #[error("{0}")]
    RunAborted(String),
    /// A node answered, but not what its API documents.
    #[error("node {node}: {what}")]
    Api { node: NodeId, what: String },
}

impl ChaosError {
    pub(crate) fn io(what: impl Into<String>, source: std::io::Error) -> ChaosError {
        ChaosError::Io {
            what: what.into(),
            source,
        }
    }
}

pub type Result<T, E = ChaosError> = std::result::Result<T, E>;
