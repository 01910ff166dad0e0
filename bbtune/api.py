"""The calls a notebook makes: load a task, tune a prompt, classify with it, compare methods.

Each takes plain values (a data folder, a model name) or the objects behind them (a `Task`, a `Backend`), and
returns typed results. They are thin: the work is in `bbtune.runs.tuner.Tuner` and `bbtune.app.compare`.

    >>> import bbtune
    >>> run = bbtune.tune("demo", model="tiny", budget_calls=20, progress=False)
    >>> run.predict(["a wonderful, moving film"])[0].label in run.format.labels
    True
"""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence, Union

from bbtune.app.compare import METHODS
from bbtune.app.compare import compare as _run_compare
from bbtune.app.comparison import Comparison, MethodSettings
from bbtune.app.sweep import SweepResult, planned_sweep, run_sweep
from bbtune.app.sweepspec import SweepSpec
from bbtune.backends.base import Backend
from bbtune.backends.factory import LocalConfig
from bbtune.backends.remote import RemoteConfig
from bbtune.core.options import options_doc
from bbtune.runs.load import TunedRun, tuned_run
from bbtune.runs.tuner import TuneConfig, Tuner
from bbtune.tasks import Task, load_task


Model = Union[str, Backend, LocalConfig, RemoteConfig]  # a name, a backend, or the config of one


def backend_for(model: Model, **options: Any) -> Backend:
    """A backend as given, built from its config (`LocalConfig`, `RemoteConfig`), or a local model by name
    (``"smollm2"``, ``"tiny"``, a HF folder, a .gguf file); `options` are `LocalConfig` fields (device, dtype,
    memory_budget_mb, ...)."""
    if isinstance(model, str):
        return LocalConfig(model=model, **options).build()
    return model.build() if isinstance(model, (LocalConfig, RemoteConfig)) else model


def tune(task: Task | str = "demo", model: Model = "smollm2", *, backend: Model | None = None,
         config: TuneConfig | None = None, run_dir: str | Path | None = None, overwrite: bool = False,
         resume: bool = False, progress: bool = True, **options: Any) -> TunedRun:
    """Tune a prompt for `task` on a model and return the run: its prompt, metrics, learning curve
    (``run.curve``), the decision tuned-or-manual with its evidence (``run.decision``) and ``run.predict``.

    `task` is a `Task` or a data string for `load_task`. The model is `backend` where given, else `model`: a
    local model's name, a `Backend`, or a `LocalConfig` / `RemoteConfig` (an OpenAI-compatible server; the run
    keeps that backend open for `predict`, ``run.close()`` closes it). `options` override `config`'s fields
    (``mode="hard"``, ``budget_calls=300``, ``seed=1``, ...: every option below). With `run_dir` the run is also
    written there (resumable with ``resume=True``, readable later with `load_run`). The run keeps the manual
    prompt when tuning does not beat it on dev; ``run.metrics.selected`` says which it returned.

        >>> import bbtune
        >>> run = bbtune.tune("demo", model="tiny", budget_calls=20, progress=False)
        >>> run.predict(["a wonderful, moving film"])[0].label in run.format.labels
        True

    Options (`TuneConfig` fields):
    """
    task = task if isinstance(task, Task) else load_task(task)
    chosen = backend_for(backend if backend is not None else model)
    tuner = Tuner(task, chosen, replace(config or TuneConfig(), **options), run_dir, progress=progress,
                  overwrite=overwrite)
    return tuned_run(tuner.run(resume=resume), tuner.task_.format, chosen)


tune.__doc__ = f"{(tune.__doc__ or '').rstrip()}\n\n{options_doc(TuneConfig, indent='    ')}\n"


def compare(task: Task | str | Callable[[int], Task], model: str | Backend = "smollm2", *,
            methods: Sequence[str] = METHODS, seeds: Sequence[int] = (13, 42, 100),
            settings: MethodSettings = MethodSettings(), out_dir: str | Path | None = None,
            progress: bool = True) -> Comparison:
    """Run `methods` (manual, in_context, prompt_tuning, pez, bbt_soft, bbt_discrete, bbt_hard, random_search)
    on every seed; a data string draws a new few-shot split per seed. With `out_dir`, the report (Markdown,
    JSON, plot) is written there after every run."""
    source: Task | Callable[[int], Task] = (lambda seed: load_task(task, seed=seed)) if isinstance(task, str) else task
    return _run_compare(source, backend_for(model), methods, seeds, settings, out_dir, progress=progress)


def sweep(spec: str | Path | Mapping[str, Any] | SweepSpec, out: str | Path | None = None, *, resume: bool = False,
          dry_run: bool = False, progress: bool = True, **config: Any) -> SweepResult:
    """Run a grid of jobs (tasks x models x settings x methods x seeds) and write one report over them.

    `spec` is a TOML file, the same content as a dict, or a `SweepSpec`; `config` overrides its [sweep] table
    (workers=2, retries=1, ray_address="auto", max_cost=5.0, ...). A finished job is never run again; with
    `resume` an existing sweep folder is continued. `dry_run` runs nothing: the result's ``plan`` holds the
    table of jobs and the most each would spend.

        >>> # result = bbtune.sweep("benchmarks/specs/sst2_bbt.toml", out="sweeps/sst2", workers=2)
        >>> # result.comparison.summary(), result.failed
    """
    if not isinstance(spec, SweepSpec):
        spec = SweepSpec.load(spec) if isinstance(spec, (str, Path)) else SweepSpec.from_dict(spec)
    spec = spec.with_config(**config, **({"out": str(out)} if out is not None else {}))
    if dry_run:
        return planned_sweep(spec)
    return run_sweep(spec, resume=resume, progress=progress)
