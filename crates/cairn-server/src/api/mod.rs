//! The HTTP API: request parsing and validation, and the mapping of results and errors
//! to HTTP. It knows nothing of Raft; it hands each request to the [`Router`].
//!
//! Every error is a JSON body `{"error": {"code", "message"}}` with a status that tells
//! the client what to do: 4xx means the request itself is wrong and nothing changed;
//! 503 means retry (for `outcome_unknown`, read before retrying a write). Validation
//! happens before anything is proposed, so a refused request never touches a shard.

mod backups;
mod cluster;
mod debug;
mod error;
mod kv;
mod openapi;
mod placement;
mod request;
mod snapshots;
mod tokens;
pub mod url;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use cairn_backup::Backups;
use cairn_raft::ShardError;
use cairn_snapshot::{Coordinator, SnapshotError};
use cairn_txn::{Transactions, TxnError};
use metrics_exporter_prometheus::PrometheusHandle;

pub use error::{ApiError, ErrorCode};

use crate::auth::{access, Auth};
use crate::config::Config;
use crate::revert::Reverts;
use crate::router::{Control, Router};

/// What the handlers share: the client router and the services built on the control
/// path (never the control path itself).
pub struct ApiState {
    pub router: Arc<Router>,
    pub snapshots: Arc<Coordinator<Control>>,
    pub txns: Arc<Transactions<Control>>,
    pub backups: Arc<Backups<Control>>,
    pub reverts: Arc<Reverts>,
    /// Control calls (replica moves).
    pub control: Arc<Control>,
    /// Who may do what (tokens, roles).
    pub auth: Arc<Auth>,
    pub config: Config,
    pub cluster_id: String,
    pub metrics: Option<PrometheusHandle>,
}

impl ApiState {
    /// A page of at most `items` keys within the node's page byte budget.
    pub fn page(&self, items: usize) -> cairn_store::PageLimit {
        cairn_store::PageLimit {
            items,
            bytes: self.config.max_page_bytes,
        }
    }
}

/// Build the axum application.
///
/// Every route passes [`access::authorize`] first (its role, a POST's media type);
/// the debug views exist only with `--enable-debug`.
pub fn app(state: Arc<ApiState>) -> axum::Router {
    let debug = if state.config.enable_debug {
        debug::routes()
    } else {
        axum::Router::new()
    };
    axum::Router::new()
        .route("/v1/kv", get(kv::scan))
        .route(
            "/v1/kv/",
            get(kv::empty_key).put(kv::empty_key).delete(kv::empty_key),
        )
        .route(
            "/v1/kv/{*key}",
            get(kv::get).put(kv::put).delete(kv::delete),
        )
        .route("/v1/batch", post(kv::batch))
        .route(
            "/v1/snapshots",
            get(snapshots::list).post(snapshots::create),
        )
        .route(
            "/v1/snapshots/{id}",
            get(snapshots::show).delete(snapshots::delete),
        )
        .route("/v1/snapshots/{a}/diff/{b}", get(snapshots::diff))
        .route("/v1/backups", get(backups::list).post(backups::create))
        .route("/v1/backups/schedules", get(backups::schedules))
        .route("/v1/backups/{id}", get(backups::show))
        .route("/v1/revert", post(backups::revert))
        .route("/v1/reverts", get(backups::reverts))
        .route("/v1/cluster", get(cluster::status))
        .route("/v1/shards/{id}/move", post(placement::move_replica))
        .route("/v1/nodes/join", post(placement::join))
        .route("/v1/nodes/{id}/decommission", post(placement::decommission))
        .route("/v1/auth/tokens", get(tokens::list).post(tokens::create))
        .route(
            "/v1/auth/tokens/{id}",
            axum::routing::delete(tokens::revoke),
        )
        .route("/v1/audit", get(tokens::audit))
        .route("/v1/openapi.json", get(openapi::document))
        .route("/health", get(cluster::health))
        .route("/ready", get(cluster::ready))
        .route("/metrics", get(cluster::metrics))
        .merge(debug)
        // A route layer runs once the route is matched, so it knows which one it
        // guards; unmatched requests get the fallbacks' 404 and 405, which show
        // nothing.
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            access::authorize,
        ))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // Bodies are read with explicit limits in the handlers, which answer in JSON.
        .layer(DefaultBodyLimit::disable())
        .with_state(state)
}

/// Path parameter `index` (counting `/`-separated segments from 0, the empty one
/// before the first `/` included) of `uri`, decoded like keys: strict percent-decoding,
/// then UTF-8. axum's `Path` would answer a non-UTF-8 one with a plain-text 400 (and
/// decode malformed escapes leniently); this answers `bad_path` in JSON.
pub(crate) fn path_param(
    uri: &axum::http::Uri,
    index: usize,
    name: &str,
) -> Result<String, ApiError> {
    let raw = uri.path().split('/').nth(index).unwrap_or_default();
    let bad = |why: String| ApiError::new(ErrorCode::BadPath, format!("`{name}` {why}"));
    let bytes = url::decode(raw).map_err(|e| {
        bad(format!(
            "has a malformed percent-escape at byte {} (use %XX with two hex digits)",
            e.position
        ))
    })?;
    String::from_utf8(bytes).map_err(|_| bad("is not UTF-8 once percent-decoded".into()))
}

async fn not_found() -> ApiError {
    ApiError::new(ErrorCode::NotFound, "no such route")
}

async fn method_not_allowed() -> ApiError {
    ApiError::new(
        ErrorCode::MethodNotAllowed,
        "this route does not accept that method",
    )
}

impl From<ShardError> for ApiError {
    fn from(e: ShardError) -> ApiError {
        let code = match &e {
            ShardError::NotLeader { .. } | ShardError::Unavailable { .. } => ErrorCode::Unavailable,
            ShardError::OutcomeUnknown { .. } => ErrorCode::OutcomeUnknown,
            ShardError::ShuttingDown => ErrorCode::ShuttingDown,
            ShardError::HistoryCollected { .. } => ErrorCode::HistoryUnavailable,
            // A refused client call or a wrong-kind answer is a fault inside the
            // cluster, never the client's: reported like a storage fault, as a 500.
            ShardError::Storage { .. }
            | ShardError::Refused { .. }
            | ShardError::Protocol { .. } => ErrorCode::StorageError,
            ShardError::TooLarge { .. } => ErrorCode::TooLarge,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<SnapshotError> for ApiError {
    fn from(e: SnapshotError) -> ApiError {
        ApiError::of_snapshot(&e)
    }
}

impl ApiError {
    pub fn of_snapshot(e: &SnapshotError) -> ApiError {
        let code = match e {
            SnapshotError::NotFound(_) => ErrorCode::SnapshotNotFound,
            SnapshotError::Aborted { .. } => ErrorCode::SnapshotAborted,
            SnapshotError::NameTaken(_) => ErrorCode::SnapshotNameTaken,
            SnapshotError::BadName(_) => ErrorCode::BadSnapshotName,
            SnapshotError::Contended | SnapshotError::Blocked => ErrorCode::Unavailable,
            SnapshotError::Shard(shard) => return ApiError::from(shard.clone()),
            SnapshotError::Corrupt(_) => ErrorCode::StorageError,
        };
        ApiError::new(code, e.to_string())
    }
}

impl From<TxnError> for ApiError {
    fn from(e: TxnError) -> ApiError {
        let code = match &e {
            TxnError::Rejected { .. } => ErrorCode::PreconditionFailed,
            TxnError::Locked { .. } => ErrorCode::KeyLocked,
            TxnError::Aborted { .. } => ErrorCode::TransactionAborted,
            TxnError::OutcomeUnknown { .. } => ErrorCode::OutcomeUnknown,
            TxnError::Shard(shard) => return ApiError::from(shard.clone()),
            TxnError::Meta(_) => ErrorCode::Unavailable,
            TxnError::Corrupt(_) => ErrorCode::StorageError,
        };
        ApiError::new(code, e.to_string())
    }
}
