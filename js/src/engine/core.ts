// The Rust core (crates/roam-web) compiled to wasm: module preparation, snapshots, the
// wire protocol and the placement policy, the same code the nodes and the native client
// run. A call is a JSON object plus binary blobs, both ways; see crates/roam-web/src/abi.rs
// for the layout.

interface CoreExports {
  memory: WebAssembly.Memory;
  roam_web_alloc(len: number): number;
  roam_web_call(ptr: number, len: number): number;
  roam_web_result_ptr(): number;
  roam_web_result_len(): number;
}

/** What a call answers: its JSON value and its blobs (copies, owned by the caller). */
export interface CoreAnswer<T> {
  json: T;
  blobs: Uint8Array[];
}

/** A prepared module, as `prepare` describes it. */
export interface ModuleInfo {
  hash: string;
  memory: { min_pages: number; max_pages: number | null };
  globals: { export: string; type: string }[];
  tables: { export: string; min: number; max: number | null }[];
  table_funcs: { index: number; export: string }[];
  has_init: boolean;
  has_initialize: boolean;
  wasi_imports: string[];
}

/** A global's value, typed as the core reads it. */
export type GlobalJson =
  | { i32: number }
  | { i64: string }
  | { f32: number }
  | { f64: string }
  | { v128: string }
  | { funcref: number | null };

/** The state of a worker between two messages, apart from its memory. */
export interface WorkerState {
  globals: GlobalJson[];
  tables: (number | null)[][];
  last_seq: number;
  clock_ns: number;
}

/** A snapshot kept in the core, and its sizes. */
export interface CaptureInfo {
  snapshot: number;
  memory_bytes: number;
  chunks: number;
  bodies: number;
  manifest_bytes: number;
  body_bytes: number;
}

/** A snapshot turned back into a memory image and the rest of the state. */
export interface Restored extends WorkerState {
  memory_size: number;
  image: Uint8Array;
}

/** An event `receive` reports for a frame from a node. */
export type NodeEvent =
  | { type: "Welcome"; version: number; node_id: string; role: string }
  | { type: "Error"; code: number; code_name: string; worker: string | null; message: string }
  | { type: "Goodbye"; reason: string }
  | { type: "Ping" }
  | { type: "Pong"; nonce: string }
  | { type: "Attached"; worker: string; last_seq: number }
  | { type: "Reply"; worker: string; seq: number; index: number; payload: Uint8Array }
  | { type: "Handled"; worker: string; seq: number; replies: number }
  | { type: "WorkerFailed"; worker: string; seq: number; reason: string }
  | { type: "Moved"; worker: string; destination: string; last_seq: number }
  | { type: "StateNeed"; module: boolean; chunks: number; module_bytes: number; state_bytes: number }
  | { type: "StateAdopted"; worker: string; last_seq: number }
  | { type: "StateBegin"; worker: string; chunks: number }
  | { type: "ChunkData"; worker: string; bodies: number }
  | { type: "StateEnd"; worker: string }
  | { type: "Nodes"; nodes: unknown[] }
  | { type: "Other"; name: string };

/** A frame the SDK sends, as `send` takes it. */
export type OutgoingFrame =
  | { type: "Post"; worker: string; seq: number }
  | { type: "ListNodes" }
  | { type: "Attach"; worker: string; secret: string }
  | { type: "MoveOut"; worker: string; destination: string }
  | { type: "Return"; worker: string }
  | { type: "StateAdopted"; worker: string; last_seq: number }
  | { type: "StateBegin"; worker: string; secret: string; snapshot: number }
  | { type: "Goodbye"; reason: string }
  | { type: "Error"; code: number; worker: string | null; message: string };

/** What a placement planner requires (crates/roam-web/src/plan.rs); times in seconds. */
export interface PlanRequirements {
  latency_budget?: number;
  max_move_stall?: number;
  allow_cloud: boolean;
  stay_local: boolean;
}

/** A measurement fed to a planner; times in seconds on the engine's clock. */
export type PlanEvent =
  | { type: "node"; url: string; kind: "edge" | "cloud"; speed?: number | null }
  | { type: "round_trip"; url: string; at: number; rtt: number }
  | { type: "transfer"; url: string; at: number; direction: "up" | "down"; bytes: number; seconds: number }
  | { type: "failure"; url: string; at: number }
  | { type: "post"; at: number; bytes: number }
  | { type: "local_run"; seconds: number; reply_bytes: number }
  | { type: "node_reply"; url: string; at: number; response: number; request_bytes: number; reply_bytes: number }
  | { type: "state_bytes"; bytes: number }
  | { type: "device_speed"; speed: number }
  | { type: "moved"; at: number; place: string };

/** What a planner knows of a node. */
export interface PlanNode {
  url: string;
  kind: "edge" | "cloud";
  speed: number | null;
  reachable: boolean;
  rtt: number | null;
  up: number | null;
  down: number | null;
  up_due: boolean;
  down_due: boolean;
}

/** What the policy predicts for one place. */
export interface PlanPrediction {
  id: string;
  latency: number | null;
  handler: number;
  utilisation: number;
  stall: number;
}

/** A planner's decision. */
export interface PlanDecision {
  move: boolean;
  to: string | null;
  reason: string;
  current: string;
  predictions: PlanPrediction[];
}

/** Protocol error codes the SDK sends (docs/protocol.md). */
export const ERROR_SNAPSHOT_REFUSED = 9;

const encoder = new TextEncoder();
const decoder = new TextDecoder();

export class RoamCore {
  private constructor(private readonly exports: CoreExports) {}

  /** Loads the core from `url` (roam_web.wasm). */
  static async load(url: URL): Promise<RoamCore> {
    const response = await fetch(url);
    if (!response.ok) {
      throw new Error(`cannot load the Roam core from ${url}: HTTP ${response.status}`);
    }
    const { instance } = await WebAssembly.instantiate(await response.arrayBuffer(), {});
    return new RoamCore(instance.exports as unknown as CoreExports);
  }

  /** Runs one call; throws an Error with the core's message if it fails. */
  call<T>(args: object, blobs: Uint8Array[] = []): CoreAnswer<T> {
    const json = encoder.encode(JSON.stringify(args));
    let len = 8 + json.length;
    for (const blob of blobs) len += 4 + blob.length;
    const ptr = this.exports.roam_web_alloc(len);
    // The view is made after the allocation, which may have grown (and so replaced) the
    // core's memory buffer.
    const request = new Uint8Array(this.exports.memory.buffer, ptr, len);
    const view = new DataView(request.buffer, ptr, len);
    let at = 0;
    view.setUint32(at, json.length, true);
    request.set(json, at + 4);
    at += 4 + json.length;
    view.setUint32(at, blobs.length, true);
    at += 4;
    for (const blob of blobs) {
      view.setUint32(at, blob.length, true);
      request.set(blob, at + 4);
      at += 4 + blob.length;
    }
    const status = this.exports.roam_web_call(ptr, len);
    const resultPtr = this.exports.roam_web_result_ptr();
    const resultLen = this.exports.roam_web_result_len();
    const result = new Uint8Array(this.exports.memory.buffer, resultPtr, resultLen);
    if (status !== 0) {
      throw new Error(decoder.decode(result));
    }
    const out = new DataView(result.buffer, resultPtr, resultLen);
    let pos = 0;
    const jsonLen = out.getUint32(pos, true);
    const answer = JSON.parse(decoder.decode(result.subarray(4, 4 + jsonLen))) as T;
    pos = 4 + jsonLen;
    const count = out.getUint32(pos, true);
    pos += 4;
    const answerBlobs: Uint8Array[] = [];
    for (let i = 0; i < count; i++) {
      const blobLen = out.getUint32(pos, true);
      answerBlobs.push(result.slice(pos + 4, pos + 4 + blobLen));
      pos += 4 + blobLen;
    }
    return { json: answer, blobs: answerBlobs };
  }

  /** Checks a module against the worker ABI and prepares it. */
  prepare(module: Uint8Array): { info: ModuleInfo; bytes: Uint8Array } {
    const { json, blobs } = this.call<ModuleInfo>({ op: "prepare" }, [module]);
    return { info: json, bytes: blobs[0] };
  }

  /** Captures a worker's memory and state into a snapshot kept in the core. */
  capture(module: string, state: WorkerState, memory: Uint8Array): CaptureInfo {
    return this.call<CaptureInfo>({ op: "capture", module, ...state }, [memory]).json;
  }

  /** The memory image and state of a snapshot kept in the core. */
  restore(snapshot: number): Restored {
    const { json, blobs } = this.call<Omit<Restored, "image">>({ op: "restore", snapshot });
    return { ...json, image: blobs[0] };
  }

  dropSnapshot(snapshot: number): void {
    this.call({ op: "drop_snapshot", snapshot });
  }

  /** A new protocol connection and the Hello to open it with. */
  open(name: string): { conn: number; hello: Uint8Array } {
    const { json, blobs } = this.call<{ conn: number }>({ op: "open", name });
    return { conn: json.conn, hello: blobs[0] };
  }

  /** The bytes of `frame`, checked against the connection's state. */
  send(conn: number, frame: OutgoingFrame, payload?: Uint8Array): Uint8Array {
    return this.call<null>({ op: "send", conn, frame }, payload ? [payload] : []).blobs[0];
  }

  /** Takes a frame from the node: the event, and the frames to send back at once. */
  receive(conn: number, frame: Uint8Array): { event: NodeEvent; send: Uint8Array[] } {
    const { json, blobs } = this.call<{ event: NodeEvent; send: number }>(
      { op: "receive", conn },
      [frame],
    );
    const event = json.event;
    if (event.type === "Reply") {
      event.payload = blobs[json.send];
    }
    return { event, send: blobs.slice(0, json.send) };
  }

  /** Restores the state a return brought in on `conn`. */
  adopt(conn: number): Restored {
    const { json, blobs } = this.call<Omit<Restored, "image">>({ op: "adopt", conn });
    return { ...json, image: blobs[0] };
  }

  close(conn: number): void {
    this.call({ op: "close", conn });
  }

  /** The calibration loop (`spin(n)`), its steps per run and the reference core's time. */
  calibration(): { module: Uint8Array; steps: number; referenceSeconds: number } {
    const { json, blobs } = this.call<{ steps: number; reference_seconds: number }>({ op: "calibration" });
    return { module: blobs[0], steps: json.steps, referenceSeconds: json.reference_seconds };
  }

  /** A placement planner for one worker on a device of `deviceSpeed`. */
  planNew(deviceSpeed: number, requirements: PlanRequirements): number {
    return this.call<{ planner: number }>({ op: "plan_new", device_speed: deviceSpeed, requirements }).json.planner;
  }

  /** Feeds measurements to a planner; answers what it knows of every node at `now`. */
  planFeed(planner: number, now: number, events: PlanEvent[]): PlanNode[] {
    return this.call<{ nodes: PlanNode[] }>({ op: "plan_feed", planner, now, events }).json.nodes;
  }

  /** Where the worker should run, at `now`. */
  planDecide(planner: number, now: number): PlanDecision {
    return this.call<PlanDecision>({ op: "plan_decide", planner, now }).json;
  }

  planDrop(planner: number): void {
    this.call({ op: "plan_drop", planner });
  }
}
