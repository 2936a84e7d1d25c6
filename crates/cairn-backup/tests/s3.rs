//! S3 destinations against a real S3-compatible server (s3s-fs) on loopback: objects
//! round-trip under a prefix, backups are listed by manifest and deleted manifest-first,
//! a backup written to S3 verifies and damage is named, and bad URLs or credentials
//! give errors rather than panics.

#[path = "support/noise.rs"]
mod noise;
#[path = "../../../tests/support/s3_server.rs"]
mod s3_server;

use std::collections::BTreeMap;

use cairn_backup::destination::S3Options;
use cairn_backup::{
    put_manifest, put_shard_file, verify, BackupError, Destination, Manifest, Record, Upload,
};
use s3_server::S3Server;

fn options(server: &S3Server) -> S3Options {
    let o = server.options();
    S3Options {
        endpoint: Some(o.endpoint),
        region: Some(o.region),
        access_key_id: Some(o.access_key_id),
        secret_access_key: Some(o.secret_access_key),
        allow_http: false, // implied by the http:// endpoint
    }
}

fn destination(server: &S3Server, prefix: &str) -> Destination {
    Destination::parse(&server.url(prefix), &options(server)).expect("s3 destination")
}

#[tokio::test]
async fn objects_round_trip_under_a_prefix() {
    let server = S3Server::start("cairn");
    let dest = destination(&server, "cluster-a/backups");
    dest.put("b1/shard-0.cbk", vec![7; 1000])
        .await
        .expect("put");
    assert_eq!(
        dest.get("b1/shard-0.cbk").await.expect("get").as_ref(),
        &[7; 1000][..]
    );

    // The prefix is real: the object is at {prefix}/{name} in the bucket, and a
    // destination at another prefix does not see it.
    let on_disk = server.root().join("cairn/cluster-a/backups/b1/shard-0.cbk");
    assert_eq!(
        std::fs::read(on_disk).expect("object on disk"),
        vec![7; 1000]
    );
    let other = destination(&server, "cluster-b");
    assert!(matches!(
        other.get("b1/shard-0.cbk").await,
        Err(BackupError::Missing(_))
    ));

    // Overwrites replace whole objects; the options also come from JSON config.
    let from_json: S3Options = serde_json::from_str(&server.options_json()).expect("options");
    let same = Destination::parse(&server.url("cluster-a/backups"), &from_json).expect("parse");
    same.put("b1/shard-0.cbk", b"short".to_vec())
        .await
        .expect("overwrite");
    assert_eq!(
        dest.get("b1/shard-0.cbk").await.expect("get").as_ref(),
        b"short"
    );
    assert_eq!(dest.url(), "s3://cairn/cluster-a/backups");
}

#[tokio::test]
async fn a_missing_object_is_missing_by_name() {
    let server = S3Server::start("cairn");
    let dest = destination(&server, "p");
    match dest.get("b9/shard-3.cbk").await {
        Err(BackupError::Missing(name)) => assert_eq!(name, "b9/shard-3.cbk"),
        other => panic!("expected Missing, got {other:?}"),
    }
    // Deleting what is not there is fine.
    dest.delete("b9/shard-3.cbk").await.expect("delete missing");
}

#[tokio::test]
async fn backups_are_listed_by_manifest_and_deleted_manifest_first() {
    let server = S3Server::start("cairn");
    let dest = destination(&server, "");
    assert!(dest.list_backups().await.expect("empty list").is_empty());
    for id in ["b3", "b1", "b2", "b4"] {
        for shard in 0..3 {
            dest.put(&format!("{id}/shard-{shard}.cbk"), vec![1; 10])
                .await
                .expect("put");
        }
    }
    for id in ["b3", "b1", "b4"] {
        dest.put(&format!("{id}/manifest.json"), b"{}".to_vec())
            .await
            .expect("put");
    }
    // b2 has files but no manifest; a root-level object is not a backup either.
    dest.put("notes.txt", b"hello".to_vec()).await.expect("put");
    assert_eq!(
        dest.list_backups().await.expect("list"),
        vec!["b1", "b3", "b4"]
    );

    dest.delete_backup("b3").await.expect("delete");
    assert_eq!(dest.list_backups().await.expect("list"), vec!["b1", "b4"]);
    for name in ["b3/manifest.json", "b3/shard-0.cbk", "b3/shard-2.cbk"] {
        assert!(
            matches!(dest.get(name).await, Err(BackupError::Missing(_))),
            "{name}"
        );
    }
    // Its neighbours are untouched.
    dest.get("b4/shard-0.cbk").await.expect("b4 intact");
    dest.get("b2/shard-1.cbk").await.expect("b2 intact");
    assert_eq!(
        dest.get("notes.txt").await.expect("root object").as_ref(),
        b"hello"
    );

    // Deleting again, a backup that never existed, or a manifest-less one: all fine.
    dest.delete_backup("b3").await.expect("again");
    dest.delete_backup("nope").await.expect("never existed");
    dest.delete_backup("b2").await.expect("unpublished");
    assert!(matches!(
        dest.get("b2/shard-0.cbk").await,
        Err(BackupError::Missing(_))
    ));
    assert_eq!(dest.list_backups().await.expect("list"), vec!["b1", "b4"]);
}

#[tokio::test]
async fn listing_is_scoped_to_the_prefix() {
    let server = S3Server::start("cairn");
    let a = destination(&server, "a");
    let b = destination(&server, "b/nested");
    a.put("x1/manifest.json", b"{}".to_vec())
        .await
        .expect("put");
    b.put("y1/manifest.json", b"{}".to_vec())
        .await
        .expect("put");
    b.put("y2/manifest.json", b"{}".to_vec())
        .await
        .expect("put");
    assert_eq!(a.list_backups().await.expect("list a"), vec!["x1"]);
    assert_eq!(b.list_backups().await.expect("list b"), vec!["y1", "y2"]);
    // At the bucket root, `a` and `b` have no manifest of their own.
    assert!(destination(&server, "")
        .list_backups()
        .await
        .expect("root")
        .is_empty());
}

const SHARDS: u32 = 2;

fn records(shard: u32) -> Vec<Record> {
    (0..200)
        .map(|i| Record {
            key: format!("s{shard}/key/{i:04}").into_bytes(),
            version: 99 - i % 3,
            value: (i % 10 != 0).then(|| vec![b'v'; 64]),
        })
        .collect()
}

async fn write_backup(dest: &Destination, id: &str) {
    let mut files = Vec::new();
    for shard in 0..SHARDS {
        files.push(
            put_shard_file(dest, id, shard, records(shard), Upload::PART)
                .await
                .expect("shard file"),
        );
    }
    // Built from JSON so that fields added later with serde defaults need no change here.
    let manifest: Manifest = serde_json::from_value(serde_json::json!({
        "format_version": cairn_backup::manifest::MANIFEST_VERSION,
        "cluster_id": "c1",
        "backup_id": id,
        "snapshot": {
            "id": 100,
            "time": "2026-11-23T12:00:00Z",
            "cuts": (0..SHARDS).map(|s| (s, 100)).collect::<BTreeMap<u32, u64>>(),
        },
        "parent": null,
        "shards": SHARDS,
        "files": files,
    }))
    .expect("manifest");
    put_manifest(dest, &manifest).await.expect("manifest");
}

#[tokio::test]
async fn a_backup_in_s3_verifies_and_a_flipped_byte_is_named() {
    let server = S3Server::start("cairn");
    let dest = destination(&server, "prod");
    write_backup(&dest, "b1").await;
    assert_eq!(dest.list_backups().await.expect("list"), vec!["b1"]);
    let report = verify(&dest, "b1", None).await.expect("verifies");
    assert_eq!(report.chain, vec!["b1".to_string()]);
    assert_eq!(report.files, u64::from(SHARDS));
    assert_eq!(report.versions, 400);

    // Overwrite one shard file through S3 with one byte flipped.
    let pristine = dest.get("b1/shard-1.cbk").await.expect("get");
    let mut flipped = pristine.to_vec();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 1;
    dest.put("b1/shard-1.cbk", flipped)
        .await
        .expect("overwrite");
    let err = verify(&dest, "b1", None)
        .await
        .expect_err("damage is found");
    assert!(
        err.to_string().contains("b1/shard-1.cbk"),
        "not named: {err}"
    );

    // Restored, it verifies again; deleted, it is gone.
    dest.put("b1/shard-1.cbk", pristine.to_vec())
        .await
        .expect("restore");
    verify(&dest, "b1", None).await.expect("verifies again");
    dest.delete_backup("b1").await.expect("delete");
    let err = verify(&dest, "b1", None).await.expect_err("deleted");
    assert!(err.to_string().contains("b1/manifest.json"), "{err}");
}

#[tokio::test]
async fn a_large_shard_file_goes_up_as_a_multipart_upload() {
    let server = S3Server::start("cairn");
    let dest = destination(&server, "big");
    // About 12 MiB that do not compress: three parts of S3's minimum size, 5 MiB.
    let records = noise::noisy_records(3000, 4096, 9);
    let entry = put_shard_file(&dest, "b1", 0, records, 5 << 20)
        .await
        .expect("multipart upload");
    assert!(entry.bytes > 10 << 20, "{} bytes", entry.bytes);
    // It really went up in parts, not as one PUT.
    let parts = entry.bytes.div_ceil(5 << 20);
    assert_eq!(server.parts_uploaded(), parts, "{} bytes", entry.bytes);
    let stored = dest.get("b1/shard-0.cbk").await.expect("get");
    assert_eq!(stored.len() as u64, entry.bytes);
    assert_eq!(blake3::hash(&stored).to_hex().as_str(), entry.blake3);
}

#[test]
fn the_server_works_from_a_plain_test_and_cleans_up() {
    let server = S3Server::start("cairn");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let dest = destination(&server, "sync");
    runtime
        .block_on(dest.put("b1/x", b"y".to_vec()))
        .expect("put");
    let got = runtime.block_on(dest.get("b1/x")).expect("get");
    assert_eq!(got.as_ref(), b"y");
    let root = server.root().to_path_buf();
    assert!(root.exists());
    drop(server);
    assert!(!root.exists(), "the server's directory is removed on drop");
}

#[test]
fn bad_urls_are_invalid() {
    let options = S3Options::default();
    for url in ["ftp://x", "s3://", "s3:///prefix", "http://bucket/x"] {
        match Destination::parse(url, &options) {
            Err(BackupError::Invalid(msg)) => {
                assert!(msg.contains("s3://bucket"), "{url}: {msg}")
            }
            other => panic!("{url}: expected Invalid, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn wrong_credentials_are_an_error_not_a_panic() {
    let server = S3Server::start("cairn");
    let wrong_secret = S3Options {
        secret_access_key: Some("not-the-secret".into()),
        ..options(&server)
    };
    let unknown_key = S3Options {
        access_key_id: Some("nobody".into()),
        ..options(&server)
    };
    for bad in [wrong_secret, unknown_key] {
        let dest = Destination::parse(&server.url("p"), &bad).expect("parses: no IO yet");
        let put = dest.put("b1/shard-0.cbk", vec![1]).await;
        assert!(matches!(put, Err(BackupError::Store(_))), "{put:?}");
        let get = dest.get("b1/shard-0.cbk").await;
        assert!(matches!(get, Err(BackupError::Store(_))), "{get:?}");
        assert!(dest.list_backups().await.is_err());
    }
    // Nothing was written.
    let good = destination(&server, "p");
    assert!(matches!(
        good.get("b1/shard-0.cbk").await,
        Err(BackupError::Missing(_))
    ));
}

#[tokio::test]
async fn a_missing_bucket_is_an_error() {
    let server = S3Server::start("cairn");
    let dest = Destination::parse("s3://no-such-bucket/p", &options(&server)).expect("parses");
    // (Only the listing: s3s-fs, unlike S3, creates a missing bucket on PUT.)
    let err = dest.list_backups().await.expect_err("no such bucket");
    assert!(matches!(err, BackupError::Store(_)), "{err}");
}
