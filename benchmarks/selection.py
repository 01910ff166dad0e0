"""Which selection rule generalizes? Evidence from held-out splits of the training pool, never the test set.

One BBT run per seed (and per calibration setting) evaluates its generation-best candidate on dev every
``--eval-every`` calls; each of those points is then scored on a held-out split drawn from the training pool
(disjoint from the few-shot train and dev). For each rule we report the held-out accuracy of the point it
would pick, and the manual prompt's, on the same split.

    python benchmarks/selection.py --seeds 13 42 100 --budget 300 --heldout 300
Prints a table and writes JSON (default benchmarks/results/selection_sst2.json). Data: ../shared/data/sst2.
"""
from __future__ import annotations

import argparse
import json
import statistics
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from task_args import ROOT, add_task_args
from bbtune.core.numbers import mean_std
from bbtune.backends.factory import LocalConfig
from bbtune.search.calibration import fit_label_bias
from bbtune.constants import CPU_BUDGET_CALLS
from bbtune.search.evaluate import Evaluation, evaluation, score_examples
from bbtune.core.table import markdown_table
from bbtune.tasks import Task, TaskConfig, load_examples, subsample
from bbtune.runs.tuner import TuneConfig, Tuner
from bbtune.search.selection import Decision, Guard, Selection, decide, mcnemar_p_value, selection_key

RULES = ("dev_acc", "dev_loss", "train_dev_loss", "train_loss", "last")


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_args(ap, test_limit=None)
    ap.add_argument("--budget", type=int, default=CPU_BUDGET_CALLS)
    ap.add_argument("--eval-every", type=int, default=30)
    ap.add_argument("--heldout", type=int, default=300, help="held-out sentences from the training pool")
    ap.add_argument("--calibrate", nargs="+", default=["on", "off"], choices=["on", "off"])
    ap.add_argument("--mode", default="soft", choices=["soft", "hard"])
    ap.add_argument("--alpha", type=float, default=0.0, help="step in embedding space, in embedding stds (0 = by p0)")
    ap.add_argument("--guard-alpha", type=float, default=0.1, help="level of the paired test scored post hoc")
    ap.add_argument("--p0", default="auto", choices=["auto", "vocab", "cue"])
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "selection_sst2.json"))
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                    help="no runs: merge earlier outputs, the paired guard's column recomputed by today's rule")
    args = ap.parse_args(argv)

    runs = [] if not args.merge else [rescored(r, args.guard_alpha) for path in args.merge
                                      for r in json.loads(Path(path).read_text())["runs"]]
    backend = LocalConfig(model=args.model).build() if not args.merge else None
    for seed in [] if args.merge else args.seeds:
        task = TaskConfig(data=args.data, preset=args.preset, k=args.k, data_seed=seed, test_limit=1).load()
        heldout = heldout_split(task, Path(args.data) / "train.jsonl", args.heldout, seed)
        for calibrate in args.calibrate:
            cfg = TuneConfig(mode=args.mode, budget_calls=args.budget, seed=seed, eval_every=args.eval_every,
                             calibrate=calibrate == "on", select=Selection.DEV_ACC, p0=args.p0, alpha=args.alpha)
            tuner = Tuner(task, backend, cfg, progress=False)
            tuner.run()
            runs.append({"p0": args.p0, "alpha": args.alpha, "model": args.model, "data": Path(args.data).name,
                         **score_rules(tuner, heldout, seed, calibrate, args.guard_alpha)})
            print(json.dumps(runs[-1]), flush=True)
    rows = []
    for group in dict.fromkeys((r.get("data", ""), r.get("model", ""), r["calibrate"]) for r in runs):
        mine = [r for r in runs if (r.get("data", ""), r.get("model", ""), r["calibrate"]) == group]
        for rule in ("manual", "manual_calibrated") + RULES + ("dev_acc+paired",):
            accs = [r["heldout_acc"][rule] for r in mine]
            rows.append({"data": group[0], "model": Path(group[1]).name, "calibrate": group[2], "rule": rule,
                         "held-out acc mean": statistics.mean(accs), "std": mean_std(accs)[1],
                         "per seed": " ".join(f"{a:.3f}" for a in accs)})
    print(markdown_table(rows, ["data", "model", "calibrate", "rule", "held-out acc mean", "std", "per seed"]))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": rows, "runs": runs}, indent=2))
    print(f"wrote {out}")


def rescored(run: dict[str, Any], alpha: float) -> dict[str, Any]:
    """An earlier run with its `dev_acc+paired` column decided again by today's guard (from the dev examples won
    and lost, which the run recorded)."""
    d = run["decision"]
    p = mcnemar_p_value(d["wins"], d["losses"])
    lost_by_key = d["reason"].startswith("the tuned prompt did not beat")
    keep = d["dev_acc_margin"] < 0 or p > alpha or lost_by_key
    acc = dict(run["heldout_acc"], **{"dev_acc+paired": run["heldout_acc"]["manual_calibrated" if keep
                                                                          else "dev_acc"]})
    return {**run, "heldout_acc": acc, "decision": {**d, "p_value": p, "replace": not keep}}


def heldout_split(task: Task, train_file: Path, size: int, seed: int) -> tuple:
    """`size` training-pool sentences that are in neither the few-shot train nor dev set."""
    used = {(e.text, e.label) for e in task.train + task.dev}
    pool = [e for e in load_examples(train_file) if (e.text, e.label) not in used]
    return subsample(pool, size, seed + 1)


def score_rules(tuner: Tuner, heldout: tuple, seed: int, calibrate: str, guard_alpha: float = 0.1) -> dict[str, Any]:
    """Held-out accuracy of the point each rule picks (a rule picks the lowest key among evaluated points), of
    the manual prompt, and of the run's result under the paired guard (`dev_acc+paired`: the dev_acc point where
    a paired test on dev says it beats the calibrated manual prompt, else the calibrated manual prompt)."""
    task = tuner.task_  # the task as the run tuned it (a cue start swaps the template)
    fmt, points = task.format, tuner.eval_points_
    labels = fmt.label_ids(heldout)
    n_train = len(task.train)

    def tuner_rule(rule: Selection) -> Callable[[dict[str, Any]], tuple[float, ...]]:  # the tuner's own keys
        return lambda p: selection_key(rule, p["train_ce"], n_train, Evaluation(p["dev_acc"], p["dev_loss"], p["dev_n"]))

    keys = {**{rule.value: tuner_rule(rule) for rule in Selection},
            "train_loss": lambda p: (p["train_ce"],), "last": lambda p: (-p["calls"],)}
    acc: dict[str, float] = {}
    cache: dict[int, float] = {}
    for rule, key in keys.items():
        i = min(range(len(points)), key=lambda j: key(points[j]))
        if i not in cache:
            prompt = tuner.prompt(points[i]["z"])
            cache[i] = evaluation(score_examples(tuner.backend, prompt, heldout, fmt), labels, points[i]["bias"]).accuracy
        acc[rule] = cache[i]
    train = score_examples(tuner.backend, tuner.manual_, task.train, fmt)  # the manual prompt on train, once
    bias = manual_bias(tuner, train[0])
    manual = score_examples(tuner.backend, tuner.manual_, heldout, fmt)
    acc["manual"] = evaluation(manual, labels).accuracy
    acc["manual_calibrated"] = evaluation(manual, labels, bias).accuracy
    decision = paired_decision(tuner, points, bias, train, guard_alpha)
    best = min(range(len(points)), key=lambda j: keys["dev_acc"](points[j]))
    acc["dev_acc+paired"] = cache[best] if decision.replace else acc["manual_calibrated"]
    return {"seed": seed, "calibrate": calibrate, "heldout_acc": acc, "n_points": len(points),
            "decision": asdict(decision),
            "points": [{k: v for k, v in p.items() if k not in ("z", "bias", "dev_eval")} for p in points]}


def paired_decision(tuner: Tuner, points: list[dict[str, Any]], bias: np.ndarray | None, train: np.ndarray,
                    alpha: float) -> Decision:
    """The run's decision had it used `--guard paired`: its dev_acc point against the calibrated manual prompt."""
    task = tuner.task_
    n_train = len(task.train)
    dev_labels = task.format.label_ids(task.dev)
    manual_dev = evaluation(score_examples(tuner.backend, tuner.manual_, task.dev, task.format), dev_labels, bias)
    manual_key = selection_key(Selection.DEV_ACC, evaluation(train, tuner.train_labels_, bias).loss, n_train, manual_dev)
    best = min(points, key=lambda p: selection_key(Selection.DEV_ACC, p["train_ce"], n_train, p["dev_eval"]))
    best_key = selection_key(Selection.DEV_ACC, best["train_ce"], n_train, best["dev_eval"])
    return decide(best["dev_eval"], manual_dev, best_key < manual_key, Guard.PAIRED, alpha, tuner.config.seed)


def manual_bias(tuner: Tuner, train_scores: np.ndarray) -> np.ndarray | None:
    """The manual prompt's bias as the run fitted it, from its (B, L) scores on the run's own train task
    (`tuner.task_`: with a cue start the template lost its cue, which the manual prompt then is); None when the
    run does not calibrate."""
    if not tuner.config.calibrate:
        return None
    return fit_label_bias(train_scores, tuner.train_labels_)


if __name__ == "__main__":
    main()
