//! `/v1/debug/*`: read-only views of this node's own replicas, for tests and operators
//! checking that replicas agree. Nothing here is forwarded or linearizable: each
//! answer describes the local replica as it is, which is the point (the chaos harness
//! asks every node and compares).
//!
//! - `GET /v1/debug/digest?shard=S&at=V[&after=H]`: the replica's [`ShardDigest`] at
//!   version `V` (default: its applied index), history part over `(H, V]` (default:
//!   its horizon). 409 `not_applied` if `V` is above what it applied; 410
//!   `history_unavailable` below its horizon.
//! - `GET /v1/debug/versions?shard=S[&after=A][&upto=V][&truncate=N]`: the state at
//!   `A` and every version of every key in `(A, V]` (defaults: the horizon, the applied
//!   index), tombstones included, in key order and newest first per key. A value at
//!   two versions is a write applied twice. With `truncate`, values are cut to their
//!   first `N` bytes (`value_len` keeps their length), so a history of large values
//!   stays a small answer.
//!
//! `S` may be the meta group's number. Both read the whole data tree, on the blocking
//! pool; they are for small test clusters and occasional checks, not for monitoring.

use std::sync::Arc;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use cairn_client::api::{split_bytes, Encoding};
use cairn_store::{HistoryRange, KeyVersion, ShardDigest, ShardState, StoreError};
use serde::{Deserialize, Serialize};

use super::request::Params;
use super::{ApiError, ApiState, ErrorCode};

type Shared = State<Arc<ApiState>>;

/// One version of one key (`GET /v1/debug/versions`). Keys and values use the
/// binary-safe JSON form of scans: `key` when UTF-8, else `key_b64`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionItem {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_b64: Option<String>,
    pub version: u64,
    /// Absent for a tombstone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_b64: Option<String>,
    /// True for a tombstone (the key was deleted at this version).
    pub deleted: bool,
    /// The value's length in bytes (absent for a tombstone), whole even when the
    /// value shown was truncated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value_len: Option<u64>,
}

/// Answer of `GET /v1/debug/versions`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionsResponse {
    pub shard: u32,
    pub applied: u64,
    pub horizon: u64,
    pub after: u64,
    pub upto: u64,
    /// The state at `after`: each live key's newest version at or below it, so that
    /// `base` and `versions` together give the state at any version in `[after, upto]`.
    pub base: Vec<VersionItem>,
    /// Every version in `(after, upto]`.
    pub versions: Vec<VersionItem>,
}

pub async fn digest(State(api): Shared, uri: Uri) -> Result<Json<ShardDigest>, ApiError> {
    let params = Params::parse(&uri, &["shard", "at", "after"])?;
    let state = replica(&api, &params)?;
    let at = number(&params, "at")?;
    let after = number(&params, "after")?;
    let digest = blocking(move || {
        let at = match at {
            Some(at) => at,
            None => state.applied()?.index,
        };
        from_horizon(&state, after, |after| state.digest(at, after.min(at)))
    })
    .await?;
    Ok(Json(digest))
}

pub async fn versions(State(api): Shared, uri: Uri) -> Result<Json<VersionsResponse>, ApiError> {
    let params = Params::parse(&uri, &["shard", "after", "upto", "truncate"])?;
    let state = replica(&api, &params)?;
    let after = number(&params, "after")?;
    let upto = number(&params, "upto")?;
    let truncate = number(&params, "truncate")?.map_or(usize::MAX, |n| n as usize);
    let answer = blocking(move || {
        let applied = state.applied()?.index;
        let upto = upto.unwrap_or(applied);
        if upto > applied {
            return Err(StoreError::Invalid {
                reason: format!("versions up to {upto}, but only {applied} is applied here"),
            });
        }
        let items = |range| {
            state
                .history(range)
                .map(|v| v.map(|v| item(&v, truncate)))
                .collect::<Result<Vec<_>, _>>()
        };
        from_horizon(&state, after, |after| {
            let horizon = state.horizon()?;
            let after = after.min(upto);
            Ok(VersionsResponse {
                shard: state.shard(),
                applied,
                horizon,
                after,
                upto,
                base: items(HistoryRange::StateAt { at: after })?,
                versions: items(HistoryRange::Between { after, upto })?,
            })
        })
    })
    .await?;
    Ok(Json(answer))
}

/// Run `read` from `after`, or, when the caller named none, from the replica's horizon.
/// History GC may raise the horizon while such a read runs, and the read then fails
/// (`HistoryCollected`) rather than answer from a base that moved; the caller asked
/// for "from the horizon", so the read starts again from the new one (a few times:
/// GC runs seconds apart). Found by the chaos suite: its final check read a replica
/// just as its first GC ran, and got a 410.
fn from_horizon<T>(
    state: &ShardState,
    after: Option<u64>,
    mut read: impl FnMut(u64) -> cairn_store::Result<T>,
) -> cairn_store::Result<T> {
    if let Some(after) = after {
        return read(after);
    }
    let mut tries = 0;
    loop {
        match read(state.horizon()?) {
            Err(StoreError::HistoryCollected { .. }) if tries < 3 => tries += 1,
            other => return other,
        }
    }
}

fn item(v: &KeyVersion, truncate: usize) -> VersionItem {
    let (key, key_b64) = split_bytes(&v.key, Encoding::Utf8);
    let (value, value_b64) = match &v.value {
        Some(bytes) => split_bytes(&bytes[..bytes.len().min(truncate)], Encoding::Utf8),
        None => (None, None),
    };
    VersionItem {
        key,
        key_b64,
        version: v.version,
        value,
        value_b64,
        deleted: v.value.is_none(),
        value_len: v.value.as_ref().map(|b| b.len() as u64),
    }
}

/// The local replica named by `shard=` (a data shard or the meta group).
fn replica(api: &ApiState, params: &Params) -> Result<ShardState, ApiError> {
    let shard = number(params, "shard")?
        .ok_or_else(|| ApiError::new(ErrorCode::BadQuery, "`shard` is required"))?;
    u32::try_from(shard)
        .ok()
        .and_then(|s| api.router.raft().local().state(s))
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("this node has no replica of shard {shard}"),
            )
        })
}

fn number(params: &Params, name: &str) -> Result<Option<u64>, ApiError> {
    params
        .text(name)?
        .map(|text| {
            text.parse::<u64>().map_err(|_| {
                ApiError::new(ErrorCode::BadQuery, format!("`{name}` must be a number"))
            })
        })
        .transpose()
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> cairn_store::Result<T> + Send + 'static,
) -> Result<T, ApiError> {
    let result = tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| ApiError::new(ErrorCode::StorageError, format!("debug read failed: {e}")))?;
    result.map_err(|e| match e {
        StoreError::Invalid { reason } => ApiError::new(ErrorCode::NotApplied, reason),
        StoreError::HistoryCollected { horizon } => ApiError::new(
            ErrorCode::HistoryUnavailable,
            format!("history below version {horizon} has been collected on this replica"),
        ),
        other => ApiError::new(ErrorCode::StorageError, other.to_string()),
    })
}

/// The debug routes, merged into the application by `api::app`.
pub fn routes() -> axum::Router<Arc<ApiState>> {
    axum::Router::new()
        .route("/v1/debug/digest", axum::routing::get(digest))
        .route("/v1/debug/versions", axum::routing::get(versions))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read from the horizon that GC overtook starts again from the new horizon; a
    /// read from a version the caller named fails as it did.
    #[test]
    fn a_read_from_the_horizon_that_gc_overtook_starts_again() {
        let store = cairn_store::NodeStore::open_temporary().unwrap();
        let state = store.shard_state(0).unwrap();
        let mut calls = Vec::new();
        let read = |calls: &mut Vec<u64>, after: u64| {
            calls.push(after);
            if calls.len() == 1 {
                Err(StoreError::HistoryCollected { horizon: 1 })
            } else {
                Ok(after)
            }
        };
        let got = from_horizon(&state, None, |after| read(&mut calls, after));
        assert_eq!(got.unwrap(), 0);
        assert_eq!(calls.len(), 2, "read again after the horizon moved");

        calls.clear();
        let named = from_horizon(&state, Some(5), |after| read(&mut calls, after));
        assert!(matches!(named, Err(StoreError::HistoryCollected { .. })));
        assert_eq!(calls, vec![5]);
    }
}
