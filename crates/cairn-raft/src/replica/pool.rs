//! The replica pool: a few threads, each driving several replicas.
//!
//! A thread per replica made every write wake a thread per shard on every node, and
//! each of them asked the group-commit flusher for its own sync: at 64 clients on a
//! two-core machine a third of the profile was thread switches, and one fsync covered
//! fewer than two waiting replicas. A pool thread instead takes every
//! message waiting for any of its replicas, writes each replica's Ready, makes them
//! durable with **one** sync, and only then finishes each Ready (the messages that
//! promise durability, the advance, the apply). The order raft-rs requires holds per
//! replica; only the sync is shared. (TiKV's raftstore batch system works the same
//! way.)
//!
//! A round visits only the replicas that have something to do: those whose inbox rang
//! the thread's bell ([`super::inbox`]), those adopted since the last round, those
//! whose inbox held more than one round takes, and, on a tick, all of them. So a
//! thread's cost per message does not grow with the replicas it owns, and idle shards
//! are nearly free.
//!
//! Shards are dealt to threads round-robin; a replica never moves between threads, so
//! each is still owned by exactly one thread and nothing is shared across the loop.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use cairn_store::ShardId;
use crossbeam_channel::{tick, Receiver, Select, TryRecvError};

use super::inbox::Mailbox;
use super::{fatal, Outbox, Replica, ReplicaMsg};
use crate::commit::Durability;
use crate::error::ReplicaError;
use crate::machine::StateMachine;

/// A replica and its inbox, as a pool thread owns them.
pub type Owned<M, O, D> = (Replica<M, O, D>, Mailbox<M>);

/// How many inputs a replica takes before its Ready is written, so one busy shard
/// cannot hold the others of its thread back for long.
const DRAIN: usize = 4096;

/// Drive `replicas` (each with its inbox), and those `adopt` hands over later, until
/// `shutdown` is closed. `bell` carries the shard ids whose inboxes rang (see
/// [`super::inbox`]). `commit` makes each round's writes durable with one sync. A
/// replica that retires ([`ReplicaMsg::Retire`]) or whose inbox is gone leaves the
/// pool after its round.
pub fn run<M: StateMachine, O: Outbox<M>, D: Durability>(
    mut replicas: Vec<Owned<M, O, D>>,
    adopt: Receiver<Owned<M, O, D>>,
    bell: Receiver<ShardId>,
    commit: D,
    shutdown: Receiver<()>,
    tick_len: Duration,
) {
    let ticker = tick(tick_len);
    // The ticker keeps one tick for a thread that was busy or stopped and drops the
    // rest; the periods they stood for are counted here, so request deadlines and
    // leader leases follow real time.
    let mut ticked = Instant::now();
    let mut adopting = true;
    // A bell nobody can ring any more would be ready forever: stop listening to it.
    let mut listening = true;
    // The first round visits everyone: messages may have queued before the thread ran.
    let mut due: BTreeSet<ShardId> = replicas.iter().map(|(r, _)| r.shard()).collect();
    loop {
        if due.is_empty() {
            let mut select = Select::new();
            if listening {
                select.recv(&bell);
            }
            select.recv(&ticker);
            if adopting {
                select.recv(&adopt);
            }
            let stop = select.recv(&shutdown);
            if select.ready() == stop {
                break;
            }
        } else if matches!(shutdown.try_recv(), Err(TryRecvError::Disconnected)) {
            break;
        }
        loop {
            match adopt.try_recv() {
                Ok(owned) => {
                    tracing::info!(shard = owned.0.shard(), "replica joined the pool");
                    due.insert(owned.0.shard());
                    replicas.push(owned);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    adopting = false;
                    break;
                }
            }
        }
        loop {
            match bell.try_recv() {
                Ok(shard) => {
                    due.insert(shard);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    listening = false;
                    break;
                }
            }
        }
        if ticker.try_recv().is_ok() {
            let periods = periods_since(&mut ticked, tick_len);
            for (replica, _) in &mut replicas {
                replica.tick_periods(periods);
                due.insert(replica.shard());
            }
        }
        match round(&mut replicas, &due, &commit) {
            Ok(visited) => due = visited.undrained,
            Err((shard, e)) => fatal(shard, &e.to_string()),
        }
        for (replica, _) in replicas.extract_if(.., |(r, _)| r.retiring()) {
            tracing::info!(shard = replica.shard(), "replica left the pool");
            replica.retired();
        }
    }
    for (replica, _) in &mut replicas {
        replica.stop();
    }
    tracing::debug!("replica pool stopped");
}

/// Whole tick lengths since `*last` (at least one), moving `*last` on by as many but
/// never past now: the count then trails real time by less than one tick length.
fn periods_since(last: &mut Instant, tick_len: Duration) -> u64 {
    let now = Instant::now();
    let len = tick_len.as_nanos().max(1);
    let periods = (now.saturating_duration_since(*last).as_nanos() / len).max(1);
    let periods = u32::try_from(periods).unwrap_or(u32::MAX);
    *last = (*last + tick_len.saturating_mul(periods)).min(now);
    u64::from(periods)
}

/// What a round did.
#[derive(Debug, Default)]
pub struct Visited {
    /// Replicas visited.
    pub replicas: usize,
    /// Replicas whose inbox held more than one round takes, or that Raft has more
    /// work for: due again at once.
    pub undrained: BTreeSet<ShardId>,
    /// Whether every visited inbox is still open (one that is gone marks its replica
    /// retiring, so the pool lets go of it).
    pub all_open: bool,
}

/// One round over the replicas in `due` (others are not touched): take what each
/// inbox holds, write each Ready, one sync if any of them needs it, then finish each
/// Ready. An error names the shard whose storage failed (or the first shard, for a
/// failed sync), after which memory and disk may disagree.
pub fn round<M: StateMachine, O: Outbox<M>, D: Durability>(
    replicas: &mut [Owned<M, O, D>],
    due: &BTreeSet<ShardId>,
    commit: &D,
) -> Result<Visited, (u32, ReplicaError)> {
    let mut visited = Visited {
        all_open: true,
        ..Visited::default()
    };
    let mut chosen: Vec<&mut Owned<M, O, D>> = replicas
        .iter_mut()
        .filter(|(r, _)| due.contains(&r.shard()))
        .collect();
    visited.replicas = chosen.len();
    // Every rung inbox, not only the one that woke us: one sync then covers them all.
    for (replica, inbox) in chosen.iter_mut().map(|o| (&mut o.0, &o.1)) {
        inbox.answer_bell();
        let mut taken = 0;
        loop {
            if taken == DRAIN {
                visited.undrained.insert(replica.shard());
                break;
            }
            match inbox.try_recv() {
                Ok(msg) => {
                    replica.handle(msg);
                    taken += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // Nobody can reach it any more (the node is stopping or let it go).
                    let (reply, _) = tokio::sync::oneshot::channel();
                    replica.handle(ReplicaMsg::Retire { reply });
                    visited.all_open = false;
                    break;
                }
            }
        }
    }
    let mut sync = false;
    for owned in chosen.iter_mut() {
        let replica = &mut owned.0;
        sync |= replica.process_write().map_err(|e| (replica.shard(), e))?;
    }
    if sync {
        let shard = chosen.first().map_or(0, |o| o.0.shard());
        commit.sync().map_err(|e| (shard, e.into()))?;
    }
    for owned in chosen.iter_mut() {
        let replica = &mut owned.0;
        replica.process_finish().map_err(|e| (replica.shard(), e))?;
        // Raft may have more for it without any new input (committed entries beyond
        // one Ready's size limit): it comes back next round, not at the next tick.
        if replica.has_ready() {
            visited.undrained.insert(replica.shard());
        }
    }
    Ok(visited)
}
