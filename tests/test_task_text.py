"""text-transformer: hashed words, the CSV format and every malformed row, and the model Opacus trains."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from opacus.validators import ModuleValidator
from torch import nn

from fedshield.client.site_check import check_site, infer_task
from fedshield.common.errors import ConfigError, DataError
from fedshield.simulations.reviews_dataset import generate_reviews
from fedshield.tasks.base import TaskOptions
from fedshield.tasks.hashing_tokenizer import CLS, PAD, encode
from fedshield.tasks.init_weights import start_from
from fedshield.tasks.registry import get_task
from fedshield.tasks.self_attention import MultiheadSelfAttention
from fedshield.tasks.text_transformer import EncoderLayer, TextTransformer

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



def _padded_batch(n: int = 6, length: int = 12, width: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, L, width) inputs and a key padding mask: example i has its last i positions padded (never position 0)."""
    torch.manual_seed(0)
    padding = torch.zeros(n, length, dtype=torch.bool)
    for i in range(n):
        padding[i, length - i:] = True
    return torch.randn(n, length, width), padding


def test_attention_equals_torch_multihead_attention_on_the_same_weights() -> None:
    """Opacus 1.6's DPMultiheadAttention(batch_first=True), which the task used, differed by up to 0.74."""
    x, padding = _padded_batch()
    ours = MultiheadSelfAttention(64, 4)
    stock = nn.MultiheadAttention(64, 4, batch_first=True)
    with torch.no_grad():
        for p in (*ours.parameters(), *stock.parameters()):
            p.normal_(0, 0.3)  # larger than the initialisation, so that the softmax is far from uniform
        ours.in_proj.weight.copy_(stock.in_proj_weight)
        ours.in_proj.bias.copy_(stock.in_proj_bias)
        ours.out_proj.load_state_dict(stock.out_proj.state_dict())
    expected = stock(x, x, x, key_padding_mask=padding, need_weights=False)[0]
    assert (ours(x, padding) - expected).abs().max() <= 1e-5


def test_encoder_layer_is_torch_transformer_encoder_layer() -> None:
    """The task's layer is the post-norm layer of Vaswani et al. as torch builds it, on the same weights."""
    x, padding = _padded_batch()
    ours = EncoderLayer(64, 4, 128)
    stock = nn.TransformerEncoderLayer(64, 4, 128, dropout=0.0, batch_first=True).train()  # no fast path
    with torch.no_grad():
        stock.self_attn.in_proj_weight.copy_(ours.attention.in_proj.weight)
        stock.self_attn.in_proj_bias.copy_(ours.attention.in_proj.bias)
        stock.self_attn.out_proj.load_state_dict(ours.attention.out_proj.state_dict())
        for mine, theirs in ((ours.feed_forward[0], stock.linear1), (ours.feed_forward[2], stock.linear2),
                             (ours.norm1, stock.norm1), (ours.norm2, stock.norm2)):
            theirs.load_state_dict(mine.state_dict())
    assert (ours(x, padding) - stock(x, src_key_padding_mask=padding)).abs().max() <= 1e-5


def test_a_checkpoint_of_the_old_attention_is_refused_in_one_line(tmp_path: Path) -> None:
    """Opacus' DPMultiheadAttention saved its projections as nn.MultiheadAttention does (``in_proj_weight``):
    tensors of the same shapes that a corrected model must not take over silently, from --init-weights or
    from a resumed run's state."""
    model = TextTransformer(2)
    old = {k.replace("attention.in_proj.", "attention.in_proj_"): v for k, v in model.state_dict().items()}
    torch.save(old, tmp_path / "old.pt")
    with pytest.raises(ConfigError, match=r"old\.pt: .*text-transformer saved before .*attention") as err:
        start_from(TASK, model, str(tmp_path / "old.pt"))
    assert "\n" not in str(err.value)
    torch.save(model.state_dict(), tmp_path / "new.pt")
    start_from(TASK, TextTransformer(2), str(tmp_path / "new.pt"))
