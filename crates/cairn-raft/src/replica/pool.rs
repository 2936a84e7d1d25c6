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
//! Shards are dealt to threads round-robin; a replica never moves between threads, so
//! each is still owned by exactly one thread and nothing is shared across the loop.

use std::time::{Duration, Instant};

use crossbeam_channel::{tick, Receiver, Select, TryRecvError};

use super::{fatal, Outbox, Replica, ReplicaMsg};
use crate::commit::Durability;
use crate::error::ReplicaError;
use crate::machine::StateMachine;

/// A replica and its inbox, as a pool thread owns them.
pub type Owned<M, O, D> = (Replica<M, O, D>, Receiver<ReplicaMsg<M>>);

/// How many inputs a replica takes before its Ready is written, so one busy shard
/// cannot hold the others of its thread back for long.
const DRAIN: usize = 4096;

/// Drive `replicas` (each with its inbox), and those `adopt` hands over later, until
/// `shutdown` is closed. `commit` makes each round's writes durable with one sync. A
/// replica that retires ([`ReplicaMsg::Retire`]) or whose inbox is gone leaves the
/// pool after its round.
pub fn run<M: StateMachine, O: Outbox<M>, D: Durability>(
    mut replicas: Vec<Owned<M, O, D>>,
    adopt: Receiver<Owned<M, O, D>>,
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
    loop {
        let mut select = Select::new();
        for (_, inbox) in &replicas {
            select.recv(inbox);
        }
        select.recv(&ticker);
        if adopting {
            select.recv(&adopt);
        }
        let stop = select.recv(&shutdown);
        if select.ready() == stop {
            break;
        }
        loop {
            match adopt.try_recv() {
                Ok(owned) => {
                    tracing::info!(shard = owned.0.shard(), "replica joined the pool");
                    replicas.push(owned);
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    adopting = false;
                    break;
                }
            }
        }
        if ticker.try_recv().is_ok() {
            let periods = periods_since(&mut ticked, tick_len);
            for (replica, _) in &mut replicas {
                replica.tick_periods(periods);
            }
        }
        match round(&mut replicas, &commit) {
            Ok(_) => {}
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

/// One round: take what every inbox holds, write every replica's Ready, one sync if
/// any of them needs it, then finish every Ready. `Ok(false)` if some inbox is gone
/// (its replica is then marked retiring, so the pool lets go of it); an error names
/// the shard whose storage failed (or the first shard, for a failed sync), after
/// which memory and disk may disagree.
pub fn round<M: StateMachine, O: Outbox<M>, D: Durability>(
    replicas: &mut [Owned<M, O, D>],
    commit: &D,
) -> Result<bool, (u32, ReplicaError)> {
    // Every inbox, not only the one that woke us: one sync then covers them all.
    let mut all_open = true;
    for (replica, inbox) in replicas.iter_mut() {
        for _ in 0..DRAIN {
            match inbox.try_recv() {
                Ok(msg) => replica.handle(msg),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => {
                    // Nobody can reach it any more (the node is stopping or let it go).
                    let (reply, _) = tokio::sync::oneshot::channel();
                    replica.handle(ReplicaMsg::Retire { reply });
                    all_open = false;
                    break;
                }
            }
        }
    }
    let mut sync = false;
    for (replica, _) in replicas.iter_mut() {
        sync |= replica.process_write().map_err(|e| (replica.shard(), e))?;
    }
    if sync {
        let shard = replicas.first().map_or(0, |(r, _)| r.shard());
        commit.sync().map_err(|e| (shard, e.into()))?;
    }
    for (replica, _) in replicas.iter_mut() {
        replica.process_finish().map_err(|e| (replica.shard(), e))?;
    }
    Ok(all_open)
}
