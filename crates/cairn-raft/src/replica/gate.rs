//! The answer gates: what may not be answered yet, and why.
//!
//! Two things hold an answer back after its entry is applied or its read barrier
//! passed. A snapshot's **alignment window**: from applying `Marker(e)` until applying
//! `Release(e)`, an answer that depends on state after the cut could let a client learn
//! of a write the snapshot excludes before the snapshot completes (guarantee 3), so it
//! waits in `held`. A prepared **transaction's lock**: a linearizable read of a locked
//! key may be looking at a committed transaction not yet resolved here, so it waits in
//! `lock_waits` for the resolve. Neither is decided here: the state machine says, for
//! every applied entry, which hold it opens or closes and which lock owner it
//! releases (`cairn_store::Effects`); this file only keeps the answers. Effects are a
//! function of the applied log, so a new leader re-establishes the holds by itself.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;

use super::read::Reader;
use super::{Outbox, ReadReply, Replica, WriteReply};
use crate::commit::Durability;
use crate::error::{ReplicaError, ShardError};
use crate::machine::StateMachine;

/// A read whose barrier passed but whose scope a prepared transaction has locked: the
/// transaction may be committed already, with its writes not yet resolved here, so
/// the read waits for the resolve rather than answer with the old value.
pub(super) struct LockWait<M: StateMachine> {
    pub(super) deadline: u64,
    pub(super) reader: Reader<M>,
}

/// An answer ready to go but held back by a snapshot's alignment window: it depends
/// on state at `version`, which is after an open epoch's cut.
pub(super) struct Held<M: StateMachine> {
    pub(super) version: u64,
    pub(super) deadline: u64,
    pub(super) answer: Answer<M>,
}

/// What a held answer sends once released.
pub(super) enum Answer<M: StateMachine> {
    Write(WriteReply<M>, M::Outcome),
    Reads(Vec<ReadReply>),
}

impl<M: StateMachine> Held<M> {
    /// Give up on a held answer. A held write *was* applied, but the client may not
    /// learn it before the snapshot completes, so its fate is reported as unknown.
    pub(super) fn fail(self, write_err: ShardError, read_err: ShardError) {
        match self.answer {
            Answer::Write(reply, _) => {
                let _ = reply.send(Err(write_err));
            }
            Answer::Reads(replies) => {
                for reply in replies {
                    let _ = reply.send(Err(read_err.clone()));
                }
            }
        }
    }
}

impl<M: StateMachine, O: Outbox<M>, D: Durability> Replica<M, O, D> {
    /// Answer the readers whose scope no transaction locks at `version` (the applied
    /// index: this thread alone applies, so the lock table is exact there); park the
    /// others until their transaction resolves.
    pub(super) fn release_unlocked(
        &mut self,
        version: u64,
        deadline: u64,
        readers: Vec<Reader<M>>,
    ) -> Result<(), ReplicaError> {
        let mut free = Vec::new();
        for reader in readers {
            match self.state.lock_in(&reader.scope)? {
                Some(txn) => self
                    .lock_waits
                    .entry(txn)
                    .or_default()
                    .push(LockWait { deadline, reader }),
                None => free.push(reader.reply),
            }
        }
        if !free.is_empty() {
            // The caller reads at exactly `version`: the hold decision and the data
            // read concern the same version.
            self.answer(Held {
                version,
                deadline,
                answer: Answer::Reads(free),
            });
        }
        Ok(())
    }

    /// Whether an answer depending on state at `version` must wait: an open epoch's
    /// cut lies below it, so the client could learn of a write the snapshot excludes
    /// before the snapshot is complete (guarantee 3 of the design).
    pub(super) fn is_held(&self, version: u64) -> bool {
        self.holds.values().any(|&from| version > from)
    }

    pub(super) fn answer(&mut self, held: Held<M>) {
        if self.is_held(held.version) {
            self.held.push(held);
            return;
        }
        match held.answer {
            Answer::Write(reply, outcome) => {
                let _ = reply.send(Ok(outcome));
            }
            Answer::Reads(replies) => {
                for reply in replies {
                    let _ = reply.send(Ok(held.version));
                }
            }
        }
    }

    pub(super) fn publish_hold(&self) {
        self.gauges
            .hold_from
            .store(lowest_hold(&self.holds), Ordering::Release);
    }

    /// After a release: send what no open epoch holds any more.
    pub(super) fn release_held(&mut self) {
        for held in std::mem::take(&mut self.held) {
            self.answer(held);
        }
    }
}

pub(super) fn lowest_hold(holds: &BTreeMap<u64, u64>) -> u64 {
    holds.values().copied().min().unwrap_or(u64::MAX)
}
