//! The HTTP API's JSON bodies, shared by the server (which produces them) and the
//! client (which consumes them), so the two cannot drift apart.
//!
//! Binary safety: keys and values are arbitrary bytes. In JSON a key or value is given
//! as `key`/`value` (a UTF-8 string) or as `key_b64`/`value_b64` (standard base64);
//! exactly one of each pair is present. Responses use the plain form whenever the bytes
//! are valid UTF-8, unless the request asked for `encoding=base64`.

use base64::Engine as _;
use serde::{Deserialize, Serialize};

/// The body of every error response: `{"error": {"code": ..., "message": ...}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorDetail {
    /// Stable, machine-readable code, e.g. `key_not_found`, `precondition_failed`.
    pub code: String,
    /// Human-readable explanation, safe to show to a user.
    pub message: String,
}

/// Response to a successful `PUT /v1/kv/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct WriteResponse {
    /// The version of the write: the Raft log index at which it was applied.
    pub version: u64,
}

/// Response to a successful `POST /v1/batch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BatchResponse {
    /// The highest version the batch wrote (for a batch within one shard, the
    /// version of all of it).
    pub version: u64,
    /// Per op, the version its key was written at. A batch across shards is written
    /// at one version per shard. `null` only when the batch is committed but that
    /// op's shard had not confirmed it by the deadline: it is applied there shortly,
    /// and reads of the key wait for it.
    pub versions: Vec<Option<u64>>,
    /// The transaction id, for a batch across shards.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub transaction: Option<u64>,
}

/// Response to a successful `DELETE /v1/kv/{key}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DeleteResponse {
    /// Whether a live value was removed (false when the key was already absent).
    pub deleted: bool,
    /// The version of the delete: the Raft log index at which it was applied.
    pub version: u64,
}

/// Which JSON form responses use for keys and values.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// Plain strings where the bytes are UTF-8, `*_b64` fields otherwise.
    #[default]
    Utf8,
    /// Always the `*_b64` fields.
    Base64,
}

/// One key of a scan page.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScanItem {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value_b64: Option<String>,
    pub version: u64,
}

impl ScanItem {
    pub fn new(key: &[u8], value: &[u8], version: u64, encoding: Encoding) -> Self {
        let (key, key_b64) = split_bytes(key, encoding);
        let (value, value_b64) = split_bytes(value, encoding);
        ScanItem {
            key,
            key_b64,
            value,
            value_b64,
            version,
        }
    }

    /// The key's bytes, whichever form carried them.
    pub fn key_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        join_bytes(&self.key, &self.key_b64)
    }

    /// The value's bytes, whichever form carried them.
    pub fn value_bytes(&self) -> Result<Vec<u8>, base64::DecodeError> {
        join_bytes(&self.value, &self.value_b64)
    }
}

/// Response to `GET /v1/kv?prefix=...`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScanResponse {
    /// Live keys in byte order, at most `limit` of them.
    pub items: Vec<ScanItem>,
    /// When more keys may follow: the last key of this page, percent-encoded, ready to
    /// pass as `start_after=` for the next page. `null` on the last page.
    pub next_start_after: Option<String>,
}

/// One operation of `POST /v1/batch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BatchOp {
    /// `put` or `delete`.
    pub op: BatchOpKind,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key_b64: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value_b64: Option<String>,
    /// Apply the batch only if this key's current version is exactly this.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub if_version: Option<u64>,
    /// Apply the batch only if this key is currently absent.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub if_absent: Option<bool>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum BatchOpKind {
    Put,
    Delete,
}

impl BatchOp {
    pub fn put(key: &[u8], value: &[u8]) -> Self {
        let (key, key_b64) = split_bytes(key, Encoding::Utf8);
        let (value, value_b64) = split_bytes(value, Encoding::Utf8);
        BatchOp {
            op: BatchOpKind::Put,
            key,
            key_b64,
            value,
            value_b64,
            if_version: None,
            if_absent: None,
        }
    }

    pub fn delete(key: &[u8]) -> Self {
        let (key, key_b64) = split_bytes(key, Encoding::Utf8);
        BatchOp {
            op: BatchOpKind::Delete,
            key,
            key_b64,
            value: None,
            value_b64: None,
            if_version: None,
            if_absent: None,
        }
    }
}

/// Body of `POST /v1/batch`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    pub ops: Vec<BatchOp>,
}

/// Response to `GET /v1/cluster`: this node's view of the cluster.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ClusterStatus {
    pub cluster_id: String,
    /// The node that answered.
    pub node_id: u64,
    pub nodes: Vec<NodeInfo>,
    /// The data shards the answering node holds a replica of, as its replicas see them.
    pub shards: Vec<ShardStatus>,
    /// The meta group (snapshot registry), as the answering node's replica sees it;
    /// absent if the node holds no replica of it.
    pub meta: Option<ShardStatus>,
    /// Every group (the data shards, then the meta group): where its replicas are and
    /// which node leads it, as far as the answering node knows.
    #[serde(default)]
    pub placement: Vec<ShardPlacement>,
    /// The answering node's links to its peers.
    #[serde(default)]
    pub links: Vec<PeerLink>,
}

/// The answering node's link to one peer on the peer transport.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PeerLink {
    pub peer: u64,
    /// `up`; `down` (no connection: the peer is unreachable or restarting); or
    /// `unanswered` (connected, but the peer has not answered a keepalive for a
    /// while: answers are not coming back, and the link re-dials if this lasts).
    pub state: String,
    /// Round trip of the last answered keepalive, in microseconds.
    pub rtt_us: Option<u64>,
    /// Connections dropped because the peer stopped answering.
    pub resets: u64,
    /// Frames to the peer refused for exceeding the frame cap.
    pub oversized_frames: u64,
    /// Forwarded calls to the peer that got no answer before their deadline.
    pub calls_unanswered: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeInfo {
    pub id: u64,
    pub peer_addr: String,
    /// Groups (data shards and the meta group) with a replica on this node.
    #[serde(default)]
    pub replicas: u32,
    /// Groups this node leads, as far as the answering node knows.
    #[serde(default)]
    pub leaders: u32,
    /// `joining` (admitted, not yet reached by the meta leader), `active`,
    /// `decommissioning`, `decommissioned`, `dead`, or `unknown` when the meta group
    /// could not be read.
    #[serde(default)]
    pub state: String,
}

/// Where one group's replicas are.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardPlacement {
    /// The group: a data shard, or the meta group (the id after the last shard).
    pub id: u32,
    /// Whether this is the meta group.
    #[serde(default)]
    pub meta: bool,
    /// Node ids of its voters.
    pub replicas: Vec<u64>,
    /// Node ids of its learners: replicas being added by a move, not yet voting.
    #[serde(default)]
    pub learners: Vec<u64>,
    /// Its leader, if the answering node knows one.
    pub leader: Option<u64>,
}

/// One shard as seen by the answering node's replica of it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ShardStatus {
    pub id: u32,
    /// Node ids holding a replica.
    pub replicas: Vec<u64>,
    /// The leader's node id, if one is known.
    pub leader: Option<u64>,
    pub term: u64,
    pub commit: u64,
    pub applied: u64,
    /// First index still in this replica's Raft log (grows as the log is compacted).
    pub first_index: u64,
    /// Raft snapshots this replica has installed since its process started.
    pub snapshots_installed: u64,
}

/// Split bytes into the plain or base64 JSON form.
pub fn split_bytes(bytes: &[u8], encoding: Encoding) -> (Option<String>, Option<String>) {
    match (encoding, std::str::from_utf8(bytes)) {
        (Encoding::Utf8, Ok(text)) => (Some(text.to_owned()), None),
        _ => (
            None,
            Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ),
    }
}

/// Join the plain or base64 JSON form back into bytes (empty when neither is given).
pub fn join_bytes(
    text: &Option<String>,
    b64: &Option<String>,
) -> Result<Vec<u8>, base64::DecodeError> {
    match (text, b64) {
        (Some(text), _) => Ok(text.as_bytes().to_vec()),
        (None, Some(b64)) => base64::engine::general_purpose::STANDARD.decode(b64),
        (None, None) => Ok(Vec::new()),
    }
}

/// Body of `POST /v1/snapshots` (optional).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateSnapshot {
    /// A name to find the snapshot by (unique, not a number).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
}

/// A completed snapshot: a consistent cut across every shard.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// Increasing id (the epoch).
    pub id: u64,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// Wall-clock label (RFC 3339, UTC): when the snapshot completed.
    pub time: String,
    /// Per shard, the log index of its marker; the snapshot holds the entries below.
    pub cuts: std::collections::BTreeMap<u32, u64>,
}

/// Response to `GET /v1/snapshots`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SnapshotList {
    pub snapshots: Vec<SnapshotInfo>,
    /// When more may follow: pass as `before=` for the next page.
    pub next_before: Option<u64>,
}

/// One key that changed between two snapshots.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffItem {
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub key_b64: Option<String>,
    /// The value in the later snapshot (absent when deleted).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub value_b64: Option<String>,
    /// The version of that value (absent when deleted).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub version: Option<u64>,
    /// The key has no value in the later snapshot.
    pub deleted: bool,
}

/// Response to `GET /v1/snapshots/{a}/diff/{b}`: changed keys in key order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DiffResponse {
    pub changes: Vec<DiffItem>,
    /// As for scans: the percent-encoded last key when more may follow.
    pub next_start_after: Option<String>,
}

/// Body of `POST /v1/backups` (optional).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct CreateBackup {
    /// A directory, `file:///path` or `s3://bucket/prefix`; default: the node's
    /// `--backup-dir`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub destination: Option<String>,
    /// Extend the newest backup of this cluster at the destination.
    #[serde(default)]
    pub incremental: bool,
    /// Back up this completed snapshot (id or name) instead of taking a new one. An
    /// id may be given as a number, the form responses print, or as a string.
    #[serde(
        skip_serializing_if = "Option::is_none",
        default,
        deserialize_with = "optional_id_or_name"
    )]
    pub snapshot: Option<String>,
}

/// How far a backup got.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, Default)]
pub struct BackupProgress {
    pub shards_done: u32,
    pub shards_total: u32,
    /// Compressed bytes stored.
    pub bytes: u64,
    pub keys: u64,
    pub versions: u64,
}

/// A backup as the cluster's catalog records it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupInfo {
    pub id: String,
    pub destination: String,
    pub incremental: bool,
    pub parent: Option<String>,
    /// The snapshot it captures, once taken.
    pub snapshot: Option<u64>,
    pub schedule: Option<String>,
    /// For a scheduled backup: the tick (ms since the Unix epoch) it ran for.
    #[serde(default)]
    pub tick_ms: Option<u64>,
    /// The node writing it.
    pub node: u64,
    /// `running`, `done` or `failed`.
    pub state: String,
    /// Why it failed.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub error: Option<String>,
    pub progress: BackupProgress,
    pub started_ms: u64,
    pub finished_ms: Option<u64>,
    /// Retention deleted it from its destination.
    #[serde(default)]
    pub deleted: bool,
}

/// Response to `GET /v1/backups`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BackupList {
    /// Oldest first (ids sort by age).
    pub backups: Vec<BackupInfo>,
    /// More may follow: ask again with `start_after` set to this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_start_after: Option<String>,
}

/// A backup schedule and where it stands.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduleInfo {
    pub name: String,
    pub cron: String,
    pub destination: String,
    /// Next tick, ms since the Unix epoch.
    pub next_run_ms: Option<u64>,
    /// The newest tick claimed, ms since the Unix epoch.
    pub last_tick_ms: u64,
    pub last_backup: Option<String>,
    /// How late the last tick's backup started, ms.
    pub last_lag_ms: Option<u64>,
    /// `done` or `failed: ...`.
    pub last_result: Option<String>,
    pub last_finished_ms: Option<u64>,
}

/// Response to `GET /v1/backups/schedules`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ScheduleList {
    pub schedules: Vec<ScheduleInfo>,
}

/// The body of `POST /v1/shards/{id}/move`: move the replica on node `from` to node
/// `to`.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct MoveRequest {
    pub from: u64,
    pub to: u64,
}

/// The answer to a move: the shard's members once it is done.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct MoveResponse {
    pub shard: u32,
    pub voters: Vec<u64>,
    pub learners: Vec<u64>,
    pub leader: Option<u64>,
}

/// The body of `POST /v1/nodes/join`: a new node asks to become member `id`,
/// reachable by its peers at `peer_addr`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct JoinRequest {
    pub id: u64,
    pub peer_addr: String,
}

/// The answer to a join: what the new node needs to start as a member.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct JoinResponse {
    pub cluster_id: String,
    pub shards: u32,
    /// Every member, the new one included.
    pub members: Vec<Member>,
}

/// A member of the cluster and its peer address.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub peer_addr: String,
}

/// The answer to `POST /v1/nodes/{id}/decommission`: the node holds no replica any
/// more; what moved where.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct DecommissionResponse {
    pub node: u64,
    pub moved: Vec<MovedReplica>,
}

/// One replica a decommission moved.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct MovedReplica {
    pub shard: u32,
    pub to: u64,
}

/// Body of `POST /v1/revert`.
///
/// `prefix` (or `prefix_b64`) is required: a revert without one is refused rather than
/// read as "every key". Reverting the whole keyspace takes the deliberate form
/// `"prefix": ""` together with `"all": true`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct RevertRequest {
    /// The key prefix to revert (UTF-8), or `prefix_b64`.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prefix: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub prefix_b64: Option<String>,
    /// The snapshot (id, as a number or a string, or name) to revert to.
    #[serde(deserialize_with = "id_or_name")]
    pub snapshot: String,
    /// Confirms an empty prefix: revert every key.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// Plan the revert and answer what it would change, changing nothing.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub dry_run: bool,
}

/// A snapshot or backup named in a request body: an id as a JSON number (the form
/// responses print) or a string, or a name.
fn id_or_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum IdOrName {
        Id(u64),
        Text(String),
    }
    Ok(match IdOrName::deserialize(d)? {
        IdOrName::Id(id) => id.to_string(),
        IdOrName::Text(text) => text,
    })
}

fn optional_id_or_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    #[derive(Deserialize)]
    struct Wrapped(#[serde(deserialize_with = "id_or_name")] String);
    Ok(Option::<Wrapped>::deserialize(d)?.map(|Wrapped(s)| s))
}

/// One shard's part of a revert.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevertShard {
    pub shard: u32,
    /// The version (log index) of the shard's atomic batch; absent if nothing changed.
    pub version: Option<u64>,
    pub restored: u64,
    pub deleted: u64,
}

/// Response to `POST /v1/revert`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RevertResponse {
    /// Id of the audit record (`GET /v1/reverts`); 0 for a dry run, which records
    /// nothing.
    pub id: u64,
    /// Nothing was changed: the counts say what the revert would change.
    #[serde(default)]
    pub dry_run: bool,
    pub snapshot: u64,
    /// Keys set back to their value at the snapshot.
    pub restored: u64,
    /// Keys deleted because they did not exist at the snapshot.
    pub deleted: u64,
    pub shards: Vec<RevertShard>,
}

/// What a token lets its bearer do; each role can do everything the one before can.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Gets, scans, point-in-time reads, diffs, the cluster's status.
    Read,
    /// Reads, plus puts, deletes and batches.
    Write,
    /// Everything: snapshots, backups, reverts, membership, tokens, debug views.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Read => "read",
            Role::Write => "write",
            Role::Admin => "admin",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Role {
    type Err = String;

    fn from_str(text: &str) -> std::result::Result<Role, String> {
        match text {
            "read" => Ok(Role::Read),
            "write" => Ok(Role::Write),
            "admin" => Ok(Role::Admin),
            other => Err(format!(
                "no role `{other}`: roles are `read`, `write` and `admin`"
            )),
        }
    }
}

/// Body of `POST /v1/auth/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// Who or what the token is for (1 to 128 bytes), shown in lists and audit records.
    pub name: String,
    pub role: Role,
    /// Only keys starting with this (UTF-8) may be read or written with the token
    /// (a `read` or `write` token; an admin token covers every key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A token as the cluster lists it: never its secret.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenInfo {
    /// The token's public id (the part between the dots).
    pub id: String,
    pub name: String,
    pub role: Role,
    /// The key prefix the token is limited to, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
    /// When it was created, in milliseconds since the Unix epoch.
    pub created_ms: u64,
    /// Who created it (a token's name, or `root`).
    pub created_by: String,
}

/// The answer to `POST /v1/auth/tokens`: the only time the secret is shown.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CreatedToken {
    /// The bearer token, `cairn.<id>.<secret>`: give it as `Authorization: Bearer ...`.
    pub token: String,
    #[serde(flatten)]
    pub info: TokenInfo,
}

/// The answer to `GET /v1/auth/tokens`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct TokenList {
    pub tokens: Vec<TokenInfo>,
}

/// One admin action, as the audit log keeps it (`GET /v1/audit`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditRecord {
    /// When the action was answered, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The node that served it.
    pub node: u64,
    /// Who asked: a token's name, `root`, or `anonymous` (authentication off).
    pub who: String,
    pub method: String,
    /// The path asked for (at most 256 bytes of it).
    pub path: String,
    /// The HTTP status it was answered with.
    pub status: u16,
}

/// The answer to `GET /v1/audit`: newest first.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AuditList {
    pub records: Vec<AuditRecord>,
}
