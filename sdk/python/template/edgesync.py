"""edgesync's Python plugin SDK (a copy of sdk/python/template/edgesync.py;
keep it as `edgesync plugin new` wrote it).

It hides the two hot-path layouts of the contract: `on-message`'s packed
argument with its `verdict` import, and `on-batch`'s flat buffers. A plugin
(app.py) writes

    Lifecycle, MessageHooks = define_plugin(init, on_message)

with `init(config_json)` (raise `Err(reason)` to fail the load) and
`on_message(msg: Msg)` returning `pass_()`, `replace(msg, headers,
payload)`, `drop()` or `reject(reason)`.
"""

import struct
from dataclasses import dataclass

from wit_world import exports
from wit_world.imports import verdict as verdict_import
from wit_world.imports.types import (
    Batch,
    BatchVerdict,
    ConnRef,
    Header,
    Message,
    MessageAction,
    MessageVerdict,
    MessageVerdict_Drop,
    MessageVerdict_Pass,
    MessageVerdict_Reject,
    MessageVerdict_Replace,
    PackedMessage,
)


@dataclass
class Msg:
    """One message and its sender."""

    conn_id: int
    client_id: str
    principal: str  # empty when anonymous
    topic: str
    headers: list[Header]
    payload: bytes


def pass_() -> MessageVerdict:
    return MessageVerdict_Pass()


def drop() -> MessageVerdict:
    return MessageVerdict_Drop()


def reject(reason: str) -> MessageVerdict:
    return MessageVerdict_Reject(reason)


def replace(msg: Msg, headers: list[Header], payload: bytes) -> MessageVerdict:
    """Continue with `msg`'s topic and these headers and payload."""
    return MessageVerdict_Replace(Message(topic=msg.topic, headers=headers, payload=payload))


def define_plugin(init, on_message):
    """The classes componentize-py exports for `lifecycle` and `message-hooks`."""

    class Lifecycle(exports.Lifecycle):
        def init(self, config_json: str) -> None:
            init(config_json)

    class MessageHooks(exports.MessageHooks):
        def on_message(self, packed: PackedMessage) -> MessageAction:
            v = on_message(_unpack(packed))
            if isinstance(v, MessageVerdict_Replace):
                verdict_import.set_replacement(v.value)
                return MessageAction.REPLACE
            if isinstance(v, MessageVerdict_Reject):
                verdict_import.set_reason(v.value)
                return MessageAction.REJECT
            if isinstance(v, MessageVerdict_Drop):
                return MessageAction.DROP
            return MessageAction.PASS

        def on_batch(self, sender: ConnRef, batch: Batch) -> list[BatchVerdict]:
            """The verdicts that are not pass, by index. `batch.data` holds
            every topic and payload back to back; `batch.ends` three offsets
            per message: where its topic, its payload and its headers (in
            `batch.headers`) end."""
            out = []
            start = header_start = 0
            data, ends = batch.data, batch.ends
            for i in range(len(ends) // 3):
                topic_end, payload_end, headers_end = ends[3 * i : 3 * i + 3]
                v = on_message(
                    Msg(
                        conn_id=sender.conn_id,
                        client_id=sender.client_id,
                        principal=sender.principal,
                        topic=data[start:topic_end].decode(),
                        headers=batch.headers[header_start:headers_end],
                        payload=data[topic_end:payload_end],
                    )
                )
                if not isinstance(v, MessageVerdict_Pass):
                    out.append(BatchVerdict(index=i, verdict=v))
                start, header_start = payload_end, headers_end
            return out

    return Lifecycle, MessageHooks


def _unpack(packed: PackedMessage) -> Msg:
    """`packed.data` holds the client id, the principal, the topic (UTF-8),
    the payload (the *_end offsets end them), then each header as a name and
    a value, each preceded by its byte length as a little-endian u32."""
    data = packed.data
    headers = []
    at = packed.payload_end

    def field() -> str:
        nonlocal at
        (length,) = struct.unpack_from("<I", data, at)
        at += 4 + length
        if at > len(data):
            raise ValueError("malformed packed message")
        return data[at - length : at].decode()

    while at < len(data):
        name = field()
        headers.append(Header(name=name, value=field()))
    return Msg(
        conn_id=packed.conn_id,
        client_id=data[: packed.client_id_end].decode(),
        principal=data[packed.client_id_end : packed.principal_end].decode(),
        topic=data[packed.principal_end : packed.topic_end].decode(),
        headers=headers,
        payload=data[packed.topic_end : packed.payload_end],
    )
