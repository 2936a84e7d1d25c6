//! What the replicas hold after healing: convergence, durability and applied-once.
//!
//! **Convergence.** Once the faults are healed and the workload stopped, the harness
//! waits until every node has applied each group (data shards and the meta group) up
//! to the highest commit index any node reported, takes the lowest applied index `V`
//! over the nodes, and asks every node for its replica's digest at `V`
//! (`/v1/debug/digest`; see `cairn_store::ShardDigest`). State and history parts must
//! be equal on every node; the history part is taken above the highest horizon of the
//! group, below which GC may have removed different versions at different moments.
//!
//! **The version history.** Then one node's replica of every data shard is read back
//! version by version (`/v1/debug/versions`): every put's unique value says which
//! operation wrote it, so the history of versions is checked against the recorded
//! operations:
//!
//! - **applied once**: no value appears at two versions (or two keys);
//! - **no acknowledged write lost**: every acknowledged put and delete is there, at the
//!   version it was acknowledged with;
//! - **no refused write applied**: nothing refused (412, `unavailable`, no connection)
//!   left a value;
//! - **reads came from real versions**: every value a read returned with its version is
//!   that version's value;
//! - **batches are atomic**: a batch's values are all there (at one version per
//!   shard), or none.
//!
//! Versions at or below the horizon may have been collected (only the newest one per
//! key at the horizon is kept), so the checks that need a version to exist skip those.
//! A run takes a snapshot before its first write, which keeps the horizon there.
//!
//! The version history is the replicas' own account, so it is never the only witness:
//! the linearizability checker works from the clients' records alone, and these checks
//! tie the two together.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use cairn_client::api::join_bytes;
use cairn_store::{shard_for_key, NodeId, ShardDigest};
use serde::Deserialize;

use crate::cluster::Cluster;
use crate::error::{ChaosError, Result};
use crate::history::{compact, Answer, History, Outcome, Request, WriteId};

/// Bytes of each value read from a replica's history when values are large: more
/// than any write's id and its separator.
const VALUE_PREFIX: usize = 64;

/// One version of one key, as `/v1/debug/versions` gives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    pub key: String,
    pub version: u64,
    /// `None`: a tombstone.
    pub value: Option<Vec<u8>>,
}

/// A shard replica's versions: the state at `after` and everything in `(after, upto]`.
#[derive(Debug, Clone)]
pub struct ShardVersions {
    pub shard: u32,
    pub node: NodeId,
    pub after: u64,
    pub upto: u64,
    pub base: Vec<Version>,
    pub versions: Vec<Version>,
}

// The JSON of `GET /v1/debug/versions` (cairn-server's `api::debug`).
#[derive(Deserialize)]
struct VersionsJson {
    shard: u32,
    after: u64,
    upto: u64,
    base: Vec<VersionJson>,
    versions: Vec<VersionJson>,
}

#[derive(Deserialize)]
struct VersionJson {
    key: Option<String>,
    key_b64: Option<String>,
    version: u64,
    value: Option<String>,
    value_b64: Option<String>,
    deleted: bool,
    #[serde(default)]
    value_len: Option<usize>,
}

impl VersionJson {
    /// The version, its value [`compact`]ed for a workload of `value_bytes`.
    fn decode(self, value_bytes: usize) -> std::result::Result<Version, String> {
        let key = join_bytes(&self.key, &self.key_b64).map_err(|e| e.to_string())?;
        let value = if self.deleted {
            None
        } else {
            let shown = join_bytes(&self.value, &self.value_b64).map_err(|e| e.to_string())?;
            let full_len = self.value_len.filter(|&len| len != shown.len());
            Some(compact(&shown, value_bytes, full_len))
        };
        Ok(Version {
            key: String::from_utf8_lossy(&key).into_owned(),
            version: self.version,
            value,
        })
    }
}

/// One key's versions, newest first: (version, value), `None` for a tombstone.
pub type KeyVersions = Vec<(u64, Option<Vec<u8>>)>;

/// Every key's versions, newest first, over every shard read: the replicas' account of
/// the history, and the state at any version at or above `after`.
#[derive(Debug, Clone, Default)]
pub struct VersionIndex {
    /// key -> (version, value) newest first; `None` value: tombstone.
    pub keys: BTreeMap<String, KeyVersions>,
    /// Per shard: the range the index is exact in, `[after, upto]`.
    pub ranges: BTreeMap<u32, (u64, u64)>,
}

impl VersionIndex {
    pub fn new(shards: &[ShardVersions]) -> VersionIndex {
        let mut index = VersionIndex::default();
        for s in shards {
            index.ranges.insert(s.shard, (s.after, s.upto));
            for v in s.base.iter().chain(&s.versions) {
                index
                    .keys
                    .entry(v.key.clone())
                    .or_default()
                    .push((v.version, v.value.clone()));
            }
        }
        for versions in index.keys.values_mut() {
            versions.sort_by_key(|v| std::cmp::Reverse(v.0));
            versions.dedup_by_key(|v| v.0);
        }
        index
    }

    /// The live value of `key` at `at` and its version, if the index covers `at`
    /// (`Err` otherwise).
    pub fn state_at(
        &self,
        key: &str,
        shard: u32,
        at: u64,
    ) -> std::result::Result<Option<(Vec<u8>, u64)>, String> {
        let Some(&(after, upto)) = self.ranges.get(&shard) else {
            return Err(format!("shard {shard} was not read"));
        };
        if at < after || at > upto {
            return Err(format!(
                "version {at} of shard {shard} is outside what was read ({after}..={upto})"
            ));
        }
        let newest = self
            .keys
            .get(key)
            .and_then(|vs| vs.iter().find(|(v, _)| *v <= at));
        Ok(match newest {
            Some((version, Some(value))) => Some((value.clone(), *version)),
            _ => None,
        })
    }

    /// The version each write's value was found at (first occurrence).
    pub fn write_versions(&self) -> HashMap<WriteId, (String, u64)> {
        let mut out = HashMap::new();
        for (key, versions) in &self.keys {
            for (version, value) in versions {
                if let Some(w) = value.as_deref().and_then(WriteId::parse) {
                    out.entry(w).or_insert((key.clone(), *version));
                }
            }
        }
        out
    }
}

/// What the convergence check compared.
#[derive(Debug, Clone, Default)]
pub struct ConvergenceReport {
    /// Groups compared on every node.
    pub groups: usize,
    /// Per group, the version compared at.
    pub at: BTreeMap<u32, u64>,
    /// Raft snapshots the nodes installed since they last started (streamed through
    /// the proxy): a lower bound for the run.
    pub raft_snapshots_installed: u64,
    pub violations: Vec<String>,
}

/// Every node's digest of `group` at `at` (history part after `after`, or from its
/// horizon). `None` if some replica already collected history past `at`: the meta
/// group collects its own eagerly, which is not a divergence, so the group is skipped.
async fn digests_of(
    cluster: &Cluster,
    nodes: &[NodeId],
    group: u32,
    at: u64,
    after: Option<u64>,
) -> Result<Option<Vec<(NodeId, ShardDigest)>>> {
    let query = match after {
        Some(after) => format!("/v1/debug/digest?shard={group}&at={at}&after={after}"),
        None => format!("/v1/debug/digest?shard={group}&at={at}"),
    };
    let mut digests = Vec::new();
    for &node in nodes {
        match get_json::<ShardDigest>(cluster, node, &query).await? {
            Ok(d) => digests.push((node, d)),
            Err((410, _)) => return Ok(None),
            Err((status, body)) => {
                return Err(ChaosError::Api {
                    node,
                    what: format!("digest of group {group} at {at}: {status} {body}"),
                })
            }
        }
    }
    Ok(Some(digests))
}

async fn get_json<T: serde::de::DeserializeOwned>(
    cluster: &Cluster,
    node: NodeId,
    path: &str,
) -> Result<std::result::Result<T, (u16, String)>> {
    let url = format!("{}://{}{path}", cluster.scheme(), cluster.http_addr(node)?);
    let http = crate::cluster::http_client_trusting(Duration::from_secs(30), cluster.ca_pem())?;
    let response = http.get(&url).send().await.map_err(|e| ChaosError::Api {
        node,
        what: format!("GET {path}: {e}"),
    })?;
    let status = response.status();
    let body = response.bytes().await.map_err(|e| ChaosError::Api {
        node,
        what: format!("GET {path}: {e}"),
    })?;
    if !status.is_success() {
        return Ok(Err((
            status.as_u16(),
            String::from_utf8_lossy(&body).into_owned(),
        )));
    }
    serde_json::from_slice(&body)
        .map(Ok)
        .map_err(|e| ChaosError::Api {
            node,
            what: format!("GET {path}: undecodable answer: {e}"),
        })
}

/// The nodes holding each group's replicas (data shards and the meta group), as the
/// first node that answers reports the placement; every node for every group if the
/// cluster reports none.
pub async fn holders(cluster: &Cluster) -> Result<BTreeMap<u32, Vec<NodeId>>> {
    let mut last = None;
    for node in cluster.ids() {
        match cluster.status(node).await {
            Ok(status) => {
                let mut groups: BTreeMap<u32, Vec<NodeId>> = status
                    .placement
                    .iter()
                    .map(|p| (p.id, p.replicas.clone()))
                    .collect();
                if groups.is_empty() {
                    let every = cluster.ids();
                    let ids = status
                        .shards
                        .iter()
                        .chain(status.meta.as_ref())
                        .map(|s| s.id);
                    groups = ids.map(|g| (g, every.clone())).collect();
                }
                return Ok(groups);
            }
            Err(e) => last = Some(e),
        }
    }
    Err(last.unwrap_or_else(|| ChaosError::Api {
        node: 0,
        what: "no node to ask for the placement".into(),
    }))
}

/// Wait until every replica applied its group as far as any replica committed it,
/// then compare digests (see the module doc). `groups` is the data shards and the
/// meta group's number.
pub async fn converge(
    cluster: &Cluster,
    groups: u32,
    timeout: Duration,
) -> Result<ConvergenceReport> {
    let nodes = cluster.ids();
    let holders = holders(cluster).await?;
    let held_by = |group: u32| {
        holders
            .get(&group)
            .cloned()
            .unwrap_or_else(|| nodes.clone())
    };
    let replicas: usize = holders.values().map(Vec::len).sum();
    let deadline = Instant::now() + timeout;
    // 1. Caught up: applied >= the highest commit seen, on every node.
    let mut target: BTreeMap<u32, u64> = BTreeMap::new();
    let mut installed: u64;
    let applied = loop {
        let mut applied: BTreeMap<(u32, NodeId), u64> = BTreeMap::new();
        let mut last = String::new();
        installed = 0;
        for &node in &nodes {
            match cluster.status(node).await {
                Ok(status) => {
                    for s in status.shards.iter().chain(status.meta.as_ref()) {
                        let t = target.entry(s.id).or_insert(0);
                        *t = (*t).max(s.commit);
                        applied.insert((s.id, node), s.applied);
                        installed += s.snapshots_installed;
                    }
                }
                Err(e) => last = e.to_string(),
            }
        }
        let behind: Vec<String> = target
            .iter()
            .flat_map(|(&g, &t)| {
                let applied = &applied;
                held_by(g).into_iter().filter_map(move |n| {
                    let a = applied.get(&(g, n)).copied().unwrap_or(0);
                    (a < t).then(|| format!("node {n} applied group {g} to {a} of {t}"))
                })
            })
            .collect();
        // Only the voters count: a node may still hold a replica its group removed
        // (it drops it shortly), or a learner a move is adding.
        let reported = applied
            .keys()
            .filter(|(g, n)| held_by(*g).contains(n))
            .count();
        if behind.is_empty() && reported == replicas && !target.is_empty() {
            break applied;
        }
        if Instant::now() > deadline {
            return Err(ChaosError::Timeout {
                what: "every replica caught up after healing".into(),
                waited: timeout,
                last: if behind.is_empty() {
                    last
                } else {
                    behind.join("; ")
                },
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let mut report = ConvergenceReport {
        raft_snapshots_installed: installed,
        ..ConvergenceReport::default()
    };
    for group in 0..=groups {
        let nodes = held_by(group);
        let Some(mut at) = nodes
            .iter()
            .filter_map(|&n| applied.get(&(group, n)).copied())
            .min()
        else {
            continue;
        };
        // A replica may have collected history past `at` meanwhile (the meta group
        // collects its own eagerly): compare again at what every node has applied
        // now, a few times, before giving up on the group (which fails the run's
        // floor on groups compared).
        let mut attempt = 0;
        let (after, compared) = loop {
            attempt += 1;
            // 2. Horizons first, to pick the history part's lower end.
            let compared = match digests_of(cluster, &nodes, group, at, None).await? {
                Some(digests) => {
                    let after = digests
                        .iter()
                        .map(|(_, d)| d.horizon)
                        .max()
                        .unwrap_or(0)
                        .min(at);
                    digests_of(cluster, &nodes, group, at, Some(after))
                        .await?
                        .map(|c| (after, c))
                }
                None => None,
            };
            match compared {
                Some(found) => break Some(found),
                None if attempt < 10 => {
                    tokio::time::sleep(Duration::from_millis(300)).await;
                    if let Some(now) = applied_everywhere(cluster, &nodes, group).await {
                        at = now;
                    }
                }
                None => break None,
            }
        }
        .unzip();
        let (Some(after), Some(compared)) = (after, compared) else {
            continue;
        };
        report.groups += 1;
        report.at.insert(group, at);
        let (first_node, first) = &compared[0];
        for (node, d) in &compared[1..] {
            if d.state != first.state || d.history != first.history {
                report.violations.push(format!(
                    "group {group} diverged at version {at}: node {first_node} has {} live keys and {} versions in ({after}, {at}] (state {}, history {}), node {node} has {} and {} (state {}, history {})",
                    first.live_keys, first.versions, short(&first.state), short(&first.history),
                    d.live_keys, d.versions, short(&d.state), short(&d.history),
                ));
            }
        }
    }
    Ok(report)
}

/// The first characters of a digest, enough to tell two apart in a message.
/// The version of `group` every node has applied now (the least of their applied
/// indexes), if every node answers.
async fn applied_everywhere(cluster: &Cluster, nodes: &[NodeId], group: u32) -> Option<u64> {
    let mut least = u64::MAX;
    for &node in nodes {
        let status = cluster.status(node).await.ok()?;
        let s = status
            .shards
            .iter()
            .chain(status.meta.as_ref())
            .find(|s| s.id == group)?;
        least = least.min(s.applied);
    }
    Some(least)
}

fn short(hex: &str) -> &str {
    hex.get(..12).unwrap_or(hex)
}

/// Node `node`'s replica of `shard`: the state at its horizon and every version up to
/// `upto`. With large values (`value_bytes`), only each value's first bytes are read:
/// enough to name its write and check its length (whole values are compared across
/// replicas by digest, and read whole by the workload).
pub async fn read_versions(
    cluster: &Cluster,
    node: NodeId,
    shard: u32,
    upto: u64,
    value_bytes: usize,
) -> Result<ShardVersions> {
    let truncate = if value_bytes > 0 {
        format!("&truncate={VALUE_PREFIX}")
    } else {
        String::new()
    };
    let answer: VersionsJson = get_json(
        cluster,
        node,
        &format!("/v1/debug/versions?shard={shard}&upto={upto}{truncate}"),
    )
    .await?
    .map_err(|(status, body)| ChaosError::Api {
        node,
        what: format!("versions of shard {shard} up to {upto}: {status} {body}"),
    })?;
    let decode = |items: Vec<VersionJson>| {
        items
            .into_iter()
            .map(|v| v.decode(value_bytes))
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| ChaosError::Api {
                node,
                what: format!("versions of shard {shard}: {e}"),
            })
    };
    Ok(ShardVersions {
        shard: answer.shard,
        node,
        after: answer.after,
        upto: answer.upto,
        base: decode(answer.base)?,
        versions: decode(answer.versions)?,
    })
}

/// Check the replicas' version history against the recorded operations (see the
/// module doc). Only keys under the history's prefix are considered.
pub fn check_versions(history: &History, index: &VersionIndex, shards: u32) -> Vec<String> {
    let mut violations = Vec::new();
    let in_range = |key: &str, version: u64| {
        index
            .ranges
            .get(&shard_for_key(key.as_bytes(), shards))
            .is_some_and(|&(after, upto)| version > after && version <= upto)
    };
    let at = |key: &str, version: u64| -> Option<&Option<Vec<u8>>> {
        index
            .keys
            .get(key)
            .and_then(|vs| vs.iter().find(|(v, _)| *v == version))
            .map(|(_, value)| value)
    };
    // Applied once, and only values somebody wrote.
    let mut seen: HashMap<WriteId, (String, u64)> = HashMap::new();
    for (key, versions) in &index.keys {
        if !key.starts_with(history.prefix.as_str()) {
            continue;
        }
        for (version, value) in versions {
            let Some(value) = value else { continue };
            match WriteId::parse(value) {
                Some(w) => {
                    if let Some((k0, v0)) = seen.insert(w, (key.clone(), *version)) {
                        violations.push(format!(
                            "write {w} was applied twice: {k0} at version {v0} and {key} at version {version}"
                        ));
                    }
                }
                None if key.ends_with("final") => {}
                None => violations.push(format!(
                    "{key} holds {:?} at version {version}, a value no client wrote",
                    String::from_utf8_lossy(value)
                )),
            }
        }
    }
    for op in &history.ops {
        // The finding, if `key` does not hold `write` at `version`.
        let expect_value = |key: &str,
                            version: u64,
                            write: WriteId,
                            what: &str|
         -> Option<String> {
            if !in_range(key, version) {
                return None;
            }
            match at(key, version) {
                Some(Some(v)) if WriteId::parse(v) == Some(write) => None,
                Some(Some(v)) => Some(format!(
                    "op #{} {what} {write} at {key} version {version}, but that version holds {}",
                    op.id,
                    String::from_utf8_lossy(v)
                )),
                Some(None) => Some(format!(
                    "op #{} {what} {write} at {key} version {version}, but that version is a tombstone",
                    op.id
                )),
                None => Some(format!(
                    "op #{} {what} {write} at {key} version {version}, but no replica version {version} of {key} exists (lost)",
                    op.id
                )),
            }
        };
        match (&op.request, &op.outcome) {
            (Request::Put { key, write, .. }, Outcome::Ok(Answer::Written { version })) => {
                violations.extend(expect_value(key, *version, *write, "acknowledged"))
            }
            (Request::Batch { .. }, Outcome::Ok(Answer::Batched { versions })) => {
                for (key, write, version) in op.request.batch_ops(versions) {
                    let Some(version) = version else { continue };
                    match write {
                        Some(w) => violations.extend(expect_value(key, version, w, "acknowledged (batch)")),
                        None if in_range(key, version) => {
                            if let Some(Some(_)) = at(key, version) {
                                violations.push(format!(
                                    "op #{} deleted {key} in a batch at version {version}, but that version holds a value",
                                    op.id
                                ));
                            }
                        }
                        None => {}
                    }
                }
            }
            (Request::Get { key }, Outcome::Ok(Answer::Value(Some((value, version))))) => {
                if let Some(w) = WriteId::parse(value) {
                    violations.extend(expect_value(key, *version, w, "read"));
                }
            }
            (
                Request::Delete { key, .. },
                Outcome::Ok(Answer::Deleted {
                    deleted: true,
                    version,
                }),
            ) if in_range(key, *version) => match at(key, *version) {
                Some(None) => {}
                _ => violations.push(format!(
                    "op #{} deleted {key} at version {version}, but there is no tombstone there (lost)",
                    op.id
                )),
            },
            (Request::Put { key, write, .. }, Outcome::Refused { status, code }) => {
                if let Some((k, v)) = seen.get(write) {
                    violations.push(format!(
                        "op #{} put {write} to {key} was refused ({status} {code}), yet it was applied at {k} version {v}",
                        op.id
                    ));
                }
            }
            (Request::Batch { puts, .. }, outcome) => {
                // Where each put's value is, per shard: a batch is all there or not
                // at all, at one version per shard.
                let found: Vec<(u32, Option<&(String, u64)>)> = puts
                    .iter()
                    .map(|(k, w)| (shard_for_key(k.as_bytes(), shards), seen.get(w)))
                    .collect();
                let any = found.iter().any(|(_, f)| f.is_some());
                if matches!(outcome, Outcome::Refused { .. }) && any {
                    violations.push(format!("op #{} batch was refused, yet part of it was applied", op.id));
                } else if any {
                    // A missing value is a lost half only where history is complete
                    // (the run's base snapshot keeps the horizon below its writes).
                    let checkable = found
                        .iter()
                        .filter_map(|(_, f)| *f)
                        .all(|(k, v)| in_range(k, *v));
                    let partial = found.iter().any(|(_, f)| f.is_none());
                    let mut per_shard: HashMap<u32, u64> = HashMap::new();
                    let split = found.iter().any(|(s, f)| match f {
                        Some((_, v)) => *per_shard.entry(*s).or_insert(*v) != *v,
                        None => false,
                    });
                    if (checkable && partial) || split {
                        violations.push(format!(
                            "op #{} batch is not atomic in the replicas: its values are at {:?}",
                            op.id,
                            found.iter().map(|(_, f)| f.map(|(k, v)| format!("{k}@{v}"))).collect::<Vec<_>>()
                        ));
                    }
                }
            }
            _ => {}
        }
    }
    violations
}
