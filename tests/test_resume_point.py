"""Where a resumed run starts, when the coordinator died between writing its server state and results.json."""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from fedshield.server.run_resume import ROUND_ENTRY_KEY, resume_point, with_saved_round, write_server_state


def _round(n: int) -> dict:
    return {"round": n, "train": {"sampled": 3, "sites": {"hospital_a": {"examples": 10}}, "failures": []}}


def _killed_between_the_two_writes(run_dir: Path) -> dict:
    """The server state says round 3; results.json, written after it, stops at round 2."""
    results = {"status": "running", "rounds": [_round(0), _round(1), _round(2)]}
    (run_dir / "results.json").write_text(json.dumps(results))
    write_server_state(run_dir, 3, nn.Linear(2, 1).state_dict(), {"strategy": {}, "checks": {},
                                                                   ROUND_ENTRY_KEY: _round(3)})
    return results


def test_a_round_saved_with_the_state_but_missing_from_the_results_is_put_back(tmp_path: Path) -> None:
    results = _killed_between_the_two_writes(tmp_path)
    point = resume_point(tmp_path)
    assert point.last_round == 3
    assert [r["round"] for r in with_saved_round(results, point)["rounds"]] == [0, 1, 2, 3]  # before: 0, 1, 2
    assert with_saved_round(results, point)["rounds"][3] == _round(3)


def test_rounds_the_results_hold_are_kept_as_they_are(tmp_path: Path) -> None:
    results = _killed_between_the_two_writes(tmp_path)
    evaluated = {**_round(3), "evaluate": {"sites": {}}}
    results["rounds"].append(evaluated)
    assert with_saved_round(results, resume_point(tmp_path))["rounds"][3] == evaluated
