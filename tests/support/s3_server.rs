//! A real S3-compatible server on loopback, for tests of anything that talks S3.
//!
//! Why: S3 destinations must be tested against the S3 protocol itself (SigV4 signing,
//! path-style URLs, XML listings with delimiters, error codes), not a mock of our own
//! making, and `cargo test` on a fresh machine must need nothing installed or running.
//! So the server is `s3s-fs`: an S3 implementation in Rust over a directory, run
//! in-process on `127.0.0.1:0` (a random free port) over a temporary directory. It
//! signs-checks every request against fixed test credentials, so wrong credentials
//! fail as they would against a real service.
//!
//! The server runs on its own thread with its own Tokio runtime, so it works from plain
//! `#[test]` functions and from `#[tokio::test]` ones alike (including current-thread
//! runtimes, which could not drive a server spawned on them while the test blocks).
//! Dropping the [`S3Server`] stops it and deletes its directory.
//!
//! A known difference from S3 that tests must not rely on: a PUT into a bucket that
//! does not exist creates it (S3 answers `NoSuchBucket`; listing one does fail).
//!
//! This file depends on no Cairn crate, so any test crate can include it:
//!
//! ```ignore
//! #[path = "../../../tests/support/s3_server.rs"] // from crates/<name>/tests/<test>.rs
//! mod s3_server;
//!
//! let server = s3_server::S3Server::start("backups");
//! let url = server.url("some/prefix"); // "s3://backups/some/prefix"
//! let o = server.options();            // endpoint, region, access key, secret
//! ```
//!
//! The including crate needs these dev-dependencies (all `.workspace = true`):
//! `s3s`, `s3s-fs`, `hyper`, `hyper-util`, `tokio`, `tempfile`.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use hyper_util::rt::TokioIo;
use s3s::auth::SimpleAuth;
use s3s::service::S3ServiceBuilder;
use tokio::sync::oneshot;

/// The access key the server accepts (and the only one).
pub const ACCESS_KEY_ID: &str = "cairn-test-access-key";
/// The secret key matching [`ACCESS_KEY_ID`].
pub const SECRET_ACCESS_KEY: &str = "cairn-test-secret-key";
/// The region clients should sign for.
pub const REGION: &str = "us-east-1";

/// Connection settings for the test server, field for field the shape of
/// `cairn_backup::destination::S3Options` (plain strings so this file needs no Cairn
/// crate): `S3Options { endpoint: Some(o.endpoint), region: Some(o.region), ... }`.
#[derive(Debug, Clone)]
pub struct S3TestOptions {
    pub endpoint: String,
    pub region: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

/// A running S3-compatible server holding one (initially empty) bucket.
pub struct S3Server {
    /// `http://127.0.0.1:PORT`: what clients use as their S3 endpoint (path-style).
    pub endpoint: String,
    /// The bucket created at start.
    pub bucket: String,
    addr: SocketAddr,
    /// `UploadPart` requests served (a multipart upload's parts).
    parts: Arc<AtomicU64>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
    // Last field, so it is dropped after the thread has stopped using it.
    root: tempfile::TempDir,
}

impl S3Server {
    /// Start a server with an empty bucket named `bucket` (S3 bucket rules apply:
    /// 3-63 characters of lowercase letters, digits, `-` and `.`). Returns once the
    /// server is listening; panics if it cannot start (test support).
    pub fn start(bucket: &str) -> S3Server {
        let root = tempfile::tempdir().expect("s3 test server: temp dir");
        // s3s-fs keeps a bucket as a directory under its root.
        std::fs::create_dir(root.path().join(bucket)).expect("s3 test server: bucket dir");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3 test server: file system");
        let service = {
            let mut builder = S3ServiceBuilder::new(fs);
            builder.set_auth(SimpleAuth::from_single(ACCESS_KEY_ID, SECRET_ACCESS_KEY));
            builder.build()
        };

        // Bind before returning, so the port is known and connections made right away
        // wait in the backlog instead of being refused.
        let listener =
            std::net::TcpListener::bind("127.0.0.1:0").expect("s3 test server: bind loopback");
        listener
            .set_nonblocking(true)
            .expect("s3 test server: non-blocking listener");
        let addr = listener
            .local_addr()
            .expect("s3 test server: local address");

        let (stop, mut stopped) = oneshot::channel::<()>();
        let parts = Arc::new(AtomicU64::new(0));
        let counted = parts.clone();
        let thread = std::thread::Builder::new()
            .name(format!("s3-test-server-{}", addr.port()))
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .expect("s3 test server: runtime");
                runtime.block_on(async move {
                    let listener = tokio::net::TcpListener::from_std(listener)
                        .expect("s3 test server: tokio listener");
                    loop {
                        let socket = tokio::select! {
                            _ = &mut stopped => break,
                            accepted = listener.accept() => match accepted {
                                Ok((socket, _)) => socket,
                                // Transient (e.g. out of file descriptors): keep serving.
                                Err(_) => continue,
                            },
                        };
                        let service = service.clone();
                        let counted = counted.clone();
                        // Counts what tests want to know the client did.
                        let service = hyper::service::service_fn(move |request| {
                            let query = request.uri().query().unwrap_or_default();
                            if query.contains("partNumber=") && query.contains("uploadId=") {
                                counted.fetch_add(1, Ordering::SeqCst);
                            }
                            hyper::service::Service::call(&service, request)
                        });
                        tokio::spawn(async move {
                            // A client hanging up mid-request is not the server's problem.
                            let _ = hyper::server::conn::http1::Builder::new()
                                .serve_connection(TokioIo::new(socket), service)
                                .await;
                        });
                    }
                });
                // Dropping the runtime here cancels every open connection's task.
            })
            .expect("s3 test server: thread");

        S3Server {
            endpoint: format!("http://{addr}"),
            bucket: bucket.to_owned(),
            addr,
            parts,
            stop: Some(stop),
            thread: Some(thread),
            root,
        }
    }

    /// Parts of multipart uploads received so far (`UploadPart` requests).
    pub fn parts_uploaded(&self) -> u64 {
        self.parts.load(Ordering::SeqCst)
    }

    /// `s3://{bucket}/{prefix}` (just `s3://{bucket}` for an empty prefix).
    pub fn url(&self, prefix: &str) -> String {
        let prefix = prefix.trim_matches('/');
        if prefix.is_empty() {
            format!("s3://{}", self.bucket)
        } else {
            format!("s3://{}/{prefix}", self.bucket)
        }
    }

    /// The settings a client needs: this server's endpoint and the test credentials.
    pub fn options(&self) -> S3TestOptions {
        S3TestOptions {
            endpoint: self.endpoint.clone(),
            region: REGION.to_owned(),
            access_key_id: ACCESS_KEY_ID.to_owned(),
            secret_access_key: SECRET_ACCESS_KEY.to_owned(),
        }
    }

    /// The same settings as JSON, which `serde_json` turns into an `S3Options`.
    pub fn options_json(&self) -> String {
        format!(
            r#"{{"endpoint":"{}","region":"{REGION}","access_key_id":"{ACCESS_KEY_ID}","secret_access_key":"{SECRET_ACCESS_KEY}"}}"#,
            self.endpoint
        )
    }

    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Where the server keeps its data: `{root}/{bucket}/{key}` is an object's bytes.
    /// For tests that damage objects behind the server's back.
    pub fn root(&self) -> &std::path::Path {
        self.root.path()
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            // A panic on the server thread has already been reported; don't panic twice.
            let _ = thread.join();
        }
    }
}
