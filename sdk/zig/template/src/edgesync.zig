//! edgesync's Zig plugin SDK (a copy of sdk/zig/template/src/edgesync.zig;
//! keep it as `edgesync plugin new` wrote it). Zig plugins are built on the
//! C bindings `wit-bindgen c` generates (gen/plugin.h) and the C SDK
//! (src/edgesync.c), compiled by `zig cc`: the C SDK implements the exported
//! `on-message` and `on-batch` (it unpacks the packed message and the
//! batch's flat buffers and hands replace/reject data to the `verdict`
//! import), and calls the plugin's two exported functions:
//!
//!     export fn es_plugin_init(config_json: es.Bytes, err: *?[*:0]const u8) bool
//!     export fn es_plugin_on_message(msg: *const es.Message) es.Verdict
//!
//! This file gives those C types Zig names and slices, and wraps the host
//! capabilities the template uses.
const std = @import("std");

/// The C SDK's and the C bindings' types and functions this file uses,
/// declared by hand (the layouts of src/edgesync.h and gen/plugin.h on
/// wasm32), so no C header translation is needed at build time.
pub const c = struct {
    pub const es_bytes_t = extern struct { ptr: ?[*]const u8, len: usize };
    pub const es_header_t = extern struct { name: es_bytes_t, value: es_bytes_t };
    pub const es_message_t = extern struct {
        conn_id: u64,
        client_id: es_bytes_t,
        principal: es_bytes_t,
        topic: es_bytes_t,
        payload: es_bytes_t,
        headers: ?[*]const es_header_t,
        n_headers: usize,
    };
    pub const es_action_t = c_uint;
    pub const ES_PASS: es_action_t = 0;
    pub const ES_REPLACE: es_action_t = 1;
    pub const ES_DROP: es_action_t = 2;
    pub const ES_REJECT: es_action_t = 3;
    pub const es_verdict_t = extern struct {
        action: es_action_t,
        payload: ?[*]u8 = null,
        payload_len: usize = 0,
        add_headers: ?[*]const es_header_t = null,
        n_add_headers: usize = 0,
        reason: ?[*:0]const u8 = null,
    };
    pub const plugin_string_t = extern struct { ptr: ?[*]u8, len: usize };
    pub const plugin_list_string_t = extern struct { ptr: ?[*]plugin_string_t, len: usize };
    pub const kv_error_t = extern struct { tag: u8, val: plugin_string_t };

    pub extern fn edgesync_plugin_config_get(key: *plugin_string_t, ret: *plugin_string_t) bool;
    pub extern fn edgesync_plugin_kv_increment(key: *plugin_string_t, delta: i64, ttl_ms: ?*u64, ret: *i64, err: *kv_error_t) bool;
    pub extern fn edgesync_plugin_kv_kv_error_free(err: *kv_error_t) void;
    pub extern fn edgesync_plugin_metrics_define_counter(name: *plugin_string_t, help: *plugin_string_t, labels: *plugin_list_string_t, ret: *u32, err: *plugin_string_t) bool;
    pub extern fn edgesync_plugin_metrics_add(id: u32, labels: *plugin_list_string_t, delta: f64) void;
    pub extern fn plugin_string_free(s: *plugin_string_t) void;
};

pub const Bytes = c.es_bytes_t;
pub const Header = c.es_header_t;
pub const Message = c.es_message_t;
pub const Verdict = c.es_verdict_t;

/// The bytes `b` views.
pub fn slice(b: Bytes) []const u8 {
    const p = b.ptr orelse return &.{};
    return p[0..b.len];
}

/// A view of `s` (for headers in a verdict).
pub fn bytes(s: []const u8) Bytes {
    return .{ .ptr = s.ptr, .len = s.len };
}

pub fn pass() Verdict {
    return .{ .action = c.ES_PASS };
}

pub fn drop() Verdict {
    return .{ .action = c.ES_DROP };
}

/// `reason` must outlive the call (a string literal will do).
pub fn reject(reason: [*:0]const u8) Verdict {
    return .{ .action = c.ES_REJECT, .reason = reason };
}

/// Continue with the message's headers followed by `add_headers`, and
/// `payload`, which must come from `std.heap.c_allocator` (the SDK frees
/// it); `add_headers` must outlive the call.
pub fn replace(payload: []u8, add_headers: []const Header) Verdict {
    return .{
        .action = c.ES_REPLACE,
        .payload = payload.ptr,
        .payload_len = payload.len,
        .add_headers = add_headers.ptr,
        .n_add_headers = add_headers.len,
    };
}

fn str(s: []const u8) c.plugin_string_t {
    return .{ .ptr = @constCast(s.ptr), .len = s.len };
}

/// `config.get(key)`: the value, owned by the caller (free with
/// `std.heap.c_allocator`), or null.
pub fn configGet(key: []const u8) ?[]u8 {
    var k = str(key);
    var out: c.plugin_string_t = undefined;
    if (!c.edgesync_plugin_config_get(&k, &out)) return null;
    const p = out.ptr orelse return &.{};
    return p[0..out.len];
}

/// `kv.increment(key, delta, none)`: the new value, or null on a kv error.
pub fn kvIncrement(key: []const u8, delta: i64) ?i64 {
    var k = str(key);
    var value: i64 = 0;
    var err: c.kv_error_t = undefined;
    if (!c.edgesync_plugin_kv_increment(&k, delta, null, &value, &err)) {
        c.edgesync_plugin_kv_kv_error_free(&err);
        return null;
    }
    return value;
}

/// `metrics.define-counter(name, help, [])`: the metric id, or null.
pub fn defineCounter(name: []const u8, help: []const u8) ?u32 {
    var n = str(name);
    var h = str(help);
    var labels: c.plugin_list_string_t = .{ .ptr = null, .len = 0 };
    var id: u32 = 0;
    var err: c.plugin_string_t = undefined;
    if (!c.edgesync_plugin_metrics_define_counter(&n, &h, &labels, &id, &err)) {
        c.plugin_string_free(&err);
        return null;
    }
    return id;
}

/// `metrics.add(id, [], delta)`.
pub fn add(id: u32, delta: f64) void {
    var labels: c.plugin_list_string_t = .{ .ptr = null, .len = 0 };
    c.edgesync_plugin_metrics_add(id, &labels, delta);
}
