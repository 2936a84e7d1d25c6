//! One backup's job: resolve its snapshot and parent, write every shard file from
//! this node's replica of the shard or, for a shard it holds none of, from the
//! shard's replicas on other nodes, then the manifest, then record it done; afterwards, apply
//! the destination's retention.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;
use cairn_cluster::clock::now_ms;
use cairn_cluster::Shards;
use cairn_raft::ShardError;
use cairn_snapshot::{SnapshotRecord, SnapshotState};
use cairn_store::{HistoryRange, KeyVersion, PageLimit, ShardState, StoreError};
use tokio::sync::mpsc;
use tracing::Instrument;

use crate::catalog::{BackupRecord, BackupState, Tracked};
use crate::destination::{Destination, Upload};
use crate::error::BackupError;
use crate::format::Record;
use crate::manifest::{FileEntry, Manifest, ParentRef, SnapshotRef, MANIFEST_VERSION};
use crate::retention::{self, BackupSummary};
use crate::schedule::Schedule;
use crate::verify::read_manifest;
use crate::write::{encode_shard_into, put_manifest, shard_file_name, PartSink};

use super::{rfc3339_ms, Backups, Job};

/// Versions a page read from another node's replica carries at most (and how many
/// wait in the channel to the encoder).
const REMOTE_PAGE_ITEMS: usize = 4096;

/// A version read from another node's replica, or why the read stopped.
type RemoteVersion = Result<KeyVersion, ShardError>;

/// Where a shard file's versions come from.
pub(super) enum Source {
    /// This node's replica, read directly.
    Local(ShardState),
    /// Pages from the shard's replicas on other nodes.
    Remote(mpsc::Receiver<RemoteVersion>),
}

impl<S: Shards> Backups<S> {
    /// Run a recorded backup to its end, recording the outcome.
    pub(super) async fn run(
        self: &Arc<Self>,
        mut job: Job,
        given: Option<SnapshotRecord>,
    ) -> Result<BackupRecord, BackupError> {
        let cancel = self.cancel.clone();
        let outcome = tokio::select! {
            outcome = self.write_backup(&mut job, given) => outcome,
            () = cancel.cancelled() => Err(BackupError::Superseded("the node shut down".into())),
        };
        match outcome {
            Ok(manifest) => {
                let mut record = job.tracked.value.clone();
                record.state = BackupState::Done;
                record.finished_ms = Some(now_ms());
                record.updated_ms = now_ms();
                match self.catalog().update(&job.tracked, record).await {
                    Ok(done) => {
                        self.after_done(&done.value, &job.dest).await;
                        Ok(done.value)
                    }
                    Err(e) => {
                        // Declared failed while we finished: it must not look good.
                        let _ = job.dest.delete_backup(&manifest.backup_id).await;
                        Err(e)
                    }
                }
            }
            Err(e) => {
                self.fail(&job.tracked, &job.dest, &e.to_string()).await;
                Err(e)
            }
        }
    }

    /// Mark a backup failed (if still running as `tracked`), remove what it stored,
    /// and release its snapshot.
    pub(super) async fn fail(
        &self,
        tracked: &Tracked<BackupRecord>,
        dest: &Destination,
        error: &str,
    ) {
        let mut record = tracked.value.clone();
        record.state = BackupState::Failed {
            error: error.to_owned(),
        };
        record.finished_ms = Some(now_ms());
        record.updated_ms = now_ms();
        let _ = dest.delete_backup(&record.id).await;
        if record.owns_snapshot && !record.snapshot_released {
            record.snapshot_released = self.release_snapshot(record.snapshot).await;
        }
        if let Err(e) = self.catalog().update(tracked, record).await {
            tracing::warn!(error = %e, "could not record a backup's failure");
        }
    }

    pub(super) async fn release_snapshot(&self, id: Option<u64>) -> bool {
        let Some(id) = id else {
            return true;
        };
        let registry = self.snapshots.registry();
        match registry.lookup(&id.to_string()).await {
            Ok(record) => registry.delete(&record).await.is_ok(),
            Err(cairn_snapshot::SnapshotError::NotFound(_)) => true,
            Err(_) => false,
        }
    }

    /// Write a backup's record with `change` applied, keeping `job` current.
    pub(super) async fn record(
        &self,
        job: &mut Job,
        change: impl FnOnce(&mut BackupRecord),
    ) -> Result<(), BackupError> {
        let mut record = job.tracked.value.clone();
        change(&mut record);
        record.updated_ms = now_ms();
        job.tracked = self.catalog().update(&job.tracked, record).await?;
        Ok(())
    }

    pub(super) async fn write_backup(
        &self,
        job: &mut Job,
        given: Option<SnapshotRecord>,
    ) -> Result<Manifest, BackupError> {
        let id = job.tracked.value.id.clone();
        let schedule = job.tracked.value.schedule.clone();
        // Resolve the parent before taking the snapshot, and hold it: its snapshot is
        // the newest at the destination, so its history is still retained.
        let parent = if job.tracked.value.incremental {
            let found = self
                .find_parent(&job.dest, schedule.as_deref(), given.as_ref())
                .await?;
            Some(found.ok_or_else(|| {
                BackupError::Invalid(format!(
                    "no backup of this cluster at {} to extend; take a full backup first",
                    job.dest.url()
                ))
            })?)
        } else {
            None
        };
        let snapshot = match given {
            Some(s) => s,
            None => {
                let name = format!("backup-{id}");
                let taken = self.snapshots.take(Some(&name)).await?;
                self.record(job, |r| {
                    r.snapshot = Some(taken.id);
                    r.owns_snapshot = true;
                })
                .await?;
                taken
            }
        };
        let SnapshotState::Done { cuts } = &snapshot.state else {
            return Err(BackupError::Invalid(format!(
                "snapshot {} is not complete",
                snapshot.id
            )));
        };
        if let Some(p) = &parent {
            // A chain opens with one key: restore takes one.
            let own = self.config.key.as_ref().map(|k| k.id());
            if p.key_id() != own.as_deref() {
                return Err(BackupError::Invalid(format!(
                    "the newest backup at the destination ({}) is {}, this node's backups {}: an incremental must use its parent's key; take a full backup",
                    p.backup_id,
                    p.key_id().map_or("not encrypted".into(), |k| format!("encrypted with key {k}")),
                    own.map_or("are not encrypted".into(), |k| format!("use key {k}")),
                )));
            }
            let behind = p
                .snapshot
                .cuts
                .iter()
                .any(|(s, c)| cuts.get(s).is_none_or(|own| c > own));
            if behind {
                return Err(BackupError::Invalid(
                    "the newest backup at the destination is newer than this snapshot".into(),
                ));
            }
        }
        let parent_id = parent.as_ref().map(|p| p.backup_id.clone());
        let shards = self.shards.shard_count();
        self.record(job, |r| {
            r.parent = parent_id.clone();
            r.progress.shards_total = shards;
        })
        .await?;
        let covered = match &parent {
            Some(p) => self.covered(&p.snapshot, &snapshot, cuts).await?,
            None => Vec::new(),
        };
        let mut files = Vec::new();
        for shard in 0..shards {
            // The snapshot holds the versions below each cut; a cut is a marker's log
            // index, so never 0.
            let below = |cuts: &BTreeMap<u32, u64>, whose: &str| {
                cuts.get(&shard)
                    .and_then(|c| c.checked_sub(1))
                    .ok_or_else(|| {
                        BackupError::Corrupt(format!("{whose} has no valid cut for shard {shard}"))
                    })
            };
            let upto = below(cuts, &format!("snapshot {}", snapshot.id))?;
            let range = match &parent {
                None => HistoryRange::StateAt { at: upto },
                Some(p) => HistoryRange::Between {
                    after: below(&p.snapshot.cuts, &format!("backup {}", p.backup_id))?,
                    upto,
                },
            };
            // Read the local replica when this node holds one; otherwise the shard's
            // replicas serve it in pages (from one that has applied the cut).
            let source = if self.shards.hosts(shard) {
                self.wait_applied(shard, upto).await?;
                Source::Local(self.store.shard_state(shard)?)
            } else {
                Source::Remote(self.page_history(shard, range))
            };
            let entry = self.write_shard(job, &id, shard, range, source).await?;
            self.record(job, |r| {
                r.progress.shards_done += 1;
                r.progress.bytes += entry.bytes;
                r.progress.keys += entry.keys;
                r.progress.versions += entry.versions;
            })
            .await?;
            files.push(entry);
        }
        let mut manifest = Manifest {
            format_version: MANIFEST_VERSION,
            cluster_id: self.cluster_id.clone(),
            backup_id: id,
            snapshot: snapshot_ref(&snapshot, cuts),
            parent: parent.map(|p| ParentRef {
                backup_id: p.backup_id,
                cuts: p.snapshot.cuts,
            }),
            shards,
            files,
            schedule,
            covered,
            encryption: None,
            mac: None,
        };
        if let Some(key) = &self.config.key {
            manifest.seal(key);
        }
        cairn_store::crash_point!("backup.manifest.before");
        put_manifest(&job.dest, &manifest).await?;
        // Published at the destination, not yet recorded done in the catalog.
        cairn_store::crash_point!("backup.manifest.after");
        Ok(manifest)
    }

    /// Completed snapshots between `parent` and `own` on every shard: the points an
    /// incremental can restore to besides its own.
    pub(super) async fn covered(
        &self,
        parent: &SnapshotRef,
        own: &SnapshotRecord,
        cuts: &BTreeMap<u32, u64>,
    ) -> Result<Vec<SnapshotRef>, BackupError> {
        let registry = self.snapshots.registry();
        let mut covered = Vec::new();
        let mut before = Some(own.id);
        'pages: loop {
            let (page, _) = registry.list(before, 500).await?;
            let Some(last) = page.last() else {
                break;
            };
            before = Some(last.id);
            for record in &page {
                if record.id <= parent.id {
                    break 'pages;
                }
                let SnapshotState::Done { cuts: theirs } = &record.state else {
                    continue;
                };
                let inside = theirs.iter().all(|(s, c)| {
                    parent.cuts.get(s).is_some_and(|p| p <= c)
                        && cuts.get(s).is_some_and(|own| c <= own)
                });
                if inside && theirs.len() == cuts.len() {
                    covered.push(snapshot_ref(record, theirs));
                }
            }
        }
        covered.reverse();
        Ok(covered)
    }

    /// Wait until this node's replica of `shard` has applied `index`.
    pub(super) async fn wait_applied(&self, shard: u32, index: u64) -> Result<(), BackupError> {
        let catch_up = self.config.catch_up;
        if self.shards.applied_here(shard, index, catch_up).await {
            return Ok(());
        }
        Err(BackupError::Invalid(format!(
            "this node's replica of shard {shard} did not reach the snapshot's cut in {catch_up:?}"
        )))
    }

    /// Fetch `shard`'s history in pages from its replicas on other nodes, in order,
    /// into a channel the encoder reads (each page is asked of the shard's leader,
    /// which serves it once it has applied the range). A failure is the last item.
    fn page_history(&self, shard: u32, range: HistoryRange) -> mpsc::Receiver<RemoteVersion> {
        let (tx, rx) = mpsc::channel(REMOTE_PAGE_ITEMS);
        let shards = self.shards.clone();
        let limit = PageLimit {
            items: REMOTE_PAGE_ITEMS,
            bytes: shards.page_bytes(),
        };
        let span = tracing::info_span!("backup_remote_shard", shard);
        tokio::spawn(
            async move {
                let mut after = None;
                loop {
                    let (versions, more) = match shards
                        .history_page(shard, range, after.clone(), limit)
                        .await
                    {
                        Ok(page) => page,
                        Err(e) => {
                            let _ = tx.send(Err(e)).await;
                            return;
                        }
                    };
                    for v in versions {
                        after = Some((v.key.clone(), v.version));
                        if tx.send(Ok(v)).await.is_err() {
                            return; // The encoder stopped.
                        }
                    }
                    if !more {
                        return;
                    }
                }
            }
            .instrument(span),
        );
        rx
    }

    /// Read and encode one shard file off the runtime and stream it to the
    /// destination as it is produced, heart-beating meanwhile. Nothing of the file is
    /// visible until it is complete; on any error it is aborted.
    pub(super) async fn write_shard(
        &self,
        job: &mut Job,
        id: &str,
        shard: u32,
        range: HistoryRange,
        source: Source,
    ) -> Result<FileEntry, BackupError> {
        let mut throttle = self.throttle.clone();
        let key = self.config.key.clone();
        let backup_id = id.to_owned();
        let (sink, mut parts) = PartSink::new(Upload::PART);
        let gone = move |horizon: u64| {
            BackupError::HistoryGone(format!(
                "shard {shard}: history below version {horizon} has been collected; the parent backup's snapshot is gone, take a full backup"
            ))
        };
        let encoder =
            crate::priority::behind_foreground(format!("backup-shard-{shard}"), move || {
                let versions: Box<dyn Iterator<Item = Result<KeyVersion, BackupError>>> =
                    match source {
                        Source::Local(state) => Box::new(state.history(range).map(move |r| {
                            r.map_err(|e| match e {
                                StoreError::HistoryCollected { horizon } => gone(horizon),
                                other => BackupError::Local(other),
                            })
                        })),
                        // The encoder runs on its own thread, outside the runtime, so
                        // it may block on the channel.
                        Source::Remote(mut rx) => Box::new(
                            std::iter::from_fn(move || rx.blocking_recv()).map(move |r| {
                                r.map_err(|e| match e {
                                    ShardError::HistoryCollected { horizon, .. } => gone(horizon),
                                    other => BackupError::Remote(other),
                                })
                            }),
                        ),
                    };
                let records = versions.map(|r| {
                    r.map(|v| Record {
                        key: v.key,
                        version: v.version,
                        value: v.value,
                    })
                });
                let seal = key.as_ref().map(|key| (key, backup_id.as_str()));
                encode_shard_into(shard, records, &mut throttle, sink, seal)
            });
        let name = format!("{id}/{}", shard_file_name(shard));
        let mut upload = job.dest.upload(&name, Upload::PART);
        let streamed = self.stream_parts(job, &mut parts, &mut upload).await;
        // Closing the channel stops an encoder whose upload failed.
        drop(parts);
        let encoded = encoder.await;
        let entry = match (streamed, encoded) {
            (Ok(()), Ok(entry)) => entry,
            (Err(e), _) | (Ok(()), Err(e)) => {
                upload.abort().await;
                return Err(e);
            }
        };
        cairn_store::crash_point!("backup.shard_file.before");
        upload.finish().await?;
        cairn_store::crash_point!("backup.shard_file.after");
        Ok(entry)
    }

    /// Push an encoder's parts into `upload` until it has sent the last one.
    pub(super) async fn stream_parts(
        &self,
        job: &mut Job,
        parts: &mut mpsc::Receiver<Bytes>,
        upload: &mut Upload,
    ) -> Result<(), BackupError> {
        let mut beat = tokio::time::interval(self.config.heartbeat);
        beat.tick().await;
        loop {
            tokio::select! {
                part = parts.recv() => match part {
                    Some(part) => upload.push(part).await?,
                    None => return Ok(()),
                },
                _ = beat.tick() => self.record(job, |_| {}).await?,
            }
        }
    }

    /// After a backup completed: release the snapshots of older backups at the same
    /// destination (no incremental will start from them), then apply its schedule's
    /// retention.
    pub(super) async fn after_done(&self, done: &BackupRecord, dest: &Destination) {
        match self.catalog().list().await {
            Ok(records) => {
                for old in records {
                    let r = &old.value;
                    // Same destination and schedule: the chains this one continues.
                    let superseded = r.id != done.id
                        && r.destination == done.destination
                        && r.schedule == done.schedule
                        && r.owns_snapshot
                        && !r.snapshot_released
                        && r.state == BackupState::Done;
                    if superseded && self.release_snapshot(r.snapshot).await {
                        let mut released = r.clone();
                        released.snapshot_released = true;
                        let _ = self.catalog().update(&old, released).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e, "could not release older backups' snapshots"),
        }
        if let Some(name) = &done.schedule {
            if let Some(schedule) = self
                .config
                .schedules
                .iter()
                .find(|s| &s.spec().name == name)
            {
                if let Err(e) = self.apply_retention(schedule, dest).await {
                    tracing::warn!(schedule = %name, error = %e, "retention failed");
                }
            }
        }
    }

    /// Delete the schedule's backups that its policy no longer keeps (never a parent
    /// of a kept one), children first.
    pub(super) async fn apply_retention(
        &self,
        schedule: &Schedule,
        dest: &Destination,
    ) -> Result<(), BackupError> {
        let spec = schedule.spec();
        let mut summaries = Vec::new();
        for id in dest.list_backups().await? {
            let Ok(m) = read_manifest(dest, &id).await else {
                continue;
            };
            if m.cluster_id != self.cluster_id || m.schedule.as_deref() != Some(spec.name.as_str())
            {
                continue;
            }
            summaries.push(BackupSummary {
                id: m.backup_id.clone(),
                time_ms: rfc3339_ms(&m.snapshot.time),
                parent: m.parent.map(|p| p.backup_id),
            });
        }
        let plan = retention::plan(&summaries, &spec.policy(), now_ms());
        if plan.delete.is_empty() {
            return Ok(());
        }
        let records = self.catalog().list().await?;
        for id in &plan.delete {
            dest.delete_backup(id).await?;
            tracing::info!(schedule = %spec.name, id, "retention deleted a backup");
            if let Some(tracked) = records.iter().find(|r| &r.value.id == id) {
                let mut record = tracked.value.clone();
                record.deleted = true;
                if record.owns_snapshot && !record.snapshot_released {
                    record.snapshot_released = self.release_snapshot(record.snapshot).await;
                }
                let _ = self.catalog().update(tracked, record).await;
            }
        }
        Ok(())
    }
}

pub(super) fn snapshot_ref(record: &SnapshotRecord, cuts: &BTreeMap<u32, u64>) -> SnapshotRef {
    SnapshotRef {
        id: record.id,
        time: record.time_rfc3339(),
        cuts: cuts.clone(),
    }
}
