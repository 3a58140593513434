"""Resuming a run whose coordinator stopped (a crash, a kill, a lost host): ``fl-server start --resume RUN_DIR``.

The SuperLink keeps its state in memory, so a resumed run is a new Flower run on a new SuperLink. What
carries it on is in the run folder, each file written atomically:

- ``results.json``: the run's settings (``config``, taken as they are; flags that would change them are
  refused), its FedShield run id, and the rounds so far;
- ``server-state.pt``: rewritten after every round, before the round's checkpoint and results: the round,
  the global model, the strategy's state (:mod:`fedshield.strategies.strategy_state`) and the update
  checks' rejections and exclusions. One file, so the model and the state always belong to the same round.

The last completed round is the one ``server-state.pt`` names: the rounds go on from the next one up to the
original ``--rounds``, and results.json keeps the rounds up to it. The resumed run sends the original
FedShield run id to the sites, whose privacy ledgers then continue the same run: a round a site already
released is refused, never paid for twice.
"""

from __future__ import annotations

import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedshield.common.atomic_io import atomic_write_bytes, atomic_write_json
from fedshield.common.errors import ConfigError, RunFolderError
from fedshield.common.run_config import RunConfig
from fedshield.common.run_files import RESULTS_FILE

#: run-config key telling the ServerApp the last completed round of the run it resumes
RESUME_ROUND_KEY = "resume-from-round"
#: the server's state after the last completed round, in the run folder
SERVER_STATE_FILE = "server-state.pt"
SERVER_STATE_FORMAT = "fedshield-server-state"
#: statuses of a run that did not end: resumable
RESUMABLE = ("starting", "waiting-for-sites", "running", "failed", "resuming")


#: the server state's copy of its round's results.json entry
ROUND_ENTRY_KEY = "round_entry"


def write_server_state(run_dir: Path, rnd: int, state_dict: dict[str, Any], state: dict[str, Any]) -> None:
    """Save, atomically, what a resumed run needs after round ``rnd``: the global model (``state_dict``) and
    the strategy's and update checks' ``state``. Tensors and plain values only: it loads with
    ``torch.load(weights_only=True)``."""
    import torch

    buffer = io.BytesIO()
    torch.save({"format": SERVER_STATE_FORMAT, "round": rnd, "state_dict": state_dict, **state}, buffer)
    atomic_write_bytes(run_dir / SERVER_STATE_FILE, buffer.getvalue())


@dataclass(frozen=True)
class ResumePoint:
    """Where a resumed run starts.

    Attributes:
        last_round: the last completed round; the run goes on with the next (0: before round 1).
        state_dict: the global model after ``last_round`` (None before round 1: the initial model is built
            again from the run's seed and ``--init-weights``).
        state: the saved server state (``strategy``, ``checks``), empty before round 1.
        source: the file it was read from.
    """

    last_round: int
    state_dict: dict[str, Any] | None
    state: dict[str, Any]
    source: Path


def resume_point(run_dir: Path) -> ResumePoint:
    """The run folder's resume point (round 0 when no round was completed)."""
    import torch

    path = run_dir / SERVER_STATE_FILE
    if not path.exists():
        return ResumePoint(0, None, {}, path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file
        raise RunFolderError(f"{path}: unreadable server state ({type(exc).__name__}); resuming needs the run "
                             "folder as the coordinator left it") from None
    if not isinstance(state, dict) or state.get("format") != SERVER_STATE_FORMAT \
            or not isinstance(state.get("round"), int) or not isinstance(state.get("state_dict"), dict):
        raise RunFolderError(f"{path}: not a FedShield server state; resuming needs the run folder as the "
                             "coordinator left it")
    return ResumePoint(state["round"], state["state_dict"],
                       {k: v for k, v in state.items() if k in ("strategy", "checks", ROUND_ENTRY_KEY)}, path)


def read_run(run_dir: Path) -> dict[str, Any]:
    """The run folder's results.json, checked to be a run that can be resumed (``RunFolderError`` otherwise)."""
    results = run_dir / RESULTS_FILE
    if not results.is_file():
        raise RunFolderError(f"--resume {run_dir}: no {RESULTS_FILE}; pass the --run-dir of an earlier "
                             "`fl-server start`")
    try:
        doc = json.loads(results.read_text())
    except (OSError, ValueError) as exc:
        raise RunFolderError(f"--resume {run_dir}: {RESULTS_FILE} is unreadable ({exc})") from None
    status = doc.get("status") if isinstance(doc, dict) else None
    if status == "finished":
        raise RunFolderError(f"--resume {run_dir}: the run already finished; start a new run with a new --run-dir")
    if status not in RESUMABLE or doc.get("mode") != "deployment" or not isinstance(doc.get("config"), dict):
        raise RunFolderError(f"--resume {run_dir}: not a resumable run of `fl-server start` (status {status!r})")
    if not doc["config"].get("fedshield-run-id"):
        raise RunFolderError(f"--resume {run_dir}: the run recorded no FedShield run id (a run that never reached "
                             "its sites, or one of an older FedShield); start a new run")
    return doc


def mark_resuming(run_dir: Path) -> None:
    """Set results.json's status to ``resuming`` (from ``running`` or ``failed``), so that the coordinator,
    which follows the file until the run finishes or fails, waits for the resumed run's own status."""
    doc = read_run(run_dir)
    doc["status"] = "resuming"
    atomic_write_json(run_dir / RESULTS_FILE, doc)


def resumed_config(doc: dict[str, Any], run_dir: Path, given: dict[str, tuple[str, Any]]) -> RunConfig:
    """The run's recorded settings, the run folder where it is now; a setting given again with another
    value is refused (``given``: RunConfig field -> (flag, value as the flag gave it))."""
    cfg = RunConfig.from_flower(doc["config"])
    for name, (flag, value) in given.items():
        recorded = getattr(cfg, name)
        same = (str(Path(value).resolve()) == recorded if isinstance(value, Path)
                else value == recorded)
        if not same:
            given_as = flag if isinstance(value, bool) else f"{flag} {_shown(value)}"
            raise ConfigError(f"{given_as}: the run being resumed has {name.replace('_', '-')} {_shown(recorded)}; "
                              f"a resumed run keeps its recorded settings ({run_dir / RESULTS_FILE}): drop {flag}")
    cfg.run_dir = str(run_dir)
    return cfg.validate()


def _shown(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value) if value != "" else "none"


def earlier_rounds(doc: dict[str, Any], last_round: int) -> list[dict[str, Any]]:
    """The rounds results.json recorded up to ``last_round`` (a later, unfinished round is dropped)."""
    return [r for r in doc.get("rounds", []) if isinstance(r, dict) and int(r.get("round", -1)) <= last_round]


def with_saved_round(doc: dict[str, Any], point: ResumePoint) -> dict[str, Any]:
    """``doc`` (results.json) with the resume point's own round put back if the file lacks it.

    The server state is written before results.json after each round, so a coordinator killed between
    the two left a state at round r and results up to r − 1: the resumed run went on after r and round r
    was missing from its results. The state carries the round's entry for this."""
    saved = point.state.get(ROUND_ENTRY_KEY)
    rounds = [r for r in doc.get("rounds", []) if isinstance(r, dict)]
    if not isinstance(saved, dict) or saved.get("round") != point.last_round \
            or any(r.get("round") == point.last_round for r in rounds):
        return doc
    return {**doc, "rounds": [*(r for r in rounds if int(r.get("round", -1)) < point.last_round), saved]}


Workflow = Callable[[Any, Any], None]


def after_round(workflow: Workflow, last_round: int) -> Workflow:
    """A Flower workflow step that runs only in rounds after ``last_round`` (those up to it are done)."""
    from fedshield.flower_ext.workflow_round import current_round

    def step(grid: Any, context: Any) -> None:
        if current_round(context) > last_round:
            workflow(grid, context)

    return step
