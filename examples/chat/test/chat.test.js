// The chat end to end: the gateway with jwt-auth and ticker plugins, the page served by
// server.js, headless Chromium pages. They log in, talk, see each other join and leave,
// exchange a direct message, show the ticker's time; a reload resumes the room from its
// saved cursor (what was said during the reload, once each, in order), and a first visit
// gets the recent history. CHAT_SCREENSHOT=1 writes screenshot.png.

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
  // Every WebSocket the page opens, with the protocol messages it sent and received.
  page.sockets = [];
  page.on("websocket", (ws) => {
    const socket = { sent: [], received: [] };
    page.sockets.push(socket);
    ws.on("framesent", (f) => socket.sent.push(...protocolMessages(f.payload)));
    ws.on("framereceived", (f) => socket.received.push(...protocolMessages(f.payload)));
  });
  await page.goto(web.url);
  await page.fill("#login-name", name);
  await page.click("#login-btn");
  await page.waitForFunction(() => window.chat?.ready === true, null, { timeout: 20_000 });
  return page;
}

/** The messages of a JSON frame (one per line, PROTOCOL.md §1); the page speaks JSON. */
function protocolMessages(payload) {
  if (typeof payload !== "string") return [];
  return payload
    .split("\n")
    .filter((l) => l.trim() !== "")
    .map((l) => JSON.parse(l));
}

const texts = (page, sel) => page.$$eval(sel, (els) => els.map((e) => e.textContent));
const until = (page, fn, arg) => page.waitForFunction(fn, arg, { timeout: 20_000 });
const roomLines = (page) =>
  page.$$eval("#messages li", (els) => els.map((e) => [e.textContent, Number(e.dataset.seq)]));

/** Bob says `text` and waits until his own page shows it: it is stored and fanned out. */
async function say(page, text) {
  const before = await page.$$eval("#messages li", (els) => els.length);
  await page.fill("#text", text);
  await page.click("#send");
  await until(page, (n) => document.querySelectorAll("#messages li").length > n, before);
}

test("two pages talk, see each other come and go, and a reload resumes from the saved cursor", async () => {
  const alice = await enter("alice");
  const bob = await enter("bob");
  // Alice sees Bob join; both lists show both.
  await until(
    alice,
    () => [...document.querySelectorAll("#online li")].map((l) => l.textContent).join() === "alice,bob",
  );
  await until(bob, () => [...document.querySelectorAll("#online li")].map((l) => l.textContent).join() === "alice,bob");
  // A first visit starts from the room's recent history, not from a cursor.
  assert.deepEqual(
    roomSubs(alice.sockets[0]).map((s) => s.start),
    [{ last: 50 }],
  );

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

  // Alice's page saved what it shows with the room's cursor after it.
  const key = await alice.evaluate(() => window.chat.savedKey);
  const saved = await alice.evaluate((k) => JSON.parse(localStorage.getItem(k)), key);
  assert.deepEqual(
    saved.lines.map((l) => l.from + l.text),
    ["bobhi alice", "alicehello bob"],
  );

  // Alice reloads. Her new page is held before its script runs (the old page and its
  // connection are gone by then) while Bob says three things: the reload window, made
  // wide enough to be sure. A fourth races her page subscribing again.
  let release;
  const held = new Promise((r) => (release = r));
  let reached;
  const reloaded = new Promise((r) => (reached = r));
  await alice.route("**/chat.js", async (route) => {
    reached();
    await held;
    await route.continue();
  });
  const reloading = alice.reload();
  await reloaded;
  const socketsBefore = alice.sockets.length;
  for (const t of ["are you there?", "one more", "and another"]) await say(bob, t);
  release();
  await bob.fill("#text", "welcome back");
  await bob.click("#send");
  await reloading;
  await alice.unroute("**/chat.js");
  await until(alice, () => window.chat?.ready === true);
  // Then a last word: once Alice shows it, anything owed before it has arrived (one topic, in seq order).
  await until(alice, () => document.querySelectorAll("#messages li").length >= 6);
  await say(bob, "last");
  await until(alice, () => [...document.querySelectorAll("#messages li")].some((l) => l.textContent === "boblast"));

  // Every message exactly once, in order: the saved two, the missed four, the last.
  const lines = await roomLines(alice);
  assert.deepEqual(
    lines.map(([t]) => t),
    [
      "bobhi alice",
      "alicehello bob",
      "bobare you there?",
      "bobone more",
      "boband another",
      "bobwelcome back",
      "boblast",
    ],
  );
  const seqs = lines.map(([, seq]) => seq);
  assert.deepEqual(seqs, [1, 2, 3, 4, 5, 6, 7], "one topic, one gateway: seq 1.. with no repeat and no hole");

  // The client's resume from the saved cursor delivered them: the new page subscribed
  // once, from exactly that cursor, read no history, and the three said while it was
  // away came as that subscription's catch-up (pushes tagged with its id).
  assert.equal(await alice.evaluate(() => window.chat.resumedFrom), saved.cursor);
  const socket = alice.sockets[socketsBefore];
  assert.equal(alice.sockets.length, socketsBefore + 1, "one connection after the reload");
  const [sub] = roomSubs(socket);
  assert.deepEqual(
    roomSubs(socket).map((s) => s.start),
    [{ cursor: saved.cursor }],
  );
  assert.deepEqual(
    socket.sent.filter((m) => m.t === "history"),
    [],
  );
  const caughtUp = socket.received.filter((m) => m.t === "msg" && m.topic === "chat.lobby" && m.sub === sub.id);
  assert.deepEqual(
    caughtUp.slice(0, 3).map((m) => [m.seq, JSON.parse(m.data).text]),
    [
      [3, "are you there?"],
      [4, "one more"],
      [5, "and another"],
    ],
  );
  // And the new save covers everything shown.
  const resaved = await alice.evaluate((k) => JSON.parse(localStorage.getItem(k)), key);
  assert.equal(resaved.lines.length, 7);
  await until(
    alice,
    () => [...document.querySelectorAll("#online li")].map((l) => l.textContent).join() === "alice,bob",
  );

  await until(alice, () => /\d/.test(document.getElementById("time").textContent));
  if (process.env.CHAT_SCREENSHOT) await alice.screenshot({ path: path.join(dir, "screenshot.png") });

  // Bob leaves: Alice sees it.
  await bob.close();
  await until(alice, () => [...document.querySelectorAll("#online li")].map((l) => l.textContent).join() === "alice");

  // Carol's first visit: the room's recent history, from `last: 50`.
  const carol = await enter("carol");
  await until(carol, () => document.querySelectorAll("#messages li").length === 7);
  assert.deepEqual(
    await texts(carol, "#messages li"),
    lines.map(([t]) => t),
  );
  assert.deepEqual(
    roomSubs(carol.sockets[0]).map((s) => s.start),
    [{ last: 50 }],
  );

  assert.deepEqual(alice.errors, []);
  assert.deepEqual(carol.errors, []);
  await alice.close();
  await carol.close();
});

/** The room `sub` commands a socket sent. */
function roomSubs(socket) {
  return socket.sent.filter((m) => m.t === "sub" && m.topic === "chat.lobby");
}

test("the gateway refuses a forged token", async () => {
  const { connect } = await import("../../../sdk/js/edgesync.js");
  const { sign } = await import("../server.js");
  const forged = sign({ sub: "mallory", exp: Math.floor(Date.now() / 1000) + 60 }, "not-the-secret");
  await assert.rejects(connect(gw.url, { token: forged, reconnect: false }), (e) => e.code === "unauthorized");
});
