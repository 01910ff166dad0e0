"""Does choosing label words on the few-shot train set help on test? (the verbalizer lever)

Per seed: the preset's candidate words (`bbtune.search.verbalizers.PRESET_CANDIDATES`) are scored once on train, dev
and test with the template alone (one wide score call per split). Every method's bias is fitted on train;
reported is calibrated accuracy for
  preset           the preset's own verbalizer
  train_best       the pair ranked first on train (`rank_verbalizers`)
  dev_best_top5    of the top 5 on train, the one best on dev (accuracy, then CE)
  ensemble         logsumexp of all kept words per label
  all_pairs_mean   the mean over every pair of kept words (what a random choice of words would give)

    python benchmarks/studies/verbalizers/verbalizers.py --seeds 13 42 100
Prints Markdown tables and writes JSON (default: verbalizers_sst2.json beside this script). Data: ../shared/data/sst2.
"""
from __future__ import annotations

import argparse
import sys
import itertools
import json
import statistics
import time
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from bbtune.backends.base import Backend
from bbtune.backends.factory import LocalConfig
from bbtune.search.calibration import fit_label_bias
from bbtune.search.evaluate import Evaluation, evaluation
from bbtune.core.table import markdown_table
from bbtune.tasks import TaskConfig
from bbtune.core.prompts import MANUAL_PROMPT
from bbtune.search.verbalizers import DEFAULT_PER_LABEL, PRESET_CANDIDATES, CandidateScores, candidate_scores, rank_verbalizers

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # benchmarks/: the shared task_args
from task_args import add_task_args  # noqa: E402

METHODS = ("preset", "train_best", "dev_best_top5", "ensemble", "all_pairs_mean")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_args(ap)
    ap.add_argument("--per-label", type=int, default=DEFAULT_PER_LABEL, help="words per label ranked (0 = all)")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "verbalizers_sst2.json"))
    args = ap.parse_args(argv)

    backend = LocalConfig(model=args.model).build()
    runs = [run_seed(backend, args, seed) for seed in args.seeds]
    rows = [{"seed": r["seed"], "method": m, **r["methods"][m]} for r in runs for m in METHODS]
    print(markdown_table(rows, ["seed", "method", "words", "train_acc", "dev_acc", "test_acc"]))
    summary = [{"method": m, "test acc mean": statistics.mean(r["methods"][m]["test_acc"] for r in runs),
                "per seed": " ".join(f"{r['methods'][m]['test_acc']:.3f}" for r in runs)} for m in METHODS]
    print()
    print(markdown_table(summary, ["method", "test acc mean", "per seed"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": summary, "runs": runs}, indent=2))
    print(f"wrote {out}")


def run_seed(backend: Backend, args: argparse.Namespace, seed: int) -> dict[str, Any]:
    task = TaskConfig(data=args.data, preset=args.preset, k=args.k, data_seed=seed, test_limit=args.test_limit).load()
    fmt, start = task.format, time.perf_counter()
    train = candidate_scores(backend, MANUAL_PROMPT, task.train, fmt, PRESET_CANDIDATES[args.preset])
    splits = {"train": train, **{name: candidate_scores(backend, MANUAL_PROMPT, getattr(task, name), fmt, train.kept)
                                 for name in ("dev", "test")}}
    gold = {name: fmt.label_ids(getattr(task, name)) for name in splits}
    ranked = rank_verbalizers(train, gold["train"], per_label=args.per_label or None)
    evals = lambda v: calibrated(splits, gold, v)  # noqa: E731
    top5 = [(r.verbalizer, evals(r.verbalizer)) for r in ranked[:5]]
    dev_pick = min(top5, key=lambda t: (-t[1]["dev"].accuracy, t[1]["dev"].loss))[0]
    every_pair = [dict(zip(train.labels, c)) for c in itertools.product(*train.kept.values())]
    methods = {
        "preset": describe(fmt.verbalizer, evals(fmt.verbalizer)),
        "train_best": describe(ranked[0].verbalizer, evals(ranked[0].verbalizer)),
        "dev_best_top5": describe(dev_pick, evals(dev_pick)),
        "ensemble": describe(None, calibrated(splits, gold, None)),
        "all_pairs_mean": mean_of([evals(v) for v in every_pair], f"{len(every_pair)} pairs"),
    }
    print(f"seed {seed}: {len(train.words)} words kept, skipped {train.skipped}, "
          f"{time.perf_counter() - start:.0f} s", flush=True)
    return {"seed": seed, "n": {name: len(g) for name, g in gold.items()}, "kept": train.kept,
            "skipped": train.skipped, "methods": methods,
            "train_ranking": [{"words": words(r.verbalizer), "train_acc": r.accuracy, "train_ce": r.loss}
                              for r in ranked[:10]]}


def calibrated(splits: Mapping[str, CandidateScores], gold: Mapping[str, np.ndarray],
               verbalizer: Mapping[str, str] | None) -> dict[str, Evaluation]:
    """Each split's calibrated accuracy and CE for one verbalizer (None: the all-word ensemble), bias fitted on train."""
    scores = {name: s.ensemble() if verbalizer is None else s.columns(verbalizer) for name, s in splits.items()}
    bias = fit_label_bias(scores["train"], gold["train"])
    return {name: evaluation(s[None], gold[name], bias) for name, s in scores.items()}


def describe(verbalizer: Mapping[str, str] | None, ev: Mapping[str, Evaluation]) -> dict[str, Any]:
    return {"words": words(verbalizer) if verbalizer else "all kept", **{f"{n}_acc": e.accuracy for n, e in ev.items()},
            **{f"{n}_ce": e.loss for n, e in ev.items()}}


def mean_of(evals: Sequence[Mapping[str, Evaluation]], label: str) -> dict[str, Any]:
    return {"words": label, **{f"{n}_acc": statistics.mean(e[n].accuracy for e in evals) for n in evals[0]},
            **{f"{n}_ce": statistics.mean(e[n].loss for e in evals) for n in evals[0]}}


def words(verbalizer: Mapping[str, str]) -> str:
    return "/".join(repr(w) for w in verbalizer.values())


if __name__ == "__main__":
    main()
