//! `cairn backup ...`, `cairn restore` and `cairn revert`: backups from the command
//! line. `backup create`, `status`, `schedules` and `revert` talk to a node over HTTP;
//! `backup list`, `backup verify` and `restore` read the destination directly, so
//! they work with the cluster down (restore is offline by design, like etcd's).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use cairn_backup::restore::{self, Target};
use cairn_backup::{read_manifest, verify, BackupKey, Destination, Manifest, S3Options};
use cairn_client::api::CreateBackup;
use cairn_raft::Placement;
use cairn_server::config::{parse_initial_cluster, DEFAULT_REPLICATION_FACTOR};
use cairn_server::identity::cluster_id_of;
use cairn_store::NodeIdentity;
use indicatif::{ProgressBar, ProgressStyle};

use crate::cli::client::Endpoint;

#[derive(Debug, clap::Subcommand)]
pub enum BackupCommand {
    /// Take a backup through a node; waits for it with a progress bar unless
    /// `--no-wait`.
    Create {
        /// Destination: a directory, file:///path or s3://bucket/prefix (S3 settings
        /// from the AWS_* environment of the node); default: the node's --backup-dir.
        #[arg(long)]
        to: Option<String>,
        /// Extend the newest backup of this cluster at the destination.
        #[arg(long)]
        incremental: bool,
        /// Back up this completed snapshot (id or name) instead of taking one.
        #[arg(long)]
        snapshot: Option<String>,
        /// Print the backup's id and return at once.
        #[arg(long)]
        no_wait: bool,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Show one backup of the cluster's catalog.
    Status {
        id: String,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// List backups: those at DEST, by chain, with the time range each restores;
    /// without DEST, the cluster's catalog (through a node).
    List {
        dest: Option<String>,
        #[command(flatten)]
        endpoint: Endpoint,
    },
    /// Check every file of a backup (all of them by default) and of its chain
    /// against the manifests: sizes, BLAKE3 checksums, complete decoding.
    Verify {
        dest: String,
        #[arg(long)]
        id: Option<String>,
        /// The backup key, for encrypted backups (their manifests are authenticated
        /// and their files opened with it).
        #[arg(long, env = "CAIRN_BACKUP_KEY_FILE")]
        key_file: Option<PathBuf>,
    },
    /// Write a new backup key to FILE (64 hex digits, mode 0600; refuses to
    /// overwrite). Give it to every node with --backup-key-file to encrypt backups;
    /// keep a copy apart from the backups: without it they cannot be restored.
    Key { file: PathBuf },
    /// Show the backup schedules and their last results.
    Schedules {
        #[command(flatten)]
        endpoint: Endpoint,
    },
}

/// Build a new cluster node's data directory from a backup chain (offline).
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// Where the backups are: a directory, file:///path or s3://bucket/prefix (S3
    /// settings from the AWS_* environment).
    #[arg(long)]
    from: String,
    /// The new data directory (must not exist, or be empty).
    #[arg(long, required_unless_present = "dry_run")]
    to_data_dir: Option<PathBuf>,
    /// The node id this data directory is for.
    #[arg(long, required_unless_present = "dry_run")]
    node_id: Option<u64>,
    /// The new cluster's members: `1=127.0.0.1:9081,2=...` (as the nodes will be
    /// started with).
    #[arg(long, required_unless_present = "dry_run")]
    initial_cluster: Option<String>,
    /// The new cluster's token (as the nodes will be started with).
    #[arg(long, default_value = "cairn")]
    cluster_token: String,
    /// The new cluster's replication factor (as the nodes will be started with)
    /// [default: 3, or every node of a smaller cluster]. The new cluster places its
    /// shards by it, whatever the old cluster's size and placement were.
    #[arg(long)]
    replication_factor: Option<usize>,
    /// Restore from this backup (default: whichever holds the wanted snapshot).
    #[arg(long)]
    backup: Option<String>,
    /// Restore this snapshot id (any snapshot a backup chain covers).
    #[arg(long, conflicts_with = "as_of")]
    snapshot: Option<u64>,
    /// Restore the newest covered snapshot at or before this RFC 3339 UTC time.
    #[arg(long)]
    as_of: Option<String>,
    /// Print what would be restored, check nothing and write nothing.
    #[arg(long)]
    dry_run: bool,
    /// The backup key, for encrypted backups.
    #[arg(long, env = "CAIRN_BACKUP_KEY_FILE")]
    key_file: Option<PathBuf>,
}

fn load_key(path: Option<&PathBuf>) -> anyhow::Result<Option<BackupKey>> {
    Ok(path.map(|p| BackupKey::load(p)).transpose()?)
}

/// A destination to read backups from; a local directory that does not exist has
/// none (and is not created).
fn destination(url: &str) -> anyhow::Result<Destination> {
    match Destination::parse_existing(url, &S3Options::default())
        .with_context(|| format!("backup destination {url}"))?
    {
        Some(dest) => Ok(dest),
        None => bail!("no backups at {url}: no such directory"),
    }
}

fn fmt_ms(ms: u64) -> String {
    humantime::format_rfc3339_seconds(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

pub async fn run_backup(command: BackupCommand) -> anyhow::Result<()> {
    match command {
        BackupCommand::Create {
            to,
            incremental,
            snapshot,
            no_wait,
            endpoint,
        } => {
            let client = endpoint.client()?;
            let started = client
                .create_backup(&CreateBackup {
                    destination: to,
                    incremental,
                    snapshot,
                })
                .await?;
            if no_wait {
                println!("{}", started.id);
                return Ok(());
            }
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} backup {msg} [{bar:30}] {pos}/{len} shards",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
            );
            bar.set_message(started.id.clone());
            let begin = Instant::now();
            let done = loop {
                let info = client.backup(&started.id).await?;
                bar.set_length(u64::from(info.progress.shards_total));
                bar.set_position(u64::from(info.progress.shards_done));
                if info.state != "running" {
                    break info;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            };
            bar.finish_and_clear();
            match done.state.as_str() {
                "done" => {
                    let secs = begin.elapsed().as_secs_f64();
                    println!(
                        "backup {} done: snapshot {}, {} keys, {} versions, {} bytes in {secs:.1}s{}",
                        done.id,
                        done.snapshot.unwrap_or_default(),
                        done.progress.keys,
                        done.progress.versions,
                        done.progress.bytes,
                        match &done.parent {
                            Some(p) => format!(", incremental on {p}"),
                            None => String::new(),
                        }
                    );
                    Ok(())
                }
                _ => bail!(
                    "backup {} failed: {}",
                    done.id,
                    done.error.unwrap_or_default()
                ),
            }
        }
        BackupCommand::Status { id, endpoint } => {
            let info = endpoint.client()?.backup(&id).await?;
            println!("{}", serde_json::to_string_pretty(&info)?);
            Ok(())
        }
        BackupCommand::List {
            dest: None,
            endpoint,
        } => {
            for b in endpoint.client()?.backups().await? {
                println!(
                    "{}\t{}\t{}\t{}\tsnapshot {}\t{} keys\t{} bytes{}",
                    b.id,
                    b.state,
                    if b.incremental { "incremental" } else { "full" },
                    b.destination,
                    b.snapshot.map_or("-".into(), |s| s.to_string()),
                    b.progress.keys,
                    b.progress.bytes,
                    b.error.map(|e| format!("\t{e}")).unwrap_or_default()
                );
            }
            Ok(())
        }
        BackupCommand::List {
            dest: Some(url), ..
        } => list_destination(&url).await,
        BackupCommand::Key { file } => {
            super::write_new(&file, &format!("{}\n", BackupKey::generate_hex()), true)?;
            let key = BackupKey::load(&file)?;
            eprintln!(
                "wrote backup key {} to {}; keep a copy apart from the backups",
                key.id(),
                file.display()
            );
            Ok(())
        }
        BackupCommand::Verify { dest, id, key_file } => {
            let key = load_key(key_file.as_ref())?;
            let dest = destination(&dest)?;
            let named = id.is_some();
            let ids = match id {
                Some(id) => vec![id],
                None => dest.list_backups().await?,
            };
            if ids.is_empty() {
                bail!("no backups at {}", dest.url());
            }
            for line in verify_each(&dest, ids, named, key.as_ref()).await? {
                println!("{line}");
            }
            Ok(())
        }
        BackupCommand::Schedules { endpoint } => {
            for s in endpoint.client()?.backup_schedules().await? {
                println!(
                    "{}\t{}\t{}\tnext {}\tlast {}\t{}\tlag {}",
                    s.name,
                    s.cron,
                    s.destination,
                    s.next_run_ms.map_or("-".into(), fmt_ms),
                    s.last_backup.unwrap_or_else(|| "-".into()),
                    s.last_result.unwrap_or_else(|| "-".into()),
                    s.last_lag_ms.map_or("-".into(), |l| format!("{l}ms")),
                );
            }
            Ok(())
        }
    }
}

/// Verify every backup of `ids` (`named`: the user named the one id), a line each.
/// A backup without a manifest does not exist: one that retention deleted (manifest
/// first) while it was being verified is skipped, a named one that is not there is an
/// error saying so; any other failure makes the backup NOT restorable.
async fn verify_each(
    dest: &Destination,
    ids: Vec<String>,
    named: bool,
    key: Option<&BackupKey>,
) -> anyhow::Result<Vec<String>> {
    let mut lines = Vec::new();
    for id in ids {
        match verify(dest, &id, key).await {
            Ok(report) => lines.push(format!(
                "{id}: ok ({} backups in its chain, {} files, {} bytes, {} versions checked)",
                report.chain.len(),
                report.files,
                report.bytes,
                report.versions
            )),
            Err(e) if !dest.backup_exists(&id).await? => {
                if named {
                    bail!("no backup {id} at {}", dest.url());
                }
                tracing::debug!(id, error = %e, "backup deleted while being verified");
                lines.push(format!("{id}: deleted while being verified (skipped)"));
            }
            Err(e) => {
                return Err(anyhow::Error::new(e).context(format!("backup {id} is NOT restorable")))
            }
        }
    }
    Ok(lines)
}

/// Print the backups at a destination, chain by chain, with what each restores.
async fn list_destination(url: &str) -> anyhow::Result<()> {
    let dest = destination(url)?;
    let mut manifests: BTreeMap<String, Manifest> = BTreeMap::new();
    for id in dest.list_backups().await? {
        match read_manifest(&dest, &id).await {
            Ok(m) => {
                manifests.insert(id, m);
            }
            Err(e) => println!("{id}\tUNREADABLE\t{e}"),
        }
    }
    for (id, m) in &manifests {
        let kind = match &m.parent {
            None => "full".to_owned(),
            Some(p) => format!("incremental on {}", p.backup_id),
        };
        let oldest = m.restorable().next().map_or("-", |s| s.time.as_str());
        let keys: u64 = m.files.iter().map(|f| f.keys).sum();
        let bytes: u64 = m.files.iter().map(|f| f.bytes).sum();
        println!(
            "{id}\t{kind}\tcluster {}\tsnapshot {} at {}\trestores {} snapshots from {oldest} to {}\t{keys} keys\t{bytes} bytes{}",
            m.cluster_id,
            m.snapshot.id,
            m.snapshot.time,
            m.restorable().count(),
            m.snapshot.time,
            m.schedule
                .as_ref()
                .map(|s| format!("\tschedule {s}"))
                .unwrap_or_default(),
        );
    }
    if manifests.is_empty() {
        println!("no backups at {}", dest.url());
    }
    Ok(())
}

pub async fn run_restore(args: RestoreArgs) -> anyhow::Result<()> {
    let dest = destination(&args.from)?;
    let target = match (args.snapshot, &args.as_of) {
        (Some(id), _) => Target::Snapshot(id),
        (None, Some(time)) => Target::AsOf(
            cairn_cluster::clock::parse_rfc3339_ms(time)
                .map_err(|e| anyhow::anyhow!("--as-of: {e}"))?,
        ),
        (None, None) => Target::Latest,
    };
    let key = load_key(args.key_file.as_ref())?;
    let plan = restore::plan(&dest, args.backup.as_deref(), &target, key.as_ref()).await?;
    println!(
        "restoring snapshot {} ({}) of cluster {} from backup {}: a chain of {} backups, {} files, {} bytes, {} versions",
        plan.snapshot.id,
        plan.snapshot.time,
        plan.source_cluster(),
        plan.backup_id(),
        plan.chain.len(),
        plan.files,
        plan.bytes,
        plan.versions
    );
    if args.dry_run {
        return Ok(());
    }
    let (Some(dir), Some(node_id), Some(members)) =
        (args.to_data_dir, args.node_id, args.initial_cluster)
    else {
        bail!("--to-data-dir, --node-id and --initial-cluster are required");
    };
    let members = parse_initial_cluster(&members)?;
    if !members.contains_key(&node_id) {
        bail!("--initial-cluster does not list node {node_id}");
    }
    let factor = args
        .replication_factor
        .unwrap_or(DEFAULT_REPLICATION_FACTOR.min(members.len()));
    if factor == 0 || factor > members.len() {
        bail!(
            "--replication-factor must be between 1 and the number of nodes in --initial-cluster ({})",
            members.len()
        );
    }
    let placement = Placement::with_factor(factor, members.len());
    let nodes: Vec<u64> = members.keys().copied().collect();
    let voters = move |shard| placement.voters(shard, &nodes);
    let hosted = (0..plan.shards)
        .filter(|&s| voters(s).contains(&node_id))
        .count();
    let origin = format!(
        "{}/{}/{}",
        plan.source_cluster(),
        plan.backup_id(),
        plan.snapshot.id
    );
    let identity = NodeIdentity {
        cluster_id: cluster_id_of(
            &args.cluster_token,
            plan.shards,
            &members,
            placement,
            Some(&origin),
        ),
        node_id,
        shards: plan.shards,
    };
    let bar = ProgressBar::new(plan.bytes);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message("checking");
    let fetched = restore::fetch(&dest, &plan, &dir, |bytes| bar.inc(bytes)).await?;
    bar.set_message("writing");
    bar.set_length(hosted as u64);
    bar.set_position(0);
    bar.set_style(
        ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} shards")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    let begin = Instant::now();
    let stats = tokio::task::spawn_blocking({
        let bar = bar.clone();
        let dir = dir.clone();
        let identity = identity.clone();
        move || {
            restore::write(&dir, &plan, &fetched, &identity, &origin, voters, |_| {
                bar.inc(1)
            })
        }
    })
    .await??;
    bar.finish_and_clear();
    println!(
        "restored {} keys ({} bytes) into {} in {:.1}s; new cluster id {}",
        stats.keys,
        stats.bytes,
        dir.display(),
        begin.elapsed().as_secs_f64(),
        identity.cluster_id
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 17: `backup verify` run while retention pruned reported a backup whose
    /// manifest had just been deleted as "NOT restorable" and failed.
    #[tokio::test]
    async fn verify_skips_a_backup_deleted_while_it_runs_and_names_a_missing_one() {
        let dir = tempfile::tempdir().unwrap();
        // A backup being deleted: its manifest already gone, a file still there.
        std::fs::create_dir_all(dir.path().join("20260101T000000Z-000001")).unwrap();
        std::fs::write(dir.path().join("20260101T000000Z-000001/shard-0"), b"x").unwrap();
        let dest = destination(dir.path().to_str().unwrap()).unwrap();
        assert!(dest.list_backups().await.unwrap().is_empty());
        let listed = vec!["20260101T000000Z-000001".to_owned()];
        let lines = verify_each(&dest, listed.clone(), false, None)
            .await
            .unwrap();
        assert_eq!(
            lines,
            vec!["20260101T000000Z-000001: deleted while being verified (skipped)"]
        );
        let named = verify_each(&dest, listed, true, None).await.unwrap_err();
        assert!(
            named
                .to_string()
                .starts_with("no backup 20260101T000000Z-000001 at"),
            "{named}"
        );
    }
}
