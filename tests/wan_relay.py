"""A TCP relay that makes a wide-area link between sites and a coordinator (test harness only, never shipped).

This kernel has no ``netem`` qdisc, so the multi-host test and ``benchmarks/wan_rounds.py`` put this relay in
the router namespace between the sites and the coordinator (the router diverts the sites' connections to the
coordinator's port to it; see ``NetnsLab.divert``). The model, per direction of each connection:

* **delay**: each chunk the relay reads (up to 64 KiB) is written to the other side ``--delay-ms`` after it
  was read, in order. A request/reply exchange therefore costs 2 x delay more than on a LAN, as on a WAN;
  TLS's handshake passes as chunks and is delayed the same way; TCP's own handshake is answered by the
  relay at once, so the first chunk up a new connection carries an extra 2 x delay (that round trip).
* **loss**: each 1,448-byte segment of a chunk is lost with probability ``--loss``; a chunk with a lost
  segment arrives a retransmission timeout late: 200 ms (Linux's minimum RTO) + 2 x delay (the RTO follows
  the round-trip time), and the chunks behind it wait (TCP delivers in order). Real TCP often recovers a
  lost segment of a bulk transfer by fast retransmit (about one RTT), and loss also shrinks the congestion
  window, which this relay does not model: it is pessimistic for large transfers, about right for the small
  request/reply exchanges a round is made of.
* no bandwidth limit; the relay's own buffering is unbounded.

It writes ``--stats`` (JSON, atomically, every 0.5 s and at exit): per client address, bytes up (towards
the coordinator) and down, connections, exchanges (a chunk up after a chunk down on the same connection),
and a series of ``[time, up, down, exchanges, connections]`` samples (every 50 ms at most) to read
per-round figures from.

    python tests/wan_relay.py --port 19092 --upstream 10.231.0.2:9092 --delay-ms 50 --loss 0.01 --stats s.json
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import random
import signal
import socket
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

CHUNK = 65536
SEGMENT = 1448
MIN_RTO_S = 0.2


@dataclass(frozen=True)
class WanLink:
    """One-way delay (s), per-segment loss probability and the random source of the losses."""

    delay_s: float
    loss: float
    rng: random.Random

    def lateness_s(self, nbytes: int) -> float:
        """How long after it was read a chunk of ``nbytes`` is delivered."""
        if self.loss <= 0:
            return self.delay_s
        hit = 1.0 - (1.0 - self.loss) ** math.ceil(nbytes / SEGMENT)
        return self.delay_s + (MIN_RTO_S + 2 * self.delay_s if self.rng.random() < hit else 0.0)


@dataclass
class SiteTraffic:
    """What passed for one client address."""

    up: int = 0
    down: int = 0
    connections: int = 0
    exchanges: int = 0
    series: list[list[float]] = field(default_factory=list)

    def sample(self) -> None:
        now = time.time()
        if not self.series or now - self.series[-1][0] >= 0.05:
            self.series.append([round(now, 3), self.up, self.down, self.exchanges, self.connections])
        else:
            self.series[-1][1:] = [self.up, self.down, self.exchanges, self.connections]


class Relay:
    """Accepts connections, dials ``upstream`` for each, and carries both directions over ``link``."""

    def __init__(self, upstream: tuple[str, int], link: WanLink, stats: Path) -> None:
        self.upstream = upstream
        self.link = link
        self.stats_path = stats
        self.sites: dict[str, SiteTraffic] = {}

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client = writer.get_extra_info("peername")[0]
        site = self.sites.setdefault(client, SiteTraffic())
        site.connections += 1
        site.sample()
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.upstream)
        except OSError:  # nobody listens upstream: reset the client's connection, as a refused connect would
            writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.transport.abort()
            return
        last = {"direction": "down"}
        await asyncio.gather(self._carry(reader, up_writer, site, "up", last),
                             self._carry(up_reader, writer, site, "down", last), return_exceptions=True)
        for end in (writer, up_writer):
            end.close()

    async def _carry(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, site: SiteTraffic, direction: str,
                     last: dict[str, str]) -> None:
        queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue()
        sender = asyncio.create_task(self._deliver(queue, dst))
        # a new connection's first bytes up wait for the TCP handshake's round trip the relay answered locally
        due_last = time.monotonic() + 2 * self.link.delay_s if direction == "up" else 0.0
        try:
            while data := await src.read(CHUNK):
                if direction == "up":
                    site.up += len(data)
                    if last["direction"] == "down":
                        site.exchanges += 1
                else:
                    site.down += len(data)
                last["direction"] = direction
                site.sample()
                due_last = max(due_last, time.monotonic() + self.link.lateness_s(len(data)))
                queue.put_nowait((due_last, data))
        except OSError:
            pass
        finally:
            queue.put_nowait((due_last, b""))
            await sender

    @staticmethod
    async def _deliver(queue: asyncio.Queue[tuple[float, bytes]], dst: asyncio.StreamWriter) -> None:
        try:
            while True:
                due, data = await queue.get()
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                if not data:  # the source half-closed: pass it on
                    if dst.can_write_eof():
                        dst.write_eof()
                    break
                dst.write(data)
                await dst.drain()
        except OSError:
            dst.close()

    def write_stats(self) -> None:
        doc = {client: {"up": s.up, "down": s.down, "connections": s.connections, "exchanges": s.exchanges,
                        "series": s.series} for client, s in self.sites.items()}
        tmp = self.stats_path.with_name(self.stats_path.name + ".tmp")
        tmp.write_text(json.dumps(doc))
        os.replace(tmp, self.stats_path)


async def serve(port: int, relay: Relay) -> None:
    server = await asyncio.start_server(relay.handle, "0.0.0.0", port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    relay.write_stats()  # the file's existence says the relay listens
    async with server:
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), 0.5)
            except TimeoutError:
                pass
            relay.write_stats()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, required=True, help="port to listen on (all addresses)")
    parser.add_argument("--upstream", required=True, help="HOST:PORT every connection is carried to")
    parser.add_argument("--delay-ms", type=float, default=0.0, help="one-way delay per direction")
    parser.add_argument("--loss", type=float, default=0.0, help="per-segment loss probability, e.g. 0.01")
    parser.add_argument("--seed", type=int, default=0, help="seed of the losses")
    parser.add_argument("--stats", type=Path, required=True, help="JSON file of per-client traffic")
    args = parser.parse_args()
    host, _, port = args.upstream.rpartition(":")
    link = WanLink(args.delay_ms / 1000, args.loss, random.Random(args.seed))
    asyncio.run(serve(args.port, Relay((host, int(port)), link, args.stats)))


if __name__ == "__main__":
    main()
