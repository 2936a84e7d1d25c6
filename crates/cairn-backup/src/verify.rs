//! Verification: every file of a backup (and of its chain) against its manifest.

use crate::destination::Destination;
use crate::error::BackupError;
use crate::format::ShardReader;
use bytes::Bytes;

use crate::manifest::{FileEntry, Manifest, MANIFEST};

/// What a successful verification saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Backups checked, the requested one first, then its ancestors.
    pub chain: Vec<String>,
    pub files: u64,
    pub bytes: u64,
    pub versions: u64,
}

/// Check a backup and its whole chain: manifests parse, every file exists with the
/// recorded size and BLAKE3, decodes completely, holds the recorded counts and only
/// its shard, and each parent's cuts are where the child says it starts. The first
/// problem is returned, naming the file.
pub async fn verify(dest: &Destination, backup_id: &str) -> Result<VerifyReport, BackupError> {
    let mut report = VerifyReport::default();
    let mut next = Some((backup_id.to_owned(), None));
    while let Some((id, expected_cuts)) = next.take() {
        let manifest = read_manifest(dest, &id).await?;
        if let Some(cuts) = expected_cuts {
            if manifest.snapshot.cuts != cuts {
                return Err(BackupError::BadFile {
                    file: format!("{id}/{MANIFEST}"),
                    reason: "its snapshot is not where its child backup starts".into(),
                });
            }
        }
        for file in &manifest.files {
            let name = format!("{id}/{}", file.path);
            let bytes = dest.get(&name).await?;
            let versions = check_file(&name, bytes, file).await?;
            report.files += 1;
            report.bytes += file.bytes;
            report.versions += versions;
        }
        report.chain.push(id);
        next = manifest.parent.map(|p| (p.backup_id, Some(p.cuts)));
    }
    Ok(report)
}

/// Check one stored file against its manifest entry: size, BLAKE3, complete decoding
/// (off the async runtime), its shard and its record count. Returns the record count;
/// an error names the file.
pub async fn check_file(name: &str, bytes: Bytes, file: &FileEntry) -> Result<u64, BackupError> {
    let bad = |reason: String| BackupError::BadFile {
        file: name.to_owned(),
        reason,
    };
    if bytes.len() as u64 != file.bytes {
        return Err(bad(format!(
            "{} bytes, the manifest says {}",
            bytes.len(),
            file.bytes
        )));
    }
    // The checksum first: a changed byte is named before anything is decompressed.
    if blake3::hash(&bytes).to_hex().as_str() != file.blake3 {
        return Err(bad("checksum mismatch".into()));
    }
    let (shard, versions) = tokio::task::spawn_blocking(move || {
        let mut reader = ShardReader::new(bytes.as_ref())?;
        let mut versions = 0u64;
        while reader.next_record()?.is_some() {
            versions += 1;
        }
        Ok::<_, BackupError>((reader.shard(), versions))
    })
    .await
    .map_err(|e| bad(format!("checking it failed: {e}")))?
    .map_err(|e| e.in_file(name))?;
    if shard != file.shard {
        return Err(bad(format!("holds shard {shard}, not {}", file.shard)));
    }
    if versions != file.versions {
        return Err(bad(format!(
            "{versions} records, the manifest says {}",
            file.versions
        )));
    }
    Ok(versions)
}

/// Read and check one backup's manifest.
pub async fn read_manifest(dest: &Destination, backup_id: &str) -> Result<Manifest, BackupError> {
    let name = format!("{backup_id}/{MANIFEST}");
    let bytes = dest.get(&name).await?;
    Manifest::from_json(&bytes, &name)
}
