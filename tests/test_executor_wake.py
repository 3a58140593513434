"""The SuperNode wakes its warm executor when a message is stored, instead of the executor polling for it."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import flwr.supernode.start_client_internal as supernode_loop
import pytest

from fedshield.client import supernode
from fedshield.flower_ext import supernode as supernode_door
from fedshield.flower_ext.executor_wake import WAKE_FD_ENV, WakeNotifier, WakeWaiter, wake_pair


def test_a_notification_wakes_the_waiter_and_is_consumed() -> None:
    notify_end, wait_end = wake_pair()
    notifier, waiter = WakeNotifier(notify_end), WakeWaiter(wait_end)
    assert waiter.wait(0.05) is False  # nothing sent: a plain timeout
    for _ in range(3):
        notifier.notify()
    assert waiter.wait(30) is True  # woken (a timeout would have returned False)
    assert waiter.wait(0.05) is False  # the three bytes were consumed together
    notify_end.close()
    wait_end.close()


def test_notifying_never_blocks_or_raises_when_the_executor_lags_or_is_gone() -> None:
    notify_end, wait_end = wake_pair()
    notifier = WakeNotifier(notify_end)
    for _ in range(10_000):  # far beyond the socket buffer: later bytes are dropped, not waited on
        notifier.notify()
    assert WakeWaiter(wait_end).wait(1) is True
    wait_end.close()
    notifier.notify()  # the executor's end is closed
    notify_end.close()


def test_the_supernode_end_comes_from_the_environment_only_when_it_is_a_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(WAKE_FD_ENV, raising=False)
    assert WakeNotifier.from_env() is None
    read_fd, write_fd = os.pipe()
    try:
        monkeypatch.setenv(WAKE_FD_ENV, str(read_fd))  # not a socket: ignored, the executor polls
        assert WakeNotifier.from_env() is None
    finally:
        os.close(read_fd)
        os.close(write_fd)


def test_the_supernode_loop_wakes_the_executor_after_storing_a_message(monkeypatch: pytest.MonkeyPatch) -> None:
    notify_end, wait_end = wake_pair()
    waiter = WakeWaiter(wait_end)
    results = iter([None, None, 7, None])
    monkeypatch.setenv(WAKE_FD_ENV, str(notify_end.fileno()))
    monkeypatch.setattr(supernode_loop, "_pull_and_store_message", lambda **kw: next(results))
    monkeypatch.setattr(supernode_loop, "time", supernode_loop.time)  # restored after the test
    supernode_door.patch_supernode_polling()
    pull = supernode_loop._pull_and_store_message
    backoff = supernode_loop.time._backoff
    assert pull() is None and waiter.wait(0.05) is False  # no message: the executor sleeps on
    backoff.wait()
    backoff.wait()
    assert backoff.interval > supernode_door.IDLE_PULL_S
    assert pull() is None and pull() == 7
    assert waiter.wait(5) is True  # the stored message woke it
    assert backoff.interval == supernode_door.IDLE_PULL_S  # and the next idle pull comes soon
    assert pull() is None and waiter.wait(0.05) is False
    wait_end.close()


def test_idle_pulls_back_off_to_the_cap(monkeypatch: pytest.MonkeyPatch) -> None:
    slept: list[float] = []
    monkeypatch.setattr(supernode_door, "_time", SimpleNamespace(sleep=slept.append))
    backoff = supernode_door.IdleBackoff()
    for _ in range(12):
        backoff.wait()
    assert slept[0] == supernode_door.IDLE_PULL_S
    assert slept == sorted(slept) and slept[-1] == supernode_door.IDLE_PULL_CAP_S <= 3.0  # never above Flower's


def test_a_site_hands_its_supernode_and_executor_the_two_ends(monkeypatch: pytest.MonkeyPatch, tmp_path) -> None:
    started: list[tuple[list[str], dict]] = []

    class Recorder:
        def __init__(self, args, **kwargs):
            started.append((args, kwargs))
            self.pid = 4242

    monkeypatch.setattr(supernode.subprocess, "Popen", Recorder)
    node = supernode.SuperNode(superlink="127.0.0.1:1", local_port=2, node_config={}, log_path=tmp_path / "s.log",
                               root_certificates=None)
    node.start()
    (node_args, node_kw), (exec_args, exec_kw) = started
    assert node_args[:3] == [sys.executable, "-m", "fedshield.flower_ext.supernode_main"]
    assert node_kw["pass_fds"] == (int(node_kw["env"][WAKE_FD_ENV]),)
    assert "fedshield.flower_ext.app_executor_main" in exec_args
    assert exec_kw["pass_fds"] == (int(exec_args[exec_args.index("--wake-fd") + 1]),)
    assert WAKE_FD_ENV not in exec_kw["env"]
    assert node.secret is not None  # both ends get the path of the same SuperExec auth secret, never its value
    secret = str(node.secret.path)
    flag = "--superexec-auth-secret-file"
    assert node_args[node_args.index(flag) + 1] == secret == exec_args[exec_args.index(flag) + 1]
    node.secret.remove()


@contextlib.contextmanager
def _serving(executor: Any) -> Iterator[WakeNotifier]:
    """``app_executor.serve`` in a thread with a wake-up pair; yields the SuperNode's end; stops it after."""
    import threading

    notify_end, wait_end = wake_pair()
    stop = threading.Event()
    worker = threading.Thread(target=executor.serve, args=("127.0.0.1:1", stop, WakeWaiter(wait_end)), daemon=True)
    worker.start()
    try:
        yield WakeNotifier(notify_end)
    finally:
        stop.set()
        WakeNotifier(notify_end).notify()
        worker.join(60)
        notify_end.close()
        wait_end.close()
    assert not worker.is_alive()


def test_an_idle_executor_polls_again_as_soon_as_it_is_woken(monkeypatch: pytest.MonkeyPatch) -> None:
    import threading

    from fedshield.flower_ext import app_executor

    polls: list[float] = []
    polled = threading.Event()

    class Runtime:  # the SuperNode's Runtime API as the executor sees it: never a task
        def AcquireTask(self, request):  # noqa: N802 - Flower's name
            polls.append(1.0)
            polled.set()
            return SimpleNamespace(HasField=lambda name: False, token="")

        def close(self) -> None:
            pass

    monkeypatch.setattr(app_executor, "_client", lambda address, interceptors: Runtime())
    monkeypatch.setattr(app_executor, "IDLE_POLL_S", 600.0)  # without the wake-up, no second poll for 10 min
    monkeypatch.setattr(app_executor, "IDLE_POLL_CAP_S", 600.0)
    with _serving(app_executor) as wake:
        assert polled.wait(60) and len(polls) == 1
        polled.clear()
        wake.notify()
        assert polled.wait(60) and len(polls) == 2  # the stored message's task is asked for at once


def test_a_pull_the_superlink_held_is_followed_by_the_shortest_pause(monkeypatch: pytest.MonkeyPatch) -> None:
    # flower_ext/held_pulls.py answers an empty pull after up to 2 s: the SuperLink paces the polls then
    clock = iter([0.0, supernode_door.HELD_PULL_S + 0.5, 10.0, 10.01])
    monkeypatch.delenv(WAKE_FD_ENV, raising=False)
    monkeypatch.setattr(supernode_door, "_time", SimpleNamespace(monotonic=lambda: next(clock)))
    monkeypatch.setattr(supernode_loop, "_pull_and_store_message", lambda **kw: None)
    monkeypatch.setattr(supernode_loop, "time", supernode_loop.time)  # restored after the test
    supernode_door.patch_supernode_polling()
    pull, backoff = supernode_loop._pull_and_store_message, supernode_loop.time._backoff
    backoff.grow()
    backoff.grow()
    assert pull() is None and backoff.interval == supernode_door.IDLE_PULL_S  # held: next pull soon
    backoff.grow()
    assert pull() is None and backoff.interval > supernode_door.IDLE_PULL_S  # answered at once: back off


def test_a_woken_executor_does_not_re_poll_after_a_task(monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    from fedshield.flower_ext import app_executor

    polls: list[float] = []
    tasks = iter([True])

    class Runtime:  # one task, then none
        def AcquireTask(self, request):  # noqa: N802 - Flower's name
            polls.append(time.monotonic())
            has = next(tasks, False)
            return SimpleNamespace(HasField=lambda name: has, token="t" if has else "", task=SimpleNamespace(task_id=1))

        def close(self) -> None:
            pass

    monkeypatch.setattr(app_executor, "_client", lambda address, interceptors: Runtime())
    monkeypatch.setattr(app_executor, "run_task", lambda address, token: None)
    monkeypatch.setattr(app_executor, "IDLE_POLL_CAP_S", 600.0)  # the fallback poll: not within this test
    with _serving(app_executor):
        deadline = time.monotonic() + 60
        while len(polls) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.5)
        assert len(polls) == 2  # the task, one look for a next one; then it waits for its SuperNode's wake-up
