//! Where a request goes: `shard = hash(key) mod N`, then that shard's leader.
//!
//! The router sends a request to this node's replica when it leads the shard and over
//! the peer transport otherwise. A `NotLeader` or `Unavailable` answer means nothing
//! was changed, so it waits briefly (an election may be under way) and tries again
//! until the request's deadline; any other answer, including `OutcomeUnknown`, goes
//! back to the client as it is, because retrying a write whose fate is unknown could
//! apply it twice.

use std::sync::Arc;
use std::time::Duration;

use cairn_raft::{Consistency, MultiRaft, ShardError, ShardRequest, ShardResponse};
use cairn_snapshot::Shards;
use cairn_store::{shard_for_key, ShardId, Versioned};
use tokio::time::Instant;

/// Routes requests of the HTTP API to the shards' leaders.
pub struct Router {
    raft: Arc<MultiRaft>,
    shards: u32,
    timeout: Duration,
}

/// One page of keys across every shard.
pub struct Page<T> {
    pub items: Vec<(Vec<u8>, T)>,
    /// Whether keys may follow the last one of this page.
    pub more: bool,
}

impl Router {
    pub fn new(raft: Arc<MultiRaft>, shards: u32, timeout: Duration) -> Router {
        Router {
            raft,
            shards,
            timeout,
        }
    }

    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        shard_for_key(key, self.shards)
    }

    pub fn raft(&self) -> &MultiRaft {
        &self.raft
    }

    /// Execute a request on its shard's leader (or locally for stale reads).
    pub async fn execute(&self, req: ShardRequest) -> Result<ShardResponse, ShardError> {
        if req.is_local_read() {
            match self.raft.local().execute(req.clone()).await {
                // This replica has not applied that version yet; the leader has.
                Err(ShardError::Unavailable { .. }) if req.reads_fixed_version() => {}
                other => return other,
            }
        }
        let shard = req.shard();
        let me = self.raft.local().node_id();
        let deadline = Instant::now() + self.timeout;
        let mut pause = Duration::from_millis(10);
        loop {
            let result = match self.raft.leader_of(shard) {
                Some(leader) if leader == me => self.raft.local().execute(req.clone()).await,
                Some(leader) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    self.raft.forward(leader, req.clone(), left).await
                }
                None => Err(ShardError::Unavailable {
                    shard,
                    reason: "no leader is known (an election may be under way)".into(),
                }),
            };
            match result {
                Err(e) if e.is_retryable() && Instant::now() + pause < deadline => {
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }

    /// Live keys under `prefix` after `start_after`, across every shard, in key order;
    /// each shard read as `consistency` says for it (a snapshot reads every shard at
    /// its own cut).
    pub async fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
        consistency: impl Fn(ShardId) -> Consistency,
    ) -> Result<Page<Versioned>, ShardError> {
        self.fan_out(limit, |shard| ShardRequest::Scan {
            shard,
            prefix: prefix.to_vec(),
            start_after: start_after.map(<[u8]>::to_vec),
            limit,
            consistency: consistency(shard),
        })
        .await
    }

    /// Keys under `prefix` after `start_after` whose value differs between two
    /// versions per shard (`versions(shard) = (from, to)`), in key order.
    pub async fn diff(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: usize,
        versions: impl Fn(ShardId) -> (u64, u64),
    ) -> Result<Page<Option<Versioned>>, ShardError> {
        self.fan_out(limit, |shard| {
            let (from, to) = versions(shard);
            ShardRequest::Diff {
                shard,
                prefix: prefix.to_vec(),
                start_after: start_after.map(<[u8]>::to_vec),
                limit,
                from,
                to,
            }
        })
        .await
    }

    /// Ask every shard for a page of keys and merge them into one page in key order.
    async fn fan_out<T: PageItem>(
        &self,
        limit: usize,
        request: impl Fn(ShardId) -> ShardRequest,
    ) -> Result<Page<T>, ShardError> {
        let requests = (0..self.shards).map(|shard| self.execute(request(shard)));
        let mut items = Vec::new();
        let mut more = false;
        for answer in futures::future::join_all(requests).await {
            let page = T::from_response(answer?)?;
            // A full page from one shard may hide keys that sort before another
            // shard's last key, so the merged page ends there.
            more |= page.len() >= limit;
            items.extend(page);
        }
        items.sort_by(|a, b| a.0.cmp(&b.0));
        if items.len() > limit {
            items.truncate(limit);
            more = true;
        }
        Ok(Page { items, more })
    }
}

/// What a shard's page of keys carries.
pub trait PageItem: Sized {
    fn from_response(response: ShardResponse) -> Result<Vec<(Vec<u8>, Self)>, ShardError>;
}

impl PageItem for Versioned {
    fn from_response(response: ShardResponse) -> Result<Vec<(Vec<u8>, Self)>, ShardError> {
        match response {
            ShardResponse::Items(items) => Ok(items),
            other => Err(unexpected(other)),
        }
    }
}

impl PageItem for Option<Versioned> {
    fn from_response(response: ShardResponse) -> Result<Vec<(Vec<u8>, Self)>, ShardError> {
        match response {
            ShardResponse::Changes(changes) => Ok(changes),
            other => Err(unexpected(other)),
        }
    }
}

impl Shards for Router {
    fn shard_count(&self) -> u32 {
        self.shards
    }

    async fn execute(&self, request: ShardRequest) -> Result<ShardResponse, ShardError> {
        Router::execute(self, request).await
    }

    fn writes_seen(&self) -> u64 {
        // Every node holds a replica of every shard, so its own replicas see every
        // write (a little late on a follower, which only delays the next snapshot).
        self.raft.writes_applied()
    }

    fn leads_meta(&self) -> bool {
        let meta = self.raft.config().meta_shard();
        self.raft.leader_of(meta) == Some(self.raft.local().node_id())
    }
}

/// A shard answered with the wrong kind of response: a bug, reported as such.
pub fn unexpected(response: ShardResponse) -> ShardError {
    tracing::error!(?response, "shard answered with an unexpected response kind");
    ShardError::Storage {
        shard: 0,
        reason: "internal error: unexpected response kind".into(),
    }
}
