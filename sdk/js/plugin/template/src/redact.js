// "redact", edgesync's reference plugin in JavaScript (the same behaviour
// in every language; docs/plugins.md, "The reference plugin"):
//
// - config `fields`: comma-separated JSON member names to mask (default
//   `password`; empty names are ignored; none left fails `init`);
// - a payload that is not one JSON value is rejected ("payload is not
//   JSON"); objects and arrays nest at most 64 deep;
// - the value of every member, at any depth, whose key (the raw bytes
//   between the quotes) is in `fields` becomes "***"; the rest stays byte
//   for byte;
// - nothing masked: pass; else replace, with a header `x-redacted: N`, the
//   kv counter `redacted` plus one and the metric `fields_redacted_total`
//   plus N.
import { get as configGet } from 'edgesync:plugin/config@0.1.0';
import { increment } from 'edgesync:plugin/kv@0.1.0';
import { defineCounter, add } from 'edgesync:plugin/metrics@0.1.0';
import { definePlugin, pass, reject, replace } from './edgesync.js';

const MAX_DEPTH = 64;
const encoder = new TextEncoder();
const MASK = encoder.encode('"***"');

// Set by `init` (every fresh instance); what must outlive an instance
// belongs in kv.
let fields = [];
let maskedTotal = 0;

function init(_configJson) {
  const list = configGet('fields') ?? 'password';
  fields = list
    .split(',')
    .filter((f) => f !== '')
    .map((f) => encoder.encode(f));
  if (fields.length === 0) {
    throw 'config `fields` names no field';
  }
  maskedTotal = defineCounter('fields_redacted_total', 'JSON fields masked.', []);
}

function onMessage(msg) {
  const s = new Scanner(msg.payload);
  const ok = s.value(0, true);
  s.skipWs();
  if (!ok || s.pos !== s.data.length) {
    return reject('payload is not JSON');
  }
  if (s.spans.length === 0) {
    return pass();
  }
  const parts = [];
  let at = 0;
  for (const [start, end] of s.spans) {
    parts.push(s.data.subarray(at, start), MASK);
    at = end;
  }
  parts.push(s.data.subarray(at));
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  try {
    increment('redacted', 1n, undefined);
  } catch {
    // counting never skips the masking
  }
  add(maskedTotal, [], s.spans.length);
  const headers = [...msg.headers, { name: 'x-redacted', value: String(s.spans.length) }];
  return replace(msg, headers, out);
}

export const { lifecycle, messageHooks } = definePlugin({ init, onMessage });

const isDigit = (c) => c >= 0x30 && c <= 0x39;
const isHex = (c) => isDigit(c) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46);

function isField(data, start, end) {
  const len = end - start;
  return fields.some((f) => f.length === len && f.every((b, i) => data[start + i] === b));
}

// A JSON validator recording the spans of the values to mask.
class Scanner {
  constructor(data) {
    this.data = data;
    this.pos = 0;
    this.spans = [];
  }

  peek() {
    return this.pos < this.data.length ? this.data[this.pos] : -1;
  }

  skipWs() {
    for (let c = this.peek(); c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d; c = this.peek()) {
      this.pos++;
    }
  }

  value(depth, record) {
    this.skipWs();
    const c = this.peek();
    switch (c) {
      case 0x7b: // {
        return depth < MAX_DEPTH && this.object(depth, record);
      case 0x5b: // [
        return depth < MAX_DEPTH && this.array(depth, record);
      case 0x22: // "
        return this.string();
      case 0x74:
        return this.literal('true');
      case 0x66:
        return this.literal('false');
      case 0x6e:
        return this.literal('null');
      default:
        return c === 0x2d || isDigit(c) ? this.number() : false;
    }
  }

  object(depth, record) {
    this.pos++;
    this.skipWs();
    if (this.peek() === 0x7d) {
      this.pos++;
      return true;
    }
    for (;;) {
      this.skipWs();
      const keyStart = this.pos + 1;
      if (this.peek() !== 0x22 || !this.string()) {
        return false;
      }
      const keyEnd = this.pos - 1;
      this.skipWs();
      if (this.peek() !== 0x3a) {
        return false;
      }
      this.pos++;
      this.skipWs();
      const masked = record && isField(this.data, keyStart, keyEnd);
      const start = this.pos;
      if (!this.value(depth + 1, record && !masked)) {
        return false;
      }
      if (masked) {
        this.spans.push([start, this.pos]);
      }
      this.skipWs();
      const c = this.peek();
      if (c === 0x2c) {
        this.pos++;
      } else if (c === 0x7d) {
        this.pos++;
        return true;
      } else {
        return false;
      }
    }
  }

  array(depth, record) {
    this.pos++;
    this.skipWs();
    if (this.peek() === 0x5d) {
      this.pos++;
      return true;
    }
    for (;;) {
      if (!this.value(depth + 1, record)) {
        return false;
      }
      this.skipWs();
      const c = this.peek();
      if (c === 0x2c) {
        this.pos++;
      } else if (c === 0x5d) {
        this.pos++;
        return true;
      } else {
        return false;
      }
    }
  }

  string() {
    this.pos++;
    while (this.pos < this.data.length) {
      const c = this.data[this.pos++];
      if (c === 0x22) {
        return true;
      }
      if (c < 0x20) {
        return false;
      }
      if (c === 0x5c) {
        const e = this.peek();
        if (e === 0x75) {
          if (this.data.length - this.pos < 5) {
            return false;
          }
          for (let i = 1; i <= 4; i++) {
            if (!isHex(this.data[this.pos + i])) {
              return false;
            }
          }
          this.pos += 5;
        } else if (e !== -1 && '"\\/bfnrt'.includes(String.fromCharCode(e))) {
          this.pos++;
        } else {
          return false;
        }
      }
    }
    return false;
  }

  literal(word) {
    for (let i = 0; i < word.length; i++) {
      if (this.data[this.pos + i] !== word.charCodeAt(i)) {
        return false;
      }
    }
    this.pos += word.length;
    return true;
  }

  digits() {
    while (isDigit(this.peek())) {
      this.pos++;
    }
  }

  number() {
    if (this.peek() === 0x2d) {
      this.pos++;
    }
    const c = this.peek();
    if (c === 0x30) {
      this.pos++;
    } else if (c >= 0x31 && c <= 0x39) {
      this.digits();
    } else {
      return false;
    }
    if (this.peek() === 0x2e) {
      this.pos++;
      if (!isDigit(this.peek())) {
        return false;
      }
      this.digits();
    }
    if (this.peek() === 0x65 || this.peek() === 0x45) {
      this.pos++;
      if (this.peek() === 0x2b || this.peek() === 0x2d) {
        this.pos++;
      }
      if (!isDigit(this.peek())) {
        return false;
      }
      this.digits();
    }
    return true;
  }
}
