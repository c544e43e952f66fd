// The publisher: publishes counters 1..--count on `ha.counter`, each as {"n": N} with the
// idempotent mid "n-N" under a stable client id, keeping at most --window publishes
// awaiting their ack. Connected with every gateway's URL: when its gateway dies, the
// client reconnects to the next one and resends the unacknowledged publishes with
// their mids. Exits 0 once every counter is acknowledged (with `ack = "replicated:1"`,
// an ack means two gateways hold it).
//
//   node publisher.js --url ws://127.0.0.1:7401 --url ws://127.0.0.1:7402 --url ws://127.0.0.1:7403
//
// --log FILE appends one JSON line per event (connected, acked) for the test.

import { appendFileSync } from "node:fs";

import { connect } from "../../sdk/js/edgesync.js";
import { parseArgs } from "./args.js";

const opts = parseArgs(process.argv.slice(2), {
  url: ["ws://127.0.0.1:7401", "ws://127.0.0.1:7402", "ws://127.0.0.1:7403"],
  count: 1000,
  first: 1,
  window: 16,
  topic: "ha.counter",
  clientId: "ha-publisher-1",
  log: "",
});
if (!(opts.window >= 1 && opts.window <= 1024)) throw new Error("--window must be 1..1024");
const log = (event) => {
  if (opts.log) appendFileSync(opts.log, `${JSON.stringify(event)}\n`);
};

const client = await connect(opts.url, { clientId: opts.clientId, backoff: { initialMs: 100, maxMs: 1000 } });
client.addEventListener("connected", (e) => log({ event: "connected", node: e.detail.session.node }));
log({ event: "connected", node: client.session.node });

let dups = 0;
const inFlight = new Set();
for (let n = opts.first; n < opts.first + opts.count; n++) {
  while (inFlight.size >= opts.window) await Promise.race(inFlight);
  const p = client.publish(opts.topic, JSON.stringify({ n }), { mid: `n-${n}` }).then((ack) => {
    inFlight.delete(p);
    if (ack.dup) dups++;
    log({ event: "acked", n, origin: ack.origin, seq: ack.seq, dup: ack.dup });
  });
  inFlight.add(p);
}
await Promise.all(inFlight);
console.log(`published ${opts.count} counters (${dups} already there)`);
await client.close();
