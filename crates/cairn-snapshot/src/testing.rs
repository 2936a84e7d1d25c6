//! Three real multi-raft hosts in one process, for protocol tests of this crate and
//! the ones built on it (`cairn-txn`). Compiled only with the `testing` feature.
//!
//! [`LocalCluster`] routes each request to its shard's current leader, retrying
//! `NotLeader`/`Unavailable` answers as the server's router does; it implements
//! [`Shards`] with this node (host 1) leading the meta group's chores. Tests that
//! need to intercept requests wrap it and call [`LocalCluster::route`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_raft::{
    Call, ControlPath, ControlRequest, MultiRaft, RaftConfig, RaftError, ShardError, ShardResponse,
};
use cairn_store::{NodeStore, ShardId};

use cairn_cluster::Shards;

/// Three hosts on loopback with fast ticks and a temporary data directory each.
pub struct LocalCluster {
    _dir: tempfile::TempDir,
    shards: u32,
    pub hosts: BTreeMap<u64, MultiRaft>,
    /// Each host's control path, taken at start.
    controls: BTreeMap<u64, ControlPath>,
}

fn free_addr() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local address")
}

impl LocalCluster {
    /// Start three hosts with `shards` data shards (plus the meta group).
    pub async fn start(shards: u32) -> LocalCluster {
        let dir = tempfile::tempdir().expect("tempdir");
        let peers: BTreeMap<u64, SocketAddr> = (1..=3).map(|id| (id, free_addr())).collect();
        let mut hosts = BTreeMap::new();
        for id in 1..=3 {
            let store = NodeStore::open(&dir.path().join(format!("n{id}"))).expect("store");
            let config = RaftConfig {
                node_id: id,
                cluster_id: "test".into(),
                shards,
                peers: peers.iter().map(|(&n, &a)| (n, a.into())).collect(),
                placement: cairn_raft::Placement::Everywhere,
                listen: peers[&id],
                tick: Duration::from_millis(20),
                election_ticks: 10,
                heartbeat_ticks: 2,
                log_compact_entries: 1000,
                request_ticks: 250,
                replica_threads: 2,
                limits: Default::default(),
                lease_reads: false,
                tls: None,
            };
            // The ports were chosen free, then let go; until a host binds its own, an
            // outgoing connection of this process (another host dialling, a test
            // running beside this one) may hold it for a moment as a local port:
            // retry the bind rather than fail on that race.
            let mut attempts = 0;
            let host = loop {
                match MultiRaft::start(config.clone(), store.clone()).await {
                    Err(RaftError::Io(e))
                        if e.kind() == std::io::ErrorKind::AddrInUse && attempts < 100 =>
                    {
                        attempts += 1;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    other => break other.expect("start"),
                }
            };
            hosts.insert(id, host);
        }
        let controls = hosts
            .iter()
            .map(|(&id, host)| (id, host.take_control().expect("the control path")))
            .collect();
        LocalCluster {
            _dir: dir,
            shards,
            hosts,
            controls,
        }
    }

    pub async fn stop(self) {
        for (_, host) in self.hosts {
            host.shutdown().await;
        }
    }

    /// Serve a call on its shard's leader, waiting out elections (up to ~5 s).
    pub async fn route(&self, call: impl Into<Call>) -> Result<ShardResponse, ShardError> {
        let request: Call = call.into();
        let shard = request.shard();
        for _ in 0..500 {
            let leader = self.hosts.values().find_map(|h| h.leader_of(shard));
            let host = leader.and_then(|l| Some((self.hosts.get(&l)?, self.controls.get(&l)?)));
            if let Some((host, control)) = host {
                let answer = match request.clone() {
                    Call::Client(req) => host.local().execute(req).await,
                    Call::Control(req) => control.local(req).await,
                };
                match answer {
                    Err(e) if e.is_retryable() => {}
                    other => return other,
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Err(ShardError::Unavailable {
            shard,
            reason: "no leader".into(),
        })
    }

    pub fn writes_applied(&self) -> u64 {
        self.hosts.values().map(|h| h.writes_applied()).sum()
    }
}

impl Shards for LocalCluster {
    fn shard_count(&self) -> u32 {
        self.shards
    }

    async fn control(&self, request: ControlRequest) -> Result<ShardResponse, ShardError> {
        self.route(request).await
    }

    /// Host 1 is "this node".
    async fn applied_here(&self, shard: ShardId, index: u64, timeout: Duration) -> bool {
        match self.hosts.get(&1).and_then(|h| h.local().gauges(shard)) {
            Some(gauges) => gauges.wait_applied(index, timeout).await,
            None => false,
        }
    }

    fn leads_meta(&self) -> bool {
        true
    }

    /// Host 1's own meta replica, as the server's router reads it.
    fn meta_get_here(&self, key: &[u8]) -> Option<cairn_store::Versioned> {
        let state = self.hosts.get(&1)?.local().state(self.shards)?;
        state.get(key, u64::MAX).ok()?
    }

    async fn writes_seen(&self) -> Option<u64> {
        Some(self.writes_applied())
    }
}
