// A worker running in this Web Worker: the host side of the worker ABI (docs/worker-abi.md)
// — message delivery through roam_alloc / roam_on_message, roam.post_message, the WASI
// subset of crates/roam-runtime/src/host.rs — and capture and restore through the
// exports the prepared module adds.

import type { GlobalJson, ModuleInfo, Restored, WorkerState } from "./core.js";

/** A prepared module, compiled once for every instance of it. */
export interface LoadedModule {
  info: ModuleInfo;
  bytes: Uint8Array;
  compiled: WebAssembly.Module;
}

/** Thrown when the worker traps, exits or breaks the ABI; it takes no more messages. */
export class WorkerFailure extends Error {
  override name = "WorkerFailure";
}

const PAGE = 65536;

// wasi errno values the subset answers with.
const SUCCESS = 0;
const EBADF = 8;
const EFAULT = 21;
const EINVAL = 28;
const ESPIPE = 70;
const FILETYPE_CHARACTER_DEVICE = 2;

const LOG_LINE_MAX = 4096;

class WorkerExit extends Error {
  constructor(readonly code: number) {
    super(`the worker called proc_exit(${code})`);
  }
}

interface WorkerExports {
  memory: WebAssembly.Memory;
  roam_alloc(len: number): number;
  roam_on_message(ptr: number, len: number): void;
  roam_init?: () => void;
  _initialize?: () => void;
  [name: string]: unknown;
}

/** The host state of one instance: its memory, the replies of the current message, its
 * clock and the partial log line. */
class Host {
  memory: WebAssembly.Memory | null = null;
  outbox: Uint8Array[] = [];
  private logLine: number[] = [];
  private readonly origin = performance.now();

  constructor(private readonly clockBaseNs: number) {}

  /** The worker's monotonic clock: it continues from the captured value after a move. */
  clockNs(): number {
    return this.clockBaseNs + Math.round((performance.now() - this.origin) * 1e6);
  }

  private view(): DataView {
    if (!this.memory) throw new WorkerFailure("the worker called the host before it had a memory");
    return new DataView(this.memory.buffer);
  }

  private bytes(ptr: number, len: number): Uint8Array {
    if (!this.memory) throw new WorkerFailure("the worker called the host before it had a memory");
    return new Uint8Array(this.memory.buffer, ptr >>> 0, len >>> 0);
  }

  /** Runs a wasi call body, answering EFAULT when it names bytes outside the memory. */
  private errno(body: () => number): number {
    try {
      return body();
    } catch (e) {
      if (e instanceof RangeError) return EFAULT;
      throw e;
    }
  }

  private log(bytes: Uint8Array): void {
    for (const b of bytes) {
      if (b === 10) {
        console.log(`[worker] ${new TextDecoder().decode(new Uint8Array(this.logLine))}`);
        this.logLine = [];
      } else if (this.logLine.length < LOG_LINE_MAX) {
        this.logLine.push(b);
      }
    }
  }

  imports(): WebAssembly.Imports {
    const stdio = (fd: number) => fd >= 0 && fd <= 2;
    const okForStdio = (fd: number) => (stdio(fd) ? SUCCESS : EBADF);
    const writeU32 = (ptr: number, value: number) => this.view().setUint32(ptr >>> 0, value, true);
    return {
      roam: {
        post_message: (ptr: number, len: number) => {
          try {
            this.outbox.push(this.bytes(ptr, len).slice());
          } catch (e) {
            throw new WorkerFailure(
              `post_message named bytes outside the worker's memory (pointer ${ptr >>> 0}, length ${len >>> 0})`,
            );
          }
        },
      },
      wasi_snapshot_preview1: {
        fd_write: (fd: number, iovs: number, iovsLen: number, nwritten: number) =>
          this.errno(() => {
            if (fd !== 1 && fd !== 2) return EBADF;
            const view = this.view();
            let total = 0;
            for (let i = 0; i < iovsLen >>> 0; i++) {
              const at = (iovs >>> 0) + i * 8;
              const buf = view.getUint32(at, true);
              const len = view.getUint32(at + 4, true);
              this.log(this.bytes(buf, len));
              total += len;
            }
            writeU32(nwritten, total >>> 0);
            return SUCCESS;
          }),
        fd_read: (fd: number, _iovs: number, _iovsLen: number, nread: number) =>
          this.errno(() => {
            if (fd !== 0) return EBADF;
            writeU32(nread, 0); // stdin is always at its end
            return SUCCESS;
          }),
        fd_close: okForStdio,
        fd_sync: okForStdio,
        fd_fdstat_set_flags: okForStdio,
        fd_seek: (fd: number) => (stdio(fd) ? ESPIPE : EBADF),
        fd_fdstat_get: (fd: number, out: number) =>
          this.errno(() => {
            if (!stdio(fd)) return EBADF;
            const stat = this.bytes(out, 24);
            stat.fill(0);
            stat[0] = FILETYPE_CHARACTER_DEVICE;
            // rights_base: fd_read for stdin, fd_write for stdout and stderr.
            this.view().setBigUint64((out >>> 0) + 8, fd === 0 ? 2n : 64n, true);
            return SUCCESS;
          }),
        fd_filestat_get: (fd: number, out: number) =>
          this.errno(() => {
            if (!stdio(fd)) return EBADF;
            const stat = this.bytes(out, 64);
            stat.fill(0);
            stat[16] = FILETYPE_CHARACTER_DEVICE;
            return SUCCESS;
          }),
        fd_prestat_get: () => EBADF,
        fd_prestat_dir_name: () => EBADF,
        clock_time_get: (id: number, _precision: bigint, out: number) =>
          this.errno(() => {
            let now: bigint;
            if (id === 0) {
              now = BigInt(Math.round((performance.timeOrigin + performance.now()) * 1e6));
            } else if (id >= 1 && id <= 3) {
              now = BigInt(this.clockNs());
            } else {
              return EINVAL;
            }
            this.view().setBigUint64(out >>> 0, now, true);
            return SUCCESS;
          }),
        clock_res_get: (id: number, out: number) =>
          this.errno(() => {
            if (id < 0 || id > 3) return EINVAL;
            this.view().setBigUint64(out >>> 0, 1n, true);
            return SUCCESS;
          }),
        random_get: (buf: number, len: number) =>
          this.errno(() => {
            const target = this.bytes(buf, len);
            // getRandomValues fills at most 65536 bytes per call.
            for (let at = 0; at < target.length; at += 65536) {
              crypto.getRandomValues(target.subarray(at, Math.min(target.length, at + 65536)));
            }
            return SUCCESS;
          }),
        proc_exit: (code: number) => {
          throw new WorkerExit(code);
        },
        sched_yield: () => SUCCESS,
        args_get: () => SUCCESS,
        environ_get: () => SUCCESS,
        args_sizes_get: (count: number, size: number) =>
          this.errno(() => {
            writeU32(count, 0);
            writeU32(size, 0);
            return SUCCESS;
          }),
        environ_sizes_get: (count: number, size: number) =>
          this.errno(() => {
            writeU32(count, 0);
            writeU32(size, 0);
            return SUCCESS;
          }),
      },
    };
  }
}

/** Why a call into the worker failed, in a sentence. */
function describe(error: unknown): string {
  if (error instanceof WorkerExit || error instanceof WorkerFailure) return error.message;
  if (error instanceof WebAssembly.RuntimeError) return `the worker trapped: ${error.message}`;
  if (error instanceof Error) return `the worker failed: ${error.message}`;
  return `the worker failed: ${String(error)}`;
}

/** A worker instance in this Web Worker. */
export class LocalWorker {
  /** Messages handled since the worker first started, across moves. */
  lastSeq = 0;
  /** Why the worker failed, once it has. */
  failure: string | null = null;
  private readonly exports: WorkerExports;
  private readonly funcIndex = new Map<unknown, number>();

  private constructor(
    readonly module: LoadedModule,
    private readonly host: Host,
    instance: WebAssembly.Instance,
  ) {
    this.exports = instance.exports as unknown as WorkerExports;
    host.memory = this.exports.memory;
    for (const f of module.info.table_funcs) {
      this.funcIndex.set(this.exports[f.export], f.index);
    }
  }

  private static async instantiate(module: LoadedModule, clockNs: number): Promise<LocalWorker> {
    const host = new Host(clockNs);
    const instance = await WebAssembly.instantiate(module.compiled, host.imports());
    return new LocalWorker(module, host, instance);
  }

  /** Starts a new worker: instantiates it and runs its init functions. */
  static async start(module: LoadedModule): Promise<LocalWorker> {
    const worker = await LocalWorker.instantiate(module, 0);
    const inits: (() => void)[] = [];
    if (module.info.has_initialize && worker.exports._initialize) inits.push(worker.exports._initialize);
    if (module.info.has_init && worker.exports.roam_init) inits.push(worker.exports.roam_init);
    for (const init of inits) {
      try {
        init();
      } catch (e) {
        throw new WorkerFailure(`the worker failed to start: ${describe(e)}`);
      }
    }
    return worker;
  }

  /** A worker resumed from a snapshot: a fresh instance whose state is overwritten; the
   * init functions do not run. */
  static async restore(module: LoadedModule, restored: Restored): Promise<LocalWorker> {
    const worker = await LocalWorker.instantiate(module, restored.clock_ns);
    const memory = worker.exports.memory;
    const pages = restored.memory_size / PAGE;
    const current = memory.buffer.byteLength / PAGE;
    if (pages > current) memory.grow(pages - current);
    new Uint8Array(memory.buffer).set(restored.image);
    module.info.globals.forEach((g, i) => {
      const global = worker.exports[g.export] as WebAssembly.Global;
      global.value = worker.globalFromJson(restored.globals[i], g.type);
    });
    module.info.tables.forEach((t, i) => {
      const table = worker.exports[t.export] as WebAssembly.Table;
      const elements = restored.tables[i];
      if (elements.length > table.length) table.grow(elements.length - table.length);
      elements.forEach((f, slot) => table.set(slot, f === null ? null : worker.func(f)));
    });
    worker.lastSeq = restored.last_seq;
    return worker;
  }

  /** Delivers one message; returns the replies the worker posted while handling it. */
  deliver(message: Uint8Array): Uint8Array[] {
    if (this.failure) throw new WorkerFailure(`the worker has failed: ${this.failure}`);
    this.host.outbox = [];
    try {
      const ptr = this.exports.roam_alloc(message.length) >>> 0;
      if (ptr === 0 && message.length > 0) {
        throw new WorkerFailure(`roam_alloc could not allocate ${message.length} bytes`);
      }
      if (ptr + message.length > this.exports.memory.buffer.byteLength) {
        throw new WorkerFailure(`roam_alloc returned a buffer outside the memory (${ptr})`);
      }
      new Uint8Array(this.exports.memory.buffer).set(message, ptr);
      this.exports.roam_on_message(ptr, message.length);
    } catch (e) {
      this.failure = describe(e);
      throw new WorkerFailure(this.failure);
    }
    this.lastSeq += 1;
    const replies = this.host.outbox;
    this.host.outbox = [];
    return replies;
  }

  /** The worker's state between two messages, and a view of its memory. */
  capture(): { state: WorkerState; memory: Uint8Array } {
    if (this.failure) throw new WorkerFailure(`a failed worker cannot be captured: ${this.failure}`);
    const globals = this.module.info.globals.map((g, i) =>
      this.globalToJson(this.exports[g.export] as WebAssembly.Global, g.type, i),
    );
    const tables = this.module.info.tables.map((t, i) => {
      const table = this.exports[t.export] as WebAssembly.Table;
      const elements: (number | null)[] = [];
      for (let slot = 0; slot < table.length; slot++) {
        const f: unknown = table.get(slot);
        if (f === null) {
          elements.push(null);
          continue;
        }
        const index = this.funcIndex.get(f);
        if (index === undefined) {
          throw new Error(`table ${i} slot ${slot} holds a function the module never puts in a table`);
        }
        elements.push(index);
      }
      return elements;
    });
    return {
      state: { globals, tables, last_seq: this.lastSeq, clock_ns: this.host.clockNs() },
      memory: new Uint8Array(this.exports.memory.buffer),
    };
  }

  private func(index: number): unknown {
    const f = this.exports[`__roam_func_${index}`];
    if (f === undefined) {
      throw new Error(`function ${index} cannot be placed in a table: the module never puts it in one`);
    }
    return f;
  }

  private globalToJson(global: WebAssembly.Global, type: string, index: number): GlobalJson {
    const bits = new DataView(new ArrayBuffer(8));
    switch (type) {
      case "i32":
        return { i32: global.value as number };
      case "i64":
        return { i64: (global.value as bigint).toString() };
      case "f32":
        bits.setFloat32(0, global.value as number, true);
        return { f32: bits.getUint32(0, true) };
      case "f64":
        bits.setFloat64(0, global.value as number, true);
        return { f64: bits.getBigUint64(0, true).toString() };
      case "funcref": {
        const f: unknown = global.value;
        if (f === null) return { funcref: null };
        const i = this.funcIndex.get(f);
        if (i === undefined) throw new Error(`global ${index} holds a function the module never puts in a table`);
        return { funcref: i };
      }
      default:
        throw new Error(`global ${index} is a ${type}, which JavaScript cannot read: this worker cannot move from the browser`);
    }
  }

  private globalFromJson(value: GlobalJson, type: string): unknown {
    const bits = new DataView(new ArrayBuffer(8));
    if ("i32" in value) return value.i32;
    if ("i64" in value) return BigInt(value.i64);
    if ("f32" in value) {
      bits.setUint32(0, value.f32, true);
      return bits.getFloat32(0, true);
    }
    if ("f64" in value) {
      bits.setBigUint64(0, BigInt(value.f64), true);
      return bits.getFloat64(0, true);
    }
    if ("funcref" in value) return value.funcref === null ? null : this.func(value.funcref);
    throw new Error(`a ${type} global cannot be written from JavaScript: this worker cannot move to the browser`);
  }
}
