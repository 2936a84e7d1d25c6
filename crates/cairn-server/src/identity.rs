//! Which cluster a data directory belongs to.
//!
//! A cluster's id is derived from what every node is started with (the members and
//! their peer addresses, the shard count and the cluster token), so the nodes agree on
//! it without talking, as etcd derives its cluster id. The first start records the id
//! and the node id in the data directory; every later start must match both, so a node
//! can never join its data to the wrong cluster or impersonate another member.

use std::collections::BTreeMap;

use cairn_raft::{PeerAddr, Placement};
use cairn_store::{NodeId, NodeIdentity, NodeStore};

use crate::config::Config;
use crate::error::ServerError;

/// The cluster id the configuration describes.
pub fn cluster_id(config: &Config) -> String {
    cluster_id_of(
        &config.cluster_token,
        config.shards,
        &config.initial_cluster,
        config.placement(),
        None,
    )
}

/// The cluster id of these members, shards, placement and token; a cluster restored
/// from a backup also mixes in what it was restored from, so it never shares an id
/// with the cluster the backup came from (or with another restore of it).
///
/// A replication factor below the cluster's size is part of the id (nodes started
/// with different factors would place replicas differently, so they must not form
/// one cluster); a cluster with a replica on every node hashes as it did before
/// replication factors existed, so its data directories keep their id.
pub fn cluster_id_of(
    token: &str,
    shards: u32,
    members: &BTreeMap<NodeId, PeerAddr>,
    placement: Placement,
    restored_from: Option<&str>,
) -> String {
    let mut spec = format!("cairn/v1;token={token};shards={shards}");
    for (id, addr) in members {
        spec.push_str(&format!(";{id}={addr}"));
    }
    if let Placement::Spread { replicas } = placement {
        spec.push_str(&format!(";replicas={replicas}"));
    }
    if let Some(origin) = restored_from {
        spec.push_str(&format!(";restored={origin}"));
    }
    format!("{:016x}", xxhash_rust::xxh3::xxh3_64(spec.as_bytes()))
}

/// Record this node's identity on first start, or check it on every later one.
pub fn check_or_init(store: &NodeStore, config: &Config) -> Result<NodeIdentity, ServerError> {
    let restored_from = store.restored_from()?;
    let expected = NodeIdentity {
        cluster_id: cluster_id_of(
            &config.cluster_token,
            config.shards,
            &config.initial_cluster,
            config.placement(),
            restored_from.as_deref(),
        ),
        node_id: config.id,
        shards: config.shards,
    };
    let dir = config.data_dir.display();
    // A node that joined a running cluster learned the cluster's id from it: its own
    // configuration (no founding members) cannot derive it.
    let joined = store.members()?.is_some();
    match store.identity()? {
        Some(found)
            if joined && found.node_id == expected.node_id && found.shards == expected.shards =>
        {
            Ok(found)
        }
        None => {
            store.set_identity(&expected)?;
            store.flush()?;
            tracing::info!(cluster_id = %expected.cluster_id, "initialised a new data directory");
            Ok(expected)
        }
        Some(found) if found == expected => Ok(found),
        Some(found) if found.node_id != expected.node_id => Err(ServerError::Identity(format!(
            "data directory {dir} belongs to node {}, not node {}; refusing to start",
            found.node_id, expected.node_id
        ))),
        Some(found) if found.shards != expected.shards => Err(ServerError::Identity(format!(
            "data directory {dir} was created with {} shards, but --shards is {}; the shard count cannot change",
            found.shards, expected.shards
        ))),
        Some(found) => Err(ServerError::Identity(format!(
            "data directory {dir} belongs to cluster {}, but the configuration (members, addresses, token) describes cluster {}; refusing to start",
            found.cluster_id, expected.cluster_id
        ))),
    }
}
