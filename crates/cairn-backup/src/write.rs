//! Writing a backup: shard files first, the manifest last.

use crate::destination::Destination;
use crate::error::BackupError;
use crate::format::{Record, ShardWriter};
use crate::manifest::{FileEntry, Manifest, MANIFEST};

/// Encode one shard's records (sorted) and store them as `{backup_id}/shard-{n}.cbk`.
pub async fn put_shard_file(
    dest: &Destination,
    backup_id: &str,
    shard: u32,
    records: impl IntoIterator<Item = Record>,
) -> Result<FileEntry, BackupError> {
    let mut writer = ShardWriter::new(Vec::new(), shard)?;
    for record in records {
        writer.push(&record)?;
    }
    let (bytes, stats) = writer.finish()?;
    let path = format!("shard-{shard}.cbk");
    let entry = FileEntry {
        path: path.clone(),
        shard,
        bytes: bytes.len() as u64,
        blake3: blake3::hash(&bytes).to_hex().to_string(),
        keys: stats.keys,
        versions: stats.versions,
    };
    dest.put(&format!("{backup_id}/{path}"), bytes).await?;
    Ok(entry)
}

/// Publish a backup: store its manifest. Call only after every file it names is
/// stored; until then the backup does not exist.
pub async fn put_manifest(dest: &Destination, manifest: &Manifest) -> Result<(), BackupError> {
    let name = format!("{}/{MANIFEST}", manifest.backup_id);
    dest.put(&name, manifest.to_json()).await
}
