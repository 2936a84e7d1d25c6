//! Per-key linearizability of a recorded history. The model of a key and the search
//! (the Wing-Gong-Lowe checker of `todc-utils`) are `cairn-lincheck`'s, the same the
//! simulator checks with; this module turns an HTTP history into per-key operations.
//!
//! Linearizability is compositional: a history is linearizable exactly when its
//! restriction to every object is, so each key is checked alone (its operations are
//! few, and the search is exponential only in the concurrency of one key's operations).
//!
//! # The model of one key
//!
//! The state is which write the key holds, `Option<WriteId>` (every put writes a
//! unique value, so the value names the write). Operations, from the client's records:
//!
//! - a read returning write `w` (or absent) is legal exactly in that state;
//! - a put sets the state to its write when its condition holds; an acknowledged put
//!   requires the condition, a 412 requires its negation and changes nothing;
//! - a delete empties the key under the same rules, and an acknowledged one also
//!   requires `deleted` to match whether the key was live;
//! - a batch is, per key it touches, an unconditional put or delete;
//! - a scan that returned the whole prefix is, per key, a read (absent keys included);
//! - an operation of unknown outcome may take effect at any point after its
//!   invocation, or never: its response is placed after everything else, and when it
//!   is linearized it applies only if its condition holds. Placed last it is
//!   indistinguishable from never happening, so "never" needs no case of its own.
//!   Unknown and refused reads are dropped: they have no effect.
//!
//! `If-Match` carries a version, and versions are not part of the state: the version a
//! client used was one it had observed, with a value (an acknowledged put's version,
//! or a read's value and ETag), so the condition "live version is v" becomes "holds
//! the write observed at v". That is sound when observations map versions to writes
//! one to one per key, which is checked here too: a version seen with two values, a
//! value never written to the key, or a put acknowledged at a version later read with
//! another value is a violation in itself.
//!
//! # Limits
//!
//! A key with more than [`CheckOptions::max_ops_per_key`] operations is not checked,
//! and a search that passes [`CheckOptions::deadline`] stops: both are reported as
//! *undecided*, never as a pass. The deadline is enforced from inside the search
//! (every step of the sequential specification consults it and fails once it passed,
//! which unwinds the search quickly), so no thread is left running.

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use cairn_lincheck::{Budget, Cond, Expect, KeyHistories, KeyOp};

use crate::history::{touches, Answer, History, Outcome, Precondition, Request, WriteId};

/// Bounds on the checker.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    pub max_ops_per_key: usize,
    pub deadline: Duration,
    /// Keys checked in parallel.
    pub threads: usize,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_ops_per_key: 500,
            deadline: Duration::from_secs(60),
            threads: 2,
        }
    }
}

pub use cairn_lincheck::{KeyVerdict, Verdict};

/// The checker's results for a whole history.
#[derive(Debug, Clone, Default)]
pub struct LinearizabilityReport {
    pub keys: Vec<KeyVerdict>,
    /// Violations found while building the per-key histories (they make a key's
    /// check moot, and are reported whatever the search says).
    pub observations: Vec<String>,
}

impl LinearizabilityReport {
    pub fn ops_checked(&self) -> usize {
        self.keys
            .iter()
            .filter(|k| k.verdict == Verdict::Linearizable)
            .map(|k| k.ops)
            .sum()
    }

    pub fn violations(&self) -> Vec<String> {
        let mut out = self.observations.clone();
        for k in &self.keys {
            if k.verdict == Verdict::Violation {
                out.push(format!(
                    "key {}: not linearizable: no order of its {} operations is legal:\n{}",
                    k.key,
                    k.ops,
                    k.shown.as_deref().unwrap_or_default()
                ));
            }
        }
        out
    }

    pub fn undecided(&self) -> Vec<String> {
        self.keys
            .iter()
            .filter_map(|k| match &k.verdict {
                Verdict::Undecided(why) => Some(format!("key {}: undecided: {why}", k.key)),
                _ => None,
            })
            .collect()
    }
}

/// The history per key: each entry is an operation and its interval (`None`: unknown
/// outcome, open-ended).
type Keys = KeyHistories<Duration, WriteId>;

/// How a write ended, for the shared model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Ok,
    /// 412: the condition did not hold.
    ConditionFailed,
    Unknown,
}

impl Status {
    /// The model's expectation; `existed` is whether the key was live, if reported.
    fn expect(self, existed: Option<bool>) -> Expect<WriteId> {
        match self {
            Status::Ok => Expect::Applied { existed },
            Status::ConditionFailed => Expect::Refused { current: None },
            Status::Unknown => Expect::Unknown,
        }
    }
}

/// Split a history into per-key histories for the shared model (`cairn-lincheck`).
fn per_key(history: &History) -> (Keys, Vec<String>, BTreeSet<String>) {
    let mut observations = Vec::new();
    let mut unresolved: BTreeSet<String> = BTreeSet::new();
    // Which writes were sent to which key, and which write each observed version holds.
    let mut sent: HashMap<(&str, WriteId), usize> = HashMap::new();
    for op in &history.ops {
        match &op.request {
            Request::Put { key, write, .. } => {
                sent.insert((key.as_str(), *write), op.id);
            }
            Request::Batch { puts, .. } => {
                for (key, write) in puts {
                    sent.insert((key.as_str(), *write), op.id);
                }
            }
            _ => {}
        }
    }
    let mut at_version: HashMap<(String, u64), (WriteId, usize)> = HashMap::new();
    let mut observe = |key: &str,
                       version: u64,
                       write: WriteId,
                       op: usize,
                       out: &mut Vec<String>| {
        match at_version.get(&(key.to_owned(), version)) {
            Some((other, first)) if *other != write => out.push(format!(
                "key {key}: version {version} was seen holding {other} (op #{first}) and {write} (op #{op})"
            )),
            Some(_) => {}
            None => {
                at_version.insert((key.to_owned(), version), (write, op));
            }
        }
    };
    // Decode a value read back; `None` (and a finding) if no client sent it to `key`.
    let decode = |key: &str, value: &[u8], op: usize, out: &mut Vec<String>| -> Option<WriteId> {
        match WriteId::parse(value) {
            Some(w) if sent.contains_key(&(key, w)) => Some(w),
            Some(w) => {
                out.push(format!(
                    "op #{op} read {w} from key {key}, but no client wrote {w} to {key}"
                ));
                None
            }
            None => {
                out.push(format!(
                    "op #{op} read {:?} from key {key}, a value no client wrote",
                    String::from_utf8_lossy(value)
                ));
                None
            }
        }
    };
    // First pass: every observation of (key, version) -> write.
    for op in &history.ops {
        let Outcome::Ok(answer) = &op.outcome else {
            continue;
        };
        match (&op.request, answer) {
            (Request::Put { key, write, .. }, Answer::Written { version }) => {
                observe(key, *version, *write, op.id, &mut observations)
            }
            (Request::Batch { .. }, Answer::Batched { versions }) => {
                for (key, write, version) in op.request.batch_ops(versions) {
                    if let (Some(w), Some(v)) = (write, version) {
                        observe(key, v, w, op.id, &mut observations);
                    }
                }
            }
            (Request::Get { key }, Answer::Value(Some((value, version)))) => {
                if let Some(w) = decode(key, value, op.id, &mut observations) {
                    observe(key, *version, w, op.id, &mut observations);
                }
            }
            (Request::Scan { .. }, Answer::Items { items, .. }) => {
                for (key, value, version) in items {
                    if !history.keys.contains(key) {
                        observations.push(format!(
                            "op #{} scanned key {key}, which the workload never wrote",
                            op.id
                        ));
                        continue;
                    }
                    if let Some(w) = decode(key, value, op.id, &mut observations) {
                        observe(key, *version, w, op.id, &mut observations);
                    }
                }
            }
            _ => {}
        }
    }
    let known: BTreeSet<&str> = history.keys.iter().map(String::as_str).collect();
    let mut keys = Keys::over(history.keys.iter().cloned());
    let resolve = |key: &str, pre: Precondition, unresolved: &mut BTreeSet<String>| match pre {
        Precondition::None => Cond::Always,
        Precondition::IfAbsent => Cond::Absent,
        Precondition::IfMatch(v) => match at_version.get(&(key.to_owned(), v)) {
            Some((w, _)) => Cond::Holds(*w),
            None => {
                unresolved.insert(key.to_owned());
                Cond::Absent
            }
        },
    };
    for op in &history.ops {
        let completed = match &op.outcome {
            Outcome::Unknown { .. } => None,
            _ => op.completed,
        };
        let status = match &op.outcome {
            Outcome::Ok(_) => Some(Status::Ok),
            Outcome::Unknown { .. } => Some(Status::Unknown),
            o if o.is_precondition_failed() => Some(Status::ConditionFailed),
            // Refused without effect: nothing to check.
            Outcome::Refused { .. } => None,
        };
        let mut push = |key: &str, keyop: KeyOp<WriteId>| {
            if known.contains(key) {
                keys.add(key, op.invoked, completed, keyop);
            }
        };
        match (&op.request, &op.outcome) {
            (Request::Get { key }, Outcome::Ok(Answer::Value(v))) => {
                let seen = match v {
                    None => None,
                    Some((value, _)) => match WriteId::parse(value) {
                        Some(w) => Some(w),
                        None => continue,
                    },
                };
                push(key, KeyOp::Read(seen));
            }
            (Request::Scan { .. }, Outcome::Ok(Answer::Items { items, complete })) => {
                let mut seen: HashMap<&str, Option<WriteId>> = HashMap::new();
                for (key, value, _) in items {
                    if let Some(w) = WriteId::parse(value) {
                        seen.insert(key.as_str(), Some(w));
                    }
                }
                for key in history.keys.iter().filter(|k| touches(&op.request, k)) {
                    match seen.get(key.as_str()) {
                        Some(w) => push(key, KeyOp::Read(*w)),
                        None if *complete => push(key, KeyOp::Read(None)),
                        None => {}
                    }
                }
            }
            (Request::Put { key, write, pre }, _) => {
                let Some(status) = status else { continue };
                let cond = resolve(key, *pre, &mut unresolved);
                push(
                    key,
                    KeyOp::Write {
                        cond,
                        effect: Some(*write),
                        expect: status.expect(None),
                    },
                );
            }
            (Request::Delete { key, pre }, outcome) => {
                let Some(status) = status else { continue };
                let cond = resolve(key, *pre, &mut unresolved);
                let deleted = match outcome {
                    Outcome::Ok(Answer::Deleted { deleted, .. }) => Some(*deleted),
                    _ => None,
                };
                push(
                    key,
                    KeyOp::Write {
                        cond,
                        effect: None,
                        expect: status.expect(deleted),
                    },
                );
            }
            (Request::Batch { puts, deletes }, _) => {
                let Some(status) = status else { continue };
                for (key, write) in puts {
                    push(
                        key,
                        KeyOp::Write {
                            cond: Cond::Always,
                            effect: Some(*write),
                            expect: status.expect(None),
                        },
                    );
                }
                for key in deletes {
                    push(
                        key,
                        KeyOp::Write {
                            cond: Cond::Always,
                            effect: None,
                            expect: status.expect(None),
                        },
                    );
                }
            }
            _ => {}
        }
    }
    (keys, observations, unresolved)
}

/// Check every key of `history`.
pub fn check(history: &History, opts: CheckOptions) -> LinearizabilityReport {
    let (keys, observations, unresolved) = per_key(history);
    let budget = || Budget {
        steps: None,
        deadline: Some(Instant::now() + opts.deadline),
    };
    let prejudge = |key: &str, ops: &[cairn_lincheck::Timed<Duration, WriteId>]| {
        if unresolved.contains(key) {
            Some(Verdict::Undecided(
                "an If-Match names a version no client observed".into(),
            ))
        } else if ops.len() > opts.max_ops_per_key {
            Some(Verdict::Undecided(format!(
                "{} operations, over the cap of {}",
                ops.len(),
                opts.max_ops_per_key
            )))
        } else {
            None
        }
    };
    let keys = keys.check(opts.threads, budget, prejudge);
    LinearizabilityReport { keys, observations }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::history::Operation;

    fn w(client: u32, seq: u32) -> WriteId {
        WriteId { client, seq }
    }

    struct Builder {
        ops: Vec<Operation>,
    }

    impl Builder {
        fn op(
            &mut self,
            client: u32,
            start: u64,
            end: u64,
            request: Request,
            outcome: Outcome,
        ) -> &mut Self {
            let id = self.ops.len();
            self.ops.push(Operation {
                id,
                client: client as usize,
                via: Some(1),
                request,
                invoked: Duration::from_millis(start),
                completed: Some(Duration::from_millis(end)),
                outcome,
            });
            self
        }

        fn history(&self) -> History {
            History {
                ops: self.ops.clone(),
                keys: vec!["k".into()],
                prefix: String::new(),
                value_bytes: 0,
            }
        }
    }

    fn put(write: WriteId) -> Request {
        Request::Put {
            key: "k".into(),
            write,
            pre: Precondition::None,
        }
    }

    fn get() -> Request {
        Request::Get { key: "k".into() }
    }

    fn read(write: WriteId, version: u64) -> Outcome {
        Outcome::Ok(Answer::Value(Some((write.value(0), version))))
    }

    fn written(version: u64) -> Outcome {
        Outcome::Ok(Answer::Written { version })
    }

    fn verdict(h: &History) -> Verdict {
        let report = check(h, CheckOptions::default());
        assert!(report.observations.is_empty(), "{:?}", report.observations);
        report.keys[0].verdict.clone()
    }

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_a_violation() {
        let mut b = Builder { ops: Vec::new() };
        b.op(0, 0, 10, put(w(0, 1)), written(5))
            .op(0, 20, 30, put(w(0, 2)), written(6))
            .op(1, 40, 50, get(), read(w(0, 1), 5));
        assert!(matches!(verdict(&b.history()), Verdict::Violation));
    }

    #[test]
    fn a_scan_says_nothing_of_keys_outside_its_prefix() {
        // Key "k" is written, then a complete, empty scan of another generation's
        // prefix: it must not count as having seen "k" absent.
        let mut b = Builder { ops: Vec::new() };
        b.op(0, 0, 10, put(w(0, 1)), written(5)).op(
            1,
            20,
            30,
            Request::Scan {
                prefix: "g1/".into(),
            },
            Outcome::Ok(Answer::Items {
                items: Vec::new(),
                complete: true,
            }),
        );
        assert!(matches!(verdict(&b.history()), Verdict::Linearizable));
        // The same scan over the key's own prefix did see it absent: a violation.
        b.ops[1].request = Request::Scan { prefix: "k".into() };
        assert!(matches!(verdict(&b.history()), Verdict::Violation));
    }

    #[test]
    fn concurrent_operations_may_take_either_order() {
        let mut b = Builder { ops: Vec::new() };
        b.op(0, 0, 100, put(w(0, 1)), written(5))
            .op(1, 10, 90, put(w(1, 1)), written(6))
            .op(2, 20, 30, get(), read(w(1, 1), 6))
            .op(2, 40, 50, get(), read(w(0, 1), 5));
        // w(1,1) then w(0,1): legal although w(0,1) got the lower version in this
        // made-up history; versions are not modelled, only values.
        assert_eq!(verdict(&b.history()), Verdict::Linearizable);
    }

    #[test]
    fn an_unknown_write_may_have_happened_or_not() {
        let mut b = Builder { ops: Vec::new() };
        b.op(0, 0, 10, put(w(0, 1)), written(5))
            .op(
                1,
                20,
                30,
                put(w(1, 1)),
                Outcome::Unknown {
                    reason: "timeout".into(),
                },
            )
            .op(2, 40, 50, get(), read(w(0, 1), 5))
            .op(2, 60, 70, get(), read(w(1, 1), 7))
            .op(2, 80, 90, get(), read(w(1, 1), 7));
        assert_eq!(verdict(&b.history()), Verdict::Linearizable);
        // ...but it cannot un-happen.
        b.op(2, 100, 110, get(), read(w(0, 1), 5));
        assert!(matches!(verdict(&b.history()), Verdict::Violation));
    }

    #[test]
    fn conditions_are_modelled_both_ways() {
        let mut b = Builder { ops: Vec::new() };
        b.op(0, 0, 10, put(w(0, 1)), written(5))
            .op(
                0,
                20,
                30,
                Request::Put {
                    key: "k".into(),
                    write: w(0, 2),
                    pre: Precondition::IfMatch(5),
                },
                written(6),
            )
            // A 412 for an If-Match that must have held (nothing else wrote) is wrong.
            .op(
                1,
                40,
                50,
                Request::Put {
                    key: "k".into(),
                    write: w(1, 1),
                    pre: Precondition::IfMatch(6),
                },
                Outcome::Refused {
                    status: 412,
                    code: "precondition_failed".into(),
                },
            );
        assert!(matches!(verdict(&b.history()), Verdict::Violation));
        let mut ok = Builder {
            ops: b.ops[..2].to_vec(),
        };
        ok.op(
            1,
            40,
            50,
            Request::Put {
                key: "k".into(),
                write: w(1, 1),
                pre: Precondition::IfAbsent,
            },
            Outcome::Refused {
                status: 412,
                code: "precondition_failed".into(),
            },
        );
        assert_eq!(verdict(&ok.history()), Verdict::Linearizable);
    }

    #[test]
    fn a_version_seen_with_two_values_is_reported() {
        let mut b = Builder { ops: Vec::new() };
        b.op(0, 0, 10, put(w(0, 1)), written(5))
            .op(1, 20, 30, get(), read(w(9, 9), 5));
        let report = check(&b.history(), CheckOptions::default());
        assert!(!report.observations.is_empty());
    }

    #[test]
    fn the_deadline_makes_a_verdict_undecided() {
        let mut b = Builder { ops: Vec::new() };
        for i in 0..40 {
            b.op(i, 0, 1000, put(w(i, 1)), written(u64::from(i) + 1));
        }
        for i in 0..40 {
            b.op(
                100 + i,
                2000 + u64::from(i) * 10,
                2005 + u64::from(i) * 10,
                get(),
                read(w(i, 1), u64::from(i) + 1),
            );
        }
        let report = check(
            &b.history(),
            CheckOptions {
                deadline: Duration::ZERO,
                ..CheckOptions::default()
            },
        );
        assert!(
            matches!(report.keys[0].verdict, Verdict::Undecided(_)),
            "{:?}",
            report.keys[0]
        );
    }
}
