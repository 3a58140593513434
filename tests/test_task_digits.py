"""digits-cnn: both site formats load, every malformed input fails with one line naming the file."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from fedshield.common.errors import DataError
from fedshield.simulations.datasets import load_dataset
from fedshield.tasks.base import TaskOptions
from fedshield.tasks.registry import get_task

TASK = get_task("digits-cnn")


def _npz(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "data.npz", x=x, y=y)
    return folder


def test_npz_site_loads_with_seeded_holdout(tmp_path: Path) -> None:
    digits = load_dataset("digits")
    site = _npz(tmp_path / "s", digits.x[:500], digits.y[:500])
    a = TASK.load_site(site, TaskOptions(seed=1))
    b = TASK.load_site(site, TaskOptions(seed=1))
    assert len(a.train) + len(a.val) == 500 and 70 <= len(a.val) <= 130  # 20 % ± 3.4 standard deviations
    assert a.train.tensors[0].shape == (len(a.train), 1, 28, 28) and a.train.tensors[0].max() <= 1.0
    assert torch.equal(a.val.tensors[1], b.val.tensors[1])  # the same seed, the same split
    assert len(torch.unique(a.val.tensors[1])) == 10  # ~10 of each class held out: all present


def test_png_folder_site_loads(tmp_path: Path) -> None:
    for label in (3, 7):
        folder = tmp_path / "s" / "images" / str(label)
        folder.mkdir(parents=True)
        for i in range(3):
            Image.fromarray(np.full((28, 28), 40 * i, dtype=np.uint8), mode="L").save(folder / f"{i}.png")
    data = TASK.load_site(tmp_path / "s", TaskOptions())
    assert len(data.train) + len(data.val) == 6
    assert set(torch.cat([data.train.tensors[1], data.val.tensors[1]]).tolist()) == {3, 7}


def _npz_without_y(tmp_path: Path) -> Path:
    (tmp_path / "s").mkdir()
    np.savez(tmp_path / "s" / "data.npz", x=np.zeros((4, 28, 28), np.uint8))
    return tmp_path / "s"


def _garbage_npz(tmp_path: Path) -> Path:
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "data.npz").write_bytes(b"PK\x03\x04 truncated")
    return tmp_path / "s"


def _bad_png(tmp_path: Path) -> Path:
    folder = tmp_path / "s" / "images" / "1"
    folder.mkdir(parents=True)
    Image.fromarray(np.zeros((32, 32), dtype=np.uint8)).save(folder / "big.png")
    return tmp_path / "s"


def _corrupt_png(tmp_path: Path) -> Path:
    folder = tmp_path / "s" / "images" / "1"
    folder.mkdir(parents=True)
    (folder / "x.png").write_bytes(b"not a png")
    return tmp_path / "s"


@pytest.mark.parametrize("make,match", [
    (lambda p: p / "missing", "does not exist"),
    (lambda p: (p / "empty").mkdir() or p / "empty", "neither data.npz nor images"),
    (lambda p: _npz(p / "s", np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.int64)), "28×28"),
    (lambda p: _npz(p / "s", np.zeros((4, 28, 28), np.float32), np.zeros(4, np.int64)), "uint8"),
    (lambda p: _npz(p / "s", np.zeros((4, 28, 28), np.uint8), np.zeros(3, np.int64)), "one label per image"),
    (lambda p: _npz(p / "s", np.zeros((4, 28, 28), np.uint8), np.array([0, 1, 12, 3])), "outside 0-9"),
    (lambda p: _npz(p / "s", np.zeros((4, 28, 28), np.uint8), np.array([0.5, 1, 2, 3])), "integers"),
    (lambda p: _npz(p / "s", np.zeros((1, 28, 28), np.uint8), np.array([1])), "at least 2"),
    (lambda p: _npz(p / "s", np.zeros((0, 28, 28), np.uint8), np.zeros(0, np.int64)), "holds no images"),
    (_npz_without_y, "data.npz: missing array 'y'"),
    (_garbage_npz, "data.npz: not a readable .npz archive"),
    (lambda p: (p / "s" / "images" / "4").mkdir(parents=True) or p / "s", "no PNG images"),
    (lambda p: (p / "s" / "images" / "cat").mkdir(parents=True) or p / "s", "cat: label folder must be named 0-9"),
    (_bad_png, "big.png: image is 32×32"),
    (_corrupt_png, "x.png: not a readable PNG"),
])
def test_malformed_sites_fail_with_one_line_naming_the_file(tmp_path: Path, make, match: str) -> None:
    folder = make(tmp_path)
    with pytest.raises(DataError, match=match) as err:
        TASK.load_site(folder, TaskOptions())
    assert "\n" not in str(err.value) and str(tmp_path) in str(err.value)


def test_cnn_learns_digits_without_privacy(tmp_path: Path) -> None:
    torch.manual_seed(0)
    digits = load_dataset("digits")
    data = TASK.load_site(_npz(tmp_path / "s", digits.x[:700], digits.y[:700]), TaskOptions())
    model = TASK.build_model(data.schema, TaskOptions())
    before = TASK.evaluate(model, data.val, device=torch.device("cpu"))["accuracy"]
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(data.train, batch_size=32, shuffle=True)
    TASK.train(model, loader, opt, epochs=5, device=torch.device("cpu"))
    after = TASK.evaluate(model, data.val, device=torch.device("cpu"))
    assert after["accuracy"] > 0.8 > before + 0.5
    assert set(TASK.metrics) <= set(after)
    assert sum(p.numel() for p in model.parameters()) == 454_922


def _changed_by_a_private_round(model: torch.nn.Module, site, variant: str, tmp_path: Path) -> set[str]:
    """The state-dict keys one DP-SGD round (ε 3) changes in ``model``."""
    from fedshield.client.local_training import PrivacySettings, train_round
    from fedshield.common.run_config import RunConfig

    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = RunConfig(task=TASK.name, rounds=1, batch_size=32, model=variant)
    privacy = PrivacySettings(True, 3.0, 1e-5, 1.0, tmp_path / f"state-{variant}")
    outcome = train_round(TASK, site, model, cfg, run_id="r", rnd=1, privacy=privacy, device=torch.device("cpu"))
    assert outcome.result.steps > 0 and 0 < outcome.epsilon <= 3
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def test_frozen_middle_variant_trains_two_layers_under_dp_and_refuses_unknown_variants(tmp_path: Path) -> None:
    from fedshield.common.errors import ConfigError
    from fedshield.tasks.model_factory import build_model

    data = load_dataset("digits")
    site = TASK.load_site(_npz(tmp_path / "site", data.x[:300], data.y[:300]), TaskOptions())
    full = build_model(TASK, site.schema, TaskOptions(), seed=0)
    model = build_model(TASK, site.schema, TaskOptions(model="frozen-middle"), seed=0)
    assert sum(p.numel() for p in model.parameters()) == 454_922
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 2_122
    # the fixed layers are the seeded initialisation every site and the server build alike
    assert all(torch.equal(a, b) for a, b in zip(full.state_dict().values(), model.state_dict().values(), strict=True))
    # tanh after each hidden layer instead of ReLU, on inputs centred to [-1, 1]
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.modules()) == 3
    assert not any(isinstance(m, torch.nn.ReLU) for m in model.modules())
    x = site.train[:4][0]
    uncentred = copy.deepcopy(model)
    uncentred.centred = False
    with torch.no_grad():
        assert torch.allclose(model(x), uncentred(x * 2 - 1))
        assert not torch.allclose(model(x), uncentred(x))
    assert _changed_by_a_private_round(model, site, "frozen-middle", tmp_path) == {
        "features.0.weight", "features.0.bias", "head.3.weight", "head.3.bias"}
    with pytest.raises(ConfigError, match=r"--model 'mlp': digits-cnn models are auto \(gabor with DP, else full\)"):
        build_model(TASK, site.schema, TaskOptions(model="mlp"), seed=0)


def test_gabor_variant_fixes_the_first_convolution_to_gabor_filters_and_trains_the_last_layer(tmp_path: Path) -> None:
    from fedshield.tasks.digits_cnn import GABOR_NORM
    from fedshield.tasks.gabor_filters import gabor_bank
    from fedshield.tasks.model_factory import build_model

    bank = gabor_bank(5, norm=2.0)
    assert bank.shape == (32, 1, 5, 5)
    assert torch.allclose(bank.sum(dim=(1, 2, 3)), torch.zeros(32), atol=1e-5)  # a flat patch answers 0
    assert torch.allclose(bank.flatten(1).norm(dim=1), torch.full((32,), 2.0))
    assert torch.equal(bank, gabor_bank(5, norm=2.0))  # every site and the server build the same bank
    # even phase of orientation 0 is a vertical bar detector: it answers a vertical bar, not a horizontal one
    bar = torch.zeros(1, 1, 5, 5)
    bar[..., :, 2] = 1.0
    even0 = bank[0:1]
    assert float(torch.nn.functional.conv2d(bar, even0)) > 0.5
    assert abs(float(torch.nn.functional.conv2d(bar.transpose(2, 3), even0))) < 0.5 * float(
        torch.nn.functional.conv2d(bar, even0))
    # ...and orientation 4 (θ = π/2; scale, orientation, phase order) the horizontal one: the orientations
    # really turn, and no two of the 32 filters are the same
    even4 = bank[8:9]
    assert float(torch.nn.functional.conv2d(bar.transpose(2, 3), even4)) > 2 * abs(float(
        torch.nn.functional.conv2d(bar, even4)))
    assert torch.cdist(bank.flatten(1), bank.flatten(1)).add(torch.eye(32)).min() > 0.1
    with pytest.raises(ValueError, match="odd"):
        gabor_bank(4)

    data = load_dataset("digits")
    site = TASK.load_site(_npz(tmp_path / "site", data.x[:300], data.y[:300]), TaskOptions())
    middle = build_model(TASK, site.schema, TaskOptions(model="frozen-middle"), seed=0)
    model = build_model(TASK, site.schema, TaskOptions(model="gabor"), seed=0)
    assert sum(p.numel() for p in model.parameters() if p.requires_grad) == 1_290
    assert torch.equal(model.features[0].weight, gabor_bank(5, norm=GABOR_NORM))
    assert not model.features[0].bias.any()
    # the rest is frozen-middle: the same seeded layers, tanh, centred inputs
    same = {k for k, v in model.state_dict().items() if torch.equal(v, middle.state_dict()[k])}
    assert same == set(model.state_dict()) - {"features.0.weight", "features.0.bias"}
    assert sum(isinstance(m, torch.nn.Tanh) for m in model.modules()) == 3 and model.centred
    assert _changed_by_a_private_round(model, site, "gabor", tmp_path) == {"head.3.weight", "head.3.bias"}


@pytest.mark.parametrize("given, pretrained, dp, resolved", [
    ("auto", False, True, "gabor"),  # DP-SGD from a fresh model: the variant shaped for it
    ("auto", False, False, "full"),
    ("auto", True, True, "full"),  # pretrained weights come from the ReLU network
    ("full", False, True, "full"),
    ("frozen-middle", False, True, "frozen-middle"),
    ("gabor", False, False, "gabor"),
])
def test_auto_is_gabor_under_dp_and_the_full_model_otherwise(given: str, pretrained: bool, dp: bool,
                                                                    resolved: str) -> None:
    from fedshield.tasks.init_weights import resolve_model
    from fedshield.tasks.registry import get_task
    from fedshield.tasks.run_settings import resolve_settings

    assert resolve_model(TASK, given, pretrained=pretrained, dp=dp) == resolved
    if not pretrained:  # what `fl-server start` and `fl-sim run` put in the run config
        assert resolve_settings("digits-cnn", model=given, init_weights=None, lr=None, dp=dp).model == resolved
    assert resolve_model(get_task("dcgan"), "auto", pretrained=pretrained, dp=dp) == "auto"  # one network
