// The demo page: the physics worker's cubes drawn on a canvas, one simulation step per
// frame, and buttons that move the running worker between this device, two edges and
// the cloud. Each move is listed with the stall the animation saw and its bytes.

import { RoamWorker, type MoveEvent } from "../src/index.js";

interface Config {
  cloud: string;
  edgeA: string;
  edgeB: string;
}

const config: Config = await (await fetch("/config.json")).json();
const placeNames: Record<string, string> = {
  local: "device",
  [config.edgeA]: "edge A",
  [config.edgeB]: "edge B",
  [config.cloud]: "cloud",
};
const placeUrls: Record<string, string> = {
  local: "local",
  edgeA: config.edgeA,
  edgeB: config.edgeB,
  cloud: config.cloud,
};

const element = <T extends HTMLElement>(id: string) => document.getElementById(id) as T;
const canvas = element<HTMLCanvasElement>("scene");
const fpsText = element<HTMLSpanElement>("fps");
const whereText = element<HTMLSpanElement>("where");
const slider = element<HTMLInputElement>("cubes");
const cubeCount = element<HTMLOutputElement>("cube-count");
const slow = element<HTMLInputElement>("slow");
const messageText = element<HTMLParagraphElement>("message");
const timeline = element<HTMLTableElement>("timeline").tBodies[0];
const buttons = Array.from(document.querySelectorAll<HTMLButtonElement>("button[data-place]"));

const worker = new RoamWorker("/workers/physics.wasm", {
  cloud: config.cloud,
  edges: [config.edgeA, config.edgeB],
  maxMoveStallMs: 500,
});
worker.onerror = (event) => (messageText.textContent = event.message);

// --- messages of the physics worker (workers/physics/src/lib.rs) ---

function initMessage(cubes: number): Uint8Array {
  const m = new Uint8Array(9);
  const view = new DataView(m.buffer);
  view.setUint8(0, 0);
  view.setUint32(1, cubes, true);
  view.setUint32(5, 7, true);
  return m;
}

const stepMessage = new Uint8Array([1, 1, 0, 0, 0]);

// --- drawing: a perspective camera and painter's ordering of the cubes ---

type Vec = [number, number, number];
const eye: Vec = [0, 22, 46];
const target: Vec = [0, 2, 0];
const sub = (a: Vec, b: Vec): Vec => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
const dot = (a: Vec, b: Vec) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
const cross = (a: Vec, b: Vec): Vec => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
const norm = (a: Vec): Vec => {
  const l = Math.hypot(...a);
  return [a[0] / l, a[1] / l, a[2] / l];
};
const forward = norm(sub(target, eye));
const right = norm(cross(forward, [0, 1, 0]));
const up = cross(right, forward);
const light = norm([0.4, 1, 0.6]);
const focal = 900;

function project(p: Vec): [number, number, number] {
  const d = sub(p, eye);
  const z = dot(d, forward);
  return [canvas.width / 2 + (focal * dot(d, right)) / z, canvas.height / 2 - (focal * dot(d, up)) / z, z];
}

function rotate(q: [number, number, number, number], v: Vec): Vec {
  const [x, y, z, w] = q;
  const u: Vec = [x, y, z];
  const t = cross(u, v).map((c) => 2 * c) as Vec;
  const c2 = cross(u, t);
  return [v[0] + w * t[0] + c2[0], v[1] + w * t[1] + c2[1], v[2] + w * t[2] + c2[2]];
}

const corners: Vec[] = [];
for (const x of [-0.5, 0.5]) for (const y of [-0.5, 0.5]) for (const z of [-0.5, 0.5]) corners.push([x, y, z]);
const faces: [number[], Vec][] = [
  [[0, 1, 3, 2], [-1, 0, 0]],
  [[4, 6, 7, 5], [1, 0, 0]],
  [[0, 4, 5, 1], [0, -1, 0]],
  [[2, 3, 7, 6], [0, 1, 0]],
  [[0, 2, 6, 4], [0, 0, -1]],
  [[1, 5, 7, 3], [0, 0, 1]],
];

function draw(poses: ArrayBuffer): void {
  const ctx = canvas.getContext("2d")!;
  ctx.fillStyle = "#1a2029";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  // The ground.
  ctx.fillStyle = "#26303c";
  ctx.beginPath();
  for (const [x, z] of [[-40, -40], [40, -40], [40, 40], [-40, 40]]) {
    const [sx, sy] = project([x, 0, z]);
    ctx.lineTo(sx, sy);
  }
  ctx.fill();

  const view = new DataView(poses);
  const count = view.getUint32(0, true);
  const cubes: { depth: number; at: number }[] = [];
  for (let i = 0; i < count; i++) {
    const at = 4 + i * 28;
    const p: Vec = [view.getFloat32(at, true), view.getFloat32(at + 4, true), view.getFloat32(at + 8, true)];
    cubes.push({ depth: dot(sub(p, eye), forward), at });
  }
  cubes.sort((a, b) => b.depth - a.depth);
  for (const { at } of cubes) {
    const f = (k: number) => view.getFloat32(at + 4 * k, true);
    const center: Vec = [f(0), f(1), f(2)];
    const q: [number, number, number, number] = [f(3), f(4), f(5), f(6)];
    const world = corners.map((c) => {
      const r = rotate(q, c);
      return [r[0] + center[0], r[1] + center[1], r[2] + center[2]] as Vec;
    });
    const screen = world.map(project);
    for (const [indices, normal] of faces) {
      const n = rotate(q, normal);
      if (dot(n, sub(world[indices[0]], eye)) >= 0) continue; // faces away
      const shade = 0.35 + 0.65 * Math.max(0, dot(n, light));
      const hue = (center[0] * 7 + center[2] * 5 + 360) % 360;
      ctx.fillStyle = `hsl(${hue.toFixed(0)} 55% ${(shade * 55).toFixed(0)}%)`;
      ctx.beginPath();
      for (const i of indices) ctx.lineTo(screen[i][0], screen[i][1]);
      ctx.closePath();
      ctx.fill();
    }
  }
}

// --- the loop: post a step, draw the reply, next frame ---

let resolveReply: (data: ArrayBuffer) => void = () => {};
worker.onmessage = (event) => resolveReply(event.data);
const reply = () => new Promise<ArrayBuffer>((resolve) => (resolveReply = resolve));

let pendingInit: number | null = Number(slider.value);
const frameTimes: number[] = [];
const gaps: number[] = [];
/** When the last reply came; null before the first (whose wait includes the start-up). */
let lastReply: number | null = null;

/** The move in progress, measured from the animation's point of view. */
let open: { from: string; to: string; longestGap: number; baseline: number; done: MoveEvent | null } | null = null;

function onReply(now: number): void {
  const gap = lastReply === null ? 0 : now - lastReply;
  const first = lastReply === null;
  lastReply = now;
  if (open) {
    open.longestGap = Math.max(open.longestGap, gap);
    if (open.done) {
      addMove(open.done, Math.max(0, open.longestGap - open.baseline));
      open = null;
    }
  } else if (!first) {
    gaps.push(gap);
    if (gaps.length > 30) gaps.shift();
  }
  frameTimes.push(now);
  while (frameTimes.length > 0 && now - frameTimes[0] > 1000) frameTimes.shift();
}

async function loop(): Promise<void> {
  await worker.ready;
  for (;;) {
    const next = reply();
    if (pendingInit !== null) {
      worker.postMessage(initMessage(pendingInit));
      pendingInit = null;
    } else {
      worker.postMessage(stepMessage);
    }
    const poses = await next;
    onReply(performance.now());
    draw(poses);
    await new Promise((r) => requestAnimationFrame(r));
  }
}

setInterval(() => (fpsText.textContent = String(frameTimes.length)), 250);

// --- controls ---

slider.oninput = () => (cubeCount.textContent = slider.value);
slider.onchange = () => (pendingInit = Number(slider.value));
slow.onchange = () => worker.setDeviceSlowdown(slow.checked ? 4 : 1);

function median(values: number[]): number {
  if (values.length === 0) return 0;
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)];
}

function showWhere(): void {
  whereText.textContent = placeNames[worker.where] ?? worker.where;
  for (const button of buttons) {
    button.classList.toggle("here", placeUrls[button.dataset.place!] === worker.where);
  }
}

function addMove(event: MoveEvent, stall: number): void {
  const r = event.report;
  const row = timeline.insertRow(0);
  const bytes = r.bytesSent + r.bytesReceived;
  const cells = [
    `${placeNames[r.from] ?? r.from} → ${placeNames[r.to] ?? r.to}`,
    r.kind,
    stall.toFixed(0),
    r.durationMs.toFixed(0),
    bytes >= 1 << 20 ? `${(bytes / (1 << 20)).toFixed(2)} MiB` : `${(bytes / 1024).toFixed(1)} KiB`,
  ];
  for (const text of cells) row.insertCell().textContent = text;
}

for (const button of buttons) {
  button.onclick = async () => {
    const place = placeUrls[button.dataset.place!];
    if (place === worker.where) return;
    buttons.forEach((b) => (b.disabled = true));
    messageText.textContent = "";
    open = { from: worker.where, to: place, longestGap: 0, baseline: median(gaps), done: null };
    const started = open;
    worker.onmove = (event) => (started.done = event);
    try {
      await worker.moveTo(place);
    } catch (e) {
      messageText.textContent = e instanceof Error ? e.message : String(e);
      open = null;
    } finally {
      buttons.forEach((b) => (b.disabled = false));
      showWhere();
    }
  };
}

showWhere();
void loop();
