//! The fuzz targets of the backup decoders, replayed in `cargo test`: every seed and
//! every input a fuzzer ever crashed on, through the same oracle `cargo fuzz` runs
//! (`fuzz/oracles/`, docs/FUZZING.md).

#[path = "../../../fuzz/oracles/allocation_cap.rs"]
mod allocation_cap;
#[path = "../../../fuzz/oracles/input.rs"]
mod input;
#[path = "../../../fuzz/oracles/manifest_decode.rs"]
mod manifest_decode;
#[path = "../../../fuzz/oracles/replay.rs"]
mod replay;
#[path = "../../../fuzz/oracles/shard_file.rs"]
mod shard_file;

/// As in the fuzz targets: one allocation over 256 MiB aborts (a length field sized a
/// buffer), so a regression of that kind fails here too.
#[global_allocator]
static ALLOCATOR: allocation_cap::AllocationCap = allocation_cap::AllocationCap;

#[test]
fn manifest_decode_inputs() {
    replay::replay("manifest_decode", manifest_decode::check);
}

#[test]
fn shard_file_inputs() {
    replay::replay("shard_file", shard_file::check);
}
