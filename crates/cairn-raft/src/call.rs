//! What a shard can be asked to do, and what it answers, in two kinds kept apart:
//!
//! - [`ShardRequest`], a **client call**: a batch of writes, a get, a scan or a diff on
//!   a data shard. This is all the HTTP API and a forwarded client request can express;
//!   a write carries only [`WriteOp`]s, so no client call can propose a marker, a
//!   release, a compaction or a transaction phase, and the meta group is not a target.
//! - [`ControlRequest`], a **control call**: the cluster's own protocols (snapshot
//!   markers and releases, history compaction, transaction prepares and resolves, the
//!   meta group's records). Only the coordinators hold the handle that sends these.
//!
//! Both travel between nodes inside a [`Call`] when forwarded to a leader, so they are
//! serde data; the receiving node serves each kind through its own entry point. The
//! answer is a [`ShardResponse`], turned into the caller's type by exactly one method
//! per kind (`into_written`, `into_value`, ...): a mismatch there is a protocol fault
//! between nodes, reported as [`ShardError::Protocol`].

use cairn_store::{
    ApplyOutcome, Command, HistoryRange, KeyVersion, NodeId, Page, PageLimit, ShardId, Versioned,
    WriteOp,
};
use serde::{Deserialize, Serialize};

use crate::error::ShardError;

/// How fresh a read must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub enum Consistency {
    /// Linearizable: the leader confirms it still leads (Raft ReadIndex) and the read
    /// waits until that index is applied.
    #[default]
    Linearizable,
    /// Whatever the local replica has applied; may lag the leader.
    Stale,
    /// The state at a fixed version (a snapshot's cut minus one). It never changes, so
    /// any replica that has applied that far serves it without asking the leader.
    AtVersion(u64),
}

/// A client call to one data shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardRequest {
    /// Apply conditional writes atomically; answered once committed and applied.
    Write { shard: ShardId, ops: Vec<WriteOp> },
    /// The newest live version of a key.
    Get {
        shard: ShardId,
        key: Vec<u8>,
        consistency: Consistency,
    },
    /// Live keys under a prefix, strictly after `start_after`, in key order: one page
    /// within `limit` (its bytes keep the answer under the transport's frame cap).
    Scan {
        shard: ShardId,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: PageLimit,
        consistency: Consistency,
    },
    /// Keys under a prefix whose visible value differs between versions `from` and
    /// `to` (two snapshots' read versions), with their value at `to`: one page within
    /// `limit`. Served like a fixed-version read at `max(from, to)`.
    Diff {
        shard: ShardId,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: PageLimit,
        from: u64,
        to: u64,
    },
}

impl ShardRequest {
    pub fn shard(&self) -> ShardId {
        match self {
            ShardRequest::Write { shard, .. }
            | ShardRequest::Get { shard, .. }
            | ShardRequest::Scan { shard, .. }
            | ShardRequest::Diff { shard, .. } => *shard,
        }
    }

    fn consistency(&self) -> Option<Consistency> {
        match self {
            ShardRequest::Write { .. } => None,
            ShardRequest::Diff { from, to, .. } => Some(Consistency::AtVersion(*from.max(to))),
            ShardRequest::Get { consistency, .. } | ShardRequest::Scan { consistency, .. } => {
                Some(*consistency)
            }
        }
    }

    /// Whether the local replica may answer without involving the leader.
    pub fn is_local_read(&self) -> bool {
        matches!(
            self.consistency(),
            Some(Consistency::Stale | Consistency::AtVersion(_))
        )
    }

    /// Whether this reads a fixed version, which the leader can serve if the local
    /// replica has not applied it yet.
    pub fn reads_fixed_version(&self) -> bool {
        matches!(self.consistency(), Some(Consistency::AtVersion(_)))
    }
}

/// A control call: the cluster's own protocols, on any group (the meta group too).
/// Reads here are always linearizable: the protocols decide on what they read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ControlRequest {
    /// Propose any command; answered once committed and applied.
    Propose { shard: ShardId, command: Command },
    /// The newest live version of a key.
    Get { shard: ShardId, key: Vec<u8> },
    /// Live keys under a prefix, strictly after `start_after`: one page within `limit`.
    Scan {
        shard: ShardId,
        prefix: Vec<u8>,
        start_after: Option<Vec<u8>>,
        limit: PageLimit,
    },
    /// The versions `range` selects (a backup's read), resumed after `after` (the
    /// key and version a previous page ended with): one page within `limit`. Served
    /// by the replica it reaches once that has applied the whole range; it never
    /// changes after that, so no leader needs to confirm anything.
    History {
        shard: ShardId,
        range: HistoryRange,
        after: Option<(Vec<u8>, u64)>,
        limit: PageLimit,
    },
    /// How many write batches the replica it reaches has applied since its node
    /// started (a number that moves when the shard is written: automatic snapshots
    /// are taken only then), and how many groups that node leads (for balancing).
    Progress { shard: ShardId },
    /// The group's members as its leader sees them, with how far each has caught
    /// up. Served by the leader only (a follower answers `NotLeader`).
    Members { shard: ShardId },
    /// Change the group's members (Raft configuration change); answered once the
    /// change is applied on the leader. Served by the leader only.
    ChangeMembers {
        shard: ShardId,
        change: MemberChange,
    },
    /// Hand the group's leadership to voter `to`. Served by the leader only; answered
    /// at once, the transfer itself takes an election.
    TransferLeader { shard: ShardId, to: NodeId },
    /// Open an empty replica of the group on the node the call reaches (a learner to
    /// be, caught up by a Raft snapshot once the leader adds it). Idempotent.
    OpenReplica { shard: ShardId },
    /// Stop and delete the node's replica of the group, which `members` (the group's
    /// committed configuration, as its leader applied it) no longer names. Refused if
    /// `members` names the node. Idempotent.
    DropReplica {
        shard: ShardId,
        members: Vec<NodeId>,
    },
}

/// A change of one group's members, made with Raft's joint consensus.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemberChange {
    /// Add `node` as a learner: it receives the log (a Raft snapshot first) but does
    /// not vote.
    AddLearner { node: NodeId },
    /// Make learner `add` a voter and remove voter `remove`, in one joint
    /// configuration that the leader leaves by itself once it is applied.
    Replace { add: NodeId, remove: NodeId },
    /// Remove `node`, a learner that will not be promoted.
    RemoveLearner { node: NodeId },
}

/// A group's members as its leader sees them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Members {
    /// Voters of the (incoming) configuration.
    pub voters: Vec<NodeId>,
    /// Voters of the outgoing configuration while a joint change is under way;
    /// empty otherwise.
    pub outgoing: Vec<NodeId>,
    pub learners: Vec<NodeId>,
    pub leader: Option<NodeId>,
    /// The leader's commit index.
    pub commit: u64,
    /// Per member, the highest log index known to match the leader's.
    pub matched: Vec<(NodeId, u64)>,
}

impl Members {
    /// Every node the configuration names (voters, outgoing voters, learners).
    pub fn all(&self) -> Vec<NodeId> {
        let mut all: Vec<NodeId> = self
            .voters
            .iter()
            .chain(&self.outgoing)
            .chain(&self.learners)
            .copied()
            .collect();
        all.sort_unstable();
        all.dedup();
        all
    }

    /// How far `node`'s log matches the leader's (0 if unknown).
    pub fn matched(&self, node: NodeId) -> u64 {
        self.matched
            .iter()
            .find(|(n, _)| *n == node)
            .map_or(0, |(_, m)| *m)
    }
}

impl ControlRequest {
    pub fn shard(&self) -> ShardId {
        match self {
            ControlRequest::Propose { shard, .. }
            | ControlRequest::Get { shard, .. }
            | ControlRequest::Scan { shard, .. }
            | ControlRequest::History { shard, .. }
            | ControlRequest::Progress { shard }
            | ControlRequest::Members { shard }
            | ControlRequest::ChangeMembers { shard, .. }
            | ControlRequest::TransferLeader { shard, .. }
            | ControlRequest::OpenReplica { shard }
            | ControlRequest::DropReplica { shard, .. } => *shard,
        }
    }

    /// Whether this is one of the snapshot protocol's or history GC's commands
    /// (marker, release, compaction): what a fault-injecting tool may slow down alone.
    pub fn is_cut_command(&self) -> bool {
        matches!(
            self,
            ControlRequest::Propose {
                command: Command::Marker { .. } | Command::Release { .. } | Command::Compact { .. },
                ..
            }
        )
    }
}

/// Either kind of call, as it crosses the peer transport.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Call {
    Client(ShardRequest),
    Control(ControlRequest),
}

impl From<ShardRequest> for Call {
    fn from(req: ShardRequest) -> Call {
        Call::Client(req)
    }
}

impl From<ControlRequest> for Call {
    fn from(req: ControlRequest) -> Call {
        Call::Control(req)
    }
}

impl Call {
    pub fn shard(&self) -> ShardId {
        match self {
            Call::Client(req) => req.shard(),
            Call::Control(req) => req.shard(),
        }
    }

    /// Whether serving it proposes to the log: if its answer is lost, its outcome is
    /// unknown rather than "nothing happened".
    pub fn proposes(&self) -> bool {
        matches!(
            self,
            Call::Client(ShardRequest::Write { .. })
                | Call::Control(ControlRequest::Propose { .. })
                | Call::Control(ControlRequest::ChangeMembers { .. })
        )
    }
}

/// What a [`ControlRequest::Progress`] learns of a replica and its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    /// Write batches the replica applied since its node started.
    pub writes_applied: u64,
    /// Groups (data shards and the meta group) the node leads.
    pub leads: u32,
}

/// The answer to a call, variant by variant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardResponse {
    Written(ApplyOutcome),
    Value(Option<Versioned>),
    Items(Page<Versioned>),
    /// Changed keys with their value at the later version (`None`: deleted).
    Changes(Page<Option<Versioned>>),
    /// A page of a shard's history; `more` if the read did not reach its end.
    History {
        versions: Vec<KeyVersion>,
        more: bool,
    },
    /// See [`ControlRequest::Progress`].
    Progress(Progress),
    /// See [`ControlRequest::Members`].
    Members(Members),
    /// Done, nothing to tell (opening, dropping, a transfer asked for).
    Done,
}

impl ShardResponse {
    /// The answer to a write or a proposal.
    pub fn into_written(self, shard: ShardId) -> Result<ApplyOutcome, ShardError> {
        match self {
            ShardResponse::Written(outcome) => Ok(outcome),
            other => Err(other.mismatch(shard, "a write's outcome")),
        }
    }

    /// The answer to a get.
    pub fn into_value(self, shard: ShardId) -> Result<Option<Versioned>, ShardError> {
        match self {
            ShardResponse::Value(value) => Ok(value),
            other => Err(other.mismatch(shard, "a value")),
        }
    }

    /// The answer to a scan.
    pub fn into_items(self, shard: ShardId) -> Result<Page<Versioned>, ShardError> {
        match self {
            ShardResponse::Items(page) => Ok(page),
            other => Err(other.mismatch(shard, "a page of keys")),
        }
    }

    /// The answer to a diff.
    pub fn into_changes(self, shard: ShardId) -> Result<Page<Option<Versioned>>, ShardError> {
        match self {
            ShardResponse::Changes(page) => Ok(page),
            other => Err(other.mismatch(shard, "a page of changes")),
        }
    }

    /// The answer to a history read: its versions, and whether more follow.
    pub fn into_history(self, shard: ShardId) -> Result<(Vec<KeyVersion>, bool), ShardError> {
        match self {
            ShardResponse::History { versions, more } => Ok((versions, more)),
            other => Err(other.mismatch(shard, "a page of history")),
        }
    }

    /// The answer to a progress call.
    pub fn into_progress(self, shard: ShardId) -> Result<Progress, ShardError> {
        match self {
            ShardResponse::Progress(progress) => Ok(progress),
            other => Err(other.mismatch(shard, "a progress count")),
        }
    }

    /// The answer to a members call.
    pub fn into_members(self, shard: ShardId) -> Result<Members, ShardError> {
        match self {
            ShardResponse::Members(members) => Ok(members),
            other => Err(other.mismatch(shard, "a group's members")),
        }
    }

    /// The answer to a call that only reports success.
    pub fn into_done(self, shard: ShardId) -> Result<(), ShardError> {
        match self {
            ShardResponse::Done => Ok(()),
            other => Err(other.mismatch(shard, "done")),
        }
    }

    fn kind(&self) -> &'static str {
        match self {
            ShardResponse::Written(_) => "a write's outcome",
            ShardResponse::Value(_) => "a value",
            ShardResponse::Items(_) => "a page of keys",
            ShardResponse::Changes(_) => "a page of changes",
            ShardResponse::History { .. } => "a page of history",
            ShardResponse::Progress(_) => "a progress count",
            ShardResponse::Members(_) => "a group's members",
            ShardResponse::Done => "done",
        }
    }

    /// A peer answered a call with the wrong kind of answer: two nodes disagree on the
    /// protocol (or one has a bug). Never retried; logged where it is found.
    fn mismatch(&self, shard: ShardId, expected: &'static str) -> ShardError {
        let got = self.kind();
        tracing::error!(shard, expected, got, "a shard answered with the wrong kind");
        ShardError::Protocol {
            shard,
            reason: format!("expected {expected}, got {got}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_answer_of_the_wrong_kind_is_a_protocol_error_not_a_value() {
        let answer = ShardResponse::Value(None);
        assert!(matches!(
            answer.clone().into_written(3),
            Err(ShardError::Protocol { shard: 3, .. })
        ));
        assert_eq!(answer.into_value(3).expect("a value"), None);
        let page = ShardResponse::Items(Page {
            items: Vec::new(),
            more: false,
        });
        assert!(matches!(
            page.into_changes(1),
            Err(ShardError::Protocol { .. })
        ));
    }

    #[test]
    fn only_the_cut_commands_count_as_cut_commands() {
        let propose = |command| ControlRequest::Propose { shard: 0, command };
        assert!(propose(Command::Marker { epoch: 1 }).is_cut_command());
        assert!(propose(Command::Release { epoch: 1 }).is_cut_command());
        assert!(propose(Command::Compact { horizon: 1 }).is_cut_command());
        assert!(!propose(Command::Resolve {
            txn: 1,
            commit: true
        })
        .is_cut_command());
        assert!(!propose(Command::Batch(Vec::new())).is_cut_command());
    }
}
