"""Book-keeping clipping (client/book_keeping.py) against per-example autograd, and its Opacus wiring."""

from __future__ import annotations

import copy
import logging
from pathlib import Path

import pytest
import torch
from opacus import PrivacyEngine
from opacus.layers import DPLSTM
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.utils.data import DataLoader, TensorDataset

from fedshield.client import book_keeping
from fedshield.client.book_keeping import (
    BookKeepingLoss,
    BookKeepingModule,
    BookKeepingUnsupported,
    _padded,
    clip_and_sum,
    depthwise_by_convolution,
    depthwise_by_taps,
    make_private_book_keeping,
    output_grads,
)
from fedshield.client.local_training import make_private
from fedshield.tasks.base import DataSchema, SiteData
from fedshield.tasks.mobilenet_v2 import MobileNetV2
from fedshield.tasks.registry import get_task
from fedshield.tasks.text_transformer import TextTransformer


def _per_example(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Each example's gradient norm ``(B,)`` over all trainable parameters, and its gradients ``(B, *shape)`` by
    name, from vmap'd per-example autograd in ``model``'s dtype (no Opacus, no book-keeping)."""
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    frozen = {k: v.detach() for k, v in model.named_parameters() if not v.requires_grad}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, {**p, **frozen}, (xi[None],)), yi[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.stack([g.reshape(len(x), -1).norm(dim=1) for g in per_example.values()], 1).norm(dim=1), per_example


def _clipped_sums(norms: torch.Tensor, per_example: dict[str, torch.Tensor], clip: float) -> dict[str, torch.Tensor]:
    """Σ_i min(1, C/‖g_i‖)·g_i for each parameter."""
    factors = (clip / norms).clamp(max=1.0)
    return {k: torch.einsum("b,b...->...", factors, g) for k, g in per_example.items()}


def _clipped_sum_reference(model: nn.Module, x: torch.Tensor, y: torch.Tensor, clip: float) -> dict[str, torch.Tensor]:
    """Σ_i min(1, C/‖g_i‖)·g_i from per-example gradients of vmap'd autograd (no Opacus, no book-keeping)."""
    return _clipped_sums(*_per_example(model, x, y), clip)


def _bias_frozen(layer: nn.Module) -> nn.Module:
    layer.bias.requires_grad_(False)  # type: ignore[union-attr]
    return layer


class _NestedHead(nn.Module):
    """A model with its own ``forward`` (not an ``nn.Sequential``): book-keeping records it by forward hooks."""

    def __init__(self) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(10, 16), nn.ReLU())
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


MODELS = {
    "own-forward-by-hooks": (_NestedHead, (10,)),
    "mlp-child-by-child": (lambda: nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3)), (10,)),
    # digits-cnn's shape: the 1-channel convolution by im2col, the 16-channel one by kernel rows
    "conv-pool-linear": (lambda: nn.Sequential(nn.Conv2d(1, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                               nn.Conv2d(16, 16, 5, padding=2), nn.ReLU(), nn.MaxPool2d(2),
                                               nn.Flatten(), nn.Linear(16 * 7 * 7, 3)), (1, 28, 28)),
    "reflect-same-padding": (lambda: nn.Sequential(nn.Conv2d(3, 24, 3, padding="same", padding_mode="reflect"),
                                                   nn.ReLU(), nn.Flatten(), nn.Linear(24 * 8 * 8, 3)), (3, 8, 8)),
    "stride-dilation": (lambda: nn.Sequential(nn.Conv2d(3, 5, 3, stride=2, dilation=2), nn.Flatten(),
                                              nn.Linear(5 * 6 * 6, 3)), (3, 16, 16)),
    "dilated-stride-1": (lambda: nn.Sequential(nn.Conv2d(16, 6, (3, 5), dilation=(2, 1), padding=(1, 2)),
                                               nn.Flatten(), nn.Linear(6 * 8 * 8, 3)), (16, 10, 8)),
    "linear-over-positions": (lambda: nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Flatten(), nn.Linear(7 * 5, 3)),
                              (5, 6)),
    "ghost-norm-positions": (lambda: nn.Sequential(nn.Linear(40, 40), nn.Flatten(), nn.Linear(40 * 2, 3)), (2, 40)),
    "frozen-parts": (lambda: nn.Sequential(nn.Linear(10, 16).requires_grad_(False), nn.ReLU(),
                                           _bias_frozen(nn.Linear(16, 8)), nn.ReLU(), nn.Linear(8, 3, bias=False)),
                     (10,)),
}


def _ids(n: int, length: int, vocab: int) -> torch.Tensor:
    """Token ids ``(n, length)`` with repeats inside each example (a repeated id sums its rows' gradients),
    0 (padding) in about a third of the positions after the first, 1 (``[CLS]``) first."""
    ids = torch.randint(2, vocab, (n, length))
    ids[:, 1:3] = ids[:, 3:5]
    ids[torch.rand(n, length) < 0.3] = 0
    ids[:, 0] = 1
    return ids


def _no_bias(layer: nn.LayerNorm) -> nn.LayerNorm:
    layer.bias = None  # type: ignore[assignment]  # as nn.LayerNorm(..., bias=False) leaves it
    return layer


#: models of Embedding and LayerNorm layers: name -> (build, input shape, vocabulary (0: float input))
LAYER_MODELS = {
    "embedding-repeated-ids": (lambda: nn.Sequential(nn.Embedding(20, 6), nn.Flatten(), nn.Linear(6 * 7, 3)), (7,), 20),
    "embedding-padding-idx-layernorm": (lambda: nn.Sequential(nn.Embedding(12, 8, padding_idx=0), nn.LayerNorm(8),
                                                              nn.Tanh(), nn.Flatten(), nn.Linear(8 * 6, 3)), (6,), 12),
    "layernorm-2d-frozen-bias": (lambda: nn.Sequential(nn.Linear(6, 6), _bias_frozen(nn.LayerNorm((5, 6))),
                                                       nn.Flatten(), nn.Linear(30, 3)), (5, 6), 0),
    "layernorm-no-bias-over-positions": (lambda: nn.Sequential(nn.Linear(4, 8), _no_bias(nn.LayerNorm(8)), nn.ReLU(),
                                                               nn.Flatten(), nn.Linear(8 * 3, 3)), (3, 4), 0),
    # text-transformer's model, small: embeddings, attention's Linear layers over (B, T, K) with padding
    # masked, LayerNorm; recorded by hooks
    "text-transformer": (lambda: TextTransformer(3, max_length=10, buckets=30, width=16, heads=2, layers=2,
                                                 feed_forward=24), (10,), 30),
    "groupnorm-after-conv": (lambda: nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
                                                   nn.Flatten(), nn.Linear(8 * 5 * 5, 3)), (3, 5, 5), 0),
    "groupnorm-one-position-frozen-bias": (lambda: nn.Sequential(nn.Linear(6, 8), _bias_frozen(nn.GroupNorm(2, 8)),
                                                                 nn.Tanh(), nn.Linear(8, 3)), (6,), 0),
    "groupnorm-no-affine-between": (lambda: nn.Sequential(nn.Conv2d(2, 4, 1), nn.GroupNorm(2, 4, affine=False),
                                                          nn.Flatten(), nn.Linear(4 * 3 * 3, 3)), (2, 3, 3), 0),
    "depthwise-stride-dilation": (lambda: nn.Sequential(nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=4),
                                                        nn.Flatten(), nn.Linear(4 * 4 * 4, 3)), (4, 8, 8), 0),
    "depthwise-multiplier-reflect": (lambda: nn.Sequential(nn.Conv2d(3, 6, (3, 2), padding="same", groups=3,
                                                                     padding_mode="reflect", bias=False),
                                                           nn.Flatten(), nn.Linear(6 * 5 * 5, 3)), (3, 5, 5), 0),
    "grouped-conv": (lambda: nn.Sequential(nn.Conv2d(6, 4, 3, stride=(1, 2), padding=1, groups=2), nn.ReLU(),
                                           nn.Flatten(), nn.Linear(4 * 6 * 3, 3)), (6, 6, 6), 0),
    # per-sample gradients over 16× the size of A and G: dropped after their norms, the clipped sum recomputed
    "wide-conv-low-resolution": (lambda: nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1,
                                                                 padding_mode="reflect"), nn.ReLU(),
                                                       nn.Conv2d(32, 64, 3, padding=1, groups=2), nn.Flatten(),
                                                       nn.Linear(64 * 2 * 2, 3)), (16, 3, 3), 0),
    # transfer-mobilenet's network, narrow (dropout off: vmap's reference draws no dropout mask);
    # recorded by hooks
    "mobilenet-v2": (lambda: MobileNetV2(3, width=0.35).eval(), (3, 32, 32), 0),
    "mobilenet-v2-head": (lambda: _head_only(MobileNetV2(3, width=0.35).eval()), (3, 32, 32), 0),
}


def _head_only(model: MobileNetV2) -> MobileNetV2:
    model.freeze_features()
    return model


def _record_squared_norms(monkeypatch: pytest.MonkeyPatch) -> list[torch.Tensor]:
    """What the clip factors are computed from, each step: every example's squared norm ``(B,)``."""
    squared: list[torch.Tensor] = []
    clip_factors = book_keeping._clip_factors

    def recorded(sq: torch.Tensor, max_grad_norm: float, scale: float) -> torch.Tensor:
        squared.append(sq.clone())
        return clip_factors(sq, max_grad_norm, scale)

    monkeypatch.setattr(book_keeping, "_clip_factors", recorded)
    return squared


def _layer_model_inputs(name: str, n: int) -> torch.Tensor:
    _, shape, vocab = LAYER_MODELS[name]
    return _ids(n, shape[0], vocab) if vocab else torch.randn(n, *shape) * 3


@pytest.mark.parametrize("name", sorted(LAYER_MODELS))
def test_embedding_norm_and_grouped_conv_norms_and_clipped_sums_equal_float64_per_example_autograd(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every example's gradient norm over the whole private vector and the clipped sums of an Embedding
    (repeated ids, padding_idx), a LayerNorm (2-d normalised shape, frozen or no bias), the Linear layers
    of a transformer over (B, T, K), a GroupNorm (over positions or one, frozen bias), grouped and depthwise
    convolutions (stride, dilation, channel multiplier, reflect padding) and MobileNetV2 (whole or head only)
    match float64 autograd; the clip bound is the examples' median norm."""
    torch.manual_seed(0)
    build, _, _ = LAYER_MODELS[name]
    model = build()
    x, y = _layer_model_inputs(name, 12), torch.randint(0, 3, (12,))
    # float64 autograd on a copy (integer ids stay ids)
    norms, per_example = _per_example(copy.deepcopy(model).double(), x.double() if x.is_floating_point() else x, y)
    clip = float(norms.median())  # half the examples clipped, half not
    reference = _clipped_sums(norms, per_example, clip)
    squared = _record_squared_norms(monkeypatch)
    wrapped = BookKeepingModule(model)
    clip_and_sum(wrapped, nn.functional.cross_entropy(wrapped(x), y, reduction="sum"), clip)
    # (a model of trained Linear layers only, each seeing one row per example, is clipped on the lean path)
    assert len(squared) == (0 if wrapped.dense_linear else 1)
    assert all(torch.allclose(sq.double().sqrt(), norms, rtol=1e-5) for sq in squared)
    deep = name.startswith("mobilenet")  # float32 rounding over 50 layers: float32 autograd is off by 5e-6 too
    for key, expected in reference.items():
        got = model.get_parameter(key).grad
        atol = 2e-5 * float(expected.abs().max()) if deep else 1e-6
        assert got is not None and torch.allclose(got.double(), expected, rtol=1e-4, atol=atol), key
    assert len(reference) == sum(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    for embedding in (m for m in model.modules() if isinstance(m, nn.Embedding) and m.padding_idx is not None):
        assert not embedding.weight.grad[embedding.padding_idx].any()  # type: ignore[index]
    assert wrapped.to_standard_module() is model


@pytest.mark.parametrize("name", sorted(LAYER_MODELS))
def test_embedding_norm_and_grouped_conv_models_give_zero_clipped_sums_for_an_empty_batch(name: str) -> None:
    model = LAYER_MODELS[name][0]()
    wrapped = BookKeepingModule(model)
    loss = BookKeepingLoss(wrapped, nn.CrossEntropyLoss(), max_grad_norm=1.0, scale=0.5)(
        wrapped(_layer_model_inputs(name, 0)), torch.zeros(0, dtype=torch.long))
    loss.backward()
    assert all(p.grad is not None and p.grad.shape == p.shape and not p.grad.any()
               for p in model.parameters() if p.requires_grad)


@pytest.mark.parametrize(("option", "value"), [("sparse", True), ("max_norm", 1.0), ("scale_grad_by_freq", True)])
def test_embeddings_book_keeping_cannot_clip_are_refused(option: str, value: object) -> None:
    """A sparse gradient, rows renormalised in the forward pass, or a gradient scaled by the batch's id counts
    (examples interact): refused when wrapped, so the platform falls back to Opacus."""
    with pytest.raises(BookKeepingUnsupported, match=option):
        BookKeepingModule(nn.Sequential(nn.Embedding(10, 4, **{option: value}), nn.Flatten(), nn.Linear(8, 2)))


@pytest.mark.parametrize("name", sorted(MODELS))
def test_clipped_sum_equals_per_example_autograd(name: str) -> None:
    torch.manual_seed(0)
    build, shape = MODELS[name]
    model = build()
    x, y = torch.randn(12, *shape) * 3, torch.randint(0, 3, (12,))
    clip = 0.5
    reference = _clipped_sum_reference(model, x, y, clip)
    wrapped = BookKeepingModule(model)
    # a plain Sequential is recorded child by child (no hooks: PyTorch's fast call path), anything else by hooks
    hooks = sum(len(layer._forward_hooks) for layer in wrapped.layers)
    assert hooks == (len(wrapped.layers) if name == "own-forward-by-hooks" else 0)
    clip_and_sum(wrapped, nn.functional.cross_entropy(wrapped(x), y, reduction="none"), clip)
    clipped = 0
    for key, expected in reference.items():
        got = model.get_parameter(key).grad
        assert got is not None and torch.allclose(got, expected, rtol=1e-4, atol=1e-6), key
        clipped += 1
    assert clipped == sum(p.requires_grad for p in model.parameters())
    assert all(p.grad is None for p in model.parameters() if not p.requires_grad)
    assert wrapped.to_standard_module() is model


@pytest.mark.parametrize("engine_entry", [True, False])
def test_output_grads_enters_autograd_as_torch_autograd_grad_does(engine_entry: bool,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The engine entry that skips torch.autograd.grad's Python returns what it returns: for a summed loss
    (its cached seed gradient of 1 is never written to), for per-example losses, and None for an output
    the loss does not reach; so does the public call used where a torch release lacks that entry."""
    if not engine_entry:
        monkeypatch.setattr(book_keeping, "_ENGINE", None)
    torch.manual_seed(2)
    lin, other = nn.Linear(6, 4), nn.Linear(6, 3)
    x = torch.randn(5, 6)
    for _ in range(3):  # the same cached seed on every call
        for per_example in (False, True):
            z, unused = lin(x), other(x)
            loss = (torch.tanh(z) ** 2).sum(1) if per_example else (torch.tanh(z) ** 2).sum()
            expected = torch.autograd.grad(loss, [z], torch.ones_like(loss) if loss.dim() else None,
                                           retain_graph=True)[0]
            got, missing = output_grads(loss, (z, unused))
            assert missing is None and torch.equal(got, expected)
    with pytest.raises(RuntimeError):  # as torch.autograd.grad: a loss that needs no gradient
        output_grads(torch.zeros(()), (z,))


def test_an_mlp_is_clipped_on_the_lean_path_unless_a_layer_repeats() -> None:
    """A Sequential of distinct trained Linear layers gets the lean path's plan; one that calls a layer twice
    gets none, and its shared layer's per-sample gradient is the sum over its two calls."""
    mlp = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    wrapped = BookKeepingModule(mlp)
    assert wrapped.dense_params is not None
    assert [p is q for pair, layer in zip(wrapped.dense_params, (mlp[0], mlp[2]), strict=True)
            for p, q in zip(pair, (layer.weight, layer.bias), strict=True)] == [True] * 4
    shared = nn.Linear(4, 4)
    twice = BookKeepingModule(nn.Sequential(shared, nn.ReLU(), shared, nn.ReLU(), nn.Linear(4, 2)))
    assert twice.dense_params is None
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    model = twice.to_standard_module()
    reference = _clipped_sum_reference(copy.deepcopy(model), x, y, 0.3)
    twice = BookKeepingModule(model)
    clip_and_sum(twice, nn.functional.cross_entropy(twice(x), y, reduction="sum"), 0.3)
    for key, expected in reference.items():
        assert torch.allclose(model.get_parameter(key).grad, expected, rtol=1e-4, atol=1e-6), key


class _Unrolled(nn.Module):
    """A recurrent cell unrolled in Python: ``read`` (3→40, per-sample gradients materialised) and ``cell``
    (40→40, ghost norm) are called with ``(B, K)`` rows at every step; ``mix`` once over ``(B, T, 3)``
    positions and once more with ``(B, 3)`` rows."""

    def __init__(self) -> None:
        super().__init__()
        self.mix, self.read = nn.Linear(3, 3), nn.Linear(3, 40)
        self.cell, self.head = nn.Linear(40, 40), nn.Linear(40, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.tanh(self.mix(x))
        h = torch.zeros(len(x), 40, dtype=x.dtype)
        for t in range(x.shape[1]):
            h = torch.tanh(self.read(mixed[:, t]) + self.cell(h))
        return self.head(h) + self.mix(x[:, -1]).sum(1, keepdim=True)


class _LSTMClassifier(nn.Module):
    """Opacus' DPLSTM between an Embedding and a Linear head: its ``RNNLinear`` cells run once per step."""

    def __init__(self) -> None:
        super().__init__()
        self.embed, self.lstm, self.head = nn.Embedding(20, 6), DPLSTM(6, 8, batch_first=True), nn.Linear(8, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.lstm(self.embed(ids))[0][:, -1])


def _loop_reference(model: nn.Module, losses, inputs: tuple[torch.Tensor, ...]  # type: ignore[no-untyped-def]
                    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Each example's gradient norm ``(B,)`` and gradients by name, one example at a time in float64 autograd on a
    double copy of ``model``; ``losses(model, *inputs)`` gives the per-example losses ``(B,)``."""
    ref = copy.deepcopy(model).double()
    named = [(k, p) for k, p in ref.named_parameters() if p.requires_grad]
    per_example: dict[str, list[torch.Tensor]] = {k: [] for k, _ in named}
    for i in range(len(inputs[0])):
        one = [t[i:i + 1].double() if t.is_floating_point() else t[i:i + 1] for t in inputs]
        grads = torch.autograd.grad(losses(ref, *one).sum(), [p for _, p in named], allow_unused=True)
        for (k, p), g in zip(named, grads, strict=True):
            per_example[k].append(torch.zeros_like(p) if g is None else g)
    stacked = {k: torch.stack(v) for k, v in per_example.items()}
    norms = torch.stack([g.reshape(len(g), -1).norm(dim=1) for g in stacked.values()], 1).norm(dim=1)
    return norms, stacked


def _classify(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(model(x), y, reduction="none")


#: models that call a Linear layer more than once per forward pass: name -> (build, inputs (B, ...), labels)
REPEATED = {
    "unrolled-cell": (_Unrolled, lambda n: torch.randn(n, 4, 3) * 2),
    "dplstm": (_LSTMClassifier, lambda n: torch.randint(0, 20, (n, 7))),
}


@pytest.mark.parametrize("name", sorted(REPEATED))
def test_a_linear_layer_called_at_every_step_is_clipped_as_the_sum_over_its_calls(
        name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Linear layer called T times (an unrolled cell, with both the materialised and the ghost-norm rule;
    rows and positions joined; Opacus' DPLSTM): every example's gradient norm and the clipped sums match
    float64 per-example autograd, with half the examples clipped."""
    torch.manual_seed(3)
    build, make = REPEATED[name]
    model = build()
    x, y = make(10), torch.randint(0, 3, (10,))
    norms, per_example = _loop_reference(model, _classify, (x, y))
    clip = float(norms.median())
    reference = _clipped_sums(norms, per_example, clip)
    squared = _record_squared_norms(monkeypatch)
    wrapped = BookKeepingModule(model)
    assert sorted(p.shape for p in wrapped.trainable) == sorted(p.shape for p in model.parameters())  # once each
    clip_and_sum(wrapped, _classify(wrapped, x, y).sum(), clip)
    assert len(squared) == 1 and torch.allclose(squared[0].double().sqrt(), norms, rtol=1e-5)
    for key, expected in reference.items():
        got = model.get_parameter(key).grad
        assert got is not None and torch.allclose(got.double(), expected, rtol=1e-4, atol=1e-6), key
    assert len(reference) == len(list(model.parameters()))


def test_the_seq2seq_models_clipped_sum_equals_float64_per_example_autograd() -> None:
    """seq2seq-attention's model end to end (two DPLSTMs, attention, PAD-masked per-example mean losses)
    through the task's criterion as book-keeping's loss: its mean is the task's loss, its backward leaves
    scale · the clipped sum of float64 per-example gradients."""
    from fedshield.tasks.byte_tokens import source_tensor, target_tensor
    from fedshield.tasks.seq2seq_attention import SequenceLoss, example_losses, sequence_loss
    from fedshield.tasks.seq2seq_model import Seq2SeqAttention

    torch.manual_seed(0)
    model = Seq2SeqAttention(hidden=16, embed=8)
    src = source_tensor(["12 may 2020", "may 12, 2020", "x", "3/4/2021", "june 1 1999", "zz"], 16)
    tgt = target_tensor(["2020-05-12", "2020-05-12", "y", "2021-04-03", "1999-06-01", "q"], 10)

    def losses(m: nn.Module, s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return example_losses(m(s, t[:, :-1]), t[:, 1:])

    norms, per_example = _loop_reference(model, losses, (src, tgt))
    clip = float(norms.median())
    reference = _clipped_sums(norms, per_example, clip)
    with torch.no_grad():
        mean = float(sequence_loss(model(src, tgt[:, :-1]), tgt[:, 1:]))
    wrapped = BookKeepingModule(model)
    loss = BookKeepingLoss(wrapped, SequenceLoss(), max_grad_norm=clip, scale=0.25)(wrapped(src, tgt[:, :-1]),
                                                                                      tgt[:, 1:])
    assert loss.item() == pytest.approx(mean, rel=1e-6)
    loss.backward()
    for key, expected in reference.items():
        got = model.get_parameter(key).grad
        assert got is not None and torch.allclose(got.double(), 0.25 * expected, rtol=1e-4, atol=1e-6), key
    assert len(reference) == len(list(model.parameters()))


def test_repeated_calls_book_keeping_cannot_join_are_refused() -> None:
    """A convolution called twice, or a Linear layer called with two batch sizes (a packed sequence's
    shrinking batch): refused by name at the backward pass."""
    conv = nn.Conv2d(2, 2, 3, padding=1)
    twice = BookKeepingModule(nn.Sequential(conv, nn.Tanh(), conv, nn.Flatten(), nn.Linear(2 * 4 * 4, 2)))
    x, y = torch.randn(5, 2, 4, 4), torch.randint(0, 2, (5,))
    with pytest.raises(BookKeepingUnsupported, match="Conv2d layer called twice"):
        clip_and_sum(twice, nn.functional.cross_entropy(twice(x), y, reduction="sum"), 1.0)

    class Shrinking(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layer = nn.Linear(3, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.layer(x).sum() + self.layer(x[:2]).sum()

    shrinking = BookKeepingModule(Shrinking())
    with pytest.raises(BookKeepingUnsupported, match=r"different batch sizes \(\[2, 5\]\)"):
        clip_and_sum(shrinking, shrinking(torch.randn(5, 3)), 1.0)


def test_the_training_loops_loss_is_the_batch_mean_and_its_backward_the_clipped_sum() -> None:
    """The criterion sums over the batch (no per-example grad_outputs); the loop still sees the mean."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(10, 16), nn.ReLU(), nn.Linear(16, 3))
    x, y = torch.randn(12, 10) * 3, torch.randint(0, 3, (12,))
    reference = _clipped_sum_reference(model, x, y, 0.5)
    wrapped = BookKeepingModule(model)
    loss = BookKeepingLoss(wrapped, nn.CrossEntropyLoss(), max_grad_norm=0.5, scale=0.25)(wrapped(x), y)
    assert loss.item() == pytest.approx(float(nn.functional.cross_entropy(model(x), y)), rel=1e-6)
    loss.backward()
    for key, expected in reference.items():
        assert torch.allclose(model.get_parameter(key).grad, 0.25 * expected, rtol=1e-4, atol=1e-6), key


@pytest.mark.parametrize("name", sorted(MODELS))
def test_an_empty_poisson_batch_gives_zero_clipped_sums(name: str) -> None:
    """Poisson sampling can draw no example: every trained parameter's clipped sum is then zero (the DP
    optimizer adds its noise to that), and nothing fails on a batch dimension of size 0."""
    build, shape = MODELS[name]
    model = build()
    wrapped = BookKeepingModule(model)
    loss = BookKeepingLoss(wrapped, nn.CrossEntropyLoss(), max_grad_norm=1.0, scale=0.5)(
        wrapped(torch.zeros(0, *shape)), torch.zeros(0, dtype=torch.long))
    assert loss.item() == 0.0
    loss.backward()
    for p in model.parameters():
        if p.requires_grad:
            assert p.grad is not None and p.grad.shape == p.shape and not p.grad.any()


def test_a_loss_not_computed_through_the_wrapper_is_refused_not_taken_as_zero_gradients() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    wrapped = BookKeepingModule(model)
    x, y = torch.randn(6, 4), torch.randint(0, 2, (6,))
    with pytest.raises(RuntimeError, match="recorded no layer call"):
        clip_and_sum(wrapped, nn.functional.cross_entropy(model(x), y, reduction="none"), 1.0)


def test_unsupported_layers_fall_back_to_ghost_clipping_and_say_so(caplog: pytest.LogCaptureFixture) -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.RMSNorm(8), nn.Linear(8, 2))  # Opacus has an RMSNorm rule
    with pytest.raises(BookKeepingUnsupported, match="RMSNorm"):
        BookKeepingModule(model)
    task = get_task("tabular")  # dp_mode "bk"
    x = torch.randn(32, 4)
    site = SiteData(TensorDataset(x, (x[:, 0] > 0).long()), TensorDataset(x, (x[:, 0] > 0).long()),
                    DataSchema("classification", (4,), 2, tuple("abcd"), "t"), Path("."))
    with caplog.at_level(logging.WARNING):
        private = make_private(task, site, model, torch.optim.SGD(model.parameters(), lr=0.1),
                               DataLoader(site.train, batch_size=8), noise_multiplier=1.0, max_grad_norm=1.0)
    assert private.mode == "ghost"
    assert "Opacus mode bk unavailable" in caplog.text and "RMSNorm" in caplog.text


class _NormCalledTwice(nn.Module):
    """One LayerNorm applied after two layers: a repeat book-keeping sees only in the first backward pass."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b, self.out, self.norm = nn.Linear(5, 16), nn.Linear(16, 16), nn.Linear(16, 2), nn.LayerNorm(16)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.norm(torch.tanh(self.b(self.norm(torch.tanh(self.a(x)))))))


def _separable_site(n: int) -> SiteData:
    x = torch.randn(n, 5)
    data = TensorDataset(x, (x[:, 0] > 0).long())
    return SiteData(data, data, DataSchema("classification", (5,), 2, tuple("abcde"), "t"), Path("."))


def test_the_mode_after_book_keeping_clips_a_repeated_norm_layer_as_per_example_autograd() -> None:
    torch.manual_seed(0)
    site = _separable_site(32)
    x, y = (t.double() if t.is_floating_point() else t for t in site.train.tensors)
    model = _NormCalledTwice().double()
    reference = _clipped_sum_reference(model, x, y, 0.05)
    private = make_private(get_task("tabular"), site, model, torch.optim.SGD(model.parameters(), lr=0.1),
                           DataLoader(site.train, batch_size=8), noise_multiplier=0.0, max_grad_norm=0.05, after="bk")
    assert private.mode == "ghost" and private.criterion is not None
    private.optimizer.zero_grad()
    private.criterion(private.model(x), y).backward()
    private.optimizer.pre_step()  # clipped sum, noise (σ = 0), mean reduction by E[B]
    for name, p in model.named_parameters():
        # Opacus' clip factor is C/(‖g‖ + 1e-6): agreement to about 1e-6 of the clipped values
        assert torch.allclose(p.grad * private.optimizer.expected_batch_size, reference[name], atol=1e-6), name


def test_a_round_book_keeping_refuses_at_its_first_step_runs_whole_in_the_next_mode(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Nothing had left the site when book-keeping met the repeated layer: the round starts again under ghost
    clipping, every planned step is taken and accounted once, and the model learns."""
    from fedshield.client.local_training import PrivacySettings, train_round
    from fedshield.client.privacy_ledger import PrivacyLedger
    from fedshield.common.run_config import RunConfig

    torch.manual_seed(0)
    site, task, model = _separable_site(512), get_task("tabular"), _NormCalledTwice()
    before = task.evaluate(model, site.val, device=torch.device("cpu"))["loss"]
    privacy = PrivacySettings(True, 8.0, 1e-5, 1.0, tmp_path)
    with caplog.at_level(logging.WARNING):
        outcome = train_round(task, site, model, RunConfig(task="tabular", rounds=1, batch_size=32, lr=0.5),
                              run_id="r", rnd=1, privacy=privacy, device=torch.device("cpu"))
    assert "stopped at the first step" in caplog.text and "LayerNorm layer called twice" in caplog.text
    assert task.evaluate(model, site.val, device=torch.device("cpu"))["loss"] < before
    ledger = PrivacyLedger.open(tmp_path, epsilon_budget=8.0, delta=None)
    train = [e for e in ledger.entries if e.kind == "train"]
    assert [e.status for e in train] == ["released"] and train[0].steps == outcome.result.steps > 0
    assert outcome.epsilon == pytest.approx(ledger.epsilon_spent())


def test_every_step_is_noised_and_accounted_like_opacus() -> None:
    """One accountant step per optimizer step at Opacus' sample rate; the update is (clipped sum + noise) / E[B]."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    x = torch.randn(256, 5)
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=32)
    engine = PrivacyEngine(accountant="rdp")
    sigma, clip = 0.8, 1.0
    wrapped, optimizer, criterion, dp_loader = make_private_book_keeping(
        engine, module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1), criterion=nn.CrossEntropyLoss(),
        data_loader=loader, noise_multiplier=sigma, max_grad_norm=clip)
    steps = 0
    noise: list[torch.Tensor] = []
    for xb, yb in dp_loader:
        optimizer.zero_grad(set_to_none=True)
        reference = _clipped_sum_reference(model, xb, yb, clip)
        criterion(wrapped(xb), yb).backward()
        clipped = [p.grad.clone() for p in model.parameters()]  # the clipped sum / E[B], Opacus' mean reduction
        for (key, expected), got in zip(reference.items(), clipped, strict=True):
            assert torch.allclose(got * optimizer.expected_batch_size, expected, rtol=1e-4, atol=1e-6), key
        assert optimizer.pre_step()
        noise.append(torch.cat([((p.grad - c) * optimizer.expected_batch_size).flatten()
                                for p, c in zip(model.parameters(), clipped, strict=True)]))
        optimizer.original_optimizer.step()
        steps += 1
    assert engine.accountant.history == [(sigma, 1 / len(loader), steps)]
    assert optimizer.expected_batch_size == 32
    drawn = torch.stack(noise)  # (steps, 52): N(0, σ²C²) coordinates, fresh every step
    assert drawn.std().item() == pytest.approx(sigma * clip, rel=0.15)
    assert not any(torch.equal(drawn[i], drawn[j]) for i in range(steps) for j in range(i))


@pytest.mark.parametrize("dense", [True, False])
def test_gradients_never_accumulate_across_backward_passes(dense: bool) -> None:
    """Two batches' clipped sums under one noise draw and one accountant step would spend more privacy
    than the ledger records: a second backward pass before zero_grad() is refused, on the lean MLP path
    and on the general one; zero_grad(), with or without set_to_none, clears the way."""
    torch.manual_seed(3)
    model = (nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2)) if dense
             else nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2, bias=False)))
    x = torch.randn(64, 5)
    _, optimizer, criterion, _ = make_private_book_keeping(
        PrivacyEngine(accountant="rdp"), module=model, optimizer=torch.optim.SGD(model.parameters(), lr=0.1),
        criterion=nn.CrossEntropyLoss(), data_loader=DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16),
        noise_multiplier=1.0, max_grad_norm=1.0)
    wrapped = criterion.module
    assert (wrapped.dense_params is not None) == dense
    xb, yb = x[:16], (x[:16, 0] > 0).long()
    criterion(wrapped(xb), yb).backward()
    first = [p.grad.clone() for p in model.parameters()]
    with pytest.raises(RuntimeError, match="before optimizer.zero_grad"):
        criterion(wrapped(xb), yb).backward()
    # untouched by the refusal
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), first, strict=True))
    optimizer.zero_grad(set_to_none=False)  # Opacus' signature; book-keeping clears to None regardless
    assert all(p.grad is None for p in model.parameters())
    criterion(wrapped(xb), yb).backward()
    assert all(torch.equal(p.grad, g) for p, g in zip(model.parameters(), first, strict=True))


def test_zero_grad_clears_every_parameter_of_every_group_as_torch_does() -> None:
    """The DP optimizer clears gradients itself (torch's zero_grad costs a tenth of a small private step): every
    parameter of every group of the wrapped optimizer, one that does not train included, as
    ``torch.optim.Optimizer.zero_grad(set_to_none=True)`` does; then the next batch's sums land afresh."""
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(5, 4), nn.ReLU(), nn.Linear(4, 2))
    frozen = nn.Parameter(torch.ones(3), requires_grad=False)
    frozen.grad = torch.ones(3)  # set by hand: torch's zero_grad clears it too
    model.register_parameter("frozen", frozen)
    sgd = torch.optim.SGD([{"params": model[0].parameters()}, {"params": [*model[2].parameters(), frozen], "lr": 0.01}],
                          lr=0.1)
    x = torch.randn(64, 5)
    _, optimizer, criterion, _ = make_private_book_keeping(
        PrivacyEngine(accountant="rdp"), module=model, optimizer=sgd, criterion=nn.CrossEntropyLoss(),
        data_loader=DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16), noise_multiplier=1.0,
        max_grad_norm=1.0)
    xb, yb = x[:16], (x[:16, 0] > 0).long()
    criterion(criterion.module(xb), yb).backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    first = [p.grad.clone() for p in trained]
    optimizer.zero_grad()
    assert all(p.grad is None for group in sgd.param_groups for p in group["params"])
    criterion(criterion.module(xb), yb).backward()  # not refused as an accumulation, and the same sums
    assert all(torch.equal(p.grad, g) for p, g in zip(trained, first, strict=True))
    assert frozen.grad is None


def test_opacus_modes_refuse_padding_modes_they_get_wrong() -> None:
    """Opacus 1.6.0 clips reflect-padded convolutions with zero-padded per-sample gradients (wrong norms);
    book-keeping matches autograd on them (test above), and the Opacus modes refuse such a model."""
    from opacus import GradSampleModule

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1, padding_mode="reflect"), nn.Flatten(), nn.Linear(4 * 8 * 8, 3))
    x, y = torch.randn(6, 3, 8, 8), torch.randint(0, 3, (6,))
    params = {k: v.detach() for k, v in model.named_parameters()}
    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor) -> torch.Tensor:
        return nn.functional.cross_entropy(functional_call(model, p, (xi[None],)), yi[None])

    per_example = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    opacus_model = GradSampleModule(model)
    nn.functional.cross_entropy(opacus_model(x), y).backward()
    error = (model[0].weight.grad_sample - per_example["0.weight"]).abs().max() / per_example["0.weight"].abs().max()
    assert error > 0.1  # the defect this guard exists for
    opacus_model.to_standard_module()

    class HooksTask:
        name, dp_mode = "reflect-cnn", "hooks"

    site = SiteData(TensorDataset(x, y), TensorDataset(x, y), DataSchema("classification", (3, 8, 8), 3), Path("."))
    with pytest.raises(RuntimeError, match="padding_mode='reflect'"):
        make_private(HooksTask(), site, model, torch.optim.SGD(model.parameters(), lr=0.1),  # type: ignore[arg-type]
                     DataLoader(site.train, batch_size=6), noise_multiplier=1.0, max_grad_norm=1.0)


@pytest.mark.parametrize("width", [33, 2049])  # 2,112 coordinates: 62 steps a buffer; 131,136: one
def test_noise_drawn_ahead_is_fresh_every_step_and_repeats_from_its_seed(width: int) -> None:
    """The helper thread's noise: each step's is N(0, σ²C²/E[B]²), no two steps share it (also across the
    refills of the two buffers), and the same seed gives the same sequence of steps."""
    from fedshield.client.flat_noise_optimizer import FlatNoiseDPOptimizer

    def noise_of_steps(seed: int, steps: int) -> tuple[torch.Tensor, int]:
        torch.manual_seed(0)
        model = nn.Linear(width, 64, bias=False)
        optimizer = FlatNoiseDPOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), noise_multiplier=0.7,
                                         max_grad_norm=2.0, expected_batch_size=10,
                                         generator=torch.Generator().manual_seed(seed))
        drawn = []
        for _ in range(steps):
            optimizer.zero_grad()
            model.weight.grad = torch.zeros_like(model.weight)
            assert optimizer.pre_step()
            drawn.append(model.weight.grad.flatten() * 10)
        assert optimizer._prefetched is not None
        return torch.stack(drawn), optimizer._prefetched.rows

    noise, rows = noise_of_steps(1, 150 if width == 33 else 5)
    assert rows == (62 if width == 33 else 1)
    stds = noise.std(dim=1)
    assert ((stds - 0.7 * 2.0).abs() < 0.1 * 0.7 * 2.0).all()
    assert noise.mean().abs().item() < 0.02
    correlations = torch.corrcoef(noise) - torch.eye(len(noise))
    assert correlations.abs().max().item() < 0.15  # no step's noise is (a copy of) another's
    assert torch.equal(noise, noise_of_steps(1, len(noise))[0])
    assert not torch.equal(noise, noise_of_steps(2, len(noise))[0])


@pytest.mark.parametrize("layer", [nn.Conv2d(4, 4, 3, stride=2, padding=2, dilation=2, groups=4),
                                   nn.Conv2d(3, 6, (3, 2), padding=1, groups=3), nn.Conv2d(5, 5, 3, stride=(2, 1),
                                                                                           groups=5)],
                         ids=["stride-dilation", "multiplier", "uneven-stride"])
def test_both_depthwise_rules_agree(layer: nn.Conv2d) -> None:
    """The CPU takes one convolution over B·O channels; other devices the tap products (the GPU path CI cannot
    run, checked here on the CPU against the convolution, itself checked against float64 per-example gradients
    in the models above)."""
    torch.manual_seed(0)
    x = torch.randn(5, layer.in_channels, 9, 8, dtype=torch.float64)
    layer = layer.double()
    g = torch.randn_like(layer(x))
    src = _padded(layer, x).repeat_interleave(layer.out_channels // layer.in_channels, 1)
    torch.testing.assert_close(depthwise_by_convolution(layer, src, g), depthwise_by_taps(layer, src, g))
