"""The table a tuning run prints: the manual prompt and the tuned results side by side, with the gain."""
from __future__ import annotations

import json
from typing import Any, Sequence

from bbtune.core.table import markdown_table
from bbtune.runs.tuner import TuneResult


def summary_table(results: Sequence[tuple[str, TuneResult | dict[str, Any]]]) -> str:
    """Manual prompt and tuned results side by side, with each one's test gain over the manual prompt."""
    rows, manual_test = [], None
    for name, res in results:
        m = res.metrics if isinstance(res, TuneResult) else res
        if "manual_test_acc" in m and manual_test is None:  # a tuned run scores the manual prompt beside itself
            manual_test = m["manual_test_acc"]
            rows.append({"method": "manual prompt (template alone)", "dev acc": m.get("manual_dev_acc"),
                         "test acc": manual_test, "calls": 0})
            if "manual_calibrated_test_acc" in m:
                rows.append({"method": "  + label calibration", "dev acc": m.get("manual_calibrated_dev_acc"),
                             "test acc": m["manual_calibrated_test_acc"], "calls": 0})
        kept = " (kept the manual prompt: tuning did not beat it on dev)" if m.get("selected") == "manual" else ""
        rows.append({"method": name + kept, "dev acc": m.get("dev_acc"), "test acc": m.get("test_acc"),
                     "calls": m.get("calls", 0), "time s": m.get("wall_s"), "prompt": _short(m.get("prompt_shown"))})
        if "hard_test_acc" in m:
            rows.append({"method": f"  {name} -> nearest tokens", "dev acc": m.get("hard_dev_acc"),
                         "test acc": m.get("hard_test_acc"), "calls": "", "time s": None,
                         "prompt": _short(m.get("discretized_prompt", m.get("hard_prompt")))})
        elif m.get("mode") == "hard":
            rows[-1]["prompt"] = _short(m.get("hard_prompt"))
    for row in rows:
        if manual_test is not None and isinstance(row.get("test acc"), float):
            row["gain vs manual"] = f"{100 * (row['test acc'] - manual_test):+.1f} pts"
    columns = ["method", "dev acc", "test acc", "gain vs manual", "calls", "time s", "prompt"]
    named = _score_name(results)
    if named != "acc":  # a generation task: its "accuracy" is the mean of its answer metric
        rows = [{k.replace(" acc", f" {named}"): v for k, v in row.items()} for row in rows]
        columns = [c.replace(" acc", f" {named}") for c in columns]
    return markdown_table(rows, columns)


def _score_name(results: Sequence[tuple[str, TuneResult | dict[str, Any]]]) -> str:
    """What the runs' "accuracy" measures: acc, or a generation task's answer metric (exact, f1, a function)."""
    for _, res in results:
        m = res.metrics if isinstance(res, TuneResult) else res
        if "answer_metric" in m:
            return str(m["answer_metric"]).rsplit(":", 1)[-1]
    return "acc"


def decision_line(metrics: dict[str, Any]) -> str:
    """The run's decision in a sentence: which prompt it returned, its dev margin over the calibrated manual
    prompt, how sure that is, and why (`metrics.json` `decision`)."""
    d = metrics.get("decision")
    if not d:
        return "decision: no manual prompt was scored (this backend takes no hard prompts); the tuned prompt is returned"
    raw = "answer_metric" in metrics or metrics.get("manual_readout") == "raw"  # it competed uncalibrated
    manual = "the manual prompt" if raw else "the calibrated manual prompt"
    kept = "the tuned prompt" if d["replace"] else manual
    # 0.0 - margin, not -margin: a zero margin prints +0.000, not -0.000
    return (f"decision: returned {kept}; dev margin {100 * d['dev_acc_margin']:+.1f} points, {d['wins']} examples won "
            f"and {d['losses']} lost (McNemar p = {d['p_value']:.2f}), dev cross-entropy {0.0 - d['dev_loss_margin']:+.3f}: "
            f"{d['reason']}")


def readout_line(metrics: dict[str, Any]) -> str | None:
    """How the returned prompt's answers become labels, and why that readout (`metrics.json` `readout`)."""
    r = metrics.get("readout")
    if not r:
        return None
    depth = f" of the top-{r['k']}" if r.get("k") else ""
    return f"readout: {r['kind']}{depth}, chosen out of fold on train + dev: {r['reason']}"


def _short(text: str | None, width: int = 40) -> str | None:
    if text is None:
        return None
    shown = json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= width else shown[: width - 4] + '..."'
