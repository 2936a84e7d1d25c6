//! Spreading leadership: every node leads about as many groups as any other.
//!
//! Elections land leaders wherever a follower timed out first, so one node can end
//! up leading most groups and doing most of the work (every write and linearizable
//! read of a group goes through its leader). Each node checks every few seconds
//! whether it leads more than its share, `ceil(groups / nodes)`; if so, it hands one
//! group to a voter of that group that leads less than the share (asking each
//! voter's node its count), by Raft's leader transfer. A transfer never puts its
//! receiver above the share, so transfers only ever lower the most any node leads,
//! and the spread settles.
//!
//! What it must never do: transfer with lease reads on (the transferee's forced
//! election would override the lease the old leader may still read on; the replica
//! refuses too), or decide anything about data: a transfer is only a hint to Raft.

use std::sync::Arc;
use std::time::Duration;

use cairn_store::ShardId;
use tokio_util::sync::CancellationToken;

use crate::router::Control;

/// How often a node looks at its share of leaders.
const EVERY: Duration = Duration::from_secs(5);

/// How long a node's answer about its count may take.
const ASK_TIMEOUT: Duration = Duration::from_secs(1);

/// Run until `stop` fires: at most one transfer per round.
pub async fn balance(control: Arc<Control>, stop: CancellationToken) {
    if control.raft().config().lease_reads {
        tracing::info!("leader balancing off: lease reads are on");
        return;
    }
    let mut tick = tokio::time::interval(EVERY);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some((group, to)) = next_transfer(&control).await {
            tracing::info!(group, to, "handing over leadership to spread leaders");
            if let Err(e) = control.raft().local().transfer_leader(group, to) {
                tracing::debug!(error = %e, "leader transfer not started");
            }
        }
    }
}

/// The most groups one node should lead.
pub fn share(groups: usize, nodes: usize) -> usize {
    groups.div_ceil(nodes.max(1))
}

/// A group this node leads beyond its share and a voter of it below the share.
async fn next_transfer(control: &Control) -> Option<(ShardId, u64)> {
    let raft = control.raft();
    let cfg = raft.config();
    let me = cfg.node_id;
    let share = share(cfg.groups().count(), raft.members().len()) as u32;
    if raft.local().leads() <= share {
        return None;
    }
    let led: Vec<ShardId> = cfg
        .groups()
        .filter(|&g| raft.leader_of(g) == Some(me))
        .collect();
    for group in led {
        let mut best: Option<(u32, u64)> = None;
        let voters = raft
            .local()
            .gauges(group)
            .map(|g| g.voters())
            .unwrap_or_default();
        for voter in voters {
            if voter == me || !raft.reachable(voter) {
                continue;
            }
            let Some(leads) = control.leads_of(voter, group, ASK_TIMEOUT).await else {
                continue;
            };
            if leads < share && best.is_none_or(|(b, _)| leads < b) {
                best = Some((leads, voter));
            }
        }
        if let Some((_, voter)) = best {
            return Some((group, voter));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::share;

    #[test]
    fn the_share_rounds_up() {
        assert_eq!(share(9, 3), 3);
        assert_eq!(share(9, 5), 2);
        assert_eq!(share(9, 9), 1);
        assert_eq!(share(9, 12), 1);
        assert_eq!(share(257, 3), 86);
    }
}
