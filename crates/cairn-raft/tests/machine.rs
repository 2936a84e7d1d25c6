//! The replica drives any [`StateMachine`], not only Cairn's key-value shard: three
//! replicas of a small tally machine, wired by hand (no threads, no sockets), agree on
//! its state, and the holds its effects open keep later answers back until its effects
//! close them. Nothing here is a key, a value, a marker or a transaction.

mod common;

use cairn_raft::ShardError;
use tokio::sync::oneshot;

use common::tally::{Group, Op};

fn answered(answer: &mut oneshot::Receiver<Result<u64, ShardError>>) -> Option<u64> {
    match answer.try_recv() {
        Ok(Ok(total)) => Some(total),
        Ok(Err(e)) => panic!("refused: {e}"),
        Err(oneshot::error::TryRecvError::Empty) => None,
        Err(e) => panic!("reply dropped: {e}"),
    }
}

#[test]
fn three_replicas_of_another_machine_agree_and_its_holds_keep_answers_back() {
    let mut group = Group::new();
    group.elect();

    let mut first = group.propose(Op::Add(5));
    let mut second = group.propose(Op::Add(7));
    assert_eq!(answered(&mut first), Some(5));
    assert_eq!(answered(&mut second), Some(12));
    group.settle();
    assert_eq!(group.totals(), vec![12, 12, 12], "replicas disagree");

    // A hold is opened by the machine's effects, not by anything the replica decodes:
    // a write applied after it is not answered until the effects of a later entry
    // close it.
    let mut hold = group.propose(Op::Hold(9));
    assert_eq!(
        answered(&mut hold),
        Some(12),
        "a hold's own answer reveals nothing"
    );
    let mut held = group.propose(Op::Add(1));
    assert_eq!(answered(&mut held), None, "answered inside the hold");
    assert_eq!(
        group.replicas[0].machine().total(),
        13,
        "applied all the same"
    );

    let mut release = group.propose(Op::Release(9));
    assert_eq!(answered(&mut release), Some(13));
    assert_eq!(
        answered(&mut held),
        Some(13),
        "still held after the release"
    );
    group.settle();
    assert_eq!(group.totals(), vec![13, 13, 13]);
}
