//! Point-in-time restore: build a new cluster's data directory from a backup chain.
//!
//! Three steps, and nothing is written before the second one ends:
//!
//! 1. [`plan`]: find the backup that holds the wanted snapshot (by id, by time, or the
//!    newest) and the chain it needs: its full backup and the incrementals up to it.
//!    Incrementals after it are never read.
//! 2. [`fetch`]: download every file of that chain and check it completely: size,
//!    BLAKE3, decodes to the end, record counts. The first problem names the file.
//! 3. [`write`]: per shard, the newest version of each key below the snapshot's cut
//!    (the full's state, then the incrementals' versions in order) goes into a fresh
//!    data directory, whose Raft logs start right after the cut. Every node of the new
//!    cluster gets the same state and log position, so none needs a Raft snapshot
//!    from another. The directory appears (by rename) only when complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use cairn_store::{AppliedState, KeyVersion, NodeIdentity, NodeStore};

use crate::backups::rfc3339_ms;
use crate::destination::Destination;
use crate::error::BackupError;
use crate::format::ShardReader;
use crate::manifest::{Manifest, SnapshotRef, MANIFEST};
use crate::verify::{check_file, read_manifest};

/// Which point to restore.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The newest backup's own snapshot (of `--backup`, if given).
    Latest,
    /// A snapshot by id.
    Snapshot(u64),
    /// The newest restorable snapshot labelled at or before this time (ms).
    AsOf(u64),
}

/// What a restore will read and produce.
#[derive(Debug, Clone)]
pub struct RestorePlan {
    /// The full backup first, then each incremental up to the one holding the target.
    pub chain: Vec<Manifest>,
    /// The snapshot restored.
    pub snapshot: SnapshotRef,
    pub shards: u32,
    /// Files and compressed bytes to read.
    pub files: u64,
    pub bytes: u64,
    /// Records in those files (an upper bound of the keys restored).
    pub versions: u64,
}

impl RestorePlan {
    /// The cluster the backup was taken from.
    pub fn source_cluster(&self) -> &str {
        self.chain.first().map_or("", |m| m.cluster_id.as_str())
    }

    /// The backup holding the target snapshot.
    pub fn backup_id(&self) -> &str {
        self.chain.last().map_or("", |m| m.backup_id.as_str())
    }
}

/// Find the chain that restores `target`, from backup `backup` if given.
pub async fn plan(
    dest: &Destination,
    backup: Option<&str>,
    target: &Target,
) -> Result<RestorePlan, BackupError> {
    let candidates = match backup {
        Some(id) => vec![read_manifest(dest, id).await?],
        None => {
            // Every manifest is read strictly: skipping an unreadable one could
            // silently restore an older point than the one asked for. `--backup`
            // picks a backup without reading the others.
            let mut all = Vec::new();
            for id in dest.list_backups().await? {
                all.push(read_manifest(dest, &id).await?);
            }
            all
        }
    };
    if candidates.is_empty() {
        return Err(BackupError::NotFound(format!(
            "any backup at {}",
            dest.url()
        )));
    }
    let (holder, snapshot) = match target {
        Target::Latest => {
            let newest = candidates
                .iter()
                .max_by_key(|m| (rfc3339_ms(&m.snapshot.time), m.snapshot.id))
                .ok_or_else(|| BackupError::NotFound("a backup".into()))?;
            (newest.clone(), newest.snapshot.clone())
        }
        Target::Snapshot(id) => candidates
            .iter()
            .find_map(|m| {
                m.restorable()
                    .find(|s| s.id == *id)
                    .map(|s| (m.clone(), s.clone()))
            })
            .ok_or_else(|| {
                BackupError::NotFound(format!(
                    "a backup at {} that restores snapshot {id}",
                    dest.url()
                ))
            })?,
        Target::AsOf(ms) => candidates
            .iter()
            .flat_map(|m| m.restorable().map(move |s| (m, s)))
            .filter(|(_, s)| rfc3339_ms(&s.time) <= *ms)
            .max_by_key(|(_, s)| (rfc3339_ms(&s.time), s.id))
            .map(|(m, s)| (m.clone(), s.clone()))
            .ok_or_else(|| {
                BackupError::NotFound(format!(
                    "a snapshot at or before the requested time at {}",
                    dest.url()
                ))
            })?,
    };
    let mut chain = vec![holder];
    while let Some(parent) = chain.last().and_then(|m| m.parent.clone()) {
        if chain.len() > 100_000 {
            return Err(BackupError::Corrupt("backup chain loops".into()));
        }
        let manifest = read_manifest(dest, &parent.backup_id).await?;
        if manifest.snapshot.cuts != parent.cuts {
            return Err(BackupError::BadFile {
                file: format!("{}/{MANIFEST}", parent.backup_id),
                reason: "its snapshot is not where its child backup starts".into(),
            });
        }
        chain.push(manifest);
    }
    chain.reverse();
    let shards = chain[0].shards;
    if let Some(m) = chain.iter().find(|m| m.shards != shards) {
        return Err(BackupError::BadFile {
            file: format!("{}/{MANIFEST}", m.backup_id),
            reason: format!("{} shards; its chain has {shards}", m.shards),
        });
    }
    let files = chain.iter().map(|m| m.files.len() as u64).sum();
    let bytes = chain.iter().flat_map(|m| &m.files).map(|f| f.bytes).sum();
    let versions = chain
        .iter()
        .flat_map(|m| &m.files)
        .map(|f| f.versions)
        .sum();
    Ok(RestorePlan {
        chain,
        snapshot,
        shards,
        files,
        bytes,
        versions,
    })
}

/// Every file of a plan, checked.
pub struct Fetched {
    /// Per backup of the chain (same order), per shard: the file's bytes.
    files: Vec<BTreeMap<u32, Bytes>>,
}

/// Download and check every file the plan needs; `progress(bytes)` after each file.
pub async fn fetch(
    dest: &Destination,
    plan: &RestorePlan,
    mut progress: impl FnMut(u64),
) -> Result<Fetched, BackupError> {
    let mut files = Vec::new();
    for manifest in &plan.chain {
        let mut per_shard = BTreeMap::new();
        for file in &manifest.files {
            let name = format!("{}/{}", manifest.backup_id, file.path);
            let bytes = dest.get(&name).await?;
            check_file(&name, bytes.clone(), file).await?;
            per_shard.insert(file.shard, bytes);
            progress(file.bytes);
        }
        files.push(per_shard);
    }
    Ok(Fetched { files })
}

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub keys: u64,
    /// Uncompressed key and value bytes written.
    pub bytes: u64,
}

/// Write the plan's snapshot into a new data directory at `dir` (which must not exist
/// or be empty) for a node of a cluster with `voters`, under `identity`, recording
/// `origin` as what it was restored from. `progress(shard)` after each shard.
pub fn write(
    dir: &Path,
    plan: &RestorePlan,
    fetched: &Fetched,
    identity: &NodeIdentity,
    origin: &str,
    voters: Vec<u64>,
    mut progress: impl FnMut(u32),
) -> Result<RestoreStats, BackupError> {
    let io = BackupError::io;
    if dir.exists()
        && std::fs::read_dir(dir)
            .map_err(io("reading the target directory"))?
            .next()
            .is_some()
    {
        return Err(BackupError::Invalid(format!(
            "{} exists and is not empty; restore only creates a new data directory",
            dir.display()
        )));
    }
    if identity.shards != plan.shards {
        return Err(BackupError::Invalid(format!(
            "the backup has {} shards, the new cluster {}; they must match",
            plan.shards, identity.shards
        )));
    }
    let staging = staging_dir(dir);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io("removing an old staging directory"))?;
    }
    // A small cache: the restore writes once and never reads back.
    let store = NodeStore::open_with_cache(&staging, 64 << 20)?;
    cairn_store::crash_point!("restore.write.before");
    let mut stats = RestoreStats::default();
    for shard in 0..plan.shards {
        let cut = plan.snapshot.cuts.get(&shard).copied().ok_or_else(|| {
            BackupError::Corrupt(format!(
                "snapshot {} has no cut for shard {shard}",
                plan.snapshot.id
            ))
        })?;
        let mut state: BTreeMap<Vec<u8>, (u64, Option<Vec<u8>>)> = BTreeMap::new();
        for (manifest, files) in plan.chain.iter().zip(&fetched.files) {
            let name = format!("{}/shard-{shard}", manifest.backup_id);
            let bytes = files
                .get(&shard)
                .ok_or_else(|| BackupError::Missing(name.clone()))?;
            let mut reader = ShardReader::new(bytes.as_ref()).map_err(|e| e.in_file(&name))?;
            while let Some(record) = reader.next_record().map_err(|e| e.in_file(&name))? {
                // Versions at or past the cut are after the snapshot.
                if record.version >= cut {
                    continue;
                }
                match state.get(&record.key) {
                    Some((v, _)) if *v >= record.version => {}
                    _ => {
                        state.insert(record.key, (record.version, record.value));
                    }
                }
            }
        }
        let live = state.into_iter().filter_map(|(key, (version, value))| {
            value.map(|v| KeyVersion {
                key,
                version,
                value: Some(v),
            })
        });
        let counted = live.inspect(|v| {
            stats.bytes += (v.key.len() + v.value.as_ref().map_or(0, Vec::len)) as u64;
        });
        let applied = AppliedState {
            index: cut,
            term: 1,
        };
        stats.keys += store
            .shard_state(shard)?
            .load(counted, applied, cut, 10_000)?;
        store.raft_log(shard)?.start_at(cut, 1, voters.clone())?;
        cairn_store::crash_point!("restore.shard.after");
        progress(shard);
    }
    store.set_identity(identity)?;
    store.set_restored_from(origin)?;
    store.flush()?;
    drop(store);
    cairn_store::crash_point!("restore.rename.before");
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(io("replacing the empty target directory"))?;
    }
    std::fs::rename(&staging, dir).map_err(io("moving the restored directory in place"))?;
    Ok(stats)
}

fn staging_dir(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(".restoring");
    dir.with_file_name(name)
}
