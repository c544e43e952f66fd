// The producer: publishes `--count` jobs to `orders.new`, each with the idempotent
// `mid` "job-<n>" under the stable client id `--client-id` (mids are scoped by client
// id), so running it again (or a resend after a reconnect) never makes a job twice. Exits 0 once every job is durably acked by the gateway.
//
//   node producer.js --url ws://127.0.0.1:7400 --count 100

import { connect } from "../../sdk/js/edgesync.js";
import { parseArgs } from "./args.js";

const opts = parseArgs(process.argv.slice(2), { url: ["ws://127.0.0.1:7400"], count: 100, topic: "orders.new", first: 1, clientId: "producer-1" });
const client = await connect(opts.url, { clientId: opts.clientId });
const acks = [];
for (let n = opts.first; n < opts.first + opts.count; n++) {
  const job = { id: n, item: `sku-${n % 17}`, qty: 1 + (n % 5) };
  acks.push(client.publish(opts.topic, JSON.stringify(job), { mid: `job-${n}` }));
}
const done = await Promise.all(acks);
console.log(`published ${done.length} jobs (${done.filter((a) => a.dup).length} already there)`);
await client.close();
