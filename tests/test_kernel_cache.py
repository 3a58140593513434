"""Training processes bound oneDNN's kernel cache before their first convolution, unless the user chose a bound."""

from __future__ import annotations

import os

import pytest

from fedshield.common.kernel_cache import CAPACITY, ONEDNN_DEFAULT, VARIABLES, bound_kernel_cache


def test_the_bound_is_set_for_a_process_that_has_none(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert bound_kernel_cache() == CAPACITY
    assert os.environ[VARIABLES[0]] == str(CAPACITY)


@pytest.mark.parametrize("name", VARIABLES)
def test_a_bound_the_user_exported_is_kept(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    for other in VARIABLES:
        monkeypatch.delenv(other, raising=False)
    monkeypatch.setenv(name, "2048")
    assert bound_kernel_cache() == 2048
    assert os.environ[name] == "2048" and all(os.environ.get(n) in (None, "2048") for n in VARIABLES)
    monkeypatch.setenv(name, "lots")  # oneDNN ignores what it cannot read
    assert bound_kernel_cache() == ONEDNN_DEFAULT

