#!/usr/bin/env node
// A third device that syncs: it joins at any time, gets the latest reading of every
// device at once (`from: { last: 1 }`), then follows live updates, keeping a local
// view of the current state.
//
//   node display.js --url ws://127.0.0.1:7400
//   node display.js --until 1000 --json    # exit once every device reached reading 1000

import { parseArgs } from "node:util";

import { connect } from "../../sdk/js/edgesync.js";

const { values: args } = parseArgs({
  options: {
    url: { type: "string", multiple: true, default: ["ws://127.0.0.1:7400"] },
    until: { type: "string" },
    devices: { type: "string" }, // with --until: how many devices to wait for
    json: { type: "boolean", default: false },
  },
});

const until = args.until ? Number(args.until) : undefined;
const devices = args.devices ? Number(args.devices) : 1;
const client = await connect(args.url);
/** device → its latest reading */
const state = new Map();

for await (const m of client.subscribe("readings.>", { from: { last: 1 } })) {
  if (m.kind !== "msg") continue;
  const r = m.json();
  const prev = state.get(r.device);
  if (!prev || r.n > prev.n) state.set(r.device, r);
  if (!args.json) {
    const line = [...state.values()].map((x) => `${x.device}=${x.value} (#${x.n})`).join("  ");
    process.stdout.write(`\r${line}`);
  }
  if (until !== undefined && state.size >= devices && [...state.values()].every((x) => x.n >= until)) break;
}
if (args.json) console.log(JSON.stringify(Object.fromEntries(state)));
else process.stdout.write("\n");
await client.close();
