//! What a worker can call: `roam.post_message` and the small `wasi_snapshot_preview1` subset
//! of the worker contract, answered without any file system, network or environment.
//!
//! Everything here runs on a guest's behalf with guest-chosen pointers, so every access to
//! linear memory is bounds-checked and answered with `EFAULT` (or a trap, for
//! `post_message`) rather than trusted.

use std::collections::VecDeque;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use wasmtime::{Caller, Linker, Memory, ResourceLimiter};

/// The wasi errno values the subset answers with.
mod errno {
    pub const SUCCESS: i32 = 0;
    pub const BADF: i32 = 8;
    pub const FAULT: i32 = 21;
    pub const INVAL: i32 = 28;
    pub const SPIPE: i32 = 70;
}

/// The wasi file type of a character device, what stdin/stdout/stderr look like.
const FILETYPE_CHARACTER_DEVICE: u8 = 2;

/// How many log lines a worker keeps for [`crate::Worker::take_log`].
const LOG_LINES_KEPT: usize = 256;
/// Longest log line kept; a longer one is cut.
const LOG_LINE_MAX: usize = 4096;

/// The state the host keeps for one worker inside its wasmtime `Store`.
pub(crate) struct Host {
    /// The worker's exported memory, set right after instantiation.
    pub memory: Option<Memory>,
    pub outbox: Outbox,
    pub clock: WorkerClock,
    pub limiter: Limiter,
    pub log: Log,
    /// Set for a worker restored post-copy whose memory was still arriving.
    pub post_copy: Option<crate::postcopy::PostCopyWatch>,
}

impl Host {
    pub fn new(limits: &crate::WorkerLimits, clock: WorkerClock) -> Self {
        Host {
            memory: None,
            outbox: Outbox {
                data: Vec::new(),
                bounds: Vec::new(),
                max_bytes: limits.max_reply_bytes,
                overflowed: false,
            },
            clock,
            limiter: Limiter {
                max_memory: limits.max_memory,
                max_table_elements: limits.max_table_elements,
                denied_memory: None,
            },
            log: Log::default(),
            post_copy: None,
        }
    }
}

/// The replies posted while handling the current message, stored back to back.
pub(crate) struct Outbox {
    pub data: Vec<u8>,
    pub bounds: Vec<(usize, usize)>,
    pub max_bytes: usize,
    pub overflowed: bool,
}

impl Outbox {
    pub fn clear(&mut self) {
        self.data.clear();
        self.bounds.clear();
        self.overflowed = false;
    }
}

/// The worker's monotonic clock: it starts at zero on the first start and continues from
/// the captured value after a restore, so it never goes back across a move.
#[derive(Clone, Copy, Debug)]
pub(crate) struct WorkerClock {
    origin: Instant,
    base_ns: u64,
}

impl WorkerClock {
    /// A clock that reads `base_ns` now and advances with the host's monotonic clock.
    pub fn starting_at(base_ns: u64) -> Self {
        WorkerClock {
            origin: Instant::now(),
            base_ns,
        }
    }

    pub fn now_ns(&self) -> u64 {
        let elapsed = u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX);
        self.base_ns.saturating_add(elapsed)
    }
}

/// Enforces the memory and table limits and remembers a denied growth so a trap can be
/// reported as "memory limit" rather than as an anonymous trap.
pub(crate) struct Limiter {
    pub max_memory: u64,
    pub max_table_elements: u64,
    pub denied_memory: Option<u64>,
}

/// The error a denied memory growth traps with.
#[derive(Debug, thiserror::Error)]
#[error("memory growth to {requested} bytes denied: the limit is {limit} bytes")]
pub(crate) struct MemoryLimitExceeded {
    pub requested: u64,
    pub limit: u64,
}

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        let desired = desired as u64;
        if desired > self.max_memory {
            self.denied_memory = Some(desired);
            // An error (rather than `Ok(false)`, which makes `memory.grow` return -1) traps at
            // the growth itself, so the failure names the real cause instead of whatever the
            // guest's allocator does when it runs out.
            return Err(wasmtime::Error::new(MemoryLimitExceeded {
                requested: desired,
                limit: self.max_memory,
            }));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired as u64 <= self.max_table_elements)
    }
}

/// The error `proc_exit` traps with.
#[derive(Debug, thiserror::Error)]
#[error("the worker called proc_exit({0})")]
pub(crate) struct WorkerExit(pub i32);

/// The error `post_message` traps with when replies exceed the limit.
#[derive(Debug, thiserror::Error)]
#[error("the worker posted more than {0} bytes of replies for one message")]
pub(crate) struct ReplyLimitExceeded(pub usize);

/// The error `post_message` traps with when the guest names bytes outside its memory.
#[derive(Debug, thiserror::Error)]
#[error("post_message named bytes outside the worker's memory (pointer {ptr:#x}, length {len})")]
pub(crate) struct PostOutOfBounds {
    ptr: u32,
    len: u32,
}

/// What the worker wrote to stdout and stderr, split into lines.
#[derive(Default)]
pub(crate) struct Log {
    partial: Vec<u8>,
    pub lines: VecDeque<String>,
}

impl Log {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b == b'\n' {
                self.finish_line();
            } else if self.partial.len() < LOG_LINE_MAX {
                self.partial.push(b);
            }
        }
    }

    fn finish_line(&mut self) {
        let line = String::from_utf8_lossy(&self.partial).into_owned();
        self.partial.clear();
        tracing::info!(target: "roam::worker", "{line}");
        if self.lines.len() == LOG_LINES_KEPT {
            self.lines.pop_front();
        }
        self.lines.push_back(line);
    }
}

fn memory_of(caller: &Caller<'_, Host>) -> Memory {
    caller
        .data()
        .memory
        .expect("the worker's memory is recorded right after instantiation")
}

/// A guest-named byte range, checked against the memory.
fn range(mem: &[u8], ptr: i32, len: u32) -> Option<std::ops::Range<usize>> {
    let start = ptr as u32 as usize;
    let end = start.checked_add(len as usize)?;
    (end <= mem.len()).then_some(start..end)
}

fn write_bytes(mem: &mut [u8], ptr: i32, bytes: &[u8]) -> Result<(), i32> {
    let r = range(mem, ptr, bytes.len() as u32).ok_or(errno::FAULT)?;
    mem[r].copy_from_slice(bytes);
    Ok(())
}

fn read_u32(mem: &[u8], ptr: u32) -> Result<u32, i32> {
    let r = range(mem, ptr as i32, 4).ok_or(errno::FAULT)?;
    Ok(u32::from_le_bytes(mem[r].try_into().expect("4 bytes")))
}

/// Runs a wasi call body that returns an errno, turning `Err(errno)` into that errno.
fn errno_of(result: Result<(), i32>) -> i32 {
    match result {
        Ok(()) => errno::SUCCESS,
        Err(e) => e,
    }
}

fn is_stdio(fd: i32) -> bool {
    (0..=2).contains(&fd)
}

/// Defines every import a worker may have. Modules are checked against the same list by
/// `roam-prepare`, so instantiation never meets an unknown import.
pub(crate) fn define_imports(linker: &mut Linker<Host>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "roam",
        "post_message",
        |mut caller: Caller<'_, Host>, ptr: i32, len: i32| -> wasmtime::Result<()> {
            let memory = memory_of(&caller);
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            let Some(r) = range(mem, ptr, len as u32) else {
                return Err(wasmtime::Error::new(PostOutOfBounds {
                    ptr: ptr as u32,
                    len: len as u32,
                }));
            };
            let outbox = &mut host.outbox;
            if outbox.data.len() + r.len() > outbox.max_bytes {
                outbox.overflowed = true;
                return Err(wasmtime::Error::new(ReplyLimitExceeded(outbox.max_bytes)));
            }
            let start = outbox.data.len();
            outbox.data.extend_from_slice(&mem[r]);
            outbox.bounds.push((start, outbox.data.len()));
            Ok(())
        },
    )?;

    const W: &str = "wasi_snapshot_preview1";

    linker.func_wrap(
        W,
        "fd_write",
        |mut caller: Caller<'_, Host>, fd: i32, iovs: i32, iovs_len: i32, nwritten: i32| -> i32 {
            let memory = memory_of(&caller);
            let (mem, host) = memory.data_and_store_mut(&mut caller);
            errno_of((|| {
                if fd != 1 && fd != 2 {
                    return Err(errno::BADF);
                }
                let mut total: u32 = 0;
                for i in 0..iovs_len as u32 {
                    let at = (iovs as u32).checked_add(i.checked_mul(8).ok_or(errno::FAULT)?);
                    let at = at.ok_or(errno::FAULT)?;
                    let buf = read_u32(mem, at)?;
                    let len = read_u32(mem, at.checked_add(4).ok_or(errno::FAULT)?)?;
                    let r = range(mem, buf as i32, len).ok_or(errno::FAULT)?;
                    host.log.write(&mem[r]);
                    total = total.saturating_add(len);
                }
                write_bytes(mem, nwritten, &total.to_le_bytes())
            })())
        },
    )?;

    linker.func_wrap(
        W,
        "fd_read",
        |mut caller: Caller<'_, Host>, fd: i32, _iovs: i32, _iovs_len: i32, nread: i32| -> i32 {
            if fd != 0 {
                return errno::BADF;
            }
            // stdin is always at its end.
            let memory = memory_of(&caller);
            errno_of(write_bytes(
                memory.data_mut(&mut caller),
                nread,
                &0u32.to_le_bytes(),
            ))
        },
    )?;

    linker.func_wrap(W, "fd_close", |fd: i32| -> i32 {
        if is_stdio(fd) {
            errno::SUCCESS
        } else {
            errno::BADF
        }
    })?;

    linker.func_wrap(
        W,
        "fd_seek",
        |fd: i32, _offset: i64, _whence: i32, _newoffset: i32| -> i32 {
            if is_stdio(fd) {
                errno::SPIPE
            } else {
                errno::BADF
            }
        },
    )?;

    linker.func_wrap(
        W,
        "fd_fdstat_get",
        |mut caller: Caller<'_, Host>, fd: i32, out: i32| -> i32 {
            if !is_stdio(fd) {
                return errno::BADF;
            }
            // fdstat: filetype u8, flags u16 at 2, rights_base u64 at 8, rights_inheriting at 16.
            let mut stat = [0u8; 24];
            stat[0] = FILETYPE_CHARACTER_DEVICE;
            let rights: u64 = if fd == 0 { 1 << 1 } else { 1 << 6 }; // fd_read / fd_write
            stat[8..16].copy_from_slice(&rights.to_le_bytes());
            let memory = memory_of(&caller);
            errno_of(write_bytes(memory.data_mut(&mut caller), out, &stat))
        },
    )?;

    linker.func_wrap(W, "fd_fdstat_set_flags", |fd: i32, _flags: i32| -> i32 {
        if is_stdio(fd) {
            errno::SUCCESS
        } else {
            errno::BADF
        }
    })?;

    linker.func_wrap(
        W,
        "fd_filestat_get",
        |mut caller: Caller<'_, Host>, fd: i32, out: i32| -> i32 {
            if !is_stdio(fd) {
                return errno::BADF;
            }
            // filestat: dev, ino, filetype (u8 at 16), nlink, size, atim, mtim, ctim.
            let mut stat = [0u8; 64];
            stat[16] = FILETYPE_CHARACTER_DEVICE;
            let memory = memory_of(&caller);
            errno_of(write_bytes(memory.data_mut(&mut caller), out, &stat))
        },
    )?;

    // No preopened directories: wasi-libc stops looking at the first EBADF.
    linker.func_wrap(W, "fd_prestat_get", |_fd: i32, _out: i32| -> i32 {
        errno::BADF
    })?;
    linker.func_wrap(
        W,
        "fd_prestat_dir_name",
        |_fd: i32, _path: i32, _len: i32| -> i32 { errno::BADF },
    )?;

    linker.func_wrap(W, "fd_sync", |fd: i32| -> i32 {
        if is_stdio(fd) {
            errno::SUCCESS
        } else {
            errno::BADF
        }
    })?;

    linker.func_wrap(
        W,
        "clock_time_get",
        |mut caller: Caller<'_, Host>, id: i32, _precision: i64, out: i32| -> i32 {
            let now = match id {
                // realtime
                0 => SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
                    .unwrap_or(0),
                // monotonic, process and thread CPU time: the worker's own clock, which
                // continues across moves.
                1..=3 => caller.data().clock.now_ns(),
                _ => return errno::INVAL,
            };
            let memory = memory_of(&caller);
            errno_of(write_bytes(
                memory.data_mut(&mut caller),
                out,
                &now.to_le_bytes(),
            ))
        },
    )?;

    linker.func_wrap(
        W,
        "clock_res_get",
        |mut caller: Caller<'_, Host>, id: i32, out: i32| -> i32 {
            if !(0..=3).contains(&id) {
                return errno::INVAL;
            }
            let memory = memory_of(&caller);
            errno_of(write_bytes(
                memory.data_mut(&mut caller),
                out,
                &1u64.to_le_bytes(),
            ))
        },
    )?;

    linker.func_wrap(
        W,
        "random_get",
        |mut caller: Caller<'_, Host>, buf: i32, len: i32| -> i32 {
            let memory = memory_of(&caller);
            let mem = memory.data_mut(&mut caller);
            let Some(r) = range(mem, buf, len as u32) else {
                return errno::FAULT;
            };
            match getrandom::fill(&mut mem[r]) {
                Ok(()) => errno::SUCCESS,
                Err(_) => errno::INVAL,
            }
        },
    )?;

    linker.func_wrap(W, "proc_exit", |code: i32| -> wasmtime::Result<()> {
        Err(wasmtime::Error::new(WorkerExit(code)))
    })?;

    linker.func_wrap(W, "sched_yield", || -> i32 { errno::SUCCESS })?;

    // No arguments and no environment: write zero counts and sizes.
    for (get, sizes_get) in [
        ("args_get", "args_sizes_get"),
        ("environ_get", "environ_sizes_get"),
    ] {
        linker.func_wrap(W, get, |_list: i32, _buf: i32| -> i32 { errno::SUCCESS })?;
        linker.func_wrap(
            W,
            sizes_get,
            |mut caller: Caller<'_, Host>, count: i32, size: i32| -> i32 {
                let memory = memory_of(&caller);
                let mem = memory.data_mut(&mut caller);
                errno_of(
                    write_bytes(mem, count, &0u32.to_le_bytes())
                        .and_then(|()| write_bytes(mem, size, &0u32.to_le_bytes())),
                )
            },
        )?;
    }
    Ok(())
}
