// RoamWorker: a Web Worker whose running state can move to an edge node, on to another
// edge or the cloud, and back to the page, while the page keeps posting to it.

import type { AutoPlacementSettings, FromEngine, MoveReport, Place, PlacementDecision, SnapshotCheck, ToEngine } from "./messages.js";

export type {
  MoveReport,
  Place,
  PlacementDecision,
  PlacementNode,
  PlacePrediction,
  SnapshotCheck,
} from "./messages.js";

/** Where the worker may run. Automatic placement honours all of them; `stayLocal` and
 * `allowCloud` also bind `moveTo`. */
export interface PlacementRequirements {
  /** The longest a message may take from post to reply where the worker runs, in ms:
   * places predicted to miss it are not chosen (unless none meets it). */
  latencyBudgetMs?: number;
  /** The longest pause a move may cause the application, in ms: moves predicted to pause
   * the worker longer are not made. */
  maxMoveStallMs?: number;
  /** Whether the worker may run on the cloud node (default true). */
  allowCloud?: boolean;
  /** Keep the worker on this device: moves to nodes are refused (default false). */
  stayLocal?: boolean;
}

export interface RoamWorkerOptions extends PlacementRequirements {
  /** `"manual"` (the default): the worker moves only when `moveTo` is called. `"auto"`:
   * the SDK measures the worker's messages and the links to the cloud and the edges, and
   * moves the worker where its messages are answered soonest (see docs/browser.md). */
  placement?: "auto" | "manual";
  /** The cloud node's URL (`ws://` or `wss://`). With automatic placement the edges
   * registered with it are candidates too. */
  cloud?: string;
  /** The edge nodes' URLs. */
  edges?: string[];
  /** The name the SDK gives nodes in its Hello, for their logs. */
  name?: string;
  /** For demos and tests: emulate a device this many times slower than this one (≥ 1):
   * after each message handled locally the worker's thread stays busy that much longer. */
  deviceSlowdown?: number;
}

/** The `move` event: a move finished; `report` says what it cost. `automatic` is true
 * when automatic placement made it. */
export class MoveEvent extends Event {
  constructor(
    readonly report: MoveReport,
    readonly automatic = false,
  ) {
    super("move");
  }
}

/** The `placement` event: automatic placement began a move (`decision.action` "move") or
 * could not make one ("move-failed"); `decision.reason` says why. */
export class PlacementEvent extends Event {
  constructor(readonly decision: PlacementDecision) {
    super("placement");
  }
}

const KNOWN_OPTIONS = new Set([
  "placement",
  "cloud",
  "edges",
  "name",
  "deviceSlowdown",
  "latencyBudgetMs",
  "maxMoveStallMs",
  "allowCloud",
  "stayLocal",
]);

/** Whether `url` is a WebSocket URL a node can be reached at. */
function isNodeUrl(url: unknown): url is string {
  if (typeof url !== "string") return false;
  try {
    const parsed = new URL(url);
    return (parsed.protocol === "ws:" || parsed.protocol === "wss:") && parsed.host !== "";
  } catch {
    return false;
  }
}

function checkOptions(
  options: RoamWorkerOptions,
): Required<Pick<RoamWorkerOptions, "placement" | "edges" | "allowCloud" | "stayLocal" | "name" | "deviceSlowdown">> &
  RoamWorkerOptions {
  if (typeof options !== "object" || options === null) {
    throw new TypeError("RoamWorker options must be an object");
  }
  for (const key of Object.keys(options)) {
    if (!KNOWN_OPTIONS.has(key)) throw new TypeError(`unknown RoamWorker option \`${key}\``);
  }
  if (options.cloud !== undefined && !isNodeUrl(options.cloud)) {
    throw new TypeError(`cloud must be a ws:// or wss:// URL, not ${JSON.stringify(options.cloud)}`);
  }
  const edges = options.edges ?? [];
  if (!Array.isArray(edges)) throw new TypeError("edges must be a list of ws:// or wss:// URLs");
  for (const edge of edges) {
    if (!isNodeUrl(edge)) throw new TypeError(`edges must be ws:// or wss:// URLs, not ${JSON.stringify(edge)}`);
  }
  if (new Set(edges).size !== edges.length) throw new TypeError("edges lists a node twice");
  for (const key of ["latencyBudgetMs", "maxMoveStallMs"] as const) {
    const value = options[key];
    if (value !== undefined && !(typeof value === "number" && Number.isFinite(value) && value > 0)) {
      throw new TypeError(`${key} must be a positive number of milliseconds, not ${JSON.stringify(value)}`);
    }
  }
  for (const key of ["allowCloud", "stayLocal"] as const) {
    const value = options[key];
    if (value !== undefined && typeof value !== "boolean") {
      throw new TypeError(`${key} must be true or false, not ${JSON.stringify(value)}`);
    }
  }
  const slowdown = options.deviceSlowdown ?? 1;
  if (!(typeof slowdown === "number" && Number.isFinite(slowdown) && slowdown >= 1)) {
    throw new TypeError(`deviceSlowdown must be a number ≥ 1, not ${JSON.stringify(slowdown)}`);
  }
  if (options.name !== undefined && typeof options.name !== "string") {
    throw new TypeError("name must be a string");
  }
  const placement = options.placement ?? "manual";
  if (placement !== "auto" && placement !== "manual") {
    throw new TypeError(`placement must be "auto" or "manual", not ${JSON.stringify(options.placement)}`);
  }
  return {
    ...options,
    placement,
    edges: [...edges],
    allowCloud: options.allowCloud ?? true,
    stayLocal: options.stayLocal ?? false,
    name: options.name ?? "roam-browser/0.1",
    deviceSlowdown: slowdown,
  };
}

const encoder = new TextEncoder();

/** The bytes of a message: an ArrayBuffer, a typed array or DataView, or a string (UTF-8). */
function bytesOf(data: unknown): Uint8Array {
  if (typeof data === "string") return encoder.encode(data);
  if (data instanceof ArrayBuffer) return new Uint8Array(data.slice(0));
  if (ArrayBuffer.isView(data)) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength).slice();
  }
  throw new TypeError("RoamWorker.postMessage takes an ArrayBuffer, a typed array or a string");
}

interface Pending<T> {
  resolve(value: T): void;
  reject(error: Error): void;
}

/**
 * A worker with the Web Worker surface — `postMessage`, `onmessage`, `onerror`,
 * `terminate` — whose running state can move: `moveTo(nodeUrl)` offloads it to a node or
 * hands it to another node, `moveTo("local")` brings it back. Messages posted at any time
 * are handled exactly once and their replies arrive in order.
 *
 * Replies arrive as `MessageEvent`s whose `data` is an ArrayBuffer.
 */
export class RoamWorker extends EventTarget {
  onmessage: ((event: MessageEvent<ArrayBuffer>) => void) | null = null;
  onerror: ((event: ErrorEvent) => void) | null = null;
  onmove: ((event: MoveEvent) => void) | null = null;
  onplacement: ((event: PlacementEvent) => void) | null = null;

  private readonly engine: Worker;
  private readonly options: ReturnType<typeof checkOptions>;
  private place: Place = "local";
  private lastDecision: PlacementDecision | null = null;
  private terminated = false;
  private nextId = 1;
  private readonly moves = new Map<number, Pending<MoveReport | null>>();
  private readonly checks = new Map<number, Pending<SnapshotCheck>>();
  private readonly started: Promise<void>;
  private startedResolve!: () => void;

  /**
   * Starts a worker from the module at `moduleUrl` (a core wasm module following the
   * Roam worker ABI), locally, in a Web Worker.
   */
  constructor(moduleUrl: string | URL, options: RoamWorkerOptions = {}) {
    super();
    this.options = checkOptions(options);
    const url = new URL(moduleUrl, globalThis.location?.href);
    this.started = new Promise((resolve) => (this.startedResolve = resolve));
    this.engine = new Worker(new URL("./engine/engine.js", import.meta.url), { type: "module" });
    this.engine.onmessage = (event: MessageEvent<FromEngine>) => this.fromEngine(event.data);
    this.engine.onerror = (event) => this.error(`the worker's engine failed: ${event.message}`);
    const o = this.options;
    const auto: AutoPlacementSettings | null = o.placement === "auto"
      ? {
          cloud: o.cloud ?? null,
          edges: o.edges,
          latencyBudgetMs: o.latencyBudgetMs ?? null,
          maxMoveStallMs: o.maxMoveStallMs ?? null,
          allowCloud: o.allowCloud,
          stayLocal: o.stayLocal,
          probeEveryMs: 500,
          discoverEveryMs: 5000,
        }
      : null;
    this.toEngine({
      kind: "start",
      settings: {
        moduleUrl: url.href,
        coreUrl: new URL("./roam_web.wasm", import.meta.url).href,
        clientName: o.name,
        deviceSlowdown: o.deviceSlowdown,
        auto,
      },
    });
  }

  /** `"auto"` or `"manual"`, as the options said. */
  get placementMode(): "auto" | "manual" {
    return this.options.placement;
  }

  /** Automatic placement's latest decision — to stay, with its reason, or to move — and
   * what it was made from; null with manual placement or before the first. */
  get placement(): PlacementDecision | null {
    return this.lastDecision;
  }

  /** Where the worker runs now: `"local"` or the node's URL. */
  get where(): Place {
    return this.place;
  }

  /** The cloud and edge URLs given in the options. */
  get nodes(): { cloud: string | undefined; edges: string[] } {
    return { cloud: this.options.cloud, edges: [...this.options.edges] };
  }

  /** Resolves once the module is loaded, prepared and started (rejects never; a failure
   * to start is reported to `onerror`). */
  get ready(): Promise<void> {
    return this.started;
  }

  postMessage(data: ArrayBuffer | ArrayBufferView | string): void {
    if (this.terminated) return;
    const bytes = bytesOf(data);
    const at = performance.timeOrigin + performance.now();
    this.toEngine({ kind: "post", data: bytes, at }, [bytes.buffer]);
  }

  /**
   * Moves the worker to `place`: `"local"` (this page) or a node's `ws://` URL. Resolves
   * with what the move cost once the worker runs there (with `null` if it already did);
   * rejects with the reason if it could not move, in which case it keeps running where it
   * was whenever it still can.
   */
  moveTo(place: Place): Promise<MoveReport | null> {
    if (this.terminated) return Promise.reject(new Error("the worker was terminated"));
    if (place !== "local" && !isNodeUrl(place)) {
      return Promise.reject(
        new TypeError(`unknown place ${JSON.stringify(place)}: a place is "local" or a node's ws:// or wss:// URL`),
      );
    }
    if (place !== "local" && this.options.stayLocal) {
      return Promise.reject(new Error(`stayLocal is set: the worker may not move to ${place}`));
    }
    if (place !== "local" && place === this.options.cloud && !this.options.allowCloud) {
      return Promise.reject(new Error(`allowCloud is false: the worker may not move to the cloud ${place}`));
    }
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.moves.set(id, { resolve, reject });
      this.toEngine({ kind: "move", id, place });
    });
  }

  /** Emulates a device `factor` times slower than this one (1 = no slowdown). */
  setDeviceSlowdown(factor: number): void {
    if (!(Number.isFinite(factor) && factor >= 1)) throw new RangeError("the slowdown factor must be ≥ 1");
    this.toEngine({ kind: "slowdown", factor });
  }

  /** Captures the local worker between two messages and resumes it from the snapshot,
   * timing both: a check that the worker can move, and a measure of what moving costs. */
  checkSnapshot(): Promise<SnapshotCheck> {
    if (this.terminated) return Promise.reject(new Error("the worker was terminated"));
    const id = this.nextId++;
    return new Promise((resolve, reject) => {
      this.checks.set(id, { resolve, reject });
      this.toEngine({ kind: "check-snapshot", id });
    });
  }

  /** Stops the worker at once, wherever it runs. */
  terminate(): void {
    if (this.terminated) return;
    this.terminated = true;
    this.toEngine({ kind: "terminate" });
    // The engine says goodbye to the node and closes itself; this is the backstop.
    setTimeout(() => this.engine.terminate(), 1000);
    const stopped = new Error("the worker was terminated");
    for (const pending of [...this.moves.values(), ...this.checks.values()]) pending.reject(stopped);
    this.moves.clear();
    this.checks.clear();
  }

  private toEngine(message: ToEngine, transfer: Transferable[] = []): void {
    this.engine.postMessage(message, transfer);
  }

  private fromEngine(message: FromEngine): void {
    if (this.terminated) return;
    switch (message.kind) {
      case "ready":
        this.startedResolve();
        break;
      case "message": {
        const event = new MessageEvent<ArrayBuffer>("message", { data: message.data });
        this.onmessage?.(event);
        this.dispatchEvent(event);
        break;
      }
      case "error":
        this.error(message.message);
        break;
      case "moved": {
        this.place = message.where;
        this.moves.get(message.id)?.resolve(message.report);
        this.moves.delete(message.id);
        if (message.report) {
          const event = new MoveEvent(message.report, message.id === 0);
          this.onmove?.(event);
          this.dispatchEvent(event);
        }
        break;
      }
      case "placement": {
        this.lastDecision = message.decision;
        if (message.decision.action !== "stay") {
          const event = new PlacementEvent(message.decision);
          this.onplacement?.(event);
          this.dispatchEvent(event);
        }
        break;
      }
      case "move-failed":
        this.place = message.where;
        this.moves.get(message.id)?.reject(new Error(message.message));
        this.moves.delete(message.id);
        break;
      case "snapshot-checked": {
        const pending = this.checks.get(message.id);
        this.checks.delete(message.id);
        if (message.result) pending?.resolve(message.result);
        else pending?.reject(new Error(message.message ?? "the snapshot check failed"));
        break;
      }
    }
  }

  private error(message: string): void {
    const event = new ErrorEvent("error", { message, error: new Error(message) });
    this.onerror?.(event);
    this.dispatchEvent(event);
  }
}
