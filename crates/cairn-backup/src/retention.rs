//! Retention: which backups of a destination to delete, and in which order.
//!
//! This module owns the rule that turns a schedule's `keep_last` / `keep_within`
//! into a [`Plan`]. It is pure logic over [`BackupSummary`]s (read from the
//! manifests by the caller), so the meta leader can compute a plan, log it and then
//! delete, and tests can check the rule on any history.
//!
//! The rule, in order:
//!
//! 1. **Selected**: a backup among the `keep_last` newest (by `time_ms`, ties broken
//!    by id) or younger than `keep_within` (`now - time < keep_within`; a backup
//!    from the future counts as age 0). With neither set, every backup is selected.
//!    The newest backup is always selected, so retention never empties a
//!    destination.
//! 2. **Kept**: the selected backups and, transitively through `parent`, every
//!    ancestor of a kept backup that is still in the list. An incremental is useless
//!    without its chain, so a parent that a kept incremental needs is never deleted,
//!    whatever the policy says.
//! 3. **Deleted**: everything else.
//!
//! A backup whose parent is not in the list (already deleted, or never written) is a
//! broken chain: it is still kept or deleted by the rules above, and nothing panics.
//! Cyclic parent links (only possible from corrupt manifests) are tolerated too.
//!
//! [`Plan::delete`] is ordered **children before parents**: a caller that deletes in
//! that order and is interrupted midway never leaves a backup whose parent was
//! deleted before it, so every backup still present still restores.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::time::Duration;

/// What retention needs to know about one backup (from its manifest).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackupSummary {
    /// The backup's id.
    pub id: String,
    /// When its snapshot was taken, in milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The backup this one is an incremental of; `None` for a full backup.
    pub parent: Option<String>,
}

/// How many backups to keep. Both unset: keep everything.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the `keep_last` newest backups.
    pub keep_last: Option<u32>,
    /// Keep every backup younger than this.
    pub keep_within: Option<Duration>,
}

/// The outcome of [`plan`]: every backup id exactly once, in one of the two lists.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// The backups to keep, sorted by id.
    pub keep: Vec<String>,
    /// The backups to delete, in the order to delete them: every backup comes before
    /// its parent (deeper in its chain first; ties by id). Deleting in this order is
    /// safe to interrupt at any point.
    pub delete: Vec<String>,
}

impl Policy {
    /// Whether this policy keeps everything (neither limit set).
    pub fn keeps_everything(&self) -> bool {
        self.keep_last.is_none() && self.keep_within.is_none()
    }
}

/// Decides which of `backups` to keep and which to delete at `now_ms` (milliseconds
/// since the Unix epoch); see the module docs for the rule.
///
/// Ids are expected to be unique. An id listed more than once is treated as one
/// backup: it is kept if any of its entries is selected, and all its entries'
/// parents are its ancestors.
pub fn plan(backups: &[BackupSummary], policy: &Policy, now_ms: u64) -> Plan {
    // id -> the parents named by its entries (usually exactly zero or one).
    let mut parents: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
    for b in backups {
        let entry = parents.entry(b.id.as_str()).or_default();
        if let Some(p) = &b.parent {
            entry.push(p.as_str());
        }
    }

    let mut kept: HashSet<&str> = selected(backups, policy, now_ms);

    // Every ancestor of a kept backup that is still in the list is kept too.
    let mut stack: Vec<&str> = kept.iter().copied().collect();
    while let Some(id) = stack.pop() {
        for &p in parents.get(id).into_iter().flatten() {
            if parents.contains_key(p) && kept.insert(p) {
                stack.push(p);
            }
        }
    }

    let keep: Vec<String> = parents
        .keys()
        .filter(|id| kept.contains(*id))
        .map(|id| id.to_string())
        .collect();
    let depth = chain_depths(&parents);
    let mut delete: Vec<&str> = parents
        .keys()
        .copied()
        .filter(|id| !kept.contains(id))
        .collect();
    delete.sort_by(|a, b| {
        let da = depth.get(a).copied().unwrap_or(0);
        let db = depth.get(b).copied().unwrap_or(0);
        db.cmp(&da).then_with(|| a.cmp(b))
    });
    Plan {
        keep,
        delete: delete.into_iter().map(str::to_string).collect(),
    }
}

/// Step 1 of the rule: the ids the policy selects (always including the newest).
fn selected<'a>(backups: &'a [BackupSummary], policy: &Policy, now_ms: u64) -> HashSet<&'a str> {
    if policy.keeps_everything() {
        return backups.iter().map(|b| b.id.as_str()).collect();
    }
    // Newest first: by time, then by id.
    let mut newest_first: Vec<&BackupSummary> = backups.iter().collect();
    newest_first.sort_by(|a, b| (b.time_ms, &b.id).cmp(&(a.time_ms, &a.id)));

    let mut chosen = HashSet::new();
    if let Some(newest) = newest_first.first() {
        chosen.insert(newest.id.as_str());
    }
    if let Some(n) = policy.keep_last {
        let n = usize::try_from(n).unwrap_or(usize::MAX);
        chosen.extend(newest_first.iter().take(n).map(|b| b.id.as_str()));
    }
    if let Some(within) = policy.keep_within {
        let within_ms = u64::try_from(within.as_millis()).unwrap_or(u64::MAX);
        chosen.extend(
            backups
                .iter()
                .filter(|b| now_ms.saturating_sub(b.time_ms) < within_ms)
                .map(|b| b.id.as_str()),
        );
    }
    chosen
}

/// Each backup's depth in its chain: 0 for a full backup (or one whose parent is
/// gone), else one more than its deepest parent in the list. A parent link that
/// closes a cycle is ignored. Iterative, so a long chain cannot overflow the stack.
fn chain_depths<'a>(parents: &BTreeMap<&'a str, Vec<&'a str>>) -> HashMap<&'a str, u64> {
    let no_parents: &[&str] = &[];
    let parents_of = |id: &str| parents.get(id).map(Vec::as_slice).unwrap_or(no_parents);
    let mut depth: HashMap<&str, u64> = HashMap::with_capacity(parents.len());
    let mut in_progress: BTreeSet<&str> = BTreeSet::new();
    for &start in parents.keys() {
        if depth.contains_key(start) {
            continue;
        }
        let mut stack = vec![start];
        in_progress.insert(start);
        while let Some(&id) = stack.last() {
            let pending = parents_of(id).iter().copied().find(|p| {
                parents.contains_key(p) && !depth.contains_key(p) && !in_progress.contains(p)
            });
            if let Some(p) = pending {
                in_progress.insert(p);
                stack.push(p);
                continue;
            }
            // Parents still in progress close a cycle: they have no depth yet and
            // are skipped here.
            let d = parents_of(id)
                .iter()
                .filter_map(|p| depth.get(p))
                .map(|d| d + 1)
                .max()
                .unwrap_or(0);
            depth.insert(id, d);
            in_progress.remove(id);
            stack.pop();
        }
    }
    depth
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const HOUR: u64 = 3_600_000;

    fn full(id: &str, time_ms: u64) -> BackupSummary {
        BackupSummary {
            id: id.to_string(),
            time_ms,
            parent: None,
        }
    }

    fn incr(id: &str, time_ms: u64, parent: &str) -> BackupSummary {
        BackupSummary {
            id: id.to_string(),
            time_ms,
            parent: Some(parent.to_string()),
        }
    }

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    fn keep_last(n: u32) -> Policy {
        Policy {
            keep_last: Some(n),
            keep_within: None,
        }
    }

    #[test]
    fn empty_list_empty_plan() {
        assert_eq!(plan(&[], &keep_last(3), 0), Plan::default());
    }

    #[test]
    fn no_policy_keeps_everything() {
        let backups = [full("a", 1), incr("b", 2, "a"), full("c", 3)];
        let p = plan(&backups, &Policy::default(), 1_000 * HOUR);
        assert_eq!(p.keep, ids(&["a", "b", "c"]));
        assert!(p.delete.is_empty());
    }

    #[test]
    fn keep_last_keeps_the_newest_and_their_chains() {
        // Two chains: f1 <- i1 <- i2, f2 <- i3 <- i4.
        let backups = [
            full("f1", HOUR),
            incr("i1", 2 * HOUR, "f1"),
            incr("i2", 3 * HOUR, "i1"),
            full("f2", 4 * HOUR),
            incr("i3", 5 * HOUR, "f2"),
            incr("i4", 6 * HOUR, "i3"),
        ];
        let p = plan(&backups, &keep_last(1), 7 * HOUR);
        // i4 is selected; i3 and f2 are kept as its ancestors.
        assert_eq!(p.keep, ids(&["f2", "i3", "i4"]));
        // Children before parents.
        assert_eq!(p.delete, ids(&["i2", "i1", "f1"]));

        let p = plan(&backups, &keep_last(4), 7 * HOUR);
        // i2 is the 4th newest, so the whole first chain stays.
        assert_eq!(p.keep, ids(&["f1", "f2", "i1", "i2", "i3", "i4"]));
    }

    #[test]
    fn keep_within_is_strictly_younger() {
        let backups = [full("a", 0), full("b", HOUR), full("c", 2 * HOUR)];
        let policy = Policy {
            keep_last: None,
            keep_within: Some(Duration::from_millis(HOUR)),
        };
        // At 2h: b is exactly 1h old (not younger), c is 0h old.
        let p = plan(&backups, &policy, 2 * HOUR);
        assert_eq!(p.keep, ids(&["c"]));
        assert_eq!(p.delete, ids(&["a", "b"]));
        let p = plan(&backups, &policy, 2 * HOUR - 1);
        assert_eq!(p.keep, ids(&["b", "c"]));
    }

    #[test]
    fn policies_combine_as_a_union() {
        let backups = [full("a", 0), full("b", HOUR), full("c", 10 * HOUR)];
        let policy = Policy {
            keep_last: Some(1),
            keep_within: Some(Duration::from_millis(10 * HOUR)),
        };
        let p = plan(&backups, &policy, 10 * HOUR + 1);
        assert_eq!(p.keep, ids(&["b", "c"]));
        assert_eq!(p.delete, ids(&["a"]));
    }

    #[test]
    fn newest_is_kept_even_when_nothing_selects_it() {
        let backups = [full("a", 0), incr("b", HOUR, "a")];
        let policy = Policy {
            keep_last: Some(0),
            keep_within: Some(Duration::from_millis(1)),
        };
        let p = plan(&backups, &policy, 1_000 * HOUR);
        assert_eq!(p.keep, ids(&["a", "b"]));
        assert!(p.delete.is_empty());
    }

    #[test]
    fn ties_in_time_are_broken_by_id() {
        let backups = [full("a", HOUR), full("c", HOUR), full("b", HOUR)];
        let p = plan(&backups, &keep_last(2), HOUR);
        assert_eq!(p.keep, ids(&["b", "c"]));
        assert_eq!(p.delete, ids(&["a"]));
    }

    #[test]
    fn broken_chains_are_handled() {
        // "gone" was deleted already; x and y hang off it.
        let backups = [
            incr("x", HOUR, "gone"),
            incr("y", 2 * HOUR, "x"),
            full("z", 3 * HOUR),
        ];
        let p = plan(&backups, &keep_last(1), 3 * HOUR);
        assert_eq!(p.keep, ids(&["z"]));
        assert_eq!(p.delete, ids(&["y", "x"]));
        let p = plan(&backups, &keep_last(2), 3 * HOUR);
        assert_eq!(p.keep, ids(&["x", "y", "z"]));
    }

    #[test]
    fn cycles_and_duplicates_do_not_panic() {
        let backups = [
            incr("a", HOUR, "b"),
            incr("b", 2 * HOUR, "a"),
            incr("self", 3 * HOUR, "self"),
            full("n", 4 * HOUR),
            full("n", 0),
        ];
        let p = plan(&backups, &keep_last(1), 4 * HOUR);
        assert_eq!(p.keep, ids(&["n"]));
        let mut deleted = p.delete.clone();
        deleted.sort();
        assert_eq!(deleted, ids(&["a", "b", "self"]));
        let p = plan(&backups, &keep_last(3), 4 * HOUR);
        // b is selected; its cycle partner a is its ancestor.
        assert_eq!(p.keep, ids(&["a", "b", "n", "self"]));
    }

    #[test]
    fn a_long_chain_does_not_overflow_the_stack() {
        let n = 20_000u64;
        let mut backups = vec![full("0", 0)];
        backups.extend((1..n).map(|i| incr(&i.to_string(), i, &(i - 1).to_string())));
        let p = plan(&backups, &keep_last(1), n);
        assert_eq!(p.keep.len(), n as usize);
        let mut backups = vec![full("0", 0)];
        backups.extend((1..n).map(|i| incr(&i.to_string(), i, &(i - 1).to_string())));
        backups.push(full("new", n));
        let p = plan(&backups, &keep_last(1), n);
        assert_eq!(p.keep, ids(&["new"]));
        assert_eq!(p.delete.first().map(String::as_str), Some("19999"));
        assert_eq!(p.delete.last().map(String::as_str), Some("0"));
    }

    /// A random forest: each backup is a full, an incremental of an earlier backup,
    /// or an incremental of one that is gone; times never decrease (ties allowed).
    fn forest() -> impl Strategy<Value = Vec<BackupSummary>> {
        prop::collection::vec(
            (
                0u64..3 * HOUR,
                0u8..10,
                any::<prop::sample::Index>(),
                0u16..50,
            ),
            0..30,
        )
        .prop_map(|steps| {
            let mut time = 1_000 * HOUR;
            let mut out: Vec<BackupSummary> = Vec::with_capacity(steps.len());
            for (i, (dt, kind, pick, tag)) in steps.into_iter().enumerate() {
                time += dt;
                // Ids are unique (the index) but not ordered by time (the tag).
                let id = format!("{tag:02}-{i}");
                let parent = match kind {
                    0..=2 => None,
                    3 => Some(format!("gone-{i}")),
                    _ if out.is_empty() => None,
                    _ => Some(out[pick.index(out.len())].id.clone()),
                };
                out.push(BackupSummary {
                    id,
                    time_ms: time,
                    parent,
                });
            }
            out
        })
    }

    fn policy() -> impl Strategy<Value = Policy> {
        (
            prop::option::of(0u32..12),
            prop::option::of((0u64..40 * HOUR).prop_map(Duration::from_millis)),
        )
            .prop_map(|(keep_last, keep_within)| Policy {
                keep_last,
                keep_within,
            })
    }

    proptest! {
        #[test]
        fn plan_upholds_its_promises(
            backups in forest(),
            policy in policy(),
            later in 0u64..50 * HOUR,
        ) {
            let now = backups.last().map_or(0, |b| b.time_ms) + later;
            let p = plan(&backups, &policy, now);
            let by_id: HashMap<&str, &BackupSummary> =
                backups.iter().map(|b| (b.id.as_str(), b)).collect();

            // keep ∪ delete = all, disjoint; keep sorted by id.
            let keep: BTreeSet<&str> = p.keep.iter().map(String::as_str).collect();
            let delete: BTreeSet<&str> = p.delete.iter().map(String::as_str).collect();
            prop_assert_eq!(keep.len(), p.keep.len());
            prop_assert_eq!(delete.len(), p.delete.len());
            prop_assert!(keep.is_disjoint(&delete));
            let all: BTreeSet<&str> = by_id.keys().copied().collect();
            let union: BTreeSet<&str> = keep.union(&delete).copied().collect();
            prop_assert_eq!(&union, &all);
            prop_assert!(p.keep.windows(2).all(|w| w[0] < w[1]));

            // Every kept backup's ancestors (still listed) are kept.
            for id in &keep {
                let mut cur = by_id[id];
                while let Some(parent) = cur.parent.as_deref().and_then(|p| by_id.get(p)) {
                    prop_assert!(keep.contains(parent.id.as_str()), "{} needs {}", id, parent.id);
                    cur = parent;
                }
            }

            // Every backup the policy selects is kept, and so is the newest.
            let mut newest_first: Vec<&BackupSummary> = backups.iter().collect();
            newest_first.sort_by(|a, b| (b.time_ms, &b.id).cmp(&(a.time_ms, &a.id)));
            if let Some(newest) = newest_first.first() {
                prop_assert!(keep.contains(newest.id.as_str()));
            }
            let mut selected: BTreeSet<&str> = BTreeSet::new();
            if policy.keeps_everything() {
                selected.extend(all.iter().copied());
            }
            if let Some(n) = policy.keep_last {
                selected.extend(newest_first.iter().take(n as usize).map(|b| b.id.as_str()));
            }
            if let Some(within) = policy.keep_within {
                selected.extend(backups.iter()
                    .filter(|b| u128::from(now - b.time_ms) < within.as_millis())
                    .map(|b| b.id.as_str()));
            }
            prop_assert!(selected.is_subset(&keep));

            // Nothing is kept without a reason: selected, newest, or an ancestor.
            if let Some(newest) = newest_first.first() {
                selected.insert(newest.id.as_str());
            }
            for id in &keep {
                let needed = selected.contains(id)
                    || keep.iter().any(|k| {
                        let mut cur = by_id[k];
                        while let Some(parent) = cur.parent.as_deref().and_then(|p| by_id.get(p)) {
                            if parent.id == *id {
                                return true;
                            }
                            cur = parent;
                        }
                        false
                    });
                prop_assert!(needed, "{} kept for no reason", id);
            }

            // Children are deleted before their parents.
            let position: HashMap<&str, usize> =
                p.delete.iter().enumerate().map(|(i, id)| (id.as_str(), i)).collect();
            for (i, id) in p.delete.iter().enumerate() {
                if let Some(parent_pos) = by_id[id.as_str()].parent.as_deref().and_then(|p| position.get(p)) {
                    prop_assert!(i < *parent_pos, "{} deleted after its parent", id);
                }
            }

            // No policy: nothing is deleted.
            if policy.keeps_everything() {
                prop_assert!(p.delete.is_empty());
            }
        }
    }
}
