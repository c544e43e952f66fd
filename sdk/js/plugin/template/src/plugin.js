// An edgesync message plugin in JavaScript: "shout".
//
// On topics starting with the configured prefix (config key `prefix`,
// default "shout.") it uppercases the ASCII letters of the payload and adds
// a header `x-shouted` with how many messages it has shouted so far (a
// counter in the host's kv store, shared by every instance). Anything else
// passes unchanged.
//
// The exports follow `wit/world.wit`: one object per exported interface,
// one method per function (kebab-case names become camelCase). WIT
// `result` errors are thrown; `s64`/`u64` are BigInts; `option<T>` is the
// value or `undefined`; a variant is `{ tag, val }`.
import { log } from 'edgesync:plugin/log@0.1.0';
import { get as configGet } from 'edgesync:plugin/config@0.1.0';
import { increment } from 'edgesync:plugin/kv@0.1.0';
import { setReplacement, setReason } from 'edgesync:plugin/verdict@0.1.0';

// Set by `init`, which the host runs on every fresh instance before any
// hook. Anything that must outlive an instance belongs in kv, not here.
let prefix = 'shout.';

export const lifecycle = {
  init(_configJson) {
    prefix = configGet('prefix') ?? prefix;
    if (prefix === '') {
      throw 'config `prefix` must not be empty';
    }
    log('info', `shout: uppercasing payloads on topics starting with "${prefix}"`);
  },
};

export const messageHooks = {
  // `packed` holds the sender and the message in one buffer (the contract's
  // `packed-message`, one copy into the guest instead of five); `unpack`
  // below turns it back into fields.
  // It returns an action (the contract's `message-action`, an enum: a
  // string); the data of `replace` and `reject` goes to the host through
  // the `verdict` import first.
  onMessage(packed) {
    const verdict = shout(unpack(packed));
    if (verdict.tag === 'replace') {
      setReplacement(verdict.val);
    } else if (verdict.tag === 'reject') {
      setReason(verdict.val);
    }
    return verdict.tag;
  },

  // The batch fast path: the same verdicts as `onMessage`, but only those
  // that are not `pass`, each with its message's index, in index order
  // (every message not listed passes). `batch.data` holds every topic and
  // payload back to back; `batch.ends` holds three offsets per message:
  // where its topic, its payload and its headers (in `batch.headers`) end.
  onBatch(_sender, batch) {
    const verdicts = [];
    let start = 0;
    let headerStart = 0;
    for (let i = 0; 3 * i < batch.ends.length; i++) {
      const [topicEnd, payloadEnd, headersEnd] = batch.ends.slice(3 * i, 3 * i + 3);
      const verdict = shout({
        topic: decoder.decode(batch.data.subarray(start, topicEnd)),
        headers: batch.headers.slice(headerStart, headersEnd),
        payload: batch.data.subarray(topicEnd, payloadEnd),
      });
      if (verdict.tag !== 'pass') {
        verdicts.push({ index: i, verdict });
      }
      start = payloadEnd;
      headerStart = headersEnd;
    }
    return verdicts;
  },
};

const decoder = new TextDecoder();

// Unpacks `on-message`'s argument (`packed-message` in the contract).
// `packed.data` holds, back to back: the sender's client id, its principal
// (empty when anonymous), the topic (all UTF-8), the payload, and then the
// headers, each as a name and a value, each of those preceded by its byte
// length as a little-endian u32. `clientIdEnd`, `principalEnd`, `topicEnd`
// and `payloadEnd` say where the first four parts end.
function unpack(packed) {
  const { data } = packed;
  const text = (start, end) => decoder.decode(data.subarray(start, end));
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let at = packed.payloadEnd;
  // One length-prefixed header name or value.
  const field = () => {
    const len = view.getUint32(at, true);
    at += 4 + len;
    return text(at - len, at);
  };
  const headers = [];
  while (at < data.length) {
    const name = field();
    headers.push({ name, value: field() });
  }
  return {
    connId: packed.connId,
    clientId: text(0, packed.clientIdEnd),
    principal: text(packed.clientIdEnd, packed.principalEnd),
    topic: text(packed.principalEnd, packed.topicEnd),
    payload: data.subarray(packed.topicEnd, packed.payloadEnd),
    headers,
  };
}

// The verdict on one message (`topic`, `headers`, `payload`).
function shout(msg) {
  if (!msg.topic.startsWith(prefix)) {
    return { tag: 'pass' };
  }
  const count = increment('shouted', 1n, undefined);
  const payload = Uint8Array.from(msg.payload, (b) => (b >= 0x61 && b <= 0x7a ? b - 0x20 : b));
  return {
    tag: 'replace',
    val: {
      topic: msg.topic,
      headers: [...msg.headers, { name: 'x-shouted', value: String(count) }],
      payload,
    },
  };
}
