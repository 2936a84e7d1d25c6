//! The fuzz targets of this crate's decoders, replayed in `cargo test`: every seed and
//! every input a fuzzer ever crashed on, through the same oracle `cargo fuzz` runs
//! (`fuzz/oracles/`, docs/FUZZING.md).

#[path = "../../../fuzz/oracles/allocation_cap.rs"]
mod allocation_cap;
#[path = "../../../fuzz/oracles/command_decode.rs"]
mod command_decode;
#[path = "../../../fuzz/oracles/cut_decode.rs"]
mod cut_decode;
#[path = "../../../fuzz/oracles/input.rs"]
mod input;
#[path = "../../../fuzz/oracles/key_codec.rs"]
mod key_codec;
#[path = "../../../fuzz/oracles/replay.rs"]
mod replay;

/// As in the fuzz targets: one allocation over 256 MiB aborts (a length field sized a
/// buffer), so a regression of that kind fails here too.
#[global_allocator]
static ALLOCATOR: allocation_cap::AllocationCap = allocation_cap::AllocationCap;

#[test]
fn key_codec_inputs() {
    replay::replay("key_codec", key_codec::check);
}

#[test]
fn command_decode_inputs() {
    replay::replay("command_decode", command_decode::check);
}

#[test]
fn cut_decode_inputs() {
    replay::replay("cut_decode", cut_decode::check);
}
