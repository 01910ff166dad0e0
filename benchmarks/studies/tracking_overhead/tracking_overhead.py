"""What tracking costs a run: the same run (same seed, task, model, budget) with no tracker, with
MLflow (a local SQLite store) and with TensorBoard, interleaved so that other load on the machine hits each alike.

Two times per run: `loop_s`, the search loop (the run's own ``wall_s``: generations, checkpoints, the tracker
calls it queues), and `total_s`, the whole `run_tuner()` call including setup, the final scores and the wait for the
tracker to catch up at the end. A warm-up run of each kind comes first (the MLflow import and its store's tables
are made once per process and per store, not per run), then `--repeats` rounds. Overhead = best tracked / best
untracked - 1 (the best of N: on a shared machine other load only ever adds time).

On a loaded machine that difference is noise of several percent either way, so the time tracking takes on the
run's own thread is also timed directly: `hook_s`, every call of `LiveTracking` the tuner makes (queueing
params, curve rows, the result) and `close_s`, the wait at the end for the tracking thread to finish. Their sum
over the untracked run's best total is `direct_pct`: what tracking adds to a run's wall time, short of the
tracking thread's share of the CPU.

    python benchmarks/studies/tracking_overhead/tracking_overhead.py --model smollm2 --budget-calls 100 --repeats 3
"""
from __future__ import annotations

import argparse
import sys
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch


from bbtune.backends.local import LocalBackend
from bbtune.runs.tracking import LiveTracking
from bbtune.runs.tuner import TuneConfig, run_tuner
from bbtune.tasks import TaskConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/: the shared task_args
from task_args import add_task_args  # noqa: E402

KINDS = ("none", "mlflow", "tensorboard")
SPENT = {"hook_s": 0.0, "close_s": 0.0}  # seconds on the run's thread inside LiveTracking, this run


def timed(method, bucket: str):
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return method(*args, **kwargs)
        finally:
            SPENT[bucket] += time.perf_counter() - started
    return wrapper


for _name in ("begin", "curve", "result"):
    setattr(LiveTracking, _name, timed(getattr(LiveTracking, _name), "hook_s"))
LiveTracking.__exit__ = timed(LiveTracking.__exit__, "close_s")  # type: ignore[method-assign]
OUT = Path(__file__).resolve().parent / "tracking_overhead.json"


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_task_args(ap, test_limit=200)
    ap.add_argument("--budget-calls", type=int, default=100)
    ap.add_argument("--popsize", type=int, default=10)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: steady on shared cores)")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    seed = args.seeds[0]
    task = TaskConfig(data=args.data, preset=args.preset, k=args.k, test_limit=args.test_limit or 0,
                      data_seed=seed).load()
    backend = LocalBackend(args.model)
    config = dict(budget_calls=args.budget_calls, popsize=args.popsize, eval_every=args.budget_calls // 4, seed=seed)
    times: dict[str, list[dict[str, float]]] = {kind: [] for kind in KINDS}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.repeats + 1):  # round 0: the warm-up, not counted
            for kind in KINDS:
                SPENT.update(hook_s=0.0, close_s=0.0)
                started = time.perf_counter()
                result = run_tuner(task, backend, TuneConfig(**config, track=kind), Path(tmp) / f"{kind}-{round_}",
                              progress=False)
                total = time.perf_counter() - started
                if round_:
                    times[kind].append({"loop_s": result.metrics.wall_s, "total_s": round(total, 2),
                                        "hook_s": round(SPENT["hook_s"], 4), "close_s": round(SPENT["close_s"], 4),
                                        "test_acc": result.metrics.test_acc})
                print(f"round {round_} {kind:12s} loop {result.metrics.wall_s:7.2f} s  total {total:7.2f} s  "
                      f"hook {SPENT['hook_s']:.4f} s  close {SPENT['close_s']:.3f} s")
    report = summarize(times, vars(args))
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report["overhead_pct"], indent=2))
    return report


def summarize(times: dict[str, list[dict[str, float]]], setting: dict) -> dict:
    best = {kind: {what: min(r[what] for r in runs) for what in ("loop_s", "total_s")} for kind, runs in times.items()}
    median = {kind: {what: statistics.median(r[what] for r in runs) for what in ("loop_s", "total_s", "hook_s", "close_s")}
              for kind, runs in times.items()}
    overhead = {kind: {**{what: round(100 * (best[kind][what] / best["none"][what] - 1), 2) for what in ("loop_s", "total_s")},
                       "direct_pct": round(100 * (median[kind]["hook_s"] + median[kind]["close_s"]) / best["none"]["total_s"], 3)}
                for kind in KINDS if kind != "none"}
    same = all(r["test_acc"] == times["none"][i]["test_acc"] for runs in times.values() for i, r in enumerate(runs))
    return {"setting": {k: v for k, v in setting.items() if k != "out"},
            "machine": {"cpu": platform.machine(), "torch_threads": torch.get_num_threads(), "torch": torch.__version__},
            "runs": times, "best": best, "median": median, "overhead_pct": overhead, "same_results": same}


if __name__ == "__main__":
    main()
