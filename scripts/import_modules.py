"""Import every module of the installed FedShield (or, with ``--tests DIR FILE...``, each test file) in this
interpreter; run by scripts/check_pythons.py inside the virtual environment it builds for each Python.

A module that fails only because torch is not installed (nor Opacus, which needs it) is skipped, unless
``--with-torch``; any other failure is printed with its module and exits 1. With ``--tests``, the names of
the test files that imported are printed, one a line, for the caller to run.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import pkgutil
import sys
import traceback
from pathlib import Path

NEEDS_TORCH = ("torch", "opacus")


def _torch_missing(exc: BaseException) -> bool:
    return isinstance(exc, ModuleNotFoundError) and (exc.name or "").split(".")[0] in NEEDS_TORCH


def _try(name: str, load, *, with_torch: bool) -> bool | None:  # type: ignore[no-untyped-def]
    """True: imported; False: needs torch (skipped); None: failed (printed)."""
    try:
        load()
    except Exception as exc:
        if not with_torch and _torch_missing(exc):
            return False
        print(f"{name}: {type(exc).__name__}: {exc}", file=sys.stderr)
        traceback.print_exc()
        return None
    return True


def package_modules() -> list[str]:
    """Every module of the installed ``fedshield`` packages."""
    import fedshield

    names = []
    for sub in pkgutil.iter_modules(fedshield.__path__):
        package = importlib.import_module(f"fedshield.{sub.name}")
        names += [f"fedshield.{sub.name}.{m.name}" for m in pkgutil.iter_modules(package.__path__)]
    return names


def _load_test(path: Path) -> None:
    spec = importlib.util.spec_from_file_location(path.stem, path)
    assert spec is not None and spec.loader is not None
    spec.loader.exec_module(importlib.util.module_from_spec(spec))


def main() -> int:
    """Import, report, exit status 1 when a module failed for another reason than torch missing."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--with-torch", action="store_true", help="a missing torch is a failure too")
    parser.add_argument("--tests", type=Path, metavar="DIR", help="import these test files from DIR instead")
    parser.add_argument("files", nargs="*")
    args = parser.parse_args()
    failed = skipped = 0
    if args.tests is not None:
        sys.path.insert(0, str(args.tests))  # their conftest helpers
        for file in args.files:
            ok = _try(file, lambda f=file: _load_test(args.tests / f), with_torch=args.with_torch)
            failed += ok is None
            if ok:
                print(file)
        return 1 if failed else 0
    names = package_modules()
    for name in names:
        ok = _try(name, lambda n=name: importlib.import_module(n), with_torch=args.with_torch)
        failed += ok is None
        skipped += ok is False
    print(f"{len(names) - failed - skipped} of {len(names)} FedShield modules imported, {skipped} need torch "
          f"(not installed), {failed} failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
