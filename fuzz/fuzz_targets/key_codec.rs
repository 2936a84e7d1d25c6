//! `cargo fuzz run key_codec -s none`: the checks are in `oracles/key_codec.rs`, shared with
//! the test that replays the seeds and every crash found (docs/FUZZING.md).
#![no_main]

#[path = "../oracles/allocation_cap.rs"]
mod allocation_cap;
#[path = "../oracles/input.rs"]
mod input;
#[path = "../oracles/key_codec.rs"]
mod key_codec;

#[global_allocator]
static ALLOCATOR: allocation_cap::AllocationCap = allocation_cap::AllocationCap;

libfuzzer_sys::fuzz_target!(|data: &[u8]| key_codec::check(data));
