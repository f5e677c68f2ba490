// The engine: the Web Worker behind a RoamWorker. It runs the worker here, or keeps a
// connection to the node that runs it, and makes every move — offload, handoff, return —
// with every message handled exactly once (the rules of docs/protocol.md, "Messages and
// replay"): each message gets a sequence number and stays in the log until the worker is
// known to have handled it; after a move the log above the destination's `last_seq` is
// sent again, and replies already delivered are dropped. With automatic placement it also
// times every message for the placer (auto.ts), which begins moves through the same
// command queue as the page.

import type {
  AutoPlacementSettings,
  EngineSettings,
  FromEngine,
  MoveReport,
  Place,
  PlacementDecision,
  SnapshotCheck,
  ToEngine,
} from "../messages.js";
import { AutoPlacer, nowSeconds, type PlacedWorker } from "./auto.js";
import { NodeConnection } from "./conn.js";
import { ERROR_SNAPSHOT_REFUSED, RoamCore, type NodeEvent } from "./core.js";
import { LocalWorker, WorkerFailure, type LoadedModule } from "./local.js";

interface WorkerScope {
  onmessage: ((event: MessageEvent<ToEngine>) => void) | null;
  postMessage(message: FromEngine, transfer?: Transferable[]): void;
  close(): void;
}

const scope = globalThis as unknown as WorkerScope;

type Placement =
  | { kind: "local"; worker: LocalWorker }
  | { kind: "remote"; conn: NodeConnection }
  | { kind: "nowhere"; why: string };

function hexOf(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function randomHex(bytes: number): string {
  return hexOf(crypto.getRandomValues(new Uint8Array(bytes)));
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** What the engine saw of a message not yet handled, for automatic placement. */
interface Posted {
  /** Seconds (engine clock) when the page posted it. */
  at: number;
  bytes: number;
  replyBytes: number;
}

const PAGE_BYTES = 4096;

class Engine implements PlacedWorker {
  private readonly id = randomHex(16);
  private readonly secret = randomHex(32);
  private current: Placement;
  /** When the worker arrived where it runs: messages posted before say nothing of it. */
  private arrivedAt = nowSeconds();
  private placer: AutoPlacer | null = null;
  private readonly posted = new Map<number, Posted>();
  private nextSeq = 1;
  /** Posted and not yet known to be handled, in order. */
  private log: { seq: number; payload: Uint8Array }[] = [];
  /** Highest sequence number whose replies have all been delivered. */
  private delivered = 0;
  /** The message whose replies are being delivered, and how many of them were. */
  private partialSeq = 0;
  private partialCount = 0;
  private failed: string | null = null;

  constructor(
    private readonly core: RoamCore,
    private readonly module: LoadedModule,
    private readonly settings: EngineSettings,
    worker: LocalWorker,
  ) {
    this.current = { kind: "local", worker };
  }

  private get placement(): Placement {
    return this.current;
  }

  private set placement(placement: Placement) {
    this.current = placement;
    this.arrivedAt = nowSeconds();
  }

  /** Calibrates this device and starts automatic placement. */
  async startPlacement(settings: AutoPlacementSettings): Promise<void> {
    this.placer = await AutoPlacer.start(this.core, this, settings, this.settings.clientName, this.settings.deviceSlowdown);
  }

  localStateBytes(): number | null {
    if (this.placement.kind !== "local") return null;
    let memory: Uint8Array;
    try {
      memory = this.placement.worker.capture().memory;
    } catch {
      return null; // a failed worker goes nowhere
    }
    const words = new Uint32Array(memory.buffer, memory.byteOffset, Math.floor(memory.byteLength / 4));
    const perPage = PAGE_BYTES / 4;
    let pages = 0;
    for (let page = 0; page < words.length; page += perPage) {
      const end = Math.min(words.length, page + perPage);
      for (let i = page; i < end; i++) {
        if (words[i] !== 0) {
          pages += 1;
          break;
        }
      }
    }
    return pages * PAGE_BYTES;
  }

  move(place: Place): Promise<string | null> {
    return new Promise((resolve) => {
      enqueue(async () => {
        try {
          const result = await this.moveTo(place);
          report({ kind: "moved", id: 0, report: result, where: this.where });
          resolve(null);
        } catch (e) {
          report({ kind: "move-failed", id: 0, message: messageOf(e), where: this.where });
          resolve(messageOf(e));
        }
      });
    });
  }

  decided(decision: PlacementDecision): void {
    report({ kind: "placement", decision });
  }

  broke(message: string): void {
    report({ kind: "error", message });
  }

  get where(): Place {
    switch (this.placement.kind) {
      case "local":
        return "local";
      case "remote":
        return this.placement.conn.url;
      case "nowhere":
        return "nowhere";
    }
  }

  /** A message the page posted at `postedAt` (seconds, engine clock). */
  post(payload: Uint8Array, postedAt: number): void {
    if (this.failed) {
      report({ kind: "error", message: `the message was not delivered: ${this.failed}` });
      return;
    }
    const seq = this.nextSeq++;
    this.log.push({ seq, payload });
    if (this.placer) {
      this.placer.onPost(postedAt, payload.length);
      this.posted.set(seq, { at: postedAt, bytes: payload.length, replyBytes: 0 });
    }
    this.sendLogged(seq, payload);
  }

  setSlowdown(factor: number): void {
    this.settings.deviceSlowdown = factor;
    this.placer?.setSlowdown(factor);
  }

  private sendLogged(seq: number, payload: Uint8Array): void {
    switch (this.placement.kind) {
      case "local":
        this.handleLocally(this.placement.worker, seq, payload);
        break;
      case "remote":
        this.placement.conn.send({ type: "Post", worker: this.id, seq }, payload);
        break;
      case "nowhere":
        this.fail(`the worker is nowhere: ${this.placement.why}`);
        break;
    }
  }

  private handleLocally(worker: LocalWorker, seq: number, payload: Uint8Array): void {
    const started = performance.now();
    let replies: Uint8Array[];
    try {
      replies = worker.deliver(payload);
    } catch (e) {
      this.fail(`the worker failed handling message ${seq}: ${messageOf(e)}`);
      return;
    }
    if (this.settings.deviceSlowdown > 1) {
      // A device this many times slower would still be busy: hold the thread as long.
      const until = performance.now() + (performance.now() - started) * (this.settings.deviceSlowdown - 1);
      while (performance.now() < until) {
        // busy, as a slow CPU would be
      }
    }
    const seen = this.posted.get(seq);
    if (this.placer && seen && seen.at >= this.arrivedAt) {
      const replyBytes = replies.reduce((sum, r) => sum + r.length, 0);
      this.placer.onLocalRun((performance.now() - started) / 1000, replyBytes);
    }
    replies.forEach((reply, index) => this.reply(seq, index, reply));
    this.handledThrough(seq);
  }

  /** A reply of message `seq`: delivered unless the application already had it. */
  private reply(seq: number, index: number, payload: Uint8Array): void {
    if (seq <= this.delivered) return;
    if (seq === this.partialSeq && index < this.partialCount) return;
    if (seq !== this.partialSeq) {
      this.partialSeq = seq;
      this.partialCount = 0;
    }
    this.partialCount = index + 1;
    const seen = this.posted.get(seq);
    if (seen) seen.replyBytes += payload.length;
    const data = payload.byteOffset === 0 && payload.byteLength === payload.buffer.byteLength
      ? (payload.buffer as ArrayBuffer)
      : (payload.slice().buffer as ArrayBuffer);
    report({ kind: "message", data }, [data]);
  }

  private handledThrough(seq: number): void {
    while (this.log.length > 0 && this.log[0].seq <= seq) this.log.shift();
    for (const s of this.posted.keys()) {
      if (s > seq) break;
      this.posted.delete(s);
    }
    if (seq > this.delivered) this.delivered = seq;
  }

  private fail(message: string): void {
    this.failed = message;
    report({ kind: "error", message });
  }

  private onNodeEvent(conn: NodeConnection, event: NodeEvent): void {
    switch (event.type) {
      case "Reply":
        this.reply(event.seq, event.index, event.payload);
        break;
      case "Handled": {
        const seen = this.posted.get(event.seq);
        if (this.placer && seen && event.seq > this.delivered && seen.at >= this.arrivedAt) {
          this.placer.onNodeReply(conn.url, seen.at, nowSeconds() - seen.at, seen.bytes, seen.replyBytes);
        }
        this.handledThrough(event.seq);
        break;
      }
      case "WorkerFailed":
        this.fail(`the worker failed on ${conn.url} handling message ${event.seq}: ${event.reason}`);
        break;
      case "Error":
        report({ kind: "error", message: `${conn.url} refused: ${event.message} (${event.code_name})` });
        break;
      case "Goodbye":
        this.lose(conn, `${conn.url} is leaving: ${event.reason}`);
        break;
      default:
        break;
    }
  }

  /** Makes `conn` the worker's connection. */
  private useConnection(conn: NodeConnection): void {
    conn.onEvent = (event) => this.onNodeEvent(conn, event);
    conn.onLost = (reason) => this.lose(conn, reason);
    this.placement = { kind: "remote", conn };
  }

  private lose(conn: NodeConnection, reason: string): void {
    if (this.placement.kind !== "remote" || this.placement.conn !== conn) return;
    conn.close();
    this.placement = { kind: "nowhere", why: `the worker was lost with its node: ${reason}` };
    this.fail(this.placement.why);
  }

  /** Sends again, where the worker now runs, every logged message above `lastSeq`. */
  private replayAfter(lastSeq: number): number {
    this.handledThrough(lastSeq);
    const pending = [...this.log];
    for (const { seq, payload } of pending) this.sendLogged(seq, payload);
    return pending.length;
  }

  async moveTo(place: Place): Promise<MoveReport | null> {
    if (this.failed) throw new Error(`the worker cannot move: ${this.failed}`);
    const from = this.where;
    if (place === from) return null;
    const started = performance.now();
    let report: Omit<MoveReport, "durationMs">;
    if (this.placement.kind === "local") {
      report = await this.offload(this.placement.worker, place);
    } else if (this.placement.kind === "remote" && place === "local") {
      report = await this.returnHome(this.placement.conn);
    } else if (this.placement.kind === "remote") {
      report = await this.handoff(this.placement.conn, place);
    } else {
      throw new Error(`the worker cannot move: ${this.placement.why}`);
    }
    return { ...report, durationMs: performance.now() - started };
  }

  /** Page → node: capture here, send the module (if the node lacks it) and the state. */
  private async offload(worker: LocalWorker, url: string): Promise<Omit<MoveReport, "durationMs">> {
    const t0 = performance.now();
    const { state, memory } = worker.capture();
    const captured = this.core.capture(this.module.info.hash, state, memory);
    const t1 = performance.now();
    let conn: NodeConnection | null = null;
    try {
      conn = await NodeConnection.open(this.core, url, this.settings.clientName);
      const need = conn.next(["StateNeed"]);
      const adopted = conn.next(["StateAdopted"]);
      conn.send({ type: "StateBegin", worker: this.id, secret: this.secret, snapshot: captured.snapshot });
      const needed = await need;
      const { last_seq } = await adopted;
      if (last_seq !== worker.lastSeq) {
        throw new Error(`${url} adopted the worker at message ${last_seq}, but it had handled ${worker.lastSeq}`);
      }
      const t2 = performance.now();
      this.useConnection(conn);
      const replayed = this.replayAfter(last_seq);
      return {
        kind: "offload",
        from: "local",
        to: url,
        captureMs: t1 - t0,
        transferMs: t2 - t1,
        restoreMs: 0,
        bytesSent: conn.bytesOut,
        bytesReceived: conn.bytesIn,
        moduleBytes: needed.module_bytes,
        stateBytes: needed.state_bytes,
        memoryBytes: captured.memory_bytes,
        replayed,
      };
    } catch (e) {
      // The worker has not left: it keeps running here.
      conn?.close();
      throw new Error(`cannot offload the worker to ${url}: ${messageOf(e)}`);
    } finally {
      this.core.dropSnapshot(captured.snapshot);
    }
  }

  /** Node → node directly: the source sends the state; this side attaches at the
   * destination and replays what the source had not handled. */
  private async handoff(source: NodeConnection, url: string): Promise<Omit<MoveReport, "durationMs">> {
    const bytesBefore = source.bytesIn + source.bytesOut;
    const t0 = performance.now();
    const moved = source.next(["Moved"]);
    source.send({ type: "MoveOut", worker: this.id, destination: url });
    try {
      await moved;
    } catch (e) {
      if (this.placement.kind === "remote" && this.placement.conn === source) {
        throw new Error(`cannot hand the worker over to ${url}; it stays on ${source.url}: ${messageOf(e)}`);
      }
      throw new Error(`the handoff to ${url} failed: ${messageOf(e)}`);
    }
    const t1 = performance.now();
    const sourceBytes = source.bytesIn + source.bytesOut - bytesBefore;
    // Replies of the messages the source finished came before Moved and were delivered.
    this.placement = { kind: "nowhere", why: `the worker moved to ${url}, which could not be reached` };
    source.close();
    let conn: NodeConnection;
    let lastSeq: number;
    try {
      conn = await NodeConnection.open(this.core, url, this.settings.clientName);
      const attached = conn.next(["Attached"]);
      conn.send({ type: "Attach", worker: this.id, secret: this.secret });
      lastSeq = (await attached).last_seq;
    } catch (e) {
      this.fail(`the worker moved to ${url} but cannot be reached there: ${messageOf(e)}`);
      throw new Error(`the worker moved to ${url} but cannot be reached there: ${messageOf(e)}`);
    }
    this.useConnection(conn);
    const replayed = this.replayAfter(lastSeq);
    return {
      kind: "handoff",
      from: source.url,
      to: url,
      captureMs: 0,
      transferMs: t1 - t0,
      restoreMs: 0,
      bytesSent: conn.bytesOut,
      bytesReceived: conn.bytesIn + sourceBytes,
      moduleBytes: 0,
      stateBytes: 0,
      memoryBytes: 0,
      replayed,
    };
  }

  /** Node → page: the node finishes the message in progress and sends the state back. */
  private async returnHome(conn: NodeConnection): Promise<Omit<MoveReport, "durationMs">> {
    const inBefore = conn.bytesIn;
    const outBefore = conn.bytesOut;
    const t0 = performance.now();
    const begin = conn.next(["StateBegin"]);
    const end = conn.next(["StateEnd"]);
    conn.send({ type: "Return", worker: this.id });
    try {
      await begin;
      await end;
    } catch (e) {
      throw new Error(`cannot bring the worker back from ${conn.url}: ${messageOf(e)}`);
    }
    const t1 = performance.now();
    let worker: LocalWorker;
    try {
      const restored = conn.adopt();
      worker = await LocalWorker.restore(this.module, restored);
    } catch (e) {
      // The node keeps the worker: it runs there until the state is adopted somewhere.
      conn.send({ type: "Error", code: ERROR_SNAPSHOT_REFUSED, worker: this.id, message: messageOf(e) });
      throw new Error(`the state ${conn.url} sent back cannot be restored here: ${messageOf(e)}`);
    }
    const t2 = performance.now();
    conn.send({ type: "StateAdopted", worker: this.id, last_seq: worker.lastSeq });
    const report = {
      kind: "return" as const,
      from: conn.url,
      to: "local",
      captureMs: 0,
      transferMs: t1 - t0,
      restoreMs: t2 - t1,
      bytesSent: conn.bytesOut - outBefore,
      bytesReceived: conn.bytesIn - inBefore,
      moduleBytes: 0,
      stateBytes: conn.bytesIn - inBefore,
      memoryBytes: worker.capture().memory.length,
      replayed: 0,
    };
    conn.close();
    this.placement = { kind: "local", worker };
    report.replayed = this.replayAfter(worker.lastSeq);
    return report;
  }

  /** Captures the local worker and carries on with a copy restored from the snapshot. */
  async checkSnapshot(): Promise<SnapshotCheck> {
    if (this.placement.kind !== "local") {
      throw new Error("the worker runs on a node: only a local worker can be checked");
    }
    const t0 = performance.now();
    const { state, memory } = this.placement.worker.capture();
    const captured = this.core.capture(this.module.info.hash, state, memory);
    const t1 = performance.now();
    try {
      const worker = await LocalWorker.restore(this.module, this.core.restore(captured.snapshot));
      const t2 = performance.now();
      this.placement = { kind: "local", worker };
      return {
        memoryBytes: captured.memory_bytes,
        snapshotBytes: captured.manifest_bytes + captured.body_bytes,
        captureMs: t1 - t0,
        restoreMs: t2 - t1,
      };
    } finally {
      this.core.dropSnapshot(captured.snapshot);
    }
  }

  terminate(): void {
    this.placer?.terminate();
    this.placer = null;
    if (this.placement.kind === "remote") {
      try {
        this.placement.conn.send({ type: "Goodbye", reason: "the page terminated the worker" });
      } catch {
        // the connection is already gone
      }
      this.placement.conn.close();
    }
  }
}

function report(message: FromEngine, transfer: Transferable[] = []): void {
  scope.postMessage(message, transfer);
}

/** Fetches, checks, prepares and compiles the module; starts the worker. */
async function start(settings: EngineSettings): Promise<Engine> {
  const [core, bytes] = await Promise.all([
    RoamCore.load(new URL(settings.coreUrl)),
    fetch(settings.moduleUrl).then(async (response) => {
      if (!response.ok) {
        throw new Error(`cannot load the worker module ${settings.moduleUrl}: HTTP ${response.status}`);
      }
      return new Uint8Array(await response.arrayBuffer());
    }),
  ]);
  let prepared;
  try {
    prepared = core.prepare(bytes);
  } catch (e) {
    throw new Error(`${settings.moduleUrl} cannot run as a Roam worker: ${messageOf(e)}`);
  }
  const compiled = await WebAssembly.compile(prepared.bytes as Uint8Array<ArrayBuffer>);
  const module: LoadedModule = { info: prepared.info, bytes: prepared.bytes, compiled };
  const worker = await LocalWorker.start(module).catch((e: unknown) => {
    throw new Error(e instanceof WorkerFailure ? e.message : `the worker cannot start: ${messageOf(e)}`);
  });
  return new Engine(core, module, settings, worker);
}

// Commands run one after another: a post sent during a move waits for the move, then is
// sent where the worker went (or handled here).
let engine: Engine | null = null;
let queue: Promise<void> = Promise.resolve();

function enqueue(task: () => Promise<void> | void): void {
  queue = queue.then(task).catch((e: unknown) => report({ kind: "error", message: messageOf(e) }));
}

scope.onmessage = (event) => {
  const command = event.data;
  switch (command.kind) {
    case "start":
      enqueue(async () => {
        try {
          engine = await start(command.settings);
          report({ kind: "ready" });
        } catch (e) {
          report({ kind: "error", message: messageOf(e) });
        }
      });
      if (command.settings.auto) {
        const auto = command.settings.auto;
        enqueue(() => engine?.startPlacement(auto));
      }
      break;
    case "post": {
      // When the page posted it, on this thread's clock: a message waiting behind a move
      // or a long handler was still posted then.
      const at = Math.max(0, Math.min(nowSeconds(), (command.at - performance.timeOrigin) / 1000));
      enqueue(() => engine?.post(command.data, at));
      break;
    }
    case "slowdown":
      enqueue(() => engine?.setSlowdown(command.factor));
      break;
    case "move":
      enqueue(async () => {
        if (!engine) {
          report({ kind: "move-failed", id: command.id, message: "the worker did not start", where: "nowhere" });
          return;
        }
        try {
          const result = await engine.moveTo(command.place);
          report({ kind: "moved", id: command.id, report: result, where: engine.where });
        } catch (e) {
          report({ kind: "move-failed", id: command.id, message: messageOf(e), where: engine.where });
        }
      });
      break;
    case "check-snapshot":
      enqueue(async () => {
        try {
          if (!engine) throw new Error("the worker did not start");
          report({ kind: "snapshot-checked", id: command.id, result: await engine.checkSnapshot() });
        } catch (e) {
          report({ kind: "snapshot-checked", id: command.id, result: null, message: messageOf(e) });
        }
      });
      break;
    case "terminate":
      enqueue(() => {
        engine?.terminate();
        scope.close();
      });
      break;
  }
};
