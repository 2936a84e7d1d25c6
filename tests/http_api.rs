//! The HTTP API, end to end against a real three-node cluster: every endpoint, every
//! documented bad input, and for each bad input proof that nothing changed.
//!
//! Starting a cluster costs seconds, so each test function runs many checks against
//! one cluster. Requests are made with plain `reqwest` (or a raw socket where the URL
//! must reach the server byte for byte) so that statuses and headers are checked
//! exactly; `cairn-client` is used where a typed round trip is the point.

#[path = "harness/mod.rs"]
mod harness;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use cairn_client::{api, Client, Consistency, Precondition};
use harness::{eventually, shard_of, Cluster, ClusterOptions};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const MIB: usize = 1024 * 1024;

/// A response, read completely.
#[derive(Debug)]
struct Resp {
    status: u16,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Resp {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    fn etag(&self) -> Option<u64> {
        cairn_client::parse_etag(self.headers.get("etag")?.as_bytes())
    }

    fn header(&self, name: &str) -> Option<String> {
        Some(self.headers.get(name)?.to_str().ok()?.to_owned())
    }
}

/// Sends one request with `reqwest` (the URL must already be properly encoded).
async fn send(method: &str, url: &str, headers: &[(&str, &str)], body: Option<Vec<u8>>) -> Resp {
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client");
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = http.request(method.clone(), url);
    // Every POST must say it is JSON (tests/auth.rs checks the refusal); a test that
    // gives no media type means the usual one.
    let typed = headers
        .iter()
        .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
    if method == reqwest::Method::POST && !typed {
        request = request.header("content-type", "application/json");
    }
    for (name, value) in headers {
        request = request.header(
            HeaderName::from_bytes(name.as_bytes()).expect("header name"),
            HeaderValue::from_str(value).expect("header value"),
        );
    }
    if let Some(body) = body {
        request = request.body(body);
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: transport error {e:?}"));
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    let body = response
        .bytes()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: reading body: {e}"))
        .to_vec();
    Resp {
        status,
        headers,
        body,
    }
}

/// Sends one HTTP/1.1 request over a raw socket, so the request target reaches the
/// server exactly as written (no URL normalisation or validation on the way).
async fn raw(addr: SocketAddr, method: &str, target: &str, body: &[u8]) -> Resp {
    let mut stream = tokio::net::TcpStream::connect(addr)
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    // Every POST must say it is JSON (tests/auth.rs checks the refusal).
    let media = if method == "POST" {
        "Content-Type: application/json\r\n"
    } else {
        ""
    };
    let head = format!(
        "{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n{media}Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.expect("write head");
    stream.write_all(body).await.expect("write body");
    let mut bytes = Vec::new();
    tokio::time::timeout(Duration::from_secs(30), stream.read_to_end(&mut bytes))
        .await
        .unwrap_or_else(|_| panic!("{method} {target}: no response within 30 s"))
        .expect("read response");
    parse_response(&bytes).unwrap_or_else(|| {
        panic!(
            "{method} {target}: unparseable response {:?}",
            String::from_utf8_lossy(&bytes)
        )
    })
}

fn parse_response(bytes: &[u8]) -> Option<Resp> {
    let split = bytes.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..split]).ok()?;
    let mut lines = head.split("\r\n");
    let status: u16 = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let mut headers = HeaderMap::new();
    for line in lines {
        let (name, value) = line.split_once(':')?;
        headers.append(
            HeaderName::from_bytes(name.trim().as_bytes()).ok()?,
            HeaderValue::from_str(value.trim()).ok()?,
        );
    }
    let mut body = bytes[split + 4..].to_vec();
    let chunked = headers
        .get("transfer-encoding")
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"chunked"));
    if chunked {
        let mut rest = &body[..];
        let mut out = Vec::new();
        loop {
            let line_end = rest.windows(2).position(|w| w == b"\r\n")?;
            let size_text = std::str::from_utf8(&rest[..line_end]).ok()?;
            let size = usize::from_str_radix(size_text.split(';').next()?.trim(), 16).ok()?;
            rest = &rest[line_end + 2..];
            if size == 0 {
                break;
            }
            out.extend_from_slice(rest.get(..size)?);
            rest = rest.get(size + 2..)?;
        }
        body = out;
    }
    Some(Resp {
        status,
        headers,
        body,
    })
}

/// Asserts `resp` is the documented JSON error.
#[track_caller]
fn assert_error(what: &str, resp: &Resp, status: u16, codes: &[&str]) {
    let body: Result<api::ErrorBody, _> = serde_json::from_slice(&resp.body);
    let code = body.as_ref().map(|b| b.error.code.as_str()).unwrap_or("");
    assert!(
        resp.status == status && codes.contains(&code),
        "{what}: expected {status} with error code {codes:?}, got {} with body {:?}",
        resp.status,
        resp.text()
    );
    if let Ok(body) = body {
        assert!(
            !body.error.message.is_empty(),
            "{what}: error message is empty"
        );
    }
}

type State = Vec<(Vec<u8>, Vec<u8>, u64)>;

/// Every key, value and version in the cluster.
async fn state(client: &Client) -> State {
    client
        .scan_all(b"", Consistency::Linearizable)
        .await
        .expect("scan everything")
}

/// Asserts the refusal, then that the cluster's whole contents are unchanged.
async fn refused(
    client: &Client,
    before: &State,
    what: &str,
    resp: Resp,
    status: u16,
    codes: &[&str],
) {
    assert_error(what, &resp, status, codes);
    let after = state(client).await;
    assert!(
        &after == before,
        "{what}: the refused request changed the store ({} keys before, {} after)",
        before.len(),
        after.len()
    );
}

/// One request the API must refuse: what it is, how it is sent, and the status and
/// error codes it must get (any of `codes`).
struct Refusal {
    what: String,
    method: &'static str,
    target: String,
    body: Option<Vec<u8>>,
    /// Sent byte for byte on a socket (for malformed targets no HTTP client sends).
    raw: bool,
    json: bool,
    node: usize,
    status: u16,
    codes: &'static [&'static str],
}

impl Refusal {
    fn http(
        method: &'static str,
        target: &str,
        body: Option<Vec<u8>>,
        status: u16,
        codes: &'static [&'static str],
    ) -> Refusal {
        Refusal {
            what: format!("{method} {target}"),
            method,
            target: target.to_owned(),
            body,
            raw: false,
            json: false,
            node: 1,
            status,
            codes,
        }
    }

    fn raw(
        method: &'static str,
        target: &str,
        body: Vec<u8>,
        status: u16,
        codes: &'static [&'static str],
    ) -> Refusal {
        Refusal {
            raw: true,
            ..Refusal::http(method, target, Some(body), status, codes)
        }
    }

    fn named(self, what: &str) -> Refusal {
        Refusal {
            what: what.to_owned(),
            ..self
        }
    }

    fn on(self, node: usize) -> Refusal {
        Refusal { node, ..self }
    }

    fn json(self) -> Refusal {
        Refusal { json: true, ..self }
    }

    async fn send(&self, cluster: &Cluster) -> Resp {
        if self.raw {
            let body = self.body.as_deref().unwrap_or_default();
            return raw(
                cluster.http_addr(self.node),
                self.method,
                &self.target,
                body,
            )
            .await;
        }
        let headers: &[(&str, &str)] = if self.json {
            &[("content-type", "application/json")]
        } else {
            &[]
        };
        let url = url(cluster, self.node, &self.target);
        send(self.method, &url, headers, self.body.clone()).await
    }
}

fn url(cluster: &Cluster, node: usize, path: &str) -> String {
    format!("http://{}{}", cluster.http_addr(node), path)
}

fn key_path(key: &[u8]) -> String {
    format!(
        "/v1/kv/{}",
        cairn_client::encode_key_path(key).expect("addressable")
    )
}

/// `count` distinct keys `{prefix}{n}` that all hash to one shard.
fn same_shard_keys(prefix: &str, count: usize, shards: u32) -> Vec<String> {
    let first = format!("{prefix}0");
    let shard = shard_of(first.as_bytes(), shards);
    (0..)
        .map(|n| format!("{prefix}{n}"))
        .filter(|k| shard_of(k.as_bytes(), shards) == shard)
        .take(count)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_status_health_and_ready() {
    let cluster = Cluster::start(ClusterOptions::default()).await;

    let mut cluster_ids = Vec::new();
    for node in cluster.ids() {
        let resp = send("GET", &url(&cluster, node, "/health"), &[], None).await;
        assert_eq!(resp.status, 200, "GET /health: {}", resp.text());
        assert_eq!(resp.json(), serde_json::json!({"status": "ok"}));

        let resp = send("GET", &url(&cluster, node, "/ready"), &[], None).await;
        assert_eq!(resp.status, 200, "GET /ready: {}", resp.text());
        assert_eq!(resp.json(), serde_json::json!({"ready": true}));
        cluster.client(node).health().await.expect("client health");
        assert!(cluster.client(node).ready().await.expect("client ready"));

        let resp = send("GET", &url(&cluster, node, "/v1/cluster"), &[], None).await;
        assert_eq!(resp.status, 200, "GET /v1/cluster: {}", resp.text());
        let status: api::ClusterStatus = serde_json::from_slice(&resp.body)
            .unwrap_or_else(|e| panic!("ClusterStatus: {e}: {}", resp.text()));
        assert_eq!(status.node_id, node as u64);
        assert!(!status.cluster_id.is_empty());
        cluster_ids.push(status.cluster_id.clone());
        let mut nodes: Vec<(u64, String)> = status
            .nodes
            .iter()
            .map(|n| (n.id, n.peer_addr.clone()))
            .collect();
        nodes.sort();
        let expected: Vec<(u64, String)> = cluster
            .ids()
            .into_iter()
            .map(|id| (id as u64, cluster.peer_addr(id).to_string()))
            .collect();
        assert_eq!(nodes, expected, "nodes as seen by node {node}");
        let mut shard_ids: Vec<u32> = status.shards.iter().map(|s| s.id).collect();
        shard_ids.sort();
        assert_eq!(shard_ids, (0..8).collect::<Vec<u32>>(), "node {node}");
        for shard in &status.shards {
            let mut replicas = shard.replicas.clone();
            replicas.sort();
            assert_eq!(replicas, vec![1, 2, 3], "replicas of {shard:?}");
            let leader = shard
                .leader
                .unwrap_or_else(|| panic!("node {node} knows no leader for shard {}", shard.id));
            assert!(replicas.contains(&leader), "leader of {shard:?}");
            assert!(shard.term >= 1, "{shard:?}");
            assert!(shard.first_index >= 1, "{shard:?}");
        }
        let typed = cluster
            .client(node)
            .cluster()
            .await
            .expect("client cluster");
        assert_eq!(typed.node_id, node as u64);
    }
    assert!(
        cluster_ids.windows(2).all(|w| w[0] == w[1]),
        "nodes disagree on the cluster id: {cluster_ids:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_round_trips() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let c1 = cluster.client(1);

    // Create (201), replace (200), versions and ETags.
    let path = "/v1/kv/rt/a";
    let resp = send("PUT", &url(&cluster, 1, path), &[], Some(b"one".to_vec())).await;
    assert_eq!(resp.status, 201, "PUT new key: {}", resp.text());
    let v1 = resp.json()["version"].as_u64().expect("version");
    assert_eq!(resp.etag(), Some(v1), "ETag of PUT");
    let resp = send("GET", &url(&cluster, 1, path), &[], None).await;
    assert_eq!(resp.status, 200);
    assert_eq!(resp.body, b"one");
    assert_eq!(resp.etag(), Some(v1), "ETag of GET");
    assert_eq!(
        resp.header("content-type").as_deref(),
        Some("application/octet-stream")
    );
    let resp = send("PUT", &url(&cluster, 1, path), &[], Some(b"two".to_vec())).await;
    assert_eq!(resp.status, 200, "PUT existing key: {}", resp.text());
    let v2 = resp.json()["version"].as_u64().expect("version");
    assert!(v2 > v1, "versions grow: {v1} then {v2}");
    assert_eq!(resp.etag(), Some(v2));

    // If-Match with a version.
    let stale = format!("\"{v1}\"");
    let resp = send(
        "PUT",
        &url(&cluster, 1, path),
        &[("if-match", &stale)],
        Some(b"x".to_vec()),
    )
    .await;
    assert_error(
        "PUT If-Match stale version",
        &resp,
        412,
        &["precondition_failed"],
    );
    let got = c1.get(b"rt/a").await.unwrap().expect("present");
    assert_eq!((got.value.as_slice(), got.version), (&b"two"[..], v2));
    let current = format!("\"{v2}\"");
    let resp = send(
        "PUT",
        &url(&cluster, 1, path),
        &[("if-match", &current)],
        Some(b"three".to_vec()),
    )
    .await;
    assert_eq!(resp.status, 200, "PUT If-Match current: {}", resp.text());
    let v3 = resp.json()["version"].as_u64().expect("version");
    assert!(v3 > v2);

    // If-None-Match: * and If-Match: *.
    let resp = send(
        "PUT",
        &url(&cluster, 1, path),
        &[("if-none-match", "*")],
        Some(b"x".to_vec()),
    )
    .await;
    assert_error(
        "PUT If-None-Match * on existing key",
        &resp,
        412,
        &["precondition_failed"],
    );
    assert_eq!(c1.get(b"rt/a").await.unwrap().expect("present").version, v3);
    let resp = send(
        "PUT",
        &url(&cluster, 1, "/v1/kv/rt/b"),
        &[("if-match", "*")],
        Some(b"x".to_vec()),
    )
    .await;
    assert_error(
        "PUT If-Match * on absent key",
        &resp,
        412,
        &["precondition_failed"],
    );
    assert_eq!(c1.get(b"rt/b").await.unwrap(), None);
    let resp = send(
        "PUT",
        &url(&cluster, 1, "/v1/kv/rt/b"),
        &[("if-none-match", "*")],
        Some(b"b1".to_vec()),
    )
    .await;
    assert_eq!(
        resp.status,
        201,
        "PUT If-None-Match * on absent key: {}",
        resp.text()
    );
    let resp = send(
        "PUT",
        &url(&cluster, 1, "/v1/kv/rt/b"),
        &[("if-match", "*")],
        Some(b"b2".to_vec()),
    )
    .await;
    assert_eq!(
        resp.status,
        200,
        "PUT If-Match * on existing key: {}",
        resp.text()
    );

    // The typed client's preconditions.
    let vb = c1.get(b"rt/b").await.unwrap().expect("present").version;
    let err = c1
        .put_if(b"rt/b", b"no", Precondition::IfMatch(vb + 1000))
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");
    let err = c1
        .put_if(b"rt/b", b"no", Precondition::IfAbsent)
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");
    let err = c1
        .put_if(b"rt/none", b"no", Precondition::IfExists)
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");
    let vb2 = c1
        .put_if(b"rt/b", b"b3", Precondition::IfMatch(vb))
        .await
        .unwrap();
    assert!(vb2 > vb);
    assert_eq!(
        c1.get(b"rt/b").await.unwrap().expect("present").value,
        b"b3"
    );

    // Delete, conditional and not.
    let wrong = format!("\"{}\"", v3 + 1000);
    let resp = send(
        "DELETE",
        &url(&cluster, 1, path),
        &[("if-match", &wrong)],
        None,
    )
    .await;
    assert_error(
        "DELETE If-Match wrong version",
        &resp,
        412,
        &["precondition_failed"],
    );
    let resp = send(
        "DELETE",
        &url(&cluster, 1, path),
        &[("if-none-match", "*")],
        None,
    )
    .await;
    assert_error(
        "DELETE If-None-Match * on existing key",
        &resp,
        412,
        &["precondition_failed"],
    );
    assert_eq!(c1.get(b"rt/a").await.unwrap().expect("present").version, v3);
    let current = format!("\"{v3}\"");
    let resp = send(
        "DELETE",
        &url(&cluster, 1, path),
        &[("if-match", &current)],
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "DELETE If-Match current: {}", resp.text());
    let deleted: api::DeleteResponse = serde_json::from_slice(&resp.body).expect("DeleteResponse");
    assert!(deleted.deleted);
    assert!(deleted.version > v3);
    let resp = send("GET", &url(&cluster, 1, path), &[], None).await;
    assert_error("GET deleted key", &resp, 404, &["key_not_found"]);
    assert_eq!(c1.get(b"rt/a").await.unwrap(), None);
    let resp = send("DELETE", &url(&cluster, 1, path), &[], None).await;
    assert_eq!(resp.status, 200, "DELETE absent key: {}", resp.text());
    assert_eq!(resp.json()["deleted"], serde_json::json!(false));
    let resp = send(
        "DELETE",
        &url(&cluster, 1, path),
        &[("if-match", "*")],
        None,
    )
    .await;
    assert_error(
        "DELETE If-Match * on absent key",
        &resp,
        412,
        &["precondition_failed"],
    );
    let resp = send(
        "DELETE",
        &url(&cluster, 1, path),
        &[("if-none-match", "*")],
        None,
    )
    .await;
    assert_eq!(
        resp.status,
        200,
        "DELETE If-None-Match * on absent key: {}",
        resp.text()
    );
    let resp = send("PUT", &url(&cluster, 1, path), &[], Some(b"again".to_vec())).await;
    assert_eq!(
        resp.status,
        201,
        "PUT after delete creates: {}",
        resp.text()
    );
    let gone = c1.delete(b"rt/b").await.unwrap();
    assert!(gone.deleted);
    assert!(!c1.delete(b"rt/b").await.unwrap().deleted);
    let err = c1
        .delete_if(b"rt/b", Precondition::IfExists)
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");

    // Empty values are values.
    let resp = send(
        "PUT",
        &url(&cluster, 1, "/v1/kv/rt/empty"),
        &[],
        Some(Vec::new()),
    )
    .await;
    assert_eq!(resp.status, 201, "PUT empty value: {}", resp.text());
    let got = c1
        .get(b"rt/empty")
        .await
        .unwrap()
        .expect("empty value is present");
    assert_eq!(got.value, b"");

    // Keys: slashes, every byte, unicode, URL metacharacters, dot segments. Each is
    // written on one node and read on every node.
    let all_bytes: Vec<u8> = (0..=255u8).collect();
    let keys: Vec<Vec<u8>> = vec![
        b"dir/sub/file".to_vec(),
        b"/leading/and/trailing/".to_vec(),
        b"double//slash".to_vec(),
        vec![0x00],
        vec![0xff],
        b"nul\x00in\xffside".to_vec(),
        all_bytes.clone(),
        "ключ/日本語/🦀".as_bytes().to_vec(),
        b"a b?c#d&e=f+g%h;i,j'k\"l".to_vec(),
        b"a/../b".to_vec(),
        b"./x".to_vec(),
        b"...".to_vec(),
    ];
    for (i, key) in keys.iter().enumerate() {
        let writer = cluster.client(1 + i % 3);
        let value = [b"value of ".as_slice(), key].concat();
        let version = writer
            .put(key, &value)
            .await
            .unwrap_or_else(|e| panic!("put {key:?}: {e}"));
        for node in cluster.ids() {
            let got = cluster
                .client(node)
                .get(key)
                .await
                .unwrap_or_else(|e| panic!("get {key:?} on node {node}: {e}"))
                .unwrap_or_else(|| panic!("{key:?} missing on node {node}"));
            assert_eq!(
                got,
                cairn_client::Got {
                    value: value.clone(),
                    version
                },
                "key {key:?} on node {node}"
            );
        }
    }
    // `/` and `%2F` name the same key; hex digits are case-insensitive.
    let resp = send(
        "GET",
        &url(&cluster, 2, "/v1/kv/dir%2Fsub%2ffile"),
        &[],
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "GET with %2F: {}", resp.text());
    assert_eq!(resp.body, b"value of dir/sub/file");
    let resp = send("GET", &url(&cluster, 3, "/v1/kv/%ff"), &[], None).await;
    assert_eq!(resp.status, 200, "GET %ff: {}", resp.text());
    assert_eq!(resp.body, b"value of \xff");
    // The scan sees binary keys exactly.
    let scanned = c1.scan_all(b"", Consistency::Linearizable).await.unwrap();
    for key in &keys {
        assert!(
            scanned.iter().any(|(k, _, _)| k == key),
            "scan lacks {key:?}"
        );
    }

    // Forwarding: writes on any node, linearizable reads on every other node.
    for i in 0..24u32 {
        let key = format!("fwd/{i}");
        let writer = 1 + (i as usize) % 3;
        let value = format!("{i} from node {writer}");
        cluster
            .client(writer)
            .put(key.as_bytes(), value.as_bytes())
            .await
            .unwrap();
        for reader in cluster.ids() {
            let got = cluster.client(reader).get(key.as_bytes()).await.unwrap();
            assert_eq!(
                got.map(|g| g.value),
                Some(value.clone().into_bytes()),
                "{key} written on node {writer}, read on node {reader}"
            );
        }
    }
    let shards: std::collections::BTreeSet<u32> = (0..24)
        .map(|i| shard_of(format!("fwd/{i}").as_bytes(), 8))
        .collect();
    assert!(
        shards.len() >= 6,
        "forwarding keys cover few shards: {shards:?}"
    );

    // Explicit consistency parameters and stale reads.
    let resp = send(
        "GET",
        &url(&cluster, 2, "/v1/kv/fwd/1?consistency=linearizable"),
        &[],
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    assert_eq!(resp.body, b"1 from node 2");
    let v = c1.put(b"stale/k", b"fresh").await.unwrap();
    for node in cluster.ids() {
        let client = cluster.client(node);
        eventually(
            &format!("stale read on node {node}"),
            Duration::from_secs(10),
            || {
                let client = client.clone();
                async move {
                    match client.get_with(b"stale/k", Consistency::Stale).await {
                        Ok(Some(got)) if got.value == b"fresh" && got.version == v => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await;
        let resp = send(
            "GET",
            &url(&cluster, node, "/v1/kv/stale/k?consistency=stale"),
            &[],
            None,
        )
        .await;
        assert_eq!((resp.status, resp.body.as_slice()), (200, &b"fresh"[..]));
        assert_eq!(resp.etag(), Some(v));
        let resp = send(
            "GET",
            &url(&cluster, node, "/v1/kv/stale/absent?consistency=stale"),
            &[],
            None,
        )
        .await;
        assert_error("stale GET of absent key", &resp, 404, &["key_not_found"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let c1 = cluster.client(1);
    let keys = same_shard_keys("batch/", 3, 8);
    let (k1, k2, k3) = (keys[0].as_bytes(), keys[1].as_bytes(), keys[2].as_bytes());

    // Plain and base64 forms, on another node than the shard's leader or not.
    let body = serde_json::json!({"ops": [
        {"op": "put", "key": keys[0], "value": "1"},
        {"op": "put", "key_b64": cairn_client::b64(k2), "value_b64": cairn_client::b64(b"\x00\xff")},
    ]});
    let resp = send(
        "POST",
        &url(&cluster, 2, "/v1/batch"),
        &[("content-type", "application/json")],
        Some(body.to_string().into_bytes()),
    )
    .await;
    assert_eq!(resp.status, 200, "batch: {}", resp.text());
    let version = resp.json()["version"].as_u64().expect("version");
    for (node, key, value) in [(1, k1, &b"1"[..]), (3, k2, &b"\x00\xff"[..])] {
        let got = cluster
            .client(node)
            .get(key)
            .await
            .unwrap()
            .expect("batch wrote");
        assert_eq!(
            (got.value.as_slice(), got.version),
            (value, version),
            "{key:?}"
        );
    }

    // Conditions that hold: if_version, if_absent, delete.
    let v = c1
        .batch(vec![
            api::BatchOp {
                if_version: Some(version),
                ..api::BatchOp::put(k1, b"1b")
            },
            api::BatchOp::delete(k2),
            api::BatchOp {
                if_absent: Some(true),
                ..api::BatchOp::put(k3, b"3")
            },
        ])
        .await
        .expect("conditional batch");
    assert!(v > version);
    assert_eq!(
        c1.get(k1).await.unwrap().map(|g| (g.value, g.version)),
        Some((b"1b".to_vec(), v))
    );
    assert_eq!(c1.get(k2).await.unwrap(), None);
    assert_eq!(
        c1.get(k3).await.unwrap().map(|g| g.value),
        Some(b"3".to_vec())
    );

    // A failing condition refuses the whole batch.
    let before = state(&c1).await;
    let attempts: Vec<(&str, Vec<api::BatchOp>)> = vec![
        (
            "stale if_version",
            vec![
                api::BatchOp::put(k2, b"x"),
                api::BatchOp {
                    if_version: Some(version),
                    ..api::BatchOp::put(k1, b"x")
                },
            ],
        ),
        (
            "if_absent on existing key",
            vec![
                api::BatchOp::delete(k1),
                api::BatchOp {
                    if_absent: Some(true),
                    ..api::BatchOp::put(k3, b"x")
                },
            ],
        ),
        (
            "if_version on absent key",
            vec![
                api::BatchOp::put(k1, b"x"),
                api::BatchOp {
                    if_version: Some(v),
                    ..api::BatchOp::delete(k2)
                },
            ],
        ),
    ];
    for (what, ops) in attempts {
        let body = serde_json::to_vec(&api::BatchRequest { ops }).unwrap();
        let resp = send(
            "POST",
            &url(&cluster, 3, "/v1/batch"),
            &[("content-type", "application/json")],
            Some(body),
        )
        .await;
        refused(&c1, &before, what, resp, 412, &["precondition_failed"]).await;
    }
    let err = c1
        .batch(vec![api::BatchOp {
            if_absent: Some(true),
            ..api::BatchOp::put(k1, b"x")
        }])
        .await
        .unwrap_err();
    assert!(err.is_precondition_failed(), "{err}");

    // Keys of different shards: one transaction. A failed condition on any shard's
    // key refuses the whole batch, on every shard.
    let letters: Vec<String> = (b'a'..=b'z').map(|c| format!("xs/{}", c as char)).collect();
    let shards: std::collections::BTreeSet<u32> =
        letters.iter().map(|k| shard_of(k.as_bytes(), 8)).collect();
    assert!(shards.len() > 1);
    let mut ops: Vec<api::BatchOp> = letters
        .iter()
        .map(|k| api::BatchOp::put(k.as_bytes(), b"v"))
        .collect();
    ops.push(api::BatchOp {
        if_absent: Some(false),
        ..api::BatchOp::put(b"xs/never-written", b"v")
    });
    let body = serde_json::to_vec(&api::BatchRequest { ops: ops.clone() }).unwrap();
    let before = state(&c1).await;
    let resp = send(
        "POST",
        &url(&cluster, 1, "/v1/batch"),
        &[("content-type", "application/json")],
        Some(body),
    )
    .await;
    refused(
        &c1,
        &before,
        "cross-shard batch with a failed condition",
        resp,
        412,
        &["precondition_failed"],
    )
    .await;
    for k in &letters {
        assert_eq!(
            c1.get(k.as_bytes()).await.unwrap(),
            None,
            "{k} written by a refused batch"
        );
    }
    ops.pop();
    let written = cluster
        .client(2)
        .batch_versions(ops)
        .await
        .expect("cross-shard batch");
    assert!(written.transaction.is_some(), "{written:?}");
    assert_eq!(written.versions.len(), letters.len());
    let mut per_shard = std::collections::BTreeMap::new();
    for (k, version) in letters.iter().zip(&written.versions) {
        let version = version.expect("resolved on every shard in time");
        let got = cluster
            .client(3)
            .get(k.as_bytes())
            .await
            .unwrap()
            .expect("written");
        assert_eq!(
            (got.value.as_slice(), got.version),
            (&b"v"[..], version),
            "{k}"
        );
        // One version per shard: the index of that shard's resolve.
        assert_eq!(
            *per_shard
                .entry(shard_of(k.as_bytes(), 8))
                .or_insert(version),
            version,
            "{k}"
        );
    }
    assert_eq!(per_shard.len(), shards.len());
    assert_eq!(
        written.version,
        written.versions.iter().flatten().copied().max().unwrap()
    );
    // Cross-shard conditions that hold, with the versions just returned.
    let ops: Vec<api::BatchOp> = letters
        .iter()
        .zip(&written.versions)
        .map(|(k, v)| api::BatchOp {
            if_version: *v,
            ..api::BatchOp::delete(k.as_bytes())
        })
        .collect();
    c1.batch(ops).await.expect("conditional cross-shard batch");
    for k in &letters {
        assert_eq!(c1.get(k.as_bytes()).await.unwrap(), None, "{k}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_paginate_across_shards() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let c1 = cluster.client(1);

    let mut expected: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
    for i in 0..250 {
        let key = format!("scan/{i:04}");
        let value = format!("v{i}");
        cluster
            .client(1 + i % 3)
            .put(key.as_bytes(), value.as_bytes())
            .await
            .unwrap();
        expected.insert(key.into_bytes(), value.into_bytes());
    }
    let shards: std::collections::BTreeSet<u32> = expected.keys().map(|k| shard_of(k, 8)).collect();
    assert_eq!(shards.len(), 8, "250 keys must cover every shard");
    // Neighbours that the prefix must exclude.
    for key in ["scan", "scan0", "scam/x", "scao", "sca"] {
        c1.put(key.as_bytes(), b"outside").await.unwrap();
    }

    // Pages of 7, in utf8 form, following next_start_after verbatim.
    let mut collected: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
    let mut cursor: Option<String> = None;
    let mut pages = 0;
    loop {
        let mut path = "/v1/kv?prefix=scan/&limit=7".to_string();
        if let Some(c) = &cursor {
            path.push_str(&format!("&start_after={c}"));
        }
        let resp = send("GET", &url(&cluster, 2, &path), &[], None).await;
        assert_eq!(resp.status, 200, "GET {path}: {}", resp.text());
        let page: api::ScanResponse = serde_json::from_slice(&resp.body).expect("ScanResponse");
        assert!(page.items.len() <= 7, "page of {} items", page.items.len());
        for item in &page.items {
            assert!(
                item.key.is_some() && item.key_b64.is_none(),
                "utf8 key in {item:?}"
            );
            collected.push((item.key_bytes().unwrap(), item.value_bytes().unwrap()));
        }
        pages += 1;
        assert!(pages <= 40, "too many pages");
        match page.next_start_after {
            Some(next) => {
                let last = page.items.last().expect("a page with a cursor has items");
                let decoded: Vec<u8> = percent_encoding::percent_decode_str(&next).collect();
                assert_eq!(decoded, last.key_bytes().unwrap(), "cursor is the last key");
                cursor = Some(next);
            }
            None => break,
        }
    }
    let want: Vec<(Vec<u8>, Vec<u8>)> = expected.clone().into_iter().collect();
    assert_eq!(collected.len(), 250);
    assert!(
        collected == want,
        "paged scan is not the 250 keys in byte order"
    );
    assert!(pages >= 36, "{pages} pages of 7 for 250 keys");

    // The typed client (encoding=base64) agrees, on every node, stale eventually.
    for node in cluster.ids() {
        let all = cluster
            .client(node)
            .scan_all(b"scan/", Consistency::Linearizable)
            .await
            .unwrap();
        let got: Vec<(Vec<u8>, Vec<u8>)> = all.into_iter().map(|(k, v, _)| (k, v)).collect();
        assert!(got == want, "scan_all on node {node}");
        let client = cluster.client(node);
        let want = want.clone();
        eventually(
            &format!("stale scan on node {node}"),
            Duration::from_secs(10),
            || {
                let client = client.clone();
                let want = want.clone();
                async move {
                    let all = client
                        .scan_all(b"scan/", Consistency::Stale)
                        .await
                        .map_err(|e| e.to_string())?;
                    let got: Vec<(Vec<u8>, Vec<u8>)> =
                        all.into_iter().map(|(k, v, _)| (k, v)).collect();
                    if got == want {
                        Ok(())
                    } else {
                        Err(format!("{} keys", got.len()))
                    }
                }
            },
        )
        .await;
    }

    // Default limit, explicit large limit, start_after (present or not), no match.
    let resp = send("GET", &url(&cluster, 3, "/v1/kv?prefix=scan%2F"), &[], None).await;
    let page: api::ScanResponse = serde_json::from_slice(&resp.body).expect("ScanResponse");
    assert_eq!(page.items.len(), 100, "default limit");
    assert_eq!(page.items[99].key.as_deref(), Some("scan/0099"));
    let next = page.next_start_after.expect("more follow");
    assert_eq!(
        percent_encoding::percent_decode_str(&next).collect::<Vec<u8>>(),
        b"scan/0099"
    );
    let resp = send(
        "GET",
        &url(&cluster, 3, "/v1/kv?prefix=scan/&limit=1000"),
        &[],
        None,
    )
    .await;
    let page: api::ScanResponse = serde_json::from_slice(&resp.body).expect("ScanResponse");
    assert_eq!(page.items.len(), 250);
    assert_eq!(page.next_start_after, None, "nothing follows");
    for (path, first) in [
        (
            "/v1/kv?prefix=scan/&start_after=scan/0199&limit=3",
            "scan/0200",
        ),
        (
            "/v1/kv?prefix=scan/&start_after=scan%2F0199x&limit=3",
            "scan/0200",
        ),
        ("/v1/kv?prefix=scan/&start_after=a&limit=3", "scan/0000"),
        ("/v1/kv?start_after=scan/0249&limit=3", "scan0"),
    ] {
        let resp = send("GET", &url(&cluster, 1, path), &[], None).await;
        let page: api::ScanResponse = serde_json::from_slice(&resp.body).expect("ScanResponse");
        assert_eq!(
            page.items.first().and_then(|i| i.key.as_deref()),
            Some(first),
            "GET {path}"
        );
    }
    let resp = send(
        "GET",
        &url(&cluster, 1, "/v1/kv?prefix=nothing/here"),
        &[],
        None,
    )
    .await;
    assert_eq!(resp.status, 200);
    let page: api::ScanResponse = serde_json::from_slice(&resp.body).expect("ScanResponse");
    assert!(
        page.items.is_empty() && page.next_start_after.is_none(),
        "{page:?}"
    );
    let resp = send(
        "GET",
        &url(&cluster, 1, "/v1/kv?prefix=scan/&start_after=scan/0249"),
        &[],
        None,
    )
    .await;
    let page: api::ScanResponse = serde_json::from_slice(&resp.body).expect("ScanResponse");
    assert!(
        page.items.is_empty() && page.next_start_after.is_none(),
        "{page:?}"
    );

    // No prefix (omitted or empty): every key, in byte order.
    for path in ["/v1/kv?limit=1000", "/v1/kv?prefix=&limit=1000"] {
        let resp = send("GET", &url(&cluster, 2, path), &[], None).await;
        let page: api::ScanResponse = serde_json::from_slice(&resp.body).expect("ScanResponse");
        let keys: Vec<Vec<u8>> = page.items.iter().map(|i| i.key_bytes().unwrap()).collect();
        assert_eq!(keys.len(), 255, "GET {path}");
        assert!(
            keys.windows(2).all(|w| w[0] < w[1]),
            "GET {path}: not in byte order"
        );
    }

    // Binary keys and values: base64 fields where needed, or everywhere on request.
    c1.put(b"bin/\x00\xff", b"\xfe\x00").await.unwrap();
    let v_ok = c1.put(b"bin/ok", b"text").await.unwrap();
    let resp = send(
        "GET",
        &url(&cluster, 1, "/v1/kv?prefix=bin/&encoding=utf8"),
        &[],
        None,
    )
    .await;
    let page: api::ScanResponse = serde_json::from_slice(&resp.body).expect("ScanResponse");
    assert_eq!(page.items.len(), 2);
    let bin = &page.items[0];
    assert_eq!(
        (bin.key.as_ref(), bin.key_b64.as_deref()),
        (None, Some(cairn_client::b64(b"bin/\x00\xff").as_str()))
    );
    assert_eq!(
        (bin.value.as_ref(), bin.value_b64.as_deref()),
        (None, Some(cairn_client::b64(b"\xfe\x00").as_str()))
    );
    let ok = &page.items[1];
    assert_eq!(
        (ok.key.as_deref(), ok.value.as_deref()),
        (Some("bin/ok"), Some("text"))
    );
    assert_eq!(ok.version, v_ok);
    let resp = send(
        "GET",
        &url(&cluster, 1, "/v1/kv?prefix=bin%2F&encoding=base64"),
        &[],
        None,
    )
    .await;
    let page: api::ScanResponse = serde_json::from_slice(&resp.body).expect("ScanResponse");
    assert_eq!(page.items.len(), 2);
    for item in &page.items {
        assert!(
            item.key.is_none() && item.value.is_none(),
            "base64 only: {item:?}"
        );
    }
    assert_eq!(
        page.items[1].key_b64.as_deref(),
        Some(cairn_client::b64(b"bin/ok").as_str())
    );
    assert_eq!(
        page.items[1].value_b64.as_deref(),
        Some(cairn_client::b64(b"text").as_str())
    );
    let resp = send(
        "GET",
        &url(&cluster, 1, "/v1/kv?prefix=bin/%00&consistency=stale"),
        &[],
        None,
    )
    .await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let page: api::ScanResponse = serde_json::from_slice(&resp.body).expect("ScanResponse");
    assert_eq!(page.items.len(), 1, "binary prefix");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_and_changes_nothing() {
    let cluster = Cluster::start(ClusterOptions::default()).await;
    let c1 = cluster.client(1);

    // Limits hold exactly at the boundary.
    let max_key = vec![b'k'; 4096];
    c1.put(&max_key, b"max key")
        .await
        .expect("a 4096-byte key is allowed");
    let wide_key = vec![0xffu8; 2000]; // 6000 bytes encoded, 2000 decoded
    c1.put(&wide_key, b"wide")
        .await
        .expect("the limit is on decoded bytes");
    c1.put(b"big/ok", &vec![7u8; MIB])
        .await
        .expect("a 1 MiB value is allowed");
    let keys = same_shard_keys("keep/", 2, 8);
    for (i, key) in keys.iter().enumerate() {
        c1.put(key.as_bytes(), format!("kept {i}").as_bytes())
            .await
            .unwrap();
    }
    let keep = keys[0].clone();
    let keep_path = key_path(keep.as_bytes());
    let before = state(&c1).await;
    assert_eq!(before.len(), 5);

    // Every refusal, as a table: each must answer its status and code, and change
    // nothing in the cluster.
    let mut table: Vec<Refusal> = Vec::new();
    for method in ["PUT", "GET", "DELETE"] {
        let body = (method == "PUT").then(|| b"v".to_vec());
        table.push(Refusal::http(method, "/v1/kv/", body, 400, &["empty_key"]));
    }
    // Malformed percent-encoding, byte for byte on the wire.
    for target in [
        "/v1/kv/a%zz",
        "/v1/kv/keep%4",
        "/v1/kv/abc%",
        "/v1/kv/%g0/x",
        "/v1/kv/%",
    ] {
        for method in ["PUT", "GET", "DELETE"] {
            let body = if method == "PUT" {
                b"v".to_vec()
            } else {
                Vec::new()
            };
            table.push(Refusal::raw(
                method,
                target,
                body,
                400,
                &["bad_key_encoding"],
            ));
        }
    }
    // Oversized key, value and body (the value through another node too).
    let long_key = key_path(&vec![b'k'; 4097]);
    for method in ["PUT", "GET", "DELETE"] {
        let body = (method == "PUT").then(|| b"v".to_vec());
        table.push(
            Refusal::http(method, &long_key, body, 400, &["key_too_large"])
                .named(&format!("{method} 4097-byte key")),
        );
    }
    let value = |bytes: usize| Some(vec![1u8; bytes]);
    table.push(
        Refusal::http("PUT", &keep_path, value(MIB + 1), 413, &["value_too_large"])
            .on(2)
            .named("PUT value of 1 MiB + 1"),
    );
    table.push(
        Refusal::http(
            "PUT",
            "/v1/kv/new/too/big",
            value(MIB + 1),
            413,
            &["value_too_large"],
        )
        .named("PUT new key with value of 1 MiB + 1"),
    );
    table.push(
        Refusal::http(
            "PUT",
            &keep_path,
            value(4 * MIB + 1),
            413,
            &["request_too_large"],
        )
        .named("PUT body of 4 MiB + 1"),
    );

    // Batches.
    let k = keep.as_str();
    let cases: Vec<(&str, String, u16, &'static [&'static str])> = vec![
        ("truncated JSON", r#"{"ops":["#.into(), 400, &["bad_json"]),
        ("not JSON", "put a=1".into(), 400, &["bad_json"]),
        (
            "JSON of the wrong shape",
            r#"[1,2]"#.into(),
            400,
            &["bad_json"],
        ),
        ("missing ops", "{}".into(), 400, &["bad_json"]),
        (
            "unknown top-level field",
            format!(r#"{{"ops":[{{"op":"put","key":"{k}","value":"x"}}],"atomic":true}}"#),
            400,
            &["bad_json"],
        ),
        (
            "unknown op field",
            format!(r#"{{"ops":[{{"op":"put","key":"{k}","value":"x","ttl":5}}]}}"#),
            400,
            &["bad_json"],
        ),
        (
            "unknown op kind",
            format!(r#"{{"ops":[{{"op":"append","key":"{k}","value":"x"}}]}}"#),
            400,
            &["bad_json"],
        ),
        ("empty ops", r#"{"ops":[]}"#.into(), 400, &["empty_batch"]),
        (
            "put without value",
            format!(r#"{{"ops":[{{"op":"put","key":"{k}"}}]}}"#),
            400,
            &["bad_batch"],
        ),
        (
            "put without key",
            r#"{"ops":[{"op":"put","value":"x"}]}"#.into(),
            400,
            &["bad_batch"],
        ),
        (
            "delete without key",
            format!(r#"{{"ops":[{{"op":"put","key":"{k}","value":"x"}},{{"op":"delete"}}]}}"#),
            400,
            &["bad_batch"],
        ),
        (
            "empty key in batch",
            r#"{"ops":[{"op":"put","key":"","value":"x"}]}"#.into(),
            400,
            &["empty_key", "bad_batch"],
        ),
        (
            "key too large in batch",
            format!(
                r#"{{"ops":[{{"op":"put","key":"{}","value":"x"}}]}}"#,
                "k".repeat(4097)
            ),
            400,
            &["key_too_large"],
        ),
        (
            "value too large in batch",
            format!(
                r#"{{"ops":[{{"op":"put","key":"{k}","value":"{}"}}]}}"#,
                "v".repeat(MIB + 1)
            ),
            413,
            &["value_too_large"],
        ),
        (
            "batch body over 4 MiB",
            format!(
                r#"{{"ops":[{{"op":"put","key":"{k}","value":"{}"}}]}}"#,
                "v".repeat(4 * MIB)
            ),
            413,
            &["request_too_large"],
        ),
        (
            "failed condition in a cross-shard batch",
            serde_json::to_string(&api::BatchRequest {
                ops: (b'a'..=b'z')
                    .map(|c| api::BatchOp {
                        if_version: Some(1),
                        ..api::BatchOp::put(&[c], b"x")
                    })
                    .collect(),
            })
            .unwrap(),
            412,
            &["precondition_failed"],
        ),
        (
            "failed condition in batch",
            format!(
                r#"{{"ops":[{{"op":"put","key":"{}","value":"x"}},{{"op":"put","key":"{k}","value":"x","if_absent":true}}]}}"#,
                keys[1]
            ),
            412,
            &["precondition_failed"],
        ),
    ];
    for (what, body, status, codes) in cases {
        table.push(
            Refusal::http("POST", "/v1/batch", Some(body.into_bytes()), status, codes)
                .json()
                .named(&format!("POST /v1/batch with {what}")),
        );
    }

    // Scan and read parameters.
    for (query, codes) in [
        ("limit=0", &["bad_limit"][..]),
        ("limit=1001", &["bad_limit"]),
        ("limit=-1", &["bad_limit", "bad_query"]),
        ("limit=ten", &["bad_limit", "bad_query"]),
        ("encoding=hex", &["bad_query"]),
        ("consistency=eventual", &["bad_query"]),
        ("prefix=%zz", &["bad_key_encoding", "bad_query"]),
        ("start_after=%4", &["bad_key_encoding", "bad_query"]),
    ] {
        table.push(Refusal::raw(
            "GET",
            &format!("/v1/kv?{query}"),
            Vec::new(),
            400,
            codes,
        ));
    }
    table.push(
        Refusal::http(
            "GET",
            &format!("{keep_path}?consistency=bogus"),
            None,
            400,
            &["bad_query"],
        )
        .named("GET key with consistency=bogus"),
    );

    // Unknown routes and wrong methods.
    for (method, path) in [
        ("GET", "/v2/kv/a"),
        ("GET", "/nope"),
        ("POST", "/v1/nope"),
        ("GET", "/v1"),
        ("PUT", "/v1/keys/a"),
    ] {
        table.push(Refusal::http(
            method,
            path,
            Some(b"x".to_vec()),
            404,
            &["not_found"],
        ));
    }
    for (method, path) in [
        ("POST", keep_path.as_str()),
        ("PATCH", keep_path.as_str()),
        ("GET", "/v1/batch"),
        ("PUT", "/v1/batch"),
        ("DELETE", "/v1/cluster"),
        ("POST", "/health"),
        ("PUT", "/ready"),
        ("PUT", "/v1/kv"),
        ("DELETE", "/v1/kv"),
    ] {
        let body = Some(b"x".to_vec());
        table.push(Refusal::http(
            method,
            path,
            body,
            405,
            &["method_not_allowed"],
        ));
    }

    assert!(table.len() > 60, "the table lost rows: {}", table.len());
    for refusal in &table {
        let resp = refusal.send(&cluster).await;
        refused(
            &c1,
            &before,
            &refusal.what,
            resp,
            refusal.status,
            refusal.codes,
        )
        .await;
    }

    // The typed client surfaces the same errors.
    let err = c1.put(&vec![b'k'; 4097], b"v").await.unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(400), Some("key_too_large")),
        "{err}"
    );
    let err = c1
        .put(keep.as_bytes(), &vec![0u8; MIB + 1])
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (Some(413), Some("value_too_large")),
        "{err}"
    );
    assert_eq!(state(&c1).await, before);
}

/// Issue 17: what a new user tripping over the API found, each now refused or
/// answered as documented, and every refusal changing nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_new_user_findings() {
    // No automatic snapshots: the test decides which snapshots exist.
    let cluster = Cluster::start(ClusterOptions {
        extra_args: vec!["--snapshot-interval-ms".into(), "0".into()],
        ..Default::default()
    })
    .await;
    let client = cluster.client(1);
    let node = |path: &str| url(&cluster, 1, path);
    client.put(b"app/a", b"1").await.unwrap();
    let base = client.create_snapshot(Some("base")).await.unwrap();
    client.put(b"unrelated/important", b"keepme").await.unwrap();
    client.put(b"app/b", b"2").await.unwrap();

    // A revert without a prefix (missing or null) is refused, not "every key".
    let reverts_before = send("GET", &node("/v1/reverts"), &[], None).await.json();
    let before = state(&client).await;
    for body in [
        r#"{"snapshot":"base"}"#,
        r#"{"snapshot":"base","prefix":null}"#,
        r#"{"snapshot":"base","prefix":""}"#,
        r#"{"snapshot":"base","prefix":"app/","all":true}"#,
    ] {
        let resp = send("POST", &node("/v1/revert"), &[], Some(body.into())).await;
        refused(&client, &before, body, resp, 400, &["bad_revert"]).await;
    }
    // A dry run says what would change and changes nothing, not even the audit log.
    let dry = send(
        "POST",
        &node("/v1/revert"),
        &[],
        Some(r#"{"snapshot":"base","prefix":"","all":true,"dry_run":true}"#.into()),
    )
    .await;
    assert_eq!(dry.status, 200, "{}", dry.text());
    let dry: api::RevertResponse = serde_json::from_slice(&dry.body).unwrap();
    assert!(dry.dry_run);
    assert_eq!((dry.restored, dry.deleted, dry.snapshot), (0, 2, base.id));
    assert_eq!(state(&client).await, before, "a dry run changed the store");
    assert_eq!(
        send("GET", &node("/v1/reverts"), &[], None).await.json(),
        reverts_before,
        "a dry run was recorded"
    );
    // The deliberate form reverts everything; the snapshot may be named by its id as
    // a JSON number (the form responses print).
    let body = format!(r#"{{"snapshot":{},"prefix":"","all":true}}"#, base.id);
    let resp = send("POST", &node("/v1/revert"), &[], Some(body.into_bytes())).await;
    assert_eq!(resp.status, 200, "{}", resp.text());
    let done: api::RevertResponse = serde_json::from_slice(&resp.body).unwrap();
    assert!(!done.dry_run && done.deleted == 2);
    let after: Vec<Vec<u8>> = state(&client)
        .await
        .into_iter()
        .map(|(k, _, _)| k)
        .collect();
    assert_eq!(after, vec![b"app/a".to_vec()]);

    // `as_of` later than the node's clock names no cut yet: refused, naming the newest
    // readable time. Any RFC 3339 offset is taken; a time without one is refused.
    let before = state(&client).await;
    for target in [
        "/v1/kv/app/a?as_of=2099-01-01T00:00:00Z",
        "/v1/kv?prefix=app/&as_of=2099-01-01T00:00:00%2B01:00",
    ] {
        let resp = send("GET", &node(target), &[], None).await;
        assert_error(target, &resp, 400, &["as_of_in_future"]);
        let message = resp.json()["error"]["message"].as_str().unwrap().to_owned();
        assert!(
            message.contains(&base.time[..19]),
            "{target}: the message names the newest readable time: {message}"
        );
    }
    let in_an_hour = chrono::Utc::now() + chrono::Duration::hours(1);
    let now_elsewhere = chrono::Utc::now()
        .with_timezone(&chrono::FixedOffset::east_opt(5 * 3600 + 1800).unwrap())
        .to_rfc3339();
    let target = format!(
        "/v1/kv/app/a?as_of={}",
        cairn_client::encode_query(in_an_hour.to_rfc3339().as_bytes())
    );
    assert_error(
        &target,
        &send("GET", &node(&target), &[], None).await,
        400,
        &["as_of_in_future"],
    );
    let target = format!(
        "/v1/kv/app/a?as_of={}",
        cairn_client::encode_query(now_elsewhere.as_bytes())
    );
    let resp = send("GET", &node(&target), &[], None).await;
    assert_eq!(resp.status, 200, "{target}: {}", resp.text());
    assert_eq!(resp.header("cairn-snapshot"), Some(base.id.to_string()));
    assert_eq!(resp.body, b"1");
    let resp = send(
        "GET",
        &node("/v1/kv/app/a?as_of=2026-01-01T00:00:00"),
        &[],
        None,
    )
    .await;
    assert_error("as_of without an offset", &resp, 400, &["bad_query"]);
    assert_eq!(state(&client).await, before);

    // A batch naming one key twice is refused (two creates could both pass).
    let before = state(&client).await;
    for ops in [
        r#"[{"op":"put","key":"dup","value":"1","if_absent":true},{"op":"put","key":"dup","value":"2","if_absent":true}]"#,
        r#"[{"op":"put","key":"x","value":"1"},{"op":"delete","key_b64":"eA=="}]"#,
    ] {
        let body = format!(r#"{{"ops":{ops}}}"#);
        let resp = send("POST", &node("/v1/batch"), &[], Some(body.into_bytes())).await;
        refused(&client, &before, ops, resp, 400, &["bad_batch"]).await;
    }

    // If-Match takes a list of ETags and compares strongly; GET answers 304 to
    // If-None-Match (RFC 9110).
    let v1 = client.put(b"etag", b"one").await.unwrap();
    let path = node("/v1/kv/etag");
    let list = format!(r#""{}", "{}""#, v1 + 1000, v1);
    let resp = send("PUT", &path, &[("if-match", &list)], Some(b"two".to_vec())).await;
    assert_eq!(resp.status, 200, "If-Match with a list: {}", resp.text());
    let v2 = resp.etag().unwrap();
    let before = state(&client).await;
    let weak = format!(r#"W/"{v2}""#);
    let resp = send(
        "PUT",
        &path,
        &[("if-match", &weak)],
        Some(b"three".to_vec()),
    )
    .await;
    refused(
        &client,
        &before,
        "a weak ETag in If-Match",
        resp,
        412,
        &["precondition_failed"],
    )
    .await;
    let stale = format!(r#""{v1}", "{}""#, v2 + 1000);
    let resp = send("DELETE", &path, &[("if-match", &stale)], None).await;
    refused(
        &client,
        &before,
        "If-Match with old ETags",
        resp,
        412,
        &["precondition_failed"],
    )
    .await;
    let resp = send(
        "PUT",
        &path,
        &[("if-match", "not-quoted")],
        Some(b"x".to_vec()),
    )
    .await;
    refused(
        &client,
        &before,
        "a malformed If-Match",
        resp,
        400,
        &["bad_header"],
    )
    .await;
    for unless in [
        format!(r#""{v2}""#),
        weak.clone(),
        format!(r#""1", W/"{v2}""#),
        "*".into(),
    ] {
        let resp = send("GET", &path, &[("if-none-match", &unless)], None).await;
        assert_eq!(resp.status, 304, "If-None-Match {unless}: {}", resp.text());
        assert_eq!(resp.etag(), Some(v2));
        assert!(resp.body.is_empty());
    }
    let resp = send(
        "GET",
        &path,
        &[("if-none-match", &format!(r#""{v1}""#))],
        None,
    )
    .await;
    assert_eq!((resp.status, resp.body.as_slice()), (200, &b"two"[..]));
    let resp = send("GET", &path, &[("if-match", &format!(r#""{v1}""#))], None).await;
    assert_error(
        "GET If-Match of an old version",
        &resp,
        412,
        &["precondition_failed"],
    );
    let resp = send("GET", &path, &[("if-match", &format!(r#""{v2}""#))], None).await;
    assert_eq!(resp.status, 200);

    // The CLI takes a bare host:port endpoint.
    let output = std::process::Command::new(harness::cairn_bin())
        .args([
            "get",
            "--endpoint",
            &cluster.http_addr(2).to_string(),
            "etag",
        ])
        .env_remove("CAIRN_ENDPOINT")
        .output()
        .expect("run cairn get");
    assert!(
        output.status.success(),
        "cairn get --endpoint host:port: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("two"));
}
