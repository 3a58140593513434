"""seq2seq-attention: byte tokens, the TSV loader's refusals, the model under Opacus, the metrics."""

from __future__ import annotations

import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from opacus import GradSampleModule
from opacus.validators import ModuleValidator
from torch.utils.data import DataLoader, TensorDataset

from fedshield.client.local_training import make_private
from fedshield.client.site_check import infer_task
from fedshield.common.errors import DataError
from fedshield.simulations.dates_dataset import STYLES, generate_dates
from fedshield.tasks.base import DataSchema, SiteData, TaskOptions
from fedshield.tasks.byte_tokens import BOS, EOS, PAD, VOCAB, decode, encode, source_tensor, target_tensor
from fedshield.tasks.registry import get_task
from fedshield.tasks.seq2seq_attention import sequence_loss
from fedshield.tasks.seq2seq_model import Seq2SeqAttention
from fedshield.tasks.site_config import site_options

TASK = get_task("seq2seq-attention")


def _site(folder: Path, text: str, toml: str = "") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.tsv").write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    if toml:
        (folder / "fedshield.toml").write_text(toml)
    return folder


def test_byte_tokens_round_trip_any_text_and_pad_as_documented() -> None:
    assert decode(encode("22 novembre 2026 — größer")) == "22 novembre 2026 — größer"
    src = source_tensor(["ab"], 4)
    assert src.tolist() == [[PAD, PAD, *encode("ab")]]  # left-padded
    tgt = target_tensor(["ab"], 4)
    assert tgt.tolist() == [[BOS, *encode("ab"), EOS, PAD, PAD]]


def test_generated_dates_pair_each_style_with_its_iso_date() -> None:
    pairs, styles = generate_dates(10, seed=3)
    assert pairs.shape == (10, 2) and set(styles.tolist()) == set(range(len(STYLES)))
    for (source, target), style in zip(pairs, styles, strict=True):
        year, month, day = target.split("-")
        assert year in source and len(target) == 10
        assert (str(int(day)) in source) if style != 2 else source.startswith(f"{day}/{month}/")
    assert (generate_dates(10, seed=3)[0] == pairs).all()


def test_tsv_site_loads_holds_out_and_is_recognised(tmp_path: Path) -> None:
    pairs, _ = generate_dates(20)
    site = _site(tmp_path / "s", "".join(f"{s}\t{t}\n" for s, t in pairs) + "\n")
    data = TASK.load_site(site, TaskOptions())
    assert len(data.train) + len(data.val) == 20 and 1 <= len(data.val) <= 9
    assert data.schema.kind == "sequence" and data.schema.input_shape == (48,)
    assert infer_task(site) == "seq2seq-attention"


@pytest.mark.parametrize("text,toml,message", [
    ("a\tb\nno tab here\n", "", r"data.tsv:2: no tab; each line is source<TAB>target"),
    ("a\tb\nx\ty\tz\n", "", r"data.tsv:2: 2 tabs"),
    ("a\tb\n\tb\n", "", r"data.tsv:2: empty source"),
    ("a\tb\nc\t \n", "", r"data.tsv:2: empty target"),
    ("a\tb\nabcdefgh\tb\n", "max_length = 4\n", r"data.tsv:2: source is 8 bytes, more than max_length = 4"),
    ("a\tb\nc\t2026-11-22\n", "max_target_length = 5\n", r"data.tsv:2: target is 10 bytes, more than "
                                                         r"max_target_length"),
    (b"a\tb\n\xff\tb\n", "", r"data.tsv: not UTF-8"),
    ("a\tb\n", "", r"1 pair\(s\); a site needs at least 2"),
])
def test_malformed_pairs_are_refused_naming_file_and_row(tmp_path: Path, text, toml: str, message: str) -> None:
    site = _site(tmp_path / "s", text, toml)
    _, options = site_options(site, {})
    with pytest.raises(DataError, match=message):
        TASK.load_site(site, options)


def test_model_is_opacus_ready_and_per_sample_gradients_are_exact() -> None:
    """Opacus' per-sample gradients through both DPLSTMs and the attention equal per-example autograd."""
    torch.manual_seed(0)
    model = Seq2SeqAttention(hidden=16, embed=8)
    assert ModuleValidator.validate(model, strict=False) == []
    src = source_tensor(["12 may 2020", "may 12, 2020", "x"], 16)
    tgt = target_tensor(["2020-05-12", "2020-05-12", "y"], 10)
    gsm = GradSampleModule(model, loss_reduction="sum")
    loss = sequence_loss(gsm(src, tgt[:, :-1]), tgt[:, 1:]) * len(src)  # per-example means, summed
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # embeddings' integer inputs need no gradient; torch says so
        loss.backward()
    per_sample = {n: p.grad_sample.clone() for n, p in gsm.named_parameters() if p.grad_sample is not None}
    gsm.to_standard_module()
    names = {name.removeprefix("_module.") for name in per_sample}
    assert names == {name for name, _ in model.named_parameters()}  # every parameter, both LSTMs included
    for i in range(3):
        model.zero_grad(set_to_none=True)
        sequence_loss(model(src[i:i + 1], tgt[i:i + 1, :-1]), tgt[i:i + 1, 1:]).backward()
        for name, p in model.named_parameters():
            expected = p.grad if p.grad is not None else torch.zeros_like(p)
            got = per_sample.get(f"_module.{name}", per_sample.get(name))
            assert torch.allclose(got[i], expected, atol=1e-5), name


def test_metrics_of_a_model_that_copies_the_target() -> None:
    """exact_match and BLEU reach their maximum when every decoded text equals its reference."""
    data = TASK.load_site(_site(Path(tempfile.mkdtemp()) / "s",
                                "".join(f"{d} may 2020\t2020-05-{d:02d}\n" for d in range(1, 11))),
                          TaskOptions(val_fraction=0.5))
    model = TASK.build_model(data.schema, TaskOptions())
    refs = data.val.tensors[1]

    def oracle(src: torch.Tensor, max_len: int) -> torch.Tensor:  # "decodes" the references themselves
        return refs[:, 1:]

    model.greedy = oracle  # type: ignore[method-assign]
    metrics = TASK.evaluate(model, data.val, device=torch.device("cpu"))
    assert metrics["exact_match"] == 1.0 and metrics["bleu"] == pytest.approx(100.0)


def _dates_site(n: int) -> SiteData:
    pairs, _ = generate_dates(n, seed=1)
    src, tgt = source_tensor(list(pairs[:, 0]), 48), target_tensor(list(pairs[:, 1]), 16)
    data = TensorDataset(src, tgt)
    return SiteData(data, data, DataSchema(kind="sequence", input_shape=(48,), num_outputs=VOCAB), Path("."))


def _private_update(mode: str, site: SiteData, batch: tuple[torch.Tensor, torch.Tensor],
                    monkeypatch: pytest.MonkeyPatch) -> tuple[str, dict[str, torch.Tensor]]:
    """The mode make_private used and the parameter change of one noiseless DP-SGD step on ``batch``."""
    monkeypatch.setattr(TASK, "dp_mode", mode)
    torch.manual_seed(0)
    model = TASK.build_model(site.schema, TaskOptions())
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    private = make_private(TASK, site, model, torch.optim.SGD(model.parameters(), lr=1.0),
                           DataLoader(site.train, batch_size=16), noise_multiplier=0.0, max_grad_norm=0.1)
    private.optimizer.zero_grad()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Opacus' hooks: the embeddings' integer inputs need no gradient
        TASK.step_loss(private.model, *batch, private.criterion).backward()
    private.optimizer.step()
    private.model.to_standard_module()
    return private.mode, {k: v.detach() - before[k] for k, v in model.named_parameters()}


def test_the_private_step_is_the_same_in_book_keeping_and_in_its_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    """The task trains with book-keeping; its clipped update (C below every example's norm) equals Opacus'
    hooks' (per-sample gradients through DPLSTM's RNNLinear hooks) and ghost clipping's, the fallbacks
    where book-keeping refuses a model."""
    site = _dates_site(64)
    batch = (site.train.tensors[0][:12], site.train.tensors[1][:12])
    updates = {mode: _private_update(mode, site, batch, monkeypatch) for mode in ("bk", "hooks", "ghost")}
    assert {mode: used for mode, (used, _) in updates.items()} == {"bk": "bk", "hooks": "hooks", "ghost": "ghost"}
    bk = updates["bk"][1]
    assert sum(float(d.norm()) for d in bk.values()) > 0
    for mode in ("hooks", "ghost"):
        for name, delta in updates[mode][1].items():
            assert torch.allclose(bk[name], delta, rtol=1e-3, atol=1e-7), (mode, name)


def test_the_task_learns_under_dp_with_book_keeping() -> None:
    """Three epochs of DP-SGD (σ = 0.5, C = 1) with the platform's mode for the task, book-keeping, through
    the task's own training loop: the training loss falls well below an untrained model's."""
    torch.manual_seed(0)
    site = _dates_site(256)
    model = TASK.build_model(site.schema, TaskOptions())
    before = TASK.evaluate(model, site.val, device=torch.device("cpu"))["loss"]
    model.train()
    private = make_private(TASK, site, model, torch.optim.SGD(model.parameters(), lr=TASK.default_lr(True)),
                           DataLoader(site.train, batch_size=32), noise_multiplier=0.5, max_grad_norm=1.0)
    assert private.mode == "bk"
    TASK.train(private.model, private.loader, private.optimizer, epochs=3, device=torch.device("cpu"),  # type: ignore[arg-type]
               criterion=private.criterion)
    private.model.to_standard_module()
    after = TASK.evaluate(model, site.val, device=torch.device("cpu"))["loss"]
    assert after < 0.6 * before, (before, after)
