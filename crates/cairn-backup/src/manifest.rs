//! The manifest: what a backup is, written last so that a backup without one does not
//! exist.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::BackupError;
use crate::seal::BackupKey;

/// The manifest layout version; a reader refuses a newer one.
pub const MANIFEST_VERSION: u32 = 1;
/// The manifest's name inside a backup's directory.
pub const MANIFEST: &str = "manifest.json";

/// One backup: a completed snapshot's state (full), or the versions written since a
/// parent backup's snapshot (incremental).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    pub format_version: u32,
    pub cluster_id: String,
    pub backup_id: String,
    /// The snapshot the backup captures.
    pub snapshot: SnapshotRef,
    /// For an incremental backup: the backup it extends. Its files hold the versions
    /// in `(parent.cuts[s], snapshot.cuts[s])` of every shard `s`.
    pub parent: Option<ParentRef>,
    pub shards: u32,
    pub files: Vec<FileEntry>,
    /// The schedule that took it, if any (retention applies per schedule).
    #[serde(default)]
    pub schedule: Option<String>,
    /// Other completed snapshots this backup can restore to: for an incremental, every
    /// snapshot whose cuts lie between its parent's and its own on every shard.
    #[serde(default)]
    pub covered: Vec<SnapshotRef>,
    /// How the shard files are encrypted; absent: they are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Keyed BLAKE3 (from the backup key) of this manifest with `mac` absent, hex:
    /// present on every encrypted backup, so a tampered manifest is detected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

/// How a backup's files are encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Encryption {
    /// `xchacha20poly1305-stream64k` (docs/BACKUP_FORMAT.md).
    pub cipher: String,
    /// The id of the key (not the key): which key file opens it.
    pub key_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotRef {
    pub id: u64,
    /// RFC 3339 label of the snapshot.
    pub time: String,
    /// Per shard, the snapshot's cut (its marker's log index).
    pub cuts: BTreeMap<u32, u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentRef {
    pub backup_id: String,
    /// The parent's snapshot cuts (where this backup's versions start).
    pub cuts: BTreeMap<u32, u64>,
}

/// One shard file, as written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEntry {
    /// Relative to the backup's directory.
    pub path: String,
    pub shard: u32,
    pub bytes: u64,
    /// BLAKE3 of the file's bytes, hex.
    pub blake3: String,
    pub keys: u64,
    pub versions: u64,
}

impl Manifest {
    /// Every snapshot this backup restores to: the ones it covers, then its own.
    pub fn restorable(&self) -> impl Iterator<Item = &SnapshotRef> {
        self.covered.iter().chain(std::iter::once(&self.snapshot))
    }

    /// Mark the backup encrypted under `key` and sign the manifest with it (last:
    /// nothing may change afterwards).
    pub fn seal(&mut self, key: &BackupKey) {
        self.encryption = Some(Encryption {
            cipher: crate::seal::CIPHER.into(),
            key_id: key.id(),
        });
        self.mac = None;
        self.mac = Some(key.mac(&self.to_json()));
    }

    /// The id of the key the backup's files are sealed under, if they are.
    pub fn key_id(&self) -> Option<&str> {
        self.encryption.as_ref().map(|e| e.key_id.as_str())
    }

    /// Check that `key` opens this backup and that the manifest is the one it signed.
    /// A plain backup needs no key (and has no MAC to check).
    pub fn authenticate(&self, key: Option<&BackupKey>) -> Result<(), BackupError> {
        let Some(encryption) = &self.encryption else {
            return Ok(());
        };
        let name = format!("{}/{MANIFEST}", self.backup_id);
        if encryption.cipher != crate::seal::CIPHER {
            return Err(BackupError::BadFile {
                file: name,
                reason: format!("unknown cipher `{}`", encryption.cipher),
            });
        }
        let key = key.ok_or_else(|| {
            BackupError::Key(format!(
                "backup {} is encrypted with key {}: give that key (--key-file)",
                self.backup_id, encryption.key_id
            ))
        })?;
        if key.id() != encryption.key_id {
            return Err(BackupError::Key(format!(
                "backup {} is encrypted with key {}, not the key given ({})",
                self.backup_id,
                encryption.key_id,
                key.id()
            )));
        }
        let mut bare = self.clone();
        bare.mac = None;
        match &self.mac {
            Some(mac) if key.mac_matches(&bare.to_json(), mac) => Ok(()),
            _ => Err(BackupError::BadFile {
                file: name,
                reason: "the manifest's MAC does not match: it was altered after the backup".into(),
            }),
        }
    }

    pub fn to_json(&self) -> Vec<u8> {
        // A manifest is plain data; serialising it cannot fail.
        serde_json::to_vec_pretty(self).unwrap_or_default()
    }

    /// Parse and check a manifest; `name` is used in errors.
    pub fn from_json(bytes: &[u8], name: &str) -> Result<Manifest, BackupError> {
        let manifest: Manifest =
            serde_json::from_slice(bytes).map_err(|e| BackupError::BadFile {
                file: name.to_owned(),
                reason: format!("not a valid manifest (truncated or corrupt): {e}"),
            })?;
        manifest.check().map_err(|e| e.in_file(name))?;
        Ok(manifest)
    }

    fn check(&self) -> Result<(), BackupError> {
        let bad = |m: String| Err(BackupError::Corrupt(m));
        if self.format_version != MANIFEST_VERSION {
            return bad(format!(
                "manifest version {}; this build reads {MANIFEST_VERSION}",
                self.format_version
            ));
        }
        // A cut for every shard `0..shards` and no other: a count alone would accept
        // cuts naming shards the backup does not have.
        let every_shard = |cuts: &BTreeMap<u32, u64>| cuts.keys().copied().eq(0..self.shards);
        if !every_shard(&self.snapshot.cuts) {
            return bad(format!(
                "the snapshot's cuts name shards {:?}, not 0..{}",
                self.snapshot.cuts.keys().collect::<Vec<_>>(),
                self.shards
            ));
        }
        for covered in &self.covered {
            if !every_shard(&covered.cuts) {
                return bad(format!(
                    "covered snapshot {} has cuts for shards {:?}, not 0..{}",
                    covered.id,
                    covered.cuts.keys().collect::<Vec<_>>(),
                    self.shards
                ));
            }
        }
        if let Some(parent) = &self.parent {
            if !every_shard(&parent.cuts) {
                return bad(format!(
                    "the parent's cuts name shards {:?}, not 0..{}",
                    parent.cuts.keys().collect::<Vec<_>>(),
                    self.shards
                ));
            }
        }
        let mut seen = vec![false; self.shards as usize];
        for f in &self.files {
            match seen.get_mut(f.shard as usize) {
                Some(s) if !*s => *s = true,
                _ => {
                    return bad(format!(
                        "file {} names shard {} twice or out of range",
                        f.path, f.shard
                    ))
                }
            }
            if f.path.contains("..") || f.path.starts_with('/') {
                return bad(format!("file path {} leaves the backup", f.path));
            }
        }
        if seen.iter().any(|s| !s) {
            return bad("a shard has no file".into());
        }
        Ok(())
    }
}
