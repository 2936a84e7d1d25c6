//! The HTTP wire, below the typed methods: how keys and query values are
//! percent-encoded, how conditions become headers, how an error status becomes an
//! [`Error`], and how ETags and the snapshot header are read.

use base64::Engine as _;
use percent_encoding::{percent_encode, AsciiSet, NON_ALPHANUMERIC};
use reqwest::{header, RequestBuilder, Response};

use crate::{api, Error, Precondition, Result, SNAPSHOT_HEADER};

/// Bytes sent as themselves in a key; everything else is percent-encoded.
pub(crate) const KEY_SET: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~')
    .remove(b'/');

/// Like [`KEY_SET`] but with `/` encoded too, for keys with `.`/`..` segments.
pub(crate) const KEY_SET_NO_SLASH: &AsciiSet = &KEY_SET.add(b'/');

/// Percent-encodes a key for the path after `/v1/kv/`.
pub fn encode_key_path(key: &[u8]) -> Result<String> {
    if key == b"." || key == b".." {
        return Err(Error::UnaddressableKey(key.to_vec()));
    }
    let dot_segment = key
        .split(|&b| b == b'/')
        .any(|segment| segment == b"." || segment == b"..");
    let set = if dot_segment {
        KEY_SET_NO_SLASH
    } else {
        KEY_SET
    };
    Ok(encode_with(key, set))
}

/// Percent-encodes bytes for a query-string value (`prefix=`, `start_after=`).
pub fn encode_query(bytes: &[u8]) -> String {
    encode_with(bytes, KEY_SET)
}

pub(crate) fn encode_with(bytes: &[u8], set: &'static AsciiSet) -> String {
    percent_encode(bytes, set).to_string()
}

pub(crate) fn with_precondition(request: RequestBuilder, pre: Precondition) -> RequestBuilder {
    match pre {
        Precondition::None => request,
        Precondition::IfMatch(version) => {
            request.header(header::IF_MATCH, format!("\"{version}\""))
        }
        Precondition::IfExists => request.header(header::IF_MATCH, "*"),
        Precondition::IfAbsent => request.header(header::IF_NONE_MATCH, "*"),
    }
}

/// Passes a success response through; turns an error status into `Error::Api`.
pub(crate) async fn check(response: Response) -> Result<Response> {
    let status = response.status();
    if status.is_success() {
        return Ok(response);
    }
    let body = response.bytes().await?;
    Err(match serde_json::from_slice::<api::ErrorBody>(&body) {
        Ok(api::ErrorBody { error }) => Error::Api {
            status: status.as_u16(),
            code: error.code,
            message: error.message,
        },
        Err(_) => Error::Api {
            status: status.as_u16(),
            code: String::new(),
            message: String::from_utf8_lossy(&body).into_owned(),
        },
    })
}

pub(crate) async fn json<T: serde::de::DeserializeOwned>(response: Response) -> Result<T> {
    let body = response.bytes().await?;
    serde_json::from_slice(&body).map_err(|e| {
        Error::Decode(format!(
            "{e} in body {:?}",
            String::from_utf8_lossy(&body[..body.len().min(200)])
        ))
    })
}

/// The version carried by an `ETag: "N"` header.
pub(crate) fn etag_version(response: &Response) -> Result<u64> {
    let etag = response
        .headers()
        .get(header::ETAG)
        .ok_or_else(|| Error::Decode("response has no ETag header".into()))?;
    parse_etag(etag.as_bytes())
        .ok_or_else(|| Error::Decode(format!("malformed ETag {etag:?}, want \"<version>\"")))
}

/// The snapshot id of a `Cairn-Snapshot: N` header, if the response has one.
pub(crate) fn snapshot_header(response: &Response) -> Result<Option<u64>> {
    let Some(value) = response.headers().get(SNAPSHOT_HEADER) else {
        return Ok(None);
    };
    value
        .to_str()
        .ok()
        .and_then(|v| v.trim().parse().ok())
        .map(Some)
        .ok_or_else(|| Error::Decode(format!("malformed Cairn-Snapshot header {value:?}")))
}

pub(crate) fn require_snapshot_header(served: Option<u64>) -> Result<u64> {
    served.ok_or_else(|| Error::Decode("snapshot read has no Cairn-Snapshot header".into()))
}

/// Parses `"N"` (a strong ETag holding a version).
pub fn parse_etag(etag: &[u8]) -> Option<u64> {
    let inner = etag.strip_prefix(b"\"")?.strip_suffix(b"\"")?;
    std::str::from_utf8(inner).ok()?.parse().ok()
}

pub(crate) fn decode_err(e: base64::DecodeError) -> Error {
    Error::Decode(format!("bad base64 in scan item: {e}"))
}

/// Base64 (standard alphabet), as used by the `*_b64` JSON fields.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}
