//! `/v1/snapshots`: take, list, show and delete consistent snapshots; and the
//! resolution of `snapshot=` / `as_of=` on read endpoints.

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use cairn_client::api::{
    split_bytes, CreateSnapshot, DiffItem, DiffResponse, SnapshotInfo, SnapshotList,
};
use cairn_cluster::clock::{now_ms, parse_rfc3339_ms};
use cairn_snapshot::{SnapshotError, SnapshotRecord, SnapshotState};

use super::request::{read_optional_json, Params};
use super::{path_param, url, ApiError, ApiState, ErrorCode};

type Shared = State<Arc<ApiState>>;

const DEFAULT_LIST_LIMIT: usize = 100;

pub async fn create(
    State(api): Shared,
    uri: Uri,
    body: Body,
) -> Result<(StatusCode, Json<SnapshotInfo>), ApiError> {
    Params::parse(&uri, &[])?;
    let request: CreateSnapshot = read_optional_json(&api, body, "snapshot request").await?;
    let record = api.snapshots.take(request.name.as_deref()).await?;
    Ok((StatusCode::CREATED, Json(info(&record)?)))
}

pub async fn list(State(api): Shared, uri: Uri) -> Result<Json<SnapshotList>, ApiError> {
    let params = Params::parse(&uri, &["limit", "before"])?;
    let limit = params.limit(DEFAULT_LIST_LIMIT, api.config.max_scan_limit)?;
    let before = match params.text("before")? {
        None => None,
        Some(text) => Some(
            text.parse::<u64>()
                .map_err(|_| ApiError::new(ErrorCode::BadQuery, "before must be a snapshot id"))?,
        ),
    };
    let (records, more) = api.snapshots.registry().list(before, limit).await?;
    let next_before = more.then(|| records.last().map(|r| r.id)).flatten();
    let snapshots = records
        .iter()
        .filter(|r| matches!(r.state, SnapshotState::Done { .. }))
        .map(info)
        .collect::<Result<_, _>>()?;
    Ok(Json(SnapshotList {
        snapshots,
        next_before,
    }))
}

pub async fn show(State(api): Shared, uri: Uri) -> Result<Json<SnapshotInfo>, ApiError> {
    let id = path_param(&uri, 3, "id")?;
    let record = done(api.snapshots.registry().lookup(&id).await?)?;
    Ok(Json(info(&record)?))
}

pub async fn delete(State(api): Shared, uri: Uri) -> Result<StatusCode, ApiError> {
    let id = path_param(&uri, 3, "id")?;
    let registry = api.snapshots.registry();
    let record = done(registry.lookup(&id).await?)?;
    registry.delete(&record).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/snapshots/{a}/diff/{b}`: keys whose value differs between snapshot `a`
/// and snapshot `b`, with their value in `b` (or `deleted`), in key order, paginated.
pub async fn diff(
    State(api): Shared,
    Extension(who): Extension<crate::auth::Principal>,
    uri: Uri,
) -> Result<Json<DiffResponse>, ApiError> {
    let (a, b) = (path_param(&uri, 3, "a")?, path_param(&uri, 5, "b")?);
    let params = Params::parse(&uri, &["prefix", "start_after", "limit", "encoding"])?;
    let prefix = params.bytes("prefix").unwrap_or_default();
    super::kv::may_list(&who, &prefix)?;
    let start_after = params.bytes("start_after");
    let limit = params.limit(DEFAULT_LIST_LIMIT, api.config.max_scan_limit)?;
    let encoding = params.encoding()?;
    let registry = api.snapshots.registry();
    let from = done(registry.lookup(&a).await?)?;
    let to = done(registry.lookup(&b).await?)?;
    let mut versions = Vec::new();
    for shard in 0..api.config.shards {
        match (from.read_version(shard), to.read_version(shard)) {
            (Some(f), Some(t)) => versions.push((f, t)),
            _ => {
                return Err(ApiError::new(
                    ErrorCode::StorageError,
                    format!("snapshots {a} and {b} lack a cut for shard {shard}"),
                ))
            }
        }
    }
    let page = api
        .router
        .diff(&prefix, start_after.as_deref(), api.page(limit), |shard| {
            versions[shard as usize]
        })
        .await?;
    let next_start_after = match (page.more, page.items.last()) {
        (true, Some((key, _))) => Some(url::encode(key)),
        _ => None,
    };
    let changes = page
        .items
        .iter()
        .map(|(key, change)| {
            let (key, key_b64) = split_bytes(key, encoding);
            match change {
                Some(v) => {
                    let (value, value_b64) = split_bytes(&v.value, encoding);
                    DiffItem {
                        key,
                        key_b64,
                        value,
                        value_b64,
                        version: Some(v.version),
                        deleted: false,
                    }
                }
                None => DiffItem {
                    key,
                    key_b64,
                    value: None,
                    value_b64: None,
                    version: None,
                    deleted: true,
                },
            }
        })
        .collect();
    Ok(Json(DiffResponse {
        changes,
        next_start_after,
    }))
}

/// Only completed snapshots are visible: a pending or aborted one leaves no trace.
pub(super) fn done(record: SnapshotRecord) -> Result<SnapshotRecord, ApiError> {
    match record.state {
        SnapshotState::Done { .. } => Ok(record),
        _ => Err(SnapshotError::NotFound(record.id.to_string()).into()),
    }
}

fn info(record: &SnapshotRecord) -> Result<SnapshotInfo, ApiError> {
    match &record.state {
        SnapshotState::Done { cuts } => Ok(SnapshotInfo {
            id: record.id,
            name: record.name.clone(),
            time: record.time_rfc3339(),
            cuts: cuts.clone(),
        }),
        _ => Err(SnapshotError::NotFound(record.id.to_string()).into()),
    }
}

/// The snapshot a read names with `snapshot=ID|NAME` or `as_of=TIME`, if any.
pub async fn resolve(api: &ApiState, params: &Params) -> Result<Option<SnapshotRecord>, ApiError> {
    let by_id = params.text("snapshot")?;
    let as_of = params.text("as_of")?;
    if params.text("consistency")?.is_some() && (by_id.is_some() || as_of.is_some()) {
        return Err(ApiError::new(
            ErrorCode::BadQuery,
            "a snapshot read has a fixed answer; `consistency` does not apply to it",
        ));
    }
    let registry = api.snapshots.registry();
    match (by_id, as_of) {
        (Some(_), Some(_)) => Err(ApiError::new(
            ErrorCode::BadQuery,
            "give `snapshot` or `as_of`, not both",
        )),
        (Some(id), None) => Ok(Some(done(registry.lookup(&id).await?)?)),
        (None, Some(time)) => {
            let ms = parse_rfc3339_ms(&time)
                .map_err(|e| ApiError::new(ErrorCode::BadQuery, format!("as_of: {e}")))?;
            // A time still to come names no cut yet: the snapshot that would serve it
            // may not exist, and the answer would change as snapshots complete. So it
            // is refused, as CockroachDB refuses AS OF SYSTEM TIME in the future.
            let now = now_ms();
            if ms > now {
                let newest = match registry.newest_at_or_before(now).await? {
                    Some(s) => format!("{} (snapshot {})", s.time_rfc3339(), s.id),
                    None => "none yet (no snapshot has completed)".into(),
                };
                return Err(ApiError::new(ErrorCode::AsOfInFuture,
                    format!(
                        "as_of {time} is later than this node's clock ({}); the newest readable time is {newest}",
                        format_ms(now)
                    ),
                ));
            }
            if let Some(record) = registry.newest_at_or_before(ms).await? {
                return Ok(Some(record));
            }
            match registry.oldest_done().await? {
                Some(oldest) => Err(ApiError::new(ErrorCode::HistoryUnavailable,
                    format!(
                        "no retained snapshot at or before {time}; the oldest readable point is {} (snapshot {})",
                        oldest.time_rfc3339(),
                        oldest.id
                    ),
                )),
                None => Err(ApiError::new(ErrorCode::SnapshotNotFound,
                    "no snapshot has been taken yet",
                )),
            }
        }
        (None, None) => Ok(None),
    }
}

fn format_ms(ms: u64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}
