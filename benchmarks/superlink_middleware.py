"""What the SuperLink's middleware costs per request: Flower's nine layers vs FedShield's scoped stack.

Builds Flower 1.41's SuperLink app twice in this process (``flwr.superlink.main.create_app``), once with
Flower's middleware and once as ``fl-server start`` runs it (flower_ext/scoped_middleware.py, without the
coordinator guard), and sends the same requests to both through an in-process ASGI transport (no
sockets, no TLS: the application's own cost), alternating the two apps --repeats times. Prints the
median time per request and the ratio. The requests are refused by the handlers or the checks (no
node signature, no task token), so what is timed is the path through the layers up to the refusal.

    python benchmarks/superlink_middleware.py            # ~1 minute on 2 cores
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import time

REQUESTS = {  # label -> (method, path, protobuf body?)
    "fleet pull-messages": ("POST", "/v1/fleet/pull-messages", True),
    "runtime pull-messages": ("POST", "/v1/runtime/pull-messages", True),
    "control list-runs": ("POST", "/v1/control/list-runs", True),
    "health (no layer acts)": ("GET", "/health", False),
}


async def per_request_ms(app, method: str, path: str, body: bytes, n: int) -> float:  # type: ignore[no-untyped-def]
    import httpx

    headers = {"content-type": "application/protobuf"} if body else {}
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://superlink") as client:
        for _ in range(50):  # warm up
            await client.request(method, path, headers=headers, content=body)
        start = time.perf_counter()
        for _ in range(n):
            await client.request(method, path, headers=headers, content=body)
        return (time.perf_counter() - start) / n * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=1000, help="timed requests per app and repeat")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from flwr.proto.fleet_pb2 import PullMessagesRequest  # pylint: disable=E0611
    from flwr.proto.node_pb2 import Node  # pylint: disable=E0611

    logging.getLogger("flwr").setLevel(logging.CRITICAL)  # every refused request logs a line otherwise
    logging.getLogger("flwr").handlers.clear()
    body = PullMessagesRequest(node=Node(node_id=7)).SerializeToString()
    from fedshield.flower_ext.superlink import superlink_app

    apps = {"Flower": superlink_app(scope_layers=False), "FedShield": superlink_app()}
    print(f"SuperLink middleware, in-process ASGI, median of {args.repeats} x {args.requests} requests")
    print(f"{'request':<26}{'Flower ms':>11}{'FedShield ms':>14}{'ratio':>8}")
    for label, (method, path, protobuf) in REQUESTS.items():
        times: dict[str, list[float]] = {name: [] for name in apps}
        for _ in range(args.repeats):  # alternate, so drift hits both alike
            for name, app in apps.items():
                times[name].append(asyncio.run(per_request_ms(app, method, path, body if protobuf else b"",
                                                              args.requests)))
        flower, ours = (statistics.median(times[name]) for name in apps)
        print(f"{label:<26}{flower:>11.3f}{ours:>14.3f}{ours / flower:>8.2f}")


if __name__ == "__main__":
    main()
