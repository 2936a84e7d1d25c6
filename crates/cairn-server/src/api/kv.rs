//! `/v1/kv` and `/v1/batch`: single-key reads and writes, scans, and batches.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use cairn_client::api::{
    join_bytes, BatchOpKind, BatchRequest, BatchResponse, DeleteResponse, ScanItem, ScanResponse,
    WriteResponse,
};
use cairn_raft::Consistency;
use cairn_store::{ApplyOutcome, Condition, OpKind, WriteOp};
use cairn_txn::TxnError;

use super::request::{read_body, Params};
use super::{snapshots, url, ApiError, ApiState, ErrorCode};
use crate::auth::Principal;

type Shared = State<Arc<ApiState>>;

const KV_PREFIX: &str = "/v1/kv/";
const DEFAULT_SCAN_LIMIT: usize = 100;

/// A token limited to a prefix touches only keys under it (403 otherwise).
fn may_touch(who: &Principal, key: &[u8]) -> Result<(), ApiError> {
    if who.may_touch(key) {
        Ok(())
    } else {
        Err(ApiError::new(ErrorCode::Forbidden, who.outside()))
    }
}

/// ... and lists only prefixes inside its own.
pub(super) fn may_list(who: &Principal, prefix: &[u8]) -> Result<(), ApiError> {
    if who.may_list(prefix) {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!("{}; give a `prefix` inside it", who.outside()),
        ))
    }
}

pub async fn empty_key() -> ApiError {
    ApiError::new(ErrorCode::EmptyKey, "the key is empty; use /v1/kv/{key}")
}

pub async fn get(
    State(api): Shared,
    Extension(who): Extension<Principal>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = api.key_from_path(&uri)?;
    may_touch(&who, &key)?;
    let params = Params::parse(&uri, &["consistency", "snapshot", "as_of"])?;
    let tags = |name: header::HeaderName| {
        header_text(&headers, name.clone())?
            .map(|v| EntityTags::parse(&v))
            .transpose()
            .map_err(|why| {
                ApiError::new(
                    ErrorCode::BadHeader,
                    format!("{name} must be * or a list of ETags: {why}"),
                )
            })
    };
    let only_if = tags(header::IF_MATCH)?;
    let unless = tags(header::IF_NONE_MATCH)?;
    let snapshot = snapshots::resolve(&api, &params).await?;
    let shard = api.router.shard_of(&key);
    let consistency = match &snapshot {
        Some(s) => at_cut(s, shard)?,
        None => params.consistency()?,
    };
    let answer = api.router.get(shard, key, consistency).await?;
    if let Some(tags) = &only_if {
        // Strong comparison (RFC 9110 13.1.1): the value must be the one named.
        let current = answer.as_ref().map(|v| v.version);
        let holds = current.is_some_and(|c| tags.any || tags.strong.contains(&c));
        if !holds {
            return Err(ApiError::new(
                ErrorCode::PreconditionFailed,
                "If-Match did not match the key's current version",
            ));
        }
    }
    let mut response = match answer {
        // The client's copy is current (weak comparison, RFC 9110 13.1.2).
        Some(v) if unless.as_ref().is_some_and(|t| t.matches_weakly(v.version)) => {
            (StatusCode::NOT_MODIFIED, [(header::ETAG, etag(v.version))]).into_response()
        }
        Some(v) => (
            [
                (
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/octet-stream"),
                ),
                (header::ETAG, etag(v.version)),
            ],
            v.value,
        )
            .into_response(),
        None => ApiError::new(ErrorCode::KeyNotFound, "no value for this key").into_response(),
    };
    if let Some(s) = &snapshot {
        response
            .headers_mut()
            .insert(SNAPSHOT_HEADER, HeaderValue::from(s.id));
    }
    Ok(response)
}

pub async fn put(
    State(api): Shared,
    Extension(who): Extension<Principal>,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let key = api.key_from_path(&uri)?;
    may_touch(&who, &key)?;
    Params::parse(&uri, &[])?;
    let condition = precondition(&headers)?;
    let value = read_body(&api, body).await?;
    api.check_value(&value)?;
    let op = WriteOp {
        key,
        kind: OpKind::Put(value.to_vec()),
        condition,
    };
    let (version, existed) = api.write(vec![op]).await?;
    let status = if existed[0] {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((
        status,
        [(header::ETAG, etag(version))],
        Json(WriteResponse { version }),
    )
        .into_response())
}

pub async fn delete(
    State(api): Shared,
    Extension(who): Extension<Principal>,
    uri: Uri,
    headers: HeaderMap,
) -> Result<Json<DeleteResponse>, ApiError> {
    let key = api.key_from_path(&uri)?;
    may_touch(&who, &key)?;
    Params::parse(&uri, &[])?;
    let condition = precondition(&headers)?;
    let op = WriteOp {
        key,
        kind: OpKind::Delete,
        condition,
    };
    let (version, existed) = api.write(vec![op]).await?;
    Ok(Json(DeleteResponse {
        deleted: existed[0],
        version,
    }))
}

pub async fn scan(
    State(api): Shared,
    Extension(who): Extension<Principal>,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = Params::parse(
        &uri,
        &[
            "prefix",
            "start_after",
            "limit",
            "encoding",
            "consistency",
            "snapshot",
            "as_of",
        ],
    )?;
    let prefix = params.bytes("prefix").unwrap_or_default();
    may_list(&who, &prefix)?;
    let snapshot = snapshots::resolve(&api, &params).await?;
    let start_after = params.bytes("start_after");
    for (name, key) in [
        ("prefix", Some(&prefix)),
        ("start_after", start_after.as_ref()),
    ] {
        if key.is_some_and(|k| k.len() > api.config.max_key_bytes) {
            return Err(ApiError::new(
                ErrorCode::KeyTooLarge,
                format!(
                    "`{name}` exceeds the key limit of {} bytes",
                    api.config.max_key_bytes
                ),
            ));
        }
    }
    let limit = params.limit(DEFAULT_SCAN_LIMIT, api.config.max_scan_limit)?;
    let encoding = params.encoding()?;
    let consistency = params.consistency()?;
    if let Some(s) = &snapshot {
        for shard in 0..api.config.shards {
            at_cut(s, shard)?;
        }
    }
    let page = api
        .router
        .scan(
            &prefix,
            start_after.as_deref(),
            api.page(limit),
            |shard| match &snapshot {
                Some(s) => at_cut(s, shard).unwrap_or(consistency),
                None => consistency,
            },
        )
        .await?;
    let next_start_after = match (page.more, page.items.last()) {
        (true, Some((key, _))) => Some(url::encode(key)),
        _ => None,
    };
    let items = page
        .items
        .iter()
        .map(|(key, v)| ScanItem::new(key, &v.value, v.version, encoding))
        .collect();
    let mut response = Json(ScanResponse {
        items,
        next_start_after,
    })
    .into_response();
    if let Some(s) = &snapshot {
        response
            .headers_mut()
            .insert(SNAPSHOT_HEADER, HeaderValue::from(s.id));
    }
    Ok(response)
}

/// The header naming the snapshot that served a point-in-time read.
const SNAPSHOT_HEADER: &str = "cairn-snapshot";

/// Read `shard` as the snapshot saw it: at the version just below its cut.
fn at_cut(snapshot: &cairn_snapshot::SnapshotRecord, shard: u32) -> Result<Consistency, ApiError> {
    snapshot
        .read_version(shard)
        .map(Consistency::AtVersion)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::StorageError,
                format!("snapshot {} has no cut for shard {shard}", snapshot.id),
            )
        })
}

pub async fn batch(
    State(api): Shared,
    Extension(who): Extension<Principal>,
    uri: Uri,
    body: Body,
) -> Result<Json<BatchResponse>, ApiError> {
    Params::parse(&uri, &[])?;
    let body = read_body(&api, body).await?;
    let request: BatchRequest = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, format!("invalid batch: {e}")))?;
    if request.ops.is_empty() {
        return Err(ApiError::new(ErrorCode::EmptyBatch, "the batch has no ops"));
    }
    let mut ops = Vec::with_capacity(request.ops.len());
    let mut seen = std::collections::HashMap::with_capacity(request.ops.len());
    for (i, op) in request.ops.into_iter().enumerate() {
        let bad = |m: &str| ApiError::new(ErrorCode::BadBatch, format!("op {i}: {m}"));
        let bytes = |text: &Option<String>, b64: &Option<String>, what: &str| {
            if text.is_some() && b64.is_some() {
                return Err(bad(&format!("give `{what}` or `{what}_b64`, not both")));
            }
            join_bytes(text, b64).map_err(|e| bad(&format!("`{what}_b64` is not base64: {e}")))
        };
        if op.key.is_none() && op.key_b64.is_none() {
            return Err(bad("`key` or `key_b64` is required"));
        }
        let key = bytes(&op.key, &op.key_b64, "key")?;
        api.check_key(&key).map_err(|e| e.in_op(i))?;
        may_touch(&who, &key).map_err(|e| e.in_op(i))?;
        let has_value = op.value.is_some() || op.value_b64.is_some();
        let kind = match op.op {
            BatchOpKind::Put if !has_value => {
                return Err(bad("a put needs `value` or `value_b64`"))
            }
            BatchOpKind::Put => {
                let value = bytes(&op.value, &op.value_b64, "value")?;
                api.check_value(&value).map_err(|e| e.in_op(i))?;
                OpKind::Put(value)
            }
            BatchOpKind::Delete if has_value => return Err(bad("a delete takes no value")),
            BatchOpKind::Delete => OpKind::Delete,
        };
        let condition = match (op.if_version, op.if_absent) {
            (Some(_), Some(_)) => return Err(bad("give `if_version` or `if_absent`, not both")),
            (Some(v), None) => Condition::Version(v),
            (None, Some(true)) => Condition::Absent,
            (None, Some(false)) => Condition::Exists,
            (None, None) => Condition::Always,
        };
        // Which of two ops on a key wins would be a guess (and two creates could both
        // pass): refuse it, as etcd refuses a key twice in a transaction.
        if let Some(first) = seen.insert(key.clone(), i) {
            return Err(bad(&format!(
                "op {first} already names this key; a batch names each key once"
            )));
        }
        ops.push(WriteOp {
            key,
            kind,
            condition,
        });
    }
    Ok(Json(api.write_batch(ops).await?))
}

impl ApiState {
    /// The key of a `/v1/kv/{key}` path, strictly decoded and checked.
    fn key_from_path(&self, uri: &Uri) -> Result<Vec<u8>, ApiError> {
        let raw = uri.path().strip_prefix(KV_PREFIX).unwrap_or_default();
        let key = url::decode(raw).map_err(|e| {
            ApiError::new(ErrorCode::BadKeyEncoding,
                format!(
                    "the key has a malformed percent-escape at byte {} (use %XX with two hex digits)",
                    e.position
                ),
            )
        })?;
        self.check_key(&key)?;
        Ok(key)
    }

    fn check_value(&self, value: &[u8]) -> Result<(), ApiError> {
        if value.len() > self.config.max_value_bytes {
            return Err(ApiError::new(
                ErrorCode::ValueTooLarge,
                format!(
                    "the value is {} bytes; the limit is {} (--max-value-bytes)",
                    value.len(),
                    self.config.max_value_bytes
                ),
            ));
        }
        Ok(())
    }

    fn check_key(&self, key: &[u8]) -> Result<(), ApiError> {
        if key.is_empty() {
            return Err(ApiError::new(ErrorCode::EmptyKey, "the key is empty"));
        }
        if key.len() > self.config.max_key_bytes {
            return Err(ApiError::new(
                ErrorCode::KeyTooLarge,
                format!(
                    "the key is {} bytes; the limit is {} (--max-key-bytes)",
                    key.len(),
                    self.config.max_key_bytes
                ),
            ));
        }
        Ok(())
    }

    /// Apply a batch: within one shard as one log entry, across shards as a
    /// transaction.
    async fn write_batch(&self, ops: Vec<WriteOp>) -> Result<BatchResponse, ApiError> {
        let first = self.router.shard_of(&ops[0].key);
        if ops.iter().all(|op| self.router.shard_of(&op.key) == first) {
            let n = ops.len();
            let (version, _) = self.write(ops).await?;
            return Ok(BatchResponse {
                version,
                versions: vec![Some(version); n],
                transaction: None,
            });
        }
        let keys: Vec<Vec<u8>> = ops.iter().map(|op| op.key.clone()).collect();
        match self.txns.commit(ops, self.config.request_timeout()).await {
            Ok(outcome) => Ok(BatchResponse {
                version: outcome
                    .versions
                    .iter()
                    .flatten()
                    .copied()
                    .max()
                    .unwrap_or(0),
                versions: outcome.versions,
                transaction: Some(outcome.txn),
            }),
            Err(TxnError::Rejected { op, current }) => Err(precondition_failed(&keys, op, current)),
            Err(TxnError::Locked { op, txn }) => Err(locked(&keys, op, txn)),
            Err(e) => Err(e.into()),
        }
    }

    /// Propose ops that must all fall in one shard; returns the version and, per op,
    /// whether its key had a live value. A key still locked by a cross-shard
    /// transaction when the router stops waiting (the request's deadline) is refused.
    async fn write(&self, ops: Vec<WriteOp>) -> Result<(u64, Vec<bool>), ApiError> {
        // Tests keep a write in flight here, to stop a node under it.
        if let Some(delay) = cairn_store::delay_point!("api.write.delay") {
            tracing::info!(?delay, "api.write.delay: holding a write");
            tokio::time::sleep(delay).await;
        }
        let shard = self.router.shard_of(&ops[0].key);
        debug_assert!(ops.iter().all(|op| self.router.shard_of(&op.key) == shard));
        let keys: Vec<Vec<u8>> = ops.iter().map(|op| op.key.clone()).collect();
        match self.router.write(shard, ops).await? {
            ApplyOutcome::Applied { version, existed } => Ok((version, existed)),
            ApplyOutcome::Rejected { op, current } => Err(precondition_failed(&keys, op, current)),
            ApplyOutcome::Locked { op, txn } => Err(locked(&keys, op, txn)),
            other => Err(ApiError::new(
                ErrorCode::StorageError,
                format!("a batch applied as {other:?}"),
            )),
        }
    }
}

/// The op of a batch (or the single key) a refusal is about, for messages.
fn which_op(keys: &[Vec<u8>], op: usize) -> String {
    let key = keys.get(op).map(|k| url::encode(k)).unwrap_or_default();
    if keys.len() > 1 {
        format!("op {op} (key `{key}`)")
    } else {
        format!("key `{key}`")
    }
}

fn precondition_failed(keys: &[Vec<u8>], op: usize, current: Option<u64>) -> ApiError {
    let now = match current {
        Some(v) => format!("its current version is {v}"),
        None => "it is absent".to_owned(),
    };
    ApiError::new(
        ErrorCode::PreconditionFailed,
        format!(
            "the condition on {} failed: {now}; nothing was written",
            which_op(keys, op)
        ),
    )
}

fn locked(keys: &[Vec<u8>], op: usize, txn: u64) -> ApiError {
    ApiError::new(ErrorCode::KeyLocked,
        format!(
            "{} is locked by transaction {txn}, which did not finish before the deadline; nothing was written, retry",
            which_op(keys, op)
        ),
    )
}

/// The condition of `If-Match` / `If-None-Match` on a write.
///
/// `If-Match` takes `*` or a list of ETags and compares strongly (RFC 9110 13.1.1):
/// a weak ETag (`W/"7"`) never matches, so a list of weak ones only fails (412).
/// `If-None-Match` on a write takes `*` (create only).
fn precondition(headers: &HeaderMap) -> Result<Condition, ApiError> {
    match (
        header_text(headers, header::IF_MATCH)?,
        header_text(headers, header::IF_NONE_MATCH)?,
    ) {
        (Some(_), Some(_)) => Err(ApiError::new(
            ErrorCode::BadHeader,
            "give If-Match or If-None-Match, not both",
        )),
        (Some(m), None) => {
            let tags = EntityTags::parse(&m).map_err(|why| {
                ApiError::new(ErrorCode::BadHeader,
                    format!("If-Match must be * or a list of ETags (\"<version>\") from earlier responses: {why}"),
                )
            })?;
            Ok(match (tags.any, tags.strong.as_slice()) {
                (true, _) => Condition::Exists,
                (false, [one]) => Condition::Version(*one),
                (false, _) => Condition::VersionIn(tags.strong),
            })
        }
        (None, Some(m)) if m == "*" => Ok(Condition::Absent),
        (None, Some(_)) => Err(ApiError::new(
            ErrorCode::BadHeader,
            "If-None-Match on a write supports only * (create only)",
        )),
        (None, None) => Ok(Condition::Always),
    }
}

fn header_text(headers: &HeaderMap, name: header::HeaderName) -> Result<Option<String>, ApiError> {
    headers
        .get(&name)
        .map(|v| {
            v.to_str()
                .map(|s| s.trim().to_owned())
                .map_err(|_| ApiError::new(ErrorCode::BadHeader, format!("{name} is not ASCII")))
        })
        .transpose()
}

/// An `If-Match` / `If-None-Match` value: `*`, or a comma-separated list of entity
/// tags, strong (`"7"`) or weak (`W/"7"`). Cairn's ETags are versions in quotes; a
/// well-formed tag of other content is kept out of both lists, since it can match
/// nothing.
#[derive(Debug, Default, PartialEq, Eq)]
struct EntityTags {
    any: bool,
    strong: Vec<u64>,
    weak: Vec<u64>,
}

impl EntityTags {
    fn parse(value: &str) -> Result<EntityTags, String> {
        let value = value.trim();
        if value == "*" {
            return Ok(EntityTags {
                any: true,
                ..Default::default()
            });
        }
        let mut tags = EntityTags::default();
        for tag in value.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let (weak, quoted) = match tag.strip_prefix("W/") {
                Some(rest) => (true, rest),
                None => (false, tag),
            };
            let opaque = quoted
                .strip_prefix('"')
                .and_then(|t| t.strip_suffix('"'))
                .filter(|t| !t.contains('"'))
                .ok_or_else(|| format!("`{tag}` is not an entity tag (quote it: \"{tag}\")"))?;
            if let Ok(version) = opaque.parse::<u64>() {
                if weak {
                    tags.weak.push(version);
                } else {
                    tags.strong.push(version);
                }
            }
        }
        if tags.strong.is_empty() && tags.weak.is_empty() && !value.contains('"') {
            return Err("no entity tag".into());
        }
        Ok(tags)
    }

    /// Weak comparison (`If-None-Match` on a read): does the current version match?
    fn matches_weakly(&self, version: u64) -> bool {
        self.any || self.strong.contains(&version) || self.weak.contains(&version)
    }
}

fn etag(version: u64) -> HeaderValue {
    // A decimal number in quotes is always a valid header value.
    HeaderValue::from_str(&format!("\"{version}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entity_tag_lists_parse_as_rfc_9110_writes_them() {
        let tags = EntityTags::parse(r#""5", W/"7" , "x", "9""#).unwrap();
        assert_eq!(
            (tags.any, tags.strong, tags.weak),
            (false, vec![5, 9], vec![7])
        );
        assert!(EntityTags::parse("*").unwrap().any);
        // Only opaque tags that name no version: well-formed, matches nothing.
        assert_eq!(
            EntityTags::parse(r#""abc""#).unwrap(),
            EntityTags::default()
        );
        for bad in ["5", "W/5", r#""5"#, "", r#""5"6""#] {
            assert!(EntityTags::parse(bad).is_err(), "{bad}");
        }
        let tags = EntityTags::parse(r#"W/"7""#).unwrap();
        assert!(tags.matches_weakly(7) && !tags.matches_weakly(8));
        assert!(tags.strong.is_empty(), "a weak tag never matches strongly");
    }
}
