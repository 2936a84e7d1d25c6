//! Backups written to a directory verify, and every kind of damage is found and named:
//! a flipped byte, a missing file, a truncated manifest, a broken chain.

#[path = "support/noise.rs"]
mod noise;

use std::collections::BTreeMap;

use cairn_backup::{
    put_manifest, put_shard_file, verify, BackupError, Destination, Manifest, ParentRef, Record,
    S3Options, SnapshotRef, Upload,
};
use noise::noisy_records;

const SHARDS: u32 = 2;

fn records(shard: u32, upto: u64) -> Vec<Record> {
    (0..100)
        .map(|i| Record {
            key: format!("s{shard}/key/{i:04}").into_bytes(),
            version: upto - i % 3,
            value: (i % 10 != 0).then(|| vec![b'v'; 64]),
        })
        .collect()
}

async fn backup(dest: &Destination, id: &str, cut: u64, parent: Option<(&str, u64)>) -> Manifest {
    let mut files = Vec::new();
    for shard in 0..SHARDS {
        files.push(
            put_shard_file(dest, id, shard, records(shard, cut - 1), Upload::PART)
                .await
                .unwrap(),
        );
    }
    let cuts = |c: u64| (0..SHARDS).map(|s| (s, c)).collect::<BTreeMap<_, _>>();
    let manifest = Manifest {
        format_version: cairn_backup::manifest::MANIFEST_VERSION,
        cluster_id: "c1".into(),
        backup_id: id.into(),
        snapshot: SnapshotRef {
            id: cut,
            time: "2026-11-23T12:00:00Z".into(),
            cuts: cuts(cut),
        },
        parent: parent.map(|(p, c)| ParentRef {
            backup_id: p.into(),
            cuts: cuts(c),
        }),
        shards: SHARDS,
        files,
        schedule: None,
        covered: Vec::new(),
        encryption: None,
        mac: None,
    };
    put_manifest(dest, &manifest).await.unwrap();
    manifest
}

fn named(err: BackupError, file: &str) {
    let text = err.to_string();
    assert!(text.contains(file), "error does not name {file}: {text}");
}

#[tokio::test]
async fn a_good_chain_verifies_and_damage_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Destination::parse(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let full = backup(&dest, "b1", 100, None).await;
    backup(&dest, "b2", 200, Some(("b1", 100))).await;

    let report = verify(&dest, "b2", None).await.unwrap();
    assert_eq!(report.chain, vec!["b2".to_string(), "b1".to_string()]);
    assert_eq!(report.files, 4);
    assert_eq!(report.versions, 400);
    assert_eq!(full.files[0].keys, 100);

    // One flipped byte in a shard file of the parent: the chain fails, naming it.
    let path = dir.path().join("b1/shard-1.cbk");
    let pristine = std::fs::read(&path).unwrap();
    let mut flipped = pristine.clone();
    flipped[pristine.len() / 2] ^= 1;
    std::fs::write(&path, &flipped).unwrap();
    let err = verify(&dest, "b2", None).await.unwrap_err();
    named(err, "b1/shard-1.cbk");
    std::fs::write(&path, &pristine).unwrap();

    // A missing file.
    std::fs::remove_file(dir.path().join("b2/shard-0.cbk")).unwrap();
    let err = verify(&dest, "b2", None).await.unwrap_err();
    assert!(matches!(err, BackupError::Missing(_)), "{err}");
    named(err, "b2/shard-0.cbk");

    // A truncated manifest.
    let manifest = dir.path().join("b1/manifest.json");
    let text = std::fs::read(&manifest).unwrap();
    std::fs::write(&manifest, &text[..text.len() / 2]).unwrap();
    let err = verify(&dest, "b1", None).await.unwrap_err();
    named(err, "b1/manifest.json");

    // A backup that was never published (no manifest) does not exist.
    let err = verify(&dest, "b3", None).await.unwrap_err();
    named(err, "b3/manifest.json");
}

#[tokio::test]
async fn a_chain_whose_parent_is_elsewhere_in_time_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Destination::parse(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    backup(&dest, "b1", 100, None).await;
    // The child claims to start at cut 150, but its parent's snapshot is at 100.
    backup(&dest, "b2", 200, Some(("b1", 150))).await;
    let err = verify(&dest, "b2", None).await.unwrap_err();
    named(err, "b1/manifest.json");
}

#[tokio::test]
async fn a_shard_file_streamed_in_many_parts_equals_one_written_whole() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Destination::parse(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let whole = put_shard_file(&dest, "whole", 0, noisy_records(2000, 200, 7), Upload::PART)
        .await
        .unwrap();
    // 4 KiB parts: about a hundred of them, through the multipart upload.
    let parts = put_shard_file(&dest, "parts", 0, noisy_records(2000, 200, 7), 4096)
        .await
        .unwrap();
    assert!(parts.bytes > 90 * 4096, "{} bytes", parts.bytes);
    assert_eq!(parts, whole);
    let a = std::fs::read(dir.path().join("whole/shard-0.cbk")).unwrap();
    let b = std::fs::read(dir.path().join("parts/shard-0.cbk")).unwrap();
    assert_eq!(a, b);
    assert_eq!(b.len() as u64, parts.bytes);
    assert_eq!(blake3::hash(&b).to_hex().as_str(), parts.blake3);
    assert_eq!(parts.keys, 2000);
    // Nothing else is left in the directory (no staging files).
    let names: Vec<_> = std::fs::read_dir(dir.path().join("parts"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("shard-0.cbk")]);
}

#[tokio::test]
async fn a_stream_that_fails_midway_leaves_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let dest = Destination::parse(dir.path().to_str().unwrap(), &S3Options::default()).unwrap();
    let mut records = noisy_records(2000, 200, 7);
    // Out of order at the very end, after many parts went out.
    records.push(Record {
        key: b"key/000000".to_vec(),
        version: 1,
        value: None,
    });
    let err = put_shard_file(&dest, "broken", 0, records, 4096)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("out of order"), "{err}");
    let left: Vec<_> = match std::fs::read_dir(dir.path().join("broken")) {
        Ok(entries) => entries.map(|e| e.unwrap().path()).collect(),
        Err(_) => Vec::new(),
    };
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn only_directories_are_destinations_for_now() {
    assert!(Destination::parse("ftp://host/path", &S3Options::default()).is_err());
}
