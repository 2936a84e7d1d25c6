//! Property tests of request parsing: the strict percent-decoder and query splitter
//! (`api::url`), and the JSON bodies of `/v1/batch`, `/v1/snapshots`, `/v1/backups`
//! and `/v1/revert` sent to an in-process single-node cluster, through the fuzz
//! targets' oracles (`fuzz/oracles/`): never a panic, never a 5xx that means a bug,
//! every error the documented JSON shape. Fixed seed and case count, so CI runs the
//! same cases every time (docs/FUZZING.md).

#[path = "../../../fuzz/oracles/http_api.rs"]
mod http_api;
#[path = "../../../fuzz/oracles/input.rs"]
mod input;
#[path = "../../../fuzz/oracles/url_decode.rs"]
mod url_decode;

use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};
use serde_json::{json, Value};

fn config(cases: u32) -> Config {
    Config {
        cases,
        rng_seed: RngSeed::Fixed(0x00AB_05E0_0001),
        failure_persistence: None,
        ..Config::default()
    }
}

/// JSON values of every type, biased to what the bodies' fields hold.
fn scalar() -> impl Strategy<Value = Value> {
    prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (-5i64..5).prop_map(Value::from),
        any::<f64>().prop_map(|f| json!(f)),
        "[a-z/]{0,6}".prop_map(Value::from),
        "[A-Za-z0-9+/=]{0,8}".prop_map(Value::from),
        Just(Value::from("put")),
        Just(Value::from("delete")),
        Just(json!([])),
        Just(json!({})),
    ]
}

/// An object with some of `fields` (each set to a scalar) and perhaps one unknown.
fn object(fields: &'static [&'static str]) -> impl Strategy<Value = Value> {
    (vec((0..fields.len() + 1, scalar()), 0..5)).prop_map(move |pairs| {
        let mut object = serde_json::Map::new();
        for (i, value) in pairs {
            object.insert(
                fields.get(i).copied().unwrap_or("unknown").to_owned(),
                value,
            );
        }
        Value::Object(object)
    })
}

const OP_FIELDS: &[&str] = &[
    "op",
    "key",
    "key_b64",
    "value",
    "value_b64",
    "if_version",
    "if_absent",
];

/// A body for one of the four JSON routes, and that route's index in the oracle's
/// `ROUTES`.
fn body() -> impl Strategy<Value = (u8, Value)> {
    prop_oneof![
        vec(object(OP_FIELDS), 0..4).prop_map(|ops| (3, json!({ "ops": ops }))),
        object(&["name"]).prop_map(|b| (4, b)),
        object(&["destination", "incremental", "snapshot"]).prop_map(|b| (7, b)),
        object(&["prefix", "prefix_b64", "snapshot"]).prop_map(|b| (10, b)),
        scalar().prop_map(|b| (3, b)),
    ]
}

proptest! {
    #![proptest_config(config(3000))]

    #[test]
    fn url_texts_decode_strictly_or_name_the_bad_escape(
        text in "[%0-9a-fA-Fg&=+/ ]{0,24}", bytes in vec(any::<u8>(), 0..24),
    ) {
        url_decode::check(text.as_bytes());
        url_decode::check(&bytes);
    }
}

proptest! {
    #![proptest_config(config(150))]

    #[test]
    fn json_bodies_get_a_documented_answer((route, body) in body(), mangle in 0..4u8) {
        let mut body = body.to_string().into_bytes();
        if mangle == 0 {
            body.truncate(body.len() / 2);
        }
        // POST, the route, an empty query, no headers, then the body (oracles/http_api.rs).
        let mut case = vec![2, route, 0, 1, 1, 1];
        case.extend(body);
        http_api::check(&case);
    }
}
