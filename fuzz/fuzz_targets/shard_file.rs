//! `cargo fuzz run shard_file -s none`: the checks are in `oracles/shard_file.rs`, shared with
//! the test that replays the seeds and every crash found (docs/FUZZING.md).
#![no_main]

#[path = "../oracles/allocation_cap.rs"]
mod allocation_cap;
#[path = "../oracles/input.rs"]
mod input;
#[path = "../oracles/shard_file.rs"]
mod shard_file;

#[global_allocator]
static ALLOCATOR: allocation_cap::AllocationCap = allocation_cap::AllocationCap;

libfuzzer_sys::fuzz_target!(|data: &[u8]| shard_file::check(data));
