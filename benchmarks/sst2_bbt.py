"""BBT on SST-2 16-shot with SmolLM2: manual prompt vs BBT soft vs its nearest tokens vs BBT hard (in the loop).

    python benchmarks/sst2_bbt.py --seeds 13 42 100 --budget 300
    python benchmarks/sst2_bbt.py --placements suffix prefix --modes soft --out benchmarks/results/placement_sst2.json
Prints a table and writes JSON (default benchmarks/results/sst2_bbt.json). Data: ../shared/data/sst2 (never copied).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

from bbtune.backends.base import Backend
from bbtune.backends.factory import LocalConfig
from bbtune.evaluate import evaluate
from bbtune.prompts import HardPrompt
from bbtune.table import markdown_table
from bbtune.tasks import TaskConfig
from bbtune.tuner import TuneConfig, tune

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 42, 100])
    ap.add_argument("--modes", nargs="+", default=["soft", "hard"], choices=["soft", "hard"])
    ap.add_argument("--budget", type=int, default=300)
    ap.add_argument("--prompt-tokens", type=int, default=5)
    ap.add_argument("--intrinsic-dim", type=int, default=100)
    ap.add_argument("--popsize", type=int, default=10)
    ap.add_argument("--sigma0", type=float, default=1.0)
    ap.add_argument("--placements", nargs="+", default=["suffix"], choices=["prefix", "suffix"],
                    help="where the prompt sits; several compare placements on the same seeds and settings")
    ap.add_argument("--test-limit", type=int, default=0, help="0 = the full 872-sentence test set")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "sst2_bbt.json"))
    args = ap.parse_args()

    backend = LocalConfig(model=args.model).build()
    rows, runs = [], []
    for seed in args.seeds:
        for i, placement in enumerate(args.placements):  # the manual prompt has no tokens to place: score it once
            runs += run_seed(backend, args, seed, placement, with_manual=i == 0)
    for placement, method in dict.fromkeys((r["placement"], r["method"]) for r in runs):
        mine = [r for r in runs if (r["placement"], r["method"]) == (placement, method)]
        rows.append({"placement": placement, "method": method, **{f"{k} mean": statistics.mean(r[k] for r in mine) for k in ("dev_acc", "test_acc")},
                     "test std": statistics.pstdev(r["test_acc"] for r in mine), "calls": mine[0]["calls"],
                     "tuning s / seed": statistics.mean(r["wall_s"] for r in mine),
                     "total s / seed": statistics.mean(r["total_s"] for r in mine)})
    table = markdown_table(rows, ["placement", "method", "dev_acc mean", "test_acc mean", "test std", "calls",
                                  "tuning s / seed", "total s / seed"])
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": rows, "runs": runs, "machine": {
        "cpu_threads": torch.get_num_threads(), "platform": platform.platform()}}, indent=2))
    print(f"wrote {out}")


def run_seed(backend: Backend, args: argparse.Namespace, seed: int, placement: str, with_manual: bool) -> list[dict]:
    """Manual prompt and each BBT mode on one few-shot split. `wall_s` is the search (with its dev checks);
    `total_s` also counts the final test evaluations, i.e. what a user waits for."""
    task = TaskConfig(data=args.data, k=16, data_seed=seed, placement=placement, test_limit=args.test_limit).load()
    runs = []
    if with_manual:
        started = time.perf_counter()
        dev, test = (evaluate(backend, HardPrompt((), ""), split, task.format).accuracy for split in (task.dev, task.test))
        elapsed = time.perf_counter() - started
        runs.append({"seed": seed, "placement": "-", "method": "manual", "dev_acc": dev, "test_acc": test, "calls": 0,
                     "wall_s": elapsed, "total_s": elapsed})
    for mode in args.modes:
        cfg = TuneConfig(mode=mode, budget_calls=args.budget, prompt_tokens=args.prompt_tokens, seed=seed,
                         intrinsic_dim=args.intrinsic_dim, popsize=args.popsize, sigma0=args.sigma0)
        started = time.perf_counter()
        res = tune(task, backend, cfg, ROOT / "runs" / f"sst2-{placement}-{mode}-{seed}", progress=False)
        m, total = res.metrics, time.perf_counter() - started
        runs.append({"seed": seed, "placement": placement, "method": f"bbt_{mode}", "dev_acc": m["dev_acc"],
                     "test_acc": m["test_acc"], "calls": m["calls"], "wall_s": m["wall_s"], "total_s": total,
                     "initial_train_loss": m["initial_train_loss"], "best_train_loss": m["best_train_loss"],
                     "prompt": m["hard_prompt"]})
        if mode == "soft":
            runs.append({"seed": seed, "placement": placement, "method": "bbt_soft_discretized",
                         "dev_acc": m["hard_dev_acc"], "test_acc": m["hard_test_acc"], "calls": 0, "wall_s": 0.0,
                         "total_s": 0.0, "prompt": m["hard_prompt"]})
    for run in runs:
        print(json.dumps(run), flush=True)
    return runs


if __name__ == "__main__":
    main()
