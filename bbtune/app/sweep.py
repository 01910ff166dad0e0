"""`bbtune sweep SPEC`: every job of a grid (tasks x models x settings x methods x seeds, see `sweepspec`) run
on a local process pool or on Ray, each into its own folder, then one compare report over the whole grid.

A job is a folder; a sweep is a list of jobs. The driver starts jobs, waits, and reads their folders; it never
reaches inside a run. The same job gives the same folder wherever it ran (its settings, seed and limit share
are fixed by the spec, not by the machine or the order the jobs ran in).

    OUT/
      sweep.json            every job's status (finished, failed, pending), attempts and last error
      spec.json             the spec as read
      report.md  results.json  accuracy_vs_calls.png     one row per job (the compare report's writers)
      over_seeds/           the same report with the seeds of each grid point pooled (mean ± std)
      jobs/<task>-<model>-<method>-s<seed>[-<axis><value>...]/
        job.json            the job (written first; a changed spec never reuses the folder silently)
        started.json        pid and host of the process that last started it
        errors.json         the error of every failed attempt
        run/                a BBT method's run folder (`bbtune predict/export`, `load_run` read it)
        result.json         the job's record (written last: a folder with result.json is finished)

A finished job is never run again. A failed one (an error, or its worker killed) is run again up to `retries`
times, then reported with its error while the others go on; a BBT job run again continues its run folder from
the last checkpoint. ``--resume`` continues a sweep: finished jobs are skipped, the rest (failed ones included)
are run.

    >>> # result = sweep("benchmarks/specs/sst2_bbt.toml", out="sweeps/sst2", workers=2)
    >>> # result.comparison.summary()[0]["test_acc_mean"], result.failed
"""
from __future__ import annotations

import os
import socket
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

from bbtune.app.compare import run_method
from bbtune.app.comparison import Comparison
from bbtune.app.executors import PoolRunner, RayRunner, WorkerDied, pool_size
from bbtune.app.report import PLOT_PNG, REPORT_MD, RESULTS_JSON, result_from_dict, write_report
from bbtune.app.sweepspec import Job, SweepSpec
from bbtune.app.sweeptrack import SweepTracking
from bbtune.baselines import MethodResult
from bbtune.core.progress import progress_bar
from bbtune.core.table import markdown_table
from bbtune.errors import ConfigError, RunFolderError
from bbtune.core.secrets import redact_json
from bbtune.runs.folder import RunFolder, changed_fields, write_text

SWEEP_JSON, SPEC_JSON, JOBS = "sweep.json", "spec.json", "jobs"
JOB_JSON, STARTED_JSON, ERRORS_JSON, RESULT_JSON, RUN = "job.json", "started.json", "errors.json", "result.json", "run"
OVER_SEEDS = "over_seeds"


# ---------------------------------------------------------------------- one job (runs in a worker)


def run_job(job: Mapping[str, Any], folder: str) -> dict[str, Any]:
    """Run one job into `folder` (in a pool worker or a Ray task) and return its record; an error is returned,
    not raised, so every executor hands it back the same way."""
    path = RunFolder(folder)
    path.write_json(STARTED_JSON, {"pid": os.getpid(), "host": socket.gethostname(), "time": time.time()})
    try:
        spec = Job.from_dict(job)
        kind, local, remote = spec.backend_configs()
        backend = remote.build() if remote is not None else local.build()  # type: ignore[union-attr]
        result = run_method(spec.task_config().load(), backend, spec.method, spec.seed, spec.method_settings(),
                            path.path / RUN)
        record = {"job": spec.name, "result": result.as_dict(), "pid": os.getpid(), "host": socket.gethostname()}
        path.write_json(RESULT_JSON, record)  # last: the job is finished
        return {"ok": True, **record}
    except Exception as err:  # the job failed; the sweep goes on and reports it
        return {"ok": False, "error": f"{type(err).__name__}: {err}", "traceback": traceback.format_exc()}


def read_job(folder: str | Path) -> MethodResult | None:
    """A finished job's record (None: not finished)."""
    path = RunFolder(folder)
    if not (path.path / RESULT_JSON).is_file():
        return None
    return result_from_dict(path.read_json(RESULT_JSON)["result"])


# ---------------------------------------------------------------------- the sweep


@dataclass
class SweepResult:
    """What a sweep did: the report over every finished job, and which jobs ran, were skipped or failed."""

    out_dir: Path
    jobs: tuple[Job, ...]
    comparison: Comparison
    ran: list[str] = field(default_factory=list)  # finished by this call
    skipped: list[str] = field(default_factory=list)  # finished before it (never rerun)
    failed: dict[str, str] = field(default_factory=dict)  # name -> last error, after every retry
    attempts: dict[str, int] = field(default_factory=dict)  # name -> attempts made by this call
    plan: str = ""  # a dry run's table: every job and the most it would spend (nothing ran, nothing was written)

    @property
    def finished(self) -> list[str]:
        return [job.name for job in self.jobs if job.name in self.ran or job.name in self.skipped]


def run_sweep(spec: SweepSpec, *, resume: bool = False, progress: bool = True,
              runner: PoolRunner | RayRunner | None = None) -> SweepResult:
    """Run every unfinished job of `spec`; write the report. See the module docstring."""
    cfg = spec.config
    out = Path(cfg.out or f"sweeps/{spec.name}")
    folder = _claim(out, resume)
    folder.write_json(SPEC_JSON, spec.source)
    shares = spec.limit_shares()
    jobs = tuple(job.with_limits(shares) for job in spec.jobs)
    result = SweepResult(out, jobs, _empty_comparison(spec.name, jobs))
    pending = []
    for job in jobs:
        if _prepare(out, job):
            result.skipped.append(job.name)  # finished before: never run again
        else:
            pending.append(job)
    tracking = SweepTracking(cfg.track, cfg.track_uri, out, spec.name, spec.source)  # [sweep] track: parent + a child per job
    for job in jobs:
        if job.name in result.skipped:
            track_job(tracking, out, job)
    bar = progress_bar(len(jobs), "job", initial=len(result.skipped), desc="bbtune sweep", enabled=progress)
    if pending:
        runner = runner or make_runner(spec, len(pending))
        with runner:
            _drive(runner, pending, out, cfg.retries, result, bar, progress, lambda job: track_job(tracking, out, job))
    bar.close()
    result.comparison = write_sweep_report(out, spec, jobs, result.failed)
    _write_status(folder, jobs, result)
    status = "FAILED" if result.failed else "FINISHED" if len(result.finished) == len(jobs) else "KILLED"
    tracking.close([out / name for name in (REPORT_MD, RESULTS_JSON, PLOT_PNG, SWEEP_JSON)], status)
    return result


def track_job(tracking: SweepTracking, out: Path, job: Job) -> None:
    """A finished job, to the sweep's tracker (queued: the driver goes on at once)."""
    if tracking.reporter is not None:
        folder = job_folder(out, job.name)
        tracking.job(folder, job.as_dict(), RunFolder(folder).read_json(RESULT_JSON)["result"], folder / RUN)


def make_runner(spec: SweepSpec, n_jobs: int) -> PoolRunner | RayRunner:
    cfg = spec.config
    if cfg.ray_address:
        return RayRunner(cfg.ray_address, cfg.ray_num_cpus, cfg.ray_num_gpus, cfg.memory_per_job_mb, cfg.threads_per_job)
    return PoolRunner(*pool_size(n_jobs, cfg.memory_per_job_mb, cfg.workers, cfg.threads_per_job))


def _drive(runner: PoolRunner | RayRunner, pending: list[Job], out: Path, retries: int, result: SweepResult,
           bar: Any, progress: bool, finished: Callable[[Job], None] = lambda job: None) -> None:
    submitted: dict[str, float] = {}

    def say(line: str) -> None:
        if progress:
            bar.write(line)

    def submit(job: Job) -> None:
        submitted[job.name] = time.time()
        runner.submit(run_job, job.as_dict(), str(job_folder(out, job.name)), tag=job)

    for job in pending:
        submit(job)
    while runner.busy:
        for job, answer in runner.wait():
            if isinstance(answer, dict) and answer.get("ok"):
                result.ran.append(job.name)
                finished(job)
                bar.update(1)
                say(f"{job.name}: finished")
                write_sweep_report(out, None, result.jobs, result.failed, plot=False)
                continue
            error = str(answer) if isinstance(answer, WorkerDied) else answer["error"]
            if isinstance(answer, WorkerDied) and not _started_since(out, job, submitted[job.name]):
                submit(job)  # it never started: the pool broke under another job; not an attempt of its own
                continue
            tries = result.attempts[job.name] = result.attempts.get(job.name, 0) + 1
            _book_error(out, job, error, answer)
            if tries <= retries:
                say(f"{job.name}: attempt {tries} failed ({error.splitlines()[0][:200]}); running it again")
                submit(job)
            else:
                result.failed[job.name] = error
                bar.update(1)
                say(f"{job.name}: failed after {tries} attempt(s): {error.splitlines()[0][:200]}")


def job_folder(out: Path, name: str) -> Path:
    return out / JOBS / name


def _claim(out: Path, resume: bool) -> RunFolder:
    folder = RunFolder(out)
    folder.check_is_folder("--out")
    if (out / SWEEP_JSON).exists() or (out / SPEC_JSON).exists():
        if not resume:
            raise RunFolderError(f"{out} already holds a sweep; continue it with --resume (finished jobs are kept), "
                                 "or use another --out")
    elif resume:
        raise RunFolderError(f"{out} holds no sweep to resume; start it without --resume")
    out.mkdir(parents=True, exist_ok=True)
    return folder


def _prepare(out: Path, job: Job) -> bool:
    """Write the job's job.json (or check the one there is the same job); True when it is finished already."""
    folder = RunFolder(job_folder(out, job.name))
    if (folder.path / JOB_JSON).exists():
        saved = folder.read_json(JOB_JSON)
        changes = changed_fields(saved, redact_json(job.as_dict()))  # job.json is written redacted
        if changes:
            raise ConfigError(f"job {job.name} in {out} was run with another config ({'; '.join(changes[:3])}); the "
                              f"spec changed: use another --out, or delete {folder.path} to run it again")
    else:
        folder.write_json(JOB_JSON, job.as_dict())
    return (folder.path / RESULT_JSON).is_file()


def _started_since(out: Path, job: Job, since: float) -> bool:
    started = job_folder(out, job.name) / STARTED_JSON
    return started.exists() and started.stat().st_mtime >= since - 1


def _book_error(out: Path, job: Job, error: str, answer: Any) -> None:
    folder = RunFolder(job_folder(out, job.name))
    errors = folder.read_json(ERRORS_JSON) if (folder.path / ERRORS_JSON).exists() else []
    detail = answer.get("traceback", "") if isinstance(answer, dict) else ""
    folder.write_json(ERRORS_JSON, [*errors, {"time": time.time(), "error": error, "traceback": detail}])


def _write_status(folder: RunFolder, jobs: tuple[Job, ...], result: SweepResult) -> None:
    status = {}
    for job in jobs:
        state = ("finished" if job.name in result.finished else "failed" if job.name in result.failed else "pending")
        status[job.name] = {"status": state, "attempts": result.attempts.get(job.name, 0),
                            "error": result.failed.get(job.name), "coords": job.coords}
    folder.write_json(SWEEP_JSON, {"jobs": status, "ran": result.ran, "skipped": result.skipped})


# ---------------------------------------------------------------------- the report


def write_sweep_report(out: Path, spec: SweepSpec | None, jobs: tuple[Job, ...], failed: Mapping[str, str],
                       plot: bool = True) -> Comparison:
    """The compare report over the grid, from the job folders: one row per job in OUT, and in OUT/over_seeds one
    row per grid point with its seeds pooled (mean ± sample std)."""
    found = [(job, read_job(job_folder(out, job.name))) for job in jobs]
    done = [(job, r) for job, r in found if r is not None]
    name = spec.name if spec else out.name
    models = ", ".join(dict.fromkeys(str(job.coords["model"]) for job in jobs))
    seeds = tuple(dict.fromkeys(job.seed for job in jobs))
    record = {"sweep": name, "jobs": {job.name: job.coords for job in jobs}, "failed": dict(failed)}
    rows = Comparison(f"sweep {name}", models, tuple(job.name for job in jobs), seeds, jobs[0].method_settings(),
                      [replace(r, method=job.name) for job, r in done], out_dir=out, record=record)
    write_report(rows, plot=plot)
    if failed:
        _append_failures(out / REPORT_MD, failed)
    groups = tuple(dict.fromkeys(_group(job) for job in jobs))
    pooled = replace(rows, methods=groups, results=[replace(r, method=_group(job)) for job, r in done],
                     out_dir=out / OVER_SEEDS)
    (out / OVER_SEEDS).mkdir(exist_ok=True)
    write_report(pooled, plot=plot)
    return rows


def _group(job: Job) -> str:
    """The job's name without its seed: the grid point its seeds are pooled over."""
    return job.name.replace(f"-s{job.seed}", "", 1)


def _append_failures(path: Path, failed: Mapping[str, str]) -> None:
    rows = [{"job": name, "error": error.splitlines()[0][:300].replace("|", "\\|")} for name, error in failed.items()]
    text = path.read_text() + "\n".join(["", "## Failed jobs", "", markdown_table(rows, ["job", "error"]), ""])
    write_text(path, text)


# ---------------------------------------------------------------------- --dry-run


def _empty_comparison(name: str, jobs: tuple[Job, ...]) -> Comparison:
    return Comparison(name, "", (), (), jobs[0].method_settings())


def planned_sweep(spec: SweepSpec) -> SweepResult:
    """A dry run as a `SweepResult`: no job ran; ``plan`` holds `dry_run_sweep`'s table."""
    return SweepResult(Path(spec.config.out or f"sweeps/{spec.name}"), spec.jobs, _empty_comparison(spec.name, spec.jobs),
                       plan=dry_run_sweep(spec))


def dry_run_sweep(spec: SweepSpec) -> str:
    """Every job with the most it would spend (calls; requests and cost for remote models), and the totals."""
    from bbtune.app.dryrun import dry_run_method

    shares = spec.limit_shares()
    rows, totals = [], {"calls": 0, "requests": 0, "cost": 0.0}
    references: dict[Any, Any] = {}  # each model loaded once, not once per job
    for job in spec.jobs:
        job = job.with_limits(shares)
        kind, local, remote = job.backend_configs()
        grad_steps = int(job.settings.get("grad_steps", 100))
        est = dry_run_method(job.task_config(), kind, local, remote, job.method, job.seed, job.method_settings(),
                             grad_steps, references)
        totals["calls"] += est.calls
        totals["requests"] += est.requests or 0
        totals["cost"] += est.cost or 0.0
        rows.append({"job": job.name, "calls": est.calls, "requests": "-" if est.requests is None else est.requests,
                     "cost": "-" if est.cost is None else f"${est.cost:.4f}"})
    rows.append({"job": f"total ({len(spec.jobs)} jobs)", "calls": totals["calls"],
                 "requests": totals["requests"] or "-", "cost": f"${totals['cost']:.4f}" if totals["cost"] else "-"})
    limits = ", ".join(f"{k} {v:g} per remote job" for k, v in shares.items())
    return "\n".join([f"dry run: nothing was run; sweep {spec.name} has {len(spec.jobs)} jobs, each at most", "",
                      markdown_table(rows, ["job", "calls", "requests", "cost"]),
                      *([f"\nsweep-wide limits divided up front: {limits}"] if limits else [])])
