#!/usr/bin/env node
// A sender device: publishes one reading at a time on `readings.<device>` and waits for
// the gateway's durable ack. Its client id is stable and every reading's `mid` is
// `<device>-<n>`, so a reading resent after a reconnect (or by a restarted sender
// within the dedupe window) is stored once.
//
//   node sender.js --url ws://127.0.0.1:7400 --device d1 --count 1000 --interval-ms 10

import { parseArgs } from "node:util";

import { connect } from "../../sdk/js/edgesync.js";

const { values: args } = parseArgs({
  options: {
    url: { type: "string", multiple: true, default: ["ws://127.0.0.1:7400"] },
    device: { type: "string", default: "d1" },
    count: { type: "string", default: "0" }, // 0: forever
    "interval-ms": { type: "string", default: "1000" },
    from: { type: "string", default: "1" },
  },
});

const device = args.device;
const count = Number(args.count);
const intervalMs = Number(args["interval-ms"]);
const client = await connect(args.url, { clientId: `sensor-${device}` });
client.addEventListener("reconnecting", (e) => console.error(`sender ${device}: reconnecting to ${e.detail.url}`));

let value = 20;
for (let n = Number(args.from); count === 0 || n <= count; n++) {
  value += Math.round((Math.random() - 0.5) * 10) / 10;
  const reading = { device, n, value: Math.round(value * 10) / 10, at: new Date().toISOString() };
  // Resolves once the reading is durable on the gateway; retried across reconnects.
  await client.publish(`readings.${device}`, JSON.stringify(reading), { mid: `${device}-${n}` });
  if (intervalMs > 0) await new Promise((r) => setTimeout(r, intervalMs));
}
await client.close();
console.log(`sender ${device}: ${count} readings acknowledged`);
