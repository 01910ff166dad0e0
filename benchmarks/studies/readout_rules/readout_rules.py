"""Would another rule have chosen better readouts? Replayed on the 24 matrix cells' stored evidence, no model run.

`benchmarks/readouts.py` keeps, per cell and depth, every candidate readout's out-of-fold accuracy, cross-entropy
and McNemar p-value against the floor (what `choose_readout` saw) and each readout's own test accuracy. Each rule
below picks a readout from that evidence alone; its test accuracy is then looked up, and compared with the
calibrated template's on the same cell (the matrix's ``manual_calibrated``):

    python benchmarks/studies/readout_rules/readout_rules.py    # -> readouts_choice_rules.json beside it
"""
from __future__ import annotations

import json
import statistics
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[3]
READOUTS = ROOT / "benchmarks" / "results" / "readouts_manual.json"
MATRIX = ROOT / "benchmarks" / "results" / "matrix.json"
OUT = Path(__file__).with_name("readouts_choice_rules.json")
FLOOR = ("raw", "bias")
Scores = Sequence[dict[str, Any]]


def floor_of(scores: Scores) -> dict[str, Any]:
    return max((s for s in scores if s["kind"] in FLOOR), key=lambda s: s["accuracy"])


def richer_when(passes: Callable[[dict[str, Any], dict[str, Any]], bool]) -> Callable[[Scores], str]:
    """The floor, or the most accurate richer readout more accurate than it out of fold for which `passes`."""
    def rule(scores: Scores) -> str:
        floor = floor_of(scores)
        richer = [s for s in scores if s["kind"] not in FLOOR and s["accuracy"] > floor["accuracy"]
                  and passes(s, floor)]
        return max(richer, key=lambda s: s["accuracy"])["kind"] if richer else floor["kind"]
    return rule


RULES: dict[str, Callable[[Scores], str]] = {
    "McNemar p <= 0.1 (bbtune's rule)": richer_when(lambda s, f: s["p_value"] <= 0.1),
    "McNemar p <= 0.05": richer_when(lambda s, f: s["p_value"] <= 0.05),
    "McNemar p <= 0.2": richer_when(lambda s, f: s["p_value"] <= 0.2),
    "McNemar p <= 0.1 or a lower out-of-fold cross-entropy": richer_when(
        lambda s, f: s["p_value"] <= 0.1 or s["loss"] < f["loss"]),
    "any richer readout more accurate out of fold": richer_when(lambda s, f: True),
    "the lowest out-of-fold cross-entropy": lambda scores: min(scores, key=lambda s: s["loss"])["kind"],
}


def replay(readouts: list[dict[str, Any]], calibrated: dict[tuple[str, str, int], float]) -> list[dict[str, Any]]:
    test = {(r["task"], r["model"], r["seed"], r["top_k"], r["method"]): r["test_acc"] for r in readouts}
    out = []
    for k in sorted({r["top_k"] for r in readouts if r["method"].startswith("manual_readout_top")}):
        chosen = [r for r in readouts if r["method"] == f"manual_readout_top{k}"]
        for name, rule in RULES.items():
            gains = []
            for row in chosen:
                cell = (row["task"], row["model"], row["seed"])
                kind = rule(row["choice"]["scores"])
                gains.append(test[(*cell, k, f"manual_{kind}_top{k}")] - calibrated[cell])
            out.append({"top_k": k, "rule": name, "cells": len(gains), "mean gain": round(statistics.fmean(gains), 2),
                        "cells more than 1 point below calibrated": sum(g < -1 for g in gains),
                        "worst gain": round(min(gains), 1)})
    return out


def main() -> None:
    readouts = json.loads(READOUTS.read_text())["rows"]
    calibrated = {(r["task"], r["model"], r["seed"]): r["test_acc"] for r in json.loads(MATRIX.read_text())["rows"]
                  if r["method"] == "manual_calibrated"}
    rows = replay(readouts, calibrated)
    for row in rows:
        print(row)
    OUT.write_text(json.dumps({"rows": rows}, indent=1))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
