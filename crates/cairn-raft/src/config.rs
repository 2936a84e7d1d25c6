//! The multi-raft host's configuration, in Raft's own units (ticks).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_store::{NodeId, ShardId};

use crate::error::RaftError;

/// Everything the multi-raft host needs to know; built by the server from its config.
#[derive(Debug, Clone)]
pub struct RaftConfig {
    /// This node's id (a Raft peer id in every shard group; never 0).
    pub node_id: NodeId,
    /// Identifies the cluster on the wire: peers presenting another id are refused.
    pub cluster_id: String,
    /// Number of data shards, fixed when the cluster is created. The node also hosts
    /// one more group, the meta group ([`RaftConfig::meta_shard`]).
    pub shards: u32,
    /// Every node of the cluster (this one included) and its peer address. Every shard
    /// has a replica on every node.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// Where this node accepts peer connections.
    pub listen: SocketAddr,
    /// Length of one logical clock tick.
    pub tick: Duration,
    /// Ticks without a heartbeat before a follower campaigns (randomised up to twice this).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats.
    pub heartbeat_ticks: usize,
    /// Compact a shard's log once it holds this many applied entries.
    pub log_compact_entries: u64,
    /// Ticks a read or write may wait inside a replica before it is failed.
    pub request_ticks: u64,
}

impl RaftConfig {
    /// The meta group's id: the group after the data shards. Keys hash to
    /// `0..shards`, so no user key ever reaches it.
    pub fn meta_shard(&self) -> ShardId {
        self.shards
    }

    /// Every Raft group this node hosts: the data shards, then the meta group.
    pub fn groups(&self) -> std::ops::RangeInclusive<ShardId> {
        0..=self.meta_shard()
    }

    pub fn validate(&self) -> Result<(), RaftError> {
        let fail = |m: &str| Err(RaftError::Config(m.to_owned()));
        if self.node_id == 0 {
            return fail("node id must be at least 1");
        }
        if !self.peers.contains_key(&self.node_id) {
            return fail("the initial cluster must include this node");
        }
        if self.shards == 0 {
            return fail("shards must be at least 1");
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return fail("election ticks must exceed heartbeat ticks, which must be at least 1");
        }
        if self.tick.is_zero() {
            return fail("tick must be positive");
        }
        if self.log_compact_entries == 0 {
            return fail("log compaction threshold must be at least 1");
        }
        Ok(())
    }
}
