//! Error answers: every code the API can answer with, its status and its meaning, in
//! one table ([`ErrorCode`]). The README's error table and the OpenAPI document are
//! tested against it, so the three cannot drift.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use cairn_client::api::{ErrorBody, ErrorDetail};

macro_rules! error_codes {
    ($($variant:ident = ($status:ident, $code:literal, $meaning:literal),)*) => {
        /// A stable, machine-readable error code. Each has one status.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum ErrorCode {
            $(#[doc = $meaning] $variant,)*
        }

        impl ErrorCode {
            /// Every code, in the order of the README's table.
            pub const ALL: &'static [ErrorCode] = &[$(ErrorCode::$variant,)*];

            pub fn as_str(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $code,)*
                }
            }

            pub fn status(self) -> StatusCode {
                match self {
                    $(ErrorCode::$variant => StatusCode::$status,)*
                }
            }

            /// What it means for the client, for people.
            pub fn meaning(self) -> &'static str {
                match self {
                    $(ErrorCode::$variant => $meaning,)*
                }
            }
        }
    };
}

error_codes! {
    EmptyKey = (BAD_REQUEST, "empty_key", "the key is empty"),
    KeyTooLarge = (BAD_REQUEST, "key_too_large", "a key or prefix is over `--max-key-bytes`"),
    BadKeyEncoding = (BAD_REQUEST, "bad_key_encoding", "the key's percent-encoding is malformed (`%` takes two hex digits)"),
    BadPath = (BAD_REQUEST, "bad_path", "a path parameter is malformed"),
    BadQuery = (BAD_REQUEST, "bad_query", "a query parameter is unknown, repeated or malformed"),
    BadLimit = (BAD_REQUEST, "bad_limit", "`limit` is not between 1 and `--max-scan-limit`"),
    BadHeader = (BAD_REQUEST, "bad_header", "`If-Match` / `If-None-Match` is malformed or both are given"),
    BadJson = (BAD_REQUEST, "bad_json", "the body is not the JSON this route takes"),
    BadBody = (BAD_REQUEST, "bad_body", "the body could not be read"),
    BadBatch = (BAD_REQUEST, "bad_batch", "an op of the batch is wrong (no key, a put without a value, a key named twice, ...)"),
    EmptyBatch = (BAD_REQUEST, "empty_batch", "the batch has no ops"),
    BadRevert = (BAD_REQUEST, "bad_revert", "a revert without `prefix`, or an empty prefix without `\"all\": true`"),
    BadSnapshotName = (BAD_REQUEST, "bad_snapshot_name", "a snapshot name must be 1 to 256 bytes and not a number"),
    BadBackupRequest = (BAD_REQUEST, "bad_backup_request", "the backup cannot be taken as asked (bad destination, nothing to extend, an incomplete snapshot)"),
    BadMove = (BAD_REQUEST, "bad_move", "the replica move (or decommission) names an unknown shard or node, a replica that is not where it is said to be, or would leave too few nodes"),
    BadTokenRequest = (BAD_REQUEST, "bad_token_request", "a token's name is empty, over 128 bytes or holds control characters"),
    AsOfInFuture = (BAD_REQUEST, "as_of_in_future", "`as_of` is later than the node's clock; the message names the newest readable time"),
    Unauthenticated = (UNAUTHORIZED, "unauthenticated", "the route needs a token (`Authorization: Bearer ...`) and none was given, or the cluster does not know it (mistyped, revoked)"),
    Forbidden = (FORBIDDEN, "forbidden", "the token's role may not do this; the message names the role needed"),
    DestinationNotAllowed = (FORBIDDEN, "destination_not_allowed", "a backup destination outside the allowed roots (`--backup-allow`)"),
    KeyNotFound = (NOT_FOUND, "key_not_found", "no value for this key"),
    NotFound = (NOT_FOUND, "not_found", "no such route, or no replica of that shard here"),
    SnapshotNotFound = (NOT_FOUND, "snapshot_not_found", "no such snapshot (or it did not complete)"),
    BackupNotFound = (NOT_FOUND, "backup_not_found", "no such backup"),
    TokenNotFound = (NOT_FOUND, "token_not_found", "no token with that id (never made, or revoked)"),
    MethodNotAllowed = (METHOD_NOT_ALLOWED, "method_not_allowed", "the route exists, the method does not"),
    SnapshotNameTaken = (CONFLICT, "snapshot_name_taken", "another snapshot has that name"),
    KeyLocked = (CONFLICT, "key_locked", "a key stayed locked by another cross-shard batch until the deadline; nothing changed, retry"),
    Conflict = (CONFLICT, "conflict", "the catalog or the keys changed under the request; nothing changed, retry"),
    MoveInProgress = (CONFLICT, "move_in_progress", "the shard is changing its members; retry shortly"),
    JoinRefused = (CONFLICT, "join_refused", "the node id is taken by another member or names a removed node, or the peer address is in use; the message says what to do"),
    NotApplied = (CONFLICT, "not_applied", "(debug views) the version asked for is not applied on this replica yet"),
    HistoryUnavailable = (GONE, "history_unavailable", "the time or version is before the oldest retained history"),
    PreconditionFailed = (PRECONDITION_FAILED, "precondition_failed", "`If-Match` / `If-None-Match` / `if_version` / `if_absent` did not hold"),
    ValueTooLarge = (PAYLOAD_TOO_LARGE, "value_too_large", "a value is over `--max-value-bytes`"),
    RequestTooLarge = (PAYLOAD_TOO_LARGE, "request_too_large", "the body is over `--max-request-bytes`"),
    TooLarge = (PAYLOAD_TOO_LARGE, "too_large", "the write is over `--max-entry-bytes` once encoded; nothing was proposed"),
    RevertTooLarge = (PAYLOAD_TOO_LARGE, "revert_too_large", "the revert would change more keys or bytes in a shard than one entry holds; revert a narrower prefix or restore"),
    UnsupportedMediaType = (UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type", "a POST without `Content-Type: application/json` (refused so that no browser form can post across sites)"),
    BadBackup = (UNPROCESSABLE_ENTITY, "bad_backup", "a backup at the destination is corrupt or incomplete; the message names the file"),
    StorageError = (INTERNAL_SERVER_ERROR, "storage_error", "the node's storage failed; the node logs why"),
    DestinationError = (BAD_GATEWAY, "destination_error", "the backup destination could not be read or written"),
    Unavailable = (SERVICE_UNAVAILABLE, "unavailable", "no leader or no quorum right now; nothing changed, retry"),
    OutcomeUnknown = (SERVICE_UNAVAILABLE, "outcome_unknown", "a write was proposed but its fate is unknown (deadline passed); read before retrying"),
    ShuttingDown = (SERVICE_UNAVAILABLE, "shutting_down", "the node is stopping"),
    SnapshotAborted = (SERVICE_UNAVAILABLE, "snapshot_aborted", "a shard could not place its marker in time; retry"),
    TransactionAborted = (SERVICE_UNAVAILABLE, "transaction_aborted", "a cross-shard batch could not be prepared everywhere in time; nothing changed, retry"),
    NotReady = (SERVICE_UNAVAILABLE, "not_ready", "(`/ready`) some shard has no known leader"),
}

impl ErrorCode {
    /// The README's error table, one row per code.
    pub fn readme_table() -> String {
        let mut table = String::from("| status | code | meaning |\n|---|---|---|\n");
        for code in ErrorCode::ALL {
            table.push_str(&format!(
                "| {} | `{}` | {} |\n",
                code.status().as_u16(),
                code.as_str(),
                code.meaning()
            ));
        }
        table
    }
}

/// An error answer: a code (which fixes the status) and a message for people.
#[derive(Debug)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> ApiError {
        ApiError {
            code,
            message: message.into(),
        }
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    /// The same error, said of op `i` of a batch.
    pub fn in_op(self, i: usize) -> ApiError {
        ApiError {
            message: format!("op {i}: {}", self.message),
            ..self
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = ErrorBody {
            error: ErrorDetail {
                code: self.code.as_str().to_owned(),
                message: self.message,
            },
        };
        (self.code.status(), Json(body)).into_response()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn codes_are_unique_and_snake_case() {
        let codes: BTreeSet<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        assert_eq!(codes.len(), ErrorCode::ALL.len(), "a code is listed twice");
        for code in codes {
            assert!(
                code.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{code}"
            );
        }
        for code in ErrorCode::ALL {
            assert!(code.status().is_client_error() || code.status().is_server_error());
        }
    }

    /// Issue 17: the README's table lacked codes the server sends. It is now this
    /// table, verbatim.
    #[test]
    fn the_readme_lists_every_error_code_as_the_server_answers_it() {
        let readme = include_str!("../../../../README.md");
        let table = ErrorCode::readme_table();
        assert!(
            readme.contains(&table),
            "README.md's error table differs from the server's codes; paste this table there:\n\n{table}"
        );
    }

    /// Every code is documented in the OpenAPI document, and every code the document
    /// lists under a status is one the server answers with that status.
    #[test]
    fn the_openapi_document_lists_codes_under_their_status() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../../docs/openapi.json")).unwrap();
        let mut listed = BTreeSet::new();
        let mut check = |status: &str, description: &str| {
            let Some((_, codes)) = description.split_once("Codes:") else {
                return;
            };
            for code in codes.split('`').skip(1).step_by(2) {
                let known = ErrorCode::ALL
                    .iter()
                    .find(|c| c.as_str() == code)
                    .unwrap_or_else(|| panic!("openapi.json lists unknown code `{code}`"));
                assert_eq!(
                    known.status().as_u16().to_string(),
                    status,
                    "openapi.json lists `{code}` under {status}"
                );
                listed.insert(code.to_owned());
            }
        };
        for path in doc["paths"].as_object().unwrap().values() {
            for op in path.as_object().unwrap().values() {
                for (status, response) in op["responses"].as_object().into_iter().flatten() {
                    let description = match response.get("$ref").and_then(|r| r.as_str()) {
                        Some(r) => {
                            let name = r.rsplit('/').next().unwrap();
                            doc["components"]["responses"][name]["description"].clone()
                        }
                        None => response["description"].clone(),
                    };
                    check(status, description.as_str().unwrap_or_default());
                }
            }
        }
        let missing: Vec<&str> = ErrorCode::ALL
            .iter()
            .map(|c| c.as_str())
            .filter(|c| !listed.contains(*c))
            .collect();
        assert!(
            missing.is_empty(),
            "codes the server answers with that openapi.json never lists: {missing:?}"
        );
    }
}
