// An edgesync message plugin in C: "shout".
//
// On topics starting with the configured prefix (config key `prefix`,
// default "shout.") it uppercases the ASCII letters of the payload and adds
// a header `x-shouted` with how many messages it has shouted so far (a
// counter in the host's kv store, shared by every instance). Anything else
// passes unchanged.
//
// `wit-bindgen c` generates `plugin.h`/`plugin.c` from `wit/world.wit`
// (the Makefile does it): one `exports_…` function to define per exported
// WIT function, one `edgesync_plugin_…` function per imported one.
//
// Ownership (the canonical ABI, as wit-bindgen's C generator maps it):
// - arguments of an exported function belong to it: free them (the
//   `…_free` helpers) or move them into the result;
// - a result is freed by the generated code after the host has copied it,
//   so everything in it must come from malloc;
// - arguments to an import stay the caller's; results of an import (strings,
//   lists) are the caller's to free.

#include <stdlib.h>
#include <string.h>

#include "plugin.h"

typedef edgesync_plugin_types_message_t message_t;
typedef edgesync_plugin_types_message_verdict_t verdict_t;
typedef edgesync_plugin_types_message_action_t action_t;
typedef edgesync_plugin_types_header_t header_t;
typedef edgesync_plugin_types_packed_message_t packed_message_t;
typedef edgesync_plugin_types_batch_verdict_t batch_verdict_t;

// Set by `init`, which the host runs on every fresh instance before any
// hook. Anything that must outlive an instance belongs in kv, not here.
static plugin_string_t prefix;

static void log_info(const char *text) {
  plugin_string_t s;
  plugin_string_set(&s, text);
  edgesync_plugin_log_log(EDGESYNC_PLUGIN_LOG_LEVEL_INFO, &s);
}

bool exports_edgesync_plugin_lifecycle_init(plugin_string_t *config_json,
                                            plugin_string_t *err) {
  plugin_string_free(config_json);  // read through `config.get` instead
  plugin_string_free(&prefix);
  plugin_string_t key;
  plugin_string_set(&key, "prefix");
  if (!edgesync_plugin_config_get(&key, &prefix)) {
    plugin_string_dup(&prefix, "shout.");
  }
  if (prefix.len == 0) {
    plugin_string_dup(err, "config `prefix` must not be empty");
    return false;
  }
  log_info("shout: uppercasing payloads on topics under the configured prefix");
  return true;
}

// A borrowed piece of a buffer (not NUL-terminated).
typedef struct {
  const uint8_t *ptr;
  size_t len;
} bytes_t;

static bool has_prefix(bytes_t topic) {
  return topic.len >= prefix.len && memcmp(topic.ptr, prefix.ptr, prefix.len) == 0;
}

// ---------------------------------------------------------------------------
// Unpacking `on-message`'s argument (`packed-message` in the contract).
//
// `packed->data` holds, back to back: the sender's client id, its principal
// (empty when anonymous), the topic (all UTF-8), the payload, and then the
// headers, each as a name and a value, each of those preceded by its byte
// length as a little-endian u32. `client_id_end`, `principal_end`,
// `topic_end` and `payload_end` say where the first four parts end.
// ---------------------------------------------------------------------------

// The parts of a packed message: views into its `data`, valid until it is
// freed.
typedef struct {
  uint64_t conn_id;
  bytes_t client_id, principal, topic, payload;
  // The headers, still packed: read them with `next_header`.
  bytes_t headers;
} unpacked_t;

// Splits `packed` into its parts; false if its offsets are out of order or
// past the end (a host bug, never expected).
static bool unpack(const packed_message_t *packed, unpacked_t *out) {
  const uint8_t *data = packed->data.ptr;
  size_t len = packed->data.len;
  uint32_t ends[4] = {packed->client_id_end, packed->principal_end, packed->topic_end,
                      packed->payload_end};
  bytes_t *parts[4] = {&out->client_id, &out->principal, &out->topic, &out->payload};
  size_t start = 0;
  for (int i = 0; i < 4; i++) {
    if (ends[i] < start || ends[i] > len) {
      return false;
    }
    *parts[i] = (bytes_t){data + start, ends[i] - start};
    start = ends[i];
  }
  out->conn_id = packed->conn_id;
  out->headers = (bytes_t){data + start, len - start};
  return true;
}

// One length-prefixed field off the front of `rest`.
static bool next_field(bytes_t *rest, bytes_t *field) {
  if (rest->len < 4) {
    return false;
  }
  const uint8_t *p = rest->ptr;
  size_t len = (size_t)p[0] | (size_t)p[1] << 8 | (size_t)p[2] << 16 | (size_t)p[3] << 24;
  if (len > rest->len - 4) {
    return false;
  }
  *field = (bytes_t){p + 4, len};
  *rest = (bytes_t){p + 4 + len, rest->len - 4 - len};
  return true;
}

// The next header off the front of `rest` (an unpacked message's `headers`);
// false at the end.
static bool next_header(bytes_t *rest, bytes_t *name, bytes_t *value) {
  return next_field(rest, name) && next_field(rest, value);
}

// ---------------------------------------------------------------------------
// The plugin.
// ---------------------------------------------------------------------------

// The next value of the kv counter, as decimal text in `out`.
static bool next_count(plugin_string_t *out) {
  plugin_string_t key;
  plugin_string_set(&key, "shouted");
  int64_t count;
  edgesync_plugin_kv_kv_error_t error;
  if (!edgesync_plugin_kv_increment(&key, 1, NULL, &count, &error)) {
    edgesync_plugin_kv_kv_error_free(&error);
    return false;
  }
  char text[24];
  int n = 0;
  uint64_t v = count < 0 ? 0 : (uint64_t)count;
  do {
    text[sizeof text - 1 - n++] = (char)('0' + v % 10);
    v /= 10;
  } while (v != 0);
  plugin_string_dup_n(out, text + sizeof text - n, (size_t)n);
  return true;
}

static void *copy(const void *src, size_t len) {
  void *dst = malloc(len == 0 ? 1 : len);
  if (dst == NULL) {
    abort();
  }
  memcpy(dst, src, len);
  return dst;
}

// A message for a verdict (every part from malloc): copies of `topic` and
// `payload`, and room for `n_headers` headers plus `x-shouted`; the caller
// fills the headers.
static message_t new_message(bytes_t topic, bytes_t payload, size_t n_headers) {
  message_t msg;
  plugin_string_dup_n(&msg.topic, (const char *)topic.ptr, topic.len);
  msg.payload.ptr = copy(payload.ptr, payload.len);
  msg.payload.len = payload.len;
  msg.headers.ptr = malloc((n_headers + 1) * sizeof *msg.headers.ptr);
  if (msg.headers.ptr == NULL) {
    abort();
  }
  msg.headers.len = n_headers;
  return msg;
}

static void set_header(header_t *h, bytes_t name, bytes_t value) {
  plugin_string_dup_n(&h->name, (const char *)name.ptr, name.len);
  plugin_string_dup_n(&h->value, (const char *)value.ptr, value.len);
}

// The verdict on `msg`, a message under the prefix from `new_message`,
// which it takes over: `replace` with its payload uppercased and
// `x-shouted` appended, or `pass` when the kv counter failed.
static void shout(message_t *msg, verdict_t *ret) {
  header_t *shouted = &msg->headers.ptr[msg->headers.len];
  if (!next_count(&shouted->value)) {
    edgesync_plugin_types_message_free(msg);
    ret->tag = EDGESYNC_PLUGIN_TYPES_MESSAGE_VERDICT_PASS;
    return;
  }
  plugin_string_dup(&shouted->name, "x-shouted");
  msg->headers.len++;
  for (size_t i = 0; i < msg->payload.len; i++) {
    uint8_t b = msg->payload.ptr[i];
    if (b >= 'a' && b <= 'z') {
      msg->payload.ptr[i] = (uint8_t)(b - 'a' + 'A');
    }
  }
  ret->tag = EDGESYNC_PLUGIN_TYPES_MESSAGE_VERDICT_REPLACE;
  ret->val.replace = *msg;  // moved: freed after the host copied it
}

// The sender and the message arrive in one buffer (`packed-message`, one
// copy into the guest instead of five); `unpack` above splits it. Only a
// message under the prefix is copied out of it. The result is an action
// (`message-action`): the replacement itself goes to the host through the
// `verdict` import before returning `replace`.
action_t exports_edgesync_plugin_message_hooks_on_message(packed_message_t *packed) {
  unpacked_t msg;
  action_t action = EDGESYNC_PLUGIN_TYPES_MESSAGE_ACTION_PASS;
  if (unpack(packed, &msg) && has_prefix(msg.topic)) {
    bytes_t rest = msg.headers, name, value;
    size_t n = 0;
    while (next_header(&rest, &name, &value)) {
      n++;
    }
    message_t out = new_message(msg.topic, msg.payload, n);
    rest = msg.headers;
    for (size_t h = 0; h < n && next_header(&rest, &name, &value); h++) {
      set_header(&out.headers.ptr[h], name, value);
    }
    verdict_t verdict;
    shout(&out, &verdict);
    if (verdict.tag == EDGESYNC_PLUGIN_TYPES_MESSAGE_VERDICT_REPLACE) {
      edgesync_plugin_verdict_set_replacement(&verdict.val.replace);  // borrowed
      edgesync_plugin_types_message_free(&verdict.val.replace);
      action = EDGESYNC_PLUGIN_TYPES_MESSAGE_ACTION_REPLACE;
    }
  }
  edgesync_plugin_types_packed_message_free(packed);
  return action;
}

// Appends a verdict on message `index` to `list`, `cap` being its capacity.
static void push_verdict(exports_edgesync_plugin_message_hooks_list_batch_verdict_t *list,
                         size_t *cap, uint32_t index, verdict_t verdict) {
  if (list->len == *cap) {
    *cap = *cap == 0 ? 4 : 2 * *cap;
    batch_verdict_t *grown = realloc(list->ptr, *cap * sizeof *grown);
    if (grown == NULL) {
      abort();
    }
    list->ptr = grown;
  }
  list->ptr[list->len++] = (batch_verdict_t){index, verdict};
}

// The batch fast path: the same verdicts as `on-message`, but only those
// that are not `pass`, each with its message's index, in index order (every
// message not listed passes). `batch->data` holds every topic and payload
// back to back; `batch->ends` holds three offsets per message: where its
// topic, its payload and its headers (in `batch->headers`) end. Only
// messages under the prefix are copied out of the batch.
void exports_edgesync_plugin_message_hooks_on_batch(
    edgesync_plugin_types_conn_ref_t *sender, edgesync_plugin_types_batch_t *batch,
    exports_edgesync_plugin_message_hooks_list_batch_verdict_t *ret) {
  edgesync_plugin_types_conn_ref_free(sender);
  ret->ptr = NULL;
  ret->len = 0;
  size_t cap = 0;
  const uint8_t *data = batch->data.ptr;
  uint32_t start = 0, header_start = 0;
  for (size_t i = 0; 3 * i + 2 < batch->ends.len; i++) {
    uint32_t topic_end = batch->ends.ptr[3 * i];
    uint32_t payload_end = batch->ends.ptr[3 * i + 1];
    uint32_t headers_end = batch->ends.ptr[3 * i + 2];
    bytes_t topic = {data + start, topic_end - start};
    if (has_prefix(topic)) {
      bytes_t payload = {data + topic_end, payload_end - topic_end};
      message_t msg = new_message(topic, payload, headers_end - header_start);
      for (size_t h = 0; h < msg.headers.len; h++) {
        header_t *from = &batch->headers.ptr[header_start + h];
        set_header(&msg.headers.ptr[h], (bytes_t){from->name.ptr, from->name.len},
                   (bytes_t){from->value.ptr, from->value.len});
      }
      verdict_t verdict;
      shout(&msg, &verdict);
      if (verdict.tag != EDGESYNC_PLUGIN_TYPES_MESSAGE_VERDICT_PASS) {
        push_verdict(ret, &cap, (uint32_t)i, verdict);
      }
    }
    start = payload_end;
    header_start = headers_end;
  }
  edgesync_plugin_types_batch_free(batch);
}
