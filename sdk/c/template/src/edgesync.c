// edgesync's C plugin SDK: see edgesync.h. Implements the exported
// `lifecycle.init`, `message-hooks.on-message` and `message-hooks.on-batch`
// on top of the plugin's `es_plugin_init` and `es_plugin_on_message`.
//
// Ownership follows wit-bindgen's C mapping of the canonical ABI: an
// export's arguments belong to it (freed here); a result must come from
// malloc (the generated code frees it after the host copied it); an import's
// arguments stay the caller's.

#include <stdlib.h>
#include <string.h>

#include "edgesync.h"

typedef edgesync_plugin_types_message_t message_t;
typedef edgesync_plugin_types_header_t header_t;
typedef edgesync_plugin_types_message_verdict_t verdict_t;
typedef exports_edgesync_plugin_message_hooks_list_batch_verdict_t batch_verdicts_t;

plugin_string_t es_str(const char *s) {
  plugin_string_t out;
  plugin_string_set(&out, s);
  return out;
}

static void *xmalloc(size_t n) {
  void *p = malloc(n == 0 ? 1 : n);
  if (p == NULL) {
    abort();
  }
  return p;
}

static plugin_string_t dup_bytes(es_bytes_t b) {
  plugin_string_t s;
  plugin_string_dup_n(&s, (const char *)b.ptr, b.len);
  return s;
}

bool exports_edgesync_plugin_lifecycle_init(plugin_string_t *config, plugin_string_t *err) {
  const char *error = NULL;
  bool ok = es_plugin_init((es_bytes_t){config->ptr, config->len}, &error);
  plugin_string_free(config);
  if (!ok) {
    plugin_string_dup(err, error != NULL ? error : "init failed");
  }
  return ok;
}

// The owned WIT message a replace verdict on `msg` stands for.
static message_t replacement(const es_message_t *msg, es_verdict_t *v) {
  message_t out;
  out.topic = dup_bytes(msg->topic);
  out.payload.ptr = v->payload != NULL ? v->payload : xmalloc(1);
  out.payload.len = v->payload_len;
  v->payload = NULL;
  size_t n = msg->n_headers + v->n_add_headers;
  out.headers.ptr = xmalloc(n * sizeof(header_t));
  out.headers.len = n;
  for (size_t i = 0; i < n; i++) {
    const es_header_t *h =
        i < msg->n_headers ? &msg->headers[i] : &v->add_headers[i - msg->n_headers];
    out.headers.ptr[i].name = dup_bytes(h->name);
    out.headers.ptr[i].value = dup_bytes(h->value);
  }
  return out;
}

// ---------------------------------------------------------------------------
// on-message: `packed->data` holds the client id, the principal, the topic,
// the payload, then each header as a name and a value, each preceded by its
// length as a little-endian u32; the `*_end` fields end the first four.
// ---------------------------------------------------------------------------

static bool next_field(es_bytes_t *rest, es_bytes_t *field) {
  if (rest->len < 4) {
    return false;
  }
  const uint8_t *p = rest->ptr;
  size_t len = (size_t)p[0] | (size_t)p[1] << 8 | (size_t)p[2] << 16 | (size_t)p[3] << 24;
  if (len > rest->len - 4) {
    return false;
  }
  *field = (es_bytes_t){p + 4, len};
  *rest = (es_bytes_t){p + 4 + len, rest->len - 4 - len};
  return true;
}

// Splits `packed` into `msg` (headers into a malloc'd array the caller
// frees); false when its offsets or header fields are malformed.
static bool unpack(const edgesync_plugin_types_packed_message_t *packed, es_message_t *msg,
                   es_header_t **headers) {
  const uint8_t *data = packed->data.ptr;
  size_t len = packed->data.len;
  uint32_t ends[4] = {packed->client_id_end, packed->principal_end, packed->topic_end,
                      packed->payload_end};
  es_bytes_t *parts[4] = {&msg->client_id, &msg->principal, &msg->topic, &msg->payload};
  size_t start = 0;
  for (int i = 0; i < 4; i++) {
    if (ends[i] < start || ends[i] > len) {
      return false;
    }
    *parts[i] = (es_bytes_t){data + start, ends[i] - start};
    start = ends[i];
  }
  msg->conn_id = packed->conn_id;
  es_bytes_t rest = {data + start, len - start}, name, value;
  size_t n = 0;
  for (es_bytes_t r = rest; next_field(&r, &name) && next_field(&r, &value);) {
    n++;
  }
  *headers = xmalloc(n * sizeof(es_header_t));
  for (size_t i = 0; i < n && next_field(&rest, &name) && next_field(&rest, &value); i++) {
    (*headers)[i] = (es_header_t){name, value};
  }
  msg->headers = *headers;
  msg->n_headers = n;
  return rest.len == 0;
}

edgesync_plugin_types_message_action_t exports_edgesync_plugin_message_hooks_on_message(
    edgesync_plugin_types_packed_message_t *packed) {
  es_message_t msg;
  es_header_t *headers = NULL;
  edgesync_plugin_types_message_action_t action = EDGESYNC_PLUGIN_TYPES_MESSAGE_ACTION_PASS;
  if (!unpack(packed, &msg, &headers)) {
    plugin_string_t reason = es_str("malformed packed message");
    edgesync_plugin_verdict_set_reason(&reason);
    action = EDGESYNC_PLUGIN_TYPES_MESSAGE_ACTION_REJECT;
  } else {
    es_verdict_t v = es_plugin_on_message(&msg);
    switch (v.action) {
      case ES_REPLACE: {
        message_t out = replacement(&msg, &v);
        edgesync_plugin_verdict_set_replacement(&out);  // borrowed by the import
        edgesync_plugin_types_message_free(&out);
        action = EDGESYNC_PLUGIN_TYPES_MESSAGE_ACTION_REPLACE;
        break;
      }
      case ES_REJECT: {
        plugin_string_t reason = es_str(v.reason != NULL ? v.reason : "");
        edgesync_plugin_verdict_set_reason(&reason);
        action = EDGESYNC_PLUGIN_TYPES_MESSAGE_ACTION_REJECT;
        break;
      }
      case ES_DROP:
        action = EDGESYNC_PLUGIN_TYPES_MESSAGE_ACTION_DROP;
        break;
      case ES_PASS:
        break;
    }
    free(v.payload);
  }
  free(headers);
  edgesync_plugin_types_packed_message_free(packed);
  return action;
}

// ---------------------------------------------------------------------------
// on-batch: `batch->data` holds every topic and payload back to back,
// `batch->ends` three offsets per message (topic end, payload end, headers
// end in `batch->headers`). Only verdicts that are not pass are returned.
// ---------------------------------------------------------------------------

static void push(batch_verdicts_t *list, size_t *cap, uint32_t index, verdict_t verdict) {
  if (list->len == *cap) {
    *cap = *cap == 0 ? 4 : 2 * *cap;
    void *grown = realloc(list->ptr, *cap * sizeof *list->ptr);
    if (grown == NULL) {
      abort();
    }
    list->ptr = grown;
  }
  list->ptr[list->len].index = index;
  list->ptr[list->len].verdict = verdict;
  list->len++;
}

void exports_edgesync_plugin_message_hooks_on_batch(edgesync_plugin_types_conn_ref_t *sender,
                                                   edgesync_plugin_types_batch_t *batch,
                                                   batch_verdicts_t *ret) {
  *ret = (batch_verdicts_t){NULL, 0};
  size_t cap = 0;
  const uint8_t *data = batch->data.ptr;
  size_t start = 0, header_start = 0;
  es_header_t *headers = NULL;
  size_t headers_cap = 0;
  for (size_t i = 0; 3 * i + 2 < batch->ends.len; i++) {
    size_t topic_end = batch->ends.ptr[3 * i];
    size_t payload_end = batch->ends.ptr[3 * i + 1];
    size_t headers_end = batch->ends.ptr[3 * i + 2];
    if (topic_end < start || payload_end < topic_end || payload_end > batch->data.len ||
        headers_end < header_start || headers_end > batch->headers.len) {
      break;  // a host bug: the rest pass
    }
    size_t n = headers_end - header_start;
    if (n > headers_cap) {
      free(headers);
      headers = xmalloc(n * sizeof(es_header_t));
      headers_cap = n;
    }
    for (size_t h = 0; h < n; h++) {
      header_t *from = &batch->headers.ptr[header_start + h];
      headers[h] = (es_header_t){{from->name.ptr, from->name.len},
                                 {from->value.ptr, from->value.len}};
    }
    es_message_t msg = {
        .conn_id = sender->conn_id,
        .client_id = {sender->client_id.ptr, sender->client_id.len},
        .principal = {sender->principal.ptr, sender->principal.len},
        .topic = {data + start, topic_end - start},
        .payload = {data + topic_end, payload_end - topic_end},
        .headers = headers,
        .n_headers = n,
    };
    es_verdict_t v = es_plugin_on_message(&msg);
    verdict_t out;
    switch (v.action) {
      case ES_REPLACE:
        out.tag = EDGESYNC_PLUGIN_TYPES_MESSAGE_VERDICT_REPLACE;
        out.val.replace = replacement(&msg, &v);
        push(ret, &cap, (uint32_t)i, out);
        break;
      case ES_REJECT:
        out.tag = EDGESYNC_PLUGIN_TYPES_MESSAGE_VERDICT_REJECT;
        plugin_string_dup(&out.val.reject, v.reason != NULL ? v.reason : "");
        push(ret, &cap, (uint32_t)i, out);
        break;
      case ES_DROP:
        out.tag = EDGESYNC_PLUGIN_TYPES_MESSAGE_VERDICT_DROP;
        push(ret, &cap, (uint32_t)i, out);
        break;
      case ES_PASS:
        break;
    }
    free(v.payload);
    start = payload_end;
    header_start = headers_end;
  }
  free(headers);
  edgesync_plugin_types_conn_ref_free(sender);
  edgesync_plugin_types_batch_free(batch);
}
