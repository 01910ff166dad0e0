"""BBT searching through a readout: which train loss finds prompts whose readout generalises.

For matrix cells (the matrix's splits, settings and test sets), BBT runs with each ``--search-readout``:
``labels`` (the label words, calibrated: what the matrix's bbt rows searched), ``fixed`` (a logistic readout of
the top-k fitted once on the manual prompt) and ``fold`` (each candidate's own logistic readout, out of fold on
train). Every run ends the same way: its returned prompt's readout chosen out of fold on train + dev among all
readouts, at the same top-k depth. The held-out pool examples (dev: never in a candidate's train loss) say which
variant generalises; test is reported beside it and never used to choose. Rows go to
``benchmarks/results/search_readout.json`` in the matrix's row format, method ``bbt_{mode}_{variant}_top{k}``:

    python benchmarks/search_readout.py --tasks trec --models smollm2 --seeds 13 --modes soft --depths 20
    python benchmarks/matrix.py --rows benchmarks/results/matrix.json --runs benchmarks/results/search_readout.json

Each finished run is written as it lands; a run already in ``--out`` is skipped.
"""
from __future__ import annotations

import argparse
import json
import math
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

import torch
from task_args import ROOT, matrix_task

from bbtune.api import backend_for
from bbtune.runs.tuner import TuneConfig, Tuner

SPEC = ROOT / "benchmarks" / "specs" / "matrix.toml"
OUT = ROOT / "benchmarks" / "results" / "search_readout.json"
KEPT = ("test_acc", "test_acc_without_readout", "dev_acc", "tuned_dev_acc", "tuned_test_acc", "manual_test_acc",
        "manual_calibrated_test_acc", "manual_dev_acc", "selected", "calls", "eval_calls", "best_train_loss",
        "initial_train_loss", "hard_prompt", "readout", "manual_readout")


def run_row(task_spec: dict[str, Any], model: str, seed: int, mode: str, variant: str, k: int,
            settings: dict[str, Any]) -> dict[str, Any]:
    """One BBT run of the cell, as a matrix row with the run's own numbers beside it."""
    task = matrix_task(task_spec, seed)
    config = TuneConfig(mode=mode, seed=seed, search_readout=variant, readout="auto", readout_topk=k,
                        budget_calls=settings["budget_calls"], popsize=settings["popsize"],
                        intrinsic_dim=settings["intrinsic_dim"], eval_every=settings["eval_every"])
    started = time.perf_counter()
    result = Tuner(task, backend_for(model), config, progress=False).run()
    metrics = result.metrics.to_json()  # the metrics.json view: the row keeps its keys
    pool = len(task.train) + len(task.dev)
    return {"task": task_spec["name"], "model": model, "seed": seed, "method": f"bbt_{mode}_{variant}_top{k}",
            "test_acc": 100 * metrics["test_acc"], "wall_s": round(time.perf_counter() - started, 1), "top_k": k,
            "calls_per_run": metrics["calls"] + metrics["eval_calls"], "requests_per_run": None,
            "calls_per_input": 1, "pool": pool, "test_n": metrics.get("test_n"),
            "run": {key: metrics[key] for key in KEPT if key in metrics}}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2"])
    ap.add_argument("--tasks", nargs="+", default=["trec"], help="task names of the matrix spec")
    ap.add_argument("--seeds", nargs="+", type=int, default=[13])
    ap.add_argument("--modes", nargs="+", default=["soft"], choices=["soft", "hard"])
    ap.add_argument("--variants", nargs="+", default=["labels", "fixed", "fold"])
    ap.add_argument("--depths", nargs="+", type=int, default=[20])
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = tomllib.loads(SPEC.read_text())
    tasks = {t["name"]: t for t in spec["grid"]["tasks"]}
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    for task_name in args.tasks:
        for model in args.models:
            for seed in args.seeds:
                for mode in args.modes:
                    for k in args.depths:
                        for variant in args.variants:
                            method = f"bbt_{mode}_{variant}_top{k}"
                            if any((r["task"], r["model"], r["seed"], r["method"]) == (task_name, model, seed, method)
                                   for r in rows):
                                continue
                            row = run_row(tasks[task_name], model, seed, mode, variant, k, spec["settings"])
                            rows.append(row)
                            out.write_text(json.dumps({"rows": rows}, indent=1))  # every run kept as it lands
                            run = row["run"]
                            print(f"{task_name} {model} s{seed} {method}: test {row['test_acc']:.1f} "
                                  f"(dev {100 * run['dev_acc']:.1f}, tuned dev {100 * run['tuned_dev_acc']:.1f}, "
                                  f"{run['selected']}, readout {run.get('readout', {}).get('kind')}, "
                                  f"without readout {100 * run.get('test_acc_without_readout', math.nan):.1f}) "
                                  f"{row['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
