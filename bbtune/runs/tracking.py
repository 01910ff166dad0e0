"""Reporting runs to an experiment tracker (MLflow, TensorBoard), where ML teams compare experiments; the run
folder stays the record.

    Track                 none | mlflow | tensorboard: `TuneConfig.track` (--track), a sweep's [sweep] track
    Tracker, TrackedRun   the seam: a store that opens runs by key, and one run in it (`bbtune.runs.trackers`)
    Reporter              a thread between a caller and a tracker: calls return at once, a failure warns once and
                          turns tracking off, closing waits at most the tracker's ``close_timeout_s``
    LiveTracking          the tuner's hook: the curve's new rows after each checkpoint, the result at the end
    report_folder         a finished (or unfinished) run folder after the fact: ``bbtune track``, a sweep's jobs

What a run reports: its resolved config as params (secrets never: `redact`), each curve row as ``curve/*``
metrics at step = model calls (with the backend's requests, cost and missing rate while it runs), the final
metrics and the selection decision, tags (task, model, seed, method, selected, ending), the prompt text and the
folder's small files. A resumed run sends only the steps after the last one the tracker holds.

    >>> # run_tuner(task, backend, TuneConfig(track="mlflow"), run_dir="runs/x")   # runs/mlruns/mlflow.db
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import queue
import re
import threading
import warnings
from enum import Enum
from pathlib import Path
from typing import Any, Callable, Mapping, Protocol, Sequence

from bbtune.errors import CheckpointError, ConfigError
from bbtune.runs.folder import BEST_PROMPT, CALIBRATION, CONFIG, CURVE, HARD_PROMPT, METRICS, RunFolder
from bbtune.runs.endings import Ending
from bbtune.runs.metrics import SCHEMA_KEY, RunMetrics

TRACK_FIELDS = ("track", "track_uri")  # TuneConfig fields that change where a run is reported, never what it computes
STEP_PREFIX = "curve/"
STEP_STATS = ("requests", "cost", "missing_rate", "retries")  # backend counters logged with each step, where kept
SMALL_FILES = (CONFIG, METRICS, CURVE, HARD_PROMPT, CALIBRATION, BEST_PROMPT)  # never the checkpoint, ledger, replies
MAX_FILE_BYTES = 1 << 20
MAX_PARAM_CHARS = 500  # MLflow keeps 6000; a long list (a block list, a verbalizer) is cut for the table
REDACTED = "[redacted]"
SECRET_NAME = re.compile(r"(api_?key|secret|passw|authoriz|cookie|bearer|credential|(^|_)token$|(^|_)auth$|^key$)", re.I)
INSTALL = {"mlflow": "pip install 'bbtune[mlflow]'", "tensorboard": "pip install 'bbtune[tensorboard]'"}


class Track(str, Enum):
    NONE = "none"
    MLFLOW = "mlflow"
    TENSORBOARD = "tensorboard"


class TrackedRun(Protocol):
    """One run in a tracker. `complete`: it was finished before (nothing more is sent)."""

    complete: bool

    def last_step(self) -> int: ...
    def log_params(self, params: Mapping[str, str]) -> None: ...
    def log_metrics(self, steps: Sequence[tuple[int, Mapping[str, float]]]) -> None: ...
    def log_summary(self, metrics: Mapping[str, float], step: int) -> None: ...
    def set_tags(self, tags: Mapping[str, str]) -> None: ...
    def log_text(self, name: str, text: str) -> None: ...
    def log_file(self, path: Path) -> None: ...
    def finish(self, status: str) -> None: ...  # FINISHED (complete), FAILED or KILLED


class Tracker(Protocol):
    """A store of runs. `open` finds the run with this key (None: always a new one) or starts it; `fresh`: a new
    run in the same folder, the tracked run found is set aside."""

    close_timeout_s: float

    @property
    def ui(self) -> str: ...  # the command that shows the runs (mlflow ui ..., tensorboard --logdir ...)

    def open(self, key: str | None, name: str, tags: Mapping[str, str], parent: Any = None,
             fresh: bool = False) -> TrackedRun: ...


def require(track: Track | str) -> Track:
    """The tracker's package must be installed: a one-line error with the install command, before any work."""
    track = Track(track)
    package = {Track.MLFLOW: "mlflow", Track.TENSORBOARD: "tensorboard"}.get(track)
    if package and importlib.util.find_spec(package) is None:
        raise ConfigError(f"track={track.value} needs the {package} package: {INSTALL[package]} (or pip install "
                          f"{package}), or run without tracking")
    return track


def make_tracker(track: Track | str, uri: str, beside: Path) -> Tracker | None:
    """The tracker for `track` at `uri`; by default its store lies in `beside` (the folder holding the runs):
    MLflow in ``mlruns/mlflow.db`` (a local SQLite store, MLflow's own default kind since 3.7; or
    $MLFLOW_TRACKING_URI), TensorBoard in ``tensorboard/``."""
    from bbtune.runs.trackers import MlflowTracker, TensorBoardTracker

    track = require(track)
    if track is Track.MLFLOW:
        default = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(beside / 'mlruns' / 'mlflow.db').resolve()}"
        if not uri:
            (beside / "mlruns").mkdir(parents=True, exist_ok=True)
        return MlflowTracker(uri or default, os.environ.get("MLFLOW_EXPERIMENT_NAME") or "bbtune")
    if track is Track.TENSORBOARD:
        return TensorBoardTracker(uri or beside / "tensorboard")
    return None


def untracked(tune: Mapping[str, Any]) -> dict[str, Any]:
    """A TuneConfig as a dict without its tracking fields: what a run's config and fingerprint hold."""
    return {k: v for k, v in tune.items() if k not in TRACK_FIELDS}


# ---------------------------------------------------------------------- what is reported


def redact(obj: Any, key: str = "") -> Any:
    """`obj` without secrets: values under key-, token-, password-like names, header values, URL credentials.
    Names of environment variables (``api_key_env``) are kept: they hold no secret."""
    if isinstance(obj, Mapping):
        return {k: redact(v, str(k)) for k, v in obj.items()}
    if key.endswith("headers") and isinstance(obj, (list, tuple)):
        return [str(h).split(":", 1)[0] for h in obj]
    if isinstance(obj, (list, tuple)):
        return [redact(v, key) for v in obj]
    if SECRET_NAME.search(key) and not key.endswith("_env") and obj not in (None, ""):
        return REDACTED
    if isinstance(obj, str):
        return re.sub(r"(?<=://)[^/@\s]*@", "", obj)  # user:password@ in a URL
    return obj


def flatten(obj: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts as dotted names: ``{"tune": {"popsize": 10}}`` -> ``{"tune.popsize": 10}``."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = f"{prefix}{k}"
        out.update(flatten(v, name + ".") if isinstance(v, Mapping) and v else {name: v})
    return out


def params_of(config: Mapping[str, Any]) -> dict[str, str]:
    """A run's config as tracker params: flattened, redacted, each value a short string."""
    out = {}
    for k, v in flatten(redact(config)).items():
        text = v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
        out[k] = text[:MAX_PARAM_CHARS]
    return out


def numbers(values: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of `values` (flattened; booleans as 0/1; numbers read from CSV text too)."""
    out = {}
    for k, v in flatten(values).items():
        if isinstance(v, str):
            try:
                v = float(v)
            except ValueError:
                continue
        if isinstance(v, (int, float)) and v == v and abs(v) != float("inf"):
            out[metric_name(prefix + k)] = float(v)
    return out


def metric_name(name: str) -> str:
    """A name every tracker takes: MLflow refuses most punctuation and names a path would change (``//``), as
    in a key that is a URL (``backend_stats.endpoints.http://host/v1``)."""
    return re.sub(r"/{2,}", "/", re.sub(r"[^A-Za-z0-9_\-. /]", "_", name))


def step_of(row: Mapping[str, Any], stats: Mapping[str, Any] | None = None) -> tuple[int, dict[str, float]]:
    """A curve row as (step = model calls, ``curve/*`` metrics), with the backend's counters where given."""
    kept = {k: stats[k] for k in STEP_STATS if stats and k in stats}
    return int(float(row["calls"])), numbers({**row, **kept}, STEP_PREFIX)


def run_tags(config: Mapping[str, Any]) -> dict[str, str]:
    """task, model, seed and method of a run, from its config (a sweep job's coordinates take their place)."""
    tune, task = config.get("tune", {}), config.get("task", {})
    method = "random_search" if tune.get("optimizer") == "random" else f"bbt_{tune.get('mode', 'soft')}"
    return {"task": str(task.get("name", "")), "model": str(redact(config.get("backend", ""))),
            "seed": str(tune.get("seed", "")), "method": method}


def result_tags(metrics: RunMetrics) -> dict[str, str]:
    named = {"selected": metrics.selected, "ending": metrics.ending.value, "select_rule": metrics.select_rule,
             "stopped_by": metrics.stopped_by}
    tags = {k: str(v) for k, v in named.items() if v}
    reason = metrics.decision.reason if metrics.decision is not None else None
    return {**tags, **({"decision": str(reason)[:5000]} if reason else {})}


def final_step(curve: Sequence[Mapping[str, Any]]) -> int:
    return int(float(curve[-1]["calls"])) if curve else 0


def report_result(run: TrackedRun, metrics: RunMetrics, step: int, folder: Path | None, prefix: str = "",
                  extra: Mapping[str, float] | None = None) -> None:
    """The end of a run: final metrics (the decision's numbers among them; `prefix` before their names, `extra`
    beside them), tags, prompt text, small files."""
    saved = {k: v for k, v in metrics.to_json().items() if k != SCHEMA_KEY}  # the file's version is no metric
    run.log_summary({**numbers(redact(saved), prefix), **(extra or {})}, step)
    run.set_tags(result_tags(metrics))
    if metrics.hard_prompt is not None:
        run.log_text("prompt.txt", metrics.hard_prompt)
    for name in SMALL_FILES if folder is not None else ():
        path = folder / name  # type: ignore[operator]
        if not path.is_file() or path.stat().st_size > MAX_FILE_BYTES:
            continue
        if path.suffix == ".json":  # JSON is sent redacted, never as the file on disk
            run.log_text(name, json.dumps(redact(json.loads(path.read_text(encoding="utf-8"))), indent=2))
        else:
            run.log_file(path)


def report_folder(tracker: Tracker, path: Path, name: str | None = None, tags: Mapping[str, str] | None = None,
                  parent: Any = None, extra_params: Mapping[str, Any] | None = None,
                  summary: Mapping[str, float] | None = None, key: str | None = None) -> bool:
    """Log the run folder at `path` after the fact: config, curve, result. A run the tracker holds complete is
    left alone (False); an unfinished folder is logged as far as its curve goes. With a `summary` (a sweep job's
    record) the run's own final metrics go under ``run.``, the summary's at the top."""
    folder = RunFolder(path)
    if not (path / CONFIG).is_file():
        raise CheckpointError(f"{path} holds no {CONFIG}: not a bbtune run folder; give a folder `bbtune tune` wrote")
    config = folder.read_json(CONFIG)
    run = tracker.open(key or str(path.resolve()), name or path.name, {**run_tags(config), **(tags or {})}, parent)
    if run.complete:
        return False
    run.log_params(params_of({**(extra_params or {}), **config}))
    curve = _read_curve(path / CURVE)
    last = run.last_step()
    run.log_metrics([step for step in map(step_of, curve) if step[0] > last])
    finished = (path / METRICS).is_file()
    if finished:
        report_result(run, RunMetrics.from_json(folder.read_json(METRICS)), final_step(curve), path, "run." if summary else "", summary)
    run.finish("FINISHED" if finished and folder.finished_ending() is not None else "KILLED")
    return True


def _read_curve(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(encoding="utf-8") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------------- off the search loop


class Reporter:
    """Runs tracker calls in order on a thread of its own, so the search loop only queues them. The first
    failure warns once (the run goes on; its folder stays the record) and drops every later call."""

    def __init__(self, what: str, close_timeout_s: float):
        self.what, self.close_timeout_s = what, close_timeout_s
        self.failed = False
        self._queue: queue.Queue[Callable[[], None] | None] = queue.Queue()
        self._thread = threading.Thread(target=self._work, name="bbtune-tracking", daemon=True)
        self._thread.start()

    def submit(self, call: Callable[[], None]) -> None:
        if not self.failed:
            self._queue.put(call)

    def close(self, timeout_s: float | None = None) -> bool:
        """Wait (at most the timeout) for the queued calls; True when they all ran."""
        timeout_s = self.close_timeout_s if timeout_s is None else timeout_s
        self._queue.put(None)
        self._thread.join(timeout_s)
        if self._thread.is_alive():
            self._warn(f"it is still busy after {timeout_s:g} s; the rest is not logged")
            return False
        return not self.failed

    def _work(self) -> None:
        while (call := self._queue.get()) is not None:
            if self.failed:
                continue
            try:
                call()
            except Exception as err:  # any library error: tracking is never worth failing a run for
                self._warn(f"it failed ({type(err).__name__}: {str(err).splitlines()[0][:300] if str(err) else ''})")

    def _warn(self, why: str) -> None:
        if not self.failed:
            self.failed = True
            warnings.warn(f"bbtune: tracking to {self.what}: {why}; the run goes on and its folder stays the record "
                          "(log it later with `bbtune track RUN_DIR`)", TrackingWarning, stacklevel=2)


class TrackingWarning(UserWarning):
    """A tracker failed or fell behind; the run went on without it."""


class LiveTracking:
    """The tuner's side: `begin` with the config, `curve` after each checkpoint (only the rows not yet sent, with
    the backend's counters on the newest), `result` at the end. A context manager: leaving it finishes the
    tracked run (FAILED or KILLED on an exception, without waiting long)."""

    def __init__(self, tracker: Tracker | None, key: str | None, name: str):
        self.tracker, self.key, self.name = tracker, key, name
        self.reporter = Reporter(str(tracker), tracker.close_timeout_s) if tracker is not None else None
        self._run: TrackedRun | None = None
        self._sent, self._last, self._status = 0, -1, "KILLED"

    def __enter__(self) -> "LiveTracking":
        return self

    def __exit__(self, kind: Any, err: Any, tb: Any) -> None:
        if self.reporter is None:
            return
        status = self._status if kind is None else "KILLED" if issubclass(kind, KeyboardInterrupt) else "FAILED"
        self.reporter.submit(lambda: self._run.finish(status) if self._run is not None else None)
        self.reporter.close(None if kind is None else 5.0)

    def begin(self, config: Mapping[str, Any], fresh: bool) -> None:
        """`fresh`: a new run (not a resumed one), even in a folder a tracked run came from before."""
        if self.reporter is not None:
            self.reporter.submit(lambda: self._open(config, fresh))

    def curve(self, rows: Sequence[Mapping[str, Any]], stats: Mapping[str, Any]) -> None:
        if self.reporter is None or len(rows) <= self._sent:
            return
        new = [step_of(row, stats if i == len(rows) - 1 else None) for i, row in enumerate(rows) if i >= self._sent]
        self._sent = len(rows)
        self.reporter.submit(lambda: self._log_steps(new))

    def result(self, metrics: RunMetrics, curve: Sequence[Mapping[str, Any]], folder: Path | None) -> None:
        if self.reporter is None:
            return
        step = final_step(curve)
        self.reporter.submit(lambda: self._report(metrics, step, folder))
        self._status = "KILLED" if metrics.ending is Ending.LIMIT else "FINISHED"  # a raised limit resumes it

    def _open(self, config: Mapping[str, Any], fresh: bool) -> None:
        assert self.tracker is not None
        run = self.tracker.open(self.key, self.name, run_tags(config), fresh=fresh)
        if not run.complete:
            run.log_params(params_of(config))
            self._last = run.last_step()
            self._run = run

    def _log_steps(self, steps: list[tuple[int, dict[str, float]]]) -> None:
        steps = [s for s in steps if s[0] > self._last]
        if self._run is not None and steps:
            self._run.log_metrics(steps)
            self._last = steps[-1][0]

    def _report(self, metrics: RunMetrics, step: int, folder: Path | None) -> None:
        if self._run is not None:
            report_result(self._run, metrics, step, folder)


def live_tracking(track: Track | str, uri: str, run_dir: Path | None, name: str,
                  tracker: Tracker | None = None) -> LiveTracking:
    """The tuner's tracking: `tracker` where given, else the one `track` names, beside the run folder."""
    if tracker is None and Track(track) is not Track.NONE:
        tracker = make_tracker(track, uri, run_dir.parent if run_dir is not None else Path.cwd())
    return LiveTracking(tracker, str(run_dir.resolve()) if run_dir is not None else None,
                        run_dir.name if run_dir is not None else name)
