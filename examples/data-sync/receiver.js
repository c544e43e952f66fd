#!/usr/bin/env node
// The receiver: stores every reading in SQLite, and the subscription's cursor in the
// same transaction. After a crash (even SIGKILL) it resumes from the cursor it stored
// with the last committed readings, so each reading lands exactly once: the readings
// and the position that says "these are in" can never disagree.
//
//   node receiver.js --url ws://127.0.0.1:7400 --db receiver.db

import { parseArgs } from "node:util";

import Database from "better-sqlite3";

import { connect, CursorState } from "../../sdk/js/edgesync.js";

const { values: args } = parseArgs({
  options: {
    url: { type: "string", multiple: true, default: ["ws://127.0.0.1:7400"] },
    db: { type: "string", default: "receiver.db" },
    pattern: { type: "string", default: "readings.>" },
    "batch-max": { type: "string", default: "500" },
  },
});

const db = new Database(args.db);
db.pragma("journal_mode = WAL");
// FULL: a commit survives a power loss, not only a process crash.
db.pragma("synchronous = FULL");
db.exec(`
  CREATE TABLE IF NOT EXISTS readings (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    device  TEXT    NOT NULL,
    n       INTEGER NOT NULL,
    value   REAL    NOT NULL,
    at      TEXT    NOT NULL,
    topic   TEXT    NOT NULL,
    origin  TEXT    NOT NULL,
    epoch   INTEGER NOT NULL,
    seq     INTEGER NOT NULL,
    hlc     TEXT    NOT NULL      -- exact 64-bit hybrid logical clock, as text
  );
  -- One row: where the stored readings end. Deliberately no UNIQUE on readings:
  -- exactly-once comes from this cursor moving in the same transaction, and the
  -- example's test counts duplicates to prove it.
  CREATE TABLE IF NOT EXISTS sync_state (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    cursor TEXT NOT NULL
  );
`);

const insert = db.prepare(
  "INSERT INTO readings (device, n, value, at, topic, origin, epoch, seq, hlc) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
);
const saveCursor = db.prepare(
  "INSERT INTO sync_state (id, cursor) VALUES (1, ?) ON CONFLICT(id) DO UPDATE SET cursor = excluded.cursor",
);
const commit = db.transaction((msgs, cursor) => {
  for (const m of msgs) {
    const r = m.json();
    insert.run(r.device, r.n, r.value, r.at, m.topic, m.origin, m.epoch, m.seq, String(m.hlc));
  }
  saveCursor.run(cursor);
});

const saved = db.prepare("SELECT cursor FROM sync_state WHERE id = 1").get()?.cursor;
const client = await connect(args.url, { clientId: "receiver" });
client.addEventListener("reconnecting", (e) => console.error(`receiver: reconnecting to ${e.detail.url}`));
const sub = client.subscribe(args.pattern, { from: saved ? { cursor: saved } : "earliest" });
console.log(saved ? "receiver: resuming from the stored cursor" : "receiver: starting from the earliest reading");

const batchMax = Number(args["batch-max"]);
/** What is in the database: the subscription's consumed cursor plus readings filled in from history. */
const position = saved ? CursorState.decode(saved) : new CursorState();
let total = 0;
for await (const first of sub) {
  // Take what is already buffered too, and commit it as one transaction.
  const batch = [first];
  while (sub.buffered > 0 && batch.length < batchMax) batch.push((await sub.next()).value);
  const msgs = batch.filter((item) => item.kind === "msg");
  position.merge(CursorState.decode(sub.cursor()));
  for (const gap of batch.filter((item) => item.kind === "gap")) {
    // Readings the gateway could not deliver live: fill them in from history, and count
    // them in the stored cursor, before moving on.
    console.error(`receiver: gap ${gap.topic} ${gap.from}..${gap.to} (${gap.reason}); reading history`);
    for (const m of await readGap(gap)) {
      msgs.push(m);
      position.observe(m.topic, m.origin, m.epoch, m.seq);
    }
  }
  commit(msgs, position.encode());
  total += msgs.length;
  console.log(`receiver: stored ${msgs.length} (total this run ${total})`);
}

async function readGap(gap) {
  const out = [];
  let page = await client.history(gap.topic, { from: { cursor: gap.cursor }, limit: 500 });
  while (page) {
    for (const m of page.messages) if (m.origin === gap.origin && m.epoch === gap.epoch && m.seq <= gap.to) out.push(m);
    if (page.messages.some((m) => m.seq >= gap.to)) break;
    page = await page.next();
  }
  return out;
}
