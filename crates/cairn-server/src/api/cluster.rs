//! `/v1/cluster`, `/health`, `/ready` and `/metrics`.

use std::sync::Arc;

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use axum::Json;
use cairn_client::api::{ClusterStatus, NodeInfo, PeerLink, ShardStatus};
use cairn_raft::LinkStatus;

use super::{ApiError, ApiState, ErrorCode};

type Shared = State<Arc<ApiState>>;

pub async fn status(State(api): Shared) -> Result<Json<ClusterStatus>, ApiError> {
    let config = &api.config;
    let raft = api.router.raft();
    let replicas: Vec<u64> = config.initial_cluster.keys().copied().collect();
    let status = |shard: u32| {
        raft.status(shard).map(|s| ShardStatus {
            id: s.shard,
            replicas: replicas.clone(),
            leader: s.leader,
            term: s.term,
            commit: s.commit,
            applied: s.applied,
            first_index: s.first_index,
            snapshots_installed: s.snapshots_installed,
        })
    };
    let shards = (0..config.shards).filter_map(status).collect();
    let meta = status(raft.config().meta_shard());
    let meta =
        meta.ok_or_else(|| ApiError::new(ErrorCode::StorageError, "no meta group replica"))?;
    Ok(Json(ClusterStatus {
        cluster_id: api.cluster_id.clone(),
        node_id: config.id,
        nodes: config
            .initial_cluster
            .iter()
            .map(|(&id, addr)| NodeInfo {
                id,
                peer_addr: addr.to_string(),
            })
            .collect(),
        shards,
        meta,
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

/// Ready when every shard has a leader this node knows of, so any request can be
/// routed.
pub async fn ready(State(api): Shared) -> Result<Json<serde_json::Value>, ApiError> {
    let raft = api.router.raft();
    // The data shards and the meta group (snapshots need it).
    let leaderless: Vec<u32> = (0..=raft.config().meta_shard())
        .filter(|&s| raft.leader_of(s).is_none())
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
