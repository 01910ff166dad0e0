"""Side by side: run methods x seeds on one task and backend; `bbtune.app.report` writes what they found.

Methods: ``manual``, ``in_context``, ``prompt_tuning``, ``pez``, ``bbt_soft``, ``bbt_discrete``, ``bbt_hard``,
``random_search``. ``bbt_discrete`` is the nearest-token projection of ``bbt_soft``'s prompt: the two share one
search. Following the few-shot protocol (LM-BFF, BBT), a seed picks the few-shot train/dev split *and* the
methods' randomness, so every method sees the same data for a given seed.

Transfer: each hard prompt found is scored again on a second backend (another local model, or a text-only API
through the remote backend), since a prompt that works elsewhere is the point of a hard prompt.

    >>> # report = compare(lambda seed: TaskConfig(data="../shared/data/sst2", data_seed=seed).load(),
    >>> #                  LocalBackend("smollm2"), ("manual", "bbt_hard"), seeds=(13, 42), out_dir="reports/x")
    >>> # report.summary()[0]["test_acc_mean"]
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from bbtune.app.comparison import Comparison, MethodSettings
from bbtune.app.report import percent, write_report
from bbtune.backends.base import Backend
from bbtune.baselines import InContextConfig, MethodResult, PEZConfig, PromptTuningConfig
from bbtune.baselines.bbt import run_bbt
from bbtune.baselines.incontext import IN_CONTEXT_METHODS, run_in_context
from bbtune.baselines.manual import run_manual, run_manual_calibrated
from bbtune.baselines.pez import run_pez
from bbtune.baselines.prompt_tuning import run_prompt_tuning
from bbtune.constants import CPU_PROMPT_TOKENS
from bbtune.core.options import string_tuple
from bbtune.core.progress import progress_bar
from bbtune.core.prompts import HardPrompt
from bbtune.errors import BBTuneError, ConfigError
from bbtune.runs.tuner import Mode, TuneConfig
from bbtune.search.evaluate import evaluate
from bbtune.search.optimizers import OptimizerName
from bbtune.tasks import Placement, Task

METHODS = ("manual", "manual_calibrated", "in_context", "in_context_calibrated", "in_context_train", "prompt_tuning",
           "pez", "bbt_soft", "bbt_discrete", "bbt_hard", "random_search")


# ---------------------------------------------------------------------- what each method is run with


# name -> (mode, optimizer, record name of the search, record name of its discretization)
_BBT_RUNS = {"bbt_soft": ("soft", "cma", "bbt_soft", "bbt_discrete"), "bbt_hard": ("hard", "cma", "bbt_hard", None),
             "random_search": ("soft", "random", "random_search", None)}
_BBT_RUNS["bbt_discrete"] = _BBT_RUNS["bbt_soft"]
_IN_CONTEXT_CALIBRATION = {name: calibration for calibration, name in IN_CONTEXT_METHODS.items()}  # method -> calibration


@dataclass
class _Session:
    """One seed's task, plus the BBT searches already run (bbt_soft and bbt_discrete share one)."""

    task: Task
    backend: Backend
    settings: MethodSettings
    seed: int
    run_dir: Path | None = None  # BBT searches write (and resume) their run folder here
    searches: dict[str, tuple[MethodResult, MethodResult | None]] = field(default_factory=dict)

    def bbt(self, method: str) -> MethodResult:
        mode, optimizer, name, discrete = _BBT_RUNS[method]
        if name not in self.searches:
            config = replace(self.settings.bbt, mode=Mode(mode), optimizer=OptimizerName(optimizer), seed=self.seed)
            self.searches[name] = run_bbt(self.task, self.backend, config, name, discrete, self.run_dir)
        searched, discretized = self.searches[name]
        return discretized if method == discrete else searched  # type: ignore[return-value]

    def run(self, method: str) -> MethodResult:
        s, seed = self.settings, self.seed
        if method in _BBT_RUNS:
            return self.bbt(method)
        if method == "manual":
            return run_manual(self.task, self.backend, seed)
        if method == "manual_calibrated":
            return run_manual_calibrated(self.task, self.backend, seed)
        if method in _IN_CONTEXT_CALIBRATION:
            calibration = _IN_CONTEXT_CALIBRATION[method]
            return run_in_context(self.task, self.backend, replace(s.in_context, seed=seed, calibration=calibration))
        if method == "prompt_tuning":
            return run_prompt_tuning(self.task, self.backend, replace(s.prompt_tuning, seed=seed))
        assert method == "pez", method
        return run_pez(self.task, self.backend, replace(s.pez, seed=seed))


def run_method(task: Task, backend: Backend, method: str, seed: int, settings: MethodSettings = MethodSettings(),
               run_dir: str | Path | None = None) -> MethodResult:
    """One method on one seed: one job of a sweep. A BBT method writes its run folder in `run_dir` (and continues
    the unfinished run it finds there); the other methods keep nothing on disk."""
    check_methods([method])
    return _Session(task, backend, settings, seed, Path(run_dir) if run_dir else None).run(method)


def check_methods(methods: Iterable[str]) -> tuple[str, ...]:
    methods = string_tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"methods {unknown or '(none)'} are not known; choose from {list(METHODS)}")
    return methods


@dataclass(frozen=True)
class CompareConfig:
    """What `bbtune compare` adds to the task, backend and tune configs (field names unique across all four, so
    the CLI puts them in one namespace). BBT's sizes, `prompt_tokens`, `eval_every` and PEZ's token filter come
    from the `TuneConfig`, so every method gets the same prompt length and vocabulary."""

    methods: tuple[str, ...] = field(default=METHODS, metadata={"help": f"methods to run, from {', '.join(METHODS)}"})
    seeds: tuple[int, ...] = field(default=(13, 42, 100), metadata={"help": "seeds; each draws a few-shot split"})
    out: str = field(default="reports/compare", metadata={"help": "report folder"})
    grad_steps: int = field(default=100, metadata={"help": "prompt tuning and PEZ: gradient steps (one call each)"})
    grad_batch_size: int = field(default=8, metadata={"help": "prompt tuning and PEZ: examples per step; 0 = all"})
    pt_lr: float = field(default=0.3, metadata={"help": "prompt tuning: learning rate in embedding stds"})
    pez_lr: float = field(default=1.0, metadata={"help": "PEZ: learning rate in embedding stds"})
    shots_per_class: int = field(default=1, metadata={"help": "in-context: demonstrations per label"})
    transfer_model: str = field(default="", metadata={"help": "score hard prompts again on this local model"})
    transfer_url: str = field(default="", metadata={"help": "...or on this OpenAI-compatible server (base URL)"})
    transfer_served_model: str = field(default="tiny", metadata={"help": "model name the transfer server knows"})
    transfer_limit: int = field(default=0, metadata={"help": "transfer: score this many test examples; 0 = all"})

    def __post_init__(self) -> None:
        object.__setattr__(self, "methods", check_methods(self.methods))
        object.__setattr__(self, "seeds", tuple(int(s) for s in self.seeds))
        if not self.seeds:
            raise ConfigError("seeds must list at least one seed")
        if min(self.seeds) < 0:  # each is a data split's and a run's seed: numpy takes non-negative seeds only
            raise ConfigError(f"seeds must be >= 0, got {list(self.seeds)}")
        if self.transfer_model and self.transfer_url:
            raise ConfigError("give transfer_model or transfer_url, not both")
        if self.transfer_limit < 0:
            raise ConfigError(f"transfer_limit must be >= 0 (0 = all), got {self.transfer_limit}")
        self.settings(TuneConfig())  # the per-method configs check grad_steps, pt_lr, shots_per_class, ...

    def settings(self, tune: TuneConfig) -> MethodSettings:
        gradient: dict[str, Any] = {"prompt_tokens": tune.prompt_tokens or CPU_PROMPT_TOKENS,
                                    "eval_every": tune.eval_every, "steps": self.grad_steps,
                                    "batch_size": self.grad_batch_size, "select": tune.select}
        return MethodSettings(
            bbt=tune,
            # like for like with BBT: the same start (the cue in the cue's place by default) and calibration
            prompt_tuning=PromptTuningConfig(lr=self.pt_lr, init=tune.p0, init_text=tune.p0_text,
                                             calibrate=tune.calibrate, **gradient),
            pez=PEZConfig(lr=self.pez_lr, metric=tune.metric, vocab_filter=tune.vocab_filter,
                          block_list=tune.block_list, **gradient),
            in_context=InContextConfig(shots_per_class=self.shots_per_class),
        )



# ---------------------------------------------------------------------- running


def compare(task: Task | Callable[[int], Task], backend: Backend, methods: Sequence[str] = METHODS,
            seeds: Sequence[int] = (13, 42, 100), settings: MethodSettings = MethodSettings(),
            out_dir: str | Path | None = None, transfer_to: Backend | None = None, transfer_limit: int | None = None,
            progress: bool = True, record: dict[str, Any] | None = None) -> Comparison:
    """Run every method on every seed; write the report folder (after each run, so a killed run keeps its rows).

    `task` is one Task (same data for all seeds) or a function seed -> Task (a few-shot split per seed).
    """
    methods = check_methods(methods)
    task_for = task if callable(task) else (lambda _seed: task)
    first = task_for(seeds[0])
    if first.format.is_generation:
        raise ConfigError(f"task {first.name!r} is a generation task (free-text answers); compare's methods classify "
                          "with label words. Tune it with `bbtune tune` (or bbtune.tune), which scores answers")
    report = Comparison(first.name, backend.name, methods, tuple(seeds), settings,
                        out_dir=Path(out_dir) if out_dir else None, record=record or {})
    bar = progress_bar(len(methods) * len(seeds), "run", desc="bbtune compare", enabled=progress)
    for seed in seeds:
        session = _Session(first if seed == seeds[0] else task_for(seed), backend, settings, seed)
        for method in methods:
            bar.set_description(f"{method} (seed {seed})")
            result = session.run(method)
            report.results.append(result)
            bar.update(1)
            if progress:
                bar.write(_one_line(result))
            if report.out_dir:
                write_report(report, plot=False)
        if transfer_to is not None:
            found = [r for r in report.results if r.seed == seed]
            report.transfer += transfer_scores(found, session.task, backend, transfer_to, transfer_limit)
    bar.close()
    if report.out_dir:
        write_report(report)
    return report


def transfer_scores(results: Sequence[MethodResult], task: Task, source: Backend, target: Backend,
                    limit: int | None = None) -> list[dict[str, Any]]:
    """Accuracy of every hard prompt in `results` on `source` and on `target`, on the same examples (the first
    `limit` of test, or of dev when there is no test), each scored with the placement it was found with."""
    examples = (task.test or task.dev)[:limit]
    rows = []
    for r in results:
        if not isinstance(r.best, HardPrompt):
            continue
        fmt = replace(task.format, placement=Placement(r.placement))
        missing = target.stats.labels_missing  # label words absent from a top-k reply: their scores are bounds
        rows.append({"method": r.method, "seed": r.seed, "prompt": r.prompt_text, "n": len(examples),
                     "split": "test" if task.test else "dev", "source": source.name, "target": target.name,
                     "source_acc": evaluate(source, r.best, examples, fmt).accuracy,
                     "target_acc": evaluate(target, retokenize(r.best, target), examples, fmt).accuracy,
                     "target_labels_missing": target.stats.labels_missing - missing})
    return rows


def retokenize(prompt: HardPrompt, target: Backend) -> HardPrompt:
    """The same text in the target model's own tokens (another model splits text differently)."""
    try:
        tokenizer = target.vocabulary().tokenizer
    except (BBTuneError, NotImplementedError):
        return prompt  # a text-only backend reads `.text` alone
    ids = tokenizer.encode(prompt.text, add_special_tokens=False) if prompt.text else []
    return HardPrompt(tuple(ids), prompt.text, tuple(tokenizer.convert_ids_to_tokens(ids)))


def _one_line(r: MethodResult) -> str:
    return (f"{r.method:>14} seed {r.seed:<4} dev {percent(r.dev_acc):>5}  test {percent(r.test_acc):>5}  calls {r.cost.calls:>5}"
            f"  {r.cost.wall_s:7.1f} s" + (f"  {r.prompt_text!r}" if r.prompt_text and len(r.prompt_text) < 60 else ""))
