"""`bbtune track RUN_OR_SWEEP_DIR`: report folders that `bbtune tune` or `bbtune sweep` wrote to MLflow or
TensorBoard after the fact. A run folder becomes one run; a sweep folder a parent run with a child per finished
job (`bbtune.app.sweeptrack`). What the tracker holds complete already is left alone, so running it again after
more jobs finished adds only those.

    bbtune track sweeps/sst2                    # sweeps/mlruns/mlflow.db
    mlflow ui --backend-store-uri sqlite:///sweeps/mlruns/mlflow.db
    bbtune track runs/x --track tensorboard     # runs/tensorboard/x; tensorboard --logdir runs/tensorboard
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from bbtune.app.report import PLOT_PNG, REPORT_MD, RESULTS_JSON
from bbtune.app.sweep import JOB_JSON, JOBS, RESULT_JSON, RUN, SPEC_JSON, SWEEP_JSON
from bbtune.app.sweeptrack import finish_sweep, open_sweep, report_sweep_job
from bbtune.errors import ConfigError
from bbtune.runs.folder import CONFIG, RunFolder
from bbtune.runs.tracking import Track, Tracker, make_tracker, report_folder


@dataclass
class Tracked:
    """What `track` did: the store, and the runs it logged or found complete already (by folder)."""

    store: str
    ui: str  # the command that shows it
    logged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)


def track(path: str | Path, kind: Track | str = Track.MLFLOW, uri: str = "") -> Tracked:
    """Report the run or sweep folder at `path` to the tracker `kind` at `uri` (default: beside the folder)."""
    path = Path(path)
    if Track(kind) is Track.NONE:
        raise ConfigError("track=none reports nowhere; give --track mlflow or --track tensorboard")
    sweep, run = (path / SPEC_JSON).is_file(), (path / CONFIG).is_file()
    if not (sweep or run):
        raise ConfigError(f"{path} is neither a run folder ({CONFIG}) nor a sweep folder ({SPEC_JSON}); give a "
                          "folder that `bbtune tune` or `bbtune sweep` wrote")
    tracker = make_tracker(kind, uri, path.resolve().parent)
    assert tracker is not None
    done = Tracked(str(tracker), tracker.ui)
    if sweep:
        _track_sweep(tracker, path, done)
    else:
        (done.logged if report_folder(tracker, path) else done.skipped).append(str(path))
    return done


def _track_sweep(tracker: Tracker, out: Path, done: Tracked) -> None:
    folder = RunFolder(out)
    status = folder.read_json(SWEEP_JSON) if (out / SWEEP_JSON).is_file() else {"jobs": {}}
    spec = folder.read_json(SPEC_JSON)
    parent = open_sweep(tracker, out, str((spec.get("sweep") or {}).get("name") or out.name), spec)
    jobs = sorted(p for p in (out / JOBS).iterdir() if (p / RESULT_JSON).is_file()) if (out / JOBS).is_dir() else []
    for job_dir in jobs:
        job = RunFolder(job_dir)
        record = job.read_json(RESULT_JSON)["result"]
        logged = report_sweep_job(tracker, job_dir, job.read_json(JOB_JSON), record, job_dir / RUN, parent)
        (done.logged if logged else done.skipped).append(str(job_dir))
    states = [j.get("status") for j in status["jobs"].values()]
    finish_sweep(parent, [out / name for name in (REPORT_MD, RESULTS_JSON, PLOT_PNG, SWEEP_JSON)],
                 "FAILED" if "failed" in states else "FINISHED" if len(jobs) == len(states) else "KILLED")
