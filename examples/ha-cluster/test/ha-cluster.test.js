// The HA cluster end to end: setup.sh makes the CA, three node certificates (with the
// CLI) and three mesh configs; three real gateways replicate over QUIC with mutual TLS.
// A publisher (8000 counters, 16 publishes in flight, `ack = "replicated:1"`) and a
// subscriber, both connected with all three URLs and both on node-1, run; node-1 is
// SIGKILLed under load. Both fail over to another gateway and resume: the application
// sees every counter exactly once, no record is delivered twice, the only repeated
// publishes are ones that were in flight at the kill (same mid, another origin; the
// subscriber drops them). node-1 then comes back and catches up: its history has every
// counter, and the three gateways hold the same records.

import assert from "node:assert/strict";
import { execFile, spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import net from "node:net";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";
import { promisify } from "node:util";

import { connect } from "../../../sdk/js/edgesync.js";
import { gatewayBin, stored, waitFor } from "../../../sdk/js/test/support.js";

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const COUNT = 8000;
const WINDOW = 16;
const TOKEN = "ha-test-token";

/** Child processes still running; SIGKILLed if the test process exits first. */
const running = new Set();
process.on("exit", () => {
  for (const child of running) child.kill("SIGKILL");
});

function track(child) {
  running.add(child);
  child.output = "";
  const keep = (d) => {
    if (child.output.length < 200_000) child.output += d;
  };
  child.stdout?.on("data", keep);
  child.stderr?.on("data", keep);
  child.done = new Promise((resolve) =>
    child.once("exit", (code, signal) => {
      running.delete(child);
      resolve({ code, signal });
    }),
  );
  return child;
}

async function freePorts(n) {
  const servers = await Promise.all(
    Array.from({ length: n }, async () => {
      const s = net.createServer();
      await new Promise((r) => s.listen(0, "127.0.0.1", r));
      return s;
    }),
  );
  const ports = servers.map((s) => s.address().port);
  await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  return ports;
}

/** One gateway of the cluster: `edgesync serve --config node-N.toml`. */
class Node {
  constructor(n, work, ws, admin) {
    Object.assign(this, { name: `node-${n}`, config: path.join(work, `node-${n}.toml`), ws, admin });
    this.child = null;
  }

  get url() {
    return `ws://127.0.0.1:${this.ws}`;
  }

  async start() {
    const env = { ...process.env, RUST_LOG: "warn,edgesync::peers=info" };
    this.child = track(spawn(gatewayBin, ["serve", "--config", this.config], { stdio: ["ignore", "ignore", "pipe"], env }));
    await waitFor(async () => {
      if (this.child.exitCode !== null) throw new Error(`${this.name} exited:\n${this.child.output}`);
      return (await this.get("/readyz").catch(() => null))?.status === 200;
    }, `${this.name} ready`);
  }

  async kill9() {
    this.child.kill("SIGKILL");
    const { signal } = await this.child.done;
    assert.equal(signal, "SIGKILL");
    this.child = null;
  }

  get(p) {
    return fetch(`http://127.0.0.1:${this.admin}${p}`, { headers: { authorization: `Bearer ${TOKEN}` } });
  }

  /** The peers this node has a link up to. */
  async peersUp() {
    const r = await this.get("/v1/peers").catch(() => null);
    if (r?.status !== 200) return [];
    return [...new Set((await r.json()).links.filter((l) => l.state === "up").map((l) => l.peer))].sort();
  }
}

let work;
let nodes;
before(async () => {
  work = await mkdtemp(path.join(tmpdir(), "edgesync-ha-"));
  const ports = await freePorts(9);
  const [ws, quic, admin] = [ports.slice(0, 3), ports.slice(3, 6), ports.slice(6, 9)];
  const env = {
    ...process.env,
    EDGESYNC_BIN: gatewayBin,
    WS_PORTS: ws.join(" "),
    QUIC_PORTS: quic.join(" "),
    ADMIN_PORTS: admin.join(" "),
    ADMIN_TOKEN: TOKEN,
  };
  await promisify(execFile)(path.join(dir, "setup.sh"), [work], { env });
  nodes = [1, 2, 3].map((n) => new Node(n, work, ws[n - 1], admin[n - 1]));
});
after(async () => {
  for (const child of running) child.kill("SIGKILL");
  if (work) await rm(work, { recursive: true, force: true });
});

function run(script, args) {
  const urls = nodes.flatMap((n) => ["--url", n.url]);
  return track(spawn(process.execPath, [path.join(dir, script), ...urls, ...args], { stdio: ["ignore", "pipe", "pipe"] }));
}

async function events(file) {
  try {
    return (await readFile(file, "utf8")).split("\n").filter(Boolean).map((l) => JSON.parse(l));
  } catch (e) {
    if (e.code === "ENOENT") return [];
    throw e;
  }
}

test("a gateway SIGKILLed under load: clients fail over, nothing lost or duplicated, it catches up", async () => {
  await Promise.all(nodes.map((n) => n.start()));
  for (const n of nodes) {
    const others = nodes.filter((o) => o !== n).map((o) => o.name);
    await waitFor(async () => JSON.stringify(await n.peersUp()) === JSON.stringify(others), `${n.name} linked to ${others}`);
  }

  const subLog = path.join(work, "sub.log");
  const pubLog = path.join(work, "pub.log");
  const sub = run("subscriber.js", ["--log", subLog]);
  await waitFor(async () => (await events(subLog)).some((e) => e.event === "connected"), "subscriber connected");
  const pub = run("publisher.js", ["--count", String(COUNT), "--window", String(WINDOW), "--log", pubLog]);

  // Under load: node-1 dies once the subscriber has read 1500 counters, mid-stream.
  await waitFor(async () => (await events(subLog)).filter((e) => e.event === "msg").length >= 1500, "1500 delivered");
  await nodes[0].kill9();
  const ackedBefore = (await events(pubLog)).filter((e) => e.event === "acked").length;
  assert.ok(ackedBefore < COUNT, `the publisher was still publishing at the kill (${ackedBefore} acked)`);

  const published = await pub.done;
  assert.equal(published.code, 0, pub.output);
  const pubEvents = await events(pubLog);
  assert.deepEqual(
    pubEvents.filter((e) => e.event === "connected").map((e) => e.node),
    ["node-1", pubEvents.find((e) => e.event === "connected" && e.node !== "node-1")?.node ?? "none"],
    "the publisher started on node-1 and failed over once",
  );
  const acked = pubEvents.filter((e) => e.event === "acked");
  assert.equal(acked.length, COUNT, "every counter acked once");
  assert.deepEqual(new Set(acked.map((e) => e.n)).size, COUNT);

  let msgs = [];
  await waitFor(
    async () => {
      msgs = (await events(subLog)).filter((e) => e.event === "msg");
      return new Set(msgs.map((e) => e.n)).size >= COUNT;
    },
    `all ${COUNT} counters delivered after the failover`,
  );
  sub.kill("SIGTERM");
  await sub.done;
  msgs = (await events(subLog)).filter((e) => e.event === "msg");
  const subEvents = await events(subLog);
  assert.equal(subEvents.find((e) => e.event === "gap"), undefined, "no gap");
  const subNodes = subEvents.filter((e) => e.event === "connected").map((e) => e.node);
  assert.equal(subNodes[0], "node-1");
  assert.ok(subNodes.length === 2 && subNodes[1] !== "node-1", `subscriber failed over once: ${subNodes}`);

  // The application's view: every counter exactly once.
  const fresh = msgs.filter((e) => !e.repeat).map((e) => e.n).sort((a, b) => a - b);
  assert.deepEqual(fresh, Array.from({ length: COUNT }, (_, i) => i + 1), "each counter once");
  // The wire's view: no record delivered twice (the cursor travelled), per origin in order.
  const records = msgs.map((e) => `${e.origin}/${e.seq}`);
  assert.equal(new Set(records).size, records.length, "no record delivered twice");
  for (const origin of new Set(msgs.map((e) => e.origin))) {
    const seqs = msgs.filter((e) => e.origin === origin).map((e) => e.seq);
    assert.deepEqual(seqs, [...seqs].sort((a, b) => a - b), `${origin}'s records in seq order`);
  }
  // Repeated publishes: only those in flight at the kill, same mid, and from another origin.
  const repeats = msgs.filter((e) => e.repeat);
  assert.ok(repeats.length <= WINDOW, `${repeats.length} repeats, at most the ${WINDOW} in flight`);
  for (const r of repeats) {
    const first = msgs.find((e) => e.mid === r.mid && !e.repeat);
    assert.equal(first.n, r.n, `repeat of ${r.mid} carries the same counter`);
    assert.notEqual(first.origin, r.origin, `repeat of ${r.mid} is another gateway's copy`);
  }

  // node-1 comes back and catches up from its peers: its history has every counter.
  await nodes[0].start();
  const heldBy = async (node) => {
    const c = await connect(node.url, { reconnect: false });
    try {
      return await stored(c, "ha.counter");
    } finally {
      await c.close();
    }
  };
  let onNode1 = [];
  await waitFor(
    async () => {
      onNode1 = await heldBy(nodes[0]);
      return new Set(onNode1.map((m) => m.json().n)).size >= COUNT;
    },
    "node-1 caught up",
    500,
  );
  const counters = [...new Set(onNode1.map((m) => m.json().n))].sort((a, b) => a - b);
  assert.deepEqual(counters, Array.from({ length: COUNT }, (_, i) => i + 1), "node-1 holds every counter");
  // The three gateways converge on the same records. A publish in flight at the kill may be
  // stored twice (node-1's copy reaching the others only now that it is back): at most the
  // publishes that were in flight, each counter at most twice.
  const key = (ms) => JSON.stringify(ms.map((m) => `${m.origin}/${m.seq}`).sort());
  let held = [];
  await waitFor(
    async () => {
      held = await Promise.all(nodes.map(heldBy));
      return key(held[1]) === key(held[0]) && key(held[2]) === key(held[0]);
    },
    "the three gateways hold the same records",
    500,
  );
  const copies = new Map();
  for (const m of held[0]) copies.set(m.json().n, (copies.get(m.json().n) ?? 0) + 1);
  const twice = [...copies].filter(([, c]) => c > 1);
  assert.ok(twice.every(([, c]) => c === 2), `no counter stored more than twice: ${twice}`);
  assert.ok(twice.length <= WINDOW, `${twice.length} counters stored twice, at most the ${WINDOW} in flight`);
  for (const r of repeats) assert.equal(copies.get(r.n), 2, `the repeat of ${r.mid} is one of the two copies`);
  console.log(
    `ha-cluster: ${COUNT} counters, node-1 killed after ${ackedBefore} acks; ` +
      `${twice.length} in-flight publishes stored twice (${repeats.length} delivered again, dropped by mid), ${acked.filter((e) => e.dup).length} acks were dup`,
  );
});
