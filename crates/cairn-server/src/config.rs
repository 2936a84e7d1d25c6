//! A node's configuration: one typed [`Config`] with its defaults in one place.
//!
//! Every setting can come from a command-line flag, an environment variable
//! `CAIRN_<FLAG>` or a key of the TOML file given with `--config` (the flag's name with
//! `_` for `-`); the first of those that is set wins, then the default applies.
//! [`Settings`] is that set of optional values: clap fills it from flags and the
//! environment, serde from the file.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cairn_raft::PeerAddr;
use cairn_store::NodeId;
use serde::Deserialize;

use crate::error::ServerError;

/// A node's full configuration, after defaults were applied and validated.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// This node's id in the cluster (1, 2, 3, ...).
    pub id: NodeId,
    /// Where the node keeps its sled database.
    pub data_dir: PathBuf,
    /// Address of the HTTP API.
    pub http: SocketAddr,
    /// Address peers connect to for Raft traffic and forwarded requests (the one
    /// `initial_cluster` lists for this node).
    /// An IP address or a host name, resolved by peers each time they dial.
    pub peer: PeerAddr,
    /// Address the peer transport listens on. Default: `peer` (resolved once, at
    /// start, if it is a name). It differs only when something between the nodes
    /// forwards `peer` to it (a NAT, or the fault-injecting proxy of `cairn-chaos`);
    /// the cluster id keeps deriving from `initial_cluster`.
    pub peer_listen: SocketAddr,
    /// Every node of the cluster and its peer address, this one included.
    pub initial_cluster: BTreeMap<NodeId, PeerAddr>,
    /// HTTP addresses of members of a running cluster to join (instead of
    /// `--initial-cluster`); empty for a founding member. Used only on a data
    /// directory's first start; afterwards the node knows its cluster.
    pub join: Vec<String>,
    /// Number of shards; fixed when the cluster is created. Default 8.
    pub shards: u32,
    /// Replicas of each shard (and of the meta group), fixed when the cluster is
    /// created. Default 3, or the cluster's size if it has fewer nodes.
    pub replication_factor: usize,
    /// Distinguishes clusters that share member ids and addresses. Default "cairn".
    pub cluster_token: String,
    /// Length of a Raft tick. Default 100 ms.
    pub tick_ms: u64,
    /// Ticks before a follower without a leader campaigns. Default 10 (about 1 s).
    pub election_ticks: usize,
    /// Ticks between leader heartbeats. Default 2.
    pub heartbeat_ticks: usize,
    /// Compact a shard's Raft log past this many applied entries. Default 10000.
    pub log_compact_entries: u64,
    /// Threads driving this node's replicas; each makes one fsync cover the writes of
    /// all its shards. Default 2.
    pub replica_threads: usize,
    /// Largest key in bytes. Default 4096.
    pub max_key_bytes: usize,
    /// Largest value in bytes. Default 1 MiB.
    pub max_value_bytes: usize,
    /// Largest request body in bytes. Default 4 MiB.
    pub max_request_bytes: usize,
    /// Largest page a scan may ask for. Default 1000.
    pub max_scan_limit: usize,
    /// Byte budget of one page of a scan or diff (keys and values): a page that
    /// reaches it ends early, with `next_start_after`. Default 4 MiB.
    pub max_page_bytes: usize,
    /// Largest Raft entry (one write, batch, or one shard's part of a transaction or
    /// revert) in bytes; larger proposals are refused before the log. Default 8 MiB.
    pub max_entry_bytes: usize,
    /// Largest frame on the peer transport. Default 64 MiB. Every limit above is
    /// checked against it when the configuration loads, so every answer and Raft
    /// message fits.
    pub max_frame_bytes: usize,
    /// How long a request may take inside the cluster before it fails. Default 5000 ms.
    pub request_timeout_ms: u64,
    /// Take an automatic snapshot this often while data is written; 0 disables.
    /// Default 1000 ms, so `as_of` reads have one-second granularity.
    pub snapshot_interval_ms: u64,
    /// How long automatic snapshots are kept. Default 24 h.
    pub history_retention: Duration,
    /// Serve linearizable reads on a leader lease (no round trip per read) instead
    /// of a ReadIndex round. Default off: safe only while node clocks run within
    /// `cairn_raft::config::MAX_CLOCK_DRIFT_PERCENT` of each other.
    pub lease_reads: bool,
    /// A node the meta leader cannot reach for this long is declared dead and its
    /// replicas are re-created on other nodes; `None` never. Default 5 min (as
    /// CockroachDB's `server.time_until_store_dead`).
    pub dead_after: Option<Duration>,
    /// Most replica moves a minute the meta leader makes to even out the nodes'
    /// replica counts; 0 never. Default 6.
    pub rebalance_rate: u32,
    /// A file holding the root token; giving one turns authentication on (every
    /// route but health, readiness, metrics and the API description needs a token).
    /// The file is read at start; only its hash is kept.
    pub root_token_file: Option<PathBuf>,
    /// Listen beyond loopback without TLS and authentication. Default off: such a
    /// node refuses to start (CockroachDB's `--insecure`).
    pub insecure: bool,
    /// TLS: HTTPS for clients and mutual TLS between peers; `None` is plaintext.
    pub tls: Option<TlsFiles>,
    /// Most HTTP connections served at once; more wait in the listen backlog.
    /// Default 1024.
    pub max_connections: usize,
    /// Serve the `/v1/debug/*` views (admin only). Default off.
    pub enable_debug: bool,
    /// Backups: default destination, throttle, schedules, S3 settings.
    pub backup: BackupSettings,
}

/// A node's TLS material, as files (PEM).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The cluster CA's certificate: the only authority peers are checked against.
    pub ca: PathBuf,
    /// This node's certificate, naming `node-<id>.cairn` and the hosts clients use.
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

/// The `[backup]` table of the config file (and its flags).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BackupSettings {
    /// Where a backup without a destination goes. Default `./backups`.
    pub dir: Option<String>,
    /// Read rate limit of all the backups a node runs together, e.g. `64MiB` (per
    /// second); `0` is unlimited.
    /// Default 128MiB.
    pub rate_limit: Option<String>,
    /// A running backup that wrote no progress for this long is failed. Default 30s.
    pub stale_after: Option<String>,
    /// Roots a backup requested over the API may be written under, besides `dir` and
    /// the schedules' destinations; `*` allows any destination.
    #[serde(default)]
    pub allow: Vec<String>,
    /// A file holding the backup key (64 hex digits, `cairn backup key FILE`):
    /// backups are then encrypted and their manifests signed.
    pub key_file: Option<PathBuf>,
    /// Settings for `s3://` destinations (else the `AWS_*` environment applies).
    #[serde(default)]
    pub s3: Option<S3Settings>,
    /// `[[backup.schedule]]` entries.
    #[serde(default)]
    pub schedule: Vec<cairn_backup::schedule::ScheduleSpec>,
}

/// `[backup.s3]`.
#[derive(Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Settings {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    #[serde(default)]
    pub allow_http: bool,
}

impl S3Settings {
    /// What the backup crate takes.
    pub fn options(&self) -> cairn_backup::S3Options {
        cairn_backup::S3Options {
            endpoint: self.endpoint.clone(),
            region: self.region.clone(),
            access_key_id: self.access_key_id.clone(),
            secret_access_key: self.secret_access_key.clone(),
            allow_http: self.allow_http,
        }
    }
}

/// As the backup crate's options print: the secret never shows, wherever the
/// configuration is printed.
impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.options(), f)
    }
}

/// Optional settings, as given by flags, environment or file (see the module doc).
#[derive(Debug, Clone, Default, PartialEq, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// This node's id (1, 2, 3, ...).
    #[arg(long, env = "CAIRN_ID")]
    pub id: Option<NodeId>,
    /// Directory of the node's data.
    #[arg(long, env = "CAIRN_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// HTTP API address, e.g. 127.0.0.1:8081.
    #[arg(long, env = "CAIRN_HTTP")]
    pub http: Option<SocketAddr>,
    /// Peer address other nodes dial, e.g. 127.0.0.1:9081 or node1.cairn:9081 (a name
    /// is resolved at every dial).
    #[arg(long, env = "CAIRN_PEER")]
    pub peer: Option<PeerAddr>,
    /// Address to listen on for peers, when they reach this node's --peer address
    /// through a forwarder (NAT, test proxy) [default: --peer].
    #[arg(long, env = "CAIRN_PEER_LISTEN")]
    pub peer_listen: Option<SocketAddr>,
    /// Every node: `1=127.0.0.1:9081,2=127.0.0.1:9082,3=127.0.0.1:9083`.
    #[arg(long, env = "CAIRN_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Join a running cluster through any of its members' HTTP addresses
    /// (`http://HOST:PORT[,...]`), instead of `--initial-cluster`.
    #[arg(long, env = "CAIRN_JOIN")]
    pub join: Option<String>,
    /// Number of shards (fixed at cluster creation) [default: 8].
    #[arg(long, env = "CAIRN_SHARDS")]
    pub shards: Option<u32>,
    /// Replicas of each shard, spread over the nodes (fixed at cluster creation)
    /// [default: 3, or every node of a smaller cluster].
    #[arg(long, env = "CAIRN_REPLICATION_FACTOR")]
    pub replication_factor: Option<usize>,
    /// Token distinguishing clusters with the same members [default: cairn].
    #[arg(long, env = "CAIRN_CLUSTER_TOKEN")]
    pub cluster_token: Option<String>,
    /// Raft tick length in milliseconds [default: 100].
    #[arg(long, env = "CAIRN_TICK_MS")]
    pub tick_ms: Option<u64>,
    /// Ticks before an election [default: 10].
    #[arg(long, env = "CAIRN_ELECTION_TICKS")]
    pub election_ticks: Option<usize>,
    /// Ticks between heartbeats [default: 2].
    #[arg(long, env = "CAIRN_HEARTBEAT_TICKS")]
    pub heartbeat_ticks: Option<usize>,
    /// Compact a shard's log past this many applied entries [default: 10000].
    #[arg(long, env = "CAIRN_LOG_COMPACT_ENTRIES")]
    pub log_compact_entries: Option<u64>,
    /// Threads driving this node's replicas; each makes one fsync cover the writes of
    /// all its shards. More than the machine's cores only adds switching [default: 2].
    #[arg(long, env = "CAIRN_REPLICA_THREADS")]
    pub replica_threads: Option<usize>,
    /// Largest key in bytes [default: 4096].
    #[arg(long, env = "CAIRN_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,
    /// Largest value in bytes [default: 1048576].
    #[arg(long, env = "CAIRN_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Largest request body in bytes [default: 4194304].
    #[arg(long, env = "CAIRN_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Largest scan page [default: 1000].
    #[arg(long, env = "CAIRN_MAX_SCAN_LIMIT")]
    pub max_scan_limit: Option<usize>,
    /// Byte budget of a scan or diff page; a page ends early when it is reached
    /// [default: 4194304].
    #[arg(long, env = "CAIRN_MAX_PAGE_BYTES")]
    pub max_page_bytes: Option<usize>,
    /// Largest Raft entry in bytes (a write, a batch, a shard's part of a
    /// transaction) [default: 8388608].
    #[arg(long, env = "CAIRN_MAX_ENTRY_BYTES")]
    pub max_entry_bytes: Option<usize>,
    /// Most HTTP connections served at once; more wait until one closes (a client
    /// must send each request's headers within 10 s) [default: 1024].
    #[arg(long, env = "CAIRN_MAX_CONNECTIONS")]
    pub max_connections: Option<usize>,
    /// Largest peer transport frame in bytes [default: 67108864].
    #[arg(long, env = "CAIRN_MAX_FRAME_BYTES")]
    pub max_frame_bytes: Option<usize>,
    /// Request deadline inside the cluster in milliseconds [default: 5000].
    #[arg(long, env = "CAIRN_REQUEST_TIMEOUT_MS")]
    pub request_timeout_ms: Option<u64>,
    /// Automatic snapshot interval in milliseconds while data is written; 0 disables
    /// [default: 1000].
    #[arg(long, env = "CAIRN_SNAPSHOT_INTERVAL_MS")]
    pub snapshot_interval_ms: Option<u64>,
    /// How long automatic snapshots are kept, e.g. `24h`, `7d` [default: 24h].
    #[arg(long, env = "CAIRN_HISTORY_RETENTION")]
    pub history_retention: Option<String>,
    /// Serve linearizable reads on a leader lease instead of a ReadIndex round
    /// (`true`/`false`); assumes node clocks run within 10 % of each other
    /// [default: false].
    #[arg(long, env = "CAIRN_LEASE_READS")]
    pub lease_reads: Option<bool>,
    /// A node unreachable for this long (e.g. `5m`, `30s`) is declared dead and its
    /// replicas re-created on other nodes; `0` never [default: 5m].
    #[arg(long, env = "CAIRN_DEAD_AFTER")]
    pub dead_after: Option<String>,
    /// Most replica moves a minute made to even out the nodes' replica counts (after
    /// a node joins); `0` never [default: 6].
    #[arg(long, env = "CAIRN_REBALANCE_RATE")]
    pub rebalance_rate: Option<u32>,
    /// A file holding the root token (at least 32 printable characters; `cairn token
    /// root FILE` writes one). Turns authentication on: clients then need a token
    /// (`Authorization: Bearer ...`) for every route but /health, /ready, /metrics and
    /// /v1/openapi.json. Every node of a cluster gets the same file.
    #[arg(long, env = "CAIRN_ROOT_TOKEN_FILE")]
    pub root_token_file: Option<PathBuf>,
    /// The cluster CA's certificate (PEM). With --tls-cert and --tls-key, turns TLS
    /// on: HTTPS for clients, mutual TLS between peers (`cairn certs` makes them).
    #[arg(long, env = "CAIRN_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// This node's certificate (PEM), from `cairn certs create-node`.
    #[arg(long, env = "CAIRN_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// This node's private key (PEM).
    #[arg(long, env = "CAIRN_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Listen on non-loopback addresses without TLS (--tls-*) and authentication
    /// (--root-token-file). Without it such a node refuses to start [default: false].
    #[arg(long, env = "CAIRN_INSECURE", num_args = 0..=1, default_missing_value = "true")]
    pub insecure: Option<bool>,
    /// Serve the /v1/debug views of replicas' versions and digests (admin only)
    /// [default: false].
    #[arg(long, env = "CAIRN_ENABLE_DEBUG", num_args = 0..=1, default_missing_value = "true")]
    pub enable_debug: Option<bool>,
    /// Default backup destination (directory, file:///path or s3://bucket/prefix)
    /// [default: ./backups].
    #[arg(long, env = "CAIRN_BACKUP_DIR")]
    #[serde(skip)]
    pub backup_dir: Option<String>,
    /// Backup read rate limit per second, of all the backups the node runs together,
    /// e.g. `64MiB`; 0 is unlimited [default: 128MiB].
    #[arg(long, env = "CAIRN_BACKUP_RATE_LIMIT")]
    #[serde(skip)]
    pub backup_rate_limit: Option<String>,
    /// Encrypt backups with the key in this file (64 hex digits; `cairn backup key
    /// FILE` writes one): every node of the cluster gets the same file.
    #[arg(long, env = "CAIRN_BACKUP_KEY_FILE")]
    #[serde(skip)]
    pub backup_key_file: Option<PathBuf>,
    /// More roots (directories, `s3://bucket/prefix`) that backups requested over the
    /// API may be written under, comma-separated or repeated; `*` allows any
    /// destination [default: only --backup-dir and the schedules' destinations].
    #[arg(long, env = "CAIRN_BACKUP_ALLOW", value_delimiter = ',')]
    #[serde(skip)]
    pub backup_allow: Option<Vec<String>>,
    /// The `[backup]` table (file only).
    #[arg(skip)]
    pub backup: Option<BackupSettings>,
    /// Set by `cairn dev` only (no flag, no key): a local playground, where a backup
    /// may go anywhere (`--backup-allow '*'`).
    #[arg(skip)]
    #[serde(skip)]
    pub playground: Option<bool>,
}

macro_rules! merge_fields {
    ($first:expr, $second:expr, $($field:ident),*) => {
        Settings { $($field: $first.$field.or($second.$field)),* }
    };
}

impl Settings {
    /// Values set here win; the rest come from `other`.
    pub fn or(self, other: Settings) -> Settings {
        merge_fields!(
            self,
            other,
            id,
            data_dir,
            http,
            peer,
            peer_listen,
            initial_cluster,
            join,
            shards,
            replication_factor,
            cluster_token,
            tick_ms,
            election_ticks,
            heartbeat_ticks,
            log_compact_entries,
            replica_threads,
            max_key_bytes,
            max_value_bytes,
            max_request_bytes,
            max_scan_limit,
            max_page_bytes,
            max_entry_bytes,
            max_frame_bytes,
            max_connections,
            request_timeout_ms,
            snapshot_interval_ms,
            history_retention,
            lease_reads,
            dead_after,
            rebalance_rate,
            root_token_file,
            tls_ca,
            tls_cert,
            tls_key,
            insecure,
            enable_debug,
            backup_dir,
            backup_rate_limit,
            backup_key_file,
            backup_allow,
            backup,
            playground
        )
    }

    /// Read a TOML file of settings.
    pub fn from_file(path: &Path) -> Result<Settings, ServerError> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            ServerError::Config(format!("cannot read config file {}: {e}", path.display()))
        })?;
        toml::from_str(&text)
            .map_err(|e| ServerError::Config(format!("config file {}: {e}", path.display())))
    }

    /// Apply defaults and validate.
    pub fn resolve(self) -> Result<Config, ServerError> {
        let missing = |what: &str| ServerError::Config(format!("--{what} is required"));
        let peer = self.peer.ok_or_else(|| missing("peer"))?;
        let join: Vec<String> = self
            .join
            .as_deref()
            .map(|j| {
                j.split(',')
                    .map(str::trim)
                    .filter(|e| !e.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default();
        let initial_cluster = match (self.initial_cluster.as_deref(), join.is_empty()) {
            (Some(_), false) => {
                return Err(ServerError::Config(
                    "give --initial-cluster (to found a cluster) or --join (to join a running \
                     one), not both"
                        .into(),
                ))
            }
            (Some(text), true) => parse_initial_cluster(text)?,
            // Until the join answers, the node knows only itself.
            (None, false) => {
                let id = self.id.ok_or_else(|| missing("id"))?;
                BTreeMap::from([(id, peer.clone())])
            }
            (None, true) => return Err(missing("initial-cluster (or --join)")),
        };
        let config = Config {
            id: self.id.ok_or_else(|| missing("id"))?,
            data_dir: self.data_dir.ok_or_else(|| missing("data-dir"))?,
            http: self.http.ok_or_else(|| missing("http"))?,
            peer_listen: match self.peer_listen {
                Some(listen) => listen,
                None => listen_on(&peer)?,
            },
            peer,
            shards: self.shards.unwrap_or(8),
            // A joining node's factor is the cluster's, fixed at its creation; the
            // flag only matters to founders.
            replication_factor: match self.replication_factor {
                Some(rf) => rf,
                None if !join.is_empty() => DEFAULT_REPLICATION_FACTOR,
                None => DEFAULT_REPLICATION_FACTOR.min(initial_cluster.len()),
            },
            initial_cluster,
            join,
            cluster_token: self.cluster_token.unwrap_or_else(|| "cairn".into()),
            tick_ms: self.tick_ms.unwrap_or(100),
            election_ticks: self.election_ticks.unwrap_or(10),
            heartbeat_ticks: self.heartbeat_ticks.unwrap_or(2),
            log_compact_entries: self.log_compact_entries.unwrap_or(10_000),
            replica_threads: self.replica_threads.unwrap_or(2),
            max_key_bytes: self.max_key_bytes.unwrap_or(4096),
            max_value_bytes: self.max_value_bytes.unwrap_or(1024 * 1024),
            max_request_bytes: self.max_request_bytes.unwrap_or(4 * 1024 * 1024),
            max_scan_limit: self.max_scan_limit.unwrap_or(1000),
            max_page_bytes: self.max_page_bytes.unwrap_or(4 * 1024 * 1024),
            max_entry_bytes: self
                .max_entry_bytes
                .unwrap_or(cairn_raft::RaftLimits::default().max_entry_bytes),
            max_frame_bytes: self
                .max_frame_bytes
                .unwrap_or(cairn_raft::RaftLimits::default().max_frame_bytes),
            request_timeout_ms: self.request_timeout_ms.unwrap_or(5000),
            max_connections: self.max_connections.unwrap_or(1024),
            snapshot_interval_ms: self.snapshot_interval_ms.unwrap_or(1000),
            history_retention: match self.history_retention.as_deref() {
                None => Duration::from_secs(24 * 3600),
                Some(text) => humantime::parse_duration(text).map_err(|e| {
                    ServerError::Config(format!("--history-retention `{text}`: {e}"))
                })?,
            },
            lease_reads: self.lease_reads.unwrap_or(false),
            rebalance_rate: self.rebalance_rate.unwrap_or(6),
            dead_after: match self.dead_after.as_deref() {
                None => Some(Duration::from_secs(300)),
                Some("0") => None,
                Some(text) => match humantime::parse_duration(text) {
                    Ok(d) if d.is_zero() => None,
                    Ok(d) => Some(d),
                    Err(e) => {
                        return Err(ServerError::Config(format!("--dead-after `{text}`: {e}")))
                    }
                },
            },
            root_token_file: self.root_token_file,
            insecure: self.insecure.unwrap_or(false),
            tls: match (self.tls_ca, self.tls_cert, self.tls_key) {
                (Some(ca), Some(cert), Some(key)) => Some(TlsFiles { ca, cert, key }),
                (None, None, None) => None,
                _ => {
                    return Err(ServerError::Config(
                        "TLS needs all three of --tls-ca, --tls-cert and --tls-key".into(),
                    ))
                }
            },
            enable_debug: self.enable_debug.unwrap_or(false),
            backup: {
                let mut backup = self.backup.unwrap_or_default();
                backup.dir = self.backup_dir.or(backup.dir);
                backup.rate_limit = self.backup_rate_limit.or(backup.rate_limit);
                backup.key_file = self.backup_key_file.or(backup.key_file);
                backup.allow.extend(self.backup_allow.unwrap_or_default());
                backup
            },
        };
        if config.backup.allow.iter().any(|root| root.trim() == "*")
            && self.playground != Some(true)
        {
            return Err(ServerError::Config(
                "--backup-allow '*' would let any client with the admin role write backups \
                 anywhere this node can write; it is for `cairn dev` only. List the roots \
                 backups may go under instead"
                    .into(),
            ));
        }
        config.validate()?;
        config.backups()?;
        Ok(config)
    }
}

impl Config {
    pub fn validate(&self) -> Result<(), ServerError> {
        let fail = |m: String| Err(ServerError::Config(m));
        if self.id == 0 {
            return fail("--id must be at least 1".into());
        }
        match self.initial_cluster.get(&self.id) {
            None => {
                return fail(format!(
                    "--initial-cluster does not list this node's id {}",
                    self.id
                ))
            }
            Some(addr) if addr != &self.peer => {
                return fail(format!(
                    "--initial-cluster gives node {} the peer address {addr}, but --peer is {}",
                    self.id, self.peer
                ))
            }
            Some(_) => {}
        }
        if self.peer_listen == self.http {
            return fail(format!(
                "--peer-listen and --http are both {}; the peer transport and the HTTP API need their own ports",
                self.http
            ));
        }
        if self.shards == 0 || self.shards > 4096 {
            return fail("--shards must be between 1 and 4096".into());
        }
        let nodes = self.initial_cluster.len();
        // A node about to join knows only itself until the join is answered, and a
        // running cluster's factor is not its to choose: the same flags can start
        // founders and joiners.
        if self.replication_factor == 0 || (self.join.is_empty() && self.replication_factor > nodes)
        {
            return fail(format!(
                "--replication-factor must be between 1 and the number of nodes in --initial-cluster ({nodes}); it is {}",
                self.replication_factor
            ));
        }
        if self.tick_ms == 0 {
            return fail("--tick-ms must be positive".into());
        }
        if self.heartbeat_ticks == 0 || self.election_ticks <= self.heartbeat_ticks {
            return fail("--election-ticks must exceed --heartbeat-ticks (at least 1)".into());
        }
        if self.log_compact_entries == 0 {
            return fail("--log-compact-entries must be positive".into());
        }
        if self.replica_threads == 0 {
            return fail("--replica-threads must be at least 1".into());
        }
        if self.max_connections == 0 {
            return fail("--max-connections must be at least 1".into());
        }
        if self.max_key_bytes == 0 || self.max_value_bytes == 0 || self.max_scan_limit == 0 {
            return fail("size limits must be positive".into());
        }
        if self.max_request_bytes < self.max_value_bytes {
            return fail("--max-request-bytes must be at least --max-value-bytes".into());
        }
        self.check_limits_compose()?;
        self.check_exposure()?;
        if self.request_timeout_ms < self.tick_ms {
            return fail("--request-timeout-ms must be at least one tick".into());
        }
        if self.lease_reads && self.election_ticks < 5 {
            return fail("--lease-reads needs --election-ticks of at least 5".into());
        }
        Ok(())
    }

    /// Secure by default: a node listens beyond loopback only with TLS (`--tls-*`)
    /// and authentication (`--root-token-file`), or when told it may be reached
    /// insecurely (`--insecure`).
    fn check_exposure(&self) -> Result<(), ServerError> {
        if self.insecure || (self.tls.is_some() && self.root_token_file.is_some()) {
            return Ok(());
        }
        let exposed: Vec<String> = [("--http", self.http), ("--peer-listen", self.peer_listen)]
            .into_iter()
            .filter(|(_, addr)| !addr.ip().is_loopback())
            .map(|(flag, addr)| format!("{flag} {addr}"))
            .collect();
        if exposed.is_empty() {
            return Ok(());
        }
        let missing = match (self.tls.is_some(), self.root_token_file.is_some()) {
            (false, true) => {
                "without TLS (--tls-ca, --tls-cert, --tls-key), tokens and data would cross the network unencrypted and anyone could speak to the peer port"
            }
            (true, false) => {
                "without authentication (--root-token-file), anyone who reaches it could read, change and delete every key"
            }
            _ => {
                "without TLS (--tls-ca, --tls-cert, --tls-key) and authentication (--root-token-file), anyone who reaches it could read, change and delete every key, over unencrypted connections"
            }
        };
        Err(ServerError::Config(format!(
            "refusing to listen beyond loopback ({}): {missing}. Listen on 127.0.0.1, \
             secure the node (docs/SECURITY.md), or pass --insecure to accept that",
            exposed.join(", ")
        )))
    }

    /// Whether this node can be reached insecurely, said at every start.
    pub fn exposure_warning(&self) -> Option<String> {
        let beyond = !self.http.ip().is_loopback() || !self.peer_listen.ip().is_loopback();
        let (tls, auth) = (self.tls.is_some(), self.root_token_file.is_some());
        match (beyond, tls, auth) {
            (_, true, true) | (false, false, true) => None,
            (false, _, false) => Some(
                "authentication is off (no --root-token-file): any local user can read and change every key"
                    .into(),
            ),
            (true, false, true) => Some(
                "--insecure: listening beyond loopback without TLS; tokens and data cross the network in plaintext, and anyone who reaches the peer port can speak for a member"
                    .into(),
            ),
            (true, _, false) => Some(
                "--insecure: listening beyond loopback without authentication; anyone who reaches this node can read, change and delete every key"
                    .into(),
            ),
        }
    }

    /// The size limits compose, so every request, page and Raft entry fits in what
    /// carries it: a request body in a Raft entry, an entry in a Raft message and a
    /// message in a frame, a page (and the one key and value a page may hold beyond
    /// its budget) in a frame.
    fn check_limits_compose(&self) -> Result<(), ServerError> {
        let fail = |m: String| Err(ServerError::Config(m));
        let limits = self.raft_limits();
        if let Err(e) = limits.validate() {
            return fail(format!("--max-entry-bytes and --max-frame-bytes: {e}"));
        }
        if self.max_page_bytes == 0 {
            return fail("--max-page-bytes must be positive".into());
        }
        // A batch's command is its ops in bincode, which never takes more than their
        // JSON plus a little per op: the request plus the envelope bounds it.
        let command = self
            .max_request_bytes
            .saturating_add(cairn_raft::config::FRAME_ENVELOPE_BYTES);
        if command > self.max_entry_bytes {
            return fail(format!(
                "--max-request-bytes ({}) plus {} bytes of encoding must fit in --max-entry-bytes ({})",
                self.max_request_bytes,
                cairn_raft::config::FRAME_ENVELOPE_BYTES,
                self.max_entry_bytes
            ));
        }
        let room = limits.frame_payload_bytes();
        let item = cairn_store::Page::<()>::cost(self.max_key_bytes, self.max_value_bytes);
        if self.max_page_bytes > room || item > room {
            return fail(format!(
                "a page of --max-page-bytes ({}) and a key and value of --max-key-bytes and --max-value-bytes ({item} bytes) must each fit in a frame of --max-frame-bytes ({}) less {} bytes of envelope",
                self.max_page_bytes,
                self.max_frame_bytes,
                cairn_raft::config::FRAME_ENVELOPE_BYTES
            ));
        }
        Ok(())
    }

    /// The Raft layer's size limits.
    pub fn raft_limits(&self) -> cairn_raft::RaftLimits {
        cairn_raft::RaftLimits {
            max_frame_bytes: self.max_frame_bytes,
            max_entry_bytes: self.max_entry_bytes,
        }
    }

    /// The snapshot protocol's timing.
    pub fn snapshots(&self) -> cairn_snapshot::SnapshotConfig {
        cairn_snapshot::SnapshotConfig {
            auto_interval: (self.snapshot_interval_ms > 0)
                .then(|| Duration::from_millis(self.snapshot_interval_ms)),
            retention: self.history_retention,
            ..Default::default()
        }
    }

    /// The backup side's settings, checked (schedules parsed, sizes and durations read).
    pub fn backups(&self) -> Result<cairn_backup::BackupConfig, ServerError> {
        let b = &self.backup;
        let bad = |m: String| ServerError::Config(format!("backup: {m}"));
        let rate_limit = match b.rate_limit.as_deref() {
            None => Some(128 * 1024 * 1024),
            Some(text) => match parse_bytes(text).map_err(|e| bad(format!("rate_limit: {e}")))? {
                0 => None,
                n => Some(n),
            },
        };
        let stale_after = match b.stale_after.as_deref() {
            None => Duration::from_secs(30),
            Some(text) => humantime::parse_duration(text)
                .map_err(|e| bad(format!("stale_after `{text}`: {e}")))?,
        };
        let mut schedules = Vec::new();
        for spec in &b.schedule {
            let schedule = spec.validate().map_err(|e| bad(e.to_string()))?;
            if schedules
                .iter()
                .any(|s: &cairn_backup::schedule::Schedule| s.spec().name == spec.name)
            {
                return Err(bad(format!("two schedules are named `{}`", spec.name)));
            }
            schedules.push(schedule);
        }
        Ok(cairn_backup::BackupConfig {
            default_destination: b.dir.clone().unwrap_or_else(|| "./backups".into()),
            s3: b.s3.clone().unwrap_or_default().options(),
            rate_limit,
            stale_after,
            heartbeat: (stale_after / 10).clamp(Duration::from_millis(200), Duration::from_secs(2)),
            schedules,
            allowed: cairn_backup::AllowedDestinations::new(b.allow.iter().map(String::as_str)),
            key: b
                .key_file
                .as_deref()
                .map(cairn_backup::BackupKey::load)
                .transpose()
                .map_err(|e| bad(e.to_string()))?,
            ..Default::default()
        })
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    pub fn tick(&self) -> Duration {
        Duration::from_millis(self.tick_ms)
    }

    /// How the cluster's groups are placed on its nodes at creation.
    pub fn placement(&self) -> cairn_raft::Placement {
        cairn_raft::Placement::with_factor(self.replication_factor, self.initial_cluster.len())
    }

    /// The replicas' settings for this node in cluster `cluster_id` (the one place a
    /// node's configuration becomes Raft's, for every way a node is started).
    pub fn raft(&self, cluster_id: String) -> cairn_raft::RaftConfig {
        cairn_raft::RaftConfig {
            node_id: self.id,
            cluster_id,
            shards: self.shards,
            peers: self.initial_cluster.clone(),
            placement: self.placement(),
            listen: self.peer_listen,
            tick: self.tick(),
            election_ticks: self.election_ticks,
            heartbeat_ticks: self.heartbeat_ticks,
            log_compact_entries: self.log_compact_entries,
            request_ticks: (self.request_timeout_ms / self.tick_ms).max(1),
            replica_threads: self.replica_threads,
            limits: self.raft_limits(),
            lease_reads: self.lease_reads,
            // Loaded from `tls` when the node starts (`Parts::assemble`).
            tls: None,
        }
    }
}

/// Replicas per shard when `--replication-factor` is not given (as CockroachDB and
/// TiKV default to): a cluster of fewer nodes puts a replica on each.
pub const DEFAULT_REPLICATION_FACTOR: usize = 3;

/// Parse a byte size: `1048576`, `512KiB`, `64MiB`, `1GiB` (also KB/MB/GB as powers
/// of 1000).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (digits, unit) = text.split_at(split);
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("`{text}` is not a size like 64MiB"))?;
    let scale: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("unknown unit `{other}` in `{text}`")),
    };
    n.checked_mul(scale)
        .ok_or_else(|| format!("`{text}` is too large"))
}

/// Where to listen for peers by default: `peer` itself if it is an IP address, else
/// the first address its name resolves to now.
fn listen_on(peer: &PeerAddr) -> Result<SocketAddr, ServerError> {
    if let Some(addr) = peer.ip() {
        return Ok(addr);
    }
    use std::net::ToSocketAddrs as _;
    (peer.host(), peer.port())
        .to_socket_addrs()
        .ok()
        .and_then(|mut addrs| addrs.next())
        .ok_or_else(|| {
            ServerError::Config(format!(
                "--peer {peer}: the name does not resolve here, so there is nothing to listen on; give --peer-listen IP:PORT"
            ))
        })
}

/// Parse `1=127.0.0.1:9081,2=node2.cairn:9082` (IP addresses or host names).
pub fn parse_initial_cluster(text: &str) -> Result<BTreeMap<NodeId, PeerAddr>, ServerError> {
    let bad = |m: String| ServerError::Config(format!("--initial-cluster: {m}"));
    let mut nodes = BTreeMap::new();
    for member in text.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let (id, addr) = member
            .split_once('=')
            .ok_or_else(|| bad(format!("`{member}` is not ID=HOST:PORT")))?;
        let id: NodeId = id
            .trim()
            .parse()
            .map_err(|_| bad(format!("`{id}` is not a node id")))?;
        let addr: PeerAddr = addr.trim().parse().map_err(bad)?;
        if id == 0 {
            return Err(bad("node ids start at 1".into()));
        }
        if nodes.insert(id, addr).is_some() {
            return Err(bad(format!("node {id} is listed twice")));
        }
    }
    if nodes.is_empty() {
        return Err(bad("no nodes given".into()));
    }
    Ok(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> Settings {
        Settings {
            id: Some(1),
            data_dir: Some("d".into()),
            http: Some("127.0.0.1:8081".parse().unwrap()),
            peer: Some("127.0.0.1:9081".parse().unwrap()),
            initial_cluster: Some("1=127.0.0.1:9081,2=127.0.0.1:9082".into()),
            ..Settings::default()
        }
    }

    #[test]
    fn defaults_apply_and_validate() {
        let c = base().resolve().unwrap();
        assert_eq!(c.shards, 8);
        assert_eq!(c.max_key_bytes, 4096);
        assert_eq!(c.max_value_bytes, 1 << 20);
        assert_eq!(c.initial_cluster.len(), 2);
    }

    #[test]
    fn earlier_source_wins() {
        let flags = Settings {
            shards: Some(4),
            ..Settings::default()
        };
        let file: Settings = toml::from_str("shards = 16\nmax_scan_limit = 10\nid = 1").unwrap();
        let merged = flags.or(file).or(base());
        let c = merged.resolve().unwrap();
        assert_eq!(c.shards, 4, "flag beats file");
        assert_eq!(c.max_scan_limit, 10, "file beats default");
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        assert!(toml::from_str::<Settings>("shard = 3").is_err());
    }

    #[test]
    fn bad_settings_are_explained() {
        let err = |s: Settings| s.resolve().unwrap_err().to_string();
        let anywhere = || Settings {
            backup_allow: Some(vec!["/srv/backups".into(), "*".into()]),
            ..base()
        };
        assert!(err(anywhere()).contains("`cairn dev` only"));
        assert!(Settings {
            playground: Some(true),
            ..anywhere()
        }
        .resolve()
        .is_ok());
        assert!(err(Settings { id: None, ..base() }).contains("--id"));
        assert!(err(Settings {
            id: Some(3),
            ..base()
        })
        .contains("does not list"));
        assert!(err(Settings {
            initial_cluster: Some("1=nonsense".into()),
            ..base()
        })
        .contains("HOST:PORT"));
        assert!(err(Settings {
            initial_cluster: Some("1=127.0.0.1:9081,2=under_score:9082".into()),
            ..base()
        })
        .contains("neither an IP address nor a host name"));
        assert!(err(Settings {
            peer: Some("127.0.0.1:1".parse().unwrap()),
            ..base()
        })
        .contains("--peer"));
        assert!(err(Settings {
            shards: Some(0),
            ..base()
        })
        .contains("--shards"));
        assert!(err(Settings {
            peer_listen: Some("127.0.0.1:8081".parse().unwrap()),
            ..base()
        })
        .contains("--peer-listen"));
    }

    /// Peers may be named by host name (compose services, StatefulSets): the names
    /// reach Raft as they are, to be resolved at every dial, and the listen address
    /// defaults to what this node's own name resolves to.
    #[test]
    fn peers_may_be_host_names() {
        let c = Settings {
            peer: Some("localhost:9081".parse().unwrap()),
            initial_cluster: Some("1=localhost:9081,2=Node-2.cairn.internal:9082".into()),
            ..base()
        }
        .resolve()
        .unwrap();
        assert!(c.peer_listen.ip().is_loopback(), "{}", c.peer_listen);
        assert_eq!(c.peer_listen.port(), 9081);
        let raft = c.raft("x".into());
        assert_eq!(raft.peers[&2].to_string(), "node-2.cairn.internal:9082");
        assert_eq!(raft.peers[&1].host(), "localhost");
    }

    /// Every limit must fit what carries it (issue 11: a page of the default size
    /// limits was larger than a peer frame and wedged the link).
    #[test]
    fn size_limits_must_compose_under_the_frame_cap() {
        let c = base().resolve().unwrap();
        assert_eq!(
            (c.max_page_bytes, c.max_entry_bytes, c.max_frame_bytes),
            (4 << 20, 8 << 20, 64 << 20)
        );
        let err = |s: Settings| s.resolve().unwrap_err().to_string();
        let request_over_entry = Settings {
            max_request_bytes: Some(8 << 20),
            ..base()
        };
        assert!(err(request_over_entry).contains("--max-entry-bytes"));
        let page_over_frame = Settings {
            max_page_bytes: Some(64 << 20),
            ..base()
        };
        assert!(err(page_over_frame).contains("--max-page-bytes"));
        // A value is bounded by the request and so by the entry; a key limit is not.
        let key_over_frame = Settings {
            max_key_bytes: Some(64 << 20),
            ..base()
        };
        let e = err(key_over_frame);
        assert!(e.contains("--max-frame-bytes"), "{e}");
        let entry_over_frame = Settings {
            max_entry_bytes: Some(63 << 20),
            ..base()
        };
        assert!(err(entry_over_frame).contains("does not fit the frame cap"));
        let zero_page = Settings {
            max_page_bytes: Some(0),
            ..base()
        };
        assert!(err(zero_page).contains("--max-page-bytes"));
        // Smaller limits that compose are accepted.
        let small = Settings {
            max_frame_bytes: Some(4 << 20),
            max_entry_bytes: Some(2 << 20),
            max_request_bytes: Some(1 << 20),
            max_value_bytes: Some(512 << 10),
            max_page_bytes: Some(1 << 20),
            ..base()
        };
        assert!(small.resolve().is_ok());
    }

    #[test]
    fn no_secret_shows_in_a_printed_configuration() {
        let settings = Settings {
            backup: Some(BackupSettings {
                s3: Some(S3Settings {
                    secret_access_key: Some("very-secret-key".into()),
                    ..S3Settings::default()
                }),
                ..BackupSettings::default()
            }),
            ..base()
        };
        let config = settings.resolve().unwrap();
        assert!(!format!("{config:?}").contains("very-secret-key"));
    }

    /// Secure by default: off loopback only with `--insecure`, and the refusal names
    /// the addresses and what is missing.
    #[test]
    fn a_node_listens_beyond_loopback_only_when_told_it_is_insecure() {
        let exposed = |http: &str, peer_listen: &str| Settings {
            http: Some(http.parse().unwrap()),
            peer_listen: Some(peer_listen.parse().unwrap()),
            ..base()
        };
        let refused = exposed("0.0.0.0:8081", "127.0.0.1:9081")
            .resolve()
            .unwrap_err();
        let message = refused.to_string();
        assert!(message.contains("--http 0.0.0.0:8081"), "{message}");
        assert!(message.contains("--insecure"), "{message}");
        assert!(message.contains("(--root-token-file)"), "{message}");
        assert!(message.contains("--tls-cert"), "{message}");
        let refused = exposed("127.0.0.1:8081", "10.0.0.5:9081")
            .resolve()
            .unwrap_err();
        assert!(refused.to_string().contains("--peer-listen 10.0.0.5:9081"));
        // Authentication alone is not enough: the traffic would be plaintext.
        let with_auth = Settings {
            root_token_file: Some("root.token".into()),
            ..exposed("0.0.0.0:8081", "0.0.0.0:9081")
        };
        let refused = with_auth.clone().resolve().unwrap_err().to_string();
        assert!(refused.contains("unencrypted"), "{refused}");
        // TLS alone is not enough either: anyone could still read everything.
        let tls = |s: Settings| Settings {
            tls_ca: Some("ca.crt".into()),
            tls_cert: Some("node-1.crt".into()),
            tls_key: Some("node-1.key".into()),
            ..s
        };
        let refused = tls(exposed("0.0.0.0:8081", "0.0.0.0:9081"))
            .resolve()
            .unwrap_err()
            .to_string();
        assert!(refused.contains("without authentication"), "{refused}");
        // Both: a secured node listens anywhere, and says nothing at start.
        let secured = tls(with_auth.clone())
            .resolve()
            .expect("TLS and tokens suffice");
        assert_eq!(secured.exposure_warning(), None);
        let partial = Settings {
            tls_key: None,
            ..tls(base())
        };
        assert!(partial
            .resolve()
            .unwrap_err()
            .to_string()
            .contains("all three"));

        let allowed = Settings {
            insecure: Some(true),
            ..with_auth
        }
        .resolve()
        .expect("--insecure allows it");
        assert!(allowed.exposure_warning().unwrap().contains("plaintext"));
        let open = Settings {
            insecure: Some(true),
            ..exposed("0.0.0.0:8081", "127.0.0.1:9081")
        }
        .resolve()
        .unwrap();
        assert!(open.exposure_warning().unwrap().contains("anyone"));

        let local = base().resolve().unwrap();
        assert!(local
            .exposure_warning()
            .unwrap()
            .contains("authentication is off"));
        let secured = Settings {
            root_token_file: Some("root.token".into()),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(secured.exposure_warning(), None);
    }

    #[test]
    fn peer_listen_defaults_to_peer() {
        let c = base().resolve().unwrap();
        assert_eq!(Some(c.peer_listen), c.peer.ip());
        let listen: SocketAddr = "127.0.0.1:19081".parse().unwrap();
        let c = Settings {
            peer_listen: Some(listen),
            ..base()
        }
        .resolve()
        .unwrap();
        assert_eq!(c.peer_listen, listen);
        // The advertised address (and so the cluster id) stays `--peer`.
        assert_eq!(c.initial_cluster[&1], c.peer);
    }

    /// The replication factor defaults to three, or to every node of a smaller
    /// cluster; an explicit one must fit the cluster; only a factor below the
    /// cluster's size changes the cluster id (so existing clusters keep theirs).
    #[test]
    fn the_replication_factor_fits_the_cluster_and_names_it() {
        let five =
            "1=127.0.0.1:9081,2=127.0.0.1:9082,3=127.0.0.1:9083,4=127.0.0.1:9084,5=127.0.0.1:9085";
        let with = |rf: Option<usize>, members: &str| Settings {
            replication_factor: rf,
            initial_cluster: Some(members.into()),
            ..base()
        };
        assert_eq!(base().resolve().unwrap().replication_factor, 2);
        let c = with(None, five).resolve().unwrap();
        assert_eq!(c.replication_factor, 3);
        assert_eq!(c.placement(), cairn_raft::Placement::Spread { replicas: 3 });
        let err = |s: Settings| s.resolve().unwrap_err().to_string();
        assert!(err(with(Some(0), five)).contains("--replication-factor"));
        assert!(err(with(Some(6), five)).contains("(5)"));
        let id = |s: Settings| crate::identity::cluster_id(&s.resolve().unwrap());
        assert_eq!(
            id(with(Some(2), "1=127.0.0.1:9081,2=127.0.0.1:9082")),
            id(base())
        );
        assert_ne!(id(with(Some(3), five)), id(with(Some(5), five)));
        assert_ne!(id(with(Some(3), five)), id(with(Some(2), five)));
        // A joining node may be started with the founders' flags: until the join is
        // answered it knows only itself, and the factor is the cluster's anyway.
        let joiner = Settings {
            replication_factor: Some(3),
            initial_cluster: None,
            join: Some("http://127.0.0.1:8081".into()),
            ..base()
        };
        assert_eq!(joiner.resolve().unwrap().replication_factor, 3);
    }
}
