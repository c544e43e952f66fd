// The data-sync system end to end against a real gateway: two sender devices publish
// readings, the receiver is SIGKILLed twice mid-stream and restarted, and every reading
// is in SQLite exactly once; a display that joins late syncs the latest state.

import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import path from "node:path";
import { after, before, test } from "node:test";
import { fileURLToPath } from "node:url";

import Database from "better-sqlite3";

import { Gateway, waitFor } from "../../../sdk/js/test/support.js";

const dir = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");
const READINGS = 300;
const DEVICES = ["d1", "d2"];

let gw;
let work;
before(async () => {
  gw = await Gateway.start();
  work = await mkdtemp(path.join(tmpdir(), "edgesync-data-sync-"));
});
after(async () => {
  await gw?.dispose();
  if (work) await rm(work, { recursive: true, force: true });
});

/** Start one of the example's programs; its output is kept for failure messages. */
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

function rowCount(dbPath) {
  try {
    const db = new Database(dbPath, { readonly: true, fileMustExist: true });
    try {
      return db.prepare("SELECT count(*) AS n FROM readings").get().n;
    } finally {
      db.close();
    }
  } catch {
    return 0; // not created yet
  }
}

test("SIGKILLed receiver restarts from its SQLite cursor: every reading exactly once", async () => {
  const dbPath = path.join(work, "receiver.db");
  const senders = DEVICES.map((d) =>
    run("sender.js", ["--device", d, "--count", String(READINGS), "--interval-ms", "5"]),
  );
  let receiver = run("receiver.js", ["--db", dbPath]);
  const kills = [];
  for (const threshold of [60, 250]) {
    await waitFor(() => rowCount(dbPath) >= threshold, `receiver stored ${threshold}`);
    receiver.kill("SIGKILL");
    const { signal } = await receiver.done;
    assert.equal(signal, "SIGKILL");
    kills.push(rowCount(dbPath));
    receiver = run("receiver.js", ["--db", dbPath]);
  }
  for (const s of senders) {
    const { code } = await s.done;
    assert.equal(code, 0, s.output);
  }
  const total = READINGS * DEVICES.length;
  try {
    await waitFor(() => rowCount(dbPath) >= total, `all ${total} readings stored`);
  } finally {
    receiver.kill("SIGTERM");
    await receiver.done;
  }
  assert.ok(kills[0] < total && kills[1] < total, `the receiver was killed mid-stream (${kills})`);
  assert.match(receiver.output, /resuming from the stored cursor/);

  const db = new Database(dbPath, { readonly: true });
  try {
    assert.equal(db.prepare("SELECT count(*) AS n FROM readings").get().n, total, "no duplicate");
    for (const d of DEVICES) {
      const ns = db
        .prepare("SELECT n FROM readings WHERE device = ? ORDER BY n")
        .all(d)
        .map((r) => r.n);
      assert.deepEqual(
        ns,
        Array.from({ length: READINGS }, (_, i) => i + 1),
        `device ${d}: every reading once`,
      );
    }
    // Per device, readings were stored in publish order (seq order per topic and origin).
    for (const d of DEVICES) {
      const seqs = db
        .prepare("SELECT seq FROM readings WHERE device = ? ORDER BY id")
        .all(d)
        .map((r) => r.seq);
      assert.deepEqual(
        seqs,
        [...seqs].sort((a, b) => a - b),
      );
    }
  } finally {
    db.close();
  }

  // A third device joins now and syncs the current state of every device.
  const display = run("display.js", ["--until", String(READINGS), "--devices", String(DEVICES.length), "--json"]);
  const { code } = await display.done;
  assert.equal(code, 0, display.output);
  const state = JSON.parse(display.output.trim().split("\n").pop());
  for (const d of DEVICES) assert.equal(state[d].n, READINGS);
});
