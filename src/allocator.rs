//! The process's global allocator: mimalloc, asked for large blocks the way
//! `malloc` is.
//!
//! The `mimalloc` crate's allocator passes every request to
//! `mi_malloc_aligned`, whose fast path covers only blocks up to 1 KiB;
//! anything larger (a request's boxed future, hyper's and h2's buffers),
//! whatever its alignment, is over-allocated and aligned by hand on top of
//! the generic allocation: ~300 more instructions per block. Blocks over
//! 1 KiB come from size classes that are multiples of 16 bytes on
//! 16-byte-aligned pages, so plain `mi_malloc` already gives them any
//! alignment up to 16; only smaller blocks and larger alignments go the
//! aligned way.

use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys::{
    mi_free, mi_malloc, mi_malloc_aligned, mi_realloc, mi_realloc_aligned, mi_zalloc, mi_zalloc_aligned,
};

/// mimalloc's largest "small" block (`MI_SMALL_SIZE_MAX`: 128 words).
const SMALL_MAX_BYTES: usize = 128 * std::mem::size_of::<usize>();
/// The alignment every block over `SMALL_MAX_BYTES` has (`MI_MAX_ALIGN_SIZE`).
const LARGE_BLOCK_ALIGN: usize = 16;

pub struct Mimalloc;

/// True when plain `mi_malloc` of `size` bytes is aligned enough for `align`.
#[inline]
fn plain(size: usize, align: usize) -> bool {
    size > SMALL_MAX_BYTES && align <= LARGE_BLOCK_ALIGN
}

// SAFETY: every path returns a block from mimalloc of at least `size` bytes
// aligned to `align` (see the module note for the plain path), or null.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: FFI calls with a size and a power-of-two alignment.
        unsafe {
            if plain(size, align) {
                mi_malloc(size) as *mut u8
            } else {
                mi_malloc_aligned(size, align) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let (size, align) = (layout.size(), layout.align());
        // SAFETY: as in `alloc`.
        unsafe {
            if plain(size, align) {
                mi_zalloc(size) as *mut u8
            } else {
                mi_zalloc_aligned(size, align) as *mut u8
            }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator, which is mimalloc's.
        unsafe { mi_free(ptr as *mut c_void) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` came from this allocator; a block kept in place keeps
        // its alignment, and a new one over 1 KiB is 16-byte aligned.
        unsafe {
            if plain(new_size, layout.align()) {
                mi_realloc(ptr as *mut c_void, new_size) as *mut u8
            } else {
                mi_realloc_aligned(ptr as *mut c_void, new_size, layout.align()) as *mut u8
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blocks_have_the_alignment_asked_for() {
        let allocator = Mimalloc;
        for size in [1, 8, 24, 1000, 1024, 1025, 1100, 5216, 6800, 70_000, 3 << 20] {
            for align in [1, 8, 16, 32, 128, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: a non-zero size; the block is freed with its layout.
                unsafe {
                    let p = allocator.alloc(layout);
                    assert!(!p.is_null());
                    assert_eq!(p as usize % align, 0, "size {size} align {align}");
                    let grown = allocator.realloc(p, layout, size * 3);
                    assert_eq!(grown as usize % align, 0, "realloc of size {size} align {align}");
                    allocator.dealloc(grown, Layout::from_size_align(size * 3, align).unwrap());
                }
            }
        }
    }
}
