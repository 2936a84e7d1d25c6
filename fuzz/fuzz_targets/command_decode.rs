//! `cargo fuzz run command_decode -s none`: the checks are in `oracles/command_decode.rs`, shared with
//! the test that replays the seeds and every crash found (docs/FUZZING.md).
#![no_main]

#[path = "../oracles/allocation_cap.rs"]
mod allocation_cap;
#[path = "../oracles/input.rs"]
mod input;
#[path = "../oracles/command_decode.rs"]
mod command_decode;

#[global_allocator]
static ALLOCATOR: allocation_cap::AllocationCap = allocation_cap::AllocationCap;

libfuzzer_sys::fuzz_target!(|data: &[u8]| command_decode::check(data));
