//! `GET /v1/openapi.json`: the OpenAPI 3.1 document of this API (`docs/openapi.json`),
//! compiled in so every binary serves the document of its own routes. The
//! `openapi_document_lists_every_route` test keeps it and [`super::app`] in step, and
//! `scripts/api-fuzz.sh` runs schemathesis against it (docs/FUZZING.md).

use axum::http::header;
use axum::response::IntoResponse;

/// The document, as checked in.
pub const DOCUMENT: &str = include_str!("../../../../docs/openapi.json");

pub async fn document() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], DOCUMENT)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::DOCUMENT;

    /// `(path, method)` for every route `api::app` serves, read from its source (axum
    /// cannot list a router's routes; a module merged in with `.merge` must be listed
    /// here), with axum's `{*key}` written `{key}` as OpenAPI does. HEAD is implied by
    /// GET in both.
    fn served_routes() -> BTreeSet<(String, String)> {
        // `api::app`'s own routes, and the ones it merges in.
        let sources = [include_str!("mod.rs"), include_str!("debug.rs")];
        assert_eq!(
            sources[0].matches(".merge(").count(),
            sources.len() - 1,
            "api::app merges a router this test does not read"
        );
        let mut routes = BTreeSet::new();
        for call in sources.iter().flat_map(|s| s.split(".route(").skip(1)) {
            let mut quoted = call.splitn(3, '"');
            let path = quoted.nth(1).expect("a route's path literal");
            let path = path.replace("{*", "{");
            // The method router: up to the `)` that closes `.route(`.
            let mut depth = 1;
            let end = call
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '(' => 1,
                        ')' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map_or(call.len(), |(i, _)| i);
            let methods = &call[..end];
            for method in ["get", "put", "post", "delete", "patch"] {
                let called = methods
                    .match_indices(&format!("{method}("))
                    .any(|(i, _)| i == 0 || !methods.as_bytes()[i - 1].is_ascii_alphanumeric());
                if called {
                    routes.insert((path.clone(), method.to_owned()));
                }
            }
        }
        routes
    }

    fn documented_routes() -> BTreeSet<(String, String)> {
        let doc: serde_json::Value =
            serde_json::from_str(DOCUMENT).expect("docs/openapi.json is JSON");
        let paths = doc["paths"].as_object().expect("a paths object");
        paths
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .expect("a path item")
                    .keys()
                    .filter(|k| *k != "parameters")
                    .map(move |method| (path.clone(), method.clone()))
            })
            .collect()
    }

    #[test]
    fn openapi_document_lists_every_route() {
        let served = served_routes();
        assert!(served.len() >= 20, "read only {served:?} from api/mod.rs");
        let documented = documented_routes();
        let undocumented: Vec<_> = served.difference(&documented).collect();
        let unserved: Vec<_> = documented.difference(&served).collect();
        assert!(
            undocumented.is_empty() && unserved.is_empty(),
            "docs/openapi.json is out of step with api/mod.rs:\n  served, not documented: \
             {undocumented:?}\n  documented, not served: {unserved:?}"
        );
    }

    #[test]
    fn every_operation_documents_its_errors_as_the_error_body() {
        let doc: serde_json::Value = serde_json::from_str(DOCUMENT).expect("JSON");
        for (path, item) in doc["paths"].as_object().expect("paths") {
            for (method, op) in item.as_object().expect("path item") {
                if method == "parameters" {
                    continue;
                }
                let responses = op["responses"].as_object().expect("responses");
                assert!(!responses.is_empty(), "{method} {path}: no responses");
                for (status, response) in responses {
                    if status.starts_with('4') || status.starts_with('5') {
                        let json = response.to_string();
                        assert!(
                            json.contains("#/components/schemas/Error")
                                || json.contains("#/components/responses/"),
                            "{method} {path} {status}: not the error body"
                        );
                    }
                }
            }
        }
    }
}
