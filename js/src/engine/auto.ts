// Automatic placement in the engine: measures what the placement policy needs and moves
// the worker where its messages are answered soonest. The decision is roam-place's,
// compiled into the core (crates/roam-web/src/plan.rs); this side feeds it, as the native
// client's AutoPlacer (crates/roam-client/src/auto.rs) does:
//
// - the device's speed: the calibration loop nodes time at start, timed here on the
//   engine's thread (divided by the emulated slowdown, as the worker's thread is slowed);
// - each node's round trip every `probeEveryMs` (`GET /healthz`, which also gives its role
//   and speed), and its bandwidth each way (`GET /probe?bytes=N`, `POST /probe`) when the
//   last sample is over 10 s old and the worker's messages are not on that link;
// - the edges the cloud lists (ListNodes) every `discoverEveryMs`;
// - every message: when it was posted, its size, the handler's time here or the response
//   time at a node, the replies' size; and the worker's state size, from its memory.
//
// Every `TICK_MS` the measurements go to the planner, which decides; a move it asks for
// runs through the engine's command queue like one the page asked for.

import type { AutoPlacementSettings, PlacementDecision, PlacementNode, Place } from "../messages.js";
import { NodeConnection } from "./conn.js";
import type { PlanEvent, PlanNode, RoamCore } from "./core.js";

/** How often the planner decides. */
const TICK_MS = 250;
/** Bytes of the bandwidth probes, as the native client's. */
const PROBE_DOWN = 256 << 10;
const PROBE_UP = 128 << 10;
/** A probe or a discovery not answered within this has failed. */
const PROBE_TIMEOUT_MS = 2000;
const DISCOVER_TIMEOUT_MS = 5000;
/** Compressed state per byte of non-zero memory, before a move has shown the real ratio. */
const COMPRESSION_GUESS = 0.6;
/** How often the state's size is measured (it scans the worker's memory). */
const STATE_EVERY_MS = 5000;
/** Edges learnt from the cloud that are probed, at most (the core keeps 64 nodes). */
const MAX_EDGES = 32;
/** Round trips a node's sample is the median of: a loaded browser answers a probe now
 * and then tens of ms late, which one raw sample would carry into the average. */
const RTT_WINDOW = 3;

/** A probe's answer and how long it took: `wall` on this thread's clock (from the call to
 * the body's end, so a busy thread adds to it), `phases` as the network stack saw them —
 * request sent to first byte back, and the body's arrival — when the browser reports
 * them. */
interface Timed {
  body: ArrayBuffer;
  wall: number;
  phases: { firstByte: number; body: number } | null;
}

/** What the placer needs of the engine. */
export interface PlacedWorker {
  /** Where the worker runs: `"local"`, a node's URL, or `"nowhere"`. */
  readonly where: Place;
  /** Non-zero bytes of the worker's memory when it runs here, else null. */
  localStateBytes(): number | null;
  /** Queues a move; resolves once it ended, with the reason it failed (or null). */
  move(place: Place): Promise<string | null>;
  /** Tells the page. */
  decided(decision: PlacementDecision): void;
  /** Automatic placement cannot go on. */
  broke(message: string): void;
}

/** Seconds on the engine's clock: the planner's time. */
export function nowSeconds(): number {
  return performance.now() / 1000;
}

/** `http(s)://host:port` of the node at `ws(s)://host:port/...`. */
function httpBase(url: string): string {
  const parsed = new URL(url);
  return `${parsed.protocol === "wss:" ? "https:" : "http:"}//${parsed.host}`;
}

function isNodeUrl(url: unknown): url is string {
  if (typeof url !== "string" || url.length > 2048) return false;
  try {
    const parsed = new URL(url);
    return (parsed.protocol === "ws:" || parsed.protocol === "wss:") && parsed.host !== "";
  } catch {
    return false;
  }
}

function messageOf(error: unknown): string {
  return error instanceof Error ? error.message : String(error);
}

/** Times the calibration loop as `roam_runtime::calibrate` does: one untimed run of a
 * tenth, then the fastest of `runs`, yielding in between so the engine's optimising
 * compiler can take over from the baseline one. */
async function calibrate(core: RoamCore, runs: number): Promise<number> {
  const { module, steps, referenceSeconds } = core.calibration();
  const { instance } = await WebAssembly.instantiate(module as Uint8Array<ArrayBuffer>, {});
  const spin = instance.exports.spin as (n: number) => number;
  spin(steps / 10);
  let best = Infinity;
  for (let i = 0; i < runs; i++) {
    await new Promise((r) => setTimeout(r, 0));
    const started = performance.now();
    spin(steps);
    best = Math.min(best, performance.now() - started);
  }
  return referenceSeconds / Math.max(best / 1000, 1e-6);
}

export class AutoPlacer {
  private readonly events: PlanEvent[] = [];
  private nodes: PlanNode[] = [];
  private readonly watched = new Set<string>();
  private readonly stop = new AbortController();
  private readonly ticker: ReturnType<typeof setInterval>;
  private current: Place = "local";
  private moving = false;
  private lastStateAt = -Infinity;
  private broken = false;
  private requests = 0;
  /** Nodes watched whose first probe has not ended, with when they were added: the first
   * decisions wait for them (and for the cloud's first list of edges), so the worker is
   * not sent to whichever node answered first. */
  private readonly unprobed = new Map<string, number>();
  private discovering = false;
  /** The probes' Resource Timing entries by URL, as the browser reports them: after the
   * body has been read, not always before. */
  private readonly timings = new Map<string, PerformanceResourceTiming>();
  private readonly observer = new PerformanceObserver((list) => {
    for (const entry of list.getEntries()) {
      if (this.awaited.has(entry.name)) this.timings.set(entry.name, entry as PerformanceResourceTiming);
    }
  });
  private readonly awaited = new Set<string>();

  private constructor(
    private readonly core: RoamCore,
    private readonly planner: number,
    private readonly worker: PlacedWorker,
    private readonly settings: AutoPlacementSettings,
    private readonly clientName: string,
    private deviceSpeed: number,
    private readonly baseSpeed: number,
  ) {
    this.ticker = setInterval(() => this.tick(), TICK_MS);
    this.observer.observe({ type: "resource" });
    if (settings.stayLocal) return; // nothing to measure: the worker never leaves
    if (settings.cloud) {
      if (settings.allowCloud) this.watch(settings.cloud, "cloud");
      this.discovering = true;
      void this.discover(settings.cloud);
    }
    for (const edge of settings.edges) this.watch(edge, "edge");
  }

  /** Calibrates this device and starts measuring. */
  static async start(
    core: RoamCore,
    worker: PlacedWorker,
    settings: AutoPlacementSettings,
    clientName: string,
    slowdown: number,
  ): Promise<AutoPlacer> {
    const baseSpeed = await calibrate(core, 3);
    const deviceSpeed = baseSpeed / slowdown;
    const planner = core.planNew(deviceSpeed, {
      latency_budget: settings.latencyBudgetMs === null ? undefined : settings.latencyBudgetMs / 1000,
      max_move_stall: settings.maxMoveStallMs === null ? undefined : settings.maxMoveStallMs / 1000,
      allow_cloud: settings.allowCloud,
      stay_local: settings.stayLocal,
    });
    return new AutoPlacer(core, planner, worker, settings, clientName, deviceSpeed, baseSpeed);
  }

  /** The application posted `bytes` at `at` (seconds). */
  onPost(at: number, bytes: number): void {
    this.events.push({ type: "post", at, bytes });
  }

  /** A message ran here in `seconds`, replying `replyBytes` in all. */
  onLocalRun(seconds: number, replyBytes: number): void {
    this.events.push({ type: "local_run", seconds, reply_bytes: replyBytes });
  }

  /** A message posted at `postedAt` was handled at node `url`, `response` seconds later. */
  onNodeReply(url: string, postedAt: number, response: number, requestBytes: number, replyBytes: number): void {
    if (!this.watched.has(url)) return;
    this.events.push({
      type: "node_reply",
      url,
      at: postedAt + response,
      response,
      request_bytes: requestBytes,
      reply_bytes: replyBytes,
    });
  }

  /** The emulated slowdown changed. */
  setSlowdown(factor: number): void {
    this.deviceSpeed = this.baseSpeed / factor;
    this.events.push({ type: "device_speed", speed: this.deviceSpeed });
  }

  /** Stops every probe, discovery and decision. */
  terminate(): void {
    this.stop.abort();
    clearInterval(this.ticker);
    this.observer.disconnect();
    this.watched.clear();
    try {
      this.core.planDrop(this.planner);
    } catch {
      // already gone
    }
  }

  private get stopped(): boolean {
    return this.stop.signal.aborted || this.broken;
  }

  /** Hands the measurements to the planner; keeps what it says of the nodes. */
  private flush(): boolean {
    if (this.stopped) return false;
    const events = this.events.splice(0);
    try {
      this.nodes = this.core.planFeed(this.planner, nowSeconds(), events);
      return true;
    } catch (e) {
      this.broken = true;
      clearInterval(this.ticker);
      this.worker.broke(`automatic placement stopped: ${messageOf(e)}`);
      return false;
    }
  }

  /** Starts measuring `url`, unless it already is. */
  private watch(url: string, kind: "edge" | "cloud"): void {
    if (this.stopped || this.watched.has(url) || !isNodeUrl(url)) return;
    this.watched.add(url);
    this.unprobed.set(url, performance.now());
    this.events.push({ type: "node", url, kind });
    void this.probe(url);
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, ms);
      this.stop.signal.addEventListener("abort", () => {
        clearTimeout(timer);
        resolve();
      }, { once: true });
    });
  }

  /** A probe request, read to its end, that fails after PROBE_TIMEOUT_MS or when the
   * placer stops; with the network stack's timing of it when the browser kept one. */
  private async fetch(url: string, init: RequestInit = {}): Promise<Timed> {
    // A unique URL finds the request's own Resource Timing entry.
    const unique = new URL(`${url}${url.includes("?") ? "&" : "?"}n=${++this.requests}`).href;
    this.awaited.add(unique);
    let body: ArrayBuffer;
    let wall: number;
    let entry: PerformanceResourceTiming | undefined;
    try {
      const started = performance.now();
      const response = await fetch(unique, {
        ...init,
        cache: "no-store",
        signal: AbortSignal.any([this.stop.signal, AbortSignal.timeout(PROBE_TIMEOUT_MS)]),
      });
      if (!response.ok) throw new Error(`HTTP ${response.status}`);
      body = await response.arrayBuffer();
      wall = (performance.now() - started) / 1000;
      for (let i = 0; i < 20 && !this.timings.has(unique) && !this.stopped; i++) {
        await new Promise((r) => setTimeout(r, 5));
      }
      entry = this.timings.get(unique);
    } finally {
      this.awaited.delete(unique);
      this.timings.delete(unique);
      // The buffer would fill up (250 entries) and stop taking any.
      performance.clearResourceTimings();
    }
    // The nodes send Timing-Allow-Origin, which opens the request's phases to this origin.
    const phases = entry && entry.requestStart > 0 && entry.responseStart >= entry.requestStart
      ? {
          firstByte: (entry.responseStart - entry.requestStart) / 1000,
          body: Math.max(0, entry.responseEnd - entry.responseStart) / 1000,
        }
      : null;
    return { body, wall, phases };
  }

  /** Measures one node until the placer stops. */
  private async probe(url: string): Promise<void> {
    const base = httpBase(url);
    // A first request that is not timed: a new connection's first answers can take
    // hundreds of ms, and the first sample is the average's starting point.
    await this.fetch(`${base}/healthz`).catch(() => null);
    const recent: number[] = [];
    while (!this.stopped && this.watched.has(url)) {
      try {
        const answer = await this.fetch(`${base}/healthz`);
        const health = JSON.parse(new TextDecoder().decode(answer.body)) as { role?: unknown; speed?: unknown };
        const rtt = answer.phases?.firstByte ?? answer.wall;
        if (this.stopped) return;
        const speed = typeof health.speed === "number" && Number.isFinite(health.speed) && health.speed > 0
          ? health.speed
          : null;
        this.events.push({ type: "node", url, kind: health.role === "cloud" ? "cloud" : "edge", speed });
        recent.push(rtt);
        if (recent.length > RTT_WINDOW) recent.shift();
        const median = [...recent].sort((a, b) => a - b)[Math.floor(recent.length / 2)];
        this.events.push({ type: "round_trip", url, at: nowSeconds(), rtt: median });
        // The first decisions wait for a full window.
        if (recent.length >= RTT_WINDOW) this.unprobed.delete(url);
        await this.measureBandwidth(url, base);
      } catch (e) {
        if (this.stopped) return;
        this.events.push({ type: "failure", url, at: nowSeconds() });
        this.unprobed.delete(url);
      }
      await this.sleep(this.settings.probeEveryMs);
    }
  }

  /** Times a download and an upload to `url` when due and the worker's messages are not
   * on that link; the round trip is taken off. */
  private async measureBandwidth(url: string, base: string): Promise<void> {
    for (const direction of ["down", "up"] as const) {
      if (!this.flush() || this.current === url) return;
      const node = this.nodes.find((n) => n.url === url);
      const due = direction === "down" ? node?.down_due : node?.up_due;
      if (!node?.reachable || node.rtt === null || !due) continue;
      let bytes: number;
      let seconds: number;
      if (direction === "down") {
        const answer = await this.fetch(`${base}/probe?bytes=${PROBE_DOWN}`);
        bytes = answer.body.byteLength;
        // The body's arrival; without the phases, the whole request less a round trip.
        seconds = answer.phases ? answer.phases.body + answer.phases.firstByte - node.rtt : answer.wall - node.rtt;
      } else {
        // text/plain: a simple request, which a browser sends without a preflight.
        const answer = await this.fetch(`${base}/probe`, {
          method: "POST",
          headers: { "Content-Type": "text/plain" },
          body: new Uint8Array(PROBE_UP),
        });
        bytes = PROBE_UP;
        seconds = (answer.phases?.firstByte ?? answer.wall) - node.rtt;
      }
      seconds = Math.max(seconds, 1e-4);
      if (this.stopped) return;
      this.events.push({ type: "transfer", url, at: nowSeconds(), direction, bytes, seconds });
    }
  }

  /** Asks the cloud for its edges until the placer stops. */
  private async discover(cloud: string): Promise<void> {
    while (!this.stopped) {
      try {
        for (const edge of await this.listEdges(cloud)) {
          if (this.watched.size > MAX_EDGES) break;
          this.watch(edge, "edge");
        }
      } catch {
        // The cloud's own probe reports it unreachable; the next round asks again.
      }
      this.discovering = false;
      await this.sleep(this.settings.discoverEveryMs);
    }
  }

  /** The URLs of the edges registered with `cloud`. */
  private async listEdges(cloud: string): Promise<string[]> {
    let conn: NodeConnection | null = null;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${cloud} did not list its nodes in time`)), DISCOVER_TIMEOUT_MS);
    });
    const listing = (async () => {
      conn = await NodeConnection.open(this.core, cloud, this.clientName);
      if (this.stopped) return [];
      const nodes = conn.next(["Nodes"]);
      conn.send({ type: "ListNodes" });
      return (await nodes).nodes;
    })();
    try {
      const nodes = await Promise.race([listing, timeout]);
      return nodes
        .map((n) => n as { url?: unknown; role?: unknown })
        .filter((n) => n.role === "edge" && isNodeUrl(n.url))
        .map((n) => n.url as string);
    } finally {
      clearTimeout(timer);
      // A connection that opens after the timeout is closed as soon as it does.
      void listing.catch(() => []).finally(() => (conn as NodeConnection | null)?.close());
    }
  }

  /** Takes in where the worker is and what it weighs, decides, and begins a move that
   * pays. */
  private tick(): void {
    if (this.stopped || this.moving) return;
    const where = this.worker.where;
    if (where === "nowhere") return;
    const now = nowSeconds();
    if (where !== this.current) {
      // A move ended (or failed back to where it was), or the page moved the worker.
      this.current = where;
      this.events.push({ type: "moved", at: now, place: where });
      if (where !== "local") this.watch(where, "edge");
    }
    if (where === "local" && performance.now() - this.lastStateAt > STATE_EVERY_MS) {
      const bytes = this.worker.localStateBytes();
      if (bytes !== null) {
        this.events.push({ type: "state_bytes", bytes: Math.round(bytes * COMPRESSION_GUESS) });
        this.lastStateAt = performance.now();
      }
    }
    if (!this.flush()) return;
    const waited = (since: number) => performance.now() - since > PROBE_TIMEOUT_MS * 2;
    if (this.discovering || [...this.unprobed.values()].some((since) => !waited(since))) return;
    let decision;
    try {
      decision = this.core.planDecide(this.planner, now);
    } catch (e) {
      this.broken = true;
      clearInterval(this.ticker);
      this.worker.broke(`automatic placement stopped: ${messageOf(e)}`);
      return;
    }
    const to = decision.move ? decision.to : null;
    const view: PlacementDecision = {
      action: to ? "move" : "stay",
      from: where,
      to,
      reason: decision.reason,
      predictions: decision.predictions.map((p) => ({
        place: p.id,
        latencyMs: p.latency === null ? null : p.latency * 1000,
        handlerMs: p.handler * 1000,
        utilisation: p.utilisation,
        stallMs: p.stall * 1000,
      })),
      nodes: this.nodes.map((n): PlacementNode => ({
        url: n.url,
        kind: n.kind,
        speed: n.speed,
        rttMs: n.rtt === null ? null : n.rtt * 1000,
        upBytesPerSecond: n.up,
        downBytesPerSecond: n.down,
      })),
      deviceSpeed: this.deviceSpeed,
    };
    this.worker.decided(view);
    if (!to) return;
    // The planner counts its dwell time from the move's start; a move that fails brings
    // the worker back to `where`, which the next tick reports.
    this.moving = true;
    this.current = to;
    this.events.push({ type: "moved", at: now, place: to });
    void this.worker.move(to).then((failure) => {
      this.moving = false;
      if (failure !== null && !this.stopped) {
        this.worker.decided({ ...view, action: "move-failed", reason: failure, from: this.worker.where });
      }
    });
  }
}
