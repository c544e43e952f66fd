// The work queue end to end against a real gateway: three consumers in the group
// "orders", a producer publishes 200 jobs, one consumer is SIGKILLed while it holds a
// job mid-work. Every job is acked exactly once, the killed consumer's job is done by
// another one, and the producer running again adds nothing (idempotent mids).

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, readFile, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { connect } from "../../../sdk/js/edgesync.js";
import { Gateway, waitFor } from "../../../sdk/js/test/support.js";

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const JOBS = 200;

let gw;
let work;
before(async () => {
  gw = await Gateway.start();
  work = await mkdtemp(path.join(tmpdir(), "edgesync-work-queue-"));
});
after(async () => {
  await gw?.dispose();
  if (work) await rm(work, { recursive: true, force: true });
});

function run(script, args) {
  const child = spawn(process.execPath, [path.join(dir, script), "--url", gw.url, ...args], {
    stdio: ["ignore", "pipe", "pipe"],
  });
  child.output = "";
  child.stdout.on("data", (d) => (child.output += d));
  child.stderr.on("data", (d) => (child.output += d));
  child.done = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  return child;
}

async function events(logPath) {
  try {
    const text = await readFile(logPath, "utf8");
    return text.split("\n").filter(Boolean).map((l) => JSON.parse(l));
  } catch {
    return [];
  }
}

async function allEvents(names) {
  return (await Promise.all(names.map((n) => events(path.join(work, `${n}.log`))))).flat();
}

test("a consumer SIGKILLed mid-message: every job processed, none acked twice", async () => {
  const names = ["c1", "c2", "c3"];
  const consumers = names.map((name) =>
    run("consumer.js", ["--name", name, "--log", path.join(work, `${name}.log`), ...(name === "c1" ? ["--stall-after", "10"] : [])]),
  );
  try {
    await scenario(names, consumers);
  } finally {
    for (const child of consumers) child.kill("SIGTERM");
    await Promise.all(consumers.map((c) => c.done));
  }
});

async function scenario(names, consumers) {
  await waitFor(async () => (await allEvents(names)).filter((e) => e.event === "ready").length === 3, "consumers ready");
  const producer = run("producer.js", ["--count", String(JOBS)]);
  assert.equal((await producer.done).code, 0, producer.output);

  // c1 hangs on its 10th job: kill it there, holding that job (and up to 3 more unacked).
  let stalled;
  await waitFor(async () => {
    stalled = (await events(path.join(work, "c1.log"))).find((e) => e.event === "stall");
    return stalled !== undefined;
  }, "c1 stalls mid-job");
  consumers[0].kill("SIGKILL");
  assert.equal((await consumers[0].done).signal, "SIGKILL");

  let acked = [];
  await waitFor(async () => {
    acked = (await allEvents(names)).filter((e) => e.event === "acked");
    return new Set(acked.map((e) => e.id)).size >= JOBS;
  }, `all ${JOBS} jobs acked`);
  const ids = acked.map((e) => e.id).sort((a, b) => a - b);
  assert.deepEqual(ids, Array.from({ length: JOBS }, (_, i) => i + 1), "every job acked exactly once");
  const redone = acked.find((e) => e.id === stalled.id);
  assert.notEqual(redone.consumer, "c1", "the killed consumer's job went to another consumer");
  assert.ok(redone.delivery >= 2, "and it was a redelivery");

  // Idempotent producer: publishing the same jobs again stores nothing new.
  const again = run("producer.js", ["--count", String(JOBS)]);
  assert.equal((await again.done).code, 0, again.output);
  assert.match(again.output, new RegExp(`${JOBS} already there`));

  // Nothing pending or dead-lettered: a probe job goes through, and no job comes twice.
  const probe = run("producer.js", ["--count", "1", "--first", String(JOBS + 1)]);
  assert.equal((await probe.done).code, 0, probe.output);
  await waitFor(async () => (await allEvents(names)).some((e) => e.event === "acked" && e.id === JOBS + 1), "probe");
  const final = (await allEvents(names)).filter((e) => e.event === "acked");
  assert.equal(final.length, JOBS + 1, "no job acked twice after the probe");
  const c = await connect(gw.url);
  try {
    const dlq = await c.history("$dlq.queue.orders", { from: "earliest" });
    assert.equal(dlq.messages.length, 0, "no dead letters");
  } finally {
    await c.close();
  }
}
