// edgesync's AssemblyScript plugin SDK (a copy of
// sdk/assemblyscript/template/assembly/edgesync.ts; keep it as
// `edgesync plugin new` wrote it).
//
// AssemblyScript has no WIT binding generator, so this file is the
// canonical ABI glue for the world in wit/world.wit, written by hand: the
// exports `lifecycle.init`, `message-hooks.on-message` and `on-batch` (with
// their post-return functions and `cabi_realloc`), and the imports
// `config.get`, `kv.increment`, `metrics.define-counter`, `metrics.add` and
// `verdict`. build.mjs gives the exports their WIT names (AssemblyScript
// cannot spell `edgesync:plugin/…#init`) and makes the component.
//
// It hides the two hot-path layouts of the contract like the other SDKs: a
// plugin calls `definePlugin(init, onMessage)` with
//   init(configJson: string): string | null   (an error fails the load)
//   onMessage(msg: Message): Verdict           (pass(), replace(…), drop(), reject(…))
// and re-exports this module's exports (see assembly/redact.ts).

// ---------------------------------------------------------------------------
// The plugin's view.
// ---------------------------------------------------------------------------

export class Header {
  constructor(public name: string, public value: string) {}
}

/** One message and its sender (copies: the plugin may keep them). */
export class Message {
  connId: u64 = 0;
  clientId: string = "";
  /** Empty when the connection is anonymous. */
  principal: string = "";
  topic: string = "";
  headers: Header[] = [];
  payload: Uint8Array = new Uint8Array(0);
}

export const PASS: u8 = 0;
export const REPLACE: u8 = 1;
export const DROP: u8 = 2;
export const REJECT: u8 = 3;

/** What `onMessage` decided. */
export class Verdict {
  constructor(
    public action: u8,
    public headers: Header[] = [],
    public payload: Uint8Array = new Uint8Array(0),
    public reason: string = "",
  ) {}
}

export function pass(): Verdict {
  return new Verdict(PASS);
}

export function drop(): Verdict {
  return new Verdict(DROP);
}

export function reject(reason: string): Verdict {
  return new Verdict(REJECT, [], new Uint8Array(0), reason);
}

/** Continue with the message's topic and these headers and payload. */
export function replace(headers: Header[], payload: Uint8Array): Verdict {
  return new Verdict(REPLACE, headers, payload);
}

let initHook: (config: string) => string | null = (config: string): string | null => null;
let messageHook: (msg: Message) => Verdict = (msg: Message): Verdict => pass();

export function definePlugin(
  init: (config: string) => string | null,
  onMessage: (msg: Message) => Verdict,
): void {
  initHook = init;
  messageHook = onMessage;
}

// ---------------------------------------------------------------------------
// Host capabilities.
// ---------------------------------------------------------------------------

@external("edgesync:plugin/config@0.1.0", "get")
declare function rawConfigGet(keyPtr: usize, keyLen: usize, ret: usize): void;

@external("edgesync:plugin/kv@0.1.0", "increment")
declare function rawKvIncrement(
  keyPtr: usize, keyLen: usize, delta: i64, hasTtl: i32, ttl: i64, ret: usize): void;

@external("edgesync:plugin/metrics@0.1.0", "define-counter")
declare function rawDefineCounter(
  namePtr: usize, nameLen: usize, helpPtr: usize, helpLen: usize,
  labelsPtr: usize, labelsLen: usize, ret: usize): void;

@external("edgesync:plugin/metrics@0.1.0", "add")
declare function rawMetricsAdd(id: u32, labelsPtr: usize, labelsLen: usize, delta: f64): void;

@external("edgesync:plugin/verdict@0.1.0", "set-replacement")
declare function rawSetReplacement(
  topicPtr: usize, topicLen: usize, headersPtr: usize, headersLen: usize,
  payloadPtr: usize, payloadLen: usize): void;

@external("edgesync:plugin/verdict@0.1.0", "set-reason")
declare function rawSetReason(ptr: usize, len: usize): void;

// Where imports write results wider than one value (at most 24 bytes).
const retArea = heap.alloc(32);

/** `config.get(key)`: the value, or null. */
export function configGet(key: string): string | null {
  const k = String.UTF8.encode(key);
  rawConfigGet(changetype<usize>(k), k.byteLength, retArea);
  if (load<u8>(retArea) == 0) return null;
  return takeString(load<usize>(retArea, 4), load<usize>(retArea, 8));
}

/** `kv.increment(key, delta, none)`: the new value, or -1 on a kv error. */
export function kvIncrement(key: string, delta: i64): i64 {
  const k = String.UTF8.encode(key);
  rawKvIncrement(changetype<usize>(k), k.byteLength, delta, 0, 0, retArea);
  if (load<u8>(retArea) == 0) return load<i64>(retArea, 8);
  // kv-error: only `unavailable` (case 0) carries a string, ours to free.
  if (load<u8>(retArea, 8) == 0) heap.free(load<usize>(retArea, 12));
  return -1;
}

/** `metrics.define-counter(name, help, [])`: the id, or -1 (the error dropped). */
export function defineCounter(name: string, help: string): i64 {
  const n = String.UTF8.encode(name);
  const h = String.UTF8.encode(help);
  rawDefineCounter(changetype<usize>(n), n.byteLength, changetype<usize>(h), h.byteLength,
    0, 0, retArea);
  if (load<u8>(retArea) == 0) return <i64>load<u32>(retArea, 4);
  heap.free(load<usize>(retArea, 4));
  return -1;
}

/** `metrics.add(id, [], delta)`. */
export function metricsAdd(id: u32, delta: f64): void {
  rawMetricsAdd(id, 0, 0, delta);
}

// ---------------------------------------------------------------------------
// Exports (renamed by build.mjs).
// ---------------------------------------------------------------------------

/** The canonical ABI's allocator: the host copies arguments in with it. */
export function cabi_realloc(ptr: usize, oldSize: usize, align: usize, newSize: usize): usize {
  // The heap aligns every block to 16 bytes, more than any WIT type needs.
  if (ptr == 0) return heap.alloc(newSize == 0 ? 1 : newSize);
  return heap.realloc(ptr, newSize == 0 ? 1 : newSize);
}

// Blocks of the last export's result, freed by its post-return function.
const resultBlocks = new Array<usize>();

function resultAlloc(size: usize): usize {
  const p = heap.alloc(size == 0 ? 1 : size);
  resultBlocks.push(p);
  return p;
}

function freeResult(): void {
  for (let i = 0; i < resultBlocks.length; i++) heap.free(resultBlocks[i]);
  resultBlocks.length = 0;
}

/** `lifecycle.init(config) -> result<_, string>`. */
export function lifecycle_init(configPtr: usize, configLen: usize): usize {
  const error = initHook(takeString(configPtr, configLen));
  const ret = resultAlloc(12);
  if (error === null) {
    store<u8>(ret, 0);
  } else {
    store<u8>(ret, 1);
    storeString(ret + 4, error);
  }
  return ret;
}

export function post_lifecycle_init(ret: usize): void {
  freeResult();
}

/** `message-hooks.on-message(packed-message) -> message-action`. */
export function message_hooks_on_message(
  connId: u64, dataPtr: usize, dataLen: usize,
  clientIdEnd: u32, principalEnd: u32, topicEnd: u32, payloadEnd: u32,
): u8 {
  const msg = unpack(connId, dataPtr, dataLen, clientIdEnd, principalEnd, topicEnd, payloadEnd);
  heap.free(dataPtr);
  if (msg === null) {
    setReason("malformed packed message");
    return REJECT;
  }
  const v = messageHook(msg);
  if (v.action == REPLACE) {
    setReplacement(msg.topic, v.headers, v.payload);
  } else if (v.action == REJECT) {
    setReason(v.reason);
  }
  return v.action;
}

/** `message-hooks.on-batch(conn-ref, batch) -> list<batch-verdict>`. */
export function message_hooks_on_batch(
  connId: u64, clientIdPtr: usize, clientIdLen: usize, principalPtr: usize, principalLen: usize,
  dataPtr: usize, dataLen: usize, headersPtr: usize, headersLen: usize,
  endsPtr: usize, endsLen: usize,
): usize {
  const clientId = takeString(clientIdPtr, clientIdLen);
  const principal = takeString(principalPtr, principalLen);
  const headers = new Array<Header>();
  for (let i: usize = 0; i < headersLen; i++) {
    const h = headersPtr + 16 * i;
    const name = takeString(load<usize>(h), load<usize>(h, 4));
    headers.push(new Header(name, takeString(load<usize>(h, 8), load<usize>(h, 12))));
  }
  heap.free(headersPtr);
  // Each verdict that is not pass: (index, verdict), 32 bytes apiece.
  const indexes = new Array<u32>();
  const verdicts = new Array<Verdict>();
  const topics = new Array<string>();
  let start: u32 = 0;
  let headerStart: u32 = 0;
  for (let i: usize = 0; i * 3 + 2 < endsLen; i++) {
    const topicEnd = load<u32>(endsPtr + 12 * i);
    const payloadEnd = load<u32>(endsPtr + 12 * i, 4);
    const headersEnd = load<u32>(endsPtr + 12 * i, 8);
    if (topicEnd < start || payloadEnd < topicEnd || <usize>payloadEnd > dataLen ||
      headersEnd < headerStart || <usize>headersEnd > headersLen) break; // a host bug
    const msg = new Message();
    msg.connId = connId;
    msg.clientId = clientId;
    msg.principal = principal;
    msg.topic = String.UTF8.decodeUnsafe(dataPtr + start, topicEnd - start);
    msg.headers = headers.slice(headerStart, headersEnd);
    msg.payload = bytesAt(dataPtr + topicEnd, payloadEnd - topicEnd);
    const v = messageHook(msg);
    if (v.action != PASS) {
      indexes.push(<u32>i);
      verdicts.push(v);
      topics.push(msg.topic);
    }
    start = payloadEnd;
    headerStart = headersEnd;
  }
  heap.free(dataPtr);
  heap.free(endsPtr);
  const list = resultAlloc(32 * verdicts.length);
  for (let i = 0; i < verdicts.length; i++) {
    const at = list + 32 * i;
    const v = verdicts[i];
    store<u32>(at, indexes[i]);
    store<u8>(at, v.action, 4);
    if (v.action == REPLACE) {
      storeString(at + 8, topics[i]);
      storeHeaders(at + 16, v.headers, true);
      storeBytes(at + 24, v.payload);
    } else if (v.action == REJECT) {
      storeString(at + 8, v.reason);
    }
  }
  const ret = resultAlloc(8);
  store<usize>(ret, list);
  store<usize>(ret, verdicts.length, 4);
  return ret;
}

export function post_message_hooks_on_batch(ret: usize): void {
  freeResult();
}

/** Traps on an AssemblyScript abort (an assertion, an index out of range). */
export function abort(message: string | null, file: string | null, line: u32, column: u32): void {
  unreachable();
}

// ---------------------------------------------------------------------------
// Lifting and lowering.
// ---------------------------------------------------------------------------

/** A host-allocated UTF-8 string, decoded and freed. */
function takeString(ptr: usize, len: usize): string {
  const s = String.UTF8.decodeUnsafe(ptr, len);
  heap.free(ptr);
  return s;
}

function bytesAt(ptr: usize, len: usize): Uint8Array {
  const a = new Uint8Array(<i32>len);
  memory.copy(a.dataStart, ptr, len);
  return a;
}

/** Writes (ptr, len) of `s` in UTF-8 at `at`, in a result block. */
function storeString(at: usize, s: string): void {
  const buf = String.UTF8.encode(s);
  const p = resultAlloc(buf.byteLength);
  memory.copy(p, changetype<usize>(buf), buf.byteLength);
  store<usize>(at, p);
  store<usize>(at, buf.byteLength, 4);
}

function storeBytes(at: usize, b: Uint8Array): void {
  const p = resultAlloc(b.length);
  memory.copy(p, b.dataStart, b.length);
  store<usize>(at, p);
  store<usize>(at, b.length, 4);
}

function storeHeaders(at: usize, headers: Header[], result: bool): void {
  const list = resultAlloc(16 * headers.length);
  for (let i = 0; i < headers.length; i++) {
    storeString(list + 16 * i, headers[i].name);
    storeString(list + 16 * i + 8, headers[i].value);
  }
  store<usize>(at, list);
  store<usize>(at, headers.length, 4);
}

function setReplacement(topic: string, headers: Header[], payload: Uint8Array): void {
  // Import arguments stay ours: lower into result blocks, free right after.
  const args = resultAlloc(24);
  storeString(args, topic);
  storeHeaders(args + 8, headers, false);
  storeBytes(args + 16, payload);
  rawSetReplacement(load<usize>(args), load<usize>(args, 4), load<usize>(args, 8),
    load<usize>(args, 12), load<usize>(args, 16), load<usize>(args, 20));
  freeResult();
}

function setReason(reason: string): void {
  const buf = String.UTF8.encode(reason);
  rawSetReason(changetype<usize>(buf), buf.byteLength);
}

/** Splits `on-message`'s packed buffer: the client id, the principal, the
 *  topic, the payload (the *End offsets end them), then each header as a
 *  name and a value, each preceded by its length as a little-endian u32. */
function unpack(
  connId: u64, data: usize, len: usize,
  clientIdEnd: u32, principalEnd: u32, topicEnd: u32, payloadEnd: u32,
): Message | null {
  if (clientIdEnd > principalEnd || principalEnd > topicEnd || topicEnd > payloadEnd ||
    <usize>payloadEnd > len) return null;
  const msg = new Message();
  msg.connId = connId;
  msg.clientId = String.UTF8.decodeUnsafe(data, clientIdEnd);
  msg.principal = String.UTF8.decodeUnsafe(data + clientIdEnd, principalEnd - clientIdEnd);
  msg.topic = String.UTF8.decodeUnsafe(data + principalEnd, topicEnd - principalEnd);
  msg.payload = bytesAt(data + topicEnd, payloadEnd - topicEnd);
  let at = <usize>payloadEnd;
  while (at < len) {
    if (len - at < 4) return null;
    const nameLen = <usize>load<u32>(data + at);
    if (len - at - 4 < nameLen) return null;
    const name = String.UTF8.decodeUnsafe(data + at + 4, nameLen);
    at += 4 + nameLen;
    if (len - at < 4) return null;
    const valueLen = <usize>load<u32>(data + at);
    if (len - at - 4 < valueLen) return null;
    msg.headers.push(new Header(name, String.UTF8.decodeUnsafe(data + at + 4, valueLen)));
    at += 4 + valueLen;
  }
  return msg;
}
