#![allow(dead_code)] // the fuzz target uses `check`, tests/openapi_routes.rs `send`
//! Oracle of the `http_api` target: whatever request reaches the HTTP API, the answer
//! is well formed and never a 5xx that means a bug.
//!
//! The API is driven in process: one single-node cluster (a real store, real
//! replicas, two shards and the meta group, on a temporary directory and a loopback
//! peer port nobody dials) is started once per process, and each case is sent to the
//! axum `Router` with `tower::ServiceExt::oneshot`, no socket in between. A case picks
//! a method, a route template (or a raw path), fills its segments, query string,
//! precondition headers and body from the input, so the fuzzer reaches every handler
//! and every validation branch; the raw bytes are the body, so JSON bodies are fuzzed
//! as bytes.
//!
//! Checked on every answer: no 500, 501 or 502 (a storage error, a panic turned into a
//! 500, or a destination failure is a bug here: only safe destinations are sent); a
//! 503 carries one of the retryable codes; every error (4xx and 5xx) is the JSON body
//! `{"error": {"code", "message"}}` with a non-empty code; every 2xx JSON answer
//! parses. Backup destinations are rewritten to directories inside the temporary
//! directory (or to a few invalid forms), so a case never writes outside it and never
//! reaches the network.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use cairn_server::node::Parts;
use cairn_server::Settings;
use cairn_store::NodeStore;
use tower::ServiceExt;

use crate::input::Input;

/// The node every case is sent to.
struct InProcessNode {
    runtime: tokio::runtime::Runtime,
    app: axum::Router,
    dir: PathBuf,
    _temp: tempfile::TempDir,
}

const METHODS: [&str; 7] = ["GET", "PUT", "POST", "DELETE", "HEAD", "PATCH", "OPTIONS"];

/// Route templates; `{}` is a segment taken from the input.
const ROUTES: [&str; 16] = [
    "/v1/kv",
    "/v1/kv/",
    "/v1/kv/{}",
    "/v1/batch",
    "/v1/snapshots",
    "/v1/snapshots/{}",
    "/v1/snapshots/{}/diff/{}",
    "/v1/backups",
    "/v1/backups/schedules",
    "/v1/backups/{}",
    "/v1/revert",
    "/v1/reverts",
    "/v1/cluster",
    "/health",
    "/ready",
    "/{}",
];

/// Codes a 503 may carry: each tells the client to retry.
const RETRYABLE: [&str; 6] = [
    "unavailable",
    "transaction_aborted",
    "outcome_unknown",
    "shutting_down",
    "snapshot_aborted",
    "not_ready",
];

pub fn check(data: &[u8]) {
    let node = node();
    let Some(request) = request(node, data) else {
        return;
    };
    let what = format!("{} {}", request.method(), request.uri());
    let head = request.method() == Method::HEAD;
    let (status, content_type, body) = answer(request);
    let text = String::from_utf8_lossy(&body);
    assert!(
        !(500..=502).contains(&status.as_u16()),
        "{what}: {status} {text}"
    );
    if head {
        // A HEAD answer has the GET answer's headers and no body.
        assert!(body.is_empty(), "{what}: a body");
        return;
    }
    if status.is_client_error() || status.is_server_error() {
        let error: serde_json::Value = serde_json::from_slice(&body)
            .unwrap_or_else(|e| panic!("{what}: {status} with a non-JSON body ({e}): {text}"));
        let code = error["error"]["code"].as_str().unwrap_or_default();
        assert!(
            !code.is_empty(),
            "{what}: {status} without an error code: {text}"
        );
        assert!(error["error"]["message"].is_string(), "{what}: {text}");
        if status == StatusCode::SERVICE_UNAVAILABLE {
            assert!(RETRYABLE.contains(&code), "{what}: 503 {code}: {text}");
        }
    } else if content_type.starts_with("application/json") {
        serde_json::from_slice::<serde_json::Value>(&body)
            .unwrap_or_else(|e| panic!("{what}: {status} with bad JSON ({e}): {text}"));
    }
}

/// Send `method uri` with `body` to the in-process node: its status and body.
pub fn send(method: &str, uri: &str, body: &[u8]) -> (StatusCode, Vec<u8>) {
    // A POST says it is JSON, as every client must (a POST that does not is refused
    // with 415 before any handler runs, `tests/security.rs`).
    let request = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body.to_vec()))
        .expect("a valid request");
    let (status, _, body) = answer(request);
    (status, body.to_vec())
}

/// The node's answer to `request`: status, content type, body.
fn answer(request: Request<Body>) -> (StatusCode, String, axum::body::Bytes) {
    let node = node();
    node.runtime.block_on(async {
        let response = node
            .app
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let status = response.status();
        let content_type = response
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned();
        let body = axum::body::to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("a response body");
        (status, content_type, body)
    })
}

/// The request a case describes, or `None` when its bytes make no valid HTTP request
/// (an invalid URI or header): hyper would refuse those before the router.
fn request(node: &InProcessNode, data: &[u8]) -> Option<Request<Body>> {
    let mut input = Input::new(data);
    let method = Method::from_bytes(input.choose(&METHODS).as_bytes()).ok()?;
    let route = input.choose(&ROUTES);
    let mut path = String::new();
    for (i, part) in route.split("{}").enumerate() {
        if i > 0 {
            path.push_str(&segment(input.bytes(24)));
        }
        path.push_str(part);
    }
    let query = input.bytes(48);
    if !query.is_empty() {
        path.push('?');
        path.push_str(&segment(query));
    }
    let mut builder = Request::builder().method(method).uri(path);
    for name in ["if-match", "if-none-match", "content-type"] {
        if input.byte() & 3 == 0 {
            builder = builder.header(name, input.bytes(16));
        }
    }
    let mut body = input.rest().to_vec();
    if route == "/v1/backups" {
        body = safe_backup_body(&node.dir, &body);
    }
    builder.body(Body::from(body)).ok()
}

/// Bytes as a URI path segment or query: printable ASCII as it is (`%` included, so
/// malformed escapes reach the decoder), everything else percent-encoded.
fn segment(bytes: &[u8]) -> String {
    let mut out = String::new();
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'#' && b != b'?' {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A `POST /v1/backups` body whose `destination` (if it is a JSON object with one) is
/// replaced by a directory inside the node's temporary directory or an invalid form.
fn safe_backup_body(dir: &Path, body: &[u8]) -> Vec<u8> {
    let Ok(serde_json::Value::Object(mut fields)) = serde_json::from_slice(body) else {
        return body.to_vec();
    };
    if let Some(destination) = fields.get_mut("destination") {
        let pick = destination.to_string().len() % 6;
        *destination = match pick {
            0 => serde_json::Value::Null,
            1 => dir.join("backups-a").display().to_string().into(),
            2 => format!("file://{}", dir.join("backups-b").display()).into(),
            3 => "  ".into(),
            4 => "ftp://127.0.0.1/backups".into(),
            _ => serde_json::json!(7),
        };
    }
    serde_json::Value::Object(fields).to_string().into_bytes()
}

fn node() -> &'static InProcessNode {
    static NODE: OnceLock<InProcessNode> = OnceLock::new();
    NODE.get_or_init(|| {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime");
        remove_stale_dirs();
        let temp = tempfile::Builder::new()
            .prefix(&format!("{DIR_PREFIX}{}-", std::process::id()))
            .tempdir()
            .expect("temp dir");
        let dir = temp.path().to_path_buf();
        let app = runtime.block_on(start(&dir));
        InProcessNode {
            runtime,
            app,
            dir,
            _temp: temp,
        }
    })
}

/// The node's directory is `<tmp>/cairn-http-fuzz-<pid>-<random>`. A process never
/// drops its statics (libFuzzer and the test harness both end with `exit`), so each
/// run removes the directories of runs whose process is gone.
const DIR_PREFIX: &str = "cairn-http-fuzz-";

fn remove_stale_dirs() {
    // Whether a process is alive is read from /proc; elsewhere, leave everything.
    if !Path::new("/proc/self").exists() {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix(DIR_PREFIX))
            .and_then(|rest| rest.split('-').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// Start a one-node cluster from the node's own composition root ([`Parts`]), without
/// its HTTP listener or background tasks, and wait until every group has a leader.
async fn start(dir: &Path) -> axum::Router {
    let peer = free_port();
    let settings = Settings {
        id: Some(1),
        data_dir: Some(dir.join("data")),
        http: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        peer: Some(peer.into()),
        initial_cluster: Some(format!("1={peer}")),
        shards: Some(2),
        tick_ms: Some(20),
        request_timeout_ms: Some(2000),
        max_value_bytes: Some(4096),
        max_request_bytes: Some(64 * 1024),
        max_key_bytes: Some(256),
        snapshot_interval_ms: Some(0),
        backup_dir: Some(dir.join("backups").display().to_string()),
        backup_rate_limit: Some("0".into()),
        // The debug views are routes like the others, to fuzz and to document.
        enable_debug: Some(true),
        ..Settings::default()
    };
    let config = settings.resolve().expect("fuzz node config");
    let store = NodeStore::open_with_cache(&config.data_dir, 64 << 20).expect("store");
    let parts = Parts::assemble(config, store)
        .await
        .expect("the node's parts");
    let app = parts.app();
    let raft = parts.raft.clone();
    let groups = raft.config().groups();
    for _ in 0..500 {
        if groups.clone().all(|g| raft.leader_of(g).is_some()) {
            return app;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the fuzz node elected no leader in 10 s");
}

/// A loopback port free right now (the peer listener binds it next).
fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
}
