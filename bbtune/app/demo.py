"""`bbtune demo`: the first run a user sees. Manual prompt, BBT soft (+ its nearest tokens) and BBT hard on the
built-in review set, with each result's gain over the manual prompt, and a plain verdict that credits the label
calibration and the search separately.

The built-in set (`bbtune/data/demo`, written for bbtune by `bbtune/data/generate_demo.py`) has 96 training-pool
and 240 test reviews, half of them with a contrast or a negation; the demo starts from BBT's own template
(``{text} It was{label}`` with `` terrible``/`` great``), on which SmolLM2-135M answers `` great`` to most
reviews, so there is something for tuning to win, and says so when it does not.
"""
from __future__ import annotations

import dataclasses
import statistics
import sys
from pathlib import Path
from typing import Any, Callable

from bbtune.core.numbers import mean_std
from bbtune.app.summary import summary_table
from bbtune.backends.factory import LocalConfig
from bbtune.core.table import markdown_table
from bbtune.runs.folder import RunFolder
from bbtune.runs.metrics import RunMetrics
from bbtune.runs.tuner import Mode, TuneConfig, TuneResult, run_tuner
from bbtune.tasks import TaskConfig

DEMO_PRESET = "sentiment-bbt"
DEMO_K = 8  # per class for train and for dev, drawn from the 48-per-class pool: a few-shot run that takes minutes


def run_demo(model: str, budget_calls: int, out: Path, seed: int, seeds: int = 1) -> str:
    """Tune a soft and a hard prompt on the built-in set (on `seeds` few-shot splits); returns the report."""
    backend = LocalConfig(model=model).build()
    per_seed: list[list[tuple[str, TuneResult]]] = []
    for data_seed in range(seed, seed + seeds):
        task_cfg = TaskConfig(data="demo", preset=DEMO_PRESET, k=DEMO_K, data_seed=data_seed)
        task = task_cfg.load()
        results = []
        for mode in (Mode.SOFT, Mode.HARD):
            cfg = TuneConfig(mode=mode, budget_calls=budget_calls, seed=data_seed, eval_every=40)
            cli = {"task": dataclasses.asdict(task_cfg), "backend": dataclasses.asdict(LocalConfig(model=model)),
                   "tune": dataclasses.asdict(cfg)}
            print(f"seed {data_seed}: tuning a {mode.value} prompt ({budget_calls} calls)...", file=sys.stderr)
            run_dir = out / (f"{mode.value}-{data_seed}" if seeds > 1 else mode.value)
            result = run_tuner(task, backend, cfg, run_dir, extra_config={"cli": cli}, overwrite=True)  # reruns replace it
            results.append((f"BBT {mode.value}", result))
        per_seed.append(results)
    table = summary_table(per_seed[0]) if seeds == 1 else spread_table(per_seed)
    report = "\n\n".join([f"Built-in set: {len(task.test)} test reviews, k = {DEMO_K} per class for train and dev, "
                          f"template {task.format.template.pattern!r}.", table, verdict(per_seed)])
    RunFolder(out).write_json("summary.json", [{name: r.metrics.to_json() for name, r in results} for results in per_seed])
    (out / "summary.md").write_text(report + "\n")
    return f"{report}\n\nrun folders and summary in {out}/"


def verdict(per_seed: list[list[tuple[str, TuneResult]]]) -> str:
    """One plain sentence per method: its gain over the manual prompt on test, split between what the label
    calibration gave (the calibrated template, no search) and what the search added on top of it."""
    lines = []
    for i, (name, _) in enumerate(per_seed[0]):
        runs = [results[i][1].metrics for results in per_seed]
        gains = [100 * (m.gain_over_manual or 0.0) for m in runs]
        calibration = statistics.mean(100 * ((m.manual_calibrated_test_acc or m.manual_test_acc or 0.0)
                                             - (m.manual_test_acc or 0.0)) for m in runs)
        gain, kept = statistics.mean(gains), sum(m.kept_manual for m in runs)
        per = f" (per split: {', '.join(f'{g:+.1f}' for g in gains)})" if len(gains) > 1 else ""
        if kept == len(runs):
            lines.append(f"{name} returned the calibrated template: {gain:+.1f} points on test{per}, all of it "
                         "calibration; the search found nothing better on dev.")
            continue
        word = "beat" if min(gains) > 0 else ("did not beat" if max(gains) <= 0 else "did not always beat")
        lines.append(f"{name} {word} the manual prompt: {gain:+.1f} points on test{per}, {calibration:+.1f} from "
                     f"calibration and {gain - calibration:+.1f} from the search"
                     + (f" (it returned the calibrated template on {kept} of {len(runs)} splits)" if kept else "") + ".")
    return "\n".join(lines)


def spread_table(per_seed: list[list[tuple[str, TuneResult]]]) -> str:
    """Mean and spread over seeds of every row the single-seed table shows."""
    columns: dict[str, tuple[int, Callable[[RunMetrics], float | None]]] = {
        "manual prompt": (0, lambda m: m.manual_test_acc),
        "manual + label calibration": (0, lambda m: m.manual_calibrated_test_acc)}
    for i, (name, _) in enumerate(per_seed[0]):
        columns[name] = (i, lambda m: m.test_acc)
        if name.endswith("soft"):
            columns[f"{name} -> nearest tokens"] = (i, lambda m: m.hard_test_acc)
    rows: list[dict[str, Any]] = []
    manual = [100 * (results[0][1].metrics.manual_test_acc or 0.0) for results in per_seed]
    for label, (source, read) in columns.items():
        found = (read(results[source][1].metrics) for results in per_seed)
        values = [100 * value for value in found if value is not None]
        mean, std = mean_std(values)
        rows.append({"method": label, "test acc (mean ± std)": f"{mean:.1f} ± {std:.1f}",
                     "gain vs manual": f"{statistics.mean(values) - statistics.mean(manual):+.1f} pts"})
    return markdown_table(rows, ["method", "test acc (mean ± std)", "gain vs manual"])
