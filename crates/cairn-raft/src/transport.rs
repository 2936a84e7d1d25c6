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
//! Every connection starts with a `Hello` naming the cluster id; a peer of another
//! cluster is refused.
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
//! never run it twice. Frames are length-delimited bincode, with a size cap so a bad
//! peer cannot make us allocate without bound. Messages to an unreachable peer are
//! dropped: Raft retransmits, and forwarded calls fail at their deadline.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cairn_store::{NodeId, NodeStore, ShardId, ShardState};
use crossbeam_channel::Sender as ReplicaSender;
use futures::future::BoxFuture;
use futures::{SinkExt, StreamExt};
use protobuf::Message as _;
use raft::prelude::Message;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{Framed, LengthDelimitedCodec};
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::ShardError;
use crate::replica::ReplicaMsg;
use crate::request::{ShardRequest, ShardResponse};

/// Largest frame accepted: a snapshot chunk or a batch of entries stays far below.
const MAX_FRAME: usize = 64 * 1024 * 1024;
/// Target size of one snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;
/// Outbound queue per peer; beyond it Raft messages are dropped (Raft resends).
const PEER_QUEUE: usize = 8192;

type CallResult = Result<ShardResponse, ShardError>;
/// A shard's versions at a snapshot index, as raw tree pairs.
type Versions = Box<dyn Iterator<Item = cairn_store::Result<(Vec<u8>, Vec<u8>)>> + Send>;

/// One frame on a peer connection.
#[derive(Debug, Serialize, Deserialize)]
enum Frame {
    /// First frame of every connection, from the connecting side. `incarnation` is
    /// random per process start: with `from` it scopes the ids of the sender's calls.
    Hello {
        cluster_id: String,
        from: NodeId,
        incarnation: u64,
    },
    /// A Raft message (protobuf bytes) for a shard's replica. Droppable.
    Raft { shard: ShardId, msg: Vec<u8> },
    /// A forwarded client request, answered by `Reply` with the same id.
    Call { id: u64, req: ShardRequest },
    /// The answer to a `Call`.
    Reply { id: u64, result: CallResult },
    /// Part of a streamed Raft snapshot: raw versions of the shard's tree.
    SnapshotChunk {
        shard: ShardId,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    },
    /// The end of a streamed snapshot: the `MsgSnapshot` (protobuf bytes).
    SnapshotEnd { shard: ShardId, msg: Vec<u8> },
    /// The receiver has handed the snapshot to its replica.
    SnapshotAck,
}

/// What a peer frame is, as seen by a tool sitting on the wire between two nodes (the
/// fault-injecting proxy of `cairn-chaos`), which must tell the handshake from a Raft
/// message, a forwarded call or a snapshot stream without knowing the encoding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// The handshake, first on every connection, sent by the connecting node.
    Hello { from: NodeId },
    /// A Raft message; Raft tolerates its loss, delay, reordering and duplication.
    Raft { shard: ShardId },
    /// A forwarded request (connecting side to accepting side); `control` for the
    /// snapshot protocol's and GC's commands (markers, releases, compactions), which
    /// a tool may want to slow down alone.
    Call { id: u64, control: bool },
    /// The answer to a forwarded request (accepting side back to the caller).
    Reply { id: u64 },
    /// Part of a streamed Raft snapshot: a chunk, its end, or the receiver's
    /// acknowledgement. The stream relies on TCP's ordering and completeness.
    Snapshot,
}

/// Classifies one frame's bytes (the payload of a length-delimited frame, as
/// [`frame_codec`] cuts them); `None` if they are not a frame of this transport.
pub fn frame_kind(bytes: &[u8]) -> Option<FrameKind> {
    Some(match bincode::deserialize::<Frame>(bytes).ok()? {
        Frame::Hello { from, .. } => FrameKind::Hello { from },
        Frame::Raft { shard, .. } => FrameKind::Raft { shard },
        Frame::Call { id, req } => FrameKind::Call {
            id,
            control: matches!(
                req,
                ShardRequest::Write {
                    command: cairn_store::Command::Marker { .. }
                        | cairn_store::Command::Release { .. }
                        | cairn_store::Command::Compact { .. },
                    ..
                }
            ),
        },
        Frame::Reply { id, .. } => FrameKind::Reply { id },
        Frame::SnapshotChunk { .. } | Frame::SnapshotEnd { .. } | Frame::SnapshotAck => {
            FrameKind::Snapshot
        }
    })
}

/// The codec cutting a peer connection's byte stream into frames (length-delimited,
/// with the transport's size cap).
pub fn frame_codec() -> LengthDelimitedCodec {
    codec()
}

/// Serves forwarded requests on this node (implemented by the local shards).
pub trait CallHandler: Send + Sync + 'static {
    fn call(self: Arc<Self>, req: ShardRequest) -> BoxFuture<'static, CallResult>;
}

enum Outbound {
    Raft(ShardId, Vec<u8>),
    Call(u64, ShardRequest),
}

/// Handle to the node's peer transport. Cheap to clone.
#[derive(Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    cluster_id: String,
    runtime: tokio::runtime::Handle,
    peers: HashMap<NodeId, Peer>,
    replicas: Vec<ReplicaSender<ReplicaMsg>>,
    store: NodeStore,
    calls: Mutex<HashMap<u64, oneshot::Sender<CallResult>>>,
    next_call: AtomicU64,
    /// This process's incarnation (see the module doc), named in every `Hello`.
    incarnation: u64,
    /// Calls received, per sender incarnation: a duplicate is never executed twice.
    ledger: Mutex<CallLedger>,
    /// One staged snapshot per shard at a time.
    stage_locks: Vec<Arc<tokio::sync::Mutex<()>>>,
    cancel: CancellationToken,
}

struct Peer {
    addr: SocketAddr,
    tx: mpsc::Sender<Outbound>,
}

impl Transport {
    /// Bind the listener and start the link tasks. Must be called inside a tokio runtime.
    #[allow(clippy::too_many_arguments)]
    pub async fn start(
        node_id: NodeId,
        cluster_id: String,
        listen: SocketAddr,
        peers: &std::collections::BTreeMap<NodeId, SocketAddr>,
        replicas: Vec<ReplicaSender<ReplicaMsg>>,
        store: NodeStore,
        handler: Arc<dyn CallHandler>,
        cancel: CancellationToken,
    ) -> std::io::Result<Transport> {
        let listener = TcpListener::bind(listen).await?;
        let mut links = Vec::new();
        let mut peer_map = HashMap::new();
        for (&id, &addr) in peers.iter().filter(|(&id, _)| id != node_id) {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            peer_map.insert(id, Peer { addr, tx });
            links.push((id, addr, rx));
        }
        let shards = replicas.len();
        let transport = Transport {
            inner: Arc::new(Inner {
                node_id,
                cluster_id,
                runtime: tokio::runtime::Handle::current(),
                peers: peer_map,
                replicas,
                store,
                calls: Mutex::new(HashMap::new()),
                next_call: AtomicU64::new(1),
                incarnation: rand::random(),
                ledger: Mutex::new(CallLedger::default()),
                stage_locks: (0..shards).map(|_| Default::default()).collect(),
                cancel,
            }),
        };
        for (peer, addr, rx) in links {
            let t = transport.clone();
            let span = tracing::info_span!("peer_link", node = node_id, peer, %addr);
            tokio::spawn(t.link(addr, rx).instrument(span));
        }
        let t = transport.clone();
        let span = tracing::info_span!("peer_listener", node = node_id, %listen);
        tokio::spawn(t.accept(listener, handler).instrument(span));
        Ok(transport)
    }

    /// Queue a Raft message for its peer. Returns false if it was dropped.
    pub fn send_raft(&self, shard: ShardId, msg: Message) -> bool {
        let Some(peer) = self.inner.peers.get(&msg.to) else {
            return false;
        };
        match msg.write_to_bytes() {
            Ok(bytes) => peer.tx.try_send(Outbound::Raft(shard, bytes)).is_ok(),
            Err(_) => false,
        }
    }

    /// Forward a request to another node and wait for its answer.
    pub async fn call(&self, to: NodeId, req: ShardRequest, timeout: Duration) -> CallResult {
        let shard = req.shard();
        let unavailable = |reason: &str| ShardError::Unavailable {
            shard,
            reason: format!("node {to}: {reason}"),
        };
        let peer = self
            .inner
            .peers
            .get(&to)
            .ok_or_else(|| unavailable("not a peer"))?;
        let id = self.inner.next_call.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.lock_calls().insert(id, tx);
        let is_write = matches!(req, ShardRequest::Write { .. });
        if peer.tx.try_send(Outbound::Call(id, req)).is_err() {
            self.lock_calls().remove(&id);
            return Err(unavailable("peer queue full"));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(result)) => result,
            outcome => {
                self.lock_calls().remove(&id);
                let reason = match outcome {
                    Err(_) => "no answer before the deadline",
                    _ => "connection lost",
                };
                // A forwarded write may have been proposed before the link failed.
                Err(if is_write {
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

    /// Stream a Raft snapshot to its peer in the background; the replica hears how it
    /// ended through `SnapshotSent`. Returns false if it could not even be started.
    pub fn send_snapshot(&self, shard: ShardId, msg: Message, state: ShardState) -> bool {
        let Some(peer) = self.inner.peers.get(&msg.to) else {
            return false;
        };
        let (to, addr) = (msg.to, peer.addr);
        let t = self.clone();
        let span = tracing::info_span!("snapshot_send", node = t.inner.node_id, shard, to);
        self.inner.runtime.spawn(
            async move {
                let result = t.stream_snapshot(addr, shard, msg, state).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "snapshot stream failed");
                }
                let ok = result.is_ok();
                if let Some(replica) = t.inner.replicas.get(shard as usize) {
                    let _ = replica.send(ReplicaMsg::SnapshotSent { to, ok });
                }
            }
            .instrument(span),
        );
        true
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
        }
    }

    /// Own the outbound connection to one peer, reconnecting with backoff.
    async fn link(self, addr: SocketAddr, mut rx: mpsc::Receiver<Outbound>) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let connected = tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                c = connect(addr, self.hello()) => c,
            };
            match connected {
                Ok(framed) => {
                    tracing::debug!("connected");
                    backoff = Duration::from_millis(50);
                    if self.pump(framed, &mut rx).await.is_break() {
                        return;
                    }
                }
                Err(e) => tracing::trace!(error = %e, "connect failed"),
            }
            // While the peer is down, what was queued for it is stale: drop it, and fail
            // the forwarded calls now rather than at their deadline.
            while let Ok(out) = rx.try_recv() {
                if let Outbound::Call(id, req) = out {
                    self.complete(
                        id,
                        Err(ShardError::Unavailable {
                            shard: req.shard(),
                            reason: "peer unreachable".into(),
                        }),
                    );
                }
            }
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(Duration::from_secs(1));
        }
    }

    /// Write queued messages to a live connection until it fails or we shut down.
    async fn pump(
        &self,
        framed: Framed<TcpStream, LengthDelimitedCodec>,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> std::ops::ControlFlow<()> {
        let (mut sink, mut stream) = framed.split();
        let t = self.clone();
        let mut reader = tokio::spawn(async move {
            while let Some(Ok(bytes)) = stream.next().await {
                match bincode::deserialize::<Frame>(&bytes) {
                    Ok(Frame::Reply { id, result }) => t.complete(id, result),
                    _ => {
                        tracing::warn!("unexpected frame on an outbound connection");
                        break;
                    }
                }
            }
        });
        let result = loop {
            let first = tokio::select! {
                _ = self.inner.cancel.cancelled() => break std::ops::ControlFlow::Break(()),
                _ = &mut reader => break std::ops::ControlFlow::Continue(()),
                out = rx.recv() => match out {
                    Some(out) => out,
                    None => break std::ops::ControlFlow::Break(()),
                },
            };
            let mut failed = false;
            for out in std::iter::once(first).chain(std::iter::from_fn(|| rx.try_recv().ok())) {
                let frame = match out {
                    Outbound::Raft(shard, msg) => Frame::Raft { shard, msg },
                    Outbound::Call(id, req) => Frame::Call { id, req },
                };
                if feed(&mut sink, &frame).await.is_err() {
                    failed = true;
                    break;
                }
            }
            if failed || sink.flush().await.is_err() {
                break std::ops::ControlFlow::Continue(());
            }
        };
        reader.abort();
        result
    }

    fn complete(&self, id: u64, result: CallResult) {
        if let Some(tx) = self.lock_calls().remove(&id) {
            let _ = tx.send(result);
        }
    }

    async fn accept(self, listener: TcpListener, handler: Arc<dyn CallHandler>) {
        loop {
            let accepted = tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                a = listener.accept() => a,
            };
            match accepted {
                Ok((stream, remote)) => {
                    let _ = stream.set_nodelay(true);
                    let t = self.clone();
                    let handler = handler.clone();
                    let span = tracing::info_span!("peer_conn", node = self.inner.node_id, %remote);
                    tokio::spawn(
                        async move {
                            if let Err(e) = t.serve(stream, handler).await {
                                tracing::debug!(error = %e, "peer connection closed");
                            }
                        }
                        .instrument(span),
                    );
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// Read one inbound connection: Raft messages, forwarded calls, or a snapshot.
    async fn serve(self, stream: TcpStream, handler: Arc<dyn CallHandler>) -> Result<(), String> {
        let mut framed = Framed::new(stream, codec());
        let hello = tokio::time::timeout(Duration::from_secs(5), framed.next())
            .await
            .map_err(|_| "no hello".to_owned())?;
        let sender = match hello.map(|r| r.map(|b| bincode::deserialize::<Frame>(&b))) {
            Some(Ok(Ok(Frame::Hello {
                cluster_id,
                from,
                incarnation,
            }))) => {
                if cluster_id != self.inner.cluster_id {
                    tracing::warn!(from, %cluster_id, "refused a peer of another cluster");
                    return Err("cluster id mismatch".into());
                }
                (from, incarnation)
            }
            _ => return Err("bad hello".into()),
        };
        let (mut sink, mut stream) = framed.split();
        let (reply_tx, mut reply_rx) = mpsc::channel::<Frame>(1024);
        let writer = tokio::spawn(async move {
            while let Some(frame) = reply_rx.recv().await {
                if feed(&mut sink, &frame).await.is_err() {
                    break;
                }
                while let Ok(frame) = reply_rx.try_recv() {
                    if feed(&mut sink, &frame).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    break;
                }
            }
        });
        let mut staging: Option<(ShardId, tokio::sync::OwnedMutexGuard<()>)> = None;
        let result = loop {
            let bytes = tokio::select! {
                _ = self.inner.cancel.cancelled() => break Ok(()),
                next = stream.next() => match next {
                    Some(Ok(bytes)) => bytes,
                    Some(Err(e)) => break Err(e.to_string()),
                    None => break Ok(()),
                },
            };
            let frame: Frame = match bincode::deserialize(&bytes) {
                Ok(f) => f,
                Err(e) => break Err(format!("undecodable frame: {e}")),
            };
            match frame {
                Frame::Raft { shard, msg } => self.deliver(shard, &msg),
                Frame::Call { id, req } => match self.admit(sender, id) {
                    Admission::New => {
                        let reply_tx = reply_tx.clone();
                        let is_write = matches!(req, ShardRequest::Write { .. });
                        let fut = handler.clone().call(req);
                        let t = self.clone();
                        tokio::spawn(async move {
                            let result = fut.await;
                            t.lock_ledger()
                                .finish(sender, id, is_write.then(|| result.clone()));
                            let _ = reply_tx.send(Frame::Reply { id, result }).await;
                        });
                    }
                    Admission::Answered(result) => {
                        let _ = reply_tx.send(Frame::Reply { id, result }).await;
                    }
                    Admission::Duplicate => {
                        tracing::debug!(from = sender.0, id, "dropped a duplicate call");
                    }
                },
                Frame::SnapshotChunk { shard, pairs } => {
                    if let Err(e) = self.stage_chunk(&mut staging, shard, pairs).await {
                        break Err(e);
                    }
                }
                Frame::SnapshotEnd { shard, msg } => {
                    if let Err(e) = self.stage_chunk(&mut staging, shard, Vec::new()).await {
                        break Err(e);
                    }
                    let handed = self.hand_snapshot(shard, &msg).await;
                    staging = None;
                    match handed {
                        Ok(()) => {
                            let _ = reply_tx.send(Frame::SnapshotAck).await;
                        }
                        Err(e) => break Err(e),
                    }
                }
                Frame::Hello { .. } | Frame::Reply { .. } | Frame::SnapshotAck => {
                    break Err("unexpected frame on an inbound connection".into());
                }
            }
        };
        drop(reply_tx);
        let _ = writer.await;
        result
    }

    fn deliver(&self, shard: ShardId, bytes: &[u8]) {
        let Some(replica) = self.inner.replicas.get(shard as usize) else {
            return;
        };
        if let Ok(msg) = Message::parse_from_bytes(bytes) {
            // A full inbox means the replica is behind; Raft will resend.
            let _ = replica.try_send(ReplicaMsg::Raft(Box::new(msg)));
        }
    }

    /// Write a chunk to the shard's stage, taking the stage (and clearing it) first.
    async fn stage_chunk(
        &self,
        staging: &mut Option<(ShardId, tokio::sync::OwnedMutexGuard<()>)>,
        shard: ShardId,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), String> {
        let lock = self
            .inner
            .stage_locks
            .get(shard as usize)
            .ok_or_else(|| format!("no shard {shard}"))?
            .clone();
        let store = self.inner.store.clone();
        match staging {
            Some((s, _)) if *s == shard => {}
            Some(_) => return Err("snapshot chunks of two shards on one stream".into()),
            None => {
                let guard = lock.lock_owned().await;
                let store = store.clone();
                blocking(move || store.snapshot_stage(shard)?.clear()).await?;
                *staging = Some((shard, guard));
            }
        }
        if !pairs.is_empty() {
            blocking(move || store.snapshot_stage(shard)?.write(&pairs)).await?;
        }
        Ok(())
    }

    async fn hand_snapshot(&self, shard: ShardId, bytes: &[u8]) -> Result<(), String> {
        let msg = Message::parse_from_bytes(bytes).map_err(|e| e.to_string())?;
        let replica = self
            .inner
            .replicas
            .get(shard as usize)
            .ok_or_else(|| format!("no shard {shard}"))?;
        let (done, handled) = oneshot::channel();
        replica
            .send(ReplicaMsg::StagedSnapshot {
                msg: Box::new(msg),
                done,
            })
            .map_err(|_| "replica stopped".to_owned())?;
        handled.await.map_err(|_| "replica stopped".to_owned())
    }

    async fn stream_snapshot(
        &self,
        addr: SocketAddr,
        shard: ShardId,
        msg: Message,
        state: ShardState,
    ) -> Result<(), String> {
        let upto = msg.get_snapshot().get_metadata().index;
        let mut framed = connect(addr, self.hello())
            .await
            .map_err(|e| e.to_string())?;
        let mut versions: Versions = Box::new(state.export(upto));
        let mut sent = 0usize;
        loop {
            // Reading the tree is blocking work: keep it off the async workers.
            let (rest, chunk) = tokio::task::spawn_blocking(move || {
                let mut chunk = Vec::new();
                let mut bytes = 0;
                for pair in versions.by_ref() {
                    match pair {
                        Ok((k, v)) => {
                            bytes += k.len() + v.len();
                            chunk.push((k, v));
                            if bytes >= SNAPSHOT_CHUNK_BYTES {
                                break;
                            }
                        }
                        Err(e) => return (versions, Err(e.to_string())),
                    }
                }
                (versions, Ok(chunk))
            })
            .await
            .map_err(|e| e.to_string())?;
            versions = rest;
            let chunk = chunk?;
            if chunk.is_empty() {
                break;
            }
            sent += chunk.len();
            framed
                .send(encode(&Frame::SnapshotChunk {
                    shard,
                    pairs: chunk,
                })?)
                .await
                .map_err(|e| e.to_string())?;
        }
        let msg = msg.write_to_bytes().map_err(|e| e.to_string())?;
        framed
            .send(encode(&Frame::SnapshotEnd { shard, msg })?)
            .await
            .map_err(|e| e.to_string())?;
        let ack = tokio::time::timeout(Duration::from_secs(120), framed.next())
            .await
            .map_err(|_| "no acknowledgement".to_owned())?;
        match ack.map(|r| r.map(|b| bincode::deserialize::<Frame>(&b))) {
            Some(Ok(Ok(Frame::SnapshotAck))) => {
                tracing::info!(versions = sent, index = upto, "sent raft snapshot");
                Ok(())
            }
            _ => Err("bad acknowledgement".into()),
        }
    }
}

/// Calls remembered per sender incarnation; older ones count as seen.
const LEDGER_WINDOW: usize = 4096;
/// Incarnations remembered per sender (a restarted node's old connections may still
/// deliver for a moment).
const LEDGER_INCARNATIONS: usize = 4;

/// (sender node, sender incarnation).
type CallSender = (NodeId, u64);

/// What to do with a received call.
#[derive(Debug)]
enum Admission {
    /// First sight: execute it.
    New,
    /// A duplicate of a finished write: send its answer again.
    Answered(CallResult),
    /// A duplicate of a call running, of a read, or of one too old to remember: drop it.
    Duplicate,
}

/// The calls a node received, per sender incarnation (see the module doc).
#[derive(Debug, Default)]
struct CallLedger {
    senders: HashMap<CallSender, CallWindow>,
    /// Per node, its incarnations in the order first seen.
    incarnations: HashMap<NodeId, std::collections::VecDeque<u64>>,
}

#[derive(Debug, Default)]
struct CallWindow {
    /// Every id below it counts as seen.
    floor: u64,
    /// Ids at or above `floor` seen so far: `None` while running (or a read),
    /// a write's answer once finished.
    seen: std::collections::BTreeMap<u64, Option<CallResult>>,
}

impl CallLedger {
    fn admit(&mut self, sender: CallSender, id: u64) -> Admission {
        if !self.senders.contains_key(&sender) {
            let known = self.incarnations.entry(sender.0).or_default();
            known.push_back(sender.1);
            if known.len() > LEDGER_INCARNATIONS {
                if let Some(old) = known.pop_front() {
                    self.senders.remove(&(sender.0, old));
                }
            }
        }
        let window = self.senders.entry(sender).or_default();
        if id < window.floor {
            return Admission::Duplicate;
        }
        match window.seen.get(&id) {
            Some(Some(answer)) => Admission::Answered(answer.clone()),
            Some(None) => Admission::Duplicate,
            None => {
                window.seen.insert(id, None);
                while window.seen.len() > LEDGER_WINDOW {
                    if let Some((oldest, _)) = window.seen.pop_first() {
                        window.floor = window.floor.max(oldest + 1);
                    }
                }
                Admission::New
            }
        }
    }

    /// Record a finished call's answer (`None`: not worth keeping, e.g. a read's).
    fn finish(&mut self, sender: CallSender, id: u64, answer: Option<CallResult>) {
        if let Some(slot) = self
            .senders
            .get_mut(&sender)
            .and_then(|w| w.seen.get_mut(&id))
        {
            *slot = answer;
        }
    }
}

fn codec() -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(MAX_FRAME)
        .new_codec()
}

fn encode(frame: &Frame) -> Result<bytes::Bytes, String> {
    bincode::serialize(frame)
        .map(bytes::Bytes::from)
        .map_err(|e| e.to_string())
}

async fn feed<S>(sink: &mut S, frame: &Frame) -> Result<(), String>
where
    S: futures::Sink<bytes::Bytes, Error = std::io::Error> + Unpin,
{
    sink.feed(encode(frame)?).await.map_err(|e| e.to_string())
}

async fn connect(
    addr: SocketAddr,
    hello: Frame,
) -> std::io::Result<Framed<TcpStream, LengthDelimitedCodec>> {
    let stream = tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"))??;
    stream.set_nodelay(true)?;
    let mut framed = Framed::new(stream, codec());
    let hello = encode(&hello).map_err(std::io::Error::other)?;
    framed.send(hello).await?;
    Ok(framed)
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> cairn_store::Result<T> + Send + 'static,
) -> Result<T, String> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::AtomicUsize;

    use cairn_store::{ApplyOutcome, Command};

    use super::*;

    /// Answers every call with the same write outcome, counting executions.
    struct Counting {
        calls: AtomicUsize,
    }

    impl CallHandler for Counting {
        fn call(self: Arc<Self>, _req: ShardRequest) -> BoxFuture<'static, CallResult> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(20)).await;
                Ok(ShardResponse::Written(ApplyOutcome::Applied {
                    version: 7,
                    existed: vec![false],
                }))
            })
        }
    }

    fn write() -> ShardRequest {
        ShardRequest::Write {
            shard: 0,
            command: Command::Batch(Vec::new()),
        }
    }

    async fn dial(addr: SocketAddr, incarnation: u64) -> Framed<TcpStream, LengthDelimitedCodec> {
        let hello = Frame::Hello {
            cluster_id: "c".into(),
            from: 1,
            incarnation,
        };
        for _ in 0..100 {
            if let Ok(framed) = connect(addr, hello_clone(&hello)).await {
                return framed;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("transport at {addr} never accepted");
    }

    fn hello_clone(frame: &Frame) -> Frame {
        bincode::deserialize(&bincode::serialize(frame).unwrap()).unwrap()
    }

    /// Replies arriving within a short while.
    async fn replies(framed: &mut Framed<TcpStream, LengthDelimitedCodec>) -> Vec<u64> {
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

    /// Found by the chaos harness (`tests/chaos.rs`, `duplicated_frames`): a peer
    /// frame delivered twice ran a forwarded write twice, so its value appeared at two
    /// versions and could overwrite a later write.
    #[tokio::test]
    async fn a_duplicated_forwarded_write_runs_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(dir.path()).unwrap();
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let handler = Arc::new(Counting {
            calls: AtomicUsize::new(0),
        });
        let cancel = CancellationToken::new();
        let _transport = Transport::start(
            2,
            "c".into(),
            addr,
            &Default::default(),
            Vec::new(),
            store,
            handler.clone(),
            cancel.clone(),
        )
        .await
        .unwrap();

        let mut link = dial(addr, 9).await;
        // The same call three times: twice at once (the first still running), once
        // after it finished.
        let call = || {
            encode(&Frame::Call {
                id: 1,
                req: write(),
            })
            .unwrap()
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

    #[test]
    fn the_ledger_forgets_old_calls_as_seen_never_as_new() {
        let mut ledger = CallLedger::default();
        let sender = (1, 5);
        for id in 0..(LEDGER_WINDOW as u64 + 100) {
            assert!(matches!(ledger.admit(sender, id), Admission::New));
            ledger.finish(sender, id, None);
        }
        // Below the window: a duplicate, never run again.
        assert!(matches!(ledger.admit(sender, 3), Admission::Duplicate));
        assert!(matches!(
            ledger.admit(sender, LEDGER_WINDOW as u64 + 50),
            Admission::Duplicate
        ));
        // A node's oldest incarnations are forgotten first.
        for incarnation in 6..(6 + LEDGER_INCARNATIONS as u64) {
            assert!(matches!(ledger.admit((1, incarnation), 0), Admission::New));
        }
        assert!(!ledger.senders.contains_key(&sender));
        assert!(ledger.senders.contains_key(&(1, 6)));
    }
}
