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
typedef edgesync_plugin_types_header_t header_t;

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

static bool has_prefix(const uint8_t *topic, size_t len) {
  return len >= prefix.len && memcmp(topic, prefix.ptr, prefix.len) == 0;
}

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

// Turns `msg` (owned, every part from malloc) into the shouted message in
// place: payload uppercased, `x-shouted` appended. False when the kv
// counter failed; `msg` is then unchanged.
static bool shout(message_t *msg) {
  header_t header;
  if (!next_count(&header.value)) {
    return false;
  }
  plugin_string_dup(&header.name, "x-shouted");
  size_t n = msg->headers.len;
  header_t *headers = realloc(msg->headers.ptr, (n + 1) * sizeof *headers);
  if (headers == NULL) {
    abort();
  }
  headers[n] = header;
  msg->headers.ptr = headers;
  msg->headers.len = n + 1;
  for (size_t i = 0; i < msg->payload.len; i++) {
    uint8_t b = msg->payload.ptr[i];
    if (b >= 'a' && b <= 'z') {
      msg->payload.ptr[i] = (uint8_t)(b - 'a' + 'A');
    }
  }
  return true;
}

// The verdict on `msg`, which it takes over.
static void verdict(message_t *msg, verdict_t *ret) {
  if (has_prefix(msg->topic.ptr, msg->topic.len) && shout(msg)) {
    ret->tag = EDGESYNC_PLUGIN_TYPES_MESSAGE_VERDICT_REPLACE;
    ret->val.replace = *msg;  // moved: freed after the host copied it
    return;
  }
  ret->tag = EDGESYNC_PLUGIN_TYPES_MESSAGE_VERDICT_PASS;
  edgesync_plugin_types_message_free(msg);
}

void exports_edgesync_plugin_message_hooks_on_message(
    edgesync_plugin_types_conn_ref_t *sender, message_t *msg, verdict_t *ret) {
  edgesync_plugin_types_conn_ref_free(sender);
  verdict(msg, ret);
}

static void *copy(const void *src, size_t len) {
  void *dst = malloc(len == 0 ? 1 : len);
  if (dst == NULL) {
    abort();
  }
  memcpy(dst, src, len);
  return dst;
}

// The batch fast path: the same verdict as `on-message`, one per entry, in
// order. `batch->data` holds every topic and payload back to back; each
// entry says where its topic, payload and headers end. Only messages under
// the prefix are copied out of the batch.
void exports_edgesync_plugin_message_hooks_on_batch(
    edgesync_plugin_types_conn_ref_t *sender, edgesync_plugin_types_batch_t *batch,
    exports_edgesync_plugin_message_hooks_list_message_verdict_t *ret) {
  edgesync_plugin_types_conn_ref_free(sender);
  size_t n = batch->entries.len;
  ret->ptr = calloc(n == 0 ? 1 : n, sizeof *ret->ptr);
  if (ret->ptr == NULL) {
    abort();
  }
  ret->len = n;
  uint32_t start = 0, header_start = 0;
  for (size_t i = 0; i < n; i++) {
    edgesync_plugin_types_batch_entry_t e = batch->entries.ptr[i];
    const uint8_t *data = batch->data.ptr;
    if (!has_prefix(data + start, e.topic_end - start)) {
      ret->ptr[i].tag = EDGESYNC_PLUGIN_TYPES_MESSAGE_VERDICT_PASS;
    } else {
      message_t msg;
      plugin_string_dup_n(&msg.topic, (const char *)data + start, e.topic_end - start);
      msg.payload.len = e.payload_end - e.topic_end;
      msg.payload.ptr = copy(data + e.topic_end, msg.payload.len);
      msg.headers.len = e.headers_end - header_start;
      msg.headers.ptr = malloc((msg.headers.len + 1) * sizeof *msg.headers.ptr);
      if (msg.headers.ptr == NULL) {
        abort();
      }
      for (size_t h = 0; h < msg.headers.len; h++) {
        header_t *from = &batch->headers.ptr[header_start + h];
        plugin_string_dup_n(&msg.headers.ptr[h].name, (const char *)from->name.ptr,
                            from->name.len);
        plugin_string_dup_n(&msg.headers.ptr[h].value, (const char *)from->value.ptr,
                            from->value.len);
      }
      verdict(&msg, &ret->ptr[i]);
    }
    start = e.payload_end;
    header_start = e.headers_end;
  }
  edgesync_plugin_types_batch_free(batch);
}
