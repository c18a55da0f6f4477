//! The guest's allocator: the system's, except that every block freed before the first inference
//! is zeroed first, and that it counts the bytes it holds (for the profile export).
//!
//! A wasm linear memory never shrinks, and a pre-initialised snapshot records every non-zero byte
//! of it. Preparing a model frees a lot (the decoded protobuf, weights replaced by their packed
//! forms, copies made while optimising); left as they were, those bytes would travel in every
//! `seg-NN.wasm`. Zeroed, they are holes the snapshot leaves out. From the first inference on,
//! blocks are freed as they are, so computing pays nothing for it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static ZEROING: AtomicBool = AtomicBool::new(true);
static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// Ends the zeroing of freed blocks: the model is prepared and inference begins.
pub fn stop_zeroing() {
    ZEROING.store(false, Ordering::Relaxed);
}

/// Bytes the allocator holds now.
pub fn live_bytes() -> u64 {
    LIVE.load(Ordering::Relaxed) as u64
}

/// The most bytes the allocator has held since the previous call (or since start), and starts the next
/// such period at what it holds now.
pub fn take_peak_bytes() -> u64 {
    PEAK.swap(LIVE.load(Ordering::Relaxed), Ordering::Relaxed) as u64
}

fn grew(bytes: usize) {
    let live = LIVE.fetch_add(bytes, Ordering::Relaxed) + bytes;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

fn shrank(bytes: usize) {
    LIVE.fetch_sub(bytes, Ordering::Relaxed);
}

struct ZeroFreedUntilInference;

// SAFETY: every call is forwarded to `System` with valid arguments; zeroing writes only inside the
// block being freed, before it is freed.
unsafe impl GlobalAlloc for ZeroFreedUntilInference {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grew(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ZEROING.load(Ordering::Relaxed) {
            unsafe { ptr.write_bytes(0, layout.size()) };
            // The compiler would drop stores to memory about to be freed as dead.
            std::hint::black_box(ptr);
        }
        shrank(layout.size());
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !ZEROING.load(Ordering::Relaxed) {
            let moved = unsafe { System.realloc(ptr, layout, new_size) };
            if !moved.is_null() {
                shrank(layout.size());
                grew(new_size);
            }
            return moved;
        }
        // A block the system moved would be freed with its contents: move it here instead.
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let moved = unsafe { self.alloc(new_layout) };
        if !moved.is_null() {
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
                self.dealloc(ptr, layout);
            }
        }
        moved
    }
}

#[global_allocator]
static ALLOCATOR: ZeroFreedUntilInference = ZeroFreedUntilInference;
