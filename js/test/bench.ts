// `cargo xtask bench browser`: the physics worker in headless chromium.
//
// 1. Frame rate at N cubes: one simulation step per frame (post a step, wait for its poses,
//    wait for the next animation frame). The device is slowed 4×: the page's thread with
//    CDP Emulation.setCPUThrottlingRate, and the worker's thread — which Chromium does not
//    let CDP throttle ("only supported for pages, not workers") — with the SDK's
//    deviceSlowdown. The worker runs on the page, or is offloaded to an edge node on this
//    machine. A column without any slowdown gives the reference.
// 2. Capture and restore inside the page (roam-snapshot compiled to wasm), at N cubes.
//
// Results: bench/results/browser.json and browser.md.

import { writeFileSync } from "node:fs";
import { cpus } from "node:os";
import { join } from "node:path";
import type { Page } from "playwright-core";
import { launch, openHarness } from "./chromium.js";

interface SnapshotCheck {
  memoryBytes: number;
  snapshotBytes: number;
  captureMs: number;
  restoreMs: number;
}

interface Harness {
  frameRate(cubes: number, place: string, ms: number, deviceSlowdown?: number): Promise<{ fps: number; stepMs: number }>;
  snapshotThroughput(cubes: number, steps: number, repeats: number): Promise<SnapshotCheck[]>;
}
declare const harness: Harness;

const CUBES = [100, 250, 500, 1000, 2000];
const THROTTLE = 4;
const MEASURE_MS = Number(process.env.ROAM_BENCH_MS ?? 4000);
const results = process.env.ROAM_RESULTS;
if (!results) throw new Error("ROAM_RESULTS is not set: run this through `cargo xtask bench browser`");

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

async function withThrottle<T>(page: Page, rate: number, body: () => Promise<T>): Promise<T> {
  const cdp = await page.context().newCDPSession(page);
  await cdp.send("Emulation.setCPUThrottlingRate", { rate });
  try {
    return await body();
  } finally {
    await cdp.send("Emulation.setCPUThrottlingRate", { rate: 1 });
    await cdp.detach();
  }
}

const started = Date.now();
const browser = await launch();
const problems: string[] = [];
const page = await openHarness(browser.context, problems);

// The edge compiles the physics module on its first visit: pay that before measuring.
await page.evaluate(() => harness.frameRate(100, "edgeA", 200));

const frameRates = [];
for (const cubes of CUBES) {
  const reference = await page.evaluate(([c, ms]) => harness.frameRate(c, "local", ms), [cubes, MEASURE_MS] as const);
  const local = await withThrottle(page, THROTTLE, () =>
    page.evaluate(([c, ms, slow]) => harness.frameRate(c, "local", ms, slow), [cubes, MEASURE_MS, THROTTLE] as const),
  );
  const offloaded = await withThrottle(page, THROTTLE, () =>
    page.evaluate(([c, ms, slow]) => harness.frameRate(c, "edgeA", ms, slow), [cubes, MEASURE_MS, THROTTLE] as const),
  );
  const row = {
    cubes,
    local_fps: local.fps,
    local_step_ms: local.stepMs,
    offloaded_fps: offloaded.fps,
    offloaded_step_ms: offloaded.stepMs,
    unthrottled_local_fps: reference.fps,
    speedup: offloaded.fps / local.fps,
  };
  console.log(
    `${cubes} cubes: local (CPU /${THROTTLE}) ${local.fps.toFixed(1)} fps, offloaded ${offloaded.fps.toFixed(1)} fps, local unthrottled ${reference.fps.toFixed(1)} fps`,
  );
  frameRates.push(row);
}

const snapshots = [];
for (const cubes of [500, 2000]) {
  const checks = await page.evaluate(([c]) => harness.snapshotThroughput(c, 60, 5), [cubes] as const);
  const memory = checks[0].memoryBytes;
  const captureMs = median(checks.map((c) => c.captureMs));
  const restoreMs = median(checks.map((c) => c.restoreMs));
  const row = {
    cubes,
    memory_bytes: memory,
    snapshot_bytes: checks[0].snapshotBytes,
    runs: checks.length,
    capture_ms: captureMs,
    restore_ms: restoreMs,
    capture_mib_per_s: memory / (1 << 20) / (captureMs / 1000),
    restore_mib_per_s: memory / (1 << 20) / (restoreMs / 1000),
  };
  console.log(
    `snapshot at ${cubes} cubes: ${(memory / (1 << 20)).toFixed(1)} MiB memory, capture ${captureMs.toFixed(1)} ms, restore ${restoreMs.toFixed(1)} ms`,
  );
  snapshots.push(row);
}

const browserVersion = browser.context.browser()?.version() ?? "chromium";
await browser.close();
if (problems.length > 0) throw new Error(`the page reported problems: ${problems.join("; ")}`);

const machine = `${cpus()[0]?.model.split(" ").slice(0, 2).join(" ") ?? "unknown"}, ${cpus().length} cores`;
const seconds = Math.round((Date.now() - started) / 1000);
const json = {
  machine,
  browser: `headless Chromium ${browserVersion}`,
  network: "loopback (127.0.0.1), no link emulation; the edge is a separate process on the same machine",
  slow_device: `page thread: CDP Emulation.setCPUThrottlingRate ${THROTTLE}; worker thread: RoamWorker deviceSlowdown ${THROTTLE} (CDP cannot throttle workers)`,
  measure_ms: MEASURE_MS,
  frame_rate: frameRates,
  snapshot: snapshots,
  seconds,
};
writeFileSync(join(results, "browser.json"), JSON.stringify(json, null, 2) + "\n");

const f1 = (x: number) => x.toFixed(1);
const md = [
  "# Browser benchmark",
  "",
  `Machine: ${machine}. Browser: ${json.browser}. Network: ${json.network}. The whole benchmark took ${seconds} s.`,
  "",
  "## Frame rate of the physics worker",
  "",
  `One simulation step per frame: the page posts a step, waits for the poses, then for the next animation frame (the poses are not drawn). Each figure is measured over ${MEASURE_MS / 1000} s after 10 warm-up frames, on a fresh worker. The slow device is slowed ${THROTTLE}×: the page's thread through CDP \`Emulation.setCPUThrottlingRate\`, and the worker's thread, which Chromium refuses to throttle through CDP ("Operation is only supported for pages, not workers"), through the SDK's \`deviceSlowdown\` (after each message the thread stays busy ${THROTTLE - 1}× the handler's time). Offloaded, the worker runs on an edge node (natively, under wasmtime, on this same 2-core machine) while the page stays slowed.`,
  "",
  `| cubes | local, CPU slowed ${THROTTLE}× (fps) | offloaded to the edge (fps) | offloaded / local | local, not slowed (fps) |`,
  "|---|---|---|---|---|",
  ...frameRates.map((r) => `| ${r.cubes} | ${f1(r.local_fps)} | ${f1(r.offloaded_fps)} | ${r.speedup.toFixed(2)}× | ${f1(r.unthrottled_local_fps)} |`),
  "",
  "## Capture and restore in the page",
  "",
  "The physics worker after 60 steps; capture reads the instance's memory, globals and tables and builds the snapshot with roam-snapshot compiled to wasm (hashing, zero-chunk elision, lz4); restore decodes it into a memory image and resumes a fresh instance from it. Medians of 5 runs, CPU not slowed.",
  "",
  "| cubes | memory | snapshot | capture | restore | capture rate | restore rate |",
  "|---|---|---|---|---|---|---|",
  ...snapshots.map(
    (s) =>
      `| ${s.cubes} | ${f1(s.memory_bytes / (1 << 20))} MiB | ${f1(s.snapshot_bytes / (1 << 20))} MiB | ${f1(s.capture_ms)} ms | ${f1(s.restore_ms)} ms | ${Math.round(s.capture_mib_per_s)} MiB/s | ${Math.round(s.restore_mib_per_s)} MiB/s |`,
  ),
  "",
].join("\n");
writeFileSync(join(results, "browser.md"), md);
console.log(md);
