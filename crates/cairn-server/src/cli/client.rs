//! `cairn get|put|delete|scan|cluster`: the HTTP API from the command line.

use anyhow::Context as _;
use cairn_client::{Client, Consistency, ReadAt};
use std::io::Write as _;

#[derive(Debug, clap::Args)]
pub struct Endpoint {
    /// HTTP address of any node.
    #[arg(
        long,
        global = true,
        env = "CAIRN_ENDPOINT",
        default_value = "http://127.0.0.1:8081"
    )]
    pub endpoint: String,
    #[command(flatten)]
    pub credentials: Credentials,
}

impl Endpoint {
    /// A client of the endpoint, presenting the credentials given (if any).
    pub fn client(&self) -> anyhow::Result<Client> {
        self.credentials.client(&self.endpoint)
    }
}

/// The token a command presents, for clusters that authenticate (`--root-token-file`).
#[derive(Debug, Clone, clap::Args)]
pub struct Credentials {
    /// Bearer token (from `cairn token create`, or the root token). Prefer the
    /// environment or --token-file: a flag's value shows in the process list.
    #[arg(long, global = true, env = "CAIRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// A file holding the bearer token.
    #[arg(
        long,
        global = true,
        env = "CAIRN_TOKEN_FILE",
        conflicts_with = "token"
    )]
    pub token_file: Option<std::path::PathBuf>,
    /// The cluster CA's certificate (PEM), to trust an `https://` endpoint (the only
    /// authority trusted then).
    #[arg(long, global = true, env = "CAIRN_CA_FILE")]
    pub ca_file: Option<std::path::PathBuf>,
}

impl Credentials {
    pub fn client(&self, endpoint: &str) -> anyhow::Result<Client> {
        let token = match (&self.token, &self.token_file) {
            (Some(token), _) => Some(token.trim().to_owned()),
            (None, Some(path)) => Some(
                std::fs::read_to_string(path)
                    .with_context(|| format!("reading the token file {}", path.display()))?
                    .trim()
                    .to_owned(),
            ),
            (None, None) => None,
        };
        let ca = self
            .ca_file
            .as_ref()
            .map(|path| {
                std::fs::read(path)
                    .with_context(|| format!("reading the CA file {}", path.display()))
            })
            .transpose()?;
        Ok(match (&token, &ca) {
            (None, None) => Client::new(endpoint),
            _ => Client::with_options(endpoint, token.as_deref(), ca.as_deref())?,
        })
    }
}

#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Print a key's value (raw bytes) to stdout.
    Get {
        key: String,
        /// Serve from the answering node's replica, possibly stale.
        #[arg(long, conflicts_with_all = ["snapshot", "as_of"])]
        stale: bool,
        /// Read the key as it was in this snapshot (id or name).
        #[arg(long, conflicts_with = "as_of")]
        snapshot: Option<String>,
        /// Read the key as of this RFC 3339 UTC time (the newest snapshot at or before).
        #[arg(long)]
        as_of: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Set a key to a value (or to stdin with `-`).
    Put {
        key: String,
        value: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Delete a key.
    Delete {
        key: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// List keys and values under a prefix, one `key<TAB>value` per line.
    Scan {
        #[arg(default_value = "")]
        prefix: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show the cluster as the node sees it.
    Cluster {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Take, list, show and delete consistent snapshots.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// The cluster's nodes.
    #[command(subcommand)]
    Node(NodeCommand),
    /// The cluster's shards (Raft groups).
    #[command(subcommand)]
    Shard(ShardCommand),
}

#[derive(Debug, clap::Subcommand)]
pub enum ShardCommand {
    /// Move a shard's replica from one node to another: the new replica is added as
    /// a learner, caught up, made a voter while the old one is removed, and the old
    /// one's data deleted. Prints the shard's members after the move; asking again
    /// resumes a move that was cut short.
    Move {
        /// The shard (group) id; the meta group's id is the shard count.
        shard: u32,
        /// The node whose replica moves.
        #[arg(long)]
        from: u64,
        /// The node it moves to.
        #[arg(long)]
        to: u64,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum NodeCommand {
    /// Every node, as the answering node sees it: its peer address, the groups it
    /// holds replicas of and leads, and the answering node's link to it.
    List {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Move every replica off a node (each to the node with the fewest replicas that
    /// holds none of that shard), so it can be stopped for good. Refused when fewer
    /// nodes than a shard's replicas would remain. Asking again resumes.
    Decommission {
        /// The node to empty.
        id: u64,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

#[derive(Debug, clap::Subcommand)]
pub enum SnapshotCommand {
    /// Take a snapshot now; prints it once it is complete.
    Create {
        /// A name to find it by.
        #[arg(long)]
        name: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// List snapshots, newest first.
    List {
        #[arg(long, default_value_t = 20)]
        limit: usize,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show one snapshot (id or name).
    Show {
        snapshot: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Delete a snapshot (id or name).
    Delete {
        snapshot: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

pub async fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Get {
            key,
            stale,
            snapshot,
            as_of,
            endpoint,
        } => {
            let client = endpoint.client()?;
            let at = match (snapshot, as_of) {
                (Some(s), _) => Some(ReadAt::Snapshot(s)),
                (None, Some(t)) => Some(ReadAt::AsOf(t)),
                (None, None) => None,
            };
            let got = match at {
                Some(at) => {
                    let read = client.get_at(key.as_bytes(), &at).await?;
                    eprintln!("(snapshot {})", read.snapshot);
                    read.value
                }
                None => {
                    let consistency = if stale {
                        Consistency::Stale
                    } else {
                        Consistency::Linearizable
                    };
                    client.get_with(key.as_bytes(), consistency).await?
                }
            };
            match got {
                Some(got) => std::io::stdout().write_all(&got.value)?,
                None => anyhow::bail!("key not found"),
            }
        }
        ClientCommand::Put {
            key,
            value,
            endpoint,
        } => {
            let value = if value == "-" {
                let mut buf = Vec::new();
                std::io::Read::read_to_end(&mut std::io::stdin(), &mut buf)
                    .context("reading the value from stdin")?;
                buf
            } else {
                value.into_bytes()
            };
            let version = endpoint.client()?.put(key.as_bytes(), &value).await?;
            println!("version {version}");
        }
        ClientCommand::Delete { key, endpoint } => {
            let r = endpoint.client()?.delete(key.as_bytes()).await?;
            println!("deleted {} (version {})", r.deleted, r.version);
        }
        ClientCommand::Scan { prefix, endpoint } => {
            let items = endpoint
                .client()?
                .scan_all(prefix.as_bytes(), Consistency::Linearizable)
                .await?;
            let mut out = std::io::stdout().lock();
            for (key, value, _) in items {
                out.write_all(&key)?;
                out.write_all(b"\t")?;
                out.write_all(&value)?;
                out.write_all(b"\n")?;
            }
        }
        ClientCommand::Cluster { endpoint } => {
            let status = endpoint.client()?.cluster().await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
        ClientCommand::Snapshot(command) => snapshot(command).await?,
        ClientCommand::Node(NodeCommand::List { endpoint }) => {
            let status = endpoint.client()?.cluster().await?;
            print!("{}", node_table(&status));
        }
        ClientCommand::Node(NodeCommand::Decommission { id, endpoint }) => {
            let done = endpoint.client()?.decommission(id).await?;
            println!("{}", serde_json::to_string_pretty(&done)?);
        }
        ClientCommand::Shard(ShardCommand::Move {
            shard,
            from,
            to,
            endpoint,
        }) => {
            let moved = endpoint.client()?.move_replica(shard, from, to).await?;
            println!("{}", serde_json::to_string_pretty(&moved)?);
        }
    }
    Ok(())
}

/// `cairn node list`: one line per node. A node's link is the answering node's
/// connection to it (`self` for the answering node): `up`, `unanswered` (connected,
/// keepalives unanswered) or `down`.
fn node_table(status: &cairn_client::api::ClusterStatus) -> String {
    let mut out = format!(
        "{:<4} {:<24} {:>8} {:>8}  {:<15} {}\n",
        "ID", "PEER", "REPLICAS", "LEADS", "STATE", "LINK"
    );
    for node in &status.nodes {
        let link = if node.id == status.node_id {
            "self".to_owned()
        } else {
            status
                .links
                .iter()
                .find(|l| l.peer == node.id)
                .map_or_else(|| "unknown".to_owned(), |l| l.state.clone())
        };
        out.push_str(&format!(
            "{:<4} {:<24} {:>8} {:>8}  {:<15} {}\n",
            node.id, node.peer_addr, node.replicas, node.leaders, node.state, link
        ));
    }
    out
}

async fn snapshot(command: SnapshotCommand) -> anyhow::Result<()> {
    match command {
        SnapshotCommand::Create { name, endpoint } => {
            let info = endpoint.client()?.create_snapshot(name.as_deref()).await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        SnapshotCommand::List { limit, endpoint } => {
            let list = endpoint.client()?.list_snapshots(None, Some(limit)).await?;
            for s in list.snapshots {
                println!("{:>8}  {}  {}", s.id, s.time, s.name.unwrap_or_default());
            }
        }
        SnapshotCommand::Show { snapshot, endpoint } => {
            let info = endpoint.client()?.snapshot(&snapshot).await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
        }
        SnapshotCommand::Delete { snapshot, endpoint } => {
            endpoint.client()?.delete_snapshot(&snapshot).await?;
            println!("deleted snapshot {snapshot}");
        }
    }
    Ok(())
}
