// Package export_edgesync_plugin_lifecycle implements the exported
// interface `edgesync:plugin/lifecycle` (the package name is the one
// wit-bindgen's generated `wit_exports.go` imports).
package export_edgesync_plugin_lifecycle

import (
	"wit_component/shout"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Init runs on every fresh instance; `config` is the plugin's config
// table as JSON (the template reads it through `config.get` instead).
func Init(config string) witTypes.Result[witTypes.Unit, string] {
	if err := shout.Init(); err != nil {
		return witTypes.Err[witTypes.Unit, string](err.Error())
	}
	return witTypes.Ok[witTypes.Unit, string](witTypes.Unit{})
}
