//! One shard's Raft log, implementing [`raft::Storage`].
//!
//! A log lives in one of two places ([`LogStore`]), chosen per data directory when it
//! is first opened (`docs/ARCHITECTURE.md`, "Two stores"):
//!
//! - **the node's log engine** (raft-engine, [`crate::log_engine`]), for every data
//!   directory made since: the shard is the engine's group `shard`, its entries are
//!   the group's entries, and two keys hold `h` (the `HardState`) and `t` (the
//!   truncated index and term);
//! - **the shard's sled tree** `shard/{id}/log`, for directories made before the
//!   engine and for the simulator's temporary stores:
//!
//! | key                        | value                                   |
//! |----------------------------|-----------------------------------------|
//! | `b'e'` ++ index (u64 BE)   | term (u64 BE) ++ `Entry` (protobuf)     |
//! | `b'h'`                     | `HardState` (protobuf)                  |
//! | `b't'`                     | truncated index, truncated term (u64 BE each) |
//!
//! Either way the **conf state** (`b'c'`, and `b"ci"`, the index it comes from) stays
//! in the sled tree: it is state-machine state, which must not get ahead of the
//! applied point that sled keeps (a restart would apply the conf change again), and
//! sled recovers a prefix of its own writes, never one of the engine's.
//!
//! In sled, big-endian indexes make the key order the log order, and the term is
//! duplicated in front of each entry because raft-rs asks for terms far more often
//! than for entries.
//!
//! Invariant: the entries present are exactly `truncated+1 ..= last`, with no holes.
//! Every mutation keeps it in one atomic write (a sled batch or an engine batch), so a
//! crash leaves either the old or the new log.
//!
//! **Truncating the log behind sled.** In the engine, the log is durable at every group
//! commit and sled is not (that is the point: sled's flush is what the engine saves).
//! So whatever drops entries (compaction, a Raft snapshot's install) first makes sled
//! durable, or a crash could leave a state machine behind a log that no longer holds
//! the entries to replay.
//!
//! **The mirror.** raft-rs asks its storage for `first_index`, `last_index` and terms
//! several times per message; answered from sled, each question took sled's
//! process-wide concurrency lock, which every batch of every shard takes exclusively,
//! and under load the replica threads spent a tenth of their time spinning on it. So
//! the metadata lives in memory too ([`LogMirror`]: the truncated point, the term of
//! every entry present, the hard and conf states), loaded when the node store first
//! hands the shard's log out and changed only after a write succeeded. The disk stays
//! the truth: a restart reloads the mirror from it. There is one mirror per shard per
//! [`crate::NodeStore`], shared by every `RaftLog` it hands out for that shard, so no
//! copy can go stale. Entries themselves are read from disk.
//!
//! Durability is the caller's: writes are atomic but reach disk at
//! [`crate::NodeStore::sync_log`], which group commit calls once for all shards.
//!
//! The semantics follow raft-rs's `MemStorage` (checked by a conformance test, for
//! both stores), except that misuse returns an error instead of panicking.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use protobuf::Message;
use raft::prelude::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{GetEntriesContext, RaftState, StorageError};
use raft_engine::{Command, LogBatch};

use crate::error::{Result, StoreError};
use crate::log_engine::{EntryExt, LogEngine};
use crate::state::AppliedState;
use crate::{ShardId, StateDisk};

const CONF_STATE_KEY: &[u8] = b"c";
/// The index of the entry (or snapshot) the conf state was taken from.
const CONF_INDEX_KEY: &[u8] = b"ci";
const ENTRY_PREFIX: u8 = b'e';
const HARD_STATE_KEY: &[u8] = b"h";
const TRUNCATED_KEY: &[u8] = b"t";

fn entry_key(index: u64) -> [u8; 9] {
    let mut k = [0u8; 9];
    k[0] = ENTRY_PREFIX;
    k[1..].copy_from_slice(&index.to_be_bytes());
    k
}

fn be_u64(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(bytes.try_into().ok()?))
}

/// The log's metadata in memory (see the module doc). `terms[i]` is the term of entry
/// `truncated.0 + 1 + i`, so the last index is `truncated.0 + terms.len()`.
#[derive(Debug, Default)]
pub(crate) struct LogMirror {
    truncated: (u64, u64),
    terms: VecDeque<u64>,
    hard_state: HardState,
    conf_state: ConfState,
    /// The newest entries, kept in memory for a log in the engine: a leader applies
    /// and sends what it just appended, and the engine would read each back from its
    /// file (one `pread` and decode per entry). Contiguous, ending at the last index
    /// when not empty; bounded by [`RECENT_ENTRIES`] and [`RECENT_BYTES`].
    recent: VecDeque<Entry>,
    recent_bytes: usize,
}

/// At most this many entries of a shard are kept in memory ([`LogMirror::recent`]).
const RECENT_ENTRIES: usize = 1024;
/// At most this many bytes of them: 256 shards hold at most 64 MiB.
const RECENT_BYTES: usize = 256 * 1024;

impl LogMirror {
    fn last_index(&self) -> u64 {
        self.truncated.0 + self.terms.len() as u64
    }

    /// Record `entries` (contiguous, starting at or below `last_index + 1`, already
    /// written) as the newest, dropping any they overwrite.
    fn remember(&mut self, entries: &[Entry]) {
        let Some(start) = entries.first().map(|e| e.index) else {
            return;
        };
        match self.recent.front().map(|e| e.index) {
            Some(first) if start > first => {
                let keep = ((start - first) as usize).min(self.recent.len());
                for dropped in self.recent.drain(keep..) {
                    self.recent_bytes -= dropped.data.len();
                }
            }
            _ => self.forget_recent(),
        }
        if self.recent.back().is_some_and(|e| e.index + 1 != start) {
            self.forget_recent();
        }
        for e in entries {
            self.recent_bytes += e.data.len();
            self.recent.push_back(e.clone());
        }
        while self.recent.len() > RECENT_ENTRIES || self.recent_bytes > RECENT_BYTES {
            match self.recent.pop_front() {
                Some(e) => self.recent_bytes -= e.data.len(),
                None => break,
            }
        }
    }

    /// Drop the remembered entries below `index`.
    fn forget_below(&mut self, index: u64) {
        while self.recent.front().is_some_and(|e| e.index < index) {
            if let Some(e) = self.recent.pop_front() {
                self.recent_bytes -= e.data.len();
            }
        }
    }

    fn forget_recent(&mut self) {
        self.recent.clear();
        self.recent_bytes = 0;
    }

    /// Entries `[low, high)` from memory, at most `max` bytes but at least one, if
    /// memory holds them all.
    fn recent_entries(&self, low: u64, high: u64, max: u64) -> Option<Vec<Entry>> {
        let first = self.recent.front()?.index;
        if low < first || high > first + self.recent.len() as u64 {
            return None;
        }
        let mut out = Vec::with_capacity((high - low) as usize);
        let mut size = 0u64;
        for e in self
            .recent
            .range((low - first) as usize..(high - first) as usize)
        {
            let sz = u64::from(e.compute_size());
            if !out.is_empty() && size.saturating_add(sz) > max {
                break;
            }
            size = size.saturating_add(sz);
            out.push(e.clone());
        }
        Some(out)
    }
}

/// The mirror of one shard's log, shared by every `RaftLog` of that shard.
pub(crate) type SharedMirror = Arc<Mutex<LogMirror>>;

/// Where a shard's entries, hard state and truncated point are kept (see the module
/// doc; the conf state is in the sled tree either way).
#[derive(Clone, Debug)]
pub(crate) enum LogStore {
    /// In the shard's sled tree.
    Sled,
    /// In the node's log engine, as group `group`.
    Engine {
        /// The node's engine.
        engine: Arc<LogEngine>,
        /// The shard's group there.
        group: u64,
    },
}

/// How a log learns its state machine's applied point (see [`RaftLog::attach_applied`]).
pub type AppliedPoint = Arc<dyn Fn() -> Result<AppliedState> + Send + Sync>;

/// One shard's Raft log, hard state, conf state and compaction point. Clone = same tree
/// and same mirror.
#[derive(Clone)]
pub struct RaftLog {
    shard: ShardId,
    tree: sled::Tree,
    store: LogStore,
    /// sled, to make durable before the engine drops entries (module doc).
    disk: StateDisk,
    mirror: SharedMirror,
    /// The state machine's applied point, if attached: `snapshot()` reports it.
    applied: Option<AppliedPoint>,
}

impl std::fmt::Debug for RaftLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RaftLog")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

impl RaftLog {
    /// A log over `tree` and `store` sharing `mirror`, which must have come from
    /// [`RaftLog::load`] on the same two.
    pub(crate) fn new(
        shard: ShardId,
        tree: sled::Tree,
        store: LogStore,
        disk: StateDisk,
        mirror: SharedMirror,
    ) -> RaftLog {
        RaftLog {
            shard,
            tree,
            store,
            disk,
            mirror,
            applied: None,
        }
    }

    /// Read the mirror of the log in `tree` and `store`, checking the invariant (no
    /// holes, each entry's term readable) on the way.
    pub(crate) fn load(
        shard: ShardId,
        tree: &sled::Tree,
        store: &LogStore,
    ) -> Result<SharedMirror> {
        let corrupt = |what: String| StoreError::corrupt(format!("shard {shard} raft log: {what}"));
        let (truncated, hard_state) = match store {
            LogStore::Sled => (tree.get(TRUNCATED_KEY)?, tree.get(HARD_STATE_KEY)?),
            LogStore::Engine { engine, group } => (
                engine.engine().get(*group, TRUNCATED_KEY).map(Into::into),
                engine.engine().get(*group, HARD_STATE_KEY).map(Into::into),
            ),
        };
        let truncated = match truncated {
            None => (0, 0),
            Some(v) if v.len() == 16 => match (be_u64(&v[..8]), be_u64(&v[8..])) {
                (Some(i), Some(t)) => (i, t),
                _ => return Err(corrupt("truncated point".into())),
            },
            Some(_) => return Err(corrupt("truncated point has the wrong length".into())),
        };
        let hard_state = match hard_state {
            Some(v) => {
                HardState::parse_from_bytes(&v).map_err(|e| corrupt(format!("hard state: {e}")))?
            }
            None => HardState::default(),
        };
        let conf_state = match tree.get(CONF_STATE_KEY)? {
            Some(v) => {
                ConfState::parse_from_bytes(&v).map_err(|e| corrupt(format!("conf state: {e}")))?
            }
            None => ConfState::default(),
        };
        let mut terms = VecDeque::new();
        match store {
            LogStore::Sled => {
                for item in tree.scan_prefix([ENTRY_PREFIX]) {
                    let (k, v) = item?;
                    let expected = truncated.0 + 1 + terms.len() as u64;
                    if be_u64(&k[1..]) != Some(expected) {
                        return Err(corrupt(format!("entry {expected} missing inside the log")));
                    }
                    let term = v.get(..8).and_then(be_u64).ok_or_else(|| {
                        corrupt(format!("entry {expected}: shorter than its term"))
                    })?;
                    terms.push_back(term);
                }
            }
            LogStore::Engine { engine, group } => {
                let engine = engine.engine();
                if let (Some(first), Some(last)) =
                    (engine.first_index(*group), engine.last_index(*group))
                {
                    // The truncated point and the compaction that drops entries are
                    // written in one batch, so the engine starts right after it.
                    if first != truncated.0 + 1 {
                        return Err(corrupt(format!(
                            "the engine's entries start at {first}, the truncated point is {}",
                            truncated.0
                        )));
                    }
                    // In slices, so a long log is not held twice in memory.
                    let mut next = first;
                    let mut page = Vec::new();
                    while next <= last {
                        page.clear();
                        let high = (last + 1).min(next + 1024);
                        engine.fetch_entries_to::<EntryExt>(*group, next, high, None, &mut page)?;
                        for e in &page {
                            if e.index != next {
                                return Err(corrupt(format!(
                                    "entry {next} missing inside the log"
                                )));
                            }
                            terms.push_back(e.term);
                            next += 1;
                        }
                        if page.is_empty() {
                            return Err(corrupt(format!("entry {next} missing inside the log")));
                        }
                    }
                }
            }
        }
        Ok(Arc::new(Mutex::new(LogMirror {
            truncated,
            terms,
            hard_state,
            conf_state,
            recent: VecDeque::new(),
            recent_bytes: 0,
        })))
    }

    /// The mirror, locked. Only the replica's thread writes the log, so the lock is
    /// uncontended; a poisoned one still holds what the last completed write left.
    fn mirror(&self) -> MutexGuard<'_, LogMirror> {
        self.mirror.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The shard this log belongs to.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// Let `snapshot()` describe the applied point of the state machine this log feeds,
    /// whatever that machine is: the log only needs to know how far it got.
    pub fn attach_applied(&mut self, applied: AppliedPoint) {
        self.applied = Some(applied);
    }

    fn corrupt(&self, what: impl std::fmt::Display) -> StoreError {
        StoreError::corrupt(format!("shard {} raft log: {what}", self.shard))
    }

    fn decode<M: Message>(&self, key: &str, bytes: &[u8]) -> Result<M> {
        M::parse_from_bytes(bytes).map_err(|e| self.corrupt(format!("{key}: {e}")))
    }

    fn encode_entry(e: &Entry) -> Result<Vec<u8>> {
        let mut out = Vec::with_capacity(8 + e.compute_size() as usize);
        out.extend_from_slice(&e.term.to_be_bytes());
        e.write_to_vec(&mut out).map_err(raft::Error::from)?;
        Ok(out)
    }

    fn decode_entry(&self, index: u64, raw: &[u8]) -> Result<Entry> {
        if raw.len() < 8 {
            return Err(self.corrupt(format!("entry {index}: shorter than its term")));
        }
        let e: Entry = self.decode(&format!("entry {index}"), &raw[8..])?;
        if e.index != index || be_u64(&raw[..8]) != Some(e.term) {
            return Err(self.corrupt(format!(
                "entry {index}: stored under the wrong index or with the wrong term"
            )));
        }
        Ok(e)
    }

    /// (index, term) of the last entry dropped by compaction or a snapshot; (0, 0) when new.
    fn truncated(&self) -> (u64, u64) {
        self.mirror().truncated
    }

    fn truncated_value(index: u64, term: u64) -> [u8; 16] {
        let mut v = [0u8; 16];
        v[..8].copy_from_slice(&index.to_be_bytes());
        v[8..].copy_from_slice(&term.to_be_bytes());
        v
    }

    /// `truncated index + 1`: the first index `entries()` may return.
    pub fn first_index(&self) -> Result<u64> {
        Ok(self.truncated().0 + 1)
    }

    /// Index of the last entry, or the truncated index if the log holds none.
    pub fn last_index(&self) -> Result<u64> {
        Ok(self.mirror().last_index())
    }

    /// Term of entry `idx`; `Compacted` below the truncated index, `Unavailable` above
    /// the last.
    pub fn term_of(&self, idx: u64) -> Result<u64> {
        let mirror = self.mirror();
        let (t_idx, t_term) = mirror.truncated;
        if idx == t_idx {
            return Ok(t_term);
        }
        if idx < t_idx {
            return Err(StoreError::raft_storage(StorageError::Compacted));
        }
        match mirror.terms.get((idx - t_idx - 1) as usize) {
            Some(term) => Ok(*term),
            None => Err(StoreError::raft_storage(StorageError::Unavailable)),
        }
    }

    /// The persisted hard state (default when none was written).
    pub fn hard_state(&self) -> Result<HardState> {
        Ok(self.mirror().hard_state.clone())
    }

    /// The persisted conf state (default when none was written).
    pub fn conf_state(&self) -> Result<ConfState> {
        Ok(self.mirror().conf_state.clone())
    }

    /// First boot: if the log is empty and has no conf state, store this one (voters).
    /// Idempotent: once a conf state exists (or the log has entries), does nothing.
    pub fn initialize(&self, conf_state: &ConfState) -> Result<()> {
        if self.last_index()? == 0 && self.tree.get(CONF_STATE_KEY)?.is_none() {
            self.set_conf_state(conf_state)?;
        }
        Ok(())
    }

    /// Persist new entries and/or hard state in one atomic sled batch. Entries must be
    /// contiguous, start at or below `last_index + 1` and above the truncated index;
    /// entries already stored at and after the first new index are replaced (raft's
    /// overwrite of a conflicting suffix).
    pub fn persist(&self, entries: &[Entry], hard_state: Option<&HardState>) -> Result<()> {
        // Two points, not one with two names: `crash_point!` needs a literal.
        if !entries.is_empty() {
            crate::crash_point!("log.append.before");
        }
        if entries.is_empty() {
            crate::crash_point!("log.hard_state.before");
        }
        let mut mirror = self.mirror();
        let Some(first) = entries.first() else {
            if let Some(hs) = hard_state {
                match &self.store {
                    // One insert, which sled applies atomically without the exclusive
                    // lock a batch takes.
                    LogStore::Sled => {
                        let bytes = hs.write_to_bytes().map_err(raft::Error::from)?;
                        self.tree.insert(HARD_STATE_KEY, bytes)?;
                    }
                    LogStore::Engine { engine, group } => {
                        let mut batch = LogBatch::default();
                        batch.put_message(*group, HARD_STATE_KEY.to_vec(), hs)?;
                        engine.write(&mut batch)?;
                    }
                }
                mirror.hard_state = hs.clone();
                crate::crash_point!("log.hard_state.after");
            }
            return Ok(());
        };
        let start = first.index;
        let t_idx = mirror.truncated.0;
        let last = mirror.last_index();
        if start <= t_idx {
            return Err(StoreError::invalid(format!(
                "shard {}: append at {start} overwrites compacted log (truncated {t_idx})",
                self.shard
            )));
        }
        if start > last + 1 {
            return Err(StoreError::invalid(format!(
                "shard {}: append at {start} leaves a gap after last index {last}",
                self.shard
            )));
        }
        for (i, e) in entries.iter().enumerate() {
            if e.index != start + i as u64 {
                return Err(StoreError::invalid(format!(
                    "shard {}: appended entries are not contiguous at {}",
                    self.shard, e.index
                )));
            }
        }
        match &self.store {
            LogStore::Sled => {
                let mut batch = sled::Batch::default();
                let new_last = start + entries.len() as u64 - 1;
                // Only the stale tail beyond the new entries needs removing (the log has
                // no holes, so its keys are known); the inserts overwrite the rest.
                for index in new_last + 1..=last {
                    batch.remove(&entry_key(index)[..]);
                }
                for e in entries {
                    batch.insert(&entry_key(e.index)[..], Self::encode_entry(e)?);
                }
                if let Some(hs) = hard_state {
                    batch.insert(
                        HARD_STATE_KEY,
                        hs.write_to_bytes().map_err(raft::Error::from)?,
                    );
                }
                self.tree.apply_batch(batch)?;
            }
            LogStore::Engine { engine, group } => {
                // The engine drops a group's entries from the first appended index on
                // (raft's overwrite of a conflicting suffix) by itself.
                let mut batch = LogBatch::with_capacity(entries.len());
                batch.add_entries::<EntryExt>(*group, entries)?;
                if let Some(hs) = hard_state {
                    batch.put_message(*group, HARD_STATE_KEY.to_vec(), hs)?;
                }
                engine.write(&mut batch)?;
            }
        }
        mirror.terms.truncate((start - t_idx - 1) as usize);
        mirror.terms.extend(entries.iter().map(|e| e.term));
        if matches!(self.store, LogStore::Engine { .. }) {
            mirror.remember(entries);
        }
        if let Some(hs) = hard_state {
            mirror.hard_state = hs.clone();
        }
        crate::crash_point!("log.append.after");
        Ok(())
    }

    /// Set `hard_state.commit`, keeping term and vote.
    pub fn set_commit(&self, commit: u64) -> Result<()> {
        let mut hs = self.hard_state()?;
        hs.commit = commit;
        self.persist(&[], Some(&hs))
    }

    /// Replace the conf state after applying the conf change at `index`, recording
    /// the index with it (one batch), so a restart can tell a conf state that got
    /// ahead of the state machine's applied point ([`RaftLog::conf_index`]).
    pub fn set_conf_state_at(&self, cs: &ConfState, index: u64) -> Result<()> {
        let mut mirror = self.mirror();
        let mut batch = sled::Batch::default();
        batch.insert(
            CONF_STATE_KEY,
            cs.write_to_bytes().map_err(raft::Error::from)?,
        );
        batch.insert(CONF_INDEX_KEY, &index.to_be_bytes()[..]);
        self.tree.apply_batch(batch)?;
        mirror.conf_state = cs.clone();
        Ok(())
    }

    /// The index of the entry (or Raft snapshot) the stored conf state comes from; 0
    /// for the configuration the group was created with.
    pub fn conf_index(&self) -> Result<u64> {
        match self.tree.get(CONF_INDEX_KEY)? {
            None => Ok(0),
            Some(v) => be_u64(&v).ok_or_else(|| self.corrupt("conf index is not 8 bytes")),
        }
    }

    /// Replace the conf state (the configuration a new log starts with).
    pub fn set_conf_state(&self, cs: &ConfState) -> Result<()> {
        let mut mirror = self.mirror();
        let bytes = cs.write_to_bytes().map_err(raft::Error::from)?;
        self.tree.insert(CONF_STATE_KEY, bytes)?;
        mirror.conf_state = cs.clone();
        Ok(())
    }

    /// Remove the entries below `upto_excl` (all of them if `None`) in `batch`.
    fn remove_entries(mirror: &LogMirror, batch: &mut sled::Batch, upto_excl: Option<u64>) {
        let first = mirror.truncated.0 + 1;
        let end = upto_excl.unwrap_or(u64::MAX).min(mirror.last_index() + 1);
        for index in first..end {
            batch.remove(&entry_key(index)[..]);
        }
    }

    /// After the state machine installed a Raft snapshot: drop every entry, move the
    /// truncated point and conf state to the snapshot's, and raise commit and term to at
    /// least the snapshot's. `SnapshotOutOfDate` if the snapshot is not past the
    /// truncated index (as `MemStorage::apply_snapshot`).
    pub fn apply_snapshot_metadata(&self, meta: &SnapshotMetadata) -> Result<()> {
        let mut mirror = self.mirror();
        if mirror.truncated.0 + 1 > meta.index {
            return Err(StoreError::raft_storage(StorageError::SnapshotOutOfDate));
        }
        // Between a Raft snapshot's data and its log metadata: `Replica::open` repairs.
        crate::crash_point!("log.snapshot_metadata.before");
        let mut hs = mirror.hard_state.clone();
        hs.commit = hs.commit.max(meta.index);
        hs.term = hs.term.max(meta.term);
        let truncated = Self::truncated_value(meta.index, meta.term);
        let mut batch = sled::Batch::default();
        batch.insert(
            CONF_STATE_KEY,
            meta.get_conf_state()
                .write_to_bytes()
                .map_err(raft::Error::from)?,
        );
        batch.insert(CONF_INDEX_KEY, &meta.index.to_be_bytes()[..]);
        match &self.store {
            LogStore::Sled => {
                Self::remove_entries(&mirror, &mut batch, None);
                batch.insert(TRUNCATED_KEY, &truncated[..]);
                batch.insert(
                    HARD_STATE_KEY,
                    hs.write_to_bytes().map_err(raft::Error::from)?,
                );
                self.tree.apply_batch(batch)?;
            }
            LogStore::Engine { engine, group } => {
                // The state machine (installed by the caller) and the conf state must
                // be durable before the entries that led to them are gone.
                self.tree.apply_batch(batch)?;
                self.disk.sync()?;
                let mut batch = LogBatch::default();
                // `Clean` drops the group's entries and keys, the divergent tail too;
                // the keys written after it in the same batch start the group again
                // (as TiKV does when it applies a snapshot).
                batch.add_command(*group, Command::Clean);
                batch.put(*group, TRUNCATED_KEY.to_vec(), truncated.to_vec())?;
                batch.put_message(*group, HARD_STATE_KEY.to_vec(), &hs)?;
                engine.write(&mut batch)?;
            }
        }
        mirror.truncated = (meta.index, meta.term);
        mirror.terms.clear();
        mirror.forget_recent();
        mirror.conf_state = meta.get_conf_state().clone();
        mirror.hard_state = hs;
        Ok(())
    }

    /// A restored shard's log: empty, starting after `index` (at `term`) with `voters`
    /// as its configuration, as if a Raft snapshot at `index` had been installed. Every
    /// replica of a restored cluster starts from the same point, so none needs a
    /// snapshot from another. Only for a fresh log.
    pub fn start_at(&self, index: u64, term: u64, voters: Vec<u64>) -> Result<()> {
        if self.last_index()? != 0 {
            return Err(StoreError::invalid(format!(
                "shard {}: the log is not empty; a restore starts only a fresh one",
                self.shard
            )));
        }
        let mut meta = SnapshotMetadata {
            index,
            term,
            ..Default::default()
        };
        meta.set_conf_state(ConfState::from((voters, vec![])));
        self.apply_snapshot_metadata(&meta)
    }

    /// Drop entries below `compact_index`; the caller must only compact applied entries.
    /// No-op if `compact_index <= first_index`; `Invalid` if past `last_index + 1`.
    pub fn compact(&self, compact_index: u64) -> Result<()> {
        let mut mirror = self.mirror();
        let t_idx = mirror.truncated.0;
        if compact_index <= t_idx + 1 {
            return Ok(());
        }
        let last = mirror.last_index();
        if compact_index > last + 1 {
            return Err(StoreError::invalid(format!(
                "shard {}: compact to {compact_index} past last index {last}",
                self.shard
            )));
        }
        let dropped = (compact_index - 1 - t_idx) as usize;
        let term = mirror.terms[dropped - 1];
        crate::crash_point!("log.compact.before");
        let truncated = Self::truncated_value(compact_index - 1, term);
        match &self.store {
            LogStore::Sled => {
                let mut batch = sled::Batch::default();
                Self::remove_entries(&mirror, &mut batch, Some(compact_index));
                batch.insert(TRUNCATED_KEY, &truncated[..]);
                self.tree.apply_batch(batch)?;
            }
            LogStore::Engine { engine, group } => {
                // What the dropped entries did to the state machine must be durable
                // before they are gone (module doc).
                self.disk.sync()?;
                let mut batch = LogBatch::default();
                batch.add_command(
                    *group,
                    Command::Compact {
                        index: compact_index,
                    },
                );
                batch.put(*group, TRUNCATED_KEY.to_vec(), truncated.to_vec())?;
                engine.write(&mut batch)?;
                engine.purge()?;
            }
        }
        mirror.terms.drain(..dropped);
        mirror.truncated = (compact_index - 1, term);
        mirror.forget_below(compact_index);
        crate::crash_point!("log.compact.after");
        Ok(())
    }

    /// Entries `[low, high)`, at most `max_size` bytes but always at least one.
    fn read_entries(&self, low: u64, high: u64, max_size: Option<u64>) -> Result<Vec<Entry>> {
        if low < self.first_index()? {
            return Err(StoreError::raft_storage(StorageError::Compacted));
        }
        let last = self.last_index()?;
        if high > last + 1 {
            // MemStorage panics here; an error stops the replica just as surely
            // without unwinding through the caller's thread.
            return Err(StoreError::raft_storage(StorageError::Unavailable));
        }
        if low >= high {
            return Ok(Vec::new());
        }
        let max = max_size.unwrap_or(raft::NO_LIMIT);
        if let LogStore::Engine { engine, group } = &self.store {
            if let Some(out) = self.mirror().recent_entries(low, high, max) {
                return Ok(out);
            }
            let mut out = Vec::new();
            // The engine's limit keeps at least one entry, as raft-rs wants.
            let limit = usize::try_from(max).unwrap_or(usize::MAX);
            engine.engine().fetch_entries_to::<EntryExt>(
                *group,
                low,
                high,
                Some(limit),
                &mut out,
            )?;
            if out.first().map(|e| e.index) != Some(low)
                || out.last().map(|e| e.index) != Some(low + out.len() as u64 - 1)
            {
                return Err(self.corrupt(format!("entries missing in [{low}, {high})")));
            }
            return Ok(out);
        }
        let mut out = Vec::new();
        let mut size = 0u64;
        // Stop reading at the first entry over the limit: same result as reading the
        // whole range and calling `raft::util::limit_size`, without the reads.
        for item in self.tree.range(entry_key(low)..entry_key(high)) {
            let (_, v) = item?;
            let expected = low + out.len() as u64;
            let e = self.decode_entry(expected, &v)?;
            let sz = u64::from(e.compute_size());
            if !out.is_empty() && size.saturating_add(sz) > max {
                return Ok(out);
            }
            size = size.saturating_add(sz);
            out.push(e);
        }
        if out.len() as u64 != high - low {
            return Err(self.corrupt(format!("entries missing in [{low}, {high})")));
        }
        Ok(out)
    }
}

impl raft::Storage for RaftLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(RaftState::new(self.hard_state()?, self.conf_state()?))
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        Ok(self.read_entries(low, high, max_size.into())?)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        Ok(self.term_of(idx)?)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::first_index(self)?)
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(RaftLog::last_index(self)?)
    }

    /// Describes the attached state machine's applied point; the data itself is
    /// streamed separately (`ShardState::export`), so `data` is empty.
    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let unavailable = || raft::Error::Store(StorageError::SnapshotTemporarilyUnavailable);
        let applied_point = self.applied.as_ref().ok_or_else(unavailable)?;
        let applied = applied_point()?;
        if applied.index < request_index {
            return Err(unavailable());
        }
        let mut snap = Snapshot::default();
        let meta = snap.mut_metadata();
        meta.index = applied.index;
        meta.term = applied.term;
        meta.set_conf_state(self.conf_state()?);
        Ok(snap)
    }
}
