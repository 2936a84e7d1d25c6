//! Frames: what travels on a peer connection, how the byte stream is cut into frames,
//! and the size cap every frame obeys.
//!
//! A frame is length-delimited bincode. The cap protects the receiver (a bad peer
//! cannot make it allocate without bound) and is enforced on the sending side too:
//! a frame that would exceed it is never written, because the receiver would close
//! the connection on it. Whoever built the frame decides what to send instead (an
//! error reply for a call's answer, an error for the caller of a call; a Raft message
//! cannot be that large by construction, see [`crate::config::RaftLimits`]).

use bytes::Bytes;
use cairn_store::{NodeId, ShardId};
use serde::{Deserialize, Serialize};
use tokio_util::codec::LengthDelimitedCodec;

use crate::call::{Call, ShardResponse};
use crate::config::MAX_FRAME_CAP;
use crate::error::ShardError;

pub(super) type CallResult = Result<ShardResponse, ShardError>;

/// One frame on a peer connection.
#[derive(Debug, Serialize, Deserialize)]
pub(super) enum Frame {
    /// First frame of every connection, from the connecting side. `incarnation` is
    /// random per process start: with `from` it scopes the ids of the sender's calls.
    Hello {
        cluster_id: String,
        from: NodeId,
        incarnation: u64,
        /// The sender's data directory's incarnation (`NodeStore::data_incarnation`):
        /// a peer refuses one other than the first it saw from this node.
        data: u64,
    },
    /// The accepting side's answer to a `Hello` it refuses for good, before it closes
    /// the connection: the connecting node must not take part (its data directory
    /// is not the one its peers knew).
    Refused { reason: String },
    /// A Raft message (protobuf bytes) for a shard's replica. Droppable.
    Raft { shard: ShardId, msg: Vec<u8> },
    /// A forwarded call (a client's or a control call), answered by `Reply` with the
    /// same id.
    Call { id: u64, call: Call },
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
    /// Keepalive from the connecting side; the accepting side answers `Pong` through
    /// the same writer as its replies, so a pong proves replies can still flow.
    Ping { nonce: u64 },
    /// The answer to a `Ping` with the same nonce.
    Pong { nonce: u64 },
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
    /// A keepalive ping or its pong. Losing some only makes a link look slow; losing
    /// every one for the keepalive deadline makes the sender re-dial.
    Keepalive,
    /// A refused handshake's answer.
    Refused,
}

/// Classifies one frame's bytes (the payload of a length-delimited frame, as
/// [`frame_codec`] cuts them); `None` if they are not a frame of this transport.
pub fn frame_kind(bytes: &[u8]) -> Option<FrameKind> {
    Some(match bincode::deserialize::<Frame>(bytes).ok()? {
        Frame::Hello { from, .. } => FrameKind::Hello { from },
        Frame::Raft { shard, .. } => FrameKind::Raft { shard },
        Frame::Call { id, call } => FrameKind::Call {
            id,
            control: matches!(call, Call::Control(req) if req.is_cut_command()),
        },
        Frame::Reply { id, .. } => FrameKind::Reply { id },
        Frame::SnapshotChunk { .. } | Frame::SnapshotEnd { .. } | Frame::SnapshotAck => {
            FrameKind::Snapshot
        }
        Frame::Ping { .. } | Frame::Pong { .. } => FrameKind::Keepalive,
        Frame::Refused { .. } => FrameKind::Refused,
    })
}

/// The codec cutting a peer connection's byte stream into frames, for a tool on the
/// wire: it accepts frames up to [`MAX_FRAME_CAP`], whatever the nodes' own cap.
pub fn frame_codec() -> LengthDelimitedCodec {
    codec(MAX_FRAME_CAP)
}

/// The codec of a node's connections: frames up to `max_frame` bytes.
pub(super) fn codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Why a peer connection or a snapshot stream ended early. Each ends only that
/// connection (the peer re-dials; Raft resends); it is logged, never returned to a
/// client.
#[derive(Debug, thiserror::Error)]
pub(super) enum PeerError {
    #[error("no hello within the deadline")]
    NoHello,
    #[error("the first frame was not a hello")]
    BadHello,
    #[error("a peer of another cluster ({0})")]
    OtherCluster(String),
    #[error("{0}")]
    LostData(String),
    #[error("no shard {0}")]
    NoShard(ShardId),
    #[error("{0}")]
    Protocol(&'static str),
    #[error("answers can no longer be written; closing")]
    WriterGone,
    #[error("the replica stopped")]
    ReplicaStopped,
    #[error("no acknowledgement of the snapshot")]
    NoAck,
    #[error("undecodable frame: {0}")]
    Decode(#[from] bincode::Error),
    #[error("undecodable raft message: {0}")]
    Message(#[from] protobuf::ProtobufError),
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Store(#[from] cairn_store::StoreError),
    #[error("a blocking task failed: {0}")]
    Task(#[from] tokio::task::JoinError),
    #[error("TLS handshake: {0}")]
    Tls(std::io::Error),
    #[error("the peer's certificate does not name node {0}, which its hello claims")]
    Impostor(u64),
}

/// Why a frame could not be encoded.
#[derive(Debug, thiserror::Error)]
pub(super) enum FrameError {
    #[error("a frame of {bytes} bytes exceeds the frame cap of {limit}")]
    TooLarge { bytes: usize, limit: usize },
    #[error("encoding a frame: {0}")]
    Encode(String),
}

/// The frame's bytes, if they fit under `max_frame`.
pub(super) fn encode(frame: &Frame, max_frame: usize) -> Result<Bytes, FrameError> {
    let bytes = bincode::serialize(frame).map_err(|e| FrameError::Encode(e.to_string()))?;
    if bytes.len() > max_frame {
        return Err(FrameError::TooLarge {
            bytes: bytes.len(),
            limit: max_frame,
        });
    }
    Ok(Bytes::from(bytes))
}

/// The bytes of the answer to call `id`: the answer itself, or, if it does not fit in
/// a frame, an error saying so (small by construction), so the caller hears why
/// instead of waiting out its deadline.
pub(super) fn encode_reply(
    id: u64,
    shard: ShardId,
    result: CallResult,
    max_frame: usize,
) -> Result<Bytes, FrameError> {
    match encode(&Frame::Reply { id, result }, max_frame) {
        Err(FrameError::TooLarge { bytes, limit }) => {
            tracing::warn!(id, shard, bytes, limit, "an answer exceeds the frame cap");
            metrics::counter!("cairn_peer_frames_oversized_total", "kind" => "reply").increment(1);
            let refused = ShardError::TooLarge {
                shard,
                what: "the answer".into(),
                bytes,
                limit,
            };
            encode(
                &Frame::Reply {
                    id,
                    result: Err(refused),
                },
                max_frame,
            )
        }
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_too_large_for_a_frame_becomes_an_error_reply_that_fits() {
        let items = (0..100u8)
            .map(|i| {
                let v = cairn_store::Versioned {
                    version: 1,
                    value: vec![i; 1000],
                };
                (vec![i], v)
            })
            .collect();
        let page = cairn_store::Page { items, more: false };
        let big = Ok(ShardResponse::Items(page));
        assert!(matches!(
            encode(
                &Frame::Reply {
                    id: 1,
                    result: big.clone()
                },
                10_000
            ),
            Err(FrameError::TooLarge { .. })
        ));
        let bytes = encode_reply(7, 3, big, 10_000).expect("the error reply fits");
        match bincode::deserialize::<Frame>(&bytes).unwrap() {
            Frame::Reply {
                id: 7,
                result:
                    Err(ShardError::TooLarge {
                        shard: 3, bytes, ..
                    }),
            } => assert!(bytes > 100_000),
            other => panic!("unexpected {other:?}"),
        }
    }
}
