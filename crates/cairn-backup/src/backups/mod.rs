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
//!
//! Files: this one takes requests and answers reads of the catalog; `job.rs` runs one
//! backup and applies retention after it; `scheduler.rs` fires schedules on the meta
//! leader; `sweeper.rs` fails what dead owners left.

use std::sync::Arc;
use std::time::Duration;

use cairn_cluster::clock::now_ms;
use cairn_cluster::Shards;
use cairn_snapshot::{Coordinator, SnapshotRecord, SnapshotState};
use cairn_store::NodeStore;
use serde::Serialize;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::allowed::AllowedDestinations;
use crate::catalog::{BackupRecord, Catalog, ScheduleState, Tracked};
use crate::destination::{Destination, S3Options};
use crate::error::BackupError;
use crate::manifest::Manifest;
use crate::schedule::Schedule;
use crate::verify::read_manifest;

mod job;
mod scheduler;
mod sweeper;

/// How this node takes backups.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    /// Where a backup request without a destination goes.
    pub default_destination: String,
    /// Settings for `s3://` destinations.
    pub s3: S3Options,
    /// Read rate limit of all the backups a node runs together, in bytes per second;
    /// `None` is unlimited.
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
    /// Encrypt backups under this key (files sealed, manifests signed); `None`:
    /// backups are written in the clear.
    pub key: Option<crate::seal::BackupKey>,
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
            key: None,
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
    /// The node's one read throttle, shared by every backup it runs.
    throttle: crate::write::Throttle,
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
            throttle: crate::write::Throttle::new(config.rate_limit),
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
        // One running backup per destination: a client cannot pile up backups that
        // compete for the same bucket or disk. Only a live one counts (its owner
        // wrote its record within a few heartbeats): one whose node crashed holds
        // nothing up while the sweeper gets round to failing it. (Checked against
        // the catalog, not locked: two requests racing on two nodes may both start.)
        let live_since = now_ms().saturating_sub(3 * self.config.heartbeat.as_millis() as u64);
        if let Some(running) = self.catalog().list().await?.into_iter().find(|r| {
            r.value.is_running() && r.value.destination == url && r.value.updated_ms >= live_since
        }) {
            return Err(BackupError::Busy(format!(
                "backup {} to {url} is still running; wait for it (GET /v1/backups/{})",
                running.value.id, running.value.id
            )));
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

    /// Stop running backups (they are recorded failed) and wait for their tasks.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        self.tasks.close();
        self.tasks.wait().await;
    }
}

/// Milliseconds of an RFC 3339 label (0 if it does not parse: oldest possible).
pub fn rfc3339_ms(time: &str) -> u64 {
    humantime::parse_rfc3339_weak(time)
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}
