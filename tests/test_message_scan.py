"""The simulation engine fix: messages reach their virtual sites, and only pending nodes are asked."""

from __future__ import annotations

import threading
import time
from queue import Queue
from types import SimpleNamespace

import flwr

from fedshield.flower_ext import FLOWER_VERSION
from fedshield.flower_ext.simulation_engine import install, make_add_messages_to_queue


class FakeState:
    """Flower's in-memory link state, reduced to what the engine's loop touches."""

    def __init__(self, dsts: list[int]) -> None:
        self.lock = threading.RLock()
        self.message_ins_store = {str(i): SimpleNamespace(metadata=SimpleNamespace(dst_node_id=d, delivered_at=""))
                                  for i, d in enumerate(dsts)}
        self.asked: list[int] = []

    def get_message_ins(self, node_id: int, limit: int):  # same contract as InMemoryLinkState's
        self.asked.append(node_id)
        out = [m for m in self.message_ins_store.values()
               if m.metadata.dst_node_id == node_id and m.metadata.delivered_at == ""][:limit]
        for m in out:
            m.metadata.delivered_at = "now"
        return out


def test_every_pending_message_is_queued_once_and_idle_nodes_are_not_asked() -> None:
    nodes = {n: n for n in range(1000)}
    state = FakeState([3, 3, 998, 42])
    queue: Queue = Queue()
    stop = threading.Event()
    loop = make_add_messages_to_queue(lambda *a: None)
    thread = threading.Thread(target=loop, args=(state, queue, nodes, stop))
    thread.start()
    time.sleep(0.5)
    stop.set()
    thread.join()
    got = [queue.get_nowait().metadata.dst_node_id for _ in range(queue.qsize())]
    assert sorted(got) == [3, 3, 42, 998]
    assert set(state.asked) == {3, 42, 998}  # Flower's loop would ask all 1,000 nodes every tick


def test_installed_into_the_pinned_flower() -> None:
    from flwr.server.superlink.fleet.vce import vce_api

    assert flwr.__version__ == FLOWER_VERSION  # the patched function is that Flower's; recheck on upgrade
    install()
    install()
    assert vce_api.add_messages_to_queue.fedshield_patch is True
