//! Consistent backups for Cairn: the on-disk format of a backup and its checks.
//!
//! A backup is a completed snapshot's state written as one sorted, compressed,
//! checksummed file per shard, plus a manifest written last (a backup without a
//! manifest does not exist). This crate owns the file format ([`format`]), the
//! manifest ([`manifest`]), destinations through `object_store` ([`destination`]) and
//! verification ([`verify`]). The layout is documented in `docs/BACKUP_FORMAT.md`.
//!
//! It must never read a shard's tree or talk to the cluster itself: callers hand it
//! records (a snapshot's versions, read through the snapshot protocol).
//!
//! Not built yet (issue 4 continues): taking backups from a running cluster,
//! incremental chains, schedules and retention, S3, restore, prefix revert.

pub mod backups;
pub mod catalog;
pub mod destination;
pub mod error;
pub mod format;
pub mod manifest;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod verify;
pub mod write;

pub use backups::{BackupConfig, BackupRequest, Backups, ScheduleStatus};
pub use catalog::{BackupRecord, BackupState, Progress};
pub use destination::{Destination, S3Options};
pub use error::BackupError;
pub use format::{FileStats, Record, ShardReader, ShardWriter};
pub use manifest::{FileEntry, Manifest, ParentRef, SnapshotRef};
pub use verify::{read_manifest, verify, VerifyReport};
pub use write::{put_manifest, put_shard_file};
