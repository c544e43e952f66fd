// edgesync's C plugin SDK (a copy of sdk/c/template/src/edgesync.h; keep it
// as `edgesync plugin new` wrote it). It sits on the bindings `wit-bindgen c`
// generates (gen/plugin.h) and hides the two hot-path layouts of the
// contract: `on-message`'s packed argument with its `verdict` import, and
// `on-batch`'s flat buffers. A plugin that exports `message-hooks` defines
//
//     bool es_plugin_init(es_bytes_t config_json, const char **error);
//     es_verdict_t es_plugin_on_message(const es_message_t *msg);
//
// and the SDK implements both `on-message` and `on-batch` with them (one
// `es_plugin_on_message` call per message). Host capabilities (config, kv,
// metrics, …) are called through gen/plugin.h directly; `es_str` makes a
// plugin_string_t argument out of a C string.
#ifndef EDGESYNC_H
#define EDGESYNC_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "plugin.h"

// A borrowed byte string (not NUL-terminated).
typedef struct {
  const uint8_t *ptr;
  size_t len;
} es_bytes_t;

typedef struct {
  es_bytes_t name, value;
} es_header_t;

// One message and its sender, borrowed from the call's arguments: valid
// until `es_plugin_on_message` returns.
typedef struct {
  uint64_t conn_id;
  es_bytes_t client_id;
  // Empty when the connection is anonymous.
  es_bytes_t principal;
  es_bytes_t topic;
  es_bytes_t payload;
  const es_header_t *headers;
  size_t n_headers;
} es_message_t;

typedef enum { ES_PASS, ES_REPLACE, ES_DROP, ES_REJECT } es_action_t;

// What `es_plugin_on_message` decided. `ES_REPLACE` continues with the
// message's topic, its headers followed by `add_headers`, and `payload`
// (from malloc: the SDK frees it). `ES_REJECT` refuses with `reason`.
// Everything but `payload` is borrowed and must stay valid until the next
// call into the plugin (static storage will do).
typedef struct {
  es_action_t action;
  uint8_t *payload;
  size_t payload_len;
  const es_header_t *add_headers;
  size_t n_add_headers;
  const char *reason;
} es_verdict_t;

// Defined by the plugin.
bool es_plugin_init(es_bytes_t config_json, const char **error);
es_verdict_t es_plugin_on_message(const es_message_t *msg);

// A plugin_string_t viewing the NUL-terminated `s` (an import argument).
plugin_string_t es_str(const char *s);

static inline es_verdict_t es_pass(void) { return (es_verdict_t){.action = ES_PASS}; }
static inline es_verdict_t es_drop(void) { return (es_verdict_t){.action = ES_DROP}; }
static inline es_verdict_t es_reject(const char *reason) {
  return (es_verdict_t){.action = ES_REJECT, .reason = reason};
}

#endif
