"""transfer-mobilenet: the MobileNetV2 network, its variants, head-only DP training, --init-weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from fedshield.client import local_training
from fedshield.client.book_keeping import BookKeepingUnsupported
from fedshield.client.local_training import PrivacySettings, make_private, train_round
from fedshield.common.errors import ConfigError
from fedshield.common.run_config import RunConfig
from fedshield.simulations.shapes_dataset import generate_shapes
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.init_weights import load_weights, read_weights, resolve_model, start_from
from fedshield.tasks.mobilenet_v2 import MobileNetV2
from fedshield.tasks.model_factory import build_model
from fedshield.tasks.registry import get_task

TASK = get_task("transfer-mobilenet")
SCHEMA = DataSchema(kind="classification", input_shape=(3, 32, 32), num_outputs=10, labels=tuple("0123456789"))


def test_network_is_mobilenet_v2_and_opacus_trains_it_as_is() -> None:
    model = MobileNetV2(10)
    assert ModuleValidator.validate(model, strict=False) == []
    # the paper's network at 1000 classes has 3.50 M parameters; BatchNorm's affine pairs become GroupNorm's
    assert sum(p.numel() for p in MobileNetV2(1000).parameters()) == 3_504_872
    assert sum(p.numel() for p in model.parameters()) == 2_236_682
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    assert sum(p.numel() for p in MobileNetV2(10, width=0.35).parameters()) < 450_000


@pytest.mark.parametrize("given,pretrained,resolved", [
    ("auto", True, "head@1"), ("auto", False, "full@1"), ("full@0.35", True, "full@0.35"),
    ("head@0.5", False, "head@0.5"),
])
def test_auto_trains_the_head_only_when_the_run_starts_from_weights(given: str, pretrained: bool,
                                                                   resolved: str) -> None:
    assert resolve_model(TASK, given, pretrained=pretrained, dp=True) == resolved


@pytest.mark.parametrize("bad", ["mlp", "head@0.3", "full@x", "head@"])
def test_unknown_variant_is_one_line_naming_the_flag(bad: str) -> None:
    with pytest.raises(ConfigError, match=r"--model .*auto, head or full"):
        TASK.build_model(SCHEMA, TaskOptions(model=bad))


def _site(n: int = 64) -> SiteData:
    x, y = generate_shapes(n)
    xt = torch.as_tensor(x, dtype=torch.float32).permute(0, 3, 1, 2) / 255
    data = TensorDataset(xt, torch.as_tensor(y))
    return SiteData(data, data, SCHEMA, Path("."))


def test_head_only_dp_round_changes_the_head_and_nothing_else(tmp_path: Path) -> None:
    model = build_model(TASK, SCHEMA, TaskOptions(model="head@0.35"), seed=0)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RunConfig(task=TASK.name, rounds=1, batch_size=16, model="head@0.35")
    privacy = PrivacySettings(True, 8.0, 1e-5, 1.0, tmp_path / "state")
    outcome = train_round(TASK, _site(), model, cfg, run_id="r", rnd=1, privacy=privacy, device=torch.device("cpu"))
    assert outcome.result.steps > 0 and 0 < outcome.epsilon <= 8
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.1.weight", "classifier.1.bias"}


def test_full_network_trains_under_book_keeping_and_its_ghost_fallback_still_works(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """GroupNorm and depthwise convolutions are book-keeping layers: the task's ``bk`` mode takes the whole
    network (no fallback), a DP round changes every tensor; with book-keeping refused, Opacus' ghost clipping
    (the fallback) trains it."""
    model = build_model(TASK, SCHEMA, TaskOptions(model="full@0.35"), seed=0)
    site = _site(32)
    private = make_private(TASK, site, model, torch.optim.SGD(model.parameters(), lr=0.1),
                           DataLoader(site.train, batch_size=16), noise_multiplier=1.0, max_grad_norm=1.0)
    assert TASK.dp_mode == "bk" and private.mode == "bk"
    private.model.to_standard_module()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RunConfig(task=TASK.name, rounds=1, batch_size=16, model="full@0.35")
    privacy = PrivacySettings(True, 8.0, 1e-5, 1.0, tmp_path / "state")
    outcome = train_round(TASK, site, model, cfg, run_id="r", rnd=1, privacy=privacy, device=torch.device("cpu"))
    assert outcome.result.steps > 0 and 0 < outcome.epsilon <= 8
    assert all(not torch.equal(before[k], v) for k, v in model.state_dict().items())

    def refused(*args: object, **kwargs: object) -> None:
        raise BookKeepingUnsupported("refused for this test")

    monkeypatch.setattr(local_training, "make_private_book_keeping", refused)
    model = build_model(TASK, SCHEMA, TaskOptions(model="full@0.35"), seed=0)
    private = make_private(TASK, site, model, torch.optim.SGD(model.parameters(), lr=0.1),
                           DataLoader(site.train, batch_size=16), noise_multiplier=1.0, max_grad_norm=1.0)
    assert private.mode == "ghost"
    xb, yb = site.train.tensors[0][:8], site.train.tensors[1][:8]
    private.optimizer.zero_grad()
    private.criterion(private.model(xb), yb).backward()
    private.optimizer.step()
    assert all(p.grad is not None for p in model.parameters())


def test_init_weights_fills_every_tensor_and_a_head_for_other_classes_stays_fresh(tmp_path: Path) -> None:
    pretrained = MobileNetV2(1000, width=0.35)  # e.g. weights pretrained on another label set
    state = pretrained.state_dict()
    state["features.0.1.running_mean"] = torch.zeros(16)  # BatchNorm statistics of other layouts are skipped
    torch.save(state, tmp_path / "w.pt")
    model = MobileNetV2(10, width=0.35)
    fresh_head = model.classifier[1].weight.clone()
    fresh = load_weights(model, read_weights(tmp_path / "w.pt"), source=tmp_path / "w.pt",
                         fresh_prefixes=TASK.head_prefixes())
    assert fresh == ["classifier.1.weight", "classifier.1.bias"]
    assert torch.equal(model.features[5].conv[1][0].weight, pretrained.features[5].conv[1][0].weight)
    assert torch.equal(model.classifier[1].weight, fresh_head)


def test_init_weights_accepts_a_fedshield_checkpoint(tmp_path: Path) -> None:
    source = MobileNetV2(10, width=0.35)
    torch.save({"format": "fedshield-checkpoint", "task": TASK.name, "state_dict": source.state_dict()},
               tmp_path / "c.pt")
    model = MobileNetV2(10, width=0.35)
    start_from(TASK, model, str(tmp_path / "c.pt"))
    pairs = zip(model.state_dict().values(), source.state_dict().values(), strict=True)
    assert all(torch.equal(a, b) for a, b in pairs)


def test_bad_weights_are_refused_in_one_line_and_the_model_is_untouched(tmp_path: Path) -> None:
    model = MobileNetV2(10, width=0.35)
    before = [v.clone() for v in model.state_dict().values()]
    torch.save(MobileNetV2(10, width=0.5).state_dict(), tmp_path / "wider.pt")
    with pytest.raises(ConfigError, match=r"--init-weights .*wider.pt: tensor 'features\.[\w.]+' has shape \(16, "
                                          r".*the model needs \(8, "):
        start_from(TASK, model, str(tmp_path / "wider.pt"))
    assert all(torch.equal(a, b) for a, b in zip(before, model.state_dict().values(), strict=True))
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(ConfigError, match=r"--init-weights .*junk.pt: not a torch weights file"):
        read_weights(tmp_path / "junk.pt")
    torch.save({"weights": np.arange(3)}, tmp_path / "numpy.pt")
    with pytest.raises(ConfigError, match=r"numpy.pt: (not a torch weights file|holds no name)"):
        read_weights(tmp_path / "numpy.pt")
    with pytest.raises(ConfigError, match=r"--init-weights .*missing.pt: no such file"):
        read_weights(tmp_path / "missing.pt")
