//! The worker's heap allocator: the standard one, except that large blocks are zeroed as
//! they are freed.
//!
//! A snapshot carries linear memory as 4 KiB chunks and leaves all-zero chunks out, but a
//! freed heap block keeps its old bytes: a worker that decoded an 8 MB image and dropped it
//! would otherwise carry those 8 MB on every move. [`ZeroFreed`] writes zeros over every
//! block of at least [`ZERO_FREED_MIN_SIZE`] bytes before handing it back, so that memory
//! becomes zero chunks again. Smaller blocks are left alone: a block under 4 KiB cannot
//! cover a whole chunk, and zeroing the many small blocks a worker churns through costs
//! time for almost no bytes.
//!
//! With the `zero-freed` feature (on by default) the crate installs it as the global
//! allocator of wasm32 builds; native builds keep the platform's allocator.

use std::alloc::{GlobalAlloc, Layout, System};

/// The smallest block [`ZeroFreed`] zeroes when it is freed, in bytes.
///
/// Measured on the example workers with 4, 16 and 64 KiB (`docs/worker-abi.md`): the
/// snapshots came out within 0.07 MiB of each other and the handler times within the
/// noise, so the middle one keeps nearly all of the saving while zeroing fewer blocks.
pub const ZERO_FREED_MIN_SIZE: usize = 16 * 1024;

/// A global allocator that zeroes large blocks when they are freed, so that freed heap
/// memory costs nothing in a snapshot.
///
/// It wraps another allocator (the standard [`System`] one by default: dlmalloc on
/// `wasm32-unknown-unknown`) and changes two things, both only for blocks of at least
/// the threshold ([`ZERO_FREED_MIN_SIZE`] unless set with [`ZeroFreed::with_min_size`]):
///
/// - `dealloc` zeroes the block, then frees it;
/// - `realloc` allocates the new block, copies, zeroes and frees the old one, because the
///   inner allocator's own `realloc` would free a moved block with its bytes still there.
///
/// ```
/// use roam_worker::ZeroFreed;
/// use std::alloc::System;
///
/// // What the `zero-freed` feature installs on wasm32, with another threshold: a worker
/// // that turns the feature off can install it itself, around any allocator.
/// #[global_allocator]
/// static ALLOCATOR: ZeroFreed = ZeroFreed::with_min_size(System, 64 * 1024);
///
/// fn main() {
///     let image = vec![0x7Fu8; 8 << 20];
///     drop(image); // its 8 MiB are zeros again
///     assert_eq!(ALLOCATOR.min_size(), 64 * 1024);
/// }
/// ```
#[derive(Debug, Clone, Copy)]
pub struct ZeroFreed<A = System> {
    inner: A,
    min_size: usize,
}

impl<A> ZeroFreed<A> {
    /// Wraps `inner`, zeroing freed blocks of at least [`ZERO_FREED_MIN_SIZE`] bytes.
    pub const fn new(inner: A) -> Self {
        Self::with_min_size(inner, ZERO_FREED_MIN_SIZE)
    }

    /// Wraps `inner`, zeroing freed blocks of at least `min_size` bytes.
    pub const fn with_min_size(inner: A, min_size: usize) -> Self {
        ZeroFreed { inner, min_size }
    }

    /// The smallest block this allocator zeroes when it is freed, in bytes.
    pub const fn min_size(&self) -> usize {
        self.min_size
    }
}

impl Default for ZeroFreed {
    fn default() -> Self {
        ZeroFreed::new(System)
    }
}

// SAFETY: every method hands the request to `inner`, which upholds `GlobalAlloc`'s
// contract; the zeroing only writes inside blocks the caller is giving up, before `inner`
// reclaims them, and `realloc` returns either null (the old block untouched) or a block of
// the new layout holding the old contents.
unsafe impl<A: GlobalAlloc> GlobalAlloc for ZeroFreed<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller's guarantees for `layout` carry over.
        unsafe { self.inner.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: as for `alloc`.
        unsafe { self.inner.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= self.min_size {
            // SAFETY: the caller's guarantees carry over.
            unsafe { self.zero_and_free(ptr, layout) }
        } else {
            // SAFETY: `ptr` came from `inner` (every allocation here does) with `layout`.
            unsafe { self.inner.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if layout.size() >= self.min_size {
            // SAFETY: the caller's guarantees carry over.
            unsafe { self.move_and_free(ptr, layout, new_size) }
        } else {
            // SAFETY: the caller's guarantees carry over; a small block moved by `inner`
            // leaves too few bytes behind to matter.
            unsafe { self.inner.realloc(ptr, layout, new_size) }
        }
    }
}

// The large-block paths stay out of line: every allocation site in a worker inlines the
// allocator's entry points, and these would add their code to each.
impl<A: GlobalAlloc> ZeroFreed<A> {
    /// Zeroes the block and frees it.
    ///
    /// # Safety
    ///
    /// As for [`GlobalAlloc::dealloc`].
    #[inline(never)]
    unsafe fn zero_and_free(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller owns the `layout.size()` bytes at `ptr` (they came from this
        // allocator with this layout) and gives them up with this call; `inner` made them.
        unsafe {
            ptr.write_bytes(0, layout.size());
            self.inner.dealloc(ptr, layout);
        }
    }

    /// Moves the block to a new one of `new_size` bytes, then zeroes and frees the old.
    ///
    /// # Safety
    ///
    /// As for [`GlobalAlloc::realloc`].
    #[inline(never)]
    unsafe fn move_and_free(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: the caller guarantees that `new_size`, rounded up to `layout.align()`,
        // does not overflow `isize`, which is what `Layout` requires.
        let new_layout = unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
        // SAFETY: `new_size` is non-zero (the caller guarantees it).
        let new_ptr = unsafe { self.inner.alloc(new_layout) };
        if !new_ptr.is_null() {
            // SAFETY: both blocks are live and distinct, and each holds at least the bytes
            // copied; the old block is then given up as in `dealloc`.
            unsafe {
                std::ptr::copy_nonoverlapping(ptr, new_ptr, layout.size().min(new_size));
                self.zero_and_free(ptr, layout);
            }
        }
        new_ptr
    }
}

#[cfg(all(test, not(target_arch = "wasm32")))]
mod tests {
    use super::*;
    use std::cell::RefCell;

    /// What the inner allocator saw of each block freed through it.
    #[derive(Debug, PartialEq)]
    struct Freed {
        size: usize,
        all_zero: bool,
    }

    thread_local! {
        static FREED: RefCell<Vec<Freed>> = const { RefCell::new(Vec::new()) };
    }

    /// The system allocator, noting whether each block it gets back is all zeros.
    struct Witness;

    // SAFETY: forwards to `System`; `dealloc` only reads the block before freeing it.
    unsafe impl GlobalAlloc for Witness {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: forwarded as is.
            unsafe { System.alloc(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the block is live until `System.dealloc` below; its bytes were
            // all written by the tests before it was freed.
            let bytes = unsafe { std::slice::from_raw_parts(ptr, layout.size()) };
            let freed = Freed {
                size: layout.size(),
                all_zero: bytes.iter().all(|&b| b == 0),
            };
            FREED.with(|f| f.borrow_mut().push(freed));
            // SAFETY: forwarded as is.
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    fn take_freed() -> Vec<Freed> {
        FREED.with(|f| std::mem::take(&mut *f.borrow_mut()))
    }

    const ALLOCATOR: ZeroFreed<Witness> = ZeroFreed::with_min_size(Witness, 4096);

    /// Allocates `size` bytes filled with `fill`.
    fn filled(size: usize, fill: u8) -> (*mut u8, Layout) {
        let layout = Layout::from_size_align(size, 8).unwrap();
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { ALLOCATOR.alloc(layout) };
        assert!(!ptr.is_null());
        // SAFETY: `ptr` holds `size` bytes.
        unsafe { ptr.write_bytes(fill, size) };
        (ptr, layout)
    }

    #[test]
    fn large_blocks_are_zero_when_freed_and_small_ones_untouched() {
        let (large, large_layout) = filled(4096, 0xAB);
        let (small, small_layout) = filled(4095, 0xCD);
        // SAFETY: both came from `ALLOCATOR` with these layouts.
        unsafe {
            ALLOCATOR.dealloc(large, large_layout);
            ALLOCATOR.dealloc(small, small_layout);
        }
        assert_eq!(
            take_freed(),
            vec![
                Freed {
                    size: 4096,
                    all_zero: true
                },
                Freed {
                    size: 4095,
                    all_zero: false
                }
            ]
        );
    }

    #[test]
    fn realloc_of_a_large_block_keeps_its_contents_and_zeroes_the_old_one() {
        for new_size in [100_000, 5000, 100] {
            let (ptr, layout) = filled(10_000, 0);
            // SAFETY: `ptr` holds 10,000 bytes.
            let old = unsafe { std::slice::from_raw_parts_mut(ptr, 10_000) };
            for (i, b) in old.iter_mut().enumerate() {
                *b = (i % 251) as u8 + 1;
            }
            // SAFETY: `ptr` came from `ALLOCATOR` with `layout`; the new size is non-zero.
            let moved = unsafe { ALLOCATOR.realloc(ptr, layout, new_size) };
            assert!(!moved.is_null());
            let kept = new_size.min(10_000);
            // SAFETY: the new block holds `new_size >= kept` bytes, the first `kept` copied.
            let contents = unsafe { std::slice::from_raw_parts(moved, kept) };
            assert!(contents
                .iter()
                .enumerate()
                .all(|(i, &b)| b == (i % 251) as u8 + 1));
            assert_eq!(
                take_freed(),
                vec![Freed {
                    size: 10_000,
                    all_zero: true
                }]
            );
            // SAFETY: `moved` is the block `realloc` returned, with the new size.
            unsafe {
                ALLOCATOR.dealloc(
                    moved,
                    Layout::from_size_align(new_size, layout.align()).unwrap(),
                )
            };
            take_freed();
        }
    }

    #[test]
    fn realloc_of_a_small_block_goes_to_the_inner_allocator() {
        let (ptr, layout) = filled(64, 7);
        // SAFETY: `ptr` came from `ALLOCATOR` with `layout`. `Witness` has no `realloc` of
        // its own, so the default one allocates, copies and frees through `dealloc`.
        let moved = unsafe { ALLOCATOR.realloc(ptr, layout, 128) };
        // SAFETY: the first 64 bytes of the new block are the old contents.
        assert_eq!(unsafe { std::slice::from_raw_parts(moved, 64) }, &[7; 64]);
        assert_eq!(
            take_freed(),
            vec![Freed {
                size: 64,
                all_zero: false
            }]
        );
        // SAFETY: `moved` came from `ALLOCATOR` with 128 bytes.
        unsafe { ALLOCATOR.dealloc(moved, Layout::from_size_align(128, 8).unwrap()) };
        take_freed();
    }
}
