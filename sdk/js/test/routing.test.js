// Subscription routing, from the wire: a scripted WebSocket peer on 127.0.0.1 plays the
// gateway so the test controls exactly which pushes arrive in which order. Protocol
// version 2 (subscription-tagged catch-up and `live`) is checked here before a version-2
// gateway exists; client.test.js checks the same behaviour against the real gateway
// once it announces version 2.

import assert from "node:assert/strict";
import { after, before, test } from "node:test";

import { WebSocketServer } from "ws";

import { connect, CursorState } from "../edgesync.js";
import { takeKeep } from "./support.js";

/** A scripted gateway: answers connect and sub, and lets the test push frames. */
class ScriptedGateway {
  constructor(version) {
    this.version = version;
    this.subs = new Map(); // pattern → sub command id
    this.socket = null;
    this.waiters = [];
  }

  async start() {
    this.server = new WebSocketServer({ host: "127.0.0.1", port: 0, handleProtocols: () => "edgesync.json.v1" });
    this.server.on("connection", (ws) => {
      this.socket = ws;
      ws.on("message", (data) => {
        for (const line of data.toString().split("\n")) {
          if (line.trim()) this.#command(JSON.parse(line));
        }
      });
    });
    await new Promise((r) => this.server.once("listening", r));
    return this;
  }

  get url() {
    return `ws://127.0.0.1:${this.server.address().port}`;
  }

  #command(cmd) {
    if (cmd.t === "connect") {
      this.send({
        t: "connected",
        id: cmd.id,
        client_id: "c-1",
        conn_id: 1,
        node: "n1",
        epoch: 1,
        version: this.version,
        limits: { max_frame_bytes: 1 << 20 },
      });
    } else if (cmd.t === "sub") {
      this.subs.set(cmd.topic, cmd.id);
      this.send({ t: "subscribed", id: cmd.id, topic: cmd.topic, cursor: new CursorState().encode() });
      for (const w of this.waiters.splice(0)) w();
    } else if (cmd.t === "unsub") {
      this.send({ t: "unsubscribed", id: cmd.id, topic: cmd.topic });
    }
  }

  async subscribed(n) {
    while (this.subs.size < n) await new Promise((r) => this.waiters.push(r));
  }

  send(...msgs) {
    this.socket.send(msgs.map((m) => JSON.stringify(m)).join("\n"));
  }

  async close() {
    for (const c of this.server.clients) c.terminate();
    await new Promise((r) => this.server.close(r));
  }
}

const msg = (topic, seq, extra = {}) => ({
  t: "msg",
  topic,
  origin: "n1",
  epoch: 1,
  seq,
  hlc: 1,
  client: "p",
  data: `${topic}#${seq}`,
  ...extra,
});
const texts = async (sub, n) => (await takeKeep(sub, n)).map((m) => m.text());

let v1;
let v2;
before(async () => {
  v1 = await new ScriptedGateway(1).start();
  v2 = await new ScriptedGateway(2).start();
});
after(async () => {
  await v1.close();
  await v2.close();
});

test("version 2: tagged catch-up goes to its subscription only, untagged pushes to live ones", async () => {
  const c = await connect(v2.url, { pingIntervalMs: 0 });
  try {
    const live = c.subscribe("r.>"); // latest: live from the start
    const catching = c.subscribe("r.x", { from: "earliest" });
    await v2.subscribed(2);
    const b = v2.subs.get("r.x");
    // Live fan-out of seq 5 reaches the connection while r.x is still reading history.
    v2.send(msg("r.x", 5));
    v2.send(...[1, 2, 3, 4, 5].map((s) => msg("r.x", s, { sub: b })));
    v2.send({ t: "live", sub: b, topic: "r.x" });
    v2.send(msg("r.x", 6), msg("r.y", 1));
    assert.deepEqual(await texts(live, 3), ["r.x#5", "r.x#6", "r.y#1"]);
    assert.deepEqual(await texts(catching, 6), ["r.x#1", "r.x#2", "r.x#3", "r.x#4", "r.x#5", "r.x#6"]);
    assert.equal(catching.buffered, 0, "r.y is not for r.x");
  } finally {
    await c.close();
  }
});

test("version 2: a tagged gap goes to its subscription only", async () => {
  const c = await connect(v2.url, { pingIntervalMs: 0 });
  v2.subs.clear();
  try {
    const a = c.subscribe("g.>");
    const b = c.subscribe("g.x", { from: "earliest" });
    await v2.subscribed(2);
    v2.send({
      t: "gap",
      topic: "g.x",
      origin: "n1",
      epoch: 1,
      from: 1,
      to: 3,
      reason: "retention",
      cursor: "AZA",
      sub: v2.subs.get("g.x"),
    });
    v2.send({ t: "live", sub: v2.subs.get("g.x"), topic: "g.x" }, msg("g.x", 4));
    const [gap, m] = await takeKeep(b, 2);
    assert.equal(gap.kind, "gap");
    assert.deepEqual([gap.from, gap.to], [1, 3]);
    assert.equal(m.text(), "g.x#4");
    assert.deepEqual(await texts(a, 1), ["g.x#4"]);
  } finally {
    await c.close();
  }
});

test("version 1: every matching subscription gets a push once, repeats dropped by position", async () => {
  const c = await connect(v1.url, { pingIntervalMs: 0 });
  try {
    const a = c.subscribe("s.>");
    const b = c.subscribe("s.x", { from: "earliest" });
    await v1.subscribed(2);
    // Catch-up of both subscriptions overlaps: each message once per subscription.
    v1.send(msg("s.x", 1), msg("s.x", 2), msg("s.x", 1), msg("s.x", 2), msg("s.x", 3), msg("s.y", 1));
    assert.deepEqual(await texts(a, 4), ["s.x#1", "s.x#2", "s.x#3", "s.y#1"]);
    assert.deepEqual(await texts(b, 3), ["s.x#1", "s.x#2", "s.x#3"]);
    assert.equal(a.buffered + b.buffered, 0);
  } finally {
    await c.close();
  }
});
