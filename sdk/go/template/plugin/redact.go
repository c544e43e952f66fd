// Package plugin is "redact", edgesync's reference plugin in Go (the same
// behaviour in every language; docs/plugins.md, "The reference plugin"):
//
//   - config `fields`: comma-separated JSON member names to mask (default
//     `password`; empty names are ignored; none left fails Init);
//   - a payload that is not one JSON value is rejected ("payload is not
//     JSON"); objects and arrays nest at most 64 deep;
//   - the value of every member, at any depth, whose key (the raw bytes
//     between the quotes) is in `fields` becomes "***"; the rest stays byte
//     for byte;
//   - nothing masked: pass; else replace, with a header `x-redacted: N`, the
//     kv counter `redacted` plus one and the metric `fields_redacted_total`
//     plus N.
//
// The SDK (package edgesync) calls Init on every fresh instance and
// OnMessage for each message, in `on-message` and `on-batch`.
package plugin

import (
	"errors"
	"strconv"
	"strings"

	"wit_component/edgesync"
	"wit_component/edgesync_plugin_config"
	"wit_component/edgesync_plugin_kv"
	"wit_component/edgesync_plugin_metrics"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

const maxDepth = 64

// Set by Init (every fresh instance); what must outlive an instance
// belongs in kv.
var (
	fields      []string
	maskedTotal uint32
)

func Init(config string) error {
	list := "password"
	if v, ok := edgesync_plugin_config.Get("fields").Get(); ok {
		list = v
	}
	fields = fields[:0]
	for _, f := range strings.Split(list, ",") {
		if f != "" {
			fields = append(fields, f)
		}
	}
	if len(fields) == 0 {
		return errors.New("config `fields` names no field")
	}
	id := edgesync_plugin_metrics.DefineCounter("fields_redacted_total", "JSON fields masked.", nil)
	if id.Tag() != witTypes.ResultOk {
		return errors.New(id.Err())
	}
	maskedTotal = id.Ok()
	return nil
}

func OnMessage(msg *edgesync.Message) edgesync.Verdict {
	s := scanner{data: msg.Payload}
	ok := s.value(0, true)
	s.skipWs()
	if !ok || s.pos != len(s.data) {
		return edgesync.Reject("payload is not JSON")
	}
	if len(s.spans) == 0 {
		return edgesync.Pass()
	}
	out := make([]byte, 0, len(s.data))
	at := 0
	for _, span := range s.spans {
		out = append(out, s.data[at:span[0]]...)
		out = append(out, `"***"`...)
		at = span[1]
	}
	out = append(out, s.data[at:]...)
	// Counting never skips the masking: a kv error is ignored.
	edgesync_plugin_kv.Increment("redacted", 1, witTypes.None[uint64]())
	edgesync_plugin_metrics.Add(maskedTotal, nil, float64(len(s.spans)))
	headers := append(append([]edgesync.Header{}, msg.Headers...),
		edgesync.Header{Name: "x-redacted", Value: strconv.Itoa(len(s.spans))})
	return edgesync.Replace(msg, headers, out)
}

// scanner is a JSON validator recording the spans of the values to mask.
type scanner struct {
	data  []byte
	pos   int
	spans [][2]int
}

func (s *scanner) peek() int {
	if s.pos < len(s.data) {
		return int(s.data[s.pos])
	}
	return -1
}

func (s *scanner) skipWs() {
	for c := s.peek(); c == ' ' || c == '\t' || c == '\n' || c == '\r'; c = s.peek() {
		s.pos++
	}
}

func isDigit(c int) bool { return c >= '0' && c <= '9' }

func isHex(c byte) bool {
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F')
}

func isField(key []byte) bool {
	for _, f := range fields {
		if f == string(key) {
			return true
		}
	}
	return false
}

func (s *scanner) value(depth int, record bool) bool {
	s.skipWs()
	switch c := s.peek(); {
	case c == '{':
		return depth < maxDepth && s.object(depth, record)
	case c == '[':
		return depth < maxDepth && s.array(depth, record)
	case c == '"':
		return s.string()
	case c == 't':
		return s.literal("true")
	case c == 'f':
		return s.literal("false")
	case c == 'n':
		return s.literal("null")
	case c == '-' || isDigit(c):
		return s.number()
	}
	return false
}

func (s *scanner) object(depth int, record bool) bool {
	s.pos++
	s.skipWs()
	if s.peek() == '}' {
		s.pos++
		return true
	}
	for {
		s.skipWs()
		keyStart := s.pos + 1
		if s.peek() != '"' || !s.string() {
			return false
		}
		key := s.data[keyStart : s.pos-1]
		s.skipWs()
		if s.peek() != ':' {
			return false
		}
		s.pos++
		s.skipWs()
		masked := record && isField(key)
		start := s.pos
		if !s.value(depth+1, record && !masked) {
			return false
		}
		if masked {
			s.spans = append(s.spans, [2]int{start, s.pos})
		}
		s.skipWs()
		switch s.peek() {
		case ',':
			s.pos++
		case '}':
			s.pos++
			return true
		default:
			return false
		}
	}
}

func (s *scanner) array(depth int, record bool) bool {
	s.pos++
	s.skipWs()
	if s.peek() == ']' {
		s.pos++
		return true
	}
	for {
		if !s.value(depth+1, record) {
			return false
		}
		s.skipWs()
		switch s.peek() {
		case ',':
			s.pos++
		case ']':
			s.pos++
			return true
		default:
			return false
		}
	}
}

func (s *scanner) string() bool {
	s.pos++
	for s.pos < len(s.data) {
		c := s.data[s.pos]
		s.pos++
		switch {
		case c == '"':
			return true
		case c < 0x20:
			return false
		case c == '\\':
			e := s.peek()
			switch {
			case e == 'u':
				if len(s.data)-s.pos < 5 {
					return false
				}
				for _, h := range s.data[s.pos+1 : s.pos+5] {
					if !isHex(h) {
						return false
					}
				}
				s.pos += 5
			case e != -1 && strings.IndexByte(`"\/bfnrt`, byte(e)) >= 0:
				s.pos++
			default:
				return false
			}
		}
	}
	return false
}

func (s *scanner) literal(word string) bool {
	if !strings.HasPrefix(string(s.data[s.pos:]), word) {
		return false
	}
	s.pos += len(word)
	return true
}

func (s *scanner) digits() {
	for isDigit(s.peek()) {
		s.pos++
	}
}

func (s *scanner) number() bool {
	if s.peek() == '-' {
		s.pos++
	}
	switch c := s.peek(); {
	case c == '0':
		s.pos++
	case c >= '1' && c <= '9':
		s.digits()
	default:
		return false
	}
	if s.peek() == '.' {
		s.pos++
		if !isDigit(s.peek()) {
			return false
		}
		s.digits()
	}
	if c := s.peek(); c == 'e' || c == 'E' {
		s.pos++
		if c := s.peek(); c == '+' || c == '-' {
			s.pos++
		}
		if !isDigit(s.peek()) {
			return false
		}
		s.digits()
	}
	return true
}
