"""End a child process together with every process it started, detached sessions included.

Flower's SuperLink starts its SuperExec in a new session, and the SuperExec starts each ServerApp
process; killing the SuperLink's process group therefore misses both. When a SuperLink stops, the
SuperExec is ended by it, which orphans a running ServerApp; that ServerApp then retries the vanished
SuperLink for as long as its graceful SIGTERM path lasts (seconds when idle; one stopped mid-round on a
busy 20-site host was still running 10 minutes later). ``psutil`` finds the descendants across
sessions; they are snapshotted *before* the stop, since an orphan is no longer anybody's child
afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import psutil

# What is left of a tree once its leader is gone (a ServerApp whose SuperLink stopped) has nobody to
# report to: seconds it gets to end after SIGTERM before SIGKILL.
ORPHAN_GRACE_S = 2.0


def descendants(pid: int) -> list[psutil.Process]:
    """Every live process below ``pid`` (children, grandchildren, ...), or [] when ``pid`` is gone."""
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def end_processes(processes: list[psutil.Process], grace: float) -> None:
    """SIGTERM the processes still running, wait up to ``grace`` s, then SIGKILL the rest.

    ``psutil.Process`` checks the creation time before signalling, so a recycled pid is never hit.
    """
    alive = []
    for proc in processes:
        try:
            proc.terminate()
            alive.append(proc)
        except psutil.Error:  # already gone, or no longer ours
            continue
    _, still = psutil.wait_procs(alive, timeout=grace)
    for proc in still:
        try:
            proc.kill()
        except psutil.Error:
            continue
    psutil.wait_procs(still, timeout=5)


def stop_process_group(process: subprocess.Popen[bytes] | None, grace: float) -> None:
    """Terminate a child started with ``start_new_session=True`` and everything it started, including
    processes it detached into sessions of their own (:func:`descendants`)."""
    if process is None or process.poll() is not None:
        return
    # Flower's SuperLink starts its SuperExec (and so the ServerApp) in a session of its own: outside
    # the group. Snapshot the whole tree now; an orphaned ServerApp is nobody's child afterwards.
    detached = descendants(process.pid)
    try:
        os.killpg(process.pid, signal.SIGTERM)
    except ProcessLookupError:
        end_processes(detached, ORPHAN_GRACE_S)
        return
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        process.wait(timeout=5)
    # Children that outlived the leader (an app process) still belong to the group.
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    end_processes(detached, ORPHAN_GRACE_S)


def last_line(path: Path) -> str:
    """The last non-empty line of a log file (for one-line errors)."""
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return "(no log)"
    return lines[-1][:300] if lines else "(empty log)"
