//! `cargo fuzz run http_api -s none`: the checks are in `oracles/http_api.rs`, shared with
//! the test that replays the seeds and every crash found (docs/FUZZING.md).
#![no_main]

#[path = "../oracles/input.rs"]
mod input;
#[path = "../oracles/http_api.rs"]
mod http_api;

libfuzzer_sys::fuzz_target!(|data: &[u8]| http_api::check(data));
