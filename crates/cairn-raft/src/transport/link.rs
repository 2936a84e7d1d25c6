//! Outbound links: one connection per peer, owned by a task that drains the peer's
//! queue, reconnects with backoff, and proves with keepalives that answers still come
//! back.
//!
//! A connection can be half-alive: writable, while the peer's side stopped sending
//! (its writer failed, its process is stopped, a middlebox lost the reverse path).
//! Forwarded calls on it would then be executed and never answered. So the link sends
//! a `Ping` every [`PING_EVERY`]; the peer answers `Pong` through the same writer as
//! its replies. A link whose ping stays unanswered for [`PONG_DEADLINE`] is dropped
//! and re-dialled, and the reset is counted ([`LinkStatus::resets`]), so a link never
//! stays half-alive and the operator can see that it tried to.

use std::ops::ControlFlow;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use cairn_store::{NodeId, ShardId};
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;

use super::tls::{PeerStream, PeerTls};
use tokio::sync::mpsc;
use tokio_util::codec::{Framed, LengthDelimitedCodec};

use super::frame::{codec, encode, Frame, FrameError};
use super::Transport;
use crate::call::Call;
use crate::config::PeerAddr;
use crate::error::ShardError;
use crate::retry::Backoff;

/// How often a link pings its peer.
pub(super) const PING_EVERY: Duration = Duration::from_secs(1);
/// A ping unanswered this long means the connection no longer carries answers.
pub(super) const PONG_DEADLINE: Duration = Duration::from_secs(5);

/// What the link to a peer carries, queued by senders.
pub(super) enum Outbound {
    /// A Raft message (protobuf bytes). Dropped if it cannot be sent.
    Raft(ShardId, Vec<u8>),
    /// A forwarded call; its caller waits on the transport's call table.
    Call(u64, Call),
}

/// A keepalive unanswered this long marks the peer unreachable for routing (pings go
/// out every second; a healthy peer answers well within this).
const UNANSWERED_AFTER: Duration = Duration::from_millis(1500);

/// What one node knows of its link to a peer. Written by the link task and callers,
/// read by status pages and by routers choosing which replica to try first; never
/// by anything that decides what is true.
#[derive(Debug, Default)]
pub(super) struct LinkStats {
    connected: AtomicBool,
    /// Round trip of the last answered ping, in microseconds (0: none yet).
    rtt_us: AtomicU64,
    resets: AtomicU64,
    oversized: AtomicU64,
    unanswered: AtomicU64,
    /// When the ping now awaiting its pong was sent.
    ping_outstanding: Mutex<Option<Instant>>,
}

/// The state of this node's link to one peer (`/v1/cluster`).
#[derive(Debug, Clone, PartialEq)]
pub struct LinkStatus {
    pub peer: NodeId,
    /// A connection is established (it may still be failing to carry answers: see
    /// `unanswered_for`).
    pub connected: bool,
    /// Round trip of the last answered keepalive.
    pub rtt: Option<Duration>,
    /// How long the current keepalive has waited for its answer, if one is waiting.
    /// Past [`PONG_DEADLINE`] the connection is dropped and re-dialled.
    pub unanswered_for: Option<Duration>,
    /// Connections dropped because the peer stopped answering keepalives.
    pub resets: u64,
    /// Frames to this peer refused for exceeding the frame cap.
    pub oversized_frames: u64,
    /// Forwarded calls to this peer that got no answer before their deadline.
    pub calls_unanswered: u64,
}

impl LinkStats {
    pub(super) fn status(&self, peer: NodeId) -> LinkStatus {
        let rtt_us = self.rtt_us.load(Ordering::Relaxed);
        let outstanding = *self
            .ping_outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        LinkStatus {
            peer,
            connected: self.connected.load(Ordering::Relaxed),
            rtt: (rtt_us > 0).then(|| Duration::from_micros(rtt_us)),
            unanswered_for: outstanding.map(|sent| sent.elapsed()),
            resets: self.resets.load(Ordering::Relaxed),
            oversized_frames: self.oversized.load(Ordering::Relaxed),
            calls_unanswered: self.unanswered.load(Ordering::Relaxed),
        }
    }

    /// Whether the link is up and its keepalives are answered (a peer killed or cut
    /// off shows as not reachable within about a keepalive's deadline).
    pub(super) fn reachable(&self) -> bool {
        let outstanding = *self
            .ping_outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        self.connected.load(Ordering::Relaxed)
            && outstanding.is_none_or(|sent| sent.elapsed() < UNANSWERED_AFTER)
    }

    pub(super) fn call_unanswered(&self, peer: NodeId) {
        self.unanswered.fetch_add(1, Ordering::Relaxed);
        metrics::counter!("cairn_peer_calls_unanswered_total", "peer" => peer.to_string())
            .increment(1);
    }

    fn oversized(&self, peer: NodeId, kind: &'static str) {
        self.oversized.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(
            "cairn_peer_frames_oversized_total",
            "peer" => peer.to_string(),
            "kind" => kind
        )
        .increment(1);
    }

    fn set_outstanding(&self, sent: Option<Instant>) {
        *self
            .ping_outstanding
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = sent;
    }
}

/// The keepalive's bookkeeping: at most one ping in flight. Pure, so tests move time.
#[derive(Debug, Default)]
pub(super) struct Keepalive {
    next_nonce: u64,
    outstanding: Option<(u64, Instant)>,
}

/// What the keepalive wants at a tick.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// Send a ping with this nonce.
    Ping(u64),
    /// A ping is in flight and not yet late.
    Wait,
    /// The ping in flight has waited past the deadline: the connection is dead.
    Dead(Duration),
}

impl Keepalive {
    pub(super) fn tick(&mut self, now: Instant) -> Due {
        match self.outstanding {
            Some((_, sent)) if now.duration_since(sent) >= PONG_DEADLINE => {
                Due::Dead(now.duration_since(sent))
            }
            Some(_) => Due::Wait,
            None => {
                self.next_nonce += 1;
                self.outstanding = Some((self.next_nonce, now));
                Due::Ping(self.next_nonce)
            }
        }
    }

    /// A pong arrived; its round trip if it answers the ping in flight.
    pub(super) fn pong(&mut self, nonce: u64, now: Instant) -> Option<Duration> {
        match self.outstanding {
            Some((n, sent)) if n == nonce => {
                self.outstanding = None;
                Some(now.duration_since(sent))
            }
            _ => None,
        }
    }

    fn sent_at(&self) -> Option<Instant> {
        self.outstanding.map(|(_, sent)| sent)
    }
}

/// Peer `peer` refused this node's data directory: it lost Raft entries it had
/// acknowledged, so it must take no part at all (not even vote). Stop the process.
fn lost_data(peer: NodeId, reason: &str) -> ! {
    tracing::error!(peer, reason, "refused by a peer; stopping");
    eprintln!(
        "cairn: node {peer} refused this node: {reason}. This node's data directory is \
         not the one its peers knew; it must not rejoin as a voter (docs/OPERATIONS.md)"
    );
    std::process::abort();
}

/// How long a TLS handshake may take, either way.
pub(super) const HANDSHAKE_DEADLINE: Duration = Duration::from_secs(5);

/// Resolve `addr` (a name is looked up at every dial), dial its addresses in turn
/// until one answers, open TLS to node `peer` if configured, and say hello.
pub(super) async fn connect(
    addr: &PeerAddr,
    peer: NodeId,
    tls: Option<&PeerTls>,
    hello: Frame,
    max_frame: usize,
) -> std::io::Result<Framed<PeerStream, LengthDelimitedCodec>> {
    let mut failed = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        format!("{addr} resolves to nothing"),
    );
    let mut dialled = None;
    for ip in addr.resolve().await? {
        match tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(ip)).await {
            Ok(Ok(stream)) => {
                dialled = Some(stream);
                break;
            }
            Ok(Err(e)) => failed = e,
            Err(_) => {
                failed = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("connecting to {ip} timed out"),
                )
            }
        }
    }
    let stream = dialled.ok_or(failed)?;
    stream.set_nodelay(true)?;
    let stream = match tls {
        Some(tls) => tokio::time::timeout(HANDSHAKE_DEADLINE, tls.dial(stream, peer))
            .await
            .map_err(|_| {
                std::io::Error::new(std::io::ErrorKind::TimedOut, "TLS handshake timed out")
            })??,
        None => PeerStream::Plain(stream),
    };
    let mut framed = Framed::new(stream, codec(max_frame));
    let hello = encode(&hello, max_frame).map_err(std::io::Error::other)?;
    framed.send(hello).await?;
    Ok(framed)
}

impl Transport {
    /// Own the outbound connection to one peer, reconnecting with backoff.
    pub(super) async fn link(self, peer: NodeId, addr: PeerAddr, mut rx: mpsc::Receiver<Outbound>) {
        let mut backoff = Backoff::redial();
        let stats = self.link_stats(peer);
        let stats = stats.as_deref();
        loop {
            let connected = tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                c = connect(&addr, peer, self.inner.tls.as_ref(), self.hello(), self.inner.max_frame) => c,
            };
            match connected {
                Ok(framed) => {
                    tracing::debug!("connected");
                    backoff = Backoff::redial();
                    if let Some(stats) = stats {
                        stats.connected.store(true, Ordering::Relaxed);
                    }
                    let flow = self.pump(peer, framed, &mut rx).await;
                    if let Some(stats) = stats {
                        stats.connected.store(false, Ordering::Relaxed);
                        stats.set_outstanding(None);
                    }
                    if flow.is_break() {
                        return;
                    }
                }
                Err(e) => tracing::trace!(error = %e, "connect failed"),
            }
            // While the peer is down, what was queued for it is stale: drop it, and fail
            // the forwarded calls now rather than at their deadline.
            while let Ok(out) = rx.try_recv() {
                if let Outbound::Call(id, call) = out {
                    self.complete(
                        id,
                        Err(ShardError::Unavailable {
                            shard: call.shard(),
                            reason: "peer unreachable".into(),
                        }),
                    );
                }
            }
            tokio::select! {
                _ = self.inner.cancel.cancelled() => return,
                _ = tokio::time::sleep(backoff.pause()) => {}
            }
        }
    }

    /// Write queued messages to a live connection, and ping it, until it fails, stops
    /// answering, or we shut down. `Continue` means re-dial.
    async fn pump(
        &self,
        peer: NodeId,
        framed: Framed<PeerStream, LengthDelimitedCodec>,
        rx: &mut mpsc::Receiver<Outbound>,
    ) -> ControlFlow<()> {
        let (mut sink, mut stream) = framed.split();
        let (pong_tx, mut pong_rx) = mpsc::unbounded_channel();
        let t = self.clone();
        let mut reader = tokio::spawn(async move {
            while let Some(Ok(bytes)) = stream.next().await {
                match bincode::deserialize::<Frame>(&bytes) {
                    Ok(Frame::Reply { id, result }) => t.complete(id, result),
                    Ok(Frame::Pong { nonce }) => {
                        let _ = pong_tx.send(nonce);
                    }
                    Ok(Frame::Refused { reason }) => lost_data(peer, &reason),
                    _ => {
                        tracing::warn!("unexpected frame on an outbound connection");
                        break;
                    }
                }
            }
        });
        let stats = self.link_stats(peer);
        let stats = stats.as_deref();
        let mut keepalive = Keepalive::default();
        let mut ticker = tokio::time::interval(PING_EVERY);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let result = loop {
            let first = tokio::select! {
                _ = self.inner.cancel.cancelled() => break ControlFlow::Break(()),
                _ = &mut reader => break ControlFlow::Continue(()),
                Some(nonce) = pong_rx.recv() => {
                    if let Some(rtt) = keepalive.pong(nonce, Instant::now()) {
                        if let Some(stats) = stats {
                            stats.rtt_us.store(rtt.as_micros().max(1) as u64, Ordering::Relaxed);
                            stats.set_outstanding(None);
                        }
                        metrics::gauge!("cairn_peer_rtt_seconds", "peer" => peer.to_string())
                            .set(rtt.as_secs_f64());
                    }
                    continue;
                }
                _ = ticker.tick() => match keepalive.tick(Instant::now()) {
                    Due::Wait => continue,
                    Due::Dead(waited) => {
                        tracing::warn!(?waited, "the peer stopped answering on this connection; re-dialling");
                        if let Some(stats) = stats {
                            stats.resets.fetch_add(1, Ordering::Relaxed);
                        }
                        metrics::counter!("cairn_peer_link_resets_total", "peer" => peer.to_string())
                            .increment(1);
                        break ControlFlow::Continue(());
                    }
                    Due::Ping(nonce) => {
                        if let Some(stats) = stats {
                            stats.set_outstanding(keepalive.sent_at());
                        }
                        Frame::Ping { nonce }
                    }
                },
                out = rx.recv() => match out {
                    Some(Outbound::Raft(shard, msg)) => Frame::Raft { shard, msg },
                    Some(Outbound::Call(id, call)) => Frame::Call { id, call },
                    None => break ControlFlow::Break(()),
                },
            };
            let queued = std::iter::from_fn(|| rx.try_recv().ok()).map(|out| match out {
                Outbound::Raft(shard, msg) => Frame::Raft { shard, msg },
                Outbound::Call(id, call) => Frame::Call { id, call },
            });
            let mut failed = false;
            for frame in std::iter::once(first).chain(queued) {
                match encode(&frame, self.inner.max_frame) {
                    Ok(bytes) => {
                        if sink.feed(bytes).await.is_err() {
                            failed = true;
                            break;
                        }
                    }
                    Err(e) => self.refuse(peer, frame, e),
                }
            }
            if failed || sink.flush().await.is_err() {
                break ControlFlow::Continue(());
            }
        };
        reader.abort();
        result
    }

    /// A frame that cannot be sent: its call fails at once, a Raft message is dropped.
    fn refuse(&self, peer: NodeId, frame: Frame, error: FrameError) {
        let stats = self.link_stats(peer);
        let stats = stats.as_deref();
        match frame {
            Frame::Call { id, call } => {
                if let Some(stats) = stats {
                    stats.oversized(peer, "call");
                }
                let shard = call.shard();
                let refused = match error {
                    FrameError::TooLarge { bytes, limit } => ShardError::TooLarge {
                        shard,
                        what: "the forwarded request".into(),
                        bytes,
                        limit,
                    },
                    FrameError::Encode(reason) => ShardError::Unavailable { shard, reason },
                };
                self.complete(id, Err(refused));
            }
            Frame::Raft { shard, .. } => {
                // Proposals are bounded so that every message fits (RaftLimits); one
                // that does not is a bug, and its shard will not replicate past it.
                if let Some(stats) = stats {
                    stats.oversized(peer, "raft");
                }
                tracing::error!(shard, %error, "a Raft message cannot be sent");
            }
            _ => tracing::error!(%error, "a frame cannot be sent"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ping_unanswered_past_the_deadline_declares_the_connection_dead() {
        let start = Instant::now();
        let mut k = Keepalive::default();
        let Due::Ping(first) = k.tick(start) else {
            panic!("the first tick pings")
        };
        assert_eq!(k.tick(start + PING_EVERY), Due::Wait, "one ping at a time");
        // A pong of another nonce (a late answer to an old ping) proves nothing.
        assert_eq!(k.pong(first + 7, start + PING_EVERY), None);
        assert_eq!(
            k.pong(first, start + Duration::from_millis(1500)),
            Some(Duration::from_millis(1500))
        );
        let Due::Ping(second) = k.tick(start + 2 * PING_EVERY) else {
            panic!("answered: the next tick pings again")
        };
        assert_ne!(first, second);
        let late = start + 2 * PING_EVERY + PONG_DEADLINE;
        assert_eq!(k.tick(late), Due::Dead(PONG_DEADLINE));
    }
}
