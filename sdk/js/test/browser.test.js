// The module in headless Chromium (Debian's `chromium`, driven by playwright-core):
// a page imports edgesync.js as a plain ES module and publishes and subscribes against
// the real gateway, in both encodings. Set CHROMIUM to use another binary.

import assert from "node:assert/strict";
import { readFile } from "node:fs/promises";
import http from "node:http";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { connect } from "../edgesync.js";
import { Gateway, takeKeep } from "./support.js";

const sdkDir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const chromiumPath = process.env.CHROMIUM ?? "/usr/bin/chromium";

const PAGE = `<!doctype html>
<meta charset="utf-8">
<title>edgesync browser test</title>
<script type="module">
  import * as edgesync from "/edgesync.js";
  window.edgesync = edgesync;
  window.moduleLoaded = true;
</script>`;

let gw;
let server;
let browser;
let base;

before(async () => {
  gw = await Gateway.start();
  // A static server for the page and the module: the browser loads exactly the file in the repo.
  server = http.createServer(async (req, res) => {
    if (req.url === "/") {
      res.writeHead(200, { "content-type": "text/html" });
      res.end(PAGE);
    } else if (req.url === "/edgesync.js") {
      res.writeHead(200, { "content-type": "text/javascript" });
      res.end(await readFile(path.join(sdkDir, "edgesync.js")));
    } else {
      res.writeHead(404);
      res.end();
    }
  });
  await new Promise((r) => server.listen(0, "127.0.0.1", r));
  base = `http://127.0.0.1:${server.address().port}/`;
  const { chromium } = await import("playwright-core");
  browser = await chromium.launch({
    executablePath: chromiumPath,
    args: ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking"],
  });
});

after(async () => {
  await browser?.close();
  await new Promise((r) => (server ? server.close(r) : r()));
  await gw?.dispose();
});

for (const encoding of ["json", "msgpack"]) {
  test(`a page publishes and subscribes over ${encoding}, and talks with a Node client`, async () => {
    const page = await browser.newPage();
    const errors = [];
    page.on("pageerror", (e) => errors.push(e));
    try {
      await page.goto(base);
      await page.waitForFunction(() => window.moduleLoaded === true);
      const topic = `browser.${encoding}`;
      const node = await connect(gw.url, { encoding });
      const fromNode = node.subscribe(topic, { from: "earliest" });
      await fromNode.ready;
      const evaluating = page.evaluate(
        async ({ url, topic, encoding }) => {
          const { connect } = window.edgesync;
          const c = await connect([url], { encoding });
          const sub = c.subscribe(topic, { from: "earliest" });
          await sub.ready;
          const acks = [];
          acks.push(await c.publish(topic, "from the page", { headers: { who: "chromium" } }));
          acks.push(await c.publish(topic, new Uint8Array([0, 255, 1])));
          const got = [];
          for await (const m of sub) {
            got.push({
              text: m.kind === "msg" ? m.text() : "",
              bytes: Array.from(m.data),
              seq: m.seq,
              hlc: String(m.hlc),
              hlcIsBig: typeof m.hlc === "bigint",
              headers: { ...m.headers },
            });
            if (got.length === 3) break;
          }
          const page = await c.history(topic, { limit: 2 });
          const cursor = c.cursor();
          await c.close();
          return {
            ackSeqs: acks.map((a) => a.seq),
            ackHlcs: acks.map((a) => String(a.hlc)),
            got,
            history: page.messages.map((m) => m.seq),
            more: page.more,
            cursor,
            version: c.session.version,
          };
        },
        { url: gw.url, topic, encoding },
      );
      // Node sees what the page published, then publishes the third message the page waits for.
      const seen = await takeKeep(fromNode, 2);
      await node.publish(topic, "from node");
      const result = await evaluating;
      assert.deepEqual(result.ackSeqs, [1, 2]);
      assert.equal(result.got.length, 3);
      assert.equal(result.got[0].text, "from the page");
      assert.deepEqual(result.got[0].headers, { who: "chromium" });
      assert.deepEqual(result.got[1].bytes, [0, 255, 1]);
      assert.equal(result.got[2].text, "from node");
      assert.ok(result.got.every((m) => m.hlcIsBig));
      assert.deepEqual(
        result.got.slice(0, 2).map((m) => m.hlc),
        result.ackHlcs,
      );
      assert.deepEqual(result.history, [1, 2]);
      assert.equal(result.more, true);
      assert.ok(result.cursor.length > 0);
      // The same exact hlc on both sides.
      assert.deepEqual(
        seen.map((m) => String(m.hlc)),
        result.ackHlcs,
      );
      assert.deepEqual([...seen[1].data], [0, 255, 1]);
      await node.close();
      assert.deepEqual(errors, []);
    } finally {
      await page.close();
    }
  });
}
