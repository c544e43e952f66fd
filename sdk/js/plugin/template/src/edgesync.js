// edgesync's JavaScript plugin SDK (a copy of sdk/js/plugin/template/src/
// edgesync.js; keep it as `edgesync plugin new` wrote it).
//
// It hides the two hot-path layouts of the contract: `on-message`'s packed
// argument with its `verdict` import, and `on-batch`'s flat buffers. A
// plugin calls
//
//   export const { lifecycle, messageHooks } = definePlugin({ init, onMessage });
//
// with `init(configJson)` (throw a string to fail the load) and
// `onMessage(msg)` returning `pass()`, `replace(msg, headers, payload)`,
// `drop()` or `reject(reason)`. `msg` is `{ connId, clientId, principal,
// topic, headers: [{ name, value }], payload: Uint8Array }`; its payload
// views the call's argument: copy what you keep past the call.
import { setReplacement, setReason } from 'edgesync:plugin/verdict@0.1.0';

export const pass = () => ({ tag: 'pass' });
export const drop = () => ({ tag: 'drop' });
export const reject = (reason) => ({ tag: 'reject', val: String(reason) });
/** Continue with `msg`'s topic and these headers and payload. */
export const replace = (msg, headers, payload) => ({
  tag: 'replace',
  val: { topic: msg.topic, headers, payload },
});

const decoder = new TextDecoder();

export function definePlugin({ init, onMessage }) {
  return {
    lifecycle: {
      init(configJson) {
        init(configJson);
      },
    },
    messageHooks: {
      onMessage(packed) {
        const verdict = onMessage(unpack(packed));
        if (verdict.tag === 'replace') {
          setReplacement(verdict.val);
        } else if (verdict.tag === 'reject') {
          setReason(verdict.val);
        }
        return verdict.tag;
      },
      // The verdicts that are not pass, by index. `batch.data` holds every
      // topic and payload back to back; `batch.ends` three offsets per
      // message: where its topic, its payload and its headers (in
      // `batch.headers`) end.
      onBatch(sender, batch) {
        const verdicts = [];
        const { data, ends } = batch;
        let start = 0;
        let headerStart = 0;
        for (let i = 0; 3 * i + 2 < ends.length; i++) {
          const topicEnd = ends[3 * i];
          const payloadEnd = ends[3 * i + 1];
          const headersEnd = ends[3 * i + 2];
          const verdict = onMessage({
            connId: sender.connId,
            clientId: sender.clientId,
            principal: sender.principal,
            topic: decoder.decode(data.subarray(start, topicEnd)),
            headers: batch.headers.slice(headerStart, headersEnd),
            payload: data.subarray(topicEnd, payloadEnd),
          });
          if (verdict.tag !== 'pass') {
            verdicts.push({ index: i, verdict });
          }
          start = payloadEnd;
          headerStart = headersEnd;
        }
        return verdicts;
      },
    },
  };
}

// `packed.data` holds the client id, the principal, the topic (UTF-8), the
// payload (the *End offsets end them), then each header as a name and a
// value, each preceded by its byte length as a little-endian u32.
function unpack(packed) {
  const { data } = packed;
  const text = (start, end) => decoder.decode(data.subarray(start, end));
  const view = new DataView(data.buffer, data.byteOffset, data.byteLength);
  let at = packed.payloadEnd;
  const field = () => {
    const len = view.getUint32(at, true);
    at += 4 + len;
    if (at > data.length) {
      throw new Error('malformed packed message');
    }
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
    headers,
    payload: data.subarray(packed.topicEnd, packed.payloadEnd),
  };
}
