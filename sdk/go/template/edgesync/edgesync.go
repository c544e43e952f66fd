// Package edgesync is edgesync's Go plugin SDK (a copy of
// sdk/go/template/edgesync; keep it as `edgesync plugin new` wrote it).
//
// It sits on the bindings `wit-bindgen go` generates and hides the two
// hot-path layouts of the contract: `on-message`'s packed argument with its
// `verdict` import, and `on-batch`'s flat buffers. A plugin (package
// `plugin`) defines
//
//	func Init(config string) error
//	func OnMessage(msg *edgesync.Message) edgesync.Verdict
//
// and the SDK's export packages call them. Host capabilities are the
// generated packages (`edgesync_plugin_kv`, …), called directly.
package edgesync

import (
	"encoding/binary"
	"errors"

	"wit_component/edgesync_plugin_types"
	"wit_component/edgesync_plugin_verdict"
)

// Header is a message header.
type Header = edgesync_plugin_types.Header

// Message is one message and its sender. Its fields view the call's
// arguments: copy what you keep past the call.
type Message struct {
	ConnId    uint64
	ClientId  string
	Principal string // empty when anonymous
	Topic     string
	Headers   []Header
	Payload   []byte
}

// Verdict is what OnMessage decided: Pass(), Replace(…), Drop() or Reject(…).
type Verdict struct {
	verdict edgesync_plugin_types.MessageVerdict
}

func Pass() Verdict { return Verdict{edgesync_plugin_types.MakeMessageVerdictPass()} }

func Drop() Verdict { return Verdict{edgesync_plugin_types.MakeMessageVerdictDrop()} }

func Reject(reason string) Verdict {
	return Verdict{edgesync_plugin_types.MakeMessageVerdictReject(reason)}
}

// Replace continues with msg's topic and these headers and payload.
func Replace(msg *Message, headers []Header, payload []byte) Verdict {
	return Verdict{edgesync_plugin_types.MakeMessageVerdictReplace(edgesync_plugin_types.Message{
		Topic: msg.Topic, Headers: headers, Payload: payload,
	})}
}

// OnMessage runs hook on `on-message`'s packed argument and hands the data
// of replace and reject to the host through the `verdict` import.
func OnMessage(packed edgesync_plugin_types.PackedMessage, hook func(*Message) Verdict) edgesync_plugin_types.MessageAction {
	msg, err := unpack(packed)
	if err != nil {
		edgesync_plugin_verdict.SetReason(err.Error())
		return edgesync_plugin_types.MessageActionReject
	}
	v := hook(&msg).verdict
	switch v.Tag() {
	case edgesync_plugin_types.MessageVerdictReplace:
		edgesync_plugin_verdict.SetReplacement(v.Replace())
		return edgesync_plugin_types.MessageActionReplace
	case edgesync_plugin_types.MessageVerdictReject:
		edgesync_plugin_verdict.SetReason(v.Reject())
		return edgesync_plugin_types.MessageActionReject
	case edgesync_plugin_types.MessageVerdictDrop:
		return edgesync_plugin_types.MessageActionDrop
	}
	return edgesync_plugin_types.MessageActionPass
}

// OnBatch runs hook on each message of `on-batch`'s flat buffers and
// returns the verdicts that are not pass, by index. `batch.Data` holds every
// topic and payload back to back; `batch.Ends` three offsets per message:
// where its topic, its payload and its headers (in `batch.Headers`) end.
func OnBatch(sender edgesync_plugin_types.ConnRef, batch edgesync_plugin_types.Batch, hook func(*Message) Verdict) []edgesync_plugin_types.BatchVerdict {
	var out []edgesync_plugin_types.BatchVerdict
	var start, headerStart uint32
	for i := 0; 3*i+2 < len(batch.Ends); i++ {
		topicEnd, payloadEnd, headersEnd := batch.Ends[3*i], batch.Ends[3*i+1], batch.Ends[3*i+2]
		if topicEnd < start || payloadEnd < topicEnd || int(payloadEnd) > len(batch.Data) ||
			headersEnd < headerStart || int(headersEnd) > len(batch.Headers) {
			break // a host bug: the rest pass
		}
		msg := Message{
			ConnId:    sender.ConnId,
			ClientId:  sender.ClientId,
			Principal: sender.Principal,
			Topic:     string(batch.Data[start:topicEnd]),
			Headers:   batch.Headers[headerStart:headersEnd:headersEnd],
			Payload:   batch.Data[topicEnd:payloadEnd:payloadEnd],
		}
		v := hook(&msg).verdict
		if v.Tag() != edgesync_plugin_types.MessageVerdictPass {
			out = append(out, edgesync_plugin_types.BatchVerdict{Index: uint32(i), Verdict: v})
		}
		start, headerStart = payloadEnd, headersEnd
	}
	return out
}

var errMalformed = errors.New("malformed packed message")

// unpack splits `packed.Data`: the client id, the principal, the topic, the
// payload (the *End offsets end them), then each header as a name and a
// value, each preceded by its length as a little-endian uint32.
func unpack(packed edgesync_plugin_types.PackedMessage) (Message, error) {
	data := packed.Data
	ends := []uint32{packed.ClientIdEnd, packed.PrincipalEnd, packed.TopicEnd, packed.PayloadEnd}
	var start uint32
	for _, end := range ends {
		if end < start || int(end) > len(data) {
			return Message{}, errMalformed
		}
		start = end
	}
	rest := data[packed.PayloadEnd:]
	field := func() (string, bool) {
		if len(rest) < 4 {
			return "", false
		}
		n := binary.LittleEndian.Uint32(rest)
		if uint64(n) > uint64(len(rest)-4) {
			return "", false
		}
		s := string(rest[4 : 4+n])
		rest = rest[4+n:]
		return s, true
	}
	var headers []Header
	for len(rest) > 0 {
		name, ok1 := field()
		value, ok2 := field()
		if !ok1 || !ok2 {
			return Message{}, errMalformed
		}
		headers = append(headers, Header{Name: name, Value: value})
	}
	return Message{
		ConnId:    packed.ConnId,
		ClientId:  string(data[:packed.ClientIdEnd]),
		Principal: string(data[packed.ClientIdEnd:packed.PrincipalEnd]),
		Topic:     string(data[packed.PrincipalEnd:packed.TopicEnd]),
		Headers:   headers,
		Payload:   data[packed.TopicEnd:packed.PayloadEnd:packed.PayloadEnd],
	}, nil
}
