#!/usr/bin/env python3
"""Head-of-line blocking over QUIC under loss: one session stream against a stream per
subscription.

`edgesync/1` carries every push of a connection on its one session stream; `edgesync/2`
gives each subscription a stream of its own (docs/protocol-quic.md). This measures what
that changes, with a proxy instead of netem (the kernel here has no `sch_netem`):

  publisher ──(direct)──────────────────────────▶ gateway (QUIC)
  shared    ◀──(lossy proxy)── edgesync/1: `bulk.>` AND `probe` on one connection
  lanes     ◀──(lossy proxy)── edgesync/2: the same two subscriptions, one connection
  alone     ◀──(lossy proxy)── subscribed to `probe` only, its own connection

The publisher sends a steady bulk stream (`--bulk-rate` messages/s of `--bulk-bytes`)
and a probe message every 20 ms carrying its send time. A probe that arrives behind a
lost bulk packet on `shared` waits for the retransmission (head-of-line blocking); on
`alone` it waits only for its own losses. `alone` is the best case a per-subscription
stream layout could reach (it also stops sharing congestion control with the bulk
traffic, which separate streams on one connection do not), so `shared - alone` is an
upper bound of what that layout can gain, and `lanes` is what it does gain.

The proxy drops each datagram with probability `--loss` in both directions and delays
it by `--delay-ms` each way. aioquic (not quinn) is the client, as in the interop test.

Usage: hol.py --port QUIC_PORT --ca DATA_DIR/tls/ca.pem [--loss 0.01] [--delay-ms 10]
"""

import argparse
import asyncio
import random
import ssl
import struct
import time

import msgpack
from aioquic.asyncio import connect
from aioquic.asyncio.protocol import QuicConnectionProtocol
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.events import StreamDataReceived


def frame(*messages):
    body = b"".join(msgpack.packb(m, use_bin_type=True) for m in messages)
    return struct.pack(">I", len(body)) + body


class Client(QuicConnectionProtocol):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.bufs = {}
        self.stream_id = None
        self.replies = {}
        self.probe_ms = []
        self.bulk = 0

    def quic_event_received(self, event):
        # Any stream: the session stream, or (edgesync/2) a subscription's stream.
        if not isinstance(event, StreamDataReceived):
            return
        buf = self.bufs.get(event.stream_id, b"") + event.data
        now = time.monotonic()
        while len(buf) >= 4:
            (n,) = struct.unpack(">I", buf[:4])
            if len(buf) < 4 + n:
                break
            body, buf = buf[4 : 4 + n], buf[4 + n :]
            u = msgpack.Unpacker(raw=False)
            u.feed(body)
            for m in u:
                if m.get("t") == "msg" and m.get("topic") == "probe":
                    (sent,) = struct.unpack(">d", m["data"][:8])
                    self.probe_ms.append((now - sent) * 1000.0)
                elif m.get("t") == "msg":
                    self.bulk += 1
                elif "id" in m:
                    self.replies[m["id"]] = m
                elif m.get("t") == "error":
                    self.replies.setdefault("errors", m)
        self.bufs[event.stream_id] = buf

    def send(self, data):
        if self.stream_id is None:
            self.stream_id = self._quic.get_next_available_stream_id(is_unidirectional=False)
        self._quic.send_stream_data(self.stream_id, data)
        self.transmit()

    async def reply(self, id_):
        for _ in range(1000):  # bounded: 10 s
            if id_ in self.replies:
                return self.replies.pop(id_)
            await asyncio.sleep(0.01)
        raise TimeoutError(f"no reply to {id_}")


class Proxy(asyncio.DatagramProtocol):
    """Lossy, delaying UDP relay: one upstream socket per client address."""

    def __init__(self, upstream, loss, delay, rng):
        self.upstream, self.loss, self.delay, self.rng = upstream, loss, delay, rng
        self.links = {}
        self.dropped = self.relayed = 0

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        loop = asyncio.get_running_loop()
        link = self.links.get(addr)
        if link is None:
            link = self.links[addr] = {"queue": []}

            def back(payload, proxy=self, client=addr):
                proxy.relay(lambda: proxy.transport.sendto(payload, client))

            class Up(asyncio.DatagramProtocol):
                def datagram_received(self, payload, _):
                    back(payload)

            link["task"] = loop.create_task(
                loop.create_datagram_endpoint(Up, remote_addr=self.upstream)
            )

        async def forward(payload=data, link=link):
            transport, _ = await link["task"]
            transport.sendto(payload)

        self.relay(lambda: loop.create_task(forward()))

    def relay(self, send):
        if self.rng.random() < self.loss:
            self.dropped += 1
            return
        self.relayed += 1
        asyncio.get_running_loop().call_later(self.delay, send)


async def open_client(port, ca, client_id, subs, alpn="edgesync/1"):
    config = QuicConfiguration(is_client=True, alpn_protocols=[alpn])
    config.load_verify_locations(cafile=ca)
    config.verify_mode = ssl.CERT_REQUIRED
    config.server_name = "localhost"
    cm = connect("127.0.0.1", port, configuration=config, create_protocol=Client)
    c = await cm.__aenter__()
    c.send(frame({"t": "connect", "id": 1, "client_id": client_id}))
    assert (await c.reply(1))["t"] == "connected"
    for i, topic in enumerate(subs, start=2):
        c.send(frame({"t": "sub", "id": i, "topic": topic, "start": "latest"}))
        assert (await c.reply(i))["t"] == "subscribed"
    return c, cm


def stats(ms):
    if not ms:
        return "no probes received"
    s = sorted(ms)
    q = lambda p: s[min(len(s) - 1, int(p * len(s)))]  # noqa: E731
    return f"n={len(s)} p50={q(0.5):.1f} p90={q(0.9):.1f} p99={q(0.99):.1f} max={s[-1]:.1f} ms"


async def main(a):
    loop = asyncio.get_running_loop()
    rng = random.Random(a.seed)
    proxy = Proxy(("127.0.0.1", a.port), a.loss, a.delay_ms / 1000.0, rng)
    ptransport, _ = await loop.create_datagram_endpoint(lambda: proxy, local_addr=("127.0.0.1", 0))
    pport = ptransport.get_extra_info("sockname")[1]
    shared, cm1 = await open_client(pport, a.ca, "hol-shared", ["bulk.>", "probe"])
    alone, cm2 = await open_client(pport, a.ca, "hol-alone", ["probe"])
    lanes, cm4 = await open_client(pport, a.ca, "hol-lanes", ["bulk.>", "probe"], "edgesync/2")
    pub, cm3 = await open_client(a.port, a.ca, "hol-pub", [])
    payload = b"x" * a.bulk_bytes
    per_tick = max(1, a.bulk_rate // 100)  # every 10 ms
    end = loop.time() + a.seconds  # bounded by --seconds
    tick = 0
    next_id = 100
    while loop.time() < end:
        msgs = []
        for i in range(per_tick):
            next_id += 1
            msgs.append({"t": "pub", "id": next_id, "topic": f"bulk.{i % 4}", "data": payload, "ack": False})
        if tick % 2 == 0:
            next_id += 1
            sent = struct.pack(">d", time.monotonic())
            msgs.append({"t": "pub", "id": next_id, "topic": "probe", "data": sent, "ack": False})
        pub.send(frame(*msgs))
        tick += 1
        await asyncio.sleep(0.01)
    await asyncio.sleep(2.0 + 4 * a.delay_ms / 1000.0)  # drain retransmissions
    print(
        f"loss={a.loss:.3f} delay={a.delay_ms}ms each way, bulk {a.bulk_rate}/s x {a.bulk_bytes} B; "
        f"proxy dropped {proxy.dropped} of {proxy.dropped + proxy.relayed} datagrams"
    )
    print(f"  shared (bulk + probe on one stream): {stats(shared.probe_ms)}; bulk received {shared.bulk}")
    print(f"  lanes  (edgesync/2, a stream each):  {stats(lanes.probe_ms)}; bulk received {lanes.bulk}")
    print(f"  alone  (probe only, own connection): {stats(alone.probe_ms)}")
    errors = [m for m in pub.replies.values() if isinstance(m, dict) and m.get("t") == "error"]
    if errors:
        print(f"  publisher errors: {len(errors)}, first: {errors[0]}")
    for cm in (cm1, cm2, cm3, cm4):
        await cm.__aexit__(None, None, None)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--port", type=int, required=True, help="the gateway's QUIC port on 127.0.0.1")
    p.add_argument("--ca", required=True)
    p.add_argument("--loss", type=float, default=0.01)
    p.add_argument("--delay-ms", type=float, default=10.0)
    p.add_argument("--bulk-rate", type=int, default=2000)
    p.add_argument("--bulk-bytes", type=int, default=512)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--seed", type=int, default=7)
    asyncio.run(main(p.parse_args()))
