"""Wall time of the same small sweep on a process pool of 1 and of 2 workers, on the tiny model and on
SmolLM2: 4 jobs of BBT soft (seeds 13, 42, 100, 7) on the built-in demo data.

    python benchmarks/studies/sweep_scaling/sweep_scaling.py         # tiny and smollm2, 1 and 2 workers
    python benchmarks/studies/sweep_scaling/sweep_scaling.py --models tiny --budget 60

Each worker gets cores // workers torch threads (the sweep's default), so both rows use the whole machine: the
ratio shows what running jobs side by side gains over one job using every core. Prints a table and writes
sweep_scaling.json beside this script. Every sweep runs into a fresh temporary folder (nothing is skipped).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

from bbtune.app.executors import cores
from bbtune.app.sweep import run_sweep
from bbtune.app.sweepspec import SweepSpec
from bbtune.core.table import markdown_table



def spec(model: str, workers: int, out: Path, budget: int, seeds: list[int], k: int, test_limit: int) -> SweepSpec:
    return SweepSpec.from_dict({
        "sweep": {"out": str(out), "workers": workers, "retries": 0},
        "grid": {"methods": ["bbt_soft"], "seeds": seeds, "models": [model],
                 "tasks": [{"name": "demo", "data": "demo", "k": k, "test_limit": test_limit}]},
        "settings": {"budget_calls": budget, "popsize": 10, "eval_every": max(10, budget // 2)}}, name="scaling")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["tiny", "smollm2"])
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--budget", type=int, default=60, help="BBT calls per job")
    ap.add_argument("--seeds", type=int, nargs="+", default=[13, 42, 100, 7], help="one job per seed")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--test-limit", type=int, default=64)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "sweep_scaling.json"))
    args = ap.parse_args(argv)
    rows = []
    for model in args.models:
        base = None
        for workers in args.workers:
            load = os.getloadavg()[0]
            with tempfile.TemporaryDirectory() as tmp:
                started = time.perf_counter()
                result = run_sweep(spec(model, workers, Path(tmp) / "sweep", args.budget, args.seeds, args.k,
                                        args.test_limit), progress=False)
                wall = time.perf_counter() - started
                job_s = sum(r.cost.wall_s for r in result.comparison.results)
            assert not result.failed, result.failed
            base = base or wall
            rows.append({"model": model, "workers": workers, "threads/worker": max(1, cores() // workers),
                         "jobs": len(result.jobs), "wall s": round(wall, 1), "sum of job s": round(job_s, 1),
                         "speed-up": round(base / wall, 2), "load avg before": round(load, 2)})
            print(rows[-1], flush=True)
    print(markdown_table(rows, list(rows[0])))
    Path(args.out).write_text(json.dumps({
        "rows": rows, "budget_calls": args.budget, "seeds": args.seeds, "k": args.k, "test_limit": args.test_limit,
        "cores": cores(), "machine": platform.platform(), "python": platform.python_version(),
        "note": "the machine was shared with other work while this ran: wall times are noisy (see load avg)"},
        indent=2) + "\n")
    print(f"\nwritten {args.out}")


if __name__ == "__main__":
    main()
