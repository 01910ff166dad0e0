"""Side by side: run methods x seeds on one task and backend, and write the report folder.

    report_dir/
      report.md              mean ± std table, the prompts found, transfer scores, the plot
      results.json           the same numbers: settings, summary per method, every run, transfer
      accuracy_vs_calls.png  left: best dev accuracy against training calls (mean ± std band over seeds);
                             right: final test accuracy against every model call spent

Methods: ``manual``, ``in_context``, ``prompt_tuning``, ``pez``, ``bbt_soft``, ``bbt_discrete``, ``bbt_hard``,
``random_search``. ``bbt_discrete`` is the nearest-token projection of ``bbt_soft``'s prompt: the two share one
search. Following the few-shot protocol (LM-BFF, BBT), a seed picks the few-shot train/dev split *and* the
methods' randomness, so every method sees the same data for a given seed.

Transfer: each hard prompt found is scored again on a second backend (another local model, or a text-only API
through the remote backend), since a prompt that works elsewhere is the point of a hard prompt.

    >>> # report = run_compare(CompareConfig(out="reports/x", seeds=(13, 42)),
    >>> #                      TaskConfig(data="../shared/data/sst2", test_limit=200), LocalConfig(model="smollm2"))
    >>> # report.summary()[0]["test_acc_mean"]
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from .backends.base import Backend
from .backends.factory import LocalConfig
from .baselines import InContextConfig, Measurement, MethodResult, PEZConfig, PromptTuningConfig
from .baselines.bbt import run_bbt
from .baselines.incontext import run_in_context
from .baselines.manual import run_manual
from .baselines.pez import run_pez
from .baselines.prompt_tuning import run_prompt_tuning
from .errors import BBTuneError, ConfigError
from .evaluate import evaluate
from .prompts import HardPrompt
from .results import RunFolder
from .table import markdown_table
from .tasks import Placement, Task, TaskConfig
from .tuner import TuneConfig

METHODS = ("manual", "in_context", "prompt_tuning", "pez", "bbt_soft", "bbt_discrete", "bbt_hard", "random_search")
REPORT_MD, RESULTS_JSON, PLOT_PNG = "report.md", "results.json", "accuracy_vs_calls.png"


# ---------------------------------------------------------------------- what each method is run with


@dataclass(frozen=True)
class MethodSettings:
    """One config per kind of method; `seed` in each is replaced by the run's seed."""

    bbt: TuneConfig = TuneConfig()
    prompt_tuning: PromptTuningConfig = PromptTuningConfig()
    pez: PEZConfig = PEZConfig()
    in_context: InContextConfig = InContextConfig()


# name -> (mode, optimizer, record name of the search, record name of its discretization)
_BBT_RUNS = {"bbt_soft": ("soft", "cma", "bbt_soft", "bbt_discrete"), "bbt_hard": ("hard", "cma", "bbt_hard", None),
             "random_search": ("soft", "random", "random_search", None)}
_BBT_RUNS["bbt_discrete"] = _BBT_RUNS["bbt_soft"]


@dataclass
class _Session:
    """One seed's task, plus the BBT searches already run (bbt_soft and bbt_discrete share one)."""

    task: Task
    backend: Backend
    settings: MethodSettings
    seed: int
    searches: dict[str, tuple[MethodResult, MethodResult | None]] = field(default_factory=dict)

    def bbt(self, method: str) -> MethodResult:
        mode, optimizer, name, discrete = _BBT_RUNS[method]
        if name not in self.searches:
            config = replace(self.settings.bbt, mode=mode, optimizer=optimizer, seed=self.seed)
            self.searches[name] = run_bbt(self.task, self.backend, config, name, discrete)
        searched, discretized = self.searches[name]
        return discretized if method == discrete else searched  # type: ignore[return-value]

    def run(self, method: str) -> MethodResult:
        s, seed = self.settings, self.seed
        if method in _BBT_RUNS:
            return self.bbt(method)
        if method == "manual":
            return run_manual(self.task, self.backend, seed)
        if method == "in_context":
            return run_in_context(self.task, self.backend, replace(s.in_context, seed=seed))
        if method == "prompt_tuning":
            return run_prompt_tuning(self.task, self.backend, replace(s.prompt_tuning, seed=seed))
        assert method == "pez", method
        return run_pez(self.task, self.backend, replace(s.pez, seed=seed))


def check_methods(methods: Iterable[str]) -> tuple[str, ...]:
    methods = tuple(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise ConfigError(f"methods {unknown or '(none)'} are not known; choose from {list(METHODS)}")
    return methods


# ---------------------------------------------------------------------- running


@dataclass
class Comparison:
    """Every run of a comparison; `summary()` is the table."""

    task: str
    backend: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    settings: MethodSettings
    results: list[MethodResult] = field(default_factory=list)
    transfer: list[dict[str, Any]] = field(default_factory=list)
    out_dir: Path | None = None
    record: dict[str, Any] = field(default_factory=dict)  # how the run was configured, kept in results.json

    def summary(self) -> list[dict[str, Any]]:
        return [summarize(m, [r for r in self.results if r.method == m]) for m in self.methods
                if any(r.method == m for r in self.results)]


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
    report = Comparison(first.name, backend.name, methods, tuple(seeds), settings,
                        out_dir=Path(out_dir) if out_dir else None, record=record or {})
    bar = _progress(len(methods) * len(seeds), progress)
    for seed in seeds:
        session = _Session(first if seed == seeds[0] else task_for(seed), backend, settings, seed)
        for method in methods:
            bar.set_description(f"{method} (seed {seed})")
            result = session.run(method)
            report.results.append(result)
            bar.update(1)
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


# ---------------------------------------------------------------------- numbers


def summarize(method: str, runs: Sequence[MethodResult]) -> dict[str, Any]:
    """Mean and sample std over seeds of the accuracies; mean of the costs."""
    row: dict[str, Any] = {"method": method, "seeds": [r.seed for r in runs]}
    for key in ("dev_acc", "test_acc"):
        values = [getattr(r, key) for r in runs if getattr(r, key) is not None]
        row[f"{key}_mean"], row[f"{key}_std"] = _mean_std(values)
    for key in ("calls", "forward_passes", "backward_passes", "wall_s", "peak_mem_mb"):
        row[key] = float(np.mean([getattr(r.cost, key) for r in runs]))
    row["train_calls"] = float(np.mean([r.train_calls for r in runs]))
    row["mem_kind"] = runs[0].cost.mem_kind
    row["note"] = runs[0].note
    return row


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _pct(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{100 * mean:.1f} ± {100 * (std or 0):.1f}"


def _acc(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


def _one_line(r: MethodResult) -> str:
    return (f"{r.method:>14} seed {r.seed:<4} dev {_acc(r.dev_acc):>5}  test {_acc(r.test_acc):>5}  calls {r.cost.calls:>5}"
            f"  {r.cost.wall_s:7.1f} s" + (f"  {r.prompt_text!r}" if r.prompt_text and len(r.prompt_text) < 60 else ""))


# ---------------------------------------------------------------------- the report folder


def write_report(report: Comparison, plot: bool = True) -> None:
    assert report.out_dir is not None
    folder = RunFolder(report.out_dir)
    folder.write_json(RESULTS_JSON, {
        "task": report.task, "backend": report.backend, "methods": report.methods, "seeds": report.seeds,
        "settings": asdict(report.settings), "config": report.record, "summary": report.summary(),
        "runs": [r.as_dict() for r in report.results], "transfer": report.transfer})
    if plot and report.results:
        plot_accuracy_vs_calls(report, report.out_dir / PLOT_PNG)
    (report.out_dir / REPORT_MD).write_text(markdown(report, with_plot=(report.out_dir / PLOT_PNG).exists()))


def read_report(folder: str | Path) -> Comparison:
    """A report folder's `results.json` back as a `Comparison` (prompt objects are not kept: `best` is None), so
    the table and plot of a finished or interrupted run can be written again: `write_report(read_report(f))`."""
    data = RunFolder(folder).read_json(RESULTS_JSON)
    cost_fields = {f.name for f in fields(Measurement)}
    own = {f.name for f in fields(MethodResult)} - {"cost", "curve", "best"}
    results = [MethodResult(**{k: v for k, v in run.items() if k in own},
                            cost=Measurement(**{k: v for k, v in run.items() if k in cost_fields}),
                            curve=tuple((int(x), float(y)) for x, y in run["curve"])) for run in data["runs"]]
    s = data["settings"]
    settings = MethodSettings(TuneConfig(**s["bbt"]), PromptTuningConfig(**s["prompt_tuning"]), PEZConfig(**s["pez"]),
                              InContextConfig(**s["in_context"]))
    return Comparison(data["task"], data["backend"], tuple(data["methods"]), tuple(data["seeds"]), settings, results,
                      data["transfer"], Path(folder), data.get("config", {}))


def markdown(report: Comparison, with_plot: bool = True) -> str:
    seeds = ", ".join(map(str, report.seeds))
    rows = [{"method": s["method"], "dev acc": _pct(s["dev_acc_mean"], s["dev_acc_std"]),
             "test acc": _pct(s["test_acc_mean"], s["test_acc_std"]), "train calls": f"{s['train_calls']:.0f}",
             "model calls": f"{s['calls']:.0f}", "forward passes": f"{s['forward_passes']:.0f}",
             "backward passes": f"{s['backward_passes']:.0f}", "wall s": f"{s['wall_s']:.1f}",
             "peak mem MB": f"{s['peak_mem_mb']:.0f}"} for s in report.summary()]
    lines = [f"# Comparison: {report.task} on {report.backend}", "",
             f"Seeds {seeds} (each seed draws the few-shot split and the method's randomness); "
             "accuracy in %, mean ± sample std over seeds; costs are means per seed.", "",
             markdown_table(rows, list(rows[0]) if rows else ["method"]), "", _COLUMNS, ""]
    notes = [f"- `{s['method']}`: {s['note']}" for s in report.summary() if s["note"]]
    lines += notes + ([""] if notes else [])
    if with_plot:
        lines += [f"![accuracy against model calls]({PLOT_PNG})", ""]
    return "\n".join(lines + _prompt_table(report.results) + _transfer_table(report.transfer))


_COLUMNS = (
    "*train calls*: the tuning budget, one prompt scored on one training batch (a gradient step is one). "
    "*model calls*: every prompt x batch the method asked of the backend, dev selection and test included. "
    "*forward/backward passes*: the model's batched passes. *wall s*: the whole method, evaluation included. "
    "*peak mem MB*: peak resident memory of the process while the method ran (model weights included; "
    "on CUDA the allocator's peak)."
)


def _prompt_table(results: Sequence[MethodResult]) -> list[str]:
    rows = [{"method": r.method, "seed": r.seed, "dev acc": _acc(r.dev_acc), "test acc": _acc(r.test_acc),
             "prompt": _cell(r.prompt_text)} for r in results if r.prompt_text]
    if not rows:
        return []
    return ["## Hard prompts found", "", markdown_table(rows, list(rows[0])), ""]


def _transfer_table(transfer: Sequence[Mapping[str, Any]]) -> list[str]:
    if not transfer:
        return []
    rows = [{"method": r["method"], "seed": r["seed"], "source acc": _acc(r["source_acc"]),
             "target acc": _acc(r["target_acc"]), "labels missing": r["target_labels_missing"],
             "prompt": _cell(r["prompt"]) or "(template only)"} for r in transfer]
    by_method: dict[str, list[float]] = {}
    for r in transfer:
        by_method.setdefault(r["method"], []).append(r["target_acc"])
    first = transfer[0]
    return [f"## Transfer of hard prompts to {first['target']}", "",
            f"Each hard prompt scored on the same {first['n']} {first['split']} examples by {first['source']} (source) "
            f"and {first['target']} (target), with the same template and placement; the target gets the text. "
            "*labels missing*: label words absent from the target's top-k replies (their scores are upper bounds).",
            "",
            markdown_table(rows, list(rows[0])), "",
            "Mean target accuracy: " + ", ".join(f"{m} {_pct(*_mean_std(v))}" for m, v in by_method.items()), ""]


def _cell(text: str | None, limit: int = 100) -> str:
    """A prompt as one table cell: quoted (spaces show), newlines as ⏎, pipes escaped, long ones cut."""
    if not text:
        return ""
    text = text if len(text) <= limit else text[: limit - 1] + "…"
    return repr(text).replace("\\n", "⏎").replace("|", "\\|")


# ---------------------------------------------------------------------- the plot


def plot_accuracy_vs_calls(report: Comparison, path: Path) -> None:
    """Left: best dev accuracy so far against training calls. Right: test accuracy against all model calls."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure  # the object API, so a user's pyplot backend is left alone
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig = Figure(figsize=(13, 6.4), dpi=120)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    colors = {m: f"C{i}" for i, m in enumerate(report.methods)}
    markers = dict(zip(report.methods, "osD^vP*Xhp<>"))  # distinct shapes, so coinciding points stay apart
    for method in report.methods:
        runs = [r for r in report.results if r.method == method]
        if runs:
            _plot_curve(left, method, runs, colors[method])
            _plot_final(right, method, runs, colors[method], markers[method])
    left.set(xlabel="training calls (prompts scored on the training batch)", ylabel="best dev accuracy so far",
             title="Dev accuracy during tuning")
    right.set(xlabel="model calls in total (training + dev selection + test)", ylabel="test accuracy",
              title="Final test accuracy against cost", xscale="log")
    right.xaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
    right.xaxis.set_major_formatter(ScalarFormatter())  # plain numbers on the log axis
    right.xaxis.set_minor_formatter(NullFormatter())
    for ax in (left, right):
        ax.grid(alpha=0.3)
        # below the axes, so no legend hides the points that sit at chance level
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=3, fontsize=8, frameon=False)
    fig.suptitle(f"{report.task} on {report.backend}: mean ± std over seeds {', '.join(map(str, report.seeds))}")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def _plot_curve(ax: Any, method: str, runs: Sequence[MethodResult], color: str) -> None:
    """Mean ± std of best-so-far step curves; an untuned method is a dashed level, a single point a marker."""
    xs = sorted({x for r in runs for x, _ in r.curve})
    if xs == [0]:
        mean, _ = _mean_std([r.curve[-1][1] for r in runs])  # its spread is in the table; a band would cover all
        ax.axhline(mean, color=color, ls="--", lw=1.2, label=f"{method} (no tuning)")
        return
    if len(xs) == 1 or all(len(r.curve) == 1 for r in runs):
        mean, std = _mean_std([r.curve[-1][1] for r in runs])
        ax.errorbar([np.mean([r.curve[-1][0] for r in runs])], [mean], yerr=[std], fmt="D", color=color,
                    capsize=4, label=f"{method} (final)")
        return
    grid = np.array(xs)
    values = np.array([[_step_value(r.curve, x) for x in grid] for r in runs])
    mean = np.nanmean(values, axis=0)
    std = np.nanstd(values, axis=0, ddof=1) if len(runs) > 1 else np.zeros_like(mean)
    ax.plot(grid, mean, color=color, lw=1.8, label=method, drawstyle="steps-post")
    ax.fill_between(grid, mean - std, mean + std, color=color, alpha=0.15, step="post")


def _step_value(curve: Sequence[tuple[int, float]], x: float) -> float:
    """Value of a best-so-far curve at x (the last point at or before x)."""
    before = [v for cx, v in curve if cx <= x]
    return before[-1] if before else math.nan


def _plot_final(ax: Any, method: str, runs: Sequence[MethodResult], color: str, marker: str) -> None:
    tests = [r.test_acc for r in runs if r.test_acc is not None]
    if not tests:
        return
    mean, std = _mean_std(tests)
    calls = float(np.mean([r.cost.calls for r in runs]))
    ax.errorbar([calls], [mean], yerr=[std], fmt=marker, color=color, capsize=4, ms=7, label=method)


def _progress(total: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="run", dynamic_ncols=True, disable=not enabled)


# ---------------------------------------------------------------------- the command line's config


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
        if self.transfer_model and self.transfer_url:
            raise ConfigError("give transfer_model or transfer_url, not both")
        if self.transfer_limit < 0:
            raise ConfigError(f"transfer_limit must be >= 0 (0 = all), got {self.transfer_limit}")
        self.settings(TuneConfig())  # the per-method configs check grad_steps, pt_lr, shots_per_class, ...

    def settings(self, tune: TuneConfig) -> MethodSettings:
        gradient = {"prompt_tokens": tune.prompt_tokens, "eval_every": tune.eval_every, "steps": self.grad_steps,
                    "batch_size": self.grad_batch_size}
        return MethodSettings(
            bbt=tune,
            prompt_tuning=PromptTuningConfig(lr=self.pt_lr, **gradient),
            pez=PEZConfig(lr=self.pez_lr, metric=tune.metric, vocab_filter=tune.vocab_filter,
                          block_list=tune.block_list, **gradient),
            in_context=InContextConfig(shots_per_class=self.shots_per_class),
        )


def run_compare(config: CompareConfig, task: TaskConfig = TaskConfig(), backend: LocalConfig = LocalConfig(),
                tune: TuneConfig = TuneConfig(), *, transfer_to: Backend | None = None,
                progress: bool = True) -> Comparison:
    """`bbtune compare`: build the backend and the per-seed tasks (`data_seed` <- seed), run, write `config.out`.

    `transfer_to` (any Backend) overrides `config.transfer_model` / `config.transfer_url`.
    """
    model = backend.build()
    target = transfer_to or _transfer_backend(config, backend)
    record = {"task": asdict(task), "backend": asdict(backend), "compare": asdict(config)}
    return compare(lambda seed: replace(task, data_seed=seed).load(), model, config.methods, config.seeds,
                   config.settings(tune), config.out, transfer_to=target, transfer_limit=config.transfer_limit or None,
                   progress=progress, record=record)


def _transfer_backend(config: CompareConfig, backend: LocalConfig) -> Backend | None:
    if config.transfer_model:
        return replace(backend, model=config.transfer_model).build()
    if config.transfer_url:
        from .backends.remote import RemoteConfig

        return RemoteConfig(base_url=config.transfer_url, model=config.transfer_served_model).build()
    return None
