// The client against a real gateway process on 127.0.0.1, in both encodings:
// publish and ack, idempotent retry and resend, every subscription start, resume
// across a gateway restart, failover, history paging, gaps, error codes.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { WebSocket as NodeWebSocket } from "ws";

import { connect, EdgesyncError } from "../edgesync.js";
import { deadUrl, FaultProxy, Gateway, stored, takeKeep, waitFor } from "./support.js";

const ENCODINGS = ["json", "msgpack"];

/** One gateway for the tests that do not restart it; limits small enough to hit. */
let gw;
before(async () => {
  gw = await Gateway.start({
    config: `
[limits]
max_headers = 4
max_subscriptions = 8
max_topic_bytes = 64

[[topic]]
pattern = "retained.>"
max_messages = 5
`,
  });
});
after(async () => {
  await gw?.dispose();
});

for (const encoding of ENCODINGS) {
  describe(`${encoding}`, () => {
    const open = (opts = {}) => connect(gw.url, { encoding, ...opts });

    test("publish resolves with the durable ack; subscribers get the message with exact hlc", async () => {
      const c = await open();
      const other = await connect(gw.url, { encoding: encoding === "json" ? "msgpack" : "json" });
      try {
        const topic = `pub.${encoding}.a`;
        const sub = c.subscribe(topic);
        const sub2 = other.subscribe(topic);
        await Promise.all([sub.ready, sub2.ready]);
        const ack = await c.publish(topic, "hello", { headers: { k: "v" } });
        assert.equal(ack.topic, topic);
        assert.equal(ack.seq, 1);
        assert.equal(ack.dup, false);
        assert.equal(ack.origin, c.session.node);
        assert.equal(typeof ack.hlc, "bigint");
        assert.ok(ack.hlc > 2n ** 53n, "an hlc is beyond 2^53, so a double would round it");
        const [m] = await takeKeep(sub, 1);
        const [m2] = await takeKeep(sub2, 1);
        assert.equal(m.kind, "msg");
        assert.equal(m.text(), "hello");
        assert.deepEqual({ ...m.headers }, { k: "v" });
        assert.equal(m.seq, 1);
        assert.equal(m.client, c.session.client_id);
        assert.equal(m.hlc, ack.hlc, "JSON and MessagePack carry the same exact hlc");
        assert.equal(m2.hlc, ack.hlc);
      } finally {
        await c.close();
        await other.close();
      }
    });

    test("binary payloads round-trip byte for byte", async () => {
      const c = await open();
      try {
        const topic = `bin.${encoding}`;
        const bytes = Uint8Array.from([0, 1, 2, 0xff, 0xfe, 0xc3, 0x28, 0xef, 0xbb, 0xbf]);
        const sub = c.subscribe(topic, { from: "earliest" });
        await c.publish(topic, bytes);
        await c.publish(topic, "\ufeffbom kept");
        await c.publish(topic, new Uint8Array(0));
        const got = await takeKeep(sub, 3);
        assert.deepEqual([...got[0].data], [...bytes]);
        assert.deepEqual([...got[1].data.subarray(0, 3)], [0xef, 0xbb, 0xbf]);
        assert.equal(got[2].data.length, 0);
      } finally {
        await c.close();
      }
    });

    test("a repeated mid is stored once and acked with dup", async () => {
      const c = await open();
      try {
        const topic = `idem.${encoding}`;
        const a = await c.publish(topic, "x", { mid: "order-17" });
        const b = await c.publish(topic, "x", { mid: "order-17" });
        assert.equal(a.dup, false);
        assert.equal(b.dup, true);
        assert.equal(b.seq, a.seq);
        assert.equal(b.hlc, a.hlc);
        assert.equal((await stored(c, topic)).length, 1);
      } finally {
        await c.close();
      }
    });

    test("a publish whose ack was lost is resent with its mid after the reconnect: stored once", async () => {
      const proxy = await FaultProxy.start(gw.wsAddr);
      const c = await connect(proxy.url, { encoding, backoff: { initialMs: 20, maxMs: 100 } });
      const reader = await open();
      try {
        const topic = `resend.${encoding}`;
        proxy.blackhole = true; // the gateway's replies vanish on the way back
        const pending = c.publish(topic, "once");
        await waitFor(async () => (await stored(reader, topic)).length === 1, "the publish stored");
        proxy.blackhole = false;
        proxy.cut();
        const ack = await pending;
        assert.equal(ack.dup, true, "the resend got the original ack");
        assert.equal(ack.seq, 1);
        const all = await stored(reader, topic);
        assert.equal(all.length, 1);
        assert.equal(all[0].text(), "once");
      } finally {
        await c.close();
        await reader.close();
        await proxy.close();
      }
    });

    test("subscribe from latest, earliest, last N and a cursor", async () => {
      const topic = `starts.${encoding}`;
      const clients = await Promise.all([open(), open(), open(), open()]);
      const [c, c2, c3, c4] = clients;
      try {
        const acks = [];
        for (let i = 1; i <= 5; i++) acks.push(await c.publish(topic, `m${i}`));
        const texts = async (sub, n) => (await takeKeep(sub, n)).map((m) => m.text());
        const earliest = c2.subscribe(topic, { from: "earliest" });
        // Once a subscriber has m5, the gateway has fanned it out (see the todo test below).
        assert.deepEqual(await texts(earliest, 5), ["m1", "m2", "m3", "m4", "m5"]);
        const latest = c.subscribe(topic, { from: "latest" });
        const last2 = c3.subscribe(topic, { from: { last: 2 } });
        const fromCursor = c4.subscribe(topic, { from: { cursor: acks[2].cursor } });
        await Promise.all([latest.ready, last2.ready, fromCursor.ready]);
        await c.publish(topic, "m6");
        assert.deepEqual(await texts(latest, 1), ["m6"]);
        assert.deepEqual(await texts(earliest, 1), ["m6"]);
        assert.deepEqual(await texts(last2, 3), ["m4", "m5", "m6"]);
        assert.deepEqual(await texts(fromCursor, 3), ["m4", "m5", "m6"]);
      } finally {
        await Promise.all(clients.map((x) => x.close()));
      }
    });

    // A gateway behaviour, not the client's: on the raw protocol (no client code) the
    // gateway answers such a `sub` with a `subscribed` cursor that does not name the topic
    // (the broker's head, before its fan-out of the acked message), then pushes that
    // message untagged as live; nothing the client receives tells it apart from a new one.
    test(
      "latest excludes a message whose ack arrived before the sub was sent",
      { todo: "gateway: `latest` starts at the broker's delivered head, which can lag the store (PROTOCOL.md §2.1)" },
      async () => {
        const c = await open();
        try {
          const topic = `latest.${encoding}`;
          for (let i = 1; i <= 20; i++) {
            await c.publish(`${topic}.${i}`, "before");
            const sub = c.subscribe(`${topic}.${i}`, { from: "latest" });
            await sub.ready;
            await c.publish(`${topic}.${i}`, "after");
            const [m] = await takeKeep(sub, 1);
            assert.equal(m.text(), "after", `round ${i}: "latest" is only what is stored after the subscription`);
            await sub.close();
          }
        } finally {
          await c.close();
        }
      },
    );

    test("a subscription from a publish's ack cursor starts just after that message", async () => {
      // The way round the todo above (sdk/js/README.md): the ack's cursor, not `latest`.
      const c = await open();
      try {
        const topic = `ackcursor.${encoding}`;
        for (let i = 1; i <= 20; i++) {
          const ack = await c.publish(`${topic}.${i}`, "before");
          const sub = c.subscribe(`${topic}.${i}`, { from: { cursor: ack.cursor } });
          await sub.ready;
          await c.publish(`${topic}.${i}`, "after");
          const [m] = await takeKeep(sub, 1);
          assert.equal(m.text(), "after", `round ${i}`);
          await sub.close();
        }
      } finally {
        await c.close();
      }
    });

    test("cursor() resumes a new client with no gap and no duplicate", async () => {
      const c = await open();
      const topic = `resume.${encoding}`;
      const sub = c.subscribe(`resume.${encoding}.>`, { from: "earliest" });
      for (let i = 1; i <= 10; i++) await c.publish(`${topic}.${i % 3}`, `m${i}`);
      const first = await takeKeep(sub, 4);
      const saved = c.cursor();
      assert.equal(sub.cursor().length > 0, true);
      await c.close();
      const d = await open({ cursor: saved });
      try {
        for (let i = 11; i <= 12; i++) await d.publish(`${topic}.${i % 3}`, `m${i}`);
        const rest = await takeKeep(d.subscribe(`resume.${encoding}.>`), 8);
        const seen = [...first, ...rest].map((m) => m.text()).sort();
        const want = Array.from({ length: 12 }, (_, i) => `m${i + 1}`).sort();
        assert.deepEqual(seen, want);
      } finally {
        await d.close();
      }
    });

    test("history pages with a cursor until more is false", async () => {
      const c = await open();
      try {
        const topic = `hist.${encoding}`;
        for (let i = 1; i <= 25; i++) await c.publish(topic, `m${i}`);
        let page = await c.history(topic, { limit: 10 });
        const sizes = [];
        const seqs = [];
        while (page) {
          sizes.push(page.messages.length);
          seqs.push(...page.messages.map((m) => m.seq));
          assert.equal(page.more, seqs.length < 25);
          page = await page.next();
        }
        assert.deepEqual(sizes, [10, 10, 5]);
        assert.deepEqual(
          seqs,
          Array.from({ length: 25 }, (_, i) => i + 1),
        );
        const mid = await c.history(topic, {
          from: { cursor: (await c.history(topic, { limit: 7 })).cursor },
          limit: 3,
        });
        assert.deepEqual(
          mid.messages.map((m) => m.seq),
          [8, 9, 10],
        );
        assert.equal(typeof mid.messages[0].hlc, "bigint");
      } finally {
        await c.close();
      }
    });

    test("a cursor behind retention yields a gap item, then the retained messages", async () => {
      const c = await open();
      try {
        const topic = `retained.${encoding}`;
        const acks = [];
        for (let i = 1; i <= 12; i++) acks.push(await c.publish(topic, `m${i}`));
        // Retention runs in the store writer about once a second: wait until it has.
        await waitFor(async () => (await c.history(topic, { limit: 1 })).messages[0]?.seq > 3, "retention applied");
        const sub = c.subscribe(topic, { from: { cursor: acks[1].cursor } }); // after seq 2
        const first = (await takeKeep(sub, 1))[0];
        assert.equal(first.kind, "gap");
        assert.equal(first.reason, "retention");
        assert.equal(first.from, 3);
        const after = await takeKeep(sub, 12 - first.to);
        assert.deepEqual(
          after.map((m) => m.seq),
          Array.from({ length: 12 - first.to }, (_, i) => first.to + 1 + i),
        );
        assert.ok(after.length >= 5, "max_messages = 5 are retained");
      } finally {
        await c.close();
      }
    });

    test("a slow reader's subscription is paused at the gateway and resumed: nothing lost", async () => {
      const c = await open({ bufferSize: 8 });
      try {
        const topic = `slow.${encoding}`;
        const sub = c.subscribe(topic);
        await sub.ready;
        for (let i = 1; i <= 100; i++) c.publish(topic, `m${i}`);
        await c.flush();
        const got = await takeKeep(sub, 100);
        assert.deepEqual(
          got.map((m) => m.seq),
          Array.from({ length: 100 }, (_, i) => i + 1),
        );
        assert.ok(sub.buffered <= 8);
      } finally {
        await c.close();
      }
    });

    test("errors carry the gateway's code and retry flag", async () => {
      const c = await open();
      try {
        const code = async (p) => {
          try {
            await p;
          } catch (e) {
            assert.ok(e instanceof EdgesyncError);
            return [e.code, e.retry];
          }
          return ["resolved"];
        };
        assert.deepEqual(await code(c.publish("a..b", "x")), ["topic_invalid", false]);
        assert.deepEqual(await code(c.publish("$sys.x", "x")), ["forbidden", false]);
        assert.deepEqual(await code(c.publish("t".repeat(65), "x")), ["topic_too_long", false]);
        const headers = Object.fromEntries(Array.from({ length: 5 }, (_, i) => [`h${i}`, "v"]));
        assert.deepEqual(await code(c.publish("h.t", "x", { headers })), ["headers_too_large", false]);
        assert.deepEqual(await code(c.history("a.*")), ["topic_invalid", false]);
        const big = "x".repeat(c.session.limits.max_frame_bytes);
        assert.deepEqual(await code(c.publish("big.t", big)), ["frame_too_large", false]);
        const bad = c.subscribe("c.t", { from: { cursor: "not-a-cursor" } });
        assert.deepEqual(await code(bad.ready), ["cursor_invalid", false]);
        await assert.rejects(bad.next(), (e) => e.code === "cursor_invalid");
        const s1 = c.subscribe("dup.t");
        await s1.ready;
        assert.deepEqual(await code(c.subscribe("dup.t").ready), ["already_subscribed", false]);
        const many = [];
        for (let i = 0; i < 8; i++) many.push(c.subscribe(`many.${i}`).ready.catch((e) => e.code));
        const results = await Promise.all(many);
        assert.ok(results.includes("too_many_subscriptions"), `results ${results}`);
        assert.throws(
          () => c.subscribe("x", { from: "yesterday" }),
          (e) => e.code === "invalid_argument",
        );
        // The connection survives every refused command.
        await c.ping();
      } finally {
        await c.close();
      }
    });

    test("publish_rate_per_sec is reported as rate_limited with retry", async () => {
      const limited = await Gateway.start({ config: "[limits]\npublish_rate_per_sec = 5\n" });
      const c = await connect(limited.url, { encoding });
      try {
        const results = await Promise.allSettled(Array.from({ length: 20 }, (_, i) => c.publish("rate.t", `${i}`)));
        const refused = results.filter((r) => r.status === "rejected");
        assert.ok(refused.length > 0);
        for (const r of refused) {
          assert.equal(r.reason.code, "rate_limited");
          assert.equal(r.reason.retry, true);
        }
      } finally {
        await c.close();
        await limited.dispose();
      }
    });

    test("close() fails pending commands with closed and ends subscriptions", async () => {
      const proxy = await FaultProxy.start(gw.wsAddr);
      const c = await connect(proxy.url, { encoding });
      const sub = c.subscribe("closing.t");
      await sub.ready;
      proxy.blackhole = true;
      const pending = c.publish("closing.t", "x").then(
        () => "resolved",
        (e) => e,
      );
      const waiting = sub.next();
      await c.close();
      const e = await pending;
      assert.ok(e instanceof EdgesyncError);
      assert.equal(e.code, "closed");
      assert.equal(e.retry, false);
      assert.deepEqual(await waiting, { value: undefined, done: true });
      await assert.rejects(c.publish("closing.t", "y"), (e) => e.code === "closed");
      await proxy.close();
    });
  });
}

test("connect refuses bad URLs and reports unreachable gateways", async () => {
  await assert.rejects(connect("http://127.0.0.1:1"), (e) => e.code === "bad_url");
  await assert.rejects(connect([]), (e) => e.code === "invalid_argument");
  await assert.rejects(
    connect(await deadUrl(), { connectTimeoutMs: 5000 }),
    (e) => e.code === "connect_failed" && e.retry,
  );
});

test("connect skips a gateway that is down and uses the next URL", async () => {
  const c = await connect([await deadUrl(), gw.url]);
  try {
    assert.equal(c.url, gw.url);
    await c.publish("failover.first", "x");
  } finally {
    await c.close();
  }
});

test("resume across a gateway SIGKILL and restart: no gap, no duplicate", async () => {
  const g = await Gateway.start();
  const c = await connect(g.url, { encoding: "msgpack", backoff: { initialMs: 20, maxMs: 200 } });
  const reconnects = [];
  c.addEventListener("reconnecting", (e) => reconnects.push(e.detail));
  try {
    const sub = c.subscribe("restart.>", { from: "earliest" });
    for (let i = 1; i <= 20; i++) await c.publish(`restart.${i % 2}`, `m${i}`);
    const before = await takeKeep(sub, 7);
    const saved = c.cursor();
    await g.kill();
    const during = c.publish("restart.0", "m21"); // in flight while the gateway is down
    await g.restart();
    await during;
    for (let i = 22; i <= 30; i++) await c.publish(`restart.${i % 2}`, `m${i}`);
    const rest = await takeKeep(sub, 23);
    const texts = [...before, ...rest].map((m) => m.text());
    assert.deepEqual([...texts].sort(), Array.from({ length: 30 }, (_, i) => `m${i + 1}`).sort());
    assert.equal(new Set(texts).size, 30, "no duplicate");
    assert.ok(reconnects.length >= 1);
    // A second client resumes from the cursor saved before the crash.
    const d = await connect(g.url, { cursor: saved });
    const again = await takeKeep(d.subscribe("restart.>"), 23);
    assert.deepEqual(again.map((m) => m.text()).sort(), rest.map((m) => m.text()).sort());
    await d.close();
  } finally {
    await c.close();
    await g.dispose();
  }
});

test("failover: when the gateway goes away the client moves to the next URL and keeps its subscription", async () => {
  const a = await Gateway.start({ nodeId: "gw-a" });
  const b = await Gateway.start({ nodeId: "gw-b" });
  const c = await connect([a.url, b.url], { backoff: { initialMs: 20, maxMs: 200 } });
  const connected = [];
  c.addEventListener("connected", (e) => connected.push(e.detail.session.node));
  try {
    assert.equal(c.session.node, "gw-a");
    const sub = c.subscribe("fo.t", { from: "earliest" });
    await c.publish("fo.t", "on a");
    assert.equal((await takeKeep(sub, 1))[0].origin, "gw-a");
    await a.stop(); // SIGTERM: the gateway says shutting_down, then closes
    const ack = await c.publish("fo.t", "on b");
    assert.equal(ack.origin, "gw-b");
    assert.deepEqual(connected, ["gw-b"]);
    const [m] = await takeKeep(sub, 1);
    assert.equal(m.text(), "on b");
    assert.equal(m.origin, "gw-b");
  } finally {
    await c.close();
    await a.dispose();
    await b.dispose();
  }
});

test("a lost path is detected by the keepalive and the subscription resumes with nothing missed", async () => {
  const proxy = await FaultProxy.start(gw.wsAddr);
  const c = await connect(proxy.url, { pingIntervalMs: 100, backoff: { initialMs: 20, maxMs: 100 } });
  const writer = await connect(gw.url);
  try {
    const sub = c.subscribe("keepalive.t");
    await sub.ready;
    await writer.publish("keepalive.t", "m1");
    await takeKeep(sub, 1);
    proxy.blackhole = true; // nothing arrives, yet no close: only the keepalive can tell
    await writer.publish("keepalive.t", "m2");
    await writer.publish("keepalive.t", "m3");
    const down = new Promise((r) => c.addEventListener("disconnected", r, { once: true }));
    await down;
    proxy.blackhole = false;
    const got = await takeKeep(sub, 2);
    assert.deepEqual(
      got.map((m) => m.text()),
      ["m2", "m3"],
    );
  } finally {
    await c.close();
    await writer.close();
    await proxy.close();
  }
});

test("overlapping subscriptions: a catching-up one gets its history even while another is live", async (t) => {
  const c = await connect(gw.url);
  try {
    if (c.session.version < 2) {
      t.skip("gateway protocol version 1 cannot tell which subscription a push is for (PROTOCOL.md §4)");
      return;
    }
    for (let i = 1; i <= 50; i++) await c.publish(`ovl.a.${i % 2}`, `m${i}`);
    const live = c.subscribe("ovl.>");
    await live.ready;
    const writer = await connect(gw.url);
    const publishing = (async () => {
      for (let i = 51; i <= 80; i++) await writer.publish(`ovl.a.${i % 2}`, `m${i}`);
    })();
    const catching = c.subscribe("ovl.a.*", { from: "earliest" });
    await publishing;
    const got = await takeKeep(catching, 80);
    assert.deepEqual(got.map((m) => m.text()).sort(), Array.from({ length: 80 }, (_, i) => `m${i + 1}`).sort());
    const liveGot = await takeKeep(live, 30);
    assert.equal(new Set(liveGot.map((m) => m.text())).size, 30);
    await writer.close();
  } finally {
    await c.close();
  }
});

test("a subscriber whose socket stalls gets slow_consumer gaps and fills them from history", async () => {
  const g = await Gateway.start({ config: "[limits]\noutbox_frames = 16\noutbox_bytes = 1048576\n" });
  // The ws package's socket, kept so the test can stop reading it (the application froze).
  const sockets = [];
  class Recorded extends NodeWebSocket {
    constructor(...args) {
      super(...args);
      sockets.push(this);
    }
  }
  const slow = await connect(g.url, { encoding: "msgpack", WebSocket: Recorded });
  const publisher = await connect(g.url, { encoding: "msgpack" });
  try {
    const sub = slow.subscribe("big.t");
    await sub.ready;
    sockets.at(-1).pause();
    const n = 200;
    const payload = new Uint8Array(64 << 10).fill(0x70);
    for (let i = 0; i < n; i++) await publisher.publish("big.t", payload);
    sockets.at(-1).resume();
    const got = new Set();
    const gaps = [];
    while (got.size + gaps.reduce((k, x) => k + x.to - x.from + 1, 0) < n) {
      const [item] = await takeKeep(sub, 1);
      if (item.kind === "gap") gaps.push(item);
      else {
        assert.ok(!got.has(item.seq), `duplicate ${item.seq}`);
        got.add(item.seq);
      }
    }
    assert.ok(gaps.length > 0, "the gateway's outbox overflowed");
    assert.ok(gaps.every((x) => x.reason === "slow_consumer"));
    for (const gap of gaps) {
      let page = await slow.history("big.t", { from: { cursor: gap.cursor }, limit: 50 });
      let want = gap.from;
      while (page && want <= gap.to) {
        for (const m of page.messages.filter((x) => x.seq <= gap.to)) {
          assert.equal(m.seq, want++, "history fills the gap in order");
          got.add(m.seq);
        }
        page = await page.next();
      }
    }
    assert.equal(got.size, n, "every message exactly once, live or from history");
  } finally {
    await slow.close();
    await publisher.close();
    await g.dispose();
  }
});

test("reconnect attempts back off exponentially with jitter and go round the URL list", async () => {
  const a = await FaultProxy.start(gw.wsAddr);
  const b = await FaultProxy.start(gw.wsAddr);
  const c = await connect([a.url, b.url], { backoff: { initialMs: 10, maxMs: 80 } });
  const attempts = [];
  const enough = new Promise((resolve) =>
    c.addEventListener("reconnecting", (e) => {
      attempts.push(e.detail);
      if (attempts.length === 6) resolve();
    }),
  );
  try {
    a.refuse = true;
    b.refuse = true;
    a.cut();
    await enough;
    attempts.forEach(({ attempt, delayMs, url }, i) => {
      const cap = Math.min(80, 10 * 2 ** i);
      assert.equal(attempt, i + 1);
      assert.ok(delayMs >= cap / 2 && delayMs <= cap, `attempt ${attempt}: ${delayMs} ms within [${cap / 2}, ${cap}]`);
      assert.equal(url, i % 2 === 0 ? b.url : a.url, "each attempt moves to the next URL");
    });
    assert.ok(new Set(attempts.map((x) => x.delayMs)).size > 1, "jittered");
    b.refuse = false;
    await c.ping(); // back, on whichever URL came next
  } finally {
    await c.close();
    await a.close();
    await b.close();
  }
});
