"""bbtune: black-box prompt tuning for language models you can only query.

BBT (Sun et al., 2022) searches a continuous prompt ``p = A z + p0`` with CMA-ES using scores alone; nearest
tokens (PEZ) turn it into text any API accepts. Every run scores the manual prompt beside the tuned one and
returns the better on dev.

The calls a notebook makes:

    >>> import bbtune
    >>> task = bbtune.load_task("demo", k=8)               # or a data folder, a file, hf:NAME
    >>> run = bbtune.tune(task, model="tiny", budget_calls=20, progress=False)
    >>> run.predict(["a wonderful film"])[0].label in task.format.labels
    True
    >>> run.metrics.selected in ("tuned", "manual")
    True

- `tune(task, model, **options)` -> `TunedRun` (`.predict`, `.metrics` (a `RunMetrics`), `.curve`, `.decision`,
  `.prompt_text`);
  `model` may be a name, a `Backend`, or `backend=RemoteConfig(...)`; `TuneConfig` holds every option (mode
  soft/hard, budget, sizes, selection), and `help(bbtune.tune)` lists them.
- `load_task(data, preset=..., k=16, seed=13)` -> `Task`; `TaskConfig` for every option.
- `load_run(folder)` -> the `TunedRun` a run folder holds (what `bbtune predict` reads).
- `compare(task, model, methods=..., seeds=...)` -> `Comparison`: BBT beside manual, in-context, prompt
  tuning and PEZ.
- `sweep(spec, out=..., workers=..., ray_address=..., dry_run=...)` -> `SweepResult`: a grid of tasks x models x methods x
  seeds (a TOML file) run on a process pool or Ray, each job a folder, one report over all.
- `PromptClassifier`: a scikit-learn estimator (fit/predict/predict_proba/score) for pipelines and grid search.
- Backends: `LocalBackend` + `LocalConfig` (transformers, CPU/GPU), `RemoteBackend` + `RemoteConfig`
  (OpenAI-compatible APIs);
  `AnswerRules`: how a text-only server's answer names a label (`RemoteConfig.answer_rules(task.format)`).
"""
from importlib import metadata as _metadata

from bbtune.api import backend_for, compare, load_task, sweep, tune
from bbtune.app.sweep import SweepResult
from bbtune.app.sweepspec import SweepConfig, SweepSpec
from bbtune.app.comparison import Comparison, MethodSettings
from bbtune.backends.base import Backend
from bbtune.backends.factory import LocalConfig
from bbtune.backends.local import LocalBackend
from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.core.prompts import HardPrompt, SoftPrompt
from bbtune.errors import BBTuneError
from bbtune.estimator import PromptClassifier
from bbtune.runs.load import Prediction, TunedRun, load_run
from bbtune.runs.metrics import RunMetrics
from bbtune.runs.tuner import TuneConfig, TuneResult  # noqa: F401  TuneResult: the raw result, kept importable
from bbtune.tasks import Example, Task, TaskConfig, TaskFormat, Template
from bbtune.tasks.answers import AnswerRules

try:
    __version__ = _metadata.version("bbtune")
except _metadata.PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["AnswerRules", "Backend", "BBTuneError", "Comparison", "Example", "HardPrompt", "LocalBackend", "LocalConfig",
           "MethodSettings", "Prediction", "PromptClassifier", "RemoteBackend", "RemoteConfig", "RunMetrics", "SoftPrompt",
           "SweepConfig", "SweepResult", "SweepSpec", "Task", "TaskConfig", "TaskFormat", "Template", "TuneConfig", "TunedRun",
           "__version__", "backend_for", "compare", "load_run", "load_task", "sweep", "tune"]
