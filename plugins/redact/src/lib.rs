//! "redact", the reference plugin written the same way in every language
//! edgesync supports (`edgesync plugin new NAME --lang L` writes it), so
//! the languages can be compared on one behaviour. The definition,
//! identical in every language (docs/plugins.md, "The reference plugin"):
//!
//! - config `fields`: comma-separated JSON member names to mask (default
//!   `password`; empty names are ignored; none left fails `init`);
//! - every message's payload must be one JSON value (RFC 8259 grammar,
//!   nesting at most 64 deep, bytes ≥ 0x80 taken as they are): otherwise
//!   `reject` with the reason `payload is not JSON`;
//! - the value of every object member, at any depth, whose key (the raw
//!   bytes between the quotes) is one of `fields` becomes `"***"`; the rest
//!   of the payload is kept byte for byte;
//! - nothing masked: `pass`; else `replace` with the masked payload and a
//!   header `x-redacted: N` (N fields masked) appended, the kv counter
//!   `redacted` incremented by one (a kv failure never skips the masking)
//!   and the counter metric `fields_redacted_total` increased by N.
//!
//! Build: `edgesync plugin build` (or `cargo build --release --target
//! wasm32-wasip2`); load it with
//!
//! ```toml
//! [[plugin]]
//! name = "redact"
//! path = "target/wasm32-wasip2/release/redact.wasm"
//! config = { fields = "password,ssn" }
//! [[route]]
//! topics = ">"
//! plugins = ["redact"]
//! ```

use edgesync_plugin::{Header, MessageRef, MessageVerdict, Plugin, SenderRef, kv, metrics};

/// Deepest nesting of objects and arrays accepted.
const MAX_DEPTH: u32 = 64;
/// What a masked value becomes.
const MASK: &[u8] = b"\"***\"";

struct Redact {
    /// Member names to mask.
    fields: Vec<String>,
    /// The `fields_redacted_total` counter.
    masked_total: u32,
}

#[edgesync_plugin::export]
impl Plugin for Redact {
    fn init(_config: &str) -> Result<Self, String> {
        let list = edgesync_plugin::config::get("fields").unwrap_or_else(|| "password".into());
        let fields: Vec<String> = list
            .split(',')
            .filter(|f| !f.is_empty())
            .map(str::to_string)
            .collect();
        if fields.is_empty() {
            return Err("config `fields` names no field".into());
        }
        let masked_total =
            metrics::define_counter("fields_redacted_total", "JSON fields masked.", &[])?;
        Ok(Redact {
            fields,
            masked_total,
        })
    }

    fn on_message(&self, _sender: SenderRef<'_>, msg: MessageRef<'_>) -> MessageVerdict {
        let Some(spans) = Scanner::masked_spans(msg.payload, &self.fields) else {
            return MessageVerdict::Reject("payload is not JSON".into());
        };
        if spans.is_empty() {
            return MessageVerdict::Pass;
        }
        let _ = kv::increment("redacted", 1, None);
        metrics::add(self.masked_total, &[], spans.len() as f64);
        let mut out = msg.to_message();
        out.payload = mask(msg.payload, &spans);
        out.headers.push(Header {
            name: "x-redacted".into(),
            value: spans.len().to_string(),
        });
        MessageVerdict::Replace(out)
    }
}

/// `payload` with each of `spans` (ascending, disjoint) replaced by [`MASK`].
fn mask(payload: &[u8], spans: &[(usize, usize)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len());
    let mut at = 0;
    for &(start, end) in spans {
        out.extend_from_slice(&payload[at..start]);
        out.extend_from_slice(MASK);
        at = end;
    }
    out.extend_from_slice(&payload[at..]);
    out
}

/// A JSON validator that records the spans of the values to mask.
struct Scanner<'a> {
    data: &'a [u8],
    pos: usize,
    fields: &'a [String],
    spans: Vec<(usize, usize)>,
}

impl<'a> Scanner<'a> {
    /// The spans of the values to mask, in order; `None` if `data` is not JSON.
    fn masked_spans(data: &'a [u8], fields: &'a [String]) -> Option<Vec<(usize, usize)>> {
        let mut s = Scanner {
            data,
            pos: 0,
            fields,
            spans: Vec::new(),
        };
        let ok = s.value(0, true) && {
            s.skip_ws();
            s.pos == data.len()
        };
        ok.then_some(s.spans)
    }

    fn peek(&self) -> Option<u8> {
        self.data.get(self.pos).copied()
    }

    fn skip_ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.pos += 1;
        }
    }

    /// One value at `depth`; `record`: spans inside it may be recorded
    /// (false inside a value already masked).
    fn value(&mut self, depth: u32, record: bool) -> bool {
        self.skip_ws();
        match self.peek() {
            Some(b'{') => depth < MAX_DEPTH && self.object(depth, record),
            Some(b'[') => depth < MAX_DEPTH && self.array(depth, record),
            Some(b'"') => self.string(),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            Some(b'-' | b'0'..=b'9') => self.number(),
            _ => false,
        }
    }

    fn object(&mut self, depth: u32, record: bool) -> bool {
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return true;
        }
        loop {
            self.skip_ws();
            let key_start = self.pos + 1;
            if self.peek() != Some(b'"') || !self.string() {
                return false;
            }
            let key = &self.data[key_start..self.pos - 1];
            self.skip_ws();
            if self.peek() != Some(b':') {
                return false;
            }
            self.pos += 1;
            self.skip_ws();
            let masked = record && self.fields.iter().any(|f| f.as_bytes() == key);
            let start = self.pos;
            if !self.value(depth + 1, record && !masked) {
                return false;
            }
            if masked {
                self.spans.push((start, self.pos));
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b'}') => {
                    self.pos += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    fn array(&mut self, depth: u32, record: bool) -> bool {
        self.pos += 1;
        self.skip_ws();
        if self.peek() == Some(b']') {
            self.pos += 1;
            return true;
        }
        loop {
            if !self.value(depth + 1, record) {
                return false;
            }
            self.skip_ws();
            match self.peek() {
                Some(b',') => self.pos += 1,
                Some(b']') => {
                    self.pos += 1;
                    return true;
                }
                _ => return false,
            }
        }
    }

    /// A string, from its opening quote to past its closing one.
    fn string(&mut self) -> bool {
        self.pos += 1;
        while let Some(c) = self.peek() {
            self.pos += 1;
            match c {
                b'"' => return true,
                0..=0x1f => return false,
                b'\\' => match self.peek() {
                    Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.pos += 1,
                    Some(b'u') => {
                        let hex = self.data.get(self.pos + 1..self.pos + 5);
                        if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                            return false;
                        }
                        self.pos += 5;
                    }
                    _ => return false,
                },
                _ => {}
            }
        }
        false
    }

    fn literal(&mut self, word: &[u8]) -> bool {
        if self.data[self.pos..].starts_with(word) {
            self.pos += word.len();
            return true;
        }
        false
    }

    fn number(&mut self) -> bool {
        if self.peek() == Some(b'-') {
            self.pos += 1;
        }
        match self.peek() {
            Some(b'0') => self.pos += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return false,
        }
        if self.peek() == Some(b'.') {
            self.pos += 1;
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return false;
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.pos += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.pos += 1;
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return false;
            }
            self.digits();
        }
        true
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.pos += 1;
        }
    }
}
