"""Option groups for Typer commands: a dataclass of options declared once, taken by every command that needs it.

A group is a dataclass whose fields are ``Annotated[type, typer.Option(...)] = default``
(:mod:`fedshield.common.cli_options`). A command names a group as a keyword-only parameter annotated with
the dataclass; :func:`with_option_groups` puts the group's fields in its place, so Typer shows them as the
command's own options, and calls the command with one instance of the dataclass per group::

    @app.command()
    @with_option_groups
    def start(*, training: TrainingOptions, port: int = 9092) -> None: ...
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable
from typing import Any, TypeVar

R = TypeVar("R")


def group_parameters(group: type) -> list[inspect.Parameter]:
    """The fields of the option group ``group`` as keyword-only parameters (annotations evaluated)."""
    hints = typing.get_type_hints(group, include_extras=True)
    return [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                              default=inspect.Parameter.empty if f.default is dataclasses.MISSING else f.default)
            for f in dataclasses.fields(group)]


def with_option_groups(command: Callable[..., R]) -> Callable[..., R]:
    """Expand each parameter of ``command`` annotated with a dataclass into that dataclass's fields.

    The returned function's ``__signature__`` and ``__annotations__`` (what Typer reads) list the fields
    where the group's parameter stood; called with the fields as keyword arguments, it calls ``command``
    with one dataclass instance per group. Raises ``TypeError`` when two options would share a name.
    """
    signature = inspect.signature(command, eval_str=True)
    groups: dict[str, type] = {}
    parameters: list[inspect.Parameter] = []
    for param in signature.parameters.values():
        if isinstance(param.annotation, type) and dataclasses.is_dataclass(param.annotation):
            groups[param.name] = param.annotation
            parameters += group_parameters(param.annotation)
        else:
            parameters.append(param.replace(kind=inspect.Parameter.KEYWORD_ONLY))
    names = [p.name for p in parameters] + list(groups)
    clashes = sorted({n for n in names if names.count(n) > 1})
    if clashes:
        raise TypeError(f"{command.__qualname__}: option names used twice: {', '.join(clashes)}")

    @functools.wraps(command)
    def expanded(**options: Any) -> R:
        for name, group in groups.items():
            options[name] = group(**{f.name: options.pop(f.name) for f in dataclasses.fields(group)})
        return command(**options)

    expanded.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]  # typer reads inspect.signature, which honours __signature__
    expanded.__annotations__ = {p.name: p.annotation for p in parameters}
    if signature.return_annotation is not inspect.Signature.empty:
        expanded.__annotations__["return"] = signature.return_annotation
    return expanded
