// "redact", edgesync's reference plugin in C (the same behaviour in every
// language; docs/plugins.md, "The reference plugin"):
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
//
// The SDK (edgesync.h) calls `es_plugin_init` on every fresh instance and
// `es_plugin_on_message` for each message, in `on-message` and `on-batch`.

#include <stdlib.h>
#include <string.h>

#include "edgesync.h"

#define MAX_DEPTH 64
#define MAX_FIELDS 64
static const char MASK[] = "\"***\"";

// Set by `init` (every fresh instance); what must outlive an instance
// belongs in kv.
static plugin_string_t fields_text;
static es_bytes_t fields[MAX_FIELDS];
static size_t n_fields;
static edgesync_plugin_metrics_metric_id_t masked_total;

bool es_plugin_init(es_bytes_t config_json, const char **error) {
  (void)config_json;  // read through `config.get` instead
  plugin_string_free(&fields_text);
  plugin_string_t key = es_str("fields");
  if (!edgesync_plugin_config_get(&key, &fields_text)) {
    plugin_string_dup(&fields_text, "password");
  }
  n_fields = 0;
  size_t start = 0;
  for (size_t i = 0; i <= fields_text.len; i++) {
    if (i == fields_text.len || fields_text.ptr[i] == ',') {
      if (i > start && n_fields < MAX_FIELDS) {
        fields[n_fields++] = (es_bytes_t){fields_text.ptr + start, i - start};
      }
      start = i + 1;
    }
  }
  if (n_fields == 0) {
    *error = "config `fields` names no field";
    return false;
  }
  plugin_string_t name = es_str("fields_redacted_total"), help = es_str("JSON fields masked.");
  plugin_list_string_t labels = {NULL, 0};
  plugin_string_t err;
  if (!edgesync_plugin_metrics_define_counter(&name, &help, &labels, &masked_total, &err)) {
    plugin_string_free(&err);
    *error = "cannot define the metric fields_redacted_total";
    return false;
  }
  return true;
}

// ---------------------------------------------------------------------------
// A JSON validator recording the spans of the values to mask.
// ---------------------------------------------------------------------------

typedef struct {
  const uint8_t *data;
  size_t len, pos;
  size_t (*spans)[2];
  size_t n_spans, cap_spans;
} scanner_t;

static int peek(scanner_t *s) { return s->pos < s->len ? s->data[s->pos] : -1; }

static void skip_ws(scanner_t *s) {
  int c;
  while ((c = peek(s)) == ' ' || c == '\t' || c == '\n' || c == '\r') {
    s->pos++;
  }
}

static bool is_digit(int c) { return c >= '0' && c <= '9'; }

static bool is_hex(int c) {
  return is_digit(c) || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static void push_span(scanner_t *s, size_t start, size_t end) {
  if (s->n_spans == s->cap_spans) {
    s->cap_spans = s->cap_spans == 0 ? 4 : 2 * s->cap_spans;
    void *grown = realloc(s->spans, s->cap_spans * sizeof *s->spans);
    if (grown == NULL) {
      abort();
    }
    s->spans = grown;
  }
  s->spans[s->n_spans][0] = start;
  s->spans[s->n_spans][1] = end;
  s->n_spans++;
}

static bool is_field(const uint8_t *key, size_t len) {
  for (size_t i = 0; i < n_fields; i++) {
    if (fields[i].len == len && memcmp(fields[i].ptr, key, len) == 0) {
      return true;
    }
  }
  return false;
}

static bool value(scanner_t *s, int depth, bool record);

static bool string(scanner_t *s) {
  s->pos++;
  while (s->pos < s->len) {
    uint8_t c = s->data[s->pos++];
    if (c == '"') {
      return true;
    }
    if (c < 0x20) {
      return false;
    }
    if (c == '\\') {
      int e = peek(s);
      if (e == 'u') {
        if (s->len - s->pos < 5) {
          return false;
        }
        for (size_t i = 1; i <= 4; i++) {
          if (!is_hex(s->data[s->pos + i])) {
            return false;
          }
        }
        s->pos += 5;
      } else if (e != -1 && strchr("\"\\/bfnrt", e) != NULL) {
        s->pos++;
      } else {
        return false;
      }
    }
  }
  return false;
}

static bool object(scanner_t *s, int depth, bool record) {
  s->pos++;
  skip_ws(s);
  if (peek(s) == '}') {
    s->pos++;
    return true;
  }
  for (;;) {
    skip_ws(s);
    size_t key_start = s->pos + 1;
    if (peek(s) != '"' || !string(s)) {
      return false;
    }
    size_t key_len = s->pos - 1 - key_start;
    skip_ws(s);
    if (peek(s) != ':') {
      return false;
    }
    s->pos++;
    skip_ws(s);
    bool masked = record && is_field(s->data + key_start, key_len);
    size_t start = s->pos;
    if (!value(s, depth + 1, record && !masked)) {
      return false;
    }
    if (masked) {
      push_span(s, start, s->pos);
    }
    skip_ws(s);
    int c = peek(s);
    if (c == ',') {
      s->pos++;
    } else if (c == '}') {
      s->pos++;
      return true;
    } else {
      return false;
    }
  }
}

static bool array(scanner_t *s, int depth, bool record) {
  s->pos++;
  skip_ws(s);
  if (peek(s) == ']') {
    s->pos++;
    return true;
  }
  for (;;) {
    if (!value(s, depth + 1, record)) {
      return false;
    }
    skip_ws(s);
    int c = peek(s);
    if (c == ',') {
      s->pos++;
    } else if (c == ']') {
      s->pos++;
      return true;
    } else {
      return false;
    }
  }
}

static bool literal(scanner_t *s, const char *word) {
  size_t n = strlen(word);
  if (s->len - s->pos >= n && memcmp(s->data + s->pos, word, n) == 0) {
    s->pos += n;
    return true;
  }
  return false;
}

static void digits(scanner_t *s) {
  while (is_digit(peek(s))) {
    s->pos++;
  }
}

static bool number(scanner_t *s) {
  if (peek(s) == '-') {
    s->pos++;
  }
  int c = peek(s);
  if (c == '0') {
    s->pos++;
  } else if (c >= '1' && c <= '9') {
    digits(s);
  } else {
    return false;
  }
  if (peek(s) == '.') {
    s->pos++;
    if (!is_digit(peek(s))) {
      return false;
    }
    digits(s);
  }
  if (peek(s) == 'e' || peek(s) == 'E') {
    s->pos++;
    if (peek(s) == '+' || peek(s) == '-') {
      s->pos++;
    }
    if (!is_digit(peek(s))) {
      return false;
    }
    digits(s);
  }
  return true;
}

static bool value(scanner_t *s, int depth, bool record) {
  skip_ws(s);
  switch (peek(s)) {
    case '{':
      return depth < MAX_DEPTH && object(s, depth, record);
    case '[':
      return depth < MAX_DEPTH && array(s, depth, record);
    case '"':
      return string(s);
    case 't':
      return literal(s, "true");
    case 'f':
      return literal(s, "false");
    case 'n':
      return literal(s, "null");
    default:
      return peek(s) == '-' || is_digit(peek(s)) ? number(s) : false;
  }
}

// ---------------------------------------------------------------------------
// The hook.
// ---------------------------------------------------------------------------

es_verdict_t es_plugin_on_message(const es_message_t *msg) {
  scanner_t s = {.data = msg->payload.ptr, .len = msg->payload.len};
  bool ok = value(&s, 0, true);
  skip_ws(&s);
  if (!ok || s.pos != s.len) {
    free(s.spans);
    return es_reject("payload is not JSON");
  }
  if (s.n_spans == 0) {
    return es_pass();
  }
  size_t mask_len = sizeof MASK - 1, out_len = msg->payload.len, at = 0, o = 0;
  for (size_t i = 0; i < s.n_spans; i++) {
    out_len = out_len - (s.spans[i][1] - s.spans[i][0]) + mask_len;
  }
  uint8_t *out = malloc(out_len == 0 ? 1 : out_len);
  if (out == NULL) {
    abort();
  }
  for (size_t i = 0; i < s.n_spans; i++) {
    memcpy(out + o, s.data + at, s.spans[i][0] - at);
    o += s.spans[i][0] - at;
    memcpy(out + o, MASK, mask_len);
    o += mask_len;
    at = s.spans[i][1];
  }
  memcpy(out + o, s.data + at, s.len - at);

  plugin_string_t key = es_str("redacted");
  int64_t count;
  edgesync_plugin_kv_kv_error_t kv_error;
  if (!edgesync_plugin_kv_increment(&key, 1, NULL, &count, &kv_error)) {
    edgesync_plugin_kv_kv_error_free(&kv_error);  // counting never skips the masking
  }
  plugin_list_string_t no_labels = {NULL, 0};
  edgesync_plugin_metrics_add(masked_total, &no_labels, (double)s.n_spans);

  // Borrowed by the verdict until the next call: static storage.
  static char n_text[24];
  static es_header_t added;
  size_t digits_at = sizeof n_text;
  for (size_t v = s.n_spans; digits_at == sizeof n_text || v != 0; v /= 10) {
    n_text[--digits_at] = (char)('0' + v % 10);
  }
  added = (es_header_t){{(const uint8_t *)"x-redacted", 10},
                        {(const uint8_t *)n_text + digits_at, sizeof n_text - digits_at}};
  free(s.spans);
  return (es_verdict_t){.action = ES_REPLACE,
                        .payload = out,
                        .payload_len = out_len,
                        .add_headers = &added,
                        .n_add_headers = 1};
}
