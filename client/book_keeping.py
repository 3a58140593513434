"""Book-keeping per-sample clipping: DP-SGD's clipped gradient sum from one backward pass.

Opacus' fastest mode, ghost clipping (Li et al. 2022, "Large Language Models Can Be Strong
Differentially Private Learners"), runs two backward passes: one that finds each example's gradient
norm, a second one on the loss reweighted by the clip factors. On CPU that makes a DP step 2.4-3×
a plain one (docs/performance.md, cost of DP-SGD per step). Book-keeping (Bu, Mao, Xu, Zha, Karypis 2023,
"Differentially Private Optimization on Large Model at Small Cost", ICML) needs one: for a layer
``Z = A·Wᵀ`` the per-sample weight gradient is ``G_iᵀ A_i`` (``G = ∂L/∂Z``), so once the backward pass
has produced every layer's output gradient ``G`` and the forward pass its input ``A``:

1. each example's squared gradient norm is summed over the layers from ``(A, G)`` alone, either from
   materialised per-sample gradients (cost ``B·O·K·T``) or by the ghost-norm identity
   ``‖G_iᵀA_i‖² = ⟨A_iA_iᵀ, G_iG_iᵀ⟩`` (cost ``B·T²·(O+K)``), whichever is cheaper for the layer;
2. the clip factor is Opacus' flat clipping, ``c_i = min(1, C / ‖g_i‖)``;
3. the clipped sum ``Σ_i c_i G_iᵀ A_i`` is one weighted matrix product per layer.

The backward pass asks autograd only for the layer outputs' gradients, so no parameter gradient is
computed twice. Noise, scaling by the expected batch size, Poisson sampling and the accountant stay
Opacus' (its ``DPOptimizerFastGradientClipping``, which takes ``p.grad`` as the clipped sum as after
ghost clipping's second pass, here with the noise drawn in one call: client/flat_noise_optimizer.py);
only the clipped sum is computed here, because Opacus has no one-pass mode.

Supported: models whose trainable parameters all belong to ``nn.Linear`` (any number of positions:
``(B, ..., K)`` inputs, a transformer's ``(B, T, K)``), ``nn.Conv2d`` (grouped and depthwise too),
``nn.Embedding`` (not sparse, no ``max_norm``, no ``scale_grad_by_freq``), ``nn.LayerNorm`` or ``nn.GroupNorm``
layers (the last three's rules: client/book_keeping_layers.py), and whose examples do not interact (no
BatchNorm). Each layer is called once per forward pass, except ``nn.Linear`` layers (Opacus' ``RNNLinear``
too): a Linear layer called ``T`` times with inputs ``a_t`` ``(B, K)`` has the per-sample gradient
``Σ_t g_tᵀa_t``, the one-call rule over ``T`` positions, so its calls are joined into one
(:func:`_merge_repeated`; Opacus' ``DPLSTM``, whose cells run once per time step, is clipped this way). Other
layers called twice are refused at the backward pass: their rules read the input in the layer's own shape
(a convolution's image, a norm's normalised dimensions), which concatenating calls does not keep, and no
task repeats one. A model with another trainable layer raises :class:`BookKeepingUnsupported` when wrapped,
and the platform falls back to ghost clipping.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple, cast

import torch
import torch.nn.functional as F
from opacus import PrivacyEngine
from opacus.data_loader import DPDataLoader
from torch import nn
from torch.nn.grad import conv2d_weight
from torch.utils.data import DataLoader

from fedshield.client.book_keeping_layers import (
    EmbeddingTerms,
    GroupNormTerms,
    LayerNormTerms,
    embedding_unsupported,
)
from fedshield.client.flat_noise_optimizer import FlatNoiseDPOptimizer

# torch.autograd.grad's own entry into autograd's engine (output_grads); None where a torch release lacks it
_ENGINE = getattr(getattr(torch.autograd, "graph", None), "_engine_run_backward", None)

#: a convolution keeps its per-sample gradients (B·numel) for the clipped sum while they take at most this many
#: times its input's and output gradient's elements; larger ones are dropped once their norms are taken (on
#: MobileNetV2 at 32×32 its late 1×1 layers: 320→1280 at 1×1 holds 105 MB at batch 64)
KEEP_PER_SAMPLE = 16

SUPPORTED_LAYERS = (nn.Linear, nn.Conv2d, nn.Embedding, nn.LayerNorm, nn.GroupNorm)


class BookKeepingUnsupported(ValueError):
    """The model has a trainable layer book-keeping cannot clip (the caller falls back to ghost)."""


class _Call(NamedTuple):
    """One call of a supported layer in the forward pass: its input ``A`` (an Embedding's integer ids) and its
    output ``Z``."""

    layer: nn.Module
    inputs: torch.Tensor
    output: torch.Tensor


class BookKeepingModule(nn.Module):
    """Wraps a model; records each supported layer's input and output during training forward passes.

    An ``nn.Sequential`` whose children are supported layers or hold no trainable parameter is run
    child by child, recording as it goes; any other model is recorded by forward hooks. On a small
    model the hooks are most of the cost: a module with hooks leaves PyTorch's fast call path, which
    made the forward pass of ``tabular``'s 30-64-2 MLP 1.5× the plain one.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self._module = module
        self.layers = _trainable_layers(module)
        self.trainable = [p for layer in self.layers for p in layer.parameters(recurse=False) if p.requires_grad]
        # every clipped layer an nn.Linear with weight and bias trained (an MLP): _clip_dense_rows can apply
        self.dense_linear = all(type(layer) is nn.Linear and layer.bias is not None and layer.weight.requires_grad
                                and layer.bias.requires_grad for layer in self.layers)
        self._calls: list[_Call] = []  # refilled in place: assigning a Module attribute costs µs per step
        self._sequence = _recordable_sequence(module, self.layers)
        # an MLP run child by child, each clipped layer once: (weight, bias) in call order, for clip_and_sum's
        # lean path (the optimizer holds these same tensors: replacing a parameter breaks DP training anyway)
        self.dense_params = _dense_plan(self._sequence) if self.dense_linear else None
        self._handles = [] if self._sequence is not None else [
            layer.register_forward_hook(self._record) for layer in self.layers]

    def _record(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
        if output.requires_grad:  # a training pass (no_grad evaluation records nothing)
            self._calls.append(_Call(layer, inputs[0].detach(), output))

    def forward(self, *args, **kwargs):
        calls = self._calls
        calls.clear()
        if self._sequence is None or len(args) != 1 or kwargs:
            return self._module(*args, **kwargs)
        x = args[0]
        for child, recorded in self._sequence:
            y = child(x)
            if recorded and y.requires_grad:
                calls.append(_Call(child, x, y))  # read under no_grad only: no detach needed
            x = y
        return x

    def take_calls(self) -> list[_Call]:
        """The layer calls of the last forward pass (and forget them)."""
        calls = self._calls[:]
        self._calls.clear()
        return calls

    def forbid_grad_accumulation(self) -> None:
        """Poisson sampling forbids accumulation (Opacus' interface); :func:`clip_and_sum` refuses it itself."""

    def to_standard_module(self) -> nn.Module:
        """Remove the hooks and return the wrapped model."""
        for handle in self._handles:
            handle.remove()
        self._handles = []
        self._calls = []
        return self._module


def _recordable_sequence(module: nn.Module, layers: Sequence[nn.Module]) -> tuple[tuple[nn.Module, bool], ...] | None:
    """``(child, is a clipped layer)`` for each child of a plain ``nn.Sequential`` whose trainable parameters
    all sit in its direct children; ``None`` (record by hooks) for anything else."""
    if type(module) is not nn.Sequential or module._forward_hooks or module._forward_pre_hooks:
        return None
    clipped = {id(layer) for layer in layers}
    sequence = []
    for child in module:
        if id(child) not in clipped and any(p.requires_grad for p in child.parameters()):
            return None  # trainable parameters inside a nested container: hooks find them
        sequence.append((child, id(child) in clipped))
    return tuple(sequence)


def _dense_plan(sequence: tuple[tuple[nn.Module, bool], ...] | None
                ) -> tuple[tuple[torch.Tensor, torch.Tensor], ...] | None:
    """``(weight, bias)`` of each clipped child of a recordable sequence of ``nn.Linear`` layers, in call
    order; ``None`` when there is no such sequence or a layer appears twice in it."""
    if sequence is None:
        return None
    recorded = [child for child, clipped in sequence if clipped]
    if len({id(child) for child in recorded}) != len(recorded):
        return None
    return tuple((cast(torch.Tensor, child.weight), cast(torch.Tensor, child.bias)) for child in recorded)


def _trainable_layers(module: nn.Module) -> list[nn.Module]:
    """Supported layers that hold trainable parameters; raises when a trainable parameter lives elsewhere.

    A parameter a module lists as its own but a submodule also holds is the submodule's: Opacus' ``DPLSTM``
    lists its cells' ``RNNLinear`` weights under ``nn.LSTM``'s names (``weight_ih_l0``, …)."""
    layers: list[nn.Module] = []
    for name, sub in module.named_modules():
        own = [p for p in sub.parameters(recurse=False) if p.requires_grad]
        if own and next(sub.children(), None) is not None:
            nested = {id(p) for child in sub.children() for p in child.parameters()}
            own = [p for p in own if id(p) not in nested]
        if not own:
            continue
        if not isinstance(sub, SUPPORTED_LAYERS):
            raise BookKeepingUnsupported(f"layer {name or type(sub).__name__} ({type(sub).__name__}) has trainable "
                                         "parameters; book-keeping clips Linear, Conv2d, Embedding, LayerNorm and "
                                         "GroupNorm layers only")
        why = embedding_unsupported(sub) if isinstance(sub, nn.Embedding) else None
        if why is not None:
            raise BookKeepingUnsupported(f"layer {name} is {why}")
        layers.append(sub)
    return layers


def _padded(layer: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
    """The convolution's input with its padding applied (any ``padding`` and ``padding_mode``)."""
    if isinstance(layer.padding, str) or layer.padding_mode != "zeros":
        mode = "constant" if layer.padding_mode == "zeros" else layer.padding_mode
        return F.pad(a, layer._reversed_padding_repeated_twice, mode=mode)
    ph, pw = layer.padding
    return F.pad(a, (pw, pw, ph, ph)) if ph or pw else a


def _patches(layer: nn.Conv2d, ap: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    """im2col of the padded input ``ap`` ``(B, C, Hp, Wp)``: ``(B, C·kh·kw, H'·W')``, as ``F.unfold`` orders it.

    One strided view copied once; ``F.unfold`` builds the same tensor about 10× slower on CPU (1.7 vs
    0.17 ms for digits-cnn's first layer at batch 64).
    """
    b, c = ap.shape[:2]
    kh, kw = layer.kernel_size
    dh, dw = layer.dilation
    s_h, s_w = layer.stride
    sb, sc, sr, sw = ap.stride()
    view = ap.as_strided((b, c, kh, kw, *out_hw), (sb, sc, sr * dh, sw * dw, sr * s_h, sw * s_w))
    return view.reshape(b, c * kh * kw, out_hw[0] * out_hw[1])


def conv_per_sample_grads(layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, str]:
    """Per-sample weight gradients of a convolution from its input ``a`` ``(B, C, H, W)`` and its output's
    gradient ``g`` ``(B, O, H', W')``, and their layout: ``(parts, B, numel/parts)`` with the weight's
    elements in the order ``layout`` names (``"ckho"``: C, kh, kw, O; ``"hkco"``: kh, kw, C, O, with
    ``parts = kh``). :func:`weight_order` turns a sum over examples back into the weight's shape.

    Stride 1 with ``kw·C ≥ 64`` (any dilation): the input is unrolled along the width only (``kw``
    shifted copies, channels last) and each kernel row ``i`` is one batched product over the rows
    it sees, ``kh`` products ``(kw·C × H'W')·(H'W' × O)`` written in place; on CPU about twice as
    fast as a full im2col, whose copy costs more than the products. Otherwise one product
    ``(C·kh·kw × H'W')·(H'W' × O)`` per example over the full im2col.
    """
    if layer.groups > 1:
        return grouped_conv_per_sample_grads(layer, a, g), ""
    b, o = g.shape[:2]
    kh, kw = layer.kernel_size
    c = a.shape[1]
    ap = _padded(layer, a)
    ho, wo = g.shape[2:]
    gt = g.reshape(b, o, ho * wo).transpose(1, 2)  # (B, H'W', O)
    if layer.stride != (1, 1) or kw * c < 64:
        return torch.bmm(_patches(layer, ap, (ho, wo)), gt).reshape(1, b, c * kh * kw * o), "ckho"
    dh, dw = layer.dilation
    cl = ap.permute(0, 2, 3, 1).contiguous()  # (B, Hp, Wp, C)
    sb, sr, sw, sc = cl.stride()
    rows = cl.as_strided((b, cl.shape[1], wo, kw, c), (sb, sr, sw, sw * dw, sc)).contiguous()
    rows = rows.reshape(b, cl.shape[1], wo, kw * c)  # rows[b, r, w, (j, c)] = input[b, c, r, w + j·dw]
    out = torch.empty(kh, b, kw * c, o, dtype=g.dtype, device=g.device)
    for i in range(kh):  # (kw·C × H'W')·(H'W' × O): the operand order MKL runs fastest here
        torch.bmm(rows[:, i * dh:i * dh + ho].reshape(b, ho * wo, kw * c).transpose(1, 2), gt, out=out[i])
    return out.reshape(kh, b, kw * c * o), "hkco"


def grouped_conv_per_sample_grads(layer: nn.Conv2d, a: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """Per-sample weight gradients ``(1, B, numel)``, in the weight's own ``(O, C/G, kh, kw)`` order, of a
    convolution with ``G = groups > 1``: group ``k``'s block is the ordinary rule on its own input channels
    ``k·C/G…`` and output channels ``k·O/G…`` (Bu et al. 2023's ``G_iᵀA_i`` per group).

    Depthwise (``C/G = 1``, MobileNetV2's 3×3 layers): ``∂ℓ_i/∂W[o, 0, r, s] = Σ_p G_iop·A_i,o//m,p+(r,s)``
    (``m = O/G``), a cross-correlation of each example's input channel with its own output gradient. On the
    CPU that is one depthwise convolution over all ``B·O`` channels, the input as the image and ``G`` as the
    kernel (stride and dilation swapped): over MobileNetV2's 17 depthwise layers at 32×32 and batch 64,
    49 ms of CPU time against 193 ms for the tap products below. Elsewhere (not measured on a GPU) one
    product of ``G`` with a shifted view of the input per kernel tap, ``kh·kw`` products of ``G``'s size
    instead of an im2col ``kh·kw`` times the input's. Otherwise one batched product
    ``(C/G·kh·kw × H'W')·(H'W' × O/G)`` per example and group over the im2col.
    """
    b, o, ho, wo = g.shape
    groups, (kh, kw) = layer.groups, layer.kernel_size
    cg, og = a.shape[1] // groups, o // groups
    ap = _padded(layer, a)
    if cg == 1:
        src = ap if og == 1 else ap.repeat_interleave(og, 1)  # output channel o reads input channel o // m
        if g.device.type == "cpu" and b > 0:  # (an empty batch: a convolution of no channels does not exist)
            return depthwise_by_convolution(layer, src, g)
        return depthwise_by_taps(layer, src, g)
    patches = _patches(layer, ap, (ho, wo)).reshape(b * groups, cg * kh * kw, ho * wo)
    gt = g.reshape(b * groups, og, ho * wo).transpose(1, 2)  # (B·G, H'W', O/G)
    per_group = torch.bmm(patches, gt).reshape(b, groups, cg, kh, kw, og)
    return per_group.permute(0, 1, 5, 2, 3, 4).reshape(1, b, o * cg * kh * kw)


def depthwise_by_convolution(layer: nn.Conv2d, src: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """A depthwise layer's per-sample gradients ``(1, B, O·kh·kw)`` from its padded input ``src`` ``(B, O, Hp,
    Wp)`` (channel o the one output channel o reads) and ``g`` ``(B, O, H', W')``: one convolution of ``B·O``
    groups, ``G`` the kernel, the layer's stride as its dilation and its dilation as the stride."""
    b, o, ho, wo = g.shape
    kh, kw = layer.kernel_size
    corr = F.conv2d(src.reshape(1, b * o, *src.shape[2:]), g.reshape(b * o, 1, ho, wo), groups=b * o,
                    stride=layer.dilation, dilation=layer.stride)  # (1, B·O, ≥ kh, ≥ kw)
    return corr[..., :kh, :kw].reshape(1, b, o * kh * kw)


def depthwise_by_taps(layer: nn.Conv2d, src: torch.Tensor, g: torch.Tensor) -> torch.Tensor:
    """:func:`depthwise_by_convolution` as ``kh·kw`` products of ``G`` with shifted views of ``src``."""
    b, o, ho, wo = g.shape
    (kh, kw), (dh, dw), (s_h, s_w) = layer.kernel_size, layer.dilation, layer.stride
    out = torch.empty(b, o, kh, kw, dtype=g.dtype, device=g.device)
    for r in range(kh):
        for s in range(kw):
            tap = src[:, :, r * dh:r * dh + s_h * (ho - 1) + 1:s_h, s * dw:s * dw + s_w * (wo - 1) + 1:s_w]
            out[:, :, r, s] = (g * tap).sum((2, 3))
    return out.reshape(1, b, o * kh * kw)


def weight_order(summed: torch.Tensor, layout: str, weight_shape: torch.Size) -> torch.Tensor:
    """A convolution's per-sample layout ``layout`` summed over examples, as ``(O, C, kh, kw)``."""
    o, c, kh, kw = weight_shape
    if layout == "ckho":
        return summed.reshape(c, kh, kw, o).permute(3, 0, 1, 2)
    return summed.reshape(kh, kw, c, o).permute(3, 2, 0, 1)


def _linear_sequences(call: _Call, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, G)`` of a linear layer as ``(B, T, K)`` and ``(B, T, O)``: T positions share the weight."""
    return call.inputs.flatten(1, -2), grad.flatten(1, -2)  # (flatten, not reshape(-1): a batch can be empty)


def _pointwise(layer: nn.Conv2d) -> bool:
    """A 1×1 convolution, stride 1, no padding, not grouped: a Linear layer over the input's positions."""
    return (layer.kernel_size == (1, 1) and layer.stride == (1, 1) and layer.padding in ((0, 0), "valid")
            and layer.groups == 1)


def _positions(call: _Call, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(A, G)`` of a 1×1 convolution as ``(B, H·W, C)`` and ``(B, H·W, O)``."""
    return call.inputs.flatten(2).transpose(1, 2), grad.flatten(2).transpose(1, 2)


class _LayerTerms:
    """A Linear or Conv2d layer's per-sample squared norms (weight + bias) and how to form its clipped gradient
    sum (Embedding, LayerNorm and GroupNorm: client/book_keeping_layers.py)."""

    def __init__(self, call: _Call, grad: torch.Tensor) -> None:
        self.layer = layer = call.layer
        w_trained = layer.weight.requires_grad
        b_trained = layer.bias is not None and layer.bias.requires_grad
        self.per_sample: torch.Tensor | None = None  # (parts, B, numel/parts) when materialised
        self.layout = ""  # a convolution's per_sample layout (conv_per_sample_grads); "" is the weight's order
        self.a: torch.Tensor | None = None  # kept to form Σ c_i g_i a_iᵀ when not materialised
        self.g: torch.Tensor | None = None
        self.bias_grads: torch.Tensor | None = None  # (B, O)
        b = grad.shape[0]
        if isinstance(layer, nn.Linear) and grad.dim() == 2:  # one position: ‖g aᵀ‖² = ‖g‖²·‖a‖²
            g_sq = torch.linalg.vecdot(grad, grad)
            self.a, self.g = call.inputs, grad
            if b_trained:
                self.bias_grads = grad
            if w_trained:
                a_sq = torch.linalg.vecdot(call.inputs, call.inputs)
                self.squared_norms = torch.addcmul(g_sq, a_sq, g_sq) if b_trained else a_sq * g_sq
            else:
                self.squared_norms = g_sq
            return
        sq: torch.Tensor | None = None
        if isinstance(layer, nn.Conv2d) and not _pointwise(layer):
            if w_trained:
                per_sample, layout = conv_per_sample_grads(layer, call.inputs, grad)
                sq = torch.linalg.vector_norm(per_sample, dim=2).square().sum(0)
                if per_sample.numel() <= KEEP_PER_SAMPLE * (call.inputs.numel() + grad.numel()):
                    self.per_sample, self.layout = per_sample, layout
                else:  # far larger than A and G (a wide 1×1 convolution at low resolution): dropped now, the
                    self.a, self.g = call.inputs, grad  # clipped sum is one weight-gradient convolution of c∘G
            bias_grads = grad.flatten(2).sum(2)
        else:  # a Linear layer, or a 1×1 convolution: a Linear layer over its H·W positions
            a, g = _linear_sequences(call, grad) if isinstance(layer, nn.Linear) else _positions(call, grad)
            t, k, o = a.shape[1], a.shape[2], g.shape[2]
            if w_trained:
                # materialise G_iᵀA_i (B, O, K) where that costs fewer operations (norms B·O·K·T, clipped sum
                # B·O·K; the ghost form's B·T²·(O+K), then B·T·O·K) in at most twice the memory of A and G
                if o * k <= min(t * t, 2 * t) * (o + k):
                    self.per_sample = torch.bmm(g.transpose(1, 2), a).reshape(1, b, o * k)
                    sq = torch.linalg.vector_norm(self.per_sample[0], dim=1).square()
                else:  # ghost norm: ⟨A Aᵀ, G Gᵀ⟩ over (T, T)
                    sq = (torch.bmm(a, a.transpose(1, 2)) * torch.bmm(g, g.transpose(1, 2))).sum((1, 2))
                    self.a, self.g = a, g
            bias_grads = g.sum(1)
        if b_trained:
            self.bias_grads = bias_grads
            bias_sq = torch.linalg.vecdot(bias_grads, bias_grads)
            sq = bias_sq if sq is None else sq + bias_sq
        assert sq is not None  # a supported layer holds a trainable parameter
        self.squared_norms = sq

    def clipped_sums(self, factors: torch.Tensor) -> None:
        """Set ``Σ_i c_i ∂ℓ_i/∂θ`` as each trainable parameter's ``.grad``; ``factors`` is ``(B,)``."""
        layer = self.layer
        if self.g is not None and self.g.dim() == 2:  # linear, one position
            gc = self.g * factors[:, None]
            if layer.weight.requires_grad:
                _accumulate(layer.weight, gc.t().mm(self.a))  # type: ignore[arg-type]  # a Linear layer's weight and bias are tensors
            if self.bias_grads is not None:
                _accumulate(layer.bias, gc.sum(0))  # type: ignore[arg-type]  # a Linear layer's weight and bias are tensors
            return
        weight = layer.weight
        if weight.requires_grad:
            if self.per_sample is not None:
                w = torch.stack([torch.mv(part.t(), factors) for part in self.per_sample])  # (parts, numel/parts)
                if self.layout:
                    w = weight_order(w, self.layout, cast(torch.Size, weight.shape))
            elif isinstance(layer, nn.Conv2d) and self.a is not None and self.a.dim() == 4:
                assert self.g is not None
                w = conv2d_weight(_padded(layer, self.a), weight.shape, self.g * factors[:, None, None, None],
                                  layer.stride, 0, layer.dilation, layer.groups)
            else:
                assert self.a is not None and self.g is not None
                gc = self.g * factors[:, None, None]
                w = gc.reshape(-1, gc.shape[2]).t() @ self.a.reshape(-1, self.a.shape[2])
            _accumulate(cast(torch.Tensor, weight), w.reshape(cast(torch.Size, weight.shape)))
        if self.bias_grads is not None:
            _accumulate(layer.bias, factors @ self.bias_grads)  # type: ignore[arg-type]  # bias_grads is set only where the layer has a bias


def _accumulate(param: torch.Tensor, grad: torch.Tensor) -> None:
    if param.grad is None:
        param.grad = grad if grad.dtype == param.dtype else grad.to(param.dtype)
    else:
        param.grad.add_(grad)


def output_grads(loss: torch.Tensor, outputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor | None, ...]:
    """``∂(Σ loss)/∂Z`` for each ``Z`` in ``outputs`` (``None`` where the loss does not depend on it), as
    ``torch.autograd.grad(loss, outputs, allow_unused=True)`` returns them.

    ``torch.autograd.grad`` spends about 18 µs per call in Python (argument normalisation, a ``grad_outputs``
    built for the scalar, ``__torch_function__`` checks) before it enters autograd's engine, as much as
    the engine's whole backward pass through a logistic regression at batch 64. That is the single
    largest cost DP-SGD adds to a small model's step, and torch's public API has no cheaper call, so this
    enters the engine through the function ``torch.autograd.grad`` itself ends in
    (``torch.autograd.graph._engine_run_backward``, torch 2.x), with the same arguments it passes. Where
    a torch release lacks it, or the loss is not a plain tensor, the public call is used: same result
    (tests/test_book_keeping.py compares the two).
    """
    if _ENGINE is None or type(loss) is not torch.Tensor or any(type(z) is not torch.Tensor for z in outputs):
        return torch.autograd.grad(loss, outputs, torch.ones_like(loss) if loss.dim() else None, allow_unused=True)
    # a 0-dim loss's seed gradient is a cached 1, never written to: the engine only reads it
    seed = torch.ones_like(loss) if loss.dim() else _scalar(1.0, loss)
    # (outputs, their gradients, keep_graph, create_graph, inputs, allow_unreachable, accumulate_grad)
    return _ENGINE((loss,), (seed,), False, False, outputs, True, False)


def clip_and_sum(module: BookKeepingModule, loss: torch.Tensor, max_grad_norm: float,
                 scale: float = 1.0) -> None:
    """Set every trainable parameter's ``.grad`` to ``scale · Σ_i c_i ∇ℓ_i`` with the clip factors ``c_i``.

    ``loss``: the per-example losses ``(B,)`` of the last forward pass of ``module``, or their sum (0-dim;
    each example's output-gradient rows are its own either way, and the sum needs no ``grad_outputs``). ``scale``
    is folded into the clip factors (no pass over the gradients): the DP optimizer's mean reduction.
    """
    calls = module.take_calls()
    if module.trainable and module.trainable[0].grad is not None:  # each backward sets every trainable .grad
        raise RuntimeError("a second backward pass before optimizer.zero_grad(): DP-SGD with Poisson sampling takes "
                           "one batch per optimizer step (the accountant counts one per step), so gradients must "
                           "not accumulate; call optimizer.zero_grad() before each backward pass")
    if not calls:
        if module.trainable:
            raise RuntimeError("book-keeping recorded no layer call in the last forward pass: compute the loss "
                               "from the output of the model make_private returned, with gradients enabled")
        return
    plan = module.dense_params
    repeated = False
    if plan is None or len(calls) != len(plan):  # (a plan's layers are distinct, checked when wrapped)
        plan = None
        repeated = _check_repeated(calls)
    # ∂(Σ_i ℓ_i)/∂Z: row i of each layer's output gradient is example i's own (examples do not interact)
    grads = output_grads(loss, tuple([c.output for c in calls]))
    with torch.no_grad():
        if plan is not None and _clip_dense_rows(calls, grads, plan, max_grad_norm, scale):
            return  # every layer of the plan was recorded and received its clipped sums
        if repeated:
            calls, grads = _merge_repeated(calls, grads)
        # (the lean path again only for an MLP recorded by hooks: with a plan it has just declined)
        _clip_layers(calls, grads, max_grad_norm, scale, dense_linear=module.dense_linear and plan is None)
    for p in module.trainable:  # a layer the loss did not reach contributes zero (noise is still added)
        if p.grad is None:
            p.grad = torch.zeros_like(p)


def _check_repeated(calls: list[_Call]) -> bool:
    """Whether a layer was called more than once in the forward pass; raises :class:`BookKeepingUnsupported`
    when that layer is not an ``nn.Linear`` (the one type whose calls :func:`_merge_repeated` joins)."""
    seen: set[int] = set()
    repeated = False
    for call in calls:
        if id(call.layer) in seen:
            if not isinstance(call.layer, nn.Linear):
                raise BookKeepingUnsupported(f"{type(call.layer).__name__} layer called twice in one forward pass; "
                                             "book-keeping joins repeated calls of Linear layers only: "
                                             "use dp_mode ghost or hooks")
            repeated = True
        seen.add(id(call.layer))
    return repeated


def _merge_repeated(calls: list[_Call], grads: tuple[torch.Tensor | None, ...]
                    ) -> tuple[list[_Call], tuple[torch.Tensor | None, ...]]:
    """One call per layer: the calls of an ``nn.Linear`` layer called ``T`` times (an RNN cell unrolled over
    time, Opacus' ``DPLSTM``) joined into one over ``T`` positions, in the order of the first calls.

    The per-sample weight gradient of a layer called with inputs ``a_t`` ``(B, K)`` and output gradients
    ``g_t`` ``(B, O)`` is ``Σ_t g_tᵀa_t`` (bias: ``Σ_t g_t``), which is the rule for one call over positions
    with ``A = stack_t a_t`` ``(B, T, K)`` and ``G = stack_t g_t`` ``(B, T, O)``; so is its ghost norm
    ``⟨A_iA_iᵀ, G_iG_iᵀ⟩`` (Bu et al. 2023). Calls with ``(B, ..., K)`` inputs join along the position
    axis. A call the loss does not reach adds nothing. All calls of a layer must see the same batch.
    """
    groups: dict[int, list[int]] = {}
    for i, call in enumerate(calls):
        groups.setdefault(id(call.layer), []).append(i)
    joined_calls: list[_Call] = []
    joined_grads: list[torch.Tensor | None] = []
    for indices in groups.values():
        reached = [i for i in indices if grads[i] is not None] or indices[:1]
        if len(reached) == 1:
            joined_calls.append(calls[reached[0]])
            joined_grads.append(grads[reached[0]])
            continue
        layer = calls[reached[0]].layer
        inputs = [calls[i].inputs for i in reached]
        outputs = [cast(torch.Tensor, grads[i]) for i in reached]
        if len({a.shape[0] for a in inputs}) != 1 or inputs[0].dim() < 2:
            raise BookKeepingUnsupported(f"{type(layer).__name__} layer called with different batch sizes "
                                         f"({sorted({a.shape[0] for a in inputs})}) or unbatched inputs in one "
                                         "forward pass (a packed sequence?); use dp_mode hooks")
        if all(a.dim() == 2 for a in inputs):  # an RNN cell: one (B, K) row per example and step
            a_joined, g_joined = torch.stack(inputs, 1), torch.stack(outputs, 1)
        else:
            a_joined = torch.cat([_as_positions(a) for a in inputs], 1)
            g_joined = torch.cat([_as_positions(g) for g in outputs], 1)
        joined_calls.append(_Call(layer, a_joined, calls[reached[0]].output))
        joined_grads.append(g_joined)
    return joined_calls, tuple(joined_grads)


def _as_positions(x: torch.Tensor) -> torch.Tensor:
    """``(B, ..., K)`` as ``(B, positions, K)`` (also for an empty batch)."""
    return x.reshape(x.shape[0], math.prod(x.shape[1:-1]), x.shape[-1])


def _clip_factors(squared: torch.Tensor, max_grad_norm: float, scale: float) -> torch.Tensor:
    """``scale · c_i`` from the per-example squared norms ``(B,)``, overwriting them.

    c_i = min(1, C/‖g_i‖) = C / sqrt(max(‖g_i‖², C²)): Opacus' flat clipping (opacus/optimizers/optimizer.py)
    without its 1e-6 in the denominator, in three in-place tensor operations; c_i·‖g_i‖ ≤ C exactly as there.
    """
    return squared.clamp_min_(max_grad_norm ** 2).rsqrt_().mul_(max_grad_norm * scale)


def _clip_dense_rows(calls: list[_Call], grads: tuple[torch.Tensor | None, ...],
                     params: Sequence[tuple[torch.Tensor, torch.Tensor]], max_grad_norm: float, scale: float) -> bool:
    """:func:`_clip_layers` for a stack of ``nn.Linear`` layers with weight and bias trained, each seeing one
    ``(B, K)`` row per example (an MLP): ``‖g_i‖² = Σ_l ‖G_l,i‖²·(‖A_l,i‖² + 1)``, then per layer
    ``W.grad = (c∘G)ᵀA`` and ``b.grad = (c∘G)ᵀ1``. ``params``: each call's ``(weight, bias)``.

    The same arithmetic as the general path in about half the tensor operations and none of its per-layer
    Python objects: on ``tabular``'s 30-64-2 MLP each operation is a few microseconds of dispatch on
    tensors of a few hundred values, so their number is the private step's cost. Returns ``False``, having
    changed nothing, when a layer's output gradient is missing or not one row per example.
    """
    vecdot = torch.linalg.vecdot
    squared: torch.Tensor | None = None
    for call, g in zip(calls, grads, strict=True):
        if g is None or g.dim() != 2:
            return False
        g_sq = vecdot(g, g)
        if squared is None:
            squared = torch.addcmul(g_sq, vecdot(call.inputs, call.inputs), g_sq)
        else:
            squared.add_(g_sq).addcmul_(vecdot(call.inputs, call.inputs), g_sq)
    if squared is None:
        return False
    # 1/max(‖g_i‖, C); the constant C·scale goes in as the products' alpha (one operation fewer)
    inverse = squared.clamp_min_(max_grad_norm ** 2).rsqrt_()
    column = inverse.unsqueeze(1)  # (B, 1)
    alpha = max_grad_norm * scale
    zero = _scalar(0.0, inverse)
    for call, g, (weight, bias) in zip(calls, grads, params, strict=True):
        gt = g.t()  # type: ignore[union-attr]  # layers the loss did not reach were skipped above
        # row i of call.inputs * column: example i's input times 1/max(‖g_i‖, C)
        _accumulate(weight, torch.addmm(zero, gt, call.inputs * column, beta=0, alpha=alpha))
        _accumulate(bias, torch.addmv(zero, gt, inverse, beta=0, alpha=alpha))
    return True


_SCALARS: dict[tuple[float, torch.device, torch.dtype], torch.Tensor] = {}


def _scalar(value: float, like: torch.Tensor) -> torch.Tensor:
    """A cached 0-dim ``value`` on ``like``'s device and dtype, made once (a new one costs a µs per step): the
    ignored ``input`` of ``addmm``/``addmv`` with ``beta=0``, or the seed gradient of a summed loss."""
    key = (value, like.device, like.dtype)
    constant = _SCALARS.get(key)
    if constant is None:
        constant = _SCALARS[key] = torch.full((), value, device=like.device, dtype=like.dtype)
    return constant


def _clip_layers(calls: list[_Call], grads: tuple[torch.Tensor | None, ...], max_grad_norm: float,
                 scale: float, *, dense_linear: bool = False) -> None:
    """``dense_linear``: every recorded layer is a fully trained ``nn.Linear`` (:class:`BookKeepingModule`
    decides once); :func:`_clip_dense_rows` then applies when each sees one ``(B, K)`` row per example."""
    if dense_linear and _clip_dense_rows(calls, grads, [(cast(torch.Tensor, c.layer.weight),
                                                         cast(torch.Tensor, c.layer.bias)) for c in calls],
                                         max_grad_norm, scale):
        return
    terms = [_terms(c, g) for c, g in zip(calls, grads, strict=True) if g is not None]
    if not terms:  # the loss reached no recorded layer: nothing to clip
        return
    squared = terms[0].squared_norms  # fresh: updated in place
    for term in terms[1:]:
        squared.add_(term.squared_norms)
    factors = _clip_factors(squared, max_grad_norm, scale)
    for term in terms:
        if isinstance(term, _LayerTerms):
            term.clipped_sums(factors)
        else:
            for param, summed in term.clipped_grads(factors):
                _accumulate(param, summed)


def _terms(call: _Call, grad: torch.Tensor) -> _LayerTerms | EmbeddingTerms | LayerNormTerms | GroupNormTerms:
    """The per-sample terms of one recorded call: each layer type's rule."""
    if isinstance(call.layer, nn.Embedding):
        return EmbeddingTerms(call.layer, call.inputs, grad)
    if isinstance(call.layer, nn.LayerNorm):
        return LayerNormTerms(call.layer, call.inputs, grad)
    if isinstance(call.layer, nn.GroupNorm):
        return GroupNormTerms(call.layer, call.inputs, grad)
    return _LayerTerms(call, grad)


class BookKeepingLoss:
    """The task's criterion, summing over the batch; ``backward()`` runs :func:`clip_and_sum`, leaving
    ``Σ_i c_i ∇ℓ_i / E[B]`` (``scale`` = 1/E[B], the optimizer's mean reduction) in ``.grad``.

    The sum's gradient with respect to a layer's output has example i's own gradient in row i, as the
    per-example losses' would, without a ``grad_outputs`` tensor to build each step.
    """

    def __init__(self, module: BookKeepingModule, criterion: nn.Module, max_grad_norm: float, scale: float) -> None:
        self.module = module
        self.criterion = criterion
        self.criterion.reduction = "sum"  # type: ignore[assignment]  # the losses' attribute, a str, not a Tensor
        self.max_grad_norm = max_grad_norm
        self.scale = scale

    def __call__(self, outputs: torch.Tensor, targets: torch.Tensor) -> BookKeepingTensor:
        return BookKeepingTensor(self, self.criterion(outputs, targets), outputs.shape[0])


class BookKeepingTensor:
    """A batch loss as the training loop sees it: ``backward()``, ``detach()`` (the mean over the batch's
    examples of each one's loss), ``item()``."""

    def __init__(self, loss: BookKeepingLoss, total: torch.Tensor, batch_size: int) -> None:
        self._loss = loss
        self.total = total
        self.batch_size = batch_size

    def detach(self) -> torch.Tensor:
        return self.total.detach() / max(self.batch_size, 1)

    def item(self) -> float:
        return float(self.detach())

    def backward(self) -> None:
        clip_and_sum(self._loss.module, self.total, self._loss.max_grad_norm, self._loss.scale)


def make_private_book_keeping(engine: PrivacyEngine, *, module: nn.Module, optimizer: torch.optim.Optimizer,
                              criterion: nn.Module, data_loader: DataLoader, noise_multiplier: float,
                              max_grad_norm: float, noise_generator: torch.Generator | None = None,
                              expected_batch_size: int | None = None
                              ) -> tuple[BookKeepingModule, FlatNoiseDPOptimizer, BookKeepingLoss, DataLoader]:
    """``PrivacyEngine.make_private`` with book-keeping clipping, from Opacus' public parts.

    As Opacus does it (opacus/privacy_engine.py): Poisson ``DPDataLoader`` drawing from
    ``data_loader``'s generator, sample rate ``1/len(loader)``, expected batch ``int(N·q)``, mean loss
    reduction, noise from ``noise_generator``, the engine's accountant hooked to every optimizer step.
    ``expected_batch_size`` replaces ``int(N·q)`` where E[B] must not depend on the exact N. Raises
    :class:`BookKeepingUnsupported` for a model it cannot clip.
    """
    engine.validate(module=module, optimizer=None, data_loader=None)  # BatchNorm and the like: refused
    wrapped = BookKeepingModule(module)
    params = {id(p) for p in module.parameters()}
    if any(id(p) not in params for group in optimizer.param_groups for p in group["params"]):
        raise ValueError("Module parameters are different than optimizer Parameters")
    loader = DPDataLoader.from_data_loader(data_loader)
    sample_rate = 1 / len(loader)
    if expected_batch_size is None:
        expected_batch_size = int(len(loader.dataset) * sample_rate)
    dp_optimizer = FlatNoiseDPOptimizer(optimizer, noise_multiplier=noise_multiplier, max_grad_norm=max_grad_norm,
                                        expected_batch_size=expected_batch_size, loss_reduction="mean",
                                        generator=noise_generator)
    dp_optimizer.attach_step_hook(engine.accountant.get_optimizer_hook_fn(sample_rate=sample_rate))
    return wrapped, dp_optimizer, BookKeepingLoss(wrapped, criterion, max_grad_norm, dp_optimizer.grad_scale), loader
