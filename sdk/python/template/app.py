""""redact", edgesync's reference plugin in Python (the same behaviour in
every language; docs/plugins.md, "The reference plugin"):

- config `fields`: comma-separated JSON member names to mask (default
  `password`; empty names are ignored; none left fails `init`);
- a payload that is not one JSON value is rejected ("payload is not JSON");
  objects and arrays nest at most 64 deep;
- the value of every member, at any depth, whose key (the raw bytes between
  the quotes) is in `fields` becomes "***"; the rest stays byte for byte;
- nothing masked: pass; else replace, with a header `x-redacted: N`, the kv
  counter `redacted` plus one and the metric `fields_redacted_total` plus N.
"""

from componentize_py_types import Err
from wit_world.imports import config, kv, metrics
from wit_world.imports.types import Header

from edgesync import Msg, define_plugin, pass_, reject, replace

MAX_DEPTH = 64
MASK = b'"***"'

# Set by `init` (every fresh instance); what must outlive an instance
# belongs in kv.
fields: set[bytes] = set()
masked_total = 0


def init(config_json: str) -> None:
    global fields, masked_total
    listed = config.get("fields")
    names = (listed if listed is not None else "password").split(",")
    fields = {f.encode() for f in names if f}
    if not fields:
        raise Err("config `fields` names no field")
    masked_total = metrics.define_counter("fields_redacted_total", "JSON fields masked.", [])


def on_message(msg: Msg):
    s = Scanner(bytes(msg.payload))
    ok = s.value(0, True)
    s.skip_ws()
    if not ok or s.pos != len(s.data):
        return reject("payload is not JSON")
    if not s.spans:
        return pass_()
    parts = []
    at = 0
    for start, end in s.spans:
        parts += [s.data[at:start], MASK]
        at = end
    parts.append(s.data[at:])
    try:
        kv.increment("redacted", 1, None)
    except Err:
        pass  # counting never skips the masking
    metrics.add(masked_total, [], float(len(s.spans)))
    headers = [*msg.headers, Header(name="x-redacted", value=str(len(s.spans)))]
    return replace(msg, headers, b"".join(parts))


Lifecycle, MessageHooks = define_plugin(init, on_message)

WS = b" \t\n\r"
DIGITS = b"0123456789"
HEX = b"0123456789abcdefABCDEF"
ESCAPES = b'"\\/bfnrt'


class Scanner:
    """A JSON validator recording the spans of the values to mask."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0
        self.spans: list[tuple[int, int]] = []

    def peek(self) -> int:
        return self.data[self.pos] if self.pos < len(self.data) else -1

    def skip_ws(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in WS:
            self.pos += 1

    def value(self, depth: int, record: bool) -> bool:
        self.skip_ws()
        c = self.peek()
        if c == ord("{"):
            return depth < MAX_DEPTH and self.object(depth, record)
        if c == ord("["):
            return depth < MAX_DEPTH and self.array(depth, record)
        if c == ord('"'):
            return self.string()
        if c == ord("t"):
            return self.literal(b"true")
        if c == ord("f"):
            return self.literal(b"false")
        if c == ord("n"):
            return self.literal(b"null")
        if c == ord("-") or (c != -1 and c in DIGITS):
            return self.number()
        return False

    def object(self, depth: int, record: bool) -> bool:
        self.pos += 1
        self.skip_ws()
        if self.peek() == ord("}"):
            self.pos += 1
            return True
        while True:
            self.skip_ws()
            key_start = self.pos + 1
            if self.peek() != ord('"') or not self.string():
                return False
            key = self.data[key_start : self.pos - 1]
            self.skip_ws()
            if self.peek() != ord(":"):
                return False
            self.pos += 1
            self.skip_ws()
            masked = record and key in fields
            start = self.pos
            if not self.value(depth + 1, record and not masked):
                return False
            if masked:
                self.spans.append((start, self.pos))
            self.skip_ws()
            c = self.peek()
            if c == ord(","):
                self.pos += 1
            elif c == ord("}"):
                self.pos += 1
                return True
            else:
                return False

    def array(self, depth: int, record: bool) -> bool:
        self.pos += 1
        self.skip_ws()
        if self.peek() == ord("]"):
            self.pos += 1
            return True
        while True:
            if not self.value(depth + 1, record):
                return False
            self.skip_ws()
            c = self.peek()
            if c == ord(","):
                self.pos += 1
            elif c == ord("]"):
                self.pos += 1
                return True
            else:
                return False

    def string(self) -> bool:
        self.pos += 1
        data = self.data
        while self.pos < len(data):
            c = data[self.pos]
            self.pos += 1
            if c == ord('"'):
                return True
            if c < 0x20:
                return False
            if c == ord("\\"):
                e = self.peek()
                if e == ord("u"):
                    digits = data[self.pos + 1 : self.pos + 5]
                    if len(digits) < 4 or any(h not in HEX for h in digits):
                        return False
                    self.pos += 5
                elif e != -1 and e in ESCAPES:
                    self.pos += 1
                else:
                    return False
        return False

    def literal(self, word: bytes) -> bool:
        if not self.data.startswith(word, self.pos):
            return False
        self.pos += len(word)
        return True

    def digits(self) -> None:
        while self.pos < len(self.data) and self.data[self.pos] in DIGITS:
            self.pos += 1

    def is_digit(self) -> bool:
        c = self.peek()
        return c != -1 and c in DIGITS

    def number(self) -> bool:
        if self.peek() == ord("-"):
            self.pos += 1
        c = self.peek()
        if c == ord("0"):
            self.pos += 1
        elif ord("1") <= c <= ord("9"):
            self.digits()
        else:
            return False
        if self.peek() == ord("."):
            self.pos += 1
            if not self.is_digit():
                return False
            self.digits()
        if self.peek() in (ord("e"), ord("E")):
            self.pos += 1
            if self.peek() in (ord("+"), ord("-")):
                self.pos += 1
            if not self.is_digit():
                return False
            self.digits()
        return True
