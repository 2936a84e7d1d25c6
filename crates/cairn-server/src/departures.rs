//! Nodes that leave without asking.
//!
//! - **Dead nodes.** The meta group's leader watches its links to the other nodes. A
//!   node it cannot reach for `--dead-after` is marked `dead` in the meta group (so it
//!   takes no replicas) and each of its replicas is re-created on an active node by an
//!   ordinary move ([`crate::moves`]): the group's other voters are a quorum of both
//!   the old and the new configuration, so the move needs nothing from the dead node.
//! - **Stale replicas.** Every node asks, for each replica it holds, whether the
//!   group's leader still counts it as a member. A replica its group removed while its
//!   node was down or cut off never hears of the removal from Raft; once two checks
//!   a round apart agree, the node drops it. So a dead node that comes back holds
//!   nothing, and says so in its log.
//!
//!   A replica with no configuration yet (a move opened it and is about to add it)
//!   gets a third check: a move cut short between those two steps leaves one that
//!   nothing else would reap.
//! - **Joined nodes.** A node a join admitted is `joining` until the meta leader
//!   reaches it over the peer transport; then it is marked active and takes replicas.
//!
//! What it must never do: drop a replica the leader still names.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use cairn_raft::ControlRequest;
use cairn_store::{NodeId, ShardId};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::moves;
use crate::router::Control;

/// How often links are looked at.
const EVERY: Duration = Duration::from_secs(1);

/// Stale replicas are checked every this many rounds (a call per replica each time).
const STALE_EVERY: u32 = 5;

/// How long a move of a dead node's replica may wait for the new one to catch up.
const CATCH_UP: Duration = Duration::from_secs(120);

/// Run until `stop` fires. `dead_after`: `None` never declares a node dead.
pub async fn watch(control: Arc<Control>, dead_after: Option<Duration>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(EVERY);
    let mut unreachable: BTreeMap<NodeId, Instant> = BTreeMap::new();
    let mut evacuated: BTreeSet<NodeId> = BTreeSet::new();
    let mut suspects: BTreeMap<ShardId, u32> = BTreeMap::new();
    let mut settled: BTreeSet<NodeId> = BTreeSet::new();
    let mut round = 0u32;
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        if let Some(dead_after) = dead_after {
            declare_dead(&control, dead_after, &mut unreachable, &mut evacuated).await;
        }
        activate_reached(&control, &mut settled).await;
        round = round.wrapping_add(1);
        if round.is_multiple_of(STALE_EVERY) {
            drop_stale(&control, &mut suspects).await;
        }
    }
}

/// On the meta leader: evacuate nodes unreachable for `dead_after`.
async fn declare_dead(
    control: &Control,
    dead_after: Duration,
    unreachable: &mut BTreeMap<NodeId, Instant>,
    evacuated: &mut BTreeSet<NodeId>,
) {
    use cairn_cluster::Shards as _;
    if !control.leads_meta() {
        // Another node watches; a new meta leader starts counting afresh.
        unreachable.clear();
        return;
    }
    let raft = control.raft();
    let me = raft.local().node_id();
    let now = Instant::now();
    for &peer in raft.members().keys().filter(|&&p| p != me) {
        if raft.reachable(peer) {
            unreachable.remove(&peer);
            continue;
        }
        let since = *unreachable.entry(peer).or_insert(now);
        if now.duration_since(since) < dead_after || evacuated.contains(&peer) {
            continue;
        }
        match moves::node_state(control, peer).await {
            Ok(None) => {}
            Ok(Some(state)) if state == moves::DEAD => {}
            // Decommissioned (or being decommissioned) by an operator: theirs to finish.
            Ok(Some(_)) => continue,
            Err(e) => {
                tracing::debug!(peer, error = %e, "node state not read");
                continue;
            }
        }
        tracing::warn!(
            peer,
            unreachable_for = ?now.duration_since(since),
            "declaring the node dead: re-creating its replicas on other nodes"
        );
        match moves::evacuate(control, peer, moves::DEAD, CATCH_UP).await {
            Ok(moved) => {
                tracing::warn!(
                    peer,
                    moved = moved.len(),
                    "the dead node's replicas are re-created"
                );
                evacuated.insert(peer);
            }
            Err(e) => {
                tracing::warn!(peer, error = %e, "re-creating a dead node's replicas failed; retrying")
            }
        }
    }
    // A node declared dead that answers again stays dead (it holds nothing and takes
    // nothing); forgetting it here lets a later death of the same id be handled.
    evacuated.retain(|n| unreachable.contains_key(n));
}

/// On the meta leader: mark joining nodes active once their links answer.
///
/// `settled` holds the members already seen in another state: a node leaves
/// `joining` only forwards, so the meta group's node states are read only while some
/// member is not yet known to be past it (a join in progress), not every second.
async fn activate_reached(control: &Control, settled: &mut BTreeSet<NodeId>) {
    use cairn_cluster::Shards as _;
    if !control.leads_meta() {
        return;
    }
    let members = control.raft().members();
    if members.keys().all(|node| settled.contains(node)) {
        return;
    }
    let Ok(states) = moves::node_states(control).await else {
        return;
    };
    // Active nodes have no record; any other state than joining is past it too.
    for &node in members.keys() {
        if states
            .get(&node)
            .is_none_or(|state| state != moves::JOINING)
        {
            settled.insert(node);
        }
    }
    for (node, state) in states {
        if state != moves::JOINING || !control.raft().reachable(node) {
            continue;
        }
        match moves::activate(control, node).await {
            Ok(true) => tracing::info!(node, "the joined node is reachable: it is active"),
            Ok(false) => {}
            Err(e) => tracing::warn!(node, error = %e, "could not mark a joined node active"),
        }
    }
}

/// Drop this node's replicas that their group's leader no longer names, once two
/// checks in a row agree; three for a replica that knows no configuration yet.
///
/// A move opens its new replica empty and then adds it as a learner, whose first Raft
/// snapshot brings the configuration: an unconfigured replica the leader does not
/// name is either a second away from that, or was left by a move cut short between
/// the two steps (which no retry may ever come back for). The third check gives the
/// first case time; should it lose the race anyway, the move's catch-up wait fails
/// and asking again opens the replica afresh.
async fn drop_stale(control: &Control, suspects: &mut BTreeMap<ShardId, u32>) {
    let raft = control.raft();
    let me = raft.local().node_id();
    let mut still = BTreeMap::new();
    for group in raft.local().hosted() {
        let gauges = raft.local().gauges(group);
        // A leader is a member by construction: one that applies its own removal
        // steps down (`Replica::apply_conf_change`), and one cut off while the others
        // removed it steps down within an election timeout (check quorum), to be
        // asked about then. Asking leaders would be a call per led group every few
        // seconds for nothing.
        if gauges.as_ref().is_some_and(|g| g.leader() == Some(me)) {
            continue;
        }
        let configured = gauges.is_some_and(|g| !g.voters().is_empty() || !g.learners().is_empty());
        let Ok(members) = moves::members(control, group).await else {
            continue;
        };
        if members.all().contains(&me) {
            continue;
        }
        let seen = suspects.get(&group).copied().unwrap_or(0) + 1;
        if seen < if configured { 2 } else { 3 } {
            still.insert(group, seen);
            continue;
        }
        tracing::warn!(
            group,
            members = ?members.all(),
            "the group no longer names this node (it was removed while this node was away); dropping the replica"
        );
        let drop = ControlRequest::DropReplica {
            shard: group,
            members: members.all(),
        };
        if let Err(e) = control.call_node(me, drop, Duration::from_secs(5)).await {
            tracing::warn!(group, error = %e, "stale replica not dropped");
        }
    }
    *suspects = still;
}
