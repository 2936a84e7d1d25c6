//! Consistent backups for Cairn: taking them, keeping them, checking them and
//! restoring them.
//!
//! A backup is a completed snapshot's state written as one sorted, compressed,
//! checksummed file per shard, plus a manifest written last (a backup without a
//! manifest does not exist). This crate owns the file format ([`format`]), the
//! manifest ([`manifest`]), encryption at rest ([`seal`]), destinations through `object_store` ([`destination`]),
//! the catalog of backups and schedules in the meta group ([`catalog`]), taking
//! backups from this node's replicas ([`backups`]), schedules ([`schedule`]) and
//! retention ([`retention`]), verification ([`verify`]) and offline restore
//! ([`restore`]). The layout is documented in `docs/BACKUP_FORMAT.md`.
//!
//! It must never write a live shard: it reads replicas only through
//! `ShardState::history` (versions below a cut, which never change), reaches the
//! cluster only through `cairn_snapshot` (snapshots, the meta group), and writes a
//! store only when restoring into a fresh, unpublished data directory.

mod allowed;
pub mod backups;
pub mod catalog;
pub mod destination;
pub mod error;
pub mod format;
pub mod manifest;
mod priority;
pub mod restore;
pub mod retention;
pub mod schedule;
pub mod seal;
pub mod verify;
pub mod write;

pub use allowed::AllowedDestinations;
pub use backups::{BackupConfig, BackupRequest, Backups, ScheduleStatus};
pub use catalog::{BackupRecord, BackupState, Progress};
pub use destination::{Destination, S3Options, Upload};
pub use error::BackupError;
pub use format::{FileStats, Record, ShardReader, ShardWriter};
pub use manifest::{Encryption, FileEntry, Manifest, ParentRef, SnapshotRef};
pub use seal::BackupKey;
pub use verify::{read_manifest, verify, VerifyReport};
pub use write::{put_manifest, put_shard_file};
