//! `cairn dev`: a whole local cluster in one process, on embedded defaults.
//!
//! Each node is a full [`Node`] with its own sled database and its own peer and HTTP
//! sockets on 127.0.0.1; they talk over real TCP exactly as separate processes would.
//! Started again with the same data directory, the cluster keeps its data.

use std::path::PathBuf;

use crate::config::{Config, Settings};
use crate::error::ServerError;
use crate::node::Node;

/// Options of `cairn dev`.
#[derive(Debug, Clone, clap::Args)]
pub struct DevArgs {
    /// Directory holding one subdirectory per node.
    #[arg(long, default_value = "./data/dev", env = "CAIRN_DEV_DATA_DIR")]
    pub data_dir: PathBuf,
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: u64,
    /// Number of shards.
    #[arg(long, default_value_t = 8)]
    pub shards: u32,
    /// Replicas of each shard [default: 3, or every node of a smaller cluster].
    #[arg(long)]
    pub replication_factor: Option<usize>,
    /// HTTP port of node 1; node N listens on this plus N-1.
    #[arg(long, default_value_t = 8081)]
    pub http_port: u16,
    /// Peer port of node 1; node N listens on this plus N-1.
    #[arg(long, default_value_t = 9081)]
    pub peer_port: u16,
    /// Automatic snapshot interval while data is written (0 disables).
    #[arg(long, default_value_t = 1000)]
    pub snapshot_interval_ms: u64,
    /// Threads driving each node's replicas. The nodes share one machine, so one each
    /// by default.
    #[arg(long, default_value_t = 1)]
    pub replica_threads: usize,
    /// Serve linearizable reads on leader leases (see `cairn server --lease-reads`).
    #[arg(long)]
    pub lease_reads: bool,
}

impl DevArgs {
    /// The configuration of every node of the dev cluster.
    pub fn configs(&self) -> Result<Vec<Config>, ServerError> {
        if self.nodes == 0 || self.nodes > 9 {
            return Err(ServerError::Config("--nodes must be from 1 to 9".into()));
        }
        let port = |base: u16, id: u64| base as u64 + id - 1;
        let cluster: Vec<String> = (1..=self.nodes)
            .map(|id| format!("{id}=127.0.0.1:{}", port(self.peer_port, id)))
            .collect();
        (1..=self.nodes)
            .map(|id| {
                let parse = |p: u64| format!("127.0.0.1:{p}").parse().ok();
                Settings {
                    id: Some(id),
                    data_dir: Some(self.data_dir.join(format!("node-{id}"))),
                    http: parse(port(self.http_port, id)),
                    peer: format!("127.0.0.1:{}", port(self.peer_port, id))
                        .parse()
                        .ok(),
                    initial_cluster: Some(cluster.join(",")),
                    shards: Some(self.shards),
                    replication_factor: self.replication_factor,
                    cluster_token: Some("cairn-dev".into()),
                    snapshot_interval_ms: Some(self.snapshot_interval_ms),
                    replica_threads: Some(self.replica_threads),
                    lease_reads: Some(self.lease_reads),
                    // A local playground: backups may go wherever its user says.
                    backup_allow: Some(vec!["*".into()]),
                    playground: Some(true),
                    enable_debug: Some(true),
                    ..Settings::default()
                }
                .resolve()
            })
            .collect()
    }
}

/// Start every node, print where they are, and run until `shutdown` resolves.
pub async fn run(
    args: DevArgs,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), ServerError> {
    let mut nodes = Vec::new();
    let configs = args.configs()?;
    let configs_rf = configs.first().map_or(0, |c| c.replication_factor);
    for config in configs {
        nodes.push(Node::start(config).await?);
    }
    println!(
        "cairn dev cluster: {} nodes, {} shards with {} replicas each, data in {}",
        nodes.len(),
        args.shards,
        configs_rf,
        args.data_dir.display()
    );
    for node in &nodes {
        println!("  node {}: http://{}", node.id(), node.http_addr());
    }
    if let Some(first) = nodes.first() {
        println!(
            "try: curl -X PUT --data-binary hello http://{}/v1/kv/greeting",
            first.http_addr()
        );
    }
    println!(
        "insecure by design: loopback only, no TLS, no authentication (see docs/SECURITY.md to secure a cluster)"
    );
    println!("press Ctrl-C to stop");
    shutdown.await;
    println!("stopping...");
    futures::future::join_all(nodes.into_iter().map(Node::shutdown)).await;
    Ok(())
}
