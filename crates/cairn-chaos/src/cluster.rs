//! Cluster control: real `cairn server` processes on 127.0.0.1.
//!
//! [`Cluster::new`] picks free ports and a temporary directory holding every node's
//! data dir and log files; nothing runs until [`Cluster::start_all`] (or
//! [`Cluster::start_node`]). Nodes are numbered from 1, like their Raft ids, and every
//! method taking a node takes that id.
//!
//! Each node has three addresses: its HTTP API, the peer address it *advertises* (the
//! one `--initial-cluster` lists, which peers dial and from which the cluster id is
//! derived) and the address its peer transport *listens* on. Without a proxy the last
//! two are one. With [`ClusterOptions::proxied`], the advertised addresses are
//! listening sockets held for [`crate::network::Network`] (taken with
//! [`Cluster::take_proxy_listeners`]) and each node listens on a port of its own
//! (`--peer-listen`), so every peer frame passes the proxy.
//!
//! Faults a process can suffer: SIGKILL ([`Cluster::kill`]), SIGSTOP and SIGCONT
//! ([`Cluster::pause`], [`Cluster::resume`]), SIGTERM ([`Cluster::terminate`]), and
//! a crash-restart of everything ([`Cluster::restart_all`]).
//!
//! Processes never outlive the cluster: `Drop` SIGKILLs (after SIGCONT, in case they
//! were stopped) and reaps every child, also while a panic unwinds, and on Linux each
//! child also gets `PR_SET_PDEATHSIG`, so the kernel kills it should this process die
//! without unwinding. Waiting on processes is polling by necessity: a child's
//! readiness is only visible through HTTP.

use std::fs::{File, OpenOptions};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use cairn_client::{api, Client};
use cairn_store::NodeId;

use crate::error::{ChaosError, Result};

/// How a cluster is made.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// The `cairn` binary to run.
    pub binary: PathBuf,
    pub nodes: usize,
    /// Nodes made ready (ports, directories, a proxy listener) but left out of
    /// `--initial-cluster`: each joins the running cluster with `--join` when
    /// [`Cluster::join`] starts it. They are numbered after the founding nodes.
    pub spares: usize,
    pub shards: u32,
    /// Appended to every node's `cairn server` command line.
    pub extra_args: Vec<String>,
    /// Route every peer connection through a proxy (see the module doc).
    pub proxied: bool,
    /// Prefix of the temporary directory's name.
    pub dir_prefix: String,
    /// TLS on: a CA and a certificate per node are made in the cluster's directory
    /// (`cairn certs`), nodes serve HTTPS and speak mutual TLS to each other, and the
    /// cluster's clients trust only that CA.
    pub tls: bool,
}

impl ClusterOptions {
    /// Three nodes, eight shards, no proxy.
    pub fn new(binary: impl Into<PathBuf>) -> ClusterOptions {
        ClusterOptions {
            binary: binary.into(),
            nodes: 3,
            spares: 0,
            shards: 8,
            extra_args: Vec::new(),
            proxied: false,
            dir_prefix: "cairn-test-".into(),
            tls: false,
        }
    }
}

/// Who leads what, as one node reported it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Leaders {
    /// Data shard -> its leader, if known.
    pub shards: Vec<(u32, Option<NodeId>)>,
    /// The meta group's leader, if known.
    pub meta: Option<NodeId>,
}

struct Node {
    id: NodeId,
    http: SocketAddr,
    /// Advertised in `--initial-cluster`.
    peer: SocketAddr,
    /// Where the node's peer transport listens (= `peer` without a proxy).
    peer_listen: SocketAddr,
    data_dir: PathBuf,
    /// Named in `--initial-cluster` (a founder), or a spare that has joined; spares
    /// that have not are not members and are left out of [`Cluster::ids`].
    member: bool,
    /// Started with `--join` rather than `--initial-cluster`.
    joins: bool,
    child: Option<Child>,
    paused: bool,
    client: Client,
    /// For the harness's own questions: a short deadline, so a stopped node costs
    /// seconds, not the client's default.
    control: Client,
}

/// Running (or runnable) nodes; see the module doc.
pub struct Cluster {
    opts: ClusterOptions,
    nodes: Vec<Node>,
    initial_cluster: String,
    proxy_listeners: Vec<(NodeId, TcpListener)>,
    /// The CA's certificate (PEM) when TLS is on.
    ca: Option<Vec<u8>>,
    // Dropped after the children are killed (Drop runs before fields drop).
    dir: tempfile::TempDir,
}

/// How long the harness waits for its own status questions.
const CONTROL_TIMEOUT: Duration = Duration::from_secs(2);

impl Cluster {
    /// Chooses ports and directories; starts nothing.
    pub fn new(opts: ClusterOptions) -> Result<Cluster> {
        if opts.nodes == 0 {
            return Err(ChaosError::Misuse(
                "a cluster needs at least one node".into(),
            ));
        }
        let dir = tempfile::Builder::new()
            .prefix(&opts.dir_prefix)
            .tempdir()
            .map_err(|e| ChaosError::io("create a temporary directory", e))?;
        let ca = if opts.tls {
            Some(make_certificates(
                &opts.binary,
                &dir.path().join("certs"),
                opts.nodes + opts.spares,
            )?)
        } else {
            None
        };
        let scheme = if opts.tls { "https" } else { "http" };
        // Every listener is held until all ports are chosen, so no two coincide.
        let mut held = Vec::new();
        let mut nodes = Vec::new();
        let mut proxy_listeners = Vec::new();
        for index in 0..opts.nodes + opts.spares {
            let id = index as NodeId + 1;
            let founder = index < opts.nodes;
            let http = free_listener()?;
            let peer = free_listener()?;
            let peer_addr = local_addr(&peer)?;
            let peer_listen = if opts.proxied {
                let listen = free_listener()?;
                let addr = local_addr(&listen)?;
                held.push(listen);
                proxy_listeners.push((id, peer));
                addr
            } else {
                held.push(peer);
                peer_addr
            };
            let http_addr = local_addr(&http)?;
            held.push(http);
            let base = format!("{scheme}://{http_addr}");
            nodes.push(Node {
                id,
                http: http_addr,
                peer: peer_addr,
                peer_listen,
                data_dir: dir.path().join(format!("node{id}")),
                member: founder,
                joins: !founder,
                child: None,
                paused: false,
                client: Client::with_options(base.clone(), None, ca.as_deref())
                    .map_err(|e| ChaosError::Misuse(format!("the test CA: {e}")))?,
                control: Client::with_http(
                    base,
                    http_client_trusting(CONTROL_TIMEOUT, ca.as_deref())?,
                ),
            });
        }
        drop(held);
        let initial_cluster = nodes
            .iter()
            .filter(|n| !n.joins)
            .map(|n| format!("{}={}", n.id, n.peer))
            .collect::<Vec<_>>()
            .join(",");
        Ok(Cluster {
            opts,
            nodes,
            initial_cluster,
            proxy_listeners,
            ca,
            dir,
        })
    }

    /// The listening sockets of the advertised peer addresses, with the node each
    /// belongs to (empty without [`ClusterOptions::proxied`], and after the first call).
    pub fn take_proxy_listeners(&mut self) -> Vec<(NodeId, TcpListener)> {
        std::mem::take(&mut self.proxy_listeners)
    }

    pub fn options(&self) -> &ClusterOptions {
        &self.opts
    }

    /// The members' node ids: the founders 1..=n, then the spares that joined.
    pub fn ids(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.member)
            .map(|n| n.id)
            .collect()
    }

    /// Spares that have not joined yet, in the order they will.
    pub fn spares(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| !n.member)
            .map(|n| n.id)
            .collect()
    }

    /// Start spare `id` with `--join` naming the founders' HTTP addresses; from now on
    /// it is a member. Does not wait for the join to be answered.
    pub fn join(&mut self, id: NodeId) -> Result<()> {
        let node = self.node_mut(id)?;
        if node.member {
            return Err(ChaosError::Misuse(format!("node {id} is a member already")));
        }
        node.member = true;
        self.start_node(id)
    }

    pub fn shards(&self) -> u32 {
        self.opts.shards
    }

    fn node(&self, id: NodeId) -> Result<&Node> {
        self.nodes
            .iter()
            .find(|n| n.id == id)
            .ok_or_else(|| ChaosError::Misuse(format!("no node {id}")))
    }

    fn node_mut(&mut self, id: NodeId) -> Result<&mut Node> {
        self.nodes
            .iter_mut()
            .find(|n| n.id == id)
            .ok_or_else(|| ChaosError::Misuse(format!("no node {id}")))
    }

    /// A client talking to node `id` (the client's own 10 s deadline).
    pub fn client(&self, id: NodeId) -> Result<Client> {
        Ok(self.node(id)?.client.clone())
    }

    /// `https` when TLS is on, else `http`.
    pub fn scheme(&self) -> &'static str {
        if self.opts.tls {
            "https"
        } else {
            "http"
        }
    }

    /// The CA's certificate (PEM), when TLS is on.
    pub fn ca_pem(&self) -> Option<&[u8]> {
        self.ca.as_deref()
    }

    /// A client for node `id` with a short deadline, for status questions.
    pub fn control_client(&self, id: NodeId) -> Result<Client> {
        Ok(self.node(id)?.control.clone())
    }

    pub fn http_addr(&self, id: NodeId) -> Result<SocketAddr> {
        Ok(self.node(id)?.http)
    }

    /// The peer address node `id` advertises (and peers dial).
    pub fn peer_addr(&self, id: NodeId) -> Result<SocketAddr> {
        Ok(self.node(id)?.peer)
    }

    /// The address node `id`'s peer transport listens on.
    pub fn peer_listen_addr(&self, id: NodeId) -> Result<SocketAddr> {
        Ok(self.node(id)?.peer_listen)
    }

    pub fn data_dir(&self, id: NodeId) -> Result<PathBuf> {
        Ok(self.node(id)?.data_dir.clone())
    }

    /// The temporary directory holding data dirs and logs.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    /// Whether node `id`'s process is running (stopped by SIGSTOP counts as running).
    pub fn is_running(&self, id: NodeId) -> bool {
        self.node(id).is_ok_and(|n| n.child.is_some())
    }

    pub fn is_paused(&self, id: NodeId) -> bool {
        self.node(id).is_ok_and(|n| n.paused)
    }

    /// Nodes whose process runs (paused ones included).
    pub fn running(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some())
            .map(|n| n.id)
            .collect()
    }

    /// Nodes that run and are not paused: those that can answer.
    pub fn responsive(&self) -> Vec<NodeId> {
        self.nodes
            .iter()
            .filter(|n| n.child.is_some() && !n.paused)
            .map(|n| n.id)
            .collect()
    }

    /// Where backups taken without a destination go (`--backup-dir`): inside the
    /// cluster's directory, never in the working tree.
    pub fn backup_dir(&self) -> std::path::PathBuf {
        self.dir().join("backups")
    }

    /// The `cairn server ...` arguments node `id` runs with.
    pub fn node_args(&self, id: NodeId) -> Result<Vec<String>> {
        let node = self.node(id)?;
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
            // The replicas' digests (`/v1/debug/digest`) are how a run compares them.
            "--enable-debug".into(),
        ];
        if self.opts.tls {
            let certs = self.dir().join("certs");
            let file = |name: String| certs.join(name).display().to_string();
            args.extend([
                "--tls-ca".into(),
                file("ca.crt".into()),
                "--tls-cert".into(),
                file(format!("node-{id}.crt")),
                "--tls-key".into(),
                file(format!("node-{id}.key")),
            ]);
        }
        if node.peer_listen != node.peer {
            args.push("--peer-listen".into());
            args.push(node.peer_listen.to_string());
        }
        if node.joins {
            // Any member's HTTP address admits it; the founders' never change.
            let founders: Vec<String> = self
                .nodes
                .iter()
                .filter(|n| !n.joins)
                .map(|n| format!("{}://{}", self.scheme(), n.http))
                .collect();
            args.extend(["--join".into(), founders.join(",")]);
        } else {
            args.extend(["--initial-cluster".into(), self.initial_cluster.clone()]);
        }
        args.extend([
            "--shards".into(),
            self.opts.shards.to_string(),
            // The default destination is relative to the working directory; keep
            // backups taken without one inside the cluster's own directory.
            "--backup-dir".into(),
            self.backup_dir().display().to_string(),
        ]);
        args.extend(self.opts.extra_args.iter().cloned());
        Ok(args)
    }

    /// A command running `binary` with `args`, its environment cleaned of `CAIRN_*`
    /// variables so that the caller alone decides the configuration, `RUST_LOG=info`
    /// unless set, and (on Linux) killed by the kernel if this process dies.
    pub fn command(binary: &Path, args: &[String]) -> Command {
        let mut command = Command::new(binary);
        command.args(args);
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("CAIRN_") {
                command.env_remove(name);
            }
        }
        if std::env::var_os("RUST_LOG").is_none() {
            command.env("RUST_LOG", "info");
        }
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

    pub fn stdout_path(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node{id}.stdout.log"))
    }

    pub fn stderr_path(&self, id: NodeId) -> PathBuf {
        self.dir.path().join(format!("node{id}.stderr.log"))
    }

    /// Spawns node `id` with its arguments, data dir and ports (logs are appended to).
    /// Does not wait for it to become ready.
    pub fn start_node(&mut self, id: NodeId) -> Result<()> {
        self.start_node_with_env(id, &[])
    }

    /// Like [`Cluster::start_node`], with extra environment variables (for example
    /// `FAILPOINTS`, which arms crash points in test builds).
    pub fn start_node_with_env(&mut self, id: NodeId, env: &[(&str, &str)]) -> Result<()> {
        if self.is_running(id) {
            return Err(ChaosError::Misuse(format!("node {id} is already running")));
        }
        let args = self.node_args(id)?;
        let stdout = append(&self.stdout_path(id))?;
        let stderr = append(&self.stderr_path(id))?;
        let binary = self.opts.binary.clone();
        let child = Cluster::command(&binary, &args)
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(stderr)
            .spawn()
            .map_err(|source| ChaosError::Spawn { binary, source })?;
        let node = self.node_mut(id)?;
        node.child = Some(child);
        node.paused = false;
        Ok(())
    }

    /// Spawns every node that is not running.
    pub fn start_all(&mut self) -> Result<()> {
        for id in self.ids() {
            if !self.is_running(id) {
                self.start_node(id)?;
            }
        }
        Ok(())
    }

    /// SIGKILLs node `id` and reaps it.
    pub fn kill(&mut self, id: NodeId) -> Result<()> {
        let node = self.node_mut(id)?;
        let mut child = node
            .child
            .take()
            .ok_or_else(|| ChaosError::Misuse(format!("node {id} is not running")))?;
        node.paused = false;
        signal(&child, libc::SIGKILL)?;
        // SIGKILL cannot be ignored (not even while stopped); the wait is immediate.
        child
            .wait()
            .map_err(|e| ChaosError::io(format!("wait for killed node {id}"), e))?;
        Ok(())
    }

    /// Waits up to `timeout` for node `id` to exit by itself (a crash point, say);
    /// returns (and reaps) its exit status, or `None` if it is still running.
    pub async fn wait_exit(&mut self, id: NodeId, timeout: Duration) -> Result<Option<ExitStatus>> {
        let deadline = Instant::now() + timeout;
        loop {
            let node = self.node_mut(id)?;
            let Some(child) = node.child.as_mut() else {
                return Ok(None);
            };
            if let Some(status) = child
                .try_wait()
                .map_err(|e| ChaosError::io(format!("wait for node {id}"), e))?
            {
                node.child = None;
                node.paused = false;
                return Ok(Some(status));
            }
            if Instant::now() > deadline {
                return Ok(None);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILLs every running node.
    pub fn kill_all(&mut self) -> Result<()> {
        for id in self.running() {
            self.kill(id)?;
        }
        Ok(())
    }

    /// SIGSTOPs node `id`: it keeps its sockets and memory but runs nothing, so its
    /// peers see it vanish without a connection closing.
    pub fn pause(&mut self, id: NodeId) -> Result<()> {
        let node = self.node_mut(id)?;
        let child = node
            .child
            .as_ref()
            .ok_or_else(|| ChaosError::Misuse(format!("node {id} is not running")))?;
        if node.paused {
            return Err(ChaosError::Misuse(format!("node {id} is already paused")));
        }
        signal(child, libc::SIGSTOP)?;
        node.paused = true;
        Ok(())
    }

    /// SIGHUPs node `id`: it reloads its TLS certificates.
    pub fn hangup(&self, id: NodeId) -> Result<()> {
        let node = self.node(id)?;
        let child = node
            .child
            .as_ref()
            .ok_or_else(|| ChaosError::Misuse(format!("node {id} is not running")))?;
        signal(child, libc::SIGHUP)
    }

    /// SIGCONTs a paused node.
    pub fn resume(&mut self, id: NodeId) -> Result<()> {
        let node = self.node_mut(id)?;
        let child = node
            .child
            .as_ref()
            .ok_or_else(|| ChaosError::Misuse(format!("node {id} is not running")))?;
        signal(child, libc::SIGCONT)?;
        node.paused = false;
        Ok(())
    }

    /// SIGTERMs node `id` and waits for it to exit; after `timeout` it is SIGKILLed
    /// and the wait is an error.
    pub async fn terminate(&mut self, id: NodeId, timeout: Duration) -> Result<ExitStatus> {
        let node = self.node_mut(id)?;
        let mut child = node
            .child
            .take()
            .ok_or_else(|| ChaosError::Misuse(format!("node {id} is not running")))?;
        if node.paused {
            signal(&child, libc::SIGCONT)?;
            node.paused = false;
        }
        signal(&child, libc::SIGTERM)?;
        let deadline = Instant::now() + timeout;
        loop {
            match child
                .try_wait()
                .map_err(|e| ChaosError::io(format!("wait for node {id}"), e))?
            {
                Some(status) => return Ok(status),
                None if Instant::now() > deadline => {
                    signal(&child, libc::SIGKILL)?;
                    let _ = child.wait();
                    return Err(ChaosError::Timeout {
                        what: format!("node {id} exiting after SIGTERM"),
                        waited: timeout,
                        last: self.log_tail(id, 20),
                    });
                }
                None => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    /// Crash-restarts the whole cluster: SIGKILLs every running node, starts them all
    /// and waits until they are ready.
    pub async fn restart_all(&mut self, timeout: Duration) -> Result<()> {
        self.kill_all()?;
        self.start_all()?;
        self.wait_ready(timeout).await
    }

    /// Waits until every responsive node answers `/ready` with true. An error after
    /// `timeout`, or as soon as a node's process exits on its own.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let mut last = String::new();
        loop {
            self.check_alive()?;
            let mut all = true;
            for id in self.responsive() {
                match self.control_client(id)?.ready().await {
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
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(ChaosError::Timeout {
                    what: "every node ready".into(),
                    waited: timeout,
                    last,
                });
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// An error (with the log tail) if a node the harness started has exited on its
    /// own. The node is then marked not running.
    pub fn check_alive(&mut self) -> Result<()> {
        for index in 0..self.nodes.len() {
            let id = self.nodes[index].id;
            let exited = match self.nodes[index].child.as_mut() {
                Some(child) => child
                    .try_wait()
                    .map_err(|e| ChaosError::io(format!("check node {id}"), e))?,
                None => None,
            };
            if let Some(status) = exited {
                self.nodes[index].child = None;
                self.nodes[index].paused = false;
                return Err(ChaosError::NodeExited {
                    node: id,
                    status: status.to_string(),
                    log: self.log_tail(id, 40),
                });
            }
        }
        Ok(())
    }

    /// Node `id`'s view of the cluster.
    pub async fn status(&self, id: NodeId) -> Result<api::ClusterStatus> {
        self.control_client(id)?
            .cluster()
            .await
            .map_err(|e| ChaosError::Api {
                node: id,
                what: format!("GET /v1/cluster: {e}"),
            })
    }

    /// Who leads each group, from the first responsive node that answers.
    pub async fn leaders(&self) -> Result<Leaders> {
        // Each node knows the leaders of the groups it holds replicas of; with fewer
        // replicas than nodes, no one node knows them all.
        let mut last = String::from("no responsive node");
        let mut merged: Option<Leaders> = None;
        for id in self.responsive() {
            match self.status(id).await {
                Ok(status) => {
                    let seen = merged.get_or_insert_with(|| Leaders {
                        shards: Vec::new(),
                        meta: None,
                    });
                    for s in &status.shards {
                        match seen.shards.iter_mut().find(|(id, _)| *id == s.id) {
                            Some((_, leader)) => *leader = leader.or(s.leader),
                            None => seen.shards.push((s.id, s.leader)),
                        }
                    }
                    seen.shards.sort_unstable_by_key(|(id, _)| *id);
                    seen.meta = seen.meta.or(status.meta.as_ref().and_then(|m| m.leader));
                }
                Err(e) => last = e.to_string(),
            }
        }
        merged.ok_or_else(|| ChaosError::Timeout {
            what: "an answer to GET /v1/cluster".into(),
            waited: CONTROL_TIMEOUT,
            last,
        })
    }

    /// Every responsive node's view, one line per node and group, for a report on a
    /// cluster that stopped making progress: its links, and per group the voters,
    /// learners and leader it knows, and (where it holds a replica) term, commit and
    /// applied index.
    pub async fn describe(&self) -> String {
        let mut out = String::new();
        for id in self.responsive() {
            // `/v1/cluster` asks leaders of groups the node holds none of: more than
            // the control client's short deadline on a struggling cluster.
            let asked = self.client(id).map(|c| async move { c.cluster().await });
            let status = match asked {
                Ok(call) => call.await.map_err(|e| ChaosError::Api {
                    node: id,
                    what: format!("GET /v1/cluster: {e}"),
                }),
                Err(e) => Err(e),
            };
            let status = match status {
                Ok(status) => status,
                Err(e) => {
                    out.push_str(&format!("node {id}: {e}\n"));
                    continue;
                }
            };
            let links: Vec<String> = status
                .links
                .iter()
                .map(|l| format!("{}:{}", l.peer, l.state))
                .collect();
            let states: Vec<String> = status
                .nodes
                .iter()
                .map(|n| format!("{}:{}", n.id, n.state))
                .collect();
            out.push_str(&format!(
                "node {id}: links [{}], nodes [{}]\n",
                links.join(" "),
                states.join(" ")
            ));
            for p in &status.placement {
                let local = status
                    .shards
                    .iter()
                    .chain(status.meta.as_ref())
                    .find(|s| s.id == p.id)
                    .map(|s| {
                        format!(
                            "; here: leader {:?} term {} commit {} applied {}",
                            s.leader, s.term, s.commit, s.applied
                        )
                    })
                    .unwrap_or_default();
                out.push_str(&format!(
                    "  group {}: voters {:?} learners {:?} leader {:?}{local}\n",
                    p.id, p.replicas, p.learners, p.leader
                ));
            }
        }
        out
    }

    /// The last `lines` lines of node `id`'s stderr log.
    pub fn log_tail(&self, id: NodeId, lines: usize) -> String {
        let text = std::fs::read(self.stderr_path(id))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Every node's log tail, each under a header.
    pub fn all_log_tails(&self, lines: usize) -> String {
        self.ids()
            .into_iter()
            .map(|id| {
                format!(
                    "----- node {id} stderr (last {lines} lines, {}) -----\n{}\n----- end node {id} -----",
                    self.stderr_path(id).display(),
                    self.log_tail(id, lines)
                )
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Keeps the temporary directory (data dirs and logs) after the cluster is
    /// dropped, for a post-mortem; returns its path.
    pub fn keep_dir(&mut self) -> PathBuf {
        let path = self.dir.path().to_path_buf();
        // A fresh empty TempDir takes the old one's place; the old one is released.
        if let Ok(replacement) = tempfile::Builder::new().prefix("cairn-empty-").tempdir() {
            let old = std::mem::replace(&mut self.dir, replacement);
            let _ = old.keep();
        }
        path
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = signal(&child, libc::SIGCONT);
                let _ = signal(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }
}

/// A reqwest client with a deadline that trusts only the CA `ca` (PEM), if given.
pub fn http_client_trusting(timeout: Duration, ca: Option<&[u8]>) -> Result<reqwest::Client> {
    cairn_client::http_client(timeout, None, ca)
        .map_err(|e| ChaosError::Misuse(format!("an HTTP client for the test cluster: {e}")))
}

/// Make a CA and certificates for nodes 1 to `nodes` in `dir` with `binary`'s
/// `certs` commands; the CA's certificate (PEM).
fn make_certificates(
    binary: &std::path::Path,
    dir: &std::path::Path,
    nodes: usize,
) -> Result<Vec<u8>> {
    let run = |args: Vec<String>| -> Result<()> {
        let output = std::process::Command::new(binary)
            .args(&args)
            .output()
            .map_err(|e| {
                ChaosError::io(format!("run {} {}", binary.display(), args.join(" ")), e)
            })?;
        if !output.status.success() {
            return Err(ChaosError::Misuse(format!(
                "`cairn {}` failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            )));
        }
        Ok(())
    };
    let dir_arg = dir.display().to_string();
    run(vec![
        "certs".into(),
        "create-ca".into(),
        "--dir".into(),
        dir_arg.clone(),
    ])?;
    for id in 1..=nodes {
        run(vec![
            "certs".into(),
            "create-node".into(),
            id.to_string(),
            "--dir".into(),
            dir_arg.clone(),
        ])?;
    }
    std::fs::read(dir.join("ca.crt")).map_err(|e| ChaosError::io("read the test CA", e))
}

/// A reqwest client with a deadline, for plain HTTP on loopback.
pub fn http_client(timeout: Duration) -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(timeout)
        .build()
        // Only a TLS backend can make this fail, and this build has none.
        .unwrap_or_default()
}

fn signal(child: &Child, signal: libc::c_int) -> Result<()> {
    let pid = libc::pid_t::try_from(child.id())
        .map_err(|_| ChaosError::Misuse(format!("pid {} does not fit pid_t", child.id())))?;
    // SAFETY: `kill` has no memory-safety preconditions; the pid is our own child,
    // not yet reaped, so it cannot have been reused.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc != 0 {
        return Err(ChaosError::io(
            format!("kill({pid}, {signal})"),
            std::io::Error::last_os_error(),
        ));
    }
    Ok(())
}

fn free_listener() -> Result<TcpListener> {
    TcpListener::bind("127.0.0.1:0").map_err(|e| ChaosError::io("bind 127.0.0.1:0", e))
}

fn local_addr(listener: &TcpListener) -> Result<SocketAddr> {
    listener
        .local_addr()
        .map_err(|e| ChaosError::io("local address of a listener", e))
}

fn append(path: &Path) -> Result<File> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| ChaosError::io(format!("open {}", path.display()), e))
}
