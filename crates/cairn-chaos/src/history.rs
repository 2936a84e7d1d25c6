//! The recorded history: every operation a client invoked, when, and what came back.
//!
//! Times are offsets from the run's start on one monotonic clock, taken just before a
//! request is sent (`invoked`) and just after its answer is read (`completed`), so
//! "A completed before B was invoked" in the record implies it in reality.
//!
//! An operation ends in one of three ways, and the difference is the whole point:
//!
//! - [`Outcome::Ok`]: the node answered with success, and the answer is recorded.
//! - [`Outcome::Refused`]: a definite "no" that changed nothing: 412 (a condition did
//!   not hold; the checkers then know the condition was false at some point in the
//!   interval), other 4xx (the request was wrong), 503 `unavailable` (documented as
//!   "nothing changed"), or a connection that could not even be opened.
//! - [`Outcome::Unknown`]: anything else: a timeout, a connection lost after the
//!   request was sent, 503 `outcome_unknown`, a 5xx. The operation may or may not
//!   have taken effect, at any time after its invocation; checkers must allow both.
//!
//! Every put writes a unique value ([`WriteId`]: the client and its sequence number),
//! so every version in a replica can be traced to exactly one operation.

use std::fmt;
use std::time::Duration;

use serde::Serialize;

/// A workload client's number.
pub type ClientId = u32;

/// One put's identity, and so its value: `c{client}.{seq}`. Unique in a run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct WriteId {
    pub client: ClientId,
    pub seq: u32,
}

impl WriteId {
    /// The bytes this write puts: its id, or, when `size` is larger, its id padded to
    /// `size` bytes (`c3.17/` and then the id repeated), so that a large value still
    /// says which write it is and a value cut short, or mixed with another's, fails
    /// [`compact`].
    pub fn value(&self, size: usize) -> Vec<u8> {
        let id = self.to_string().into_bytes();
        if size <= id.len() + 1 {
            return id;
        }
        let mut value = Vec::with_capacity(size);
        value.extend_from_slice(&id);
        value.push(PAD);
        value.extend(id.iter().copied().cycle().take(size - id.len() - 1));
        value
    }

    /// The write whose value `bytes` are, if they are one.
    pub fn parse(bytes: &[u8]) -> Option<WriteId> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (client, seq) = text.strip_prefix('c')?.split_once('.')?;
        let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
        if !all_digits(client) || !all_digits(seq) {
            return None;
        }
        Some(WriteId {
            client: client.parse().ok()?,
            seq: seq.parse().ok()?,
        })
    }
}

/// Separates a padded value's id from its padding (see [`WriteId::value`]).
const PAD: u8 = b'/';

/// A value as the checkers see it: a write's value of `size` bytes (padded) becomes
/// its id alone, so histories stay small whatever the workload writes; anything else
/// (an unpadded id, a value of the wrong length or with wrong padding) is kept as it
/// is, and the checkers flag it as no write's value.
///
/// `full_len` is the value's length when `value` is only its first bytes (a debug view
/// that truncates values), `None` when `value` is whole.
pub fn compact(value: &[u8], size: usize, full_len: Option<usize>) -> Vec<u8> {
    let whole = full_len.is_none();
    let len = full_len.unwrap_or(value.len());
    let Some(cut) = value.iter().position(|&b| b == PAD) else {
        return value.to_vec();
    };
    let (id, padding) = (&value[..cut], &value[cut + 1..]);
    let padded = WriteId::parse(id).is_some()
        && len == size
        && (!whole || padding.len() + id.len() + 1 == size)
        && padding.iter().zip(id.iter().cycle()).all(|(a, b)| a == b);
    if padded {
        id.to_vec()
    } else {
        value.to_vec()
    }
}

impl fmt::Display for WriteId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "c{}.{}", self.client, self.seq)
    }
}

/// The condition a write was sent with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Precondition {
    None,
    /// `If-Match: "<version>"`: the key's live version must be this one.
    IfMatch(u64),
    /// `If-None-Match: *`: the key must be absent.
    IfAbsent,
}

/// What a client asked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Request {
    /// A linearizable read.
    Get {
        key: String,
    },
    Put {
        key: String,
        write: WriteId,
        pre: Precondition,
    },
    Delete {
        key: String,
        pre: Precondition,
    },
    /// An atomic batch, unconditional: within one shard, or across shards (a
    /// cross-shard transaction).
    Batch {
        puts: Vec<(String, WriteId)>,
        deletes: Vec<String>,
    },
    /// A linearizable prefix scan (one page, larger than the key set).
    Scan {
        prefix: String,
    },
}

impl Request {
    pub fn is_write(&self) -> bool {
        matches!(
            self,
            Request::Put { .. } | Request::Delete { .. } | Request::Batch { .. }
        )
    }
}

/// What a successful operation answered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Answer {
    /// A read: the value and its version, or absent.
    Value(Option<(Vec<u8>, u64)>),
    /// A put: its version (log index).
    Written { version: u64 },
    /// A batch: each op's version (puts first, then deletes, as in the request); one
    /// version per shard. `None`: committed, but that shard had not confirmed it yet.
    Batched { versions: Vec<Option<u64>> },
    /// A delete: whether the key was live, and the delete's version.
    Deleted { deleted: bool, version: u64 },
    /// A scan: (key, value, version) in key order; `complete` when the page held
    /// every key under the prefix.
    Items {
        items: Vec<(String, Vec<u8>, u64)>,
        complete: bool,
    },
}

/// How an operation ended (see the module doc).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Outcome {
    Ok(Answer),
    Refused { status: u16, code: String },
    Unknown { reason: String },
}

impl Outcome {
    pub fn is_ok(&self) -> bool {
        matches!(self, Outcome::Ok(_))
    }

    /// A 412: the operation's condition did not hold.
    pub fn is_precondition_failed(&self) -> bool {
        matches!(self, Outcome::Refused { status: 412, .. })
    }
}

/// One recorded operation: the record every harness shares (`cairn_lincheck::Op`),
/// with this harness's requests and outcomes. `via` is the node the request was sent
/// to; `completed` is always set (an operation ends when its answer, or its failure,
/// is read), and `client` is a [`ClientId`].
pub type Operation = cairn_lincheck::Op<Duration, Request, Outcome>;

/// An [`Operation`] as one line of a report.
pub struct Shown<'a>(pub &'a Operation);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let op = self.0;
        let secs =
            |t: Option<Duration>| t.map_or("?".to_owned(), |t| format!("{:.3}s", t.as_secs_f64()));
        write!(
            f,
            "#{} client {} -> node {} [{}, {}] ",
            op.id,
            op.client,
            op.via.map_or("?".to_owned(), |n| n.to_string()),
            secs(Some(op.invoked)),
            secs(op.completed)
        )?;
        let pre = |p: &Precondition| match p {
            Precondition::None => String::new(),
            Precondition::IfMatch(v) => format!(" if-match {v}"),
            Precondition::IfAbsent => " if-absent".into(),
        };
        match &op.request {
            Request::Get { key } => write!(f, "get {key}")?,
            Request::Put { key, write, pre: p } => write!(f, "put {key} = {write}{}", pre(p))?,
            Request::Delete { key, pre: p } => write!(f, "delete {key}{}", pre(p))?,
            Request::Batch { puts, deletes } => {
                let mut parts: Vec<String> = puts.iter().map(|(k, w)| format!("{k}={w}")).collect();
                parts.extend(deletes.iter().map(|k| format!("-{k}")));
                write!(f, "batch [{}]", parts.join(", "))?
            }
            Request::Scan { prefix } => write!(f, "scan {prefix}*")?,
        }
        match &op.outcome {
            Outcome::Ok(Answer::Value(None)) => write!(f, " -> absent"),
            Outcome::Ok(Answer::Value(Some((value, version)))) => {
                write!(f, " -> {} @{version}", String::from_utf8_lossy(value))
            }
            Outcome::Ok(Answer::Written { version }) => write!(f, " -> ok @{version}"),
            Outcome::Ok(Answer::Batched { versions }) => write!(f, " -> ok @{versions:?}"),
            Outcome::Ok(Answer::Deleted { deleted, version }) => {
                write!(f, " -> ok deleted={deleted} @{version}")
            }
            Outcome::Ok(Answer::Items { items, complete }) => write!(
                f,
                " -> {} items{}",
                items.len(),
                if *complete { "" } else { " (partial)" }
            ),
            Outcome::Refused { status, code } => write!(f, " -> refused {status} {code}"),
            Outcome::Unknown { reason } => write!(f, " -> UNKNOWN ({reason})"),
        }
    }
}

/// A run's recorded operations and the key set they worked on.
#[derive(Debug, Clone, Default, Serialize)]
pub struct History {
    pub ops: Vec<Operation>,
    /// Every key the workload may touch, all under `prefix`.
    pub keys: Vec<String>,
    pub prefix: String,
    /// The size of every value put (0: the write's id alone); values read are
    /// recorded [`compact`]ed.
    pub value_bytes: usize,
}

impl History {
    /// Counts by outcome: (ok, refused, unknown).
    pub fn tally(&self) -> (usize, usize, usize) {
        let mut t = (0, 0, 0);
        for op in &self.ops {
            match op.outcome {
                Outcome::Ok(_) => t.0 += 1,
                Outcome::Refused { .. } => t.1 += 1,
                Outcome::Unknown { .. } => t.2 += 1,
            }
        }
        t
    }

    /// Every operation touching `key`, in record order, as one line each (a scan's
    /// line says what it saw of `key`).
    pub fn show_key(&self, key: &str) -> String {
        self.ops
            .iter()
            .filter(|op| touches(&op.request, key))
            .map(|op| match &op.outcome {
                Outcome::Ok(Answer::Items { items, .. }) => {
                    let seen = items
                        .iter()
                        .find(|(k, _, _)| k == key)
                        .map(|(_, value, version)| {
                            format!("{} @{version}", String::from_utf8_lossy(value))
                        })
                        .unwrap_or_else(|| "absent".into());
                    format!("{} ({key}: {seen})", Shown(op))
                }
                _ => Shown(op).to_string(),
            })
            .collect::<Vec<_>>()
            .join("\n")
    }
}

/// Whether `request` reads or writes `key` (a scan touches every key).
pub fn touches(request: &Request, key: &str) -> bool {
    match request {
        Request::Get { key: k } | Request::Put { key: k, .. } | Request::Delete { key: k, .. } => {
            k == key
        }
        Request::Batch { puts, deletes } => {
            puts.iter().any(|(k, _)| k == key) || deletes.iter().any(|k| k == key)
        }
        Request::Scan { prefix } => key.starts_with(prefix.as_str()),
    }
}

impl Request {
    /// A batch's ops with the version each was written at, in request order (puts
    /// first): `(key, Some(write) for a put | None for a delete, version)`.
    pub fn batch_ops<'a>(
        &'a self,
        versions: &'a [Option<u64>],
    ) -> Vec<(&'a str, Option<WriteId>, Option<u64>)> {
        let Request::Batch { puts, deletes } = self else {
            return Vec::new();
        };
        puts.iter()
            .map(|(k, w)| (k.as_str(), Some(*w)))
            .chain(deletes.iter().map(|k| (k.as_str(), None)))
            .enumerate()
            .map(|(i, (k, w))| (k, w, versions.get(i).copied().flatten()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn write_ids_round_trip_and_nothing_else_parses() {
        let w = WriteId {
            client: 7,
            seq: 12345,
        };
        assert_eq!(WriteId::parse(&w.value(0)), Some(w));
        for bad in [
            &b""[..],
            b"c",
            b"c1",
            b"c1.",
            b"c.1",
            b"x1.2",
            b"c1.2x",
            b"c-1.2",
        ] {
            assert_eq!(WriteId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn padded_values_compact_to_their_id_and_damaged_ones_do_not() {
        let w = WriteId { client: 3, seq: 17 };
        let id = w.value(0);
        assert_eq!(id, b"c3.17");
        let big = w.value(1000);
        assert_eq!(big.len(), 1000);
        assert!(big.starts_with(b"c3.17/c3.17c3.1"));
        assert_eq!(compact(&big, 1000, None), id);
        // Cut short, wrong length, wrong padding, another write's padding: kept.
        assert_eq!(compact(&big[..999], 1000, None), &big[..999]);
        assert_eq!(compact(&big, 2000, None), big);
        let mut damaged = big.clone();
        damaged[500] ^= 1;
        assert_eq!(compact(&damaged, 1000, None), damaged);
        let other = WriteId { client: 3, seq: 18 }.value(1000);
        let mut mixed = big[..500].to_vec();
        mixed.extend_from_slice(&other[500..]);
        assert_eq!(compact(&mixed, 1000, None), mixed);
        // A truncated view compacts if its full length is right.
        assert_eq!(compact(&big[..64], 1000, Some(1000)), id);
        assert_eq!(compact(&big[..64], 1000, Some(999)), &big[..64]);
        // Small values are just the id, which compacts to itself.
        assert_eq!(compact(&id, 0, None), id);
    }
}
