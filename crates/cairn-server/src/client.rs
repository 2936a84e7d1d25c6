//! `cairn get|put|delete|scan|cluster`: the HTTP API from the command line.

use anyhow::Context as _;
use cairn_client::{Client, Consistency};
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
    endpoint: String,
}

#[derive(Debug, clap::Subcommand)]
pub enum ClientCommand {
    /// Print a key's value (raw bytes) to stdout.
    Get {
        key: String,
        /// Serve from the answering node's replica, possibly stale.
        #[arg(long)]
        stale: bool,
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
}

pub async fn run(command: ClientCommand) -> anyhow::Result<()> {
    match command {
        ClientCommand::Get {
            key,
            stale,
            endpoint,
        } => {
            let consistency = if stale {
                Consistency::Stale
            } else {
                Consistency::Linearizable
            };
            let got = Client::new(endpoint.endpoint)
                .get_with(key.as_bytes(), consistency)
                .await?;
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
            let version = Client::new(endpoint.endpoint)
                .put(key.as_bytes(), &value)
                .await?;
            println!("version {version}");
        }
        ClientCommand::Delete { key, endpoint } => {
            let r = Client::new(endpoint.endpoint)
                .delete(key.as_bytes())
                .await?;
            println!("deleted {} (version {})", r.deleted, r.version);
        }
        ClientCommand::Scan { prefix, endpoint } => {
            let items = Client::new(endpoint.endpoint)
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
            let status = Client::new(endpoint.endpoint).cluster().await?;
            println!("{}", serde_json::to_string_pretty(&status)?);
        }
    }
    Ok(())
}
