// The subscriber: reads `ha.>` from the earliest message (or from the cursor in
// --cursor-file), connected with every gateway's URL. When its gateway dies, the client
// reconnects to the next one and resubscribes from its cursor, which is valid on every
// gateway of the cluster: no gap, no repeat of what it delivered.
//
// One publish can still be stored twice across a failover (docs/replication.md, "Clients
// and failover"): a publish the dead gateway took but did not ack is resent to another
// gateway with its mid, and the two copies have different origins. So the application
// drops a message whose (publisher client id, mid) it has already seen, remembering the
// last --remember ids (bounded memory).
//
//   node subscriber.js --url ws://127.0.0.1:7401 --url ws://127.0.0.1:7402 --url ws://127.0.0.1:7403
//
// --log FILE appends one JSON line per event (connected, msg) for the test.

import { appendFileSync, readFileSync, renameSync, writeFileSync } from "node:fs";

import { connect } from "../../sdk/js/edgesync.js";
import { parseArgs } from "./args.js";

const opts = parseArgs(process.argv.slice(2), {
  url: ["ws://127.0.0.1:7401", "ws://127.0.0.1:7402", "ws://127.0.0.1:7403"],
  pattern: "ha.>",
  remember: 100000,
  cursorFile: "",
  log: "",
});
const log = (event) => {
  if (opts.log) appendFileSync(opts.log, `${JSON.stringify(event)}\n`);
};
let cursor;
try {
  if (opts.cursorFile) cursor = readFileSync(opts.cursorFile, "utf8").trim() || undefined;
} catch (e) {
  if (e.code !== "ENOENT") throw e;
}

const client = await connect(opts.url, { cursor, backoff: { initialMs: 100, maxMs: 1000 } });
client.addEventListener("connected", (e) => log({ event: "connected", node: e.detail.session.node }));
log({ event: "connected", node: client.session.node });
process.on("SIGTERM", () => client.close());

/** (client id, mid) pairs seen, oldest first: a Set keeps insertion order. */
const seen = new Set();
let saved = 0;
for await (const m of client.subscribe(opts.pattern, { from: cursor ? { cursor } : "earliest" })) {
  if (m.kind !== "msg") {
    if (m.kind === "gap") log({ event: "gap", topic: m.topic, origin: m.origin, from: m.from, to: m.to, reason: m.reason });
    continue;
  }
  const id = `${m.client}\u0000${m.mid ?? `${m.origin}/${m.epoch}/${m.seq}`}`;
  const repeat = seen.has(id);
  if (!repeat) {
    seen.add(id);
    if (seen.size > opts.remember) seen.delete(seen.values().next().value);
    console.log(m.text());
  }
  let n = null;
  try {
    n = m.json().n;
  } catch {
    // not one of the publisher's counters
  }
  log({ event: "msg", n, mid: m.mid, origin: m.origin, seq: m.seq, via: client.session?.node, repeat });
  if (opts.cursorFile && ++saved % 100 === 0) {
    writeFileSync(`${opts.cursorFile}.tmp`, client.cursor());
    renameSync(`${opts.cursorFile}.tmp`, opts.cursorFile);
  }
}
