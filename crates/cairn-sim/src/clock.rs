//! The virtual clock: a queue of events ordered by virtual time.
//!
//! Nothing in a simulated run waits on wall time. Each event is stamped with the
//! virtual millisecond it happens at and a sequence number taken when it was
//! scheduled; the queue pops the smallest `(time, seq)`, so two events at the same
//! millisecond always run in the order they were scheduled, and a seed replays the
//! same interleaving bit for bit. Time jumps straight to the next event, which is why
//! a run of tens of virtual seconds takes a fraction of that.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::config::Millis;

/// A queue of `E`s in virtual time.
pub struct Clock<E> {
    now: Millis,
    seq: u64,
    queue: BinaryHeap<Reverse<Scheduled<E>>>,
}

struct Scheduled<E> {
    at: Millis,
    seq: u64,
    event: E,
}

impl<E> PartialEq for Scheduled<E> {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl<E> Eq for Scheduled<E> {}
impl<E> PartialOrd for Scheduled<E> {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl<E> Ord for Scheduled<E> {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

impl<E> Default for Clock<E> {
    fn default() -> Clock<E> {
        Clock::new()
    }
}

impl<E> Clock<E> {
    pub fn new() -> Clock<E> {
        Clock {
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
        }
    }

    /// The current virtual time.
    pub fn now(&self) -> Millis {
        self.now
    }

    /// Run `event` `after` milliseconds from now (0: after what is already due now).
    pub fn after(&mut self, after: Millis, event: E) {
        self.seq += 1;
        self.queue.push(Reverse(Scheduled {
            at: self.now + after,
            seq: self.seq,
            event,
        }));
    }

    /// The next event, moving the clock to its time.
    pub fn pop(&mut self) -> Option<E> {
        let Reverse(next) = self.queue.pop()?;
        self.now = next.at;
        Some(next.event)
    }
}
