//! What every handler reads from a request besides its path: the query parameters
//! (only those the route knows), and the body (within `--max-request-bytes`).

use axum::body::Body;
use axum::http::Uri;
use cairn_client::api::Encoding;
use cairn_raft::Consistency;

use super::{url, ApiError, ApiState, ErrorCode};

/// Read an optional JSON body: empty (or blank) gives `T::default()`; anything else
/// must parse, or it is a 400 `bad_json` naming `what`.
pub(super) async fn read_optional_json<T: serde::de::DeserializeOwned + Default>(
    api: &ApiState,
    body: Body,
    what: &str,
) -> Result<T, ApiError> {
    let body = read_body(api, body).await?;
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::new(ErrorCode::BadJson, format!("invalid {what}: {e}")))
}

/// How long a client may take to send a request's body: a client that trickles one
/// would otherwise hold its connection (one of `--max-connections`) for ever.
pub(super) const BODY_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Read a request body of at most `--max-request-bytes`, within [`BODY_TIMEOUT`].
pub(super) async fn read_body(api: &ApiState, body: Body) -> Result<axum::body::Bytes, ApiError> {
    let limit = api.config.max_request_bytes;
    let read = tokio::time::timeout(BODY_TIMEOUT, axum::body::to_bytes(body, limit))
        .await
        .map_err(|_| {
            ApiError::new(
                ErrorCode::BadBody,
                format!(
                    "the request body did not arrive within {} s",
                    BODY_TIMEOUT.as_secs()
                ),
            )
        })?;
    read.map_err(|e| {
        let too_large = std::error::Error::source(&e)
            .is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if too_large {
            ApiError::new(
                ErrorCode::RequestTooLarge,
                format!(
                    "the request body exceeds the limit of {limit} bytes (--max-request-bytes)"
                ),
            )
        } else {
            ApiError::new(
                ErrorCode::BadBody,
                format!("could not read the request body: {e}"),
            )
        }
    })
}

/// Decoded query parameters, refusing any the route does not know.
pub(super) struct Params(Vec<(String, Vec<u8>)>);

impl Params {
    pub(super) fn parse(uri: &Uri, allowed: &[&str]) -> Result<Params, ApiError> {
        let pairs = url::query_pairs(uri.query().unwrap_or_default())
            .map_err(|m| ApiError::new(ErrorCode::BadQuery, m))?;
        if let Some((name, _)) = pairs.iter().find(|(n, _)| !allowed.contains(&n.as_str())) {
            let known = if allowed.is_empty() {
                "this route takes no query parameters".to_owned()
            } else {
                format!("known: {}", allowed.join(", "))
            };
            return Err(ApiError::new(
                ErrorCode::BadQuery,
                format!("unknown query parameter `{name}` ({known})"),
            ));
        }
        Ok(Params(pairs))
    }

    pub(super) fn bytes(&self, name: &str) -> Option<Vec<u8>> {
        self.0
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.clone())
    }

    pub(super) fn text(&self, name: &str) -> Result<Option<String>, ApiError> {
        self.bytes(name)
            .map(|v| {
                String::from_utf8(v).map_err(|_| {
                    ApiError::new(ErrorCode::BadQuery, format!("`{name}` is not UTF-8"))
                })
            })
            .transpose()
    }

    /// `limit=`: 1 to `max`, `default` when absent.
    pub(super) fn limit(&self, default: usize, max: usize) -> Result<usize, ApiError> {
        match self.text("limit")? {
            None => Ok(default.min(max)),
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => Err(ApiError::new(
                    ErrorCode::BadLimit,
                    format!("limit must be a number from 1 to {max} (--max-scan-limit)"),
                )),
            },
        }
    }

    /// `encoding=utf8|base64` for keys and values in JSON.
    pub(super) fn encoding(&self) -> Result<Encoding, ApiError> {
        match self.text("encoding")?.as_deref() {
            None | Some("utf8") => Ok(Encoding::Utf8),
            Some("base64") => Ok(Encoding::Base64),
            Some(other) => Err(ApiError::new(
                ErrorCode::BadQuery,
                format!("encoding must be `utf8` or `base64`, not `{other}`"),
            )),
        }
    }

    pub(super) fn consistency(&self) -> Result<Consistency, ApiError> {
        match self.text("consistency")?.as_deref() {
            None | Some("linearizable") => Ok(Consistency::Linearizable),
            Some("stale") => Ok(Consistency::Stale),
            Some(other) => Err(ApiError::new(
                ErrorCode::BadQuery,
                format!("consistency must be `linearizable` or `stale`, not `{other}`"),
            )),
        }
    }
}
