"""The warm executor runs only FedShield's installed ClientApp, never code a run names instead."""

from __future__ import annotations

import io
import zipfile

from fedshield.flower_ext.app_executor import ALLOWED_CLIENTAPP, fab_clientapp


def _fab(pyproject: str) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("pyproject.toml", pyproject)
    return buffer.getvalue()


def test_reads_the_clientapp_a_fab_names() -> None:
    ours = _fab('[tool.flwr.app.components]\nclientapp = "fedshield.client.client_app:app"\nserverapp = "x:y"\n')
    assert fab_clientapp(ours) == ALLOWED_CLIENTAPP
    other = _fab('[tool.flwr.app.components]\nclientapp = "evil.steal:app"\n')
    assert fab_clientapp(other) == "evil.steal:app" != ALLOWED_CLIENTAPP


def test_malformed_fabs_name_nothing() -> None:
    assert fab_clientapp(b"not a zip") is None
    assert fab_clientapp(_fab("not = [valid")) is None
    assert fab_clientapp(_fab("[project]\nname = 'x'\n")) is None
