"""The template's top-20 readout through an OpenAI-shaped API, against the same readout computed locally.

For one matrix cell per task (the matrix's splits and test sets; SmolLM2, seed 13 by default), the manual template's
answers are read through the bundled mock server as a hosted API returns them: at most 20 log-probs
(`max_logprobs` 20, OpenAI chat's limit), in ``top_logprobs`` mode (completions, lists of prompts, label words
below the list read by a second request with ``logit_bias``) and in ``chat`` mode (one message per request, the
server's chat template around it). The readout is chosen out of fold on the pool and scored on test, as
`benchmarks/readouts.py` does locally; its ``manual_readout_top20_labels`` row is the local number to compare with
(the same answers where no chat template is involved). Rows go to ``benchmarks/results/readouts_remote.json``:

    python benchmarks/readouts_remote.py                      # 4 cells x 2 modes, ~30 min on one core
    python benchmarks/readouts_remote.py --cells trec:smollm2:13 --modes chat
    python benchmarks/readouts_remote.py --lift 95 --modes top_logprobs   # 95 more tokens read below the list

Each finished (cell, mode) is written as it lands; one already in ``--out`` is skipped.
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

from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.backends.wire import ScoreMode
from bbtune.core.prompts import MANUAL_PROMPT
from bbtune.errors import CapabilityError
from bbtune.search.readouts.fitted import AUTO, fit_run_readout
from bbtune.tasks import Task
from mock_server import MockServer, ServerConfig

SPEC = ROOT / "benchmarks" / "specs" / "matrix.toml"
LOCAL = ROOT / "benchmarks" / "results" / "readouts_manual.json"
OUT = ROOT / "benchmarks" / "results" / "readouts_remote.json"
DEPTH = 20  # OpenAI chat's top_logprobs limit
CELLS = ("sst2:smollm2:13", "trec:smollm2:13", "sst5:smollm2:13", "agnews:smollm2:13")


def remote_row(task: Task, model: str, seed: int, url: str, mode: str, local_acc: float | None,
               lift: int = 0) -> dict[str, Any]:
    """The cell's readout row through the server in `mode` (with `lift` tokens read below the list, as a run's
    readout reads them), with the requests it took and the local number."""
    pool_examples = list(task.train) + list(task.dev)
    y_test = task.format.label_ids(task.test)
    config = RemoteConfig(base_url=url, model=model, local_model=model, mode=ScoreMode(mode), top_k=DEPTH)
    started = time.perf_counter()
    with RemoteBackend(config) as backend:
        fitted = fit_run_readout(backend, MANUAL_PROMPT, pool_examples, task.format, AUTO, DEPTH, seed, lift)
        spent_on_pool = backend.stats.as_dict()["requests"]
        test = fitted.answers(backend, MANUAL_PROMPT, list(task.test), task.format)
        stats = backend.stats.as_dict()
    choice = fitted.choice
    acc = 100 * float(np.mean(fitted.log_scores(test).argmax(axis=1) == np.asarray(y_test)))
    return {"task": task.name, "model": model, "seed": seed, "method": method_name(mode, lift),
            "mode": mode, "top_k": DEPTH, "test_acc": acc, "local_test_acc": local_acc, "readout": choice.kind,
            "lifted": len(fitted.lift),
            "requests_per_run": spent_on_pool, "calls_per_input": 1,
            "requests_per_input": round((stats["requests"] - spent_on_pool) / len(task.test), 3),
            "test_n": len(task.test), "wall_s": round(time.perf_counter() - started, 1), "reason": choice.reason}


def method_name(mode: str, lift: int) -> str:
    return f"manual_readout_top{DEPTH}{f'_lift{lift}' if lift else ''}_{mode}_api"


def local_accuracies(path: Path = LOCAL, lift: int = 0) -> dict[tuple[str, str, int], float]:
    """Per cell, the labels-lifted top-20 readout (with `lift` tokens below the list) computed locally by
    benchmarks/readouts.py."""
    rows = json.loads(path.read_text())["rows"] if path.exists() else []
    method = f"manual_readout_top{DEPTH}_lift{lift}" if lift else f"manual_readout_top{DEPTH}_labels"
    return {(r["task"], r["model"], r["seed"]): r["test_acc"] for r in rows if r["method"] == method}


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cells", nargs="+", default=list(CELLS), help="TASK:MODEL:SEED of the matrix")
    ap.add_argument("--modes", nargs="+", default=["top_logprobs", "chat"], choices=["top_logprobs", "chat"])
    ap.add_argument("--out", default=str(OUT))
    ap.add_argument("--lift", type=int, default=0, help="tokens read below the list (TuneConfig.readout_lift)")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    specs = {t["name"]: t for t in tomllib.loads(SPEC.read_text())["grid"]["tasks"]}
    out = Path(args.out)
    rows = json.loads(out.read_text())["rows"] if out.exists() else []
    local = local_accuracies(lift=args.lift)
    for cell in args.cells:
        name, model, seed_text = cell.split(":")
        seed = int(seed_text)
        task = matrix_task(specs[name], seed)
        with MockServer(ServerConfig(model=model, port=0, max_logprobs=DEPTH)) as server:
            for mode in args.modes:
                method = method_name(mode, args.lift)
                if any((r["task"], r["model"], r["seed"], r["method"]) == (name, model, seed, method) for r in rows):
                    continue
                try:
                    row = remote_row(task, model, seed, server.url, mode, local.get((name, model, seed)), args.lift)
                except CapabilityError as err:  # what a user of such an API gets: kept as the cell's finding
                    row = {"task": name, "model": model, "seed": seed, "method": method, "mode": mode,
                           "top_k": DEPTH, "refused": str(err).split(". Fixes")[0]}
                rows.append(row)
                out.write_text(json.dumps({"rows": rows}, indent=1))  # every row kept as it lands
                print(f"{cell} {mode}: " + (f"refused: {row['refused']}" if "refused" in row else
                                            f"test {row['test_acc']:.1f} (local {row['local_test_acc']}), "
                                            f"readout {row['readout']}, {row['requests_per_input']} requests per "
                                            f"test input, {row['wall_s']:.0f} s"), flush=True)


if __name__ == "__main__":
    main()
