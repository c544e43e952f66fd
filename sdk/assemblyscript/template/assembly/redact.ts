// "redact", edgesync's reference plugin in AssemblyScript (the same
// behaviour in every language; docs/plugins.md, "The reference plugin"):
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
import {
  Header, Message, Verdict, configGet, defineCounter, definePlugin, kvIncrement, metricsAdd,
  pass, reject, replace,
} from "./edgesync";

// The component's exports live in the SDK.
export {
  cabi_realloc, lifecycle_init, message_hooks_on_batch, message_hooks_on_message,
  post_lifecycle_init, post_message_hooks_on_batch,
} from "./edgesync";

const MAX_DEPTH: i32 = 64;
const MASK = Uint8Array.wrap(String.UTF8.encode("\"***\""));

// Set by `init` (every fresh instance); what must outlive an instance
// belongs in kv.
let fields: Uint8Array[] = [];
let maskedTotal: u32 = 0;

function init(configJson: string): string | null {
  const listed = configGet("fields");
  const names = (listed !== null ? listed : "password").split(",");
  fields = [];
  for (let i = 0; i < names.length; i++) {
    if (names[i].length > 0) fields.push(Uint8Array.wrap(String.UTF8.encode(names[i])));
  }
  if (fields.length == 0) return "config `fields` names no field";
  const id = defineCounter("fields_redacted_total", "JSON fields masked.");
  if (id < 0) return "cannot define the metric fields_redacted_total";
  maskedTotal = <u32>id;
  return null;
}

function onMessage(msg: Message): Verdict {
  const s = new Scanner(msg.payload);
  const ok = s.value(0, true);
  s.skipWs();
  if (!ok || s.pos != s.data.length) return reject("payload is not JSON");
  const n = s.spans.length / 2;
  if (n == 0) return pass();
  let size = s.data.length;
  for (let i = 0; i < n; i++) size += MASK.length - (s.spans[2 * i + 1] - s.spans[2 * i]);
  const out = new Uint8Array(size);
  let at = 0;
  let o = 0;
  for (let i = 0; i < n; i++) {
    const start = s.spans[2 * i];
    out.set(s.data.subarray(at, start), o);
    o += start - at;
    out.set(MASK, o);
    o += MASK.length;
    at = s.spans[2 * i + 1];
  }
  out.set(s.data.subarray(at), o);
  kvIncrement("redacted", 1); // a kv error never skips the masking
  metricsAdd(maskedTotal, <f64>n);
  const headers = msg.headers.slice(0);
  headers.push(new Header("x-redacted", n.toString()));
  return replace(headers, out);
}

definePlugin(init, onMessage);

function isDigit(c: i32): bool {
  return c >= 0x30 && c <= 0x39;
}

function isHex(c: i32): bool {
  return isDigit(c) || (c >= 0x61 && c <= 0x66) || (c >= 0x41 && c <= 0x46);
}

function isField(data: Uint8Array, start: i32, end: i32): bool {
  for (let i = 0; i < fields.length; i++) {
    const f = fields[i];
    if (f.length != end - start) continue;
    let same = true;
    for (let j = 0; j < f.length; j++) {
      if (f[j] != data[start + j]) {
        same = false;
        break;
      }
    }
    if (same) return true;
  }
  return false;
}

/** A JSON validator recording the spans of the values to mask (start, end pairs). */
class Scanner {
  pos: i32 = 0;
  spans: i32[] = [];

  constructor(public data: Uint8Array) {}

  peek(): i32 {
    return this.pos < this.data.length ? <i32>this.data[this.pos] : -1;
  }

  skipWs(): void {
    for (let c = this.peek(); c == 0x20 || c == 0x09 || c == 0x0a || c == 0x0d; c = this.peek()) {
      this.pos++;
    }
  }

  value(depth: i32, record: bool): bool {
    this.skipWs();
    const c = this.peek();
    if (c == 0x7b) return depth < MAX_DEPTH && this.object(depth, record);
    if (c == 0x5b) return depth < MAX_DEPTH && this.array(depth, record);
    if (c == 0x22) return this.string();
    if (c == 0x74) return this.literal("true");
    if (c == 0x66) return this.literal("false");
    if (c == 0x6e) return this.literal("null");
    if (c == 0x2d || isDigit(c)) return this.number();
    return false;
  }

  object(depth: i32, record: bool): bool {
    this.pos++;
    this.skipWs();
    if (this.peek() == 0x7d) {
      this.pos++;
      return true;
    }
    while (true) {
      this.skipWs();
      const keyStart = this.pos + 1;
      if (this.peek() != 0x22 || !this.string()) return false;
      const keyEnd = this.pos - 1;
      this.skipWs();
      if (this.peek() != 0x3a) return false;
      this.pos++;
      this.skipWs();
      const masked = record && isField(this.data, keyStart, keyEnd);
      const start = this.pos;
      if (!this.value(depth + 1, record && !masked)) return false;
      if (masked) {
        this.spans.push(start);
        this.spans.push(this.pos);
      }
      this.skipWs();
      const c = this.peek();
      if (c == 0x2c) {
        this.pos++;
      } else if (c == 0x7d) {
        this.pos++;
        return true;
      } else {
        return false;
      }
    }
    return false;
  }

  array(depth: i32, record: bool): bool {
    this.pos++;
    this.skipWs();
    if (this.peek() == 0x5d) {
      this.pos++;
      return true;
    }
    while (true) {
      if (!this.value(depth + 1, record)) return false;
      this.skipWs();
      const c = this.peek();
      if (c == 0x2c) {
        this.pos++;
      } else if (c == 0x5d) {
        this.pos++;
        return true;
      } else {
        return false;
      }
    }
    return false;
  }

  string(): bool {
    this.pos++;
    while (this.pos < this.data.length) {
      const c = <i32>this.data[this.pos++];
      if (c == 0x22) return true;
      if (c < 0x20) return false;
      if (c == 0x5c) {
        const e = this.peek();
        if (e == 0x75) {
          if (this.data.length - this.pos < 5) return false;
          for (let i = 1; i <= 4; i++) {
            if (!isHex(<i32>this.data[this.pos + i])) return false;
          }
          this.pos += 5;
        } else if (e == 0x22 || e == 0x5c || e == 0x2f || e == 0x62 || e == 0x66 ||
          e == 0x6e || e == 0x72 || e == 0x74) {
          this.pos++;
        } else {
          return false;
        }
      }
    }
    return false;
  }

  literal(word: string): bool {
    if (this.data.length - this.pos < word.length) return false;
    for (let i = 0; i < word.length; i++) {
      if (<i32>this.data[this.pos + i] != word.charCodeAt(i)) return false;
    }
    this.pos += word.length;
    return true;
  }

  digits(): void {
    while (isDigit(this.peek())) this.pos++;
  }

  number(): bool {
    if (this.peek() == 0x2d) this.pos++;
    const c = this.peek();
    if (c == 0x30) {
      this.pos++;
    } else if (c >= 0x31 && c <= 0x39) {
      this.digits();
    } else {
      return false;
    }
    if (this.peek() == 0x2e) {
      this.pos++;
      if (!isDigit(this.peek())) return false;
      this.digits();
    }
    if (this.peek() == 0x65 || this.peek() == 0x45) {
      this.pos++;
      if (this.peek() == 0x2b || this.peek() == 0x2d) this.pos++;
      if (!isDigit(this.peek())) return false;
      this.digits();
    }
    return true;
  }
}
