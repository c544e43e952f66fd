// Package export_edgesync_plugin_message_hooks implements the exported
// `edgesync:plugin/message-hooks` with the plugin's OnMessage (SDK glue:
// keep it as `edgesync plugin new` wrote it).
package export_edgesync_plugin_message_hooks

import (
	"wit_component/edgesync"
	"wit_component/edgesync_plugin_types"
	"wit_component/plugin"
)

func OnMessage(packed edgesync_plugin_types.PackedMessage) edgesync_plugin_types.MessageAction {
	return edgesync.OnMessage(packed, plugin.OnMessage)
}

func OnBatch(sender edgesync_plugin_types.ConnRef, batch edgesync_plugin_types.Batch) []edgesync_plugin_types.BatchVerdict {
	return edgesync.OnBatch(sender, batch, plugin.OnMessage)
}
