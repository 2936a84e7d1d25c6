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

use super::request::{read_body, read_optional_json, Params};
use super::{path_param, ApiError, ApiState, ErrorCode};
use crate::revert::{RevertAudit, RevertError};

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

/// `GET /v1/backups?limit=N&start_after=ID`: the catalog a page at a time, oldest
/// first (ids sort by age).
pub async fn list(State(api): Shared, uri: Uri) -> Result<Json<BackupList>, ApiError> {
    let params = Params::parse(&uri, &["limit", "start_after"])?;
    let limit = params.limit(100, api.config.max_scan_limit)?;
    let after = params.text("start_after")?;
    let mut records = api.backups.list().await?;
    records.sort_by(|a, b| a.id.cmp(&b.id));
    let mut page: Vec<BackupInfo> = records
        .into_iter()
        .filter(|r| after.as_ref().is_none_or(|a| r.id.as_str() > a.as_str()))
        .take(limit + 1)
        .map(info)
        .collect();
    let next_start_after = (page.len() > limit).then(|| {
        page.truncate(limit);
        page.last().map(|b| b.id.clone()).unwrap_or_default()
    });
    Ok(Json(BackupList {
        backups: page,
        next_start_after,
    }))
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

/// `POST /v1/revert {"prefix": P, "snapshot": S[, "all": true][, "dry_run": true]}`.
pub async fn revert(
    State(api): Shared,
    uri: Uri,
    body: Body,
) -> Result<Json<RevertResponse>, ApiError> {
    Params::parse(&uri, &[])?;
    let body = read_body(&api, body).await?;
    let request: RevertRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, format!("invalid revert request: {e}")))?;
    if request.prefix.is_some() && request.prefix_b64.is_some() {
        return Err(ApiError::new(
            ErrorCode::BadJson,
            "give `prefix` or `prefix_b64`, not both",
        ));
    }
    if request.prefix.is_none() && request.prefix_b64.is_none() {
        return Err(ApiError::new(ErrorCode::BadRevert,
            "`prefix` (or `prefix_b64`) is required; to revert every key, send `\"prefix\": \"\"` with `\"all\": true`",
        ));
    }
    let prefix = join_bytes(&request.prefix, &request.prefix_b64)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, format!("prefix_b64: {e}")))?;
    match (prefix.is_empty(), request.all) {
        (true, false) => {
            return Err(ApiError::new(ErrorCode::BadRevert,
                "an empty `prefix` reverts every key: confirm with `\"all\": true` (and try `\"dry_run\": true` first)",
            ))
        }
        (false, true) => {
            return Err(ApiError::new(ErrorCode::BadRevert,
                "`all` reverts every key and takes only the empty prefix",
            ))
        }
        _ => {}
    }
    if prefix.len() > api.config.max_key_bytes {
        return Err(ApiError::new(
            ErrorCode::KeyTooLarge,
            format!("the prefix exceeds {} bytes", api.config.max_key_bytes),
        ));
    }
    let record = api.snapshots.registry().lookup(&request.snapshot).await?;
    let record = super::snapshots::done(record)?;
    let response = api
        .reverts
        .revert(&prefix, &record, request.dry_run)
        .await?;
    Ok(Json(response))
}

/// `GET /v1/reverts?limit=N&start_after=ID`: the revert records a page at a time,
/// oldest first; a page shorter than `limit` is the last.
pub async fn reverts(State(api): Shared, uri: Uri) -> Result<Json<Vec<RevertAudit>>, ApiError> {
    let params = Params::parse(&uri, &["limit", "start_after"])?;
    let limit = params.limit(api.config.max_scan_limit, api.config.max_scan_limit)?;
    let after = match params.text("start_after")? {
        None => None,
        Some(text) => Some(text.parse::<u64>().map_err(|_| {
            ApiError::new(
                ErrorCode::BadQuery,
                "start_after must be a revert's id (a number)",
            )
        })?),
    };
    let mut records = api.reverts.audit_log().await?;
    records.sort_by_key(|r| r.id);
    records.retain(|r| after.is_none_or(|a| r.id > a));
    records.truncate(limit);
    Ok(Json(records))
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
        let code = match &e {
            BackupError::Invalid(_) => ErrorCode::BadBackupRequest,
            BackupError::NotAllowed(_) => ErrorCode::DestinationNotAllowed,
            BackupError::NotFound(_) => ErrorCode::BackupNotFound,
            BackupError::HistoryGone(_) => ErrorCode::HistoryUnavailable,
            BackupError::Snapshot(s) => return ApiError::of_snapshot(s),
            BackupError::Superseded(_) | BackupError::Busy(_) => ErrorCode::Conflict,
            BackupError::Store(_) | BackupError::Io { .. } => ErrorCode::DestinationError,
            BackupError::Missing(_)
            | BackupError::BadFile { .. }
            | BackupError::Corrupt(_)
            | BackupError::Key(_) => ErrorCode::BadBackup,
            BackupError::Local(_) => ErrorCode::StorageError,
            BackupError::Remote(s) => return ApiError::from(s.clone()),
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<RevertError> for ApiError {
    fn from(e: RevertError) -> ApiError {
        match e {
            RevertError::Shard(s) => ApiError::from(s),
            RevertError::Txn(t) => ApiError::from(t),
            RevertError::TooLarge { .. } => ApiError::new(ErrorCode::RevertTooLarge, e.to_string()),
            RevertError::Contended => ApiError::new(ErrorCode::Conflict, e.to_string()),
            RevertError::Meta(_) => ApiError::new(ErrorCode::Unavailable, e.to_string()),
        }
    }
}
