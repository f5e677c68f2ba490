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

/** What automatic placement predicts for one place. */
export interface PlacePrediction {
  /** `"local"` or a node's URL. */
  place: Place;
  /** From a post to its reply, queueing included (null: not finite, messages pile up). */
  latencyMs: number | null;
  /** The handler's share of it. */
  handlerMs: number;
  /** The busiest stage's share of the time between messages (≥ 1: messages pile up). */
  utilisation: number;
  /** How long a move there would pause the worker (0 where it runs). */
  stallMs: number;
}

/** What automatic placement knows of a node. */
export interface PlacementNode {
  url: string;
  kind: "edge" | "cloud";
  /** Its calibrated speed relative to the reference core, once it said. */
  speed: number | null;
  /** The smoothed round trip of `GET /healthz`; null while it cannot be reached. */
  rttMs: number | null;
  /** Bytes per second each way from `/probe`, once measured. */
  upBytesPerSecond: number | null;
  downBytesPerSecond: number | null;
}

/** A decision of automatic placement, and why. */
export interface PlacementDecision {
  /** `move`: a move to `to` begins; `stay`: the worker stays; `move-failed`: the move to
   * `to` could not be made and the worker runs where it was. */
  action: "move" | "stay" | "move-failed";
  from: Place;
  to: Place | null;
  /** Why, in words (roam-place's reason, or why the move failed). */
  reason: string;
  predictions: PlacePrediction[];
  nodes: PlacementNode[];
  /** This device's calibrated speed relative to the reference core (slowdown included). */
  deviceSpeed: number;
}

/** Automatic placement's settings (absent: placement is manual). */
export interface AutoPlacementSettings {
  cloud: string | null;
  edges: string[];
  latencyBudgetMs: number | null;
  maxMoveStallMs: number | null;
  allowCloud: boolean;
  stayLocal: boolean;
  /** How often each node's round trip is measured. */
  probeEveryMs: number;
  /** How often the cloud is asked for its edges. */
  discoverEveryMs: number;
}

/** The settings the engine needs. */
export interface EngineSettings {
  moduleUrl: string;
  coreUrl: string;
  clientName: string;
  deviceSlowdown: number;
  auto: AutoPlacementSettings | null;
}

export type ToEngine =
  | { kind: "start"; settings: EngineSettings }
  /** `at`: when the page posted it, in ms since the epoch (`timeOrigin + now()`), a clock
   * both threads share. */
  | { kind: "post"; data: Uint8Array; at: number }
  | { kind: "move"; id: number; place: Place }
  | { kind: "slowdown"; factor: number }
  | { kind: "check-snapshot"; id: number }
  | { kind: "terminate" };

/** `id` 0 in `moved` and `move-failed`: a move automatic placement began. */
export type FromEngine =
  | { kind: "ready" }
  | { kind: "message"; data: ArrayBuffer }
  | { kind: "error"; message: string }
  | { kind: "placement"; decision: PlacementDecision }
  | { kind: "moved"; id: number; report: MoveReport | null; where: Place }
  | { kind: "move-failed"; id: number; message: string; where: Place }
  | { kind: "snapshot-checked"; id: number; result: SnapshotCheck | null; message?: string };
