//! A small library for tests that run real `cairn server` processes on loopback.
//!
//! [`Cluster::start`] picks free ports, makes a temporary directory holding every
//! node's data dir and log files, spawns one process per node and waits until every
//! node reports `/ready`. Nodes are numbered from 1, like their Raft node ids, and
//! every method taking a node takes that id.
//!
//! The processes themselves are managed by `cairn_chaos::cluster`, the one
//! implementation shared with the fault-injection harness (ports, data dirs, logs,
//! signals, readiness, and children that never outlive their cluster: its `Drop`
//! SIGKILLs every child still running, also when the test panics). This wrapper adds
//! what tests want: the `cairn` binary of this package, panics with the nodes' logs
//! instead of errors, and at most one cluster at a time per test binary (a
//! process-wide lock held by each `Cluster`), so test functions can run in parallel
//! without oversubscribing the machine or racing for ports.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::{Duration, Instant};

use cairn_chaos::cluster as processes;
use cairn_client::{api, Client};

/// At most one cluster per test binary at a time.
static ONE_CLUSTER_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// How long a cluster may take to elect a leader for every shard.
pub const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// The `cairn` binary under test.
pub fn cairn_bin() -> &'static str {
    env!("CARGO_BIN_EXE_cairn")
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub nodes: usize,
    pub shards: u32,
    /// Appended to every node's `cairn server` command line.
    pub extra_args: Vec<String>,
    /// Set in every node's environment, at every start (e.g. `FAILPOINTS`).
    pub env: Vec<(String, String)>,
    /// HTTPS and mutual TLS between peers, with certificates made for the cluster;
    /// [`Cluster::client`] trusts their CA.
    pub tls: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            shards: 8,
            extra_args: Vec::new(),
            env: Vec::new(),
            tls: false,
        }
    }
}

pub struct Cluster {
    // Field order matters: the processes go first (their `Drop` kills the children
    // and removes the temporary directory), then the lock is released.
    inner: processes::Cluster,
    /// Every node's extra environment ([`ClusterOptions::env`]).
    env: Vec<(String, String)>,
    _turn: tokio::sync::MutexGuard<'static, ()>,
}

fn node(id: usize) -> u64 {
    id as u64
}

impl Cluster {
    /// Starts a cluster and waits until every node is ready; panics (with the nodes'
    /// logs) if it does not become ready within [`READY_TIMEOUT`].
    pub async fn start(opts: ClusterOptions) -> Cluster {
        Cluster::start_prepared(opts, |_| {}).await
    }

    /// Like [`Cluster::start`], but runs `prepare` once the ports and data dir paths
    /// are chosen and before any node starts (to restore data dirs from a backup).
    pub async fn start_prepared(opts: ClusterOptions, prepare: impl FnOnce(&Cluster)) -> Cluster {
        let turn = ONE_CLUSTER_AT_A_TIME.lock().await;
        let mut options = processes::ClusterOptions::new(cairn_bin());
        options.nodes = opts.nodes;
        options.shards = opts.shards;
        options.tls = opts.tls;
        // Tests write backups to temporary directories: allow those, and no more, so
        // the destination check stays on.
        options.extra_args = vec![
            "--backup-allow".into(),
            std::env::temp_dir().display().to_string(),
        ];
        options.extra_args.extend(opts.extra_args);
        let inner = processes::Cluster::new(options).unwrap_or_else(|e| panic!("{e}"));
        let mut cluster = Cluster {
            inner,
            env: opts.env,
            _turn: turn,
        };
        prepare(&cluster);
        for id in cluster.ids() {
            cluster.start_node(id);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// The CA's certificate (PEM) of a cluster started with `tls`.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.inner.ca_pem()
    }

    /// Node `id`'s base URL (`https://` under TLS).
    pub fn url(&self, id: usize) -> String {
        format!("{}://{}", self.inner.scheme(), self.http_addr(id))
    }

    /// SIGHUP node `id` (it reloads its TLS certificates).
    pub fn hangup(&self, id: usize) {
        self.inner
            .hangup(node(id))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    /// Node ids, 1..=n.
    pub fn ids(&self) -> Vec<usize> {
        self.inner.ids().into_iter().map(|id| id as usize).collect()
    }

    pub fn shards(&self) -> u32 {
        self.inner.shards()
    }

    /// A client talking to node `id`.
    pub fn client(&self, id: usize) -> Client {
        self.inner
            .client(node(id))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn http_addr(&self, id: usize) -> SocketAddr {
        self.inner
            .http_addr(node(id))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn peer_addr(&self, id: usize) -> SocketAddr {
        self.inner
            .peer_addr(node(id))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.inner
            .data_dir(node(id))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// The temporary directory holding data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.inner.dir()
    }

    pub fn initial_cluster(&self) -> &str {
        self.inner.initial_cluster()
    }

    pub fn is_running(&self, id: usize) -> bool {
        self.inner.is_running(node(id))
    }

    /// Ids of the nodes whose process this harness believes is running.
    pub fn running(&self) -> Vec<usize> {
        self.inner
            .running()
            .into_iter()
            .map(|id| id as usize)
            .collect()
    }

    /// The `cairn server ...` arguments node `id` runs with.
    pub fn node_args(&self, id: usize) -> Vec<String> {
        self.inner
            .node_args(node(id))
            .unwrap_or_else(|e| panic!("{e}"))
    }

    /// A command running the `cairn` binary with `args`, with its environment cleaned
    /// of `CAIRN_*` variables so the test alone decides the configuration (and, on
    /// Linux, killed by the kernel should the test process die).
    pub fn command(args: &[String]) -> Command {
        processes::Cluster::command(Path::new(cairn_bin()), args)
    }

    pub fn stdout_path(&self, id: usize) -> PathBuf {
        self.inner.stdout_path(node(id))
    }

    pub fn stderr_path(&self, id: usize) -> PathBuf {
        self.inner.stderr_path(node(id))
    }

    /// Spawns node `id` with its usual arguments, data dir and ports (logs are
    /// appended to). Does not wait for it to become ready.
    pub fn start_node(&mut self, id: usize) {
        self.start_node_with_env(id, &[]);
    }

    /// Like [`Cluster::start_node`], with extra environment variables (for example
    /// `FAILPOINTS`, which arms crash points in test builds) on top of the cluster's.
    pub fn start_node_with_env(&mut self, id: usize, env: &[(&str, &str)]) {
        let mut all: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .filter(|(k, _)| !env.iter().any(|(name, _)| name == k))
            .collect();
        all.extend_from_slice(env);
        self.inner
            .start_node_with_env(node(id), &all)
            .unwrap_or_else(|e| panic!("start node {id}: {e}"));
    }

    /// Waits up to `timeout` for node `id` to exit by itself; returns (and reaps) its
    /// exit status, or `None` if it is still running.
    pub async fn wait_exit(&mut self, id: usize, timeout: Duration) -> Option<ExitStatus> {
        self.inner
            .wait_exit(node(id), timeout)
            .await
            .unwrap_or_else(|e| panic!("wait for node {id}: {e}"))
    }

    /// SIGKILLs node `id` and reaps it.
    pub async fn kill(&mut self, id: usize) {
        self.inner
            .kill(node(id))
            .unwrap_or_else(|e| panic!("kill node {id}: {e}"));
    }

    /// SIGKILLs every running node.
    pub async fn kill_all(&mut self) {
        self.inner
            .kill_all()
            .unwrap_or_else(|e| panic!("kill all: {e}"));
    }

    /// SIGTERMs node `id`, waits for it to exit (at most 20 s) and asserts it exited
    /// successfully.
    pub async fn stop(&mut self, id: usize) {
        let status = self.terminate(id).await;
        if !status.success() {
            self.print_log_tail(id, 60);
            panic!("node {id} exited with {status} after SIGTERM, expected success");
        }
    }

    /// SIGTERMs node `id` and returns its exit status (SIGKILLing it and panicking if
    /// it does not exit within 20 s).
    pub async fn terminate(&mut self, id: usize) -> ExitStatus {
        match self
            .inner
            .terminate(node(id), Duration::from_secs(20))
            .await
        {
            Ok(status) => status,
            Err(e) => {
                self.print_log_tail(id, 60);
                panic!("node {id}: {e}");
            }
        }
    }

    /// Crash-restarts the whole cluster: SIGKILLs every running node, starts them
    /// all again and waits until they are ready.
    pub async fn restart_all(&mut self) {
        self.kill_all().await;
        for id in self.ids() {
            self.start_node(id);
        }
        self.wait_ready().await;
    }

    /// Waits until every running node answers `/ready` with true; panics with the
    /// nodes' logs after [`READY_TIMEOUT`] or if a node's process exits.
    pub async fn wait_ready(&mut self) {
        if let Err(e) = self.inner.wait_ready(READY_TIMEOUT).await {
            self.print_all_logs(80);
            panic!("cluster not ready: {e}");
        }
    }

    /// Panics (with the log) if a node the harness started has exited on its own.
    pub fn assert_alive(&mut self) {
        if let Err(e) = self.inner.check_alive() {
            panic!("{e}");
        }
    }

    /// Node `id`'s view of the cluster.
    pub async fn status(&self, id: usize) -> api::ClusterStatus {
        self.client(id)
            .cluster()
            .await
            .unwrap_or_else(|e| panic!("GET /v1/cluster on node {id}: {e}"))
    }

    /// The node leading `shard`, as reported by the first running node that knows.
    pub async fn leader_node_of(&self, shard: u32) -> Option<usize> {
        for id in self.running() {
            let Ok(status) = self.client(id).cluster().await else {
                continue;
            };
            let leader = status
                .shards
                .iter()
                .find(|s| s.id == shard)
                .and_then(|s| s.leader);
            if let Some(leader) = leader {
                return Some(leader as usize);
            }
        }
        None
    }

    /// The last `lines` lines of node `id`'s stderr log.
    pub fn log_tail(&self, id: usize, lines: usize) -> String {
        self.inner.log_tail(node(id), lines)
    }

    pub fn print_log_tail(&self, id: usize, lines: usize) {
        eprintln!(
            "----- node {id} stderr (last {lines} lines, {}) -----\n{}\n----- end node {id} -----",
            self.stderr_path(id).display(),
            self.log_tail(id, lines)
        );
    }

    pub fn print_all_logs(&self, lines: usize) {
        for id in self.ids() {
            self.print_log_tail(id, lines);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // The children are killed by `inner`'s own `Drop`, right after this.
        if std::thread::panicking() {
            self.print_all_logs(40);
        }
    }
}

/// The shard of `key` in a cluster of `shards` shards: `xxh3_64(key) % shards`.
pub fn shard_of(key: &[u8], shards: u32) -> u32 {
    (xxhash_rust::xxh3::xxh3_64(key) % u64::from(shards)) as u32
}

/// A test's random seed: `default`, unless `CAIRN_TEST_SEED` gives another. Printed,
/// so a failing run can be replayed.
pub fn seed(default: u64) -> u64 {
    let seed = match std::env::var("CAIRN_TEST_SEED") {
        Ok(text) => text.parse().expect("CAIRN_TEST_SEED must be a u64"),
        Err(_) => default,
    };
    eprintln!("seed {seed} (set CAIRN_TEST_SEED to replay another)");
    seed
}

/// Polls `check` every 100 ms until it returns `Ok`, or panics with its last error
/// after `timeout`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(e) if Instant::now() > deadline => {
                panic!("{what}: not true within {timeout:?}; last: {e}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
