//! The guest SDK for Roam workers written in Rust.
//!
//! A Roam worker is a WebAssembly module that behaves like a Web Worker: it receives
//! messages, handles each one to completion, and posts replies. Roam can capture it
//! between two messages and resume it on another device, edge server or cloud node, so
//! everything the worker remembers lives in its linear memory; this crate keeps the
//! worker's state there and speaks the worker ABI (v1) for you.
//!
//! Write a type that implements [`Worker`], hand it to [`export_worker!`], and build the
//! crate as a `cdylib` for `wasm32-unknown-unknown`:
//!
//! ```
//! use roam_worker::{post_message, Worker};
//!
//! /// Replies to every message with its length as a little-endian u32.
//! struct Echo {
//!     handled: u64,
//! }
//!
//! impl Worker for Echo {
//!     fn init() -> Self {
//!         Echo { handled: 0 }
//!     }
//!
//!     fn on_message(&mut self, message: &[u8]) {
//!         self.handled += 1;
//!         post_message(&(message.len() as u32).to_le_bytes());
//!     }
//! }
//!
//! roam_worker::export_worker!(Echo);
//!
//! // Off wasm, replies go to a per-thread outbox, so the logic is testable natively.
//! # #[cfg(not(target_arch = "wasm32"))]
//! # {
//! let mut echo = Echo::init();
//! echo.on_message(b"hello");
//! assert_eq!(roam_worker::take_posted(), vec![5u32.to_le_bytes().to_vec()]);
//! # }
//! ```
//!
//! On `wasm32`, [`export_worker!`] emits the three exports the host calls:
//!
//! - `roam_init()`: constructs the worker with [`Worker::init`], once. The host calls it on
//!   the worker's first start only, never after a move: the state comes back with the
//!   memory.
//! - `roam_alloc(len: i32) -> i32`: a buffer for the next message. `roam_alloc(0)` still
//!   returns a real, non-null pointer; 0 means the allocation failed.
//! - `roam_on_message(ptr: i32, len: i32)`: hands the message to [`Worker::on_message`],
//!   then frees the buffer.
//!
//! [`post_message`] calls the host import `roam.post_message(ptr: i32, len: i32)`, which
//! copies the bytes at once. A panic in a worker traps the module (build workers with
//! `panic = "abort"`), so the host reports the failure instead of the worker running on
//! with half-updated state.

//!
//! # Freed memory
//!
//! With the `zero-freed` feature, on by default, wasm32 builds use [`ZeroFreed`] as their
//! global allocator: the standard allocator, except that blocks of at least
//! [`ZERO_FREED_MIN_SIZE`] bytes are zeroed as they are freed, so the memory a worker let
//! go of becomes zero chunks that a move does not carry. A worker that wants its own
//! global allocator turns the feature off (`default-features = false`); it can still wrap
//! its allocator in [`ZeroFreed`]. Native builds always keep the platform's allocator.

#![deny(missing_docs)]

mod alloc;

pub use alloc::{ZeroFreed, ZERO_FREED_MIN_SIZE};

#[cfg(not(target_arch = "wasm32"))]
use std::cell::RefCell;

#[cfg(all(target_arch = "wasm32", feature = "zero-freed"))]
#[global_allocator]
static ALLOCATOR: ZeroFreed = ZeroFreed::new(std::alloc::System);

/// A worker: state built once, then one call per message from the application.
///
/// The state is everything the worker needs between messages. It stays in the module's
/// linear memory, which is what Roam captures and moves, so plain Rust data structures
/// survive a move without any serialisation.
pub trait Worker: Sized + 'static {
    /// Builds the worker's state. Called once, before the first message.
    fn init() -> Self;

    /// Handles one message from the application. Reply with [`post_message`], as many
    /// times as needed (or not at all).
    fn on_message(&mut self, message: &[u8]);
}

/// Sends `bytes` to the application, like `postMessage` from a Web Worker.
///
/// The host copies the bytes before this returns, so the buffer can be reused right away.
/// Off wasm32 the bytes go to a per-thread outbox that `take_posted` drains.
pub fn post_message(bytes: &[u8]) {
    #[cfg(target_arch = "wasm32")]
    {
        // The ABI passes lengths as i32; wasm32 memories never exceed 4 GiB and the host
        // reads both values as unsigned.
        let (ptr, len) = (bytes.as_ptr() as usize as i32, bytes.len() as i32);
        // SAFETY: `ptr..ptr + len` is a live, initialised slice of this module's memory for
        // the whole call, and the host only reads it (it copies the bytes out at once).
        unsafe { host::post_message(ptr, len) }
    }
    #[cfg(not(target_arch = "wasm32"))]
    OUTBOX.with(|outbox| outbox.borrow_mut().push(bytes.to_vec()));
}

/// Takes every message posted on this thread since the last call, oldest first.
///
/// Only off wasm32, where [`post_message`] has no host to talk to: this is how native
/// tests read a worker's replies.
#[cfg(not(target_arch = "wasm32"))]
pub fn take_posted() -> Vec<Vec<u8>> {
    OUTBOX.with(|outbox| std::mem::take(&mut *outbox.borrow_mut()))
}

#[cfg(not(target_arch = "wasm32"))]
thread_local! {
    static OUTBOX: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

#[cfg(target_arch = "wasm32")]
mod host {
    #[link(wasm_import_module = "roam")]
    unsafe extern "C" {
        /// `roam.post_message(ptr, len)`: the host copies `len` bytes at `ptr`.
        #[link_name = "post_message"]
        pub fn post_message(ptr: i32, len: i32);
    }
}

/// Exports a [`Worker`] type as the module's worker: `roam_init`, `roam_alloc` and
/// `roam_on_message`.
///
/// Use it once per module, at the crate root of a `cdylib`. Off wasm32 it only checks that
/// the type implements [`Worker`], so the same crate also builds and tests natively.
#[macro_export]
macro_rules! export_worker {
    ($worker:ty) => {
        const _: () = {
            fn __roam_assert_worker<W: $crate::Worker>() {}
            let _ = __roam_assert_worker::<$worker>;
        };

        #[cfg(target_arch = "wasm32")]
        const _: () = {
            /// ABI v1: builds the worker state once, on the worker's first start.
            // SAFETY: the worker ABI reserves this name; one `export_worker!` per module
            // means nothing else defines the symbol.
            #[unsafe(no_mangle)]
            pub extern "C" fn roam_init() {
                $crate::__private::init::<$worker>();
            }

            /// ABI v1: a buffer the host fills with the next message.
            // SAFETY: as for `roam_init`.
            #[unsafe(no_mangle)]
            pub extern "C" fn roam_alloc(len: i32) -> i32 {
                if len < 0 {
                    return 0;
                }
                $crate::__private::alloc_message(len as usize) as usize as i32
            }

            /// ABI v1: handles the message the host wrote into a `roam_alloc` buffer.
            // SAFETY: as for `roam_init`.
            #[unsafe(no_mangle)]
            pub extern "C" fn roam_on_message(ptr: i32, len: i32) {
                // SAFETY: the ABI has the host pass the pointer `roam_alloc(len)` returned
                // with the same `len`, after writing `len` bytes there; the buffer is ours.
                unsafe {
                    $crate::__private::deliver::<$worker>(
                        ptr as u32 as usize as *mut u8,
                        len as u32 as usize,
                    )
                }
            }
        };
    };
}

/// Support for [`export_worker!`]; not part of the public API.
#[doc(hidden)]
pub mod __private {
    use super::Worker;
    use std::alloc::Layout;
    use std::cell::RefCell;

    /// The worker behind a vtable, so the slot below needs no type parameter.
    trait Handler {
        fn handle(&mut self, message: &[u8]);
    }

    impl<W: Worker> Handler for W {
        fn handle(&mut self, message: &[u8]) {
            self.on_message(message);
        }
    }

    // On wasm32 without threads this is a plain static in linear memory: exactly the state
    // a snapshot carries. The RefCell turns a re-entrant call (a host calling back into
    // the worker from `post_message`) into a trap instead of two `&mut` to the state.
    thread_local! {
        static WORKER: RefCell<Option<Box<dyn Handler>>> = const { RefCell::new(None) };
    }

    /// Builds the worker unless it already exists (a second `roam_init` changes nothing).
    pub fn init<W: Worker>() {
        WORKER.with(|slot| {
            let mut slot = slot.borrow_mut();
            if slot.is_none() {
                *slot = Some(Box::new(W::init()));
            }
        });
    }

    /// The layout of a message buffer of `len` bytes: at least one byte, so even an empty
    /// message has a real, non-null buffer and alloc and free agree on the size.
    fn message_layout(len: usize) -> Option<Layout> {
        Layout::from_size_align(len.max(1), 1).ok()
    }

    /// Allocates a buffer for a message of `len` bytes; null when memory is exhausted.
    pub fn alloc_message(len: usize) -> *mut u8 {
        match message_layout(len) {
            // SAFETY: the layout has a non-zero size.
            Some(layout) => unsafe { std::alloc::alloc(layout) },
            None => std::ptr::null_mut(),
        }
    }

    /// Hands the message in `ptr..ptr + len` to the worker (built first if the host skipped
    /// `roam_init`), then frees the buffer.
    ///
    /// # Safety
    ///
    /// `ptr` must come from `alloc_message(len)` with the same `len`, hold `len`
    /// initialised bytes, and not be used again by the caller.
    pub unsafe fn deliver<W: Worker>(ptr: *mut u8, len: usize) {
        // SAFETY: the caller guarantees `ptr` holds `len` initialised bytes that nobody
        // else touches until we free them below.
        let message = unsafe { std::slice::from_raw_parts(ptr, len) };
        WORKER.with(|slot| {
            let mut slot = slot.borrow_mut();
            let worker = slot.get_or_insert_with(|| Box::new(W::init()));
            worker.handle(message);
        });
        if let Some(layout) = message_layout(len) {
            // SAFETY: `ptr` was allocated by `alloc_message(len)`, i.e. with this layout,
            // and the message slice is no longer used.
            unsafe { std::alloc::dealloc(ptr, layout) }
        }
    }

    #[cfg(all(test, not(target_arch = "wasm32")))]
    mod tests {
        use super::*;
        use crate::{post_message, take_posted};

        struct Tally {
            messages: u32,
            bytes: usize,
        }

        impl Worker for Tally {
            fn init() -> Self {
                post_message(b"ready");
                Tally {
                    messages: 0,
                    bytes: 0,
                }
            }

            fn on_message(&mut self, message: &[u8]) {
                self.messages += 1;
                self.bytes += message.len();
                let mut reply = self.messages.to_le_bytes().to_vec();
                reply.extend_from_slice(&(self.bytes as u32).to_le_bytes());
                post_message(&reply);
            }
        }

        fn send(message: &[u8]) {
            let ptr = alloc_message(message.len());
            assert!(!ptr.is_null());
            // SAFETY: `ptr` has room for `message.len()` bytes (at least one).
            unsafe {
                std::ptr::copy_nonoverlapping(message.as_ptr(), ptr, message.len());
                deliver::<Tally>(ptr, message.len());
            }
        }

        fn reply(messages: u32, bytes: u32) -> Vec<u8> {
            [messages.to_le_bytes(), bytes.to_le_bytes()].concat()
        }

        #[test]
        fn state_persists_across_messages_and_init_runs_once() {
            init::<Tally>();
            init::<Tally>();
            send(b"abc");
            send(b"");
            send(&[7; 1000]);
            assert_eq!(
                take_posted(),
                vec![b"ready".to_vec(), reply(1, 3), reply(2, 3), reply(3, 1003)]
            );
            assert!(take_posted().is_empty());
        }

        #[test]
        fn a_message_before_init_builds_the_worker_first() {
            send(b"xy");
            assert_eq!(take_posted(), vec![b"ready".to_vec(), reply(1, 2)]);
        }

        #[test]
        fn an_empty_message_gets_a_real_buffer() {
            let ptr = alloc_message(0);
            assert!(!ptr.is_null());
            // SAFETY: `ptr` came from `alloc_message(0)`.
            unsafe { deliver::<Tally>(ptr, 0) };
            assert_eq!(take_posted(), vec![b"ready".to_vec(), reply(1, 0)]);
        }
    }
}
