// The chat end to end: the gateway with jwt-auth and ticker plugins, the page served by
// server.js, two headless Chromium pages. They log in, talk, see each other join and
// leave, exchange a direct message, show the ticker's time, and a reload resumes the
// room without losing what was said meanwhile. CHAT_SCREENSHOT=1 writes screenshot.png.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import { createRequire } from "node:module";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { Gateway, repoRoot } from "../../../sdk/js/test/support.js";
import { serve } from "../server.js";

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const pluginDir = process.env.EDGESYNC_PLUGIN_DIR ?? path.join(repoRoot, "target/wasm-plugins/wasm32-wasip2/release");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

let gw;
let web;
let browser;
before(async () => {
  const config = (await readFile(path.join(dir, "gateway.toml"), "utf8")).replaceAll("plugins/dist", pluginDir);
  gw = await Gateway.start({ config });
  web = await serve({ port: 0, gateway: gw.url });
  const { chromium } = createRequire(path.join(repoRoot, "sdk/js/package.json"))("playwright-core");
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
  });
});
after(async () => {
  await browser?.close();
  await new Promise((r) => (web ? web.server.close(r) : r()));
  await gw?.dispose();
});

async function enter(name) {
  const page = await browser.newPage({ viewport: { width: 900, height: 520 } });
  page.errors = [];
  page.on("pageerror", (e) => page.errors.push(e));
  await page.goto(web.url);
  await page.fill("#login-name", name);
  await page.click("#login-btn");
  await page.waitForFunction(() => window.chat?.ready === true, null, { timeout: 20_000 });
  return page;
}

const texts = (page, sel) => page.$$eval(sel, (els) => els.map((e) => e.textContent));
const until = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: 20_000 });

test("two pages talk, see each other come and go, and a reload loses nothing", async () => {
  const alice = await enter("alice");
  const bob = await enter("bob");
  // Alice sees Bob join; both lists show both.
  await until(alice, () => [...document.querySelectorAll("#online li")].map((l) => l.textContent).join() === "alice,bob");
  await until(bob, () => [...document.querySelectorAll("#online li")].map((l) => l.textContent).join() === "alice,bob");

  await bob.fill("#text", "hi alice");
  await bob.click("#send");
  await alice.fill("#text", "hello bob");
  await alice.click("#send");
  for (const p of [alice, bob]) {
    await until(p, () => document.querySelectorAll("#messages li").length === 2);
    assert.deepEqual(await texts(p, "#messages li"), ["bobhi alice", "alicehello bob"]);
  }
  // A direct message to the principal "alice".
  await bob.fill("#dm-to", "alice");
  await bob.fill("#dm-text", "psst");
  await bob.click("#dm-send");
  await until(alice, () => document.querySelector("#dms li")?.textContent === "bobpsst");
  // The ticker plugin's time is on the page.
  await until(alice, () => /\d/.test(document.getElementById("time").textContent));

  // Alice reloads while Bob talks: her page comes back with everything, once.
  const reloading = alice.reload();
  await bob.fill("#text", "are you there?");
  await bob.click("#send");
  await reloading;
  await until(alice, () => window.chat?.ready === true);
  await until(alice, () => document.querySelectorAll("#messages li").length === 3);
  assert.deepEqual(await texts(alice, "#messages li"), ["bobhi alice", "alicehello bob", "bobare you there?"]);
  await until(alice, () => [...document.querySelectorAll("#online li")].map((l) => l.textContent).join() === "alice,bob");

  await until(alice, () => /\d/.test(document.getElementById("time").textContent));
  if (process.env.CHAT_SCREENSHOT) await alice.screenshot({ path: path.join(dir, "screenshot.png") });

  // Bob leaves: Alice sees it.
  await bob.close();
  await until(alice, () => [...document.querySelectorAll("#online li")].map((l) => l.textContent).join() === "alice");
  assert.deepEqual(alice.errors, []);
  await alice.close();
});

test("the gateway refuses a forged token", async () => {
  const { connect } = await import("../../../sdk/js/edgesync.js");
  const { sign } = await import("../server.js");
  const forged = sign({ sub: "mallory", exp: Math.floor(Date.now() / 1000) + 60 }, "not-the-secret");
  await assert.rejects(connect(gw.url, { token: forged, reconnect: false }), (e) => e.code === "unauthorized");
});
