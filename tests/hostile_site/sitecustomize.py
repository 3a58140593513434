"""Test-only: turns a real `fl-client join` into a hostile site (never shipped; tests put this folder on PYTHONPATH).

Python imports ``sitecustomize`` at start-up in every process of the site (the CLI, its SuperNode and the
ClientApp executor). When ``FEDSHIELD_TEST_ATTACK`` is set, the site's ClientApp trains honestly and
then replaces its training reply, as a modified client would:

- ``nan``: every value NaN;  ``scale``: the update × 1e6;  ``shape``: the last array misshapen;
- ``count``: the reply claims 10⁹ examples;  ``sign-flip``: the update negated (global − Δ).
"""

from __future__ import annotations

import importlib.abc
import os
import sys

ATTACK = os.environ.get("FEDSHIELD_TEST_ATTACK", "")
TARGET = "fedshield.client.client_app"


def _patch(module) -> None:
    import numpy as np

    honest_fit = module.SiteClient.fit

    def fit(self, parameters, config):
        arrays, count, metrics = honest_fit(self, parameters, config)
        if ATTACK == "nan":
            arrays = [np.full_like(a, np.nan) if a.dtype.kind == "f" else a for a in arrays]
        elif ATTACK == "scale":
            arrays = [(p + 1e6 * (a - p)).astype(a.dtype) for a, p in zip(arrays, parameters, strict=True)]
        elif ATTACK == "shape":
            arrays = [*arrays[:-1], np.zeros((3, 3), dtype=arrays[-1].dtype)]
        elif ATTACK == "count":
            count = 10**9
        elif ATTACK == "sign-flip":
            arrays = [(2 * p - a).astype(a.dtype) if a.dtype.kind == "f" else a
                      for a, p in zip(arrays, parameters, strict=True)]
        return arrays, count, metrics

    module.SiteClient.fit = fit


class _PatchOnImport(importlib.abc.MetaPathFinder):
    """Finds the ClientApp module with the other finders, and patches it once it has run."""

    def find_spec(self, name, path, target=None):
        if name != TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None and spec.loader is not None:
                def exec_module(module, run_module=spec.loader.exec_module):
                    run_module(module)
                    _patch(module)

                spec.loader.exec_module = exec_module
                return spec
        return None


if ATTACK:
    sys.meta_path.insert(0, _PatchOnImport())
