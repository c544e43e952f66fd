// Package export_edgesync_plugin_message_hooks implements the exported
// interface `edgesync:plugin/message-hooks`.
package export_edgesync_plugin_message_hooks

import (
	"encoding/binary"

	"wit_component/edgesync_plugin_types"
	"wit_component/edgesync_plugin_verdict"
	"wit_component/shout"
)

// OnMessage gets the sender and the message in one buffer (the contract's
// `packed-message`, one copy into the guest instead of five); unpack below
// turns it back into the two records. It returns an action
// (`message-action`); the data of replace and reject goes to the host
// through the `verdict` import first.
func OnMessage(packed edgesync_plugin_types.PackedMessage) edgesync_plugin_types.MessageAction {
	_, msg := unpack(packed)
	verdict := shout.Verdict(msg)
	switch verdict.Tag() {
	case edgesync_plugin_types.MessageVerdictReplace:
		edgesync_plugin_verdict.SetReplacement(verdict.Replace())
		return edgesync_plugin_types.MessageActionReplace
	case edgesync_plugin_types.MessageVerdictReject:
		edgesync_plugin_verdict.SetReason(verdict.Reject())
		return edgesync_plugin_types.MessageActionReject
	case edgesync_plugin_types.MessageVerdictDrop:
		return edgesync_plugin_types.MessageActionDrop
	}
	return edgesync_plugin_types.MessageActionPass
}

// OnBatch is the batch fast path: the same verdicts as OnMessage, but only
// those that are not pass, each with its message's index, in index order
// (every message not listed passes). `batch.Data` holds every topic and
// payload back to back; `batch.Ends` holds three offsets per message: where
// its topic, its payload and its headers (in `batch.Headers`) end.
func OnBatch(sender edgesync_plugin_types.ConnRef, batch edgesync_plugin_types.Batch) []edgesync_plugin_types.BatchVerdict {
	var verdicts []edgesync_plugin_types.BatchVerdict
	var start, headerStart uint32
	for i := 0; 3*i+2 < len(batch.Ends); i++ {
		topicEnd, payloadEnd, headersEnd := batch.Ends[3*i], batch.Ends[3*i+1], batch.Ends[3*i+2]
		verdict := shout.Verdict(edgesync_plugin_types.Message{
			Topic:   string(batch.Data[start:topicEnd]),
			Headers: batch.Headers[headerStart:headersEnd],
			Payload: batch.Data[topicEnd:payloadEnd],
		})
		if verdict.Tag() != edgesync_plugin_types.MessageVerdictPass {
			verdicts = append(verdicts, edgesync_plugin_types.BatchVerdict{Index: uint32(i), Verdict: verdict})
		}
		start, headerStart = payloadEnd, headersEnd
	}
	return verdicts
}

// unpack splits OnMessage's argument (`packed-message` in the contract).
// `packed.Data` holds, back to back: the sender's client id, its principal
// (empty when anonymous), the topic (all UTF-8), the payload, and then the
// headers, each as a name and a value, each of those preceded by its byte
// length as a little-endian uint32. ClientIdEnd, PrincipalEnd, TopicEnd and
// PayloadEnd say where the first four parts end.
func unpack(packed edgesync_plugin_types.PackedMessage) (edgesync_plugin_types.ConnRef, edgesync_plugin_types.Message) {
	data := packed.Data
	sender := edgesync_plugin_types.ConnRef{
		ConnId:    packed.ConnId,
		ClientId:  string(data[:packed.ClientIdEnd]),
		Principal: string(data[packed.ClientIdEnd:packed.PrincipalEnd]),
	}
	rest := data[packed.PayloadEnd:]
	// One length-prefixed header name or value off the front of rest.
	field := func() string {
		n := binary.LittleEndian.Uint32(rest)
		s := string(rest[4 : 4+n])
		rest = rest[4+n:]
		return s
	}
	var headers []edgesync_plugin_types.Header
	for len(rest) > 0 {
		name := field()
		headers = append(headers, edgesync_plugin_types.Header{Name: name, Value: field()})
	}
	msg := edgesync_plugin_types.Message{
		Topic:   string(data[packed.PrincipalEnd:packed.TopicEnd]),
		Headers: headers,
		Payload: data[packed.TopicEnd:packed.PayloadEnd],
	}
	return sender, msg
}
