//! The nemesis: which fault fires next, for how long, and healing at the end.
//!
//! Every 0.2 to 1.5 virtual seconds of the active phase it picks one of: crash a node
//! (its disk keeps only what a crash may keep, see [`crate::node`]) and restart it
//! after up to 2.5 s; crash every node at once; isolate a node both ways; cut a node's
//! outbound or inbound links only (one-way); cut one directed link; pause a node
//! (SIGSTOP: it misses its ticks, and what reaches it waits until it resumes, so a
//! paused leader wakes up still believing it leads); or a storm, a
//! spell of message loss, duplication, long delays and breaking snapshot streams.
//! Faults overlap freely, so two nodes can be down or a node can be both partitioned
//! and lossy; safety must hold throughout, liveness only after healing.

use rand::Rng;

use crate::network::Weather;
use crate::world::{Event, Phase, World};

impl World {
    pub(crate) fn fault(&mut self) {
        if self.phase != Phase::Active {
            return;
        }
        let nodes = self.cfg.nodes;
        let node = self.rng.gen_range(1..=nodes);
        match self.rng.gen_range(0..100) {
            0..=29 => {
                let down = self.rng.gen_range(50..=2500);
                let prefix = [0.0, 0.1, 0.5][self.rng.gen_range(0..3)];
                self.arm_crash(node, down, prefix);
            }
            30..=34 => {
                self.faults.full_restarts += 1;
                let down = self.rng.gen_range(20..=500);
                for id in 1..=nodes {
                    self.arm_crash(id, down, 0.2);
                }
            }
            35..=54 => {
                self.faults.partitions += 1;
                // Half the time the node cut off is a leader: it goes on accepting
                // proposals it can never commit, a divergent tail for later.
                let node = match self.a_leader() {
                    Some(leader) if self.rng.gen_bool(0.5) => leader,
                    _ => node,
                };
                let mut links = Vec::new();
                for other in (1..=nodes).filter(|&o| o != node) {
                    links.push((node, other));
                    links.push((other, node));
                }
                self.cut_for_a_while(links);
            }
            55..=64 => {
                self.faults.one_way_partitions += 1;
                let outbound = self.rng.gen_bool(0.5);
                let links = (1..=nodes)
                    .filter(|&o| o != node)
                    .map(|o| if outbound { (node, o) } else { (o, node) })
                    .collect();
                self.cut_for_a_while(links);
            }
            65..=72 => {
                self.faults.one_way_partitions += 1;
                let others: Vec<u64> = (1..=nodes).filter(|&o| o != node).collect();
                let other = others[self.rng.gen_range(0..others.len())];
                self.cut_for_a_while(vec![(node, other)]);
            }
            73..=82 => {
                if self.is_up(node) {
                    self.faults.pauses += 1;
                    let lasts = self.rng.gen_range(100..=2000);
                    let until = self.clock.now() + lasts;
                    let n = &mut self.nodes[(node - 1) as usize];
                    n.paused_until = n.paused_until.max(until);
                }
            }
            _ => {
                self.faults.storms += 1;
                self.storm += 1;
                self.net.weather = Weather {
                    drop: self.rng.gen_range(0.0..0.25),
                    duplicate: self.rng.gen_range(0.0..0.15),
                    max_delay: self.rng.gen_range(2..=40),
                    long_delay: self.rng.gen_range(0.0..0.05),
                };
                self.snapshot_fail = self.rng.gen_range(0.0..0.6);
                let lasts = self.rng.gen_range(300..=3000);
                let storm = self.storm;
                self.clock.after(lasts, Event::Calm(storm));
            }
        }
        let next = self.rng.gen_range(200..=1500);
        self.clock.after(next, Event::Fault);
    }

    /// The leader of a random shard, as its own replica believes.
    fn a_leader(&mut self) -> Option<u64> {
        // The meta group's leader too: its coordinators' calls go there.
        let shard = self.rng.gen_range(0..=self.shards) as usize;
        self.nodes.iter().find_map(|n| {
            let live = n.live.as_ref()?;
            let leader = live.gauges[shard].leader();
            (leader == Some(n.id)).then_some(n.id)
        })
    }

    fn cut_for_a_while(&mut self, links: Vec<(u64, u64)>) {
        for &(from, to) in &links {
            self.net.cut(from, to);
        }
        let lasts = self.rng.gen_range(200..=3000);
        self.clock.after(lasts, Event::Uncut(links));
    }

    pub(crate) fn calm(&mut self) {
        self.net.weather = Weather::calm();
        self.snapshot_fail = 0.0;
    }

    /// End of the active phase: every node up, every link whole, the network calm.
    pub(crate) fn heal(&mut self) {
        self.phase = Phase::Settling;
        self.net.heal();
        self.calm();
        self.storm += 1;
        let now = self.clock.now();
        for node in &mut self.nodes {
            node.paused_until = node.paused_until.min(now);
        }
        for id in 1..=self.cfg.nodes {
            if !self.is_up(id) {
                if let Err(e) = self.start_node(id) {
                    self.fail(format!("restarting node {id} to heal: {e}"));
                }
            }
        }
    }
}
