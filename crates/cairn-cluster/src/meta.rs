//! The meta group as a small replicated key-value store.
//!
//! The meta group runs the same MVCC state machine as a data shard; the cluster's own
//! records live in it under reserved prefixes, one per owner ([`crate::keyspace`]). Every read here is linearizable and every
//! write a conditional batch, so records survive any node and concurrent writers
//! cannot both win.
//!
//! The protocols that keep records here (snapshot registry, transaction decisions)
//! decide in I/O-free state machines that ask for one [`MetaStep`] at a time and take
//! the answer back ([`ReadAnswer`], [`WriteAnswer`]). [`Meta`] is how a node carries a
//! step out; the deterministic simulator carries the same steps through its virtual
//! network to its simulated meta group. Nothing here interprets a record.

use cairn_raft::ControlRequest;
use cairn_store::{
    ApplyOutcome, Command, Condition, OpKind, Page, PageLimit, ShardId, Versioned, WriteOp,
};

use crate::Shards;

/// What can go wrong reading or writing the meta group.
#[derive(Debug, thiserror::Error)]
pub enum MetaError {
    /// The meta group could not serve the request (no leader, outcome unknown, ...).
    #[error(transparent)]
    Shard(#[from] cairn_raft::ShardError),
    /// The meta group answered something this version cannot make sense of.
    #[error("corrupt meta group record: {0}")]
    Corrupt(String),
}

/// What an I/O-free protocol machine asks its driver to do next on the meta group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaStep<T> {
    /// A linearizable read of one key; answer with a [`ReadAnswer`].
    Read(Vec<u8>),
    /// One conditional batch; answer with a [`WriteAnswer`].
    Write(Vec<WriteOp>),
    /// Pause (the driver's backoff and deadline decide how long), then resume the
    /// machine. Asked only while the driver last said it could still wait; a pause
    /// past the deadline returns at once and the machine then gives up.
    Wait,
    /// The machine is finished.
    Done(T),
}

/// The meta group's answer to [`MetaStep::Read`]: the key's value and version.
pub type ReadAnswer = Result<Option<Versioned>, MetaError>;

/// The meta group's answer to [`MetaStep::Write`]: `Ok(Ok(version))` written,
/// `Ok(Err(op))` refused by op `op`'s condition (nothing written), `Err` if the
/// outcome is not known to be either.
pub type WriteAnswer = Result<Result<u64, usize>, MetaError>;

/// Reads and writes the meta group through [`Shards`].
pub struct Meta<'a, S: Shards> {
    shards: &'a S,
}

impl<'a, S: Shards> Meta<'a, S> {
    pub fn new(shards: &'a S) -> Self {
        Meta { shards }
    }

    fn group(&self) -> ShardId {
        self.shards.shard_count()
    }

    /// The current value of `key`, with its version (for conditional updates).
    pub async fn get(&self, key: Vec<u8>) -> Result<Option<Versioned>, MetaError> {
        let shard = self.group();
        let request = ControlRequest::Get { shard, key };
        Ok(self.shards.control(request).await?.into_value(shard)?)
    }

    /// One page of at most `limit` keys under `prefix`, after `start_after`, in key
    /// order (fewer if their bytes reach the page budget; `more` says keys may follow).
    pub async fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page<Versioned>, MetaError> {
        let shard = self.group();
        let request = ControlRequest::Scan {
            shard,
            prefix: prefix.to_vec(),
            start_after,
            limit: PageLimit {
                items: limit,
                bytes: self.shards.page_bytes(),
            },
        };
        Ok(self.shards.control(request).await?.into_items(shard)?)
    }

    /// Every key under `prefix`, page by page.
    pub async fn scan_all(&self, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Versioned)>, MetaError> {
        let mut all = Vec::new();
        loop {
            let after = all.last().map(|(k, _): &(Vec<u8>, Versioned)| k.clone());
            let page = self.scan(prefix, after, 1000).await?;
            all.extend(page.items);
            if !page.more {
                return Ok(all);
            }
        }
    }

    /// Apply a batch atomically; `Ok(None)` if a condition failed (nothing written),
    /// else the version it was written at.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<Option<u64>, MetaError> {
        Ok(self.try_write(ops).await?.ok())
    }

    /// Apply a batch atomically: `Ok(Ok(version))` if written, `Ok(Err(op))` if the
    /// condition of op `op` (the first that failed) refused it and nothing was written.
    pub async fn try_write(&self, ops: Vec<WriteOp>) -> Result<Result<u64, usize>, MetaError> {
        let shard = self.group();
        match self.shards.propose(shard, Command::Batch(ops)).await? {
            ApplyOutcome::Applied { version, .. } => Ok(Ok(version)),
            ApplyOutcome::Rejected { op, .. } => Ok(Err(op)),
            other => Err(MetaError::Corrupt(format!(
                "a batch on the meta group applied as {other:?}"
            ))),
        }
    }
}

/// A put of `value` at `key` if `condition` holds.
pub fn put(key: Vec<u8>, value: Vec<u8>, condition: Condition) -> WriteOp {
    WriteOp {
        key,
        kind: OpKind::Put(value),
        condition,
    }
}

/// An unconditional delete of `key`.
pub fn delete(key: Vec<u8>) -> WriteOp {
    WriteOp {
        key,
        kind: OpKind::Delete,
        condition: Condition::Always,
    }
}
