//! The HTTP-side fuzz targets replayed in `cargo test`: every seed and every input a
//! fuzzer ever crashed on, through the same oracle `cargo fuzz` runs (`fuzz/oracles/`,
//! docs/FUZZING.md). `http_api` starts one in-process single-node cluster.

#[path = "../../../fuzz/oracles/allocation_cap.rs"]
mod allocation_cap;
#[path = "../../../fuzz/oracles/http_api.rs"]
mod http_api;
#[path = "../../../fuzz/oracles/input.rs"]
mod input;
#[path = "../../../fuzz/oracles/replay.rs"]
mod replay;
#[path = "../../../fuzz/oracles/url_decode.rs"]
mod url_decode;

/// As in the fuzz targets: one allocation over 256 MiB aborts (a length field sized a
/// buffer), so a regression of that kind fails here too.
#[global_allocator]
static ALLOCATOR: allocation_cap::AllocationCap = allocation_cap::AllocationCap;

#[test]
fn url_decode_inputs() {
    replay::replay("url_decode", url_decode::check);
}

#[test]
fn http_api_inputs() {
    replay::replay("http_api", http_api::check);
}
