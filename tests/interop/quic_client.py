#!/usr/bin/env python3
"""An edgesync QUIC client written only from docs/protocol-quic.md, on aioquic.

It is the interoperability check of the QUIC transport: a QUIC stack that is not
quinn, speaking the wire format as documented. Steps, each printed as `ok <step>`:

  connected        ALPN edgesync/1, TLS 1.3, first bidi stream, `connect` -> `connected`
  subscribed       `sub` interop.> -> `subscribed`
  puback           `pub` interop.py with ack -> `puback`
  msg              the published message comes back as a `msg` push
  datagram         (best effort, not required) a datagram `pub` comes back with seq 0
  bad_frame        an undecodable frame -> `error` bad_frame, connection stays open (pong)
  frame_too_large  a length prefix over the limit -> `error` frame_too_large
  close_code=3     ... then CONNECTION_CLOSE with application error code 3

Usage: quic_client.py --host 127.0.0.1 --port 7443 --ca data/tls/ca.pem [--max-frame N]
Exit status 0 when every required step passed.
"""

import argparse
import asyncio
import ssl
import struct
import sys

import msgpack
from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import ConnectionTerminated, DatagramFrameReceived, StreamDataReceived

TIMEOUT = 10.0


def frame(*messages):
    """One length-prefixed frame: u32 big-endian body length, then MessagePack maps."""
    body = b"".join(msgpack.packb(m, use_bin_type=True) for m in messages)
    return struct.pack(">I", len(body)) + body


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.buf = b""
        self.pushes = asyncio.Queue()
        self.closed = asyncio.get_event_loop().create_future()
        self.stream_id = None

    def quic_event_received(self, event):
        if isinstance(event, StreamDataReceived) and event.stream_id == self.stream_id:
            self.buf += event.data
            while len(self.buf) >= 4:
                (n,) = struct.unpack(">I", self.buf[:4])
                if len(self.buf) < 4 + n:
                    break
                body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
                # A frame holds one or more concatenated MessagePack values.
                for msg in unpack_all(body):
                    self.pushes.put_nowait(msg)
        elif isinstance(event, DatagramFrameReceived):
            pass
        elif isinstance(event, ConnectionTerminated) and not self.closed.done():
            self.closed.set_result(event)

    def send(self, data, end=False):
        if self.stream_id is None:
            self.stream_id = self._quic.get_next_available_stream_id(is_unidirectional=False)
        self._quic.send_stream_data(self.stream_id, data, end_stream=end)
        self.transmit()

    def datagram(self, data):
        self._quic.send_datagram_frame(data)
        self.transmit()

    async def expect(self, pred, what):
        """Next message matching `pred`; others are kept for later calls (a push may
        arrive before the reply that precedes it logically); fails after TIMEOUT."""
        backlog = self.__dict__.setdefault("backlog", [])
        for i, msg in enumerate(backlog):
            if pred(msg):
                return backlog.pop(i)
        loop = asyncio.get_event_loop()
        deadline = loop.time() + TIMEOUT
        while True:
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"timed out waiting for {what}")
            msg = await asyncio.wait_for(self.pushes.get(), left)
            if pred(msg):
                return msg
            backlog.append(msg)


def unpack_all(body):
    u = msgpack.Unpacker(raw=False)
    u.feed(body)
    return list(u)


async def main(args):
    config = QuicConfiguration(is_client=True, alpn_protocols=["edgesync/1"], max_datagram_frame_size=65536)
    config.load_verify_locations(cafile=args.ca)
    config.verify_mode = ssl.CERT_REQUIRED
    config.server_name = "localhost"
    async with connect(args.host, args.port, configuration=config, create_protocol=Client) as c:
        c.send(frame({"t": "connect", "id": 1, "client_id": "py-interop"}))
        m = await c.expect(lambda m: m.get("id") == 1, "connected")
        assert m["t"] == "connected", m
        print(f"ok connected node={m['node']} version={m['version']}", flush=True)

        c.send(frame({"t": "sub", "id": 2, "topic": "interop.>", "start": "latest"}))
        m = await c.expect(lambda m: m.get("id") == 2, "subscribed")
        assert m["t"] == "subscribed", m
        print("ok subscribed", flush=True)

        c.send(frame({"t": "pub", "id": 3, "topic": "interop.py", "data": b"hello from aioquic", "mid": "py-1"}))
        ack = await c.expect(lambda m: m.get("id") == 3, "puback")
        assert ack["t"] == "puback" and ack["seq"] >= 1, ack
        print(f"ok puback seq={ack['seq']}", flush=True)

        m = await c.expect(lambda m: m.get("t") == "msg", "msg")
        assert m["topic"] == "interop.py" and m["data"] == b"hello from aioquic" and m["seq"] == ack["seq"], m
        print(f"ok msg seq={m['seq']}", flush=True)

        # Datagrams are best effort: try a few times, do not fail the run on loss.
        for _ in range(5):
            c.datagram(msgpack.packb({"t": "pub", "topic": "interop.live", "data": b"dg"}, use_bin_type=True))
            try:
                m = await asyncio.wait_for(
                    c.expect(lambda m: m.get("t") == "msg" and m.get("topic") == "interop.live", "datagram"), 0.5
                )
                assert m["seq"] == 0, m
                print("ok datagram seq=0", flush=True)
                break
            except (TimeoutError, asyncio.TimeoutError):
                continue

        bad = b"\xc1\xc1\xc1"  # 0xc1 is never used in MessagePack
        c.send(struct.pack(">I", len(bad)) + bad)
        m = await c.expect(lambda m: m.get("t") == "error", "bad_frame error")
        assert m["code"] == "bad_frame" and "id" not in m, m
        c.send(frame({"t": "ping", "id": 4}))
        m = await c.expect(lambda m: m.get("id") == 4, "pong")
        assert m["t"] == "pong", m
        print("ok bad_frame (connection still open)", flush=True)

        c.send(struct.pack(">I", args.max_frame + 1))
        m = await c.expect(lambda m: m.get("t") == "error", "frame_too_large error")
        assert m["code"] == "frame_too_large", m
        print("ok frame_too_large", flush=True)
        ev = await asyncio.wait_for(c.closed, TIMEOUT)
        assert ev.error_code == 3, ev
        print(f"ok close_code={ev.error_code} reason={ev.reason_phrase!r}", flush=True)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=7443)
    p.add_argument("--ca", required=True)
    p.add_argument("--max-frame", type=int, default=1 << 20)
    try:
        asyncio.run(main(p.parse_args()))
    except Exception as e:  # noqa: BLE001 - report any failure as a failed run
        print(f"FAILED: {type(e).__name__}: {e}", file=sys.stderr)
        sys.exit(1)
