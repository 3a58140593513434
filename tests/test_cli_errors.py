"""Bad input: one line naming what and where, exit code 2, nothing half-written."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import cli_env, run_cli
from fedshield.common.net import free_port


def _one_line_error(proc, *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    lines = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("error:")]
    # exactly one error line, the last thing printed (loud warnings such as --insecure may precede it)
    assert len(errors) == 1 and lines[-1] == errors[0], proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in errors[0], errors[0]


@pytest.mark.parametrize("cmd", [["fl-server"], ["fl-server", "start"], ["fl-server", "status"], ["fl-server", "init"],
                                 ["fl-server", "add-site"], ["fl-server", "revoke-site"], ["fl-client"],
                                 ["fl-client", "join"], ["fl-client", "privacy"], ["fl-sim"], ["fl-sim", "run"],
                                 ["fl-sim", "split"], ["fl-sim", "tasks"]])
def test_every_command_has_help(cmd: list[str]) -> None:
    proc = run_cli(*cmd, "--help")
    assert proc.returncode == 0 and "Usage" in proc.stdout


def test_join_bad_data_folders(tmp_path: Path, digits_sites: Path) -> None:
    _one_line_error(run_cli("fl-client", "join", "--data", str(tmp_path / "nope"), "--insecure"),
                    "--data", "does not exist")
    (tmp_path / "empty").mkdir()
    _one_line_error(run_cli("fl-client", "join", "--data", str(tmp_path / "empty"), "--insecure"), "is empty")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "data.csv").write_text("a,label\n1,0\n2,oops\n")
    _one_line_error(run_cli("fl-client", "join", "--data", str(tmp_path / "bad"), "--insecure", "--target", "label"),
                    "data.csv:3", "'oops'")
    _one_line_error(run_cli("fl-client", "join", "--data", str(digits_sites / "hospital_a"), "--insecure",
                            "--task", "nope"), "unknown task 'nope'")


def test_a_mistyped_data_folder_is_refused_before_torch_loads(tmp_path: Path) -> None:
    """`fl-client join` checks the folder before it imports torch (about 3 s on this machine's 2 cores)."""
    code = ("import sys\nfrom fedshield.client.cli import main\n"
            f"sys.argv = ['fl-client', 'join', '--insecure', '--data', {str(tmp_path / 'nope')!r}]\n"
            "try:\n    main()\nexcept SystemExit as exc:\n    print('exit', exc.code, 'torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=cli_env())
    assert proc.stdout.split() == ["exit", "2", "False"], proc.stdout + proc.stderr
    assert "does not exist" in proc.stderr


def test_join_requires_an_explicit_transport_choice(digits_sites: Path) -> None:
    _one_line_error(run_cli("fl-client", "join", "--data", str(digits_sites / "hospital_a")),
                    "--kit", "--insecure")


def test_join_unreachable_server_gives_up_in_bounded_time(digits_sites: Path, tmp_path: Path) -> None:
    port = free_port()
    proc = run_cli("fl-client", "join", "--data", str(digits_sites / "hospital_a"), "--server",
                   f"127.0.0.1:{port}", "--insecure", "--connect-timeout", "2", "--state-dir", str(tmp_path / "st"),
                   timeout=60)
    _one_line_error(proc, f"--server 127.0.0.1:{port}", "nothing answered within 2 s")


def test_server_start_bad_input(tmp_path: Path) -> None:
    _one_line_error(run_cli("fl-server", "start", "--task", "nope", "--insecure", "--run-dir", str(tmp_path / "r1")),
                    "unknown task 'nope'")
    _one_line_error(run_cli("fl-server", "start", "--run-dir", str(tmp_path / "r2")), "--dir", "--insecure")
    _one_line_error(run_cli("fl-server", "start", "--dir", str(tmp_path / "nofed"), "--run-dir", str(tmp_path / "r5")),
                    "no federation.toml", "fl-server init")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--strategy", "magic",
                            "--run-dir", str(tmp_path / "r3")),
                    "--strategy 'magic'")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--task", "tabular", "--model", "cnn", "--run-dir",
                            str(tmp_path / "r6")), "--model 'cnn': tabular models are auto, logistic, linear, mlp")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--epsilon", "8", "--run-dir", str(tmp_path / "r8")),
                    "--epsilon is each site's own setting", "fl-client join --epsilon")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--momentum", "1", "--run-dir", str(tmp_path / "r7")),
                    "--momentum must be in [0, 1)")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--secagg", "--strategy", "fedmedian", "--min-clients",
                            "3", "--run-dir", str(tmp_path / "r9")),
                    "--strategy fedmedian needs every site's update, which --secagg hides")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--max-update-norm", "0.5x", "--run-dir",
                            str(tmp_path / "r10")), "--max-update-norm '0.5x'")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--strategy", "krum", "--min-clients", "3",
                            "--run-dir", str(tmp_path / "r11")), "needs --min-clients of at least 5")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--max-message-mb", "-1", "--run-dir",
                            str(tmp_path / "r12")), "--max-message-mb", "positive")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--idle-timeout", "0", "--run-dir",
                            str(tmp_path / "r13")), "--idle-timeout", "positive")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--max-connections-per-peer", "0", "--run-dir",
                            str(tmp_path / "r14")), "--max-connections-per-peer", "at least 1")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--trusted-data", str(tmp_path / "none"),
                            "--run-dir", str(tmp_path / "r15")), "--trusted-data", "no such folder")
    (tmp_path / "wrong").mkdir()
    (tmp_path / "wrong" / "data.csv").write_text("a,b\n1,2\n")
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--trusted-data", str(tmp_path / "wrong"),
                            "--run-dir", str(tmp_path / "r16")), "--trusted-data")
    (tmp_path / "wrong" / "data.csv").unlink()
    (tmp_path / "wrong").rmdir()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        _one_line_error(run_cli("fl-server", "start", "--insecure", "--port", str(port),
                                "--run-dir", str(tmp_path / "r4")),
                        f"--port {port}", "already in use")
    finished = tmp_path / "done"
    finished.mkdir()
    (finished / "results.json").write_text(json.dumps({"status": "finished"}))
    _one_line_error(run_cli("fl-server", "start", "--insecure", "--run-dir", str(finished)), "finished run")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["done"]  # nothing half-written


def test_federation_commands_bad_input(tmp_path: Path) -> None:
    fed = tmp_path / "fed"
    init = run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1", "--sites", "a", "b")
    assert init.returncode == 0
    _one_line_error(run_cli("fl-server", "init", "--dir", str(fed), "--server-ip", "127.0.0.1"),
                    "already holds a federation")
    _one_line_error(run_cli("fl-server", "init", "--dir", str(tmp_path / "f2")), "--server-name", "--server-ip")
    _one_line_error(run_cli("fl-server", "init", "--dir", str(tmp_path / "f3"), "--server-ip", "not-an-ip"),
                    "--server-ip 'not-an-ip'")
    _one_line_error(run_cli("fl-server", "add-site", "a", "--dir", str(fed)), "already enrolled")
    _one_line_error(run_cli("fl-server", "revoke-site", "zed", "--dir", str(fed)), "not part of")
    _one_line_error(run_cli("fl-server", "add-site", "x", "--dir", str(tmp_path / "nofed")), "fl-server init")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fed"]
    status = run_cli("fl-server", "status", "--dir", str(fed))
    assert status.returncode == 0 and "site a: enrolled" in status.stdout and "days left" in status.stdout
    kit = fed / "kits" / "a"
    (kit / "node.key").write_text("corrupted")
    _one_line_error(run_cli("fl-client", "join", "--kit", str(kit), "--data", str(tmp_path)), "node.key", "new kit")
    _one_line_error(run_cli("fl-client", "join", "--kit", str(kit), "--insecure", "--data", str(tmp_path)),
                    "--insecure and --kit")


def test_sim_bad_input(tmp_path: Path) -> None:
    _one_line_error(run_cli("fl-sim", "run", "--dirichlet", "0", "--run-dir", str(tmp_path / "a")), "--dirichlet 0")
    _one_line_error(run_cli("fl-sim", "run", "--task", "tabular", "--clients", "2000",
                            "--run-dir", str(tmp_path / "b")),
                    "2000 sites is more than the 455 examples")
    _one_line_error(run_cli("fl-sim", "run", "--epsilon", "-1", "--run-dir", str(tmp_path / "c")), "--epsilon")
    _one_line_error(run_cli("fl-sim", "run", "--clients", "5", "--per-round", "6", "--run-dir", str(tmp_path / "d")),
                    "--per-round 6 is more than --clients 5")
    _one_line_error(run_cli("fl-sim", "run", "--task", "tabular", "--clients", "300", "--run-dir", str(tmp_path / "e")),
                    "cannot give every site 2")
    _one_line_error(run_cli("fl-sim", "run", "--shards", "0", "--run-dir", str(tmp_path / "f")), "--shards 0")
    _one_line_error(run_cli("fl-sim", "run", "--momentum", "-0.5", "--run-dir", str(tmp_path / "o")),
                    "--momentum must be in [0, 1)")
    _one_line_error(run_cli("fl-sim", "run", "--iid", "--quantity-skew", "0.5", "--run-dir", str(tmp_path / "g")),
                    "exclude each other")
    _one_line_error(run_cli("fl-sim", "run", "--ray-address", f"127.0.0.1:{free_port()}", "--run-dir",
                            str(tmp_path / "h")), "no Ray cluster answers at 127.0.0.1")
    _one_line_error(run_cli("fl-sim", "sweep", "--epsilon", "1,abc", "--out", str(tmp_path / "i")),
                    "'abc' is not a float")
    _one_line_error(run_cli("fl-sim", "sweep", "--dirichlet", "0,1", "--out", str(tmp_path / "j")), "--dirichlet 0")
    _one_line_error(run_cli("fl-sim", "report", str(tmp_path)), "no results.json")
    _one_line_error(run_cli("fl-sim", "run", "--init-weights", str(tmp_path / "none.pt"),
                            "--run-dir", str(tmp_path / "k")),
                    "--init-weights")
    _one_line_error(run_cli("fl-sim", "run", "--task", "transfer-mobilenet", "--model", "head@2", "--run-dir",
                            str(tmp_path / "l")), "--model 'head@2': transfer-mobilenet models are auto, head or full")
    _one_line_error(run_cli("fl-sim", "run", "--task", "digits-cnn", "--model", "mlp",
                            "--run-dir", str(tmp_path / "m")),
                    "--model 'mlp': digits-cnn models are auto, full, frozen-middle")
    _one_line_error(run_cli("fl-sim", "run", "--task", "dcgan", "--model", "frozen-middle", "--run-dir",
                            str(tmp_path / "n")), "--model 'frozen-middle': dcgan models are auto")
    _one_line_error(run_cli("fl-sim", "run", "--attack", "flood:2", "--run-dir", str(tmp_path / "p")),
                    "--attack 'flood:2': use KIND:SITES")
    _one_line_error(run_cli("fl-sim", "run", "--clients", "3", "--attack", "nan:3", "--run-dir", str(tmp_path / "q")),
                    "at least one of the --clients 3 sites must be honest")
    _one_line_error(run_cli("fl-sim", "run", "--trusted-examples", "5000", "--run-dir", str(tmp_path / "s")),
                    "--trusted-examples 5000: at most")
    _one_line_error(run_cli("fl-sim", "run", "--trusted-examples", "50", "--secagg", "--run-dir", str(tmp_path / "t")),
                    "--trusted-examples", "--secagg")
    _one_line_error(run_cli("fl-sim", "run", "--trusted-examples", "50", "--trusted-data", str(tmp_path),
                            "--run-dir", str(tmp_path / "u")), "pass one of them")
    _one_line_error(run_cli("fl-sim", "run", "--trusted-examples", "some", "--run-dir", str(tmp_path / "v")),
                    "--trusted-examples some: give a count", "or auto")
    assert not [p.name for p in tmp_path.iterdir()]  # bad input leaves no partial output
    _one_line_error(run_cli("fl-server", "status", "--run-dir", str(tmp_path)), "no results.json")
