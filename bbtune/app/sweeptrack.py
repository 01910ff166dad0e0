"""A sweep in an experiment tracker: one parent run (the spec as params, the report as artifacts) with a child
per job, tagged with the job's grid coordinates (task, model, method, seed and the settings axes), so a tracker's
UI compares methods across the grid.

A child's top-level metrics are the job's record (``dev_acc``, ``test_acc``, ``calls``, ``wall_s``: the numbers
the sweep's report compares, the same for every method); a BBT job's child also holds its run folder: the config,
the curve as ``curve/*`` steps, and the search's own final metrics under ``run.`` (its decision among them).

`SweepTracking` reports a running sweep from its driver, on the tracking thread (a failing tracker warns once,
the sweep goes on); `report_sweep_job` and friends serve `bbtune track` after the fact.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from bbtune.runs.folder import CONFIG
from bbtune.runs.tracking import (Reporter, Track, Tracker, TrackedRun, make_tracker, numbers, params_of,
                                  report_folder)

JOB_OWN = ("name", "coords")  # job.json entries that are tags, not params


def open_sweep(tracker: Tracker, out: Path, name: str, spec: Mapping[str, Any]) -> TrackedRun:
    """The sweep's parent run, found again by the sweep folder's path (a resumed sweep adds to it)."""
    parent = tracker.open(str(out.resolve()), f"sweep {name}", {"bbtune.kind": "sweep", "sweep": name})
    parent.log_params(params_of(spec))
    return parent


def report_sweep_job(tracker: Tracker, folder: Path, job: Mapping[str, Any], record: Mapping[str, Any],
                     run_dir: Path | None, parent: TrackedRun) -> bool:
    """One finished job as a child of `parent`; False where the tracker holds it complete already."""
    tags = {"job": str(job["name"]), **{k: str(v) for k, v in job["coords"].items()}}
    own = {"job": {k: v for k, v in job.items() if k not in JOB_OWN}}
    summary = numbers({k: v for k, v in record.items() if k != "curve"})
    if run_dir is not None and (run_dir / CONFIG).is_file():
        return report_folder(tracker, run_dir, str(job["name"]), tags, parent, own, summary, key=str(folder.resolve()))
    run = tracker.open(str(folder.resolve()), str(job["name"]), tags, parent)
    if run.complete:
        return False
    run.log_params(params_of(own))
    run.log_summary(summary, int(record.get("train_calls") or 0))
    if record.get("prompt_text"):
        run.log_text("prompt.txt", str(record["prompt_text"]))
    if record.get("note"):
        run.set_tags({"note": str(record["note"])})
    run.finish("FINISHED")
    return True


def finish_sweep(parent: TrackedRun, files: Sequence[Path], status: str) -> None:
    """The sweep's report (report.md, results.json, the plot, sweep.json) on the parent run, then its status."""
    for path in files:
        if path.is_file():
            parent.log_file(path)
    parent.finish(status)


class SweepTracking:
    """A running sweep's reporting: the parent at the start, a child per job as it finishes (a job finished
    before is logged too, once), the report at the end. Calls only queue work: the driver never waits on it but
    at `close`."""

    def __init__(self, track: Track | str, uri: str, out: Path, name: str, spec: Mapping[str, Any]):
        self.tracker = make_tracker(track, uri, out.resolve().parent) if Track(track) is not Track.NONE else None
        self.reporter = Reporter(str(self.tracker), self.tracker.close_timeout_s) if self.tracker else None
        self.parent: TrackedRun | None = None
        self._submit(lambda tracker: setattr(self, "parent", open_sweep(tracker, out, name, spec)))

    def job(self, folder: Path, job: Mapping[str, Any], record: Mapping[str, Any], run_dir: Path | None) -> None:
        self._submit(lambda tracker: report_sweep_job(tracker, folder, job, record, run_dir, self.parent))  # type: ignore[arg-type]

    def close(self, files: Sequence[Path], status: str) -> None:
        if self.reporter is not None:
            self._submit(lambda tracker: finish_sweep(self.parent, files, status))  # type: ignore[arg-type]
            self.reporter.close()

    def _submit(self, call: Any) -> None:
        if self.reporter is not None:
            self.reporter.submit(lambda: call(self.tracker))
