//! The guest's allocator: the system's, except that every block freed before the first inference
//! is zeroed first.
//!
//! A wasm linear memory never shrinks, and a pre-initialised snapshot records every non-zero byte
//! of it. Preparing a model frees a lot (the decoded protobuf, weights replaced by their packed
//! forms, copies made while optimising); left as they were, those bytes would travel in every
//! `seg-NN.wasm`. Zeroed, they are holes the snapshot leaves out. From the first inference on,
//! blocks are freed as they are, so computing pays nothing for it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, Ordering};

static ZEROING: AtomicBool = AtomicBool::new(true);

/// Ends the zeroing of freed blocks: the model is prepared and inference begins.
pub fn stop_zeroing() {
    ZEROING.store(false, Ordering::Relaxed);
}

struct ZeroFreedUntilInference;

// SAFETY: every call is forwarded to `System` with valid arguments; zeroing writes only inside the
// block being freed, before it is freed.
unsafe impl GlobalAlloc for ZeroFreedUntilInference {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if ZEROING.load(Ordering::Relaxed) {
            unsafe { ptr.write_bytes(0, layout.size()) };
            // The compiler would drop stores to memory about to be freed as dead.
            std::hint::black_box(ptr);
        }
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !ZEROING.load(Ordering::Relaxed) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // A block the system moved would be freed with its contents: move it here instead.
        let Ok(new_layout) = Layout::from_size_align(new_size, layout.align()) else {
            return std::ptr::null_mut();
        };
        let moved = unsafe { System.alloc(new_layout) };
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
