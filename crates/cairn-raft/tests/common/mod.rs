//! What the hand-driven replica tests share: a configuration whose peers are never
//! dialled, and a durability that has nothing to sync.

// Each test binary includes this module and uses only part of it.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_raft::commit::{Durability, SyncError};

pub mod tally;
use cairn_raft::RaftConfig;

/// Node `node` of a group of `voters` (ids `1..=voters`), hosting `shards` shards.
pub fn config(node: u64, voters: u64, shards: u32) -> RaftConfig {
    let peers: BTreeMap<u64, SocketAddr> = (1..=voters)
        .map(|id| (id, SocketAddr::from(([127, 0, 0, 1], 7000 + id as u16))))
        .collect();
    RaftConfig {
        node_id: node,
        cluster_id: "hand-driven".into(),
        shards,
        listen: peers[&node],
        peers: peers.iter().map(|(&n, &a)| (n, a.into())).collect(),
        placement: cairn_raft::Placement::Everywhere,
        tick: Duration::from_millis(10),
        election_ticks: 10,
        heartbeat_ticks: 2,
        log_compact_entries: 1000,
        request_ticks: 100,
        replica_threads: 1,
        limits: Default::default(),
        lease_reads: false,
        tls: None,
    }
}

/// Writes are "durable" at once: these tests crash nothing.
pub struct NoSync;

impl Durability for NoSync {
    fn sync(&self) -> Result<(), SyncError> {
        Ok(())
    }
}
