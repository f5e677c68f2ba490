// Launches Debian's chromium headless for the tests and the benchmark.

import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chromium, type BrowserContext, type Page } from "playwright-core";

/** Where the pages are served (set by `cargo xtask`). */
export const PAGE = required("ROAM_PAGE");

function required(name: string): string {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through \`cargo xtask test\` or \`cargo xtask bench browser\``);
  return value;
}

/** A fresh browser profile each run. Without the background-networking flags chromium's
 * own connections are refused on a closed network, and it slows down trying. */
export async function launch(): Promise<{ context: BrowserContext; close(): Promise<void> }> {
  const profile = mkdtempSync(join(tmpdir(), "roam-chromium-"));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: process.env.ROAM_CHROMIUM ?? "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless",
      "--no-sandbox",
      "--disable-gpu",
      "--disable-quic",
      "--no-first-run",
      "--disable-background-networking",
      "--disable-component-update",
      "--disable-sync",
    ],
  });
  return {
    context,
    async close() {
      await context.close();
      rmSync(profile, { recursive: true, force: true });
    },
  };
}

/** Opens the test page and waits until its harness is ready; page errors and console
 * errors are collected in `problems`. */
export async function openHarness(context: BrowserContext, problems: string[]): Promise<Page> {
  const page = await context.newPage();
  page.on("pageerror", (error) => problems.push(`page error: ${error.message}`));
  page.on("console", (message) => {
    // The 404s the missing-module test asks for are expected.
    if (message.type() === "error" && !message.location().url.includes("no-such-worker")) {
      problems.push(`console error: ${message.text()}`);
    }
  });
  await page.goto(`${PAGE}/pages/test.html`);
  await page.waitForFunction(() => document.getElementById("status")?.textContent === "ready", null, { timeout: 30_000 });
  return page;
}
