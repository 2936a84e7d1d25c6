//! The peer transport: TCP between the nodes of one cluster.
//!
//! Each node keeps one outbound connection per peer, owned by a link task that drains
//! a bounded queue: everything queued while the previous batch was being written goes
//! out in one write and one flush, so Raft messages of all shards to that peer travel
//! batched. The same connection carries forwarded client requests (`Call`), whose
//! replies come back on it. Inbound connections are accepted by a listener task and
//! read by one task each.
//!
//! Raft snapshots do not travel as one message: the sender opens a dedicated
//! connection and streams the shard's versions at the snapshot index in chunks, then
//! the `MsgSnapshot` itself; the receiver writes the chunks to the shard's snapshot
//! stage and only then hands the message to the replica, which installs the stage.
//!
//! A peer's address may be a host name: it is resolved at every dial and each
//! address it gives is tried in turn, so a peer that moves keeps its name.
//!
//! Every connection starts with a `Hello` naming the cluster id; a peer of another
//! cluster is refused. It also names the sender's *data incarnation*, drawn once when
//! its data directory was first used: a node remembers the first one each peer
//! presented and refuses any other for good, answering `Refused`, on which the sender
//! stops. A node whose directory was wiped or rolled back lost entries it
//! acknowledged; if it could vote, a shard could elect a leader that lacks committed
//! writes.
//!
//! **A forwarded call runs at most once.** The network may deliver a frame twice (a
//! retransmitting middlebox, a proxy, a replayed connection), and a write executed
//! twice is a write applied twice: its value appears at two versions and may overwrite
//! a later write. So every call carries an id, unique within its sender's
//! *incarnation* (a random number each process picks at start and names in its
//! `Hello`), and the receiver keeps a ledger (`CallLedger`) of the ids it has seen per
//! (sender, incarnation). A duplicate is never executed again: if the original has
//! finished and was a write, its (small) answer is sent again, since that is what a
//! retransmitting peer needs; otherwise it is dropped, and the original's answer is
//! on its way. Ids come from a counter, so the ledger keeps a window of the most
//! recent ones and treats anything below the window as already seen: forgetting can
//! only cost a delayed call its answer (its caller then reports the outcome unknown),
//! never run it twice.
//!
//! **Every frame fits, every link answers.** Frames are length-delimited bincode
//! under a cap ([`frame`]); a frame that would exceed it is never written: a call
//! too large fails at once, an answer too large is replaced by an error answer. The
//! limits that feed frames (pages, proposals) are checked against the cap when the
//! configuration loads, so that path is a last resort. Links ping their peers and
//! re-dial one that stops answering ([`link`]); an inbound connection whose writer
//! failed is closed rather than left executing calls it cannot answer ([`inbound`]).
//! Messages to an unreachable peer are dropped: Raft retransmits, and forwarded calls
//! fail at their deadline.
//!
//! Files: [`frame`] (the frames and their cap), [`link`] (outbound connections and
//! keepalive), [`inbound`] (accepted connections), [`ledger`] (calls seen),
//! [`snapshot`] (Raft snapshot streams).

mod frame;
mod inbound;
mod ledger;
mod link;
mod snapshot;
pub mod tls;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_store::{NodeId, NodeStore, ShardId, ShardState};
use futures::future::BoxFuture;
use protobuf::Message as _;
use raft::prelude::Message;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

pub use crate::config::MAX_FRAME_CAP;
pub use frame::{frame_codec, frame_kind, FrameKind};
pub use link::LinkStatus;

use crate::call::Call;
use crate::config::RaftConfig;
use crate::error::ShardError;
use crate::hosted::HostedReplicas;
use crate::replica::{Outbox, ReplicaMsg};
use frame::{CallResult, Frame};
use ledger::{Admission, CallLedger, CallSender};
use link::{LinkStats, Outbound};

/// Outbound queue per peer; beyond it Raft messages are dropped (Raft resends).
const PEER_QUEUE: usize = 8192;

impl Outbox<ShardState> for Transport {
    fn send_raft(&mut self, shard: ShardId, msg: Message) -> bool {
        Transport::send_raft(self, shard, msg)
    }

    fn send_snapshot(&mut self, shard: ShardId, msg: Message, state: ShardState) -> bool {
        Transport::send_snapshot(self, shard, msg, state)
    }
}

/// Serves forwarded requests on this node (implemented by the local shards).
pub trait CallHandler: Send + Sync + 'static {
    fn call(self: Arc<Self>, call: Call) -> BoxFuture<'static, CallResult>;
}

/// Handle to the node's peer transport. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    cluster_id: String,
    /// The frame cap (`RaftLimits::max_frame_bytes`), both ways.
    max_frame: usize,
    runtime: tokio::runtime::Handle,
    /// Every other member: the cluster's founding members, and nodes that joined
    /// since ([`Transport::add_peer`]).
    peers: std::sync::RwLock<HashMap<NodeId, Arc<Peer>>>,
    /// This node's replicas by group id.
    replicas: Arc<HostedReplicas>,
    store: NodeStore,
    calls: Mutex<HashMap<u64, oneshot::Sender<CallResult>>>,
    next_call: AtomicU64,
    /// This process's incarnation (see the module doc), named in every `Hello`.
    incarnation: u64,
    /// This data directory's incarnation, named in every `Hello` (see `inbound.rs`).
    data_incarnation: u64,
    /// Calls received, per sender incarnation: a duplicate is never executed twice.
    ledger: Mutex<CallLedger>,
    /// One staged snapshot per shard at a time.
    stage_locks: Vec<Arc<tokio::sync::Mutex<()>>>,
    /// Mutual TLS on every peer connection, when configured.
    tls: Option<tls::PeerTls>,
    cancel: CancellationToken,
}

struct Peer {
    addr: crate::config::PeerAddr,
    tx: mpsc::Sender<Outbound>,
    stats: Arc<LinkStats>,
}

impl Transport {
    /// Bind the listener (`cfg.listen`) and start a link task per peer of `cfg.peers`.
    /// Must be called inside a tokio runtime.
    pub(crate) async fn start(
        cfg: &RaftConfig,
        replicas: Arc<HostedReplicas>,
        store: NodeStore,
        handler: Arc<dyn CallHandler>,
        cancel: CancellationToken,
    ) -> std::io::Result<Transport> {
        let node_id = cfg.node_id;
        let data_incarnation = store
            .data_incarnation(|| rand::random::<u64>() | 1)
            .map_err(std::io::Error::other)?;
        let listener = TcpListener::bind(cfg.listen).await?;
        let shards = replicas.groups();
        let transport = Transport {
            inner: Arc::new(Inner {
                node_id,
                cluster_id: cfg.cluster_id.clone(),
                max_frame: cfg.limits.max_frame_bytes,
                runtime: tokio::runtime::Handle::current(),
                peers: Default::default(),
                replicas,
                store,
                calls: Mutex::new(HashMap::new()),
                next_call: AtomicU64::new(1),
                incarnation: rand::random(),
                data_incarnation,
                ledger: Mutex::new(CallLedger::default()),
                stage_locks: (0..shards).map(|_| Default::default()).collect(),
                tls: cfg.tls.clone(),
                cancel,
            }),
        };
        for (&id, addr) in cfg.peers.iter() {
            transport.add_peer(id, addr.clone());
        }
        let t = transport.clone();
        let span = tracing::info_span!("peer_listener", node = node_id, listen = %cfg.listen);
        tokio::spawn(t.accept(listener, handler).instrument(span));
        Ok(transport)
    }

    /// Start talking to member `id` at `addr` (a link task, re-dialling as needed).
    /// Returns false if it is this node or already a peer.
    pub fn add_peer(&self, id: NodeId, addr: crate::config::PeerAddr) -> bool {
        if id == self.inner.node_id {
            return false;
        }
        let mut peers = self
            .inner
            .peers
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if peers.contains_key(&id) {
            return false;
        }
        let (tx, rx) = mpsc::channel(PEER_QUEUE);
        let peer = Peer {
            addr: addr.clone(),
            tx,
            stats: Arc::default(),
        };
        peers.insert(id, Arc::new(peer));
        drop(peers);
        let t = self.clone();
        let node = self.inner.node_id;
        let span = tracing::info_span!("peer_link", node, peer = id, %addr);
        self.inner
            .runtime
            .spawn(t.link(id, addr, rx).instrument(span));
        true
    }

    /// Every other member and its peer address.
    pub fn peers(&self) -> Vec<(NodeId, crate::config::PeerAddr)> {
        let mut all: Vec<_> = self
            .lock_peers()
            .iter()
            .map(|(&id, p)| (id, p.addr.clone()))
            .collect();
        all.sort_by_key(|(id, _)| *id);
        all
    }

    fn peer(&self, id: NodeId) -> Option<Arc<Peer>> {
        self.lock_peers().get(&id).cloned()
    }

    fn lock_peers(&self) -> std::sync::RwLockReadGuard<'_, HashMap<NodeId, Arc<Peer>>> {
        // Peers are only ever added whole.
        self.inner
            .peers
            .read()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Queue a Raft message for its peer. Returns false if it was dropped.
    pub fn send_raft(&self, shard: ShardId, msg: Message) -> bool {
        let Some(peer) = self.peer(msg.to) else {
            return false;
        };
        match msg.write_to_bytes() {
            Ok(bytes) => peer.tx.try_send(Outbound::Raft(shard, bytes)).is_ok(),
            Err(_) => false,
        }
    }

    /// Forward a request to another node and wait for its answer.
    pub async fn call(&self, to: NodeId, call: Call, timeout: Duration) -> CallResult {
        let shard = call.shard();
        let unavailable = |reason: &str| ShardError::Unavailable {
            shard,
            reason: format!("node {to}: {reason}"),
        };
        let peer = self.peer(to).ok_or_else(|| unavailable("not a peer"))?;
        let id = self.inner.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_calls().insert(id, tx);
        let proposes = call.proposes();
        if peer.tx.try_send(Outbound::Call(id, call)).is_err() {
            self.lock_calls().remove(&id);
            return Err(unavailable("peer queue full"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            outcome => {
                self.lock_calls().remove(&id);
                let reason = match outcome {
                    Err(_) => {
                        peer.stats.call_unanswered(to);
                        "no answer before the deadline"
                    }
                    _ => "connection lost",
                };
                // A forwarded write may have been proposed before the link failed.
                Err(if proposes {
                    ShardError::OutcomeUnknown {
                        shard,
                        reason: format!("node {to}: {reason}"),
                    }
                } else {
                    unavailable(reason)
                })
            }
        }
    }

    /// The state of this node's link to every peer, by peer id.
    pub fn links(&self) -> Vec<LinkStatus> {
        let mut links: Vec<_> = self
            .lock_peers()
            .iter()
            .map(|(&id, peer)| peer.stats.status(id))
            .collect();
        links.sort_by_key(|l| l.peer);
        links
    }

    /// Whether `peer` looks reachable now (its link is up and answering keepalives).
    /// A hint for choosing where to send first, never a promise.
    pub fn reachable(&self, peer: NodeId) -> bool {
        self.link_stats(peer).is_some_and(|s| s.reachable())
    }

    fn link_stats(&self, peer: NodeId) -> Option<Arc<LinkStats>> {
        self.peer(peer).map(|p| p.stats.clone())
    }

    fn lock_calls(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<CallResult>>> {
        // The map stays consistent even if a holder panicked: entries are independent.
        self.inner
            .calls
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn admit(&self, sender: CallSender, id: u64) -> Admission {
        self.lock_ledger().admit(sender, id)
    }

    fn lock_ledger(&self) -> std::sync::MutexGuard<'_, CallLedger> {
        // Entries are independent; a panicked holder leaves nothing half-written.
        self.inner
            .ledger
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn hello(&self) -> Frame {
        Frame::Hello {
            cluster_id: self.inner.cluster_id.clone(),
            from: self.inner.node_id,
            incarnation: self.inner.incarnation,
            data: self.inner.data_incarnation,
        }
    }

    fn complete(&self, id: u64, result: CallResult) {
        if let Some(tx) = self.lock_calls().remove(&id) {
            let _ = tx.send(result);
        }
    }

    /// Hand a Raft message from the connection of peer `sender` to its replica.
    /// A message must come from the node that sent it and be for this node: one that
    /// claims another sender or addressee is dropped, so a connection speaks only
    /// for the node its hello names (with mutual TLS, the node its certificate names).
    fn deliver(&self, sender: u64, shard: ShardId, bytes: &[u8]) {
        let Some(replica) = self.inner.replicas.inbox(shard) else {
            return;
        };
        if let Ok(msg) = Message::parse_from_bytes(bytes) {
            if !speaks_for(sender, self.inner.node_id, &msg) {
                tracing::warn!(
                    sender,
                    claimed = msg.from,
                    to = msg.to,
                    shard,
                    "dropped a Raft message whose sender or addressee is not this link's"
                );
                return;
            }
            // A full inbox means the replica is behind; Raft will resend.
            let _ = replica.try_send(ReplicaMsg::Raft(Box::new(msg)));
        }
    }
}

/// Whether a Raft message that peer `sender` sent to node `me` says so. raft-rs
/// forwards one kind with another node in `from`: a follower asked to hand
/// leadership over passes `MsgTransferLeader` on to its leader with the transferee
/// as `from`.
fn speaks_for(sender: u64, me: u64, msg: &Message) -> bool {
    let from_ok =
        msg.from == sender || msg.get_msg_type() == raft::eraftpb::MessageType::MsgTransferLeader;
    from_ok && msg.to == me
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::atomic::AtomicUsize;

    use cairn_store::{ApplyOutcome, Page, Versioned};
    use futures::{SinkExt, StreamExt};
    use tokio_util::codec::{Framed, LengthDelimitedCodec};

    use super::frame::encode;
    use super::link::{connect, PONG_DEADLINE};
    use super::*;
    use crate::call::{Consistency, ShardRequest, ShardResponse};
    use crate::config::RaftLimits;

    const MAX_FRAME: usize = 256 * 1024;

    /// Answers writes with the same outcome, counting executions; answers a read of
    /// key `big` with a page larger than any frame, and other reads with nothing.
    struct Counting {
        calls: AtomicUsize,
    }

    impl CallHandler for Counting {
        fn call(self: Arc<Self>, call: Call) -> BoxFuture<'static, CallResult> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async move {
                match call {
                    Call::Client(ShardRequest::Get { key, .. }) if key == b"big" => {
                        let items = (0..64u8)
                            .map(|i| {
                                let value = vec![i; 8 * 1024];
                                (vec![i], Versioned { version: 1, value })
                            })
                            .collect();
                        Ok(ShardResponse::Items(Page { items, more: false }))
                    }
                    Call::Client(ShardRequest::Get { .. }) => Ok(ShardResponse::Value(None)),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        Ok(ShardResponse::Written(ApplyOutcome::Applied {
                            version: 7,
                            existed: vec![false],
                        }))
                    }
                }
            })
        }
    }

    fn write() -> Call {
        Call::Client(ShardRequest::Write {
            shard: 0,
            ops: Vec::new(),
        })
    }

    fn get(key: &[u8]) -> Call {
        Call::Client(ShardRequest::Get {
            shard: 3,
            key: key.to_vec(),
            consistency: Consistency::Linearizable,
        })
    }

    fn free_addr() -> SocketAddr {
        std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    fn config(node_id: NodeId, peers: &[(NodeId, SocketAddr)]) -> RaftConfig {
        let listen = peers.iter().find(|(id, _)| *id == node_id).unwrap().1;
        let peers: BTreeMap<_, _> = peers.iter().map(|&(id, a)| (id, a.into())).collect();
        RaftConfig {
            node_id,
            cluster_id: "c".into(),
            shards: 1,
            listen,
            peers,
            placement: crate::config::Placement::Everywhere,
            tick: Duration::from_millis(100),
            election_ticks: 10,
            heartbeat_ticks: 2,
            log_compact_entries: 1000,
            request_ticks: 50,
            replica_threads: 1,
            limits: RaftLimits {
                max_frame_bytes: MAX_FRAME,
                max_entry_bytes: 1024,
            },
            lease_reads: false,
            tls: None,
        }
    }

    /// A transport for node `id` among `peers`, answering with a [`Counting`].
    async fn node(
        id: NodeId,
        peers: &[(NodeId, SocketAddr)],
        dir: &std::path::Path,
    ) -> (Transport, Arc<Counting>, CancellationToken) {
        let store = NodeStore::open(&dir.join(id.to_string())).unwrap();
        let handler = Arc::new(Counting {
            calls: AtomicUsize::new(0),
        });
        let cancel = CancellationToken::new();
        let transport = Transport::start(
            &config(id, peers),
            Arc::new(HostedReplicas::new(0)),
            store,
            handler.clone(),
            cancel.clone(),
        )
        .await
        .unwrap();
        (transport, handler, cancel)
    }

    async fn dial(
        addr: SocketAddr,
        incarnation: u64,
    ) -> Framed<tls::PeerStream, LengthDelimitedCodec> {
        dial_with_data(addr, incarnation, 1).await
    }

    /// Dial as node 1 whose data directory has incarnation `data`.
    async fn dial_with_data(
        addr: SocketAddr,
        incarnation: u64,
        data: u64,
    ) -> Framed<tls::PeerStream, LengthDelimitedCodec> {
        for _ in 0..100 {
            let hello = Frame::Hello {
                cluster_id: "c".into(),
                from: 1,
                incarnation,
                data,
            };
            if let Ok(framed) = connect(&addr.into(), 2, None, hello, MAX_FRAME).await {
                return framed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("transport at {addr} never accepted");
    }

    /// Replies arriving within a short while.
    async fn replies(framed: &mut Framed<tls::PeerStream, LengthDelimitedCodec>) -> Vec<u64> {
        let mut ids = Vec::new();
        while let Ok(Some(Ok(bytes))) =
            tokio::time::timeout(Duration::from_millis(300), framed.next()).await
        {
            match bincode::deserialize::<Frame>(&bytes).unwrap() {
                Frame::Reply { id, result } => {
                    assert!(result.is_ok(), "{result:?}");
                    ids.push(id);
                }
                other => panic!("unexpected frame {other:?}"),
            }
        }
        ids
    }

    /// The first frame back on `framed` within a second, if any.
    async fn answer(framed: &mut Framed<tls::PeerStream, LengthDelimitedCodec>) -> Option<Frame> {
        match tokio::time::timeout(Duration::from_secs(1), framed.next()).await {
            Ok(Some(Ok(bytes))) => Some(bincode::deserialize::<Frame>(&bytes).unwrap()),
            _ => None,
        }
    }

    /// A CA and certificates for nodes 1 and 2 in `dir`, loaded.
    fn pki(dir: &std::path::Path) -> (tls::TlsMaterial, tls::TlsMaterial) {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let ca_cert = ca.self_signed(&ca_key).unwrap();
        std::fs::write(dir.join("ca.crt"), ca_cert.pem()).unwrap();
        let issuer = Issuer::new(ca, ca_key);
        let node = |id: NodeId| {
            let key = KeyPair::generate().unwrap();
            let params = CertificateParams::new(vec![tls::node_name(id)]).unwrap();
            let cert = params.signed_by(&key, &issuer).unwrap();
            let (c, k) = (dir.join(format!("{id}.crt")), dir.join(format!("{id}.key")));
            std::fs::write(&c, cert.pem()).unwrap();
            std::fs::write(&k, key.serialize_pem()).unwrap();
            tls::TlsMaterial::load(&dir.join("ca.crt"), &c, &k).unwrap()
        };
        (node(1), node(2))
    }

    /// Under mutual TLS a connection speaks for the node its certificate names: a
    /// peer with node 1's certificate is served as node 1, and refused when its hello
    /// claims node 3; a peer without a certificate, or speaking plaintext, gets
    /// nothing; and a dialler refuses a node whose certificate names another.
    #[tokio::test]
    async fn under_tls_a_peer_is_the_node_its_certificate_names() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = pki(dir.path());
        assert!(one.names_node(1) && !one.names_node(2));
        let addr = free_addr();
        let store = NodeStore::open(&dir.path().join("data")).unwrap();
        let mut cfg = config(2, &[(2, addr)]);
        cfg.tls = Some(tls::PeerTls::new(&two).unwrap());
        let cancel = CancellationToken::new();
        let handler = Arc::new(Counting {
            calls: AtomicUsize::new(0),
        });
        let _transport = Transport::start(
            &cfg,
            Arc::new(HostedReplicas::new(0)),
            store,
            handler,
            cancel.clone(),
        )
        .await
        .unwrap();
        let as_one = tls::PeerTls::new(&one).unwrap();
        let hello = |from: NodeId| Frame::Hello {
            cluster_id: "c".into(),
            from,
            incarnation: 1,
            data: 1,
        };
        let ping = || encode(&Frame::Ping { nonce: 4 }, MAX_FRAME).unwrap();
        let mut dial = None;
        for _ in 0..100 {
            if let Ok(framed) = connect(&addr.into(), 2, Some(&as_one), hello(1), MAX_FRAME).await {
                dial = Some(framed);
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let mut honest = dial.expect("node 1 connects under TLS");
        honest.send(ping()).await.unwrap();
        assert!(matches!(
            answer(&mut honest).await,
            Some(Frame::Pong { nonce: 4 })
        ));

        let mut impostor = connect(&addr.into(), 2, Some(&as_one), hello(3), MAX_FRAME)
            .await
            .expect("the handshake itself succeeds");
        let _ = impostor.send(ping()).await;
        assert!(
            answer(&mut impostor).await.is_none(),
            "node 1 spoke as node 3"
        );

        let mut plain = connect(&addr.into(), 2, None, hello(1), MAX_FRAME)
            .await
            .expect("TCP connects");
        let _ = plain.send(ping()).await;
        assert!(
            answer(&mut plain).await.is_none(),
            "a plaintext peer was served"
        );

        // A dialler that meant node 5 does not accept node 2's certificate.
        assert!(connect(&addr.into(), 5, Some(&as_one), hello(1), MAX_FRAME)
            .await
            .is_err());
        cancel.cancel();
    }

    /// A connection speaks for the node its hello names: a Raft message claiming
    /// another sender, or meant for another node, never reaches the replica.
    #[tokio::test]
    async fn a_raft_message_claiming_another_sender_is_dropped() {
        use protobuf::Message as _;
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let store = NodeStore::open(&dir.path().join("2")).unwrap();
        let replicas = Arc::new(HostedReplicas::new(1));
        let (bell, _rings) = crossbeam_channel::unbounded();
        let (inbox, mailbox) = crate::replica::inbox::inbox(0, 16, bell);
        replicas.set(
            0,
            Some(crate::hosted::Slot {
                inbox,
                state: store.shard_state(0).unwrap(),
                gauges: Default::default(),
            }),
        );
        let cancel = CancellationToken::new();
        let handler = Arc::new(Counting {
            calls: AtomicUsize::new(0),
        });
        let _transport = Transport::start(
            &config(2, &[(2, addr)]),
            replicas,
            store,
            handler,
            cancel.clone(),
        )
        .await
        .unwrap();
        let raft = |from: u64, to: u64, term: u64| {
            let mut msg = Message {
                from,
                to,
                term,
                ..Default::default()
            };
            msg.set_msg_type(raft::eraftpb::MessageType::MsgHeartbeat);
            let msg = msg.write_to_bytes().unwrap();
            encode(&Frame::Raft { shard: 0, msg }, MAX_FRAME).unwrap()
        };
        // The hello says node 1.
        let mut link = dial(addr, 1).await;
        link.send(raft(3, 2, 7)).await.unwrap();
        link.send(raft(1, 5, 8)).await.unwrap();
        link.send(raft(1, 2, 9)).await.unwrap();
        link.send(encode(&Frame::Ping { nonce: 1 }, MAX_FRAME).unwrap())
            .await
            .unwrap();
        // Frames are read in order: once the ping is answered, all three were handled.
        assert!(matches!(
            answer(&mut link).await,
            Some(Frame::Pong { nonce: 1 })
        ));
        let mut delivered = Vec::new();
        while let Ok(ReplicaMsg::Raft(msg)) = mailbox.try_recv() {
            delivered.push((msg.from, msg.to, msg.term));
        }
        assert_eq!(delivered, vec![(1, 2, 9)]);
        cancel.cancel();
    }

    /// A node whose data directory was wiped comes back with another data
    /// incarnation: refused for good, with a reason, while the first one it presented
    /// is still accepted.
    #[tokio::test]
    async fn a_peer_with_another_data_directory_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let (_transport, _handler, cancel) = node(2, &[(2, addr)], dir.path()).await;
        let ping = || encode(&Frame::Ping { nonce: 5 }, MAX_FRAME).unwrap();

        let mut first = dial_with_data(addr, 9, 0xabc).await;
        first.send(ping()).await.unwrap();
        assert!(matches!(
            answer(&mut first).await,
            Some(Frame::Pong { nonce: 5 })
        ));

        let mut wiped = dial_with_data(addr, 10, 0xdef).await;
        match answer(&mut wiped).await {
            Some(Frame::Refused { reason }) => {
                assert!(reason.contains("another data directory"), "{reason}")
            }
            other => panic!("a new data directory was not refused: {other:?}"),
        }

        let mut again = dial_with_data(addr, 11, 0xabc).await;
        again.send(ping()).await.unwrap();
        assert!(matches!(
            answer(&mut again).await,
            Some(Frame::Pong { nonce: 5 })
        ));
        cancel.cancel();
    }

    /// Found by the chaos harness (`tests/chaos.rs`, `duplicated_frames`): a peer
    /// frame delivered twice ran a forwarded write twice, so its value appeared at two
    /// versions and could overwrite a later write.
    #[tokio::test]
    async fn a_duplicated_forwarded_write_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let addr = free_addr();
        let (_transport, handler, cancel) = node(2, &[(2, addr)], dir.path()).await;

        let mut link = dial(addr, 9).await;
        // The same call three times: twice at once (the first still running), once
        // after it finished.
        let call = || {
            let frame = Frame::Call {
                id: 1,
                call: write(),
            };
            encode(&frame, MAX_FRAME).unwrap()
        };
        link.send(call()).await.unwrap();
        link.send(call()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        link.send(call()).await.unwrap();
        let got = replies(&mut link).await;
        assert_eq!(
            handler.calls.load(Ordering::SeqCst),
            1,
            "executed more than once"
        );
        // The original's answer, and the finished write's answer again for the late
        // duplicate; none for the duplicate that arrived while it ran.
        assert_eq!(got, vec![1, 1]);

        // A duplicate on another connection of the same sender is still a duplicate.
        let mut again = dial(addr, 9).await;
        again.send(call()).await.unwrap();
        assert_eq!(replies(&mut again).await, vec![1]);
        assert_eq!(handler.calls.load(Ordering::SeqCst), 1);

        // A restarted sender (new incarnation) counts from 1 again: a new call.
        let mut restarted = dial(addr, 10).await;
        restarted.send(call()).await.unwrap();
        assert_eq!(replies(&mut restarted).await, vec![1]);
        assert_eq!(handler.calls.load(Ordering::SeqCst), 2);
        cancel.cancel();
    }

    /// Issue 11: an answer larger than a frame stopped the answering side's writer
    /// while its reader went on executing calls, so every later call through that
    /// link was executed and never answered. Now the oversized answer becomes an error
    /// answer, and the link goes on serving.
    #[tokio::test]
    async fn an_answer_larger_than_a_frame_fails_its_call_and_the_link_goes_on() {
        let dir = tempfile::tempdir().unwrap();
        let peers = [(1, free_addr()), (2, free_addr())];
        let (one, _, cancel_one) = node(1, &peers, dir.path()).await;
        let (_two, executed, cancel_two) = node(2, &peers, dir.path()).await;
        let timeout = Duration::from_secs(5);

        // A small call first, so the link is up.
        let mut answered = false;
        for _ in 0..100 {
            if one.call(2, get(b"small"), timeout).await.is_ok() {
                answered = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(answered, "the link never came up");

        let started = tokio::time::Instant::now();
        match one.call(2, get(b"big"), timeout).await {
            Err(ShardError::TooLarge {
                shard: 3,
                bytes,
                limit,
                ..
            }) => {
                assert!(bytes > MAX_FRAME, "{bytes}");
                assert_eq!(limit, MAX_FRAME);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(
            started.elapsed() < timeout,
            "the refusal came as an answer, not as the deadline"
        );
        let before = executed.calls.load(Ordering::SeqCst);
        for _ in 0..5 {
            let answer = one.call(2, get(b"small"), timeout).await;
            assert!(
                matches!(answer, Ok(ShardResponse::Value(None))),
                "{answer:?}"
            );
        }
        assert_eq!(executed.calls.load(Ordering::SeqCst), before + 5);
        let link = &one.links()[0];
        assert_eq!((link.peer, link.connected, link.resets), (2, true, 0));

        // A request too large to forward fails at once, and counts on the link.
        let huge = Call::Client(ShardRequest::Write {
            shard: 0,
            ops: vec![cairn_store::WriteOp {
                key: b"k".to_vec(),
                kind: cairn_store::OpKind::Put(vec![0; MAX_FRAME]),
                condition: cairn_store::Condition::Always,
            }],
        });
        assert!(matches!(
            one.call(2, huge, timeout).await,
            Err(ShardError::TooLarge { shard: 0, .. })
        ));
        assert_eq!(one.links()[0].oversized_frames, 1);
        assert!(one.call(2, get(b"small"), timeout).await.is_ok());
        cancel_one.cancel();
        cancel_two.cancel();
    }

    /// A peer that accepts frames but never answers (a half-alive connection) is
    /// dropped once its keepalive goes unanswered past the deadline, and re-dialled;
    /// the reset shows in the link's status.
    #[tokio::test]
    async fn a_peer_that_never_answers_is_redialled_and_the_reset_is_visible() {
        let dir = tempfile::tempdir().unwrap();
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let peers = [(1, free_addr()), (2, silent.local_addr().unwrap())];
        let accepted = Arc::new(AtomicUsize::new(0));
        let counter = accepted.clone();
        let sink = tokio::spawn(async move {
            let mut held = Vec::new();
            loop {
                let (stream, _) = silent.accept().await.unwrap();
                counter.fetch_add(1, Ordering::SeqCst);
                // Read everything, answer nothing.
                let mut framed = Framed::new(stream, super::frame::codec(MAX_FRAME));
                held.push(tokio::spawn(async move {
                    while let Some(Ok(_)) = framed.next().await {}
                }));
            }
        });
        let (one, _, cancel) = node(1, &peers, dir.path()).await;
        let deadline = tokio::time::Instant::now() + PONG_DEADLINE + Duration::from_secs(10);
        while one.links()[0].resets == 0 {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the silent link was never reset: {:?}",
                one.links()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let status = &one.links()[0];
        assert_eq!(status.peer, 2);
        while accepted.load(Ordering::SeqCst) < 2 {
            assert!(tokio::time::Instant::now() < deadline, "never re-dialled");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        cancel.cancel();
        sink.abort();
    }
}
