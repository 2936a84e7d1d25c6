//! What one simulated run looks like: cluster size, workload, faults and time limits.
//!
//! A run is a pure function of `(seed, SimConfig)`. Most knobs are not fixed here but
//! drawn from the seed within the ranges below (how lossy the network is, how many
//! shards, which faults and when), so a few thousand seeds cover many shapes of run
//! while a single seed always replays the same one.

/// One millisecond of virtual time is the simulator's unit; a tick is `TICK_MS`.
pub type Millis = u64;

/// Length of a replica tick (the node's drift makes it 9 to 11 ms).
pub const TICK_MS: Millis = 10;

/// Everything a run needs besides its seed.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// Nodes (every shard has a replica on each).
    pub nodes: u64,
    /// Data shards are drawn from this range (inclusive).
    pub shards: (u32, u32),
    /// Keys the clients use, spread over the shards by Cairn's own key hash.
    pub keys: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Virtual time during which clients issue operations and faults fire.
    pub active_ms: Millis,
    /// After healing: how long the cluster has to finish outstanding work, commit a
    /// final write on every shard and converge, before the run fails on liveness.
    pub settle_ms: Millis,
    /// Whether to inject faults at all (a fault-free profile checks the checker).
    pub faults: bool,
    /// Whether to take snapshots (markers and releases) during the run.
    pub snapshots: bool,
    /// Whether clients also run cross-shard transactions (prepare / resolve).
    pub transactions: bool,
    /// Compact a shard's log after this many applied entries, drawn from this range
    /// (small: followers that fall behind need a Raft snapshot).
    pub log_compact_entries: (u64, u64),
    /// Chance that a Raft snapshot install during the active phase is crashed inside.
    pub install_crash_chance: f64,
    /// Whether leaders serve reads on leases (`RaftConfig::lease_reads`). The nodes'
    /// clocks drift by up to 10 % either way, the bound leases assume.
    pub lease_reads: bool,
}

impl Default for SimConfig {
    fn default() -> SimConfig {
        SimConfig {
            nodes: 3,
            shards: (2, 3),
            keys: 10,
            clients: 5,
            active_ms: 8_000,
            settle_ms: 30_000,
            faults: true,
            snapshots: true,
            transactions: true,
            log_compact_entries: (6, 40),
            install_crash_chance: 0.2,
            lease_reads: false,
        }
    }
}

impl SimConfig {
    /// Aimed at Raft snapshots: a log compacted after 6 to 8 entries (lagging
    /// followers always need a snapshot) and most installs crashed inside.
    pub fn installs() -> SimConfig {
        SimConfig {
            log_compact_entries: (6, 8),
            install_crash_chance: 0.8,
            ..SimConfig::default()
        }
    }

    /// Reads on leader leases, under every fault of the default profile (pauses of
    /// a leader, partitions, crashes right after acknowledging a heartbeat).
    pub fn leases() -> SimConfig {
        SimConfig {
            lease_reads: true,
            ..SimConfig::default()
        }
    }

    /// A longer run for the soak binary: more time, more keys, same shape.
    pub fn long() -> SimConfig {
        SimConfig {
            active_ms: 30_000,
            keys: 16,
            clients: 6,
            ..SimConfig::default()
        }
    }
}
