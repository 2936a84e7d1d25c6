//! Where backups live, through the `object_store` crate: a local directory
//! (`file:///path` or a plain path) or an S3-compatible bucket (`s3://bucket/prefix`).
//!
//! Everything above this module speaks in object names relative to the destination's
//! root (`{backup_id}/shard-0.cbk`, `{backup_id}/manifest.json`), so the same writer,
//! verifier and retention code runs unchanged against a disk or a bucket. The rules
//! that make a backup exist or stop existing live here too:
//!
//! - a backup exists exactly when its `{id}/manifest.json` does ([`Destination::list_backups`]);
//! - deleting one removes the manifest *first* ([`Destination::delete_backup`]), so a
//!   crash halfway through a delete leaves loose files (garbage) but never a manifest
//!   that names files which are gone (a backup that looks complete but cannot restore).
//!
//! S3 settings come from the usual `AWS_*` environment variables (through
//! `AmazonS3Builder::from_env`), overridden by the explicit [`S3Options`] a config file
//! gives. Requests are path-style (`{endpoint}/{bucket}/{key}`), which every
//! S3-compatible server accepts and which works for loopback endpoints, where
//! virtual-hosted-style (`{bucket}.{host}`) names cannot resolve.

use std::sync::Arc;

use bytes::Bytes;
use futures::stream::BoxStream;
use futures::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3Builder, AmazonS3ConfigKey};
use object_store::local::LocalFileSystem;
use object_store::path::Path as ObjectPath;
use object_store::prefix::PrefixStore;
use object_store::{ClientConfigKey, RetryConfig, WriteMultipart};
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use serde::Deserialize;

use crate::error::BackupError;
use crate::manifest::MANIFEST;

/// How many parts of one streamed upload are in flight at once. With
/// [`Upload::PART`]-sized parts this (plus the part being filled) bounds the memory a
/// streamed upload holds.
const PARTS_IN_FLIGHT: usize = 2;

/// How many manifest checks (`HEAD` requests) [`Destination::list_backups`] keeps in
/// flight at once.
const LIST_CONCURRENCY: usize = 16;

const SUPPORTED: &str =
    "supported: a directory path, file:///absolute/path, or s3://bucket[/prefix]";

/// Explicit settings for `s3://` destinations. Each field that is set overrides the
/// matching `AWS_*` environment variable; unset fields leave the environment (and then
/// `object_store`'s defaults: region `us-east-1`, instance credentials) in charge.
#[derive(Clone, Default, Deserialize)]
#[serde(default)]
pub struct S3Options {
    /// Endpoint of an S3-compatible service, e.g. `http://127.0.0.1:9000`. An
    /// `http://` endpoint implies [`allow_http`](S3Options::allow_http).
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Permit plain-HTTP (unencrypted) connections.
    pub allow_http: bool,
}

/// Debug never prints the secret key (options end up in logs and error reports).
impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("allow_http", &self.allow_http)
            .finish()
    }
}

/// A backup destination: an object store and a prefix in it.
///
/// A local directory is made durable as it is written: every object, once complete,
/// is `fsync`ed with the directories that name it, so a manifest (written last) is
/// never durable before the files it lists, and a backup reported done survives a
/// power loss. (object_store's local store renames a staged file into place but syncs
/// nothing.) S3 acknowledges an upload once it is stored.
#[derive(Clone)]
pub struct Destination {
    store: Arc<dyn ObjectStore>,
    url: String,
    /// The root directory of a local destination.
    local_root: Option<Arc<std::path::PathBuf>>,
}

/// Debug prints the URL only: never the store's configuration, which holds credentials.
impl std::fmt::Debug for Destination {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.url)
    }
}

impl Destination {
    /// Open a destination:
    ///
    /// - a plain path or `file:///abs/path`: a local directory, created if missing;
    /// - `s3://bucket` or `s3://bucket/some/prefix`: an S3-compatible bucket, configured
    ///   from the `AWS_*` environment and then `s3` (see [`S3Options`]).
    ///
    /// Anything else is `Invalid`. Opening does no network IO: a wrong endpoint or
    /// credentials show up on the first read or write.
    pub fn parse(url: &str, s3: &S3Options) -> Result<Destination, BackupError> {
        let invalid = |why: &str| {
            BackupError::Invalid(format!("backup destination {url:?}: {why} ({SUPPORTED})"))
        };
        if url.trim().is_empty() {
            return Err(invalid("empty"));
        }
        let (scheme, rest) = match url.split_once("://") {
            Some((scheme, rest)) => (Some(scheme.to_ascii_lowercase()), rest),
            None => (None, url),
        };
        let (store, local_root): (Arc<dyn ObjectStore>, _) = match scheme.as_deref() {
            None | Some("file") => {
                let (store, root) = local(rest)?;
                (Arc::new(store), Some(Arc::new(root)))
            }
            Some("s3") => (s3_store(rest, s3).map_err(|why| invalid(&why))?, None),
            Some(other) => return Err(invalid(&format!("unsupported scheme {other}://"))),
        };
        Ok(Destination {
            store,
            url: url.to_owned(),
            local_root,
        })
    }

    /// Open a destination only if it exists: `None` for a local directory that does
    /// not (nothing is created), so a reader or a request that is then refused leaves
    /// no trace. Other URLs are checked as [`Destination::parse`] checks them.
    pub fn parse_existing(url: &str, s3: &S3Options) -> Result<Option<Destination>, BackupError> {
        let local_path = match url.split_once("://") {
            None => Some(url),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("file") => Some(rest),
            Some(_) => None,
        };
        match local_path {
            Some(path) if !url.trim().is_empty() && !std::path::Path::new(path).exists() => {
                Ok(None)
            }
            _ => Destination::parse(url, s3).map(Some),
        }
    }

    /// The URL this destination was opened from.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Write an object whole. Neither store ever shows a reader half an object: the
    /// local store writes a temporary file and renames it, S3 publishes a PUT whole.
    pub async fn put(&self, name: &str, bytes: Vec<u8>) -> Result<(), BackupError> {
        self.store
            .put(&ObjectPath::from(name), PutPayload::from(bytes))
            .await?;
        durable(&self.local_root, name, Sync::Object).await
    }

    /// Start writing `name` in parts of `part` bytes (see [`Upload`]; S3 needs
    /// [`Upload::PART`] or at least 5 MiB).
    pub fn upload(&self, name: &str, part: usize) -> Upload {
        Upload {
            store: Arc::clone(&self.store),
            local_root: self.local_root.clone(),
            name: name.to_owned(),
            path: ObjectPath::from(name),
            part: part.max(1),
            first: None,
            multipart: None,
        }
    }

    /// Read an object whole; `Missing` names it if absent.
    pub async fn get(&self, name: &str) -> Result<Bytes, BackupError> {
        match self.store.get(&ObjectPath::from(name)).await {
            Ok(object) => Ok(object.bytes().await?),
            Err(object_store::Error::NotFound { .. }) => Err(BackupError::Missing(name.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Read an object as a stream of chunks, for files too large to hold whole;
    /// `Missing` names it if absent.
    pub async fn get_stream(
        &self,
        name: &str,
    ) -> Result<BoxStream<'static, Result<Bytes, BackupError>>, BackupError> {
        match self.store.get(&ObjectPath::from(name)).await {
            Ok(object) => Ok(object.into_stream().map_err(BackupError::from).boxed()),
            Err(object_store::Error::NotFound { .. }) => Err(BackupError::Missing(name.to_owned())),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete one object; deleting one that is not there is not an error.
    pub async fn delete(&self, name: &str) -> Result<(), BackupError> {
        match self.store.delete(&ObjectPath::from(name)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    /// The ids of every backup at this destination (every `{id}/manifest.json` directly
    /// under the root), sorted ascending. A directory of files without a manifest is an
    /// unfinished (or half-deleted) backup and is not listed.
    pub async fn list_backups(&self) -> Result<Vec<String>, BackupError> {
        let listing = self.store.list_with_delimiter(None).await?;
        let store = &self.store;
        let mut ids: Vec<String> = futures::stream::iter(listing.common_prefixes)
            .map(|dir| async move {
                let manifest = dir.clone().join(MANIFEST);
                match store.head(&manifest).await {
                    Ok(_) => Ok(Some(dir.as_ref().to_owned())),
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(BackupError::from(e)),
                }
            })
            .buffer_unordered(LIST_CONCURRENCY)
            .try_filter_map(|id| async move { Ok(id) })
            .try_collect()
            .await?;
        ids.sort();
        Ok(ids)
    }

    /// Whether backup `id` exists: its manifest does (a backup is published by its
    /// manifest, written last, and deleted by deleting it first).
    pub async fn backup_exists(&self, id: &str) -> Result<bool, BackupError> {
        let manifest = backup_dir(id)?.join(MANIFEST);
        match self.store.head(&manifest).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    /// Delete a backup: its manifest first (from then on the backup does not exist),
    /// then every other object under `{id}/`. Deleting a backup that is not there is not
    /// an error; calling this again after a crash finishes the job.
    ///
    /// This does not look at other backups: deleting a parent leaves its incremental
    /// children unverifiable, so callers (retention) must delete chains child-first.
    pub async fn delete_backup(&self, id: &str) -> Result<(), BackupError> {
        let dir = backup_dir(id)?;
        let manifest = format!("{id}/{MANIFEST}");
        self.delete(&manifest).await?;
        // The manifest's removal is durable before any file it lists is removed: a
        // power loss never leaves a manifest naming files that are gone.
        durable(&self.local_root, &manifest, Sync::Removed).await?;
        let files: Vec<ObjectPath> = self
            .store
            .list(Some(&dir))
            .map_ok(|meta| meta.location)
            .try_collect()
            .await?;
        if files.is_empty() {
            return Ok(());
        }
        let mut deleted = self
            .store
            .delete_stream(futures::stream::iter(files.into_iter().map(Ok)).boxed());
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }
}

/// An object written as a stream of parts, so a large shard file is never held
/// whole in memory. Small objects (one part) are stored by one plain `put`; larger
/// ones by a multipart upload, which neither store shows a reader until
/// [`finish`](Upload::finish) completes it (the local store stages a file and renames
/// it; S3 assembles the parts on completion). Dropped or [`abort`](Upload::abort)ed,
/// nothing appears (an S3 upload cut off by a crash leaves invisible parts, which a
/// bucket's lifecycle rule for incomplete uploads removes).
pub struct Upload {
    store: Arc<dyn ObjectStore>,
    local_root: Option<Arc<std::path::PathBuf>>,
    name: String,
    path: ObjectPath,
    part: usize,
    /// The first part, held back until it is known whether there is a second.
    first: Option<Bytes>,
    multipart: Option<WriteMultipart>,
}

impl Upload {
    /// Part size: above S3's 5 MiB minimum for every part but the last.
    pub const PART: usize = 8 << 20;

    /// Add the next part; waits while [`PARTS_IN_FLIGHT`] parts are uploading.
    pub async fn push(&mut self, part: Bytes) -> Result<(), BackupError> {
        if self.multipart.is_none() {
            let Some(first) = self.first.take() else {
                self.first = Some(part);
                return Ok(());
            };
            let upload = self.store.put_multipart(&self.path).await?;
            let mut multipart = WriteMultipart::new_with_chunk_size(upload, self.part);
            multipart.put(first);
            self.multipart = Some(multipart);
        }
        if let Some(multipart) = &mut self.multipart {
            multipart.wait_for_capacity(PARTS_IN_FLIGHT).await?;
            multipart.put(part);
        }
        Ok(())
    }

    /// Complete the object: from here on readers see all of it.
    pub async fn finish(self) -> Result<(), BackupError> {
        match self.multipart {
            Some(multipart) => {
                multipart.finish().await?;
            }
            None => {
                let payload = PutPayload::from(self.first.unwrap_or_default());
                self.store.put(&self.path, payload).await?;
            }
        }
        durable(&self.local_root, &self.name, Sync::Object).await
    }

    /// Give up: nothing of the object remains visible.
    pub async fn abort(self) {
        if let Some(multipart) = self.multipart {
            if let Err(e) = multipart.abort().await {
                tracing::warn!(path = %self.path, error = %e, "could not abort an upload");
            }
        }
    }
}

/// The directory of backup `id`, refusing ids that are not one plain path segment: an
/// empty id would make [`Destination::delete_backup`] delete the whole destination.
fn backup_dir(id: &str) -> Result<ObjectPath, BackupError> {
    let plain = !id.is_empty() && id != "." && id != ".." && !id.contains('/');
    match ObjectPath::parse(id) {
        Ok(path) if plain => Ok(path),
        _ => Err(BackupError::Invalid(format!(
            "{id:?} is not a backup id (one non-empty path segment)"
        ))),
    }
}

/// A local directory destination (created if missing, durably) and its root. Deletes
/// remove directories they empty, so a deleted backup leaves no `{id}/` directory
/// behind.
fn local(path: &str) -> Result<(LocalFileSystem, std::path::PathBuf), BackupError> {
    let root = std::path::PathBuf::from(path);
    if !root.exists() {
        std::fs::create_dir_all(&root).map_err(BackupError::io("creating the backup directory"))?;
        // Every directory up the path may be new: sync each one's entry in its parent.
        for dir in root.ancestors().skip(1) {
            let dir = if dir.as_os_str().is_empty() {
                std::path::Path::new(".")
            } else {
                dir
            };
            cairn_store::sync_dir(dir).map_err(BackupError::io("syncing the backup directory"))?;
        }
    }
    let store = LocalFileSystem::new_with_prefix(&root)?.with_automatic_cleanup(true);
    Ok((store, root))
}

/// What [`durable`] makes durable about an object.
#[derive(Debug, Clone, Copy)]
enum Sync {
    /// The object was written: its bytes and its name in each directory to the root.
    Object,
    /// The object was removed: its removal from its directory.
    Removed,
}

/// Make a change to object `name` of a local destination durable (nothing to do for
/// S3). Blocking file system work, off the async workers.
async fn durable(
    root: &Option<Arc<std::path::PathBuf>>,
    name: &str,
    what: Sync,
) -> Result<(), BackupError> {
    let Some(root) = root.clone() else {
        return Ok(());
    };
    let name = name.to_owned();
    tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        let path = root.join(&name);
        if let Sync::Object = what {
            std::fs::File::open(&path)?.sync_all()?;
        }
        // The object's directory, then each one above it up to the root: a directory
        // created for the object is named durably in its parent.
        let mut dir = path.parent();
        while let Some(d) = dir {
            match cairn_store::sync_dir(d) {
                Ok(()) => {}
                // Automatic cleanup removed a directory the removal emptied.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            if d == root.as_path() {
                break;
            }
            dir = d.parent();
        }
        Ok(())
    })
    .await
    .map_err(|e| BackupError::Io {
        what: "syncing a backup file",
        source: std::io::Error::other(e),
    })?
    .map_err(BackupError::io("syncing a backup file"))
}

/// An S3 store for `bucket[/prefix]` (the part of the URL after `s3://`); the error says
/// what is wrong with the URL or settings.
fn s3_store(rest: &str, options: &S3Options) -> Result<Arc<dyn ObjectStore>, String> {
    let (bucket, prefix) = match rest.split_once('/') {
        Some((bucket, prefix)) => (bucket, prefix.trim_matches('/')),
        None => (rest, ""),
    };
    if bucket.is_empty() {
        return Err("no bucket name".into());
    }
    if bucket.contains(['?', '#', '@', ':']) || bucket.contains(char::is_whitespace) {
        return Err(format!("{bucket:?} is not a bucket name"));
    }
    let mut builder = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_virtual_hosted_style_request(false);
    if let Some(endpoint) = &options.endpoint {
        // `AWS_ENDPOINT_URL_S3` would take precedence over a plain endpoint: override both.
        builder = builder
            .with_endpoint(endpoint)
            .with_config(AmazonS3ConfigKey::S3Endpoint, endpoint);
    }
    if let Some(region) = &options.region {
        builder = builder.with_region(region);
    }
    if let Some(key) = &options.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &options.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    let endpoint_is_http = [AmazonS3ConfigKey::S3Endpoint, AmazonS3ConfigKey::Endpoint]
        .iter()
        .find_map(|key| builder.get_config_value(key))
        .is_some_and(|endpoint| endpoint.to_ascii_lowercase().starts_with("http://"));
    if options.allow_http || endpoint_is_http {
        builder = builder.with_allow_http(true);
    }
    // object_store's defaults retry for up to 3 minutes; an operator waiting on
    // `cairn backup verify` or a scheduled backup should hear about a dead endpoint
    // in seconds. Explicit `AWS_*` settings still win over these.
    if builder
        .get_config_value(&AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout))
        .is_none()
    {
        builder = builder.with_config(
            AmazonS3ConfigKey::Client(ClientConfigKey::ConnectTimeout),
            "5s",
        );
    }
    builder = builder.with_retry(RetryConfig {
        max_retries: 3,
        retry_timeout: std::time::Duration::from_secs(30),
        ..RetryConfig::default()
    });
    let store = builder.build().map_err(|e| e.to_string())?;
    if prefix.is_empty() {
        return Ok(Arc::new(store));
    }
    let prefix = ObjectPath::parse(prefix).map_err(|e| format!("bad prefix {prefix:?}: {e}"))?;
    Ok(Arc::new(PrefixStore::new(store, prefix)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir_destination() -> (tempfile::TempDir, Destination) {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().to_str().expect("utf-8 temp path");
        let dest = Destination::parse(path, &S3Options::default()).expect("directory destination");
        (dir, dest)
    }

    #[tokio::test]
    async fn a_directory_lists_and_deletes_backups_by_manifest() {
        let (dir, dest) = dir_destination();
        for id in ["b2", "b1", "b3"] {
            dest.put(&format!("{id}/shard-0.cbk"), vec![1, 2, 3])
                .await
                .expect("put");
        }
        dest.put("b1/manifest.json", b"{}".to_vec())
            .await
            .expect("put");
        dest.put("b2/manifest.json", b"{}".to_vec())
            .await
            .expect("put");
        // b3 has files but no manifest: not a backup. A loose object at the root is not one.
        dest.put("stray.txt", b"x".to_vec()).await.expect("put");
        assert_eq!(dest.list_backups().await.expect("list"), vec!["b1", "b2"]);

        dest.delete_backup("b1").await.expect("delete");
        assert_eq!(dest.list_backups().await.expect("list"), vec!["b2"]);
        assert!(matches!(
            dest.get("b1/shard-0.cbk").await,
            Err(BackupError::Missing(_))
        ));
        assert!(
            !dir.path().join("b1").exists(),
            "the emptied directory is removed"
        );
        assert!(dir.path().exists(), "the destination itself stays");

        // Deleting again, or a backup that never was, is fine; so is a missing object.
        dest.delete_backup("b1").await.expect("delete again");
        dest.delete_backup("never").await.expect("delete missing");
        dest.delete("b2/nothing-here")
            .await
            .expect("delete missing object");

        // A manifest-less directory can still be cleaned up by id.
        dest.delete_backup("b3").await.expect("delete unpublished");
        assert!(!dir.path().join("b3").exists());
        assert_eq!(dest.list_backups().await.expect("list"), vec!["b2"]);
        assert_eq!(dest.get("stray.txt").await.expect("get").as_ref(), b"x");
    }

    #[tokio::test]
    async fn an_empty_destination_has_no_backups() {
        let (_dir, dest) = dir_destination();
        assert!(dest.list_backups().await.expect("list").is_empty());
    }

    #[tokio::test]
    async fn ids_that_are_not_one_segment_are_refused() {
        let (_dir, dest) = dir_destination();
        for id in ["", ".", "..", "a/b", "/"] {
            let err = dest.delete_backup(id).await.expect_err(id);
            assert!(matches!(err, BackupError::Invalid(_)), "{id:?}: {err}");
        }
    }

    #[test]
    fn urls_are_parsed_or_refused() {
        let none = S3Options::default();
        for bad in [
            "ftp://x",
            "s3://",
            "s3:///prefix",
            "gs://bucket",
            "",
            "s3://a b/c",
        ] {
            match Destination::parse(bad, &none) {
                Err(BackupError::Invalid(msg)) => assert!(msg.contains("s3://bucket"), "{msg}"),
                other => panic!("{bad:?} gave {other:?}"),
            }
        }
        let s3 = Destination::parse("s3://bucket/some/prefix", &none).expect("s3 parses");
        assert_eq!(s3.url(), "s3://bucket/some/prefix");
        assert_eq!(format!("{s3:?}"), "s3://bucket/some/prefix");
    }

    #[test]
    fn debug_hides_the_secret() {
        let options = S3Options {
            access_key_id: Some("AKID".into()),
            secret_access_key: Some("very-secret".into()),
            ..S3Options::default()
        };
        let text = format!("{options:?}");
        assert!(!text.contains("very-secret"), "{text}");
        assert!(text.contains("<redacted>"), "{text}");
    }

    #[test]
    fn options_deserialize_with_defaults() {
        let options: S3Options =
            serde_json::from_str(r#"{"endpoint": "http://127.0.0.1:9000"}"#).expect("parse");
        assert_eq!(options.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert!(options.region.is_none() && !options.allow_http);
    }
}
