//! `POST /v1/auth/tokens`: issue a token; `GET /v1/auth/tokens`: list them (never a
//! secret); `DELETE /v1/auth/tokens/{id}`: revoke one; `GET /v1/audit`: the admin
//! actions recorded. Admin only (see [`crate::auth::access`]).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::State;
use axum::http::{StatusCode, Uri};
use axum::{Extension, Json};
use cairn_client::api::{AuditList, CreateToken, CreatedToken, TokenList};

use super::request::{read_body, Params};
use super::{path_param, ApiError, ApiState, ErrorCode};
use crate::auth::{AuthError, Principal};

type Shared = State<Arc<ApiState>>;

pub async fn create(
    State(api): Shared,
    Extension(by): Extension<Principal>,
    uri: Uri,
    body: Body,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    Params::parse(&uri, &[])?;
    let body = read_body(&api, body).await?;
    let request: CreateToken = serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, format!("invalid token request: {e}")))?;
    let created = api
        .auth
        .create(&by, &request.name, request.role, request.prefix)
        .await
        .map_err(auth_error)?;
    Ok((StatusCode::CREATED, Json(created)))
}

pub async fn list(State(api): Shared, uri: Uri) -> Result<Json<TokenList>, ApiError> {
    Params::parse(&uri, &[])?;
    let tokens = api.auth.list().await.map_err(auth_error)?;
    Ok(Json(TokenList { tokens }))
}

pub async fn revoke(
    State(api): Shared,
    Extension(by): Extension<Principal>,
    uri: Uri,
) -> Result<StatusCode, ApiError> {
    Params::parse(&uri, &[])?;
    let id = path_param(&uri, 4, "id")?;
    api.auth.revoke(&by, &id).await.map_err(auth_error)?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /v1/audit?limit=N`: the newest admin actions, newest first (admin only).
pub async fn audit(State(api): Shared, uri: Uri) -> Result<Json<AuditList>, ApiError> {
    let params = Params::parse(&uri, &["limit"])?;
    let limit = params.limit(100, api.config.max_scan_limit)?;
    let records = crate::auth::audit::newest(&api.control, limit)
        .await
        .map_err(|e| ApiError::new(ErrorCode::Unavailable, e.to_string()))?;
    Ok(Json(AuditList { records }))
}

fn auth_error(e: AuthError) -> ApiError {
    let code = match &e {
        AuthError::BadName | AuthError::BadPrefix(_) => ErrorCode::BadTokenRequest,
        AuthError::NotFound(_) => ErrorCode::TokenNotFound,
        AuthError::Meta(_) => ErrorCode::Unavailable,
        AuthError::Corrupt { .. } | AuthError::RootToken { .. } => ErrorCode::StorageError,
    };
    ApiError::new(code, e.to_string())
}
