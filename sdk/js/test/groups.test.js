// Queue groups, presence and direct messages through the JS client against a real
// gateway process (PROTOCOL.md §2.5–2.7), in both encodings.

import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";

import { connect, EdgesyncError } from "../edgesync.js";
import { FaultProxy, Gateway, stored, takeKeep, waitFor } from "./support.js";

let gw;
before(async () => {
  gw = await Gateway.start();
});
after(async () => {
  await gw?.dispose();
});

/** The next item of `sub` that is not a message (a `join` or `leave`), bounded. */
async function nextPresence(sub) {
  for (let i = 0; i < 1000; i++) {
    const [item] = await takeKeep(sub, 1);
    if (item.kind === "join" || item.kind === "leave") return item;
  }
  throw new Error("no presence item");
}

for (const encoding of ["json", "msgpack"]) {
  describe(encoding, () => {
    const open = (opts = {}) => connect(gw.url, { encoding, ...opts });

    test("a queue group hands each message to one member; acked ones never come back", async () => {
      const [producer, a, b] = await Promise.all([open(), open(), open()]);
      try {
        const topic = `jobs.${encoding}.q1`;
        const group = `g1${encoding}`;
        const qa = a.joinQueue(topic, { group, from: "earliest", maxUnacked: 4 });
        const qb = b.joinQueue(topic, { group, maxUnacked: 4 });
        await Promise.all([qa.ready, qb.ready]);
        const n = 30;
        for (let i = 0; i < n; i++) await producer.publish(topic, `job-${i}`);
        const seen = new Map(); // seq → member
        const work = async (sub, name) => {
          while (seen.size < n) {
            const r = await Promise.race([sub.next(), new Promise((res) => setTimeout(res, 50, null))]);
            if (!r) continue;
            const m = r.value;
            assert.equal(m.queue, group);
            assert.equal(m.delivery, 1);
            assert.ok(!seen.has(m.seq), `seq ${m.seq} delivered twice`);
            seen.set(m.seq, name);
            await m.ack();
          }
        };
        await Promise.race([
          Promise.all([work(qa, "a"), work(qb, "b")]),
          new Promise((_, rej) => setTimeout(rej, 30_000, new Error(`only ${seen.size} of ${n}`)).unref()),
        ]);
        assert.equal(seen.size, n);
        const members = new Set(seen.values());
        assert.deepEqual([...members].sort(), ["a", "b"], "both members got work");
        // Answering twice: the delivery is no longer held.
        await assert.rejects(
          a.ack({ queue: group, topic, origin: a.session.node, epoch: a.session.epoch, seq: 1 }),
          (e) => e instanceof EdgesyncError && e.code === "not_in_flight",
        );
        // A plain message is not a queue delivery.
        const plain = producer.subscribe(topic, { from: "earliest" });
        const [m] = await takeKeep(plain, 1);
        await assert.rejects(m.ack(), (e) => e.code === "invalid_argument");
      } finally {
        await Promise.all([producer.close(), a.close(), b.close()]);
      }
    });

    test("nak redelivers, term dead-letters, a closed member's deliveries go to another", async () => {
      const [producer, a, b] = await Promise.all([open(), open(), open()]);
      try {
        const topic = `jobs.${encoding}.q2`;
        const group = `g2${encoding}`;
        const qa = a.joinQueue(topic, { group, maxUnacked: 1, maxDeliveries: 5 });
        await qa.ready;
        await producer.publish(topic, "first");
        let [m] = await takeKeep(qa, 1);
        assert.equal(m.text(), "first");
        await m.progress();
        await m.nak();
        [m] = await takeKeep(qa, 1);
        assert.equal(m.delivery, 2, "a nak'd message comes again");
        await m.term("cannot parse");
        const dlq = await waitForStored(producer, `$dlq.queue.${group}`, 1);
        assert.equal(dlq[0].text(), "first");
        assert.equal(dlq[0].headers["queue-reason"], "cannot parse");
        assert.equal(dlq[0].headers["queue-topic"], topic);

        // a holds "second" (max_unacked 1) and closes: b gets it.
        await producer.publish(topic, "second");
        [m] = await takeKeep(qa, 1);
        assert.equal(m.text(), "second");
        const qb = b.joinQueue(topic, { group, maxUnacked: 1, maxDeliveries: 5 });
        await qb.ready;
        await a.close();
        const [again] = await takeKeep(qb, 1);
        assert.equal(again.text(), "second");
        assert.equal(again.delivery, 2);
        await again.ack();
        // Group options that differ from the group's: queue_conflict.
        const bad = producer.joinQueue(topic, { group, maxDeliveries: 7 });
        await assert.rejects(bad.ready, (e) => e.code === "queue_conflict");
      } finally {
        await Promise.all([producer.close(), a.close(), b.close()]);
      }
    });

    test("presence: join and leave items in the subscription, presence() lists the members", async () => {
      const room = `chat.${encoding}.room1`;
      const bob = await open({ clientId: `bob-${encoding}` });
      const alice = await open({ clientId: `alice-${encoding}` });
      try {
        const bs = bob.subscribe(room, { presence: true });
        assert.deepEqual(pick(await nextPresence(bs)), ["join", `bob-${encoding}`]);
        const as = alice.subscribe(room, { presence: true });
        await as.ready;
        assert.deepEqual(pick(await nextPresence(bs)), ["join", `alice-${encoding}`]);
        const list = await bob.presence(room);
        assert.equal(list.count, 2);
        assert.equal(list.truncated, false);
        assert.deepEqual(
          list.members.map((m) => m.client),
          [`alice-${encoding}`, `bob-${encoding}`],
        );
        assert.ok(list.members.every((m) => m.connections === 1 && m.since > 0 && m.node === bob.session.node));
        // Messages of the room come in the same iterator.
        await alice.publish(room, "hi bob");
        const [msg] = await takeKeep(bs, 1);
        assert.equal(msg.text(), "hi bob");
        await alice.close();
        assert.deepEqual(pick(await nextPresence(bs)), ["leave", `alice-${encoding}`]);
        assert.equal((await bob.presence(room)).count, 1);
        // A plain subscription gets no presence items and does not make a member.
        const carol = await open({ clientId: `carol-${encoding}` });
        await carol.subscribe(room).ready;
        assert.equal((await bob.presence(room)).count, 1);
        await carol.close();
      } finally {
        await Promise.all([bob.close(), alice.close()]);
      }
    });

    test("direct messages wait in the inbox while offline and arrive live", async () => {
      const dave = `dave-${encoding}`;
      const sender = await open();
      try {
        const ack = await sender.sendToClient(dave, "while you were out", { headers: { from: "sender" } });
        assert.equal(ack.topic, `$inbox.${dave}`);
        assert.equal(ack.dup, false);
        const again = await sender.sendToClient(dave, "while you were out", { mid: "m-1" });
        assert.equal((await sender.sendToClient(dave, "x", { mid: "m-1" })).dup, true);
        assert.equal(again.dup, false);
        const p = await sender.sendToPrincipal("ops", "to a principal");
        assert.equal(p.topic, "$inbox.@ops");

        const d = await open({ clientId: dave });
        try {
          const inbox = d.inbox({ from: "earliest" });
          const got = await takeKeep(inbox, 2);
          assert.deepEqual(
            got.map((m) => m.text()),
            ["while you were out", "while you were out"],
          );
          assert.equal(got[0].headers.from, "sender");
          await sender.sendToClient(dave, "live");
          const [live] = await takeKeep(inbox, 1);
          assert.equal(live.text(), "live");
          // Nobody else reads dave's inbox.
          const spy = sender.subscribe(`$inbox.${dave}`, { from: "earliest" });
          await assert.rejects(spy.ready, (e) => e.code === "forbidden");
          // Resume from the inbox's cursor: nothing twice, the newest only.
          const cursor = inbox.cursor();
          await d.close();
          await sender.sendToClient(dave, "after");
          const d2 = await open({ clientId: dave });
          try {
            const [next] = await takeKeep(d2.inbox({ from: { cursor } }), 1);
            assert.equal(next.text(), "after");
          } finally {
            await d2.close();
          }
        } finally {
          await d.close();
        }
      } finally {
        await sender.close();
      }
    });
  });
}

test("after a lost connection a member joins again and gets what it held; presence comes back", async () => {
  const proxy = await FaultProxy.start(gw.wsAddr);
  const producer = await connect(gw.url);
  const member = await connect(proxy.url, { backoff: { initialMs: 20, maxMs: 100 } });
  try {
    const q = member.joinQueue("jobs.cut", { group: "gcut", maxUnacked: 1 });
    const room = member.subscribe("chat.cut", { presence: true });
    await Promise.all([q.ready, room.ready]);
    assert.equal((await nextPresence(room)).kind, "join");
    await producer.publish("jobs.cut", "held");
    const [m] = await takeKeep(q, 1);
    assert.equal(m.delivery, 1);
    proxy.cut();
    // The answer for a delivery held before the cut fails: it was given back.
    await assert.rejects(m.ack(), (e) => e.code === "connection_lost" || e.code === "not_in_flight");
    const [again] = await takeKeep(q, 1);
    // Its only member went, so the group's in-memory delivery count may have started
    // again (docs/queues.md): the message coming back is what counts.
    assert.equal(again.text(), "held");
    await again.ack();
    await waitFor(async () => (await producer.presence("chat.cut")).count === 1, "present again");
  } finally {
    await Promise.all([producer.close(), member.close()]);
    await proxy.close();
  }
});

function pick(item) {
  return [item.kind, item.client];
}

async function waitForStored(client, topic, n) {
  let all = [];
  await waitFor(async () => {
    all = await stored(client, topic);
    return all.length >= n;
  }, `${n} messages in ${topic}`);
  return all;
}
