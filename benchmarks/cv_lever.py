"""Lever: two-fold cross-validation over the pooled 64 few-shot examples. Evidence from held-out pool examples;
test is scored for the matrix, never to choose.

A run tunes on its 32 train examples and decides on its 32 dev examples whether the tuned prompt replaces the
calibrated manual prompt: a gain of one or two dev examples decides, and the calibration bias is fitted on 32
examples. This lever runs the same search twice, the second time with train and dev swapped (same seed, so the
same subspace), which gives

- an out-of-fold comparison on all 64 examples: each example scored by the pick of the search that did not train
  on it, against the calibrated manual prompt fitted without it (twice the evidence for the guard);
- a calibration bias fitted on all 64 examples for whatever is returned;
- a second pick, and the mean of the two picks' points.

Each pick was chosen among its search's points on the fold it is scored on out of fold (7 points at the
defaults): that comparison is as optimistic as the default's own decision on dev, but on twice the examples.

Rules scored on the held-out pool examples (the same 200 as `selection.py`'s study for a seed):

    default        fold A's dev_acc pick behind the agree guard on its 32 dev examples, else the calibrated manual
                   prompt: what `bbtune tune` returns today (a check against the study's numbers)
    default_b64    the same decision, the returned prompt's bias refitted on all 64 examples
    cv_agree       fold A's pick where the agree guard passes on the 64 out-of-fold examples
    cv_paired      ... where a McNemar test passes on them
    cv_agree_b64   cv_agree, bias on 64 (the manual prompt too)
    cv_best_b64    the fold pick with the better out-of-fold accuracy, bias on 64, behind the out-of-fold agree guard
    cv_mean_b64    the mean of the two picks' points, bias on 64, behind the out-of-fold agree guard
    demos          2 demonstrations per class from A's train, prefix placement, bias on A's train (the matrix's
                   in_context_train row)
    default|demos  the demonstrations where their dev accuracy is higher and their dev CE no higher than the
                   default's answer (`demos_lever.py`'s rule, from means)
    default|demos_agree  ... where they pass the agree guard against it, example by example on dev (the test
                   `demos_lever.py` could not run: it needs both per-example dev scores)

The CV rules cost a second search (twice the calls of a run); the demonstrations cost no search.

    python benchmarks/cv_lever.py --data ../shared/data/sst2 --model smollm2 --seeds 13 42 100 --heldout 200 \
        --out benchmarks/results/cv_lever/sst2_smollm2.json
    python benchmarks/cv_lever.py --merge benchmarks/results/cv_lever/*.json --out benchmarks/results/cv_lever.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from demos_lever import demonstrations
from selection import GUARD_ALPHA, Pick, rule_picks, study_splits, summary, write
from task_args import ROOT, add_task_args
from bbtune.backends.factory import LocalConfig
from bbtune.core.prompts import Prompt
from bbtune.constants import CPU_BUDGET_CALLS
from bbtune.core.table import markdown_table
from bbtune.search.calibration import apply_bias, fit_label_bias
from bbtune.search.evaluate import Evaluation, evaluation, score_examples
from bbtune.search.selection import Guard, Selection, decide, selection_key
from bbtune.tasks import Task, TaskFormat
from bbtune.runs.tuner import TuneConfig, Tuner

DEFAULT = "default"


@dataclasses.dataclass
class Candidate:
    """What a rule may return: one of the scored prompts (by name) and its calibration bias."""

    prompt: str
    bias: np.ndarray | None


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_args(ap, test_limit=-1)
    ap.add_argument("--budget", type=int, default=CPU_BUDGET_CALLS, help="calls per fold's search")
    ap.add_argument("--heldout", type=int, default=200, help="held-out examples from the training pool")
    ap.add_argument("--guard-alpha", type=float, default=GUARD_ALPHA)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "cv_lever.json"))
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSON", help="no runs: the tables over earlier outputs")
    args = ap.parse_args(argv)
    runs = [r for path in args.merge for r in json.loads(Path(path).read_text())["runs"]]
    backend = None if args.merge else LocalConfig(model=args.model).build()
    for seed in [] if args.merge else args.seeds:
        task, heldout, test = study_splits(args, seed)
        started = time.perf_counter()
        folds = [Tuner(fold_task, backend, TuneConfig(budget_calls=args.budget, seed=seed), progress=False)
                 for fold_task in (task, dataclasses.replace(task, train=task.dev, dev=task.train))]
        results = [t.run() for t in folds]
        default_replaces = results[0].metrics.decision.replace  # fold A's search is today's run
        if folds[0].subspace_.fingerprint() != folds[1].subspace_.fingerprint():
            raise RuntimeError("the two folds searched different subspaces: their points cannot be averaged")
        record = cv_record(task, folds, default_replaces, heldout, test, args.guard_alpha, seed)
        runs.append({"model": args.model, "data": Path(args.data).name, "wall_s": round(time.perf_counter() - started, 1),
                     **record})
        print(json.dumps(runs[-1]["heldout_acc"]), flush=True)
        write(Path(args.out), args, runs)  # after every seed: a killed study keeps what it finished
    if args.merge:
        write(Path(args.out), args, runs)
        print_test_table(runs)


def print_test_table(runs: list[dict[str, Any]]) -> None:
    """The same table on the test sets, for the matrix and the README (recorded, never chosen on)."""
    scored = [{**r, "heldout_acc": r["test_acc"]} for r in runs if "test_acc" in r]
    if scored:
        _, overall = summary(scored)
        tasks = list(dict.fromkeys(r.get("data", "") for r in scored))
        print("test accuracy (the held-out columns' names; never used to choose):")
        print(markdown_table(overall, ["rule", "runs", "held-out acc", "gain over calibrated", *tasks,
                                       "worst vs better baseline", "below better baseline - 1", "per seed"]))


def cv_record(task: Task, folds: list[Tuner], default_replaces: bool, heldout: tuple, test: tuple, alpha: float,
              seed: int) -> dict[str, Any]:
    """Decisions, candidates and their held-out (and test) accuracy for one seed's two fold searches
    (`default_replaces`: fold A's run returned its tuned prompt, as `bbtune tune` would)."""
    a = folds[0]
    fmt, backend = a.task_.format, a.backend
    pooled = a.task_.train + a.task_.dev  # fold A's order: A's train, then A's dev (= B's train)
    labels = fmt.label_ids(pooled)
    n = len(a.task_.train)
    picks: list[Pick] = [rule_picks(t)["dev_acc"] for t in folds]
    z_mean = (picks[0].z + picks[1].z) / 2
    demos, demos_task = demonstrations(task, backend, seed)  # as the matrix's in_context_train row
    prompts: dict[str, tuple[Prompt, TaskFormat]] = {
        "manual": (a.manual_, fmt), "pick_a": (a.prompt(picks[0].z), fmt), "pick_b": (a.prompt(picks[1].z), fmt),
        "mean": (a.prompt(z_mean), fmt), "demos": (demos, demos_task.format)}
    scores = {name: score_examples(backend, prompt, pooled, f) for name, (prompt, f) in prompts.items()}

    def fold_bias(name: str) -> tuple[np.ndarray, np.ndarray]:
        """Biases fitted on A's 32 and on B's 32 examples."""
        s = scores[name][0]
        return fit_label_bias(s[:n], labels[:n]), fit_label_bias(s[n:], labels[n:])

    def out_of_fold(on_a: tuple[str, np.ndarray | None], on_b: tuple[str, np.ndarray | None]) -> Evaluation:
        """All 64 examples, A's scored by one (prompt, bias) and B's by another, neither fitted on them."""
        return evaluation(np.concatenate([apply_bias(scores[on_a[0]][:, :n], on_a[1]),
                                          apply_bias(scores[on_b[0]][:, n:], on_b[1])], axis=1), labels)

    def bias64(name: str) -> np.ndarray:
        return fit_label_bias(scores[name][0], labels)

    def on_dev(name: str, bias: np.ndarray | None) -> Evaluation:
        """A prompt on fold A's dev examples (B's), per example."""
        return evaluation(scores[name][:, n:], labels[n:], bias)

    manual_bias_a, manual_bias_b = fold_bias("manual")
    manual_oof = out_of_fold(("manual", manual_bias_b), ("manual", manual_bias_a))
    tuned_oof = out_of_fold(("pick_b", picks[1].bias), ("pick_a", picks[0].bias))  # each pick on the fold it left
    cv_won = dev_acc_key(tuned_oof) < dev_acc_key(manual_oof)
    cv = {g.value: decide(tuned_oof, manual_oof, cv_won, g, alpha, seed) for g in (Guard.AGREE, Guard.PAIRED)}
    oof_acc = {"pick_a": np.mean(tuned_oof.example_correct[n:]), "pick_b": np.mean(tuned_oof.example_correct[:n])}
    best = "pick_a" if oof_acc["pick_a"] >= oof_acc["pick_b"] else "pick_b"
    # the demonstrations against what the run returns, example by example on dev (both calibrated on A's train)
    demos_bias = fold_bias("demos")[0]
    answer_dev = on_dev("pick_a", picks[0].bias) if default_replaces else on_dev("manual", manual_bias_a)
    demos_dev = on_dev("demos", demos_bias)
    demos_decision = decide(demos_dev, answer_dev, dev_acc_key(demos_dev) < dev_acc_key(answer_dev), Guard.AGREE,
                            alpha, seed)
    demos_by_margins = demos_dev.accuracy > answer_dev.accuracy and demos_dev.loss <= answer_dev.loss

    candidates = {  # name: (prompt, bias)
        "manual": Candidate("manual", None), "manual_calibrated": Candidate("manual", manual_bias_a),
        "manual_b64": Candidate("manual", bias64("manual")),
        "pick_a": Candidate("pick_a", picks[0].bias), "pick_b": Candidate("pick_b", picks[1].bias),
        "pick_a_b64": Candidate("pick_a", bias64("pick_a")), "best_b64": Candidate(best, bias64(best)),
        "mean_b64": Candidate("mean", bias64("mean")), "demos": Candidate("demos", demos_bias),
    }
    agree, paired = cv["agree"].replace, cv["paired"].replace
    default = "pick_a" if default_replaces else "manual_calibrated"
    returned = {  # rule: the candidate it returns
        "manual": "manual", "manual_calibrated": "manual_calibrated", "manual_b64": "manual_b64",
        DEFAULT: default,
        "default_b64": "pick_a_b64" if default_replaces else "manual_b64",
        "cv_agree": "pick_a" if agree else "manual_calibrated",
        "cv_paired": "pick_a" if paired else "manual_calibrated",
        "cv_agree_b64": "pick_a_b64" if agree else "manual_b64",
        "cv_best_b64": "best_b64" if agree else "manual_b64",
        "cv_mean_b64": "mean_b64" if agree else "manual_b64",
        "pick_a": "pick_a", "pick_b": "pick_b", "demos": "demos",
        "default|demos": "demos" if demos_by_margins else default,
        "default|demos_agree": "demos" if demos_decision.replace else default,
    }

    def accuracies(examples: tuple) -> dict[str, float]:
        """Each rule's candidate on `examples`, a prompt scored once however many rules return it."""
        scored: dict[str, np.ndarray] = {}
        acc = {}
        for rule, name in returned.items():
            cand = candidates[name]
            prompt, f = prompts[cand.prompt]
            if cand.prompt not in scored:
                scored[cand.prompt] = score_examples(backend, prompt, examples, f)
            acc[rule] = evaluation(scored[cand.prompt], f.label_ids(examples), cand.bias).accuracy
        return acc

    record: dict[str, Any] = {
        "seed": seed, "calibrate": "on", "heldout_acc": accuracies(heldout),
        "default_replaces": default_replaces, "returned": returned,
        "decisions": {**{f"cv_{g}": dataclasses.asdict(d) for g, d in cv.items()},
                      "demos": dataclasses.asdict(demos_decision)},
        "out_of_fold": {"tuned": [tuned_oof.accuracy, tuned_oof.loss], "manual": [manual_oof.accuracy, manual_oof.loss],
                        "pick_a": oof_acc["pick_a"], "pick_b": oof_acc["pick_b"]},
    }
    if test:
        record["test_acc"], record["n_test"] = accuracies(test), len(test)
    return record


def dev_acc_key(evaluation: Evaluation) -> tuple[float, ...]:
    """The default selection's key (accuracy, then cross-entropy; lower wins) of an evaluation."""
    return selection_key(Selection.DEV_ACC, 0.0, 0, evaluation)


if __name__ == "__main__":
    main()
