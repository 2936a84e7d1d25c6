//! Verification: every file of a backup (and of its chain) against its manifest.

use std::io::Read;
use std::path::Path;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;

use crate::destination::Destination;
use crate::error::BackupError;
use crate::format::ShardReader;
use crate::seal::{BackupKey, Unsealed};

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
/// its shard, and each parent's cuts are where the child says it starts. An encrypted
/// backup needs its `key`: its manifests' MACs are checked and its files opened. The
/// first problem is returned, naming the file.
pub async fn verify(
    dest: &Destination,
    backup_id: &str,
    key: Option<&BackupKey>,
) -> Result<VerifyReport, BackupError> {
    let mut report = VerifyReport::default();
    let mut next = Some((backup_id.to_owned(), None));
    while let Some((id, expected_cuts)) = next.take() {
        let manifest = read_manifest_with(dest, &id, key).await?;
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
            let sealed = Sealed {
                with: manifest.key_id(),
                key,
            };
            let versions = check_file(dest, &name, file, None, sealed).await?;
            report.files += 1;
            report.bytes += file.bytes;
            report.versions += versions;
        }
        report.chain.push(id);
        next = manifest.parent.map(|p| (p.backup_id, Some(p.cuts)));
    }
    Ok(report)
}

/// Download one stored file and check it against its manifest entry as it streams
/// in, never holding it whole (see [`check_stream`]). With `keep`, the bytes are also
/// written to that local file (a restore's spool). Returns the record count; an
/// error names the file.
pub async fn check_file(
    dest: &Destination,
    name: &str,
    file: &FileEntry,
    keep: Option<&Path>,
    sealed: Sealed<'_>,
) -> Result<u64, BackupError> {
    let stream = dest.get_stream(name).await?;
    check_stream(name, stream, file, keep, sealed).await
}

/// Whether a file is sealed (the key id its manifest names) and the key to open it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sealed<'a> {
    pub with: Option<&'a str>,
    pub key: Option<&'a BackupKey>,
}

/// [`check_stream`] of bytes at hand, fed in small chunks as a download would be.
pub async fn check_bytes(name: &str, bytes: Bytes, file: &FileEntry) -> Result<u64, BackupError> {
    let chunks: Vec<Result<Bytes, BackupError>> = (0..bytes.len())
        .step_by(4096)
        .map(|at| Ok(bytes.slice(at..(at + 4096).min(bytes.len()))))
        .collect();
    check_stream(
        name,
        futures::stream::iter(chunks),
        file,
        None,
        Sealed::default(),
    )
    .await
}

/// Check a file arriving as `stream` against its manifest entry: size, BLAKE3,
/// complete decoding (on a blocking thread fed chunk by chunk), its shard and its
/// record count, optionally spooling it to `keep`. A checksum or size mismatch is
/// reported ahead of any decoding error: it is the cause, the decoding error only
/// its symptom.
pub async fn check_stream(
    name: &str,
    mut stream: impl Stream<Item = Result<Bytes, BackupError>> + Unpin,
    file: &FileEntry,
    keep: Option<&Path>,
    sealed: Sealed<'_>,
) -> Result<u64, BackupError> {
    let bad = |reason: String| BackupError::BadFile {
        file: name.to_owned(),
        reason,
    };
    let mut spool = match keep {
        Some(path) => Some(
            tokio::fs::File::create(path)
                .await
                .map_err(BackupError::io("creating a spool file"))?,
        ),
        None => None,
    };
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    let with = sealed.with.map(str::to_owned);
    let key = sealed.key.cloned();
    let place = name.to_owned();
    let decoder = tokio::task::spawn_blocking(move || {
        let input = Unsealed::new(ChunkReader::new(rx), with.as_deref(), key.as_ref(), &place)?;
        let mut reader = ShardReader::new(input)?;
        let mut versions = 0u64;
        while reader.next_record()?.is_some() {
            versions += 1;
        }
        Ok::<_, BackupError>((reader.shard(), versions))
    });
    let mut hasher = blake3::Hasher::new();
    let mut size = 0u64;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        hasher.update(&chunk);
        size += chunk.len() as u64;
        if let Some(spool) = &mut spool {
            spool
                .write_all(&chunk)
                .await
                .map_err(BackupError::io("writing a spool file"))?;
        }
        // A decoder that already failed has stopped listening; the hash goes on.
        let _ = tx.send(chunk).await;
    }
    drop(tx);
    if let Some(spool) = &mut spool {
        spool
            .flush()
            .await
            .map_err(BackupError::io("writing a spool file"))?;
    }
    let decoded = decoder
        .await
        .map_err(|e| bad(format!("checking it failed: {e}")))?;
    if size != file.bytes {
        return Err(bad(format!(
            "{size} bytes, the manifest says {}",
            file.bytes
        )));
    }
    if hasher.finalize().to_hex().as_str() != file.blake3 {
        return Err(bad("checksum mismatch".into()));
    }
    let (shard, versions) = decoded.map_err(|e| e.in_file(name))?;
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

/// Reads the chunks a channel delivers as one byte stream (the blocking side of a
/// download being checked).
struct ChunkReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
}

impl ChunkReader {
    fn new(rx: mpsc::Receiver<Bytes>) -> ChunkReader {
        ChunkReader {
            rx,
            current: Bytes::new(),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None => return Ok(0),
            }
        }
        let n = self.current.len().min(buf.len());
        buf[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Read and check one backup's manifest (its id must be its directory's name).
pub async fn read_manifest(dest: &Destination, backup_id: &str) -> Result<Manifest, BackupError> {
    let name = format!("{backup_id}/{MANIFEST}");
    let bytes = dest.get(&name).await?;
    let manifest = Manifest::from_json(&bytes, &name)?;
    if manifest.backup_id != backup_id {
        return Err(BackupError::BadFile {
            file: name,
            reason: format!(
                "names backup {}, not the directory it is in",
                manifest.backup_id
            ),
        });
    }
    Ok(manifest)
}

/// [`read_manifest`], authenticated with `key` ([`Manifest::authenticate`]): what a
/// restore or a verification trusts.
pub async fn read_manifest_with(
    dest: &Destination,
    backup_id: &str,
    key: Option<&BackupKey>,
) -> Result<Manifest, BackupError> {
    let manifest = read_manifest(dest, backup_id).await?;
    manifest.authenticate(key)?;
    Ok(manifest)
}
