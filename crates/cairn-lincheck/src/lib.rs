//! One model of a key, for every harness that checks Cairn's histories for
//! linearizability: the black-box chaos harness (`cairn-chaos`, histories recorded
//! over HTTP) and the deterministic simulator (`cairn-sim`, histories recorded at the
//! replicas). Each harness turns its own history into per-key operations; the model
//! and the search are here, once, so the two cannot drift apart.
//!
//! Linearizability is compositional, so each key is checked alone. Its state is the
//! write it holds (`Option<W>`: every write puts a unique value, so the value names the
//! write). Operations:
//!
//! - a read that saw write `w` (or nothing) is legal exactly in that state;
//! - a write acknowledged as applied needs its condition to hold (and, if the harness
//!   knows it, the key to have been live or not as the store reported); it sets the
//!   state to its effect (a write, or nothing for a delete);
//! - a write refused for its condition needs the condition to fail (and, if known, the
//!   state to be what the store reported); it changes nothing;
//! - a write of unknown outcome takes effect if its condition holds where it is placed;
//!   its response is put after everything else, so "never happened" is the same as
//!   being placed last and needs no case of its own.
//!
//! The search is the Wing–Gong–Lowe checker of `todc-utils` (a search for a legal
//! order, memoised on the set linearized and the state), bounded by a [`Budget`]: a key
//! that exhausts it is *undecided*, which a harness must report, never count as a pass.
//!
//! The history itself is shared too ([`history`]): the record of client operations
//! ([`Op`]), the per-key view the model checks ([`KeyHistories`]), and how
//! each key's verdict is reached and shown.
//!
//! It must never know how a history was recorded: no HTTP, no replicas, no clocks but
//! the caller's ordering of invocations and completions.

pub mod history;

pub use history::{KeyHistories, KeyVerdict, Op};

use std::cell::Cell;
use std::fmt::Debug;
use std::hash::Hash;
use std::marker::PhantomData;
use std::time::Instant;

use todc_utils::linearizability::history::{Action, History as WglHistory};
use todc_utils::linearizability::WGLChecker;
use todc_utils::specifications::Specification;

/// What a write's id must be: small, comparable, printable.
pub trait Write: Copy + Eq + Hash + Debug + 'static {}
impl<W: Copy + Eq + Hash + Debug + 'static> Write for W {}

/// A write's condition on the key's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cond<W> {
    Always,
    Absent,
    Exists,
    /// The key holds this write.
    Holds(W),
    /// A condition that cannot hold (a version that never held a live value).
    Never,
}

impl<W: Write> Cond<W> {
    pub fn holds(self, state: Option<W>) -> bool {
        match self {
            Cond::Always => true,
            Cond::Absent => state.is_none(),
            Cond::Exists => state.is_some(),
            Cond::Holds(w) => state == Some(w),
            Cond::Never => false,
        }
    }
}

/// How a write ended, as far as the harness knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Expect<W> {
    /// Acknowledged; `existed` is whether the key was live before, if reported.
    Applied { existed: Option<bool> },
    /// Refused because its condition failed; `current` is what the key held then,
    /// if reported.
    Refused { current: Option<Option<W>> },
    /// Outcome unknown (a timeout, a lost connection).
    Unknown,
}

/// One operation on one key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyOp<W> {
    Read(Option<W>),
    Write {
        cond: Cond<W>,
        /// The write it puts, or `None` for a delete.
        effect: Option<W>,
        expect: Expect<W>,
    },
}

/// One operation with its interval, in the caller's time (any ordered stamp); a
/// completion of `None` means "never observed": after everything else.
#[derive(Debug, Clone)]
pub struct Timed<T, W> {
    pub invoked: T,
    pub completed: Option<T>,
    pub op: KeyOp<W>,
}

/// How much search one key may take.
#[derive(Debug, Clone, Copy, Default)]
pub struct Budget {
    /// Steps of the sequential specification (deterministic: the simulator's choice).
    pub steps: Option<u64>,
    /// Wall-clock deadline (the chaos harness's choice, for big real histories).
    pub deadline: Option<Instant>,
}

/// What the checker concluded about one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// No legal order of the key's operations exists.
    Violation,
    /// The search ran out of its budget; the reason says which.
    Undecided(String),
}

thread_local! {
    static STEPS: Cell<u64> = const { Cell::new(0) };
    static STEP_LIMIT: Cell<Option<u64>> = const { Cell::new(None) };
    static DEADLINE: Cell<Option<Instant>> = const { Cell::new(None) };
    static EXHAUSTED: Cell<Option<&'static str>> = const { Cell::new(None) };
}

/// Whether the search must stop: checked on every step of the specification, and
/// failing every step from then on, which unwinds the search quickly.
fn exhausted() -> bool {
    if EXHAUSTED.get().is_some() {
        return true;
    }
    let steps = STEPS.get() + 1;
    STEPS.set(steps);
    if STEP_LIMIT.get().is_some_and(|limit| steps > limit) {
        EXHAUSTED.set(Some("steps"));
    } else if steps % 256 == 1 && DEADLINE.get().is_some_and(|d| Instant::now() > d) {
        EXHAUSTED.set(Some("deadline"));
    }
    EXHAUSTED.get().is_some()
}

/// The sequential specification of one key (see the crate doc).
pub struct KeySpec<W>(PhantomData<W>);

impl<W: Write> Specification for KeySpec<W> {
    type State = Option<W>;
    type Operation = KeyOp<W>;

    fn init() -> Self::State {
        None
    }

    fn apply(op: &KeyOp<W>, state: &Option<W>) -> (bool, Option<W>) {
        if exhausted() {
            return (false, *state);
        }
        match *op {
            KeyOp::Read(seen) => (seen == *state, *state),
            KeyOp::Write {
                cond,
                effect,
                expect,
            } => match expect {
                Expect::Applied { existed } => {
                    let ok = cond.holds(*state) && existed.is_none_or(|e| e == state.is_some());
                    (ok, if ok { effect } else { *state })
                }
                Expect::Refused { current } => {
                    let ok = !cond.holds(*state) && current.is_none_or(|c| c == *state);
                    (ok, *state)
                }
                Expect::Unknown if cond.holds(*state) => (true, effect),
                Expect::Unknown => (true, *state),
            },
        }
    }
}

/// When an event happens: at a stamp, or after everything (an unobserved completion).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum At<T> {
    At(T),
    End,
}

/// Check one key's operations within `budget`.
pub fn check_key<T: Ord + Copy, W: Write>(ops: &[Timed<T, W>], budget: Budget) -> Verdict {
    if ops.is_empty() {
        return Verdict::Linearizable;
    }
    // Calls at invocation, responses at completion; at equal stamps calls first, so
    // ties count as overlapping (the lenient choice).
    let mut events: Vec<(At<T>, u8, usize)> = Vec::with_capacity(ops.len() * 2);
    for (i, t) in ops.iter().enumerate() {
        events.push((At::At(t.invoked), 0, i));
        events.push((t.completed.map_or(At::End, At::At), 1, i));
    }
    events.sort();
    let actions: Vec<(usize, Action<KeyOp<W>>)> = events
        .into_iter()
        .map(|(_, kind, i)| {
            let action = if kind == 0 {
                Action::Call(ops[i].op)
            } else {
                Action::Response(ops[i].op)
            };
            (i, action)
        })
        .collect();
    STEPS.set(0);
    STEP_LIMIT.set(budget.steps);
    DEADLINE.set(budget.deadline);
    EXHAUSTED.set(None);
    let linearizable = WGLChecker::<KeySpec<W>>::is_linearizable(WglHistory::from_actions(actions));
    let exhausted = EXHAUSTED.get();
    STEP_LIMIT.set(None);
    DEADLINE.set(None);
    EXHAUSTED.set(None);
    match (linearizable, exhausted) {
        (true, _) => Verdict::Linearizable,
        (false, Some("steps")) => Verdict::Undecided(format!(
            "the search passed its budget of {} steps",
            budget.steps.unwrap_or_default()
        )),
        (false, Some(_)) => Verdict::Undecided("the search passed its deadline".into()),
        (false, None) => Verdict::Violation,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn op(invoked: u64, completed: Option<u64>, op: KeyOp<u64>) -> Timed<u64, u64> {
        Timed {
            invoked,
            completed,
            op,
        }
    }

    fn put(w: u64, expect: Expect<u64>) -> KeyOp<u64> {
        KeyOp::Write {
            cond: Cond::Always,
            effect: Some(w),
            expect,
        }
    }

    const APPLIED: Expect<u64> = Expect::Applied { existed: None };
    const NO_BUDGET: Budget = Budget {
        steps: None,
        deadline: None,
    };

    #[test]
    fn a_stale_read_after_an_acknowledged_write_is_a_violation() {
        let ops = [
            op(0, Some(10), put(1, APPLIED)),
            op(20, Some(30), put(2, APPLIED)),
            op(40, Some(50), KeyOp::Read(Some(1))),
        ];
        assert_eq!(check_key(&ops, NO_BUDGET), Verdict::Violation);
    }

    #[test]
    fn an_unknown_write_may_happen_late_but_never_un_happen() {
        let mut ops = vec![
            op(0, Some(10), put(1, APPLIED)),
            op(20, None, put(2, Expect::Unknown)),
            op(40, Some(50), KeyOp::Read(Some(1))),
            op(60, Some(70), KeyOp::Read(Some(2))),
        ];
        assert_eq!(check_key(&ops, NO_BUDGET), Verdict::Linearizable);
        ops.push(op(80, Some(90), KeyOp::Read(Some(1))));
        assert_eq!(check_key(&ops, NO_BUDGET), Verdict::Violation);
    }

    #[test]
    fn conditions_and_reported_states_are_checked_both_ways() {
        let refused_absent = KeyOp::Write {
            cond: Cond::Absent,
            effect: Some(2),
            expect: Expect::Refused {
                current: Some(Some(1)),
            },
        };
        let ok = [
            op(
                0,
                Some(10),
                put(
                    1,
                    Expect::Applied {
                        existed: Some(false),
                    },
                ),
            ),
            op(20, Some(30), refused_absent),
        ];
        assert_eq!(check_key(&ok, NO_BUDGET), Verdict::Linearizable);
        // Refused for a condition that must have held: wrong.
        let wrong = [op(20, Some(30), refused_absent)];
        assert_eq!(check_key(&wrong, NO_BUDGET), Verdict::Violation);
        // Acknowledged as a write over a live key where none can have been.
        let existed = [op(
            0,
            Some(10),
            put(
                1,
                Expect::Applied {
                    existed: Some(true),
                },
            ),
        )];
        assert_eq!(check_key(&existed, NO_BUDGET), Verdict::Violation);
    }

    #[test]
    fn a_search_over_budget_is_undecided_never_a_pass() {
        let mut ops: Vec<_> = (0..12).map(|w| op(0, Some(100), put(w, APPLIED))).collect();
        ops.push(op(200, Some(210), KeyOp::Read(Some(99))));
        let budget = Budget {
            steps: Some(50),
            deadline: None,
        };
        assert!(matches!(check_key(&ops, budget), Verdict::Undecided(_)));
        assert_eq!(check_key(&ops, NO_BUDGET), Verdict::Violation);
    }
}
