//! The global allocator of every bcs-api binary: mimalloc, asked through its plain `malloc`
//! entry points whenever those already give the alignment Rust asks for.
//!
//! Why not `mimalloc::MiMalloc` as is: it sends every allocation to `mi_malloc_aligned`, and
//! mimalloc 3 takes its fast path there only for blocks of at most 1 KiB that happen to be
//! aligned, or for power-of-two sizes. Every other request (a 4 KiB + 1 buffer, a 1.5 KiB
//! `String`) goes through `mi_malloc_aligned`'s generic and over-allocating paths. Under
//! callgrind that was 28 allocations and 2 050 instructions per proxied 1 KiB GET, 5 % of the
//! proxy's user-space instructions; through `mi_malloc` they take 1 030 (benches/README.md,
//! the instructions scenario). The rule is std's `System` allocator's for `malloc` (an
//! alignment of at most 16, `MI_MAX_ALIGN_SIZE`, C's `max_align_t`) made stricter: the
//! alignment must also divide the size. mimalloc's size classes are then multiples of it (every
//! class above 8 bytes is a multiple of 16, and a page's first block is 16-aligned), so the
//! blocks are aligned whatever `malloc`'s general promise for small sizes. Larger alignments
//! keep the aligned calls; `mi_free` and `mi_realloc` take blocks from either kind of call.
use std::alloc::{GlobalAlloc, Layout};
use std::ffi::c_void;

use libmimalloc_sys as mi;

/// `malloc`'s own alignment (mimalloc's `MI_MAX_ALIGN_SIZE`).
const MALLOC_ALIGN: usize = 16;

/// mimalloc as the global allocator: `#[global_allocator] static A: Mimalloc = Mimalloc;`.
pub struct Mimalloc;

/// Whether plain `malloc` of `size` bytes is aligned enough for `align` (a power of two, as
/// `Layout` guarantees): `align` divides `size`.
fn malloc_suffices(size: usize, align: usize) -> bool {
    align <= MALLOC_ALIGN && size >= align && size & (align - 1) == 0
}

// SAFETY: every call is mimalloc's, which is thread-safe; each path returns memory of at least
// `size` bytes aligned to `layout.align()` (malloc_suffices, or mimalloc's aligned calls), and
// `mi_free`/`mi_realloc` take pointers from either kind of call.
unsafe impl GlobalAlloc for Mimalloc {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if malloc_suffices(layout.size(), layout.align()) {
            mi::mi_malloc(layout.size()).cast()
        } else {
            mi::mi_malloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if malloc_suffices(layout.size(), layout.align()) {
            mi::mi_zalloc(layout.size()).cast()
        } else {
            mi::mi_zalloc_aligned(layout.size(), layout.align()).cast()
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        mi::mi_free(ptr.cast::<c_void>());
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if malloc_suffices(new_size, layout.align()) {
            mi::mi_realloc(ptr.cast::<c_void>(), new_size).cast()
        } else {
            mi::mi_realloc_aligned(ptr.cast::<c_void>(), new_size, layout.align()).cast()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sizes around mimalloc's bin edges (8-byte words up to 64 bytes, then four bins per power
    /// of two), its small-object limit (1 KiB) and its larger pages.
    fn sizes() -> Vec<usize> {
        let mut sizes: Vec<usize> = (1..=300).collect();
        for edge in [512, 1024, 1536, 2048, 4096, 8192, 65_536, 131_072, 1 << 20, 4 << 20] {
            sizes.extend([edge - 16, edge - 1, edge, edge + 1, edge + 8, edge + 16]);
        }
        sizes
    }

    #[test]
    fn the_plain_calls_are_taken_only_where_malloc_is_aligned_enough() {
        assert!(malloc_suffices(1, 1));
        assert!(malloc_suffices(4097, 1));
        assert!(malloc_suffices(24, 8));
        assert!(malloc_suffices(48, 16));
        assert!(!malloc_suffices(24, 16), "24 bytes at 16: the size is no multiple of the alignment");
        assert!(!malloc_suffices(8, 16), "smaller than its alignment");
        assert!(!malloc_suffices(0, 1), "nothing to allocate");
        assert!(!malloc_suffices(64, 32), "over malloc's 16 bytes");
        assert!(!malloc_suffices(4096, 4096));
    }

    #[test]
    fn every_block_is_aligned_writable_and_keeps_its_bytes_through_realloc() {
        let a = Mimalloc;
        for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
            // Kept alive together, so blocks come from used pages as well as fresh ones.
            let mut held = Vec::new();
            for size in sizes() {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: size > 0; each block is written within its size, then grown and
                // freed with the layout it has.
                unsafe {
                    let p = a.alloc(layout);
                    assert!(!p.is_null(), "{size} bytes at {align}");
                    assert_eq!(p as usize % align, 0, "{size} bytes at {align}");
                    std::ptr::write_bytes(p, 0xA5, size);
                    // Odd sizes take the aligned realloc from alignment 2 up; multiples of the
                    // alignment the plain one (up to 16), growing and then shrinking, from
                    // blocks made by either kind of call.
                    let mut p = p;
                    let mut layout = layout;
                    for new_size in [size * 2 + 1, size.next_multiple_of(align) * 2, align, size] {
                        let q = a.realloc(p, layout, new_size);
                        assert_eq!(q as usize % align, 0, "{} to {new_size} bytes at {align}", layout.size());
                        let kept = layout.size().min(new_size);
                        assert!(
                            std::slice::from_raw_parts(q, kept).iter().all(|b| *b == 0xA5),
                            "{} to {new_size} bytes at {align}",
                            layout.size()
                        );
                        std::ptr::write_bytes(q, 0xA5, new_size);
                        p = q;
                        layout = Layout::from_size_align(new_size, align).unwrap();
                    }
                    held.push((p, layout));
                }
            }
            for (p, layout) in held {
                // SAFETY: allocated above with this layout.
                unsafe { a.dealloc(p, layout) };
            }
        }
    }

    #[test]
    fn zeroed_blocks_are_zero_even_where_a_freed_block_was() {
        let a = Mimalloc;
        for align in [1, 8, 16, 64] {
            for size in [16, 100, 1024, 1040, 5000, 70_000] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // SAFETY: size > 0; blocks are freed with the layout they were made with.
                unsafe {
                    let dirty = a.alloc(layout);
                    std::ptr::write_bytes(dirty, 0xFF, size);
                    a.dealloc(dirty, layout);
                    let p = a.alloc_zeroed(layout);
                    assert_eq!(p as usize % align, 0);
                    assert!(std::slice::from_raw_parts(p, size).iter().all(|b| *b == 0), "{size} at {align}");
                    a.dealloc(p, layout);
                }
            }
        }
    }
}
