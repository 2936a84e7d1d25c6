//! Spreading replicas: every active node holds within one of the others' replica
//! count.
//!
//! A node that joined holds nothing, and a node that was down while others were
//! evacuated may hold less; the meta group's leader fixes that, one move at a time
//! and at most `--rebalance-rate` moves a minute, so the copies a move makes (a Raft
//! snapshot of the shard) never crowd out foreground traffic. Each step moves a
//! replica of some group from the node holding the most replicas to the node holding
//! the fewest that has none of that group ([`crate::moves`]); steps stop once the
//! counts differ by at most one. Only active, reachable nodes take part: a node that
//! is down, dead, decommissioning or decommissioned neither gives nor takes.
//!
//! What it must never do: move toward a node that is not active, or run a second
//! move of its own while one is under way (one task, one move at a time).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cairn_store::{NodeId, ShardId};
use tokio_util::sync::CancellationToken;

use crate::moves::{self, Move, MoveError};
use crate::router::Control;

/// How long a rebalancing move may wait for its new replica to catch up.
const CATCH_UP: Duration = Duration::from_secs(300);

/// Run until `stop` fires, making at most `per_minute` moves a minute (0: never).
pub async fn run(control: Arc<Control>, per_minute: u32, stop: CancellationToken) {
    use cairn_cluster::Shards as _;
    if per_minute == 0 {
        tracing::info!("rebalancing off (--rebalance-rate 0)");
        return;
    }
    let every = Duration::from_secs(60) / per_minute;
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if !control.leads_meta() {
            continue;
        }
        match step(&control).await {
            Ok(Some(mv)) => tracing::info!(
                shard = mv.shard,
                from = mv.from,
                to = mv.to,
                "moved a replica to even out the nodes"
            ),
            Ok(None) => {}
            Err(e) => tracing::info!(error = %e, "a rebalancing move did not finish; it resumes"),
        }
    }
}

/// One rebalancing move, if the active nodes' replica counts differ by more than one.
pub async fn step(control: &Control) -> Result<Option<Move>, MoveError> {
    let Some(mv) = plan(control).await? else {
        return Ok(None);
    };
    moves::move_replica(control, mv, CATCH_UP).await?;
    Ok(Some(mv))
}

/// The next move, if one is needed.
async fn plan(control: &Control) -> Result<Option<Move>, MoveError> {
    let raft = control.raft();
    let states = moves::node_states(control).await?;
    let active: Vec<NodeId> = raft
        .members()
        .into_keys()
        .filter(|&n| raft.reachable(n) && !states.contains_key(&n))
        .collect();
    if active.len() < 2 {
        return Ok(None);
    }
    let mut placement: Vec<(ShardId, Vec<NodeId>)> = Vec::new();
    let mut busy = Vec::new();
    for group in raft.config().groups() {
        let members = moves::members(control, group).await?;
        if !members.outgoing.is_empty() || !members.learners.is_empty() {
            // A change is under way (or a move was cut short and waits to be asked
            // again): counted, but not moved by this task.
            busy.push(group);
        }
        placement.push((group, members.voters));
    }
    Ok(choose(&active, &placement, &busy))
}

/// From the most loaded active node to the least loaded one, a group (not `busy`)
/// the first holds and the second does not; `None` when the counts differ by at most
/// one.
pub fn choose(
    active: &[NodeId],
    placement: &[(ShardId, Vec<NodeId>)],
    busy: &[ShardId],
) -> Option<Move> {
    let mut load: BTreeMap<NodeId, usize> = active.iter().map(|&n| (n, 0)).collect();
    for (_, voters) in placement {
        for v in voters {
            if let Some(count) = load.get_mut(v) {
                *count += 1;
            }
        }
    }
    let (&most, &high) = load
        .iter()
        .max_by_key(|(n, c)| (**c, std::cmp::Reverse(**n)))?;
    let (&least, &low) = load.iter().min_by_key(|(n, c)| (**c, **n))?;
    if high <= low + 1 {
        return None;
    }
    placement
        .iter()
        .find(|(g, voters)| !busy.contains(g) && voters.contains(&most) && !voters.contains(&least))
        .map(|&(shard, _)| Move {
            shard,
            from: most,
            to: least,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_node_takes_from_the_fullest_until_counts_are_within_one() {
        // Three nodes hold every group; node 4 just joined.
        let mut placement: Vec<(ShardId, Vec<NodeId>)> =
            (0..5).map(|g| (g, vec![1, 2, 3])).collect();
        let active = [1, 2, 3, 4];
        let mut moves = 0;
        while let Some(mv) = choose(&active, &placement, &[]) {
            assert_eq!(mv.to, 4, "{mv:?}");
            let voters = &mut placement[mv.shard as usize].1;
            voters.retain(|&n| n != mv.from);
            voters.push(mv.to);
            moves += 1;
            assert!(moves < 10, "no end");
        }
        // 15 replicas over four nodes: 4, 4, 4, 3.
        let mut count = BTreeMap::new();
        for (_, voters) in &placement {
            assert_eq!(voters.len(), 3);
            for v in voters {
                *count.entry(*v).or_insert(0) += 1;
            }
        }
        assert_eq!(moves, 3);
        assert!(count.values().all(|&c| c == 3 || c == 4), "{count:?}");
    }

    #[test]
    fn nodes_that_are_not_active_neither_give_nor_take() {
        let placement: Vec<(ShardId, Vec<NodeId>)> = (0..4).map(|g| (g, vec![1, 2, 3])).collect();
        // Node 4 is down (not in `active`): nothing moves toward it.
        assert_eq!(choose(&[1, 2, 3], &placement, &[]), None);
        // A group in the middle of a change is not moved; another one is.
        let uneven: Vec<(ShardId, Vec<NodeId>)> = (0..4).map(|g| (g, vec![1, 2, 3])).collect();
        let mv = choose(&[1, 2, 3, 4], &uneven, &[0]).expect("a move");
        assert_ne!(mv.shard, 0);
    }
}
