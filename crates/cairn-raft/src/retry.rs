//! The one retry policy: every caller that waits and tries again (a router following
//! an election, a write blocked by a transaction's lock, a conditional meta write that
//! lost a race) waits by a [`Backoff`].
//!
//! Pauses double from a first pause up to a cap and are jittered (each a uniform draw
//! between half of the pause and all of it), so callers that collided once do not
//! collide again in lock step; no pause is taken that would end past the caller's
//! deadline. Only what a caller knows is safe to repeat is retried: the policy says
//! *when*, never *whether*.

use std::time::Duration;

use tokio::time::Instant;

/// Waits between attempts until a deadline.
#[derive(Debug, Clone)]
pub struct Backoff {
    pause: Duration,
    cap: Duration,
    deadline: Instant,
}

impl Backoff {
    /// Pauses from `first`, doubling up to `cap`, until `deadline`.
    pub fn new(first: Duration, cap: Duration, deadline: Instant) -> Backoff {
        Backoff {
            pause: first,
            cap: cap.max(first),
            deadline,
        }
    }

    /// For a call waiting out an election or a full queue: 10 ms up to 200 ms.
    pub fn election(deadline: Instant) -> Backoff {
        Backoff::new(
            Duration::from_millis(10),
            Duration::from_millis(200),
            deadline,
        )
    }

    /// For a write waiting for a lock, or a record for a short protocol step (a
    /// transaction's resolve, a snapshot's marking): 2 ms up to 50 ms.
    pub fn contention(deadline: Instant) -> Backoff {
        Backoff::new(
            Duration::from_millis(2),
            Duration::from_millis(50),
            deadline,
        )
    }

    /// For re-dialling a peer: 50 ms up to 1 s, with no deadline (the link keeps
    /// trying until the node stops).
    pub fn redial() -> Backoff {
        // A year is "never" for a process.
        let never = Instant::now() + Duration::from_secs(365 * 24 * 3600);
        Backoff::new(Duration::from_millis(50), Duration::from_secs(1), never)
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Whether the next pause would end before the deadline.
    pub fn can_wait(&self) -> bool {
        Instant::now() + self.pause < self.deadline
    }

    /// The next pause (jittered), growing the one after; for callers that wait in a
    /// `select!` next to other events rather than in [`Backoff::wait`].
    pub fn pause(&mut self) -> Duration {
        self.next_pause()
    }

    /// Sleep the next pause (jittered) and grow it. Returns false, without sleeping,
    /// if the pause would end past the deadline: the caller should give up.
    pub async fn wait(&mut self) -> bool {
        if !self.can_wait() {
            return false;
        }
        tokio::time::sleep(self.next_pause()).await;
        true
    }

    /// The jittered pause to take now; the next one doubles, up to the cap.
    fn next_pause(&mut self) -> Duration {
        let pause = self.pause;
        self.pause = (self.pause * 2).min(self.cap);
        let half = pause / 2;
        let spread = (pause - half).as_micros() as u64;
        half + Duration::from_micros(rand::random::<u64>() % (spread + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_double_to_the_cap_and_stay_within_half_and_whole() {
        let far = Instant::now() + Duration::from_secs(3600);
        let mut backoff = Backoff::new(Duration::from_millis(4), Duration::from_millis(20), far);
        let mut whole = Duration::from_millis(4);
        for _ in 0..8 {
            let pause = backoff.next_pause();
            assert!(
                pause >= whole / 2 && pause <= whole,
                "{pause:?} for {whole:?}"
            );
            whole = (whole * 2).min(Duration::from_millis(20));
        }
        assert_eq!(backoff.pause, Duration::from_millis(20));
    }

    #[tokio::test(start_paused = true)]
    async fn no_pause_runs_past_the_deadline() {
        let start = Instant::now();
        let deadline = start + Duration::from_millis(100);
        let mut backoff = Backoff::election(deadline);
        let mut waits = 0;
        while backoff.wait().await {
            waits += 1;
            assert!(Instant::now() < deadline);
        }
        // 10, 20, 40 fit (jittered, at least 35 ms in all); the 80 ms pause cannot
        // fit after at most 70 ms.
        assert!((2..=4).contains(&waits), "{waits} waits");
        assert!(!backoff.can_wait());
        assert!(Instant::now() < deadline);
    }
}
