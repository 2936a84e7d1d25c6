//! `docs/openapi.json` against the router itself: every documented operation reaches
//! a handler (no 404 `not_found`, no 405), and every other method of a documented path
//! is a 405. With the source check in `api/openapi.rs` (every `.route` of `api::app`
//! is documented), the document cannot drift from the routes silently.

#[path = "../../../fuzz/oracles/http_api.rs"]
mod http_api;
#[path = "../../../fuzz/oracles/input.rs"]
mod input;

const METHODS: [&str; 5] = ["get", "put", "post", "delete", "patch"];

#[test]
fn the_router_serves_exactly_the_documented_operations() {
    let document: serde_json::Value =
        serde_json::from_str(include_str!("../../../docs/openapi.json")).expect("JSON");
    let paths = document["paths"].as_object().expect("paths");
    let mut checked = 0;
    for (template, item) in paths {
        // A value for every path parameter: a key, a snapshot id, a backup id.
        let path = template
            .replace("{key}", "probe-key")
            .replace("{id}", "1")
            .replace("{a}", "1")
            .replace("{b}", "1");
        for method in METHODS {
            let (status, body) = http_api::send(&method.to_uppercase(), &path, b"");
            let text = String::from_utf8_lossy(&body);
            let code = serde_json::from_slice::<serde_json::Value>(&body)
                .ok()
                .and_then(|v| v["error"]["code"].as_str().map(str::to_owned));
            if item.get(method).is_some() {
                assert!(
                    !matches!(code.as_deref(), Some("not_found" | "method_not_allowed")),
                    "{method} {path} is documented but not served: {status} {text}"
                );
            } else {
                assert_eq!(
                    (status.as_u16(), code.as_deref()),
                    (405, Some("method_not_allowed")),
                    "{method} {path} is served but not documented: {text}"
                );
            }
            checked += 1;
        }
    }
    assert_eq!(checked, 5 * paths.len());
    assert!(paths.len() >= 17, "only {} paths documented", paths.len());
}
