"""DP-SGD as the platform sets it up: clipping bound, noise scale, modes, and one private round."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from fedshield.client.local_training import PrivacySettings, make_private, train_round
from fedshield.client.privacy_ledger import PrivacyLedger
from fedshield.common.run_config import RunConfig
from fedshield.simulations.datasets import load_dataset
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.registry import get_task


def _digits_site(n: int = 256) -> SiteData:
    d = load_dataset("digits")
    x = torch.as_tensor(d.x[:n], dtype=torch.float32).unsqueeze(1) / 255
    y = torch.as_tensor(d.y[:n])
    schema = DataSchema("classification", (1, 28, 28), 10)
    return SiteData(TensorDataset(x, y), TensorDataset(x[:64], y[:64]), schema, Path("."))


def _text_site(n: int = 64) -> SiteData:
    from fedshield.simulations.reviews_dataset import generate_reviews
    from fedshield.tasks.hashing_tokenizer import encode

    texts, y = generate_reviews(n)
    ids = torch.as_tensor(encode(list(texts), buckets=2048, max_length=32))
    data = TensorDataset(ids, torch.as_tensor(y))
    return SiteData(data, data, DataSchema("classification", (32,), 2, labels=("negative", "positive")), Path("."))


@pytest.mark.parametrize("task_name", ["digits-cnn", "tabular", "cifar-cnn", "text-transformer"])
def test_every_per_sample_gradient_is_clipped_to_c(task_name: str) -> None:
    torch.manual_seed(0)
    task = get_task(task_name)
    if task_name == "digits-cnn":
        site = _digits_site(64)
    elif task_name == "cifar-cnn":
        x = torch.rand(64, 3, 32, 32)
        site = SiteData(TensorDataset(x, torch.arange(64) % 10), TensorDataset(x, torch.arange(64) % 10),
                        DataSchema("classification", (3, 32, 32), 10), Path("."))
    elif task_name == "text-transformer":
        site = _text_site()
    else:
        x = torch.randn(64, 5) * 10
        site = SiteData(TensorDataset(x, (x[:, 0] > 0).long()), TensorDataset(x, (x[:, 0] > 0).long()),
                        DataSchema("classification", (5,), 2, tuple("abcde"), "t"), Path("."))
    model = task.build_model(site.schema, TaskOptions(model="mlp" if task_name == "tabular" else "auto"))
    model.train()
    C = 0.01  # far below the natural gradient norms, so every sample is clipped
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    private = make_private(task, site, model, opt, DataLoader(site.train, batch_size=16), noise_multiplier=0.0,
                           max_grad_norm=C)
    assert private.mode == task.dp_mode
    x, y = next(iter(private.loader))
    private.optimizer.zero_grad()
    loss = (private.criterion or task.loss)(private.model(x), y)
    loss.backward()
    if private.mode == "bk":  # book-keeping leaves the clipped sum / E[B] in .grad (client/book_keeping.py)
        total = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.requires_grad))
        assert total * private.optimizer.expected_batch_size <= C * len(x) * (1 + 1e-4)
        private.optimizer.zero_grad(set_to_none=True)
        task.loss(private.model(x), y).backward()  # plain autograd: the unclipped mean gradient
        mean_norm = torch.sqrt(sum((p.grad ** 2).sum() for p in model.parameters() if p.requires_grad))
        assert mean_norm > C  # so (triangle inequality) some example's gradient exceeded C: clipping was needed
    elif private.mode == "ghost":
        # ghost clipping never materialises per-sample gradients: check the resulting clipped sum
        private.optimizer.pre_step()
        total = torch.sqrt(sum((p.summed_grad.float() ** 2).sum() for p in model.parameters() if p.requires_grad))
        assert total <= C * len(x) * (1 + 1e-4)
    else:
        per_sample = torch.stack([p.grad_sample.reshape(len(x), -1).norm(dim=1) for p in private.model.parameters()
                                  if p.requires_grad], dim=1).norm(dim=1)
        assert (per_sample > C).all()  # they needed clipping
        private.optimizer.pre_step()
        summed = torch.sqrt(sum((p.summed_grad ** 2).sum() for p in model.parameters() if p.requires_grad))
        assert summed <= C * len(x) * (1 + 1e-4)


@pytest.mark.parametrize("mode", ["ghost", "hooks"])
def test_the_transformer_clips_under_each_fallback_mode(monkeypatch: pytest.MonkeyPatch, mode: str) -> None:
    """Where book-keeping refuses a model the platform falls back to Opacus' ghost clipping, then hooks: both
    train the transformer (ghost failed at its first step on the position ids' non-contiguous view)."""
    torch.manual_seed(0)
    task = get_task("text-transformer")
    monkeypatch.setattr(task, "dp_mode", mode)
    site = _text_site(16)
    model = task.build_model(site.schema, TaskOptions())
    C = 0.01
    private = make_private(task, site, model, torch.optim.SGD(model.parameters(), lr=0.1),
                           DataLoader(site.train, batch_size=16), noise_multiplier=0.0, max_grad_norm=C)
    assert private.mode == mode
    x, y = site.train.tensors
    private.optimizer.zero_grad()
    (private.criterion or task.loss)(private.model(x), y).backward()
    private.optimizer.pre_step()
    summed = torch.sqrt(sum((p.summed_grad.float() ** 2).sum() for p in model.parameters() if p.requires_grad))
    assert 0 < summed <= C * len(x) * (1 + 1e-4)


def test_opacus_per_sample_gradients_of_the_transformer_are_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """The attention's nn.Linear projections and the rest: Opacus' per-sample gradients equal per-example autograd
    (hooks, where the transformer's book-keeping falls back to; book-keeping's own: tests/test_book_keeping.py)."""
    torch.manual_seed(0)
    task = get_task("text-transformer")
    monkeypatch.setattr(task, "dp_mode", "hooks")
    site = _text_site(8)
    model = task.build_model(site.schema, TaskOptions())
    twin = copy.deepcopy(model)  # plain autograd, no Opacus hooks
    x, y = site.train.tensors
    twin_params = [p for p in twin.parameters() if p.requires_grad]
    references = [torch.autograd.grad(nn.functional.cross_entropy(twin(x[i:i + 1]), y[i:i + 1]), twin_params)
                  for i in range(3)]
    private = make_private(task, site, model, torch.optim.SGD(model.parameters(), lr=0.1),
                           DataLoader(site.train, batch_size=8), noise_multiplier=0.0, max_grad_norm=1e9)
    nn.functional.cross_entropy(private.model(x), y).backward()  # mean: Opacus scales back by the batch size
    params = [p for p in model.parameters() if p.requires_grad]
    for i, reference in enumerate(references):
        for p, ref in zip(params, reference, strict=True):
            assert torch.allclose(p.grad_sample[i], ref, atol=1e-5, rtol=1e-3)
    private.model.to_standard_module()


def test_noise_has_std_sigma_c_over_batch() -> None:
    torch.manual_seed(0)
    task = get_task("tabular")
    x = torch.randn(512, 200)
    site = SiteData(TensorDataset(x, torch.zeros(512)), TensorDataset(x, torch.zeros(512)),
                    DataSchema("regression", (200,), 1, tuple(str(i) for i in range(200)), "t"), Path("."))
    model = nn.Sequential(nn.Linear(200, 50))
    sigma, C, batch = 1.5, 2.0, 64
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    private = make_private(task, site, model, opt, DataLoader(site.train, batch_size=batch), noise_multiplier=sigma,
                           max_grad_norm=C)
    draws = []
    for _ in range(2):
        x_b, y_b = next(iter(private.loader))
        private.optimizer.zero_grad()
        (private.model(x_b).sum() * 0.0).backward()  # zero gradient: the update is pure noise
        private.optimizer.pre_step()
        draws.append(model[0].weight.grad.detach().clone())
    assert not torch.equal(draws[0], draws[1])  # noise on: two steps from the same state differ
    std = torch.cat([d.flatten() for d in draws]).std().item()
    expected = sigma * C / private.optimizer.expected_batch_size
    assert std == pytest.approx(expected, rel=0.03)


def test_private_round_records_ledger_and_improves(tmp_path: Path) -> None:
    torch.manual_seed(0)
    task = get_task("digits-cnn")
    site = _digits_site(512)
    model = task.build_model(site.schema, TaskOptions())
    cfg = RunConfig(rounds=2, batch_size=32, lr=0.5)
    privacy = PrivacySettings(True, 8.0, 1e-5, 1.0, tmp_path)
    before = task.evaluate(model, site.val, device=torch.device("cpu"))["loss"]
    out = train_round(task, site, model, cfg, run_id="r", rnd=1, privacy=privacy, device=torch.device("cpu"))
    after = task.evaluate(model, site.val, device=torch.device("cpu"))["loss"]
    assert after < before
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=None)
    assert [(e.kind, e.status) for e in ledger.entries] == [("count", "released"), ("train", "released")]
    assert out.epsilon == pytest.approx(ledger.epsilon_spent()) and 0 < out.epsilon < 8.0
    # Opacus' q = 1 / len(loader), the loader's length from the released count N' = 512 ± 20·(a few)
    released = ledger.counts[0].released_train
    assert out.sample_rate == pytest.approx(1 / -(-released // 32)) == ledger.entries[1].sample_rate
    assert 1 / 18 <= out.sample_rate <= 1 / 15
    assert np.isfinite(out.result.loss) and 0 <= out.loss <= 2 * np.log(10)  # the released training loss


def test_a_refused_round_leaves_the_model_trainable_by_the_next_site(tmp_path: Path) -> None:
    """A warm process (a Ray actor) trains many sites on one model object: a site that refuses for lack
    of budget must not leave Opacus' hooks on it (1,000-site run: every later site in that actor failed)."""
    from fedshield.client.privacy_ledger import BudgetExhaustedError

    task = get_task("digits-cnn")
    site = _digits_site(128)
    model = task.build_model(site.schema, TaskOptions())
    cfg = RunConfig(rounds=1, batch_size=32, lr=0.5)
    spent = PrivacySettings(True, 1.0, 1e-5, 1.0, tmp_path / "spent")
    train_round(task, site, model, cfg, run_id="r", rnd=1, privacy=spent, device=torch.device("cpu"))
    with pytest.raises(BudgetExhaustedError, match="refuses this round"):  # planned 1 round, asked for a 2nd
        train_round(task, site, model, cfg, run_id="r", rnd=2, privacy=spent, device=torch.device("cpu"))
    fresh = PrivacySettings(True, 8.0, 1e-5, 1.0, tmp_path / "fresh")
    out = train_round(task, site, model, cfg, run_id="r", rnd=1, privacy=fresh, device=torch.device("cpu"))
    assert 0 < out.epsilon <= 8.0 and np.isfinite(out.result.loss)


def _one_private_round(task_name: str, site: SiteData, state: Path, *, virtual_site: int | None) -> torch.Tensor:
    """One DP round from a model and global torch state both fixed by the run seed, as a server could replay it."""
    task = get_task(task_name)
    torch.manual_seed(0)
    model = task.build_model(site.schema, TaskOptions())
    cfg = RunConfig(rounds=1, batch_size=32, lr=0.5, seed=0)
    privacy = PrivacySettings(True, 8.0, 1e-5, 1.0, state, virtual_site=virtual_site)
    torch.manual_seed(0)
    train_round(task, site, model, cfg, run_id="r", rnd=1, privacy=privacy, device=torch.device("cpu"))
    return torch.cat([p.detach().flatten() for p in model.parameters()])


@pytest.mark.parametrize("task_name", ["digits-cnn", "text-transformer"])  # book-keeping; Opacus' make_private
def test_a_site_noise_and_sampling_cannot_be_replayed_from_the_run_seed(tmp_path: Path, task_name: str) -> None:
    """The run seed comes from the server; a real site's Poisson sampling and noise must not follow from it
    (they once came from torch's global generator, seeded with it), while a simulation's repeat."""
    site = _digits_site(128) if task_name == "digits-cnn" else _text_site(128)
    real = [_one_private_round(task_name, site, tmp_path / f"real{i}", virtual_site=None) for i in range(2)]
    assert not torch.equal(real[0], real[1])
    sim = [_one_private_round(task_name, site, tmp_path / f"sim{i}", virtual_site=3) for i in range(2)]
    assert torch.equal(sim[0], sim[1])
    other = _one_private_round(task_name, site, tmp_path / "other", virtual_site=4)
    assert not torch.equal(sim[0], other)


@pytest.mark.parametrize("mode", ["bk", "ghost", "hooks"])
def test_every_dp_draw_comes_from_the_rounds_own_generators(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            mode: str) -> None:
    """With the round's generators fixed, the global generator's state changes nothing: neither the noise nor
    the Poisson sampling fell back to it (the test above would miss either one alone)."""
    from fedshield.client import local_training, site_privacy
    from fedshield.client.private_randomness import dp_randomness

    monkeypatch.setattr(local_training, "dp_randomness", lambda seed, device: dp_randomness(1234, device))
    # the released count (hence q) and the released loss draw from their own generator too
    monkeypatch.setattr(site_privacy, "statistics_rng", lambda *a: np.random.default_rng(1234))
    task = get_task("digits-cnn")  # no dropout: nothing else in its step is random
    monkeypatch.setattr(task, "dp_mode", mode)
    site = _digits_site(128)
    results = []
    for global_seed in (0, 1):
        torch.manual_seed(0)
        model = task.build_model(site.schema, TaskOptions())
        privacy = PrivacySettings(True, 8.0, 1e-5, 1.0, tmp_path / f"{global_seed}")
        torch.manual_seed(global_seed)
        train_round(task, site, model, RunConfig(rounds=1, batch_size=32, lr=0.5), run_id="r", rnd=1,
                    privacy=privacy, device=torch.device("cpu"))
        results.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(results[0], results[1])
