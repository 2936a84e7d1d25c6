//! Snapshots during faults, and their check against the recorded history.
//!
//! A [`SnapshotTaker`] asks a random node for a snapshot every 1–2 s (seeded) while
//! the workload and the faults run, recording when each request was sent and
//! answered. After the run every completed snapshot, these and the cluster's own
//! automatic ones, is checked against the four guarantees (docs/ARCHITECTURE.md, "Guarantees"):
//!
//! 1. every write acknowledged before the snapshot was requested is in it;
//! 2. no write sent after it completed is in it;
//! 3. if W1 was acknowledged, or read, before W2 was sent, W2 in S implies W1 in S;
//! 4. a batch is in it entirely or not at all.
//!
//! "W in S" is decided the way Cairn defines it: W's version (its log index) is below
//! the cut of W's shard. A write's version is known from its acknowledgement, or, for
//! one of unknown outcome, from the replicas' version history (its unique value
//! names it). Guarantees 1 and 2 need the request's times, so they are checked on the
//! harness's own snapshots; 3 and 4 on every snapshot.
//!
//! Each snapshot is also **read back** with point-in-time scans (`?snapshot=ID`) on a
//! random node: the answer must be exactly the state the replicas' version history
//! gives at every shard's cut, and show each batch whole or not at all (the read-back
//! is checked for 4 on its own, not only through the history).

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cairn_client::api::SnapshotInfo;
use cairn_client::{Client, ReadAt};
use cairn_store::{shard_for_key, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::history::{compact, Answer, History, Outcome, Request, WriteId};
use crate::replicas::VersionIndex;

/// How one snapshot request ended.
#[derive(Debug, Clone)]
pub enum SnapshotResult {
    Done(SnapshotInfo),
    /// `snapshot_aborted`: nothing can read it.
    Aborted,
    /// Any other answer or failure.
    Failed(String),
}

/// One snapshot request.
#[derive(Debug, Clone)]
pub struct SnapshotAttempt {
    pub node: NodeId,
    pub invoked: Duration,
    pub completed: Duration,
    pub result: SnapshotResult,
}

/// Takes snapshots in the background until stopped.
pub struct SnapshotTaker {
    task: JoinHandle<Vec<SnapshotAttempt>>,
    stop: CancellationToken,
}

impl SnapshotTaker {
    pub fn start(
        endpoints: Vec<(NodeId, Client)>,
        every: (Duration, Duration),
        clock: Instant,
        seed: u64,
    ) -> SnapshotTaker {
        let stop = CancellationToken::new();
        let token = stop.clone();
        let task = tokio::spawn(
            async move {
                let mut rng = StdRng::seed_from_u64(seed);
                let mut attempts = Vec::new();
                while !endpoints.is_empty() {
                    let pause = rng.gen_range(every.0..=every.1);
                    tokio::select! {
                        _ = token.cancelled() => break,
                        _ = tokio::time::sleep(pause) => {}
                    }
                    let (node, client) = &endpoints[rng.gen_range(0..endpoints.len())];
                    let invoked = clock.elapsed();
                    let result = match client.create_snapshot(None).await {
                        Ok(info) => SnapshotResult::Done(info),
                        Err(e) if e.code() == Some("snapshot_aborted") => SnapshotResult::Aborted,
                        Err(e) => SnapshotResult::Failed(e.to_string()),
                    };
                    attempts.push(SnapshotAttempt {
                        node: *node,
                        invoked,
                        completed: clock.elapsed(),
                        result,
                    });
                }
                attempts
            }
            .instrument(tracing::info_span!("snapshot_taker")),
        );
        SnapshotTaker { task, stop }
    }

    /// Stop after the request in flight, and return every attempt.
    pub async fn stop(self) -> Vec<SnapshotAttempt> {
        self.stop.cancel();
        self.task.await.unwrap_or_default()
    }
}

/// What the snapshot checks covered.
#[derive(Debug, Clone, Default)]
pub struct SnapshotReport {
    /// Requests made by the harness, and how they ended.
    pub requested: usize,
    pub completed: usize,
    pub aborted: usize,
    pub failed: usize,
    /// Snapshots checked against all four guarantees (the harness's own).
    pub checked_all: usize,
    /// Automatic snapshots checked against 3 and 4 and read back.
    pub checked_auto: usize,
    /// Writes found inside the checked snapshots, summed.
    pub writes_inside: usize,
    /// Snapshots that could not be read back (recorded, not a pass).
    pub unreadable: Vec<String>,
    pub violations: Vec<String>,
}

/// A write with a known version: what the checks reason about.
#[derive(Debug, Clone)]
struct KnownWrite {
    op: usize,
    key: String,
    shard: u32,
    version: u64,
    invoked: Duration,
    /// When a client first knew it happened: its acknowledgement, or a read of it.
    known_at: Option<Duration>,
    /// When it was acknowledged.
    acked_at: Option<Duration>,
}

/// Batch op id -> its keys, with the write of each put (`None`: a delete) and the
/// version it was written at (one per shard).
type Batches = HashMap<usize, Vec<(String, Option<WriteId>, u64)>>;

fn known_writes(
    history: &History,
    index: &VersionIndex,
    shards: u32,
) -> (Vec<KnownWrite>, Batches) {
    let found = index.write_versions();
    // First read of each write's value.
    let mut first_read: HashMap<WriteId, Duration> = HashMap::new();
    for op in &history.ops {
        let Outcome::Ok(answer) = &op.outcome else {
            continue;
        };
        // Every operation this harness records has ended (see `Operation`).
        let Some(completed) = op.completed else {
            continue;
        };
        let mut note = |value: &[u8]| {
            if let Some(w) = WriteId::parse(value) {
                let t = first_read.entry(w).or_insert(completed);
                *t = (*t).min(completed);
            }
        };
        match answer {
            Answer::Value(Some((value, _))) => note(value),
            Answer::Items { items, .. } => items.iter().for_each(|(_, v, _)| note(v)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    let mut batches: Batches = HashMap::new();
    for op in &history.ops {
        let acked = match &op.outcome {
            Outcome::Ok(_) => op.completed,
            _ => None,
        };
        let mut push = |key: &str, version: u64, write: Option<WriteId>| {
            let read = write.and_then(|w| first_read.get(&w).copied());
            let known_at = match (acked, read) {
                (Some(a), Some(r)) => Some(a.min(r)),
                (a, r) => a.or(r),
            };
            out.push(KnownWrite {
                op: op.id,
                key: key.to_owned(),
                shard: shard_for_key(key.as_bytes(), shards),
                version,
                invoked: op.invoked,
                known_at,
                acked_at: acked,
            });
        };
        match (&op.request, &op.outcome) {
            (Request::Put { key, write, .. }, Outcome::Ok(Answer::Written { version })) => {
                push(key, *version, Some(*write))
            }
            (Request::Put { key, write, .. }, Outcome::Unknown { .. }) => {
                if let Some((k, version)) = found.get(write) {
                    if k == key {
                        push(key, *version, Some(*write));
                    }
                }
            }
            (Request::Delete { key, .. }, Outcome::Ok(Answer::Deleted { version, .. })) => {
                push(key, *version, None)
            }
            (Request::Batch { puts, .. }, outcome) => {
                // Each op's version: acknowledged, or (unknown outcome) where the
                // replicas hold its value, one version per shard.
                let versions: Vec<Option<u64>> = match outcome {
                    Outcome::Ok(Answer::Batched { versions }) => versions.clone(),
                    Outcome::Unknown { .. } => puts
                        .iter()
                        .map(|(_, w)| found.get(w).map(|(_, v)| *v))
                        .collect(),
                    _ => continue,
                };
                let mut members = Vec::new();
                for (key, write, version) in op.request.batch_ops(&versions) {
                    let Some(version) = version else { continue };
                    // An unknown batch's deletes have no known version.
                    if write.is_none() && acked.is_none() {
                        continue;
                    }
                    push(key, version, write);
                    members.push((key.to_owned(), write, version));
                }
                if !members.is_empty() {
                    batches.insert(op.id, members);
                }
            }
            _ => {}
        }
    }
    (out, batches)
}

/// What the snapshot checks work from.
pub struct SnapshotInputs<'a> {
    pub history: &'a History,
    /// The harness's requests.
    pub taken: &'a [SnapshotAttempt],
    /// Every completed snapshot the cluster lists (the harness's included).
    pub listed: &'a [SnapshotInfo],
    /// The snapshot taken before the workload (skipped: it holds nothing).
    pub base: u64,
    /// The replicas' version history.
    pub index: &'a VersionIndex,
    pub shards: u32,
    /// Nodes to read snapshots back from.
    pub readers: &'a [(NodeId, Client)],
    /// Picks the node of each read-back.
    pub seed: u64,
}

/// Check every snapshot (see the module doc).
pub async fn check(inputs: SnapshotInputs<'_>) -> SnapshotReport {
    let SnapshotInputs {
        history,
        taken,
        listed,
        base,
        index,
        shards,
        readers,
        seed,
    } = inputs;
    let mut report = SnapshotReport {
        requested: taken.len(),
        ..SnapshotReport::default()
    };
    let mut ours: BTreeMap<u64, &SnapshotAttempt> = BTreeMap::new();
    for attempt in taken {
        match &attempt.result {
            SnapshotResult::Done(info) => {
                report.completed += 1;
                ours.insert(info.id, attempt);
            }
            SnapshotResult::Aborted => report.aborted += 1,
            SnapshotResult::Failed(_) => report.failed += 1,
        }
    }
    let mut snapshots: BTreeMap<u64, SnapshotInfo> = listed
        .iter()
        .filter(|s| s.id > base)
        .map(|s| (s.id, s.clone()))
        .collect();
    for attempt in ours.values() {
        if let SnapshotResult::Done(info) = &attempt.result {
            if let std::collections::btree_map::Entry::Vacant(slot) = snapshots.entry(info.id) {
                report.violations.push(format!(
                    "snapshot {} completed (requested at {:.3}s on node {}) but is not listed",
                    info.id,
                    attempt.invoked.as_secs_f64(),
                    attempt.node
                ));
                slot.insert(info.clone());
            }
        }
    }
    let (writes, batches) = known_writes(history, index, shards);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5A5A);
    for (id, info) in &snapshots {
        let (count, mut v) = guarantees(*id, info, ours.get(id).copied(), &writes);
        report.writes_inside += count;
        // The read-back, and 4 on it.
        let mut order: Vec<usize> = (0..readers.len()).collect();
        order.sort_by_key(|_| rng.gen::<u32>());
        let mut read = None;
        let mut errors = Vec::new();
        for i in order {
            let (node, client) = &readers[i];
            match client
                .scan_all_at(history.prefix.as_bytes(), &ReadAt::id(*id))
                .await
            {
                Ok(got) if got.snapshot == *id => {
                    read = Some((*node, got.value));
                    break;
                }
                Ok(got) => v.push(format!(
                    "a read of snapshot {id} was served by snapshot {}",
                    got.snapshot
                )),
                Err(e) => errors.push(format!("node {node}: {e}")),
            }
        }
        let Some((node, entries)) = read else {
            report
                .unreadable
                .push(format!("snapshot {id}: {}", errors.join("; ")));
            report.violations.extend(v);
            continue;
        };
        let entries: Vec<(Vec<u8>, Vec<u8>, u64)> = entries
            .into_iter()
            .map(|(k, value, version)| (k, compact(&value, history.value_bytes, None), version))
            .collect();
        let got: HashMap<&str, (&[u8], u64)> = entries
            .iter()
            .map(|(k, value, version)| {
                (
                    std::str::from_utf8(k).unwrap_or(""),
                    (value.as_slice(), *version),
                )
            })
            .collect();
        for key in &history.keys {
            let shard = shard_for_key(key.as_bytes(), shards);
            let Some(&cut) = info.cuts.get(&shard) else {
                v.push(format!("snapshot {id} has no cut for shard {shard}"));
                continue;
            };
            let seen = got
                .get(key.as_str())
                .map(|(value, version)| (value.to_vec(), *version));
            if let Some((_, version)) = &seen {
                if *version >= cut {
                    v.push(format!("snapshot {id} read on node {node}: {key} at version {version}, not below its cut {cut}"));
                }
            }
            match index.state_at(key, shard, cut.saturating_sub(1)) {
                Ok(expected) if expected == seen => {}
                Ok(expected) => v.push(format!(
                    "snapshot {id} read on node {node}: {key} is {}, but the replicas' history at cut {cut} gives {}",
                    show(&seen), show(&expected)
                )),
                Err(why) => report.unreadable.push(format!("snapshot {id}: {why}")),
            }
        }
        for (op, members) in &batches {
            // 4, by the cuts: every op of the batch inside, or none.
            let inside: Vec<bool> = members
                .iter()
                .map(|(key, _, version)| {
                    let shard = shard_for_key(key.as_bytes(), shards);
                    info.cuts.get(&shard).is_some_and(|&cut| *version < cut)
                })
                .collect();
            if inside.iter().any(|&i| i) && inside.iter().any(|&i| !i) {
                v.push(format!(
                    "snapshot {id} (cuts {:?}) splits batch op #{op}: {:?}: guarantee 4",
                    info.cuts,
                    members
                        .iter()
                        .zip(&inside)
                        .map(|((k, _, version), i)| format!(
                            "{k}@{version}{}",
                            if *i { " in" } else { " out" }
                        ))
                        .collect::<Vec<_>>()
                ));
            }
            // 4, by the read-back: per put, does the snapshot show it (or a later
            // write) or an earlier state? A key absent there says nothing (a later
            // delete would hide the batch's value), so it is left out.
            let flags: Vec<bool> = members
                .iter()
                .filter(|(_, w, _)| w.is_some())
                .filter_map(|(key, _, version)| got.get(key.as_str()).map(|(_, v)| *v >= *version))
                .collect();
            if flags.iter().any(|&f| f) && flags.iter().any(|&f| !f) {
                v.push(format!(
                    "snapshot {id} read on node {node} shows batch op #{op} in part: guarantee 4"
                ));
            }
        }
        if ours.contains_key(id) {
            report.checked_all += 1;
        } else {
            report.checked_auto += 1;
        }
        report.violations.extend(v);
    }
    report
}

/// Guarantees 1 and 2 (when the request's times are known: `attempt`) and 3 for one
/// snapshot, from the writes whose versions are known. Returns how many of them are
/// inside, and the violations.
fn guarantees(
    id: u64,
    info: &SnapshotInfo,
    attempt: Option<&SnapshotAttempt>,
    writes: &[KnownWrite],
) -> (usize, Vec<String>) {
    let inside = |w: &KnownWrite| info.cuts.get(&w.shard).is_some_and(|&cut| w.version < cut);
    let mut v = Vec::new();
    let mut count = 0;
    // 1 and 2, with the request's times.
    if let Some(attempt) = attempt {
        for w in writes {
            let is_in = inside(w);
            count += usize::from(is_in);
            if !is_in && w.acked_at.is_some_and(|a| a < attempt.invoked) {
                v.push(format!(
                    "snapshot {id} (requested at {:.3}s) misses op #{} on {} (version {}, cut {:?}), acknowledged at {:.3}s: guarantee 1",
                    attempt.invoked.as_secs_f64(), w.op, w.key, w.version, info.cuts.get(&w.shard),
                    w.acked_at.unwrap_or_default().as_secs_f64()
                ));
            }
            if is_in && w.invoked > attempt.completed {
                v.push(format!(
                    "snapshot {id} (completed at {:.3}s) holds op #{} on {} (version {}, cut {:?}), sent at {:.3}s: guarantee 2",
                    attempt.completed.as_secs_f64(), w.op, w.key, w.version, info.cuts.get(&w.shard),
                    w.invoked.as_secs_f64()
                ));
            }
        }
    } else {
        count = writes.iter().filter(|w| inside(w)).count();
    }
    // 3: the latest send of a write inside; everything known before it is inside.
    if let Some(latest) = writes
        .iter()
        .filter(|w| inside(w))
        .max_by_key(|w| w.invoked)
    {
        for w in writes.iter().filter(|w| !inside(w)) {
            if w.known_at.is_some_and(|k| k < latest.invoked) {
                v.push(format!(
                    "snapshot {id} holds op #{} on {} (version {}, sent at {:.3}s) but not op #{} on {} (version {}, cut {:?}), known to a client at {:.3}s: guarantee 3",
                    latest.op, latest.key, latest.version, latest.invoked.as_secs_f64(),
                    w.op, w.key, w.version, info.cuts.get(&w.shard),
                    w.known_at.unwrap_or_default().as_secs_f64()
                ));
                if v.len() > 20 {
                    break;
                }
            }
        }
    }
    (count, v)
}

fn show(entry: &Option<(Vec<u8>, u64)>) -> String {
    match entry {
        None => "absent".into(),
        Some((value, version)) => format!("{}@{version}", String::from_utf8_lossy(value)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(op: usize, shard: u32, version: u64, invoked: u64, acked: Option<u64>) -> KnownWrite {
        let ms = Duration::from_millis;
        KnownWrite {
            op,
            key: format!("k{op}"),
            shard,
            version,
            invoked: ms(invoked),
            known_at: acked.map(ms),
            acked_at: acked.map(ms),
        }
    }

    fn snapshot(cuts: &[(u32, u64)]) -> SnapshotInfo {
        SnapshotInfo {
            id: 9,
            name: None,
            time: "2026-01-01T00:00:00Z".into(),
            cuts: cuts.iter().copied().collect(),
        }
    }

    fn attempt(invoked: u64, completed: u64) -> SnapshotAttempt {
        SnapshotAttempt {
            node: 1,
            invoked: Duration::from_millis(invoked),
            completed: Duration::from_millis(completed),
            result: SnapshotResult::Aborted,
        }
    }

    #[test]
    fn a_consistent_cut_passes() {
        // W0 acked before the request and inside; W1 sent after the answer and outside.
        let writes = [write(0, 0, 5, 0, Some(10)), write(1, 1, 9, 500, Some(510))];
        let info = snapshot(&[(0, 6), (1, 7)]);
        let (inside, v) = guarantees(9, &info, Some(&attempt(100, 200)), &writes);
        assert_eq!((inside, v), (1, Vec::<String>::new()));
    }

    #[test]
    fn each_guarantee_is_checked() {
        let info = snapshot(&[(0, 6), (1, 7)]);
        // 1: acknowledged before the request, outside.
        let (_, v) = guarantees(
            9,
            &info,
            Some(&attempt(100, 200)),
            &[write(0, 0, 8, 0, Some(10))],
        );
        assert!(v.iter().any(|m| m.contains("guarantee 1")), "{v:?}");
        // 2: sent after the answer, inside.
        let (_, v) = guarantees(
            9,
            &info,
            Some(&attempt(100, 200)),
            &[write(0, 0, 5, 300, None)],
        );
        assert!(v.iter().any(|m| m.contains("guarantee 2")), "{v:?}");
        // 3: W0 acknowledged at 150 ms, outside; W1 sent at 160 ms, inside; no request
        // times needed.
        let writes = [
            write(0, 0, 8, 100, Some(150)),
            write(1, 1, 5, 160, Some(170)),
        ];
        let (_, v) = guarantees(9, &info, None, &writes);
        assert!(v.iter().any(|m| m.contains("guarantee 3")), "{v:?}");
        // ...but concurrent writes may be split.
        let writes = [
            write(0, 0, 8, 100, Some(150)),
            write(1, 1, 5, 140, Some(170)),
        ];
        assert!(guarantees(9, &info, None, &writes).1.is_empty());
    }
}
