//! Every worker's linear memory: one anonymous private mmap reservation per memory, laid out
//! the way wasmtime's own memories are (guard, reservation, guard), made accessible page by
//! page as the memory grows.
//!
//! Wasmtime can do this itself; the runtime does it so that post-copy can rely on what the
//! memory is: anonymous private pages (which userfaultfd's MISSING mode handles) at a base
//! that never moves, with nothing mapped from a file (wasmtime's copy-on-write memory
//! images are turned off for the engine, [`configure`]).

use std::cell::Cell;
use std::io;

use wasmtime::{Config, LinearMemory, MemoryCreator, MemoryType};

use super::uffd::page_size;

/// Sets up an engine's config so every memory comes from [`WorkerMemoryCreator`].
pub(crate) fn configure(config: &mut Config) {
    config
        .with_host_memory(std::sync::Arc::new(WorkerMemoryCreator))
        // A copy-on-write image maps the module's data from a file into the memory, which
        // userfaultfd cannot take over; without it the data segments are copied in at
        // instantiation, as the spec describes.
        .memory_init_cow(false);
}

thread_local! {
    /// Base address of the last memory created on this thread, so a restore can check that
    /// the memory it is about to hand to userfaultfd is one of these.
    static LAST_CREATED: Cell<usize> = const { Cell::new(0) };
}

/// The base address of the last memory [`WorkerMemoryCreator`] created on this thread.
pub(crate) fn last_created_base() -> usize {
    LAST_CREATED.with(Cell::get)
}

/// Creates [`WorkerMemory`]s for an engine.
pub(crate) struct WorkerMemoryCreator;

// SAFETY: every memory it creates is a fresh zeroed mapping with the reservation and guard
// wasmtime asks for (see `WorkerMemory::new`), never moved and never touched by the runtime
// other than through wasmtime or, for post-copy, by filling missing pages.
unsafe impl MemoryCreator for WorkerMemoryCreator {
    fn new_memory(
        &self,
        _ty: MemoryType,
        minimum: usize,
        maximum: Option<usize>,
        reserved_size_in_bytes: Option<usize>,
        guard_size_in_bytes: usize,
    ) -> Result<Box<dyn LinearMemory>, String> {
        let memory = WorkerMemory::new(
            minimum,
            maximum,
            reserved_size_in_bytes,
            guard_size_in_bytes,
        )
        .map_err(|e| format!("cannot reserve a worker memory: {e}"))?;
        LAST_CREATED.with(|last| last.set(memory.base));
        Ok(Box::new(memory))
    }
}

/// One linear memory: `[guard][reservation][guard]` reserved without access, of which the
/// first `accessible` bytes of the reservation are readable and writable.
pub(crate) struct WorkerMemory {
    /// Start and length of the whole mapping, guards included.
    mapping: usize,
    mapping_len: usize,
    /// Start of the linear memory.
    base: usize,
    /// Size of the linear memory in bytes.
    len: usize,
    /// Bytes from `base` that are mapped readable and writable (`len` rounded up to pages).
    accessible: usize,
    /// Bytes from `base` the memory may grow to without moving.
    reservation: usize,
    maximum: Option<usize>,
}

impl WorkerMemory {
    fn new(
        minimum: usize,
        maximum: Option<usize>,
        reservation: Option<usize>,
        guard: usize,
    ) -> io::Result<WorkerMemory> {
        let page = page_size();
        // Wasmtime always names a reservation; without one, reserve what the type allows.
        let reservation = reservation
            .unwrap_or_else(|| maximum.unwrap_or(minimum))
            .max(minimum)
            .checked_next_multiple_of(page)
            .ok_or_else(|| io::Error::other("reservation overflows"))?;
        let guard = guard
            .checked_next_multiple_of(page)
            .ok_or_else(|| io::Error::other("guard overflows"))?;
        // The guard before the memory mirrors wasmtime's default layout: compiled code does
        // not need it, but a stray negative offset then faults instead of reading a
        // neighbour.
        let mapping_len = guard
            .checked_add(reservation)
            .and_then(|n| n.checked_add(guard))
            .ok_or_else(|| io::Error::other("reservation and guards overflow"))?;
        // SAFETY: a new private anonymous mapping with no access, at an address the kernel
        // chooses; it aliases nothing.
        let mapping = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                mapping_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if mapping == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let mut memory = WorkerMemory {
            mapping: mapping as usize,
            mapping_len,
            base: mapping as usize + guard,
            len: 0,
            accessible: 0,
            reservation,
            maximum,
        };
        memory.make_accessible(minimum)?;
        memory.len = minimum;
        Ok(memory)
    }

    /// Makes the first `size` bytes (rounded up to pages) readable and writable.
    fn make_accessible(&mut self, size: usize) -> io::Result<()> {
        let want = size
            .checked_next_multiple_of(page_size())
            .ok_or_else(|| io::Error::other("size overflows"))?;
        if want <= self.accessible {
            return Ok(());
        }
        if want > self.reservation {
            return Err(io::Error::other(format!(
                "{size} bytes do not fit the reservation of {} bytes",
                self.reservation
            )));
        }
        // SAFETY: `[base + accessible, base + want)` lies inside this memory's own mapping
        // (want <= reservation) and is not accessible yet, so no reference into it exists.
        let rc = unsafe {
            libc::mprotect(
                (self.base + self.accessible) as *mut libc::c_void,
                want - self.accessible,
                libc::PROT_READ | libc::PROT_WRITE,
            )
        };
        if rc != 0 {
            return Err(io::Error::last_os_error());
        }
        self.accessible = want;
        Ok(())
    }
}

// SAFETY: `base` is the start of a readable and writable region of `len` bytes (it is made
// accessible before `len` grows), followed by the rest of the reservation and a guard of at
// least the size wasmtime asked for with no access; the base never changes.
unsafe impl LinearMemory for WorkerMemory {
    fn byte_size(&self) -> usize {
        self.len
    }

    fn byte_capacity(&self) -> usize {
        self.reservation
    }

    fn grow_to(&mut self, new_size: usize) -> wasmtime::Result<()> {
        if self.maximum.is_some_and(|max| new_size > max) {
            return Err(wasmtime::Error::msg(format!(
                "{new_size} bytes is over the memory's maximum"
            )));
        }
        self.make_accessible(new_size)?;
        self.len = new_size;
        Ok(())
    }

    fn as_ptr(&self) -> *mut u8 {
        self.base as *mut u8
    }
}

impl Drop for WorkerMemory {
    fn drop(&mut self) {
        // SAFETY: the mapping is this memory's own and wasmtime drops the memory only once
        // no instance can reach it.
        unsafe { libc::munmap(self.mapping as *mut libc::c_void, self.mapping_len) };
    }
}
