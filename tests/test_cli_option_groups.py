"""One definition of each option group: `fl-server start` and `fl-sim run` offer the same options with the
same help, and every default is RunConfig's."""

from __future__ import annotations

import dataclasses
import typing
from typing import Any

import click
import pytest
import typer
import typer.main
from typer.testing import CliRunner

from fedshield.common.cli_groups import with_option_groups
from fedshield.common.cli_options import CentralDpOptions, SecAggOptions, TrainingOptions
from fedshield.common.run_config import RunConfig
from fedshield.server.cli import app as server_app
from fedshield.simulations.cli import PartitionOptions
from fedshield.simulations.cli import app as sim_app

#: the group fields whose default is not RunConfig's: the task resolves them (resolve_settings)
RESOLVED_BY_THE_TASK = {"lr", "init_weights", "trusted_data"}  # checked and made absolute with the task


def _options(app: typer.Typer, command: str) -> dict[str, click.Parameter]:
    """The command's options by their first flag (``--task``)."""
    group = typer.main.get_command(app)
    assert isinstance(group, click.Group)
    return {p.opts[0]: p for p in group.commands[command].params}


def _described(param: click.Parameter) -> dict[str, Any]:
    """What click knows of an option, but for its Python name."""
    return {k: v for k, v in param.to_info_dict().items() if k != "name"}


def _flag(group: type, name: str) -> str:
    """The flag of the group's field ``name``: the first argument of its ``typer.Option`` in ``Annotated``."""
    hint = typing.get_type_hints(group, include_extras=True)[name]
    return str(next(m for m in hint.__metadata__ if isinstance(m, typer.models.OptionInfo)).default)


def _flags(group: type) -> set[str]:
    """The flags an option group declares."""
    return {_flag(group, f.name) for f in dataclasses.fields(group)}


@pytest.mark.parametrize("group", [TrainingOptions, CentralDpOptions, SecAggOptions])
def test_start_and_run_share_each_group_with_runconfigs_defaults(group: type) -> None:
    start, run = _options(server_app, "start"), _options(sim_app, "run")
    flags = _flags(group)
    assert flags and flags <= set(start) and flags <= set(run)
    for flag in flags:  # type, range, default, help, hidden, ...: everything but the Python name
        assert _described(start[flag]) == _described(run[flag]), flag
    config = {f.name: f.default for f in dataclasses.fields(RunConfig)}
    for field in dataclasses.fields(group):
        expected = None if field.name in RESOLVED_BY_THE_TASK else config[field.name]
        assert field.default == expected, field.name
        flag = _flag(group, field.name)
        assert start[flag].default == expected and run[flag].default == expected, flag


def test_split_and_run_share_the_partition_flags() -> None:
    split, run = _options(sim_app, "split"), _options(sim_app, "run")
    flags = _flags(PartitionOptions)
    assert flags == {"--partition", "--dirichlet", "--shards", "--quantity-skew", "--iid"}
    assert all(_described(split[f]) == _described(run[f]) for f in flags)


def test_the_groups_feed_runconfig_by_its_own_field_names() -> None:
    cfg = RunConfig(**TrainingOptions(task="tabular", lr=0.3).config_fields(dp=True),
                    **dataclasses.asdict(CentralDpOptions(central_dp="fixed", central_noise=0.7)),
                    **dataclasses.asdict(SecAggOptions(secagg=True)))
    assert (cfg.task, cfg.lr, cfg.central_dp, cfg.central_noise, cfg.secagg) == ("tabular", 0.3, "fixed", 0.7, True)
    assert RunConfig(**TrainingOptions().config_fields(dp=False)).lr == RunConfig.default_lr(False)


def test_a_command_gets_one_instance_per_group_and_its_own_options() -> None:
    seen: dict[str, Any] = {}
    app = typer.Typer()

    @app.command()
    @with_option_groups
    def go(*, name: str = typer.Option("x", "--name"), central: CentralDpOptions, secure: SecAggOptions) -> None:
        seen.update(name=name, central=central, secure=secure)

    result = CliRunner().invoke(app, ["--name", "y", "--clip", "0.25", "--secagg", "--secagg-shares", "5"])
    assert result.exit_code == 0, result.output
    assert seen == {"name": "y", "central": CentralDpOptions(central_clip=0.25),
                    "secure": SecAggOptions(secagg=True, secagg_shares=5)}
    help_text = CliRunner().invoke(app, ["--help"], env={"COLUMNS": "200"}).output
    assert "--noise-multiplier" in help_text and "--secagg-timeout" in help_text and "--name" in help_text


def test_an_option_name_used_twice_is_refused_when_the_command_is_defined() -> None:
    with pytest.raises(TypeError, match="secagg"):
        @with_option_groups
        def clash(*, secagg: SecAggOptions) -> None:  # the group's parameter named as one of its fields
            pass
