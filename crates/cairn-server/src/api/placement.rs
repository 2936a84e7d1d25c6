//! `POST /v1/shards/{id}/move`: move one replica of a group to another node;
//! `POST /v1/nodes/{id}/decommission`: move every replica off a node;
//! `POST /v1/nodes/join`: admit a new node.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use cairn_client::api::{
    DecommissionResponse, JoinRequest, JoinResponse, MoveRequest, MoveResponse, MovedReplica,
};

use super::request::{read_body, Params};
use super::{path_param, ApiError, ApiState, ErrorCode};
use crate::join::{self, JoinError};
use crate::moves::{self, Move, MoveError};

type Shared = State<Arc<ApiState>>;

/// How long a move waits for the new replica to receive the group's state.
const CATCH_UP: Duration = Duration::from_secs(60);

pub async fn move_replica(
    State(api): Shared,
    uri: Uri,
    body: Body,
) -> Result<Json<MoveResponse>, ApiError> {
    Params::parse(&uri, &[])?;
    let id = path_param(&uri, 3, "id")?;
    let shard: u32 = id.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::BadPath,
            format!("`id` must be a shard number, not {id:?}"),
        )
    })?;
    let body = read_body(&api, body).await?;
    let request: MoveRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, format!("invalid move request: {e}")))?;
    let mv = Move {
        shard,
        from: request.from,
        to: request.to,
    };
    let members = moves::move_replica(&api.control, mv, CATCH_UP)
        .await
        .map_err(move_error)?;
    Ok(Json(MoveResponse {
        shard,
        voters: members.voters,
        learners: members.learners,
        leader: members.leader,
    }))
}

/// Move every replica off the node; answers once it holds none. Asking again
/// resumes one that was cut short.
pub async fn decommission(
    State(api): Shared,
    uri: Uri,
) -> Result<Json<DecommissionResponse>, ApiError> {
    Params::parse(&uri, &[])?;
    let id = path_param(&uri, 3, "id")?;
    let node: u64 = id.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::BadPath,
            format!("`id` must be a node id, not {id:?}"),
        )
    })?;
    let moved = moves::decommission(&api.control, node, CATCH_UP)
        .await
        .map_err(move_error)?;
    Ok(Json(DecommissionResponse {
        node,
        moved: moved
            .into_iter()
            .map(|(shard, to)| MovedReplica { shard, to })
            .collect(),
    }))
}

fn move_error(e: MoveError) -> ApiError {
    match e {
        MoveError::Invalid(m) => ApiError::new(ErrorCode::BadMove, m),
        MoveError::Busy(m) => ApiError::new(ErrorCode::MoveInProgress, m),
        MoveError::TimedOut(m) => ApiError::new(ErrorCode::Unavailable, m),
        MoveError::Shard(e) => e.into(),
    }
}

/// Admit a new node as a member (see `crate::join`).
pub async fn join(
    State(api): Shared,
    uri: Uri,
    body: Body,
) -> Result<Json<JoinResponse>, ApiError> {
    Params::parse(&uri, &[])?;
    let body = read_body(&api, body).await?;
    let request: JoinRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, format!("invalid join request: {e}")))?;
    let answer = join::admit(&api.control, &api.cluster_id, &request)
        .await
        .map_err(|e| match e {
            JoinError::Invalid(m) => ApiError::new(ErrorCode::BadJson, m),
            JoinError::Refused(m) => ApiError::new(ErrorCode::JoinRefused, m),
            JoinError::Cluster(e) => move_error(e),
        })?;
    Ok(Json(answer))
}
