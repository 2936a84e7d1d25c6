//! The multi-raft host's configuration, in Raft's own units (ticks).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_store::{NodeId, ShardId};

use crate::error::RaftError;

/// The most any configuration may set the frame cap to; tools that only cut frames
/// (the fault-injecting proxy) accept up to this.
pub const MAX_FRAME_CAP: usize = 1 << 30;

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
    /// Threads driving this node's replicas (shards dealt round-robin; each thread
    /// makes one sync cover all of its replicas' writes). More than the node's cores
    /// only adds thread switches.
    pub replica_threads: usize,
    /// Size limits that keep every entry and frame deliverable.
    pub limits: RaftLimits,
    /// Serve linearizable reads on a leader lease instead of a ReadIndex round per
    /// batch of reads ([`RaftConfig::lease_ticks`]). Off by default: it trades a
    /// round trip for an assumption about clocks ([`MAX_CLOCK_DRIFT_PERCENT`]).
    pub lease_reads: bool,
}

/// How much faster one node's clock may run than another's, in percent, for leader
/// leases to be safe. Lease reads assume it; nothing checks it.
pub const MAX_CLOCK_DRIFT_PERCENT: u64 = 10;

/// Ticks by which a replica's tick count may trail real time when it serves a read
/// (the pool catches up missed ticks before it takes new inputs, so at most one
/// period plus the time to take a round's inputs).
const LEASE_TICK_SLACK: u64 = 3;

/// Bytes a Raft message may carry in entries beyond the first (raft-rs's
/// `max_size_per_msg`): a message holds at least one entry, and then more while
/// they fit in this.
pub const MAX_MSG_ENTRY_BYTES: usize = 1024 * 1024;

/// Room a frame needs beyond its payload's bulk: the frame's envelope, a Raft
/// message's fields, a page's lengths and tags, an error's text.
pub const FRAME_ENVELOPE_BYTES: usize = 64 * 1024;

/// The size limits of the Raft layer. They compose: an entry fits a Raft message,
/// and a message fits a frame, by [`RaftLimits::validate`]; so no entry can exist
/// that the peer transport cannot carry (a replica whose next entry cannot be sent
/// would never replicate again).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftLimits {
    /// The largest frame on the peer transport, either way. Default 64 MiB.
    pub max_frame_bytes: usize,
    /// The largest command a replica accepts for proposal; larger ones are refused
    /// with `TooLarge` before they reach the log. Default 8 MiB.
    pub max_entry_bytes: usize,
}

impl Default for RaftLimits {
    fn default() -> Self {
        RaftLimits {
            max_frame_bytes: 64 * 1024 * 1024,
            max_entry_bytes: 8 * 1024 * 1024,
        }
    }
}

impl RaftLimits {
    /// The most payload (a page, a request) one frame can carry.
    pub fn frame_payload_bytes(&self) -> usize {
        self.max_frame_bytes.saturating_sub(FRAME_ENVELOPE_BYTES)
    }

    pub fn validate(&self) -> Result<(), RaftError> {
        let fail = |m: String| Err(RaftError::Config(m));
        if self.max_frame_bytes > MAX_FRAME_CAP {
            return fail(format!(
                "the frame cap ({} bytes) exceeds {} bytes",
                self.max_frame_bytes, MAX_FRAME_CAP
            ));
        }
        if self.max_entry_bytes == 0 {
            return fail("the entry limit must be positive".into());
        }
        // A message carries one entry of any size, then more up to
        // MAX_MSG_ENTRY_BYTES: the worst case is both.
        let message = self.max_entry_bytes.saturating_add(MAX_MSG_ENTRY_BYTES);
        if message > self.frame_payload_bytes() {
            return fail(format!(
                "an entry of {} bytes in a Raft message (plus {} of further entries and {} of envelope) does not fit the frame cap of {} bytes",
                self.max_entry_bytes, MAX_MSG_ENTRY_BYTES, FRAME_ENVELOPE_BYTES, self.max_frame_bytes
            ));
        }
        Ok(())
    }
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

    /// How long, in ticks from when a leader sent the heartbeats that a quorum then
    /// acknowledged, it may serve reads without another round; `None` without
    /// `lease_reads` or if the election timeout is too short to leave any lease.
    ///
    /// Why it is safe (`docs/ARCHITECTURE.md`, "Lease reads"): with `check_quorum`, a
    /// follower ignores vote requests for `election_ticks` ticks after it last heard
    /// from its leader, and replicas refuse all votes for their first `election_ticks`
    /// ticks after a start; so no quorum can elect a new leader until at least
    /// `election_ticks - 1` ticks of a follower's clock after the acknowledged
    /// heartbeat. The lease ends sooner by the clock drift bound and by the ticks the
    /// leader's own count may trail.
    pub fn lease_ticks(&self) -> Option<u64> {
        if !self.lease_reads {
            return None;
        }
        let election = self.election_ticks as u64;
        let drifted = election * (100 - MAX_CLOCK_DRIFT_PERCENT) / 100;
        drifted
            .checked_sub(LEASE_TICK_SLACK)
            .filter(|&ticks| ticks > 0)
    }

    pub fn validate(&self) -> Result<(), RaftError> {
        let fail = |m: &str| Err(RaftError::Config(m.to_owned()));
        if self.lease_reads && self.lease_ticks().is_none() {
            return fail("lease reads need an election timeout of at least 5 ticks");
        }
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
        if self.replica_threads == 0 {
            return fail("replica threads must be at least 1");
        }
        self.limits.validate()
    }
}
