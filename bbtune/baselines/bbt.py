"""BBT's own methods in the common record: soft, soft-then-discretized, hard (projection in the loop), and
random search; each is one `run_tuner()` run read into `MethodResult`s.

A soft run also yields its discretized prompt (nearest tokens of the best soft prompt), so one search gives two
records that share its cost; the second says so in its `note`.

    >>> # soft, discrete = run_bbt(task, backend, TuneConfig(mode="soft", seed=13), "bbt_soft", "bbt_discrete")
"""
from __future__ import annotations

from pathlib import Path

from bbtune.backends.base import Backend
from bbtune.runs.folder import RunFolder
from bbtune.tasks import Task
from bbtune.runs.tuner import Mode, TuneConfig, TuneResult, run_tuner
from bbtune.baselines.record import Measurement, MethodResult, Meter


def run_bbt(task: Task, backend: Backend, config: TuneConfig, name: str, discrete_name: str | None = None,
            run_dir: Path | None = None) -> tuple[MethodResult, MethodResult | None]:
    """Run BBT once; returns the searched prompt's record and, for a soft search, its discretization's.

    With `run_dir` the run is written there; an unfinished run found there (a killed job) is resumed, so a
    retried job continues from its last checkpoint instead of paying for its finished generations again."""
    holds = RunFolder(run_dir).holds() if run_dir is not None else None
    with Meter(backend) as meter:
        result = run_tuner(task, backend, config, run_dir, progress=False, resume=holds == "unfinished",
                      overwrite=holds == "finished")  # finished but its job unrecorded: run it again whole
    placement = task.format.placement.value
    searched = _searched(name, result, meter.measurement, placement)
    if discrete_name is None or config.mode is Mode.HARD:
        return searched, None
    return searched, _discretized(discrete_name, result, meter.measurement, placement, shared_with=name)


def _searched(name: str, result: TuneResult, cost: Measurement, placement: str) -> MethodResult:
    m = result.metrics
    curve = tuple((int(row["calls"]), float(row["best_dev_acc"])) for row in result.curve if "best_dev_acc" in row)
    hard = result.soft_prompt is None
    return MethodResult(name, m.seed, placement, float(m.dev_acc or 0.0), m.test_acc, train_calls=m.calls,
                        cost=cost, curve=curve, prompt_text=result.hard_prompt.text if hard else None,
                        best=result.best_prompt)


def _discretized(name: str, result: TuneResult, cost: Measurement, placement: str, shared_with: str) -> MethodResult:
    m = result.metrics
    assert result.discretized is not None and m.hard_dev_acc is not None
    dev = m.hard_dev_acc
    return MethodResult(name, m.seed, placement, dev, m.hard_test_acc, train_calls=m.calls, cost=cost,
                        curve=((m.calls, dev),), prompt_text=result.discretized.text, best=result.discretized,
                        note=f"nearest tokens of {shared_with}'s prompt; same search, cost shared")
