"""Bound oneDNN's cache of compiled CPU kernels in training processes.

On the CPU PyTorch runs convolutions through oneDNN, which compiles a kernel (a "primitive") for each
layer, direction and input shape, and keeps up to 1,024 of them (``ONEDNN_PRIMITIVE_CACHE_CAPACITY``).
DP-SGD's Poisson sampling gives every step a batch of a different size (binomial around E[B]), so the
cache fills with the same layers' kernels at dozens of batch sizes, each holding its compiled code and
buffers. transfer-mobilenet (52 convolutions, about 150 kernels per batch size) kept some 800 MB of
them at batch 64, most of DP-SGD's memory beyond a plain step (``benchmarks/dp_overhead.py``:
1,734 → 952 MB peak for the head model with the cache bounded at 256 kernels, at the same step time).
A plain step, whose batches all have one size, needs far fewer, so the bound does not slow it.

oneDNN reads the variable once, when it creates its first kernel; :func:`bound_kernel_cache` therefore
runs before a process's first convolution (``train_round`` and ``evaluate_round`` call it first).
A value the user exported is kept.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

ONEDNN_DEFAULT = 1024  # kernels, oneDNN 3.x
CAPACITY = 256  # kernels: a few batch sizes of the largest task's layers, every size of the small ones
VARIABLES = ("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "DNNL_PRIMITIVE_CACHE_CAPACITY")  # current name, older one


def bound_kernel_cache(capacity: int = CAPACITY) -> int:
    """Set oneDNN's kernel cache capacity for this process unless the user set one; return the value in force."""
    for name in VARIABLES:
        value = os.environ.get(name)
        if value is not None:
            log.debug("oneDNN kernel cache: %s=%s from the environment", name, value)
            try:
                return int(value)
            except ValueError:
                return ONEDNN_DEFAULT  # oneDNN ignores a value it cannot read
    os.environ[VARIABLES[0]] = str(capacity)
    return capacity
