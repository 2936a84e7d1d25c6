//! Joining a running cluster, and every node learning who joined.
//!
//! A new node starts with `--join` (HTTP addresses of members) instead of
//! `--initial-cluster`. On its data directory's first start it asks a member to admit
//! it (`POST /v1/nodes/join`, [`admit`]): the member records it in the meta group
//! (`n/member/`, one conditional write, so two nodes cannot take one id) and answers
//! with the cluster id, the shard count and every member. The new node records its
//! identity, the members and that it holds no replica yet ([`prepare`]), then starts
//! as a member like any other: it holds replicas once they are moved onto it
//! (`cairn shard move`, or a decommission or dead node elsewhere).
//!
//! Every node reads `n/member/` every second ([`learn`]) and starts a peer link to any
//! member it did not know, so the new node is reachable from all before a replica is
//! moved onto it.
//!
//! Refused, with what to do: an id another member holds at another address, an id of a
//! node that was removed (dead or decommissioned: a removed node never comes back
//! under its id), an address another member uses.
//!
//! What it must never do: admit a node under an id a member holds, or let a node
//! whose directory is already part of a cluster join again.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cairn_client::api::{JoinRequest, JoinResponse, Member};
use cairn_client::Client;
use cairn_cluster::keyspace;
use cairn_cluster::meta::{self, Meta};
use cairn_raft::PeerAddr;
use cairn_store::{Condition, NodeId, NodeIdentity, NodeStore};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::error::ServerError;
use crate::moves::{self, MoveError};
use crate::router::Control;

/// How often every node reads the members that joined.
const EVERY: Duration = Duration::from_secs(1);

#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// The request is malformed (an id of 0, an address that does not parse).
    #[error("{0}")]
    Invalid(String),
    /// The id or address is taken, or the id names a removed node.
    #[error("{0}")]
    Refused(String),
    #[error(transparent)]
    Cluster(#[from] MoveError),
}

fn member_key(id: NodeId) -> Vec<u8> {
    [keyspace::NODE_MEMBER, &id.to_be_bytes()[..]].concat()
}

/// Members that joined, as the meta group records them.
async fn joined(control: &Control) -> Result<BTreeMap<NodeId, String>, MoveError> {
    moves::node_records(control, keyspace::NODE_MEMBER).await
}

/// Every member: the founding ones this node was started with and those that joined.
async fn all_members(control: &Control) -> Result<BTreeMap<NodeId, String>, MoveError> {
    let mut all: BTreeMap<NodeId, String> = control
        .raft()
        .config()
        .peers
        .iter()
        .map(|(&id, addr)| (id, addr.to_string()))
        .collect();
    all.extend(joined(control).await?);
    Ok(all)
}

/// Admit node `req.id` at `req.peer_addr` (the member side of a join). Asking again
/// with the same id and address answers the same (a joiner that crashed before it
/// recorded the answer).
pub async fn admit(
    control: &Control,
    cluster_id: &str,
    req: &JoinRequest,
) -> Result<JoinResponse, JoinError> {
    let id = req.id;
    if id == 0 {
        return Err(JoinError::Invalid("node ids start at 1".into()));
    }
    let addr: PeerAddr = req
        .peer_addr
        .parse()
        .map_err(|e| JoinError::Invalid(format!("peer_addr {:?}: {e}", req.peer_addr)))?;
    let addr = addr.to_string();
    // A joiner that crashed before recording the answer asks again while `joining`.
    if let Some(state) = moves::node_state(control, id)
        .await?
        .filter(|s| s != moves::JOINING)
    {
        return Err(JoinError::Refused(format!(
            "node {id} was removed from the cluster ({state}); a removed node never comes \
             back under its id: start it with an empty data directory and a new --id"
        )));
    }
    let mut members = all_members(control).await?;
    match members.get(&id) {
        Some(existing) if *existing == addr => {}
        Some(existing) => {
            return Err(JoinError::Refused(format!(
                "node id {id} is taken by the member at {existing}; choose another --id"
            )))
        }
        None => {
            if let Some((other, _)) = members.iter().find(|(_, a)| **a == addr) {
                return Err(JoinError::Refused(format!(
                    "peer address {addr} is used by node {other}; give this node its own --peer"
                )));
            }
            let put = meta::put(member_key(id), addr.clone().into_bytes(), Condition::Absent);
            let written = Meta::new(control)
                .write(vec![put, moves::joining(id)])
                .await
                .map_err(moves::meta_error)?;
            if written.is_none() {
                return Err(JoinError::Refused(format!(
                    "node id {id} was taken by another node joining at the same time; \
                     choose another --id"
                )));
            }
            members.insert(id, addr.clone());
            tracing::info!(node = id, peer = %addr, "admitted a new member");
        }
    }
    if let Ok(parsed) = addr.parse() {
        control.raft().add_member(id, parsed);
    }
    Ok(JoinResponse {
        cluster_id: cluster_id.to_owned(),
        shards: control.raft().config().shards,
        members: members
            .into_iter()
            .map(|(id, peer_addr)| Member { id, peer_addr })
            .collect(),
    })
}

/// A client of the member at `endpoint`. With authentication on, admitting a node is
/// an admin's call: the joiner presents the root token every node of the cluster is
/// given. With TLS on, it trusts only the cluster's CA.
fn join_client(config: &Config, endpoint: &str) -> Result<Client, ServerError> {
    let root = config
        .root_token_file
        .as_deref()
        .map(crate::auth::token::read_root_text)
        .transpose()
        .map_err(|e| ServerError::Config(e.to_string()))?;
    let ca = config
        .tls
        .as_ref()
        .map(|tls| {
            std::fs::read(&tls.ca).map_err(|e| {
                ServerError::Config(format!("reading --tls-ca {}: {e}", tls.ca.display()))
            })
        })
        .transpose()?;
    Client::with_options(endpoint, root.as_deref(), ca.as_deref())
        .map_err(|e| ServerError::Config(e.to_string()))
}

/// Before a node starts: on a joining node's first start, join through `--join` and
/// record the answer; on a later start of a node that joined, take its members from
/// its directory. Founding members pass through unchanged.
pub async fn prepare(mut config: Config, store: &NodeStore) -> Result<Config, ServerError> {
    if let Some(members) = store.members()? {
        config.initial_cluster = parse_members(&members)?;
        // The cluster's shard count, as it answered the join (not `--shards`).
        if let Some(identity) = store.identity()? {
            config.shards = identity.shards;
        }
        return Ok(config);
    }
    if config.join.is_empty() || store.identity()?.is_some() {
        return Ok(config);
    }
    let mut tried = Vec::new();
    for endpoint in &config.join {
        let client = join_client(&config, endpoint)?;
        let answer = match client.join(config.id, &config.peer.to_string()).await {
            Ok(answer) => answer,
            // A refusal is an answer: another member would give the same.
            Err(e) if e.code().is_some() => {
                return Err(ServerError::Config(format!(
                    "{endpoint} refused to admit node {}: {e}",
                    config.id
                )))
            }
            Err(e) => {
                tried.push(format!("{endpoint}: {e}"));
                continue;
            }
        };
        let members: Vec<(NodeId, String)> = answer
            .members
            .iter()
            .map(|m| (m.id, m.peer_addr.clone()))
            .collect();
        store.set_identity(&NodeIdentity {
            cluster_id: answer.cluster_id.clone(),
            node_id: config.id,
            shards: answer.shards,
        })?;
        store.set_hosted_groups(&[])?;
        store.set_members(&members)?;
        tracing::info!(
            cluster_id = %answer.cluster_id,
            members = members.len(),
            "joined the cluster; replicas come when they are moved here"
        );
        config.initial_cluster = parse_members(&members)?;
        config.shards = answer.shards;
        return Ok(config);
    }
    Err(ServerError::Config(format!(
        "could not reach any member to join through ({})",
        tried.join("; ")
    )))
}

fn parse_members(members: &[(NodeId, String)]) -> Result<BTreeMap<NodeId, PeerAddr>, ServerError> {
    members
        .iter()
        .map(|(id, addr)| {
            addr.parse()
                .map(|a| (*id, a))
                .map_err(|e| ServerError::Config(format!("recorded member {id} at {addr}: {e}")))
        })
        .collect()
}

/// Run until `stop` fires: start links to members that joined, and keep this node's
/// record of them current (a founder records those beyond its `--initial-cluster`,
/// a node that joined records every member), so a restart dials them at once.
pub async fn learn(control: Arc<Control>, store: NodeStore, stop: CancellationToken) {
    // Members that joined before this start are dialled at once: the meta group,
    // through which they are learned below, may be led by one of them, and a node
    // that cannot reach its leader could never learn of it.
    let founder = !matches!(store.members(), Ok(Some(_)));
    let initial: BTreeSet<NodeId> = control.raft().config().peers.keys().copied().collect();
    let mut recorded = if founder {
        store.joined()
    } else {
        store.members().map(Option::unwrap_or_default)
    }
    .unwrap_or_else(|e| {
        tracing::warn!(error = %e, "could not read the recorded members");
        Vec::new()
    });
    for (id, addr) in &recorded {
        if let Ok(parsed) = addr.parse() {
            control.raft().add_member(*id, parsed);
        }
    }
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(joined) = joined(&control).await else {
            continue;
        };
        for (id, addr) in joined {
            let Ok(parsed) = addr.parse() else { continue };
            if control.raft().add_member(id, parsed) {
                tracing::info!(node = id, peer = %addr, "a member joined");
            }
        }
        // A founder records the members beyond its `--initial-cluster`; a node that
        // joined, all of them. (A member may also have been added by the join call
        // this node answered, so the record is compared, not the additions counted.)
        let now: Vec<(NodeId, String)> = control
            .raft()
            .members()
            .into_iter()
            .filter(|(id, _)| !founder || !initial.contains(id))
            .map(|(id, a)| (id, a.to_string()))
            .collect();
        if now == recorded {
            continue;
        }
        let written = if founder {
            store.set_joined(&now)
        } else {
            store.set_members(&now)
        };
        match written {
            Ok(()) => recorded = now,
            Err(e) => tracing::warn!(error = %e, "could not record the members"),
        }
    }
}
