"""The prompt-polling workarounds, pinned to the installed Flower version."""

from __future__ import annotations

import inspect
import time

import flwr
import flwr.supernode.start_client_internal as supernode_loop
from flwr.superlink.grid import http_grid

from fedshield.flower_ext import FLOWER_VERSION
from fedshield.flower_ext.supernode import IDLE_PULL_S, patch_supernode_polling
from fedshield.server.prompt_grid import PromptGrid


def test_flower_still_has_the_fixed_sleeps_we_shorten() -> None:
    # If Flower changes these loops, revisit flower_ext/supernode.py and server/prompt_grid.py.
    assert flwr.__version__ == FLOWER_VERSION
    assert "time.sleep(3)" in inspect.getsource(http_grid.HttpGrid.send_and_receive)
    assert "time.sleep(3)" in inspect.getsource(supernode_loop)


def test_supernode_loop_sleeps_shortened_and_time_otherwise_intact() -> None:
    original = supernode_loop.time
    try:
        patch_supernode_polling()
        start = time.monotonic()
        supernode_loop.time.sleep(3)
        supernode_loop.time.sleep(0.5)
        assert time.monotonic() - start < IDLE_PULL_S + 0.3
        assert abs(supernode_loop.time.time() - time.time()) < 1
    finally:
        supernode_loop.time = original


class _Msg:
    def __init__(self, reply_to: str) -> None:
        self.metadata = type("M", (), {"reply_to_message_id": reply_to})()


class _SlowGrid:
    """Replies to message i after i+1 pulls."""

    def __init__(self) -> None:
        self.pulls = 0

    def push_messages(self, messages):
        return [f"m{i}" for i, _ in enumerate(messages)]

    def pull_messages(self, ids):
        self.pulls += 1
        return [_Msg(i) for i in sorted(ids) if int(i[1:]) < self.pulls]


def test_prompt_grid_collects_every_reply_quickly_and_honours_timeout() -> None:
    inner = _SlowGrid()
    grid = PromptGrid(inner, interval=0.01)  # type: ignore[arg-type]
    start = time.monotonic()
    replies = list(grid.send_and_receive(["a", "b", "c"]))
    assert sorted(r.metadata.reply_to_message_id for r in replies) == ["m0", "m1", "m2"]
    assert time.monotonic() - start < 1.0 and inner.pulls == 3
    never = PromptGrid(type("G", (), {"push_messages": lambda s, m: ["x"], "pull_messages": lambda s, i: []})(),
                       interval=0.01)  # type: ignore[arg-type]
    start = time.monotonic()
    assert list(never.send_and_receive(["a"], timeout=0.2)) == []
    assert 0.2 <= time.monotonic() - start < 1.0


def test_object_pulls_retry_promptly_in_the_three_flower_modules(monkeypatch) -> None:
    import flwr.supernode.runtime.run_clientapp as clientapp_runtime
    from flwr.supercore.inflatable import inflatable_utils

    from fedshield.flower_ext import app_executor, serverapp
    from fedshield.flower_ext.prompt_pulls import INITIAL_BACKOFF_S

    # Flower binds a 1 s initial backoff as a default argument: the reason for the wrapper
    assert inspect.signature(inflatable_utils.pull_objects).parameters["initial_backoff"].default == 1
    wrapped = ((http_grid, "pull_objects"), (supernode_loop, "pull_objects"),
               (clientapp_runtime, "pull_and_inflate_object_from_tree"))
    for module, name in (*wrapped, (supernode_loop, "time"), (supernode_loop, "_pull_and_store_message")):
        monkeypatch.setattr(module, name, getattr(module, name))  # restored after the test
    serverapp.install()  # what the ServerApp's, the executor's and the SuperNode's main() install
    app_executor.install()
    patch_supernode_polling()
    for module, name in wrapped:
        fn = getattr(module, name)
        assert getattr(fn, "_fedshield_prompt", False), (module.__name__, name)
        assert fn.__wrapped__ in (inflatable_utils.pull_objects, inflatable_utils.pull_and_inflate_object_from_tree)
    assert INITIAL_BACKOFF_S < 0.1
