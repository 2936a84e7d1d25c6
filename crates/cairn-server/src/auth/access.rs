//! Which role each route needs, in one table, and the layer that enforces it before
//! any handler runs.
//!
//! The table fails closed: a route it does not name needs `admin`, so a route added
//! without thought is never open. The same layer refuses a POST that is not JSON,
//! which is what keeps a browser's cross-site form post (or a `no-cors` fetch) from
//! reaching a route: those can only send form or text bodies.

use std::sync::Arc;

use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderValue, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use cairn_client::api::{AuditRecord, Role};

use crate::api::{ApiError, ApiState, ErrorCode};

/// What a route asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Anyone: liveness, readiness, metrics and the API's description, which load
    /// balancers and scrapers reach without credentials and which show no data.
    Open,
    /// A token with at least this role.
    Needs(Role),
}

/// The access route `route` (as registered, e.g. `/v1/kv/{*key}`) needs for `method`.
pub fn required(method: &Method, route: &str) -> Access {
    let read = matches!(*method, Method::GET | Method::HEAD);
    match route {
        "/health" | "/ready" | "/metrics" | "/v1/openapi.json" => Access::Open,
        "/v1/kv" | "/v1/kv/" | "/v1/kv/{*key}" if read => Access::Needs(Role::Read),
        "/v1/kv/" | "/v1/kv/{*key}" if matches!(*method, Method::PUT | Method::DELETE) => {
            Access::Needs(Role::Write)
        }
        "/v1/batch" if *method == Method::POST => Access::Needs(Role::Write),
        "/v1/snapshots" | "/v1/snapshots/{id}" | "/v1/snapshots/{a}/diff/{b}" | "/v1/cluster"
            if read =>
        {
            Access::Needs(Role::Read)
        }
        _ => Access::Needs(Role::Admin),
    }
}

/// The layer: authenticate, check the role, check a POST's media type, then run the
/// handler with the [`super::Principal`] in the request's extensions.
pub async fn authorize(
    State(api): State<Arc<ApiState>>,
    route: Option<MatchedPath>,
    mut request: Request,
    next: Next,
) -> Response {
    let access = route.as_ref().map_or(Access::Needs(Role::Admin), |r| {
        required(request.method(), r.as_str())
    });
    if let Access::Needs(role) = access {
        let principal = match api.auth.authenticate(request.headers()).await {
            Ok(Some(principal)) => principal,
            Ok(None) => return unauthenticated(),
            Err(e) => {
                tracing::warn!(error = %e, "could not authenticate a request");
                return ApiError::new(ErrorCode::Unavailable, e.to_string()).into_response();
            }
        };
        if principal.role < role {
            return ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "{} {} needs the `{role}` role; this token has `{}`",
                    request.method(),
                    route.as_ref().map_or("", |r| r.as_str()),
                    principal.role
                ),
            )
            .into_response();
        }
        let audited =
            role == Role::Admin && !matches!(*request.method(), Method::GET | Method::HEAD);
        let action = audited.then(|| {
            (
                principal.name.clone(),
                request.method().to_string(),
                request.uri().path().to_owned(),
            )
        });
        request.extensions_mut().insert(principal);
        let response = guarded(request, next).await;
        if let Some((who, method, path)) = action {
            let record = AuditRecord {
                time_ms: cairn_cluster::clock::now_ms(),
                node: api.config.id,
                who,
                method,
                path,
                status: response.status().as_u16(),
            };
            if let Err(e) = super::audit::record(&api.control, record).await {
                tracing::warn!(error = %e, "an admin action could not be recorded in the audit log");
            }
        }
        return response;
    }
    guarded(request, next).await
}

/// The handler, for a POST only if it is JSON.
async fn guarded(request: Request, next: Next) -> Response {
    if request.method() == Method::POST && !is_json(request.headers()) {
        return ApiError::new(
            ErrorCode::UnsupportedMediaType,
            "a POST must say `Content-Type: application/json` (also when it has no body)",
        )
        .into_response();
    }
    next.run(request).await
}

fn unauthenticated() -> Response {
    let mut response = ApiError::new(
        ErrorCode::Unauthenticated,
        "this route needs a token: send `Authorization: Bearer <token>` \
         (a token the cluster does not know, or a revoked one, is refused the same way)",
    )
    .into_response();
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// Whether the body is declared JSON (`application/json`, parameters allowed).
fn is_json(headers: &axum::http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|media| media.trim().eq_ignore_ascii_case("application/json"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_need_read_writes_write_and_the_rest_admin() {
        let needs = |m: Method, r: &str| required(&m, r);
        assert_eq!(needs(Method::GET, "/health"), Access::Open);
        assert_eq!(
            needs(Method::GET, "/v1/kv/{*key}"),
            Access::Needs(Role::Read)
        );
        assert_eq!(needs(Method::GET, "/v1/kv"), Access::Needs(Role::Read));
        assert_eq!(
            needs(Method::PUT, "/v1/kv/{*key}"),
            Access::Needs(Role::Write)
        );
        assert_eq!(
            needs(Method::DELETE, "/v1/kv/{*key}"),
            Access::Needs(Role::Write)
        );
        assert_eq!(needs(Method::POST, "/v1/batch"), Access::Needs(Role::Write));
        assert_eq!(
            needs(Method::GET, "/v1/snapshots"),
            Access::Needs(Role::Read)
        );
        assert_eq!(
            needs(Method::POST, "/v1/snapshots"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            needs(Method::DELETE, "/v1/snapshots/{id}"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            needs(Method::GET, "/v1/backups"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            needs(Method::GET, "/v1/debug/versions"),
            Access::Needs(Role::Admin)
        );
        assert_eq!(
            needs(Method::GET, "/v1/a-route-added-later"),
            Access::Needs(Role::Admin)
        );
    }

    #[test]
    fn only_json_media_types_pass() {
        let with = |v: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::CONTENT_TYPE, v.parse().unwrap());
            is_json(&h)
        };
        assert!(with("application/json"));
        assert!(with("Application/JSON; charset=utf-8"));
        assert!(!with("text/plain"));
        assert!(!with("application/x-www-form-urlencoded"));
        assert!(!with("multipart/form-data; boundary=x"));
        assert!(!is_json(&axum::http::HeaderMap::new()));
    }
}
