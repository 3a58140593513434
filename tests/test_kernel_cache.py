"""Training processes bound oneDNN's kernel cache for a model with many convolutions, before its first one,
unless the user chose a bound."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from fedshield.client.local_training import PrivacySettings, train_round
from fedshield.common.kernel_cache import CAPACITY, ONEDNN_DEFAULT, VARIABLES, bound_kernel_cache
from fedshield.common.run_config import RunConfig
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.registry import get_task


def _model(task: str, schema: DataSchema, variant: str = "auto") -> nn.Module:
    return get_task(task).build_model(schema, TaskOptions(model=variant))


@pytest.fixture
def unset(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def test_a_model_with_many_convolutions_is_bounded_and_one_with_few_keeps_onednns_default(
        unset: pytest.MonkeyPatch) -> None:
    """transfer-mobilenet's kernels for a round's batch sizes (52 convolutions) cannot fit; digits-cnn's can, and
    bounding them cost the small CNNs about 5% of a DP step."""
    images = DataSchema("classification", (3, 32, 32), 10)
    assert bound_kernel_cache(_model("transfer-mobilenet", images, "full@0.35"), 64) == CAPACITY
    assert os.environ[VARIABLES[0]] == str(CAPACITY)
    unset.delenv(VARIABLES[0])
    assert bound_kernel_cache(_model("digits-cnn", DataSchema("classification", (1, 28, 28), 10)), 64) == ONEDNN_DEFAULT
    assert bound_kernel_cache(nn.Sequential(*[nn.Conv2d(3, 3, 1) for _ in range(52)]), 64) == ONEDNN_DEFAULT  # set


@pytest.mark.parametrize("name", VARIABLES)
def test_a_bound_the_user_exported_is_kept(unset: pytest.MonkeyPatch, name: str) -> None:
    unset.setenv(name, "2048")
    many = nn.Sequential(*[nn.Conv2d(3, 3, 1) for _ in range(52)])
    assert bound_kernel_cache(many, 64) == 2048
    assert os.environ[name] == "2048" and all(os.environ.get(n) in (None, "2048") for n in VARIABLES)
    unset.setenv(name, "lots")  # oneDNN ignores what it cannot read
    assert bound_kernel_cache(many, 64) == ONEDNN_DEFAULT


def test_a_private_round_sets_the_bound_from_its_model_before_training(
        unset: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """train_round bounds the cache for a model of many convolutions (here 52 1×1 ones), as a site does."""
    torch.manual_seed(0)
    x, y = torch.randn(64, 3, 4, 4), torch.arange(64) % 2
    site = SiteData(TensorDataset(x, y), TensorDataset(x, y), DataSchema("classification", (3, 4, 4), 2), Path("."))
    model = nn.Sequential(*[nn.Conv2d(3, 3, 1) for _ in range(52)], nn.Flatten(), nn.Linear(48, 2))
    train_round(get_task("tabular"), site, model, RunConfig(task="tabular", rounds=1, batch_size=16, lr=0.1),
                run_id="r", rnd=1, privacy=PrivacySettings(True, 8.0, 1e-5, 1.0, tmp_path), device=torch.device("cpu"))
    assert os.environ[VARIABLES[0]] == str(CAPACITY)
