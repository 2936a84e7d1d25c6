//! `cargo fuzz run http_api -s none`: the checks are in `oracles/http_api.rs`, shared with
//! the test that replays the seeds and every crash found (docs/FUZZING.md).
#![no_main]

#[path = "../oracles/allocation_cap.rs"]
mod allocation_cap;
#[path = "../oracles/input.rs"]
mod input;
#[path = "../oracles/http_api.rs"]
mod http_api;

#[global_allocator]
static ALLOCATOR: allocation_cap::AllocationCap = allocation_cap::AllocationCap;

libfuzzer_sys::fuzz_target!(|data: &[u8]| http_api::check(data));
