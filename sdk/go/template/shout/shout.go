// Package shout is the plugin's logic, shared by the two exported
// interfaces: on topics starting with the configured prefix (config key
// `prefix`, default "shout.") it uppercases the ASCII letters of the
// payload and adds a header `x-shouted` with how many messages it has
// shouted so far (a counter in the host's kv store, shared by every
// instance). Anything else passes unchanged.
package shout

import (
	"strconv"

	"wit_component/edgesync_plugin_config"
	"wit_component/edgesync_plugin_kv"
	"wit_component/edgesync_plugin_log"
	"wit_component/edgesync_plugin_types"

	witTypes "go.bytecodealliance.org/pkg/wit/types"
)

// Set by Init, which the host runs on every fresh instance before any
// hook. Anything that must outlive an instance belongs in kv, not here.
var prefix = "shout."

// Init reads the configuration; an error fails the plugin's load.
func Init() error {
	if p := edgesync_plugin_config.Get("prefix"); p.Tag() == witTypes.OptionSome {
		prefix = p.Some()
	}
	if prefix == "" {
		return errEmptyPrefix
	}
	edgesync_plugin_log.Log(edgesync_plugin_log.LevelInfo,
		"shout: uppercasing payloads on topics starting with "+strconv.Quote(prefix))
	return nil
}

type initError string

func (e initError) Error() string { return string(e) }

const errEmptyPrefix = initError("config `prefix` must not be empty")

// Verdict is the plugin's verdict on one message.
func Verdict(msg edgesync_plugin_types.Message) edgesync_plugin_types.MessageVerdict {
	if len(msg.Topic) < len(prefix) || msg.Topic[:len(prefix)] != prefix {
		return edgesync_plugin_types.MakeMessageVerdictPass()
	}
	count := edgesync_plugin_kv.Increment("shouted", 1, witTypes.None[uint64]())
	if count.Tag() != witTypes.ResultOk {
		return edgesync_plugin_types.MakeMessageVerdictPass()
	}
	payload := make([]uint8, len(msg.Payload))
	for i, b := range msg.Payload {
		if b >= 'a' && b <= 'z' {
			b -= 'a' - 'A'
		}
		payload[i] = b
	}
	headers := append(append([]edgesync_plugin_types.Header{}, msg.Headers...),
		edgesync_plugin_types.Header{Name: "x-shouted", Value: strconv.FormatInt(count.Ok(), 10)})
	return edgesync_plugin_types.MakeMessageVerdictReplace(edgesync_plugin_types.Message{
		Topic:   msg.Topic,
		Headers: headers,
		Payload: payload,
	})
}
