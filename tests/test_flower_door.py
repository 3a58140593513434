"""The door to Flower's internals (flower_ext/): version-checked, installed from main() only, and the control
guard fails closed: without its hook point, or in an app Flower built without it, the SuperLink does not start."""

from __future__ import annotations

import ast
import importlib
import os
import re
import subprocess
import sys
import tomllib
import warnings
from pathlib import Path

import flwr.superlink.main as superlink_main
import pytest

from fedshield.common.errors import FedShieldError
from fedshield.common.net import free_port
from fedshield.flower_ext import ALLOW_VERSION_ENV, FLOWER_VERSION, version_check
from fedshield.flower_ext.control_guard import TOKEN_ENV
from fedshield.flower_ext.network_limits import NetworkLimits
from fedshield.flower_ext.version_check import FlowerHookMissing, FlowerVersionError, check_flower_version

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "t" * 43
OTHER = "1.99.0"  # a Flower release the door was not written for


def _door_installs() -> dict[str, object]:
    from fedshield.flower_ext import (
        app_executor,
        flower_cli,
        secagg,
        serverapp,
        simulation_engine,
        superexec,
        superlink,
        supernode,
    )

    return {"SuperLink": lambda: superlink.install(TOKEN), "SuperNode": supernode.install,
            "app executor": app_executor.install, "ServerApp": serverapp.install,
            "simulation engine": simulation_engine.install, "flwr CLI": flower_cli.install,
            "SecAgg+": secagg.install, "SuperExec": superexec.install}


@pytest.fixture()
def other_flower(monkeypatch: pytest.MonkeyPatch) -> None:
    """The installed Flower is :data:`OTHER`, not the door's."""
    monkeypatch.setattr(version_check, "installed_flower_version", lambda: OTHER)
    monkeypatch.delenv(ALLOW_VERSION_ENV, raising=False)
    from fedshield.flower_ext import secagg

    monkeypatch.setattr(secagg, "_installed", False)


def _restore_superlink_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    """Whatever a test installs into Flower's SuperLink modules is undone after it."""
    from fedshield.flower_ext.task_start_window import STATE_MODULES

    for name in ("_get_middleware", "create_app"):
        monkeypatch.setattr(superlink_main, name, getattr(superlink_main, name))
    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    monkeypatch.setattr(cli, "uvicorn", cli.uvicorn)
    for module in map(importlib.import_module, STATE_MODULES):
        for name in ("HEARTBEAT_DEFAULT_INTERVAL", "HEARTBEAT_PATIENCE"):
            monkeypatch.setattr(module, name, getattr(module, name))


@pytest.mark.parametrize("process", list(_door_installs()))
def test_every_door_refuses_another_flower_in_one_line_naming_both_versions_and_the_override(
        other_flower: None, process: str) -> None:
    with pytest.raises(FlowerVersionError) as refused:
        _door_installs()[process]()  # refused before anything is rebound
    message = str(refused.value)
    assert "\n" not in message and process in message
    assert f"written for flwr {FLOWER_VERSION}" in message and f"flwr {OTHER} is installed" in message
    assert f"{ALLOW_VERSION_ENV}={OTHER}" in message


def test_the_override_admits_exactly_the_flower_it_names_and_says_so_loudly(
        other_flower: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    from fedshield.flower_ext import superlink

    _restore_superlink_hooks(monkeypatch)
    monkeypatch.setenv(ALLOW_VERSION_ENV, "1.98.0")  # not the installed one
    with pytest.raises(FlowerVersionError):
        superlink.install(TOKEN)
    monkeypatch.setenv(ALLOW_VERSION_ENV, OTHER)
    monkeypatch.setattr(version_check, "_announced", set())
    superlink.install(TOKEN)  # adapted, hooks checked, as on the Flower it was written for
    check_flower_version("SuperLink")  # said once per process and process kind
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "WARNING" in warning[0]
    assert FLOWER_VERSION in warning[0] and f"{ALLOW_VERSION_ENV}={OTHER}" in warning[0]


def test_a_process_entry_on_another_flower_exits_with_one_line(
        other_flower: None, capsys: pytest.CaptureFixture[str]) -> None:
    from fedshield.flower_ext import superlink_main

    with pytest.raises(SystemExit) as ended:
        superlink_main.main()
    assert ended.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("FedShield: SuperLink:") and ALLOW_VERSION_ENV in lines[0]


def test_pyproject_pins_the_flower_the_door_was_written_for() -> None:
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert f"flwr[simulation]=={FLOWER_VERSION}" in dependencies


def test_the_superlink_refuses_to_start_when_the_guards_hook_point_is_gone(tmp_path: Path) -> None:
    # A Flower without flwr.superlink.main._get_middleware (renamed, say): the guard cannot be installed,
    # and the SuperLink process ends before it listens, with one line, instead of serving open.
    token = tmp_path / "control.token"
    token.write_text(TOKEN)
    port = free_port()
    script = ("import sys, flwr.superlink.main as m; del m._get_middleware; "
              "from fedshield.flower_ext.superlink_main import main; "
              f"sys.argv = ['superlink', '--insecure', '--port', '{port}', '--database', ':flwr-in-memory:']; main()")
    from conftest import cli_env

    proc = subprocess.run([sys.executable, "-c", script], env={**cli_env(), TOKEN_ENV: str(token)},
                          capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 2, proc.stderr[-2000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("FedShield: ") and "flwr.superlink.main._get_middleware" in last
    assert "Starting Flower SuperLink" not in proc.stderr + proc.stdout


def test_the_guard_refuses_a_flower_that_no_longer_calls_its_hook(monkeypatch: pytest.MonkeyPatch) -> None:
    _restore_superlink_hooks(monkeypatch)
    from fedshield.flower_ext import superlink

    def create_app_elsewhere(*args, **kwargs):  # type: ignore[no-untyped-def]  # builds its list another way
        raise AssertionError("never called")

    monkeypatch.setattr(superlink_main, "create_app", create_app_elsewhere)
    with pytest.raises(FlowerHookMissing, match="no longer looks up _get_middleware"):
        superlink.install(TOKEN)


def test_an_app_flower_builds_without_the_guard_is_never_served(monkeypatch: pytest.MonkeyPatch) -> None:
    _restore_superlink_hooks(monkeypatch)
    from fedshield.flower_ext import superlink

    flower_list = superlink_main._get_middleware  # pylint: disable=protected-access
    superlink.install(TOKEN)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        guarded = superlink_main.create_app()  # the app Flower builds with the guard: checked and returned
        assert [m.cls.__name__ for m in guarded.user_middleware[:2]] == ["BodyLimit", "CoordinatorOnly"]
        # a Flower that takes its list from elsewhere than the rebound name builds an unguarded app
        monkeypatch.setattr(superlink_main, "_get_middleware", flower_list)
        with pytest.raises(superlink.GuardNotActive) as refused:
            superlink_main.create_app()
    assert isinstance(refused.value, FedShieldError) and "does not start" in str(refused.value)


def test_the_network_limits_refuse_a_flower_that_no_longer_serves_through_uvicorn_run(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # Security code: a Flower that starts its server another way would serve with no size or idle limit.
    from fedshield.flower_ext import connection_limits

    _restore_superlink_hooks(monkeypatch)
    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    monkeypatch.setattr(cli, "_run_superlink_http_api", lambda lifespan_config: None)  # serves elsewhere
    with pytest.raises(FlowerHookMissing, match="no longer looks up uvicorn"):
        connection_limits.install(NetworkLimits(8 * 2**20))


def test_an_app_without_the_size_limit_or_a_flower_that_sets_the_limits_itself_is_never_served(
        monkeypatch: pytest.MonkeyPatch) -> None:
    from fedshield.flower_ext import connection_limits, superlink

    _restore_superlink_hooks(monkeypatch)
    served: list[dict[str, object]] = []
    cli = importlib.import_module("flwr.superlink.cli.flower_superlink")
    monkeypatch.setattr(cli, "uvicorn", type("FakeUvicorn", (), {"run": staticmethod(
        lambda app, **kwargs: served.append(kwargs))}))
    flower_list = superlink_main._get_middleware  # pylint: disable=protected-access
    superlink.install(TOKEN, limits=NetworkLimits(8 * 2**20, 3.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        bounded = superlink_main.create_app()
        cli.uvicorn.run(bounded, host="127.0.0.1", port=1)
        assert served[0]["http"] is connection_limits.IdleClosingProtocol and served[0]["timeout_keep_alive"] == 3.0
        with pytest.raises(connection_limits.LimitsNotActive, match="sets uvicorn's loop itself"):
            cli.uvicorn.run(bounded, loop="asyncio")
        monkeypatch.setattr(superlink_main, "_get_middleware", flower_list)
        superlink.install_middleware(TOKEN, hold_s=0.0)  # no limits: an app without the size limit
        with pytest.raises(connection_limits.LimitsNotActive, match="lacks FedShield's request size limit"):
            cli.uvicorn.run(superlink_main.create_app())
    assert len(served) == 1


@pytest.mark.slow
def test_fl_server_stops_a_superlink_that_serves_without_its_guard(tmp_path: Path) -> None:
    from fedshield.common.flower_env import flower_executable
    from fedshield.server.superlink import SuperLink, SuperLinkStartError

    class UnguardedSuperLink(SuperLink):
        """Flower's own flower-superlink where FedShield's entry point belongs (a guard that never got in)."""

        def command(self) -> list[str]:
            return [flower_executable("flower-superlink"), *super().command()[3:]]

    token = tmp_path / "control.token"
    token.write_text(TOKEN)
    link = UnguardedSuperLink(host="127.0.0.1", port=free_port(), state_db=None, log_path=tmp_path / "sl.log",
                              tls=None, control_token=token)
    with pytest.raises(SuperLinkStartError, match="not guarded"):
        link.start()
    assert link.process is not None and link.process.poll() is not None  # stopped, not left serving


def test_secagg_refuses_a_flower_whose_mod_no_longer_calls_the_mask_prg(monkeypatch: pytest.MonkeyPatch) -> None:
    # Security code: masks from Flower's 32-bit-seeded PRG must never go out because a rebinding stopped working.
    from fedshield.flower_ext import secagg

    mod = importlib.import_module(secagg.CLIENT_MOD)
    for name, value in vars(mod).items():
        if callable(value) and getattr(value, "__module__", None) == mod.__name__:
            monkeypatch.setattr(mod, name, value)  # restored after the test
    monkeypatch.delattr(mod, "_collect_masked_vectors")  # the one function that expands masks
    monkeypatch.setattr(secagg, "_installed", False)
    with pytest.raises(FlowerHookMissing, match="no longer looks up pseudo_rand_gen"):
        secagg.install()


def test_secagg_refuses_a_workflow_that_no_longer_reads_the_share_count_fedshield_sets(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # An even share count that silently reached Flower again would fail every site in every SecAgg+ round.
    from flwr.server.workflow import SecAggPlusWorkflow

    from fedshield.flower_ext.secagg_workflow import FedShieldSecAggPlus

    def build() -> FedShieldSecAggPlus:
        return FedShieldSecAggPlus(shares=4, threshold_fraction=0.5, sampled_sites=lambda context: 10,
                                   max_weight=100.0, timeout=None)

    assert build().requested_shares == 4  # Flower 1.42 as it is
    monkeypatch.setattr(SecAggPlusWorkflow, "setup_stage", lambda self, grid, context, state: True)
    with pytest.raises(FlowerHookMissing, match="no longer reads num_shares, modulus_range in setup_stage"):
        build()


def test_nothing_is_rebound_in_flower_by_importing_fedshield() -> None:
    # install() runs from a process's main(), never on import: importing every module leaves Flower as it is.
    modules = sorted(f"fedshield.flower_ext.{p.stem}" for p in (ROOT / "flower_ext").glob("*.py"))
    script = f"""
import importlib, time
for name in {modules!r} + ["fedshield.client.client_app", "fedshield.server.server_app",
                           "fedshield.simulations.runner", "fedshield.server.run_status_probe"]:
    importlib.import_module(name)
import flwr.superlink.main as superlink_main, flwr.supernode.main as supernode_app
import flwr.supernode.start_client_internal as loop, flwr.cli.utils as cli_utils
from flwr.server.superlink.fleet.vce import vce_api
from flwr.superlink.grid import http_grid
mod = importlib.import_module("flwr.client.mod.secure_aggregation.secaggplus_mod")
assert superlink_main._get_middleware.__module__ == "flwr.superlink.main"
assert superlink_main.create_app.__module__ == "flwr.superlink.main"
assert all(getattr(supernode_app, n).__module__.startswith("flwr.") for n in {("RuntimeTracingMiddleware",)!r}
           if hasattr(supernode_app, n))
assert loop.time is time and loop._pull_and_store_message.__module__ == loop.__name__
assert not hasattr(http_grid.pull_objects, "_fedshield_prompt")
assert mod.pseudo_rand_gen.__module__.startswith("flwr.")
assert not getattr(vce_api.add_messages_to_queue, "fedshield_patch", False)
assert cli_utils.load_cli_auth_plugin_from_connection.__module__ == "flwr.cli.utils"
from flwr.supercore.superexec.executor.subprocess_executor import SubprocessExecutor
assert SubprocessExecutor.launch.__module__.startswith("flwr.")
"""
    from conftest import cli_env

    proc = subprocess.run([sys.executable, "-c", script], env=cli_env(), capture_output=True, text=True,
                          timeout=300, stdin=subprocess.DEVNULL, check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]


# Flower's runtime and wire modules, and submodules its packages do not export: only the door imports them.
PRIVATE = re.compile(r"flwr\.(superlink|supernode|superexec|supercore|cli|server\.superlink|proto)(\.|$)"
                     r"|flwr\.compat\.common\.|flwr\.server\.workflow\.\w+|flwr\.client\.mod\.\w+\.|flwr(\.\w+)*\._"
                     # submodules whose names their packages do not export (the door re-exports them)
                     r"|flwr\.server\.(client_proxy|client_manager|criterion)$|flwr\.common\.constant$|flwr\.\w+\.typing$"
                     r"|flwr\.app\.error$"
                     # the 1.x client API a site answers legacy strategies with (legacy_api names it)
                     r"|flwr\.client(\.mod)?$")


@pytest.mark.parametrize("module", ["fedshield.server.server_app", "fedshield.client.client_app"])
def test_the_apps_switch_flowers_telemetry_off_before_flower_reads_it(module: str) -> None:
    """Flower reads FLWR_TELEMETRY_ENABLED once, when its telemetry module is first imported; each app module
    sets it before its first Flower import, so a process whose environment lacks it still sends nothing.
    (server_app once imported a door module, and Flower with it, before that line: telemetry stayed on.)"""
    env = {k: v for k, v in os.environ.items() if k not in ("FLWR_TELEMETRY_ENABLED", "FLWR_DISABLE_UPDATE_CHECK")}
    probe = f"import {module}, flwr.supercore.telemetry as t; print(t.FLWR_TELEMETRY_ENABLED)"
    proc = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip().splitlines()[-1] == "0"


def test_only_the_door_imports_flowers_runtime_modules() -> None:
    offenders = []
    for package in ("common", "tasks", "client", "server", "strategies", "simulations"):
        for path in sorted((ROOT / package).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
                names = []
                if isinstance(node, ast.Import):
                    names = [alias.name for alias in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                    names = [node.value] if re.fullmatch(r"flwr(\.\w+)+", node.value) else []
                offenders += [f"{path.relative_to(ROOT)}:{node.lineno} {n}" for n in names if PRIVATE.match(n)]
    assert offenders == []
