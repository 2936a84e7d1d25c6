//! Property tests of the backup decoders: manifests and shard files, valid ones and
//! single mutations of them (of the stored bytes and of the decompressed payload),
//! through the fuzz targets' oracles (`fuzz/oracles/`): never a panic, a corrupt input
//! is an error naming its file, and what is accepted is consistent. Fixed seed and
//! case count, so CI runs the same cases every time (docs/FUZZING.md).

#[path = "../../../fuzz/oracles/allocation_cap.rs"]
mod allocation_cap;
#[path = "../../../fuzz/oracles/input.rs"]
mod input;
#[path = "../../../fuzz/oracles/manifest_decode.rs"]
mod manifest_decode;
#[path = "../../../fuzz/oracles/shard_file.rs"]
mod shard_file;

/// As in the fuzz targets: one allocation over 256 MiB aborts (a length field sized a
/// buffer), so a regression of that kind fails here too.
#[global_allocator]
static ALLOCATOR: allocation_cap::AllocationCap = allocation_cap::AllocationCap;

#[path = "../../../tests/support/mutation.rs"]
mod mutation;
use std::collections::BTreeMap;
use std::io::Read;

use cairn_backup::{FileEntry, Manifest, ParentRef, Record, ShardWriter, SnapshotRef};
use mutation::{mutate, mutation};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x00BA_C0FF_EE01),
        failure_persistence: None,
        ..Config::default()
    }
}

fn cuts(shards: u32) -> impl Strategy<Value = BTreeMap<u32, u64>> {
    vec(1..1000u64, shards as usize).prop_map(|c| {
        c.into_iter()
            .enumerate()
            .map(|(s, c)| (s as u32, c))
            .collect()
    })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (1..4u32).prop_flat_map(|shards| {
        (
            cuts(shards),
            proptest::option::of(cuts(shards)),
            vec(cuts(shards), 0..2),
            any::<bool>(),
            "[a-z0-9./-]{0,12}",
        )
            .prop_map(
                move |(snapshot, parent, covered, scheduled, path)| Manifest {
                    format_version: 1,
                    cluster_id: "befddce112508f48".into(),
                    backup_id: "20261123T153001Z-000007".into(),
                    snapshot: SnapshotRef {
                        id: 42,
                        time: "2026-11-23T13:35:08.218Z".into(),
                        cuts: snapshot,
                    },
                    parent: parent.map(|cuts| ParentRef {
                        backup_id: "20261123T150001Z-000005".into(),
                        cuts,
                    }),
                    shards,
                    files: (0..shards)
                        .map(|s| FileEntry {
                            path: if s == 0 {
                                path.clone()
                            } else {
                                format!("shard-{s}.cbk")
                            },
                            shard: s,
                            bytes: 100,
                            blake3: "9f2c".repeat(16),
                            keys: 1,
                            versions: 1,
                        })
                        .collect(),
                    schedule: scheduled.then(|| "quarter-hourly".into()),
                    covered: covered
                        .into_iter()
                        .map(|cuts| SnapshotRef {
                            id: 40,
                            time: "2026-11-23T13:35:06.101Z".into(),
                            cuts,
                        })
                        .collect(),
                    encryption: None,
                    mac: None,
                },
            )
    })
}

fn records() -> impl Strategy<Value = Vec<Record>> {
    vec(
        (
            vec(prop_oneof![Just(0u8), Just(b'a'), any::<u8>()], 0..6),
            1..20u64,
            proptest::option::of(vec(any::<u8>(), 0..12)),
        ),
        0..12,
    )
    .prop_map(|records| {
        let mut records: Vec<Record> = records
            .into_iter()
            .map(|(key, version, value)| Record {
                key,
                version,
                value,
            })
            .collect();
        records.sort_by(|a, b| a.key.cmp(&b.key).then(b.version.cmp(&a.version)));
        records.dedup_by(|a, b| a.key == b.key && a.version == b.version);
        records
    })
}

/// A shard file of `records`, as the backup writes it.
fn shard_file(shard: u32, records: &[Record]) -> Vec<u8> {
    let mut writer = ShardWriter::new(Vec::new(), shard).expect("writer");
    for record in records {
        writer.push(record).expect("sorted records");
    }
    writer.finish().expect("finish").0
}

proptest! {
    #![proptest_config(config(1000))]

    #[test]
    fn a_mutated_manifest_is_refused_naming_the_file_or_consistent(
        m in manifest(), mutation in mutation(),
    ) {
        manifest_decode::check(&m.to_json());
        manifest_decode::check(&mutate(m.to_json(), &mutation));
    }

    #[test]
    fn arbitrary_bytes_are_no_manifest_and_no_shard_file(data in vec(any::<u8>(), 0..64)) {
        manifest_decode::check(&data);
        shard_file::check(&data);
    }
}

proptest! {
    #![proptest_config(config(300))]

    #[test]
    fn a_mutated_shard_file_is_refused_naming_the_file_or_exact(
        shard in 0..4u32, records in records(), m in mutation(),
    ) {
        let file = shard_file(shard, &records);
        // As stored (zstd's checksum and framing in the way) ...
        let mut stored = vec![0u8];
        stored.extend(mutate(file.clone(), &m));
        shard_file::check(&stored);
        // ... and as decompressed, re-framed by the oracle: the record parser itself.
        let mut payload = Vec::new();
        zstd::Decoder::new(&file[..]).expect("zstd").read_to_end(&mut payload).expect("decompress");
        let mut reframed = vec![1u8];
        reframed.extend(mutate(payload, &m));
        shard_file::check(&reframed);
    }
}
