//! Inbound connections: accepted by the listener, read by one task each. A connection
//! carries Raft messages, forwarded calls (answered on it) and keepalives, or one
//! streamed Raft snapshot.
//!
//! Answers go out through one writer task per connection. If that writer stops (a
//! write failed), the connection is closed at once rather than left reading: a
//! connection that executes calls but can no longer answer them is the worst kind,
//! since its peer would wait out every deadline. Closed, the peer re-dials.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::codec::Framed;
use tracing::Instrument;

use super::frame::{codec, encode, encode_reply, Frame, PeerError};
use super::ledger::Admission;
use super::link::HANDSHAKE_DEADLINE;
use super::tls::{certifies, PeerStream};
use super::{CallHandler, Transport};

impl Transport {
    pub(super) async fn accept(self, listener: TcpListener, handler: Arc<dyn CallHandler>) {
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

    /// Accept `data` as peer `from`'s data incarnation if it is the first this node
    /// has seen from it (remembered durably) or the same; `LostData` if it differs.
    async fn check_data_incarnation(&self, from: u64, data: u64) -> Result<(), PeerError> {
        let store = self.inner.store.clone();
        let known =
            tokio::task::spawn_blocking(move || match store.peer_data_incarnation(from)? {
                Some(known) => Ok(Some(known)),
                None => store.set_peer_data_incarnation(from, data).map(|()| None),
            })
            .await
            .map_err(|_| PeerError::Protocol("the incarnation check stopped"))??;
        match known {
            Some(known) if known != data => Err(PeerError::LostData(format!(
                "node {from} came back with another data directory (incarnation {data:#x}, \
                 where this node knew {known:#x}): it lost the Raft entries it had \
                 acknowledged, and must not rejoin as a voter (docs/OPERATIONS.md)"
            ))),
            _ => Ok(()),
        }
    }

    /// Read one inbound connection: Raft messages, forwarded calls, or a snapshot.
    async fn serve(
        self,
        stream: TcpStream,
        handler: Arc<dyn CallHandler>,
    ) -> Result<(), PeerError> {
        let max_frame = self.inner.max_frame;
        let (stream, certificate) = match &self.inner.tls {
            Some(tls) => match tokio::time::timeout(HANDSHAKE_DEADLINE, tls.accept(stream)).await {
                Ok(Ok((stream, certificate))) => (stream, Some(certificate)),
                Ok(Err(e)) => {
                    tracing::warn!(error = %e, "refused a peer connection: TLS handshake failed");
                    return Err(PeerError::Tls(e));
                }
                Err(_) => return Err(PeerError::NoHello),
            },
            None => (PeerStream::Plain(stream), None),
        };
        let mut framed = Framed::new(stream, codec(max_frame));
        let hello = tokio::time::timeout(Duration::from_secs(5), framed.next())
            .await
            .map_err(|_| PeerError::NoHello)?;
        let sender = match hello.map(|r| r.map(|b| bincode::deserialize::<Frame>(&b))) {
            Some(Ok(Ok(Frame::Hello {
                cluster_id,
                from,
                incarnation,
                data,
            }))) => {
                // Under TLS a connection speaks for the node its certificate names.
                if let Some(certificate) = &certificate {
                    if !certifies(certificate, from) {
                        tracing::warn!(from, "refused a peer whose certificate names another node");
                        return Err(PeerError::Impostor(from));
                    }
                }
                if cluster_id != self.inner.cluster_id {
                    tracing::warn!(from, %cluster_id, "refused a peer of another cluster");
                    return Err(PeerError::OtherCluster(cluster_id));
                }
                if let Err(e) = self.check_data_incarnation(from, data).await {
                    if let PeerError::LostData(reason) = &e {
                        tracing::error!(from, "refused a peer: {reason}");
                        let refused = Frame::Refused {
                            reason: reason.clone(),
                        };
                        if let Ok(bytes) = encode(&refused, max_frame) {
                            let _ = framed.send(bytes).await;
                        }
                    }
                    return Err(e);
                }
                (from, incarnation)
            }
            _ => return Err(PeerError::BadHello),
        };
        let (mut sink, mut stream) = framed.split();
        let (reply_tx, mut reply_rx) = mpsc::channel::<Bytes>(1024);
        let mut writer = tokio::spawn(async move {
            while let Some(bytes) = reply_rx.recv().await {
                if sink.feed(bytes).await.is_err() {
                    return;
                }
                while let Ok(bytes) = reply_rx.try_recv() {
                    if sink.feed(bytes).await.is_err() {
                        return;
                    }
                }
                if sink.flush().await.is_err() {
                    return;
                }
            }
        });
        let mut writer_done = false;
        let mut staging = None;
        let result = loop {
            let bytes = tokio::select! {
                _ = self.inner.cancel.cancelled() => break Ok(()),
                _ = &mut writer => {
                    writer_done = true;
                    break Err(PeerError::WriterGone);
                }
                next = stream.next() => match next {
                    Some(Ok(bytes)) => bytes,
                    Some(Err(e)) => break Err(e.into()),
                    None => break Ok(()),
                },
            };
            let frame: Frame = match bincode::deserialize(&bytes) {
                Ok(f) => f,
                Err(e) => break Err(e.into()),
            };
            match frame {
                Frame::Raft { shard, msg } => self.deliver(sender.0, shard, &msg),
                Frame::Call { id, call } => {
                    let shard = call.shard();
                    match self.admit(sender, id) {
                        Admission::New => {
                            let reply_tx = reply_tx.clone();
                            let proposes = call.proposes();
                            let fut = handler.clone().call(call);
                            let t = self.clone();
                            tokio::spawn(
                                async move {
                                    let result = fut.await;
                                    t.lock_ledger().finish(
                                        sender,
                                        id,
                                        proposes.then(|| result.clone()),
                                    );
                                    match encode_reply(id, shard, result, max_frame) {
                                        Ok(bytes) => {
                                            let _ = reply_tx.send(bytes).await;
                                        }
                                        Err(e) => {
                                            tracing::error!(id, error = %e, "no answer can be sent")
                                        }
                                    }
                                }
                                .in_current_span(),
                            );
                        }
                        Admission::Answered(result) => {
                            if let Ok(bytes) = encode_reply(id, shard, result, max_frame) {
                                let _ = reply_tx.send(bytes).await;
                            }
                        }
                        Admission::Duplicate => {
                            tracing::debug!(from = sender.0, id, "dropped a duplicate call");
                        }
                    }
                }
                Frame::Ping { nonce } => {
                    if let Ok(bytes) = encode(&Frame::Pong { nonce }, max_frame) {
                        let _ = reply_tx.send(bytes).await;
                    }
                }
                Frame::SnapshotChunk { shard, pairs } => {
                    if let Err(e) = self.stage_chunk(&mut staging, shard, pairs).await {
                        break Err(e);
                    }
                }
                Frame::SnapshotEnd { shard, msg } => {
                    if let Err(e) = self.stage_chunk(&mut staging, shard, Vec::new()).await {
                        break Err(e);
                    }
                    let handed = self.hand_snapshot(sender.0, shard, &msg).await;
                    staging = None;
                    match handed {
                        Ok(()) => match encode(&Frame::SnapshotAck, max_frame) {
                            Ok(bytes) => {
                                let _ = reply_tx.send(bytes).await;
                            }
                            Err(e) => break Err(e.into()),
                        },
                        Err(e) => break Err(e),
                    }
                }
                Frame::Hello { .. }
                | Frame::Reply { .. }
                | Frame::SnapshotAck
                | Frame::Pong { .. }
                | Frame::Refused { .. } => {
                    break Err(PeerError::Protocol(
                        "unexpected frame on an inbound connection",
                    ));
                }
            }
        };
        drop(reply_tx);
        if !writer_done {
            let _ = writer.await;
        }
        result
    }
}
