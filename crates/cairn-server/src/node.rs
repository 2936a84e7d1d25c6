//! One Cairn node: its store, its replicas and its HTTP API, started and stopped as a
//! unit.
//!
//! Shutdown order matters: the HTTP server stops accepting and lets in-flight requests
//! finish (their replicas are still running), then the background tasks stop, then
//! the replicas (failing anything still queued with `shutting_down`), then the store is
//! flushed. The first two waits are bounded: what outlives them is dropped, with a
//! warning that names it, so a node always stops.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use cairn_backup::Backups;
use cairn_raft::MultiRaft;
use cairn_snapshot::Coordinator;
use cairn_store::NodeStore;
use cairn_txn::{Transactions, TxnConfig};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::api::{self, ApiState};
use crate::auth::Auth;
use crate::config::Config;
use crate::error::ServerError;
use crate::identity;
use crate::revert::Reverts;
use crate::router::{Control, Router};
use cairn_raft::transport::tls::{PeerTls, TlsMaterial};

/// A running node's TLS configurations, replaced in place by a reload.
#[derive(Clone)]
pub struct Reloadable {
    peer: PeerTls,
    https: crate::https::HttpsConfig,
}

impl Reloadable {
    fn new(material: &TlsMaterial) -> Result<Reloadable, ServerError> {
        let bad = |e: cairn_raft::transport::tls::TlsError| ServerError::Config(e.to_string());
        Ok(Reloadable {
            peer: PeerTls::new(material).map_err(bad)?,
            https: Arc::new(std::sync::RwLock::new(
                material.server_config(false).map_err(bad)?,
            )),
        })
    }

    /// Use `material` for every connection from now on (both ports); on error,
    /// nothing changed.
    fn reload(&self, material: &TlsMaterial) -> Result<(), ServerError> {
        let bad = |e: cairn_raft::transport::tls::TlsError| ServerError::Config(e.to_string());
        let https = material.server_config(false).map_err(bad)?;
        self.peer.reload(material).map_err(bad)?;
        *self.https.write().unwrap_or_else(|p| p.into_inner()) = https;
        Ok(())
    }
}

/// The node's TLS material, loaded and checked against its id.
fn load_tls(config: &Config) -> Result<Option<TlsMaterial>, ServerError> {
    let Some(files) = &config.tls else {
        return Ok(None);
    };
    let material = TlsMaterial::load(&files.ca, &files.cert, &files.key)
        .map_err(|e| ServerError::Config(e.to_string()))?;
    if !material.names_node(config.id) {
        return Err(ServerError::Config(format!(
            "the certificate {} does not name node {} ({}): make one with `cairn certs create-node {}`",
            files.cert.display(),
            config.id,
            cairn_raft::transport::tls::node_name(config.id),
            config.id
        )));
    }
    Ok(Some(material))
}

/// How long shutdown waits for in-flight HTTP requests, and for the background
/// tasks, before it drops what is left and says so.
const STOP_WAIT: Duration = Duration::from_secs(10);

/// A node's parts, wired together: the one composition root. [`Node::start`] serves
/// it over HTTP with its background tasks; the HTTP fuzz oracle drives its
/// [`Parts::app`] in process. Whatever a node is made of is added here, once.
pub struct Parts {
    pub config: Config,
    pub store: NodeStore,
    pub raft: Arc<MultiRaft>,
    pub snapshots: Arc<Coordinator<Control>>,
    pub txns: Arc<Transactions<Control>>,
    pub backups: Arc<Backups<Control>>,
    pub control: Arc<Control>,
    pub api: Arc<ApiState>,
    /// TLS, when on: the HTTPS server's configuration and the peer port's, both
    /// replaceable by [`Node::reload_tls`].
    pub tls: Option<Reloadable>,
}

impl Parts {
    /// Check the data directory belongs to this node and cluster, start the replicas
    /// and wire the routers, coordinators and the HTTP API's state. Starts no
    /// background task and listens on no HTTP port.
    pub async fn assemble(config: Config, store: NodeStore) -> Result<Parts, ServerError> {
        let root_token = config
            .root_token_file
            .as_deref()
            .map(crate::auth::token::read_root)
            .transpose()
            .map_err(|e| ServerError::Config(e.to_string()))?;
        let tls = load_tls(&config)?;
        let config = crate::join::prepare(config, &store).await?;
        let identity = identity::check_or_init(&store, &config)?;
        let mut raft_config = config.raft(identity.cluster_id.clone());
        let tls = tls.as_ref().map(Reloadable::new).transpose()?;
        raft_config.tls = tls.as_ref().map(|t| t.peer.clone());
        let raft = Arc::new(MultiRaft::start(raft_config, store.clone()).await?);
        let path = raft
            .take_control()
            .ok_or_else(|| ServerError::Config("the control path was taken twice".into()))?;
        let router = Arc::new(Router::new(raft.clone(), &config));
        let control = Arc::new(Control::new(router.clone(), path));
        let snapshots = Arc::new(Coordinator::new(control.clone(), config.snapshots()));
        let txns = Arc::new(Transactions::new(
            control.clone(),
            config.id,
            TxnConfig::default(),
        ));
        let backups = Backups::new(
            control.clone(),
            snapshots.clone(),
            store.clone(),
            config.id,
            identity.cluster_id.clone(),
            config.backups()?,
        );
        let reverts = Arc::new(Reverts::new(
            router.clone(),
            control.clone(),
            txns.clone(),
            config.request_timeout(),
            config.id,
        ));
        let api = Arc::new(ApiState {
            router,
            snapshots: snapshots.clone(),
            txns: txns.clone(),
            backups: backups.clone(),
            reverts,
            auth: Arc::new(Auth::new(root_token, control.clone())),
            control: control.clone(),
            cluster_id: identity.cluster_id,
            metrics: prometheus(),
            config: config.clone(),
        });
        Ok(Parts {
            config,
            store,
            raft,
            snapshots,
            txns,
            backups,
            control,
            api,
            tls,
        })
    }

    /// The HTTP API over these parts.
    pub fn app(&self) -> axum::Router {
        api::app(self.api.clone())
    }

    /// Start every background task (sweepers, automatic snapshots, history GC and
    /// collection, backup schedules, leader balancing, dead nodes and stale
    /// replicas, members that joined, rebalancing), each in its own span and task,
    /// until `stop` fires.
    pub fn spawn_background(&self, stop: CancellationToken) -> Background {
        let mut background = Background::new(self.config.id, stop.clone());
        background.spawn(
            "snapshot_sweeper",
            self.snapshots.clone().run_sweeper(stop.clone()),
        );
        background.spawn(
            "auto_snapshots",
            self.snapshots.clone().run_auto(stop.clone()),
        );
        background.spawn("history_gc", self.snapshots.clone().run_gc(stop.clone()));
        background.spawn("txn_sweeper", self.txns.clone().run_sweeper(stop.clone()));
        background.spawn(
            "history_collector",
            collect_history(
                self.raft.clone(),
                self.config.snapshots().gc_every,
                stop.clone(),
            ),
        );
        background.spawn(
            "backup_schedules",
            self.backups.clone().run_schedules(stop.clone()),
        );
        background.spawn(
            "leader_balance",
            crate::leadership::balance(self.control.clone(), stop.clone()),
        );
        background.spawn(
            "departures",
            crate::departures::watch(self.control.clone(), self.config.dead_after, stop.clone()),
        );
        background.spawn(
            "members",
            crate::join::learn(self.control.clone(), self.store.clone(), stop.clone()),
        );
        background.spawn(
            "rebalance",
            crate::rebalance::run(
                self.control.clone(),
                self.config.rebalance_rate,
                stop.clone(),
            ),
        );
        background.spawn("backup_sweeper", self.backups.clone().run_sweeper(stop));
        background
    }
}

/// A node's background tasks, by name, and the token that stops them.
pub struct Background {
    node: u64,
    stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<()>)>,
}

impl Background {
    /// No tasks yet; `stop` is the token they are given.
    pub fn new(node: u64, stop: CancellationToken) -> Background {
        Background {
            node,
            stop,
            tasks: Vec::new(),
        }
    }

    /// Run `task` in its own tokio task and span, named `name`.
    ///
    /// Each task checks the stop token between its steps, but a step can be long (a
    /// call per replica, each waiting out its timeout once the other nodes have
    /// gone: a node of 256 shards took minutes to stop). So once the token fires,
    /// the step is dropped where it waits: every step is one a crash may cut short
    /// too.
    pub fn spawn(&mut self, name: &'static str, task: impl Future<Output = ()> + Send + 'static) {
        let span = tracing::info_span!("background", task = name, node = self.node);
        let stop = self.stop.clone();
        let task = async move {
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = task => {}
            }
        };
        self.tasks.push((name, tokio::spawn(task.instrument(span))));
    }

    /// Fire the stop token and wait for every task to end, for at most `within` in
    /// all; abort those still running then, and return their names (each is also
    /// logged). A task ends at its next await once stopped, so this is for one that
    /// blocks a thread without awaiting: the node must stop either way, and the
    /// operator should learn which task held it.
    pub async fn stop(self, within: Duration) -> Vec<&'static str> {
        self.stop.cancel();
        let deadline = tokio::time::Instant::now() + within;
        let mut aborted = Vec::new();
        for (name, mut task) in self.tasks {
            if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
                tracing::warn!(
                    task = name,
                    ?within,
                    "background task still running at shutdown; aborted"
                );
                task.abort();
                aborted.push(name);
            }
        }
        aborted
    }
}

/// A running node.
pub struct Node {
    id: u64,
    http_addr: SocketAddr,
    raft: Arc<MultiRaft>,
    store: NodeStore,
    stop_http: CancellationToken,
    http: JoinHandle<()>,
    sweeper: Background,
    backups: Arc<Backups<Control>>,
    snapshots: Arc<Coordinator<Control>>,
    config: Config,
    tls: Option<Reloadable>,
}

impl Node {
    /// Read the TLS files again (`--tls-*`) and use them for every connection from
    /// now on: a renewed certificate or a new CA without a restart (SIGHUP). The
    /// files are checked first (they parse, the key fits, the certificate names this
    /// node); if they do not, nothing changes and the error says why.
    pub fn reload_tls(&self) -> Result<bool, ServerError> {
        let (Some(tls), Some(material)) = (&self.tls, load_tls(&self.config)?) else {
            return Ok(false);
        };
        tls.reload(&material)?;
        Ok(true)
    }

    /// Open the data directory, assemble the node's [`Parts`], start their background
    /// tasks and serve the HTTP API.
    pub async fn start(config: Config) -> Result<Node, ServerError> {
        let store = NodeStore::open(&config.data_dir)?;
        let parts = Parts::assemble(config.clone(), store).await?;
        let listener = tokio::net::TcpListener::bind(config.http)
            .await
            .map_err(|source| ServerError::Io {
                what: format!("cannot listen for HTTP on {}", config.http),
                source,
            })?;
        let http_addr = listener.local_addr().map_err(|source| ServerError::Io {
            what: "HTTP listener".into(),
            source,
        })?;
        if let Some(warning) = config.exposure_warning() {
            tracing::warn!(node = config.id, "insecure: {warning}");
        }
        let sweeper = parts.spawn_background(CancellationToken::new());
        let stop_http = CancellationToken::new();
        let stop = stop_http.clone();
        let app = parts.app();
        let span = tracing::info_span!("http", node = config.id, %http_addr);
        let most = config.max_connections;
        let http = match &parts.tls {
            Some(tls) => {
                let listener = crate::https::HttpsListener::new(listener, tls.https.clone())
                    .map_err(|source| ServerError::Io {
                        what: "HTTPS listener".into(),
                        source,
                    })?;
                tokio::spawn(crate::serve::serve(listener, app, most, stop).instrument(span))
            }
            None => tokio::spawn(crate::serve::serve(listener, app, most, stop).instrument(span)),
        };
        tracing::info!(node = config.id, %http_addr, peer = %config.peer, "node started");
        let Parts {
            raft,
            store,
            backups,
            snapshots,
            tls,
            ..
        } = parts;
        Ok(Node {
            id: config.id,
            http_addr,
            raft,
            store,
            stop_http,
            http,
            sweeper,
            backups,
            snapshots,
            config,
            tls,
        })
    }

    pub fn id(&self) -> u64 {
        self.id
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Stop cleanly: HTTP first (in-flight requests finish), then the replicas, then a
    /// final flush.
    pub async fn shutdown(self) {
        self.stop_http.cancel();
        let mut http = self.http;
        if tokio::time::timeout(STOP_WAIT, &mut http).await.is_err() {
            tracing::warn!(
                within = ?STOP_WAIT,
                "HTTP requests still running at shutdown; dropped"
            );
            http.abort();
        }
        // Running backups record themselves failed while the replicas still serve.
        self.backups.shutdown().await;
        drop(self.backups);
        self.sweeper.stop(STOP_WAIT).await;
        // Releases of snapshots already answered end within the marker timeout; let
        // them, so the windows they close do not wait for the meta sweeper.
        self.snapshots.settled().await;
        drop(self.snapshots);
        // The HTTP state (router, coordinator) went with the server; the replicas are
        // ours alone now.
        match Arc::try_unwrap(self.raft) {
            Ok(raft) => raft.shutdown().await,
            Err(_) => tracing::warn!("replicas still referenced at shutdown; dropping them"),
        }
        if let Err(e) = self.store.flush() {
            tracing::error!(error = %e, "final flush failed");
        }
        tracing::info!(node = self.id, "node stopped");
    }
}

/// Delete history below each local group's horizon, off the Raft threads, until
/// `stop` fires.
async fn collect_history(
    raft: Arc<MultiRaft>,
    every: std::time::Duration,
    stop: CancellationToken,
) {
    let mut collected = Vec::new();
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let raft = raft.clone();
        let mut state = std::mem::take(&mut collected);
        let done = tokio::task::spawn_blocking(move || {
            let result = raft.collect_history(&mut state);
            (state, result)
        })
        .await;
        match done {
            Ok((state, result)) => {
                collected = state;
                match result {
                    Ok(0) => {}
                    Ok(removed) => tracing::info!(removed, "collected old versions"),
                    Err(e) => tracing::warn!(error = %e, "history collection failed"),
                }
            }
            Err(e) => tracing::warn!(error = %e, "history collection task failed"),
        }
    }
}

/// The process-wide Prometheus recorder (installed once, shared by every node of a
/// dev cluster).
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            metrics_exporter_prometheus::PrometheusBuilder::new()
                .install_recorder()
                .map_err(|e| tracing::warn!(error = %e, "metrics unavailable"))
                .ok()
        })
        .clone()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_stopped_background_task_ends_even_in_the_middle_of_a_step() {
        let stop = CancellationToken::new();
        let mut background = Background::new(1, stop.clone());
        // A loop that checks its token only between steps, stuck in a step that
        // never ends (a call whose peers are gone).
        let token = stop.clone();
        let (entered, in_step) = tokio::sync::oneshot::channel();
        background.spawn("stuck", async move {
            let _ = entered.send(());
            while !token.is_cancelled() {
                std::future::pending::<()>().await;
            }
        });
        background.spawn("idle", async move {});
        in_step.await.unwrap();
        let aborted = background.stop(Duration::from_secs(5)).await;
        assert!(aborted.is_empty(), "tasks had to be aborted: {aborted:?}");
    }
}
