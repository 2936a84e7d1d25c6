//! A shard's state machine: the MVCC data tree.
//!
//! Every committed log entry is applied at `version = its log index`, so a version is
//! also a position in the log and a snapshot cut is just an index: "the state at cut
//! `c`" is, per key, the newest version `< c`. Old versions and tombstones stay until
//! history GC (not here yet) removes what no snapshot needs.
//!
//! Contracts of [`ShardState::apply`], which every replica runs on the same entries:
//!
//! - **Deterministic.** The outcome depends only on the tree and the entry; conditions
//!   are evaluated against the state before the batch, never against a half-applied one.
//! - **Atomic with its index.** The data and the applied (index, term) go in one sled
//!   batch, so after a crash the applied index describes exactly the data present and
//!   the entry is either re-applied in full or not at all.
//! - **Once.** An index at or below the applied index is refused (`AlreadyApplied`).
//!
//! A storage error from `apply` is fatal to the replica, never a client reply: the
//! replicas would diverge otherwise.
//!
//! See [`crate::keys`] for the byte layout.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::command::{Command, Condition, OpKind, WriteOp};
use crate::cut::{self, Cut};
use crate::error::{Result, StoreError};
use crate::keys;
use crate::page::{Page, PageBuilder, PageLimit};
use crate::stage::SnapshotStage;
use crate::ShardId;

/// The result of applying one batch; the leader returns it to the client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ApplyOutcome {
    /// Every condition held; all ops written at version = the entry's log index.
    Applied {
        /// The version the batch was written at (its log index).
        version: u64,
        /// `existed[i]`: the key of op `i` had a live value before the batch.
        existed: Vec<bool>,
    },
    /// Some condition failed; nothing was written (but the applied index still advanced).
    Rejected {
        /// Index in the batch of the first op whose condition failed.
        op: usize,
        /// Live version of that op's key before the batch (`None` if absent).
        current: Option<u64>,
    },
    /// A marker was applied; `cut` is this shard's cut for the epoch (the first
    /// marker's index if the epoch was already marked, 0 if it was already released).
    Marked { cut: u64 },
    /// A release was applied.
    Released,
    /// A compaction was applied; `horizon` is the shard's horizon now.
    Compacted { horizon: u64 },
    /// A batch or prepare touched a key that transaction `txn` has locked; nothing was
    /// written. Retrying after the transaction resolves may succeed.
    Locked {
        /// Index in the batch of the first op whose key is locked.
        op: usize,
        txn: u64,
    },
    /// A prepare's conditions held: its keys are locked until the transaction resolves.
    Prepared {
        /// `existed[i]`: the key of op `i` had a live value at the prepare.
        existed: Vec<bool>,
    },
    /// A prepare was refused because its transaction was already resolved here, or
    /// is older than the transaction horizon. Nothing was locked.
    TxnClosed,
    /// A resolve was applied (or had been before: the first outcome is repeated).
    Resolved {
        /// The outcome recorded here: whether the ops were applied.
        committed: bool,
        /// The version the ops were written at, if they were written here.
        version: Option<u64>,
    },
    /// The transaction horizon was raised; `forgotten` resolved records were dropped.
    TxnsForgotten { forgotten: usize },
}

/// The last log entry applied to a shard's state machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct AppliedState {
    /// Log index of the entry.
    pub index: u64,
    /// Term of the entry.
    pub term: u64,
}

/// A live value and the version (log index) that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versioned {
    /// Log index of the write.
    pub version: u64,
    /// The value.
    pub value: Vec<u8>,
}

/// One shard's MVCC state machine. Clone = same tree.
#[derive(Clone)]
pub struct ShardState {
    shard: ShardId,
    tree: sled::Tree,
}

impl std::fmt::Debug for ShardState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ShardState")
            .field("shard", &self.shard)
            .finish_non_exhaustive()
    }
}

fn encode_applied(a: AppliedState) -> [u8; 16] {
    keys::encode_pair(a.index, a.term)
}

/// The newest version of a key, whatever it is: `(version, live)`.
type Newest = Option<(u64, bool)>;

/// The state of every key a batch touches, before it applies.
pub(crate) struct Before<'a> {
    newest: BTreeMap<&'a [u8], Newest>,
}

impl Before<'_> {
    /// The key's live version, `None` if absent or deleted.
    pub(crate) fn live_version(&self, key: &[u8]) -> Option<u64> {
        match self.newest.get(key) {
            Some(Some((v, true))) => Some(*v),
            _ => None,
        }
    }

    /// Per op: whether its key had a live value.
    pub(crate) fn existed(&self, ops: &[WriteOp]) -> Vec<bool> {
        ops.iter()
            .map(|op| self.live_version(&op.key).is_some())
            .collect()
    }
}

impl ShardState {
    pub(crate) fn new(shard: ShardId, tree: sled::Tree) -> ShardState {
        ShardState { shard, tree }
    }

    /// The shard this state belongs to.
    pub fn shard(&self) -> ShardId {
        self.shard
    }

    /// This state's applied point, for the shard's Raft log to describe in its
    /// snapshots ([`crate::RaftLog::attach_applied`]).
    pub fn applied_point(&self) -> crate::AppliedPoint {
        let state = self.clone();
        std::sync::Arc::new(move || state.applied())
    }

    /// The last applied entry; (0, 0) for a new shard.
    pub fn applied(&self) -> Result<AppliedState> {
        let Some(v) = self.tree.get(keys::APPLIED_KEY)? else {
            return Ok(AppliedState::default());
        };
        let Some((index, term)) = keys::decode_pair(&v) else {
            return Err(StoreError::corrupt(format!(
                "shard {} applied state has length {}",
                self.shard,
                v.len()
            )));
        };
        Ok(AppliedState { index, term })
    }

    pub(crate) fn tree(&self) -> &sled::Tree {
        &self.tree
    }

    fn newest(&self, key: &[u8]) -> Result<Newest> {
        match self.tree.scan_prefix(keys::versions_prefix(key)).next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                let version = keys::key_version(&k)?;
                Ok(Some((version, keys::decode_value(&v)?.is_some())))
            }
        }
    }

    /// Apply one committed log entry at `index` (see the module doc for the contract).
    /// `command` is `None` for entries without a command (empty or conf change): only
    /// the applied state moves.
    pub fn apply(&self, index: u64, term: u64, command: Option<&Command>) -> Result<ApplyOutcome> {
        let applied = self.applied()?;
        if index <= applied.index {
            return Err(StoreError::AlreadyApplied {
                shard: self.shard,
                index,
                applied: applied.index,
            });
        }
        let mut batch = sled::Batch::default();
        let outcome = match command {
            None => ApplyOutcome::Applied {
                version: index,
                existed: Vec::new(),
            },
            Some(Command::Batch(ops)) => self.apply_writes(&mut batch, ops, index)?,
            Some(Command::Prepare { txn, ops }) => {
                self.apply_prepare(&mut batch, index, *txn, ops)?
            }
            Some(Command::Resolve { txn, commit }) => {
                self.apply_resolve(&mut batch, index, *txn, *commit)?
            }
            Some(Command::TxnHorizon { before_ms }) => {
                self.apply_txn_horizon(&mut batch, index, *before_ms)?
            }
            Some(Command::Marker { epoch }) => match self.cut(*epoch)? {
                Some(existing) => ApplyOutcome::Marked {
                    cut: existing.index,
                },
                None => {
                    let new = Cut {
                        epoch: *epoch,
                        index,
                        released_at: None,
                    };
                    batch.insert(&cut::encode_key(*epoch)[..], &cut::encode_value(&new)[..]);
                    ApplyOutcome::Marked { cut: index }
                }
            },
            Some(Command::Compact { horizon }) => {
                // A horizon at or above this entry would refuse reads of state that
                // has not been decided yet; clamp it below.
                let horizon = (*horizon).min(index - 1).max(self.horizon()?);
                batch.insert(keys::HORIZON_KEY, &horizon.to_be_bytes()[..]);
                ApplyOutcome::Compacted { horizon }
            }
            Some(Command::Release { epoch }) => {
                let record = match self.cut(*epoch)? {
                    Some(c) if c.released_at.is_some() => None,
                    Some(c) => Some(Cut {
                        released_at: Some(index),
                        ..c
                    }),
                    None => Some(Cut {
                        epoch: *epoch,
                        index: 0,
                        released_at: Some(index),
                    }),
                };
                if let Some(c) = record {
                    batch.insert(&cut::encode_key(*epoch)[..], &cut::encode_value(&c)[..]);
                }
                ApplyOutcome::Released
            }
        };
        self.commit_apply(batch, AppliedState { index, term })?;
        Ok(outcome)
    }

    /// A client's batch at `index`: refused if a transaction locks one of its keys or a
    /// condition fails (then `batch` gains nothing), else its writes go into `batch`.
    /// Reads only the tree, so `batch` must not yet hold writes to `ops`'s keys.
    pub(crate) fn apply_writes(
        &self,
        batch: &mut sled::Batch,
        ops: &[WriteOp],
        index: u64,
    ) -> Result<ApplyOutcome> {
        if let Some((op, txn)) = self.first_locked(ops, None)? {
            return Ok(ApplyOutcome::Locked { op, txn });
        }
        let before = self.read_before(ops)?;
        if let Some((op, current)) = self.failed_condition(ops, &before)? {
            return Ok(ApplyOutcome::Rejected { op, current });
        }
        self.write_ops(batch, ops, &before, index);
        Ok(ApplyOutcome::Applied {
            version: index,
            existed: before.existed(ops),
        })
    }

    /// Write `batch` with the applied state moved to `applied`: what one apply, or one
    /// run of them, leaves in the tree, atomically.
    pub(crate) fn commit_apply(&self, mut batch: sled::Batch, applied: AppliedState) -> Result<()> {
        batch.insert(keys::APPLIED_KEY, &encode_applied(applied)[..]);
        crate::crash_point!("state.apply.before");
        self.tree.apply_batch(batch)?;
        crate::crash_point!("state.apply.after");
        Ok(())
    }

    /// The newest version of every key `ops` touch, read once before they apply.
    pub(crate) fn read_before<'a>(&self, ops: &'a [WriteOp]) -> Result<Before<'a>> {
        let mut newest = BTreeMap::new();
        for op in ops {
            if !newest.contains_key(op.key.as_slice()) {
                newest.insert(op.key.as_slice(), self.newest(&op.key)?);
            }
        }
        Ok(Before { newest })
    }

    /// The first op whose condition fails against the state before the batch, with
    /// its key's live version.
    pub(crate) fn failed_condition(
        &self,
        ops: &[WriteOp],
        before: &Before<'_>,
    ) -> Result<Option<(usize, Option<u64>)>> {
        for (i, op) in ops.iter().enumerate() {
            let current = before.live_version(&op.key);
            let holds = match &op.condition {
                Condition::NothingUnder => self.scan(&op.key, None, 1, u64::MAX)?.items.is_empty(),
                other => other.holds(current),
            };
            if !holds {
                return Ok(Some((i, current)));
            }
        }
        Ok(None)
    }

    /// Add `ops`' writes at `version` to `batch`: the last op on a key wins, and a
    /// delete writes a tombstone only if there is something to hide.
    pub(crate) fn write_ops(
        &self,
        batch: &mut sled::Batch,
        ops: &[WriteOp],
        before: &Before<'_>,
        version: u64,
    ) {
        let mut last_op: BTreeMap<&[u8], &OpKind> = BTreeMap::new();
        for op in ops {
            if op.kind != OpKind::Check {
                last_op.insert(&op.key, &op.kind);
            }
        }
        for (key, kind) in last_op {
            match kind {
                OpKind::Put(value) => batch.insert(
                    keys::encode_key(key, version),
                    keys::encode_value(Some(value)),
                ),
                OpKind::Delete if before.live_version(key).is_some() => {
                    batch.insert(keys::encode_key(key, version), keys::encode_value(None))
                }
                OpKind::Delete | OpKind::Check => {}
            }
        }
    }

    /// Newest live version of `key` with version <= `at` (`u64::MAX` for latest); `None`
    /// if absent or deleted at that point.
    pub fn get(&self, key: &[u8], at: u64) -> Result<Option<Versioned>> {
        self.check_readable(at)?;
        // Versions are stored inverted, so "<= at" is "key >= encode(key, at)" and the
        // first hit is the newest one.
        let range = keys::encode_key(key, at)..=keys::encode_key(key, 0);
        match self.tree.range(range).next() {
            None => Ok(None),
            Some(item) => {
                let (k, v) = item?;
                let version = keys::key_version(&k)?;
                Ok(keys::decode_value(&v)?.map(|value| Versioned {
                    version,
                    value: value.to_vec(),
                }))
            }
        }
    }

    /// Live keys starting with `prefix`, strictly after `start_after` (if given), in byte
    /// order, as of version `at`: one page, within `limit` (see [`crate::page`]).
    pub fn scan(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: impl Into<PageLimit>,
        at: u64,
    ) -> Result<Page<Versioned>> {
        self.check_readable(at)?;
        /// Versions of one key skipped in a row before seeking past the key instead.
        const MAX_SKIP: usize = 16;
        let mut out = PageBuilder::new(limit.into());
        if out.is_full() {
            return Ok(out.finish());
        }
        let scan_prefix = keys::scan_prefix(prefix);
        let mut lower = match start_after {
            Some(after) => keys::after_key(after).max(scan_prefix.clone()),
            None => scan_prefix.clone(),
        };
        let mut iter = self.tree.range(lower.clone()..);
        // Identity (encoded key without version) of the last key already decided.
        let mut done: Option<Vec<u8>> = None;
        let mut skipped = 0;
        while let Some(item) = iter.next() {
            let (k, v) = item?;
            if !k.starts_with(&scan_prefix) {
                break;
            }
            let ident = keys::key_identity(&k);
            if done.as_deref() == Some(ident) {
                skipped += 1;
                if skipped > MAX_SKIP {
                    // A key with a long history: jump past it rather than walk it.
                    let (user_key, _) = keys::decode_key(&k)?;
                    lower = keys::after_key(&user_key);
                    iter = self.tree.range(lower.clone()..);
                    skipped = 0;
                }
                continue;
            }
            let version = keys::key_version(&k)?;
            if version > at {
                continue;
            }
            done = Some(ident.to_vec());
            skipped = 0;
            if let Some(value) = keys::decode_value(&v)? {
                let (user_key, _) = keys::decode_key(&k)?;
                let cost = Page::<Versioned>::cost(user_key.len(), value.len());
                let item = Versioned {
                    version,
                    value: value.to_vec(),
                };
                if !out.push(user_key, item, cost) || out.is_full() {
                    break;
                }
            }
        }
        Ok(out.finish())
    }

    /// Keys under `prefix`, after `start_after`, whose visible value at version `to`
    /// differs from the one at `from`, in key order, one page within `limit`: each with
    /// its value at `to`, or `None` if it was deleted (or is absent) there.
    pub fn diff(
        &self,
        prefix: &[u8],
        start_after: Option<&[u8]>,
        limit: impl Into<PageLimit>,
        from: u64,
        to: u64,
    ) -> Result<Page<Option<Versioned>>> {
        self.check_readable(from.min(to))?;
        let mut out = PageBuilder::new(limit.into());
        if out.is_full() {
            return Ok(out.finish());
        }
        let scan_prefix = keys::scan_prefix(prefix);
        let lower = match start_after {
            Some(after) => keys::after_key(after).max(scan_prefix.clone()),
            None => scan_prefix.clone(),
        };
        // Per user key (its versions are adjacent, newest first): the newest live
        // version at or below each bound. A tombstone hides everything older.
        struct Seen {
            key: Vec<u8>,
            at_from: Option<Option<(u64, Vec<u8>)>>,
            at_to: Option<Option<(u64, Vec<u8>)>>,
        }
        let mut current: Option<Seen> = None;
        // Adds a finished key to the page if it changed; false once the page is done.
        let finish = |seen: Seen, out: &mut PageBuilder<Option<Versioned>>| {
            let before = seen.at_from.flatten();
            let after = seen.at_to.flatten();
            if before.as_ref().map(|b| b.0) == after.as_ref().map(|a| a.0) {
                return true;
            }
            let value = after.as_ref().map_or(0, |(_, v)| v.len());
            let cost = Page::<Versioned>::cost(seen.key.len(), value);
            let item = after.map(|(version, value)| Versioned { version, value });
            out.push(seen.key, item, cost) && !out.is_full()
        };
        for item in self.tree.range(lower..) {
            let (k, v) = item?;
            if !k.starts_with(&scan_prefix) {
                break;
            }
            let (user_key, version) = keys::decode_key(&k)?;
            if current.as_ref().is_none_or(|c| c.key != user_key) {
                if let Some(done) = current.take() {
                    if !finish(done, &mut out) {
                        return Ok(out.finish());
                    }
                }
                current = Some(Seen {
                    key: user_key,
                    at_from: None,
                    at_to: None,
                });
            }
            let Some(seen) = current.as_mut() else {
                continue;
            };
            let value = || -> Result<Option<(u64, Vec<u8>)>> {
                Ok(keys::decode_value(&v)?.map(|val| (version, val.to_vec())))
            };
            if version <= to && seen.at_to.is_none() {
                seen.at_to = Some(value()?);
            }
            if version <= from && seen.at_from.is_none() {
                seen.at_from = Some(value()?);
            }
        }
        if let Some(done) = current.take() {
            finish(done, &mut out);
        }
        Ok(out.finish())
    }

    /// The oldest readable version: reads below it fail with `HistoryCollected`.
    pub fn horizon(&self) -> Result<u64> {
        match self.tree.get(keys::HORIZON_KEY)? {
            None => Ok(0),
            Some(v) => v.as_ref().try_into().map(u64::from_be_bytes).map_err(|_| {
                StoreError::corrupt(format!(
                    "shard {} horizon has length {}",
                    self.shard,
                    v.len()
                ))
            }),
        }
    }

    /// Refuse a read at `at` if history below the horizon may be gone.
    fn check_readable(&self, at: u64) -> Result<()> {
        let horizon = self.horizon()?;
        if at < horizon {
            return Err(StoreError::HistoryCollected { horizon });
        }
        Ok(())
    }

    /// Delete versions no read at or above `horizon` can see: for each key, everything
    /// older than its newest version at or below the horizon, and that version too if
    /// it is a tombstone. Works in sled batches of at most `batch` deletions; returns
    /// how many versions it removed. Safe alongside `apply`, which only adds versions
    /// above the applied index (and so above any horizon).
    pub fn collect(&self, horizon: u64, batch: usize) -> Result<usize> {
        let mut removed = 0;
        let mut pending = sled::Batch::default();
        let mut in_batch = 0;
        // The identity of the current key, and whether its kept version was seen.
        let mut current: Option<Vec<u8>> = None;
        let mut kept = false;
        for item in self.tree.scan_prefix([keys::DATA_PREFIX]) {
            let (k, v) = item?;
            let ident = keys::key_identity(&k).to_vec();
            if current.as_deref() != Some(&ident[..]) {
                current = Some(ident);
                kept = false;
            }
            let version = keys::key_version(&k)?;
            if version > horizon {
                continue;
            }
            let drop_it = if kept {
                true
            } else {
                kept = true;
                // The newest version at or below the horizon: a tombstone hides
                // nothing once everything older is gone, so it can go too.
                keys::decode_value(&v)?.is_none()
            };
            if drop_it {
                pending.remove(k);
                in_batch += 1;
                removed += 1;
                if in_batch >= batch {
                    self.tree.apply_batch(std::mem::take(&mut pending))?;
                    in_batch = 0;
                }
            }
        }
        if in_batch > 0 {
            self.tree.apply_batch(pending)?;
        }
        Ok(removed)
    }

    /// This shard's record of `epoch`, if its marker or release was applied.
    pub fn cut(&self, epoch: u64) -> Result<Option<Cut>> {
        self.tree
            .get(cut::encode_key(epoch))?
            .map(|v| cut::decode(&cut::encode_key(epoch), &v))
            .transpose()
    }

    /// Every epoch recorded here, oldest first.
    pub fn cuts(&self) -> Result<Vec<Cut>> {
        self.tree
            .scan_prefix([cut::CUT_PREFIX])
            .map(|item| {
                let (k, v) = item?;
                cut::decode(&k, &v)
            })
            .collect()
    }

    /// Epochs whose alignment hold is in force (marker applied, release not yet).
    pub fn open_cuts(&self) -> Result<Vec<Cut>> {
        Ok(self.cuts()?.into_iter().filter(Cut::is_open).collect())
    }

    /// Raw (tree key, tree value) pairs of the shard's state (with history) as of `upto`,
    /// for streaming a Raft snapshot: the cut table and the transaction records as they
    /// stood after entry `upto`, every data version <= it (in tree order), and last the
    /// GC horizon as it stands once the data has been read.
    ///
    /// Versions <= the applied index never change, so the result is exact even while
    /// `apply` continues; `upto` above the applied index gives whatever is applied by
    /// the time the iterator gets there.
    pub fn export(
        &self,
        upto: u64,
    ) -> impl Iterator<Item = Result<(Vec<u8>, Vec<u8>)>> + Send + 'static {
        // On the leader, as it starts streaming a Raft snapshot to a follower.
        crate::crash_point!("state.snapshot_export");
        let cuts = self
            .tree
            .scan_prefix([cut::CUT_PREFIX])
            .filter_map(move |item| {
                let record = item
                    .map_err(StoreError::from)
                    .and_then(|(k, v)| cut::decode(&k, &v));
                match record {
                    Ok(c) => c.as_of(upto).map(|c| {
                        Ok((
                            cut::encode_key(c.epoch).to_vec(),
                            cut::encode_value(&c).to_vec(),
                        ))
                    }),
                    Err(e) => Some(Err(e)),
                }
            });
        let data = self
            .tree
            .scan_prefix([keys::DATA_PREFIX])
            .filter_map(move |item| {
                let pair = item.map_err(StoreError::from).and_then(|(k, v)| {
                    // Validate here so a corrupt record is named at the source, not
                    // discovered on the receiving node.
                    let (_, version) = keys::decode_key(&k)?;
                    keys::decode_value(&v)?;
                    Ok((version, k, v))
                });
                match pair {
                    Ok((version, k, v)) if version <= upto => Some(Ok((k.to_vec(), v.to_vec()))),
                    Ok(_) => None,
                    Err(e) => Some(Err(e)),
                }
            });
        // The horizon is read last, once the data has been streamed, because history GC
        // may run while the stream is read: a compaction sets the horizon before
        // `collect` deletes anything, so the horizon read after the last data pair
        // covers every version the stream could have missed, and the receiver refuses
        // exactly the reads this replica refuses. Read first, a compaction mid-stream
        // would leave the receiver answering below the new horizon from versions it was
        // never sent: a wrong answer instead of a 410.
        let tree = self.tree.clone();
        let horizon = std::iter::once_with(move || {
            tree.get(keys::HORIZON_KEY)
                .map_err(StoreError::from)
                .map(|h| h.map(|h| (keys::HORIZON_KEY.to_vec(), h.to_vec())))
                .transpose()
        })
        .flatten();
        let txns = self.export_txns(upto);
        cuts.chain(txns).chain(data).chain(horizon)
    }

    /// Replace this shard's whole state with the pairs in `stage`, and set the applied
    /// state, in one sled batch. `Corrupt` (nothing written) if any staged pair is not a
    /// valid data record.
    pub fn install(&self, stage: &SnapshotStage, applied: AppliedState) -> Result<()> {
        crate::crash_point!("state.snapshot_install.before");
        let mut batch = sled::Batch::default();
        for k in self.tree.iter().keys() {
            batch.remove(k?);
        }
        for item in stage.iter() {
            let (k, v) = item?;
            let valid = if let Some(valid) = crate::txn::validate_staged(&k, &v) {
                valid
            } else if k.first() == Some(&cut::CUT_PREFIX) {
                cut::decode(&k, &v).map(|_| ())
            } else if k.as_ref() == keys::HORIZON_KEY {
                if v.len() == 8 {
                    Ok(())
                } else {
                    Err(StoreError::corrupt("horizon of the wrong length"))
                }
            } else {
                keys::decode_key(&k).and_then(|_| keys::decode_value(&v).map(|_| ()))
            };
            valid.map_err(|e| {
                StoreError::corrupt(format!("shard {} staged snapshot: {e}", self.shard))
            })?;
            batch.insert(k, v);
        }
        batch.insert(keys::APPLIED_KEY, &encode_applied(applied)[..]);
        self.tree.apply_batch(batch)?;
        crate::crash_point!("state.snapshot_install.after");
        Ok(())
    }

    /// Every data (tree key, tree value) pair, in tree order.
    pub(crate) fn raw_data(&self) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec)>> + Send {
        self.tree
            .scan_prefix([keys::DATA_PREFIX])
            .map(|item| item.map_err(StoreError::from))
    }

    /// The data tree's pairs from tree key `from` (inclusive; from the start if
    /// `None`).
    pub(crate) fn raw_data_from(
        &self,
        from: Option<Vec<u8>>,
    ) -> impl Iterator<Item = Result<(sled::IVec, sled::IVec)>> + Send {
        let start = from.unwrap_or_else(|| vec![keys::DATA_PREFIX]);
        let end = vec![keys::DATA_PREFIX + 1];
        self.tree
            .range(start..end)
            .map(|item| item.map_err(StoreError::from))
    }

    pub(crate) fn insert_raw(&self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        self.tree.insert(key, value)?;
        Ok(())
    }

    pub(crate) fn flush_raw(&self) -> Result<()> {
        self.tree.flush()?;
        Ok(())
    }

    pub(crate) fn set_applied(&self, applied: AppliedState) -> Result<()> {
        self.tree
            .insert(keys::APPLIED_KEY, &encode_applied(applied)[..])?;
        Ok(())
    }

    /// Number of keys whose newest version is live. O(versions).
    pub fn live_keys(&self) -> Result<u64> {
        let mut count = 0;
        let mut last: Option<Vec<u8>> = None;
        for item in self.tree.scan_prefix([keys::DATA_PREFIX]) {
            let (k, v) = item?;
            let ident = keys::key_identity(&k);
            if last.as_deref() == Some(ident) {
                continue;
            }
            last = Some(ident.to_vec());
            if keys::decode_value(&v)?.is_some() {
                count += 1;
            }
        }
        Ok(count)
    }
}
