//! A typed async HTTP client for Cairn's API, used by the CLI, the end-to-end tests
//! and the benchmarks.
//!
//! The client is a thin, honest mapping of the HTTP API (see `api` for the JSON
//! bodies): one method per endpoint, one request per call. It **never retries a
//! write silently**: a write whose outcome is unknown (timeout, connection reset,
//! `503 unavailable`) is reported to the caller, who alone knows whether repeating it
//! is safe. Callers that want retries write them, visibly.
//!
//! Keys are arbitrary bytes. In URL paths and query strings every byte outside
//! `[A-Za-z0-9-._~/]` is percent-encoded; `/` is sent literally (the server treats
//! `/` and `%2F` alike). One caveat comes from URL normalisation, which every HTTP
//! stack applies to paths: a `/`-separated segment that is exactly `.` or `..` would
//! be collapsed before it reached the server, so keys holding such a segment are sent
//! with their slashes encoded as `%2F`. The keys `.` and `..` themselves cannot be
//! addressed in a path at all and are refused with [`Error::UnaddressableKey`]; use a
//! batch for them.
//!
//! Errors say what the caller can do: [`Error::Api`] carries the server's stable error
//! code (`key_not_found`, `precondition_failed`, `unavailable`, ...),
//! [`Error::Transport`] means the request may or may not have reached the server, and
//! [`Error::Decode`] means the server answered something this client does not
//! understand.

pub mod api;
mod error;
mod wire;

pub use error::{Error, Result};
pub use wire::{b64, encode_key_path, encode_query, parse_etag};
use wire::{
    check, decode_err, encode_with, etag_version, json, require_snapshot_header, snapshot_header,
    with_precondition, KEY_SET_NO_SLASH,
};

use std::time::Duration;

use percent_encoding::percent_decode_str;
use reqwest::StatusCode;

/// How long one request may take, end to end.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// How long calls that move replicas may take: each waits for new replicas to catch
/// up with their shards.
const LONG_CALL_TIMEOUT: Duration = Duration::from_secs(600);

/// The media type every POST carries: the server refuses others, so that a browser's
/// cross-site form post can never reach a route.
const JSON: &str = "application/json";

/// A `reqwest::Client` with a deadline per request, presenting `token` as
/// `Authorization: Bearer` (a header marked sensitive, so it never shows in `Debug`
/// output) and, given the cluster CA's PEM certificate(s), trusting only that
/// authority for `https://` nodes. The one place such a client is built: the CLI,
/// tests and the chaos harness share it.
pub fn http_client(
    timeout: Duration,
    token: Option<&str>,
    ca_pem: Option<&[u8]>,
) -> Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder().timeout(timeout);
    if let Some(token) = token {
        let mut bearer = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| Error::BadToken)?;
        bearer.set_sensitive(true);
        builder = builder.default_headers(reqwest::header::HeaderMap::from_iter([(
            reqwest::header::AUTHORIZATION,
            bearer,
        )]));
    }
    if let Some(pem) = ca_pem {
        let roots =
            reqwest::Certificate::from_pem_bundle(pem).map_err(|e| Error::BadCa(e.to_string()))?;
        if roots.is_empty() {
            return Err(Error::BadCa("no PEM certificate in it".into()));
        }
        builder = builder.use_rustls_tls().tls_built_in_root_certs(false);
        for root in roots {
            builder = builder.add_root_certificate(root);
        }
    }
    builder
        .build()
        .map_err(|e| Error::BadCa(format!("building the HTTPS client: {e}")))
}

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Consistency {
    /// Reflects every write acknowledged before the read was sent (Raft ReadIndex on
    /// the shard's leader).
    #[default]
    Linearizable,
    /// Served from the answering node's replica as applied so far; may lag behind.
    Stale,
}

impl Consistency {
    /// The value of the `consistency=` query parameter.
    pub fn as_str(self) -> &'static str {
        match self {
            Consistency::Linearizable => "linearizable",
            Consistency::Stale => "stale",
        }
    }
}

/// A condition a write requires of the key's current state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precondition {
    /// Write unconditionally.
    #[default]
    None,
    /// The key must exist at exactly this version (`If-Match: "<version>"`).
    IfMatch(u64),
    /// The key must exist, at any version (`If-Match: *`).
    IfExists,
    /// The key must be absent (`If-None-Match: *`).
    IfAbsent,
}

/// A value read back, with the version (log index) that wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Got {
    pub value: Vec<u8>,
    pub version: u64,
}

/// One page of a prefix scan.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ScanOptions {
    /// Only keys starting with these bytes; empty means every key.
    pub prefix: Vec<u8>,
    /// Resume after this key (exclusive).
    pub start_after: Option<Vec<u8>>,
    /// Page size; the server's default (100) when `None`.
    pub limit: Option<usize>,
    pub consistency: Consistency,
}

/// Which snapshot a point-in-time read reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadAt {
    /// A snapshot by id (`"17"`) or name (`snapshot=`).
    Snapshot(String),
    /// The newest completed snapshot taken at or before this RFC 3339 UTC time, e.g.
    /// `2026-11-23T13:35:08.218Z` (`as_of=`).
    AsOf(String),
}

impl ReadAt {
    /// A snapshot by its id.
    pub fn id(id: u64) -> ReadAt {
        ReadAt::Snapshot(id.to_string())
    }

    /// The query-string pair selecting this snapshot, percent-encoded.
    pub fn query(&self) -> String {
        match self {
            ReadAt::Snapshot(id) => format!("snapshot={}", encode_query(id.as_bytes())),
            ReadAt::AsOf(time) => format!("as_of={}", encode_query(time.as_bytes())),
        }
    }
}

/// The answer of a point-in-time read, with the snapshot that served it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtSnapshot<T> {
    /// The id of the snapshot read (the `Cairn-Snapshot` header).
    pub snapshot: u64,
    pub value: T,
}

/// The header naming the snapshot a point-in-time read was served from.
pub const SNAPSHOT_HEADER: &str = "cairn-snapshot";

/// Page size of [`Client::scan_all_at`]: the server's default maximum.
const SCAN_AT_PAGE: Option<usize> = Some(1000);

/// A handle on one Cairn node. Cheap to clone; clones share a connection pool.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
}

impl Client {
    /// A client for the node at `base`, e.g. `"http://127.0.0.1:8081"`.
    pub fn new(base: impl Into<String>) -> Client {
        let http = reqwest::Client::builder()
            .timeout(REQUEST_TIMEOUT)
            .build()
            // Only loading TLS roots can make this fail, and this client loads none.
            .expect("building a reqwest client without TLS roots cannot fail");
        Client::with_http(base, http)
    }

    /// A client for the node at `base` that presents `token` (`cairn.<id>.<secret>`,
    /// or a root token) as `Authorization: Bearer` on every request. The header is
    /// marked sensitive, so it never shows in `Debug` output.
    pub fn with_token(base: impl Into<String>, token: &str) -> Result<Client> {
        Client::with_options(base, Some(token), None)
    }

    /// A client for the node at `base` with an optional bearer token and, for
    /// `https://` nodes, the PEM certificate(s) of the cluster's CA: the only
    /// authority the client then trusts.
    pub fn with_options(
        base: impl Into<String>,
        token: Option<&str>,
        ca_pem: Option<&[u8]>,
    ) -> Result<Client> {
        Ok(Client::with_http(
            base,
            http_client(REQUEST_TIMEOUT, token, ca_pem)?,
        ))
    }

    /// A client sharing an existing `reqwest::Client` (and its pool and settings).
    /// `base` is a URL (`http://127.0.0.1:8081`) or a bare `host:port`, taken as
    /// plain HTTP.
    pub fn with_http(base: impl Into<String>, http: reqwest::Client) -> Client {
        let mut base = base.into();
        if !base.contains("://") {
            base = format!("http://{base}");
        }
        while base.ends_with('/') {
            base.pop();
        }
        Client { base, http }
    }

    /// The node's base URL, without a trailing slash.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Writes `value` under `key` unconditionally; returns the write's version.
    pub async fn put(&self, key: &[u8], value: &[u8]) -> Result<u64> {
        self.put_if(key, value, Precondition::None).await
    }

    /// Writes `value` under `key` if `pre` holds; a failed condition is
    /// `Error::Api { code: "precondition_failed", .. }`.
    pub async fn put_if(&self, key: &[u8], value: &[u8], pre: Precondition) -> Result<u64> {
        let url = self.key_url(key)?;
        let request = self.http.put(url).body(value.to_vec());
        let response = check(with_precondition(request, pre).send().await?).await?;
        Ok(json::<api::WriteResponse>(response).await?.version)
    }

    /// Reads `key` linearizably; `Ok(None)` when it is absent.
    pub async fn get(&self, key: &[u8]) -> Result<Option<Got>> {
        let url = self.key_url(key)?;
        self.get_url(url).await
    }

    /// Reads `key` at the given consistency; `Ok(None)` when it is absent.
    pub async fn get_with(&self, key: &[u8], consistency: Consistency) -> Result<Option<Got>> {
        let url = format!(
            "{}?consistency={}",
            self.key_url(key)?,
            consistency.as_str()
        );
        self.get_url(url).await
    }

    async fn get_url(&self, url: String) -> Result<Option<Got>> {
        let response = self.http.get(url).send().await?;
        let response = match check(response).await {
            Ok(response) => response,
            Err(Error::Api {
                status: 404, code, ..
            }) if code == "key_not_found" => return Ok(None),
            Err(e) => return Err(e),
        };
        let version = etag_version(&response)?;
        let value = response.bytes().await?.to_vec();
        Ok(Some(Got { value, version }))
    }

    /// Deletes `key` unconditionally.
    pub async fn delete(&self, key: &[u8]) -> Result<api::DeleteResponse> {
        self.delete_if(key, Precondition::None).await
    }

    /// Deletes `key` if `pre` holds.
    pub async fn delete_if(&self, key: &[u8], pre: Precondition) -> Result<api::DeleteResponse> {
        let url = self.key_url(key)?;
        let request = with_precondition(self.http.delete(url), pre);
        json(check(request.send().await?).await?).await
    }

    /// Fetches one page of a prefix scan. Keys and values come back base64-encoded on
    /// the wire (`encoding=base64`); use [`api::ScanItem::key_bytes`] and
    /// [`api::ScanItem::value_bytes`] to read them.
    pub async fn scan(&self, opts: &ScanOptions) -> Result<api::ScanResponse> {
        let mut url = format!(
            "{}/v1/kv?encoding=base64&consistency={}&prefix={}",
            self.base,
            opts.consistency.as_str(),
            encode_query(&opts.prefix)
        );
        if let Some(start_after) = &opts.start_after {
            url.push_str("&start_after=");
            url.push_str(&encode_query(start_after));
        }
        if let Some(limit) = opts.limit {
            url.push_str(&format!("&limit={limit}"));
        }
        json(check(self.http.get(url).send().await?).await?).await
    }

    /// Every live key under `prefix` as `(key, value, version)`, in byte order,
    /// following pages until the last. Pages are read separately, so the result is
    /// not one atomic cut when writes run concurrently.
    pub async fn scan_all(
        &self,
        prefix: &[u8],
        consistency: Consistency,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>, u64)>> {
        let mut opts = ScanOptions {
            prefix: prefix.to_vec(),
            start_after: None,
            limit: None,
            consistency,
        };
        let mut out: Vec<(Vec<u8>, Vec<u8>, u64)> = Vec::new();
        loop {
            let page = self.scan(&opts).await?;
            for item in &page.items {
                let key = item.key_bytes().map_err(decode_err)?;
                let value = item.value_bytes().map_err(decode_err)?;
                out.push((key, value, item.version));
            }
            let Some(next) = page.next_start_after else {
                return Ok(out);
            };
            let next: Vec<u8> = percent_decode_str(&next).collect();
            // A cursor that does not move forward would loop forever.
            if opts.start_after.as_ref().is_some_and(|prev| next <= *prev) {
                return Err(Error::Decode(format!(
                    "scan cursor did not advance past {:?}",
                    String::from_utf8_lossy(&next)
                )));
            }
            opts.start_after = Some(next);
        }
    }

    /// One page of the keys under `prefix` (after `start_after`) whose value differs
    /// between snapshots `from` and `to` (ids or names), with their value in `to`.
    pub async fn diff(
        &self,
        from: &str,
        to: &str,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: Option<usize>,
    ) -> Result<api::DiffResponse> {
        let mut url = format!(
            "{}/v1/snapshots/{}/diff/{}?encoding=base64&prefix={}",
            self.base,
            encode_query(from.as_bytes()),
            encode_query(to.as_bytes()),
            encode_query(prefix)
        );
        if let Some(start_after) = start_after {
            url.push_str("&start_after=");
            url.push_str(&encode_query(start_after));
        }
        if let Some(limit) = limit {
            url.push_str(&format!("&limit={limit}"));
        }
        json(check(self.http.get(url).send().await?).await?).await
    }

    /// Applies `ops` atomically, within one shard or across several; returns the
    /// highest version the batch wrote.
    pub async fn batch(&self, ops: Vec<api::BatchOp>) -> Result<u64> {
        Ok(self.batch_versions(ops).await?.version)
    }

    /// Like [`Client::batch`], with each op's version (a batch across shards is
    /// written at one version per shard) and the transaction id, if it was one.
    pub async fn batch_versions(&self, ops: Vec<api::BatchOp>) -> Result<api::BatchResponse> {
        let url = format!("{}/v1/batch", self.base);
        let body = api::BatchRequest { ops };
        let response = check(self.http.post(url).json(&body).send().await?).await?;
        json(response).await
    }

    /// The answering node's view of the cluster.
    pub async fn cluster(&self) -> Result<api::ClusterStatus> {
        let url = format!("{}/v1/cluster", self.base);
        json(check(self.http.get(url).send().await?).await?).await
    }

    /// Move shard `shard`'s replica on node `from` to node `to`
    /// (`POST /v1/shards/{id}/move`); answers once the move is done.
    pub async fn move_replica(&self, shard: u32, from: u64, to: u64) -> Result<api::MoveResponse> {
        let url = format!("{}/v1/shards/{shard}/move", self.base);
        let body = api::MoveRequest { from, to };
        // A move waits for the new replica to catch up: longer than other calls.
        let request = self.http.post(url).json(&body).timeout(LONG_CALL_TIMEOUT);
        json(check(request.send().await?).await?).await
    }

    /// Ask to join the cluster as member `id` at peer address `peer_addr`
    /// (`POST /v1/nodes/join`).
    pub async fn join(&self, id: u64, peer_addr: &str) -> Result<api::JoinResponse> {
        let url = format!("{}/v1/nodes/join", self.base);
        let body = api::JoinRequest {
            id,
            peer_addr: peer_addr.to_owned(),
        };
        json(check(self.http.post(url).json(&body).send().await?).await?).await
    }

    /// Create a token with `role` (`POST /v1/auth/tokens`, admin only); the answer is
    /// the only time its secret is shown.
    pub async fn create_token(&self, name: &str, role: api::Role) -> Result<api::CreatedToken> {
        self.create_scoped_token(name, role, None).await
    }

    /// Create a token with `role` that may touch only keys starting with `prefix`.
    pub async fn create_scoped_token(
        &self,
        name: &str,
        role: api::Role,
        prefix: Option<&str>,
    ) -> Result<api::CreatedToken> {
        let url = format!("{}/v1/auth/tokens", self.base);
        let body = api::CreateToken {
            name: name.to_owned(),
            role,
            prefix: prefix.map(str::to_owned),
        };
        json(check(self.http.post(url).json(&body).send().await?).await?).await
    }

    /// Every token of the cluster, without secrets (`GET /v1/auth/tokens`).
    pub async fn tokens(&self) -> Result<Vec<api::TokenInfo>> {
        let url = format!("{}/v1/auth/tokens", self.base);
        let list: api::TokenList = json(check(self.http.get(url).send().await?).await?).await?;
        Ok(list.tokens)
    }

    /// Revoke token `id` (`DELETE /v1/auth/tokens/{id}`): every node refuses it within
    /// a second.
    pub async fn revoke_token(&self, id: &str) -> Result<()> {
        let url = format!(
            "{}/v1/auth/tokens/{}",
            self.base,
            encode_with(id.as_bytes(), KEY_SET_NO_SLASH)
        );
        check(self.http.delete(url).send().await?).await.map(drop)
    }

    /// The newest `limit` admin actions (`GET /v1/audit`), newest first.
    pub async fn audit(&self, limit: usize) -> Result<Vec<api::AuditRecord>> {
        let url = format!("{}/v1/audit?limit={limit}", self.base);
        let list: api::AuditList = json(check(self.http.get(url).send().await?).await?).await?;
        Ok(list.records)
    }

    /// Move every replica off node `node` (`POST /v1/nodes/{id}/decommission`);
    /// answers once it holds none.
    pub async fn decommission(&self, node: u64) -> Result<api::DecommissionResponse> {
        let url = format!("{}/v1/nodes/{node}/decommission", self.base);
        let request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, JSON)
            .timeout(LONG_CALL_TIMEOUT);
        json(check(request.send().await?).await?).await
    }

    /// `Ok(())` when the process is up and serving HTTP.
    pub async fn health(&self) -> Result<()> {
        let url = format!("{}/health", self.base);
        check(self.http.get(url).send().await?).await.map(drop)
    }

    /// Whether every shard has a leader, as far as this node knows.
    pub async fn ready(&self) -> Result<bool> {
        let url = format!("{}/ready", self.base);
        let response = self.http.get(url).send().await?;
        match response.status() {
            StatusCode::OK => Ok(true),
            StatusCode::SERVICE_UNAVAILABLE => Ok(false),
            _ => check(response).await.map(|_| false),
        }
    }

    /// Takes a consistent snapshot of every shard, optionally named; returns it once
    /// complete. An aborted snapshot (a shard did not place its marker in time) is
    /// `Error::Api { status: 503, code: "snapshot_aborted", .. }`; nothing can read
    /// it, so taking another is safe.
    pub async fn create_snapshot(&self, name: Option<&str>) -> Result<api::SnapshotInfo> {
        let url = format!("{}/v1/snapshots", self.base);
        let mut request = self
            .http
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, JSON);
        if let Some(name) = name {
            request = request.json(&api::CreateSnapshot {
                name: Some(name.to_owned()),
            });
        }
        json(check(request.send().await?).await?).await
    }

    /// Start a backup; answers at once with the running backup (follow it with
    /// [`Client::backup`]).
    pub async fn create_backup(&self, request: &api::CreateBackup) -> Result<api::BackupInfo> {
        let url = format!("{}/v1/backups", self.base);
        json(check(self.http.post(url).json(request).send().await?).await?).await
    }

    /// A backup's record: progress while running, then its outcome.
    pub async fn backup(&self, id: &str) -> Result<api::BackupInfo> {
        if id == "." || id == ".." {
            return Err(Error::UnaddressableKey(id.as_bytes().to_vec()));
        }
        let url = format!(
            "{}/v1/backups/{}",
            self.base,
            encode_with(id.as_bytes(), KEY_SET_NO_SLASH)
        );
        json(check(self.http.get(url).send().await?).await?).await
    }

    /// Every backup the cluster's catalog knows, newest first.
    pub async fn backups(&self) -> Result<Vec<api::BackupInfo>> {
        let mut all = Vec::new();
        let mut after: Option<String> = None;
        loop {
            let mut url = format!("{}/v1/backups?limit=1000", self.base);
            if let Some(after) = &after {
                url.push_str(&format!("&start_after={}", encode_query(after.as_bytes())));
            }
            let page: api::BackupList =
                json(check(self.http.get(url).send().await?).await?).await?;
            all.extend(page.backups);
            match page.next_start_after {
                Some(next) => after = Some(next),
                None => return Ok(all),
            }
        }
    }

    /// The configured backup schedules and their state.
    pub async fn backup_schedules(&self) -> Result<Vec<api::ScheduleInfo>> {
        let url = format!("{}/v1/backups/schedules", self.base);
        let list: api::ScheduleList = json(check(self.http.get(url).send().await?).await?).await?;
        Ok(list.schedules)
    }

    /// Set every key under `prefix` back to its value in `snapshot`. An empty prefix
    /// is refused by the server (reverting every key takes [`Client::revert_with`]
    /// and `all: true`).
    pub async fn revert(&self, prefix: &[u8], snapshot: &str) -> Result<api::RevertResponse> {
        let (prefix, prefix_b64) = api::split_bytes(prefix, api::Encoding::Utf8);
        self.revert_with(&api::RevertRequest {
            prefix,
            prefix_b64,
            snapshot: snapshot.to_owned(),
            ..Default::default()
        })
        .await
    }

    /// A revert as `request` says (`all`, `dry_run`).
    pub async fn revert_with(&self, request: &api::RevertRequest) -> Result<api::RevertResponse> {
        let url = format!("{}/v1/revert", self.base);
        json(check(self.http.post(url).json(request).send().await?).await?).await
    }

    /// One page of completed snapshots, newest first: those with an id below
    /// `before` (all when `None`), at most `limit` (the server's default when `None`).
    /// Pass the page's `next_before` as `before` for the next page.
    pub async fn list_snapshots(
        &self,
        before: Option<u64>,
        limit: Option<usize>,
    ) -> Result<api::SnapshotList> {
        let mut url = format!("{}/v1/snapshots", self.base);
        let mut sep = '?';
        if let Some(before) = before {
            url.push_str(&format!("{sep}before={before}"));
            sep = '&';
        }
        if let Some(limit) = limit {
            url.push_str(&format!("{sep}limit={limit}"));
        }
        json(check(self.http.get(url).send().await?).await?).await
    }

    /// Every completed snapshot, newest first, following pages until the last.
    pub async fn list_all_snapshots(&self) -> Result<Vec<api::SnapshotInfo>> {
        let mut out: Vec<api::SnapshotInfo> = Vec::new();
        let mut before = None;
        loop {
            let page = self.list_snapshots(before, None).await?;
            out.extend(page.snapshots);
            match page.next_before {
                None => return Ok(out),
                // A cursor that does not move down would loop forever.
                Some(next) if before.is_some_and(|prev| next >= prev) => {
                    return Err(Error::Decode(format!(
                        "snapshot list cursor did not move below {next}"
                    )))
                }
                Some(next) => before = Some(next),
            }
        }
    }

    /// The completed snapshot with this id or name; `snapshot_not_found` (404)
    /// otherwise.
    pub async fn snapshot(&self, id_or_name: &str) -> Result<api::SnapshotInfo> {
        let url = self.snapshot_url(id_or_name)?;
        json(check(self.http.get(url).send().await?).await?).await
    }

    /// Deletes the snapshot with this id or name (its versions become collectable);
    /// `snapshot_not_found` (404) when there is none.
    pub async fn delete_snapshot(&self, id_or_name: &str) -> Result<()> {
        let url = self.snapshot_url(id_or_name)?;
        check(self.http.delete(url).send().await?).await.map(drop)
    }

    /// Reads `key` as it was at a snapshot (any node can answer). `value` is
    /// `None` when the key was absent there; `snapshot` is the id of the snapshot
    /// that answered (from the `Cairn-Snapshot` header), which for
    /// [`ReadAt::AsOf`] is the newest completed snapshot taken at or before that time.
    pub async fn get_at(&self, key: &[u8], at: &ReadAt) -> Result<AtSnapshot<Option<Got>>> {
        let url = format!("{}?{}", self.key_url(key)?, at.query());
        let response = self.http.get(url).send().await?;
        let served = snapshot_header(&response)?;
        let response = match check(response).await {
            Ok(response) => response,
            Err(Error::Api {
                status: 404, code, ..
            }) if code == "key_not_found" => {
                return Ok(AtSnapshot {
                    snapshot: require_snapshot_header(served)?,
                    value: None,
                })
            }
            Err(e) => return Err(e),
        };
        let snapshot = require_snapshot_header(served)?;
        let version = etag_version(&response)?;
        let value = response.bytes().await?.to_vec();
        Ok(AtSnapshot {
            snapshot,
            value: Some(Got { value, version }),
        })
    }

    /// Every live key under `prefix` at a snapshot, as `(key, value, version)` in
    /// byte order, following pages until the last. Unlike [`Client::scan_all`] the
    /// result is one consistent cut: every page after the first names the snapshot
    /// that served the first, so an [`ReadAt::AsOf`] time cannot resolve to a newer
    /// snapshot half way through.
    pub async fn scan_all_at(
        &self,
        prefix: &[u8],
        at: &ReadAt,
    ) -> Result<AtSnapshot<Vec<(Vec<u8>, Vec<u8>, u64)>>> {
        let mut at = at.clone();
        let mut served: Option<u64> = None;
        let mut start_after: Option<Vec<u8>> = None;
        let mut out: Vec<(Vec<u8>, Vec<u8>, u64)> = Vec::new();
        loop {
            let (snapshot, page) = self
                .scan_page_at(prefix, start_after.as_deref(), SCAN_AT_PAGE, &at)
                .await?;
            if served.is_some_and(|first| first != snapshot) {
                return Err(Error::Decode(format!(
                    "scan pages served by snapshots {} and {snapshot}",
                    served.unwrap_or_default()
                )));
            }
            served = Some(snapshot);
            at = ReadAt::Snapshot(snapshot.to_string());
            for item in &page.items {
                let key = item.key_bytes().map_err(decode_err)?;
                let value = item.value_bytes().map_err(decode_err)?;
                out.push((key, value, item.version));
            }
            let Some(next) = page.next_start_after else {
                return Ok(AtSnapshot {
                    snapshot,
                    value: out,
                });
            };
            let next: Vec<u8> = percent_decode_str(&next).collect();
            if start_after.as_ref().is_some_and(|prev| next <= *prev) {
                return Err(Error::Decode(format!(
                    "scan cursor did not advance past {:?}",
                    String::from_utf8_lossy(&next)
                )));
            }
            start_after = Some(next);
        }
    }

    /// One page of a scan at a snapshot, with the id of the snapshot that served it.
    pub async fn scan_page_at(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: Option<usize>,
        at: &ReadAt,
    ) -> Result<(u64, api::ScanResponse)> {
        let mut url = format!(
            "{}/v1/kv?encoding=base64&prefix={}&{}",
            self.base,
            encode_query(prefix),
            at.query()
        );
        if let Some(start_after) = start_after {
            url.push_str("&start_after=");
            url.push_str(&encode_query(start_after));
        }
        if let Some(limit) = limit {
            url.push_str(&format!("&limit={limit}"));
        }
        let response = self.http.get(url).send().await?;
        let served = snapshot_header(&response)?;
        let response = check(response).await?;
        Ok((require_snapshot_header(served)?, json(response).await?))
    }

    fn snapshot_url(&self, id_or_name: &str) -> Result<String> {
        // One path segment: `/` is encoded, and the dot segments cannot be sent.
        if id_or_name == "." || id_or_name == ".." {
            return Err(Error::UnaddressableKey(id_or_name.as_bytes().to_vec()));
        }
        Ok(format!(
            "{}/v1/snapshots/{}",
            self.base,
            encode_with(id_or_name.as_bytes(), KEY_SET_NO_SLASH)
        ))
    }

    fn key_url(&self, key: &[u8]) -> Result<String> {
        Ok(format!("{}/v1/kv/{}", self.base, encode_key_path(key)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn unreserved(b: u8) -> bool {
        b.is_ascii_alphanumeric() || b"-._~/".contains(&b)
    }

    #[test]
    fn every_byte_round_trips_through_key_encoding() {
        for b in 0..=255u8 {
            let key = [b'k', b, b'k'];
            let encoded = encode_key_path(&key).expect("addressable");
            let decoded: Vec<u8> = percent_decode_str(&encoded).collect();
            assert_eq!(decoded, key, "byte {b:#04x} encoded as {encoded}");
            if unreserved(b) {
                assert_eq!(encoded.len(), 3, "byte {b:#04x} needlessly encoded");
            } else {
                assert_eq!(encoded, format!("k%{b:02X}k"), "byte {b:#04x}");
            }
            let query = encode_query(&key);
            assert_eq!(percent_decode_str(&query).collect::<Vec<u8>>(), key);
        }
    }

    #[test]
    fn all_bytes_in_one_key_round_trip() {
        let key: Vec<u8> = (0..=255u8).collect();
        let encoded = encode_key_path(&key).expect("addressable");
        assert!(encoded.is_ascii());
        // `%` appears only as the start of a two-hex-digit escape.
        assert!(encoded
            .split('%')
            .skip(1)
            .all(|esc| esc.len() >= 2 && esc[..2].chars().all(|c| c.is_ascii_hexdigit())));
        assert!(!encoded.contains(['?', '#', '&', '=', '+', ' '].as_slice()));
        assert_eq!(percent_decode_str(&encoded).collect::<Vec<u8>>(), key);
    }

    #[test]
    fn slashes_stay_literal_unless_a_segment_is_a_dot() {
        assert_eq!(encode_key_path(b"a/b/c").unwrap(), "a/b/c");
        assert_eq!(encode_key_path(b"a/../b").unwrap(), "a%2F..%2Fb");
        assert_eq!(encode_key_path(b"./x").unwrap(), ".%2Fx");
        assert_eq!(encode_key_path(b"a/.b").unwrap(), "a/.b");
        assert!(matches!(
            encode_key_path(b".."),
            Err(Error::UnaddressableKey(_))
        ));
        assert!(matches!(
            encode_key_path(b"."),
            Err(Error::UnaddressableKey(_))
        ));
    }

    /// Issue 17: `--endpoint 127.0.0.1:8081` failed with "relative URL without a base".
    #[test]
    fn a_bare_host_and_port_is_taken_as_plain_http() {
        assert_eq!(
            Client::new("127.0.0.1:8081").base(),
            "http://127.0.0.1:8081"
        );
        assert_eq!(
            Client::new("localhost:8081/").base(),
            "http://localhost:8081"
        );
        assert_eq!(Client::new("http://h:1").base(), "http://h:1");
        assert_eq!(Client::new("https://h:1//").base(), "https://h:1");
    }

    #[test]
    fn query_values_escape_separators() {
        assert_eq!(encode_query(b"a&b=c+d e/f"), "a%26b%3Dc%2Bd%20e/f");
        assert_eq!(encode_query(b""), "");
    }

    #[test]
    fn etags_parse_strictly() {
        assert_eq!(parse_etag(b"\"42\""), Some(42));
        assert_eq!(parse_etag(b"42"), None);
        assert_eq!(parse_etag(b"W/\"42\""), None);
        assert_eq!(parse_etag(b"\"x\""), None);
    }

    #[test]
    fn read_at_queries_are_encoded() {
        assert_eq!(ReadAt::id(7).query(), "snapshot=7");
        assert_eq!(
            ReadAt::Snapshot("nightly a&b".into()).query(),
            "snapshot=nightly%20a%26b"
        );
        assert_eq!(
            ReadAt::AsOf("2026-11-23T13:35:08.218Z".into()).query(),
            "as_of=2026-11-23T13%3A35%3A08.218Z"
        );
        let t = ReadAt::AsOf("2026-11-23T13:35:08+01:00".into()).query();
        assert!(!t.contains('+'), "a literal + would decode as a space: {t}");
    }

    #[test]
    fn snapshot_urls_are_one_segment() {
        let client = Client::new("http://127.0.0.1:1");
        assert_eq!(
            client.snapshot_url("42").unwrap(),
            "http://127.0.0.1:1/v1/snapshots/42"
        );
        assert_eq!(
            client.snapshot_url("a/b c").unwrap(),
            "http://127.0.0.1:1/v1/snapshots/a%2Fb%20c"
        );
        assert!(client.snapshot_url("..").is_err());
    }

    #[test]
    fn base_url_loses_trailing_slashes() {
        let client = Client::new("http://127.0.0.1:1//");
        assert_eq!(client.base(), "http://127.0.0.1:1");
        assert_eq!(
            client.key_url(b"a b").unwrap(),
            "http://127.0.0.1:1/v1/kv/a%20b"
        );
    }
}
