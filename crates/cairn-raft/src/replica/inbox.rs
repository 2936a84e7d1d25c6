//! A replica's inbox, and the bell that tells its pool thread which inboxes have mail.
//!
//! A pool thread drives many replicas. Selecting over every inbox and visiting every
//! replica on each wake-up cost a pool round time in proportion to the replicas it
//! owns, busy or not: with 256 shards a node's thread registered with 257 channels
//! and polled 256 Raft state machines to handle one message. Instead, a sender rings
//! the thread's bell with the shard's id after queueing a message, and the thread
//! visits only the replicas that were rung (and, on a tick, all of them). A flag per
//! inbox keeps the bell to one ring per replica until the thread has taken the mail,
//! so the bell never holds more entries than the thread has replicas. (TiKV's batch
//! system schedules its mailboxes the same way.)
//!
//! The order that makes this safe: the pool clears an inbox's flag *before* draining
//! it, and a sender sets it *after* queueing, both by read-modify-write. A sender that
//! finds the flag clear rings; one that finds it set was ordered before the pool's
//! clearing, whose acquire then makes that sender's message visible to the drain.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use cairn_store::ShardId;
use crossbeam_channel::{bounded, Receiver, SendError, Sender, TryRecvError, TrySendError};

use super::ReplicaMsg;
use crate::machine::StateMachine;

/// The sending side of one replica's inbox. Cloning shares the inbox.
pub struct Inbox<M: StateMachine> {
    shard: ShardId,
    tx: Sender<ReplicaMsg<M>>,
    rung: Arc<AtomicBool>,
    bell: Sender<ShardId>,
}

impl<M: StateMachine> Clone for Inbox<M> {
    fn clone(&self) -> Self {
        Inbox {
            shard: self.shard,
            tx: self.tx.clone(),
            rung: self.rung.clone(),
            bell: self.bell.clone(),
        }
    }
}

/// The receiving side, owned by the pool thread with the replica.
pub struct Mailbox<M: StateMachine> {
    rx: Receiver<ReplicaMsg<M>>,
    rung: Arc<AtomicBool>,
}

/// An inbox of `capacity` messages for `shard`, ringing `bell` (its pool thread's).
pub fn inbox<M: StateMachine>(
    shard: ShardId,
    capacity: usize,
    bell: Sender<ShardId>,
) -> (Inbox<M>, Mailbox<M>) {
    let (tx, rx) = bounded(capacity);
    let rung = Arc::new(AtomicBool::new(false));
    (
        Inbox {
            shard,
            tx,
            rung: rung.clone(),
            bell,
        },
        Mailbox { rx, rung },
    )
}

impl<M: StateMachine> Inbox<M> {
    /// Queue `msg` unless the inbox is full (the replica is behind: back off).
    pub fn try_send(&self, msg: ReplicaMsg<M>) -> Result<(), TrySendError<ReplicaMsg<M>>> {
        self.tx.try_send(msg)?;
        self.ring();
        Ok(())
    }

    /// Queue `msg`, waiting for room. Only for messages the replica must not miss
    /// (the end of a snapshot transfer), from threads that may block.
    pub fn send(&self, msg: ReplicaMsg<M>) -> Result<(), SendError<ReplicaMsg<M>>> {
        self.tx.send(msg)?;
        self.ring();
        Ok(())
    }

    fn ring(&self) {
        if !self.rung.swap(true, Ordering::AcqRel) {
            // The pool thread may be gone (the node is stopping); nothing then waits.
            let _ = self.bell.send(self.shard);
        }
    }
}

impl<M: StateMachine> Mailbox<M> {
    /// Take one queued message. Call [`Mailbox::answer_bell`] before a run of these.
    pub fn try_recv(&self) -> Result<ReplicaMsg<M>, TryRecvError> {
        self.rx.try_recv()
    }

    /// The pool is about to drain this inbox: the next message queued rings again.
    pub fn answer_bell(&self) {
        // A swap, not a store: it must read the last sender's `true` to acquire
        // what that sender queued (see the module doc).
        self.rung.swap(false, Ordering::AcqRel);
    }
}
