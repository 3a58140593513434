"""The local-isolation adaptations fail closed: a SuperExec that would put a task token on a command line, or runs
without the SuperExec auth secret, and a warm executor without the secret, do not start; the ServerApp reads its
token from stdin only."""

from __future__ import annotations

import io
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env
from fedshield.common.errors import ConfigError
from fedshield.common.local_secret import LocalSecret, remove_orphans
from fedshield.flower_ext import superexec
from fedshield.flower_ext.serverapp_main import read_token
from fedshield.flower_ext.version_check import FlowerHookMissing


@pytest.fixture()
def flower_launch(monkeypatch: pytest.MonkeyPatch) -> type:
    """Flower's SubprocessExecutor, its ``launch`` restored after the test."""
    from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor

    monkeypatch.setattr(SubprocessExecutor, "launch", SubprocessExecutor.launch)
    return SubprocessExecutor


def test_the_superexec_starts_serverapps_with_the_token_on_stdin_only(
        flower_launch: type, monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.constant import TaskType
    from flwr.supercore.superexec.executor.types import ExecutionSpec, LaunchResultStatus

    superexec.install()
    started: list[tuple[list[str], bytes]] = []

    class Recorder:
        def __init__(self, args: list[str], **kwargs: object) -> None:
            assert kwargs["stdin"] == subprocess.PIPE
            self.args, self.stdin = args, io.BytesIO()
            self.stdin.close = lambda: started.append((self.args, self.stdin.getvalue()))  # type: ignore[method-assign]

    monkeypatch.setattr(superexec.subprocess, "Popen", Recorder)
    token = "ab" * 128
    spec = dict(runtime_api_address="127.0.0.1:9", token=token, insecure=False, root_certificates_path="/ca.crt",
                runtime_dependency_install=False, parent_pid=7, suppress_output=False, task_id=1)
    result = flower_launch().launch(ExecutionSpec(task_type=TaskType.SERVER_APP, **spec))
    assert result.status == LaunchResultStatus.ACCEPTED
    [(args, stdin)] = started
    assert args[1:3] == ["-m", superexec.SERVERAPP_ENTRY] and token not in " ".join(args)
    assert args[args.index("--root-certificates") + 1] == "/ca.crt" and stdin == token.encode() + b"\n"
    # the coordinator runs ServerApps only: a ClientApp task is refused, nothing started
    refused = flower_launch().launch(ExecutionSpec(task_type=TaskType.CLIENT_APP, **spec))
    assert refused.status == LaunchResultStatus.FAILED and len(started) == 1


def test_the_superexec_refuses_a_flower_whose_factory_builds_another_executor(
        flower_launch: type, monkeypatch: pytest.MonkeyPatch) -> None:
    import flwr.supercore.superexec.run_superexec as loop

    class NewExecutor:  # a Flower release that launches through another class
        def launch(self, spec: object) -> None: ...

    monkeypatch.setattr(loop, "get_executor", lambda *args, **kwargs: NewExecutor())
    with pytest.raises(superexec.TokenLaunchNotAdapted, match="NewExecutor"):
        superexec.install()


def test_the_superexec_refuses_a_flower_without_its_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    from flwr.supercore.superexec.executor import subprocess_executor

    monkeypatch.delattr(subprocess_executor, "SubprocessExecutor")
    with pytest.raises(FlowerHookMissing, match="SubprocessExecutor"):
        superexec.install()


def _run(module: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", module, *args], env=cli_env(), capture_output=True, text=True,
                          timeout=120, stdin=subprocess.DEVNULL, check=False)


def test_a_superexec_without_the_secret_and_an_executor_without_it_do_not_start() -> None:
    proc = _run("fedshield.flower_ext.superexec_main", "--insecure", "--runtime-api-address", "127.0.0.1:9")
    assert proc.returncode == 2 and "--superexec-auth-secret-file" in proc.stderr.strip().splitlines()[-1]
    assert "Starting Flower SuperExec" not in proc.stderr + proc.stdout
    proc = _run("fedshield.flower_ext.app_executor_main", "--runtime-api-address", "127.0.0.1:9")
    assert proc.returncode == 2 and "--superexec-auth-secret-file" in proc.stderr


def test_the_serverapp_takes_one_line_of_hex_from_stdin_and_nothing_else() -> None:
    assert read_token(io.BytesIO(b"0123abcd" * 8 + b"\n")) == "0123abcd" * 8
    for bad in (b"", b"\n", b"not hex at all\n", b"ab" * 200 + b"\n"):
        with pytest.raises(ConfigError, match="stdin"):
            read_token(io.BytesIO(bad))


def test_a_local_secret_is_0600_alone_in_a_0700_folder_and_removed_whole() -> None:
    secret, other = LocalSecret.create("test"), LocalSecret.create("test")
    try:
        assert stat.S_IMODE(secret.path.stat().st_mode) == 0o600 and len(secret.path.read_bytes()) == 32
        assert stat.S_IMODE(secret.path.parent.stat().st_mode) == 0o700
        assert list(secret.path.parent.iterdir()) == [secret.path]
        assert other.path.parent != secret.path.parent and other.path.read_bytes() != secret.path.read_bytes()
    finally:
        secret.remove()
        other.remove()
    assert not Path(secret.path.parent).exists()


def test_a_secret_folder_left_by_a_killed_process_is_removed_by_the_next_one(tmp_path: Path) -> None:
    """SIGKILL leaves the folder behind; the next secret of its kind removes it, never a live process's."""
    import subprocess
    import sys

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    dead_pid = int(gone.stdout)
    orphan = tmp_path / f"fedshield-supernode-{dead_pid}-abc"
    live = tmp_path / f"fedshield-supernode-{os.getpid()}-def"
    other_kind = tmp_path / f"fedshield-superlink-{dead_pid}-ghi"
    unexpected = tmp_path / f"fedshield-supernode-{dead_pid}-jkl"
    for folder in (orphan, live, other_kind, unexpected):
        folder.mkdir(mode=0o700)
        (folder / "superexec-auth.secret").write_bytes(b"x" * 32)
    (unexpected / "notes.txt").write_text("not ours to delete")
    assert remove_orphans("supernode", tmp_path) == [orphan]
    assert not orphan.exists() and live.exists() and other_kind.exists() and unexpected.exists()
