"""An empty Poisson batch is a DP-SGD step of noise alone, counted by the accountant (client/empty_batches.py)."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedshield.client.empty_batches import noise_only_step
from fedshield.client.local_training import make_private
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.registry import get_task


def _tiny_site() -> SiteData:
    x = torch.randn(3, 4)
    y = (x[:, 0] > 0).long()
    return SiteData(TensorDataset(x, y), TensorDataset(x, y), DataSchema("classification", (4,), 2, tuple("abcd"), "t"),
                    Path("."))


@pytest.mark.parametrize("mode", ["bk", "ghost", "hooks"])
def test_every_planned_step_is_taken_and_counted_even_when_the_batch_is_empty(mode: str) -> None:
    torch.manual_seed(0)
    task = copy.copy(get_task("tabular"))
    task.dp_mode = mode  # type: ignore[misc]
    site = _tiny_site()
    model = task.build_model(site.schema, TaskOptions(model="auto"))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    # 3 examples, batch 1: q = 1/3, so about 30% of the Poisson batches are empty
    loader = DataLoader(site.train, batch_size=1, generator=torch.Generator().manual_seed(1))
    private = make_private(task, site, model, optimizer, loader, noise_multiplier=1.0, max_grad_norm=1.0,
                           noise_generator=torch.Generator().manual_seed(2))
    assert private.mode == mode
    epochs = 20
    task.train(private.model, private.loader, private.optimizer, epochs=epochs, device=torch.device("cpu"),
               criterion=private.criterion)
    taken = sum(steps for _, _, steps in private.engine.accountant.history)
    assert taken == len(loader) * epochs  # the steps the noise multiplier was planned for, no fewer
    assert private.loader.empty_steps >= 5  # (0.67^3 ≈ 0.30 of 60 draws)
    private.model.to_standard_module()


def test_a_noise_only_step_moves_the_parameters_by_the_noise_alone() -> None:
    torch.manual_seed(0)
    task = get_task("tabular")
    site = _tiny_site()
    model = task.build_model(site.schema, TaskOptions(model="auto"))
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    loader = DataLoader(site.train, batch_size=1)
    private = make_private(task, site, model, optimizer, loader, noise_multiplier=2.0, max_grad_norm=0.5,
                           noise_generator=torch.Generator().manual_seed(3))
    steps = []
    for _ in range(200):  # 200 steps x 10 coordinates: enough draws to pin the noise's mean and spread
        noise_only_step(private.optimizer)  # type: ignore[arg-type]
        after = [p.detach().clone() for p in model.parameters()]
        steps.append(torch.cat([(b - a).reshape(-1) for b, a in zip(before, after, strict=True)]))
        before = after
    moved = torch.stack(steps)
    # lr 1: each step is the noise, N(0, (σC/E[B])²) per coordinate, E[B] = 1 example here
    assert moved.std().item() == pytest.approx(2.0 * 0.5 / 1, rel=0.1)
    assert abs(moved.mean().item()) < 0.1
    assert not any(torch.equal(moved[i], moved[i - 1]) for i in range(1, len(moved)))
    private.model.to_standard_module()
