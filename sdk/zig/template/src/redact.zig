//! "redact", edgesync's reference plugin in Zig (the same behaviour in
//! every language; docs/plugins.md, "The reference plugin"):
//!
//! - config `fields`: comma-separated JSON member names to mask (default
//!   `password`; empty names are ignored; none left fails `init`);
//! - a payload that is not one JSON value is rejected ("payload is not
//!   JSON"); objects and arrays nest at most 64 deep;
//! - the value of every member, at any depth, whose key (the raw bytes
//!   between the quotes) is in `fields` becomes "***"; the rest stays byte
//!   for byte;
//! - nothing masked: pass; else replace, with a header `x-redacted: N`, the
//!   kv counter `redacted` plus one and the metric `fields_redacted_total`
//!   plus N.
const std = @import("std");
const es = @import("edgesync.zig");

const max_depth = 64;
const mask = "\"***\"";
const gpa = std.heap.c_allocator;

// Set by `init` (every fresh instance); what must outlive an instance
// belongs in kv.
var fields_text: []u8 = &.{};
var fields: std.ArrayList([]const u8) = .empty;
var masked_total: u32 = 0;

export fn es_plugin_init(config_json: es.Bytes, err: *?[*:0]const u8) bool {
    _ = config_json; // read through `config.get` instead
    if (fields_text.len != 0) gpa.free(fields_text);
    fields_text = es.configGet("fields") orelse (gpa.dupe(u8, "password") catch return false);
    fields.clearRetainingCapacity();
    var names = std.mem.splitScalar(u8, fields_text, ',');
    while (names.next()) |name| {
        if (name.len != 0) fields.append(gpa, name) catch return false;
    }
    if (fields.items.len == 0) {
        err.* = "config `fields` names no field";
        return false;
    }
    masked_total = es.defineCounter("fields_redacted_total", "JSON fields masked.") orelse {
        err.* = "cannot define the metric fields_redacted_total";
        return false;
    };
    return true;
}

const Span = struct { start: usize, end: usize };

/// A JSON validator recording the spans of the values to mask.
const Scanner = struct {
    data: []const u8,
    pos: usize = 0,
    spans: std.ArrayList(Span) = .empty,

    fn peek(s: *Scanner) ?u8 {
        return if (s.pos < s.data.len) s.data[s.pos] else null;
    }

    fn skipWs(s: *Scanner) void {
        while (s.peek()) |ch| switch (ch) {
            ' ', '\t', '\n', '\r' => s.pos += 1,
            else => return,
        };
    }

    fn isDigit(ch: ?u8) bool {
        return if (ch) |d| std.ascii.isDigit(d) else false;
    }

    fn value(s: *Scanner, depth: u32, record: bool) bool {
        s.skipWs();
        const ch = s.peek() orelse return false;
        return switch (ch) {
            '{' => depth < max_depth and s.object(depth, record),
            '[' => depth < max_depth and s.array(depth, record),
            '"' => s.string(),
            't' => s.literal("true"),
            'f' => s.literal("false"),
            'n' => s.literal("null"),
            '-', '0'...'9' => s.number(),
            else => false,
        };
    }

    fn object(s: *Scanner, depth: u32, record: bool) bool {
        s.pos += 1;
        s.skipWs();
        if (s.peek() == '}') {
            s.pos += 1;
            return true;
        }
        while (true) {
            s.skipWs();
            const key_start = s.pos + 1;
            if (s.peek() != '"' or !s.string()) return false;
            const key = s.data[key_start .. s.pos - 1];
            s.skipWs();
            if (s.peek() != ':') return false;
            s.pos += 1;
            s.skipWs();
            const masked = record and isField(key);
            const start = s.pos;
            if (!s.value(depth + 1, record and !masked)) return false;
            if (masked) s.spans.append(gpa, .{ .start = start, .end = s.pos }) catch return false;
            s.skipWs();
            switch (s.peek() orelse return false) {
                ',' => s.pos += 1,
                '}' => {
                    s.pos += 1;
                    return true;
                },
                else => return false,
            }
        }
    }

    fn array(s: *Scanner, depth: u32, record: bool) bool {
        s.pos += 1;
        s.skipWs();
        if (s.peek() == ']') {
            s.pos += 1;
            return true;
        }
        while (true) {
            if (!s.value(depth + 1, record)) return false;
            s.skipWs();
            switch (s.peek() orelse return false) {
                ',' => s.pos += 1,
                ']' => {
                    s.pos += 1;
                    return true;
                },
                else => return false,
            }
        }
    }

    fn string(s: *Scanner) bool {
        s.pos += 1;
        while (s.peek()) |ch| {
            s.pos += 1;
            switch (ch) {
                '"' => return true,
                0...0x1f => return false,
                '\\' => {
                    const e = s.peek() orelse return false;
                    switch (e) {
                        '"', '\\', '/', 'b', 'f', 'n', 'r', 't' => s.pos += 1,
                        'u' => {
                            if (s.data.len - s.pos < 5) return false;
                            for (s.data[s.pos + 1 .. s.pos + 5]) |h| {
                                if (!std.ascii.isHex(h)) return false;
                            }
                            s.pos += 5;
                        },
                        else => return false,
                    }
                },
                else => {},
            }
        }
        return false;
    }

    fn literal(s: *Scanner, word: []const u8) bool {
        if (!std.mem.startsWith(u8, s.data[s.pos..], word)) return false;
        s.pos += word.len;
        return true;
    }

    fn digits(s: *Scanner) void {
        while (isDigit(s.peek())) s.pos += 1;
    }

    fn number(s: *Scanner) bool {
        if (s.peek() == '-') s.pos += 1;
        const first = s.peek() orelse return false;
        if (first == '0') {
            s.pos += 1;
        } else if (first >= '1' and first <= '9') {
            s.digits();
        } else return false;
        if (s.peek() == '.') {
            s.pos += 1;
            if (!isDigit(s.peek())) return false;
            s.digits();
        }
        if (s.peek() == 'e' or s.peek() == 'E') {
            s.pos += 1;
            if (s.peek() == '+' or s.peek() == '-') s.pos += 1;
            if (!isDigit(s.peek())) return false;
            s.digits();
        }
        return true;
    }
};

fn isField(key: []const u8) bool {
    for (fields.items) |f| {
        if (std.mem.eql(u8, f, key)) return true;
    }
    return false;
}

// Borrowed by the verdict until the next call: static storage.
var count_text: [24]u8 = undefined;
var added: [1]es.Header = undefined;

export fn es_plugin_on_message(msg: *const es.Message) es.Verdict {
    var s = Scanner{ .data = es.slice(msg.payload) };
    defer s.spans.deinit(gpa);
    const ok = s.value(0, true);
    s.skipWs();
    if (!ok or s.pos != s.data.len) return es.reject("payload is not JSON");
    const spans = s.spans.items;
    if (spans.len == 0) return es.pass();

    var out: std.ArrayList(u8) = .empty;
    var at: usize = 0;
    for (spans) |span| {
        out.appendSlice(gpa, s.data[at..span.start]) catch @panic("out of memory");
        out.appendSlice(gpa, mask) catch @panic("out of memory");
        at = span.end;
    }
    out.appendSlice(gpa, s.data[at..]) catch @panic("out of memory");

    _ = es.kvIncrement("redacted", 1); // counting never skips the masking
    es.add(masked_total, @floatFromInt(spans.len));
    const n = std.fmt.bufPrint(&count_text, "{d}", .{spans.len}) catch unreachable;
    added[0] = .{ .name = es.bytes("x-redacted"), .value = es.bytes(n) };
    const payload = out.toOwnedSlice(gpa) catch @panic("out of memory");
    return es.replace(payload, &added);
}
