//! The multi-raft host's configuration, in Raft's own units (ticks).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_store::{NodeId, ShardId};

use crate::error::RaftError;

/// A peer's address as configured: `HOST:PORT`, where the host is an IP address or a
/// name resolved each time the peer is dialled (so compose services and Kubernetes
/// StatefulSets can name their peers, and a peer that moves keeps its name).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PeerAddr {
    host: String,
    port: u16,
}

impl PeerAddr {
    /// The host part: an IP address or a name.
    pub fn host(&self) -> &str {
        &self.host
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The address, if the host is an IP address (no lookup needed).
    pub fn ip(&self) -> Option<SocketAddr> {
        let ip: std::net::IpAddr = self.host.trim_matches(['[', ']']).parse().ok()?;
        Some(SocketAddr::new(ip, self.port))
    }

    /// Every address the host resolves to now, in the resolver's order.
    pub async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        if let Some(addr) = self.ip() {
            return Ok(vec![addr]);
        }
        Ok(tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .collect())
    }
}

impl std::fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl From<SocketAddr> for PeerAddr {
    fn from(addr: SocketAddr) -> PeerAddr {
        let host = match addr {
            SocketAddr::V4(a) => a.ip().to_string(),
            SocketAddr::V6(a) => format!("[{}]", a.ip()),
        };
        PeerAddr {
            host,
            port: addr.port(),
        }
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = String;

    /// `HOST:PORT`: an IPv4 or bracketed IPv6 address, or a DNS name, then a port.
    fn from_str(text: &str) -> Result<PeerAddr, String> {
        if let Ok(addr) = text.parse::<SocketAddr>() {
            return Ok(addr.into());
        }
        let (host, port) = text
            .rsplit_once(':')
            .ok_or_else(|| format!("`{text}` is not HOST:PORT"))?;
        let port: u16 = port
            .parse()
            .map_err(|_| format!("`{port}` in `{text}` is not a port"))?;
        let name_ok = !host.is_empty()
            && host.len() <= 253
            && host.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    && !label.starts_with('-')
                    && !label.ends_with('-')
            });
        if !name_ok {
            return Err(format!(
                "`{host}` in `{text}` is neither an IP address nor a host name"
            ));
        }
        Ok(PeerAddr {
            host: host.to_ascii_lowercase(),
            port,
        })
    }
}

impl<'de> serde::Deserialize<'de> for PeerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<PeerAddr, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

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
    /// Every node of the cluster (this one included) and its peer address.
    pub peers: BTreeMap<NodeId, PeerAddr>,
    /// Which of `peers` hold each group's replicas ([`RaftConfig::voters`]).
    pub placement: Placement,
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
    /// Mutual TLS on the peer port (`transport::tls`); `None` is plaintext.
    pub tls: Option<crate::transport::tls::PeerTls>,
}

/// How a cluster's groups were placed on its nodes when it was created: the voters
/// each group's log starts with. After the first start a group's own log (its
/// `ConfState`) is what says who its voters are; this only seeds it, so every node
/// derives the same placement from its start-up flags without talking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Placement {
    /// Every group on every node: the replication factor is the cluster size.
    #[default]
    Everywhere,
    /// Each group on `replicas` nodes, dealt like cards in node-id order: group `g`
    /// takes the nodes at positions `g * replicas ..` (mod the node count), so every
    /// node holds within one of the average number of replicas.
    Spread { replicas: usize },
}

impl Placement {
    /// The placement that gives every group `replicas` voters among `nodes` nodes:
    /// [`Placement::Everywhere`] when that is all of them.
    pub fn with_factor(replicas: usize, nodes: usize) -> Placement {
        if replicas >= nodes {
            Placement::Everywhere
        } else {
            Placement::Spread { replicas }
        }
    }

    /// The replicas each group has among `nodes` nodes.
    pub fn factor(&self, nodes: usize) -> usize {
        match *self {
            Placement::Everywhere => nodes,
            Placement::Spread { replicas } => replicas.min(nodes),
        }
    }

    /// The voters `group` starts with among `nodes` (sorted, distinct).
    pub fn voters(&self, group: ShardId, nodes: &[NodeId]) -> Vec<NodeId> {
        let mut sorted = nodes.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let n = sorted.len();
        let take = self.factor(n);
        if take == n {
            return sorted;
        }
        let start = (group as usize * take) % n;
        let mut voters: Vec<NodeId> = (0..take).map(|i| sorted[(start + i) % n]).collect();
        voters.sort_unstable();
        voters
    }
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

    /// Every Raft group of the cluster: the data shards, then the meta group.
    pub fn groups(&self) -> std::ops::RangeInclusive<ShardId> {
        0..=self.meta_shard()
    }

    /// The voters `group` was created with ([`Placement`]).
    pub fn voters(&self, group: ShardId) -> Vec<NodeId> {
        let nodes: Vec<NodeId> = self.peers.keys().copied().collect();
        self.placement.voters(group, &nodes)
    }

    /// Whether this node holds a replica of `group`.
    pub fn hosts(&self, group: ShardId) -> bool {
        group <= self.meta_shard() && self.voters(group).contains(&self.node_id)
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
        if self.placement.factor(self.peers.len()) == 0 {
            return fail("the replication factor must be at least 1");
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peer_addresses_are_ips_or_host_names() {
        let ip: PeerAddr = "10.0.0.7:9081".parse().unwrap();
        assert_eq!(ip.ip(), Some("10.0.0.7:9081".parse().unwrap()));
        assert_eq!(ip.to_string(), "10.0.0.7:9081");
        let v6: PeerAddr = "[::1]:9081".parse().unwrap();
        assert_eq!(v6.ip(), Some("[::1]:9081".parse().unwrap()));
        assert_eq!(v6.to_string(), "[::1]:9081", "displayed as SocketAddr is");
        let name: PeerAddr = "Node-1.Cairn.svc:9081".parse().unwrap();
        assert_eq!((name.host(), name.port()), ("node-1.cairn.svc", 9081));
        assert_eq!(name.ip(), None);
        for bad in [
            "",
            "node1",
            "node1:",
            ":9081",
            "node1:99999",
            "no_de:1",
            "-a:1",
            "a..b:1",
        ] {
            assert!(bad.parse::<PeerAddr>().is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn spread_placement_gives_each_node_within_one_of_the_average() {
        for nodes in 1..=9u64 {
            for replicas in 1..=5usize {
                for groups in [1u32, 2, 9, 65, 257] {
                    let ids: Vec<NodeId> = (1..=nodes).map(|i| i * 10).collect();
                    let placement = Placement::with_factor(replicas, ids.len());
                    let mut held = BTreeMap::<NodeId, usize>::new();
                    for g in 0..groups {
                        let voters = placement.voters(g, &ids);
                        assert_eq!(voters.len(), replicas.min(ids.len()));
                        assert!(voters.windows(2).all(|w| w[0] < w[1]), "{voters:?}");
                        assert!(voters.iter().all(|v| ids.contains(v)));
                        for v in voters {
                            *held.entry(v).or_default() += 1;
                        }
                    }
                    let most = ids.iter().map(|i| held.get(i).copied().unwrap_or(0)).max();
                    let least = ids.iter().map(|i| held.get(i).copied().unwrap_or(0)).min();
                    assert!(
                        most.unwrap() - least.unwrap() <= 1,
                        "{nodes} nodes, rf {replicas}, {groups} groups: {held:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn placement_is_the_same_whatever_order_the_nodes_come_in() {
        let p = Placement::Spread { replicas: 3 };
        assert_eq!(p.voters(4, &[5, 1, 3, 2, 4]), p.voters(4, &[1, 2, 3, 4, 5]));
        assert_eq!(p.voters(0, &[1, 2, 3, 4, 5]), vec![1, 2, 3]);
        assert_eq!(p.voters(1, &[1, 2, 3, 4, 5]), vec![1, 4, 5]);
        assert_eq!(p.voters(4, &[1, 2, 3, 4, 5]), vec![3, 4, 5]);
        assert_eq!(Placement::with_factor(3, 3), Placement::Everywhere);
        assert_eq!(Placement::Everywhere.voters(7, &[2, 1]), vec![1, 2]);
    }

    #[tokio::test]
    async fn a_name_resolves_at_each_call_and_an_ip_needs_no_lookup() {
        let local: PeerAddr = "localhost:9081".parse().unwrap();
        let addrs = local.resolve().await.unwrap();
        assert!(
            !addrs.is_empty() && addrs.iter().all(|a| a.ip().is_loopback()),
            "{addrs:?}"
        );
        let ip: PeerAddr = "127.0.0.1:1".parse().unwrap();
        assert_eq!(
            ip.resolve().await.unwrap(),
            vec!["127.0.0.1:1".parse().unwrap()]
        );
    }
}
