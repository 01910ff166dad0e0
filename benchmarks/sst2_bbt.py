"""BBT on SST-2 16-shot with SmolLM2: manual prompt vs BBT soft vs its nearest tokens vs BBT hard (in the loop),
each with its gain over the manual prompt per seed, and the goal check (the SST-2 and AG News targets).

    python benchmarks/sst2_bbt.py --seeds 13 42 100 --budget 300
    python benchmarks/sst2_bbt.py --placements suffix prefix --modes soft --out benchmarks/results/placement_sst2.json
    python benchmarks/agnews_bbt.py           # the AG News twin (same script, topic preset)
    for s in 13 42 100; do OMP_NUM_THREADS=1 python benchmarks/sst2_bbt.py --seeds $s --out s$s.json & done; wait
    python benchmarks/sst2_bbt.py --merge s13.json s42.json s100.json   # one process per seed: 2 cores, ~2x faster
    bbtune sweep benchmarks/specs/sst2_bbt.toml   # instead of the loop and --merge: the same grid as sweep jobs
                                                  # (agnews: benchmarks/specs/agnews_bbt.toml); --resume, one report
Prints a table and writes JSON (default benchmarks/results/sst2_bbt.json). Data: ../shared/data/sst2 (never copied).
Every tuned run scores the manual prompt beside itself (same split, same scores for the raw and calibrated rows).
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
from task_args import ROOT, add_task_args

from bbtune.core.numbers import mean_std
from bbtune.backends.base import Backend
from bbtune.backends.factory import LocalConfig
from bbtune.constants import CPU_BUDGET_CALLS, CPU_INTRINSIC_DIM, CPU_POPSIZE
from bbtune.core.table import markdown_table
from bbtune.tasks import TaskConfig
from bbtune.runs.tuner import TuneConfig, run_tuner


GOALS = {"sst2": {"bbt_soft": 85.0, "bbt_hard": 82.0, "gain": 4.0}, "agnews": {"gain": 5.0}}


def main(argv: list[str] | None = None, data: str = "sst2", preset: str = "sentiment") -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_args(ap, data, preset)
    ap.add_argument("--alpha", type=float, default=0.15, help="step in embedding space, in embedding stds")
    ap.add_argument("--p0", default="cue", choices=["vocab", "cue", "zeros"])
    ap.add_argument("--calibrate", default="on", choices=["on", "off"])
    ap.add_argument("--select", default="dev_acc", choices=["dev_acc", "dev_loss", "train_dev_loss"])
    ap.add_argument("--modes", nargs="+", default=["soft", "hard"], choices=["soft", "hard"])
    ap.add_argument("--budget", type=int, default=CPU_BUDGET_CALLS)
    ap.add_argument("--prompt-tokens", type=int, default=0, help="0 = the cue's length from the cue, else 5")
    ap.add_argument("--intrinsic-dim", type=int, default=CPU_INTRINSIC_DIM)
    ap.add_argument("--popsize", type=int, default=CPU_POPSIZE)
    ap.add_argument("--sigma0", type=float, default=1.0)
    ap.add_argument("--loss", default="ce", choices=["ce", "hinge", "neg_acc"])
    ap.add_argument("--placements", nargs="+", default=["suffix"], choices=["prefix", "suffix"],
                    help="where the prompt sits; several compare placements on the same seeds and settings")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / f"{data}_bbt.json"))
    ap.add_argument("--reference", default="", metavar="JSON",
                    help="an earlier output (e.g. the default preset's) whose manual prompt is a second baseline: "
                         "its per-seed test accuracy is checked against the goal's gain too")
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                    help="no runs: merge the runs of earlier outputs (e.g. one process per seed) into one table")
    args = ap.parse_args(argv)

    rows, runs = [], []
    if args.merge:
        runs = [run for path in args.merge for run in json.loads(Path(path).read_text())["runs"]]
    else:
        backend = LocalConfig(model=args.model).build()
        for seed in args.seeds:
            for i, placement in enumerate(args.placements):  # the manual prompt has no tokens to place: report it once
                runs += run_seed(backend, args, seed, placement, with_manual=i == 0)
    for placement, method in dict.fromkeys((r["placement"], r["method"]) for r in runs):
        mine = [r for r in runs if (r["placement"], r["method"]) == (placement, method)]
        rows.append({"placement": placement, "method": method, **{f"{k} mean": 100 * statistics.mean(r[k] for r in mine) for k in ("dev_acc", "test_acc")},
                     "test std": 100 * (mean_std(r["test_acc"] for r in mine)[1] or 0.0),
                     "gain per seed": " ".join(f"{100 * r['gain']:+.1f}" for r in mine), "calls": mine[0]["calls"],
                     "tuning s / seed": statistics.mean(r["wall_s"] for r in mine),
                     "total s / seed": statistics.mean(r["total_s"] for r in mine)})
    table = markdown_table(rows, ["placement", "method", "dev_acc mean", "test_acc mean", "test std", "gain per seed",
                                  "calls", "tuning s / seed", "total s / seed"])
    print(table)
    goal = goal_check(runs, GOALS.get(data, {}))
    if args.reference:
        earlier = json.loads(Path(args.reference).read_text())
        reference = {r["seed"]: r["test_acc"] for r in earlier["runs"] if r["method"] == "manual"}
        goal |= goal_check(runs, GOALS.get(data, {}), reference, f"the {earlier['args']['preset']!r} manual prompt")
    print("\n".join(f"goal {name}: {'met' if ok else 'NOT met'} ({detail})" for name, (ok, detail) in goal.items()))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": rows, "goal": goal, "runs": runs, "machine": {
        "cpu_threads": torch.get_num_threads(), "platform": platform.platform()}}, indent=2))
    print(f"wrote {out}")


def goal_check(runs: list[dict], goals: dict[str, float], reference: dict[int, float] | None = None,
               baseline: str = "manual") -> dict[str, tuple[bool, str]]:
    """The goal table's targets: mean test accuracy per method, and a gain over the manual prompt on every seed; with
    `reference` (seed -> test accuracy of another manual prompt on the same split) the gain over that one."""
    out = {}
    for method in ("bbt_soft", "bbt_hard"):
        mine = [r for r in runs if r["method"] == method]
        if not mine:
            continue
        mean = 100 * statistics.mean(r["test_acc"] for r in mine)
        if method in goals and reference is None:
            out[f"{method} >= {goals[method]}"] = (mean >= goals[method], f"mean {mean:.1f}")
        gains = [100 * (r["test_acc"] - reference[r["seed"]] if reference else r["gain"]) for r in mine]
        out[f"{method} >= {baseline} + {goals['gain']} on every seed"] = (min(gains) >= goals["gain"],
                                                                      "gains " + ", ".join(f"{g:+.1f}" for g in gains))
    return out


def run_seed(backend: Backend, args: argparse.Namespace, seed: int, placement: str, with_manual: bool) -> list[dict]:
    """Manual prompt and each BBT mode on one few-shot split. `wall_s` is the search (with its dev checks);
    `total_s` also counts the final test evaluations, i.e. what a user waits for."""
    task = TaskConfig(data=args.data, preset=args.preset, k=args.k, data_seed=seed, placement=placement,
                      test_limit=args.test_limit).load()
    runs = []
    p0 = args.p0 if placement == "suffix" else "vocab"  # the cue start needs the prompt where the cue is
    for i, mode in enumerate(args.modes):
        cfg = TuneConfig(mode=mode, budget_calls=args.budget, prompt_tokens=args.prompt_tokens, seed=seed,
                         intrinsic_dim=args.intrinsic_dim, popsize=args.popsize, sigma0=args.sigma0, p0=p0, alpha=args.alpha,
                         loss=args.loss, calibrate=args.calibrate == "on", select=args.select)
        started = time.perf_counter()
        res = run_tuner(task, backend, cfg, ROOT / "runs" / (f"{Path(args.data).name}-{args.preset}-{placement}-{mode}-{seed}"
                                                   f"-d{args.intrinsic_dim}-pop{args.popsize}-a{args.alpha}-b{args.budget}"
                                                   + ("" if args.loss == "ce" else f"-{args.loss}")), progress=False)
        m, total = res.metrics.to_json(), time.perf_counter() - started  # the metrics.json view: rows by key
        manual = m["manual_test_acc"]
        if with_manual and i == 0:
            runs.append({"seed": seed, "placement": "-", "method": "manual", "dev_acc": m["manual_dev_acc"],
                         "test_acc": manual, "gain": 0.0, "calls": 0, "wall_s": 0.0, "total_s": 0.0})
            if "manual_calibrated_test_acc" in m:
                runs.append({"seed": seed, "placement": "-", "method": "manual_calibrated",
                             "dev_acc": m["manual_calibrated_dev_acc"], "test_acc": m["manual_calibrated_test_acc"],
                             "gain": m["manual_calibrated_test_acc"] - manual, "calls": 0, "wall_s": 0.0, "total_s": 0.0})
        runs.append({"seed": seed, "placement": placement, "method": f"bbt_{mode}", "dev_acc": m["dev_acc"],
                     "test_acc": m["test_acc"], "gain": m["test_acc"] - manual, "calls": m["calls"], "wall_s": m["wall_s"],
                     "total_s": total, "selected": m["selected"], "initial_train_loss": m["initial_train_loss"],
                     "best_train_loss": m["best_train_loss"], "stop_reasons": m["stop_reasons"], "prompt": m["hard_prompt"]})
        if mode == "soft":
            runs.append({"seed": seed, "placement": placement, "method": "bbt_soft_discretized",
                         "dev_acc": m["hard_dev_acc"], "test_acc": m["hard_test_acc"], "gain": m["hard_test_acc"] - manual,
                         "calls": 0, "wall_s": 0.0, "total_s": 0.0, "prompt": m["discretized_prompt"]})
    for run in runs:
        print(json.dumps(run), flush=True)
    return runs


if __name__ == "__main__":
    main()
