//! A replication factor below the cluster's size, against real processes: five nodes,
//! three replicas of each shard.
//!
//! - `five_nodes_hold_three_replicas_each_and_serve_every_key_from_any_node`: the
//!   placement `/v1/cluster` shows gives every group three voters and every node
//!   within one of the average; each node runs replicas of its groups only; leaders
//!   spread to at most each node's share; every
//!   key is written and read (linearizable, stale, at a snapshot) through every
//!   node, so nodes without a replica of a shard forward to its leader; a write to a
//!   shard the meta leader holds no replica of still brings an automatic snapshot; a
//!   backup taken through a node that misses shards holds them all, and restores
//!   into a cluster of another size (three nodes, a replica on each); a SIGKILLed
//!   node leaves every shard two of its three replicas, and the cluster serves on.

#[path = "harness/mod.rs"]
mod harness;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use cairn_client::api::{ClusterStatus, CreateBackup};
use cairn_client::{Client, Consistency, ReadAt};
use harness::{eventually, shard_of, Cluster, ClusterOptions};

const NODES: usize = 5;
const SHARDS: u32 = 8;
const REPLICAS: usize = 3;

fn key(i: usize) -> Vec<u8> {
    format!("placed/{i:03}").into_bytes()
}

/// Every group's voters, as node `id` reports them.
fn voters(status: &ClusterStatus) -> BTreeMap<u32, Vec<u64>> {
    status
        .placement
        .iter()
        .map(|p| (p.id, p.replicas.clone()))
        .collect()
}

/// Which node leads the meta group, by any node that knows.
async fn meta_leader(cluster: &Cluster) -> u64 {
    eventually("a known meta leader", Duration::from_secs(20), || async {
        for id in cluster.running() {
            if let Ok(status) = cluster.client(id).cluster().await {
                if let Some(leader) = status.meta.as_ref().and_then(|m| m.leader) {
                    return Ok(leader);
                }
            }
        }
        Err("no node knows".to_owned())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn five_nodes_hold_three_replicas_each_and_serve_every_key_from_any_node() {
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: NODES,
        shards: SHARDS,
        extra_args: vec!["--replication-factor".into(), REPLICAS.to_string()],
        ..ClusterOptions::default()
    })
    .await;
    let clients: Vec<Client> = cluster.ids().iter().map(|&id| cluster.client(id)).collect();

    // Placement: every node derives the same; three voters a group; even spread.
    let first = cluster.status(1).await;
    let placement = voters(&first);
    assert_eq!(placement.len(), SHARDS as usize + 1, "{first:?}");
    let mut held = BTreeMap::<u64, usize>::new();
    for (group, replicas) in &placement {
        let distinct: BTreeSet<_> = replicas.iter().collect();
        assert_eq!(distinct.len(), REPLICAS, "group {group}: {replicas:?}");
        for &node in replicas {
            assert!(
                (1..=NODES as u64).contains(&node),
                "group {group}: {replicas:?}"
            );
            *held.entry(node).or_default() += 1;
        }
    }
    let (most, least) = (held.values().max(), held.values().min());
    assert!(
        held.len() == NODES && most.unwrap() - least.unwrap() <= 1,
        "replicas per node: {held:?}"
    );
    for id in cluster.ids() {
        let status = cluster.status(id).await;
        assert_eq!(voters(&status), placement, "node {id} places differently");
        let node = id as u64;
        // The node runs replicas of its own groups and of no others.
        let local: BTreeSet<u32> = status.shards.iter().map(|s| s.id).collect();
        let own: BTreeSet<u32> = placement
            .iter()
            .filter(|(&g, r)| g < SHARDS && r.contains(&node))
            .map(|(&g, _)| g)
            .collect();
        assert_eq!(local, own, "node {id}'s replicas");
        assert_eq!(
            status.meta.is_some(),
            placement[&SHARDS].contains(&node),
            "node {id}'s meta replica"
        );
        let info = status.nodes.iter().find(|n| n.id == node).expect("itself");
        assert_eq!(info.replicas as usize, held[&node], "node {id}'s count");
    }

    // Leaders spread too: each node ends up leading at most its share of the nine
    // groups, ceil(9 / 5) = 2 (elections alone often give one node four).
    eventually(
        "leaders spread over the nodes",
        Duration::from_secs(60),
        || async {
            let mut leads = BTreeMap::new();
            for id in cluster.ids() {
                let status = cluster
                    .client(id)
                    .cluster()
                    .await
                    .map_err(|e| e.to_string())?;
                let own = status
                    .shards
                    .iter()
                    .chain(status.meta.as_ref())
                    .filter(|s| s.leader == Some(id as u64))
                    .count();
                leads.insert(id, own);
            }
            let total: usize = leads.values().sum();
            (total == SHARDS as usize + 1 && leads.values().all(|&n| n <= 2))
                .then_some(())
                .ok_or(format!("groups led per node: {leads:?}"))
        },
    )
    .await;

    // Every key through a different node, then read back through every node: each
    // node lacks replicas of some shards, so some reads and writes must forward.
    for i in 0..80 {
        let client = &clients[i % NODES];
        client
            .put(&key(i), format!("v{i}").as_bytes())
            .await
            .unwrap_or_else(|e| panic!("put {i} through node {}: {e}", i % NODES + 1));
    }
    let shards_written: BTreeSet<u32> = (0..80).map(|i| shard_of(&key(i), SHARDS)).collect();
    assert_eq!(shards_written.len(), SHARDS as usize, "every shard written");
    for (n, client) in clients.iter().enumerate() {
        for i in 0..80 {
            let got = client
                .get(&key(i))
                .await
                .unwrap_or_else(|e| panic!("get {i} through node {}: {e}", n + 1));
            assert_eq!(
                got.map(|g| g.value),
                Some(format!("v{i}").into_bytes()),
                "key {i} through node {}",
                n + 1
            );
        }
    }
    // A stale read may lag a little; through any node it soon shows every write.
    for (n, client) in clients.iter().enumerate() {
        eventually(
            "stale scans to catch up",
            Duration::from_secs(10),
            || async {
                let stale = client
                    .scan_all(b"placed/", Consistency::Stale)
                    .await
                    .map_err(|e| e.to_string())?;
                (stale.len() == 80).then_some(()).ok_or(format!(
                    "node {} sees {}",
                    n + 1,
                    stale.len()
                ))
            },
        )
        .await;
    }

    // A snapshot through the last node, read at through every node.
    let snapshot = clients[NODES - 1]
        .create_snapshot(Some("placed"))
        .await
        .expect("snapshot");
    assert_eq!(snapshot.cuts.len(), SHARDS as usize, "{snapshot:?}");
    clients[0].put(&key(0), b"after").await.expect("overwrite");
    for client in &clients {
        let scan = client
            .scan_all_at(b"placed/", &ReadAt::Snapshot(snapshot.id.to_string()))
            .await
            .expect("scan at the snapshot");
        assert_eq!(scan.value.len(), 80);
        assert_eq!(
            scan.value[0].1, b"v0",
            "the snapshot predates the overwrite"
        );
    }

    // Automatic snapshots follow writes to shards the meta leader holds none of.
    let leader = meta_leader(&cluster).await;
    let elsewhere: Vec<u32> = (0..SHARDS)
        .filter(|s| !placement[s].contains(&leader))
        .collect();
    assert!(!elsewhere.is_empty(), "{placement:?}");
    let far_key = (0..)
        .map(|i| format!("far/{i}").into_bytes())
        .find(|k| elsewhere.contains(&shard_of(k, SHARDS)))
        .expect("a key of such a shard");
    let written = clients[0].put(&far_key, b"far").await.expect("far put");
    eventually(
        "an automatic snapshot holding the write",
        Duration::from_secs(20),
        || async {
            let newest = clients[0]
                .list_snapshots(None, Some(1))
                .await
                .map_err(|e| e.to_string())?;
            let id = newest.snapshots.first().ok_or("no snapshots")?.id;
            let got = clients[0]
                .get_at(&far_key, &ReadAt::Snapshot(id.to_string()))
                .await
                .map_err(|e| e.to_string())?;
            match got.value {
                Some(g) if g.version == written => Ok(()),
                other => Err(format!("snapshot {id} holds {other:?}")),
            }
        },
    )
    .await;

    // A backup through a node that holds only some shards reads the rest remotely.
    let backup_node = (1..=NODES as u64)
        .find(|n| (0..SHARDS).any(|s| !placement[&s].contains(n)))
        .expect("a node missing a shard");
    // Outside the cluster's directory, which goes with the cluster.
    let backups = tempfile::tempdir().expect("backup dir");
    let dest = backups.path().display().to_string();
    let client = cluster.client(backup_node as usize);
    let started = client
        .create_backup(&CreateBackup {
            destination: Some(dest.clone()),
            incremental: false,
            snapshot: Some(snapshot.id.to_string()),
        })
        .await
        .expect("POST /v1/backups");
    let done = eventually("the backup to finish", Duration::from_secs(60), || async {
        let info = client
            .backup(&started.id)
            .await
            .map_err(|e| e.to_string())?;
        (info.state != "running")
            .then_some(info)
            .ok_or_else(|| "running".to_owned())
    })
    .await;
    assert_eq!(done.state, "done", "{done:?}");
    assert_eq!(done.progress.shards_done, SHARDS);
    assert_eq!(done.progress.keys, 80, "{done:?}");

    // A SIGKILLed node leaves every shard a quorum: writes and reads go on.
    cluster.kill(2).await;
    // `cairn node list` shows every node, its replicas, its state, and that node 2's
    // link is down.
    let endpoint = format!("http://{}", cluster.http_addr(1));
    eventually(
        "node list to show node 2 down",
        Duration::from_secs(20),
        || async {
            let args: Vec<String> = ["node", "list", "--endpoint", &endpoint]
                .iter()
                .map(|s| s.to_string())
                .collect();
            let output = Cluster::command(&args)
                .output()
                .map_err(|e| e.to_string())?;
            let text = String::from_utf8_lossy(&output.stdout).into_owned();
            let rows: Vec<Vec<&str>> = text
                .lines()
                .skip(1)
                .map(|l| l.split_whitespace().collect())
                .collect();
            let link = |id: &str| rows.iter().find(|r| r[0] == id).map(|r| r[5]);
            let all_active = rows.iter().all(|r| r[4] == "active");
            let counts_right = rows.iter().all(|r| {
                r[0].parse::<u64>()
                    .is_ok_and(|id| r[2] == held[&id].to_string())
            });
            (output.status.success()
                && rows.len() == NODES
                && counts_right
                && all_active
                && link("1") == Some("self")
                && link("2") == Some("down"))
            .then_some(())
            .ok_or(text)
        },
    )
    .await;
    for (n, client) in clients.iter().enumerate() {
        if n == 1 {
            continue;
        }
        for i in (0..80).step_by(7) {
            let value = format!("w{i}-{n}");
            eventually(
                "a write with a node down",
                Duration::from_secs(20),
                || async {
                    client
                        .put(&key(i), value.as_bytes())
                        .await
                        .map_err(|e| e.to_string())
                },
            )
            .await;
            let got = client.get(&key(i)).await.expect("read with a node down");
            assert_eq!(got.map(|g| g.value), Some(value.into_bytes()));
        }
    }
    drop(cluster);

    // The backup restores into a cluster of another size and placement.
    let restored = Cluster::start_prepared(ClusterOptions::default(), |c| {
        for id in c.ids() {
            let dir = c.data_dir(id).display().to_string();
            let node = id.to_string();
            let args: Vec<String> = [
                "restore",
                "--from",
                &dest,
                "--to-data-dir",
                &dir,
                "--node-id",
                &node,
                "--initial-cluster",
                c.initial_cluster(),
            ]
            .iter()
            .map(|s| s.to_string())
            .collect();
            let output = Cluster::command(&args).output().expect("run restore");
            assert!(
                output.status.success(),
                "restore: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
    })
    .await;
    let scan = restored
        .client(3)
        .scan_all(b"placed/", Consistency::Linearizable)
        .await
        .expect("scan the restored cluster");
    let got: Vec<(Vec<u8>, Vec<u8>)> = scan.into_iter().map(|(k, v, _)| (k, v)).collect();
    let want: Vec<(Vec<u8>, Vec<u8>)> = (0..80)
        .map(|i| (key(i), format!("v{i}").into_bytes()))
        .collect();
    assert_eq!(got, want, "the restored cluster holds the snapshot");
}

/// Node `id`'s replicas, as its own `/v1/cluster` lists them.
async fn hosted_by(cluster: &Cluster, id: usize) -> BTreeSet<u32> {
    let status = cluster.status(id).await;
    status
        .shards
        .iter()
        .map(|s| s.id)
        .chain(status.meta.iter().map(|m| m.id))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_move_between_nodes_and_a_node_is_decommissioned() {
    const SHARDS: u32 = 4;
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 4,
        shards: SHARDS,
        // Moves by hand only: rebalancing would even the counts out behind them.
        extra_args: vec![
            "--replication-factor".into(),
            "3".into(),
            "--rebalance-rate".into(),
            "0".into(),
        ],
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client(1);
    let keys: Vec<Vec<u8>> = (0..120).map(key).collect();
    for (i, k) in keys.iter().enumerate() {
        client
            .put(k, format!("v{i}").as_bytes())
            .await
            .expect("put");
    }
    // A snapshot before the move, read and reverted to after it.
    client
        .create_snapshot(Some("before-move"))
        .await
        .expect("snapshot");

    // A data shard, a node without a replica of it, and its leader as the one to move
    // (so leadership has to leave it first).
    let placement = voters(&cluster.status(1).await);
    let (shard, to) = (0..SHARDS)
        .find_map(|s| {
            (1..=4u64)
                .find(|n| !placement[&s].contains(n))
                .map(|n| (s, n))
        })
        .expect("a node without a replica");
    let from = eventually("a leader of the shard", Duration::from_secs(20), || async {
        cluster
            .leader_node_of(shard)
            .await
            .map(|n| n as u64)
            .ok_or_else(|| "no leader yet".to_owned())
    })
    .await;
    assert!(placement[&shard].contains(&from), "{placement:?}");
    assert!(hosted_by(&cluster, to as usize)
        .await
        .iter()
        .all(|&g| g != shard));

    let moved = cluster
        .client(to as usize)
        .move_replica(shard, from, to)
        .await
        .expect("move");
    let mut expected: Vec<u64> = placement[&shard]
        .iter()
        .map(|&n| if n == from { to } else { n })
        .collect();
    expected.sort_unstable();
    assert_eq!(moved.voters, expected, "{moved:?}");
    assert!(moved.learners.is_empty(), "{moved:?}");
    let after = cluster.status(to as usize).await;
    let placed = after
        .placement
        .iter()
        .find(|p| p.id == shard)
        .expect("placed");
    assert_eq!(placed.replicas, expected, "{placed:?}");
    assert!(placed.learners.is_empty(), "{placed:?}");
    assert_ne!(moved.leader, Some(from), "{moved:?}");

    // The new node runs the replica, the old one dropped it; nothing else moved.
    assert!(hosted_by(&cluster, to as usize).await.contains(&shard));
    assert!(!hosted_by(&cluster, from as usize).await.contains(&shard));
    for id in cluster.ids() {
        let seen = voters(&cluster.status(id).await);
        if hosted_by(&cluster, id).await.contains(&shard) {
            assert_eq!(seen[&shard], expected, "node {id}");
        }
    }

    // Every key reads back through every node; the new voter serves its shard's keys
    // from its own state (stale reads answer locally on voters only).
    let of_shard: Vec<(usize, &Vec<u8>)> = keys
        .iter()
        .enumerate()
        .filter(|(_, k)| shard_of(k, SHARDS) == shard)
        .collect();
    assert!(!of_shard.is_empty());
    for id in cluster.ids() {
        let c = cluster.client(id);
        for (i, k) in keys.iter().enumerate() {
            let got = c.get(k).await.expect("get").expect("present");
            assert_eq!(got.value, format!("v{i}").into_bytes(), "node {id}");
        }
    }
    let new_voter = cluster.client(to as usize);
    eventually(
        "the new voter's own state",
        Duration::from_secs(20),
        || async {
            for (i, k) in &of_shard {
                let got = new_voter
                    .get_with(k, Consistency::Stale)
                    .await
                    .map_err(|e| e.to_string())?;
                if got.map(|g| g.value) != Some(format!("v{i}").into_bytes()) {
                    return Err(format!("key {i} not there yet"));
                }
            }
            Ok(())
        },
    )
    .await;

    // Across the move: the new voter answers reads at the snapshot taken before it
    // (the Raft snapshot that built it carried the shard's history), and a prefix
    // reverted to that snapshot is reverted on every shard, the moved one included.
    for (i, k) in keys.iter().enumerate() {
        client
            .put(k, format!("changed{i}").as_bytes())
            .await
            .expect("overwrite");
    }
    for (i, k) in &of_shard {
        let old = new_voter
            .get_at(k, &ReadAt::Snapshot("before-move".into()))
            .await
            .expect("read at the snapshot")
            .value
            .expect("present at the snapshot");
        assert_eq!(old.value, format!("v{i}").into_bytes());
    }
    let reverted = new_voter
        .revert(b"placed/", "before-move")
        .await
        .expect("revert across the move");
    assert_eq!(reverted.restored, keys.len() as u64, "{reverted:?}");
    for id in cluster.ids() {
        let c = cluster.client(id);
        for (i, k) in keys.iter().enumerate() {
            let got = c.get(k).await.expect("get").expect("present");
            assert_eq!(
                got.value,
                format!("v{i}").into_bytes(),
                "node {id}, key {i}"
            );
        }
    }

    // Asking again finds the move done and changes nothing; a move that makes no
    // sense is a 400 that says why.
    let again = client.move_replica(shard, from, to).await.expect("again");
    assert_eq!(again.voters, expected);
    let err = client
        .move_replica(shard, from, 9)
        .await
        .expect_err("unknown node");
    assert_eq!(err.code(), Some("bad_move"), "{err}");
    let err = client
        .move_replica(shard, to, to)
        .await
        .expect_err("same node");
    assert_eq!(err.code(), Some("bad_move"), "{err}");

    // Placement survives restarts: SIGKILL both nodes; the new one reopens the
    // replica, the old one does not bring its copy back.
    cluster.kill(to as usize).await;
    cluster.kill(from as usize).await;
    cluster.start_node(to as usize);
    cluster.start_node(from as usize);
    cluster.wait_ready().await;
    assert!(hosted_by(&cluster, to as usize).await.contains(&shard));
    assert!(!hosted_by(&cluster, from as usize).await.contains(&shard));
    let (i, k) = of_shard[0];
    client.put(k, b"after the move").await.expect("write after");
    for id in cluster.ids() {
        let got = cluster
            .client(id)
            .get(k)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.value, b"after the move", "node {id}, key {i}");
    }

    // Decommission: every replica leaves node `from`; each group keeps three voters,
    // none on it; its state says so; every key still reads through it (forwarded).
    let gone = from as usize;
    let before = hosted_by(&cluster, gone).await;
    assert!(!before.is_empty(), "node {gone} holds replicas before");
    let done = client.decommission(from).await.expect("decommission");
    assert_eq!(done.moved.len(), before.len(), "{done:?}");
    assert!(hosted_by(&cluster, gone).await.is_empty());
    let status = cluster.status(1).await;
    for p in &status.placement {
        assert_eq!(p.replicas.len(), 3, "{p:?}");
        assert!(!p.replicas.contains(&from), "{p:?}");
    }
    let node = |n: u64| {
        status
            .nodes
            .iter()
            .find(|x| x.id == n)
            .cloned()
            .expect("listed")
    };
    assert_eq!(node(from).state, "decommissioned");
    assert_eq!(node(from).replicas, 0);
    for (j, k) in keys.iter().enumerate() {
        let got = cluster
            .client(gone)
            .get(k)
            .await
            .expect("get")
            .expect("present");
        let want = if j == i {
            b"after the move".to_vec()
        } else {
            format!("v{j}").into_bytes()
        };
        assert_eq!(got.value, want, "key {j}");
    }
    // Three active nodes are left for groups of three: no more can go, and the
    // decommissioned node takes no replica back.
    let other = cluster
        .ids()
        .into_iter()
        .find(|&n| n != gone)
        .expect("another") as u64;
    let err = client.decommission(other).await.expect_err("too few nodes");
    assert_eq!(err.code(), Some("bad_move"), "{err}");
    let (group, holder) = (status.placement[0].id, status.placement[0].replicas[0]);
    let err = client
        .move_replica(group, holder, from)
        .await
        .expect_err("onto a decommissioned node");
    assert_eq!(err.code(), Some("bad_move"), "{err}");
    cluster.assert_alive();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dead_nodes_replicas_are_recreated_and_it_holds_none_when_it_returns() {
    const SHARDS: u32 = 4;
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 4,
        shards: SHARDS,
        extra_args: vec![
            "--replication-factor".into(),
            "3".into(),
            "--dead-after".into(),
            "2s".into(),
        ],
        ..ClusterOptions::default()
    })
    .await;
    let keys: Vec<Vec<u8>> = (0..60).map(key).collect();
    for (i, k) in keys.iter().enumerate() {
        cluster
            .client(1)
            .put(k, format!("v{i}").as_bytes())
            .await
            .expect("put");
    }
    // Not the meta leader: the one that watches stays up and keeps counting.
    let meta = meta_leader(&cluster).await;
    let dead = cluster
        .ids()
        .into_iter()
        .find(|&n| n as u64 != meta)
        .expect("another node");
    let held = hosted_by(&cluster, dead).await;
    assert!(!held.is_empty());
    let watcher = meta as usize;
    cluster.kill(dead).await;

    // Every group it held gets a third voter elsewhere; the node is marked dead.
    eventually(
        "the dead node's replicas re-created",
        Duration::from_secs(60),
        || async {
            let status = cluster
                .client(watcher)
                .cluster()
                .await
                .map_err(|e| e.to_string())?;
            let state = status
                .nodes
                .iter()
                .find(|n| n.id == dead as u64)
                .map(|n| n.state.clone());
            let placed = status
                .placement
                .iter()
                .all(|p| p.replicas.len() == 3 && !p.replicas.contains(&(dead as u64)));
            (placed && state.as_deref() == Some("dead"))
                .then_some(())
                .ok_or(format!("{state:?}: {:?}", status.placement))
        },
    )
    .await;
    for (i, k) in keys.iter().enumerate() {
        let got = cluster
            .client(watcher)
            .get(k)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.value, format!("v{i}").into_bytes());
    }

    // It comes back: it learns its groups removed it and drops every replica, while
    // serving requests by forwarding them.
    cluster.start_node(dead);
    eventually(
        "the returning node to drop its stale replicas",
        Duration::from_secs(60),
        || async {
            let status = cluster
                .client(dead)
                .cluster()
                .await
                .map_err(|e| e.to_string())?;
            (status.shards.is_empty() && status.meta.is_none())
                .then_some(())
                .ok_or(format!(
                    "still holds {:?}",
                    status.shards.iter().map(|s| s.id).collect::<Vec<_>>()
                ))
        },
    )
    .await;
    for (i, k) in keys.iter().enumerate() {
        let got = cluster
            .client(dead)
            .get(k)
            .await
            .expect("get")
            .expect("present");
        assert_eq!(got.value, format!("v{i}").into_bytes());
    }
    cluster.assert_alive();
}

/// A node started by hand, outside the cluster's own set: killed when dropped.
struct Joiner {
    child: std::process::Child,
    http: std::net::SocketAddr,
    args: Vec<String>,
}

impl Joiner {
    /// `cairn server --id ID ... --join <node 1's HTTP>`, on fresh ports, in `dir`.
    fn spawn(cluster: &Cluster, id: u64, dir: &std::path::Path) -> Joiner {
        let port = || {
            std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .expect("a free port")
        };
        let (http, peer) = (port(), port());
        let args: Vec<String> = [
            "server",
            "--id",
            &id.to_string(),
            "--data-dir",
            &dir.display().to_string(),
            "--http",
            &http.to_string(),
            "--peer",
            &peer.to_string(),
            "--join",
            &format!("http://{}", cluster.http_addr(1)),
            "--rebalance-rate",
            "60",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        Joiner::run(args, http)
    }

    fn run(args: Vec<String>, http: std::net::SocketAddr) -> Joiner {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(format!("{}.log", args[4]))
            .expect("log file");
        let child = Cluster::command(&args)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn");
        Joiner { child, http, args }
    }

    fn client(&self) -> Client {
        Client::new(format!("http://{}", self.http))
    }

    fn log(&self) -> String {
        std::fs::read_to_string(format!("{}.log", self.args[4])).unwrap_or_default()
    }

    /// SIGKILL, then start again with the same arguments.
    fn restart(&mut self) {
        self.kill();
        self.start();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again (after [`Joiner::kill`]) with the same arguments.
    fn start(&mut self) {
        *self = Joiner::run(self.args.clone(), self.http);
    }
}

impl Drop for Joiner {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_joins_a_running_cluster_and_takes_its_replicas() {
    const SHARDS: u32 = 4;
    let mut cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        shards: SHARDS,
        extra_args: vec!["--rebalance-rate".into(), "60".into()],
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client(1);
    let keys: Vec<Vec<u8>> = (0..60).map(key).collect();
    for (i, k) in keys.iter().enumerate() {
        client
            .put(k, format!("v{i}").as_bytes())
            .await
            .expect("put");
    }

    // Node 4 joins through node 1; every node learns of it.
    let mut four = Joiner::spawn(&cluster, 4, &cluster.dir().join("joined-4"));
    let joined = four.client();
    eventually(
        "node 4 to join and serve",
        Duration::from_secs(30),
        || async {
            let status = joined.cluster().await.map_err(|e| e.to_string())?;
            (status.nodes.len() == 4 && status.cluster_id == cluster.status(1).await.cluster_id)
                .then_some(())
                .ok_or(format!("{:?}", status.nodes))
        },
    )
    .await;
    for id in cluster.ids() {
        let c = cluster.client(id);
        eventually(
            "the others to know node 4",
            Duration::from_secs(20),
            || async {
                let status = c.cluster().await.map_err(|e| e.to_string())?;
                status
                    .nodes
                    .iter()
                    .any(|n| n.id == 4 && n.state == "active")
                    .then_some(())
                    .ok_or(format!("{:?}", status.nodes))
            },
        )
        .await;
    }
    // It serves every key at once, by forwarding where it holds no replica yet.
    for (i, k) in keys.iter().enumerate() {
        let got = joined.get(k).await.expect("get").expect("present");
        assert_eq!(got.value, format!("v{i}").into_bytes());
    }

    // An id that is taken is refused, and the node says what to do.
    let taken = Joiner::spawn(&cluster, 2, &cluster.dir().join("joined-2"));
    let mut taken = taken;
    let status = tokio::task::spawn_blocking(move || {
        let status = taken.child.wait().expect("wait");
        (status, taken)
    })
    .await
    .expect("join");
    assert!(!status.0.success());
    assert!(
        status.1.log().contains("is taken by the member"),
        "{}",
        status.1.log()
    );

    // Rebalancing moves replicas onto it until every node holds within one of the
    // others: 15 replicas (four shards and the meta group, three each) over four
    // nodes is 4, 4, 4 and 3.
    eventually(
        "replicas to spread onto node 4",
        Duration::from_secs(60),
        || async {
            let status = client.cluster().await.map_err(|e| e.to_string())?;
            let counts: Vec<u32> = status.nodes.iter().map(|n| n.replicas).collect();
            let spread = counts.len() == 4
                && counts.iter().all(|&c| c == 3 || c == 4)
                && status.placement.iter().all(|p| p.replicas.len() == 3);
            let notes: Vec<String> = cluster
                .ids()
                .into_iter()
                .flat_map(|id| {
                    cluster
                        .log_tail(id, 3000)
                        .lines()
                        .filter(|l| l.contains("rebalanc") || l.contains("even out"))
                        .map(|l| format!("node {id}: {}", &l[l.len().saturating_sub(300)..]))
                        .collect::<Vec<_>>()
                })
                .collect();
            spread
                .then_some(())
                .ok_or(format!("{counts:?}\n{}", notes.join("\n")))
        },
    )
    .await;
    let mine: Vec<u32> = joined
        .cluster()
        .await
        .expect("status")
        .shards
        .iter()
        .map(|s| s.id)
        .collect();
    assert!(!mine.is_empty());
    // It serves its own shards' keys from its own state.
    eventually(
        "node 4 to serve its own replicas",
        Duration::from_secs(30),
        || async {
            for (i, k) in keys.iter().enumerate() {
                if !mine.contains(&shard_of(k, SHARDS)) {
                    continue;
                }
                let got = joined
                    .get_with(k, Consistency::Stale)
                    .await
                    .map_err(|e| e.to_string())?;
                if got.map(|g| g.value) != Some(format!("v{i}").into_bytes()) {
                    return Err(format!("key {i}"));
                }
            }
            Ok(())
        },
    )
    .await;

    // A SIGKILL and restart: node 4 is still a member with its replicas.
    four.restart();
    let joined = four.client();
    eventually(
        "node 4 back with its replicas",
        Duration::from_secs(30),
        || async {
            let status = joined.cluster().await.map_err(|e| {
                let log = four.log();
                let why: Vec<&str> = log
                    .lines()
                    .filter(|l| l.starts_with("cairn:") || l.contains("ERROR"))
                    .collect();
                format!("{e}; its log says:\n{}", why.join("\n"))
            })?;
            let held: Vec<u32> = status.shards.iter().map(|s| s.id).collect();
            (held == mine)
                .then_some(())
                .ok_or(format!("holds {held:?}, not {mine:?}"))
        },
    )
    .await;
    client.put(&keys[0], b"after").await.expect("write");
    let got = joined.get(&keys[0]).await.expect("get").expect("present");
    assert_eq!(got.value, b"after");

    // A founder restarted while the meta group cannot answer (every other node is
    // down) still knows node 4 and dials it: it recorded the member that joined.
    // Learning it only from the meta group would leave it deaf to node 4 whenever
    // node 4 leads that group, which the chaos harness once hit (a shard's leader on
    // node 4 could never reach the restarted founder, and its keys went unavailable).
    four.kill();
    cluster.kill_all().await;
    cluster.start_node(1);
    let one = cluster.client(1);
    eventually(
        "the restarted founder to know node 4 with the meta group down",
        Duration::from_secs(30),
        || async {
            let status = one.cluster().await.map_err(|e| e.to_string())?;
            let knows = status.nodes.iter().any(|n| n.id == 4);
            let dials = status.links.iter().any(|l| l.peer == 4);
            (knows && dials).then_some(()).ok_or(format!(
                "nodes {:?}, links to {:?}",
                status.nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
                status.links.iter().map(|l| l.peer).collect::<Vec<_>>()
            ))
        },
    )
    .await;
    cluster.start_node(2);
    cluster.start_node(3);
    four.start();
    let joined = four.client();
    eventually(
        "writes after the full restart",
        Duration::from_secs(30),
        || async {
            client
                .put(&keys[1], b"again")
                .await
                .map_err(|e| e.to_string())?;
            let got = joined.get(&keys[1]).await.map_err(|e| e.to_string())?;
            (got.map(|g| g.value) == Some(b"again".to_vec()))
                .then_some(())
                .ok_or("not read back".to_owned())
        },
    )
    .await;
}

/// A node a join admitted is `joining` until the meta leader reaches it, and takes
/// no replicas meanwhile: one admitted but never started (here, an address nothing
/// listens on) receives no move, by hand or by rebalancing. (The join test above
/// sees a started one become `active`.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_admitted_node_that_never_starts_stays_joining_and_takes_nothing() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 3,
        shards: 2,
        extra_args: vec!["--rebalance-rate".into(), "600".into()],
        ..ClusterOptions::default()
    })
    .await;
    let client = cluster.client(2);
    let nowhere = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");
    let answer = client
        .join(9, &nowhere.to_string())
        .await
        .expect("node 9 admitted");
    assert!(answer.members.iter().any(|m| m.id == 9));
    let state_of_9 = || async {
        let status = cluster.client(1).cluster().await.expect("status");
        let node = status.nodes.iter().find(|n| n.id == 9).cloned();
        (node.map(|n| (n.state, n.replicas)), status)
    };
    eventually(
        "node 9 listed as joining",
        Duration::from_secs(10),
        || async {
            match state_of_9().await.0 {
                Some((state, 0)) if state == "joining" => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    // Rebalancing runs every few seconds at this rate; nothing goes to node 9.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let (state, status) = state_of_9().await;
    assert_eq!(state, Some(("joining".to_owned(), 0)));
    assert!(status
        .placement
        .iter()
        .all(|p| !p.replicas.contains(&9) && !p.learners.contains(&9)));
    let refused = client
        .move_replica(0, status.placement[0].replicas[0], 9)
        .await
        .expect_err("a move to a joining node");
    assert_eq!(refused.code(), Some("bad_move"), "{refused}");
    assert!(refused.to_string().contains("joining"), "{refused}");
}
