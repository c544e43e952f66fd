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

import struct

from componentize_py_types import Err
from wit_world import exports
from wit_world.imports import config, kv, log, verdict
from wit_world.imports.types import (
    Batch,
    BatchVerdict,
    ConnRef,
    Header,
    Message,
    MessageAction,
    MessageVerdict,
    MessageVerdict_Pass,
    MessageVerdict_Replace,
    PackedMessage,
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
    def on_message(self, packed: PackedMessage) -> MessageAction:
        # The sender and the message arrive in one buffer (the contract's
        # `packed-message`, one copy into the guest instead of five);
        # `unpack` below turns it back into the two records. The result is
        # an action (`message-action`); the data of `replace` and `reject`
        # goes to the host through the `verdict` import first.
        sender, msg = unpack(packed)
        v = shout(msg)
        if isinstance(v, MessageVerdict_Replace):
            verdict.set_replacement(v.value)
            return MessageAction.REPLACE
        return MessageAction.PASS

    def on_batch(self, sender: ConnRef, batch: Batch) -> list[BatchVerdict]:
        """The batch fast path: the same verdicts as `on_message`, but only
        those that are not pass, each with its message's index, in index
        order (every message not listed passes). `batch.data` holds every
        topic and payload back to back; `batch.ends` holds three offsets per
        message: where its topic, its payload and its headers (in
        `batch.headers`) end."""
        verdicts = []
        start = header_start = 0
        for i in range(len(batch.ends) // 3):
            topic_end, payload_end, headers_end = batch.ends[3 * i : 3 * i + 3]
            msg = Message(
                topic=batch.data[start:topic_end].decode(),
                headers=batch.headers[header_start:headers_end],
                payload=batch.data[topic_end:payload_end],
            )
            verdict = shout(msg)
            if not isinstance(verdict, MessageVerdict_Pass):
                verdicts.append(BatchVerdict(index=i, verdict=verdict))
            start, header_start = payload_end, headers_end
        return verdicts


def unpack(packed: PackedMessage) -> tuple[ConnRef, Message]:
    """Unpacks `on_message`'s argument (`packed-message` in the contract).

    `packed.data` holds, back to back: the sender's client id, its principal
    (empty when anonymous), the topic (all UTF-8), the payload, and then the
    headers, each as a name and a value, each of those preceded by its byte
    length as a little-endian u32. `client_id_end`, `principal_end`,
    `topic_end` and `payload_end` say where the first four parts end."""
    data = packed.data
    sender = ConnRef(
        conn_id=packed.conn_id,
        client_id=data[: packed.client_id_end].decode(),
        principal=data[packed.client_id_end : packed.principal_end].decode(),
    )
    headers = []
    at = packed.payload_end

    def field() -> str:
        """One length-prefixed header name or value."""
        nonlocal at
        (length,) = struct.unpack_from("<I", data, at)
        at += 4 + length
        return data[at - length : at].decode()

    while at < len(data):
        name = field()
        headers.append(Header(name=name, value=field()))
    msg = Message(
        topic=data[packed.principal_end : packed.topic_end].decode(),
        headers=headers,
        payload=data[packed.topic_end : packed.payload_end],
    )
    return sender, msg


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
