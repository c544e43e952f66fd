"""An edgesync message plugin in Python: "shout".

On topics starting with the configured prefix (config key `prefix`, default
"shout.") it uppercases the ASCII letters of the payload and adds a header
`x-shouted` with how many messages it has shouted so far (a counter in the
host's kv store, shared by every instance). Anything else passes unchanged.

componentize-py generates the `wit_world` package from `wit/world.wit`:
one class per exported interface (named in CamelCase) with one method per
function (snake_case), and one module per imported interface. A WIT
`result` error is raised as `componentize_py_types.Err(value)`; `option<T>`
is the value or `None`; a variant case is a dataclass (`MessageVerdict_Pass()`).
"""

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, kv, log
from wit_world.imports.types import (
    Batch,
    ConnRef,
    Header,
    Message,
    MessageVerdict,
    MessageVerdict_Pass,
    MessageVerdict_Replace,
)

# Set by `init`, which the host runs on every fresh instance before any hook.
# Anything that must outlive an instance belongs in kv, not here.
prefix = "shout."


class Lifecycle(exports.Lifecycle):
    def init(self, config_json: str) -> None:
        global prefix
        prefix = config.get("prefix") or prefix
        if prefix == "":
            raise Err("config `prefix` must not be empty")
        log.log(log.Level.INFO, f'shout: uppercasing payloads on topics starting with "{prefix}"')


class MessageHooks(exports.MessageHooks):
    def on_message(self, sender: ConnRef, msg: Message) -> MessageVerdict:
        return shout(msg)

    def on_batch(self, sender: ConnRef, batch: Batch) -> list[MessageVerdict]:
        """The batch fast path: the same verdict as `on_message`, one per
        entry, in order. `batch.data` holds every topic and payload back to
        back; each entry says where its topic, payload and headers end."""
        verdicts = []
        start = header_start = 0
        for entry in batch.entries:
            msg = Message(
                topic=batch.data[start : entry.topic_end].decode(),
                headers=batch.headers[header_start : entry.headers_end],
                payload=batch.data[entry.topic_end : entry.payload_end],
            )
            verdicts.append(shout(msg))
            start, header_start = entry.payload_end, entry.headers_end
        return verdicts


def shout(msg: Message) -> MessageVerdict:
    if not msg.topic.startswith(prefix):
        return MessageVerdict_Pass()
    count = kv.increment("shouted", 1, None)
    return MessageVerdict_Replace(
        Message(
            topic=msg.topic,
            headers=[*msg.headers, Header(name="x-shouted", value=str(count))],
            # bytes.upper() changes ASCII letters only.
            payload=bytes(msg.payload).upper(),
        )
    )
