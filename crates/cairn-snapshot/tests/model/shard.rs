//! One data shard as the model sees it: its Raft log, and everything a replica derives
//! from a prefix of it.
//!
//! Raft itself is abstracted to what the marker protocol relies on: a log whose
//! committed prefix never changes, a leader that appends what it is sent, and (with
//! `tails`) an uncommitted tail of which a leader change may lose any suffix. Every
//! replica's state machine is a function of how far it has applied
//! (`ShardState::apply` is deterministic), so [`View`] replays a prefix to get its cut
//! table, its open holds (`Replica::holds`), its `hold_from`, its locks and the
//! visible data. Only the leader has memory beyond the log: the answers it holds back
//! and its held linearizable read; a leader change loses both, as `fail_pending` does.

/// A write (single-shard batch or cross-shard transaction) by its index in the
/// configuration's script.
pub type WriteId = u8;
/// A snapshot epoch, by allocation order (epoch id `e + 1` in the registry).
pub type Epoch = u8;

/// Most epochs and writes a configuration may have (fixed arrays keep states small).
pub const MAX_EPOCHS: usize = 3;
pub const MAX_WRITES: usize = 4;

/// What a shard's log entry carries: `cairn_store::Command` reduced to identities.
/// Every shard has one user key, so every write and transaction on it conflicts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Command {
    /// A single-shard batch (one entry, so atomic by construction).
    Write(WriteId),
    /// `Marker(e)`: its index is the shard's cut for `e`.
    Marker(Epoch),
    /// `Release(e)`: ends `e`'s alignment window.
    Release(Epoch),
    /// `Prepare(T, ops)`: lock the key for transaction `T`.
    Prepare(WriteId),
    /// `Resolve(T, commit)`: make `T`'s write visible here (commit) and unlock.
    Resolve { txn: WriteId, commit: bool },
}

/// A log entry: the command and the term of the leader that proposed it. Only the
/// leader of that term tracks the proposal (answers are matched by proposal id, and
/// `fail_stale_writes` fails proposals of older terms).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Entry {
    pub command: Command,
    pub term: u8,
}

/// What applying an entry produced: what the proposing leader answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A write became visible at the entry's index.
    Applied,
    /// A write hit a key locked by a prepared transaction, or a `Prepare` came after
    /// its transaction was resolved (or met another transaction's lock).
    Refused,
    /// `ApplyOutcome::Marked { cut }`: the first marker's index, 0 if the epoch had
    /// been released before any marker landed here.
    Marked {
        cut: u8,
    },
    Released,
    Prepared,
    Resolved,
}

/// A cut-table record (`cairn_store::cut::Cut`): `index` 0 means released before
/// marked, which opens nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Cut {
    pub index: u8,
    pub released: bool,
}

impl Cut {
    /// `Cut::is_open`: marked and not yet released.
    pub fn is_open(&self) -> bool {
        self.index > 0 && !self.released
    }
}

/// A transaction's state on one shard.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnHere {
    Unseen,
    /// Prepared: the key is locked.
    Prepared,
    /// Resolved (committed or aborted); a later `Prepare` is refused.
    Resolved,
}

/// A replica's state machine after applying a prefix of the log.
#[derive(Clone, Debug, Default)]
pub struct View {
    pub applied: u8,
    pub cuts: [Option<Cut>; MAX_EPOCHS],
    /// The index at which each write first became visible on this shard.
    pub visible: [Option<u8>; MAX_WRITES],
    prepared: u8,
    resolved: u8,
    /// A transaction was committed here without having been prepared: the protocol
    /// would have written data it never checked or locked.
    pub commit_unprepared: bool,
}

fn bit(id: u8) -> u8 {
    1 << id
}

impl View {
    /// Replay `log[..upto]`.
    pub fn replay(log: &[Entry], upto: u8) -> View {
        let mut view = View::default();
        for entry in log.iter().take(upto as usize) {
            view.step(entry.command);
        }
        view
    }

    /// Where transaction `t` stands on this shard.
    pub fn txn(&self, t: WriteId) -> TxnHere {
        if self.resolved & bit(t) != 0 {
            TxnHere::Resolved
        } else if self.prepared & bit(t) != 0 {
            TxnHere::Prepared
        } else {
            TxnHere::Unseen
        }
    }

    /// Whether some prepared transaction still holds the shard's key.
    pub fn locked(&self) -> bool {
        self.prepared & !self.resolved != 0
    }

    /// Apply the next entry (index `applied + 1`), as `ShardState::apply` does.
    pub fn step(&mut self, command: Command) -> Outcome {
        self.applied += 1;
        let index = self.applied;
        match command {
            Command::Write(w) => {
                if self.locked() {
                    return Outcome::Refused;
                }
                self.visible[w as usize].get_or_insert(index);
                Outcome::Applied
            }
            Command::Marker(e) => match &mut self.cuts[e as usize] {
                // A repeated marker changes nothing and reports the first one's cut.
                Some(existing) => Outcome::Marked {
                    cut: existing.index,
                },
                slot @ None => {
                    *slot = Some(Cut {
                        index,
                        released: false,
                    });
                    Outcome::Marked { cut: index }
                }
            },
            Command::Release(e) => {
                let slot = &mut self.cuts[e as usize];
                match slot {
                    Some(cut) => cut.released = true,
                    // Released before marked: recorded with cut 0, so a late marker
                    // opens nothing.
                    None => {
                        *slot = Some(Cut {
                            index: 0,
                            released: true,
                        })
                    }
                }
                Outcome::Released
            }
            Command::Prepare(t) => {
                if self.resolved & bit(t) != 0 {
                    // Resolved before this Prepare applied: refuse it for good.
                    Outcome::Refused
                } else if self.prepared & bit(t) != 0 {
                    Outcome::Prepared
                } else if self.locked() {
                    Outcome::Refused
                } else {
                    self.prepared |= bit(t);
                    Outcome::Prepared
                }
            }
            Command::Resolve { txn, commit } => {
                if self.resolved & bit(txn) == 0 {
                    self.resolved |= bit(txn);
                    if commit {
                        if self.prepared & bit(txn) == 0 {
                            self.commit_unprepared = true;
                        }
                        self.visible[txn as usize] = Some(index);
                    }
                }
                Outcome::Resolved
            }
        }
    }

    /// `Replica::holds`: the cuts of the epochs open after this prefix.
    pub fn open_cuts(&self) -> impl Iterator<Item = u8> + '_ {
        self.cuts
            .iter()
            .flatten()
            .filter(|c| c.is_open())
            .map(|c| c.index)
    }

    /// `lowest_cut(open_cuts)`, the `hold_from` gauge; `u8::MAX` when nothing is open.
    pub fn hold_from(&self) -> u8 {
        self.open_cuts().min().unwrap_or(u8::MAX)
    }

    /// The writes a read at `version` sees (one bit per write id).
    pub fn visible_at(&self, version: u8) -> u16 {
        self.visible
            .iter()
            .enumerate()
            .filter(|(_, v)| v.is_some_and(|i| i <= version))
            .fold(0, |set, (w, _)| set | 1 << w)
    }
}

/// Longest log a configuration may allow.
pub const MAX_LOG: usize = 8;

/// A shard's log: a fixed array, so states are `Copy` (the checker clones and hashes
/// states all the time). Slots past `len` are always the default, so equal logs are
/// equal values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Log {
    len: u8,
    entries: [Entry; MAX_LOG],
}

impl Default for Log {
    fn default() -> Log {
        Log {
            len: 0,
            entries: [Entry {
                command: Command::Write(0),
                term: 0,
            }; MAX_LOG],
        }
    }
}

impl Log {
    pub fn push(&mut self, entry: Entry) {
        self.entries[self.len as usize] = entry;
        self.len += 1;
    }

    pub fn truncate(&mut self, len: usize) {
        let blank = Log::default().entries[0];
        for slot in &mut self.entries[len..self.len as usize] {
            *slot = blank;
        }
        self.len = self.len.min(len as u8);
    }
}

impl std::ops::Deref for Log {
    type Target = [Entry];

    fn deref(&self) -> &[Entry] {
        &self.entries[..self.len as usize]
    }
}

/// Answers the leader holds back (`replica::Held`), by the index of their entry: each
/// depends on the state at that index, which is above an open cut.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Held(u16);

impl Held {
    pub fn insert(&mut self, entry: u8) {
        self.0 |= 1 << entry;
    }

    pub fn remove(&mut self, entry: u8) {
        self.0 &= !(1 << entry);
    }

    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    pub fn entries(&self) -> impl Iterator<Item = u8> + '_ {
        (1..=MAX_LOG as u8).filter(|i| self.0 & 1 << i != 0)
    }
}

/// The leader's linearizable read held back by an open cut.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Read {
    /// The version the read was answered at (the leader's applied index).
    pub version: u8,
}

/// One shard's replicated log and the memory of its leader.
///
/// The leader applies an entry in the step that commits it, and no follower is
/// tracked; see the module doc of the test for why that loses no behaviour.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Shard {
    /// The committed prefix, then the leader's uncommitted tail.
    pub log: Log,
    /// Committed, and applied by the leader.
    pub committed: u8,
    pub term: u8,
    /// Leader memory: answers held back by the alignment window.
    pub held: Held,
    /// Leader memory: a linearizable read held back by the alignment window.
    pub read: Option<Read>,
    /// Mutation `LeaderForgetsHolds` only: markers at or below this index are not in the
    /// leader's open cuts (it applied them before its election). 0 otherwise.
    pub forgot_through: u8,
}

impl Shard {
    /// The leader's state machine (it has applied everything committed).
    pub fn leader_view(&self) -> View {
        View::replay(&self.log, self.committed)
    }

    /// The committed prefix below `cut` as a state machine: what a snapshot with that
    /// cut holds of this shard.
    pub fn below(&self, cut: u8) -> View {
        View::replay(&self.log, cut.saturating_sub(1))
    }
}
