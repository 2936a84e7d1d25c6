//! Writing a backup: shard files first, the manifest last.

use std::time::{Duration, Instant};

use crate::destination::Destination;
use crate::error::BackupError;
use crate::format::{Record, ShardWriter};
use crate::manifest::{FileEntry, Manifest, MANIFEST};

/// Limits how fast a backup reads, so it never crowds out foreground traffic: after
/// each record, the reader sleeps until it is back under `bytes_per_sec`.
#[derive(Debug)]
pub struct Throttle {
    bytes_per_sec: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    /// `None`: unlimited.
    pub fn new(bytes_per_sec: Option<u64>) -> Throttle {
        Throttle {
            bytes_per_sec: bytes_per_sec.filter(|&r| r > 0),
            start: Instant::now(),
            bytes: 0,
        }
    }

    /// Account for `bytes` read; blocks the (blocking) thread if ahead of the rate.
    pub fn charge(&mut self, bytes: u64) {
        self.bytes += bytes;
        let Some(rate) = self.bytes_per_sec else {
            return;
        };
        let due = Duration::from_secs_f64(self.bytes as f64 / rate as f64);
        let elapsed = self.start.elapsed();
        // Sleep in slices of at least 10 ms so the throttle itself costs nothing.
        if due > elapsed + Duration::from_millis(10) {
            std::thread::sleep(due - elapsed);
        }
    }
}

/// The name of shard `shard`'s file inside a backup.
pub fn shard_file_name(shard: u32) -> String {
    format!("shard-{shard}.cbk")
}

/// Encode one shard's records (sorted, as the MVCC tree yields them) into a shard
/// file, charging `throttle` for what it reads. Blocking: run it off the async
/// runtime.
pub fn encode_shard(
    shard: u32,
    records: impl IntoIterator<Item = Result<Record, BackupError>>,
    throttle: &mut Throttle,
) -> Result<(Vec<u8>, FileEntry), BackupError> {
    let mut writer = ShardWriter::new(Vec::new(), shard)?;
    for record in records {
        let record = record?;
        throttle.charge((record.key.len() + record.value.as_ref().map_or(0, Vec::len) + 13) as u64);
        writer.push(&record)?;
    }
    let (bytes, stats) = writer.finish()?;
    let entry = FileEntry {
        path: shard_file_name(shard),
        shard,
        bytes: bytes.len() as u64,
        blake3: blake3::hash(&bytes).to_hex().to_string(),
        keys: stats.keys,
        versions: stats.versions,
    };
    Ok((bytes, entry))
}

/// Encode one shard's records (sorted) and store them as `{backup_id}/shard-{n}.cbk`.
pub async fn put_shard_file(
    dest: &Destination,
    backup_id: &str,
    shard: u32,
    records: impl IntoIterator<Item = Record>,
) -> Result<FileEntry, BackupError> {
    let (bytes, entry) =
        encode_shard(shard, records.into_iter().map(Ok), &mut Throttle::new(None))?;
    dest.put(&format!("{backup_id}/{}", entry.path), bytes)
        .await?;
    Ok(entry)
}

/// Publish a backup: store its manifest. Call only after every file it names is
/// stored; until then the backup does not exist.
pub async fn put_manifest(dest: &Destination, manifest: &Manifest) -> Result<(), BackupError> {
    let name = format!("{}/{MANIFEST}", manifest.backup_id);
    dest.put(&name, manifest.to_json()).await
}
