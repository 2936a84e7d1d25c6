//! What the meta group recorded, against what the simulator observed.
//!
//! The meta group's tree keeps every version (the simulator never collects history),
//! so its final tree is its whole log of registry and transaction records. Checked:
//!
//! - **The gate, in the meta log**: no `t/commit/T` is written while some
//!   `s/marking/e` is live, and no `s/marking/e` while some `t/commit/T` is (no
//!   transaction commits while an epoch is placing markers).
//! - **Epoch records**: an epoch recorded done has exactly the cuts its markers
//!   were answered with, and its coordinator did not report it aborted; an epoch
//!   recorded aborted was never reported done; every epoch a coordinator allocated
//!   has a record, and none is left pending once the run settled. An epoch whose
//!   coordinator could not learn how its finish ended counts as what the registry
//!   says (it is marked done in the history the snapshot checks read).
//! - **Transaction records**: a transaction the history shows committed was recorded
//!   committed; one it shows aborted never was.
//! - **Drained**: once the run settled, nothing is left open (`s/open/`,
//!   `s/marking/`, `s/want/`, `t/commit/`, `t/txn/`): the coordinators and the
//!   sweepers finished what they began.

use std::collections::{BTreeMap, BTreeSet};

use cairn_cluster::keyspace::{
    GATE_COMMITTING, GATE_MARKING, GATE_WANT, SNAPSHOT_ID, SNAPSHOT_OPEN, TXN,
};
use cairn_snapshot::{SnapshotRecord, SnapshotState};
use cairn_store::{HistoryRange, ShardState};
use cairn_txn::TxnState;

use crate::epochs::Reported;
use crate::history::{Action, History, Outcome};

/// Every version of every key of the meta group up to `at`: key -> (version, value).
type MetaLog = BTreeMap<Vec<u8>, Vec<(u64, Option<Vec<u8>>)>>;

fn read_log(state: &ShardState, at: u64) -> Result<MetaLog, String> {
    let mut log: MetaLog = BTreeMap::new();
    for item in state.history(HistoryRange::Between { after: 0, upto: at }) {
        let kv = item.map_err(|e| e.to_string())?;
        log.entry(kv.key).or_default().push((kv.version, kv.value));
    }
    for versions in log.values_mut() {
        versions.sort_by_key(|(v, _)| *v);
    }
    Ok(log)
}

/// A meta key for a message: its prefix, then the id it ends with.
fn show(key: &[u8]) -> String {
    let split = key.len().saturating_sub(8);
    match (
        std::str::from_utf8(&key[..split]),
        <[u8; 8]>::try_from(&key[split..]),
    ) {
        (Ok(prefix), Ok(id)) if prefix.ends_with('/') => {
            format!("{prefix}{}", u64::from_be_bytes(id))
        }
        _ => String::from_utf8_lossy(key).into_owned(),
    }
}

/// Check the meta group's final state (`state` at applied index `at`) against the
/// history and what the coordinators reported; mark done the epochs the registry
/// recorded done whose coordinator never learned it. Returns every violation.
pub(crate) fn check(
    history: &mut History,
    reported: &BTreeMap<u64, Reported>,
    state: &ShardState,
    at: u64,
) -> Vec<String> {
    let mut violations = Vec::new();
    let log = match read_log(state, at) {
        Ok(log) => log,
        Err(e) => return vec![format!("reading the meta group: {e}")],
    };
    gate(&log, &mut violations);
    epochs(&log, history, reported, &mut violations);
    txns(&log, history, &mut violations);
    for prefix in [SNAPSHOT_OPEN, GATE_MARKING, GATE_WANT, GATE_COMMITTING, TXN] {
        for (key, versions) in log.range(prefix.to_vec()..) {
            if !key.starts_with(prefix) {
                break;
            }
            if matches!(versions.last(), Some((_, Some(_)))) {
                violations.push(format!(
                    "registry: {} is still live after the run settled",
                    show(key)
                ));
            }
        }
    }
    violations
}

/// No commit while an epoch marks, no epoch while a commit resolves.
fn gate(log: &MetaLog, violations: &mut Vec<String>) {
    // (version, is a put, is a marking key, key), deletes first within a version.
    let mut events = Vec::new();
    for (key, versions) in log {
        let marking = key.starts_with(GATE_MARKING);
        if !marking && !key.starts_with(GATE_COMMITTING) {
            continue;
        }
        for (v, value) in versions {
            events.push((*v, value.is_some(), marking, key.clone()));
        }
    }
    events.sort();
    let (mut marking, mut committing): (BTreeSet<Vec<u8>>, BTreeSet<Vec<u8>>) =
        (BTreeSet::new(), BTreeSet::new());
    for (v, put, is_marking, key) in events {
        let (mine, theirs) = if is_marking {
            (&mut marking, &committing)
        } else {
            (&mut committing, &marking)
        };
        if !put {
            mine.remove(&key);
            continue;
        }
        if let Some(other) = theirs.iter().next() {
            violations.push(format!(
                "gate broken in the meta log: {} written at meta index {v} while {} was live",
                show(&key),
                show(other)
            ));
        }
        mine.insert(key);
    }
}

fn epochs(
    log: &MetaLog,
    history: &mut History,
    reported: &BTreeMap<u64, Reported>,
    violations: &mut Vec<String>,
) {
    let mut recorded: BTreeMap<u64, SnapshotRecord> = BTreeMap::new();
    for (key, versions) in log.range(SNAPSHOT_ID.to_vec()..) {
        if !key.starts_with(SNAPSHOT_ID) {
            break;
        }
        let Some((_, Some(value))) = versions.last() else {
            continue;
        };
        match serde_json::from_slice::<SnapshotRecord>(value) {
            Ok(record) => {
                recorded.insert(record.id, record);
            }
            Err(e) => violations.push(format!("registry: {}: {e}", show(key))),
        }
    }
    for epoch in &mut history.epochs {
        let id = epoch.id;
        let Some(record) = recorded.get(&id) else {
            violations.push(format!(
                "registry: epoch {id} was allocated but has no record"
            ));
            continue;
        };
        match (&record.state, reported.get(&id)) {
            (SnapshotState::Pending, said) => violations.push(format!(
                "registry: epoch {id} is still pending after the run settled (its coordinator reported {said:?})"
            )),
            (SnapshotState::Done { cuts }, said) => {
                if *cuts != epoch.cuts {
                    violations.push(format!(
                        "registry: epoch {id} is recorded done with cuts {cuts:?}, its markers were answered with {:?}",
                        epoch.cuts
                    ));
                }
                match said {
                    Some(Reported::Done(c)) if c == cuts => {}
                    Some(Reported::Unknown) => epoch.done = true,
                    other => violations.push(format!(
                        "registry: epoch {id} is recorded done, its coordinator reported {other:?}"
                    )),
                }
            }
            (SnapshotState::Aborted { .. }, Some(Reported::Done(_))) => violations.push(format!(
                "registry: epoch {id} is recorded aborted, but its coordinator reported it done"
            )),
            (SnapshotState::Aborted { .. }, _) => {}
        }
    }
}

fn txns(log: &MetaLog, history: &History, violations: &mut Vec<String>) {
    let mut states: BTreeMap<u64, Vec<TxnState>> = BTreeMap::new();
    for (key, versions) in log.range(TXN.to_vec()..) {
        if !key.starts_with(TXN) {
            break;
        }
        for (_, value) in versions {
            let Some(value) = value else { continue };
            match serde_json::from_slice::<cairn_txn::TxnRecord>(value) {
                Ok(record) => states.entry(record.id).or_default().push(record.state),
                Err(e) => violations.push(format!("transaction record {}: {e}", show(key))),
            }
        }
    }
    for op in &history.ops {
        let Action::Txn { txn, .. } = &op.request else {
            continue;
        };
        let committed = states
            .get(txn)
            .is_some_and(|s| s.contains(&TxnState::Committed));
        match (&op.outcome, committed) {
            (Outcome::TxnCommitted { .. }, false) => violations.push(format!(
                "transaction {txn} (operation {}) committed on its shards but was never recorded committed",
                op.id
            )),
            (Outcome::TxnAborted, true) => violations.push(format!(
                "transaction {txn} (operation {}) was recorded committed but its shards aborted it",
                op.id
            )),
            _ => {}
        }
    }
}
