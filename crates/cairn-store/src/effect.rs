//! What applying one log entry means for the answers a replica holds back.
//!
//! The replica (`cairn-raft`) drives consensus and must not interpret commands; the
//! state machine here does. So applying an entry returns, next to the command's
//! outcome, its [`Effects`] in the replica's own terms: a **hold** opened or closed
//! (answers that depend on state after a version wait while a hold below them is open:
//! a snapshot epoch's alignment window, opened by its marker at the cut, closed by its
//! release), a **lock** gone (reads parked on a transaction's locks may go on: its
//! resolve was applied), whether the answer **reveals data** (a marker's or release's
//! does not, and must never be held, or a snapshot could wait on itself), and whether
//! it **wrote data** (what automatic snapshots count).
//!
//! Every effect is a function of the applied log alone, so a new leader, a restarted
//! node and a replica that installed a Raft snapshot re-derive the same holds.

use std::collections::HashSet;

use crate::command::{Command, Condition, OpKind};
use crate::error::{Result, StoreError};
use crate::state::{AppliedState, ApplyOutcome, ShardState};

/// A hold: answers that depend on state after `from` wait until it closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hold {
    /// Names the hold (a snapshot's epoch), so its closing finds it.
    pub id: u64,
    /// The highest version answers may reveal while it is open (the cut: the marker
    /// writes no data, so the state at the cut is the state below it).
    pub from: u64,
}

/// The effects of one applied entry on held answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effects {
    pub opens: Option<Hold>,
    /// The id of a hold that closes (it may not be open here: a release of an epoch
    /// whose marker this replica never applied is harmless).
    pub closes: Option<u64>,
    /// A lock owner (transaction) whose locks on this shard are gone.
    pub unlocks: Option<u64>,
    /// The entry's answer reveals no data: send it at once, never hold it.
    pub reveals_nothing: bool,
    /// Client data was written (a batch applied, a transaction committed here).
    pub wrote_data: bool,
}

impl Effects {
    /// The effects of applying `command` at `index` with `outcome`.
    pub fn of(index: u64, command: Option<&Command>, outcome: &ApplyOutcome) -> Effects {
        let mut effects = Effects::default();
        match (command, outcome) {
            (Some(Command::Marker { epoch }), ApplyOutcome::Marked { cut }) => {
                effects.reveals_nothing = true;
                // A repeated marker reports the first one's cut; only the first opens.
                if *cut == index {
                    effects.opens = Some(Hold {
                        id: *epoch,
                        from: *cut,
                    });
                }
            }
            (Some(Command::Release { epoch }), ApplyOutcome::Released) => {
                effects.reveals_nothing = true;
                effects.closes = Some(*epoch);
            }
            (Some(Command::Batch(_)), ApplyOutcome::Applied { .. }) => effects.wrote_data = true,
            (Some(Command::Resolve { txn, .. }), ApplyOutcome::Resolved { version, .. }) => {
                effects.unlocks = Some(*txn);
                effects.wrote_data = version.is_some();
            }
            (Some(Command::Resolve { txn, .. }), _) => effects.unlocks = Some(*txn),
            _ => {}
        }
        effects
    }
}

/// One committed log entry's place and data, as [`ShardState::apply_entries`] takes it.
#[derive(Debug, Clone, Copy)]
pub struct Committed<'a> {
    pub index: u64,
    pub term: u64,
    /// A [`Command`]'s encoding, or empty for an entry without one (a new leader's
    /// empty entry, a configuration change).
    pub data: &'a [u8],
}

fn decode(data: &[u8]) -> Result<Option<Command>> {
    if data.is_empty() {
        Ok(None)
    } else {
        Ok(Some(Command::decode(data)?))
    }
}

impl ShardState {
    /// Apply one committed entry's data (a [`Command`]'s encoding, or empty for an
    /// entry without one) at `index`, and say what it means for held answers.
    pub fn apply_entry(
        &self,
        index: u64,
        term: u64,
        data: &[u8],
    ) -> Result<(ApplyOutcome, Effects)> {
        let command = decode(data)?;
        let outcome = self.apply(index, term, command.as_ref())?;
        let effects = Effects::of(index, command.as_ref(), &outcome);
        Ok((outcome, effects))
    }

    /// Apply a prefix of `entries` (at least one of them, if there are any) and return
    /// the outcome and effects of each entry applied, in order.
    ///
    /// Why a prefix: each sled batch takes sled's process-wide lock exclusively, so one
    /// batch per entry made every shard of the node wait on every other's applies. A
    /// run of consecutive plain entries (client batches, entries without a command)
    /// whose ops name keys no earlier entry of the run wrote is applied in one batch:
    /// each reads only the tree, and nothing earlier in the run changed what it reads
    /// (its own keys; locks change only by transaction phases, which are not plain).
    /// A batch with a `NothingUnder` condition reads a whole prefix, so it is not plain. Any other
    /// command is applied alone and ends the prefix, so the replica acts on its effects
    /// (opening a hold, waking lock waiters) before a later entry's data reaches the
    /// tree, exactly as when every entry was applied by itself.
    pub fn apply_entries(&self, entries: &[Committed<'_>]) -> Result<Vec<(ApplyOutcome, Effects)>> {
        let Some(first) = entries.first() else {
            return Ok(Vec::new());
        };
        let mut commands = Vec::new();
        let mut written: HashSet<Vec<u8>> = HashSet::new();
        for entry in entries {
            let command = decode(entry.data)?;
            let plain = match &command {
                None => true,
                // A `NothingUnder` condition reads every key under a prefix, not just
                // its own, so it never joins a run: it must see the run's writes.
                Some(Command::Batch(ops)) => ops.iter().all(|op| {
                    op.condition != Condition::NothingUnder && !written.contains(op.key.as_slice())
                }),
                Some(_) => false,
            };
            if !plain {
                if commands.is_empty() {
                    let outcome = self.apply(first.index, first.term, command.as_ref())?;
                    let effects = Effects::of(first.index, command.as_ref(), &outcome);
                    return Ok(vec![(outcome, effects)]);
                }
                break;
            }
            if let Some(Command::Batch(ops)) = &command {
                written.extend(
                    ops.iter()
                        .filter(|op| op.kind != OpKind::Check)
                        .map(|op| op.key.clone()),
                );
            }
            commands.push((entry, command));
        }
        let applied = self.applied()?;
        let mut batch = sled::Batch::default();
        let mut out = Vec::with_capacity(commands.len());
        let mut last = applied;
        for (entry, command) in &commands {
            if entry.index <= last.index {
                return Err(StoreError::AlreadyApplied {
                    shard: self.shard(),
                    index: entry.index,
                    applied: last.index,
                });
            }
            let outcome = match command {
                Some(Command::Batch(ops)) => self.apply_writes(&mut batch, ops, entry.index)?,
                _ => ApplyOutcome::Applied {
                    version: entry.index,
                    existed: Vec::new(),
                },
            };
            let effects = Effects::of(entry.index, command.as_ref(), &outcome);
            out.push((outcome, effects));
            last = AppliedState {
                index: entry.index,
                term: entry.term,
            };
        }
        self.commit_apply(batch, last)?;
        Ok(out)
    }

    /// The holds open in this state (snapshot epochs marked here and not released),
    /// as a replica re-derives them after opening or installing a Raft snapshot.
    pub fn open_holds(&self) -> Result<Vec<Hold>> {
        Ok(self
            .open_cuts()?
            .into_iter()
            .map(|c| Hold {
                id: c.epoch,
                from: c.index,
            })
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_first_marker_opens_and_only_data_writes_count() {
        let marker = Command::Marker { epoch: 7 };
        let first = Effects::of(10, Some(&marker), &ApplyOutcome::Marked { cut: 10 });
        assert_eq!(first.opens, Some(Hold { id: 7, from: 10 }));
        assert!(first.reveals_nothing && !first.wrote_data);
        let again = Effects::of(12, Some(&marker), &ApplyOutcome::Marked { cut: 10 });
        assert_eq!(again.opens, None);
        assert!(again.reveals_nothing);

        let release = Command::Release { epoch: 7 };
        let closed = Effects::of(13, Some(&release), &ApplyOutcome::Released);
        assert_eq!(closed.closes, Some(7));

        let batch = Command::Batch(Vec::new());
        let applied = ApplyOutcome::Applied {
            version: 14,
            existed: Vec::new(),
        };
        assert!(Effects::of(14, Some(&batch), &applied).wrote_data);
        let rejected = ApplyOutcome::Rejected {
            op: 0,
            current: None,
        };
        assert_eq!(Effects::of(15, Some(&batch), &rejected), Effects::default());

        let resolve = Command::Resolve {
            txn: 3,
            commit: true,
        };
        let committed = ApplyOutcome::Resolved {
            committed: true,
            version: Some(16),
        };
        let effects = Effects::of(16, Some(&resolve), &committed);
        assert_eq!((effects.unlocks, effects.wrote_data), (Some(3), true));
        let aborted = ApplyOutcome::Resolved {
            committed: false,
            version: None,
        };
        let effects = Effects::of(17, Some(&resolve), &aborted);
        assert_eq!((effects.unlocks, effects.wrote_data), (Some(3), false));
        let empty = ApplyOutcome::Applied {
            version: 18,
            existed: Vec::new(),
        };
        assert_eq!(Effects::of(18, None, &empty), Effects::default());
    }
}
