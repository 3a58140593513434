"""text-transformer: hashed words, the CSV format and every malformed row, and the model Opacus trains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from opacus.validators import ModuleValidator

from fedshield.client.site_check import check_site, infer_task
from fedshield.common.errors import DataError
from fedshield.simulations.reviews_dataset import generate_reviews
from fedshield.tasks.base import TaskOptions
from fedshield.tasks.hashing_tokenizer import CLS, PAD, encode
from fedshield.tasks.registry import get_task

TASK = get_task("text-transformer")


def _site(folder: Path, rows: list[tuple[str, str]], toml: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / "data.csv", "w", encoding="utf-8") as fh:
        fh.write("text,label\n" + "".join(f'"{t}",{label}\n' for t, label in rows))
    if toml:
        (folder / "fedshield.toml").write_text(toml)
    return folder


def test_hashed_ids_are_the_same_in_every_process() -> None:
    ids = encode(["Hello, world!", "hello world"], buckets=2048, max_length=6)
    assert ids[0, 0] == CLS and ids[0, 5] == PAD and ids[0, 1] == ids[1, 1] and ids[0, 3] == ids[1, 2]
    other = subprocess.run([sys.executable, "-c", "from fedshield.tasks.hashing_tokenizer import encode; "
                            "print(encode(['Hello, world!'], buckets=2048, max_length=6).tolist())"],
                           capture_output=True, text=True, check=True, env={"PYTHONHASHSEED": "123"})
    assert other.stdout.strip() == str([ids[0].tolist()])


def test_named_labels_and_the_model(tmp_path: Path) -> None:
    texts, y = generate_reviews(40)
    names = ("negative", "positive")
    site = _site(tmp_path / "s", [(t, names[int(label)]) for t, label in zip(texts, y, strict=True)],
                 'task = "text-transformer"\nlabels = ["negative", "positive"]\nmax_length = 32\n')
    name, options, data = check_site(site, task=None, overrides={})
    assert name == "text-transformer" and len(data.train) + len(data.val) == 40 and 2 <= len(data.val) <= 15
    assert data.schema.input_shape == (32,) and data.schema.labels == names
    model = TASK.build_model(data.schema, options)
    assert ModuleValidator.validate(model, strict=False) == []
    assert model(data.train.tensors[0][:4]).shape == (4, 2)
    (site / "fedshield.toml").unlink()
    assert infer_task(site) == "text-transformer"


@pytest.mark.parametrize("rows,toml,match", [
    ([("fine", "0"), ("", "1")], "", r"data\.csv:3: empty text"),
    ([("fine", "0"), ("also fine", "2")], "", r"data\.csv:3: label '2' is not in the task's label set \(0, 1\)"),
    ([("fine", "0"), ("a b c d e f g", "1")], "max_length = 4\n", r"data\.csv:3: text has 8 tokens, more than "
                                                                  r"max_length 4"),
    ([("fine", "ok")], 'labels = ["bad", "good"]\n', r"label 'ok' is not in the task's label set \(bad, good\)"),
])
def test_malformed_rows_fail_with_one_line_naming_file_and_row(tmp_path: Path, rows, toml: str, match: str) -> None:
    from fedshield.tasks.site_config import site_options

    site = _site(tmp_path / "s", rows, toml)
    with pytest.raises(DataError, match=match) as err:
        TASK.load_site(site, site_options(site, {})[1])
    assert "\n" not in str(err.value)


def test_wrong_header_and_ragged_rows(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "data.csv").write_text("sentence,label\nhi,0\n")
    with pytest.raises(DataError, match=r"data\.csv:1: header is .*text,label"):
        TASK.load_site(tmp_path / "a", TaskOptions())
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "data.csv").write_text("text,label\nhi,0\nno label here\n")
    with pytest.raises(DataError, match=r"data\.csv:3: 1 fields"):
        TASK.load_site(tmp_path / "b", TaskOptions())

