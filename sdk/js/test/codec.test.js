// The I/O-free parts: cursors, MessagePack, JSON framing, topic matching, checked
// against the worked examples of PROTOCOL.md and against hostile input.

import assert from "node:assert/strict";
import { test } from "node:test";

import {
  CursorState,
  decodeFrame,
  decodeMsgpack,
  EdgesyncError,
  encodeJson,
  encodeMsgpack,
  topicMatches,
} from "../edgesync.js";

test("the cursor of PROTOCOL.md §5 encodes and decodes byte for byte", () => {
  const c = new CursorState();
  c.observe("a", "n1", 1, 3);
  assert.equal(c.encode(), "AZGSoWGRk6JuMQED");
  const d = CursorState.decode("AZGSoWGRk6JuMQED");
  assert.equal(d.position("a", "n1", 1), 3);
  assert.equal(d.position("a", "n1", 2), 0);
  assert.equal(d.position("b", "n1", 1), 0);
});

test("cursors keep the maximum per (topic, origin) and merge pointwise", () => {
  const a = new CursorState();
  a.observe("t", "n1", 1, 5);
  a.observe("t", "n1", 1, 3);
  a.observe("t", "n2", 1, 7);
  const b = new CursorState();
  b.observe("t", "n1", 1, 9);
  b.observe("u", "n1", 2, 1);
  a.merge(b);
  const round = CursorState.decode(a.encode());
  assert.equal(round.position("t", "n1", 1), 9);
  assert.equal(round.position("t", "n2", 1), 7);
  assert.equal(round.position("u", "n1", 2), 1);
});

test("a malformed cursor is cursor_invalid, never a crash", () => {
  for (const bad of ["", "!!!!", "AA", "Ag", encodeCursorBody([["t", [["n", 1]]]]), encodeCursorBody({ x: 1 })]) {
    assert.throws(
      () => CursorState.decode(bad),
      (e) => e instanceof EdgesyncError && e.code === "cursor_invalid",
      `cursor ${JSON.stringify(bad)}`,
    );
  }
});

test("MessagePack: the sub command of PROTOCOL.md §8 byte for byte", () => {
  const bytes = encodeMsgpack({ t: "sub", id: 7, topic: "a", start: "latest" });
  assert.equal(Buffer.from(bytes).toString("hex"), "84a174a3737562a2696407a5746f706963a161a57374617274a66c6174657374");
});

test("MessagePack round-trips every type the protocol uses, 64-bit integers exactly", () => {
  const value = {
    nil: null,
    yes: true,
    no: false,
    small: 5,
    neg: -33,
    u16: 65535,
    u32: 4294967295,
    u53: Number.MAX_SAFE_INTEGER,
    hlc: 117662139193950208n,
    max: 18446744073709551615n,
    min: -(2n ** 63n),
    float: 0.25,
    str: "héllo ".repeat(20),
    bin: Uint8Array.from([0, 1, 2, 255]),
    big: new Uint8Array(70000),
    arr: Array.from({ length: 20 }, (_, i) => i),
    map: Object.fromEntries(Array.from({ length: 20 }, (_, i) => [`k${i}`, i])),
  };
  const back = decodeMsgpack(encodeMsgpack(value));
  assert.deepEqual(back, value);
});

test("MessagePack: hostile input is an error with bounded allocation", () => {
  const cases = [
    Uint8Array.from([0xdd, 0xff, 0xff, 0xff, 0xff]), // array of 4 G elements, no bytes
    Uint8Array.from([0xdf, 0xff, 0xff, 0xff, 0xff]), // map of 4 G entries
    Uint8Array.from([0xdb, 0xff, 0xff, 0xff, 0xff, 0x61]), // 4 GB string
    Uint8Array.from([0xc6, 0x00, 0x00, 0x10, 0x00]), // bin longer than the input
    Uint8Array.from([0xc7, 0x01, 0x01, 0x00]), // ext: not in the protocol
    Uint8Array.from([0x81, 0x01, 0x02]), // non-string map key
    Uint8Array.from([0xa2, 0xff, 0xfe]), // invalid UTF-8
    new Uint8Array(100).fill(0x91), // nested 100 deep
  ];
  for (const c of cases) assert.throws(() => decodeMsgpack(c), Error, Buffer.from(c).toString("hex"));
});

test("a MessagePack map key __proto__ is data, not a prototype", () => {
  const bytes = encodeMsgpack({ t: "msg", headers: JSON.parse('{"__proto__": "x"}') });
  const m = decodeMsgpack(bytes);
  assert.equal(Object.getPrototypeOf(m.headers), Object.prototype);
  assert.equal(Object.getOwnPropertyDescriptor(m.headers, "__proto__").value, "x");
});

test("JSON frames: several messages per frame, hlc exact beyond 2^53", () => {
  const hlc = "117662139193950209"; // not representable as a double
  const frame = [
    `{"t":"puback","id":3,"topic":"chat.r1","origin":"edge-1","epoch":1,"seq":6,"hlc":${hlc},"cursor":"x"}`,
    `{"t":"msg","topic":"chat.r1","origin":"edge-1","epoch":1,"seq":6,"hlc":${hlc},"client":"s","data":"hello"}`,
    `{"t":"history","id":4,"topic":"a","msgs":[{"topic":"a","origin":"o","epoch":1,"seq":1,"hlc":${hlc},"client":"c","data":"x"}],"cursor":"c","more":false}`,
  ].join("\n");
  const msgs = decodeFrame(frame);
  assert.equal(msgs.length, 3);
  assert.equal(msgs[0].hlc, BigInt(hlc));
  assert.equal(msgs[1].hlc, BigInt(hlc));
  assert.equal(msgs[2].msgs[0].hlc, BigInt(hlc));
  assert.equal(msgs[1].data, "hello");
});

test("JSON frames: objects separated by any whitespace; strings that look like hlc stay strings", () => {
  const msgs = decodeFrame(
    ' {"t":"a","data":"{\\"hlc\\":5} }{"}\t{"t":"b","headers":{"x":",\\"hlc\\":7"},"hlc":18446744073709551615}  ',
  );
  assert.equal(msgs.length, 2);
  assert.equal(msgs[0].data, '{"hlc":5} }{');
  assert.equal(msgs[1].headers.x, ',"hlc":7');
  assert.equal(msgs[1].hlc, 18446744073709551615n);
});

test("JSON frames: an empty frame is a keepalive; garbage is an error", () => {
  assert.deepEqual(decodeFrame(""), []);
  assert.deepEqual(decodeFrame("\n"), []);
  for (const bad of ['{"t":"a"', '{"t":"a"} x', "[1,2]", '{"x":1}', '{"t":1}']) {
    assert.throws(() => decodeFrame(bad), Error, bad);
  }
});

test("encodeJson writes BigInts as exact integers and leaves look-alike strings alone", () => {
  assert.equal(
    encodeJson({ a: 2n ** 64n - 1n, s: "__edgesync_big_1" }),
    '{"a":18446744073709551615,"s":"__edgesync_big_1"}',
  );
});

test("topic matching follows PROTOCOL.md §3", () => {
  const cases = [
    ["chat.*", "chat.r1", true],
    ["chat.*", "chat.r1.x", false],
    ["chat.>", "chat.r1.x", true],
    ["chat.>", "chat", false],
    [">", "a", true],
    [">", "$dlq.p", false],
    ["*.x", "$dlq.x", false],
    ["$dlq.>", "$dlq.p", true],
    ["a.b", "a.b", true],
    ["a.b", "a.c", false],
  ];
  for (const [p, t, want] of cases) assert.equal(topicMatches(p, t), want, `${p} vs ${t}`);
});

function encodeCursorBody(body) {
  const packed = encodeMsgpack(body);
  const bytes = Buffer.concat([Buffer.from([1]), Buffer.from(packed)]);
  return bytes.toString("base64url");
}
