//! The cluster: shards, the network to their leaders, the meta group's registry, the
//! snapshot coordinators, the sweeper, the clients and the transaction coordinators,
//! as one state machine that stateright explores.
//!
//! Each action is one atomic step of one actor. The meta group is a linearizable
//! store of conditional batches (`Meta::write`), so each registry update is one step;
//! a data shard's Raft is [`Shard`]; the network is a set of requests to shard
//! leaders that may be delivered in any order, more than once, or never.

use crate::network::{Msg, Network};
use crate::shard::{
    Command, Entry, Epoch, Held, Outcome, Read, Shard, TxnHere, View, WriteId, MAX_EPOCHS,
    MAX_WRITES,
};

/// Most data shards a configuration may have.
pub const MAX_SHARDS: usize = 3;

/// What a scripted write is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteKind {
    /// A batch on one shard: one log entry.
    Single { shard: u8 },
    /// A cross-shard atomic batch (two-phase), one op on each shard in the bit set.
    Txn { shards: u8 },
}

/// One write of the workload.
#[derive(Clone, Copy, Debug)]
pub struct WriteSpec {
    pub kind: WriteKind,
    /// The write is sent only after its client has seen this one's acknowledgement or
    /// read its effect: the causal chains of guarantee 3.
    pub after: Option<WriteId>,
}

/// A deliberately broken mechanism, to show the checker notices.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// `Replica::answer` never holds: every answer goes out at once.
    NoAlignmentHold,
    /// A new leader's open cuts hold only the markers it applies after its election
    /// (as if holds lived in leader memory rather than being derived from the log).
    LeaderForgetsHolds,
    /// Stale reads are served at the applied index, ignoring `hold_from`.
    StaleReadsIgnoreHold,
    /// Epoch allocation ignores `t/commit/*` and a transaction's commit ignores
    /// `s/marking/*`.
    NoMetaMutex,
}

/// What is explored.
#[derive(Clone, Debug)]
pub struct Config {
    pub shards: u8,
    pub writes: Vec<WriteSpec>,
    /// Snapshots requested (each by its own coordinator, possibly concurrently).
    pub snapshots: u8,
    /// Longest log per shard: bounds duplicates and retries, so the space is finite.
    pub max_log: u8,
    /// Leader changes in the whole run.
    pub leader_changes: u8,
    /// Entries wait in the leader's uncommitted tail (lost or kept at a leader change)
    /// instead of committing as they are proposed.
    pub tails: bool,
    /// Requests may be lost.
    pub lossy: bool,
    /// How many deliveries in the whole run may leave a copy of their request behind
    /// (duplication).
    pub duplicates: u8,
    /// A coordinator's finishing write may have an unknown outcome (it releases anyway)
    /// and be applied by the meta group later.
    pub late_finish: bool,
    pub stale_reads: bool,
    pub linearizable_reads: bool,
    pub mutation: Option<Mutation>,
}

impl Config {
    fn all_shards(&self) -> u8 {
        (1u8 << self.shards) - 1
    }

    /// The shards a write touches, as a bit set.
    pub fn shards_of(&self, w: WriteId) -> u8 {
        match self.writes[w as usize].kind {
            WriteKind::Single { shard } => 1 << shard,
            WriteKind::Txn { shards } => shards,
        }
    }

    pub fn has_txns(&self) -> bool {
        self.writes
            .iter()
            .any(|w| matches!(w.kind, WriteKind::Txn { .. }))
    }

    fn mutated(&self, m: Mutation) -> bool {
        self.mutation == Some(m)
    }
}

/// Clients' knowledge, as bit sets of write ids.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct Clients {
    pub invoked: u16,
    /// `known[w]`: every write acknowledged to or read by any client before `w` was
    /// sent (or re-sent after a refusal).
    pub known: [u16; MAX_WRITES],
    pub acked: u16,
    /// Acknowledged, or seen by a read.
    pub observed: u16,
}

/// A snapshot coordinator (`Coordinator::take`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Coordinator {
    Idle,
    /// Markers proposed; the cuts answered so far.
    Marking {
        cuts: [Option<u8>; MAX_SHARDS],
    },
    /// Finished (a crashed coordinator is one that never acts again: the sweeper
    /// may act at any time anyway).
    Finished,
}

/// The registry's record of an epoch (`SnapshotState`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Record {
    Unallocated,
    Pending,
    Done { cuts: [u8; MAX_SHARDS] },
    Aborted,
}

/// One epoch: its coordinator, its registry keys, and what the oracle recorded.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Snapshot {
    pub coordinator: Coordinator,
    pub record: Record,
    /// `s/marking/e`: from allocation until the Done/Aborted record.
    pub marking: bool,
    /// `s/open/e`: until every shard acknowledged a release.
    pub open: bool,
    pub release_acks: u8,
    /// The coordinator's finishing write whose outcome it never learned (it released
    /// anyway); the meta group may still apply it.
    pub late_finish: Option<Record>,
    /// Oracle: writes acknowledged when the snapshot was requested.
    pub acked_at_request: u16,
    /// Oracle: writes sent before the snapshot completed.
    pub invoked_at_done: u16,
    /// Oracle: a shard changed leader while this epoch was pending.
    pub leader_changed: bool,
}

/// A transaction's coordinator.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnCoordinator {
    /// Prepares proposed; the shards that answered prepared, and whether one refused.
    Preparing { prepared: u8, refused: bool },
    /// Decided (its resolves are proposed), or lost the race to the sweeper: it has
    /// nothing left to do but collect resolve answers, which are tracked on the
    /// transaction itself.
    Gone,
}

/// `t/txn/T`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum TxnRecord {
    Pending,
    Committed,
    Aborted,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Txn {
    pub coordinator: TxnCoordinator,
    pub record: TxnRecord,
    /// `t/commit/T`: from the commit until every shard acknowledged its resolve.
    pub commit_key: bool,
    pub resolve_acks: u8,
}

/// Everything, in fixed arrays (unused slots stay at their initial values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct State {
    pub shards: [Shard; MAX_SHARDS],
    pub net: Network,
    pub clients: Clients,
    pub snapshots: [Snapshot; MAX_EPOCHS],
    /// Indexed by write id; `Some` once a transaction began.
    pub txns: [Option<Txn>; MAX_WRITES],
    pub leader_changes: u8,
    pub duplicates: u8,
}

/// One atomic step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    /// A client sends write `w`, or a coordinator begins transaction `w` (`t/txn/T :=
    /// Pending`, then a `Prepare` to each of its shards).
    Invoke(WriteId),
    /// The shard's leader proposes a request from the network; `keep` leaves a copy
    /// behind (duplication).
    Deliver {
        msg: Msg,
        keep: bool,
    },
    Lose(Msg),
    /// The next entry of the shard's tail reaches a quorum; the leader applies it and
    /// answers it (or holds the answer back).
    Commit(u8),
    /// Another replica wins an election; `keep` entries of the old leader's
    /// uncommitted tail survive in its log, the rest are lost.
    ElectLeader {
        shard: u8,
        keep: u8,
    },
    /// A stale (or fixed-version) read on a replica that has applied everything
    /// committed, the most any replica can reveal.
    StaleRead(u8),
    /// A linearizable read: confirmed, at the leader's applied index, answered or held.
    LinearizableRead(u8),
    /// Conditional batch: `s/next`, the pending record, `s/open/e`, `s/marking/e`,
    /// if no `t/commit/*` exists; then `Marker(e)` to every shard.
    Allocate(Epoch),
    /// The coordinator decides (`done` needs every shard's cut; an abort is a timeout,
    /// always possible since a reply may be late), writes the record conditionally
    /// (`recorded`) or its write's outcome stays unknown, and proposes `Release(e)` to
    /// every shard either way.
    Finish {
        epoch: Epoch,
        done: bool,
        recorded: bool,
    },
    /// The meta group applies a coordinator's finishing write late.
    LateFinish(Epoch),
    /// The sweeper aborts a pending epoch (timeouts abstracted: any time is safe).
    SweepAbort(Epoch),
    /// The sweeper proposes `Release(e)` for a finished epoch still open.
    SweepRelease(Epoch),
    /// The coordinator's one conditional batch: `t/txn/T := Committed` and
    /// `t/commit/T`, if the record is Pending and no `s/marking/*` exists.
    TxnCommit(WriteId),
    TxnAbort(WriteId),
    /// The sweeper aborts a pending transaction or re-proposes a committed one's
    /// resolves.
    SweepTxn(WriteId),
}

/// The model: a configuration to explore.
pub struct Cluster {
    pub config: Config,
}

fn bit16(w: WriteId) -> u16 {
    1 << w
}

fn shards_in(set: u8) -> impl Iterator<Item = u8> {
    (0..8).filter(move |s| set & (1 << s) != 0)
}

impl Cluster {
    pub fn new(config: Config) -> Cluster {
        assert!(
            config.shards as usize <= MAX_SHARDS,
            "at most {MAX_SHARDS} shards"
        );
        assert!(
            config.snapshots as usize <= MAX_EPOCHS,
            "at most {MAX_EPOCHS} snapshots"
        );
        assert!(
            config.writes.len() <= MAX_WRITES,
            "at most {MAX_WRITES} writes"
        );
        Cluster { config }
    }

    /// `Replica::is_held`: an open cut below `version`, as the leader sees it.
    fn is_held(&self, shard: &Shard, view: &View, version: u8) -> bool {
        if self.config.mutated(Mutation::NoAlignmentHold) {
            return false;
        }
        view.open_cuts()
            .any(|cut| version > cut && cut > shard.forgot_through)
    }

    fn ack(state: &mut State, w: WriteId) {
        state.clients.acked |= bit16(w);
        state.clients.observed |= bit16(w);
    }

    fn release_acked(&self, state: &mut State, e: Epoch, shard: u8) {
        let all = self.config.all_shards();
        let snapshot = &mut state.snapshots[e as usize];
        snapshot.release_acks |= 1 << shard;
        if snapshot.release_acks == all {
            // `Registry::close`: nothing to sweep any more.
            snapshot.open = false;
        }
    }

    fn resolve_acked(&self, state: &mut State, t: WriteId, shard: u8) {
        let shards = self.config.shards_of(t);
        if let Some(txn) = &mut state.txns[t as usize] {
            if txn.record != TxnRecord::Committed {
                // Only a commit's resolves gate anything (`t/commit/T`).
                return;
            }
            txn.resolve_acks |= 1 << shard;
            if txn.resolve_acks & shards == shards {
                // Every shard made the writes visible: epochs may be allocated again.
                txn.commit_key = false;
            }
        }
    }

    /// The leader tells the proposer of entry `index` how it went (the answer is not
    /// held, or no longer).
    fn deliver_answer(&self, state: &mut State, shard: u8, command: Command, outcome: Outcome) {
        match (command, outcome) {
            (Command::Write(w), Outcome::Applied) => Self::ack(state, w),
            (Command::Write(w), Outcome::Refused) => {
                // A write refused by a lock is retried: sent again, by a client that
                // may know more by now.
                state.clients.known[w as usize] |= state.clients.observed;
                state.net.insert(Msg { shard, command });
            }
            (Command::Marker(e), Outcome::Marked { cut }) => {
                if let Coordinator::Marking { cuts } = &mut state.snapshots[e as usize].coordinator
                {
                    cuts[shard as usize] = Some(cut);
                }
            }
            (Command::Release(e), _) => self.release_acked(state, e, shard),
            (Command::Prepare(t), outcome) => {
                if let Some(Txn {
                    coordinator: TxnCoordinator::Preparing { prepared, refused },
                    ..
                }) = &mut state.txns[t as usize]
                {
                    if outcome == Outcome::Prepared {
                        *prepared |= 1 << shard;
                    } else {
                        *refused = true;
                    }
                }
            }
            (Command::Resolve { txn, .. }, _) => self.resolve_acked(state, txn, shard),
            (command, outcome) => unreachable!("{command:?} cannot produce {outcome:?}"),
        }
    }

    /// The next entry commits; the leader applies it and answers its own proposals.
    fn commit(&self, state: &mut State, s: u8) -> Option<()> {
        let shard = &state.shards[s as usize];
        let entry = *shard.log.get(shard.committed as usize)?;
        let mut view = shard.leader_view();
        let open_before = view.open_cuts().count();
        let outcome = view.step(entry.command);
        let index = view.applied;
        let released = view.open_cuts().count() < open_before;
        let ours = !self.config.tails || entry.term == shard.term;
        state.shards[s as usize].committed = index;

        if ours {
            // Markers, releases and prepares reveal no data: never held, or a snapshot
            // could wait on a hold of its own. Everything else is an answer about the
            // state at `index`.
            let reveals = matches!(
                (entry.command, outcome),
                (Command::Write(_), Outcome::Applied) | (Command::Resolve { commit: true, .. }, _)
            );
            if reveals && self.is_held(&state.shards[s as usize], &view, index) {
                state.shards[s as usize].held.insert(index);
            } else {
                self.deliver_answer(state, s, entry.command, outcome);
            }
        }
        if released {
            self.release_held(state, s, &view);
        }
        Some(())
    }

    /// `release_held`: after a release, send what no open cut holds any more.
    fn release_held(&self, state: &mut State, s: u8, view: &View) {
        let shard = state.shards[s as usize];
        for entry in shard.held.entries() {
            if !self.is_held(&shard, view, entry) {
                let command = shard.log[entry as usize - 1].command;
                let outcome = View::replay(&shard.log, entry - 1).step(command);
                state.shards[s as usize].held.remove(entry);
                self.deliver_answer(state, s, command, outcome);
            }
        }
        if let Some(Read { version }) = shard.read {
            if !self.is_held(&shard, view, version) {
                state.clients.observed |= view.visible_at(version);
                state.shards[s as usize].read = None;
            }
        }
    }

    /// `Registry::finish`: conditional on the record still being pending.
    fn record_finish(state: &mut State, e: Epoch, decision: Record) {
        let invoked = state.clients.invoked;
        let snapshot = &mut state.snapshots[e as usize];
        if snapshot.record != Record::Pending {
            // The sweeper aborted it meanwhile: the abort stands.
            return;
        }
        snapshot.record = decision;
        snapshot.marking = false;
        // A finishing write still in flight can change nothing now.
        snapshot.late_finish = None;
        if matches!(decision, Record::Done { .. }) {
            snapshot.invoked_at_done = invoked;
        } else {
            // Nothing is promised about an aborted snapshot: forget what the oracle
            // noted, so equal futures are one state.
            snapshot.acked_at_request = 0;
            snapshot.leader_changed = false;
        }
    }

    fn propose_everywhere(&self, state: &mut State, shards: u8, command: Command) {
        for shard in shards_in(shards) {
            state.net.insert(Msg { shard, command });
        }
    }

    fn commit_keys(state: &State) -> bool {
        state.txns.iter().flatten().any(|t| t.commit_key)
    }

    fn marking(state: &State) -> bool {
        state.snapshots.iter().any(|s| s.marking)
    }

    /// Whether delivering `msg` now could change anything but the indexes of later
    /// entries, now or later. A request that cannot is dropped from the network: an
    /// entry that changes nothing shifts every later entry alike, so no cut, hold or
    /// membership decision can tell it was there, and keeping such requests around
    /// only multiplies states.
    fn matters(&self, state: &State, views: &[View], msg: &Msg) -> bool {
        let view = &views[msg.shard as usize];
        let shard_bit = 1 << msg.shard;
        match msg.command {
            // A write applies (again) and is answered: keep.
            Command::Write(_) => true,
            Command::Marker(e) => {
                let waiting = match state.snapshots[e as usize].coordinator {
                    Coordinator::Marking { cuts } => cuts[msg.shard as usize].is_none(),
                    _ => false,
                };
                // A first marker opens a hold; a repeat only informs a coordinator
                // still waiting for this shard's cut.
                view.cuts[e as usize].is_none() || waiting
            }
            Command::Release(e) => {
                let released = view.cuts[e as usize].is_some_and(|c| c.released);
                !released || state.snapshots[e as usize].release_acks & shard_bit == 0
            }
            Command::Prepare(t) => {
                let preparing = matches!(
                    state.txns[t as usize],
                    Some(Txn {
                        coordinator: TxnCoordinator::Preparing { .. },
                        ..
                    })
                );
                // Refused or repeated, it only informs a coordinator still preparing.
                view.txn(t) == TxnHere::Unseen || preparing
            }
            Command::Resolve { txn, .. } => {
                let gates = state.txns[txn as usize].is_some_and(|t| {
                    t.record == TxnRecord::Committed && t.resolve_acks & shard_bit == 0
                });
                view.txn(txn) != TxnHere::Resolved || gates
            }
        }
    }

    /// Drop requests that can no longer matter (see [`Cluster::matters`]).
    fn forget_dead_requests(&self, state: &mut State) {
        let views: Vec<View> = state.shards.iter().map(Shard::leader_view).collect();
        let dead: Vec<Msg> = state
            .net
            .iter()
            .filter(|msg| !self.matters(state, &views, msg))
            .collect();
        for msg in dead {
            state.net.remove(&msg);
        }
    }
}

impl stateright::Model for Cluster {
    type State = State;
    type Action = Action;

    fn init_states(&self) -> Vec<State> {
        vec![State {
            shards: [Shard::default(); MAX_SHARDS],
            net: Network::default(),
            clients: Clients::default(),
            snapshots: [Snapshot {
                coordinator: Coordinator::Idle,
                record: Record::Unallocated,
                marking: false,
                open: false,
                release_acks: 0,
                late_finish: None,
                acked_at_request: 0,
                invoked_at_done: 0,
                leader_changed: false,
            }; MAX_EPOCHS],
            txns: [None; MAX_WRITES],
            leader_changes: 0,
            duplicates: 0,
        }]
    }

    fn actions(&self, state: &State, actions: &mut Vec<Action>) {
        let c = &self.config;
        for (w, spec) in c.writes.iter().enumerate() {
            let w = w as WriteId;
            let ready = spec
                .after
                .is_none_or(|after| state.clients.observed & bit16(after) != 0);
            if state.clients.invoked & bit16(w) == 0 && ready {
                actions.push(Action::Invoke(w));
            }
        }
        for msg in state.net.iter() {
            if state.shards[msg.shard as usize].log.len() < c.max_log as usize {
                actions.push(Action::Deliver { msg, keep: false });
            }
            if c.lossy {
                actions.push(Action::Lose(msg));
            }
        }
        for (s, shard) in state.shards.iter().take(c.shards as usize).enumerate() {
            let s = s as u8;
            if (shard.committed as usize) < shard.log.len() {
                actions.push(Action::Commit(s));
            }
            if state.leader_changes < c.leader_changes {
                for keep in 0..=shard.log.len() as u8 - shard.committed {
                    actions.push(Action::ElectLeader { shard: s, keep });
                }
            }
            if c.stale_reads {
                actions.push(Action::StaleRead(s));
            }
            if c.linearizable_reads && shard.read.is_none() {
                actions.push(Action::LinearizableRead(s));
            }
        }
        for (e, snapshot) in state
            .snapshots
            .iter()
            .take(c.snapshots as usize)
            .enumerate()
        {
            let e = e as Epoch;
            let previous_allocated =
                e == 0 || state.snapshots[e as usize - 1].record != Record::Unallocated;
            if snapshot.record == Record::Unallocated && previous_allocated {
                actions.push(Action::Allocate(e));
            }
            if let Coordinator::Marking { .. } = snapshot.coordinator {
                for done in [true, false] {
                    for recorded in [true, false] {
                        if recorded || c.late_finish {
                            actions.push(Action::Finish {
                                epoch: e,
                                done,
                                recorded,
                            });
                        }
                    }
                }
            }
            if snapshot.late_finish.is_some() {
                actions.push(Action::LateFinish(e));
            }
            match snapshot.record {
                Record::Pending => actions.push(Action::SweepAbort(e)),
                Record::Done { .. } | Record::Aborted if snapshot.open => {
                    actions.push(Action::SweepRelease(e))
                }
                _ => {}
            }
        }
        for (t, txn) in state.txns.iter().enumerate() {
            let t = t as WriteId;
            let Some(txn) = txn else { continue };
            if let TxnCoordinator::Preparing { .. } = txn.coordinator {
                actions.push(Action::TxnCommit(t));
                actions.push(Action::TxnAbort(t));
            }
            if txn.record == TxnRecord::Pending || txn.commit_key {
                actions.push(Action::SweepTxn(t));
            }
        }
        // Duplicating deliveries last: breadth-first search then prefers
        // counterexamples without them, which read more easily.
        if state.duplicates < c.duplicates {
            for msg in state.net.iter() {
                if state.shards[msg.shard as usize].log.len() < c.max_log as usize {
                    actions.push(Action::Deliver { msg, keep: true });
                }
            }
        }
    }

    fn next_state(&self, last: &State, action: Action) -> Option<State> {
        let c = &self.config;
        let mut state = *last;
        match action {
            Action::Invoke(w) => {
                state.clients.invoked |= bit16(w);
                state.clients.known[w as usize] = state.clients.observed;
                match c.writes[w as usize].kind {
                    WriteKind::Single { shard } => {
                        state.net.insert(Msg {
                            shard,
                            command: Command::Write(w),
                        });
                    }
                    WriteKind::Txn { shards } => {
                        state.txns[w as usize] = Some(Txn {
                            coordinator: TxnCoordinator::Preparing {
                                prepared: 0,
                                refused: false,
                            },
                            record: TxnRecord::Pending,
                            commit_key: false,
                            resolve_acks: 0,
                        });
                        self.propose_everywhere(&mut state, shards, Command::Prepare(w));
                    }
                }
            }
            Action::Deliver { msg, keep } => {
                if let (Command::Write(w), false) = (msg.command, c.tails) {
                    if state.shards[msg.shard as usize].leader_view().locked() {
                        // Refused by a prepared transaction's lock, and retried: the
                        // refused entry would change nothing but the indexes after it,
                        // so only the client's resend is kept, with what it knows now.
                        state.clients.known[w as usize] |= state.clients.observed;
                        return (state.clients != last.clients).then_some(state);
                    }
                }
                let shard = &mut state.shards[msg.shard as usize];
                // Without tails every entry commits under the leader that proposed it,
                // so terms tell nothing apart; one term keeps equal states equal.
                let term = if c.tails { shard.term } else { 0 };
                shard.log.push(Entry {
                    command: msg.command,
                    term,
                });
                if keep {
                    state.duplicates += 1;
                } else {
                    state.net.remove(&msg);
                }
                if !c.tails {
                    self.commit(&mut state, msg.shard)?;
                }
            }
            Action::Lose(msg) => {
                state.net.remove(&msg);
            }
            Action::Commit(s) => self.commit(&mut state, s)?,
            Action::ElectLeader { shard: s, keep } => {
                let forgets = c.mutated(Mutation::LeaderForgetsHolds);
                let shard = &mut state.shards[s as usize];
                shard.log.truncate((shard.committed + keep) as usize);
                if c.tails {
                    shard.term += 1;
                }
                // `fail_pending`: the old leader fails what it held or had pending.
                shard.held = Held::default();
                shard.read = None;
                shard.forgot_through = if forgets { shard.committed } else { 0 };
                state.leader_changes += 1;
                for snapshot in &mut state.snapshots {
                    if snapshot.record == Record::Pending {
                        snapshot.leader_changed = true;
                    }
                }
            }
            Action::StaleRead(s) => {
                let view = state.shards[s as usize].leader_view();
                // `unheld_version`: never above an open epoch's cut.
                let version = if c.mutated(Mutation::StaleReadsIgnoreHold) {
                    view.applied
                } else {
                    view.applied.min(view.hold_from())
                };
                state.clients.observed |= view.visible_at(version);
            }
            Action::LinearizableRead(s) => {
                let shard = &state.shards[s as usize];
                let view = shard.leader_view();
                if view.locked() {
                    // A read of a key locked by a prepared transaction waits.
                    return None;
                }
                // The caller reads at exactly `applied`: the hold decision and the data
                // read concern the same version.
                let version = view.applied;
                if self.is_held(shard, &view, version) {
                    state.shards[s as usize].read = Some(Read { version });
                } else {
                    state.clients.observed |= view.visible_at(version);
                }
            }
            Action::Allocate(e) => {
                if !c.mutated(Mutation::NoMetaMutex) && Self::commit_keys(&state) {
                    // The batch's condition fails; the coordinator retries later.
                    return None;
                }
                let acked = state.clients.acked;
                let snapshot = &mut state.snapshots[e as usize];
                snapshot.record = Record::Pending;
                snapshot.marking = true;
                snapshot.open = true;
                snapshot.acked_at_request = acked;
                snapshot.coordinator = Coordinator::Marking {
                    cuts: [None; MAX_SHARDS],
                };
                self.propose_everywhere(&mut state, c.all_shards(), Command::Marker(e));
            }
            Action::Finish {
                epoch,
                done,
                recorded,
            } => {
                let snapshot = &mut state.snapshots[epoch as usize];
                let Coordinator::Marking { cuts } = snapshot.coordinator else {
                    return None;
                };
                let decision = if done {
                    // Done needs a real cut from every shard (0: released first).
                    let mut placed = [0; MAX_SHARDS];
                    for s in 0..c.shards as usize {
                        placed[s] = cuts[s].filter(|&cut| cut > 0)?;
                    }
                    Record::Done { cuts: placed }
                } else {
                    Record::Aborted
                };
                snapshot.coordinator = Coordinator::Finished;
                if recorded {
                    Self::record_finish(&mut state, epoch, decision);
                } else {
                    state.snapshots[epoch as usize].late_finish = Some(decision);
                }
                // Release even if recording failed: the windows must close either way.
                self.propose_everywhere(&mut state, c.all_shards(), Command::Release(epoch));
            }
            Action::LateFinish(e) => {
                let decision = state.snapshots[e as usize].late_finish.take()?;
                Self::record_finish(&mut state, e, decision);
            }
            Action::SweepAbort(e) => {
                Self::record_finish(&mut state, e, Record::Aborted);
                self.propose_everywhere(&mut state, c.all_shards(), Command::Release(e));
            }
            Action::SweepRelease(e) => {
                // Only where no release was acknowledged: another one there would be
                // an idempotent no-op entry.
                let unreleased = c.all_shards() & !state.snapshots[e as usize].release_acks;
                self.propose_everywhere(&mut state, unreleased, Command::Release(e));
            }
            Action::TxnCommit(t) => {
                let shards = c.shards_of(t);
                let marking = Self::marking(&state);
                let txn = state.txns[t as usize].as_mut()?;
                let TxnCoordinator::Preparing { prepared, refused } = txn.coordinator else {
                    return None;
                };
                if refused || prepared != shards {
                    return None;
                }
                if txn.record != TxnRecord::Pending {
                    // The sweeper aborted it first; the abort stands.
                    txn.coordinator = TxnCoordinator::Gone;
                } else if marking && !c.mutated(Mutation::NoMetaMutex) {
                    // An epoch is placing markers: the batch's condition fails, retry.
                    return None;
                } else {
                    txn.record = TxnRecord::Committed;
                    txn.commit_key = true;
                    txn.coordinator = TxnCoordinator::Gone;
                    // The client learns of the commit now (the earliest it could).
                    Self::ack(&mut state, t);
                    let resolve = Command::Resolve {
                        txn: t,
                        commit: true,
                    };
                    self.propose_everywhere(&mut state, shards, resolve);
                }
            }
            Action::TxnAbort(t) => {
                let shards = c.shards_of(t);
                let txn = state.txns[t as usize].as_mut()?;
                txn.coordinator = TxnCoordinator::Gone;
                if txn.record == TxnRecord::Pending {
                    txn.record = TxnRecord::Aborted;
                    let resolve = Command::Resolve {
                        txn: t,
                        commit: false,
                    };
                    self.propose_everywhere(&mut state, shards, resolve);
                }
            }
            Action::SweepTxn(t) => {
                let shards = c.shards_of(t);
                let txn = state.txns[t as usize].as_mut()?;
                let commit = match txn.record {
                    TxnRecord::Pending => {
                        txn.record = TxnRecord::Aborted;
                        // Its coordinator can only find the abort and stop.
                        txn.coordinator = TxnCoordinator::Gone;
                        false
                    }
                    TxnRecord::Committed if txn.commit_key => true,
                    _ => return None,
                };
                let unresolved = shards & !txn.resolve_acks;
                let resolve = Command::Resolve { txn: t, commit };
                self.propose_everywhere(&mut state, unresolved, resolve);
            }
        }
        self.forget_dead_requests(&mut state);
        (state != *last).then_some(state)
    }

    fn properties(&self) -> Vec<stateright::Property<Self>> {
        crate::properties::all(&self.config)
    }

    fn format_action(&self, action: &Action) -> String {
        format!("{action:?}")
    }
}
