//! Lease reads: a leader whose ReadIndex round a quorum confirmed serves reads without
//! another round until its lease runs out, and only until then; a replica that has
//! just started gives no vote for an election timeout, since before a crash it may
//! have acknowledged the heartbeat a lease rests on. Three replicas of the tally
//! machine, wired by hand: a "partition" is the test not delivering what is sent.

mod common;

use cairn_raft::replica::ReplicaMsg;
use cairn_raft::ShardError;
use raft::prelude::{Message, MessageType};
use tokio::sync::oneshot;

use common::tally::{Group, Op};

type Answer = oneshot::Receiver<Result<u64, ShardError>>;

/// Ask node 1 (the leader) for a read barrier and process it once, delivering nothing.
fn read_cut_off(group: &mut Group) -> Answer {
    let (reply, answer) = oneshot::channel();
    group.replicas[0].handle(ReplicaMsg::ReadBarrier { scope: (), reply });
    group.replicas[0].process().unwrap();
    group.wire.borrow_mut().clear();
    answer
}

fn version(answer: &mut Answer) -> Option<u64> {
    match answer.try_recv() {
        Ok(Ok(version)) => Some(version),
        Ok(Err(e)) => panic!("refused: {e}"),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(e) => panic!("reply dropped: {e}"),
    }
}

/// Deliver everything again, with the leader's heartbeats (which carry its pending
/// ReadIndex request again) until the group settles.
fn heal(group: &mut Group) {
    let heartbeat = common::config(1, 3, 1).heartbeat_ticks;
    for _ in 0..heartbeat {
        group.replicas[0].tick();
        group.settle();
    }
}

/// A group whose leader has applied a write and had one read confirmed by a quorum.
fn leader_with_a_confirmed_read(lease_reads: bool) -> Group {
    let mut group = Group::with(lease_reads);
    group.elect();
    let mut write = group.propose(Op::Add(5));
    assert!(matches!(write.try_recv(), Ok(Ok(5))));
    let (reply, mut answer) = oneshot::channel();
    group.replicas[0].handle(ReplicaMsg::ReadBarrier { scope: (), reply });
    group.settle();
    assert!(
        version(&mut answer).is_some(),
        "a ReadIndex round with a quorum"
    );
    group
}

#[test]
fn a_leader_reads_on_its_lease_until_it_runs_out() {
    let mut group = leader_with_a_confirmed_read(true);
    let applied = group.replicas[0].machine().total();
    assert_eq!(applied, 5);

    // Cut off from both followers: the lease answers, with no round.
    let mut answer = read_cut_off(&mut group);
    let at = version(&mut answer).expect("answered on the lease");

    // Time passes with the leader still cut off. Well before raft-rs's check_quorum
    // would make it step down, its lease runs out and it asks for a round again,
    // which nobody answers.
    let lease = common::config(1, 3, 1).election_ticks as u64;
    for _ in 0..lease {
        group.replicas[0].tick();
        group.replicas[0].process().unwrap();
        group.wire.borrow_mut().clear();
    }
    let mut late = read_cut_off(&mut group);
    assert_eq!(version(&mut late), None, "answered on an expired lease");

    // Healed, the round completes and the read is answered at the same version.
    heal(&mut group);
    assert_eq!(version(&mut late), Some(at));
}

#[test]
fn a_stopped_leader_counts_the_ticks_it_missed() {
    let mut group = leader_with_a_confirmed_read(true);
    let mut answer = read_cut_off(&mut group);
    assert!(version(&mut answer).is_some(), "answered on the lease");
    // One tick that stands for the election timeout's worth of periods (a thread that
    // stopped, then woke): the lease is gone, though raft-rs saw a single tick.
    let periods = common::config(1, 3, 1).election_ticks as u64;
    group.replicas[0].tick_periods(periods);
    group.replicas[0].process().unwrap();
    group.wire.borrow_mut().clear();
    let mut late = read_cut_off(&mut group);
    assert_eq!(version(&mut late), None, "answered on an expired lease");
}

#[test]
fn without_lease_reads_every_read_takes_a_round() {
    let mut group = leader_with_a_confirmed_read(false);
    let mut answer = read_cut_off(&mut group);
    assert_eq!(version(&mut answer), None, "answered without a quorum");
    heal(&mut group);
    assert!(version(&mut answer).is_some());
}

/// A vote request from node 3 for a later term, with a log ahead of anyone's.
fn vote_request(to: u64) -> Message {
    let mut msg = Message::default();
    msg.set_msg_type(MessageType::MsgRequestVote);
    msg.from = 3;
    msg.to = to;
    msg.term = 50;
    msg.log_term = 40;
    msg.index = 1000;
    msg
}

fn votes_for_3(group: &Group) -> usize {
    group
        .wire
        .borrow()
        .iter()
        .filter(|m| m.msg_type == MessageType::MsgRequestVoteResponse && m.to == 3 && !m.reject)
        .count()
}

#[test]
fn a_started_replica_gives_no_vote_for_an_election_timeout() {
    let mut group = Group::with(true);
    group.replicas[1].handle(ReplicaMsg::Raft(Box::new(vote_request(2))));
    group.replicas[1].process().unwrap();
    assert_eq!(votes_for_3(&group), 0, "voted just after starting");

    let election = common::config(2, 3, 1).election_ticks;
    for _ in 0..election {
        group.replicas[1].tick();
    }
    group.wire.borrow_mut().clear();
    group.replicas[1].handle(ReplicaMsg::Raft(Box::new(vote_request(2))));
    group.replicas[1].process().unwrap();
    assert_eq!(votes_for_3(&group), 1, "no vote once the timeout passed");
}

#[test]
fn without_lease_reads_a_started_replica_votes_at_once() {
    let mut group = Group::with(false);
    group.replicas[1].handle(ReplicaMsg::Raft(Box::new(vote_request(2))));
    group.replicas[1].process().unwrap();
    assert_eq!(votes_for_3(&group), 1);
}
