//! Point-in-time restore: build a new cluster's data directory from a backup chain.
//!
//! Three steps, and nothing is written before the second one ends:
//!
//! 1. [`plan`]: find the backup that holds the wanted snapshot (by id, by time, or the
//!    newest) and the chain it needs: its full backup and the incrementals up to it.
//!    Incrementals after it are never read.
//! 2. [`fetch`]: download every file of that chain to a spool beside the target and
//!    check it completely as it streams in: size, BLAKE3, decodes to the end, record
//!    counts. The first problem names the file.
//! 3. [`write`]: per shard, the newest version of each key below the snapshot's cut,
//!    merged across the chain's spooled files (each sorted, so the merge holds one
//!    record per file, never a shard's state), goes into a fresh data directory,
//!    whose Raft logs start right after the cut. Every node of the new
//!    cluster gets the same state and log position, so none needs a Raft snapshot
//!    from another. The directory appears (by rename) only when complete.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use cairn_store::{AppliedState, KeyVersion, NodeIdentity, NodeStore};

use crate::backups::rfc3339_ms;
use crate::destination::Destination;
use crate::error::BackupError;
use crate::format::{Record, ShardReader};
use crate::manifest::{Manifest, SnapshotRef, MANIFEST};
use crate::seal::{BackupKey, Unsealed};
use crate::verify::{check_file, read_manifest_with, Sealed};
use crate::write::shard_file_name;

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
    /// The key the chain's files are sealed under, if they are.
    pub key: Option<BackupKey>,
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
    key: Option<&BackupKey>,
) -> Result<RestorePlan, BackupError> {
    let candidates = match backup {
        Some(id) => vec![read_manifest_with(dest, id, key).await?],
        None => {
            // Every manifest is read strictly: skipping an unreadable one could
            // silently restore an older point than the one asked for. `--backup`
            // picks a backup without reading the others.
            let mut all = Vec::new();
            for id in dest.list_backups().await? {
                all.push(read_manifest_with(dest, &id, key).await?);
            }
            all
        }
    };
    if candidates.is_empty() {
        return Err(BackupError::NotFound(format!(
            "no backup at {}",
            dest.url()
        )));
    }
    let (holder, snapshot) = match target {
        Target::Latest => {
            let newest = candidates
                .iter()
                .max_by_key(|m| (rfc3339_ms(&m.snapshot.time), m.snapshot.id))
                .ok_or_else(|| BackupError::NotFound(format!("no backup at {}", dest.url())))?;
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
                    "no backup at {} restores snapshot {id}",
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
                let oldest = candidates
                    .iter()
                    .flat_map(|m| m.restorable())
                    .min_by_key(|s| (rfc3339_ms(&s.time), s.id));
                let requested = humantime::format_rfc3339_millis(
                    std::time::UNIX_EPOCH + std::time::Duration::from_millis(*ms),
                );
                BackupError::NotFound(match oldest {
                    Some(s) => format!(
                        "no backup at {} restores a snapshot at or before {requested}: the oldest it can restore is snapshot {} at {}",
                        dest.url(),
                        s.id,
                        s.time
                    ),
                    None => format!("no backup at {} restores any snapshot", dest.url()),
                })
            })?,
    };
    let mut chain = vec![holder];
    while let Some(parent) = chain.last().and_then(|m| m.parent.clone()) {
        if chain.len() > 100_000 {
            return Err(BackupError::Corrupt("backup chain loops".into()));
        }
        let manifest = read_manifest_with(dest, &parent.backup_id, key).await?;
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
        key: key.cloned(),
    })
}

/// Every file of a plan, checked and spooled to local disk beside the target
/// directory (so a restore from a bucket downloads each file once and holds none in
/// memory). The spool is removed when this is dropped.
pub struct Fetched {
    spool: PathBuf,
    /// Per backup of the chain (same order), per shard: the spooled file.
    files: Vec<BTreeMap<u32, PathBuf>>,
}

impl Drop for Fetched {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.spool);
    }
}

/// Download and check every file the plan needs into a spool beside `dir` (the
/// restore's target); `progress(bytes)` after each file. On any error the spool is
/// gone again and nothing else was written.
pub async fn fetch(
    dest: &Destination,
    plan: &RestorePlan,
    dir: &Path,
    mut progress: impl FnMut(u64),
) -> Result<Fetched, BackupError> {
    let spool = sibling(dir, ".fetching");
    if spool.exists() {
        std::fs::remove_dir_all(&spool).map_err(BackupError::io("removing an old spool"))?;
    }
    std::fs::create_dir_all(&spool).map_err(BackupError::io("creating the spool"))?;
    let mut fetched = Fetched {
        spool,
        files: Vec::new(),
    };
    for (n, manifest) in plan.chain.iter().enumerate() {
        let mut per_shard = BTreeMap::new();
        for file in &manifest.files {
            let name = format!("{}/{}", manifest.backup_id, file.path);
            let local = fetched.spool.join(format!("{n}-{}", file.shard));
            let sealed = Sealed {
                with: manifest.key_id(),
                key: plan.key.as_ref(),
            };
            check_file(dest, &name, file, Some(&local), sealed).await?;
            per_shard.insert(file.shard, local);
            progress(file.bytes);
        }
        fetched.files.push(per_shard);
    }
    Ok(fetched)
}

/// The newest version below a cut of each key of one shard, merged across a chain's
/// files, each sorted by key and newest version first. Holds one record per file.
struct ChainMerge {
    files: Vec<(String, ShardReader<Unsealed<std::fs::File>>, Option<Record>)>,
    cut: u64,
}

impl ChainMerge {
    fn new(
        files: Vec<(String, ShardReader<Unsealed<std::fs::File>>)>,
        cut: u64,
    ) -> Result<Self, BackupError> {
        let mut merge = ChainMerge {
            files: files.into_iter().map(|(n, r)| (n, r, None)).collect(),
            cut,
        };
        for i in 0..merge.files.len() {
            merge.advance(i)?;
        }
        Ok(merge)
    }

    /// Move file `i`'s head to its next record below the cut.
    fn advance(&mut self, i: usize) -> Result<(), BackupError> {
        let (name, reader, head) = &mut self.files[i];
        *head = loop {
            match reader.next_record().map_err(|e| e.in_file(name))? {
                // Versions at or past the cut are after the snapshot.
                Some(record) if record.version >= self.cut => continue,
                other => break other,
            }
        };
        Ok(())
    }

    /// The next key's newest version (a tombstone included), or `None` at the end.
    fn next_key(&mut self) -> Result<Option<Record>, BackupError> {
        let Some(key) = self
            .files
            .iter()
            .filter_map(|(_, _, head)| head.as_ref().map(|r| r.key.clone()))
            .min()
        else {
            return Ok(None);
        };
        let mut newest: Option<Record> = None;
        for i in 0..self.files.len() {
            // Within a file a key's versions are adjacent, newest first: the head
            // is this file's newest, and the rest of the key is skipped.
            let Some(head) = self.files[i].2.take_if(|r| r.key == key) else {
                continue;
            };
            if newest.as_ref().is_none_or(|n| head.version > n.version) {
                newest = Some(head);
            }
            loop {
                self.advance(i)?;
                if self.files[i].2.as_ref().is_none_or(|r| r.key != key) {
                    break;
                }
            }
        }
        Ok(newest)
    }
}

/// What a restore wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RestoreStats {
    pub keys: u64,
    /// Uncompressed key and value bytes written.
    pub bytes: u64,
}

/// Write the plan's snapshot into a new data directory at `dir` (which must not exist
/// or be empty) for a node of a new cluster, under `identity`, recording `origin` as
/// what it was restored from. `voters(shard)` names each shard's voters in the new
/// cluster: the node gets the shards it is a voter of, and no others (the new
/// cluster's placement, whatever the old one's was). `progress(shard)` after each
/// shard written.
pub fn write(
    dir: &Path,
    plan: &RestorePlan,
    fetched: &Fetched,
    identity: &NodeIdentity,
    origin: &str,
    voters: impl Fn(u32) -> Vec<u64>,
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
        let voters = voters(shard);
        if !voters.contains(&identity.node_id) {
            continue;
        }
        let cut = plan.snapshot.cuts.get(&shard).copied().ok_or_else(|| {
            BackupError::Corrupt(format!(
                "snapshot {} has no cut for shard {shard}",
                plan.snapshot.id
            ))
        })?;
        let mut files = Vec::new();
        for (manifest, spooled) in plan.chain.iter().zip(&fetched.files) {
            let name = format!("{}/shard-{shard}", manifest.backup_id);
            let path = spooled
                .get(&shard)
                .ok_or_else(|| BackupError::Missing(name.clone()))?;
            let file = std::fs::File::open(path).map_err(io("opening a spooled file"))?;
            let place = format!("{}/{}", manifest.backup_id, shard_file_name(shard));
            let file = Unsealed::new(file, manifest.key_id(), plan.key.as_ref(), &place)
                .map_err(|e| e.in_file(&name))?;
            let reader = ShardReader::new(file).map_err(|e| e.in_file(&name))?;
            files.push((name, reader));
        }
        let mut merge = ChainMerge::new(files, cut)?;
        // The store's loader takes an iterator; a read error ends it and is returned
        // after (the staging directory is then discarded).
        let mut failed = None;
        let live = std::iter::from_fn(|| loop {
            match merge.next_key() {
                Ok(Some(Record {
                    key,
                    version,
                    value: Some(value),
                })) => {
                    break Some(KeyVersion {
                        key,
                        version,
                        value: Some(value),
                    })
                }
                // Deleted at the snapshot: not restored.
                Ok(Some(_)) => continue,
                Ok(None) => break None,
                Err(e) => {
                    failed = Some(e);
                    break None;
                }
            }
        });
        let counted = live.inspect(|v| {
            stats.bytes += (v.key.len() + v.value.as_ref().map_or(0, Vec::len)) as u64;
        });
        let applied = AppliedState {
            index: cut,
            term: 1,
        };
        let loaded = store
            .shard_state(shard)?
            .load(counted, applied, cut, 10_000)?;
        if let Some(e) = failed {
            return Err(e);
        }
        stats.keys += loaded;
        store.raft_log(shard)?.start_at(cut, 1, voters)?;
        cairn_store::crash_point!("restore.shard.after");
        progress(shard);
    }
    store.set_identity(identity)?;
    store.set_restored_from(origin)?;
    store.flush()?;
    drop(store);
    // The new directory's entries, then the rename in its parent: once this returns,
    // a power loss leaves either no directory or the whole restored one.
    cairn_store::sync_dir(&staging).map_err(io("syncing the restored directory"))?;
    cairn_store::crash_point!("restore.rename.before");
    if dir.exists() {
        std::fs::remove_dir(dir).map_err(io("replacing the empty target directory"))?;
    }
    std::fs::rename(&staging, dir).map_err(io("moving the restored directory in place"))?;
    cairn_store::sync_parent_dir(dir).map_err(io("syncing the directory holding the restore"))?;
    Ok(stats)
}

fn staging_dir(dir: &Path) -> PathBuf {
    sibling(dir, ".restoring")
}

/// `dir` with `suffix` added to its last component: work space on the same file
/// system as the target, so the final rename is atomic and space is where it counts.
fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    dir.with_file_name(name)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::ShardWriter;
    use proptest::prelude::*;

    /// A chain's files as the backup writes them: file `i` holds the versions in its
    /// own range of `writes` (version, key, value-or-tombstone), sorted.
    fn files(dir: &Path, writes: &[(u64, u8, bool)], bounds: &[u64]) -> Vec<(String, PathBuf)> {
        let mut out = Vec::new();
        let mut low = 0;
        for (i, &high) in bounds.iter().enumerate() {
            let mut records: Vec<Record> = writes
                .iter()
                .filter(|(v, _, _)| (low..high).contains(v))
                .map(|&(version, key, live)| Record {
                    key: vec![b'k', key],
                    version,
                    value: live.then(|| version.to_be_bytes().to_vec()),
                })
                .collect();
            records.sort_by(|a, b| a.key.cmp(&b.key).then(b.version.cmp(&a.version)));
            let path = dir.join(format!("f{i}"));
            let mut w = ShardWriter::new(std::fs::File::create(&path).unwrap(), 0).unwrap();
            for r in &records {
                w.push(r).unwrap();
            }
            w.finish().unwrap();
            out.push((format!("f{i}"), path));
            low = high;
        }
        out
    }

    proptest! {
        #[test]
        fn the_merge_is_the_state_at_the_cut(
            keys in prop::collection::vec((0u8..12, any::<bool>()), 0..80),
            splits in prop::collection::vec(1u64..80, 0..4),
            cut in 1u64..100,
        ) {
            // Version i+1 is the i-th write, so versions are distinct, as in a shard.
            let writes: Vec<(u64, u8, bool)> = keys
                .iter()
                .enumerate()
                .map(|(i, &(k, live))| (i as u64 + 1, k, live))
                .collect();
            let mut bounds = splits;
            bounds.push(1_000);
            bounds.sort_unstable();
            bounds.dedup();
            let dir = tempfile::tempdir().unwrap();
            let readers = files(dir.path(), &writes, &bounds)
                .into_iter()
                .map(|(n, p)| {
                    let file = Unsealed::Plain(std::fs::File::open(p).unwrap());
                    (n, ShardReader::new(file).unwrap())
                })
                .collect();
            let mut merge = ChainMerge::new(readers, cut).unwrap();
            let mut got = Vec::new();
            while let Some(r) = merge.next_key().unwrap() {
                got.push((r.key, r.version, r.value.is_some()));
            }
            let mut model: BTreeMap<Vec<u8>, (u64, bool)> = BTreeMap::new();
            for &(version, key, live) in writes.iter().filter(|w| w.0 < cut) {
                model.insert(vec![b'k', key], (version, live));
            }
            let want: Vec<_> = model.into_iter().map(|(k, (v, l))| (k, v, l)).collect();
            prop_assert_eq!(got, want);
        }
    }
}
