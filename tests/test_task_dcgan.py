"""dcgan: the models, DP on the discriminator only, the Fréchet distance, unlabelled sites, sample grids."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from PIL import Image
from torch.utils.data import TensorDataset

from fedshield.client.local_training import PrivacySettings, train_round
from fedshield.client.privacy_ledger import PrivacyLedger
from fedshield.common.errors import DataError
from fedshield.common.run_config import RunConfig
from fedshield.tasks.base import SiteData, TaskOptions
from fedshield.tasks.dcgan import SCHEMA
from fedshield.tasks.frechet_digits import _bundled_digits, features, frechet_distance, trace_sqrt_product
from fedshield.tasks.model_factory import build_model
from fedshield.tasks.registry import get_task

TASK = get_task("dcgan")


def test_models_are_opacus_compatible_and_shaped_as_documented() -> None:
    model = TASK.build_model(SCHEMA, TaskOptions())
    assert ModuleValidator.validate(model, strict=False) == []
    assert model.generator(torch.randn(3, 64)).shape == (3, 1, 28, 28)
    assert model.discriminator(torch.rand(3, 1, 28, 28)).shape == (3,)
    images = model.sample(4, seed=1)
    assert images.min() >= 0 and images.max() <= 1 and torch.equal(images, model.sample(4, seed=1))


def _site(n: int = 200) -> SiteData:
    x, _ = _bundled_digits()
    x = x[:n]
    y = torch.zeros(n, dtype=torch.long)
    return SiteData(TensorDataset(x[: n - 50], y[: n - 50]), TensorDataset(x[n - 50:], y[n - 50:]), SCHEMA, Path("."))


def test_dp_round_trains_both_networks_and_accounts_only_discriminator_steps(tmp_path: Path) -> None:
    site = _site()
    model = build_model(TASK, SCHEMA, TaskOptions(), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RunConfig(task="dcgan", rounds=1, batch_size=30, lr=0.05)
    out = train_round(TASK, site, model, cfg, run_id="r", rnd=1,
                      privacy=PrivacySettings(True, 8.0, 1e-5, 1.0, tmp_path / "state"), device=torch.device("cpu"))
    # one accountant step per discriminator step: ceil(N'/30) of them, N' the released count of 150
    ledger = PrivacyLedger.open(tmp_path / "state", epsilon_budget=None, delta=None, accountant=None)
    train = [e for e in ledger.entries if e.kind == "train"]
    assert out.result.steps == train[0].steps == round(1 / out.sample_rate) and 0 < out.epsilon <= 8
    changed = {k.split(".")[0] for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    assert changed == {"generator", "discriminator"}
    # Opacus is detached again: the next round (or site, in a warm process) starts from a plain model
    assert not any(hasattr(p, "grad_sample") and p.grad_sample is not None for p in model.parameters())


def test_frechet_distance_ranks_real_above_noise() -> None:
    x, _ = _bundled_digits()
    a, b = features(x[:300]), features(x[300:600])
    noise = features(torch.rand(300, 1, 28, 28))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-3)
    assert frechet_distance(a, b) < 0.2 * frechet_distance(a, noise)


def test_trace_of_the_square_root_is_exact_also_for_singular_covariances() -> None:
    """Commuting Σa = Q diag(a) Qᵀ, Σb = Q diag(b) Qᵀ: Tr((Σa Σb)^½) = Σ √(a_i b_i), here with zero variances on
    both sides (the singular covariances of few ReLU features). SciPy's sqrtm, called with the ``disp`` argument
    SciPy 1.18 removed, failed on every site; this needs no SciPy at all."""
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.standard_normal((64, 64)))
    a, b = rng.uniform(0.0, 3.0, 64), rng.uniform(0.0, 3.0, 64)
    a[:20], b[10:30] = 0.0, 0.0
    cov_a, cov_b = (q * a) @ q.T, (q * b) @ q.T
    assert trace_sqrt_product(cov_a, cov_b) == pytest.approx(np.sqrt(a * b).sum(), rel=1e-6)
    few = rng.random((10, 64)) * (rng.random(64) > 0.5)  # 10 examples, 64 features, some always 0: rank ≤ 9
    other = few + 0.1
    assert frechet_distance(few, other) == pytest.approx(64 * 0.01, abs=1e-5)  # only the means differ


def test_unlabelled_npz_is_a_site_and_wrong_shapes_are_one_line(tmp_path: Path) -> None:
    site = tmp_path / "s"
    site.mkdir()
    images = np.random.default_rng(0).integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    np.savez(site / "data.npz", x=images)
    data = TASK.load_site(site, TaskOptions())
    assert len(data.train) + len(data.val) == 40 and 2 <= len(data.val) <= 14 and data.schema.kind == "generation"
    np.savez(site / "data.npz", x=np.zeros((10, 32, 32), dtype=np.uint8))
    with pytest.raises(DataError, match=r"data.npz: x is uint8 \(10, 32, 32\); dcgan needs N×28×28"):
        TASK.load_site(site, TaskOptions())


def test_sample_grid_is_an_8_by_8_png() -> None:
    png = TASK.sample_grid(TASK.build_model(SCHEMA, TaskOptions()))
    with Image.open(io.BytesIO(png)) as img:
        assert img.format == "PNG" and img.size == ((8 * 29 + 1) * 2,) * 2
