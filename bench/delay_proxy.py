#!/usr/bin/env python3
"""A TCP proxy on 127.0.0.1 that holds every chunk it forwards for a fixed delay, each way, and
counts the traffic: the delay and the counters of QUIVer's shard tunnels
(crates/quiver-node/src/shard/tunnel.rs), for upstream llama.cpp's RPC connections in
bench/split.py.

    python3 bench/delay_proxy.py --delay-ms D --to 127.0.0.1:PORT [--to ...]

For each --to it listens on a free port of 127.0.0.1 and prints `proxy 127.0.0.1:L -> HOST:PORT`
(one line each, in order, then `ready`). Like the tunnel, each direction reads chunks of up to
64 KiB as they come and writes each one D ms after it was read: chunks are pipelined (a burst of
them is delayed D in all, not D each), their order is kept, and a round trip grows by 2 × D.
Reading a line `stats` on stdin, it prints one JSON line per route: bytes sent (client → server),
bytes received, and round trips (times data came back after data went out), as the head's
tunnel counts them. It runs until stdin closes or it is terminated.
"""

import argparse
import asyncio
import json
import socket
import sys

CHUNK = 64 * 1024
DELAY_LINE = 1024


class Counters:
    def __init__(self):
        self.sent = self.received = self.round_trips = 0
        self.awaiting = False

    def outbound(self, n):
        self.sent += n
        self.awaiting = True

    def inbound(self, n):
        self.received += n
        if self.awaiting:
            self.awaiting = False
            self.round_trips += 1


def nodelay(writer):
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError:
            pass


async def carry(reader, writer, delay, count):
    """Copies reader → writer, each chunk written `delay` seconds after it was read."""
    loop = asyncio.get_running_loop()
    line = asyncio.Queue(DELAY_LINE)

    async def read():
        try:
            while True:
                data = await reader.read(CHUNK)
                if not data:
                    break
                count(len(data))
                await line.put((loop.time() + delay, data))
        finally:
            await line.put(None)

    async def write():
        while True:
            item = await line.get()
            if item is None:
                break
            at, data = item
            wait = at - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            writer.write(data)
            await writer.drain()

    try:
        await asyncio.gather(read(), write())
    finally:
        try:
            writer.close()
        except Exception:
            pass


async def serve(target, delay, counters, printed):
    host, port = target.rsplit(":", 1)

    async def on_client(c_reader, c_writer):
        nodelay(c_writer)
        try:
            s_reader, s_writer = await asyncio.open_connection(host, int(port))
        except OSError:
            c_writer.close()
            return
        nodelay(s_writer)
        up = asyncio.ensure_future(carry(c_reader, s_writer, delay, counters.outbound))
        down = asyncio.ensure_future(carry(s_reader, c_writer, delay, counters.inbound))
        # Either direction ending ends the connection (an RPC connection is useless half-open).
        done, pending = await asyncio.wait([up, down], return_when=asyncio.FIRST_COMPLETED)
        for t in pending:
            t.cancel()
        for w in (c_writer, s_writer):
            try:
                w.close()
            except Exception:
                pass

    server = await asyncio.start_server(on_client, "127.0.0.1", 0)
    port_l = server.sockets[0].getsockname()[1]
    printed.append(f"proxy 127.0.0.1:{port_l} -> {target}")
    return server


async def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, default=0.0)
    ap.add_argument("--to", action="append", required=True, help="HOST:PORT to forward to (repeatable)")
    a = ap.parse_args()
    delay = a.delay_ms / 1000.0
    counters = [Counters() for _ in a.to]
    printed = []
    servers = [await serve(t, delay, c, printed) for t, c in zip(a.to, counters)]
    for line in printed:
        print(line, flush=True)
    print("ready", flush=True)
    loop = asyncio.get_running_loop()
    stdin = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(stdin), sys.stdin)
    while True:
        line = await stdin.readline()
        if not line:
            break
        if line.strip() == b"stats":
            print(json.dumps([{"sent": c.sent, "received": c.received, "round_trips": c.round_trips}
                              for c in counters]), flush=True)
    for s in servers:
        s.close()


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except KeyboardInterrupt:
        pass
