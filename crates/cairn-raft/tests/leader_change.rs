//! A write in flight when its leader loses leadership: answered as applied if its
//! entry still commits under the next leader, and as written-nothing (safe to retry)
//! if another leader's entry took its place. Never "outcome unknown" when the log
//! tells. Three replicas of the tally machine, wired by hand, with node 1 cut off at
//! chosen moments.

mod common;

use cairn_raft::replica::ReplicaMsg;
use cairn_raft::ShardError;
use tokio::sync::oneshot;

use common::tally::{Group, Op};

type Answer = oneshot::Receiver<Result<u64, ShardError>>;

/// Node 1 (replica 0) takes `op` and sends its appends; nothing is delivered yet.
fn propose_on_node_1(group: &mut Group, op: Op) -> Answer {
    let (reply, answer) = oneshot::channel();
    group.replicas[0].handle(ReplicaMsg::Propose { command: op, reply });
    group.replicas[0].process().unwrap();
    answer
}

/// Deliver what is on the wire to nodes 2 and 3 only, and let them answer; drop
/// everything to or from node 1.
fn exchange_without_node_1(group: &mut Group) {
    exchange(group, false);
}

/// Deliver what is on the wire to nodes 2 and 3 only (from node 1 too if
/// `from_node_1`), and let them answer; drop everything to node 1.
fn exchange(group: &mut Group, from_node_1: bool) {
    for _ in 0..100 {
        let sent = std::mem::take(&mut *group.wire.borrow_mut());
        let mut moved = false;
        for msg in sent {
            if msg.to == 1 || (msg.from == 1 && !from_node_1) {
                continue;
            }
            let to = msg.to as usize - 1;
            group.replicas[to].handle(ReplicaMsg::Raft(Box::new(msg)));
            moved = true;
        }
        for replica in &mut group.replicas[1..] {
            replica.process().unwrap();
        }
        if !moved && group.wire.borrow().is_empty() {
            break;
        }
    }
}

/// Nodes 2 and 3 elect node 2 (its timeout runs out first) while node 1 hears
/// nothing.
fn elect_node_2_without_node_1(group: &mut Group) {
    for _ in 0..100 {
        for replica in &mut group.replicas[1..] {
            replica.tick();
        }
        exchange_without_node_1(group);
    }
}

/// Node 1 hears from the others again: a few rounds of ticks, delivering everything.
fn reconnect(group: &mut Group) {
    for _ in 0..20 {
        for replica in &mut group.replicas {
            replica.tick();
        }
        group.settle();
    }
}

fn answer_of(answer: &mut Answer) -> Result<u64, ShardError> {
    answer.try_recv().expect("the write is still waiting")
}

#[test]
fn a_write_whose_entry_commits_under_the_next_leader_is_answered_applied() {
    let mut group = Group::new();
    group.elect();
    let mut answer = propose_on_node_1(&mut group, Op::Add(5));
    // The entry reaches nodes 2 and 3; their acknowledgements never reach node 1.
    exchange(&mut group, true);
    elect_node_2_without_node_1(&mut group);
    assert_eq!(group.totals()[1..], [5, 5], "node 2 committed the entry");
    // Node 1 hears of the new term, steps down, and applies the entry it proposed.
    reconnect(&mut group);
    assert_eq!(group.totals(), vec![5, 5, 5]);
    assert_eq!(
        answer_of(&mut answer).expect("the write committed under the next leader"),
        5
    );
}

#[test]
fn a_write_whose_entry_was_overwritten_is_answered_as_written_nothing() {
    let mut group = Group::new();
    group.elect();
    // Node 1 is cut off before its append leaves.
    let mut lost = propose_on_node_1(&mut group, Op::Add(5));
    group.wire.borrow_mut().clear();
    elect_node_2_without_node_1(&mut group);
    // Node 2 commits another entry at the index node 1's write had.
    let (reply, mut kept) = oneshot::channel();
    group.replicas[1].handle(ReplicaMsg::Propose {
        command: Op::Add(7),
        reply,
    });
    group.replicas[1].process().unwrap();
    exchange_without_node_1(&mut group);
    assert_eq!(answer_of(&mut kept).expect("node 2's write"), 7);
    // Node 1 rejoins: its entry is cut away, and the write is refused as one that
    // wrote nothing (a caller may retry it), not left as unknown.
    reconnect(&mut group);
    assert_eq!(group.totals(), vec![7, 7, 7]);
    match answer_of(&mut lost) {
        Err(ShardError::Unavailable { reason, .. }) => {
            assert!(reason.contains("nothing was written"), "{reason}")
        }
        other => panic!("expected a written-nothing refusal, got {other:?}"),
    }
}

#[test]
fn a_proposal_taken_after_raft_stepped_down_in_the_same_round_is_refused_not_forwarded() {
    let mut group = Group::new();
    group.elect();
    elect_node_2_without_node_1(&mut group);
    // A message of node 2's term for node 1, which still believes it leads.
    let from_node_2 = loop {
        group.replicas[1].tick();
        group.replicas[1].process().unwrap();
        let sent = std::mem::take(&mut *group.wire.borrow_mut());
        if let Some(msg) = sent.into_iter().find(|m| m.to == 1 && m.from == 2) {
            break msg;
        }
    };
    // Both arrive in one round: Raft steps down on the first, before the replica has
    // seen a Ready saying so.
    group.replicas[0].handle(ReplicaMsg::Raft(Box::new(from_node_2)));
    let (reply, mut answer) = oneshot::channel();
    group.replicas[0].handle(ReplicaMsg::Propose {
        command: Op::Add(5),
        reply,
    });
    match answer_of(&mut answer) {
        Err(ShardError::NotLeader { .. }) => {}
        other => panic!("expected NotLeader at once, got {other:?}"),
    }
    // Nothing was forwarded behind the caller's back: no write anywhere.
    reconnect(&mut group);
    assert_eq!(group.totals(), vec![0, 0, 0]);
}
