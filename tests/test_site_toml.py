"""fedshield.toml: typed keys, clear errors, CLI overrides win."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedshield.common.errors import ConfigError
from fedshield.tasks.site_config import read_site_config, site_options


def test_overrides_win_and_none_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "fedshield.toml").write_text('task = "tabular"\ntarget = "a"\nval_fraction = 0.3\nclasses = 3\n')
    task, options = site_options(tmp_path, {"target": "b", "seed": None})
    assert task == "tabular" and options.target == "b" and options.val_fraction == 0.3
    assert options.extra == {"classes": 3} and options.seed == 0


@pytest.mark.parametrize("text,match", [
    ("task = ", "not valid TOML"),
    ('colour = "red"', "unknown key 'colour'"),
    ("seed = \"x\"", "seed = 'x' has the wrong type"),
    ('kind = "ranking"', "kind = 'ranking'"),
    ("val_fraction = 1.5", "val_fraction = 1.5"),
])
def test_bad_toml_names_file_and_key(tmp_path: Path, text: str, match: str) -> None:
    (tmp_path / "fedshield.toml").write_text(text)
    with pytest.raises(ConfigError, match=match) as err:
        read_site_config(tmp_path)
    assert "fedshield.toml" in str(err.value) and "\n" not in str(err.value)
