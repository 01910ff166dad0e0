"""Generation tasks: the manual prompt vs BBT hard prompts tuned by each answer scoring, on bbtune's built-in
short-answer set (bbtune/data/answers: capitals, plurals, past tenses, opposites, sums), with SmolLM2.

    nice -n 10 python benchmarks/generation.py --budget 100 --seed 13

One few-shot split (k train and k dev questions, `--seed`), the whole test split (63 questions). For each scoring
(``reference``: the reference answers' log-likelihood; ``metric``: exact match of the greedy answer) one hard-mode
search (projection in the loop, p0 = the template's cue, so z = 0 is the manual prompt); ``--modes soft`` tunes
soft prompts instead (their rows show the nearest tokens as the prompt). Every row reports exact
match of the greedy answers on dev and test; the tuned rows are the tuned prompt's numbers even where the run
returned the manual prompt (``returned`` says which it did). Prints a table and writes JSON (default
benchmarks/results/generation.json), after every run.
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from bbtune.backends.factory import LocalConfig
from bbtune.core.table import markdown_table
from bbtune.runs.tuner import TuneConfig, run_tuner
from bbtune.tasks import TaskConfig

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = ["method", "dev {m}", "test {m}", "gain vs manual", "train loss start -> best", "returned", "calls", "s",
           "prompt"]


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--scorings", nargs="+", default=["reference", "metric"], choices=["reference", "metric"])
    ap.add_argument("--modes", nargs="+", default=["hard"], choices=["hard", "soft"],
                    help="hard (projection in the loop) and/or soft (local models only)")
    ap.add_argument("--metric", default="exact", help="answer metric (exact, f1, package.module:function)")
    ap.add_argument("--budget", type=int, default=100, help="model calls per search")
    ap.add_argument("--popsize", type=int, default=10)
    ap.add_argument("--k", type=int, default=16, help="questions in train and in dev")
    ap.add_argument("--seed", type=int, default=13, help="few-shot split and search seed")
    ap.add_argument("--test-limit", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "generation.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    backend = LocalConfig(model=args.model).build()
    task = TaskConfig(data="demo-answers", preset="answer", k=args.k, data_seed=args.seed,
                      test_limit=args.test_limit).load()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    for mode, scoring in [(mode, scoring) for mode in args.modes for scoring in args.scorings]:
        cfg = TuneConfig(mode=mode, answer_scoring=scoring, answer_metric=args.metric, budget_calls=args.budget,
                         popsize=args.popsize, eval_every=args.budget // 2, seed=args.seed)
        started = time.perf_counter()
        m = run_tuner(task, backend, cfg, progress=False).metrics.to_json()  # the metrics.json view
        runs.append({"mode": mode, "scoring": scoring, "total_s": round(time.perf_counter() - started, 1),
                     **{k: m[k] for k in ("answer_scores", "hard_prompt", "initial_train_loss", "best_train_loss",
                                          "calls", "eval_calls", "selected", "decision")}})
        if not rows:
            rows.append(_row(args.metric, "manual prompt (template's cue)", m["answer_scores"]["manual"], None, "", "",
                             0, None))
        rows.append(_row(args.metric, f"BBT {mode}, {scoring} scoring", m["answer_scores"]["tuned"],
                         m["answer_scores"]["manual"],
                         f"{m['initial_train_loss']:.3f} -> {m['best_train_loss']:.3f}", m["selected"], m["calls"],
                         runs[-1]["total_s"], m["answer_scores"]["tuned_prompt"]))
        out.write_text(json.dumps({"args": vars(args), "task": {"name": task.name, "n_train": len(task.train),
                                                                "n_dev": len(task.dev), "n_test": len(task.test)},
                                   "summary": rows, "runs": runs}, indent=2))
        print(json.dumps(runs[-1]), flush=True)
    print(markdown_table(rows, [c.format(m=_name(args.metric)) for c in COLUMNS]))
    print(f"wrote {out}")


def _name(metric: str) -> str:
    return metric.rsplit(":", 1)[-1]


def _row(metric: str, method: str, scores: dict[str, float], manual: dict[str, float] | None, losses: str,
         returned: str, calls: int, seconds: float | None, prompt: str | None = None) -> dict[str, Any]:
    gain = "" if manual is None else f"{100 * (scores['test'] - manual['test']):+.1f} pts"
    return {"method": method, f"dev {_name(metric)}": scores["dev"], f"test {_name(metric)}": scores["test"],
            "gain vs manual": gain,
            "train loss start -> best": losses, "returned": returned, "calls": calls, "s": seconds,
            "prompt": json.dumps(prompt) if prompt is not None else ""}


if __name__ == "__main__":
    main()
