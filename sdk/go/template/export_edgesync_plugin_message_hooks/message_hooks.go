// Package export_edgesync_plugin_message_hooks implements the exported
// interface `edgesync:plugin/message-hooks`.
package export_edgesync_plugin_message_hooks

import (
	"wit_component/edgesync_plugin_types"
	"wit_component/shout"
)

func OnMessage(sender edgesync_plugin_types.ConnRef, msg edgesync_plugin_types.Message) edgesync_plugin_types.MessageVerdict {
	return shout.Verdict(msg)
}

// OnBatch is the batch fast path: the same verdict as OnMessage, one per
// entry, in order. `batch.Data` holds every topic and payload back to back;
// each entry says where its topic, payload and headers end.
func OnBatch(sender edgesync_plugin_types.ConnRef, batch edgesync_plugin_types.Batch) []edgesync_plugin_types.MessageVerdict {
	verdicts := make([]edgesync_plugin_types.MessageVerdict, 0, len(batch.Entries))
	var start, headerStart uint32
	for _, e := range batch.Entries {
		verdicts = append(verdicts, shout.Verdict(edgesync_plugin_types.Message{
			Topic:   string(batch.Data[start:e.TopicEnd]),
			Headers: batch.Headers[headerStart:e.HeadersEnd],
			Payload: batch.Data[e.TopicEnd:e.PayloadEnd],
		}))
		start, headerStart = e.PayloadEnd, e.HeadersEnd
	}
	return verdicts
}
