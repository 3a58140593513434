"""Every Python that pyproject.toml's ``requires-python`` admits: do FedShield's dependencies resolve, import
and pass the tests there?

1. **Resolve**, for each minor version in the range: ``pip install --dry-run --python-version X
   --only-binary=:all: --report`` of the declared dependencies (and every extra) against PyPI, as a user's
   pip would resolve them today; prints the versions picked for the libraries the code calls.
2. **Install and test**, on each admitted interpreter this machine has other than the one ``./test.sh``
   uses (that one runs the whole suite): a fresh virtual environment with exactly the resolved versions,
   except torch (see below), FedShield itself, an import of every FedShield module that does not need
   torch, and the fast tests (``-m "not slow"``) of every test file that imports without torch; a test that
   fails only because torch is missing (it, or a CLI it starts, imports torch) is reported as skipped
   (``scripts/torch_free_pytest.py``), every other failure fails the check.

Not covered on those interpreters: anything that needs torch (training, DP-SGD, the tasks' models,
Opacus). PyPI's torch for Linux is the CUDA build, whose libraries must be present for it to import
(``libcudnn.so.9``): 2.9 GB of wheels per interpreter (torch 528 MB, NVIDIA libraries 2.1 GB, triton
236 MB; measured 2026-12-06 for torch 2.13.0 on Python 3.12), and the CPU wheel is on download.pytorch.org
only, which CI cannot reach. ``--with-torch`` installs the CUDA build anyway and then runs every fast
test (minutes of downloads per interpreter; for a release check, not for every CI run).

Measured 2026-12-06 on the shared 2-core machine (load average 15-25): resolving the three versions side by
side 11 min, the two torch-free venvs 10 min, their fast tests 2:46 (3.12) and 4:05 (3.13): 262 passed,
14 skipped as needing torch, 29 slow deselected. Once by hand, Python 3.12 with PyPI's torch 2.13.0+cu130
on the CPU, SciPy 1.18.1 and NumPy 2.5.5 (30 min to install): every fast test but tests/test_style.py
passed (521, 4:14). The whole script again, pip's cache warm, load average 2-7: 8:16, every check passed.

    python scripts/check_pythons.py                  # resolve 3.11-3.13; install and test on 3.12, 3.13
    python scripts/check_pythons.py --resolve-only
    python scripts/check_pythons.py --with-torch --pythons 3.12

The interpreters are found as ``python3.X`` on PATH or under ``~/.pyenv/versions/3.X.*``. Exit status 1
when any check fails; an admitted version with no interpreter here is named, not failed.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INDEX = "https://pypi.org/simple"
#: the libraries whose versions are printed after resolving (the ones the code calls)
SHOWN = ("torch", "opacus", "flwr", "numpy", "scipy", "scikit-learn", "matplotlib", "cryptography", "pillow",
         "typer", "rich", "sacrebleu", "psutil", "ray")
#: the CUDA build of torch and what only it needs (not installed without --with-torch)
TORCH_STACK = re.compile(r"^(torch|triton|opacus|nvidia-.*|cuda-.*)$")
#: test files that check the development tools, not the Python the code runs on (mypy reads python_version)
NOT_PORTABLE_TESTS = ("test_style.py",)


def admitted_versions(spec: str) -> list[str]:
    """The minor versions ``3.X`` that a ``requires-python`` of the form ``>=3.A,<3.B`` admits."""
    low = re.search(r">=\s*3\.(\d+)", spec)
    high = re.search(r"<\s*3\.(\d+)", spec)
    if not low or not high:
        raise SystemExit(f"pyproject.toml: requires-python {spec!r} is not of the form '>=3.A,<3.B'; "
                         "extend scripts/check_pythons.py")
    return [f"3.{minor}" for minor in range(int(low.group(1)), int(high.group(1)))]


def requirements(project: dict) -> list[str]:
    """The declared dependencies and every extra (``./test.sh``'s venv has them all), as pip requirement strings."""
    extras = project.get("optional-dependencies", {})
    return [*project["dependencies"], *(req for name in sorted(extras) for req in extras[name])]


def _pip_env() -> dict[str, str]:
    """pip configured by nothing but the command line: PyPI only, no local wheel folders or constraints."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_")}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


def resolve(version: str, reqs: list[str], work: Path) -> dict[str, str]:
    """``{name: version}`` pip picks from PyPI for Python ``version``; ``RuntimeError`` with pip's last lines.

    With that Python's own pip where this machine has it, which reads every marker and ``Requires-Python`` as
    that Python does; otherwise this pip with ``--python-version X`` (once, with pip 23 under Python 3.11, that
    resolved scipy 1.17.1 for 3.12 where Python 3.12's pip picks 1.18.1, the release that broke dcgan)."""
    report = work / f"resolve-{version}.json"
    python = find_interpreter(version)
    cmd = [str(python) if python is not None else sys.executable, "-m", "pip", "install", "--dry-run",
           "--ignore-installed", "--quiet", "--only-binary=:all:", "--index-url", INDEX, "--report", str(report),
           *([] if python is not None else ["--target", str(work / f"target-{version}"), "--python-version", version]),
           *reqs]
    done = subprocess.run(cmd, capture_output=True, text=True, env=_pip_env())
    if done.returncode != 0:
        tail = " | ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise RuntimeError(f"Python {version}: the dependencies do not resolve: {tail}")
    picked = json.loads(report.read_text())["install"]
    return {item["metadata"]["name"].lower().replace("_", "-"): item["metadata"]["version"] for item in picked}


def find_interpreter(version: str) -> Path | None:
    """The newest ``~/.pyenv/versions/3.X.*`` or ``python3.X`` on PATH that runs and is 3.X (a pyenv shim on PATH
    may only say the version is not selected); ``None`` where this machine has none."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = sorted(pyenv.glob(f"{version}.*/bin/python{version}"),
                        key=lambda p: [int(x) for x in re.findall(r"\d+", p.parts[-3])], reverse=True)
    on_path = shutil.which(f"python{version}")
    for python in [*candidates, *([Path(on_path)] if on_path else [])]:
        probe = subprocess.run([str(python), "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                               capture_output=True, text=True)
        if probe.returncode == 0 and probe.stdout.strip() == version:
            return python
    return None


def _run(cmd: list[str], *, log: Path, env: dict[str, str] | None = None, cwd: Path | None = None) -> bool:
    """Run ``cmd`` with its output appended to ``log``; whether it exited 0."""
    with open(log, "a") as out:
        out.write(f"$ {' '.join(cmd)}\n")
        out.flush()
        return subprocess.run(cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=cwd).returncode == 0


def install_and_test(version: str, python: Path, picked: dict[str, str], work: Path, *, with_torch: bool) -> str:
    """A venv for ``python`` with the resolved versions, FedShield, the import check and the fast tests; one line
    saying what passed, or ``RuntimeError`` naming the step that failed and its log."""
    venv, log = work / f"venv-{version}", work / f"python-{version}.log"
    pins = [f"{name}=={ver}" for name, ver in sorted(picked.items()) if with_torch or not TORCH_STACK.match(name)]
    vpy = str(venv / "bin" / "python")
    env = _pip_env()
    steps: list[tuple[str, list[str]]] = [
        ("create the venv", [str(python), "-m", "venv", str(venv)]),
        ("install the resolved dependencies", [vpy, "-m", "pip", "install", "--quiet", "--no-deps",
                                               "--only-binary=:all:", "--index-url", INDEX, *pins]),
        ("install FedShield", [vpy, "-m", "pip", "install", "--quiet", "--no-deps", "--no-build-isolation",
                               str(ROOT)]),
        ("import FedShield's modules", [vpy, str(Path(__file__).with_name("import_modules.py")),
                                        *(["--with-torch"] if with_torch else [])]),
    ]
    for name, cmd in steps:
        if not _run(cmd, log=log, env=env):
            raise RuntimeError(f"Python {version}: {name} failed; see {log}")
    tests = _portable_test_files(vpy, log, with_torch=with_torch)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"  # the CLIs the tests start: this venv's
    env.update(FLWR_TELEMETRY_ENABLED="0", FLWR_DISABLE_UPDATE_CHECK="1", RAY_USAGE_STATS_ENABLED="0")
    # from the source tree, which has no fedshield/ folder: `import fedshield` is the package installed above
    if not with_torch:  # failures that only torch's absence explains are reported as skipped (needs torch)
        env["PYTHONPATH"] = str(Path(__file__).parent)
    # one process: tests/conftest.py sets torch's threads in xdist workers
    if not _run([vpy, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "-m", "not slow", "-n", "0",
                 *([] if with_torch else ["-p", "torch_free_pytest"]), *(f"tests/{t}" for t in tests)],
                log=log, env=env, cwd=ROOT):
        raise RuntimeError(f"Python {version}: the fast tests failed; see {log}")
    scope = "every fast test file" if with_torch else "the fast tests of the test files that import without torch"
    return f"Python {version} ({python}): installed, imported, and {scope} passed ({len(tests)} files)"


def _portable_test_files(vpy: str, log: Path, *, with_torch: bool) -> list[str]:
    """The test files to run in the venv: all but the tooling ones, and without torch only those whose import
    fails on nothing but torch missing (any other import error fails the check)."""
    files = sorted(p.name for p in (ROOT / "tests").glob("test_*.py") if p.name not in NOT_PORTABLE_TESTS)
    if with_torch:
        return files
    probe = [vpy, str(Path(__file__).with_name("import_modules.py")), "--tests", str(ROOT / "tests"), *files]
    done = subprocess.run(probe, capture_output=True, text=True, env=_pip_env())
    with open(log, "a") as out:
        out.write(done.stdout + done.stderr)
    if done.returncode != 0:
        raise RuntimeError(f"Python {log.stem.split('-')[1]}: a test file fails to import; see {log}")
    return done.stdout.split()


def main() -> int:
    """Resolve, install and test; exit status 1 when any check failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pythons", help="comma-separated minor versions (default: all that requires-python admits)")
    parser.add_argument("--resolve-only", action="store_true", help="only resolve against PyPI, install nothing")
    parser.add_argument("--with-torch", action="store_true",
                        help="also install torch's CUDA build (~2.9 GB a Python) and run every fast test")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (venvs, logs)")
    args = parser.parse_args()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    versions = admitted_versions(project["requires-python"])
    if args.pythons:
        asked = args.pythons.split(",")
        if unknown := [v for v in asked if v not in versions]:
            raise SystemExit(f"--pythons: {', '.join(unknown)} not admitted by requires-python "
                             f"{project['requires-python']!r} (admitted: {', '.join(versions)})")
        versions = asked
    own = f"{sys.version_info.major}.{sys.version_info.minor}"
    work = Path(tempfile.mkdtemp(prefix="fedshield-pythons-"))
    failures: list[str] = []
    try:
        reqs = requirements(project)
        with concurrent.futures.ThreadPoolExecutor(len(versions)) as pool:  # network-bound: side by side
            futures = {v: pool.submit(resolve, v, reqs, work) for v in versions}
        resolved: dict[str, dict[str, str]] = {}
        for version, future in futures.items():
            try:
                resolved[version] = future.result()
            except RuntimeError as exc:
                failures.append(str(exc))
                continue
            shown = ", ".join(f"{n} {resolved[version][n]}" for n in SHOWN if n in resolved[version])
            print(f"Python {version}: resolves from PyPI: {shown}", flush=True)
        if not args.resolve_only:
            targets = [(v, find_interpreter(v)) for v in resolved if v != own or args.pythons]
            for version, python in targets:
                if python is None:
                    print(f"Python {version}: no interpreter on this machine: resolved only", flush=True)
            with concurrent.futures.ThreadPoolExecutor(max(1, len(targets))) as pool:
                tested = {v: pool.submit(install_and_test, v, p, resolved[v], work, with_torch=args.with_torch)
                          for v, p in targets if p is not None}
            for future in tested.values():
                try:
                    print(future.result(), flush=True)
                except RuntimeError as exc:
                    failures.append(str(exc))
            if own in resolved and not args.pythons:
                print(f"Python {own}: this interpreter; ./test.sh runs the whole suite on it", flush=True)
    finally:
        if args.keep or failures:
            print(f"work folder (venvs, logs): {work}", flush=True)
        else:
            shutil.rmtree(work, ignore_errors=True)
    for failure in failures:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
