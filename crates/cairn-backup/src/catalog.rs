//! The backup catalog: what the cluster knows about every backup it ran, and the state
//! of every schedule, kept in the meta group so that any node can answer for them and
//! a failover loses nothing.
//!
//! ```text
//! b/next             next backup sequence number (u64 BE)
//! b/id/{seq BE}      a backup's record (JSON)
//! b/sched/{name}     a schedule's state (JSON): the last tick it claimed, and results
//! ```
//!
//! Every change of a record is conditional on the version its writer last saw: the
//! node running a backup owns its record, and the sweeper that declares an abandoned
//! backup failed wins only if the owner has not written since. Claiming a schedule's
//! tick and creating the backup's record are one batch, which is what makes a tick run
//! exactly once cluster-wide.

use std::time::{Duration, UNIX_EPOCH};

use cairn_cluster::meta::{put, Meta};
use cairn_cluster::Shards;
use cairn_store::{Condition, Versioned, WriteOp};
use serde::{Deserialize, Serialize};

use crate::error::BackupError;

use cairn_cluster::keyspace::BACKUP_ID as ID;
use cairn_cluster::keyspace::BACKUP_NEXT as NEXT;
use cairn_cluster::keyspace::BACKUP_SCHEDULE as SCHEDULE;

/// Where a backup stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "state")]
pub enum BackupState {
    /// Being written by `node`.
    Running,
    /// Its manifest is stored: the backup exists and is restorable.
    Done,
    /// It stopped before its manifest was stored; nothing of it is listed at the
    /// destination.
    Failed { error: String },
}

/// How far a running backup got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Progress {
    pub shards_done: u32,
    pub shards_total: u32,
    /// Compressed bytes stored so far.
    pub bytes: u64,
    /// Distinct keys stored so far.
    pub keys: u64,
    /// Versions (records) stored so far.
    pub versions: u64,
}

/// One backup as the catalog records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupRecord {
    /// Catalog sequence number; the id is derived from it and the start time.
    pub seq: u64,
    pub id: String,
    /// The destination URL as given.
    pub destination: String,
    pub incremental: bool,
    /// The backup this one extends (incrementals).
    pub parent: Option<String>,
    /// The snapshot it captures, once known.
    pub snapshot: Option<u64>,
    /// The snapshot was taken for this backup (and is deleted once no incremental
    /// can follow from it), rather than given by the caller.
    pub owns_snapshot: bool,
    /// The owned snapshot was deleted: its history may now be collected.
    #[serde(default)]
    pub snapshot_released: bool,
    /// The schedule that ran it, and the tick (ms) it ran for.
    pub schedule: Option<String>,
    pub tick_ms: Option<u64>,
    /// The node writing it.
    pub node: u64,
    #[serde(flatten)]
    pub state: BackupState,
    pub progress: Progress,
    pub started_ms: u64,
    /// Last write by its owner: a running backup whose owner went silent is failed by
    /// the sweeper.
    pub updated_ms: u64,
    pub finished_ms: Option<u64>,
    /// Retention deleted it from its destination.
    #[serde(default)]
    pub deleted: bool,
}

impl BackupRecord {
    /// A backup about to start on `node` at `now_ms`, with catalog number `seq`.
    pub fn running(seq: u64, now_ms: u64, node: u64, destination: &str, incremental: bool) -> Self {
        BackupRecord {
            seq,
            id: backup_id(seq, now_ms),
            destination: destination.to_owned(),
            incremental,
            parent: None,
            snapshot: None,
            owns_snapshot: false,
            snapshot_released: false,
            schedule: None,
            tick_ms: None,
            node,
            state: BackupState::Running,
            progress: Progress::default(),
            started_ms: now_ms,
            updated_ms: now_ms,
            finished_ms: None,
            deleted: false,
        }
    }

    pub fn is_running(&self) -> bool {
        self.state == BackupState::Running
    }
}

/// A record and the meta version it was read at.
#[derive(Debug, Clone)]
pub struct Tracked<T> {
    pub value: T,
    pub version: u64,
}

/// A schedule's replicated state.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ScheduleState {
    /// The newest tick claimed (ms since the Unix epoch); ticks at or before it never
    /// run again. Set to "now" when the schedule is first seen, so a new schedule
    /// does not run for its past.
    pub last_tick_ms: u64,
    pub last_backup: Option<String>,
    /// How late the last claimed tick started, in ms.
    pub last_lag_ms: Option<u64>,
    /// "done" or "failed: ..." for the last finished backup.
    pub last_result: Option<String>,
    pub last_finished_ms: Option<u64>,
}

/// A backup id: `YYYYMMDDTHHMMSSZ-{seq}`, readable and sorting by sequence within
/// the same second.
pub fn backup_id(seq: u64, time_ms: u64) -> String {
    let t = humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_millis(time_ms))
        .to_string()
        .replace(['-', ':'], "");
    format!("{t}-{seq:06}")
}

fn id_key(seq: u64) -> Vec<u8> {
    [ID, &seq.to_be_bytes()].concat()
}

fn schedule_key(name: &str) -> Vec<u8> {
    [SCHEDULE, name.as_bytes()].concat()
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, BackupError> {
    serde_json::to_vec(value).map_err(|e| BackupError::Invalid(format!("encoding a record: {e}")))
}

fn decode<T: for<'de> Deserialize<'de>>(
    value: &Versioned,
    what: &str,
) -> Result<Tracked<T>, BackupError> {
    let decoded = serde_json::from_slice(&value.value)
        .map_err(|e| BackupError::Corrupt(format!("backup catalog {what}: {e}")))?;
    Ok(Tracked {
        value: decoded,
        version: value.version,
    })
}

/// The catalog, read and written through the meta group.
pub struct Catalog<'a, S: Shards> {
    meta: Meta<'a, S>,
}

impl<'a, S: Shards> Catalog<'a, S> {
    pub fn new(shards: &'a S) -> Self {
        Catalog {
            meta: Meta::new(shards),
        }
    }

    /// Create a running record, built by `make` from the allocated sequence number;
    /// `extra` ops go in the same batch (a schedule's claim). `Ok(None)` if an `extra`
    /// condition failed.
    pub async fn create(
        &self,
        make: impl Fn(u64) -> BackupRecord,
        extra: impl Fn(&BackupRecord) -> Result<Vec<WriteOp>, BackupError>,
    ) -> Result<Option<Tracked<BackupRecord>>, BackupError> {
        for _ in 0..16 {
            let next = self.meta.get(NEXT.to_vec()).await?;
            let (seq, condition) = match &next {
                Some(v) => (
                    v.value
                        .as_slice()
                        .try_into()
                        .map(u64::from_be_bytes)
                        .map_err(|_| BackupError::Corrupt("backup catalog counter".into()))?,
                    Condition::Version(v.version),
                ),
                None => (1, Condition::Absent),
            };
            let record = make(seq);
            let mut ops = vec![
                put(NEXT.to_vec(), (seq + 1).to_be_bytes().to_vec(), condition),
                put(id_key(seq), encode(&record)?, Condition::Absent),
            ];
            let extra = extra(&record)?;
            let has_extra = !extra.is_empty();
            ops.extend(extra);
            if let Some(version) = self.meta.write(ops).await? {
                return Ok(Some(Tracked {
                    value: record,
                    version,
                }));
            }
            // Lost the counter race, or the extra condition failed; tell which.
            if has_extra {
                let counter_moved = self.meta.get(NEXT.to_vec()).await?.map(|v| v.version)
                    != next.as_ref().map(|v| v.version);
                if !counter_moved {
                    return Ok(None);
                }
            }
        }
        Err(BackupError::Superseded(
            "too many concurrent backups raced for an id; retry".into(),
        ))
    }

    /// Replace a record if nobody wrote it since `from`; `Superseded` otherwise.
    pub async fn update(
        &self,
        from: &Tracked<BackupRecord>,
        record: BackupRecord,
    ) -> Result<Tracked<BackupRecord>, BackupError> {
        let op = put(
            id_key(record.seq),
            encode(&record)?,
            Condition::Version(from.version),
        );
        match self.meta.write(vec![op]).await? {
            Some(version) => Ok(Tracked {
                value: record,
                version,
            }),
            None => Err(BackupError::Superseded(format!(
                "backup {} was changed by someone else (the sweeper declared it failed?)",
                record.id
            ))),
        }
    }

    /// A record by id.
    pub async fn get(&self, id: &str) -> Result<Option<Tracked<BackupRecord>>, BackupError> {
        let Some(seq) = id.rsplit('-').next().and_then(|s| s.parse::<u64>().ok()) else {
            return Ok(None);
        };
        match self.meta.get(id_key(seq)).await? {
            Some(v) => {
                let found: Tracked<BackupRecord> = decode(&v, "record")?;
                Ok((found.value.id == id).then_some(found))
            }
            None => Ok(None),
        }
    }

    /// Every record, newest first. O(backups).
    pub async fn list(&self) -> Result<Vec<Tracked<BackupRecord>>, BackupError> {
        let mut all = self
            .meta
            .scan_all(ID)
            .await?
            .iter()
            .map(|(_, v)| decode(v, "record"))
            .collect::<Result<Vec<Tracked<BackupRecord>>, _>>()?;
        all.reverse();
        Ok(all)
    }

    /// A schedule's state, if it was ever seen.
    pub async fn schedule(
        &self,
        name: &str,
    ) -> Result<Option<Tracked<ScheduleState>>, BackupError> {
        self.meta
            .get(schedule_key(name))
            .await?
            .map(|v| decode(&v, "schedule"))
            .transpose()
    }

    /// The op that sets a schedule's state if it is still at `from` (absent if `None`).
    pub fn schedule_op(
        &self,
        name: &str,
        state: &ScheduleState,
        from: Option<u64>,
    ) -> Result<WriteOp, BackupError> {
        let condition = match from {
            Some(version) => Condition::Version(version),
            None => Condition::Absent,
        };
        Ok(put(schedule_key(name), encode(state)?, condition))
    }

    /// Apply ops to the meta group; `false` if a condition failed.
    pub async fn write(&self, ops: Vec<WriteOp>) -> Result<bool, BackupError> {
        Ok(self.meta.write(ops).await?.is_some())
    }
}
