// Package export_edgesync_plugin_lifecycle implements the exported
// `edgesync:plugin/lifecycle` with the plugin's Init (SDK glue: keep it as
// `edgesync plugin new` wrote it).
package export_edgesync_plugin_lifecycle

import (
	"wit_component/plugin"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Init runs on every fresh instance before any hook; an error fails the load.
func Init(config string) witTypes.Result[witTypes.Unit, string] {
	if err := plugin.Init(config); err != nil {
		return witTypes.Err[witTypes.Unit, string](err.Error())
	}
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}
