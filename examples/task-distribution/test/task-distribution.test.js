// Task distribution end to end: three `edgesync work` worker processes in the queue group
// "hashers" run hash-file.sh per task; 120 files are submitted with `edgesync pub`; one
// worker (with its running command) is SIGKILLed mid-task. Totals are exact: every file
// hashed once and correctly, each task completed exactly once, nothing dead-lettered.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { createHash, randomBytes } from "node:crypto";
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import { connect } from "../../../sdk/js/edgesync.js";
import { Gateway, gatewayBin, waitFor } from "../../../sdk/js/test/support.js";

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const FILES = 120;

let gw;
let work;
before(async () => {
  gw = await Gateway.start();
  work = await mkdtemp(path.join(tmpdir(), "edgesync-tasks-"));
});
after(async () => {
  await gw?.dispose();
  if (work) await rm(work, { recursive: true, force: true });
});

/** A process in its own group, so a kill takes its running command with it. */
function start(cmd, args, env = {}, input = undefined) {
  const child = spawn(cmd, args, {
    cwd: dir,
    detached: true,
    stdio: [input === undefined ? "ignore" : "pipe", "pipe", "pipe"],
    env: { ...process.env, EDGESYNC_URL: gw.url, ...env },
  });
  child.output = "";
  child.stdout.on("data", (d) => (child.output += d));
  child.stderr.on("data", (d) => (child.output += d));
  if (input !== undefined) child.stdin.end(input);
  child.done = new Promise((resolve) => child.once("exit", (code, signal) => resolve({ code, signal })));
  return child;
}

function killGroup(child, signal) {
  try {
    process.kill(-child.pid, signal);
  } catch {
    // already gone
  }
}

async function text(p) {
  try {
    return await readFile(p, "utf8");
  } catch {
    return "";
  }
}

test("a worker SIGKILLed mid-task: every file hashed once, totals exact", async () => {
  const files = path.join(work, "files");
  const results = path.join(work, "results");
  await mkdir(files);
  await mkdir(results);
  const expected = new Map();
  for (let i = 0; i < FILES; i++) {
    const p = path.join(files, `f${String(i).padStart(4, "0")}.bin`);
    const bytes = randomBytes(1 + ((i * 7919) % 50_000));
    await writeFile(p, bytes);
    expected.set(p, { sum: createHash("sha256").update(bytes).digest("hex"), size: bytes.length });
  }
  const stallState = path.join(work, "w1.count");
  const workers = ["w1", "w2", "w3"].map((name) =>
    start(
      gatewayBin,
      ["work", "tasks.hash", "--group", "hashers", "--from", "earliest", "--term-exit", "3", "--", "./hash-file.sh", results],
      name === "w1" ? { STALL_AT: "5", STALL_STATE: stallState } : {},
    ),
  );
  try {
    const submit = start(gatewayBin, ["pub", "tasks.hash"], {}, [...expected.keys()].join("\n") + "\n");
    const { code } = await submit.done;
    assert.equal(code, 0, submit.output);

    // w1 hangs in its 5th task: kill it and its command there.
    await waitFor(async () => (await text(`${stallState}.stalled`)) !== "", "w1 mid-task", 3000);
    const stalled = (await text(`${stallState}.stalled`)).trim();
    killGroup(workers[0], "SIGKILL");
    assert.equal((await workers[0].done).signal, "SIGKILL");

    let runs = [];
    await waitFor(
      async () => {
        runs = (await text(path.join(results, "runs.log"))).split("\n").filter(Boolean);
        return runs.length >= FILES;
      },
      `${FILES} tasks done`,
      3000,
    );
    const done = runs.map((l) => l.split(" "));
    const paths = done.map((r) => r[2]).sort();
    assert.deepEqual(paths, [...expected.keys()].sort(), "every task completed exactly once");
    assert.ok(Number(done.find((r) => r[2] === stalled)[1]) >= 2, "the killed worker's task was redelivered");

    // Exact totals from the result files, checked against the hashes made here.
    const names = (await readdir(results)).filter((n) => n.endsWith(".result"));
    assert.equal(names.length, FILES);
    let bytes = 0;
    for (const n of names) {
      const [sum, size, p] = (await readFile(path.join(results, n), "utf8")).trim().split(" ");
      assert.equal(sum, expected.get(p).sum, `hash of ${p}`);
      assert.equal(Number(size), expected.get(p).size);
      bytes += Number(size);
    }
    assert.equal(bytes, [...expected.values()].reduce((a, e) => a + e.size, 0));
    const totals = start("./totals.sh", [results]);
    await totals.done;
    assert.equal(totals.output.trim(), `${FILES} files, ${bytes} bytes`);

    const c = await connect(gw.url);
    try {
      assert.equal((await c.history("$dlq.queue.hashers", { from: "earliest" })).messages.length, 0);
    } finally {
      await c.close();
    }
  } finally {
    for (const w of workers) killGroup(w, "SIGKILL");
    await Promise.all(workers.map((w) => w.done));
  }
});
