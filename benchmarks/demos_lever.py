"""Lever: in-context demonstrations as one more candidate for what a run returns. Evidence from held-out pool
examples, never test.

In the matrix, calibrated in-context learning (2 demonstrations per class from the 16-shot train split, a bias per
label fitted on train: `in_context_train`) beat BBT soft on some task x model pairs and lost on others. A run
could score the demonstrations on dev as it scores the calibrated manual prompt, and return them where they beat
its own answer there. This script adds that candidate to finished selection studies (`benchmarks/selection.py`
outputs, augmented in place; the search is not rerun): per run, the demonstrations' dev accuracy and
cross-entropy, held-out accuracy (the same 200 pool examples) and, where the study scored test, test accuracy;
then the rules

    default|demos      the default's answer (the dev_acc pick behind the agree guard, else the calibrated manual
                       prompt), replaced by the demonstrations when their dev accuracy is higher and their dev
                       cross-entropy no higher (accuracy and loss agree)
    default|demos_acc  the same, by dev accuracy alone (higher: a tie keeps the run's answer)

and `demos` alone, scored like every other rule by `selection.py`'s tables. The rules are decided post hoc from
the recorded numbers (`--tables` prints them again without a model).

    python benchmarks/demos_lever.py benchmarks/results/selection_levers/*.json --model smollm2
    python benchmarks/demos_lever.py benchmarks/results/selection_levers/*.json --tables   # selection_levers.json
"""
from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any, Callable, Sequence

from selection import GUARD_ALPHA, heldout_split, returned_by_default, with_guards, write
from task_args import ROOT
from bbtune.backends.factory import LocalConfig
from bbtune.baselines.incontext import InContextConfig, in_context_prompt
from bbtune.core.prompts import HardPrompt
from bbtune.search.evaluate import evaluate, fitted_bias
from bbtune.tasks import Placement, Task, TaskConfig

SHOTS_PER_CLASS = 2  # as the matrix's in-context rows
DEFAULT = "dev_acc+agree"  # what `bbtune tune` returns at the defaults
RULES: dict[str, Callable[[dict[str, float], dict[str, float]], bool]] = {  # do the demonstrations replace it?
    "default|demos": lambda demos, answer: demos["acc"] > answer["acc"] and demos["loss"] <= answer["loss"],
    "default|demos_acc": lambda demos, answer: demos["acc"] > answer["acc"],
}


def demos_columns(run: dict[str, Any], backend: Any, data_dir: Path, k: int, test_limit: int | None) -> dict[str, Any]:
    """The demonstrations of the run's seed on dev (accuracy, CE), held-out and test (accuracies), as
    `in_context_train` scores them: prefix placement, a bias per label fitted on the train split."""
    seed = int(run["seed"])
    task = TaskConfig(data=str(data_dir), preset=run["preset"], k=k, data_seed=seed,
                      test_limit=1 if test_limit is None else test_limit).load()  # the study's test sample
    heldout = heldout_split(task, data_dir / "train.jsonl", run["n_heldout"], seed)
    prompt, task = demonstrations(task, backend, seed)
    bias = fitted_bias(backend, prompt, task.train, task.format)
    dev = evaluate(backend, prompt, task.dev, task.format, label_bias=bias)
    out = {"dev": {"acc": dev.accuracy, "loss": dev.loss},
           "heldout_acc": evaluate(backend, prompt, heldout, task.format, label_bias=bias).accuracy}
    if test_limit is not None:
        out["test_acc"] = evaluate(backend, prompt, task.test, task.format, label_bias=bias).accuracy
    return out


def demonstrations(task: Task, backend: Any, seed: int) -> tuple[HardPrompt, Task]:
    """The seed's demonstrations as `in_context_train` writes them, and the task in the placement that scores
    them (prefix)."""
    task = task.with_placement(Placement.PREFIX)
    config = InContextConfig(shots_per_class=SHOTS_PER_CLASS, seed=seed, calibration="train")
    return in_context_prompt(task, backend.vocabulary().tokenizer, config), task


def with_demos(run: dict[str, Any], demos: dict[str, Any]) -> dict[str, Any]:
    """The run (its guard columns decided) with the demonstrations' numbers and the `demos` and `RULES` columns
    (held-out and, where scored, test)."""
    run = with_guards(run, GUARD_ALPHA)
    answer_dev = returned_by_default(run, GUARD_ALPHA)
    takes = {rule: replaces(demos["dev"], answer_dev) for rule, replaces in RULES.items()}
    out = {**run, "demos": {k: v for k, v in demos.items() if k != "replaces_default"}}
    out["demos"]["replaces_default"] = takes
    for split in ("heldout_acc", "test_acc"):
        if split in run and split in demos:
            out[split] = {**run[split], "demos": demos[split],
                          **{rule: demos[split] if took else run[split][DEFAULT] for rule, took in takes.items()}}
    return out


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("studies", nargs="+", help="selection.py outputs (augmented in place)")
    ap.add_argument("--model", default="", help="only the studies of this model (one model per process)")
    ap.add_argument("--tables", action="store_true",
                    help="no scoring: decide the rules from the recorded numbers, print selection.py's tables over "
                         "all the studies (runs without the demonstrations too), write --out")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "selection_levers.json"))
    ap.add_argument("--data-root", default="", help="folder of the data sets (default: the studies' own paths)")
    ap.add_argument("--redo", action="store_true", help="score runs that already have the demonstrations again")
    args = ap.parse_args(argv)
    if args.tables:
        runs = [with_demos(r, r["demos"]) if "demos" in r else with_guards(r, GUARD_ALPHA)
                for path in args.studies for r in json.loads(Path(path).read_text())["runs"]]
        write(Path(args.out), args, runs)
        return
    if not args.model:
        ap.error("give --model (the studies of one model are scored per process), or --tables")
    backend = None
    for path in map(Path, args.studies):
        study = json.loads(path.read_text())
        study_args = study["args"]
        if Path(study_args["model"]).name != Path(args.model).name:
            continue
        data_dir = Path(args.data_root) / Path(study_args["data"]).name if args.data_root else Path(study_args["data"])
        test_limit = None if study_args.get("test_limit", -1) < 0 else study_args["test_limit"]
        runs = []
        for run in study["runs"]:
            if "demos" in run and not args.redo:
                runs.append(run)
                continue
            backend = backend or LocalConfig(model=args.model).build()
            spec = {**run, "preset": study_args["preset"], "n_heldout": study_args["heldout"]}
            runs.append(with_demos(run, demos_columns(spec, backend, data_dir, study_args["k"], test_limit)))
            print(f"{path.name} seed {run['seed']}: {json.dumps(runs[-1]['demos'])}", flush=True)
        study["runs"] = runs
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(study, indent=2))
        os.replace(tmp, path)  # a killed run leaves the study as it was
    print("tables: python benchmarks/demos_lever.py STUDIES... --tables")


if __name__ == "__main__":
    main()
