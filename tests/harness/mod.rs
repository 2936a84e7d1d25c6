//! A small library for tests that run real `cairn server` processes on loopback.
//!
//! [`Cluster::start`] picks free ports, makes a temporary directory holding every
//! node's data dir and log files, spawns one process per node and waits until every
//! node reports `/ready`. Nodes are numbered from 1, like their Raft node ids, and
//! every method taking a node takes that id.
//!
//! Processes never outlive the test: [`Cluster`]'s `Drop` SIGKILLs every child still
//! running, also when the test panics, and then prints the tail of each node's log.
//! At most one cluster runs at a time per test binary (a process-wide lock held by
//! each `Cluster`), so test functions can run in parallel without oversubscribing the
//! machine or racing for ports.
//!
//! Waiting on processes is polling by necessity: a child process has no async
//! notification here, and a node's readiness is only visible through HTTP.

#![allow(dead_code)] // each test binary uses a different part of the harness

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

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
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            shards: 8,
            extra_args: Vec::new(),
        }
    }
}

struct Node {
    id: usize,
    http: SocketAddr,
    peer: SocketAddr,
    data_dir: PathBuf,
    child: Option<Child>,
    client: Client,
}

pub struct Cluster {
    opts: ClusterOptions,
    nodes: Vec<Node>,
    initial_cluster: String,
    // Field order matters: `Drop::drop` kills the children first, then the temporary
    // directory goes, then the lock is released for the next cluster.
    dir: tempfile::TempDir,
    _turn: tokio::sync::MutexGuard<'static, ()>,
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
        let dir = tempfile::Builder::new()
            .prefix("cairn-test-")
            .tempdir()
            .expect("create temp dir");
        // Hold every listener until all ports are chosen so no two coincide.
        let listeners: Vec<(TcpListener, TcpListener)> = (0..opts.nodes)
            .map(|_| (free_listener(), free_listener()))
            .collect();
        let nodes: Vec<Node> = listeners
            .iter()
            .enumerate()
            .map(|(index, (http, peer))| {
                let id = index + 1;
                let http = http.local_addr().expect("local addr");
                Node {
                    id,
                    http,
                    peer: peer.local_addr().expect("local addr"),
                    data_dir: dir.path().join(format!("node{id}")),
                    child: None,
                    client: Client::new(format!("http://{http}")),
                }
            })
            .collect();
        drop(listeners);
        let initial_cluster = nodes
            .iter()
            .map(|n| format!("{}={}", n.id, n.peer))
            .collect::<Vec<_>>()
            .join(",");
        let mut cluster = Cluster {
            opts,
            nodes,
            initial_cluster,
            dir,
            _turn: turn,
        };
        prepare(&cluster);
        for id in cluster.ids() {
            cluster.start_node(id);
        }
        cluster.wait_ready().await;
        cluster
    }

    /// Node ids, 1..=n.
    pub fn ids(&self) -> Vec<usize> {
        self.nodes.iter().map(|n| n.id).collect()
    }

    pub fn shards(&self) -> u32 {
        self.opts.shards
    }

    fn node(&self, id: usize) -> &Node {
        assert!(
            id >= 1 && id <= self.nodes.len(),
            "no node {id} (nodes are numbered 1..={})",
            self.nodes.len()
        );
        &self.nodes[id - 1]
    }

    fn node_mut(&mut self, id: usize) -> &mut Node {
        assert!(id >= 1 && id <= self.nodes.len(), "no node {id}");
        &mut self.nodes[id - 1]
    }

    /// A client talking to node `id`.
    pub fn client(&self, id: usize) -> Client {
        self.node(id).client.clone()
    }

    pub fn http_addr(&self, id: usize) -> SocketAddr {
        self.node(id).http
    }

    pub fn peer_addr(&self, id: usize) -> SocketAddr {
        self.node(id).peer
    }

    pub fn data_dir(&self, id: usize) -> PathBuf {
        self.node(id).data_dir.clone()
    }

    /// The temporary directory holding data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    pub fn is_running(&self, id: usize) -> bool {
        self.node(id).child.is_some()
    }

    /// Ids of the nodes whose process this harness believes is running.
    pub fn running(&self) -> Vec<usize> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// The `cairn server ...` arguments node `id` runs with.
    pub fn node_args(&self, id: usize) -> Vec<String> {
        let node = self.node(id);
        let mut args: Vec<String> = vec![
            "server".into(),
            "--id".into(),
            id.to_string(),
            "--data-dir".into(),
            node.data_dir.display().to_string(),
            "--http".into(),
            node.http.to_string(),
            "--peer".into(),
            node.peer.to_string(),
            "--initial-cluster".into(),
            self.initial_cluster.clone(),
            "--shards".into(),
            self.opts.shards.to_string(),
        ];
        args.extend(self.opts.extra_args.iter().cloned());
        args
    }

    /// A command running the `cairn` binary with `args`, with its environment cleaned
    /// of `CAIRN_*` variables so the test alone decides the configuration.
    pub fn command(args: &[String]) -> Command {
        let mut command = Command::new(cairn_bin());
        command.args(args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CAIRN_") {
                command.env_remove(name);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
        // Belt and braces for `Drop`: should the test process itself be killed, the
        // kernel SIGKILLs its nodes too.
        #[cfg(target_os = "linux")]
        {
            use std::os::unix::process::CommandExt as _;
            // SAFETY: `prctl` is async-signal-safe and touches no memory of ours.
            unsafe {
                command.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        command
    }

    pub fn stdout_path(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("node{id}.stdout.log"))
    }

    pub fn stderr_path(&self, id: usize) -> PathBuf {
        self.dir.path().join(format!("node{id}.stderr.log"))
    }

    /// Spawns node `id` with its usual arguments, data dir and ports (logs are
    /// appended to). Does not wait for it to become ready.
    pub fn start_node(&mut self, id: usize) {
        self.start_node_with_env(id, &[]);
    }

    /// Like [`Cluster::start_node`], with extra environment variables (for example
    /// `FAILPOINTS`, which arms crash points in test builds).
    pub fn start_node_with_env(&mut self, id: usize, env: &[(&str, &str)]) {
        assert!(!self.is_running(id), "node {id} is already running");
        let args = self.node_args(id);
        let stdout = append(&self.stdout_path(id));
        let stderr = append(&self.stderr_path(id));
        let child = Cluster::command(&args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {} {args:?}: {e}", cairn_bin()));
        self.node_mut(id).child = Some(child);
    }

    /// SIGKILLs node `id` and reaps it.
    pub async fn kill(&mut self, id: usize) {
        let mut child = self
            .node_mut(id)
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        signal(&child, libc::SIGKILL);
        // SIGKILL cannot be ignored; the wait is immediate.
        child.wait().expect("wait for killed node");
    }

    /// Waits up to `timeout` for node `id` to exit by itself; returns (and reaps) its
    /// exit status, or `None` if it is still running.
    pub async fn wait_exit(&mut self, id: usize, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.node_mut(id).child.as_mut()?;
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.node_mut(id).child = None;
                return Some(status);
            }
            if Instant::now() > deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs every running node.
    pub async fn kill_all(&mut self) {
        for id in self.running() {
            self.kill(id).await;
        }
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
        let mut child = self
            .node_mut(id)
            .child
            .take()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        signal(&child, libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            match child.try_wait().expect("try_wait") {
                Some(status) => return status,
                None if Instant::now() > deadline => {
                    signal(&child, libc::SIGKILL);
                    let _ = child.wait();
                    self.print_log_tail(id, 60);
                    panic!("node {id} did not exit within 20 s of SIGTERM");
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
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
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut last = String::new();
        loop {
            self.assert_alive();
            let mut all = true;
            for id in self.running() {
                match self.client(id).ready().await {
                    Ok(true) => {}
                    Ok(false) => {
                        all = false;
                        last = format!("node {id}: not ready");
                    }
                    Err(e) => {
                        all = false;
                        last = format!("node {id}: {e}");
                    }
                }
            }
            if all {
                return;
            }
            if Instant::now() > deadline {
                self.print_all_logs(80);
                panic!("cluster not ready within {READY_TIMEOUT:?}; last: {last}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Panics (with the log) if a node the harness started has exited on its own.
    pub fn assert_alive(&mut self) {
        for index in 0..self.nodes.len() {
            let id = index + 1;
            let exited = match self.nodes[index].child.as_mut() {
                Some(child) => child.try_wait().expect("try_wait"),
                None => None,
            };
            if let Some(status) = exited {
                self.nodes[index].child = None;
                self.print_log_tail(id, 80);
                panic!("node {id} exited unexpectedly with {status}");
            }
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
        let text = std::fs::read(self.stderr_path(id))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
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
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
        if std::thread::panicking() {
            self.print_all_logs(40);
        }
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("pid fits pid_t");
    // SAFETY: `kill` has no memory-safety preconditions; the pid is our own child,
    // not yet reaped, so it cannot have been reused.
    let rc = unsafe { libc::kill(pid, signal) };
    assert_eq!(rc, 0, "kill({pid}, {signal}) failed");
}

fn free_listener() -> TcpListener {
    TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0")
}

fn append(path: &Path) -> File {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
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
