//! `cargo fuzz run url_decode -s none`: the checks are in `oracles/url_decode.rs`, shared with
//! the test that replays the seeds and every crash found (docs/FUZZING.md).
#![no_main]

#[path = "../oracles/input.rs"]
mod input;
#[path = "../oracles/url_decode.rs"]
mod url_decode;

libfuzzer_sys::fuzz_target!(|data: &[u8]| url_decode::check(data));
