//! `cairn token root|create|list|revoke`: the root token every node is given, and the
//! tokens an admin hands to people and programs.

use std::path::PathBuf;

use cairn_client::api::Role;
use cairn_server::auth::token;

use super::client::Endpoint;

#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Write a new root token to FILE (mode 0600; refuses to overwrite). Give every
    /// node that file with --root-token-file to turn authentication on.
    Root { file: PathBuf },
    /// Create a token and print it (the only time it is shown).
    Create {
        /// Who or what the token is for.
        #[arg(long)]
        name: String,
        /// `read`, `write` or `admin`.
        #[arg(long)]
        role: Role,
        /// Limit a read or write token to keys starting with this.
        #[arg(long)]
        prefix: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// List the cluster's tokens (ids, names, roles; never secrets).
    List {
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Revoke a token by id: every node refuses it within a second.
    Revoke {
        id: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Root { file } => {
            super::write_new(&file, &format!("{}\n", token::new_root()), true)?;
            eprintln!(
                "wrote a root token to {}; give every node `--root-token-file {}`",
                file.display(),
                file.display()
            );
        }
        TokenCommand::Create {
            name,
            role,
            prefix,
            endpoint,
        } => {
            let created = endpoint
                .client()?
                .create_scoped_token(&name, role, prefix.as_deref())
                .await?;
            eprintln!(
                "token {} ({}, role {}): keep it secret, it is not shown again",
                created.info.id, created.info.name, created.info.role
            );
            println!("{}", created.token);
        }
        TokenCommand::List { endpoint } => {
            println!(
                "{:<16}  {:<5}  {:<24}  {:<16}  NAME",
                "ID", "ROLE", "CREATED BY", "PREFIX"
            );
            for t in endpoint.client()?.tokens().await? {
                println!(
                    "{:<16}  {:<5}  {:<24}  {:<16}  {}",
                    t.id,
                    t.role,
                    t.created_by,
                    t.prefix.as_deref().unwrap_or("*"),
                    t.name
                );
            }
        }
        TokenCommand::Revoke { id, endpoint } => {
            endpoint.client()?.revoke_token(&id).await?;
            println!("revoked token {id}");
        }
    }
    Ok(())
}
