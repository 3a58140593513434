"""cifar-cnn: the documents' colour CNN, both site formats at any image size, and every malformed input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from opacus.validators import ModuleValidator
from PIL import Image

from fedshield.client.site_check import infer_task
from fedshield.common.errors import DataError
from fedshield.simulations.shapes_dataset import SHAPES, generate_shapes
from fedshield.tasks.base import TaskOptions
from fedshield.tasks.registry import get_task
from fedshield.tasks.site_config import site_options

TASK = get_task("cifar-cnn")


def _npz(folder: Path, x: np.ndarray, y: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    np.savez(folder / "data.npz", x=x, y=y)
    return folder


def _png(path: Path, mode: str, size: tuple[int, int] = (40, 24)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color=200 if mode == "L" else (200, 30, 90)).save(path)


def test_model_is_the_documents_cnn_and_opacus_trains_it_as_is(tmp_path: Path) -> None:
    schema = TASK.load_site(_npz(tmp_path / "s", *generate_shapes(40)), TaskOptions()).schema
    model = TASK.build_model(schema, TaskOptions())
    assert ModuleValidator.validate(model, strict=False) == []
    assert sum(p.numel() for p in model.parameters()) == 122_570
    assert model(torch.rand(5, 3, 32, 32)).shape == (5, 10)


def test_npz_of_any_size_is_resized_and_held_out(tmp_path: Path) -> None:
    x, y = generate_shapes(100)
    big = np.repeat(np.repeat(x, 2, axis=1), 2, axis=2)  # 64×64
    data = TASK.load_site(_npz(tmp_path / "s", big, y), TaskOptions(seed=1))
    assert data.train.tensors[0].shape[1:] == (3, 32, 32) and len(data.train) + len(data.val) == 100
    assert 8 <= len(data.val) <= 32
    assert float(data.train.tensors[0].min()) >= 0 and float(data.train.tensors[0].max()) <= 1
    assert data.schema.input_shape == (3, 32, 32) and data.schema.labels == tuple(str(i) for i in range(10))
    assert infer_task(tmp_path / "s") == "cifar-cnn"


def test_named_label_folders_follow_the_sites_label_set(tmp_path: Path) -> None:
    site = tmp_path / "site"
    for name in ("cat", "dog"):
        for i in range(3):
            _png(site / "images" / name / f"{i}.png", "RGB", size=(50 + i, 30))
    (site / "fedshield.toml").write_text('task = "cifar-cnn"\nlabels = ["cat", "dog", "bird"]\n')
    _, options = site_options(site, {})
    data = TASK.load_site(site, options)
    assert data.schema.num_outputs == 3 and data.schema.labels == ("cat", "dog", "bird")
    assert sorted(torch.cat([data.train.tensors[1], data.val.tensors[1]]).tolist()) == [0, 0, 0, 1, 1, 1]
    assert infer_task(site) == "cifar-cnn"


def _greyscale_among_colour(site: Path) -> None:
    _png(site / "images" / "0" / "a.png", "RGB")
    _png(site / "images" / "0" / "b.png", "L")


def _unknown_label(site: Path) -> None:
    _png(site / "images" / "horse" / "a.png", "RGB")


def _label_out_of_set(site: Path) -> None:
    x, y = generate_shapes(10)
    _npz(site, x, np.where(y == 0, 12, y))


def _greyscale_npz(site: Path) -> None:
    _npz(site, np.zeros((4, 32, 32), np.uint8), np.zeros(4, np.int64))


def _unreadable(site: Path) -> None:
    (site / "images" / "1").mkdir(parents=True)
    (site / "images" / "1" / "x.png").write_text("not an image")


@pytest.mark.parametrize("make,match", [
    (_greyscale_among_colour, r"b\.png: greyscale image while .*a\.png is colour"),
    (_unknown_label, r"label 'horse' is not in the task's label set"),
    (_label_out_of_set, r"data\.npz: label 12 at index \d+ is outside 0-9"),
    (_greyscale_npz, r"must be N×H×W×3"),
    (_unreadable, r"x\.png: not a readable image"),
])
def test_malformed_sites_fail_with_one_line_naming_the_file(tmp_path: Path, make, match: str) -> None:
    site = tmp_path / "site"
    site.mkdir()
    make(site)
    with pytest.raises(DataError, match=match) as err:
        TASK.load_site(site, TaskOptions())
    assert "\n" not in str(err.value)


def test_shapes_are_generated_balanced_and_seeded() -> None:
    x, y = generate_shapes(200, seed=3)
    x2, _ = generate_shapes(200, seed=3)
    assert x.shape == (200, 32, 32, 3) and x.dtype == np.uint8 and np.array_equal(x, x2)
    assert np.bincount(y).tolist() == [20] * len(SHAPES)
