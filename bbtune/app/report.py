"""The report of a comparison: statistics over seeds, the Markdown report, the plot, and results.json (written
and read back), so a finished or interrupted comparison can be reported again without rerunning it.

    report_dir/
      report.md              mean ± std table, the prompts found, transfer scores, the plot
      results.json           the same numbers: settings, summary per method, every run, transfer
      accuracy_vs_calls.png  left: best dev accuracy against training calls (mean ± std band over seeds);
                             right: final test accuracy against every model call spent

    >>> # write_report(read_report("reports/x"))   # table and plot again, from results.json alone
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, fields
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bbtune.app.comparison import Comparison, MethodSettings
from bbtune.core.numbers import mean_std
from bbtune.baselines import (
    InContextConfig,
    Measurement,
    MethodResult,
    PEZConfig,
    PromptTuningConfig,
)
from bbtune.core.table import markdown_table
from bbtune.runs.folder import RunFolder, write_text
from bbtune.runs.tuner import TuneConfig

REPORT_MD, RESULTS_JSON, PLOT_PNG = "report.md", "results.json", "accuracy_vs_calls.png"


def _pct(mean: float | None, std: float | None) -> str:
    return "–" if mean is None else f"{100 * mean:.1f} ± {100 * (std or 0):.1f}"


def percent(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f}"


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
    write_text(report.out_dir / REPORT_MD, markdown(report, with_plot=(report.out_dir / PLOT_PNG).exists()))


def read_report(folder: str | Path) -> Comparison:
    """A report folder's `results.json` back as a `Comparison` (prompt objects are not kept: `best` is None), so
    the table and plot of a finished or interrupted run can be written again: `write_report(read_report(f))`."""

    data = RunFolder(folder).read_json(RESULTS_JSON)
    results = [result_from_dict(run) for run in data["runs"]]
    s = data["settings"]
    settings = MethodSettings(TuneConfig(**s["bbt"]), PromptTuningConfig(**s["prompt_tuning"]), PEZConfig(**s["pez"]),
                              InContextConfig(**s["in_context"]))
    return Comparison(data["task"], data["backend"], tuple(data["methods"]), tuple(data["seeds"]), settings, results,
                      data["transfer"], Path(folder), data.get("config", {}))


def result_from_dict(run: Mapping[str, Any]) -> MethodResult:
    """A `MethodResult.as_dict()` record back as a `MethodResult` (without its prompt object: `best` is None)."""
    cost_fields = {f.name for f in fields(Measurement)}
    own = {f.name for f in fields(MethodResult)} - {"cost", "curve", "best"}
    return MethodResult(**{k: v for k, v in run.items() if k in own},
                        cost=Measurement(**{k: v for k, v in run.items() if k in cost_fields}),
                        curve=tuple((int(x), float(y)) for x, y in run["curve"]))


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
    rows = [{"method": r.method, "seed": r.seed, "dev acc": percent(r.dev_acc), "test acc": percent(r.test_acc),
             "prompt": _cell(r.prompt_text)} for r in results if r.prompt_text]
    if not rows:
        return []
    return ["## Hard prompts found", "", markdown_table(rows, list(rows[0])), ""]


def _transfer_table(transfer: Sequence[Mapping[str, Any]]) -> list[str]:
    if not transfer:
        return []
    rows = [{"method": r["method"], "seed": r["seed"], "source acc": percent(r["source_acc"]),
             "target acc": percent(r["target_acc"]), "labels missing": r["target_labels_missing"],
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
            "Mean target accuracy: " + ", ".join(f"{m} {_pct(*mean_std(v))}" for m, v in by_method.items()), ""]


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
    from matplotlib.figure import (
        Figure,  # the object API, so a user's pyplot backend is left alone
    )
    from matplotlib.ticker import LogLocator, NullFormatter, ScalarFormatter

    fig = Figure(figsize=(13, 6.4), dpi=120)
    FigureCanvasAgg(fig)
    left, right = fig.subplots(1, 2)
    colors = {m: f"C{i % 10}" for i, m in enumerate(report.methods)}
    markers = dict(zip(report.methods, itertools.cycle("osD^vP*Xhp<>")))  # a sweep may have more rows than shapes  # distinct shapes, so coinciding points stay apart
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
        mean, _ = mean_std([r.curve[-1][1] for r in runs])  # its spread is in the table; a band would cover all
        ax.axhline(mean, color=color, ls="--", lw=1.2, label=f"{method} (no tuning)")
        return
    if len(xs) == 1 or all(len(r.curve) == 1 for r in runs):
        mean, std = mean_std([r.curve[-1][1] for r in runs])
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
    mean, std = mean_std(tests)
    calls = float(np.mean([r.cost.calls for r in runs]))
    ax.errorbar([calls], [mean], yerr=[std], fmt=marker, color=color, capsize=4, ms=7, label=method)
