"""The warm executor runs only FedShield's installed ClientApp, never code a run names instead."""

from __future__ import annotations

import io
import zipfile

from fedshield.flower_ext.app_executor import ALLOWED_CLIENTAPP, fab_clientapp


def _fab(pyproject: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", pyproject)
    return buffer.getvalue()


def test_reads_the_clientapp_a_fab_names() -> None:
    ours = _fab('[tool.flwr.app.components]\nclientapp = "fedshield.client.client_app:app"\nserverapp = "x:y"\n')
    assert fab_clientapp(ours) == ALLOWED_CLIENTAPP
    other = _fab('[tool.flwr.app.components]\nclientapp = "evil.steal:app"\n')
    assert fab_clientapp(other) == "evil.steal:app" != ALLOWED_CLIENTAPP


def test_malformed_fabs_name_nothing() -> None:
    assert fab_clientapp(b"not a zip") is None
    assert fab_clientapp(_fab("not = [valid")) is None
    assert fab_clientapp(_fab("[project]\nname = 'x'\n")) is None


_RETIRED_TOKEN_PROBE = r"""
import http.server, json, signal, sys, threading
from flwr.proto.runtime_pb2 import SendTaskHeartbeatRequest
from flwr.supercore.retry import make_simple_http_retry_invoker
from fedshield.flower_ext import app_executor

class Retired(http.server.BaseHTTPRequestHandler):  # the SuperNode's answer to a retired task token
    def do_POST(self):
        self.rfile.read(int(self.headers.get("Content-Length", 0)))
        body = b'{"code": 1008, "message": "Runtime task-token authentication failed."}'
        self.send_response(401); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Retired)
threading.Thread(target=server.serve_forever, daemon=True).start()
interrupted = []
signal.signal(signal.SIGINT, lambda *_: interrupted.append(True))
invoker = app_executor.task_retry_invoker() if sys.argv[1] == "task" else make_simple_http_retry_invoker()
client = app_executor._client(f"127.0.0.1:{server.server_address[1]}", [], invoker)
try:
    client.SendTaskHeartbeat(SendTaskHeartbeatRequest())
    outcome = "answered"
except Exception as exc:
    outcome = type(exc).__name__
print(json.dumps({"outcome": outcome, "interrupted": bool(interrupted)}))
"""


def test_a_retired_task_token_fails_the_call_and_leaves_the_executor_running() -> None:
    """A heartbeat of a finished task meets a retired token (HTTP 401): the call fails, the process lives on.

    Flower's invoker sends SIGINT to its own process on a 401 (right for flwr-clientapp, a process per task);
    in the warm executor that stopped every later task of the site, and the site missed the round.
    """
    import json
    import subprocess
    import sys

    def probe(kind: str) -> dict[str, object]:
        proc = subprocess.run([sys.executable, "-c", _RETIRED_TOKEN_PROBE, kind], capture_output=True, text=True,
                              timeout=60, check=False)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(proc.stdout.strip().splitlines()[-1])

    assert probe("task") == {"outcome": "HTTPStatusError", "interrupted": False}
    assert probe("flower")["interrupted"] is True  # what the executor's task calls used before
