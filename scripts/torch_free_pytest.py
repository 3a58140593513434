"""pytest plugin for scripts/check_pythons.py's runs without torch: a test that failed because torch is not
installed is reported as skipped ("needs torch"), so that every other failure stands out.

A failure counts as torch's when its report (traceback, captured output and logs) says ``No module named
'torch'`` (or ``'opacus'``, which needs torch) (an import in the test, or in a CLI it started), or it is one
of :data:`NEEDS_TORCH_IN_A_THREAD`.
"""

from __future__ import annotations

from collections.abc import Generator

import pytest

#: tests whose code under test imports torch in a thread, where the ImportError never reaches the test:
#: flower_ext/app_executor.py's serve() imports the ClientApp (torch, Opacus) before its first poll
NEEDS_TORCH_IN_A_THREAD = frozenset({
    "tests/test_executor_wake.py::test_an_idle_executor_polls_again_as_soon_as_it_is_woken",
    "tests/test_executor_wake.py::test_a_woken_executor_does_not_re_poll_after_a_task",
})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, None, None]:
    """Turn a failure caused by the missing torch into a skip."""
    outcome = yield
    report = outcome.get_result()
    if not report.failed:
        return
    text = report.longreprtext + "".join(content for _, content in report.sections)
    # Opacus is torch's: check_pythons.py installs neither
    missing = any(f"No module named '{name}'" in text for name in ("torch", "opacus"))
    if missing or item.nodeid in NEEDS_TORCH_IN_A_THREAD:
        report.outcome = "skipped"
        report.longrepr = (str(item.path), item.location[1] or 0, "needs torch (not installed)")
