//! Random puts and deletes applied to a ShardState agree with a BTreeMap model, for
//! get and scan at the latest version and at a random past version.

use std::collections::BTreeMap;

use cairn_store::{Command, Condition, NodeStore, OpKind, Page, PageLimit, WriteOp};
use proptest::prelude::*;

/// The model: for each applied index, the whole map as of that index.
type History = Vec<BTreeMap<Vec<u8>, (u64, Vec<u8>)>>;

fn key() -> impl Strategy<Value = Vec<u8>> {
    // A tiny alphabet so keys collide, share prefixes and contain 0x00 / 0xFF.
    proptest::collection::vec(
        prop_oneof![Just(0u8), Just(1), Just(b'a'), Just(0xFF)],
        0..4,
    )
}

/// A put (`Some(value)`) or a delete (`None`) of a key.
type Op = (Vec<u8>, Option<Vec<u8>>);

fn op() -> impl Strategy<Value = Op> {
    (
        key(),
        proptest::option::of(proptest::collection::vec(any::<u8>(), 0..3)),
    )
}

fn batches() -> impl Strategy<Value = Vec<Vec<Op>>> {
    proptest::collection::vec(proptest::collection::vec(op(), 0..4), 1..25)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn agrees_with_btreemap(batches in batches(), past in any::<prop::sample::Index>(), prefix in key(), limit in 1usize..6, budget in 0usize..80) {
        let dir = tempfile::tempdir().unwrap();
        let store = NodeStore::open(dir.path()).unwrap();
        let state = store.shard_state(0).unwrap();

        let mut history: History = vec![BTreeMap::new()];
        for (i, batch) in batches.iter().enumerate() {
            let index = i as u64 + 1;
            let mut map = history.last().unwrap().clone();
            let ops = batch
                .iter()
                .map(|(k, v)| {
                    match v {
                        Some(v) => { map.insert(k.clone(), (index, v.clone())); }
                        None => { map.remove(k); }
                    }
                    WriteOp {
                        key: k.clone(),
                        kind: v.clone().map_or(OpKind::Delete, OpKind::Put),
                        condition: Condition::Always,
                    }
                })
                .collect();
            state.apply(index, 1, Some(&Command::Batch(ops)))?;
            history.push(map);
        }

        let last = history.len() as u64 - 1;
        let at = past.index(history.len()) as u64;
        for (version, model) in [(u64::MAX, &history[last as usize]), (at, &history[at as usize])] {
            // Point reads of every key the model has ever seen, plus absent ones.
            for k in history.iter().flat_map(|m| m.keys()).chain([&prefix]) {
                let got = state.get(k, version)?.map(|v| (v.version, v.value));
                prop_assert_eq!(got, model.get(k).cloned(), "get {:?} at {}", k, version);
            }
            // Full scan and a paged prefix scan.
            let want: Vec<_> = model.iter().map(|(k, (ver, v))| (k.clone(), *ver, v.clone())).collect();
            let got: Vec<_> = state.scan(b"", None, usize::MAX, version)?.items
                .into_iter().map(|(k, v)| (k, v.version, v.value)).collect();
            prop_assert_eq!(&got, &want);

            // Paged by count and by bytes: the pages follow `more` and join up to the
            // whole prefix; a page stays within its limits but is never empty for want
            // of bytes.
            let want_prefix: Vec<_> = want.iter().filter(|(k, _, _)| k.starts_with(&prefix)).cloned().collect();
            let page_limit = PageLimit { items: limit, bytes: budget };
            let mut paged = Vec::new();
            let mut after: Option<Vec<u8>> = None;
            loop {
                let page = state.scan(&prefix, after.as_deref(), page_limit, version)?;
                let bytes: usize = page.items.iter().map(|(k, v)| Page::<()>::cost(k.len(), v.value.len())).sum();
                prop_assert!(page.items.len() <= limit);
                prop_assert!(page.items.len() == 1 || bytes <= budget, "{} bytes over {}", bytes, budget);
                prop_assert!(!page.more || !page.items.is_empty());
                after = page.items.last().map(|(k, _)| k.clone());
                paged.extend(page.items.into_iter().map(|(k, v)| (k, v.version, v.value)));
                if !page.more { break; }
            }
            prop_assert_eq!(paged, want_prefix);
        }
        prop_assert_eq!(state.live_keys()?, history[last as usize].len() as u64);
    }
}
