"""Which selection rule generalizes? Evidence from held-out splits of the training pool, never the test set.

One BBT run per seed evaluates its generation-best candidate on dev every ``--eval-every`` calls (the tuner's own
points). Each rule picks one of them, or builds a lever from them (the CMA-ES mean at the end, the mean z of the
three best on dev, the dev-accuracy pick pulled half way back to p0); every pick is then scored on a held-out split
of the training pool (disjoint from the few-shot train and dev) beside the manual prompt, raw and calibrated.
`RULE+GUARD` keeps the calibrated manual prompt unless RULE's pick passes GUARD against it on dev: `paired`, an
exact McNemar test at --guard-alpha (`bbtune.search.selection.decide`); `agree`, dev accuracy no lower and dev
cross-entropy not significantly higher (a sign-flip test; older runs: see `loss_worse_p`).

    python benchmarks/selection.py --seeds 13 42 100 --heldout 300 --out sst2_smollm2.json
    python benchmarks/selection.py --merge a.json b.json ... --out all.json     # tables over tasks and models

`--test-limit N` also scores the default's pick and the manual prompt on N test examples (0 = all) for the matrix;
those numbers are recorded apart and no rule is chosen on them. Data: ../shared/data.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from task_args import ROOT, add_task_args
from bbtune.backends.factory import LocalConfig
from bbtune.constants import CPU_BUDGET_CALLS
from bbtune.core.table import markdown_table
from bbtune.search.calibration import fit_label_bias
from bbtune.search.evaluate import Evaluation, evaluation, score_examples
from bbtune.search.selection import Guard, Selection, decide, mcnemar_p_value, selection_key
from bbtune.tasks import Task, TaskConfig, load_examples, subsample
from bbtune.runs.tuner import TuneConfig, Tuner

RULES = ("dev_acc", "dev_loss", "train_dev_loss", "train_loss", "last")  # picks among the tuner's points
LEVERS = ("cma_mean", "top3_mean", "shrink_half")  # new points built from the run
GUARDED = ("dev_acc", "train_dev_loss", "cma_mean", "top3_mean", "shrink_half")  # each also as RULE+GUARD
GUARDS: dict[str, Callable[[dict[str, Any], float], bool]] = {  # does a pick's decision (asdict) let it replace?
    "paired": lambda d, alpha: d["dev_acc_margin"] >= 0 and mcnemar_p_value(d["wins"], d["losses"]) <= alpha,
    "agree": lambda d, alpha: d["dev_acc_margin"] >= 0 and loss_worse_p(d) > alpha,
}


def loss_worse_p(d: dict[str, Any]) -> float:
    """The p-value of "the pick's dev CE is no worse" from a recorded decision; runs from before it have the other
    side (1 - it), the oldest only the CE margin (taken strictly: any higher CE counts as significant)."""
    if "loss_worse_p_value" in d:
        return float(d["loss_worse_p_value"])
    return 1 - float(d["loss_p_value"]) if "loss_p_value" in d else float(d["dev_loss_margin"] >= 0)
BASELINES = ("manual", "manual_calibrated")
GUARD_ALPHA = TuneConfig.guard_alpha  # the run's default level


@dataclass
class Pick:
    """A candidate as a rule returns it: its point, calibration bias and numbers on train and dev."""

    z: np.ndarray
    bias: np.ndarray | None
    train_ce: float
    dev: Evaluation


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_task_args(ap, test_limit=-1)
    ap.add_argument("--budget", type=int, default=CPU_BUDGET_CALLS)
    ap.add_argument("--eval-every", type=int, default=TuneConfig.eval_every)
    ap.add_argument("--heldout", type=int, default=300, help="held-out examples from the training pool")
    ap.add_argument("--calibrate", nargs="+", default=["on"], choices=["on", "off"])
    ap.add_argument("--mode", default="soft", choices=["soft", "hard"])
    ap.add_argument("--alpha", type=float, default=0.0, help="step in embedding space, in embedding stds (0 = by p0)")
    ap.add_argument("--guard-alpha", type=float, default=GUARD_ALPHA, help="level of the guards' tests, post hoc")
    ap.add_argument("--p0", default="auto", choices=["auto", "vocab", "cue"])
    ap.add_argument("--prompt-tokens", type=int, default=0,
                    help="prompt length (0 = by p0; with --p0 cue, more pads the cue: the 'more tokens' lever)")
    ap.add_argument("--intrinsic-dim", type=int, default=TuneConfig.intrinsic_dim, help="dimension d of z")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "selection_sst2.json"))
    ap.add_argument("--merge", nargs="+", default=[], metavar="JSON",
                    help="no runs: merge earlier outputs (old ones get their paired column decided by today's rule)")
    args = ap.parse_args(argv)

    runs = [] if not args.merge else [with_guards(r, args.guard_alpha) for path in args.merge
                                      for r in json.loads(Path(path).read_text())["runs"]]
    backend = LocalConfig(model=args.model).build() if not args.merge else None
    out = Path(args.out)
    for seed in [] if args.merge else args.seeds:
        task, heldout, test = study_splits(args, seed)
        for calibrate in args.calibrate:
            cfg = TuneConfig(mode=args.mode, budget_calls=args.budget, seed=seed, eval_every=args.eval_every,
                             calibrate=calibrate == "on", select=Selection.DEV_ACC, p0=args.p0, alpha=args.alpha,
                             prompt_tokens=args.prompt_tokens, intrinsic_dim=args.intrinsic_dim)
            tuner = Tuner(task, backend, cfg, progress=False)
            started = time.perf_counter()
            tuner.run()
            search_s = time.perf_counter() - started  # the search alone: what a bbt_soft job spends before test
            runs.append({"p0": args.p0, "alpha": args.alpha, "prompt_tokens": tuner.subspace_.n_tokens,
                         "intrinsic_dim": tuner.subspace_.dim,
                         "model": args.model, "data": Path(args.data).name,
                         "search_wall_s": round(search_s, 3),
                         **score_rules(tuner, heldout, seed, calibrate, args.guard_alpha, test)})
            runs[-1] = with_guards(runs[-1], args.guard_alpha)
            print(json.dumps(runs[-1]["heldout_acc"]), flush=True)
            write(out, args, runs)  # after every run: a killed study keeps what it finished
    write(out, args, runs)


def write(out: Path, args: argparse.Namespace, runs: list[dict[str, Any]]) -> None:
    """The tables (printed) and the JSON with every run."""
    by_group, overall = summary(runs)
    print(markdown_table(by_group, ["data", "model", "calibrate", "rule", "held-out acc", "gain over calibrated",
                                    "worst vs better baseline", "per seed"]))
    tasks = list(dict.fromkeys(r.get("data", "") for r in runs))
    print(markdown_table(overall, ["rule", "runs", "held-out acc", "gain over calibrated", *tasks,
                                   "worst vs better baseline", "below better baseline - 1"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "summary": by_group, "overall": overall, "runs": runs}, indent=2))
    print(f"wrote {out}")


def summary(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Per task, model and calibration, and over all of them: each rule's held-out accuracy, its gain over the
    calibrated manual prompt and its margin over the better of the manual and calibrated manual prompts (the
    matrix's safety goal: a run below that minus 1 point fails it)."""
    def margins(rule: str, mine: list[dict[str, Any]]) -> dict[str, Any]:
        have = [r["heldout_acc"] for r in mine if rule in r["heldout_acc"]]
        gain = [100 * (a[rule] - a["manual_calibrated"]) for a in have]
        worst = [100 * (a[rule] - max(a["manual"], a["manual_calibrated"])) for a in have]
        return {"rule": rule, "runs": len(have), "held-out acc": round(100 * statistics.mean(a[rule] for a in have), 1),
                "gain over calibrated": round(statistics.mean(gain), 1), "worst vs better baseline": round(min(worst), 1),
                "below better baseline - 1": sum(w < -1.0 for w in worst),
                "per seed": " ".join(f"{100 * a[rule]:.1f}" for a in have)}

    known = BASELINES + RULES + LEVERS + tuple(f"{r}+{g}" for g in GUARDS for r in GUARDED)
    added = [r for run in runs for r in run["heldout_acc"] if r not in known]  # columns other scripts added
    rules = [r for r in (*known, *dict.fromkeys(added)) if any(r in run["heldout_acc"] for run in runs)]
    by_group = []
    for group in dict.fromkeys((r.get("data", ""), Path(r.get("model", "")).name, r["calibrate"]) for r in runs):
        mine = [r for r in runs if (r.get("data", ""), Path(r.get("model", "")).name, r["calibrate"]) == group]
        by_group += [{"data": group[0], "model": group[1], "calibrate": group[2], **margins(rule, mine)}
                     for rule in rules if any(rule in r["heldout_acc"] for r in mine)]
    calibrated = [r for r in runs if r["calibrate"] == "on"]
    overall = [margins(rule, calibrated) for rule in rules if any(rule in r["heldout_acc"] for r in calibrated)]
    for line in overall:  # the mean gain per task (over models and seeds) beside the overall numbers
        for data in dict.fromkeys(r.get("data", "") for r in calibrated):
            mine = [r for r in calibrated if r.get("data", "") == data and line["rule"] in r["heldout_acc"]]
            line[data] = round(margins(line["rule"], mine)["gain over calibrated"], 1) if mine else None
    return by_group, overall


def with_guards(run: dict[str, Any], alpha: float) -> dict[str, Any]:
    """A run with its RULE+GUARD columns (held-out and, where scored, test) decided from its recorded decisions;
    a run from before the levers (one `decision`, the dev_acc pick's) gets them for dev_acc alone."""
    decisions = recorded_decisions(run)
    out = {**run, "decisions": decisions}
    for split in ("heldout_acc", "test_acc"):
        if split not in run:
            continue
        acc = {k: v for k, v in run[split].items() if "+" not in k}
        for name, d in decisions.items():
            for guard in GUARDS:
                if name in acc:
                    acc[f"{name}+{guard}"] = acc[name] if replaces(d, guard, alpha) else acc["manual_calibrated"]
        out[split] = acc
    return out


def recorded_decisions(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Each pick's recorded decision; a run from before the levers has one `decision`, the dev_acc pick's."""
    return run.get("decisions") or {"dev_acc": run["decision"]}


def replaces(decision: dict[str, Any], guard: str, alpha: float) -> bool:
    """Does a recorded decision's pick replace the calibrated manual prompt behind `guard`?"""
    won_by_key = not decision["reason"].startswith("the tuned prompt did not beat")
    return won_by_key and GUARDS[guard](decision, alpha)


def returned_by_default(run: dict[str, Any], alpha: float) -> dict[str, float]:
    """Dev accuracy and cross-entropy of what a run returns at the defaults: the dev_acc pick where it passes the
    agree guard, else the calibrated manual prompt (its numbers from the decision's margins)."""
    pick, d = run["dev"]["dev_acc"], recorded_decisions(run)["dev_acc"]
    if replaces(d, "agree", alpha):
        return {"acc": pick["acc"], "loss": pick["loss"]}
    return {"acc": pick["acc"] - d["dev_acc_margin"], "loss": pick["loss"] + d["dev_loss_margin"]}


def study_splits(args: argparse.Namespace, seed: int) -> tuple[Task, tuple, tuple]:
    """A study's few-shot task for `seed`, its held-out pool examples and its test sample (empty where
    --test-limit is negative: test is not scored)."""
    task = TaskConfig(data=args.data, preset=args.preset, k=args.k, data_seed=seed, test_limit=1).load()
    heldout = heldout_split(task, Path(args.data) / "train.jsonl", args.heldout, seed)
    test = () if args.test_limit < 0 else TaskConfig(data=args.data, preset=args.preset, k=args.k, data_seed=seed,
                                                    test_limit=args.test_limit).load().test
    return task, heldout, test


def heldout_split(task: Task, train_file: Path, size: int, seed: int) -> tuple:
    """`size` training-pool examples that are in neither the few-shot train nor dev set."""
    used = {(e.text, e.label) for e in task.train + task.dev}
    pool = [e for e in load_examples(train_file) if (e.text, e.label) not in used]
    return subsample(pool, size, seed + 1)


def score_rules(tuner: Tuner, heldout: tuple, seed: int, calibrate: str, guard_alpha: float = 0.1,
                test: tuple = ()) -> dict[str, Any]:
    """Held-out accuracy of what each rule returns, of the manual prompt raw and calibrated, and (where `test` is
    given) the test accuracy of the default's pick and of the manual prompt."""
    task = tuner.task_  # the task as the run tuned it (a cue start swaps the template)
    fmt, backend, n_train = task.format, tuner.backend, len(task.train)
    picks = rule_picks(tuner)
    picks.update(lever_picks(tuner, picks["dev_acc"]))
    train = score_examples(backend, tuner.manual_, task.train, fmt)  # the manual prompt on train, once
    bias = run_bias(tuner, train[0])
    manual_dev = evaluation(score_examples(backend, tuner.manual_, task.dev, fmt), fmt.label_ids(task.dev), bias)
    manual_key = selection_key(Selection.DEV_ACC, evaluation(train, fmt.label_ids(task.train), bias).loss, n_train,
                               manual_dev)
    decisions = {}
    for name in GUARDED:
        pick = picks[name]
        won = selection_key(Selection.DEV_ACC, pick.train_ce, n_train, pick.dev) < manual_key
        decisions[name] = decide(pick.dev, manual_dev, won, Guard.PAIRED, guard_alpha, seed)

    def accuracies(examples: tuple, names: Sequence[str]) -> dict[str, float]:
        labels, scored, acc = fmt.label_ids(examples), {}, {}
        for name in names:  # a point picked by several rules is scored once
            pick = picks[name]
            key = pick.z.tobytes()
            if key not in scored:
                scored[key] = evaluation(score_examples(backend, tuner.prompt(pick.z), examples, fmt), labels,
                                         pick.bias).accuracy
            acc[name] = scored[key]
        manual = score_examples(backend, tuner.manual_, examples, fmt)
        acc["manual"], acc["manual_calibrated"] = evaluation(manual, labels).accuracy, evaluation(manual, labels, bias).accuracy
        return acc

    record = {"seed": seed, "calibrate": calibrate, "heldout_acc": accuracies(heldout, list(picks)),
              "n_points": len(tuner.eval_points_), "decisions": {k: asdict(d) for k, d in decisions.items()},
              "dev": {name: {"acc": p.dev.accuracy, "loss": p.dev.loss, "train_ce": p.train_ce} for name, p in picks.items()},
              "points": [{k: v for k, v in p.items() if k not in ("z", "bias", "dev_eval")} for p in tuner.eval_points_]}
    if test:
        record["test_acc"], record["n_test"] = accuracies(test, ["dev_acc"]), len(test)
    return record


def rule_picks(tuner: Tuner) -> dict[str, Pick]:
    """The tuner's points each rule picks (a rule picks the lowest key among the dev-evaluated points)."""
    points, n_train = tuner.eval_points_, len(tuner.task_.train)

    def tuner_rule(rule: Selection) -> Callable[[dict[str, Any]], tuple[float, ...]]:  # the tuner's own keys
        return lambda p: selection_key(rule, p["train_ce"], n_train, p["dev_eval"])

    keys = {**{rule.value: tuner_rule(rule) for rule in Selection},
            "train_loss": lambda p: (p["train_ce"],), "last": lambda p: (-p["calls"],)}
    chosen = {rule: min(points, key=key) for rule, key in keys.items()}
    return {rule: Pick(p["z"], p["bias"], p["train_ce"], p["dev_eval"]) for rule, p in chosen.items()}


def lever_picks(tuner: Tuner, default: Pick) -> dict[str, Pick]:
    """Points no rule can pick, built from the run: the search distribution's mean at the end (CMA-ES's estimate
    of the optimum, smoother than any sampled point), the mean of the three best points on dev, and the default's
    pick pulled half way back to p0. Each is calibrated on train and scored on dev as the tuner would."""
    by_dev = sorted(tuner.eval_points_, key=lambda p: selection_key(Selection.DEV_ACC, p["train_ce"],
                                                                  len(tuner.task_.train), p["dev_eval"]))
    zs = {"top3_mean": np.mean([p["z"] for p in by_dev[:3]], axis=0), "shrink_half": 0.5 * default.z}
    es = getattr(tuner.optimizer_, "es", None)
    if es is not None:
        zs["cma_mean"] = np.asarray(es.mean, dtype=float)
    return {name: scored_pick(tuner, z) for name, z in zs.items()}


def scored_pick(tuner: Tuner, z: np.ndarray) -> Pick:
    task, fmt = tuner.task_, tuner.task_.format
    prompt = tuner.prompt(z)
    train = score_examples(tuner.backend, prompt, task.train, fmt)
    bias = run_bias(tuner, train[0])
    train_ce = evaluation(train, fmt.label_ids(task.train), bias).loss
    dev = evaluation(score_examples(tuner.backend, prompt, task.dev, fmt), fmt.label_ids(task.dev), bias)
    return Pick(z, bias, train_ce, dev)


def run_bias(tuner: Tuner, train_scores: np.ndarray) -> np.ndarray | None:
    """A prompt's bias as the run fits it, from its (B, L) scores on the run's own train task (`tuner.task_`: with
    a cue start the template lost its cue, which the manual prompt then is); None when the run does not
    calibrate."""
    if not tuner.config.calibrate:
        return None
    return fit_label_bias(train_scores, tuner.task_.format.label_ids(tuner.task_.train))


if __name__ == "__main__":
    main()
