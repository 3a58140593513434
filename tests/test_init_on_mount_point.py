"""`fl-server init --dir` into an empty folder that is a mount point (a Docker volume, a disk of its own).

The federation used to be staged beside the folder and renamed into it, which fails across file systems
("Invalid cross-device link") and so broke the container path (deploy/README.md, "Containers"). The test mounts
a tmpfs on the folder in a private mount namespace (unshare -m: nothing outside this command sees it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from conftest import BIN, cli_env


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None, reason="mounting needs root and unshare")
def test_init_into_a_mount_point(tmp_path: Path) -> None:
    fed = tmp_path / "federation"
    fed.mkdir()
    script = (f'mount -t tmpfs none "{fed}" && "{BIN}/fl-server" init --dir "{fed}" --server-name coordinator '
              f'--sites hospital_a && find "{fed}" -type f | sort && stat -c %a "{fed}/server/ca.key"')
    proc = subprocess.run(["unshare", "-m", "sh", "-c", script], env=cli_env(), capture_output=True, text=True,
                          timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    files = {line[len(str(fed)) + 1:] for line in proc.stdout.splitlines() if line.startswith(str(fed))}
    assert {"federation.toml", "server/ca.key", "server/control.token", "kits/hospital_a/node.key"} <= files, files
    assert not any(".init-" in f for f in files)  # the staging folder is gone
    assert proc.stdout.split()[-1] == "600"
    assert not any(p.name.startswith(".federation.init") for p in tmp_path.iterdir())
