"""Bound oneDNN's cache of compiled CPU kernels in a training process whose model has many convolutions.

On the CPU PyTorch runs convolutions through oneDNN, which compiles a kernel (a "primitive") for each
layer, direction and input shape, and keeps up to 1,024 of them (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``).
DP-SGD's Poisson sampling gives every step a batch of a different size (binomial around E[B]), so the
cache fills with the same layers' kernels at dozens of batch sizes, each holding its compiled code and
buffers. transfer-mobilenet (52 convolutions, about 150 kernels per batch size) kept some 800 MB of
them at batch 64, most of DP-SGD's memory beyond a plain step (``benchmarks/dp_overhead.py``:
1,734 → 952 MB peak for the head model with the cache bounded at 256 kernels, at the same step time).

A model with few convolutions is left oneDNN's default: its kernels for every batch size fit in the
cache, they are small, and re-compiling them when the cache is bounded cost cifar-cnn and dcgan about
5% of a DP step. The rule (:func:`kernel_cache_capacity`) estimates the kernels a round needs: three per
convolution (forward, gradient of the input, of the weights) for each batch size within ±3σ of E[B].

oneDNN reads the variable once, when it creates its first kernel; :func:`bound_kernel_cache` therefore
runs before a process's first convolution (``train_round`` and ``evaluate_round`` call it first).
A value the user exported is kept.
"""

from __future__ import annotations

import logging
import math
import os

from torch import nn

log = logging.getLogger(__name__)

ONEDNN_DEFAULT = 1024  # kernels, oneDNN 3.x
CAPACITY = 256  # kernels: a couple of batch sizes of transfer-mobilenet's layers
KERNELS_PER_CONVOLUTION = 3  # forward, input gradient, weight gradient
VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")  # current name, older one
_CONVOLUTIONS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def kernel_cache_capacity(model: nn.Module, batch_size: int) -> int:
    """oneDNN's default where a round's kernels fit in it, else :data:`CAPACITY`.

    A round of Poisson batches of mean ``batch_size`` (σ ≈ √E[B]) sees about 6√E[B] + 1 sizes; each needs
    :data:`KERNELS_PER_CONVOLUTION` kernels per convolution of ``model``. digits-cnn (2 convolutions) at batch 64
    needs about 294, dcgan (4) 588, transfer-mobilenet (52) 7,644.
    """
    convolutions = sum(isinstance(layer, _CONVOLUTIONS) for layer in model.modules())
    sizes = 6 * math.sqrt(max(batch_size, 1)) + 1
    return ONEDNN_DEFAULT if KERNELS_PER_CONVOLUTION * convolutions * sizes <= ONEDNN_DEFAULT else CAPACITY


def bound_kernel_cache(model: nn.Module, batch_size: int) -> int:
    """Set oneDNN's kernel cache capacity for this process from ``model`` (:func:`kernel_cache_capacity`) unless
    it is set already (by the user, or by an earlier call: oneDNN has read it by then); return the value in force."""
    for name in VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            log.debug("oneDNN kernel cache: %s=%s from the environment", name, value)
            try:
                return int(value)
            except ValueError:
                return ONEDNN_DEFAULT  # oneDNN ignores a value it cannot read
    capacity = kernel_cache_capacity(model, batch_size)
    os.environ[VARIABLES[0]] = str(capacity)
    return capacity
