//! Where a request goes: `shard = hash(key) mod N`, then that shard's leader.
//!
//! The router sends a request to this node's replica when it leads the shard and over
//! the peer transport otherwise. For a shard this node holds a replica of, its replica
//! knows the leader; for one it does not (a replication factor below the cluster's
//! size), the router remembers where it last found the leader, starts from one of
//! the shard's voters when it does not know, and follows the leader a refusing
//! replica names (as TiKV's clients keep a region cache). A `NotLeader` or `Unavailable` answer means nothing
//! was changed, so it waits briefly (an election may be under way) and tries again
//! until the request's deadline; any other answer, including `OutcomeUnknown`, goes
//! back to the client as it is, because retrying a write whose fate is unknown could
//! apply it twice.

use std::future::Future;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use cairn_cluster::Shards;
use cairn_raft::{
    Backoff, Consistency, ControlPath, ControlRequest, Members, MultiRaft, ShardError,
    ShardRequest, ShardResponse,
};
use cairn_store::page::PageBuilder;
use cairn_store::{
    shard_for_key, ApplyOutcome, NodeId, Page, PageLimit, ShardId, Versioned, WriteOp,
};
use tokio::time::Instant;

use crate::config::Config;

/// The least byte budget a shard gets toward a page (unless the page's own is less).
const MIN_SHARD_PAGE_BYTES: usize = 256 * 1024;

/// Routes the HTTP API's client calls to the shards' leaders. It can make client calls
/// only: the cluster's own commands go through [`Control`], which the coordinators
/// hold and the handlers do not.
pub struct Router {
    raft: Arc<MultiRaft>,
    shards: u32,
    timeout: Duration,
    /// Byte budget of a page (`Config::max_page_bytes`).
    page_bytes: usize,
    /// Leaders of the groups this node holds no replica of.
    remote: RemoteLeaders,
}

/// Where the leaders and voters of groups without a local replica were last found.
struct RemoteLeaders {
    me: NodeId,
    /// Per group: the node that last answered as its leader, or 0.
    hint: Vec<AtomicU64>,
    /// Per group: which candidate to try next when no leader is known.
    next: Vec<AtomicUsize>,
    /// Per group: its members as last learned (at first, the placement the cluster
    /// was created with; replicas move, so a [`Members`] answer replaces them).
    known: std::sync::RwLock<Vec<KnownMembers>>,
}

/// One group's members as a node last learned them.
#[derive(Debug, Clone, Default)]
struct KnownMembers {
    voters: Vec<NodeId>,
    learners: Vec<NodeId>,
}

impl RemoteLeaders {
    fn new(raft: &MultiRaft) -> RemoteLeaders {
        let cfg = raft.config();
        let known: Vec<KnownMembers> = cfg
            .groups()
            .map(|g| KnownMembers {
                voters: cfg.voters(g),
                learners: Vec::new(),
            })
            .collect();
        RemoteLeaders {
            me: cfg.node_id,
            hint: known.iter().map(|_| AtomicU64::new(0)).collect(),
            next: known.iter().map(|_| AtomicUsize::new(0)).collect(),
            known: std::sync::RwLock::new(known),
        }
    }

    /// `group`'s members as last learned.
    fn members(&self, group: ShardId) -> KnownMembers {
        self.known
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(group as usize)
            .cloned()
            .unwrap_or_default()
    }

    /// `group`'s voters as last learned.
    fn voters(&self, group: ShardId) -> Vec<NodeId> {
        self.members(group).voters
    }

    /// The candidates for `group`'s leader, in the order they are tried: its voters
    /// as last learned (how many, the second value), then every other member
    /// (`nodes`) but this one: a group's replicas may have moved since this node last
    /// learned where they are.
    fn candidates(&self, group: ShardId, nodes: &[NodeId]) -> (Vec<NodeId>, usize) {
        let mut out = self.voters(group);
        out.retain(|&n| n != self.me);
        let voters = out.len();
        for &n in nodes {
            if n != self.me && !out.contains(&n) {
                out.push(n);
            }
        }
        (out, voters)
    }

    /// Remember `group`'s members as its leader named them.
    fn learn_members(&self, group: ShardId, members: &Members) {
        let mut voters = members.voters.clone();
        voters.extend(
            members
                .outgoing
                .iter()
                .filter(|n| !members.voters.contains(n)),
        );
        voters.sort_unstable();
        if let Some(slot) = self
            .known
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get_mut(group as usize)
        {
            *slot = KnownMembers {
                voters,
                learners: members.learners.clone(),
            };
        }
        if let (Some(leader), Some(hint)) = (members.leader, self.hint.get(group as usize)) {
            hint.store(leader, Ordering::Relaxed);
        }
    }

    /// Where to send the next attempt at `group`: its known leader, else the next
    /// candidate in turn (voters first), passing over those whose links are down (a
    /// leader that died is forgotten as soon as its link drops, not after a request
    /// timed out on it).
    fn target(
        &self,
        group: ShardId,
        nodes: impl FnOnce() -> Vec<NodeId>,
        reachable: impl Fn(NodeId) -> bool,
    ) -> Option<NodeId> {
        let g = group as usize;
        let hint = self.hint.get(g)?;
        match hint.load(Ordering::Relaxed) {
            0 => {}
            leader if reachable(leader) => return Some(leader),
            _ => hint.store(0, Ordering::Relaxed),
        }
        let (candidates, voters) = self.candidates(group, &nodes());
        if candidates.is_empty() {
            return None;
        }
        // Voters first: a try counter that restarts each pass over the voters would
        // need a lock; instead every other try goes to a voter.
        let turn = self.next[g].fetch_add(1, Ordering::Relaxed);
        let pool = if voters > 0 && turn.is_multiple_of(2) {
            &candidates[..voters]
        } else {
            &candidates[..]
        };
        let start = turn / 2;
        let mut order = (0..pool.len()).map(|i| pool[(start + i) % pool.len()]);
        let first = pool[start % pool.len()];
        Some(order.find(|&v| reachable(v)).unwrap_or(first))
    }

    /// What an attempt sent to `node` taught: it leads (an answer), it named another
    /// leader, or it could not serve (try another candidate next).
    fn learn<T>(&self, group: ShardId, node: NodeId, result: &Result<T, ShardError>) {
        let Some(hint) = self.hint.get(group as usize) else {
            return;
        };
        let leader = match result {
            Ok(_) => node,
            Err(e) => match e.retry_at() {
                Some(Some(named)) => named,
                Some(None) => 0,
                // A final answer came from the leader (or from whoever it names).
                None => return,
            },
        };
        hint.store(leader, Ordering::Relaxed);
    }

    /// The leader last found, without choosing a voter to try.
    fn known(&self, group: ShardId) -> Option<NodeId> {
        let leader = self.hint.get(group as usize)?.load(Ordering::Relaxed);
        (leader != 0).then_some(leader)
    }
}

/// Where one attempt of a routed call goes.
enum Hop {
    /// This node's replica leads the shard.
    Here,
    /// Another node leads it; the attempt may take this long.
    To(NodeId, Duration),
}

impl Router {
    pub fn new(raft: Arc<MultiRaft>, config: &Config) -> Router {
        Router {
            remote: RemoteLeaders::new(&raft),
            raft,
            shards: config.shards,
            timeout: config.request_timeout(),
            page_bytes: config.max_page_bytes,
        }
    }

    pub fn shard_of(&self, key: &[u8]) -> ShardId {
        shard_for_key(key, self.shards)
    }

    /// Number of data shards.
    pub fn shard_count(&self) -> u32 {
        self.shards
    }

    /// Byte budget of one page read from a shard.
    pub fn page_bytes(&self) -> usize {
        self.page_bytes
    }

    pub fn raft(&self) -> &MultiRaft {
        &self.raft
    }

    /// `group`'s leader as this node knows it: from its replica if it holds one,
    /// else where a request last found it.
    pub fn leader_of(&self, group: ShardId) -> Option<NodeId> {
        if self.raft.local().hosts(group) {
            self.raft.leader_of(group)
        } else {
            self.remote.known(group)
        }
    }

    /// `group`'s voters as this node knows them: from its replica if it holds one
    /// that has its configuration, else as last learned.
    pub fn voters_of(&self, group: ShardId) -> Vec<NodeId> {
        match self.raft.local().gauges(group).map(|g| g.voters()) {
            Some(voters) if !voters.is_empty() => voters,
            _ => self.remote.voters(group),
        }
    }

    /// `group`'s learners as this node knows them (as [`Router::voters_of`]).
    pub fn learners_of(&self, group: ShardId) -> Vec<NodeId> {
        match self.raft.local().gauges(group) {
            Some(g) if !g.voters().is_empty() => g.learners(),
            _ => self.remote.members(group).learners,
        }
    }

    /// Remember `group`'s members as its leader named them (routing and status).
    pub fn learn_members(&self, group: ShardId, members: &Members) {
        self.remote.learn_members(group, members);
    }

    /// Apply `ops` (all of one shard) atomically on the shard's leader. A key locked
    /// by a cross-shard transaction is waited for until the request's deadline (the
    /// transaction resolves within a round trip, or the sweeper ends it); after that
    /// the `Locked` outcome is the answer.
    pub async fn write(
        &self,
        shard: ShardId,
        ops: Vec<WriteOp>,
    ) -> Result<ApplyOutcome, ShardError> {
        let mut locked = Backoff::contention(Instant::now() + self.timeout);
        loop {
            let request = ShardRequest::Write {
                shard,
                ops: ops.clone(),
            };
            match self.execute(request).await?.into_written(shard)? {
                // Nothing was written: trying again is safe.
                ApplyOutcome::Locked { .. } if locked.can_wait() => locked.wait().await,
                outcome => return Ok(outcome),
            };
        }
    }

    /// The newest live version of `key` (in `shard`), read as `consistency` says.
    pub async fn get(
        &self,
        shard: ShardId,
        key: Vec<u8>,
        consistency: Consistency,
    ) -> Result<Option<Versioned>, ShardError> {
        self.execute(ShardRequest::Get {
            shard,
            key,
            consistency,
        })
        .await?
        .into_value(shard)
    }

    /// One shard's page of live keys under `prefix` after `start_after`.
    pub async fn scan_shard(
        &self,
        shard: ShardId,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: PageLimit,
        consistency: Consistency,
    ) -> Result<Page<Versioned>, ShardError> {
        self.execute(ShardRequest::Scan {
            shard,
            prefix: prefix.to_vec(),
            start_after: start_after.map(<[u8]>::to_vec),
            limit,
            consistency,
        })
        .await?
        .into_items(shard)
    }

    /// Execute a client call on its shard's leader (or locally for local reads).
    async fn execute(&self, req: ShardRequest) -> Result<ShardResponse, ShardError> {
        // Only a voter's state answers on its own: a learner may still be empty.
        if req.is_local_read() && self.raft.local().votes_in(req.shard()) {
            match self.raft.local().execute(req.clone()).await {
                // This replica has not applied that version yet; the leader has.
                Err(ShardError::Unavailable { .. }) if req.reads_fixed_version() => {}
                other => return other,
            }
        }
        self.route(req.shard(), |hop| {
            let req = req.clone();
            async move {
                match hop {
                    Hop::Here => self.raft.local().execute(req).await,
                    Hop::To(leader, left) => self.raft.forward(leader, req, left).await,
                }
            }
        })
        .await
    }

    /// Make attempts at `shard`'s leader until one answers with something other than
    /// "nothing changed, try again" (`NotLeader`, `Unavailable`) or the request's
    /// deadline is near. Any other answer, `OutcomeUnknown` included, is final: a
    /// write whose fate is unknown is never sent twice.
    async fn route<T, F, Fut>(&self, shard: ShardId, mut attempt: F) -> Result<T, ShardError>
    where
        F: FnMut(Hop) -> Fut,
        Fut: Future<Output = Result<T, ShardError>>,
    {
        let me = self.raft.local().node_id();
        let deadline = Instant::now() + self.timeout;
        let mut backoff = Backoff::election(deadline);
        // Hops taken on a refusing replica's word, without a pause: bounded, so two
        // replicas that name each other cannot keep a request spinning.
        let mut followed = 0;
        // The leader the last refusal named, tried next whatever this node believes:
        // the local replica's view can be stale (a replica its group removed and
        // that is not yet dropped, a learner cut off from the leader), and so can
        // this node's view of its links.
        let mut named: Option<NodeId> = None;
        loop {
            // The local replica knows the leader, unless there is none here or it is
            // new and has not heard from one yet: then the remembered way.
            let local = if self.raft.local().hosts(shard) {
                self.raft.leader_of(shard)
            } else {
                None
            };
            let remote = local.is_none();
            let target = match (named.take(), local) {
                (Some(leader), _) => Some(leader),
                (None, Some(leader)) => Some(leader),
                (None, None) => self.remote.target(
                    shard,
                    || self.raft.members().into_keys().collect(),
                    |node| self.raft.reachable(node),
                ),
            };
            let result = match target {
                Some(leader) if leader == me => attempt(Hop::Here).await,
                Some(leader) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    attempt(Hop::To(leader, left)).await
                }
                None => Err(ShardError::Unavailable {
                    shard,
                    reason: "no leader is known (an election may be under way)".into(),
                }),
            };
            if let Some(node) = target {
                if remote {
                    self.remote.learn(shard, node, &result);
                }
                if let Err(e) = &result {
                    let other = e.retry_at().flatten().filter(|&n| n != node);
                    if other.is_some() && followed < 3 {
                        followed += 1;
                        named = other;
                        continue;
                    }
                }
            }
            match result {
                Err(e) if e.is_retryable() && backoff.can_wait() => {
                    backoff.wait().await;
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
        let pages = (0..self.shards).map(|shard| {
            self.scan_shard(shard, prefix, start_after, per_shard, consistency(shard))
        });
        let mut all = Vec::new();
        for page in futures::future::join_all(pages).await {
            all.push(page?);
        }
        Ok(merge(all, limit))
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
        let pages = (0..self.shards).map(|shard| {
            let (from, to) = versions(shard);
            let req = ShardRequest::Diff {
                shard,
                prefix: prefix.to_vec(),
                start_after: start_after.map(<[u8]>::to_vec),
                limit: per_shard,
                from,
                to,
            };
            async move { self.execute(req).await?.into_changes(shard) }
        });
        let mut all = Vec::new();
        for page in futures::future::join_all(pages).await {
            all.push(page?);
        }
        Ok(merge(all, limit))
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
}

/// The cluster's own protocols' way to its groups (the meta group included): control
/// calls, routed to leaders like client calls. Built once per node from the node's
/// [`ControlPath`]; the snapshot, transaction and backup coordinators hold it.
pub struct Control {
    router: Arc<Router>,
    path: ControlPath,
}

impl Control {
    pub fn new(router: Arc<Router>, path: ControlPath) -> Control {
        Control { router, path }
    }
}

impl Control {
    /// How many groups node `node` leads, asked of its replica of `group` (which it
    /// must hold); `None` if it did not answer within `timeout`.
    pub async fn leads_of(&self, node: NodeId, group: ShardId, timeout: Duration) -> Option<u32> {
        let ask = ControlRequest::Progress { shard: group };
        let answer = if node == self.router.raft.local().node_id() {
            self.path.local(ask).await
        } else {
            self.path.forward(node, ask, timeout).await
        };
        Some(answer.ok()?.into_progress(group).ok()?.leads)
    }

    pub fn raft(&self) -> &MultiRaft {
        &self.router.raft
    }

    /// Make a control call on node `node` itself (not routed to a leader): opening
    /// and dropping replicas.
    pub async fn call_node(
        &self,
        node: NodeId,
        req: ControlRequest,
        timeout: Duration,
    ) -> Result<ShardResponse, ShardError> {
        if node == self.router.raft.local().node_id() {
            self.path.local(req).await
        } else {
            self.path.forward(node, req, timeout).await
        }
    }

    /// See [`Router::learn_members`].
    pub fn learn_members(&self, group: ShardId, members: &Members) {
        self.router.learn_members(group, members);
    }
}

impl Shards for Control {
    fn shard_count(&self) -> u32 {
        self.router.shards
    }

    async fn control(&self, request: ControlRequest) -> Result<ShardResponse, ShardError> {
        self.router
            .route(request.shard(), |hop| {
                let request = request.clone();
                async move {
                    match hop {
                        Hop::Here => self.path.local(request).await,
                        Hop::To(leader, left) => self.path.forward(leader, request, left).await,
                    }
                }
            })
            .await
    }

    async fn applied_here(&self, shard: ShardId, index: u64, timeout: Duration) -> bool {
        match self.router.raft.local().gauges(shard) {
            Some(gauges) => gauges.wait_applied(index, timeout).await,
            None => false,
        }
    }

    fn hosts(&self, shard: ShardId) -> bool {
        // A voter's replica: a learner a move just opened may hold nothing yet.
        self.router.raft.local().votes_in(shard)
    }

    async fn writes_seen(&self) -> Option<u64> {
        // This node's replicas count the writes of the shards it holds; each other
        // shard is asked for its count (the sum only has to move when data does).
        let raft = &self.router.raft;
        let asked = (0..self.router.shards)
            .filter(|&s| !raft.local().votes_in(s))
            .map(|shard| async move {
                self.control(ControlRequest::Progress { shard })
                    .await?
                    .into_progress(shard)
            });
        let mut seen = raft.writes_applied();
        for count in futures::future::join_all(asked).await {
            seen = seen.wrapping_add(count.ok()?.writes_applied);
        }
        Some(seen)
    }

    fn page_bytes(&self) -> usize {
        self.router.page_bytes
    }

    fn leads_meta(&self) -> bool {
        let raft = &self.router.raft;
        let meta = raft.config().meta_shard();
        raft.leader_of(meta) == Some(raft.local().node_id())
    }

    fn meta_get_here(&self, key: &[u8]) -> Option<cairn_store::Versioned> {
        let local = self.router.raft.local();
        let meta = self.router.raft.config().meta_shard();
        if !local.votes_in(meta) {
            return None;
        }
        // The newest applied version: the meta group holds no alignment windows.
        local.state(meta)?.get(key, u64::MAX).ok()?
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
    /// Bytes of the value, for the page's budget.
    fn value_len(&self) -> usize;
}

impl PageItem for Versioned {
    fn value_len(&self) -> usize {
        self.value.len()
    }
}

impl PageItem for Option<Versioned> {
    fn value_len(&self) -> usize {
        self.as_ref().map_or(0, |v| v.value.len())
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
