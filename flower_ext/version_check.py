"""Is the running Flower the one FedShield's adaptations were written for, and does it still have their hooks?

Every adaptation in :mod:`fedshield.flower_ext` rebinds or wraps a name inside Flower's runtime, and each
was read against one Flower release, :data:`FLOWER_VERSION`. :func:`check_flower_version` refuses any
other release with a one-line error, unless ``FEDSHIELD_ALLOW_FLOWER_VERSION`` names the installed
one (for trying a new Flower: every process then says so on stderr). :func:`hook` fetches the Flower
attribute an adaptation needs, and turns its absence into a one-line error instead of an
``AttributeError`` deep in a start-up; :func:`rebinding_point` also checks that Flower still calls the name
where FedShield rebinds it, so that a rebinding cannot silently stop taking effect.
"""

from __future__ import annotations

import dis
import functools
import inspect
import os
import sys
from collections.abc import Iterator
from importlib import metadata
from types import CodeType, ModuleType
from typing import Any

from fedshield.common.errors import FedShieldError

#: The Flower release every adaptation in this package was written against (and pyproject.toml pins).
FLOWER_VERSION = "1.42.0"
#: Set to the installed Flower's version to run on it anyway (untested; announced on stderr).
ALLOW_VERSION_ENV = "FEDSHIELD_ALLOW_FLOWER_VERSION"

_announced: set[str] = set()


class FlowerVersionError(FedShieldError):
    """The installed Flower is not the release FedShield's adaptations were written for."""


class FlowerHookMissing(FedShieldError):
    """A Flower attribute an adaptation rebinds or wraps is gone (or no longer used as it was)."""


@functools.cache
def installed_flower_version() -> str:
    """The version of the installed ``flwr`` distribution."""
    return metadata.version("flwr")


def check_flower_version(process: str) -> None:
    """Refuse to adapt any Flower but :data:`FLOWER_VERSION`, unless :data:`ALLOW_VERSION_ENV` names it.

    ``process`` names what is starting (``"SuperLink"``), for the message.
    """
    installed = installed_flower_version()
    if installed == FLOWER_VERSION:
        return
    if os.environ.get(ALLOW_VERSION_ENV, "").strip() != installed:
        raise FlowerVersionError(
            f"{process}: FedShield's Flower adaptations are written for flwr {FLOWER_VERSION}, but flwr {installed} "
            f"is installed; install flwr=={FLOWER_VERSION}, or set {ALLOW_VERSION_ENV}={installed} to try this "
            "Flower anyway")
    if process not in _announced:
        _announced.add(process)
        print(f"FedShield WARNING: {process} runs on flwr {installed}, NOT the flwr {FLOWER_VERSION} its Flower "
              f"adaptations were written for ({ALLOW_VERSION_ENV}={installed}); this combination is untested",
              file=sys.stderr, flush=True)


def hook(module: ModuleType, name: str, purpose: str) -> Any:
    """``module.name``, which an adaptation rebinds or wraps; :class:`FlowerHookMissing` when Flower has none.

    ``purpose`` says what FedShield adapts there (``"guards the Control API"``), for the message.
    """
    try:
        return getattr(module, name)
    except AttributeError:
        raise FlowerHookMissing(
            f"flwr {installed_flower_version()} has no {module.__name__}.{name}, where FedShield {purpose}; "
            f"install flwr=={FLOWER_VERSION}, the release this FedShield is written for") from None


def rebinding_point(module: ModuleType, name: str, purpose: str, *, caller: ModuleType | None = None) -> Any:
    """:func:`hook` for a name FedShield rebinds in ``module``, which Flower must still look up at call time: as
    a global of ``module``'s own code, or (``caller``) by an import from ``module`` inside ``caller``'s code. A
    rebinding is seen only where the name is looked up after it; this makes that a checked fact."""
    value = hook(module, name, purpose)
    where = caller or module
    source = None if caller is None else module.__name__
    if not any(_looks_up(code, name, source) for code in _code_of(where)):
        raise FlowerHookMissing(
            f"flwr {installed_flower_version()}'s {where.__name__} no longer looks up {name}, where FedShield "
            f"{purpose}; install flwr=={FLOWER_VERSION}, the release this FedShield is written for")
    return value


def _code_of(module: ModuleType) -> Iterator[CodeType]:
    """The code of every function and method defined in ``module``."""
    for value in vars(module).values():
        members = vars(value).values() if inspect.isclass(value) else (value,)
        for member in members:
            function = inspect.unwrap(getattr(member, "__func__", member))
            if inspect.isfunction(function) and function.__module__ == module.__name__:
                yield function.__code__


def _looks_up(code: CodeType, name: str, source: str | None) -> bool:
    """Whether ``code`` (or code nested in it) loads the global ``name`` (``source`` None) or imports ``name``
    from the module ``source``."""
    imported_from = None
    for ins in dis.get_instructions(code):
        if ins.opname == "IMPORT_NAME":
            imported_from = ins.argval
        elif ins.argval == name and (ins.opname == "LOAD_GLOBAL" and source is None
                                     or ins.opname == "IMPORT_FROM" and imported_from == source):
            return True
    return any(_looks_up(const, name, source) for const in code.co_consts if isinstance(const, CodeType))
