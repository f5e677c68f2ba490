// What the browser tests and the benchmark drive inside the page (pages/test.html):
// workers run through plans of moves while messages are posted, and the replies they saw.

import {
  RoamWorker,
  type MoveEvent,
  type MoveReport,
  type PlacementDecision,
  type PlacementEvent,
  type RoamWorkerOptions,
  type SnapshotCheck,
} from "../src/index.js";

interface Config {
  cloud: string;
  edgeA: string;
  edgeB: string;
  /** An edge that reports itself 100 times as fast as the reference core (tests only). */
  fastEdge: string | null;
}

/** A place by the name the tests use. */
type PlaceName = "local" | "edgeA" | "edgeB" | "cloud";

/** Post `messages` messages while the worker moves to `place` (half before the move is
 * asked for, half after). */
interface Step {
  place: PlaceName;
  messages: number;
}

interface RunResult {
  /** One entry per reply, in order: the reply's bytes as hex (counter) or its SHA-256. */
  replies: string[];
  moves: MoveReport[];
  where: string[];
  errors: string[];
}

const config: Config = await (await fetch("/config.json")).json();

function placeUrl(name: PlaceName): string {
  return name === "local" ? "local" : config[name];
}

function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function physicsInit(cubes: number, seed: number): Uint8Array {
  const message = new Uint8Array(9);
  const view = new DataView(message.buffer);
  message[0] = 0;
  view.setUint32(1, cubes, true);
  view.setUint32(5, seed, true);
  return message;
}

function physicsStep(steps: number): Uint8Array {
  const message = new Uint8Array(5);
  message[0] = 1;
  new DataView(message.buffer).setUint32(1, steps, true);
  return message;
}

/** Waits until `check` holds, polling; fails after `ms`. */
async function until(check: () => boolean, ms: number, what: string): Promise<void> {
  const deadline = performance.now() + ms;
  while (!check()) {
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 5));
  }
}

/** Runs the counter or physics worker through `steps`; counter messages alternate
 * between strings and typed arrays, so both ways of posting are used. */
async function run(kind: "counter" | "physics", steps: Step[], cubes = 200): Promise<RunResult> {
  const worker = new RoamWorker(`/workers/${kind}.wasm`, {
    cloud: config.cloud,
    edges: [config.edgeA, config.edgeB],
  });
  const replies: ArrayBuffer[] = [];
  const errors: string[] = [];
  const moves: MoveReport[] = [];
  const where: string[] = [];
  worker.onmessage = (event) => replies.push(event.data);
  worker.onerror = (event) => errors.push(event.message);
  worker.addEventListener("move", (event) => moves.push((event as Event & { report: MoveReport }).report));
  await worker.ready;

  let posted = 0;
  const post = () => {
    posted += 1;
    if (kind === "physics") {
      worker.postMessage(posted === 1 ? physicsInit(cubes, 7) : physicsStep(1));
    } else if (posted % 2 === 0) {
      worker.postMessage(`message ${posted}`);
    } else {
      worker.postMessage(new TextEncoder().encode(`message ${posted}`));
    }
  };
  for (const step of steps) {
    const half = Math.floor(step.messages / 2);
    for (let i = 0; i < half; i++) post();
    const moved = worker.moveTo(placeUrl(step.place));
    for (let i = half; i < step.messages; i++) post();
    await moved;
    where.push(worker.where);
  }
  await until(() => replies.length >= posted || errors.length > 0, 60_000, `${posted} replies`);
  // A moment for any reply that should not come (a duplicate) to show up.
  await new Promise((r) => setTimeout(r, 200));
  worker.terminate();
  const digests = await Promise.all(
    replies.map(async (reply) =>
      kind === "counter" ? hex(new Uint8Array(reply)) : hex(new Uint8Array(await crypto.subtle.digest("SHA-256", reply))),
    ),
  );
  return { replies: digests, moves, where, errors };
}

/** What a physics worker under automatic placement did. */
interface AutoResult {
  replies: string[];
  /** Each move: kind, from, to, whether automatic placement made it, and how many
   * messages had been posted when it ended. */
  moves: { kind: string; from: string; to: string; automatic: boolean; afterPosts: number; durationMs: number }[];
  /** Each placement event: its action, target and reason, and how many messages had been
   * posted then. */
  placements: { action: string; to: string | null; reason: string; afterPosts: number; decision: PlacementDecision }[];
  /** The last decision, whatever it was. */
  last: PlacementDecision | null;
  where: string;
  errors: string[];
}

/** A physics worker of `cubes` cubes with automatic placement (unless `options` say
 * otherwise), posted `total` messages one every `paceMs`: `steps` steps each, and the
 * scene built afresh every `reinitEvery` messages (first of all too), so the cubes never
 * come to rest and every message keeps costing about the same. */
async function autoRun(
  total: number,
  paceMs: number,
  cubes: number,
  steps: number,
  reinitEvery: number,
  options: RoamWorkerOptions,
): Promise<AutoResult> {
  const worker = new RoamWorker("/workers/physics.wasm", { cloud: config.cloud, placement: "auto", ...options });
  const replies: ArrayBuffer[] = [];
  const errors: string[] = [];
  const moves: AutoResult["moves"] = [];
  const placements: AutoResult["placements"] = [];
  let posted = 0;
  worker.onmessage = (event) => replies.push(event.data);
  worker.onerror = (event) => errors.push(event.message);
  worker.onmove = (event: MoveEvent) => {
    const { kind, from, to, durationMs } = event.report;
    moves.push({ kind, from, to, automatic: event.automatic, afterPosts: posted, durationMs });
  };
  worker.addEventListener("placement", (event) => {
    const decision = (event as PlacementEvent).decision;
    const { action, to, reason } = decision;
    placements.push({ action, to, reason, afterPosts: posted, decision });
  });
  await worker.ready;
  const started = performance.now();
  while (posted < total) {
    posted += 1;
    worker.postMessage(posted % reinitEvery === 1 ? physicsInit(cubes, 7) : physicsStep(steps));
    // A steady pace, kept against the clock rather than from one post to the next.
    const next = started + posted * paceMs;
    await new Promise((r) => setTimeout(r, Math.max(0, next - performance.now())));
  }
  await until(() => replies.length >= total || errors.length > 0, 60_000, `${total} replies`);
  await new Promise((r) => setTimeout(r, 200));
  const result = { moves, placements, last: worker.placement, where: worker.where, errors };
  worker.terminate();
  const digests = await Promise.all(
    replies.map(async (reply) => hex(new Uint8Array(await crypto.subtle.digest("SHA-256", reply)))),
  );
  return { replies: digests, ...result };
}

/** Starts a worker from `url` with `options`; resolves with the first error reported. */
async function startError(url: string, options: RoamWorkerOptions = {}): Promise<string> {
  try {
    const worker = new RoamWorker(url, options);
    return await new Promise<string>((resolve) => {
      worker.onerror = (event) => {
        worker.terminate();
        resolve(event.message);
      };
      void worker.ready.then(() => setTimeout(() => resolve("no error"), 2000));
    });
  } catch (e) {
    return `thrown: ${e instanceof Error ? e.message : String(e)}`;
  }
}

/** A counter worker asked to move to `place` with `options`: the refusal, and whether the
 * worker still answers where it was. */
async function refusedMove(place: string, options: RoamWorkerOptions = {}): Promise<{ refusal: string; where: string; answered: boolean }> {
  const worker = new RoamWorker("/workers/counter.wasm", options);
  await worker.ready;
  let refusal = "no refusal";
  try {
    await worker.moveTo(place);
  } catch (e) {
    refusal = e instanceof Error ? `${e.name}: ${e.message}` : String(e);
  }
  const answer = new Promise<boolean>((resolve) => {
    worker.onmessage = () => resolve(true);
    setTimeout(() => resolve(false), 5000);
  });
  worker.postMessage("still there?");
  const answered = await answer;
  const where = worker.where;
  worker.terminate();
  return { refusal, where, answered };
}

/** Physics: steps, a snapshot check (capture and restore in this page), more steps. */
async function snapshotRoundTrip(cubes: number, before: number, after: number): Promise<{ replies: string[]; check: SnapshotCheck }> {
  const worker = new RoamWorker("/workers/physics.wasm");
  const replies: ArrayBuffer[] = [];
  worker.onmessage = (event) => replies.push(event.data);
  await worker.ready;
  worker.postMessage(physicsInit(cubes, 7));
  for (let i = 0; i < before; i++) worker.postMessage(physicsStep(1));
  const check = await worker.checkSnapshot();
  for (let i = 0; i < after; i++) worker.postMessage(physicsStep(1));
  await until(() => replies.length >= 1 + before + after, 60_000, "physics replies");
  worker.terminate();
  const digests = await Promise.all(
    replies.map(async (reply) => hex(new Uint8Array(await crypto.subtle.digest("SHA-256", reply)))),
  );
  return { replies: digests, check };
}

/** Frames per second of the physics worker at `cubes` cubes where it runs: one step per
 * frame, the next posted once the reply arrived, for `ms` after a warm-up. */
async function frameRate(cubes: number, place: PlaceName, ms: number, deviceSlowdown = 1): Promise<{ fps: number; stepMs: number }> {
  const worker = new RoamWorker("/workers/physics.wasm", { deviceSlowdown });
  let resolveReply: () => void = () => {};
  worker.onmessage = () => resolveReply();
  const next = () => new Promise<void>((r) => (resolveReply = r));
  await worker.ready;
  let reply = next();
  worker.postMessage(physicsInit(cubes, 7));
  await reply;
  if (place !== "local") await worker.moveTo(placeUrl(place));
  const frame = async () => {
    reply = next();
    worker.postMessage(physicsStep(1));
    await reply;
    await new Promise((r) => requestAnimationFrame(r));
  };
  for (let i = 0; i < 10; i++) await frame();
  let frames = 0;
  const start = performance.now();
  while (performance.now() - start < ms) {
    await frame();
    frames += 1;
  }
  const elapsed = performance.now() - start;
  worker.terminate();
  return { fps: (frames * 1000) / elapsed, stepMs: elapsed / frames };
}

/** Physics at `cubes` cubes after `steps` steps, then `repeats` snapshot checks (each a
 * capture and a restore in this page). */
async function snapshotThroughput(cubes: number, steps: number, repeats: number): Promise<SnapshotCheck[]> {
  const worker = new RoamWorker("/workers/physics.wasm");
  let replies = 0;
  worker.onmessage = () => (replies += 1);
  await worker.ready;
  worker.postMessage(physicsInit(cubes, 7));
  for (let i = 0; i < steps; i++) worker.postMessage(physicsStep(1));
  await until(() => replies === steps + 1, 120_000, "physics replies");
  const checks: SnapshotCheck[] = [];
  for (let i = 0; i < repeats; i++) checks.push(await worker.checkSnapshot());
  worker.terminate();
  return checks;
}

const harness = { config, run, autoRun, startError, refusedMove, snapshotRoundTrip, frameRate, snapshotThroughput };
(globalThis as unknown as { harness: typeof harness }).harness = harness;
document.getElementById("status")!.textContent = "ready";
