//! A running worker: message delivery, capture between messages, restore into a fresh
//! instance.
//!
//! A worker is only ever captured between two `roam_on_message` calls — the event-loop idle
//! point of a Web Worker — so no wasm stack is captured: memory, mutable globals, tables,
//! the clock and the message count are the whole state.

use std::collections::HashMap;
use std::sync::Arc;

use roam_snapshot::{
    ChunkBody, ChunkHash, Delta, GlobalValue, Manifest, Snapshot, State, TableState,
};
use wasmtime::{
    Func, Global, Instance, Memory, Ref, Store, Table, Trap, TypedFunc, UpdateDeadline, Val,
};

use crate::error::{
    CaptureError, DeliverError, Failure, PostCopyRestoreError, RestoreError, StartError,
    WaitCompleteError,
};
use crate::host::{
    Host, MemoryLimitExceeded, PostOutOfBounds, ReplyLimitExceeded, WorkerClock, WorkerExit,
};
use crate::module::{Runtime, WorkerModule};
use crate::postcopy::{self, Pager, PostCopyMemory, PostCopyRegion, PostCopyWatch, StateLostTrap};
use crate::WorkerLimits;

const PAGE: u64 = 65536;

/// A live worker in its own wasmtime store.
pub struct Worker {
    runtime: Runtime,
    module: Arc<WorkerModule>,
    /// Set while (and after) the worker's memory arrives post-copy. Declared before the
    /// store so that it is dropped first: paging must end before the memory is unmapped.
    post_copy: Option<PostCopyMemory>,
    store: Store<Host>,
    instance: Instance,
    memory: Memory,
    alloc: TypedFunc<i32, i32>,
    on_message: TypedFunc<(i32, i32), ()>,
    /// The module's mutable globals, in index order (the snapshot's order).
    globals: Vec<(u32, Global)>,
    tables: Vec<Table>,
    /// Every function that can sit in a table, by function index, and the reverse map from
    /// its raw funcref pointer (stable for the life of the store) to that index.
    table_funcs: HashMap<u32, Func>,
    func_index_by_ref: HashMap<usize, u32>,
    last_seq: u64,
    failure: Option<Failure>,
}

impl Worker {
    pub(crate) fn start(runtime: Runtime, module: Arc<WorkerModule>) -> Result<Worker, StartError> {
        let mut worker = Worker::instantiate(runtime, module, WorkerClock::starting_at(0))
            .map_err(StartError::Instantiate)?;
        let info = worker.module.info();
        let mut inits = Vec::new();
        if info.has_initialize {
            inits.push("_initialize");
        }
        if info.has_init {
            inits.push("roam_init");
        }
        for name in inits {
            let init = worker
                .instance
                .get_typed_func::<(), ()>(&mut worker.store, name)
                .map_err(|e| StartError::Instantiate(e.to_string()))?;
            worker.arm_deadline();
            if let Err(e) = init.call(&mut worker.store, ()) {
                return Err(StartError::Init(worker.fail(e)));
            }
        }
        Ok(worker)
    }

    pub(crate) fn restore(
        runtime: Runtime,
        module: Arc<WorkerModule>,
        snapshot: &Snapshot,
    ) -> Result<Worker, RestoreError> {
        let limits = runtime.shared.config.limits.clone();
        snapshot.check_against(module.layout(), limits.max_memory)?;
        let manifest = &snapshot.manifest;
        let mut worker = Worker::instantiate(
            runtime,
            module.clone(),
            WorkerClock::starting_at(manifest.clock_ns),
        )
        .map_err(RestoreError::Instantiate)?;

        worker.grow_to(manifest).map_err(RestoreError::State)?;
        snapshot.restore_memory(
            worker.memory.data_mut(&mut worker.store),
            &module.info().data_ranges,
        )?;
        worker
            .set_globals_and_tables(manifest)
            .map_err(RestoreError::State)?;
        Ok(worker)
    }

    pub(crate) fn restore_post_copy(
        runtime: Runtime,
        module: Arc<WorkerModule>,
        manifest: &Manifest,
        hot: &[ChunkBody],
        fetch: postcopy::FetchChunk,
    ) -> Result<(Worker, Pager), PostCopyRestoreError> {
        postcopy::post_copy_available()?;
        let limits = runtime.shared.config.limits.clone();
        manifest.check_against(module.layout(), limits.max_memory)?;
        let chunk_size = manifest.chunk_size as usize;
        let page_size = postcopy::page_size();
        if !chunk_size.is_multiple_of(page_size) {
            return Err(PostCopyRestoreError::ChunkSmallerThanPage {
                chunk_size: manifest.chunk_size,
                page_size,
            });
        }
        let mut worker =
            Worker::instantiate(runtime, module, WorkerClock::starting_at(manifest.clock_ns))
                .map_err(PostCopyRestoreError::Instantiate)?;
        worker
            .grow_to(manifest)
            .map_err(PostCopyRestoreError::State)?;

        let base = worker.memory.data_ptr(&worker.store) as usize;
        let len = worker.memory.data_size(&worker.store);
        if base != postcopy::last_created_base() {
            return Err(PostCopyRestoreError::Paging(
                "the worker's memory was not created by the runtime's memory creator".into(),
            ));
        }
        // SAFETY: `[base, base + len)` is the worker's whole linear memory, readable and
        // writable, and nothing refers into it (no slice of it is alive): the first call
        // keeps the kernel from backing it with huge pages (which would map zeros over chunks
        // that have not arrived), the second drops every page the instantiation wrote (data
        // segments), so that the memory reads as zero until the restore writes it.
        let advised = unsafe {
            let start = base as *mut libc::c_void;
            libc::madvise(start, len, libc::MADV_NOHUGEPAGE) == 0
                && libc::madvise(start, len, libc::MADV_DONTNEED) == 0
        };
        if !advised {
            return Err(PostCopyRestoreError::Paging(format!(
                "cannot prepare the memory: {}",
                std::io::Error::last_os_error()
            )));
        }

        // The hot chunks are written straight into the memory before it is registered:
        // faster than mapping them one by one, and what is written is never missing.
        let hot: HashMap<ChunkHash, &ChunkBody> = hot.iter().map(|b| (b.hash(), b)).collect();
        let memory = worker.memory.data_mut(&mut worker.store);
        let mut present = vec![false; len / chunk_size];
        let mut written: HashMap<ChunkHash, usize> = HashMap::new();
        let mut hot_chunks = 0;
        for chunk in &manifest.chunks {
            let Some(body) = hot.get(&chunk.hash) else {
                continue;
            };
            let start = chunk.index as usize * chunk_size;
            match written.get(&chunk.hash) {
                Some(&from) => memory.copy_within(from..from + chunk_size, start),
                None => {
                    body.decompress_into(&mut memory[start..start + chunk_size])?;
                    written.insert(chunk.hash, start);
                }
            }
            present[chunk.index as usize] = true;
            hot_chunks += 1;
        }

        worker
            .set_globals_and_tables(manifest)
            .map_err(PostCopyRestoreError::State)?;

        let region = PostCopyRegion {
            base,
            len,
            chunk_size,
            chunks: &manifest.chunks,
            present,
            hot_chunks,
        };
        let (pager, paging) = region
            .start(&worker.runtime.shared.engine, fetch)
            .map_err(PostCopyRestoreError::Paging)?;
        if let Some(paging) = paging {
            worker.store.data_mut().post_copy = Some(PostCopyWatch {
                shared: paging.shared.clone(),
                ticks_left: 0,
            });
            // A post-copy worker counts its time budget itself, one tick at a time, so that a
            // lost source stops it at the next tick (or at once, see `Pager::abandon`) and the
            // time it spends blocked on faults is not counted against it.
            worker.store.epoch_deadline_callback(|mut store| {
                let watch = store
                    .data_mut()
                    .post_copy
                    .as_mut()
                    .expect("a post-copy worker keeps its watch");
                if watch.shared.is_lost() {
                    return Err(wasmtime::Error::new(StateLostTrap));
                }
                if watch.ticks_left <= 1 {
                    return Err(wasmtime::Error::new(Trap::Interrupt));
                }
                watch.ticks_left -= 1;
                Ok(UpdateDeadline::Continue(1))
            });
            worker.post_copy = Some(paging);
        }
        Ok((worker, pager))
    }

    /// Grows a fresh instance's memory to the snapshot's size.
    fn grow_to(&mut self, manifest: &Manifest) -> Result<(), String> {
        let pages = manifest.memory_size / PAGE;
        let current = self.memory.size(&self.store);
        if pages > current {
            self.memory
                .grow(&mut self.store, pages - current)
                .map_err(|e| format!("cannot grow memory: {e}"))?;
        } else if pages < current {
            // check_against refuses a memory below the module's minimum, and a fresh instance
            // has exactly the minimum.
            return Err(format!(
                "snapshot memory of {pages} pages is below the fresh instance's {current}"
            ));
        }
        Ok(())
    }

    /// Sets every mutable global and table of a fresh instance from the snapshot.
    fn set_globals_and_tables(&mut self, manifest: &Manifest) -> Result<(), String> {
        for ((index, global), value) in self.globals.iter().zip(&manifest.globals) {
            let val = match *value {
                GlobalValue::I32(v) => Val::I32(v),
                GlobalValue::I64(v) => Val::I64(v),
                GlobalValue::F32(v) => Val::F32(v),
                GlobalValue::F64(v) => Val::F64(v),
                GlobalValue::V128(v) => Val::V128(v.into()),
                GlobalValue::FuncRef(f) => Val::FuncRef(f.map(|i| self.table_func(i)).transpose()?),
            };
            global
                .set(&mut self.store, val)
                .map_err(|e| format!("cannot set global {index}: {e}"))?;
        }

        for (t, (table, state)) in self.tables.iter().zip(&manifest.tables).enumerate() {
            let want = state.elements.len() as u64;
            let have = table.size(&self.store);
            if want > have {
                table
                    .grow(&mut self.store, want - have, Ref::Func(None))
                    .map_err(|e| format!("cannot grow table {t}: {e}"))?;
            }
            for (i, element) in state.elements.iter().enumerate() {
                let func = element.map(|f| self.table_func(f)).transpose()?;
                table
                    .set(&mut self.store, i as u64, Ref::Func(func))
                    .map_err(|e| format!("cannot set table {t}: {e}"))?;
            }
        }
        self.last_seq = manifest.last_seq;
        Ok(())
    }

    fn table_func(&self, index: u32) -> Result<Func, String> {
        self.table_funcs.get(&index).copied().ok_or_else(|| {
            format!("function {index} cannot be placed in a table: the module never puts it in one")
        })
    }

    fn instantiate(
        runtime: Runtime,
        module: Arc<WorkerModule>,
        clock: WorkerClock,
    ) -> Result<Worker, String> {
        let limits = &runtime.shared.config.limits;
        let mut store = Store::new(&runtime.shared.engine, Host::new(limits, clock));
        store.limiter(|host| &mut host.limiter);
        // Instantiation runs data initialisers and a start function: give it the same
        // time limit as a message.
        store.set_epoch_deadline(deadline_ticks(limits, &runtime));
        store.epoch_deadline_trap();
        let instance = module
            .pre
            .instantiate(&mut store)
            .map_err(|e| e.to_string())?;
        let memory = instance
            .get_memory(&mut store, "memory")
            .ok_or("the module exports no memory named `memory`")?;
        store.data_mut().memory = Some(memory);
        let alloc = instance
            .get_typed_func::<i32, i32>(&mut store, "roam_alloc")
            .map_err(|e| format!("roam_alloc: {e}"))?;
        let on_message = instance
            .get_typed_func::<(i32, i32), ()>(&mut store, "roam_on_message")
            .map_err(|e| format!("roam_on_message: {e}"))?;
        let info = module.info();
        let globals = info
            .globals
            .iter()
            .map(|g| {
                instance
                    .get_global(&mut store, &g.export)
                    .map(|global| (g.index, global))
                    .ok_or_else(|| format!("prepared module lacks export {}", g.export))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let tables = info
            .tables
            .iter()
            .map(|t| {
                instance
                    .get_table(&mut store, &t.export)
                    .ok_or_else(|| format!("prepared module lacks export {}", t.export))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let mut table_funcs = HashMap::with_capacity(info.table_funcs.len());
        let mut func_index_by_ref = HashMap::with_capacity(info.table_funcs.len());
        for f in &info.table_funcs {
            let func = instance
                .get_func(&mut store, &f.export)
                .ok_or_else(|| format!("prepared module lacks export {}", f.export))?;
            func_index_by_ref.insert(func.to_raw(&mut store) as usize, f.index);
            table_funcs.insert(f.index, func);
        }
        Ok(Worker {
            runtime,
            module,
            post_copy: None,
            store,
            instance,
            memory,
            alloc,
            on_message,
            globals,
            tables,
            table_funcs,
            func_index_by_ref,
            last_seq: 0,
            failure: None,
        })
    }

    /// Delivers one message and returns the replies the worker posted while handling it.
    pub fn deliver(&mut self, message: &[u8]) -> Result<Replies<'_>, DeliverError> {
        if let Some(failure) = &self.failure {
            return Err(DeliverError::AlreadyFailed(failure.clone()));
        }
        if let Some(failure) = self.check_state_lost() {
            return Err(DeliverError::Failed(failure));
        }
        let len = i32::try_from(message.len())
            .map_err(|_| DeliverError::TooLarge { len: message.len() })?;
        self.store.data_mut().outbox.clear();
        self.arm_deadline();
        let ptr = match self.alloc.call(&mut self.store, len) {
            Ok(ptr) => ptr,
            Err(e) => return Err(DeliverError::Failed(self.fail(e))),
        };
        if ptr == 0 && len > 0 {
            let failure = Failure::AllocFailed { len: len as u32 };
            self.failure = Some(failure.clone());
            return Err(DeliverError::Failed(failure));
        }
        if self
            .memory
            .write(&mut self.store, ptr as u32 as usize, message)
            .is_err()
        {
            let failure = Failure::BadBuffer {
                ptr: ptr as u32,
                len: len as u32,
            };
            self.failure = Some(failure.clone());
            return Err(DeliverError::Failed(failure));
        }
        if let Err(e) = self.on_message.call(&mut self.store, (ptr, len)) {
            return Err(DeliverError::Failed(self.fail(e)));
        }
        // The source may have been lost while the message ran, and a page the worker touched
        // then read as zero: what it posted cannot be trusted.
        if let Some(failure) = self.check_state_lost() {
            return Err(DeliverError::Failed(failure));
        }
        self.last_seq += 1;
        let outbox = &self.store.data().outbox;
        Ok(Replies {
            data: &outbox.data,
            bounds: outbox.bounds.iter(),
        })
    }

    /// Captures the worker's whole state. Only possible between messages, which is the only
    /// time a caller holding `&mut self` can ask.
    ///
    /// A worker restored post-copy first waits (up to its time limit per message) for the
    /// rest of its memory, asking the source for all of it.
    pub fn capture(&mut self) -> Result<Snapshot, CaptureError> {
        let state = self.state()?;
        let chunk_size = self.runtime.shared.config.chunk_size;
        Ok(Snapshot::capture(
            self.memory.data(&self.store),
            chunk_size,
            state,
        )?)
    }

    /// Captures the worker's whole manifest but compresses only the chunks whose hash
    /// `known` does not know: the chunks that changed since the bodies the caller holds.
    /// Pre-copy rounds use it while the worker keeps running between them. A worker
    /// restored post-copy first waits for the rest of its memory, as [`capture`](Self::capture) does.
    pub fn capture_delta(
        &mut self,
        known: &(dyn Fn(ChunkHash) -> bool + Sync),
    ) -> Result<Delta, CaptureError> {
        let state = self.state()?;
        let chunk_size = self.runtime.shared.config.chunk_size;
        Ok(Snapshot::capture_delta(
            self.memory.data(&self.store),
            chunk_size,
            state,
            known,
        )?)
    }

    /// Everything of the worker's state but its memory.
    fn state(&mut self) -> Result<State, CaptureError> {
        if let Some(failure) = &self.failure {
            return Err(CaptureError::Failed(failure.clone()));
        }
        if let Some(paging) = &self.post_copy {
            let shared = paging.shared.clone();
            if !shared.is_complete() {
                shared.request_all();
                let timeout = self.runtime.shared.config.limits.message_timeout;
                match shared.wait_complete(timeout) {
                    Ok(()) => {}
                    Err(WaitCompleteError::TimedOut { missing, waited }) => {
                        return Err(CaptureError::MemoryIncomplete { missing, waited })
                    }
                    Err(WaitCompleteError::Lost(_) | WaitCompleteError::WorkerGone) => {}
                }
            }
            if let Some(failure) = self.check_state_lost() {
                return Err(CaptureError::Failed(failure));
            }
        }
        let mut globals = Vec::with_capacity(self.globals.len());
        for (index, global) in &self.globals {
            let value = match global.get(&mut self.store) {
                Val::I32(v) => GlobalValue::I32(v),
                Val::I64(v) => GlobalValue::I64(v),
                Val::F32(v) => GlobalValue::F32(v),
                Val::F64(v) => GlobalValue::F64(v),
                Val::V128(v) => GlobalValue::V128(v.as_u128()),
                Val::FuncRef(None) => GlobalValue::FuncRef(None),
                Val::FuncRef(Some(f)) => {
                    let raw = f.to_raw(&mut self.store) as usize;
                    match self.func_index_by_ref.get(&raw) {
                        Some(&i) => GlobalValue::FuncRef(Some(i)),
                        None => {
                            return Err(CaptureError::UnsupportedGlobal {
                                index: *index,
                                kind: "a function the module never puts in a table",
                            })
                        }
                    }
                }
                _ => {
                    return Err(CaptureError::UnsupportedGlobal {
                        index: *index,
                        kind: "a reference other than funcref",
                    })
                }
            };
            globals.push(value);
        }
        let mut tables = Vec::with_capacity(self.tables.len());
        for (t, table) in self.tables.iter().enumerate() {
            let size = table.size(&self.store);
            let mut elements = Vec::with_capacity(size as usize);
            for i in 0..size {
                let element = match table.get(&mut self.store, i) {
                    Some(Ref::Func(None)) | None => None,
                    Some(Ref::Func(Some(f))) => {
                        let raw = f.to_raw(&mut self.store) as usize;
                        Some(*self.func_index_by_ref.get(&raw).ok_or(
                            CaptureError::UnknownTableFunction {
                                table: t as u32,
                                element: i,
                            },
                        )?)
                    }
                    Some(_) => {
                        return Err(CaptureError::UnknownTableFunction {
                            table: t as u32,
                            element: i,
                        })
                    }
                };
                elements.push(element);
            }
            tables.push(TableState { elements });
        }
        Ok(State {
            module_hash: *self.module.hash(),
            globals,
            tables,
            last_seq: self.last_seq,
            clock_ns: self.store.data().clock.now_ns(),
        })
    }

    /// How many messages this worker has handled since it first started, across restores.
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    /// The module this worker runs.
    pub fn module(&self) -> &Arc<WorkerModule> {
        &self.module
    }

    /// The worker's linear memory as it is now.
    pub fn memory(&self) -> &[u8] {
        self.memory.data(&self.store)
    }

    /// Why the worker failed, if it did.
    pub fn failure(&self) -> Option<&Failure> {
        self.failure.as_ref()
    }

    /// The limits the worker runs under.
    pub fn limits(&self) -> &WorkerLimits {
        &self.runtime.shared.config.limits
    }

    /// Takes the lines the worker wrote to stdout and stderr so far (the last 256 are kept).
    pub fn take_log(&mut self) -> Vec<String> {
        self.store.data_mut().log.lines.drain(..).collect()
    }

    fn arm_deadline(&mut self) {
        let ticks = deadline_ticks(&self.runtime.shared.config.limits, &self.runtime);
        match &mut self.store.data_mut().post_copy {
            Some(watch) => {
                watch.ticks_left = ticks;
                self.store.set_epoch_deadline(1);
            }
            None => self.store.set_epoch_deadline(ticks),
        }
    }

    /// Fails the worker if its memory's source was lost before the memory was complete.
    fn check_state_lost(&mut self) -> Option<Failure> {
        let reason = self.post_copy.as_ref()?.shared.lost_reason()?;
        let failure = Failure::StateLost { reason };
        tracing::warn!(module = %hex_prefix(self.module.hash()), "worker failed: {failure}");
        self.failure = Some(failure.clone());
        Some(failure)
    }

    /// Records why a call failed; the worker takes no more messages after this.
    fn fail(&mut self, error: wasmtime::Error) -> Failure {
        if let Some(failure) = self.check_state_lost() {
            return failure;
        }
        let limits = &self.runtime.shared.config.limits;
        let host = self.store.data();
        let failure = if let Some(requested) = host.limiter.denied_memory {
            Failure::MemoryLimit {
                limit: limits.max_memory,
                requested,
            }
        } else if let Some(limit) = error.downcast_ref::<MemoryLimitExceeded>() {
            Failure::MemoryLimit {
                limit: limit.limit,
                requested: limit.requested,
            }
        } else if let Some(WorkerExit(code)) = error.downcast_ref::<WorkerExit>() {
            Failure::Exited { code: *code }
        } else if let Some(ReplyLimitExceeded(limit)) = error.downcast_ref::<ReplyLimitExceeded>() {
            Failure::ReplyTooLarge { limit: *limit }
        } else if let Some(Trap::Interrupt) = error.downcast_ref::<Trap>() {
            Failure::TimeLimit {
                limit: limits.message_timeout,
            }
        } else if let Some(post) = error.downcast_ref::<PostOutOfBounds>() {
            Failure::Trap {
                message: post.to_string(),
            }
        } else {
            Failure::Trap {
                message: format!("{error:?}"),
            }
        };
        tracing::warn!(module = %hex_prefix(self.module.hash()), "worker failed: {failure}");
        self.failure = Some(failure.clone());
        failure
    }
}

fn deadline_ticks(limits: &WorkerLimits, runtime: &Runtime) -> u64 {
    let tick = runtime.shared.config.epoch_tick.as_nanos().max(1);
    // One tick more than the limit: the first tick may come at any point of the current one.
    (limits.message_timeout.as_nanos() / tick) as u64 + 1
}

fn hex_prefix(hash: &[u8; 32]) -> String {
    hash[..6].iter().map(|b| format!("{b:02x}")).collect()
}

/// The replies a worker posted while handling one message, in the order it posted them.
pub struct Replies<'a> {
    data: &'a [u8],
    bounds: std::slice::Iter<'a, (usize, usize)>,
}

impl<'a> Iterator for Replies<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        self.bounds.next().map(|&(a, b)| &self.data[a..b])
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.bounds.size_hint()
    }
}

impl ExactSizeIterator for Replies<'_> {}
