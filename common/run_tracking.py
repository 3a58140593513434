"""Follow a run's results.json into the ``--track`` back ends: each round as it lands, then the rest at the end.

``fl-server start`` and ``fl-sim run`` already watch results.json for their progress lines
(:class:`fedshield.common.results_view.ResultsWatcher`); :meth:`RunTracking.on_round` rides on the same
calls, so a tracked run shows its rounds live. :meth:`RunTracking.close` reads the final results.json,
logs any round not logged yet (a round that never finished its evaluation), the configuration if no
round came, and the artifacts, and ends each tracked run with the run's status. A sweep logs each
finished cell this way in one go (:func:`track_finished_run`). Tracking never stops a run: a back end
that fails mid-run is reported once through ``on_warning`` and dropped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from fedshield.common.atomic_io import read_json
from fedshield.common.run_files import RESULTS_FILE
from fedshield.common.track_spec import TrackSpec
from fedshield.common.tracked_metrics import round_metrics, round_walltime, run_artifacts, run_params
from fedshield.common.tracker import Tracker

DEFAULT_EXPERIMENT = "fedshield"
T = TypeVar("T")
RoundCallback = Callable[[dict[str, Any], dict[str, Any]], None]


def open_tracker(spec: TrackSpec, name: str, group: str | None, tags: dict[str, str]) -> Tracker:
    """The back end ``spec`` names, with a new run ``name`` (TensorBoard: ``DIR/[group/]name``; MLflow: run
    ``name`` in experiment ``group``, default ``fedshield``)."""
    if spec.kind == "tensorboard":
        from fedshield.common.tensorboard_tracker import TensorBoardTracker

        folder = Path(spec.target) / group / name if group else Path(spec.target) / name
        return TensorBoardTracker(folder)
    from fedshield.common.mlflow_tracker import MlflowTracker

    return MlflowTracker(spec, group or DEFAULT_EXPERIMENT, name, tags)


class RunTracking:
    """The tracked runs of the FedShield run writing ``folder``; with no back ends every call does nothing.

    Use it as a context manager (or :meth:`follow`): leaving closes it, with results.json's status, ``failed``
    after an error and ``interrupted`` after Ctrl-C.
    """

    def __init__(self, trackers: list[tuple[str, Tracker]], folder: Path, on_warning: Callable[[str], None]) -> None:
        self._trackers = dict(trackers)
        self.folder = Path(folder)
        self._on_warning = on_warning
        self._logged: set[int] = set()
        self._params_logged = False

    def on_round(self, doc: dict[str, Any], entry: dict[str, Any]) -> None:
        """Log one round of ``doc`` (a results.json document), and the configuration before the first."""
        self._log_params(doc)
        rnd = int(entry["round"])
        if rnd not in self._logged:
            self._logged.add(rnd)
            metrics, walltime = round_metrics(entry), round_walltime(entry)
            self._each(lambda t: t.log_round(rnd, metrics, walltime))

    def after(self, show: RoundCallback) -> RoundCallback:
        """A round callback that calls ``show`` (the progress line) and then logs the round."""

        def callback(doc: dict[str, Any], entry: dict[str, Any]) -> None:
            show(doc, entry)
            self.on_round(doc, entry)

        return callback

    def close(self, status: str | None = None) -> None:
        """Log what results.json holds that is not logged yet, and the artifacts; end each tracked run with
        ``status`` (default: results.json's, ``interrupted`` without one). Closing twice does nothing."""
        if not self._trackers:
            return
        try:
            doc: dict[str, Any] = read_json(self.folder / RESULTS_FILE)
        except (OSError, ValueError):
            doc = {}
        for entry in doc.get("rounds", []):
            self.on_round(doc, entry)
        if doc:
            self._log_params(doc)
        files = run_artifacts(self.folder)
        self._each(lambda t: t.log_artifacts(files))
        final = status or str(doc.get("status") or "interrupted")
        self._each(lambda t: t.close(final))
        self._trackers.clear()

    def follow(self, run: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        """``run(*args, **kwargs)``, then close (also when it fails)."""
        with self:
            return run(*args, **kwargs)

    def __enter__(self) -> RunTracking:
        return self

    def __exit__(self, kind: type[BaseException] | None, _exc: BaseException | None, _tb: Any) -> None:
        if kind is None:
            self.close()
        else:
            self.close("interrupted" if issubclass(kind, KeyboardInterrupt) else "failed")

    def _log_params(self, doc: dict[str, Any]) -> None:
        if not self._params_logged:
            params = run_params(doc)
            self._each(lambda t: t.log_params(params))
            self._params_logged = True

    def _each(self, call: Callable[[Tracker], None]) -> None:
        for label, tracker in list(self._trackers.items()):
            try:
                call(tracker)
            except Exception as exc:  # a tracking back end must not stop the run: report it and drop it
                self._on_warning(f"--track {label}: logging failed ({type(exc).__name__}: {exc}); the run goes on "
                                 "without it")
                del self._trackers[label]


def open_run_tracking(specs: list[TrackSpec], folder: Path, *, name: str | None = None, group: str | None = None,
                      tags: dict[str, str] | None = None,
                      on_warning: Callable[[str], None] = lambda _line: None) -> RunTracking:
    """A new tracked run in every back end of ``specs`` for the run writing ``folder``, named ``name`` (default:
    the folder's name); ``ConfigError`` when a back end cannot open."""
    folder = Path(folder).resolve()
    tags = {"fedshield.run_dir": str(folder), **(tags or {})}
    trackers = [(str(s), open_tracker(s, name or folder.name, group, tags)) for s in specs]
    return RunTracking(trackers, folder, on_warning)


def track_finished_run(specs: list[TrackSpec], folder: Path, *, name: str, group: str,
                       tags: dict[str, str] | None = None, on_warning: Callable[[str], None]) -> None:
    """Log a run that has ended (a sweep's cell) from its folder: every round, the configuration, artifacts."""
    if specs:
        open_run_tracking(specs, folder, name=name, group=group, tags=tags, on_warning=on_warning).close()
