//! `cargo fuzz run key_codec -s none`: the checks are in `oracles/key_codec.rs`, shared with
//! the test that replays the seeds and every crash found (docs/FUZZING.md).
#![no_main]

#[path = "../oracles/input.rs"]
mod input;
#[path = "../oracles/key_codec.rs"]
mod key_codec;

libfuzzer_sys::fuzz_target!(|data: &[u8]| key_codec::check(data));
