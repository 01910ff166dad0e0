"""BBT searching through a readout: which train loss finds prompts whose readout generalises.

For matrix cells (the matrix's splits, settings and test sets), BBT runs with each ``--search-readout``:
``labels`` (the label words, calibrated: what the matrix's bbt rows searched), ``fixed`` (a logistic readout of
the top-k fitted once on the manual prompt) and ``fold`` (each candidate's own logistic readout, out of fold on
train). Every run ends the same way: its returned prompt's readout chosen out of fold on train + dev among all
readouts, at the same top-k depth. The held-out pool examples (dev: never in a candidate's train loss) say which
variant generalises; test is reported beside it and never used to choose. The final readout reads the top-k alone
(``readout_lift`` 0; ``--lift`` below adds the lifted tokens). Rows go to
``benchmarks/results/search_readout.json`` in the matrix's row format, method ``bbt_{mode}_{variant}_top{k}``:

    python benchmarks/search_readout.py --tasks trec --models smollm2 --seeds 13 --modes soft --depths 20
    python benchmarks/matrix.py --rows benchmarks/results/matrix.json --runs benchmarks/results/search_readout.json

Each finished run is written as it lands; a run already in ``--out`` is skipped.

``--lift N`` searches nothing: it re-reads the text prompt each finished hard run returned with the run's readout
plus N tokens read below the list (`TuneConfig.readout_lift`), as a row ``{method}_lift{N}`` beside it. The same
prompt's readout without the lift is refitted too, and must give the run's own test number within
`REBUILT_TOLERANCE` (a check that the prompt was rebuilt faithfully from its text):

    python benchmarks/search_readout.py --lift 95 --models smollm2 --out benchmarks/results/search_readout.json
"""
from __future__ import annotations

import argparse
import json
import math
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

import torch
from task_args import ROOT, matrix_task

from bbtune.api import backend_for
from bbtune.backends.base import Backend
from bbtune.constants import EVAL_BATCH
from bbtune.backends.modes.lists import lift_rounds
from bbtune.core.prompts import MANUAL_PROMPT, HardPrompt
from bbtune.runs.cue import resolve_p0, start_from_cue
from bbtune.runs.tuner import TuneConfig, Tuner
from bbtune.search.answers import Answers
from bbtune.search.evaluate import answers_on
from bbtune.search.readouts.fitted import AUTO, PoolAnswers, RunReadout, fit_on_pool, read_pool
from bbtune.search.subspace import P0Init

SPEC = ROOT / "benchmarks" / "specs" / "matrix.toml"
OUT = ROOT / "benchmarks" / "results" / "search_readout.json"
KEPT = ("test_acc", "test_acc_without_readout", "dev_acc", "tuned_dev_acc", "tuned_test_acc", "manual_test_acc",
        "manual_calibrated_test_acc", "manual_dev_acc", "selected", "calls", "eval_calls", "best_train_loss",
        "initial_train_loss", "hard_prompt", "readout", "manual_readout")


def run_row(task_spec: dict[str, Any], model: str, seed: int, mode: str, variant: str, k: int,
            settings: dict[str, Any], lift: int = 0) -> dict[str, Any]:
    """One BBT run of the cell, as a matrix row with the run's own numbers beside it; its final readout reads
    `lift` tokens below the top-k (the method name says so: ``..._lift{lift}``)."""
    task = matrix_task(task_spec, seed)
    config = TuneConfig(mode=mode, seed=seed, search_readout=variant, readout="auto", readout_topk=k,
                        readout_lift=lift,
                        budget_calls=settings["budget_calls"], popsize=settings["popsize"],
                        intrinsic_dim=settings["intrinsic_dim"], eval_every=settings["eval_every"])
    started = time.perf_counter()
    result = Tuner(task, backend_for(model), config, progress=False).run()
    metrics = result.metrics.to_json()  # the metrics.json view: the row keeps its keys
    pool = len(task.train) + len(task.dev)
    return {"task": task_spec["name"], "model": model, "seed": seed, "method": method_name(mode, variant, k, lift),
            "test_acc": 100 * metrics["test_acc"], "wall_s": round(time.perf_counter() - started, 1), "top_k": k,
            "calls_per_run": metrics["calls"] + metrics["eval_calls"], "requests_per_run": None,
            "calls_per_input": 1 + lift_rounds((metrics.get("readout") or {}).get("lifted", 0), k),
            "pool": pool, "test_n": metrics.get("test_n"),
            "run": {key: metrics[key] for key in KEPT if key in metrics}}


def method_name(mode: str, variant: str, k: int, lift: int = 0) -> str:
    return f"bbt_{mode}_{variant}_top{k}" + (f"_lift{lift}" if lift else "")


# Points of test accuracy the rebuilt prompt may differ by without its lift: its text re-tokenized may not be the
# search's ids (Gemma joins "\nAnswer" differently), which moves a near-tie example or two.
REBUILT_TOLERANCE = 0.5


def lifted_row(row: dict[str, Any], task_spec: dict[str, Any], backend: Backend, lift: int) -> dict[str, Any]:
    """A finished hard run's returned text prompt read again with `lift` tokens below its top-k (module doc). Pool
    and test are read once, lifted tokens included; the run's own readout kind refitted on the lists alone (the
    lifted tokens set aside) must give the run's test number, which checks that the prompt was rebuilt."""
    task, run, k = matrix_task(task_spec, row["seed"]), row["run"], row["top_k"]
    vocab = backend.vocabulary()
    manual = MANUAL_PROMPT
    config = TuneConfig(mode="hard", seed=row["seed"])
    if resolve_p0(config, task, vocab) is P0Init.CUE:  # the run searched the template's cue: it is the prompt
        _, _, task, manual = start_from_cue(config, task, vocab)
    text = run["hard_prompt"] if run["selected"] == "tuned" else manual.text
    prompt = (HardPrompt(tuple(vocab.tokenizer.encode(text, add_special_tokens=False)), text)
              if run["selected"] == "tuned" else manual)
    pool, fmt, started = list(task.train) + list(task.dev), task.format, time.perf_counter()
    read = read_pool(backend, prompt, pool, fmt, AUTO, k, lift)
    test = answers_on(backend, prompt, list(task.test), fmt, read.depth, lift=read.lifted)
    y_pool, y_test = fmt.label_ids(pool), fmt.label_ids(task.test)

    def accuracy(fitted: RunReadout, answers: Answers) -> float:
        return 100 * float((fitted.log_scores(answers).argmax(axis=1) == y_test).mean())

    unlifted = PoolAnswers(_without_lift(read.answers), read.depth)
    plain = accuracy(fit_on_pool(unlifted, y_pool, run["readout"]["kind"], row["seed"]), _without_lift(test))
    if abs(plain - row["test_acc"]) > REBUILT_TOLERANCE:
        raise SystemExit(f"{row['task']} {row['model']} s{row['seed']}: the rebuilt prompt {text!r} gives "
                         f"{plain:.2f} without the lift, the run gave {row['test_acc']:.2f}: not the same prompt")
    fitted = fit_on_pool(read, y_pool, AUTO, row["seed"])
    acc = accuracy(fitted, test)
    per_input = lift_rounds(len(fitted.lift), k)
    return {**{key: row[key] for key in ("task", "model", "seed", "top_k", "pool", "test_n")},
            "method": f"{row['method']}_lift{lift}", "test_acc": acc, "lifted": len(fitted.lift),
            "wall_s": round(time.perf_counter() - started, 1),
            "calls_per_run": row["calls_per_run"] + math.ceil(len(pool) / EVAL_BATCH) * fitted.passes,
            "requests_per_run": None, "calls_per_input": 1 + per_input, "without_lift": plain,
            "readout": fitted.readout.kind.value, "choice": fitted.choice.as_dict(), "hard_prompt": text}


def _without_lift(answers: Answers) -> Answers:
    """The same answers as the lists alone returned them."""
    assert answers.topk is not None
    return Answers(answers.labels, answers.topk.with_lifted((), ()))


def relift(out: Path, models: Sequence[str], lift: int, tasks: dict[str, Any], replace: bool = False) -> None:
    """`lifted_row` for every finished hard run of `models` in `out` that has none yet (`replace`: every one, the
    earlier row giving way to the new), written as each lands."""
    rows = json.loads(out.read_text())["rows"]
    for model in models:
        backend = backend_for(model)
        for row in [r for r in rows if r["model"] == model and r["method"].startswith("bbt_hard_")
                    and "_lift" not in r["method"]]:
            key = (row["task"], model, row["seed"], f"{row['method']}_lift{lift}")
            if not replace and any((r["task"], r["model"], r["seed"], r["method"]) == key for r in rows):
                continue
            new = lifted_row(row, tasks[row["task"]], backend, lift)
            rows = [r for r in rows if (r["task"], r["model"], r["seed"], r["method"]) != key] + [new]
            out.write_text(json.dumps({"rows": rows}, indent=1))
            print(f"{row['task']} {model} s{row['seed']} {key[3]}: test {new['test_acc']:.1f} (without the lift "
                  f"{new['without_lift']:.1f}, readout {new['readout']}, {new['lifted']} lifted) "
                  f"{new['wall_s']:.0f} s", flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2"])
    ap.add_argument("--tasks", nargs="+", default=["trec"], help="task names of the matrix spec")
    ap.add_argument("--seeds", nargs="+", type=int, default=[13])
    ap.add_argument("--modes", nargs="+", default=["soft"], choices=["soft", "hard"])
    ap.add_argument("--variants", nargs="+", default=["labels", "fixed", "fold"])
    ap.add_argument("--depths", nargs="+", type=int, default=[20])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--lift", type=int, default=0, help="re-read the finished hard runs' prompts with this many "
                                                        "tokens read below the list (no search)")
    ap.add_argument("--readout-lift", type=int, default=0,
                    help="search: the runs' final readout reads this many tokens below the list (rows *_lift{N})")
    ap.add_argument("--replace", action="store_true",
                    help="with --lift: re-read the runs that have a lifted row already (after a change of the readouts)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    spec = tomllib.loads(SPEC.read_text())
    tasks = {t["name"]: t for t in spec["grid"]["tasks"]}
    out = Path(args.out)
    if args.lift:
        return relift(out, args.models, args.lift, tasks, args.replace)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    for task_name in args.tasks:
        for model in args.models:
            for seed in args.seeds:
                for mode in args.modes:
                    for k in args.depths:
                        for variant in args.variants:
                            method = method_name(mode, variant, k, args.readout_lift)
                            if any((r["task"], r["model"], r["seed"], r["method"]) == (task_name, model, seed, method)
                                   for r in rows):
                                continue
                            row = run_row(tasks[task_name], model, seed, mode, variant, k, spec["settings"],
                                          args.readout_lift)
                            rows.append(row)
                            out.write_text(json.dumps({"rows": rows}, indent=1))  # every run kept as it lands
                            run = row["run"]
                            print(f"{task_name} {model} s{seed} {method}: test {row['test_acc']:.1f} "
                                  f"(dev {100 * run['dev_acc']:.1f}, tuned dev {100 * run['tuned_dev_acc']:.1f}, "
                                  f"{run['selected']}, readout {run.get('readout', {}).get('kind')}, "
                                  f"without readout {100 * run.get('test_acc_without_readout', math.nan):.1f}) "
                                  f"{row['wall_s']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
