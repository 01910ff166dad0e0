"""Text mode vs log-prob mode: tuning a hard prompt through a server that returns only text, against
the same server read through its log-probs, at the same number of calls.

One mock server over SmolLM2-135M-Instruct (float32, in a thread of this process) answers every row; the text
rows run it with ``--no-logprobs`` (text only, as a hosted chat API). Per row: the tuned prompt's test accuracy
as the run scores it (text mode: its answers parsed to labels, an unparsed answer wrong) and scored exactly by
the local model (the same prompt's label log-probs: how good the prompt found through text is), the manual
prompt's, calls, HTTP requests, answers naming no label, wall time. With llama-cpp-python installed
(`server` extra) its server on the embedded GGUF adds a text-mode row (`benchmarks/servers.py` starts it).

    python benchmarks/studies/text_mode/text_mode.py        # prints the table, writes text_mode.json beside it

Small on purpose (2 CPU cores shared with other jobs, one process; the mock runs every sequence alone, ~0.25 s
of CPU per SmolLM2 forward): SST-2 k=8 per class, 36 calls, 50 test sentences, answers of 1 token (the label
word where the model answers with it; an answer that starts otherwise is unparsed, and the search learns to
avoid it; each more token costs a whole forward, as the mock decodes without a KV cache).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import torch

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bbtune.backends.remote import RemoteBackend, RemoteConfig  # noqa: E402
from bbtune.core.table import markdown_table  # noqa: E402
from bbtune.errors import BBTuneError  # noqa: E402
from bbtune.runs.tuner import TuneConfig, run_tuner  # noqa: E402
from bbtune.search.losses import accuracy  # noqa: E402
from bbtune.tasks import Task, TaskConfig  # noqa: E402
from task_args import DATA  # noqa: E402

MODEL = "smollm2"
COLUMNS = ["server", "mode", "test acc (as run)", "test acc (log-probs)", "manual test acc (as run)", "calls",
           "requests", "unparsed", "wall s", "prompt"]
# (name, RemoteConfig fields): the log-prob baseline, then text mode over each endpoint, greedy and sampled
PLANS = [
    ("log-probs", {"mode": "top_logprobs"}),
    ("text, completions, n=1 greedy", {"mode": "text", "answer_endpoint": "completions"}),
    ("text, chat, n=1 greedy", {"mode": "text", "answer_endpoint": "chat"}),
    # 3x the answers, not run by default; at T=1 the probe refused it (83% of the sample's 1-token answers unparsed)
    ("text, completions, n=3 T=0.5", {"mode": "text", "answer_endpoint": "completions", "answer_samples": 3,
                                       "answer_temperature": 0.5, "max_unparsed": 0.8}),
]


@contextmanager
def mock(logprobs: bool) -> Iterator[str]:
    from mock_server import MockServer, ServerConfig, shared_scorer

    server = MockServer(ServerConfig(model=MODEL, port=0, logprobs=logprobs), scorer=shared_scorer(MODEL)).start()
    try:
        yield server.url
    finally:
        server.stop()


def one_run(server: str, url: str, name: str, task: Task, cfg: TuneConfig, **remote: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"server": server, "mode": name}
    rcfg = RemoteConfig(**{"base_url": url, "model": MODEL, "local_model": MODEL, "concurrency": 1, **remote})
    start = time.perf_counter()
    with RemoteBackend(rcfg) as backend:
        try:
            result = run_tuner(task, backend, cfg, progress=False)
        except BBTuneError as err:
            row.update(error=str(err), wall_s=time.perf_counter() - start, requests=backend.stats.requests)
            return row
        wall = time.perf_counter() - start
        stats = backend.stats
        exact = backend.reference().score([result.hard_prompt], task.test, task.format)
        row.update({"test acc (as run)": result.metrics.test_acc,
                    "test acc (log-probs)": float(accuracy(exact, task.format.label_ids(task.test))[0]),
                    "manual test acc (as run)": result.metrics.manual_test_acc,
                    "calls": result.metrics.calls, "requests": stats.requests,
                    "unparsed": f"{stats.unparsed_rate:.1%}" if stats.answers else "-", "wall s": round(wall, 1),
                    "prompt": repr(result.hard_prompt.text), "answers": stats.answers,
                    "answers_unparsed": stats.answers_unparsed, "completion_tokens": stats.completion_tokens,
                    "probe": asdict(backend.probe_) if backend.probe_ else None, "config": rcfg.public()})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(DATA / "sst2"))
    ap.add_argument("--k", type=int, default=8, help="training examples per class (dev the same)")
    ap.add_argument("--test-limit", type=int, default=50)
    ap.add_argument("--budget-calls", type=int, default=36)
    ap.add_argument("--plans", default="0,1,2", help="which PLANS rows to run (3: n=3 sampled answers)")
    ap.add_argument("--answer-tokens", type=int, default=1, help="text mode: tokens per answer (see the docstring)")
    ap.add_argument("--llama", action="store_true", help="add llama-cpp-python's server, the --llama-plans rows")
    ap.add_argument("--llama-plans", default="0,1,2", help="which PLANS rows to run on llama-cpp-python's server")
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent / "text_mode.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = TaskConfig(data=args.data, preset="sst2", k=args.k, test_limit=args.test_limit).load()
    cfg = TuneConfig(mode="hard", budget_calls=args.budget_calls, popsize=6, prompt_tokens=3, intrinsic_dim=100,
                     eval_every=12, seed=0)
    rows = []
    for i in _indices(args.plans):
        name, remote = PLANS[i]
        with mock(logprobs=remote["mode"] != "text") as url:
            rows.append(one_run("mock" + (" --no-logprobs" if remote["mode"] == "text" else ""), url, name, task, cfg,
                                answer_tokens=args.answer_tokens, **remote))
        print(markdown_table(rows[-1:], COLUMNS), flush=True)
        write(args, cfg, rows)
    if args.llama and importlib.util.find_spec("llama_cpp") is not None:
        from servers import LLAMA_MODEL, llama_server

        with llama_server() as url:
            for i in _indices(args.llama_plans):
                name, remote = PLANS[i]
                rows.append(one_run("llama-cpp", url, name, task, cfg, answer_tokens=args.answer_tokens,
                                    **{**remote, "model": LLAMA_MODEL}))
                print(markdown_table(rows[-1:], COLUMNS), flush=True)
                write(args, cfg, rows)
    print(markdown_table(rows, COLUMNS))
    write(args, cfg, rows)
    print(f"wrote {args.out}")


def _indices(plans: str) -> list[int]:
    """Row numbers of PLANS from "0,1,2" ("" = none)."""
    return [int(i) for i in plans.split(",") if i.strip()]


def write(args: argparse.Namespace, cfg: TuneConfig, rows: list[dict[str, Any]]) -> None:
    """After every row, so a stopped benchmark keeps what it measured."""
    setup = {"data": args.data, "k": args.k, "test_limit": args.test_limit, "budget_calls": args.budget_calls,
             "tune": asdict(cfg), "model": MODEL, "threads": 1, "answer_tokens": args.answer_tokens}
    Path(args.out).write_text(json.dumps({"setup": setup, "rows": rows}, indent=1, default=str))


if __name__ == "__main__":
    main()
