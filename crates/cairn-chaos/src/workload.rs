//! The workload: concurrent clients, each a seeded loop of operations, recorded.
//!
//! Clients are tasks with their own RNG (seeded from the run's seed and their number)
//! and their own HTTP connection pools. The first [`WorkloadOptions::pinned`] always
//! talk to one node (client `i` to node `i mod n + 1`), so a fault of that node is felt
//! as a client sees it in production; the rest pick a node per operation.
//!
//! The mix, over a fixed set of keys under one prefix: linearizable gets, puts,
//! compare-and-set puts (`If-Match` with a version the client saw earlier, so some
//! succeed and some get 412), create-only puts (`If-None-Match: *`), deletes, deletes
//! with `If-Match`, batches of puts and deletes (half within one shard, half across
//! shards: cross-shard transactions), and prefix scans of the whole key set. Every put
//! writes a unique [`WriteId`]. A client pauses a random think time between
//! operations, so the machine is not saturated by the clients themselves.
//!
//! A key that has seen its budget of operations ([`WorkloadOptions::key_budget`])
//! retires its whole generation: the clients move to a fresh key set under the same
//! prefix (scans then cover the new set only), so a long or fast run never gives the
//! checker more operations per key than it can decide.
//!
//! Errors are classified as [`crate::history`] says: only definite refusals are
//! `Refused`; anything that may have reached a node and done something is `Unknown`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cairn_client::api::BatchOp;
use cairn_client::{Client, Consistency, Error as ClientError, Precondition as Pre, ScanOptions};
use cairn_store::{shard_for_key, NodeId};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::history::{
    compact, Answer, ClientId, History, Operation, Outcome, Precondition, Request, WriteId,
};

/// How the workload is shaped.
#[derive(Debug, Clone)]
pub struct WorkloadOptions {
    pub clients: usize,
    /// Clients `0..pinned` each talk to one node only.
    pub pinned: usize,
    pub keys: usize,
    /// Every key starts with it; scans use it.
    pub prefix: String,
    /// The cluster's shard count (for single-shard batches).
    pub shards: u32,
    /// A client waits a random time up to this between operations.
    pub think: Duration,
    /// The HTTP deadline of one operation; past it, the operation is unknown.
    pub request_timeout: Duration,
    /// The HTTP client every workload client shares (its deadline is
    /// `request_timeout`; under TLS it trusts the cluster's CA).
    pub http: reqwest::Client,
    pub seed: u64,
    /// Operations one key may see before the workload moves to a fresh generation of
    /// keys (0: never). The linearizability checker decides keys only up to a cap
    /// ([`crate::linearizability::CheckOptions::max_ops_per_key`]), so a long or fast
    /// run must spread its operations over more keys rather than pile them onto the
    /// same ones.
    pub key_budget: usize,
    /// Bytes of every value put (0: the write's id alone). Large values exercise the
    /// byte limits: pages that end at their byte budget, entries and frames near their
    /// caps.
    pub value_bytes: usize,
}

/// Counters the nemesis watches to know the workload is doing something.
#[derive(Debug, Default)]
pub struct Progress {
    pub ok: AtomicU64,
    pub refused: AtomicU64,
    pub unknown: AtomicU64,
    /// Writes acknowledged (a subset of `ok`).
    pub writes_ok: AtomicU64,
}

impl Progress {
    pub fn ok(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    pub fn writes_ok(&self) -> u64 {
        self.writes_ok.load(Ordering::Relaxed)
    }

    fn record(&self, op: &Operation) {
        let counter = match op.outcome {
            Outcome::Ok(_) => {
                if op.request.is_write() {
                    self.writes_ok.fetch_add(1, Ordering::Relaxed);
                }
                &self.ok
            }
            Outcome::Refused { .. } => &self.refused,
            Outcome::Unknown { .. } => &self.unknown,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Running clients. [`Workload::stop`] ends them and returns the history.
pub struct Workload {
    clients: Vec<JoinHandle<Vec<Operation>>>,
    stop: CancellationToken,
    progress: Arc<Progress>,
    /// Keys per generation.
    count: usize,
    generations: Arc<Generations>,
    prefix: String,
    value_bytes: usize,
}

/// The key set of a workload's first generation: `{prefix}k00`, `{prefix}k01`, ...
pub fn keys(prefix: &str, count: usize) -> Vec<String> {
    generation_keys(prefix, count, 0)
}

/// Generation `gen`'s keys and the prefix a scan of exactly them uses: `{prefix}k..`
/// for the first, `{prefix}g{gen}/k..` after it (so no generation's scan covers
/// another's keys).
fn generation_prefix(prefix: &str, gen: usize) -> String {
    if gen == 0 {
        format!("{prefix}k")
    } else {
        format!("{prefix}g{gen}/k")
    }
}

fn generation_keys(prefix: &str, count: usize, gen: usize) -> Vec<String> {
    let base = generation_prefix(prefix, gen);
    (0..count).map(|i| format!("{base}{i:02}")).collect()
}

/// Keys grouped by shard, for batches that stay within one.
fn shard_groups(keys: &[String], shards: u32) -> Vec<Vec<String>> {
    let mut by_shard: HashMap<u32, Vec<String>> = HashMap::new();
    for key in keys {
        by_shard
            .entry(shard_for_key(key.as_bytes(), shards))
            .or_default()
            .push(key.clone());
    }
    let mut groups: Vec<Vec<String>> = by_shard.into_values().filter(|g| g.len() >= 2).collect();
    groups.sort();
    groups
}

/// Which generation of keys the clients use, and how much each key of it has seen.
/// A generation ends when one of its keys reaches the budget; operations in flight
/// on it may still complete (a few more per key, far below the checker's cap).
struct Generations {
    budget: usize,
    current: AtomicU64,
    /// Uses of each key of the current generation, by its index.
    uses: std::sync::Mutex<Vec<usize>>,
}

impl Generations {
    fn current(&self) -> usize {
        self.current.load(Ordering::Relaxed) as usize
    }

    /// Count `request` (made in generation `gen`) against its keys' budgets; move on
    /// to the next generation if one is spent.
    fn charge(&self, gen: usize, request: &Request, keys: &[String]) {
        if self.budget == 0 {
            return;
        }
        let mut uses = self.uses.lock().unwrap_or_else(|p| p.into_inner());
        if self.current() != gen {
            return;
        }
        let mut spent = false;
        for (i, key) in keys.iter().enumerate() {
            if crate::history::touches(request, key) {
                uses[i] += 1;
                spent |= uses[i] >= self.budget;
            }
        }
        if spent {
            uses.iter_mut().for_each(|u| *u = 0);
            self.current.fetch_add(1, Ordering::Relaxed);
            tracing::info!(
                generation = gen + 1,
                "a key spent its budget: the workload moves to fresh keys"
            );
        }
    }
}

impl Workload {
    /// Start the clients. `endpoints` are the nodes, with the node id each serves;
    /// `clock` is the run's time origin.
    pub fn start(
        opts: &WorkloadOptions,
        endpoints: &[(NodeId, String)],
        clock: Instant,
    ) -> Workload {
        let keys = keys(&opts.prefix, opts.keys);
        let groups = shard_groups(&keys, opts.shards);
        let generations = Arc::new(Generations {
            budget: opts.key_budget,
            current: AtomicU64::new(0),
            uses: std::sync::Mutex::new(vec![0; opts.keys]),
        });
        let stop = CancellationToken::new();
        let progress = Arc::new(Progress::default());
        let http = opts.http.clone();
        let mut clients = Vec::new();
        for index in 0..opts.clients {
            let id = index as ClientId;
            let endpoints: Vec<(NodeId, Client)> = endpoints
                .iter()
                .map(|(node, base)| (*node, Client::with_http(base.clone(), http.clone())))
                .collect();
            let pinned = (index < opts.pinned).then(|| index % endpoints.len().max(1));
            let mut client = WorkloadClient {
                id,
                pinned,
                endpoints,
                keys: keys.clone(),
                groups: groups.clone(),
                scan_prefix: generation_prefix(&opts.prefix, 0),
                prefix: opts.prefix.clone(),
                shards: opts.shards,
                generation: 0,
                generations: generations.clone(),
                rng: StdRng::seed_from_u64(
                    opts.seed ^ (u64::from(id) + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
                ),
                seq: 0,
                versions: HashMap::new(),
                clock,
                think: opts.think,
                value_bytes: opts.value_bytes,
            };
            let stop = stop.clone();
            let progress = progress.clone();
            let span = tracing::info_span!("workload_client", client = id, pinned = ?pinned.map(|p| p + 1));
            clients.push(tokio::spawn(
                async move { client.run(stop, progress).await }.instrument(span),
            ));
        }
        Workload {
            clients,
            stop,
            progress,
            count: opts.keys,
            generations,
            prefix: opts.prefix.clone(),
            value_bytes: opts.value_bytes,
        }
    }

    pub fn progress(&self) -> Arc<Progress> {
        self.progress.clone()
    }

    /// Stop every client after its current operation and collect the history, ordered
    /// by invocation.
    pub async fn stop(self) -> History {
        self.stop.cancel();
        let mut ops = Vec::new();
        for client in self.clients {
            match client.await {
                Ok(mut recorded) => ops.append(&mut recorded),
                Err(e) => tracing::error!(error = %e, "a workload client failed"),
            }
        }
        ops.sort_by_key(|op: &Operation| (op.invoked, op.client));
        for (i, op) in ops.iter_mut().enumerate() {
            op.id = i;
        }
        let keys = (0..=self.generations.current())
            .flat_map(|gen| generation_keys(&self.prefix, self.count, gen))
            .collect();
        History {
            ops,
            keys,
            prefix: self.prefix,
            value_bytes: self.value_bytes,
        }
    }
}

struct WorkloadClient {
    id: ClientId,
    pinned: Option<usize>,
    endpoints: Vec<(NodeId, Client)>,
    /// The current generation's keys, its shard groups and its scan prefix.
    keys: Vec<String>,
    groups: Vec<Vec<String>>,
    scan_prefix: String,
    prefix: String,
    shards: u32,
    generation: usize,
    generations: Arc<Generations>,
    rng: StdRng,
    seq: u32,
    /// The last version this client saw for each key (for `If-Match`).
    versions: HashMap<String, u64>,
    clock: Instant,
    think: Duration,
    value_bytes: usize,
}

impl WorkloadClient {
    async fn run(&mut self, stop: CancellationToken, progress: Arc<Progress>) -> Vec<Operation> {
        let mut ops = Vec::new();
        while !stop.is_cancelled() && !self.endpoints.is_empty() && !self.keys.is_empty() {
            let index = self
                .pinned
                .unwrap_or_else(|| self.rng.gen_range(0..self.endpoints.len()));
            let (node, client) = self.endpoints[index].clone();
            self.follow_generation();
            let request = self.choose();
            self.generations
                .charge(self.generation, &request, &self.keys);
            let invoked = self.clock.elapsed();
            let outcome = execute(&client, &request, self.value_bytes).await;
            let completed = self.clock.elapsed();
            self.learn(&request, &outcome);
            let op = Operation {
                id: 0,
                client: self.id as usize,
                via: Some(node),
                request,
                invoked,
                completed: Some(completed),
                outcome,
            };
            progress.record(&op);
            ops.push(op);
            let pause = self.rng.gen_range(Duration::ZERO..=self.think);
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(pause) => {}
            }
        }
        ops
    }

    /// Switch to the workload's current generation of keys if it moved on.
    fn follow_generation(&mut self) {
        let current = self.generations.current();
        if current != self.generation {
            self.generation = current;
            self.keys = generation_keys(&self.prefix, self.keys.len(), current);
            self.groups = shard_groups(&self.keys, self.shards);
            self.scan_prefix = generation_prefix(&self.prefix, current);
        }
    }

    fn next_write(&mut self) -> WriteId {
        self.seq += 1;
        WriteId {
            client: self.id,
            seq: self.seq,
        }
    }

    fn key(&mut self) -> String {
        self.keys[self.rng.gen_range(0..self.keys.len())].clone()
    }

    fn choose(&mut self) -> Request {
        let roll = self.rng.gen_range(0..100);
        let key = self.key();
        let known = self.versions.get(&key).copied();
        match roll {
            0..=31 => Request::Get { key },
            32..=56 => Request::Put {
                write: self.next_write(),
                key,
                pre: Precondition::None,
            },
            57..=68 => match known {
                Some(version) => Request::Put {
                    write: self.next_write(),
                    key,
                    pre: Precondition::IfMatch(version),
                },
                None => Request::Get { key },
            },
            69..=74 => Request::Put {
                write: self.next_write(),
                key,
                pre: Precondition::IfAbsent,
            },
            75..=82 => Request::Delete {
                key,
                pre: Precondition::None,
            },
            83..=86 => match known {
                Some(version) => Request::Delete {
                    key,
                    pre: Precondition::IfMatch(version),
                },
                None => Request::Get { key },
            },
            87..=96 if !self.groups.is_empty() => {
                // Half within one shard, half across shards (a transaction).
                let mut members = if self.rng.gen_bool(0.5) {
                    self.groups[self.rng.gen_range(0..self.groups.len())].clone()
                } else {
                    self.keys.clone()
                };
                let n = self.rng.gen_range(2..=members.len().min(3));
                let mut puts = Vec::new();
                let mut deletes = Vec::new();
                for _ in 0..n {
                    let key = members.swap_remove(self.rng.gen_range(0..members.len()));
                    if self.rng.gen_bool(0.8) {
                        let write = self.next_write();
                        puts.push((key, write));
                    } else {
                        deletes.push(key);
                    }
                }
                Request::Batch { puts, deletes }
            }
            87..=96 => Request::Get { key },
            _ => Request::Scan {
                prefix: self.scan_prefix.clone(),
            },
        }
    }

    /// Remember versions seen, for later `If-Match`es.
    fn learn(&mut self, request: &Request, outcome: &Outcome) {
        let Outcome::Ok(answer) = outcome else {
            return;
        };
        match (request, answer) {
            (Request::Get { key }, Answer::Value(Some((_, version))))
            | (Request::Put { key, .. }, Answer::Written { version }) => {
                self.versions.insert(key.clone(), *version);
            }
            (Request::Get { key }, Answer::Value(None))
            | (Request::Delete { key, .. }, Answer::Deleted { .. }) => {
                self.versions.remove(key);
            }
            (Request::Batch { .. }, Answer::Batched { versions }) => {
                for (key, write, version) in request.batch_ops(versions) {
                    match (write, version) {
                        (Some(_), Some(v)) => {
                            self.versions.insert(key.to_owned(), v);
                        }
                        _ => {
                            self.versions.remove(key);
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

fn client_pre(pre: Precondition) -> Pre {
    match pre {
        Precondition::None => Pre::None,
        Precondition::IfMatch(v) => Pre::IfMatch(v),
        Precondition::IfAbsent => Pre::IfAbsent,
    }
}

/// Send one request (its values `value_bytes` long) and classify what came back.
/// Values read are recorded [`compact`]ed.
pub async fn execute(client: &Client, request: &Request, value_bytes: usize) -> Outcome {
    let result = match request {
        Request::Get { key } => client.get(key.as_bytes()).await.map(|got| {
            Answer::Value(got.map(|g| (compact(&g.value, value_bytes, None), g.version)))
        }),
        Request::Put { key, write, pre } => client
            .put_if(key.as_bytes(), &write.value(value_bytes), client_pre(*pre))
            .await
            .map(|version| Answer::Written { version }),
        Request::Delete { key, pre } => client
            .delete_if(key.as_bytes(), client_pre(*pre))
            .await
            .map(|d| Answer::Deleted {
                deleted: d.deleted,
                version: d.version,
            }),
        Request::Batch { puts, deletes } => {
            let mut ops: Vec<BatchOp> = puts
                .iter()
                .map(|(k, w)| BatchOp::put(k.as_bytes(), &w.value(value_bytes)))
                .collect();
            ops.extend(deletes.iter().map(|k| BatchOp::delete(k.as_bytes())));
            client
                .batch_versions(ops)
                .await
                .map(|answer| Answer::Batched {
                    versions: answer.versions,
                })
        }
        Request::Scan { prefix } => scan(client, prefix, value_bytes).await,
    };
    match result {
        Ok(answer) => Outcome::Ok(answer),
        Err(e) => classify(&e),
    }
}

/// The number of keys a scan page may hold: far more than any workload's key set, so
/// one page is the whole prefix.
const SCAN_PAGE: usize = 1000;

async fn scan(client: &Client, prefix: &str, value_bytes: usize) -> Result<Answer, ClientError> {
    let page = client
        .scan(&ScanOptions {
            prefix: prefix.as_bytes().to_vec(),
            start_after: None,
            limit: Some(SCAN_PAGE),
            consistency: Consistency::Linearizable,
        })
        .await?;
    let mut items = Vec::with_capacity(page.items.len());
    for item in &page.items {
        let bad = |e: base64::DecodeError| ClientError::Decode(format!("scan item: {e}"));
        let key = item.key_bytes().map_err(bad)?;
        let value = item.value_bytes().map_err(bad)?;
        items.push((
            String::from_utf8_lossy(&key).into_owned(),
            compact(&value, value_bytes, None),
            item.version,
        ));
    }
    Ok(Answer::Items {
        items,
        complete: page.next_start_after.is_none(),
    })
}

/// Definite refusals vs unknown outcomes (see [`crate::history`]).
pub fn classify(e: &ClientError) -> Outcome {
    match e {
        ClientError::Api { status, code, .. } => {
            let refused = match (*status, code.as_str()) {
                (503, "unavailable") => true,
                (503, _) => false,
                (400..=499, _) => true,
                _ => false,
            };
            if refused {
                Outcome::Refused {
                    status: *status,
                    code: code.clone(),
                }
            } else {
                Outcome::Unknown {
                    reason: format!("{status} {code}"),
                }
            }
        }
        // Nothing was sent on a connection that could not be opened.
        ClientError::Transport(t) if t.is_connect() => Outcome::Refused {
            status: 0,
            code: "connect".into(),
        },
        ClientError::Transport(t) if t.is_timeout() => Outcome::Unknown {
            reason: "timeout".into(),
        },
        ClientError::Transport(t) => Outcome::Unknown {
            reason: format!("transport: {t}"),
        },
        ClientError::Decode(m) => Outcome::Unknown {
            reason: format!("undecodable answer: {m}"),
        },
        ClientError::UnaddressableKey(_) => Outcome::Refused {
            status: 0,
            code: "unaddressable".into(),
        },
        // Nothing is sent with a token that cannot be a header.
        ClientError::BadToken | ClientError::BadCa(_) => Outcome::Refused {
            status: 0,
            code: "bad_token".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spent_key_moves_the_workload_to_fresh_keys() {
        let generations = Generations {
            budget: 3,
            current: AtomicU64::new(0),
            uses: std::sync::Mutex::new(vec![0; 2]),
        };
        let first = generation_keys("chaos/", 2, 0);
        let get = |key: &str| Request::Get { key: key.into() };
        let scan = Request::Scan {
            prefix: generation_prefix("chaos/", 0),
        };
        generations.charge(0, &get(&first[0]), &first);
        generations.charge(0, &scan, &first);
        assert_eq!(generations.current(), 0);
        // The third use of k00 spends it.
        generations.charge(0, &get(&first[0]), &first);
        assert_eq!(generations.current(), 1);
        // A late operation of the old generation counts for nothing.
        generations.charge(0, &scan, &first);
        assert_eq!(*generations.uses.lock().unwrap(), vec![0, 0]);

        let second = generation_keys("chaos/", 2, 1);
        assert_eq!(second, vec!["chaos/g1/k00", "chaos/g1/k01"]);
        // Each generation's scan covers exactly its own keys.
        let scan_second = Request::Scan {
            prefix: generation_prefix("chaos/", 1),
        };
        assert!(second
            .iter()
            .all(|k| crate::history::touches(&scan_second, k)));
        assert!(!first
            .iter()
            .any(|k| crate::history::touches(&scan_second, k)));
        assert!(!second.iter().any(|k| crate::history::touches(&scan, k)));
    }
}
