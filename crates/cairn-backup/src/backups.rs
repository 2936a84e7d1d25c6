//! Taking backups from the running cluster: on request, on a schedule, and cleaning
//! up after backups that a node's death interrupted.
//!
//! A backup runs on one node and reads that node's own replicas: every node holds a
//! replica of every shard, and versions at or below a replica's applied index never
//! change, so reading below a snapshot's cut while writes go on gives exactly the
//! snapshot's state without stopping anything or asking a leader. The foreground
//! pays only the snapshot's alignment window; the read itself is throttled.
//!
//! The order of a backup is what makes a crash harmless: take (or resolve) the
//! snapshot, write every shard file, then the manifest, then mark the catalog record
//! done. Before the manifest the backup does not exist at its destination; a record
//! whose owner stops heart-beating is declared failed by the meta leader's sweeper,
//! and the conditional write of "done" fails if that happened first (the owner then
//! removes its manifest again).
//!
//! History the next incremental needs is kept by keeping the newest backup's snapshot
//! (one per destination and schedule): the history horizon never passes a retained
//! snapshot. A snapshot taken for a backup is deleted once a newer backup of the same
//! schedule at the same destination completes, or when its backup fails or is deleted.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use cairn_snapshot::registry::now_ms;
use cairn_snapshot::{Coordinator, Shards, SnapshotRecord, SnapshotState};
use cairn_store::{HistoryRange, NodeStore, StoreError};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::allowed::AllowedDestinations;
use crate::catalog::{BackupRecord, BackupState, Catalog, ScheduleState, Tracked};
use crate::destination::{Destination, S3Options, Upload};
use crate::error::BackupError;
use crate::format::Record;
use crate::manifest::{FileEntry, Manifest, ParentRef, SnapshotRef, MANIFEST_VERSION};
use crate::retention::{self, BackupSummary};
use crate::schedule::Schedule;
use crate::verify::read_manifest;
use crate::write::{encode_shard_into, put_manifest, shard_file_name, PartSink, Throttle};

/// How this node takes backups.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// Where a backup request without a destination goes.
    pub default_destination: String,
    /// Settings for `s3://` destinations.
    pub s3: S3Options,
    /// Read rate limit of one backup, in bytes per second; `None` is unlimited.
    pub rate_limit: Option<u64>,
    /// A running backup's owner writes its record at least this often.
    pub heartbeat: Duration,
    /// A running backup whose record was not written for this long is failed.
    pub stale_after: Duration,
    /// How long a backup waits for this node's replica to apply up to the cut.
    pub catch_up: Duration,
    /// The schedules the meta leader runs.
    pub schedules: Vec<Schedule>,
    /// Where a backup requested over the API may be written (the default destination
    /// and the schedules' destinations are added to it).
    pub allowed: AllowedDestinations,
}

impl Default for BackupConfig {
    fn default() -> Self {
        BackupConfig {
            default_destination: "./backups".into(),
            s3: S3Options::default(),
            rate_limit: None,
            heartbeat: Duration::from_secs(2),
            stale_after: Duration::from_secs(30),
            catch_up: Duration::from_secs(30),
            schedules: Vec::new(),
            allowed: AllowedDestinations::default(),
        }
    }
}

/// What a caller asks for.
#[derive(Debug, Clone, Default)]
pub struct BackupRequest {
    /// `None`: the configured default.
    pub destination: Option<String>,
    /// Extend the newest backup of this cluster at the destination.
    pub incremental: bool,
    /// Back up this snapshot (id or name) instead of taking a new one.
    pub snapshot: Option<String>,
}

/// A schedule as `GET /v1/backups/schedules` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleStatus {
    pub name: String,
    pub cron: String,
    pub destination: String,
    /// Next tick, ms since the Unix epoch.
    pub next_run_ms: Option<u64>,
    #[serde(flatten)]
    pub state: ScheduleState,
}

/// The backup side of a node.
pub struct Backups<S: Shards> {
    shards: Arc<S>,
    snapshots: Arc<Coordinator<S>>,
    store: NodeStore,
    node: u64,
    cluster_id: String,
    config: BackupConfig,
    tasks: TaskTracker,
    cancel: CancellationToken,
    /// When this process started: running records of this node older than that
    /// belong to a run that is gone.
    booted_ms: u64,
}

/// What a running backup is doing, for its record.
struct Job {
    tracked: Tracked<BackupRecord>,
    dest: Destination,
}

impl<S: Shards> Backups<S> {
    pub fn new(
        shards: Arc<S>,
        snapshots: Arc<Coordinator<S>>,
        store: NodeStore,
        node: u64,
        cluster_id: String,
        config: BackupConfig,
    ) -> Arc<Self> {
        Arc::new(Backups {
            shards,
            snapshots,
            store,
            node,
            cluster_id,
            config,
            tasks: TaskTracker::new(),
            cancel: CancellationToken::new(),
            booted_ms: now_ms(),
        })
    }

    fn catalog(&self) -> Catalog<'_, S> {
        Catalog::new(&self.shards)
    }

    /// The configured roots, plus the default destination and every schedule's.
    fn allowed(&self) -> AllowedDestinations {
        let mut roots = vec![self.config.default_destination.as_str()];
        roots.extend(
            self.config
                .schedules
                .iter()
                .map(|s| s.spec().destination.as_str()),
        );
        self.config.allowed.with(roots)
    }

    fn destination(&self, url: &str) -> Result<Destination, BackupError> {
        Destination::parse(url, &self.config.s3)
    }

    /// Start a backup: check the request, record it, and run it in the background.
    /// Returns the record as created (running).
    pub async fn start(
        self: &Arc<Self>,
        request: BackupRequest,
    ) -> Result<BackupRecord, BackupError> {
        let url = request
            .destination
            .clone()
            .unwrap_or_else(|| self.config.default_destination.clone());
        // Every check comes before anything is created: a refused request leaves
        // no directory behind.
        self.allowed().check(&url)?;
        let existing = Destination::parse_existing(&url, &self.config.s3)?;
        let given = match &request.snapshot {
            Some(name) => Some(self.done_snapshot(name).await?),
            None => None,
        };
        if request.incremental {
            let parent = match &existing {
                Some(dest) => self.find_parent(dest, None, given.as_ref()).await?,
                None => None,
            };
            if parent.is_none() {
                return Err(BackupError::Invalid(format!(
                    "no backup of this cluster at {url} to extend; take a full backup first"
                )));
            }
        }
        let dest = match existing {
            Some(dest) => dest,
            None => self.destination(&url)?,
        };
        let now = now_ms();
        let node = self.node;
        let created = self
            .catalog()
            .create(
                |seq| BackupRecord {
                    snapshot: given.as_ref().map(|s| s.id),
                    ..BackupRecord::running(seq, now, node, &url, request.incremental)
                },
                |_| Ok(Vec::new()),
            )
            .await?
            .ok_or_else(|| BackupError::Superseded("the backup could not be recorded".into()))?;
        let record = created.value.clone();
        self.spawn(
            Job {
                tracked: created,
                dest,
            },
            given,
        );
        Ok(record)
    }

    fn spawn(self: &Arc<Self>, job: Job, given: Option<SnapshotRecord>) {
        let this = self.clone();
        let span = tracing::info_span!("backup", id = %job.tracked.value.id, node = self.node);
        self.tasks.spawn(
            async move {
                let id = job.tracked.value.id.clone();
                match this.run(job, given).await {
                    Ok(record) => tracing::info!(
                        id,
                        bytes = record.progress.bytes,
                        keys = record.progress.keys,
                        "backup done"
                    ),
                    Err(e) => tracing::warn!(id, error = %e, "backup failed"),
                }
            }
            .instrument(span),
        );
    }

    /// A completed snapshot by id or name.
    async fn done_snapshot(&self, name: &str) -> Result<SnapshotRecord, BackupError> {
        let record = self.snapshots.registry().lookup(name).await?;
        match record.state {
            SnapshotState::Done { .. } => Ok(record),
            _ => Err(BackupError::Invalid(format!(
                "snapshot {name} is not complete; only a completed snapshot can be backed up"
            ))),
        }
    }

    /// The backup an incremental at `dest` extends: the newest one of this cluster (of
    /// `schedule`, if given) whose snapshot lies at or below `upto` on every shard.
    async fn find_parent(
        &self,
        dest: &Destination,
        schedule: Option<&str>,
        upto: Option<&SnapshotRecord>,
    ) -> Result<Option<Manifest>, BackupError> {
        let mut ids = dest.list_backups().await?;
        ids.reverse();
        for id in ids {
            let manifest = match read_manifest(dest, &id).await {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(id, error = %e, "skipping an unreadable backup");
                    continue;
                }
            };
            if manifest.cluster_id != self.cluster_id
                || (schedule.is_some() && manifest.schedule.as_deref() != schedule)
            {
                continue;
            }
            let below = match upto.map(|s| &s.state) {
                Some(SnapshotState::Done { cuts }) => manifest
                    .snapshot
                    .cuts
                    .iter()
                    .all(|(s, c)| cuts.get(s).is_some_and(|own| c <= own)),
                _ => true,
            };
            if below {
                return Ok(Some(manifest));
            }
        }
        Ok(None)
    }

    /// Run a recorded backup to its end, recording the outcome.
    async fn run(
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
    async fn fail(&self, tracked: &Tracked<BackupRecord>, dest: &Destination, error: &str) {
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

    async fn release_snapshot(&self, id: Option<u64>) -> bool {
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
    async fn record(
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

    async fn write_backup(
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
            self.wait_applied(shard, upto).await?;
            let entry = self.write_shard(job, &id, shard, range).await?;
            self.record(job, |r| {
                r.progress.shards_done += 1;
                r.progress.bytes += entry.bytes;
                r.progress.keys += entry.keys;
                r.progress.versions += entry.versions;
            })
            .await?;
            files.push(entry);
        }
        let manifest = Manifest {
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
        };
        cairn_store::crash_point!("backup.manifest.before");
        put_manifest(&job.dest, &manifest).await?;
        // Published at the destination, not yet recorded done in the catalog.
        cairn_store::crash_point!("backup.manifest.after");
        Ok(manifest)
    }

    /// Completed snapshots between `parent` and `own` on every shard: the points an
    /// incremental can restore to besides its own.
    async fn covered(
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
    async fn wait_applied(&self, shard: u32, index: u64) -> Result<(), BackupError> {
        let state = self.store.shard_state(shard)?;
        let deadline = tokio::time::Instant::now() + self.config.catch_up;
        while state.applied()?.index < index {
            if tokio::time::Instant::now() > deadline {
                return Err(BackupError::Invalid(format!(
                    "this node's replica of shard {shard} did not reach the snapshot's cut in {:?}",
                    self.config.catch_up
                )));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Read and encode one shard file off the runtime and stream it to the
    /// destination as it is produced, heart-beating meanwhile. Nothing of the file is
    /// visible until it is complete; on any error it is aborted.
    async fn write_shard(
        &self,
        job: &mut Job,
        id: &str,
        shard: u32,
        range: HistoryRange,
    ) -> Result<FileEntry, BackupError> {
        let state = self.store.shard_state(shard)?;
        let rate = self.config.rate_limit;
        let (sink, mut parts) = PartSink::new(Upload::PART);
        let encoder = tokio::task::spawn_blocking(move || {
            let mut throttle = Throttle::new(rate);
            let records = state.history(range).map(|r| {
                r.map(|v| Record {
                    key: v.key,
                    version: v.version,
                    value: v.value,
                })
                .map_err(|e| match e {
                    StoreError::HistoryCollected { horizon } => BackupError::HistoryGone(format!(
                        "shard {shard}: history below version {horizon} has been collected; the parent backup's snapshot is gone, take a full backup"
                    )),
                    other => BackupError::Local(other),
                })
            });
            encode_shard_into(shard, records, &mut throttle, sink)
        });
        let name = format!("{id}/{}", shard_file_name(shard));
        let mut upload = job.dest.upload(&name, Upload::PART);
        let streamed = self.stream_parts(job, &mut parts, &mut upload).await;
        // Closing the channel stops an encoder whose upload failed.
        drop(parts);
        let encoded = encoder
            .await
            .map_err(|e| BackupError::Invalid(format!("backup encoder: {e}")))
            .and_then(|r| r);
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
    async fn stream_parts(
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
    async fn after_done(&self, done: &BackupRecord, dest: &Destination) {
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
    async fn apply_retention(
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

    /// A backup's record.
    pub async fn get(&self, id: &str) -> Result<BackupRecord, BackupError> {
        self.catalog()
            .get(id)
            .await?
            .map(|t| t.value)
            .ok_or_else(|| BackupError::NotFound(format!("no backup {id}")))
    }

    /// Every backup's record, newest first.
    pub async fn list(&self) -> Result<Vec<BackupRecord>, BackupError> {
        Ok(self
            .catalog()
            .list()
            .await?
            .into_iter()
            .map(|t| t.value)
            .collect())
    }

    /// The configured schedules and their state.
    pub async fn schedules(&self) -> Result<Vec<ScheduleStatus>, BackupError> {
        let mut out = Vec::new();
        let now = now_ms();
        for schedule in &self.config.schedules {
            let spec = schedule.spec();
            let state = self
                .catalog()
                .schedule(&spec.name)
                .await?
                .map(|t| t.value)
                .unwrap_or_default();
            out.push(ScheduleStatus {
                name: spec.name.clone(),
                cron: spec.cron.clone(),
                destination: spec.destination.clone(),
                next_run_ms: schedule.next_after(now.max(state.last_tick_ms)),
                state,
            });
        }
        Ok(out)
    }

    /// On the meta leader: run each schedule's due tick, exactly once cluster-wide.
    pub async fn run_schedules(self: Arc<Self>, cancel: CancellationToken) {
        if self.config.schedules.is_empty() {
            return;
        }
        let mut every = tokio::time::interval(Duration::from_millis(500));
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if !self.shards.leads_meta() {
                continue;
            }
            for schedule in &self.config.schedules {
                if let Err(e) = self.schedule_round(schedule).await {
                    tracing::debug!(schedule = %schedule.spec().name, error = %e, "schedule round");
                }
            }
        }
    }

    async fn schedule_round(self: &Arc<Self>, schedule: &Schedule) -> Result<(), BackupError> {
        let spec = schedule.spec();
        let catalog = self.catalog();
        let now = now_ms();
        let Some(current) = catalog.schedule(&spec.name).await? else {
            // First sighting: start counting ticks from now.
            let state = ScheduleState {
                last_tick_ms: now,
                ..ScheduleState::default()
            };
            catalog
                .write(vec![catalog.schedule_op(&spec.name, &state, None)?])
                .await?;
            return Ok(());
        };
        let Some(tick) = schedule.due(current.value.last_tick_ms, now) else {
            return Ok(());
        };
        let dest = self.destination(&spec.destination)?;
        let incremental = match self.find_parent(&dest, Some(&spec.name), None).await? {
            Some(parent) => {
                let root = self.chain_root_ms(&dest, &parent).await;
                !schedule.wants_full(root, now)
            }
            None => false,
        };
        let node = self.node;
        let url = spec.destination.clone();
        let name = spec.name.clone();
        let created = catalog
            .create(
                |seq| BackupRecord {
                    schedule: Some(name.clone()),
                    tick_ms: Some(tick),
                    ..BackupRecord::running(seq, now, node, &url, incremental)
                },
                |record| {
                    let state = ScheduleState {
                        last_tick_ms: tick,
                        last_backup: Some(record.id.clone()),
                        last_lag_ms: Some(now.saturating_sub(tick)),
                        ..current.value.clone()
                    };
                    Ok(vec![catalog.schedule_op(
                        &spec.name,
                        &state,
                        Some(current.version),
                    )?])
                },
            )
            .await?;
        let Some(created) = created else {
            // Another node claimed this tick first.
            return Ok(());
        };
        tracing::info!(schedule = %spec.name, id = %created.value.id, tick, incremental, "scheduled backup");
        let this = self.clone();
        let span =
            tracing::info_span!("scheduled_backup", schedule = %spec.name, id = %created.value.id);
        let name = spec.name.clone();
        self.tasks.spawn(
            async move {
                let job = Job {
                    tracked: created,
                    dest,
                };
                let result = match this.run(job, None).await {
                    Ok(_) => "done".to_owned(),
                    Err(e) => format!("failed: {e}"),
                };
                this.note_result(&name, result).await;
            }
            .instrument(span),
        );
        Ok(())
    }

    /// The snapshot time of the full backup a chain starts from.
    async fn chain_root_ms(&self, dest: &Destination, tip: &Manifest) -> Option<u64> {
        let mut current = tip.clone();
        for _ in 0..10_000 {
            match &current.parent {
                None => return Some(rfc3339_ms(&current.snapshot.time)),
                Some(p) => current = read_manifest(dest, &p.backup_id).await.ok()?,
            }
        }
        None
    }

    async fn note_result(&self, schedule: &str, result: String) {
        for _ in 0..8 {
            let catalog = self.catalog();
            let Ok(Some(current)) = catalog.schedule(schedule).await else {
                return;
            };
            let state = ScheduleState {
                last_result: Some(result.clone()),
                last_finished_ms: Some(now_ms()),
                ..current.value
            };
            let Ok(op) = catalog.schedule_op(schedule, &state, Some(current.version)) else {
                return;
            };
            if matches!(catalog.write(vec![op]).await, Ok(true)) {
                return;
            }
        }
    }

    /// Fail running backups nobody is writing any more: on the meta leader, those
    /// whose owner went silent; on every node once at start, its own (a restart
    /// ended them).
    pub async fn run_sweeper(self: Arc<Self>, cancel: CancellationToken) {
        let mut own_swept = false;
        let mut every = tokio::time::interval(self.config.heartbeat);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = every.tick() => {}
            }
            if !own_swept {
                own_swept = self.sweep(true).await.is_ok();
            }
            if self.shards.leads_meta() {
                if let Err(e) = self.sweep(false).await {
                    tracing::debug!(error = %e, "backup sweep");
                }
            }
        }
    }

    async fn sweep(&self, own: bool) -> Result<(), BackupError> {
        let now = now_ms();
        let stale = self.config.stale_after.as_millis() as u64;
        for tracked in self.catalog().list().await? {
            let r = &tracked.value;
            if !r.is_running() {
                continue;
            }
            let reason = if own {
                // Started by an earlier run of this node: nothing writes it now.
                if r.node != self.node || r.started_ms >= self.booted_ms {
                    continue;
                }
                format!("node {} restarted while writing it", r.node)
            } else {
                if r.updated_ms + stale > now {
                    continue;
                }
                format!(
                    "node {} stopped writing it (no progress for {} s)",
                    r.node,
                    (now - r.updated_ms) / 1000
                )
            };
            tracing::warn!(id = %r.id, reason, "failing an abandoned backup");
            match self.destination(&r.destination) {
                Ok(dest) => self.fail(&tracked, &dest, &reason).await,
                Err(e) => tracing::warn!(id = %r.id, error = %e, "cannot reach its destination"),
            }
        }
        Ok(())
    }

    /// Stop running backups (they are recorded failed) and wait for their tasks.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

fn snapshot_ref(record: &SnapshotRecord, cuts: &BTreeMap<u32, u64>) -> SnapshotRef {
    SnapshotRef {
        id: record.id,
        time: record.time_rfc3339(),
        cuts: cuts.clone(),
    }
}

/// Milliseconds of an RFC 3339 label (0 if it does not parse: oldest possible).
pub fn rfc3339_ms(time: &str) -> u64 {
    humantime::parse_rfc3339_weak(time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}
