//! Oracle of the `manifest_decode` target: `Manifest::from_json`, which reads every
//! backup's `manifest.json` before verify, restore or retention trusts it.
//!
//! On arbitrary bytes it never panics; an error names the manifest's file; an
//! accepted manifest is consistent (a cut for every shard `0..shards` in its snapshot,
//! its parent and what it covers; exactly one file per shard; paths inside the backup)
//! and survives its own `to_json`.

use cairn_backup::Manifest;

const NAME: &str = "20261123T153001Z-000007/manifest.json";

pub fn check(data: &[u8]) {
    match Manifest::from_json(data, NAME) {
        Ok(manifest) => {
            let shards = manifest.shards as usize;
            let every_shard = |cuts: &std::collections::BTreeMap<u32, u64>| {
                cuts.keys().copied().eq(0..manifest.shards)
            };
            assert!(every_shard(&manifest.snapshot.cuts), "snapshot cuts");
            assert!(
                manifest.covered.iter().all(|c| every_shard(&c.cuts)),
                "covered cuts"
            );
            assert!(
                manifest.parent.iter().all(|p| every_shard(&p.cuts)),
                "parent cuts"
            );
            assert_eq!(manifest.files.len(), shards);
            let mut files: Vec<u32> = manifest.files.iter().map(|f| f.shard).collect();
            files.sort_unstable();
            assert!(files.iter().copied().eq(0..manifest.shards));
            for file in &manifest.files {
                assert!(!file.path.contains("..") && !file.path.starts_with('/'));
            }
            let again = Manifest::from_json(&manifest.to_json(), NAME)
                .expect("a manifest's own JSON parses");
            assert_eq!(again, manifest);
        }
        Err(e) => assert!(
            e.to_string().contains(NAME),
            "the error does not name the file: {e}"
        ),
    }
}
