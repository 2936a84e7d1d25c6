//! The virtual network between nodes: seeded loss, delay, reordering, duplication and
//! partitions.
//!
//! A message handed to the network gets its fate when it is sent: dropped, or
//! delivered once or twice, each copy after its own random delay (so copies and
//! neighbours overtake each other: that is the reordering). Partitions are checked
//! when a copy *arrives*: a link cut while a message is in flight loses it, as a real
//! connection reset would. Links are directed, so one-way partitions are a cut in one
//! direction only.
//!
//! Caveat: the real transport batches per peer over TCP, so it reorders only across
//! reconnections; the virtual network reorders freely, which is harsher than
//! production and allowed by Raft's model. Clients are not on the network: they reach
//! any node that is up, as an HTTP client would on its own link.

use std::collections::BTreeSet;

use cairn_store::NodeId;
use rand::Rng;
use rand_chacha::ChaCha8Rng;

use crate::config::Millis;

/// How the network treats messages right now.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Weather {
    /// Probability that a message is lost.
    pub drop: f64,
    /// Probability that a message is delivered twice.
    pub duplicate: f64,
    /// Delays are uniform in `1..=max_delay`.
    pub max_delay: Millis,
    /// Probability that a copy is delayed by up to ten times `max_delay` more.
    pub long_delay: f64,
}

impl Weather {
    /// A healthy network: nothing lost, short delays.
    pub fn calm() -> Weather {
        Weather {
            drop: 0.0,
            duplicate: 0.0,
            max_delay: 3,
            long_delay: 0.0,
        }
    }
}

/// The links between nodes.
pub struct Network {
    pub weather: Weather,
    /// Directed links that lose everything: `(from, to)`.
    cut: BTreeSet<(NodeId, NodeId)>,
    pub stats: NetStats,
}

/// What the network did to the messages it was given.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetStats {
    pub sent: u64,
    pub dropped: u64,
    pub duplicated: u64,
    pub lost_to_partitions: u64,
    pub delivered: u64,
}

impl Default for Network {
    fn default() -> Network {
        Network::new()
    }
}

impl Network {
    pub fn new() -> Network {
        Network {
            weather: Weather::calm(),
            cut: BTreeSet::new(),
            stats: NetStats::default(),
        }
    }

    /// The delays of the copies of one message sent now (empty: dropped).
    pub fn fate(&mut self, rng: &mut ChaCha8Rng) -> Vec<Millis> {
        self.stats.sent += 1;
        let w = self.weather;
        if w.drop > 0.0 && rng.gen_bool(w.drop) {
            self.stats.dropped += 1;
            return Vec::new();
        }
        let copies = if w.duplicate > 0.0 && rng.gen_bool(w.duplicate) {
            self.stats.duplicated += 1;
            2
        } else {
            1
        };
        (0..copies)
            .map(|_| {
                let mut d = rng.gen_range(1..=w.max_delay.max(1));
                if w.long_delay > 0.0 && rng.gen_bool(w.long_delay) {
                    d += rng.gen_range(1..=10 * w.max_delay.max(1));
                }
                d
            })
            .collect()
    }

    /// Whether a copy from `from` arriving at `to` now gets through the partitions.
    pub fn passes(&mut self, from: NodeId, to: NodeId) -> bool {
        if self.cut.contains(&(from, to)) {
            self.stats.lost_to_partitions += 1;
            false
        } else {
            self.stats.delivered += 1;
            true
        }
    }

    /// Cut the directed link `from -> to`.
    pub fn cut(&mut self, from: NodeId, to: NodeId) {
        self.cut.insert((from, to));
    }

    /// Restore these links.
    pub fn uncut(&mut self, links: &[(NodeId, NodeId)]) {
        for link in links {
            self.cut.remove(link);
        }
    }

    /// Restore every link.
    pub fn heal(&mut self) {
        self.cut.clear();
    }

    pub fn is_partitioned(&self) -> bool {
        !self.cut.is_empty()
    }
}
