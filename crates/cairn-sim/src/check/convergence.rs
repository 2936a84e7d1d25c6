//! Replicas converge: at a common applied index, every replica of a shard holds the
//! same state.
//!
//! "The same state" is what a Raft snapshot would carry: `ShardState::export(at)`, the
//! horizon, the cut table and transaction records as of `at`, and every data version
//! at or below it. Replicas apply at their own pace, so comparing "whatever each has
//! now" would be meaningless; at a common index, equal logs must give equal exports.

use cairn_store::{NodeId, ShardId, ShardState};

/// Raw tree pairs, as `ShardState::export` yields them.
type Pairs = Vec<(Vec<u8>, Vec<u8>)>;

/// A digest of a replica's export at `at`, and the pairs it covered.
pub fn digest(state: &ShardState, at: u64) -> Result<(u64, Pairs), String> {
    let pairs: Pairs = state
        .export(at)
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    let mut h = xxhash_rust::xxh3::Xxh3::new();
    for (k, v) in &pairs {
        h.update(&(k.len() as u64).to_le_bytes());
        h.update(k);
        h.update(&(v.len() as u64).to_le_bytes());
        h.update(v);
    }
    Ok((h.digest(), pairs))
}

/// Compare every replica of `shard` at `at`; the first difference is named.
pub fn check(shard: ShardId, replicas: &[(NodeId, ShardState)], at: u64) -> Result<u64, String> {
    let mut first: Option<(NodeId, u64, Pairs)> = None;
    for (node, state) in replicas {
        let (d, pairs) = digest(state, at)?;
        match &first {
            None => first = Some((*node, d, pairs)),
            Some((n0, d0, p0)) if *d0 != d => {
                let diff = p0
                    .iter()
                    .zip(pairs.iter())
                    .find(|(a, b)| a != b)
                    .map(|(a, b)| {
                        format!(
                            "node {n0} has {:?}={:?}, node {node} has {:?}={:?}",
                            String::from_utf8_lossy(&a.0),
                            String::from_utf8_lossy(&a.1),
                            String::from_utf8_lossy(&b.0),
                            String::from_utf8_lossy(&b.1)
                        )
                    })
                    .unwrap_or_else(|| {
                        format!(
                            "node {n0} has {} pairs, node {node} has {}",
                            p0.len(),
                            pairs.len()
                        )
                    });
                return Err(format!(
                    "convergence: shard {shard} replicas differ at index {at}: {diff}"
                ));
            }
            Some(_) => {}
        }
    }
    Ok(first.map_or(0, |(_, d, _)| d))
}
