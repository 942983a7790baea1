//! Target `ws_frame`: the harness and its properties are `herald_server::fuzzing::ws_frames`,
//! which `cargo test` also runs over the committed corpus (fuzz/corpus/ws_frame/). Here, in
//! addition, a counting allocator proves that no allocation exceeds the reader's payload limit
//! plus a frame header and its read-ahead (the buffer holds the frame being read and at most
//! 256 bytes more), whatever length a frame header claims.
#![no_main]

use std::{
    alloc::{GlobalAlloc, Layout, System},
    sync::atomic::{AtomicUsize, Ordering::Relaxed},
};

/// The largest single allocation since the last reset.
static LARGEST: AtomicUsize = AtomicUsize::new(0);

struct Counting;

// SAFETY: forwards every call to the system allocator unchanged; only records sizes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        LARGEST.fetch_max(layout.size(), Relaxed);
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LARGEST.fetch_max(new_size, Relaxed);
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// What the frame reader buffers beyond a frame's payload: its header (at most 14 bytes) and
/// its read-ahead (`MAX_HEADER` and `READ_AHEAD` in transport/ws/frame.rs).
const BEYOND_PAYLOAD: usize = 14 + 256;

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    LARGEST.store(0, Relaxed);
    herald_server::fuzzing::ws_frames(data);
    let largest = LARGEST.load(Relaxed);
    let limit = herald_server::fuzzing::ws_frames_limit(data);
    assert!(
        largest <= limit + BEYOND_PAYLOAD,
        "allocated {largest} bytes with a {limit}-byte payload limit"
    );
});
