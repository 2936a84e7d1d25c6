//! Network faults without `netem`: a frame-aware TCP proxy on the peer links.
//!
//! Every node advertises a peer address that is really a listener of this proxy
//! (see [`crate::cluster`]); the node itself listens elsewhere (`--peer-listen`). When
//! node A dials B, the proxy accepts, reads the first frame (the transport's `Hello`,
//! which names A), dials B's real address, forwards the `Hello` and then pumps frames
//! both ways: A's Raft messages and forwarded calls travel A -> B on that connection,
//! and B's replies to those calls travel back B -> A on it. Each frame is judged by
//! the direction it travels, so one rule set ([`LinkFaults`]) describes every directed
//! pair:
//!
//! - **blocked** pairs `(from, to)`: every frame from `from` to `to` is dropped. Both
//!   directions make a partition (majority/minority, an isolated leader); one makes a
//!   one-way partition.
//! - **loss**: each Raft message, call or reply is dropped with this probability.
//! - **duplicate**: each is sent twice with this probability.
//! - **delay**: each frame waits a random time in the range, on every link or only on
//!   some directed pairs (slow links). Frames of one direction of one connection keep
//!   their order (TCP does), so reordering happens between connections: between
//!   peers, and between a call and the Raft traffic about it.
//!
//! - **slow control calls**: forwarded markers and releases of the snapshot protocol
//!   wait, so one shard's cut lands well after another's (the alignment window's
//!   reason to exist).
//!
//! What is never done, because TCP cannot do it and Cairn rightly relies on it: the
//! `Hello` is never dropped, delayed or duplicated (a connection either starts with it
//! or is refused), and the frames of a streamed Raft snapshot are never lost or
//! duplicated one by one: a snapshot stream crossing a blocked pair is cut (the
//! connection closed), as a real partition eventually does.
//!
//! Every decision draws from one seeded RNG, in the order frames reach the proxy.
//! [`Network::counts`] tells how many frames each rule touched, which is how the
//! nemesis proves a network fault fired.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use cairn_raft::transport::{frame_codec, frame_kind, FrameKind};
use cairn_store::NodeId;
use futures::{SinkExt, StreamExt};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::codec::Framed;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::error::{ChaosError, Result};

/// The faults in force on the peer links (the default: none).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LinkFaults {
    /// Directed pairs `(from, to)` whose frames are dropped.
    pub blocked: BTreeSet<(NodeId, NodeId)>,
    /// Probability of dropping a Raft message, call or reply.
    pub loss: f64,
    /// Probability of sending a Raft message, call or reply twice.
    pub duplicate: f64,
    /// Every frame waits a uniformly random time in this range...
    pub delay: Option<(Duration, Duration)>,
    /// ...or, when not empty, only the frames of these directed pairs (slow links).
    pub slow: BTreeSet<(NodeId, NodeId)>,
    /// Forwarded snapshot-protocol commands (markers, releases) wait a random time in
    /// this range (and, TCP keeping order, what follows them on their connection).
    pub slow_control: Option<(Duration, Duration)>,
}

impl LinkFaults {
    /// Frames between `node` and every other node of `all` dropped, both ways.
    pub fn isolate(node: NodeId, all: &[NodeId]) -> LinkFaults {
        let mut blocked = BTreeSet::new();
        for &other in all.iter().filter(|&&o| o != node) {
            blocked.insert((node, other));
            blocked.insert((other, node));
        }
        LinkFaults {
            blocked,
            ..LinkFaults::default()
        }
    }

    pub fn is_healed(&self) -> bool {
        *self == LinkFaults::default()
    }
}

/// How many frames the proxy handled, and what it did to them. Monotonic.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameCounts {
    /// Frames forwarded (each copy of a duplicated frame counts).
    pub forwarded: u64,
    /// Frames dropped because their pair was blocked.
    pub blocked: u64,
    /// Frames dropped by random loss.
    pub lost: u64,
    /// Frames sent twice.
    pub duplicated: u64,
    /// Frames that waited for a delay.
    pub delayed: u64,
    /// Forwarded calls and replies (a subset of `forwarded`).
    pub calls: u64,
    /// Snapshot streams cut by a blocked pair.
    pub streams_cut: u64,
    /// Connections accepted and connected through.
    pub connections: u64,
    /// Connections refused: no `Hello`, or the node behind was down.
    pub refused: u64,
}

impl FrameCounts {
    /// What happened between `earlier` and `self`.
    pub fn since(&self, earlier: &FrameCounts) -> FrameCounts {
        FrameCounts {
            forwarded: self.forwarded - earlier.forwarded,
            blocked: self.blocked - earlier.blocked,
            lost: self.lost - earlier.lost,
            duplicated: self.duplicated - earlier.duplicated,
            delayed: self.delayed - earlier.delayed,
            calls: self.calls - earlier.calls,
            streams_cut: self.streams_cut - earlier.streams_cut,
            connections: self.connections - earlier.connections,
            refused: self.refused - earlier.refused,
        }
    }
}

#[derive(Default)]
struct Counters {
    forwarded: AtomicU64,
    blocked: AtomicU64,
    lost: AtomicU64,
    duplicated: AtomicU64,
    delayed: AtomicU64,
    calls: AtomicU64,
    streams_cut: AtomicU64,
    connections: AtomicU64,
    refused: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

struct Shared {
    rules: Mutex<(LinkFaults, StdRng)>,
    counters: Counters,
    cancel: CancellationToken,
}

/// What to do with one frame.
enum Verdict {
    Drop,
    /// Close the connection (a snapshot stream across a block).
    Cut,
    Pass {
        copies: usize,
        delay: Duration,
    },
}

impl Shared {
    fn judge(&self, from: NodeId, to: NodeId, kind: Option<FrameKind>) -> Verdict {
        let mut guard = self.rules.lock().unwrap_or_else(|p| p.into_inner());
        let (faults, rng) = &mut *guard;
        let stream = matches!(kind, Some(FrameKind::Snapshot));
        if faults.blocked.contains(&(from, to)) {
            if stream {
                bump(&self.counters.streams_cut);
                return Verdict::Cut;
            }
            bump(&self.counters.blocked);
            return Verdict::Drop;
        }
        let mut copies = 1;
        if !stream {
            if faults.loss > 0.0 && rng.gen_bool(faults.loss.min(1.0)) {
                bump(&self.counters.lost);
                return Verdict::Drop;
            }
            if faults.duplicate > 0.0 && rng.gen_bool(faults.duplicate.min(1.0)) {
                bump(&self.counters.duplicated);
                copies = 2;
            }
        }
        let slow = faults.slow.is_empty() || faults.slow.contains(&(from, to));
        let delay = match faults.delay {
            Some((low, high)) if slow && high > Duration::ZERO => {
                bump(&self.counters.delayed);
                if high > low {
                    rng.gen_range(low..=high)
                } else {
                    high
                }
            }
            _ => Duration::ZERO,
        };
        let delay = match (faults.slow_control, kind) {
            (Some((low, high)), Some(FrameKind::Call { control: true, .. })) => {
                bump(&self.counters.delayed);
                delay.max(rng.gen_range(low..=high.max(low)))
            }
            _ => delay,
        };
        if matches!(kind, Some(FrameKind::Call { .. } | FrameKind::Reply { .. })) {
            self.counters
                .calls
                .fetch_add(copies as u64, Ordering::Relaxed);
        }
        self.counters
            .forwarded
            .fetch_add(copies as u64, Ordering::Relaxed);
        Verdict::Pass { copies, delay }
    }
}

/// The proxy in front of every node's peer port. Dropping it (or [`Network::stop`])
/// closes its listeners and every connection through it.
pub struct Network {
    shared: Arc<Shared>,
}

impl Network {
    /// Serve each `(node, listener)` (a node's advertised peer address) by forwarding
    /// to `upstream(node)` (where the node really listens). Must be called inside a
    /// tokio runtime.
    pub fn start(
        listeners: Vec<(NodeId, std::net::TcpListener)>,
        upstream: impl Fn(NodeId) -> Option<SocketAddr>,
        seed: u64,
    ) -> Result<Network> {
        let shared = Arc::new(Shared {
            rules: Mutex::new((LinkFaults::default(), StdRng::seed_from_u64(seed))),
            counters: Counters::default(),
            cancel: CancellationToken::new(),
        });
        for (node, listener) in listeners {
            let target = upstream(node)
                .ok_or_else(|| ChaosError::Misuse(format!("no upstream for node {node}")))?;
            listener
                .set_nonblocking(true)
                .map_err(|e| ChaosError::io("proxy listener", e))?;
            let listener =
                TcpListener::from_std(listener).map_err(|e| ChaosError::io("proxy listener", e))?;
            let span = tracing::info_span!("peer_proxy", to = node, %target);
            tokio::spawn(accept(listener, node, target, shared.clone()).instrument(span));
        }
        Ok(Network { shared })
    }

    /// Replace the faults in force (for frames judged from now on).
    pub fn set(&self, faults: LinkFaults) {
        let mut guard = self.shared.rules.lock().unwrap_or_else(|p| p.into_inner());
        guard.0 = faults;
    }

    /// The faults in force.
    pub fn faults(&self) -> LinkFaults {
        let guard = self.shared.rules.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.clone()
    }

    /// No faults from now on. Frames already waiting out a delay still arrive.
    pub fn heal(&self) {
        self.set(LinkFaults::default());
    }

    pub fn counts(&self) -> FrameCounts {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        FrameCounts {
            forwarded: get(&c.forwarded),
            blocked: get(&c.blocked),
            lost: get(&c.lost),
            duplicated: get(&c.duplicated),
            delayed: get(&c.delayed),
            calls: get(&c.calls),
            streams_cut: get(&c.streams_cut),
            connections: get(&c.connections),
            refused: get(&c.refused),
        }
    }

    /// Close the listeners and every connection.
    pub fn stop(&self) {
        self.shared.cancel.cancel();
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn accept(listener: TcpListener, to: NodeId, target: SocketAddr, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            _ = shared.cancel.cancelled() => return,
            a = listener.accept() => a,
        };
        match accepted {
            Ok((stream, remote)) => {
                let shared = shared.clone();
                let span = tracing::debug_span!("proxy_conn", to, %remote);
                tokio::spawn(
                    async move {
                        let cancel = shared.cancel.clone();
                        tokio::select! {
                            _ = cancel.cancelled() => {}
                            ended = connection(stream, to, target, &shared) => {
                                if let Err(reason) = ended {
                                    tracing::debug!(%reason, "proxied connection ended");
                                }
                            }
                        }
                    }
                    .instrument(span),
                );
            }
            Err(e) => {
                tracing::warn!(error = %e, "proxy accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// One proxied connection, from the `Hello` to whichever side closes first.
async fn connection(
    downstream: TcpStream,
    to: NodeId,
    target: SocketAddr,
    shared: &Arc<Shared>,
) -> Result<(), String> {
    let _ = downstream.set_nodelay(true);
    let mut down = Framed::new(downstream, frame_codec());
    let hello = match tokio::time::timeout(Duration::from_secs(5), down.next()).await {
        Ok(Some(Ok(bytes))) => bytes.freeze(),
        _ => {
            bump(&shared.counters.refused);
            return Err("no hello".into());
        }
    };
    let Some(FrameKind::Hello { from }) = frame_kind(&hello) else {
        bump(&shared.counters.refused);
        return Err("the first frame is not a hello".into());
    };
    let upstream =
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(target)).await {
            Ok(Ok(stream)) => stream,
            _ => {
                // The node behind is down: the dialer sees its connection close, as it
                // would see a refused connect.
                bump(&shared.counters.refused);
                return Err(format!("node {to} is not listening at {target}"));
            }
        };
    let _ = upstream.set_nodelay(true);
    let mut up = Framed::new(upstream, frame_codec());
    up.send(hello).await.map_err(|e| e.to_string())?;
    bump(&shared.counters.connections);
    let (up_sink, up_stream) = up.split();
    let (down_sink, down_stream) = down.split();
    tokio::select! {
        r = pipe(down_stream, up_sink, from, to, shared) => r,
        r = pipe(up_stream, down_sink, to, from, shared) => r,
    }
}

/// Frames of one direction of one connection: judged in arrival order, written in
/// that order once their delay passed.
async fn pipe<S, K>(
    mut source: S,
    mut sink: K,
    from: NodeId,
    to: NodeId,
    shared: &Arc<Shared>,
) -> Result<(), String>
where
    S: futures::Stream<Item = std::io::Result<bytes::BytesMut>> + Unpin,
    K: futures::Sink<Bytes, Error = std::io::Error> + Unpin,
{
    // Bounded: a stopped receiver pushes back on the sender, as TCP would.
    let (tx, mut rx) = mpsc::channel::<(Instant, Bytes)>(1024);
    let writer = async move {
        while let Some((due, bytes)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            sink.send(bytes).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    let reader = async move {
        let mut last_due = Instant::now();
        while let Some(frame) = source.next().await {
            let bytes = frame.map_err(|e| e.to_string())?.freeze();
            match shared.judge(from, to, frame_kind(&bytes)) {
                Verdict::Drop => {}
                Verdict::Cut => return Err("snapshot stream cut by a partition".to_owned()),
                Verdict::Pass { copies, delay } => {
                    let due = (Instant::now() + delay).max(last_due);
                    last_due = due;
                    for _ in 0..copies {
                        if tx.send((due, bytes.clone())).await.is_err() {
                            return Ok(());
                        }
                    }
                }
            }
        }
        Ok(())
    };
    // The reader ending (its side closed, or a stream cut) lets the writer drain what
    // is due, as TCP delivers what was sent before a FIN; the writer failing makes the
    // reader's next send fail.
    let (read, write) = tokio::join!(reader, writer);
    read.and(write)
}
