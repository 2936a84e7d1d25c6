//! `/v1/backups`: start a backup, follow it, list backups and schedules; and
//! `/v1/revert`, the online prefix revert.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::Json;
use cairn_backup::{BackupError, BackupRecord, BackupRequest, BackupState};
use cairn_client::api::{
    join_bytes, BackupInfo, BackupList, BackupProgress, CreateBackup, RevertRequest,
    RevertResponse, ScheduleInfo, ScheduleList,
};

use super::kv::{read_body, read_optional_json, Params};
use super::{path_param, ApiError, ApiState};
use crate::revert::{self, RevertAudit, RevertError};

type Shared = State<Arc<ApiState>>;

/// `POST /v1/backups`: returns at once (202) with the running backup's record.
pub async fn create(
    State(api): Shared,
    uri: Uri,
    body: Body,
) -> Result<(StatusCode, Json<BackupInfo>), ApiError> {
    Params::parse(&uri, &[])?;
    let request: CreateBackup = read_optional_json(&api, body, "backup request").await?;
    let record = api
        .backups
        .start(BackupRequest {
            destination: request.destination,
            incremental: request.incremental,
            snapshot: request.snapshot,
        })
        .await?;
    Ok((StatusCode::ACCEPTED, Json(info(record))))
}

pub async fn list(State(api): Shared, uri: Uri) -> Result<Json<BackupList>, ApiError> {
    Params::parse(&uri, &[])?;
    let backups = api.backups.list().await?.into_iter().map(info).collect();
    Ok(Json(BackupList { backups }))
}

pub async fn show(State(api): Shared, uri: Uri) -> Result<Json<BackupInfo>, ApiError> {
    let id = path_param(&uri, 3, "id")?;
    Ok(Json(info(api.backups.get(&id).await?)))
}

pub async fn schedules(State(api): Shared, uri: Uri) -> Result<Json<ScheduleList>, ApiError> {
    Params::parse(&uri, &[])?;
    let schedules = api
        .backups
        .schedules()
        .await?
        .into_iter()
        .map(|s| ScheduleInfo {
            name: s.name,
            cron: s.cron,
            destination: s.destination,
            next_run_ms: s.next_run_ms,
            last_tick_ms: s.state.last_tick_ms,
            last_backup: s.state.last_backup,
            last_lag_ms: s.state.last_lag_ms,
            last_result: s.state.last_result,
            last_finished_ms: s.state.last_finished_ms,
        })
        .collect();
    Ok(Json(ScheduleList { schedules }))
}

/// `POST /v1/revert {"prefix": P, "snapshot": S}`.
pub async fn revert(
    State(api): Shared,
    uri: Uri,
    body: Body,
) -> Result<Json<RevertResponse>, ApiError> {
    Params::parse(&uri, &[])?;
    let body = read_body(&api, body).await?;
    let request: RevertRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request("bad_json", format!("invalid revert request: {e}")))?;
    if request.prefix.is_some() && request.prefix_b64.is_some() {
        return Err(ApiError::bad_request(
            "bad_json",
            "give `prefix` or `prefix_b64`, not both",
        ));
    }
    let prefix = join_bytes(&request.prefix, &request.prefix_b64)
        .map_err(|e| ApiError::bad_request("bad_json", format!("prefix_b64: {e}")))?;
    if prefix.len() > api.config.max_key_bytes {
        return Err(ApiError::bad_request(
            "key_too_large",
            format!("the prefix exceeds {} bytes", api.config.max_key_bytes),
        ));
    }
    let record = api.snapshots.registry().lookup(&request.snapshot).await?;
    let record = super::snapshots::done(record)?;
    let response = revert::revert(
        &api.router,
        &api.txns,
        api.config.request_timeout(),
        api.config.id,
        &prefix,
        &record,
    )
    .await?;
    Ok(Json(response))
}

pub async fn reverts(State(api): Shared, uri: Uri) -> Result<Json<Vec<RevertAudit>>, ApiError> {
    Params::parse(&uri, &[])?;
    Ok(Json(revert::audit_log(&api.router).await?))
}

fn info(record: BackupRecord) -> BackupInfo {
    let (state, error) = match record.state {
        BackupState::Running => ("running", None),
        BackupState::Done => ("done", None),
        BackupState::Failed { error } => ("failed", Some(error)),
    };
    BackupInfo {
        id: record.id,
        destination: record.destination,
        incremental: record.incremental,
        parent: record.parent,
        snapshot: record.snapshot,
        schedule: record.schedule,
        tick_ms: record.tick_ms,
        node: record.node,
        state: state.to_owned(),
        error,
        progress: BackupProgress {
            shards_done: record.progress.shards_done,
            shards_total: record.progress.shards_total,
            bytes: record.progress.bytes,
            keys: record.progress.keys,
            versions: record.progress.versions,
        },
        started_ms: record.started_ms,
        finished_ms: record.finished_ms,
        deleted: record.deleted,
    }
}

impl From<BackupError> for ApiError {
    fn from(e: BackupError) -> ApiError {
        let (status, code) = match &e {
            BackupError::Invalid(_) => (StatusCode::BAD_REQUEST, "bad_backup_request"),
            BackupError::NotAllowed(_) => (StatusCode::FORBIDDEN, "destination_not_allowed"),
            BackupError::NotFound(_) => (StatusCode::NOT_FOUND, "backup_not_found"),
            BackupError::HistoryGone(_) => (StatusCode::GONE, "history_unavailable"),
            BackupError::Snapshot(s) => return ApiError::of_snapshot(s),
            BackupError::Superseded(_) => (StatusCode::CONFLICT, "conflict"),
            BackupError::Store(_) | BackupError::Io { .. } => {
                (StatusCode::BAD_GATEWAY, "destination_error")
            }
            BackupError::Missing(_) | BackupError::BadFile { .. } | BackupError::Corrupt(_) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "bad_backup")
            }
            BackupError::Local(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage_error"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<RevertError> for ApiError {
    fn from(e: RevertError) -> ApiError {
        match e {
            RevertError::Shard(s) => ApiError::from(s),
            RevertError::Txn(t) => ApiError::from(t),
            RevertError::TooLarge { .. } => ApiError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "revert_too_large",
                e.to_string(),
            ),
            RevertError::Contended => {
                ApiError::new(StatusCode::CONFLICT, "conflict", e.to_string())
            }
            RevertError::Meta(_) => ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                e.to_string(),
            ),
        }
    }
}
