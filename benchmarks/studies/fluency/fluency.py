"""Readable hard prompts on SST-2 16-shot with SmolLM2: accuracy vs prompt perplexity, per vocabulary and fluency.

    nice -n 10 python benchmarks/studies/fluency/fluency.py --seeds 13 42 100 --budget 200 --test-limit 300

Methods (all BBT hard mode, projection in the loop, preset ``sentiment``): ``printable`` (unconstrained: any
printable token), ``words`` (alphabetic tokens, today's default), ``common`` (frequent whole words), ``fluent``
(common words + the ``--fluency`` term, starting from an instruction, ``--instruction``). Each tuned prompt's test accuracy, its gain over the manual prompt (the
template alone) and its perplexity under the model (read as the start of a document) are reported; the returned
prompt is always the tuned one (``keep_manual=False``), so the table measures the search, not the fallback.
Prints a table and writes JSON (default: beside this script). Data: ../shared/data/sst2 (never copied).
"""
from __future__ import annotations

import argparse
import sys
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from bbtune.backends.base import Backend
from bbtune.backends.factory import LocalConfig
from bbtune.search.fluency import TextScorer, perplexity, text_scorer
from bbtune.core.table import markdown_table
from bbtune.tasks import TaskConfig
from bbtune.runs.tuner import TuneConfig, run_tuner

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/: the shared task_args
from task_args import add_task_args  # noqa: E402

# method -> (vocab filter, fluency weight (None: --fluency), start from --instruction)
METHODS = {"printable": ("printable", 0.0, False), "words": ("words", 0.0, False), "common": ("common", 0.0, False),
           "fluent": ("common", None, True)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_args(ap, test_limit=300)
    ap.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    ap.add_argument("--fluency", type=float, default=0.05, help="weight of the fluency term for the 'fluent' method")
    ap.add_argument("--instruction", default=" how does the writer feel",
                    help="the 'fluent' search starts here (p0): words of the common vocabulary, --prompt-tokens of them")
    ap.add_argument("--budget", type=int, default=200)
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "fluency.json"))
    args = ap.parse_args()

    backend = LocalConfig(model=args.model).build()
    scorer = text_scorer(backend)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    runs: list[dict[str, Any]] = []
    for seed in args.seeds:
        for method in args.methods:  # written after every run: a slow machine still leaves the finished ones
            runs.append(run_one(backend, scorer, args, seed, method))
            rows = summarize(runs)
            out.write_text(json.dumps({"args": vars(args), "summary": rows, "runs": runs}, indent=2))
    print(markdown_table(rows, ["method", "test_acc mean", "manual test_acc", "gain mean", "share of printable gain",
                                "ppl median", "ppl geomean", "s / seed"]))
    print(f"wrote {out}")


def run_one(backend: Backend, scorer: TextScorer, args: argparse.Namespace, seed: int, method: str) -> dict[str, Any]:
    """One hard search on one few-shot split; the prompt's perplexity is read by `scorer` (the same model)."""
    vocab_filter, weight, instructed = METHODS[method]
    task = TaskConfig(data=args.data, preset=args.preset, k=args.k, data_seed=seed, test_limit=args.test_limit).load()
    start = {"p0": "text", "p0_text": args.instruction} if instructed else {}
    cfg = TuneConfig(mode="hard", budget_calls=args.budget, seed=seed, vocab_filter=vocab_filter,
                     fluency=args.fluency if weight is None else weight, keep_manual=False, **start)
    started = time.perf_counter()
    m = run_tuner(task, backend, cfg, progress=False).metrics.to_json()  # the metrics.json view
    run = {"seed": seed, "method": method, "prompt": m["hard_prompt"], "perplexity": perplexity(scorer, m["hard_prompt"]),
           "test_acc": m["test_acc"], "manual_test_acc": m["manual_test_acc"], "gain": m["gain_over_manual"],
           "dev_acc": m["dev_acc"], "calls": m["calls"], "total_s": time.perf_counter() - started}
    print(json.dumps(run), flush=True)
    return run


def summarize(runs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per method: means over seeds, perplexity median and geometric mean, and the share of the unconstrained
    (printable) search's mean gain over the manual prompt that the method keeps."""
    rows = []
    for method in dict.fromkeys(r["method"] for r in runs):
        mine = [r for r in runs if r["method"] == method]
        rows.append({"method": method, "test_acc mean": statistics.mean(r["test_acc"] for r in mine),
                     "manual test_acc": statistics.mean(r["manual_test_acc"] for r in mine),
                     "gain mean": statistics.mean(r["gain"] for r in mine),
                     "ppl median": statistics.median(r["perplexity"] for r in mine),
                     "ppl geomean": math.exp(statistics.mean(math.log(r["perplexity"]) for r in mine)),
                     "s / seed": statistics.mean(r["total_s"] for r in mine)})
    base = next((r["gain mean"] for r in rows if r["method"] == "printable"), None)
    for row in rows:
        row["share of printable gain"] = row["gain mean"] / base if base else float("nan")
    return rows


if __name__ == "__main__":
    main()
