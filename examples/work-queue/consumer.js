// A consumer: a member of the queue group "orders" on `orders.>`. Each job goes to one
// consumer; it does the work, appends the result to its log (one JSON line per event),
// and only then acks. A consumer that dies before its ack leaves the job to another
// consumer: at-least-once processing, and an acked job is never delivered again.
//
//   node consumer.js --url ws://127.0.0.1:7400 --name c1 --log c1.log
//
// `--work-ms` is how long a job takes; `--stall-after N` hangs forever on the N-th job
// (after logging "start"), so a test can kill the consumer mid-message.

import { appendFileSync } from "node:fs";

import { connect } from "../../sdk/js/edgesync.js";
import { parseArgs } from "./args.js";

const opts = parseArgs(process.argv.slice(2), {
  url: ["ws://127.0.0.1:7400"],
  name: `consumer-${process.pid}`,
  log: "",
  workMs: 2,
  stallAfter: 0,
  maxUnacked: 4,
});
const log = (event) => {
  const line = JSON.stringify({ consumer: opts.name, ...event });
  if (opts.log) appendFileSync(opts.log, `${line}\n`);
  else console.log(line);
};

const client = await connect(opts.url, { backoff: { initialMs: 50, maxMs: 1000 } });
const jobs = client.joinQueue("orders.>", {
  group: "orders",
  from: "earliest", // a new group starts with every retained job
  maxUnacked: opts.maxUnacked,
  ackWaitMs: 10_000, // a consumer that hangs without dying gives its job back after this
  maxDeliveries: 10,
});
await jobs.ready;
log({ event: "ready" });
process.on("SIGTERM", () => client.close().then(() => process.exit(0)));

let started = 0;
for await (const m of jobs) {
  const job = m.json();
  started++;
  log({ event: "start", id: job.id, delivery: m.delivery });
  if (opts.stallAfter > 0 && started >= opts.stallAfter) {
    log({ event: "stall", id: job.id });
    await new Promise(() => {}); // hung mid-message until killed
  }
  await new Promise((r) => setTimeout(r, opts.workMs)); // the work
  const total = job.qty * 10; // its result
  try {
    await m.ack();
    log({ event: "acked", id: job.id, total, delivery: m.delivery });
  } catch (e) {
    // Lost connection: the gateway gave the job back; it comes again (here or elsewhere).
    log({ event: "ack_failed", id: job.id, code: e.code });
  }
}
