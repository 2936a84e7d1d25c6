//! What the API fuzzers found, checked end to end against a real `cairn server` over
//! HTTP (docs/FUZZING.md). The `http_api` fuzz target finds these in process; this
//! proves the answer is the same through hyper on a socket, where schemathesis
//! (`scripts/api-fuzz.sh`) sees it.

#[path = "harness/mod.rs"]
mod harness;

use harness::{Cluster, ClusterOptions};

struct Answer {
    status: u16,
    content_type: String,
    body: Vec<u8>,
}

impl Answer {
    fn code(&self) -> Option<String> {
        let json: serde_json::Value = serde_json::from_slice(&self.body).ok()?;
        json["error"]["code"].as_str().map(str::to_owned)
    }
}

async fn send(method: reqwest::Method, url: &str) -> Answer {
    let response = reqwest::Client::new()
        .request(method.clone(), url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = response.bytes().await.expect("body").to_vec();
    Answer {
        status,
        content_type,
        body,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_ids_are_decoded_like_keys_and_refused_in_json() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        shards: 2,
        extra_args: vec!["--snapshot-interval-ms".into(), "0".into()],
        ..ClusterOptions::default()
    })
    .await;
    let base = format!("http://{}", cluster.http_addr(1));
    let named = cluster
        .client(1)
        .create_snapshot(Some("a b/c"))
        .await
        .expect("create a snapshot");

    // Found by `http_api` (fuzz/regressions/http_api/snapshot-diff-path-not-utf8): a
    // non-UTF-8 id was axum's plain-text 400. Malformed escapes were read leniently.
    use reqwest::Method;
    for (method, path) in [
        (Method::GET, "/v1/snapshots/%CF/diff/%CD%E9"),
        (Method::GET, "/v1/snapshots/1/diff/%FF"),
        (Method::GET, "/v1/snapshots/%FF"),
        (Method::DELETE, "/v1/snapshots/%FF"),
        (Method::GET, "/v1/snapshots/a%zz"),
        (Method::GET, "/v1/backups/%C3%28"),
    ] {
        let got = send(method.clone(), &format!("{base}{path}")).await;
        assert_eq!(
            (got.status, got.code().as_deref()),
            (400, Some("bad_path")),
            "{method} {path}: {} {}",
            got.content_type,
            String::from_utf8_lossy(&got.body)
        );
        assert!(got.content_type.starts_with("application/json"));
    }

    // Well-formed escapes still name what they spell.
    let got = send(Method::GET, &format!("{base}/v1/snapshots/a%20b%2Fc")).await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));
    let shown: cairn_client::api::SnapshotInfo = serde_json::from_slice(&got.body).expect("JSON");
    assert_eq!(shown.id, named.id);
    let got = send(
        Method::GET,
        &format!("{base}/v1/snapshots/{}/diff/a%20b%2Fc", named.id),
    )
    .await;
    assert_eq!(got.status, 200, "{}", String::from_utf8_lossy(&got.body));

    // The served document is the checked-in one.
    let got = send(Method::GET, &format!("{base}/v1/openapi.json")).await;
    assert_eq!(got.status, 200);
    assert!(got.content_type.starts_with("application/json"));
    assert_eq!(got.body, include_bytes!("../docs/openapi.json"));
}
