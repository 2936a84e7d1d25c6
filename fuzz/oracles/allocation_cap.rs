//! The fuzz targets' global allocator: it aborts on any single allocation over
//! [`CAP`], so a decoder that sizes a buffer from a length field before the bytes are
//! there is a crash with its input saved. Without a sanitizer, libFuzzer's
//! `-malloc_limit_mb` sees no allocation, and a lazily zeroed 4 GiB buffer costs no
//! memory until touched, so it would otherwise pass unnoticed.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Write;

/// Far above anything a case of at most a few KiB should need (zstd's window, sled's
/// segments), far below what a length field can claim.
pub const CAP: usize = 256 << 20;

pub struct AllocationCap;

fn check(size: usize) {
    if size > CAP {
        // Nothing here may allocate.
        let _ = std::io::stderr().write_all(b"fuzz: one allocation over the 256 MiB cap\n");
        std::process::abort();
    }
}

unsafe impl GlobalAlloc for AllocationCap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        check(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        check(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}
