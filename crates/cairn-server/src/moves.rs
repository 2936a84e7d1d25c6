//! Moving one replica of a group from one node to another, with Raft's membership
//! changes: the step that rebalancing, decommissioning and replacing nodes are made
//! of.
//!
//! A move never leaves the group with fewer voters than it had, and every step is
//! safe to repeat, so a move cut short (a crash, a timeout) is finished by asking for
//! it again:
//!
//! 1. open an empty replica on the new node, which knows no configuration and so
//!    neither votes nor campaigns;
//! 2. add it as a learner; the leader sends it a Raft snapshot (logs never begin at
//!    index 1 for long, so the snapshot, which carries the configuration, is the only
//!    way in), then the log;
//! 3. once it has what was committed when it was added, hand leadership away from the
//!    old node if it leads (again before every attempt of step 4: leadership can come
//!    back, and a leader refuses to remove itself);
//! 4. make the learner a voter and remove the old voter in one joint configuration,
//!    which the leader leaves by itself;
//! 5. tell the old node to drop its replica, naming the configuration that no longer
//!    holds it (a removed replica may never hear of its removal from Raft itself).
//!
//! What it must never do: change members other than through the group's leader, or
//! drop a replica that the committed configuration still names.

use std::collections::BTreeMap;
use std::time::Duration;

use cairn_cluster::meta::{self, Meta};
use cairn_cluster::{keyspace, Shards as _};
use cairn_raft::{ControlRequest, MemberChange, Members, ShardError};
use cairn_store::Condition;
use cairn_store::{NodeId, ShardId};
use tokio::time::Instant;

use crate::router::Control;

/// How often a move looks at the group's members while it waits.
const POLL: Duration = Duration::from_millis(100);

/// How long one call of a move may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// One replica to move.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub shard: ShardId,
    pub from: NodeId,
    pub to: NodeId,
}

#[derive(Debug, thiserror::Error)]
pub enum MoveError {
    /// The move makes no sense for this cluster (an unknown node, a replica that is
    /// not where it is said to be).
    #[error("{0}")]
    Invalid(String),
    /// The group is in the middle of another change of members.
    #[error("{0}")]
    Busy(String),
    /// A step did not finish in time; asking again resumes the move.
    #[error("{0}")]
    TimedOut(String),
    #[error(transparent)]
    Shard(#[from] ShardError),
}

/// Move `mv.shard`'s replica from `mv.from` to `mv.to`; `catch_up` bounds the wait
/// for the new replica to receive the group's state. Returns the members after it.
pub async fn move_replica(
    control: &Control,
    mv: Move,
    catch_up: Duration,
) -> Result<Members, MoveError> {
    let Move { shard, from, to } = mv;
    let cfg = control.raft().config();
    if shard as usize >= cfg.groups().count() {
        return Err(MoveError::Invalid(format!("there is no shard {shard}")));
    }
    for node in [from, to] {
        if !control.raft().members().contains_key(&node) {
            return Err(MoveError::Invalid(format!(
                "node {node} is not a member of the cluster"
            )));
        }
    }
    if from == to {
        return Err(MoveError::Invalid(
            "`from` and `to` are the same node".into(),
        ));
    }
    if let Some(state) = node_state(control, to).await? {
        return Err(MoveError::Invalid(format!(
            "node {to} is {state}: it takes no replicas"
        )));
    }
    let mut members = members(control, shard).await?;
    if !members.outgoing.is_empty() {
        return Err(MoveError::Busy(format!(
            "shard {shard} is changing its members (voters {:?} joining {:?}); try again shortly",
            members.outgoing, members.voters
        )));
    }
    // A repeat of a move that got as far as the swap only has the drop left.
    let swapped = members.voters.contains(&to) && !members.voters.contains(&from);
    if !swapped {
        if !members.voters.contains(&from) {
            return Err(MoveError::Invalid(format!(
                "node {from} holds no voter of shard {shard} (voters {:?})",
                members.voters
            )));
        }
        if members.voters.contains(&to) {
            return Err(MoveError::Invalid(format!(
                "node {to} already holds a voter of shard {shard} (voters {:?})",
                members.voters
            )));
        }
        add_learner(control, shard, to, members, catch_up).await?;
        // Step 3, leadership off `from`, is part of step 4: it must hold when the
        // change is proposed, and leadership can come back in between.
        members = swap(control, shard, from, to).await?;
    }
    let drop = ControlRequest::DropReplica {
        shard,
        members: members.all(),
    };
    match control.call_node(from, drop, CALL_TIMEOUT).await {
        Ok(_) => {}
        // The group no longer counts on it; its node drops it when told again.
        Err(e) => tracing::warn!(shard, from, error = %e, "the old replica was not dropped"),
    }
    tracing::info!(shard, from, to, voters = ?members.voters, "moved a replica");
    Ok(members)
}

/// The group's members, from its leader; remembered for routing.
pub async fn members(control: &Control, shard: ShardId) -> Result<Members, MoveError> {
    let members = control
        .control(ControlRequest::Members { shard })
        .await?
        .into_members(shard)?;
    control.learn_members(shard, &members);
    Ok(members)
}

/// Steps 1-2: an empty replica on `to`, added as a learner, caught up to what was
/// committed when it joined.
async fn add_learner(
    control: &Control,
    shard: ShardId,
    to: NodeId,
    mut members: Members,
    catch_up: Duration,
) -> Result<Members, MoveError> {
    if !members.learners.contains(&to) {
        control
            .call_node(to, ControlRequest::OpenReplica { shard }, CALL_TIMEOUT)
            .await?;
        // A crash here leaves an empty replica the group does not name: its node
        // drops it (`departures`), unless the move is asked for again first.
        cairn_store::crash_point!("move.opened");
        members = change_until(control, shard, MemberChange::AddLearner { node: to }, |m| {
            m.learners.contains(&to)
        })
        .await?;
    }
    let target = members.commit;
    let deadline = Instant::now() + catch_up;
    loop {
        if members.matched(to) >= target {
            return Ok(members);
        }
        if Instant::now() >= deadline {
            return Err(MoveError::TimedOut(format!(
                "node {to}'s new replica of shard {shard} reached index {} of {target} in {catch_up:?}; \
                 it stays a learner, and asking again resumes the move",
                members.matched(to)
            )));
        }
        tokio::time::sleep(POLL).await;
        members = self::members(control, shard).await?;
    }
}

/// Step 4: learner `to` in, voter `from` out, and the joint configuration left.
async fn swap(
    control: &Control,
    shard: ShardId,
    from: NodeId,
    to: NodeId,
) -> Result<Members, MoveError> {
    change_until(
        control,
        shard,
        MemberChange::Replace {
            add: to,
            remove: from,
        },
        |m| m.voters.contains(&to) && !m.voters.contains(&from) && m.outgoing.is_empty(),
    )
    .await
}

/// Propose `change` until the members satisfy `done`: raft-rs drops a change
/// proposed while another is pending, and a leader may change in between.
async fn change_until(
    control: &Control,
    shard: ShardId,
    change: MemberChange,
    done: impl Fn(&Members) -> bool,
) -> Result<Members, MoveError> {
    let deadline = Instant::now() + CALL_TIMEOUT * 2;
    let removing = match change {
        MemberChange::Replace { remove, .. } => Some(remove),
        MemberChange::RemoveLearner { node } => Some(node),
        MemberChange::AddLearner { .. } => None,
    };
    loop {
        let members = members(control, shard).await?;
        if done(&members) {
            return Ok(members);
        }
        // The group's leader refuses to remove itself, and leadership can come back
        // to a node after it was handed away (leader spreading, an election).
        let leader_leaving = match removing {
            Some(node) if members.leader == Some(node) => Some(node),
            _ => None,
        };
        if Instant::now() >= deadline {
            return Err(MoveError::TimedOut(match leader_leaving {
                Some(node) => format!(
                    "leadership of shard {shard} did not leave node {node} (with lease reads \
                     on, leaders are never transferred: stop node {node} or move another \
                     replica)"
                ),
                None => format!(
                    "shard {shard}'s members did not change ({change:?}); they are voters \
                     {:?}, outgoing {:?}, learners {:?}",
                    members.voters, members.outgoing, members.learners
                ),
            }));
        }
        if let Some(node) = leader_leaving {
            let Some(&to) = members.voters.iter().find(|&&v| v != node) else {
                return Err(MoveError::Invalid(format!(
                    "node {node} is shard {shard}'s only voter"
                )));
            };
            let transfer = ControlRequest::TransferLeader { shard, to };
            if let Err(e) = control.control(transfer).await {
                tracing::debug!(shard, error = %e, "leader transfer before a change");
            }
            tokio::time::sleep(POLL * 3).await;
            continue;
        }
        // A joint configuration is left by the leader on its own; wait for that.
        if members.outgoing.is_empty() {
            match control
                .control(ControlRequest::ChangeMembers { shard, change })
                .await
            {
                Ok(_) => continue,
                Err(e) if e.is_retryable() => {}
                Err(e) => return Err(e.into()),
            }
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Move every replica off `node`, one group at a time, each to the node (active, not
/// yet holding one of that group) with the fewest replicas. Refused when fewer active
/// nodes than the replication factor would remain. Returns each group moved and where
/// to; asking again resumes.
pub async fn decommission(
    control: &Control,
    node: NodeId,
    catch_up: Duration,
) -> Result<Vec<(ShardId, NodeId)>, MoveError> {
    let moved = evacuate(control, node, DECOMMISSIONING, catch_up).await?;
    set_node_state(control, node, DECOMMISSIONED).await?;
    tracing::info!(
        node,
        moved = moved.len(),
        "node decommissioned: it holds no replica"
    );
    Ok(moved)
}

/// Mark `node` with `state` (which keeps new replicas off it) and move each of its
/// replicas to another active node. The node need not answer: a dead node's replicas
/// are re-created from the other voters, and it is told to drop its own if it can be.
pub async fn evacuate(
    control: &Control,
    node: NodeId,
    state: &str,
    catch_up: Duration,
) -> Result<Vec<(ShardId, NodeId)>, MoveError> {
    let cfg = control.raft().config();
    if !control.raft().members().contains_key(&node) {
        return Err(MoveError::Invalid(format!(
            "node {node} is not a member of the cluster"
        )));
    }
    let groups: Vec<ShardId> = cfg.groups().collect();
    let mut placement = Vec::with_capacity(groups.len());
    for &group in &groups {
        placement.push((group, members(control, group).await?.voters));
    }
    // Active and reachable now: a replica is not re-created on a node that is down.
    let states = node_states(control).await?;
    let others: Vec<NodeId> = control
        .raft()
        .members()
        .into_keys()
        .filter(|&n| n != node && !states.contains_key(&n) && control.raft().reachable(n))
        .collect();
    let widest = placement.iter().map(|(_, v)| v.len()).max().unwrap_or(0);
    if others.len() < widest {
        return Err(MoveError::Invalid(format!(
            "emptying node {node} would leave {} active nodes for groups of {widest} \
             replicas; add a node first",
            others.len()
        )));
    }
    set_node_state(control, node, state).await?;
    let mut moved = Vec::new();
    for i in 0..placement.len() {
        let group = placement[i].0;
        if !placement[i].1.contains(&node) {
            continue;
        }
        // Other moves (rebalancing) may change the group meanwhile: every attempt
        // plans against its members as they are now, and one that lost a race to
        // such a move is planned again.
        let mut attempt = 0;
        loop {
            attempt += 1;
            let now = members(control, group).await?;
            placement[i].1 = now.voters.clone();
            if !now.voters.contains(&node) {
                break;
            }
            let load = |n: NodeId| placement.iter().filter(|(_, v)| v.contains(&n)).count();
            let Some(to) = others
                .iter()
                .copied()
                .filter(|n| !now.voters.contains(n) && !now.learners.contains(n))
                .min_by_key(|&n| (load(n), n))
            else {
                break;
            };
            let mv = Move {
                shard: group,
                from: node,
                to,
            };
            match move_replica(control, mv, catch_up).await {
                Ok(after) => {
                    placement[i].1 = after.voters;
                    moved.push((group, to));
                    break;
                }
                Err(MoveError::Invalid(_) | MoveError::Busy(_)) if attempt < 5 => {
                    tokio::time::sleep(POLL * 5).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
    Ok(moved)
}

/// A node a join admitted that the meta leader has not reached yet: it takes no
/// replicas until it is known to run (a node admitted but never started would
/// otherwise receive moves that cannot finish).
pub const JOINING: &str = "joining";
/// A node moving its replicas away; it takes no new ones.
pub const DECOMMISSIONING: &str = "decommissioning";
/// A node that holds no replica and takes none: it can be stopped for good.
pub const DECOMMISSIONED: &str = "decommissioned";
/// A node that was unreachable for `--dead-after`: its replicas were re-created
/// elsewhere, and it takes none.
pub const DEAD: &str = "dead";

fn state_key(node: NodeId) -> Vec<u8> {
    [keyspace::NODE_STATE, &node.to_be_bytes()[..]].concat()
}

/// Every node's state other than active, as the meta group records it.
pub async fn node_states(control: &Control) -> Result<BTreeMap<NodeId, String>, MoveError> {
    node_records(control, keyspace::NODE_STATE).await
}

/// The records under `prefix` of the meta group whose keys are `prefix` ++ node id
/// (u64 BE) and whose values are text, by node id.
pub(crate) async fn node_records(
    control: &Control,
    prefix: &[u8],
) -> Result<BTreeMap<NodeId, String>, MoveError> {
    let all = Meta::new(control)
        .scan_all(prefix)
        .await
        .map_err(meta_error)?;
    Ok(all
        .into_iter()
        .filter_map(|(k, v)| {
            let id = k.get(prefix.len()..)?.try_into().ok()?;
            Some((
                u64::from_be_bytes(id),
                String::from_utf8_lossy(&v.value).into_owned(),
            ))
        })
        .collect())
}

/// `node`'s state as the meta group records it; `None`: active.
pub async fn node_state(control: &Control, node: NodeId) -> Result<Option<String>, MoveError> {
    let got = Meta::new(control)
        .get(state_key(node))
        .await
        .map_err(meta_error)?;
    Ok(got.map(|v| String::from_utf8_lossy(&v.value).into_owned()))
}

/// The record that makes a newly admitted `node` [`JOINING`], to be written with its
/// member record.
pub(crate) fn joining(node: NodeId) -> cairn_store::WriteOp {
    meta::put(
        state_key(node),
        JOINING.as_bytes().to_vec(),
        Condition::Always,
    )
}

/// Make `node` active if it is still [`JOINING`]; `false` if it is not (it became
/// active already, or a decommission began meanwhile, which this must not undo).
pub async fn activate(control: &Control, node: NodeId) -> Result<bool, MoveError> {
    let meta = Meta::new(control);
    let Some(found) = meta.get(state_key(node)).await.map_err(meta_error)? else {
        return Ok(false);
    };
    if found.value != JOINING.as_bytes() {
        return Ok(false);
    }
    let mut clear = meta::delete(state_key(node));
    clear.condition = Condition::Version(found.version);
    Ok(meta.write(vec![clear]).await.map_err(meta_error)?.is_some())
}

async fn set_node_state(control: &Control, node: NodeId, state: &str) -> Result<(), MoveError> {
    let put = meta::put(
        state_key(node),
        state.as_bytes().to_vec(),
        Condition::Always,
    );
    Meta::new(control)
        .write(vec![put])
        .await
        .map_err(meta_error)?;
    Ok(())
}

pub(crate) fn meta_error(e: meta::MetaError) -> MoveError {
    match e {
        meta::MetaError::Shard(e) => MoveError::Shard(e),
        other => MoveError::Shard(ShardError::Protocol {
            shard: 0,
            reason: other.to_string(),
        }),
    }
}
