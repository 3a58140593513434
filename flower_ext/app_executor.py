"""A warm executor for one site: runs the FedShield ClientApp in one long-lived process.

Flower's SuperExec starts a fresh ``flwr-clientapp`` process for every message a site receives; each
imports torch, Flower and Opacus again (~2.6 s of CPU on our 2-core machines) and reloads the site's
data, which dominated deployed round time (docs/performance.md, deployed rounds). Flower supports
running its executor outside the SuperNode (``flower-supernode --isolation process``); this module is
such an executor. It takes tasks from the SuperNode's Runtime API exactly as ``flower-superexec`` does
(``AcquireTask``) and runs each in this process with Flower's own helpers from
``flwr.supernode.runtime.run_clientapp`` (pull task input, push reply, push task output).

It differs from ``flwr-clientapp`` in two deliberate ways:

* the process stays, so imports and the site's loaded data (cached per process) are reused;
* no FAB is installed and no code from the server runs: the ClientApp is FedShield's installed one,
  and a run whose app names any other ClientApp is refused with an error reply.

Like ``flower-superexec --superexec-auth-secret-file``, it signs every ``AcquireTask`` with the site's
SuperExec auth secret (Flower's ``SuperExecAuthHttpInterceptor``), which the SuperNode is given too: the
SuperNode's local API hands the site's tasks to no other local process. Task tokens stay in this process.

:func:`install` adapts this process's Flower (prompt object pulls, SecAgg+); the process itself is
:mod:`fedshield.flower_ext.app_executor_main`, which ``fl-client join`` starts.
"""

from __future__ import annotations

import functools
import importlib
import io
import logging
import os
import threading
import time
import tomllib
import zipfile
from typing import Any

import flwr.supernode.runtime.run_clientapp as flower_clientapp
import httpx
from flwr.app import Message
from flwr.app.error import Error
from flwr.common.constant import ErrorCode, SubStatus
from flwr.proto.runtime_pb2 import AcquireTaskRequest  # pylint: disable=E0611
from flwr.supercore.constant import TaskType
from flwr.supercore.heartbeat import HeartbeatSender, make_task_heartbeat_fn_http
from flwr.supercore.interceptors import (
    RuntimeTokenHttpInterceptor,
    RuntimeVersionHttpInterceptor,
    SuperExecAuthHttpInterceptor,
)
from flwr.supercore.retry import make_simple_http_retry_invoker
from flwr.supercore.runtime import RuntimeHttpClient
from flwr.supernode.runtime.run_clientapp import pull_task_input, push_message, push_task_output

from fedshield.common.backoff import Backoff
from fedshield.flower_ext import prompt_pulls, secagg
from fedshield.flower_ext.executor_wake import WakeWaiter
from fedshield.flower_ext.version_check import (
    FLOWER_VERSION,
    FlowerHookMissing,
    check_flower_version,
    hook,
    installed_flower_version,
)

log = logging.getLogger("fedshield.flower_ext.app_executor")

ALLOWED_CLIENTAPP = "fedshield.client.client_app:app"
IDLE_POLL_S = 0.02  # first re-poll after a task; grows 1.5x while idle up to IDLE_POLL_CAP_S
# Started by `fl-client join`, the executor is woken by its SuperNode when a message arrives
# (flower_ext/executor_wake.py), so the idle poll is only a fallback: 2 s instead of 0.25 s.
IDLE_POLL_CAP_S = 2.0


def fab_clientapp(fab_content: bytes) -> str | None:
    """The ``clientapp`` component a FAB (zip) names in its ``pyproject.toml``, or None."""
    try:
        with zipfile.ZipFile(io.BytesIO(fab_content)) as archive:
            meta = tomllib.loads(archive.read("pyproject.toml").decode("utf-8"))
        return str(meta["tool"]["flwr"]["app"]["components"]["clientapp"])
    except (KeyError, ValueError, zipfile.BadZipFile, tomllib.TOMLDecodeError):
        return None


def install() -> None:
    """In the executor's process, before its first task: Flower's ClientApp runtime pulls a message's objects
    promptly (they may still be arriving at the SuperNode when the task starts), and SecAgg+ is the
    server's (:mod:`fedshield.flower_ext.secagg`)."""
    check_flower_version("app executor")
    import flwr.supercore.superexec.run_superexec as flower_superexec

    signed = hook(flower_superexec, "_SUPEREXEC_AUTH_METHODS",
                  "signs the executor's AcquireTask as Flower's SuperExec does")
    if set(signed) != {ACQUIRE_TASK}:
        raise FlowerHookMissing(f"flwr {installed_flower_version()}'s SuperExec signs {sorted(signed)}, FedShield's "
                                f"executor {ACQUIRE_TASK} only; install flwr=={FLOWER_VERSION}")
    prompt_pulls.install(flower_clientapp, "pull_and_inflate_object_from_tree")
    secagg.install()


@functools.cache
def clientapp() -> Any:
    """The one ClientApp this executor runs, :data:`ALLOWED_CLIENTAPP`, from the installed FedShield
    (loaded by its reference, as Flower loads ClientApps; imported once per process)."""
    module, _, attribute = ALLOWED_CLIENTAPP.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _client(address: str, interceptors: list, retry_invoker: Any = None) -> RuntimeHttpClient:
    return RuntimeHttpClient.from_server_address(server_address=address, insecure=True, root_certificates=None,
                                                 interceptors=interceptors,
                                                 retry_invoker=retry_invoker or make_simple_http_retry_invoker())


def task_retry_invoker() -> Any:
    """Flower's HTTP retry invoker for one task's Runtime API calls, except that a refused task token (HTTP 401)
    fails the call instead of sending SIGINT to this process.

    Flower's invoker is written for ``flwr-clientapp``, one process per task, where a retired token means the
    process is done, so it interrupts its own process. This executor serves every task of the site: a late
    heartbeat of a task whose reply was already pushed (its token retired by the SuperNode) stopped the whole
    executor, ``fl-client join`` restarted the site, and the site missed the rest of that round (seen in the
    container federation under load).
    """
    invoker = make_simple_http_retry_invoker()
    flowers_rule: Any = invoker.should_giveup

    def should_giveup(exc: Exception) -> bool:
        if isinstance(exc, httpx.HTTPStatusError) and exc.response.status_code == httpx.codes.UNAUTHORIZED:
            return True
        return bool(flowers_rule(exc))

    invoker.should_giveup = should_giveup
    return invoker


def run_task(address: str, token: str) -> None:
    """Execute one ClientApp task in this process (Flower's run_clientapp, minus process and FAB)."""
    client_app = clientapp()
    client = _client(address, [RuntimeVersionHttpInterceptor(component_name="flwr-clientapp"),
                               RuntimeTokenHttpInterceptor(token)], task_retry_invoker())
    heartbeat = HeartbeatSender(make_task_heartbeat_fn_http(client))
    context = None
    status, details = SubStatus.FAILED, "ClientApp task failed"
    try:
        heartbeat.start()
        t0 = time.perf_counter()
        message, context, run, fab = pull_task_input(client)
        log.info("pulled %s message in %.2f s", message.metadata.message_type, time.perf_counter() - t0)
        named = fab_clientapp(fab.content)
        if named != ALLOWED_CLIENTAPP:
            reason = (f"site refuses run {run.run_id}: it asks for ClientApp {named!r}; this site runs only "
                      f"{ALLOWED_CLIENTAPP}")
            log.warning(reason)
            reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
            details = reason
        else:
            try:
                reply = client_app(message=message, context=context)
                status, details = SubStatus.COMPLETED, ""
            except Exception as exc:  # reported to the server as Flower's ClientApp would
                log.exception("ClientApp raised")
                reason = f"{type(exc)}:<'{exc}'>"
                reply = Message(Error(code=ErrorCode.CLIENT_APP_RAISED_EXCEPTION, reason=reason), reply_to=message)
                details = reason
        if heartbeat.is_running:  # the task's work is done: no heartbeat may outlive its token
            heartbeat.stop()
        t0 = time.perf_counter()
        push_message(client, reply, context)
        log.info("pushed reply in %.2f s", time.perf_counter() - t0)
    finally:
        push_task_output(client=client, context=context, sub_status=status, details=details)
        if heartbeat.is_running:
            heartbeat.stop()
        client.close()


#: The Runtime API method a SuperNode given a SuperExec auth secret checks the signature of (Flower's SuperExec
#: signs exactly this set: ``flwr.supercore.superexec.run_superexec._SUPEREXEC_AUTH_METHODS``).
ACQUIRE_TASK = "/flwr.proto.Runtime/AcquireTask"


def serve(address: str, stop: threading.Event, wake: WakeWaiter | None = None, secret: bytes | None = None) -> None:
    """Acquire ClientApp tasks from the SuperNode and run them, until ``stop`` is set. Between polls,
    sleep until the SuperNode's wake-up (``wake``) or the idle interval, whichever is first. ``secret``: the
    SuperExec auth secret the SuperNode was given, signing every ``AcquireTask``."""
    interceptors: list = [RuntimeVersionHttpInterceptor(component_name="SuperExec")]
    if secret is not None:
        interceptors.append(SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods={ACQUIRE_TASK}))
    client = _client(address, interceptors)
    clientapp()  # import the app (torch, Opacus, the task registry) once, before the first task arrives

    # Woken by its SuperNode for every stored message, the executor needs no prompt re-polls after a
    # task: only the fallback poll every IDLE_POLL_CAP_S. (Short re-polls after each task were about
    # 12 requests per message to the SuperNode's Runtime API, the part of the SuperNode's CPU that
    # serving them took; docs/performance.md, transport security.) Without a wake-up, back off from IDLE_POLL_S.
    backoff = Backoff(IDLE_POLL_CAP_S if wake is not None else IDLE_POLL_S, IDLE_POLL_CAP_S)
    try:
        while not stop.is_set():
            res = client.AcquireTask(AcquireTaskRequest(supported_task_types=[TaskType.CLIENT_APP.value],
                                                        agentapp_fab_hashes=[]))
            if res.HasField("task") and res.token:
                started = time.perf_counter()
                try:
                    run_task(address, res.token)
                    log.info("task %s done in %.2f s", res.task.task_id, time.perf_counter() - started)
                except Exception:  # one broken task must not take the site down
                    log.exception("task %s failed", res.task.task_id)
                backoff.reset()  # the next message of a round usually follows soon
                continue
            if wake is not None and wake.wait(backoff.interval):
                continue  # a message was stored: take it now
            if wake is None:
                stop.wait(backoff.interval)
            backoff.grow()
    finally:
        client.close()


def exit_with_parent(parent_pid: int, interval: float = 0.5) -> None:
    """Exit this process as soon as ``parent_pid`` (the SuperNode) is gone.

    Flower's own monitor raises SIGINT, but a task poll blocked in Flower's HTTP retry loop (the
    SuperNode's port just vanished) would retry for ever; a site must not leave a process behind.
    """
    def watch() -> None:
        while True:
            time.sleep(interval)
            try:
                os.kill(parent_pid, 0)
            except ProcessLookupError:
                log.info("the SuperNode (pid %d) is gone; exiting", parent_pid)
                os._exit(0)
            except PermissionError:  # exists, owned by someone else
                continue

    threading.Thread(target=watch, daemon=True, name="parent-watch").start()


def serve_until_stopped(address: str, stop: threading.Event, wake: WakeWaiter | None = None,
                        secret: bytes | None = None) -> None:
    """:func:`serve`, started again whenever the SuperNode's Runtime API is not (yet) reachable."""
    while not stop.is_set():
        try:
            serve(address, stop, wake, secret)
        except Exception:  # the SuperNode's API not up yet, or restarting
            log.info("waiting for the SuperNode's Runtime API at %s", address)
            time.sleep(0.5)
