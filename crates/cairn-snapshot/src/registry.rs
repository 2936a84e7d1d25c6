//! The snapshot registry: what the meta group knows about every snapshot.
//!
//! Records live in the meta group's state machine under reserved keys, so every
//! change is a replicated, conditional batch, and the registry survives any node:
//!
//! ```text
//! s/next                      next epoch to allocate (u64 BE)
//! s/id/{!id BE}               the record (JSON), newest id first
//! s/name/{name}               id (u64 BE) of a named snapshot
//! s/time/{!millis BE}{id BE}  present for completed snapshots: time -> id, newest first
//! s/open/{id BE}              epochs whose shards may still hold an alignment window
//! s/marking/{id BE}           epochs whose markers may still be in flight (see `gate`)
//! s/auto/{millis BE}{id BE}   completed automatic snapshots, oldest first (retention)
//! ```
//!
//! Updates of a record are conditional on the version the writer last saw, so a
//! coordinator completing an epoch and the sweeper aborting it cannot both win.

use std::collections::BTreeMap;
use std::time::{Duration, UNIX_EPOCH};

use cairn_cluster::clock::now_ms;
use cairn_raft::Backoff;
use cairn_store::{Page, ShardId, Versioned, WriteOp};
use serde::{Deserialize, Serialize};

use crate::epoch::{close_ops, open_gate_ops, stale_wants, Allocation, Finish};
use crate::error::SnapshotError;
use crate::gate;
use cairn_cluster::meta::{delete, Meta, MetaStep};
use cairn_cluster::Shards;

use cairn_cluster::keyspace::{
    SNAPSHOT_AUTO as AUTO, SNAPSHOT_ID as ID, SNAPSHOT_NAME as NAME, SNAPSHOT_NEXT as NEXT,
    SNAPSHOT_OPEN as OPEN, SNAPSHOT_TIME as TIME,
};

/// How long an allocation waits for committing transactions to resolve.
pub const GATE_WAIT: Duration = Duration::from_secs(2);

/// Longest snapshot name.
pub const MAX_NAME_BYTES: usize = 256;

/// Where a snapshot stands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SnapshotState {
    /// Markers are being placed.
    Pending,
    /// Every shard placed its marker: the snapshot is readable.
    Done { cuts: BTreeMap<ShardId, u64> },
    /// Some shard did not place its marker in time; nothing can read it.
    Aborted { reason: String },
}

/// One snapshot as the registry records it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub id: u64,
    pub name: Option<String>,
    /// Taken automatically (kept for the history retention) rather than on request
    /// (kept until deleted).
    #[serde(default)]
    pub auto: bool,
    /// Wall-clock label, milliseconds since the Unix epoch: when the snapshot was
    /// requested while pending, when it completed once done. It labels, never orders.
    pub time_ms: u64,
    pub state: SnapshotState,
}

impl SnapshotRecord {
    /// RFC 3339 form of the label.
    pub fn time_rfc3339(&self) -> String {
        humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_millis(self.time_ms))
            .to_string()
    }

    /// The version to read shard `shard` at: the entries below its cut.
    pub fn read_version(&self, shard: ShardId) -> Option<u64> {
        match &self.state {
            SnapshotState::Done { cuts } => cuts.get(&shard).map(|c| c.saturating_sub(1)),
            _ => None,
        }
    }
}

pub(crate) fn rand_nonce() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    // Unique enough for a key that lives a few milliseconds, without a dependency.
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    h.finish()
}

/// The key of epoch `id`'s record.
pub fn id_key(id: u64) -> Vec<u8> {
    [ID, &(!id).to_be_bytes()].concat()
}

pub(crate) fn time_key(time_ms: u64, id: u64) -> Vec<u8> {
    [TIME, &(!time_ms).to_be_bytes(), &id.to_be_bytes()].concat()
}

pub(crate) fn auto_key(time_ms: u64, id: u64) -> Vec<u8> {
    [AUTO, &time_ms.to_be_bytes(), &id.to_be_bytes()].concat()
}

pub(crate) fn open_key(id: u64) -> Vec<u8> {
    [OPEN, &id.to_be_bytes()].concat()
}

pub(crate) fn name_key(name: &str) -> Vec<u8> {
    [NAME, name.as_bytes()].concat()
}

pub(crate) fn be_u64(bytes: &[u8]) -> Result<u64, SnapshotError> {
    bytes
        .try_into()
        .map(u64::from_be_bytes)
        .map_err(|_| SnapshotError::Corrupt(format!("expected 8 bytes, found {}", bytes.len())))
}

/// A stored record with the meta version it was read at.
pub fn decode(value: &Versioned) -> Result<Tracked, SnapshotError> {
    let record = serde_json::from_slice(&value.value)
        .map_err(|e| SnapshotError::Corrupt(format!("snapshot record: {e}")))?;
    Ok(Tracked {
        record,
        version: value.version,
    })
}

/// A record and the meta version it was read at (for conditional updates).
#[derive(Debug, Clone)]
pub struct Tracked {
    pub record: SnapshotRecord,
    pub version: u64,
}

/// Reads and writes the registry through the meta group.
pub struct Registry<'a, S: Shards> {
    shards: &'a S,
}

impl<'a, S: Shards> Registry<'a, S> {
    pub fn new(shards: &'a S) -> Self {
        Registry { shards }
    }

    fn meta(&self) -> Meta<'a, S> {
        Meta::new(self.shards)
    }

    async fn get_raw(&self, key: Vec<u8>) -> Result<Option<Versioned>, SnapshotError> {
        Ok(self.meta().get(key).await?)
    }

    async fn scan_raw(
        &self,
        prefix: &[u8],
        start_after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Page<Versioned>, SnapshotError> {
        Ok(self.meta().scan(prefix, start_after, limit).await?)
    }

    async fn write(&self, ops: Vec<WriteOp>) -> Result<Option<u64>, SnapshotError> {
        Ok(self.meta().write(ops).await?)
    }

    /// Register a new pending snapshot with the next epoch. Waits (up to
    /// [`GATE_WAIT`]) while a cross-shard transaction is being resolved: an epoch may
    /// not start marking then (see [`crate::gate`]). The decisions are
    /// [`Allocation`]'s; this only carries its steps out.
    pub async fn allocate(&self, name: Option<&str>, auto: bool) -> Result<Tracked, SnapshotError> {
        let mut allocation = Allocation::new(name, auto)?;
        let mut gate: Option<Backoff> = None;
        // The first read of `s/next` may come from this node's own meta replica: the
        // allocation's batch takes the id by compare-and-set on the version read, so
        // a stale value is refused (and read again from the leader), never used. It
        // saves the leader's ReadIndex round on the snapshot's path.
        let mut guess_next = true;
        let mut step = allocation.start();
        loop {
            // The wait at the gate is counted from the end of the name check.
            if gate.is_none() && allocation.past_name_check() {
                gate = Some(Backoff::contention(tokio::time::Instant::now() + GATE_WAIT));
            }
            step = match step {
                MetaStep::Read(key) => {
                    let here = (guess_next && key == NEXT)
                        .then(|| self.shards.meta_get_here(&key))
                        .flatten();
                    guess_next &= key != NEXT;
                    let answer = match here {
                        Some(next) => Ok(Some(next)),
                        None => self.meta().get(key).await,
                    };
                    allocation.on_read(answer, now_ms())
                }
                MetaStep::Write(ops) => {
                    let answer = self.meta().try_write(ops).await;
                    let can_wait = gate.as_ref().is_some_and(Backoff::can_wait);
                    allocation.on_written(answer, can_wait, rand_nonce(), now_ms())
                }
                MetaStep::Wait => {
                    if let Some(gate) = gate.as_mut() {
                        gate.wait().await;
                    }
                    allocation.resume()
                }
                MetaStep::Done(result) => return result,
            }
        }
    }

    /// Remove wants older than [`gate::WANT_EXPIRES`]: their allocations gave up or
    /// their coordinators died, and they would hold commits back.
    pub async fn drop_stale_wants(&self) -> Result<usize, SnapshotError> {
        let cutoff = now_ms().saturating_sub(gate::WANT_EXPIRES.as_millis() as u64);
        let wants = self.meta().scan_all(gate::WANT).await?;
        let stale = stale_wants(&wants, cutoff);
        for key in &stale {
            self.write(vec![delete(key.clone())]).await?;
        }
        Ok(stale.len())
    }

    /// Move a pending record to its final state, unless someone else did first.
    /// Returns the record as it ends up (decided by [`Finish`]).
    pub async fn finish(
        &self,
        pending: &Tracked,
        state: SnapshotState,
    ) -> Result<SnapshotRecord, SnapshotError> {
        let (mut finish, mut step) = Finish::new(pending, state, now_ms())?;
        loop {
            step = match step {
                MetaStep::Write(ops) => {
                    let answer = self.meta().try_write(ops).await;
                    finish.on_written(answer)
                }
                MetaStep::Read(key) => {
                    let answer = self.meta().get(key).await;
                    finish.on_read(answer)
                }
                MetaStep::Wait => {
                    return Err(SnapshotError::Corrupt(
                        "finishing an epoch never waits".into(),
                    ))
                }
                MetaStep::Done(result) => return result,
            }
        }
    }

    /// The epoch's shards have all been released: it no longer needs sweeping.
    pub async fn close(&self, id: u64) -> Result<(), SnapshotError> {
        self.write(close_ops(id)).await.map(|_| ())
    }

    /// End an epoch's marking but leave it open for the sweeper ([`open_gate_ops`]).
    pub async fn open_gate(&self, id: u64) -> Result<(), SnapshotError> {
        self.write(open_gate_ops(id)).await.map(|_| ())
    }

    /// Epochs that may still hold alignment windows somewhere.
    pub async fn open_epochs(&self) -> Result<Vec<u64>, SnapshotError> {
        self.meta()
            .scan_all(OPEN)
            .await?
            .iter()
            .map(|(k, _)| be_u64(&k[OPEN.len()..]))
            .collect()
    }

    pub async fn get(&self, id: u64) -> Result<Option<Tracked>, SnapshotError> {
        self.get_raw(id_key(id))
            .await?
            .map(|v| decode(&v))
            .transpose()
    }

    /// A snapshot by id (digits) or by name.
    pub async fn lookup(&self, id_or_name: &str) -> Result<SnapshotRecord, SnapshotError> {
        let id = match id_or_name.parse::<u64>() {
            Ok(id) => Some(id),
            Err(_) => match self.get_raw(name_key(id_or_name)).await? {
                Some(v) => Some(be_u64(&v.value)?),
                None => None,
            },
        };
        let found = match id {
            Some(id) => self.get(id).await?,
            None => None,
        };
        found
            .map(|v| v.record)
            .ok_or_else(|| SnapshotError::NotFound(id_or_name.to_owned()))
    }

    /// Snapshots newest first, after `before_id` if given: at most `limit`, and
    /// whether more may follow the last.
    pub async fn list(
        &self,
        before_id: Option<u64>,
        limit: usize,
    ) -> Result<(Vec<SnapshotRecord>, bool), SnapshotError> {
        let start_after = before_id.map(id_key);
        let page = self.scan_raw(ID, start_after, limit).await?;
        let records = page
            .items
            .iter()
            .map(|(_, v)| decode(v).map(|v| v.record))
            .collect::<Result<_, _>>()?;
        Ok((records, page.more))
    }

    /// The newest completed snapshot labelled at or before `time_ms`.
    pub async fn newest_at_or_before(
        &self,
        time_ms: u64,
    ) -> Result<Option<SnapshotRecord>, SnapshotError> {
        // Keys sort newest first. A key of a time <= T extends or sorts after this
        // bound, a later time sorts before it; `start_after` is exclusive.
        let bound = [TIME, &(!time_ms).to_be_bytes()].concat();
        let found = self.scan_raw(TIME, Some(bound), 1).await?;
        match found.items.first() {
            Some((key, _)) => self.time_entry(key).await,
            None => Ok(None),
        }
    }

    /// The oldest completed snapshot: the oldest point readable by time. O(snapshots).
    pub async fn oldest_done(&self) -> Result<Option<SnapshotRecord>, SnapshotError> {
        let mut last = None;
        let mut start_after = None;
        loop {
            let page = self.scan_raw(TIME, start_after, 1000).await?;
            match page.items.last() {
                Some((key, _)) => {
                    last = Some(key.clone());
                    start_after = Some(key.clone());
                }
                None => break,
            }
        }
        match last {
            Some(key) => self.time_entry(&key).await,
            None => Ok(None),
        }
    }

    async fn time_entry(&self, key: &[u8]) -> Result<Option<SnapshotRecord>, SnapshotError> {
        let id = be_u64(key.get(TIME.len() + 8..).unwrap_or_default())?;
        Ok(self.get(id).await?.map(|v| v.record))
    }

    /// Automatic snapshots labelled before `cutoff_ms`, oldest first, at most `limit`.
    pub async fn expired_auto(
        &self,
        cutoff_ms: u64,
        limit: usize,
    ) -> Result<Vec<SnapshotRecord>, SnapshotError> {
        let mut expired = Vec::new();
        for (key, _) in self.scan_raw(AUTO, None, limit).await?.items {
            let time = be_u64(key.get(AUTO.len()..AUTO.len() + 8).unwrap_or_default())?;
            if time >= cutoff_ms {
                break;
            }
            let id = be_u64(key.get(AUTO.len() + 8..).unwrap_or_default())?;
            match self.get(id).await? {
                Some(t) => expired.push(t.record),
                // An index entry without its record: remove the entry alone.
                None => {
                    self.write(vec![delete(key)]).await?;
                }
            }
        }
        Ok(expired)
    }

    /// Every completed snapshot (O(snapshots), in pages).
    pub async fn all_done(&self) -> Result<Vec<SnapshotRecord>, SnapshotError> {
        let mut done = Vec::new();
        let mut start_after = None;
        loop {
            let page = self.scan_raw(ID, start_after, 1000).await?.items;
            let Some((last, _)) = page.last() else {
                break;
            };
            start_after = Some(last.clone());
            for (_, value) in &page {
                let record = decode(value)?.record;
                if matches!(record.state, SnapshotState::Done { .. }) {
                    done.push(record);
                }
            }
        }
        Ok(done)
    }

    /// Remove a snapshot from the registry. Its versions become collectable.
    pub async fn delete(&self, record: &SnapshotRecord) -> Result<(), SnapshotError> {
        let mut ops = vec![
            delete(id_key(record.id)),
            delete(gate::marking_key(record.id)),
        ];
        if let Some(name) = &record.name {
            ops.push(delete(name_key(name)));
        }
        if matches!(record.state, SnapshotState::Done { .. }) {
            ops.push(delete(time_key(record.time_ms, record.id)));
            if record.auto {
                ops.push(delete(auto_key(record.time_ms, record.id)));
            }
        }
        self.write(ops).await.map(|_| ())
    }
}
