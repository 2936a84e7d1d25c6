//! The history every harness records and checks: client operations with their
//! intervals ([`Op`]), projected per key onto the shared model ([`KeyHistories`]) and
//! checked key by key.
//!
//! A harness keeps its own vocabulary of what was asked and what came back (HTTP
//! requests and status codes for the chaos harness, replica calls and outcomes for the
//! simulator): those are the `R` and `O` of an [`Op`]. What they share is the record's
//! shape (who asked, when it started, when and whether it was seen to end), the
//! per-key view the model checks, and how a key's verdict is reached and reported, so
//! a fix to one is a fix to both.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{check_key, Budget, KeyOp, Timed, Verdict, Write};

/// One client operation: `request` asked by `client` at `invoked`, ended at
/// `completed` with `outcome`. `completed` is `None` while the operation runs, and
/// for good if the client never saw it end.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Op<T, R, O> {
    /// Its place in the history.
    pub id: usize,
    pub client: usize,
    /// The node the client sent it to, when it went to one node (the chaos harness's
    /// HTTP requests; the simulator's calls follow the leader and leave this `None`).
    pub via: Option<u64>,
    pub request: R,
    pub invoked: T,
    pub completed: Option<T>,
    pub outcome: O,
}

/// A history projected on keys: each key's operations with their intervals, in the
/// model's terms.
#[derive(Debug, Clone)]
pub struct KeyHistories<T, W> {
    keys: BTreeMap<String, Vec<Timed<T, W>>>,
}

impl<T, W> Default for KeyHistories<T, W> {
    fn default() -> Self {
        KeyHistories {
            keys: BTreeMap::new(),
        }
    }
}

/// One key and its operations.
type KeyOps<T, W> = (String, Vec<Timed<T, W>>);

/// What checking one key concluded.
#[derive(Debug, Clone)]
pub struct KeyVerdict {
    pub key: String,
    pub ops: usize,
    /// Operations of unknown outcome among them.
    pub unknown: usize,
    pub verdict: Verdict,
    pub took: Duration,
    /// The key's operations, one a line in invocation order, when the verdict is not
    /// `Linearizable` (what a reader of the failure needs).
    pub shown: Option<String>,
}

impl<T: Ord + Copy + Debug + Send + Sync, W: Write + Send + Sync> KeyHistories<T, W> {
    /// Histories for exactly `keys` (each reported, with or without operations).
    pub fn over(keys: impl IntoIterator<Item = String>) -> Self {
        KeyHistories {
            keys: keys.into_iter().map(|k| (k, Vec::new())).collect(),
        }
    }

    /// Add an operation on `key`; `completed: None` means it was never seen to end.
    pub fn add(&mut self, key: &str, invoked: T, completed: Option<T>, op: KeyOp<W>) {
        let timed = Timed {
            invoked,
            completed,
            op,
        };
        match self.keys.get_mut(key) {
            Some(ops) => ops.push(timed),
            None => {
                self.keys.insert(key.to_owned(), vec![timed]);
            }
        }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Check every key on `threads` threads. `prejudge` may decide a key without a
    /// search (a harness that knows the key's history is incomplete says why it is
    /// undecided); otherwise the search runs within `budget()`. Verdicts come back in
    /// key order.
    pub fn check(
        self,
        threads: usize,
        budget: impl Fn() -> Budget + Sync,
        prejudge: impl Fn(&str, &[Timed<T, W>]) -> Option<Verdict> + Sync,
    ) -> Vec<KeyVerdict> {
        let work: Mutex<Vec<KeyOps<T, W>>> = Mutex::new(self.keys.into_iter().collect());
        let results: Mutex<Vec<KeyVerdict>> = Mutex::new(Vec::new());
        std::thread::scope(|scope| {
            for _ in 0..threads.max(1) {
                scope.spawn(|| loop {
                    let next = work.lock().unwrap_or_else(|p| p.into_inner()).pop();
                    let Some((key, ops)) = next else { return };
                    let started = Instant::now();
                    let verdict = prejudge(&key, &ops).unwrap_or_else(|| check_key(&ops, budget()));
                    let shown = (verdict != Verdict::Linearizable).then(|| describe(&ops));
                    let result = KeyVerdict {
                        unknown: ops.iter().filter(|t| t.completed.is_none()).count(),
                        ops: ops.len(),
                        key,
                        verdict,
                        took: started.elapsed(),
                        shown,
                    };
                    results
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push(result);
                });
            }
        });
        let mut verdicts = results.into_inner().unwrap_or_else(|p| p.into_inner());
        verdicts.sort_by(|a, b| a.key.cmp(&b.key));
        verdicts
    }
}

/// A key's operations, one a line, in invocation order.
fn describe<T: Ord + Copy + Debug, W: Write>(ops: &[Timed<T, W>]) -> String {
    let mut sorted: Vec<&Timed<T, W>> = ops.iter().collect();
    sorted.sort_by_key(|t| t.invoked);
    sorted
        .iter()
        .map(|t| {
            let done = t.completed.map_or("?".to_owned(), |c| format!("{c:?}"));
            format!("  [{:?} .. {done}] {:?}", t.invoked, t.op)
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Cond, Expect};

    fn put(w: u64) -> KeyOp<u64> {
        KeyOp::Write {
            cond: Cond::Always,
            effect: Some(w),
            expect: Expect::Applied { existed: None },
        }
    }

    #[test]
    fn every_key_gets_a_verdict_in_key_order_and_failures_show_their_ops() {
        let mut keys: KeyHistories<u64, u64> = KeyHistories::over(["idle".to_owned()]);
        // A read of 1 after 2 was acknowledged, both after 1 was: stale.
        keys.add("b", 0, Some(1), put(1));
        keys.add("b", 2, Some(3), put(2));
        keys.add("b", 4, Some(5), KeyOp::Read(Some(1)));
        keys.add("a", 0, Some(1), put(7));
        keys.add("a", 2, None, put(8));
        let verdicts = keys.check(2, Budget::default, |key, _| {
            (key == "idle").then(|| Verdict::Undecided("told so".into()))
        });
        let got: Vec<(&str, &Verdict, usize)> = verdicts
            .iter()
            .map(|v| (v.key.as_str(), &v.verdict, v.unknown))
            .collect();
        assert_eq!(
            got,
            vec![
                ("a", &Verdict::Linearizable, 1),
                ("b", &Verdict::Violation, 0),
                ("idle", &Verdict::Undecided("told so".into()), 0),
            ]
        );
        assert!(verdicts[0].shown.is_none());
        let shown = verdicts[1].shown.as_deref().unwrap_or_default();
        assert_eq!(shown.lines().count(), 3, "{shown}");
        assert!(shown
            .lines()
            .last()
            .unwrap_or_default()
            .contains("Read(Some(1))"));
    }
}
