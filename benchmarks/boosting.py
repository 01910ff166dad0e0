"""A boosted ensemble of the search's own text prompts: does voting over several pay what one prompt does not?

For each matrix cell that `benchmarks/search_readout.py` has runs of, the pool is the manual prompt (the
template's cue) plus every distinct text prompt those runs returned or discretized, each in the cue's place and
sent as text (what a hosted API accepts). Each pool prompt is read at
the top-`k` on the training pool (train + dev) and on test, labels included (a hosted API that honours logit_bias
gives them with a second request). `bbtune.search.readouts.boosting.boost` fits SAMME on the training pool; test is
read only to report. Beside it, the best single prompt with its own readout, both chosen out of fold on the pool
(each prompt's own numbers are kept in the boosted row's ``singles``). Rows go to ``benchmarks/results/boosting.json``:

    python benchmarks/boosting.py --tasks trec --models smollm2 --seeds 13

An ensemble of m distinct prompts costs m calls per input (`calls_per_input`).
"""
from __future__ import annotations

import argparse
import json
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from task_args import ROOT, matrix_task

from bbtune.api import backend_for
from bbtune.app.compare import retokenize
from bbtune.backends.base import Backend
from bbtune.core.prompts import HardPrompt
from bbtune.search.evaluate import answers_on
from bbtune.search.readouts import Answers, choose_readout
from bbtune.search.readouts.boosting import DEFAULT_ROUNDS, boost
from bbtune.tasks import Task

SPEC = ROOT / "benchmarks" / "specs" / "matrix.toml"
RUNS = ROOT / "benchmarks" / "results" / "search_readout.json"
OUT = ROOT / "benchmarks" / "results" / "boosting.json"


def pool_texts(runs: Sequence[dict[str, Any]], task: str, model: str, seed: int, cue: str) -> list[str]:
    """The manual prompt first, then each distinct text prompt the cell's search runs ended with. The matrix's
    searches start from the template's cue and put their prompt in its place: the manual prompt is the cue, and a
    run that kept it reports the cue as its text."""
    texts = [cue]
    for row in runs:
        text = row["run"].get("hard_prompt", "")
        if (row["task"], row["model"], row["seed"]) == (task, model, seed) and text not in texts:
            texts.append(text)
    return texts


def cell_rows(task: Task, model: str, seed: int, backend: Backend, texts: Sequence[str], k: int, rounds: int
              ) -> list[dict[str, Any]]:
    """The best single prompt's row and the boosted ensemble's, on test. `texts` take the place of the task's cue
    (`pool_texts`), each sent as text: what a hosted API receives, whatever ids the search had."""
    template, _ = task.format.template.without_cue()
    task = task.with_template(template)
    prompts = [retokenize(HardPrompt((), t), backend) for t in texts]
    examples = list(task.train) + list(task.dev)
    y_pool, y_test = task.format.label_ids(examples), task.format.label_ids(task.test)
    started = time.perf_counter()
    pool: list[Answers] = [answers_on(backend, p, examples, task.format, k) for p in prompts]
    test: list[Answers] = [answers_on(backend, p, task.test, task.format, k) for p in prompts]
    wall = round(time.perf_counter() - started, 1)
    base = {"task": task.name, "model": model, "seed": seed, "top_k": k, "pool": len(examples),
            "test_n": len(task.test), "labels_asked": True}
    singles = []
    for i, text in enumerate(texts):
        readout, choice = choose_readout(pool[i], y_pool, seed=seed)
        singles.append({"prompt": text, "readout": choice.kind, "out_of_fold": choice.score_of(choice.kind).accuracy,
                        "test_acc": 100 * float(np.mean(readout.predict(test[i]) == y_test))})
    best = max(singles, key=lambda single: single["out_of_fold"])
    ensemble = boost(pool, y_pool, rounds=rounds, seed=seed)
    acc = 100 * float(np.mean(ensemble.predict(test) == y_test))
    return [{**base, "method": f"best_prompt_readout_top{k}", "prompt": best["prompt"], "test_acc": best["test_acc"],
             "calls_per_input": 1, "readout": best["readout"], "wall_s": wall},
            {**base, "method": f"boosted_top{k}", "test_acc": acc, "calls_per_input": len(ensemble.prompts),
             "wall_s": wall, "singles": singles, "ensemble": ensemble.as_json()}]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2"])
    ap.add_argument("--tasks", nargs="+", default=["trec"], help="task names of the matrix spec")
    ap.add_argument("--seeds", nargs="+", type=int, default=[13])
    ap.add_argument("--k", type=int, default=20, help="top-k depth the readouts read")
    ap.add_argument("--rounds", type=int, default=DEFAULT_ROUNDS, help="boosting rounds at most")
    ap.add_argument("--runs", default=str(RUNS), help="search_readout.py's rows: where the pool's prompts come from")
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    tasks = {t["name"]: t for t in tomllib.loads(SPEC.read_text())["grid"]["tasks"]}
    runs = json.loads(Path(args.runs).read_text())["rows"]
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    for model in args.models:
        backend = backend_for(model)
        for name in args.tasks:
            for seed in args.seeds:
                if any((r["task"], r["model"], r["seed"], r["method"]) == (name, model, seed, f"boosted_top{args.k}")
                       for r in rows):
                    continue
                task = matrix_task(tasks[name], seed)
                texts = pool_texts(runs, name, model, seed, task.format.template.without_cue()[1])
                if len(texts) < 2:
                    print(f"{name} {model} s{seed}: no search runs in {args.runs}; skipped", flush=True)
                    continue
                new = cell_rows(task, model, seed, backend, texts, args.k, args.rounds)
                rows += new
                out.write_text(json.dumps({"rows": rows}, indent=1))  # every cell kept as it lands
                print(f"{name} {model} s{seed}: " + ", ".join(f"{r['method']} {r['test_acc']:.1f}" for r in new),
                      flush=True)


if __name__ == "__main__":
    main()
