//! Security end to end against real `cairn server` processes: authentication and
//! roles (`--root-token-file`: every route of the OpenAPI document is tried without a
//! token and with each role's token, tokens are revoked, no secret reaches a log),
//! JSON-only POSTs, and TLS (HTTPS only, peers under mutual TLS).

#[path = "harness/mod.rs"]
mod harness;

use std::time::Duration;

use cairn_client::api::Role;
use cairn_client::Client;
use harness::{eventually, Cluster, ClusterOptions};
use reqwest::Method;

/// A root token made by `cairn token root`, in a file of a temporary directory.
fn root_token() -> (String, std::path::PathBuf, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("root.token");
    let output = std::process::Command::new(harness::cairn_bin())
        .args(["token", "root"])
        .arg(&path)
        .output()
        .expect("run `cairn token root`");
    assert!(output.status.success(), "{output:?}");
    let root = std::fs::read_to_string(&path).unwrap().trim().to_owned();
    (root, path, dir)
}

/// A cluster whose nodes all hold the root token `root`.
async fn secured(nodes: usize) -> (Cluster, String, tempfile::TempDir) {
    secured_with(nodes, false).await
}

/// [`secured`], with TLS on or off.
async fn secured_with(nodes: usize, tls: bool) -> (Cluster, String, tempfile::TempDir) {
    let (root, path, dir) = root_token();
    let cluster = Cluster::start(ClusterOptions {
        nodes,
        shards: 2,
        tls,
        extra_args: vec![
            "--root-token-file".into(),
            path.display().to_string(),
            "--snapshot-interval-ms".into(),
            "0".into(),
        ],
        ..ClusterOptions::default()
    })
    .await;
    (cluster, root, dir)
}

struct Answer {
    status: u16,
    code: Option<String>,
    challenge: Option<String>,
}

/// One request as a client would send it; a POST says it is JSON, with a body that
/// is not (so no handler that is reached changes anything).
async fn send(method: &Method, url: &str, token: Option<&str>) -> Answer {
    let mut request = reqwest::Client::new().request(method.clone(), url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if *method == Method::POST {
        request = request
            .header("content-type", "application/json")
            .body("not json");
    }
    let response = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = response.status().as_u16();
    let challenge = response
        .headers()
        .get("www-authenticate")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    Answer {
        status,
        code: body["error"]["code"].as_str().map(str::to_owned),
        challenge,
    }
}

/// Every operation of the OpenAPI document: method, a concrete path whose parameters
/// name nothing that exists (so an allowed admin call is refused by its handler, not
/// carried out), and the role it needs (`None`: open).
fn operations(doc: &serde_json::Value) -> Vec<(Method, String, Option<Role>)> {
    let mut all = Vec::new();
    for (path, ops) in doc["paths"].as_object().expect("paths") {
        let concrete = path
            .replace("{key}", "auth-test-key")
            .replace("{id}", "999")
            .replace("{a}", "998")
            .replace("{b}", "999");
        for (method, op) in ops.as_object().expect("operations") {
            if method == "parameters" {
                continue;
            }
            let role = op["x-cairn-role"]
                .as_str()
                .map(|r| r.parse().expect("a role"));
            let open = op["security"].as_array().is_some_and(|s| s.is_empty());
            assert!(
                role.is_some() != open,
                "{method} {path}: an operation is open or names its role, not both or neither"
            );
            let method: Method = method.to_uppercase().parse().expect("a method");
            all.push((method, concrete.clone(), role));
        }
    }
    all
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_needs_its_role_and_a_revoked_token_stops_working() {
    let (cluster, root, _root_dir) = secured(3).await;
    let base = format!("http://{}", cluster.http_addr(1));
    let admin = Client::with_token(&base, &root).unwrap();

    // The document is open; everything in it is tried.
    let doc: serde_json::Value = reqwest::get(format!("{base}/v1/openapi.json"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let operations = operations(&doc);
    assert!(operations.len() > 25, "{} operations", operations.len());

    let mut tokens = Vec::new();
    for role in [Role::Read, Role::Write, Role::Admin] {
        let created = admin
            .create_token(&format!("{role}-app"), role)
            .await
            .unwrap();
        assert_eq!(created.info.role, role);
        assert_eq!(created.info.created_by, "root");
        tokens.push((role, created.token));
    }
    let strangers = [
        None,
        Some("cairn.0123456789abcdef.".to_owned() + &"0".repeat(64)),
        Some(format!("{}x", tokens[2].1)),
        Some("not-a-token".to_owned()),
    ];

    for (method, path, needs) in &operations {
        let url = format!("{base}{path}");
        for stranger in &strangers {
            let got = send(method, &url, stranger.as_deref()).await;
            match needs {
                None => assert!(
                    ![401, 403].contains(&got.status),
                    "{method} {path} is open, but answered {}",
                    got.status
                ),
                Some(_) => {
                    assert_eq!(
                        (got.status, got.code.as_deref()),
                        (401, Some("unauthenticated")),
                        "{method} {path} with {stranger:?}"
                    );
                    assert_eq!(got.challenge.as_deref(), Some("Bearer"));
                }
            }
        }
        let Some(needs) = needs else { continue };
        for (role, token) in tokens
            .iter()
            .map(|(r, t)| (*r, t.as_str()))
            .chain([(Role::Admin, root.as_str())])
        {
            let got = send(method, &url, Some(token)).await;
            if role < *needs {
                assert_eq!(
                    (got.status, got.code.as_deref()),
                    (403, Some("forbidden")),
                    "{method} {path} with a {role} token"
                );
            } else {
                assert!(
                    ![401, 403, 415].contains(&got.status),
                    "{method} {path} with a {role} token answered {} {:?}",
                    got.status,
                    got.code
                );
            }
        }
    }

    // A write token writes and reads; a read token only reads; on any node.
    let writer =
        Client::with_token(format!("http://{}", cluster.http_addr(2)), &tokens[1].1).unwrap();
    let reader =
        Client::with_token(format!("http://{}", cluster.http_addr(3)), &tokens[0].1).unwrap();
    writer
        .put(b"greeting", b"hello")
        .await
        .expect("a write token writes");
    assert_eq!(
        reader.get(b"greeting").await.unwrap().map(|g| g.value),
        Some(b"hello".to_vec())
    );
    let refused = reader.put(b"greeting", b"bye").await.unwrap_err();
    assert_eq!(refused.status(), Some(403));
    assert_eq!(
        writer.get(b"greeting").await.unwrap().map(|g| g.value),
        Some(b"hello".to_vec()),
        "a refused write changed nothing"
    );

    // Listed without secrets.
    let listed = admin.tokens().await.unwrap();
    assert_eq!(listed.len(), 3);
    let shown = serde_json::to_string(&listed).unwrap();
    for (_, token) in &tokens {
        let secret = token.rsplit('.').next().unwrap();
        assert!(!shown.contains(secret), "a listed token shows its secret");
    }

    // Revoked: refused on every node within the cache's second (give it a few).
    let writer_id = listed
        .iter()
        .find(|t| t.role == Role::Write)
        .unwrap()
        .id
        .clone();
    admin.revoke_token(&writer_id).await.unwrap();
    for node in cluster.ids() {
        let client =
            Client::with_token(format!("http://{}", cluster.http_addr(node)), &tokens[1].1)
                .unwrap();
        eventually(
            "the revoked token is refused",
            Duration::from_secs(10),
            || {
                let client = client.clone();
                async move {
                    match client.get(b"greeting").await {
                        Err(e) if e.status() == Some(401) => Ok(()),
                        other => Err(format!("{other:?}")),
                    }
                }
            },
        )
        .await;
    }
    for node in cluster.ids() {
        let client =
            Client::with_token(format!("http://{}", cluster.http_addr(node)), &tokens[1].1)
                .unwrap();
        let refused = client.put(b"greeting", b"after").await.unwrap_err();
        assert_eq!(refused.code(), Some("unauthenticated"), "node {node}");
    }
    let again = admin.revoke_token(&writer_id).await.unwrap_err();
    assert_eq!(again.code(), Some("token_not_found"));
    assert_eq!(
        admin.get(b"greeting").await.unwrap().map(|g| g.value),
        Some(b"hello".to_vec()),
        "no write of the revoked token went through"
    );

    // Every admin change was recorded: who, what, how it was answered; reads were not.
    let audit = admin.audit(100).await.unwrap();
    let created: Vec<_> = audit
        .iter()
        .filter(|r| r.method == "POST" && r.path == "/v1/auth/tokens" && r.status == 201)
        .collect();
    assert_eq!(created.len(), 3, "{audit:?}");
    assert!(created.iter().all(|r| r.who == "root"));
    let revoked = format!("/v1/auth/tokens/{writer_id}");
    let statuses: Vec<u16> = audit
        .iter()
        .filter(|r| r.method == "DELETE" && r.path == revoked)
        .map(|r| r.status)
        .collect();
    assert_eq!(statuses, vec![404, 204], "newest first: {audit:?}");
    assert!(audit.iter().all(|r| r.method != "GET"), "{audit:?}");

    // No secret reaches a log.
    for node in cluster.ids() {
        for path in [cluster.stderr_path(node), cluster.stdout_path(node)] {
            let log = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                !log.contains(&root),
                "{} holds the root token",
                path.display()
            );
            for (_, token) in &tokens {
                let secret = token.rsplit('.').next().unwrap();
                assert!(!log.contains(secret), "{} holds a token", path.display());
            }
        }
    }
}

/// Without authentication (a loopback node), a web page the node's user visits could
/// still post to it: only the media type stands in the way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_post_that_is_not_json_changes_nothing() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        shards: 2,
        ..ClusterOptions::default()
    })
    .await;
    let base = format!("http://{}", cluster.http_addr(1));
    let admin = cluster.client(1);
    let batch = r#"{"ops":[{"op":"put","key":"csrf","value":"written"}]}"#;
    // What a browser's cross-site form (or `no-cors` fetch) can send.
    for content_type in [
        Some("text/plain"),
        Some("application/x-www-form-urlencoded"),
        Some("multipart/form-data; boundary=x"),
        None,
    ] {
        let mut request = reqwest::Client::new()
            .post(format!("{base}/v1/batch"))
            .body(batch);
        if let Some(content_type) = content_type {
            request = request.header("content-type", content_type);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status().as_u16(), 415, "{content_type:?}");
        let body: serde_json::Value = response.json().await.unwrap();
        assert_eq!(body["error"]["code"], "unsupported_media_type");
    }
    assert_eq!(
        admin.get(b"csrf").await.unwrap(),
        None,
        "a refused post wrote"
    );
    // The same body, said to be JSON, is written.
    let response = reqwest::Client::new()
        .post(format!("{base}/v1/batch"))
        .header("content-type", "application/json; charset=utf-8")
        .body(batch)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(admin.get(b"csrf").await.unwrap().is_some());
}

/// With TLS on, a node serves HTTPS only, to clients that trust the cluster's CA, and
/// its peers reach each other only under mutual TLS: writes forwarded between nodes,
/// a snapshot (markers through every shard's leader) and reads at it all work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_only_https_and_its_peers_speak_tls() {
    let (cluster, root, _root_dir) = secured_with(3, true).await;
    let ca = cluster.ca_pem().expect("a TLS cluster has a CA");
    let client = |node: usize| {
        assert!(cluster.url(node).starts_with("https://"));
        Client::with_options(cluster.url(node), Some(&root), Some(ca)).unwrap()
    };
    for node in cluster.ids() {
        for i in 0..4 {
            let key = format!("tls/{node}/{i}");
            client(node)
                .put(key.as_bytes(), b"v")
                .await
                .expect("a write");
        }
    }
    let snapshot = client(2).create_snapshot(None).await.expect("a snapshot");
    let at = cairn_client::ReadAt::id(snapshot.id);
    for node in cluster.ids() {
        let read = client(node)
            .get_at(b"tls/1/3", &at)
            .await
            .expect("a read at it");
        assert_eq!(read.value.map(|g| g.value), Some(b"v".to_vec()));
    }
    let status = client(1).cluster().await.unwrap();
    assert!(
        status.links.iter().all(|l| l.state == "up"),
        "every peer link is up under mutual TLS: {:?}",
        status.links
    );

    // A plaintext client on the HTTPS port gets nothing.
    let plain = reqwest::get(format!("http://{}/health", cluster.http_addr(1))).await;
    assert!(plain.is_err(), "plaintext HTTP was answered: {plain:?}");
    // A client that does not trust the cluster's CA refuses the node.
    let stranger = Client::new(cluster.url(1)).health().await;
    assert!(stranger.is_err(), "a client without the CA connected");
    // A plaintext peer gets nothing from the peer port: it closes the connection.
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let mut peer = tokio::net::TcpStream::connect(cluster.peer_addr(1))
        .await
        .unwrap();
    let _ = peer.write_all(b"\x00\x00\x00\x05hello").await;
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(10), peer.read(&mut buf)).await;
    match read {
        Ok(Ok(n)) => assert!(
            n == 0 || buf[0] == 0x15,
            "the peer port answered plaintext with {:?}",
            &buf[..n]
        ),
        Ok(Err(_)) => {}
        Err(_) => panic!("the peer port held a plaintext connection open"),
    }
}

/// A client that opens connections and sends nothing holds them for the header
/// timeout (10 s) at most: past `--max-connections`, others wait, and are served once
/// the server has closed the silent ones.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn silent_connections_cannot_starve_other_clients() {
    use tokio::io::AsyncReadExt as _;
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        shards: 2,
        extra_args: vec!["--max-connections".into(), "4".into()],
        ..ClusterOptions::default()
    })
    .await;
    let addr = cluster.http_addr(1);
    let mut silent = Vec::new();
    for _ in 0..4 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let started = std::time::Instant::now();
    let patient = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let answer = patient
        .get(format!("http://{addr}/health"))
        .send()
        .await
        .expect("served once the silent connections are closed");
    assert!(answer.status().is_success());
    assert!(
        started.elapsed() >= Duration::from_secs(5),
        "a fifth connection was served while four silent ones held every slot"
    );
    for mut connection in silent {
        let mut buf = [0u8; 256];
        let read = tokio::time::timeout(Duration::from_secs(30), connection.read(&mut buf))
            .await
            .expect("the server closes a silent connection");
        if let Ok(n) = read {
            let answer = String::from_utf8_lossy(&buf[..n]);
            assert!(n == 0 || answer.starts_with("HTTP/1.1 408"), "{answer}");
        }
    }
}

/// The certificate node `addr` presents, checked against the CA `ca` (PEM).
async fn served_certificate(addr: std::net::SocketAddr, ca: &[u8]) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, ServerName};
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config))
        .connect(name, tcp)
        .await
        .expect("a TLS handshake with the node");
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

/// The first certificate of a PEM file, DER.
fn certificate_in(path: &std::path::Path) -> Vec<u8> {
    use rustls::pki_types::pem::PemObject as _;
    rustls::pki_types::CertificateDer::from_pem_file(path)
        .unwrap()
        .to_vec()
}

/// SIGHUP makes a node read its TLS files again: a renewed certificate is served from
/// the next connection on, without a restart; files that do not load leave the one in
/// use in place.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_reloads_certificates_and_keeps_them_when_the_new_ones_are_bad() {
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        shards: 2,
        tls: true,
        ..ClusterOptions::default()
    })
    .await;
    let ca = cluster.ca_pem().unwrap().to_vec();
    let certs = cluster.dir().join("certs");
    let addr = cluster.http_addr(1);
    assert_eq!(
        served_certificate(addr, &ca).await,
        certificate_in(&certs.join("node-1.crt"))
    );

    // Renew node 1's certificate from the same CA and swap the files in.
    let renewal = tempfile::tempdir().unwrap();
    for file in ["ca.crt", "ca.key"] {
        std::fs::copy(certs.join(file), renewal.path().join(file)).unwrap();
    }
    let made = std::process::Command::new(harness::cairn_bin())
        .args(["certs", "create-node", "1", "--dir"])
        .arg(renewal.path())
        .output()
        .unwrap();
    assert!(made.status.success(), "{made:?}");
    for file in ["node-1.crt", "node-1.key"] {
        std::fs::copy(renewal.path().join(file), certs.join(file)).unwrap();
    }
    let renewed = certificate_in(&certs.join("node-1.crt"));
    cluster.hangup(1);
    eventually(
        "the renewed certificate is served",
        Duration::from_secs(10),
        || {
            let (ca, renewed) = (ca.clone(), renewed.clone());
            async move {
                if served_certificate(addr, &ca).await == renewed {
                    Ok(())
                } else {
                    Err("the old one still".to_owned())
                }
            }
        },
    )
    .await;

    // A certificate that does not load changes nothing: the renewed one stays.
    std::fs::write(certs.join("node-1.crt"), "not a certificate").unwrap();
    cluster.hangup(1);
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(served_certificate(addr, &ca).await, renewed);
    let client = Client::with_options(cluster.url(1), None, Some(&ca)).unwrap();
    client
        .put(b"after-reload", b"x")
        .await
        .expect("still serving");
}

/// A token limited to a key prefix reads and writes only under it: single keys,
/// every op of a batch, scans and diffs whose prefix lies inside; anything else is
/// 403 and changes nothing. An admin token cannot be limited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prefixed_token_touches_only_its_keys() {
    let (cluster, root, _root_dir) = secured(1).await;
    let base = format!("http://{}", cluster.http_addr(1));
    let admin = Client::with_token(&base, &root).unwrap();
    admin.put(b"team-b/secret", b"b's").await.unwrap();
    let scoped = admin
        .create_scoped_token("team-a-app", Role::Write, Some("team-a/"))
        .await
        .unwrap();
    assert_eq!(scoped.info.prefix.as_deref(), Some("team-a/"));
    let a = Client::with_token(&base, &scoped.token).unwrap();

    a.put(b"team-a/x", b"1").await.expect("its own key");
    assert_eq!(
        a.get(b"team-a/x").await.unwrap().map(|g| g.value),
        Some(b"1".to_vec())
    );
    let scan = a
        .scan(&cairn_client::ScanOptions {
            prefix: b"team-a/".to_vec(),
            ..Default::default()
        })
        .await
        .expect("a scan inside its prefix");
    assert_eq!(scan.items.len(), 1);

    let forbidden = |r: Result<(), cairn_client::Error>, what: &str| {
        let e = r.expect_err(what);
        assert_eq!(e.code(), Some("forbidden"), "{what}: {e}");
    };
    forbidden(a.get(b"team-b/secret").await.map(drop), "a read outside");
    forbidden(
        a.put(b"team-b/secret", b"a's").await.map(drop),
        "a write outside",
    );
    forbidden(
        a.delete(b"team-b/secret").await.map(drop),
        "a delete outside",
    );
    forbidden(
        a.scan(&cairn_client::ScanOptions::default())
            .await
            .map(drop),
        "a scan of everything",
    );
    forbidden(
        a.batch(vec![
            cairn_client::api::BatchOp::put(b"team-a/y", b"2"),
            cairn_client::api::BatchOp::put(b"team-b/secret", b"a's"),
        ])
        .await
        .map(drop),
        "a batch reaching outside",
    );
    assert_eq!(
        a.get(b"team-a/y").await.unwrap(),
        None,
        "the refused batch wrote"
    );
    assert_eq!(
        admin.get(b"team-b/secret").await.unwrap().map(|g| g.value),
        Some(b"b's".to_vec())
    );
    let limited_admin = admin
        .create_scoped_token("nope", Role::Admin, Some("team-a/"))
        .await
        .expect_err("an admin token cannot be limited");
    assert_eq!(limited_admin.code(), Some("bad_token_request"));
}

/// A body that never arrives is answered `400 bad_body` after the body timeout (30 s)
/// and the connection is released, instead of held for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_arrives_is_refused() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let cluster = Cluster::start(ClusterOptions {
        nodes: 1,
        shards: 2,
        ..ClusterOptions::default()
    })
    .await;
    let addr = cluster.http_addr(1);
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head = format!(
        "POST /v1/batch HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"ops\":"
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    let mut answer = Vec::new();
    let mut buf = [0u8; 1024];
    let read = tokio::time::timeout(Duration::from_secs(60), async {
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    answer.extend_from_slice(&buf[..n]);
                    if answer.windows(8).any(|w| w == b"bad_body") {
                        break;
                    }
                }
            }
        }
    })
    .await;
    assert!(read.is_ok(), "no answer within 60 s");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("did not arrive"), "{answer}");
}
