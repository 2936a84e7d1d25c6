//! `/v1/cluster`, `/health`, `/ready` and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use cairn_client::api::{ClusterStatus, NodeInfo, PeerLink, ShardPlacement, ShardStatus};
use cairn_raft::LinkStatus;

use super::{ApiError, ApiState, ErrorCode};

type Shared = State<Arc<ApiState>>;

pub async fn status(State(api): Shared) -> Result<Json<ClusterStatus>, ApiError> {
    let config = &api.config;
    let raft = api.router.raft();
    // Groups this node holds no voter of: their voters as their leaders say now
    // (replicas move), each asked for at most a second; the router remembers.
    let remote = raft
        .config()
        .groups()
        .filter(|&g| !raft.local().votes_in(g))
        .map(|g| {
            tokio::time::timeout(
                std::time::Duration::from_secs(1),
                crate::moves::members(&api.control, g),
            )
        });
    futures::future::join_all(remote).await;
    let status = |shard: u32| {
        raft.status(shard).map(|s| ShardStatus {
            id: s.shard,
            replicas: api.router.voters_of(shard),
            leader: s.leader,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            first_index: s.first_index,
            snapshots_installed: s.snapshots_installed,
        })
    };
    let meta_shard = raft.config().meta_shard();
    let placement: Vec<ShardPlacement> = raft
        .config()
        .groups()
        .map(|id| ShardPlacement {
            id,
            meta: id == meta_shard,
            replicas: api.router.voters_of(id),
            learners: api.router.learners_of(id),
            leader: api.router.leader_of(id),
        })
        .collect();
    // States live in the meta group; a status page must not fail or hang for it.
    let states = tokio::time::timeout(
        std::time::Duration::from_secs(1),
        crate::moves::node_states(&api.control),
    )
    .await
    .ok()
    .and_then(Result::ok);
    let state_of = |node: u64| match &states {
        Some(states) => states
            .get(&node)
            .cloned()
            .unwrap_or_else(|| "active".into()),
        None => "unknown".into(),
    };
    let count = |node: u64, pick: &dyn Fn(&ShardPlacement) -> bool| {
        placement
            .iter()
            .filter(|p| pick(p) && p.replicas.contains(&node))
            .count() as u32
    };
    Ok(Json(ClusterStatus {
        cluster_id: api.cluster_id.clone(),
        node_id: config.id,
        nodes: raft
            .members()
            .iter()
            .map(|(&id, addr)| NodeInfo {
                id,
                peer_addr: addr.to_string(),
                replicas: count(id, &|_| true),
                leaders: count(id, &|p| p.leader == Some(id)),
                state: state_of(id),
            })
            .collect(),
        shards: (0..config.shards).filter_map(status).collect(),
        meta: status(meta_shard),
        placement,
        links: raft.links().iter().map(peer_link).collect(),
    }))
}

/// A keepalive unanswered this long shows the link as `unanswered` (pings go out
/// every second; a healthy peer answers well within two).
const UNANSWERED_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

fn peer_link(link: &LinkStatus) -> PeerLink {
    let state = match (link.connected, link.unanswered_for) {
        (false, _) => "down",
        (true, Some(waited)) if waited >= UNANSWERED_AFTER => "unanswered",
        (true, _) => "up",
    };
    PeerLink {
        peer: link.peer,
        state: state.into(),
        rtt_us: link.rtt.map(|d| d.as_micros() as u64),
        resets: link.resets,
        oversized_frames: link.oversized_frames,
        calls_unanswered: link.calls_unanswered,
    }
}

pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "status": "ok" }))
}

/// Ready when every group this node holds a replica of has a leader it knows of (the
/// data shards and the meta group: snapshots need it), so those requests can be
/// routed; the routes to the others are found on the first request.
pub async fn ready(State(api): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    let raft = api.router.raft();
    let leaderless: Vec<u32> = raft
        .config()
        .groups()
        .filter(|&s| raft.local().hosts(s) && raft.leader_of(s).is_none())
        .collect();
    if leaderless.is_empty() {
        Ok(Json(serde_json::json!({ "ready": true })))
    } else {
        Err(ApiError::new(
            ErrorCode::NotReady,
            format!("shards without a known leader: {leaderless:?}"),
        ))
    }
}

pub async fn metrics(State(api): Shared) -> impl IntoResponse {
    let body = api.metrics.as_ref().map(|m| m.render()).unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
