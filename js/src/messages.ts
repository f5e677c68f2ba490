// The messages between a RoamWorker (the page's thread) and its engine (the Web Worker
// that runs the worker locally and talks to nodes).

/** Where a worker runs: `"local"` (this page) or a node's `ws://` / `wss://` URL. */
export type Place = "local" | string;

/** What a move cost, as the page saw it. */
export interface MoveReport {
  /** offload (page → node), handoff (node → node) or return (node → page). */
  kind: "offload" | "handoff" | "return";
  from: Place;
  to: Place;
  /** From the request until the worker ran at the destination with all of its state. */
  durationMs: number;
  /** Reading the worker's state and building its snapshot (offload). */
  captureMs: number;
  /** Moving the state: from the first frame of the move to the destination's answer. */
  transferMs: number;
  /** Rebuilding the worker from its state (return). */
  restoreMs: number;
  /** Frame bytes this page sent and received for the move (a handoff's state goes node
   * to node and is not counted here). */
  bytesSent: number;
  bytesReceived: number;
  /** Module bytes sent (only when the node did not have the module yet). */
  moduleBytes: number;
  /** Compressed memory chunks sent or received. */
  stateBytes: number;
  /** The worker's linear memory size. */
  memoryBytes: number;
  /** Messages sent again to the destination because the source had not handled them. */
  replayed: number;
}

/** Capture and restore of the local worker, timed (see RoamWorker.checkSnapshot). */
export interface SnapshotCheck {
  memoryBytes: number;
  snapshotBytes: number;
  captureMs: number;
  restoreMs: number;
}

/** The settings the engine needs. */
export interface EngineSettings {
  moduleUrl: string;
  coreUrl: string;
  clientName: string;
  deviceSlowdown: number;
}

export type ToEngine =
  | { kind: "start"; settings: EngineSettings }
  | { kind: "post"; data: Uint8Array }
  | { kind: "move"; id: number; place: Place }
  | { kind: "slowdown"; factor: number }
  | { kind: "check-snapshot"; id: number }
  | { kind: "terminate" };

export type FromEngine =
  | { kind: "ready" }
  | { kind: "message"; data: ArrayBuffer }
  | { kind: "error"; message: string }
  | { kind: "moved"; id: number; report: MoveReport | null; where: Place }
  | { kind: "move-failed"; id: number; message: string; where: Place }
  | { kind: "snapshot-checked"; id: number; result: SnapshotCheck | null; message?: string };
