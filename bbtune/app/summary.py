"""The table a tuning run prints: the manual prompt and the tuned results side by side, with the gain."""
from __future__ import annotations

import json
from typing import Any, Sequence

from bbtune.core.table import markdown_table
from bbtune.runs.metrics import RunMetrics
from bbtune.runs.tuner import TuneResult


def summary_table(results: Sequence[tuple[str, TuneResult]]) -> str:
    """Manual prompt and tuned results side by side, with each one's test gain over the manual prompt."""
    rows: list[dict[str, Any]] = []
    manual_test = None
    for name, res in results:
        m = res.metrics
        if m.manual_test_acc is not None and manual_test is None:  # a tuned run scores the manual prompt beside itself
            manual_test = m.manual_test_acc
            rows.append({"method": "manual prompt (template alone)", "dev acc": m.manual_dev_acc,
                         "test acc": manual_test, "calls": 0})
            if m.manual_calibrated_test_acc is not None:
                rows.append({"method": "  + label calibration", "dev acc": m.manual_calibrated_dev_acc,
                             "test acc": m.manual_calibrated_test_acc, "calls": 0})
        kept = " (kept the manual prompt: tuning did not beat it on dev)" if m.kept_manual else ""
        rows.append({"method": name + kept, "dev acc": m.dev_acc, "test acc": m.test_acc,
                     "calls": m.calls, "time s": m.wall_s, "prompt": None})
        if m.hard_test_acc is not None:
            rows.append({"method": f"  {name} -> nearest tokens", "dev acc": m.hard_dev_acc,
                         "test acc": m.hard_test_acc, "calls": "", "time s": None,
                         "prompt": _short(m.discretized_prompt or m.hard_prompt)})
        elif m.mode == "hard":
            rows[-1]["prompt"] = _short(m.hard_prompt)
    for row in rows:
        if manual_test is not None and isinstance(row.get("test acc"), float):
            row["gain vs manual"] = f"{100 * (row['test acc'] - manual_test):+.1f} pts"
    columns = ["method", "dev acc", "test acc", "gain vs manual", "calls", "time s", "prompt"]
    named = _score_name(results)
    if named != "acc":  # a generation task: its "accuracy" is the mean of its answer metric
        rows = [{k.replace(" acc", f" {named}"): v for k, v in row.items()} for row in rows]
        columns = [c.replace(" acc", f" {named}") for c in columns]
    return markdown_table(rows, columns)


def _score_name(results: Sequence[tuple[str, TuneResult]]) -> str:
    """What the runs' "accuracy" measures: acc, or a generation task's answer metric (exact, f1, a function)."""
    for _, res in results:
        if res.metrics.answer_metric is not None:
            return res.metrics.answer_metric.rsplit(":", 1)[-1]
    return "acc"


def decision_line(metrics: RunMetrics) -> str:
    """The run's decision in a sentence: which prompt it returned, its dev margin over the calibrated manual
    prompt, how sure that is, and why (`metrics.json` `decision`)."""
    d = metrics.decision
    if d is None:
        return "decision: no manual prompt was scored (this backend takes no hard prompts); the tuned prompt is returned"
    raw = metrics.answer_metric is not None or metrics.manual_readout == "raw"  # it competed uncalibrated
    manual = "the manual prompt" if raw else "the calibrated manual prompt"
    kept = "the tuned prompt" if d.replace else manual
    # 0.0 - margin, not -margin: a zero margin prints +0.000, not -0.000
    return (f"decision: returned {kept}; dev margin {100 * d.dev_acc_margin:+.1f} points, {d.wins} examples won "
            f"and {d.losses} lost (McNemar p = {d.p_value:.2f}), dev cross-entropy {0.0 - d.dev_loss_margin:+.3f}: "
            f"{d.reason}")


def readout_line(metrics: RunMetrics) -> str | None:
    """How the returned prompt's answers become labels, and why that readout (`metrics.json` `readout`)."""
    r = metrics.readout
    if r is None:
        return None
    depth = f" of the top-{r.k}" if r.k else ""
    if r.lifted:
        depth += f" and {r.lifted} tokens read below it"
    return f"readout: {r.kind}{depth}, chosen out of fold on train + dev: {r.reason}"


def _short(text: str | None, width: int = 40) -> str | None:
    if text is None:
        return None
    shown = json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= width else shown[: width - 4] + '..."'
