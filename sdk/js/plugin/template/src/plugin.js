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
  onMessage(_sender, msg) {
    return shout(msg);
  },

  // The batch fast path: the same verdict as `onMessage`, one per entry,
  // in order. `batch.data` holds every topic and payload back to back;
  // each entry says where its topic, payload and headers end.
  onBatch(_sender, batch) {
    const verdicts = [];
    let start = 0;
    let headerStart = 0;
    for (const entry of batch.entries) {
      verdicts.push(shout({
        topic: decoder.decode(batch.data.subarray(start, entry.topicEnd)),
        headers: batch.headers.slice(headerStart, entry.headersEnd),
        payload: batch.data.subarray(entry.topicEnd, entry.payloadEnd),
      }));
      start = entry.payloadEnd;
      headerStart = entry.headersEnd;
    }
    return verdicts;
  },
};

const decoder = new TextDecoder();

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
