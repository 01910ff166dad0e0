"""Readouts on the manual prompt, no search: what a hosted-API user gets from the log-probs an API returns.

For every matrix cell (task x model x seed, the matrix's splits and test sets) the manual prompt's answers are
read once at a deep top-k (1,000, what llama.cpp returns) on the training pool (train + dev, 16 + 16 per class)
and on test; shallower depths (20, OpenAI chat's limit) are the same lists cut. Each readout is fitted on the pool
and scored on test; ``auto`` is the one chosen out of fold on the pool (`bbtune.search.readouts.choose_readout`),
never by test. Rows go to ``benchmarks/results/readouts_manual.json`` in the matrix's row format
(`benchmarks/matrix.py --rows` merges them):

    python benchmarks/readouts.py --models smollm2 gemma3-270m            # ~30 min on one core
    python benchmarks/matrix.py --rows benchmarks/results/matrix.json benchmarks/results/readouts_manual.json

Answers are cached per model and example text (``--cache``), so a cell shared by seeds is scored once.

``--demonstrations 2`` reads the template showing 2 training examples per class before every input (taken out of
train: `TaskConfig.demonstrations`), rows ``in_context_*``; ``--either`` then adds the rows a user gets by reading
both and keeping, per cell, the template unless the demonstrations' readout is more accurate out of fold on the
pool beyond noise (the readout choice's paired test; no model):

    python benchmarks/readouts.py --lift 95 --demonstrations 2 --models smollm2 gemma3-270m
    python benchmarks/readouts.py --lift 95 --demonstrations 2 --either
"""
from __future__ import annotations

import argparse
import json
import math
import time
import tomllib
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from task_args import ROOT, matrix_task

from bbtune.api import backend_for
from bbtune.constants import EVAL_BATCH
from bbtune.backends.base import Backend
from bbtune.backends.modes.lists import lift_rounds
from bbtune.core.prompts import MANUAL_PROMPT
from bbtune.core.topk import AnswerTopK
from bbtune.search.evaluate import answers_on
from bbtune.search.readouts import Answers, ReadoutKind, choose_readout, make_readout
from bbtune.search.readouts.choice import DEFAULT_FOLDS, RICHER_ALPHA, out_of_fold
from bbtune.search.selection import mcnemar_p_value
from bbtune.search.readouts.fitted import AUTO, PoolAnswers, fit_on_pool, read_pool
from bbtune.tasks import Example, Task

SPEC = ROOT / "benchmarks" / "specs" / "matrix.toml"
OUT = ROOT / "benchmarks" / "results" / "readouts_manual.json"
DEEP = 1000
NO_MODEL: Any = None  # where every answer is stored: a store that would need the model fails loudly instead


def keyed_lines(path: Path) -> dict[str, dict[str, Any]]:
    """A JSON-lines cache by each line's ``key`` (empty where the file is not there yet)."""
    rows = (json.loads(line) for line in path.read_text().splitlines()) if path.exists() else iter(())
    return {row["key"]: row for row in rows}


class AnswerCache:
    """One model's answers at the deep top-k, per task and example text, kept on disk between runs."""

    def __init__(self, path: Path):
        self.path, self.rows = path, keyed_lines(path)

    def holds(self, task: Task, examples: Sequence[Example]) -> bool:
        return all(f"{task.name}|{ex.text}|{ex.text_b}" in self.rows for ex in examples)

    def answers(self, backend: Backend, task: Task, examples: Sequence[Example]) -> Answers:
        keys = [f"{task.name}|{ex.text}|{ex.text_b}" for ex in examples]
        todo = [ex for ex, key in zip(examples, keys) if key not in self.rows]
        if todo:
            fresh = answers_on(backend, MANUAL_PROMPT, todo, task.format, DEEP)
            assert fresh.topk is not None
            with self.path.open("a") as out:
                for i, ex in enumerate(todo):
                    row = {"key": f"{task.name}|{ex.text}|{ex.text_b}", "labels": fresh.labels[i].tolist(),
                           "tokens": fresh.topk.tokens[i], "logprobs": fresh.topk.logprobs[i]}
                    self.rows[row["key"]] = row
                    out.write(json.dumps(row) + "\n")
        rows = [self.rows[k] for k in keys]
        return Answers(np.array([r["labels"] for r in rows], dtype=float),
                       AnswerTopK(tuple(tuple(r["tokens"]) for r in rows), tuple(tuple(r["logprobs"]) for r in rows),
                                  DEEP))


def at_depth(answers: Answers, k: int, labels_asked: bool = False) -> Answers:
    """The answers an API returning only the top-`k` would have given: lists cut, labels outside them missing, or
    (`labels_asked`) read by a second request that lifts them into the list with logit_bias, as
    `bbtune.backends.remote` does where the server honours it (OpenAI does; vLLM does not)."""
    assert answers.topk is not None
    top = answers.topk.truncated(k)
    labels = answers.labels.copy()
    if not labels_asked:
        labels[missing_labels(answers, k)] = np.nan  # below the k-th listed value: not in the list
    return Answers(labels, top)


class LiftedStore:
    """One model's exact lifted answers (pool and test, the manual prompt) per cell, kept on disk: a change of the
    readouts or of their choice refits from them instead of reading the model again."""

    def __init__(self, path: Path):
        self.path, self.cells = path, keyed_lines(path)

    @staticmethod
    def key(task: Task, seed: int, k: int, lift: int) -> str:
        return f"{task.name}|{seed}|top{k}|lift{lift}"

    def answers(self, backend: Backend, task: Task, seed: int, k: int, lift: int) -> tuple[PoolAnswers, Answers]:
        """The pool as a run reads it (`read_pool`) and test as its readout would, both with every lifted token."""
        key = self.key(task, seed, k, lift)
        if key not in self.cells:
            pool = read_pool(backend, MANUAL_PROMPT, list(task.train) + list(task.dev), task.format, AUTO, k, lift)
            test = answers_on(backend, MANUAL_PROMPT, list(task.test), task.format, pool.depth, lift=pool.lifted)
            row = {"key": key, "pool": {**_answers_json(pool.answers), "depth": pool.depth,
                                        "lifted": list(pool.lifted), "passes": pool.passes, "note": pool.note},
                   "test": _answers_json(test)}
            with self.path.open("a") as out:
                out.write(json.dumps(row) + "\n")
            self.cells[key] = row
        row = self.cells[key]
        saved = row["pool"]
        pool = PoolAnswers(_answers_of(saved), saved["depth"], tuple(saved["lifted"]), saved["passes"], saved["note"])
        return pool, _answers_of(row["test"])


def _answers_json(answers: Answers) -> dict[str, Any]:
    assert answers.topk is not None
    return {"labels": answers.labels.tolist(), "topk": answers.topk.as_json()}


def _answers_of(saved: dict[str, Any]) -> Answers:
    return Answers(np.array(saved["labels"], dtype=float), AnswerTopK.from_json(saved["topk"]))


def prompt_name(demonstrations: int) -> str:
    """The rows' prompt: the template (``manual``) or the template showing demonstrations (``in_context``)."""
    return "in_context" if demonstrations else "manual"


def cache_file(cache_dir: Path, model: str, demonstrations: int, lifted: bool = False, seed: int | None = None
               ) -> Path:
    """Where one model's answers are kept: per prompt (the template's with demonstrations apart), deep or lifted.
    The deep answers are keyed by example text, so the template showing demonstrations, drawn per seed, keeps them
    per `seed` (the lifted stores' keys name the seed)."""
    shown = f"demos{demonstrations}-" + (f"s{seed}-" if seed is not None else "") if demonstrations else ""
    return cache_dir / f"{'lifted-' if lifted else ''}{shown}{model}.jsonl"


def lift_method(k: int, lift: int, demonstrations: int = 0) -> str:
    return f"{prompt_name(demonstrations)}_readout_top{k}_lift{lift}"


def lift_rows(task: Task, model: str, seed: int, backend: Backend, pool_cached: Answers, test: Answers, k: int,
              lift: int, store: LiftedStore, method: str | None = None) -> list[dict[str, Any]]:
    """The labels-lifted top-`k` readout with the `lift` tokens listed most often on the pool also read below the
    list, as a run's readout reads them (`bbtune.search.readouts.fitted`, on the model itself: exact values, not
    the cached lists'; kept in `store`), its out-of-fold choice and what it costs per input through an API;
    `pool_cached`, `test`: the cached deep answers, which price the label words' own lifts."""
    pool_examples = list(task.train) + list(task.dev)
    pool, test_lifted = store.answers(backend, task, seed, k, lift)
    fitted = fit_on_pool(pool, task.format.label_ids(pool_examples), AUTO, seed)
    acc = float(np.mean(fitted.log_scores(test_lifted).argmax(axis=1) == task.format.label_ids(task.test)))
    per_input = lift_rounds(len(fitted.lift), k)
    extra = float(missing_labels(test, k).any(axis=1).mean())
    return [{"task": task.name, "model": model, "seed": seed, "wall_s": None, "top_k": k, "labels_asked": True,
             "lifted": len(fitted.lift), "method": method or lift_method(k, lift),
             "calls_per_run": math.ceil(len(pool_examples) / EVAL_BATCH) * fitted.passes,
             "requests_per_run": len(pool_examples) * (1 + lift_rounds(lift, k))
             + int(missing_labels(pool_cached, k).any(axis=1).sum()),
             "calls_per_input": round(1 + extra + per_input, 3), "test_acc": 100 * acc,
             "readout": fitted.choice.kind, "choice": fitted.choice.as_dict()}]


def held_out_accuracy(row: dict[str, Any]) -> float:
    """The out-of-fold accuracy on the training pool of the readout a row chose (its evidence, never test)."""
    return next(s["accuracy"] for s in row["choice"]["scores"] if s["kind"] == row["choice"]["kind"])


def either_rows(rows: Sequence[dict[str, Any]], first: str, second: str, method: str,
                p_values: dict[tuple[Any, ...], float], alpha: float = RICHER_ALPHA) -> list[dict[str, Any]]:
    """Per cell with both, the row of `first` (the cheaper prompt, the floor) or of `second` where its readout is
    more accurate out of fold on the training pool *beyond noise* (`p_values[cell]`, the paired test on the pool
    examples both read, at the readout choice's level `RICHER_ALPHA`; `alpha` 1: more accurate is enough), as
    `method`: what a user running both and keeping the better gets. It reads its pool twice, so it costs both
    rows' requests per run; per input, the chosen one's."""
    by_cell: dict[tuple[Any, ...], dict[str, dict[str, Any]]] = {}
    for row in rows:
        if row["method"] in (first, second):
            by_cell.setdefault((row["task"], row["model"], row["seed"]), {})[row["method"]] = row
    out = []
    for cell, both in by_cell.items():
        if len(both) < 2:
            continue
        a, b = both[first], both[second]
        better = held_out_accuracy(b) > held_out_accuracy(a) and p_values[cell] <= alpha
        kept = b if better else a
        out.append({**kept, "method": method, "kept": kept["method"], "wall_s": None, "p_value": p_values[cell],
                    "calls_per_run": a["calls_per_run"] + b["calls_per_run"],
                    "requests_per_run": a["requests_per_run"] + b["requests_per_run"]})
    return out


def paired_p_value(first: tuple[list[Example], Answers, str], second: tuple[list[Example], Answers, str],
                   y_of: Any, seed: int) -> float:
    """One-sided exact McNemar p-value that `second`'s readout is right held out more often than `first`'s on the
    pool examples both read (each: its pool, its answers, its chosen readout kind)."""
    right = []
    for examples, answers, kind in (first, second):
        _, correct = out_of_fold(ReadoutKind(kind), answers, y_of(examples), DEFAULT_FOLDS, seed)
        right.append({(ex.text, ex.text_b, ex.label): ok for ex, ok in zip(examples, correct)})
    common = [key for key in right[1] if key in right[0]]
    a, b = (np.array([r[key] for key in common]) for r in right)
    return mcnemar_p_value(int(np.sum(b & ~a)), int(np.sum(a & ~b)))


def missing_labels(answers: Answers, k: int) -> np.ndarray:
    """(B, L) which label scores fall below the top-`k` list: below its `k`-th value, or below its last where it
    holds fewer (a server lists k token ids; their texts, merged, may be fewer)."""
    assert answers.topk is not None
    last = np.array([row[min(k, len(row)) - 1] if row else -np.inf for row in answers.topk.logprobs])
    return answers.labels < last[:, None]


def cell_rows(task: Task, model: str, seed: int, pool: Answers, test: Answers, y_pool: np.ndarray,
              y_test: np.ndarray, depths: Sequence[int], wall_s: float | None,
              each: Sequence[ReadoutKind] = tuple(ReadoutKind), name: str = "manual") -> list[dict[str, Any]]:
    """The cell's rows: the readouts of `each` fitted on the pool one by one and the out-of-fold choice, at every
    depth; methods ``{name}_...`` (`prompt_name`)."""
    rows = []
    for k, asked in [(k, asked) for k in depths for asked in ((False, True) if k < DEEP else (False,))]:
        fit, held = at_depth(pool, k, asked), at_depth(test, k, asked)
        # a second request for each input whose labels are not all in its list
        extra = float(missing_labels(test, k).any(axis=1).mean()) if asked else 0.0
        extra_pool = int(missing_labels(pool, k).any(axis=1).sum()) if asked else 0
        base = {"task": task.name, "model": model, "seed": seed, "wall_s": None, "top_k": k,
                "calls_per_run": math.ceil(len(y_pool) / EVAL_BATCH), "requests_per_run": len(y_pool) + extra_pool,
                "calls_per_input": round(1 + extra, 3), "labels_asked": asked}
        if asked:
            readout, choice = choose_readout(fit, y_pool, seed=seed)
            acc = float(np.mean(readout.predict(held) == y_test))
            rows.append({**base, "method": f"{name}_readout_top{k}_labels", "test_acc": 100 * acc, "wall_s": wall_s,
                         "readout": choice.kind, "choice": choice.as_dict()})
            continue
        for kind in each:
            readout = make_readout(kind).fit(fit, y_pool)
            acc = float(np.mean(readout.predict(held) == y_test))
            rows.append({**base, "method": f"{name}_{kind.value}_top{k}", "test_acc": 100 * acc})
        readout, choice = choose_readout(fit, y_pool, seed=seed)
        acc = float(np.mean(readout.predict(held) == y_test))
        rows.append({**base, "method": f"{name}_readout_top{k}", "test_acc": 100 * acc, "wall_s": wall_s,
                     "readout": choice.kind, "choice": choice.as_dict()})
    return rows


def rows_to_matrix(path: Path = OUT) -> list[dict[str, Any]]:
    """The rows the matrix takes from a readouts file: the out-of-fold choice at each depth (the per-readout rows
    stay on the benchmark page)."""
    return [r for r in json.loads(path.read_text())["rows"] if "choice" in r]


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=["smollm2", "gemma3-270m"])
    ap.add_argument("--tasks", nargs="+", default=None, help="task names of the matrix spec (default: all)")
    ap.add_argument("--seeds", nargs="+", type=int, default=None)
    ap.add_argument("--depths", nargs="+", type=int, default=[20, DEEP])
    ap.add_argument("--cache", default="/tmp/bbtune-readout-cache", help="folder for the per-model answer caches")
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--rechoose", action="store_true",
                    help="redo only the out-of-fold choice of the cells already in --out, from the cache (after a "
                         "change of the choice rule; each readout's own rows do not depend on it, and only a readout "
                         "the file has no rows of gets them)")
    ap.add_argument("--rescore", action="store_true",
                    help="with --rechoose: score the answers the cache lacks instead of skipping their cells")
    ap.add_argument("--cached-only", action="store_true",
                    help="only the cells whose answers are all in the cache (refit the readouts, score nothing)")
    ap.add_argument("--demonstrations", type=int, default=0,
                    help="this many training examples per class shown before every input (taken out of train, "
                         "`TaskConfig.demonstrations`); rows in_context_* instead of manual_*")
    ap.add_argument("--lift", type=int, default=0,
                    help="only the rows of the labels-lifted top-20 readout with this many tokens read below the "
                         "list, for every cell the cache holds (they replace earlier rows of the same method); the "
                         "model reads pool and test again")
    ap.add_argument("--either", action="store_true",
                    help="with --lift N --demonstrations D: add the rows keeping, per cell, the template, or the "
                         "template with demonstrations where its readout is more accurate out of fold beyond noise "
                         "(paired test on the pool; no model)")
    args = ap.parse_args(argv)
    if args.either:
        return add_either_rows(Path(args.out), Path(args.cache), args.lift, args.demonstrations)
    if args.lift:
        return add_lift_rows(Path(args.out), Path(args.cache), args.models, args.tasks, args.seeds, args.lift,
                             demonstrations=args.demonstrations)
    torch.set_num_threads(1)
    grid = tomllib.loads(SPEC.read_text())["grid"]
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    done = {(r["task"], r["model"], r["seed"]) for r in rows}
    if args.rechoose:
        redo, done, args.cached_only = done, set(), not args.rescore
        walls = {(r["task"], r["model"], r["seed"], r["method"]): r["wall_s"] for r in rows if "choice" in r}
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    name = prompt_name(args.demonstrations)
    for model in args.models:
        backend = backend_for(model)
        caches: dict[Path, AnswerCache] = {}  # one per file: the template's serves every seed
        for spec in grid["tasks"]:
            if args.tasks and spec["name"] not in args.tasks:
                continue
            for seed in args.seeds or grid["seeds"]:
                if (spec["name"], model, seed) in done:
                    continue
                task = matrix_task(spec, seed).with_demonstrations(args.demonstrations, seed)
                path = cache_file(Path(args.cache), model, args.demonstrations, seed=seed)
                if path not in caches:
                    caches[path] = AnswerCache(path)
                cache = caches[path]
                start = time.perf_counter()
                pool_examples = list(task.train) + list(task.dev)
                if args.cached_only and not cache.holds(task, pool_examples + list(task.test)):
                    continue
                if args.rechoose and (spec["name"], model, seed) not in redo:
                    continue
                pool, test = cache.answers(backend, task, pool_examples), cache.answers(backend, task, task.test)
                wall = None if args.cached_only else time.perf_counter() - start  # refitting alone is not the cost
                have = {r["method"] for r in rows if (r["task"], r["model"], r["seed"]) == (spec["name"], model, seed)}
                each = [kind for kind in ReadoutKind if not args.rechoose  # a rechoice adds a new readout's rows
                        or not all(f"{name}_{kind.value}_top{k}" in have for k in args.depths)]
                new = cell_rows(task, model, seed, pool, test, task.format.label_ids(pool_examples),
                                task.format.label_ids(task.test), args.depths, wall, each, name)
                if args.rechoose:  # the scoring time measured when the answers were read, not the refit's
                    new = [{**r, "wall_s": walls.get((r["task"], model, seed, r["method"]))} if "choice" in r else r
                           for r in new]
                    # the rows of this cell that the new ones redo give way; every other row stays
                    redone = {(r["task"], r["model"], r["seed"], r["method"]) for r in new}
                    rows = [r for r in rows if (r["task"], r["model"], r["seed"], r["method"]) not in redone]
                rows += new
                out.write_text(json.dumps({"rows": rows}, indent=1))  # every cell kept as it lands
                auto = {r["top_k"]: (r["test_acc"], r["readout"]) for r in new if "readout" in r}
                print(f"{spec['name']} {model} s{seed}: " + ", ".join(
                    f"top-{k} {a:.1f} ({name})" for k, (a, name) in auto.items()), flush=True)


def add_either_rows(out: Path, cache_dir: Path, lift: int, demonstrations: int, k: int = 20) -> None:
    """`either_rows` of the template's and the demonstrations' lifted rows in `out`, replacing earlier ones; the
    paired tests read the answers the lifted stores kept (no model)."""
    rows = json.loads(out.read_text())["rows"]
    method = f"manual_or_in_context_readout_top{k}_lift{lift}"
    first, second = lift_method(k, lift), lift_method(k, lift, demonstrations)
    specs = {spec["name"]: spec for spec in tomllib.loads(SPEC.read_text())["grid"]["tasks"]}
    chosen = {(r["task"], r["model"], r["seed"], r["method"]): r["readout"] for r in rows
              if r["method"] in (first, second)}
    p_values = {}
    for task_name, model, seed in {key[:3] for key in chosen}:
        if (task_name, model, seed, first) not in chosen or (task_name, model, seed, second) not in chosen:
            continue
        sides = []
        for shown, name in ((0, first), (demonstrations, second)):
            task = matrix_task(specs[task_name], seed).with_demonstrations(shown, seed)
            store = LiftedStore(cache_file(cache_dir, model, shown, lifted=True))
            if store.key(task, seed, k, lift) not in store.cells:
                raise SystemExit(f"{store.path} lacks {store.key(task, seed, k, lift)}: read it with --lift first")
            pool, _ = store.answers(NO_MODEL, task, seed, k, lift)
            sides.append((list(task.train) + list(task.dev), pool.answers, chosen[(task_name, model, seed, name)]))
        p_values[(task_name, model, seed)] = paired_p_value(sides[0], sides[1], task.format.label_ids, seed)
    if not p_values:
        raise SystemExit(f"{out} holds no cell with both {first} and {second} rows; add them with --lift (and "
                         "--demonstrations)")
    for name, alpha in ((method, RICHER_ALPHA), (f"{method}_acc", 1.0)):  # beyond noise; more accurate at all
        new = either_rows(rows, first, second, name, p_values, alpha)
        rows = [r for r in rows if r["method"] != name] + new
        kept = sum(r["kept"] == second for r in new)
        print(f"{name}: {len(new)} cells, the demonstrations kept on {kept}, mean test "
              f"{sum(r['test_acc'] for r in new) / len(new):.1f}")
    out.write_text(json.dumps({"rows": rows}, indent=1))


def add_lift_rows(out: Path, cache_dir: Path, models: Sequence[str], tasks: Sequence[str] | None,
                  seeds: Sequence[int] | None, lift: int, k: int = 20, demonstrations: int = 0) -> None:
    """`lift_rows` for every cell whose answers the cache holds (the pool and test read again by the model, once
    each, with the lifted tokens, unless the lifted store has them: then the readouts are refitted and the row
    keeps the wall time of the reading). With `demonstrations` the template shows that many training examples
    per class (no deep answers of it are cached: the label words' lifts are priced from the lifted answers, whose
    label values are exact and whose lists are the top-`k`)."""
    grid = tomllib.loads(SPEC.read_text())["grid"]
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    method = lift_method(k, lift, demonstrations)
    walls = {(r["task"], r["model"], r["seed"]): r["wall_s"] for r in rows if r["method"] == method}
    for model in models:
        backend = backend_for(model)
        # the template's deep answers price its label words' lifts; demonstrations have none (priced from the store)
        cache = None if demonstrations else AnswerCache(cache_file(cache_dir, model, 0))
        store = LiftedStore(cache_file(cache_dir, model, demonstrations, lifted=True))
        for spec in grid["tasks"]:
            for seed in seeds or grid["seeds"]:
                task = matrix_task(spec, seed).with_demonstrations(demonstrations, seed)
                pool_examples = list(task.train) + list(task.dev)
                if (tasks and spec["name"] not in tasks) or (
                        cache is not None and not cache.holds(task, pool_examples + list(task.test))):
                    continue
                stored = store.key(task, seed, k, lift) in store.cells
                started = time.perf_counter()
                if cache is None:
                    pool_read, test_read = store.answers(backend, task, seed, k, lift)
                    priced = pool_read.answers, test_read
                else:
                    priced = cache.answers(backend, task, pool_examples), cache.answers(backend, task, task.test)
                new = lift_rows(task, model, seed, backend, *priced, k, lift, store, method)
                wall = walls.get((task.name, model, seed)) if stored else round(time.perf_counter() - started, 1)
                new = [{**row, "wall_s": wall} for row in new]
                rows = [r for r in rows if (r["task"], r["model"], r["seed"], r["method"]) != (
                    spec["name"], model, seed, method)] + new
                out.write_text(json.dumps({"rows": rows}, indent=1))
                print(f"{spec['name']} {model} s{seed}: {new[0]['test_acc']:.1f} ({new[0]['readout']}, "
                      f"{new[0]['calls_per_input']} requests per input) {wall} s", flush=True)


if __name__ == "__main__":
    main()
