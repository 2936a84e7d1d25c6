//! A small tally machine and a group of three of its replicas wired by hand (no
//! threads, no sockets): enough of a state machine to show the replica never looks
//! inside one, and a network a test can drop or deliver.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::{Arc, Mutex};

use cairn_raft::replica::{Outbox, Replica, ReplicaGauges, ReplicaMsg, ReplicaSeed};
use cairn_raft::{RaftConfig, ShardError, StateMachine};
use cairn_store::{
    AppliedPoint, AppliedState, Committed, Effects, Hold, NodeStore, ShardId, SnapshotStage,
    StoreError,
};
use raft::prelude::Message;
use tokio::sync::oneshot;

use super::NoSync;

/// A command of the tally machine.
#[derive(Debug, Clone, Copy)]
pub enum Op {
    /// Add to the total; answered with the new total.
    Add(u64),
    /// Open hold `id`: answers revealing state after this entry wait.
    Hold(u64),
    /// Close hold `id`.
    Release(u64),
}

#[derive(Default)]
struct Tallied {
    applied: AppliedState,
    total: u64,
    holds: BTreeMap<u64, u64>,
}

/// An in-memory tally: enough of a state machine to show the replica never looks
/// inside one.
#[derive(Clone, Default)]
pub struct Tally(Arc<Mutex<Tallied>>);

impl Tally {
    pub fn total(&self) -> u64 {
        self.0.lock().unwrap().total
    }
}

impl StateMachine for Tally {
    type Command = Op;
    type Outcome = u64;
    type Scope = ();

    fn encode(op: &Op) -> Vec<u8> {
        let (tag, n) = match *op {
            Op::Add(n) => (b'a', n),
            Op::Hold(id) => (b'h', id),
            Op::Release(id) => (b'r', id),
        };
        let mut bytes = vec![tag];
        bytes.extend_from_slice(&n.to_be_bytes());
        bytes
    }

    fn open(_: &NodeStore, _: ShardId) -> Result<Tally, StoreError> {
        Ok(Tally::default())
    }

    fn applied(&self) -> Result<AppliedState, StoreError> {
        Ok(self.0.lock().unwrap().applied)
    }

    fn applied_point(&self) -> AppliedPoint {
        let tally = self.clone();
        Arc::new(move || tally.applied())
    }

    fn apply(&self, entries: &[Committed<'_>]) -> Result<Vec<(u64, Effects)>, StoreError> {
        let mut t = self.0.lock().unwrap();
        let mut out = Vec::new();
        for entry in entries {
            let mut effects = Effects::default();
            if let [tag, n @ ..] = entry.data {
                let n = u64::from_be_bytes(n.try_into().expect("an 8-byte operand"));
                match tag {
                    b'a' => {
                        t.total += n;
                        effects.wrote_data = true;
                    }
                    b'h' => {
                        t.holds.insert(n, entry.index);
                        effects.opens = Some(Hold {
                            id: n,
                            from: entry.index,
                        });
                        effects.reveals_nothing = true;
                    }
                    _ => {
                        t.holds.remove(&n);
                        effects.closes = Some(n);
                        effects.reveals_nothing = true;
                    }
                }
            }
            t.applied = AppliedState {
                index: entry.index,
                term: entry.term,
            };
            out.push((t.total, effects));
        }
        Ok(out)
    }

    fn open_holds(&self) -> Result<Vec<Hold>, StoreError> {
        let t = self.0.lock().unwrap();
        Ok(t.holds
            .iter()
            .map(|(&id, &from)| Hold { id, from })
            .collect())
    }

    fn lock_in(&self, _: &()) -> Result<Option<u64>, StoreError> {
        Ok(None)
    }

    fn install(&self, _: &SnapshotStage, _: AppliedState) -> Result<(), StoreError> {
        unreachable!("the log is never compacted in this test")
    }
}

/// Every message any replica sends, until the test delivers it.
pub type Wire = Rc<RefCell<Vec<Message>>>;

pub struct Net(pub Wire);

impl Outbox<Tally> for Net {
    fn send_raft(&mut self, _: ShardId, msg: Message) -> bool {
        self.0.borrow_mut().push(msg);
        true
    }
    fn send_snapshot(&mut self, _: ShardId, _: Message, _: Tally) -> bool {
        false
    }
}

pub struct Group {
    pub wire: Wire,
    pub replicas: Vec<Replica<Tally, Net, NoSync>>,
    _stores: Vec<NodeStore>,
}

impl Group {
    /// Three replicas of shard 0; node 1 leads once ticked.
    pub fn new() -> Group {
        Group::with(false)
    }

    /// [`Group::new`], with leader leases for reads on or off.
    pub fn with(lease_reads: bool) -> Group {
        let wire = Wire::default();
        let mut replicas = Vec::new();
        let mut stores = Vec::new();
        for node in 1..=3u64 {
            let store = NodeStore::open_temporary().unwrap();
            // Node 1's timeout runs out first, so it leads.
            let seed = ReplicaSeed {
                proposal_ids: node << 32,
                election_timeout: Some(10 * node as usize),
            };
            let replica = Replica::open_seeded(
                0,
                &RaftConfig {
                    cluster_id: "tally".into(),
                    request_ticks: 1000,
                    lease_reads,
                    tls: None,
                    ..super::config(node, 3, 1)
                },
                store.clone(),
                NoSync,
                Net(wire.clone()),
                Arc::new(ReplicaGauges::new()),
                seed,
            )
            .unwrap();
            replicas.push(replica);
            stores.push(store);
        }
        Group {
            wire,
            replicas,
            _stores: stores,
        }
    }

    /// Tick every replica until node 1 (the shortest timeout) has been elected.
    pub fn elect(&mut self) {
        for _ in 0..15 {
            for replica in &mut self.replicas {
                replica.tick();
            }
            self.settle();
        }
    }

    /// Process every replica and deliver what they send, until nothing moves.
    pub fn settle(&mut self) {
        for _ in 0..100 {
            for replica in &mut self.replicas {
                replica.process().unwrap();
            }
            let sent = std::mem::take(&mut *self.wire.borrow_mut());
            if sent.is_empty() {
                return;
            }
            for msg in sent {
                let to = msg.to as usize - 1;
                self.replicas[to].handle(ReplicaMsg::Raft(Box::new(msg)));
            }
        }
        panic!("the group did not settle");
    }

    pub fn propose(&mut self, op: Op) -> oneshot::Receiver<Result<u64, ShardError>> {
        let (reply, answer) = oneshot::channel();
        self.replicas[0].handle(ReplicaMsg::Propose { command: op, reply });
        self.settle();
        answer
    }

    pub fn totals(&self) -> Vec<u64> {
        self.replicas.iter().map(|r| r.machine().total()).collect()
    }
}
