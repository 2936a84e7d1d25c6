//! Raft snapshots on the wire: the sender streams a shard's versions at the snapshot
//! index in chunks on a connection of its own, then the `MsgSnapshot`; the receiver
//! writes the chunks to the shard's stage and only then hands the message to the
//! replica, which installs the stage. The stage is locked per shard until the replica
//! has handled the message.

use std::time::Duration;

use cairn_store::{ShardId, ShardState};
use futures::{SinkExt, StreamExt};
use protobuf::Message as _;
use raft::prelude::Message;
use tokio::sync::oneshot;
use tracing::Instrument;

use super::frame::{encode, Frame, PeerError};
use super::link::connect;
use super::Transport;
use crate::replica::ReplicaMsg;

/// Target size of one snapshot chunk.
const SNAPSHOT_CHUNK_BYTES: usize = 1024 * 1024;

/// A shard's versions at a snapshot index, as raw tree pairs.
type Versions = Box<dyn Iterator<Item = cairn_store::Result<(Vec<u8>, Vec<u8>)>> + Send>;

/// The stage of one shard, held while its chunks arrive.
pub(super) type Staging = Option<(ShardId, tokio::sync::OwnedMutexGuard<()>)>;

impl Transport {
    /// Stream a Raft snapshot to its peer in the background; the replica hears how it
    /// ended through `SnapshotSent`. Returns false if it could not even be started.
    pub fn send_snapshot(&self, shard: ShardId, msg: Message, state: ShardState) -> bool {
        let Some(peer) = self.peer(msg.to) else {
            return false;
        };
        let (to, addr) = (msg.to, peer.addr.clone());
        let t = self.clone();
        let span = tracing::info_span!("snapshot_send", node = t.inner.node_id, shard, to);
        self.inner.runtime.spawn(
            async move {
                let result = t.stream_snapshot(addr, shard, msg, state).await;
                if let Err(e) = &result {
                    tracing::warn!(error = %e, "snapshot stream failed");
                }
                let ok = result.is_ok();
                if let Some(replica) = t.inner.replicas.inbox(shard) {
                    let _ = replica.send(ReplicaMsg::SnapshotSent { to, ok });
                }
            }
            .instrument(span),
        );
        true
    }

    /// Write a chunk to the shard's stage, taking the stage (and clearing it) first.
    pub(super) async fn stage_chunk(
        &self,
        staging: &mut Staging,
        shard: ShardId,
        pairs: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<(), PeerError> {
        // Only a hosted replica installs a stage; anything else would leave a tree
        // behind for a group this node does not hold.
        if self.inner.replicas.get(shard).is_none() {
            return Err(PeerError::NoShard(shard));
        }
        let lock = self
            .inner
            .stage_locks
            .get(shard as usize)
            .ok_or(PeerError::NoShard(shard))?
            .clone();
        let store = self.inner.store.clone();
        match staging {
            Some((s, _)) if *s == shard => {}
            Some(_) => {
                return Err(PeerError::Protocol(
                    "snapshot chunks of two shards on one stream",
                ))
            }
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

    pub(super) async fn hand_snapshot(
        &self,
        sender: u64,
        shard: ShardId,
        bytes: &[u8],
    ) -> Result<(), PeerError> {
        let msg = Message::parse_from_bytes(bytes)?;
        // As for every Raft message (`Transport::deliver`): only from the link's node.
        if !super::speaks_for(sender, self.inner.node_id, &msg) {
            return Err(PeerError::Protocol(
                "a snapshot whose sender or addressee is not this link's",
            ));
        }
        let replica = self
            .inner
            .replicas
            .inbox(shard)
            .ok_or(PeerError::NoShard(shard))?;
        let (done, handled) = oneshot::channel();
        replica
            .send(ReplicaMsg::StagedSnapshot {
                msg: Box::new(msg),
                done,
            })
            .map_err(|_| PeerError::ReplicaStopped)?;
        handled.await.map_err(|_| PeerError::ReplicaStopped)
    }

    pub(super) async fn stream_snapshot(
        &self,
        addr: crate::config::PeerAddr,
        shard: ShardId,
        msg: Message,
        state: ShardState,
    ) -> Result<(), PeerError> {
        let upto = msg.get_snapshot().get_metadata().index;
        let max_frame = self.inner.max_frame;
        let peer = msg.to;
        let mut framed = connect(
            &addr,
            peer,
            self.inner.tls.as_ref(),
            self.hello(),
            max_frame,
        )
        .await?;
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
                        Err(e) => return (versions, Err(e)),
                    }
                }
                (versions, Ok(chunk))
            })
            .await?;
            versions = rest;
            let chunk = chunk?;
            if chunk.is_empty() {
                break;
            }
            sent += chunk.len();
            let chunk = Frame::SnapshotChunk {
                shard,
                pairs: chunk,
            };
            framed.send(encode(&chunk, max_frame)?).await?;
        }
        let msg = msg.write_to_bytes()?;
        framed
            .send(encode(&Frame::SnapshotEnd { shard, msg }, max_frame)?)
            .await?;
        let ack = tokio::time::timeout(Duration::from_secs(120), framed.next())
            .await
            .map_err(|_| PeerError::NoAck)?;
        match ack.map(|r| r.map(|b| bincode::deserialize::<Frame>(&b))) {
            Some(Ok(Ok(Frame::SnapshotAck))) => {
                tracing::info!(versions = sent, index = upto, "sent raft snapshot");
                Ok(())
            }
            _ => Err(PeerError::Protocol("not an acknowledgement")),
        }
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> cairn_store::Result<T> + Send + 'static,
) -> Result<T, PeerError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}
