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
use cairn_store::page::PageBuilder;
use cairn_store::{shard_for_key, Page, PageLimit, ShardId, Versioned};
use tokio::time::Instant;

use crate::config::Config;

/// The least byte budget a shard gets toward a page (unless the page's own is less).
const MIN_SHARD_PAGE_BYTES: usize = 256 * 1024;

/// Routes requests of the HTTP API to the shards' leaders.
pub struct Router {
    raft: Arc<MultiRaft>,
    shards: u32,
    timeout: Duration,
    /// Byte budget of a page (`Config::max_page_bytes`).
    page_bytes: usize,
}

impl Router {
    pub fn new(raft: Arc<MultiRaft>, config: &Config) -> Router {
        Router {
            raft,
            shards: config.shards,
            timeout: config.request_timeout(),
            page_bytes: config.max_page_bytes,
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

    /// Live keys under `prefix` after `start_after`, across every shard, in key order,
    /// one page within `limit`; each shard read as `consistency` says for it (a
    /// snapshot reads every shard at its own cut).
    pub async fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: PageLimit,
        consistency: impl Fn(ShardId) -> Consistency,
    ) -> Result<Page<Versioned>, ShardError> {
        let per_shard = self.shard_limit(limit);
        self.fan_out(limit, |shard| ShardRequest::Scan {
            shard,
            prefix: prefix.to_vec(),
            start_after: start_after.map(<[u8]>::to_vec),
            limit: per_shard,
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
        limit: PageLimit,
        versions: impl Fn(ShardId) -> (u64, u64),
    ) -> Result<Page<Option<Versioned>>, ShardError> {
        let per_shard = self.shard_limit(limit);
        self.fan_out(limit, |shard| {
            let (from, to) = versions(shard);
            ShardRequest::Diff {
                shard,
                prefix: prefix.to_vec(),
                start_after: start_after.map(<[u8]>::to_vec),
                limit: per_shard,
                from,
                to,
            }
        })
        .await
    }

    /// What each shard may return toward a page of `limit`: every key the page may
    /// hold, but its share of the bytes (at least [`MIN_SHARD_PAGE_BYTES`], so many
    /// shards do not shrink pages to a key each), so the answers together stay near
    /// the page's budget. Each shard returns at least one key, so pages move on.
    fn shard_limit(&self, limit: PageLimit) -> PageLimit {
        let share = limit.bytes / self.shards.max(1) as usize;
        PageLimit {
            items: limit.items,
            bytes: share.max(limit.bytes.min(MIN_SHARD_PAGE_BYTES)),
        }
    }

    /// Ask every shard for a page of keys and merge them into one page in key order.
    async fn fan_out<T: PageItem>(
        &self,
        limit: PageLimit,
        request: impl Fn(ShardId) -> ShardRequest,
    ) -> Result<Page<T>, ShardError> {
        let requests = (0..self.shards).map(|shard| self.execute(request(shard)));
        let mut pages = Vec::new();
        for answer in futures::future::join_all(requests).await {
            pages.push(T::from_response(answer?)?);
        }
        Ok(merge(pages, limit))
    }
}

/// Merge shards' pages into one page in key order within `limit`.
///
/// A shard's page that stopped at its limit says nothing of its keys after its last
/// one, and those may sort before another shard's keys: the merged page ends at the
/// smallest last key of such a page, or it could skip keys the client never sees.
pub fn merge<T: PageItem>(pages: Vec<Page<T>>, limit: PageLimit) -> Page<T> {
    let bound = pages
        .iter()
        .filter(|p| p.more)
        .filter_map(|p| p.items.last().map(|(k, _)| k.clone()))
        .min();
    let mut items: Vec<_> = pages.into_iter().flat_map(|p| p.items).collect();
    items.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(bound) = &bound {
        items.retain(|(k, _)| k <= bound);
    }
    let mut page = PageBuilder::new(limit);
    for (key, item) in items {
        let cost = Page::<T>::cost(key.len(), item.value_len());
        if !page.push(key, item, cost) {
            break;
        }
    }
    let mut page = page.finish();
    page.more |= bound.is_some();
    page
}

/// What a shard's page of keys carries.
pub trait PageItem: Sized {
    fn from_response(response: ShardResponse) -> Result<Page<Self>, ShardError>;
    /// Bytes of the value, for the page's budget.
    fn value_len(&self) -> usize;
}

impl PageItem for Versioned {
    fn from_response(response: ShardResponse) -> Result<Page<Self>, ShardError> {
        match response {
            ShardResponse::Items(page) => Ok(page),
            other => Err(unexpected(other)),
        }
    }

    fn value_len(&self) -> usize {
        self.value.len()
    }
}

impl PageItem for Option<Versioned> {
    fn from_response(response: ShardResponse) -> Result<Page<Self>, ShardError> {
        match response {
            ShardResponse::Changes(page) => Ok(page),
            other => Err(unexpected(other)),
        }
    }

    fn value_len(&self) -> usize {
        self.as_ref().map_or(0, |v| v.value.len())
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

    fn page_bytes(&self) -> usize {
        self.page_bytes
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    /// One shard's page of `keys` (sorted) after `after`, as the store cuts it.
    fn shard_page(
        keys: &BTreeMap<Vec<u8>, usize>,
        after: Option<&[u8]>,
        limit: PageLimit,
    ) -> Page<Versioned> {
        let mut page = PageBuilder::new(limit);
        for (key, &len) in keys.range::<[u8], _>((
            after.map_or(std::ops::Bound::Unbounded, std::ops::Bound::Excluded),
            std::ops::Bound::Unbounded,
        )) {
            let item = Versioned {
                version: 1,
                value: vec![0; len],
            };
            if !page.push(key.clone(), item, Page::<Versioned>::cost(key.len(), len))
                || page.is_full()
            {
                break;
            }
        }
        page.finish()
    }

    proptest! {
        /// Paging through merged pages visits every key of every shard once, in
        /// order, whatever the count and byte limits and however values are sized.
        #[test]
        fn merged_pages_visit_every_key_once_in_order(
            shards in proptest::collection::vec(
                proptest::collection::btree_map(proptest::collection::vec(0u8..4, 1..4), 0usize..50, 0..12),
                1..5,
            ),
            items in 1usize..6,
            bytes in 0usize..200,
        ) {
            let limit = PageLimit { items, bytes };
            let per_shard = PageLimit { items, bytes: bytes / shards.len() };
            let mut want: Vec<Vec<u8>> = shards.iter().flat_map(|s| s.keys().cloned()).collect();
            want.sort();
            want.dedup();
            // Shards hold disjoint keys (a key hashes to one shard): keep each key in
            // the first shard that has it.
            let mut seen = std::collections::BTreeSet::new();
            let shards: Vec<BTreeMap<Vec<u8>, usize>> = shards
                .into_iter()
                .map(|s| s.into_iter().filter(|(k, _)| seen.insert(k.clone())).collect())
                .collect();
            let mut got = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            for _ in 0..1000 {
                let pages = shards.iter().map(|s| shard_page(s, after.as_deref(), per_shard)).collect();
                let page = merge(pages, limit);
                prop_assert!(page.items.len() <= items);
                prop_assert!(!page.more || !page.items.is_empty(), "a page with more is never empty");
                after = page.items.last().map(|(k, _)| k.clone());
                got.extend(page.items.into_iter().map(|(k, _)| k));
                if !page.more {
                    break;
                }
            }
            prop_assert_eq!(got, want);
        }
    }
}
