//! Who is asking, and may they: bearer tokens with roles, checked before any handler
//! runs.
//!
//! Owns the token records (in the meta group, under `a/token/`, only the hash of each
//! secret), the root token (its hash, read from `--root-token-file` at start), the
//! table of which role each route needs ([`access`]) and the short-lived cache that
//! spares the meta group a read per request. It must never keep, log or answer with a
//! secret: a token's text exists only in the answer that creates it and in the
//! client's hands.
//!
//! Authentication is on when the node has a root token. Without one every request is
//! served as `anonymous` with every right, which [`crate::config`] allows only on
//! loopback addresses (or with `--insecure`).

pub mod access;
pub mod audit;
pub mod token;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use cairn_client::api::{CreatedToken, Role, TokenInfo};
use cairn_cluster::keyspace::AUTH_TOKEN;
use cairn_cluster::meta::{self, Meta, MetaError};
use cairn_cluster::Shards as _;
use cairn_store::{Condition, OpKind, WriteOp};

use crate::router::Control;
use token::TokenRecord;

/// How long a node trusts what it read of a token: a revoked token stops working on
/// every node within this long.
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(1);
/// Tokens a node remembers at most; past this the cache starts over.
const TOKEN_CACHE_ENTRIES: usize = 4096;
/// Longest token name, in bytes.
pub const MAX_TOKEN_NAME_BYTES: usize = 128;

/// What can go wrong authenticating or keeping tokens.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("root token file {path}: {why}")]
    RootToken { path: String, why: String },
    #[error("the meta group could not be asked about the token: {0}")]
    Meta(#[from] MetaError),
    #[error("corrupt token record `{id}`: {why}")]
    Corrupt { id: String, why: String },
    #[error("a token name must be 1 to {MAX_TOKEN_NAME_BYTES} bytes without control characters")]
    BadName,
    #[error("no token `{0}`")]
    NotFound(String),
    #[error("{0}")]
    BadPrefix(String),
}

/// Who sent a request, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The token's name, `root`, or `anonymous` when authentication is off.
    pub name: String,
    pub role: Role,
    /// Only keys starting with this may be read or written (`None`: every key).
    pub prefix: Option<Vec<u8>>,
}

impl Principal {
    fn everything(name: &str) -> Principal {
        Principal {
            name: name.into(),
            role: Role::Admin,
            prefix: None,
        }
    }

    /// Whether this principal may read or write `key`.
    pub fn may_touch(&self, key: &[u8]) -> bool {
        self.prefix.as_deref().is_none_or(|p| key.starts_with(p))
    }

    /// Whether this principal may see every key under `prefix` (a scan or a diff):
    /// only if they all lie within its own.
    pub fn may_list(&self, prefix: &[u8]) -> bool {
        self.may_touch(prefix)
    }

    /// Why a key or prefix outside this principal's is refused.
    pub fn outside(&self) -> String {
        let prefix = self.prefix.as_deref().unwrap_or_default();
        format!(
            "token `{}` may only touch keys starting with `{}`",
            self.name,
            String::from_utf8_lossy(prefix)
        )
    }
}

/// A token as last read from the meta group (`None`: no such token).
struct Cached {
    read_at: Instant,
    record: Option<TokenRecord>,
}

/// A node's authenticator and token keeper.
pub struct Auth {
    /// The root token's hash; `None` turns authentication off.
    root: Option<blake3::Hash>,
    control: Arc<Control>,
    cache: Mutex<HashMap<String, Cached>>,
}

impl Auth {
    pub fn new(root: Option<blake3::Hash>, control: Arc<Control>) -> Auth {
        Auth {
            root,
            control,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn enabled(&self) -> bool {
        self.root.is_some()
    }

    /// The sender of a request with these headers; `Ok(None)` when the request
    /// carries no credentials the cluster knows.
    pub async fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Principal>, AuthError> {
        let Some(root) = &self.root else {
            return Ok(Some(Principal::everything("anonymous")));
        };
        let Some(bearer) = bearer(headers) else {
            return Ok(None);
        };
        // blake3's `Hash` compares in constant time.
        if blake3::hash(bearer.as_bytes()) == *root {
            return Ok(Some(Principal::everything("root")));
        }
        let Some((id, hash)) = token::parse(bearer) else {
            return Ok(None);
        };
        Ok(self
            .record(id)
            .await?
            .filter(|record| record.matches(&hash))
            .map(|record| Principal {
                name: record.name,
                role: record.role,
                prefix: record.prefix.map(String::into_bytes),
            }))
    }

    /// Token `id`'s record: from the cache while fresh, else by a linearizable read of
    /// the meta group, else (the meta group unreachable) from this node's meta replica.
    async fn record(&self, id: &str) -> Result<Option<TokenRecord>, AuthError> {
        if let Some(cached) = self.cached(id) {
            return Ok(cached);
        }
        let key = key_of(id);
        let found = match Meta::new(&*self.control).get(key.clone()).await {
            Ok(found) => found,
            Err(e) => match self.control.meta_get_here(&key) {
                Some(local) => Some(local),
                None => return Err(e.into()),
            },
        };
        let record = found
            .filter(|v| !v.value.is_empty())
            .map(|v| decode(id, &v.value))
            .transpose()?;
        let mut cache = self.lock();
        if cache.len() >= TOKEN_CACHE_ENTRIES {
            cache.clear();
        }
        cache.insert(
            id.to_owned(),
            Cached {
                read_at: Instant::now(),
                record: record.clone(),
            },
        );
        Ok(record)
    }

    fn cached(&self, id: &str) -> Option<Option<TokenRecord>> {
        let cache = self.lock();
        let cached = cache.get(id)?;
        (cached.read_at.elapsed() < TOKEN_CACHE_TTL).then(|| cached.record.clone())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Cached>> {
        // The map is only a cache: a panic while holding it cannot leave it wrong in
        // a way that matters, so a poisoned lock is used as it is.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Issue a token with `role`, recorded as created by `by`.
    pub async fn create(
        &self,
        by: &Principal,
        name: &str,
        role: Role,
        prefix: Option<String>,
    ) -> Result<CreatedToken, AuthError> {
        if name.is_empty()
            || name.len() > MAX_TOKEN_NAME_BYTES
            || name.chars().any(char::is_control)
        {
            return Err(AuthError::BadName);
        }
        if prefix.is_some() && role == Role::Admin {
            return Err(AuthError::BadPrefix(
                "an admin token covers every key; a prefix limits read and write tokens".into(),
            ));
        }
        if prefix.as_deref() == Some("") {
            return Err(AuthError::BadPrefix(
                "an empty prefix limits nothing; leave it out".into(),
            ));
        }
        loop {
            let issued = token::issue();
            let record = TokenRecord {
                name: name.to_owned(),
                role,
                prefix: prefix.clone(),
                hash: issued.hash.to_hex().to_string(),
                created_ms: cairn_cluster::clock::now_ms(),
                created_by: by.name.clone(),
            };
            let value = serde_json::to_vec(&record).map_err(|e| AuthError::Corrupt {
                id: issued.id.clone(),
                why: e.to_string(),
            })?;
            let put = meta::put(key_of(&issued.id), value, Condition::Absent);
            // Refused only if the random id is taken: draw another.
            if Meta::new(&*self.control).write(vec![put]).await?.is_some() {
                tracing::info!(id = %issued.id, name, %role, by = %by.name, "token created");
                return Ok(CreatedToken {
                    info: record.info(&issued.id),
                    token: issued.text,
                });
            }
        }
    }

    /// Every token, without secrets, oldest first.
    pub async fn list(&self) -> Result<Vec<TokenInfo>, AuthError> {
        let all = Meta::new(&*self.control).scan_all(AUTH_TOKEN).await?;
        let mut tokens = Vec::with_capacity(all.len());
        for (key, versioned) in all {
            let id = String::from_utf8_lossy(&key[AUTH_TOKEN.len()..]).into_owned();
            tokens.push(decode(&id, &versioned.value)?.info(&id));
        }
        tokens.sort_by(|a, b| (a.created_ms, &a.id).cmp(&(b.created_ms, &b.id)));
        Ok(tokens)
    }

    /// Revoke token `id`: this node refuses it at once, every other node within
    /// [`TOKEN_CACHE_TTL`].
    pub async fn revoke(&self, by: &Principal, id: &str) -> Result<(), AuthError> {
        let delete = WriteOp {
            key: key_of(id),
            kind: OpKind::Delete,
            condition: Condition::Exists,
        };
        let written = Meta::new(&*self.control).write(vec![delete]).await?;
        self.lock().remove(id);
        match written {
            Some(_) => {
                tracing::info!(id, by = %by.name, "token revoked");
                Ok(())
            }
            None => Err(AuthError::NotFound(id.to_owned())),
        }
    }
}

/// The token of an `Authorization: Bearer <token>` header.
fn bearer(headers: &HeaderMap) -> Option<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)?
        .to_str()
        .ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

fn key_of(id: &str) -> Vec<u8> {
    [AUTH_TOKEN, id.as_bytes()].concat()
}

fn decode(id: &str, value: &[u8]) -> Result<TokenRecord, AuthError> {
    serde_json::from_slice(value).map_err(|e| AuthError::Corrupt {
        id: id.to_owned(),
        why: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(value: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            axum::http::header::AUTHORIZATION,
            value.parse().expect("a header value"),
        );
        headers
    }

    #[test]
    fn a_bearer_token_is_read_from_its_header_only() {
        assert_eq!(bearer(&headers("Bearer abc")), Some("abc"));
        assert_eq!(bearer(&headers("bearer  abc ")), Some("abc"));
        assert_eq!(bearer(&headers("Basic abc")), None);
        assert_eq!(bearer(&headers("Bearer ")), None);
        assert_eq!(bearer(&headers("Bearerabc")), None);
        assert_eq!(bearer(&HeaderMap::new()), None);
    }
}
