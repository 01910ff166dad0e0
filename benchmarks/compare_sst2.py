"""Every method side by side on SST-2 (16-shot) with SmolLM2-135M, sized for a 2-core CPU.

    .venv/bin/python benchmarks/compare_sst2.py --data ../shared/data/sst2 --seeds 13 42 100 \\
        --out reports/compare_sst2

Seeds in parallel: `bbtune sweep benchmarks/specs/compare_sst2.toml` runs the same grid as jobs on a process pool
(or Ray) into one report, instead of one process per seed joined with --merge (which still works).

Writes report.md, results.json and accuracy_vs_calls.png to --out. The defaults are the SST-2 goal's real budget on
CPU: BBT 300 calls from the cue (d=500, popsize 10, calibrated, as `bbtune tune`), prompt tuning and PEZ 100
AdamW steps of 8 examples with 5 prompt tokens, one demonstration per class in context, the whole test set; the
paper's BBT setting (50 tokens, popsize 20, 8000 calls) needs a GPU. With --transfer-mock the hard prompts are also
scored, as text, through the remote backend against an in-process mock server serving the same model.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import sys
import time
from pathlib import Path
from typing import Iterator

from task_args import add_task_args

from bbtune.app.cli import CompareConfig, run_compare
from bbtune.app.compare import METHODS
from bbtune.app.comparison import Comparison
from bbtune.app.report import read_report, write_report
from bbtune.backends.base import Backend
from bbtune.backends.factory import LocalConfig
from bbtune.constants import CPU_BUDGET_CALLS, CPU_INTRINSIC_DIM, CPU_POPSIZE
from bbtune.runs.tuner import TuneConfig
from bbtune.tasks import TaskConfig


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_task_args(p)
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--out", default="reports/compare_sst2", help="report folder")
    p.add_argument("--placement", default="suffix", choices=["prefix", "suffix"])
    p.add_argument("--prompt-tokens", type=int, default=0, help="0 = BBT from the cue (its length), gradient methods 5")
    p.add_argument("--budget", type=int, default=CPU_BUDGET_CALLS, help="BBT / random search: training calls")
    p.add_argument("--popsize", type=int, default=CPU_POPSIZE)
    p.add_argument("--intrinsic-dim", type=int, default=CPU_INTRINSIC_DIM)
    p.add_argument("--eval-every", type=int, default=50, help="dev evaluation every N training calls")
    p.add_argument("--steps", type=int, default=100, help="prompt tuning / PEZ: gradient steps")
    p.add_argument("--batch-size", type=int, default=8, help="prompt tuning / PEZ: examples per step")
    p.add_argument("--shots-per-class", type=int, default=1, help="in-context demonstrations per label")
    p.add_argument("--transfer-mock", action="store_true", help="also score hard prompts through a mock server")
    p.add_argument("--transfer-limit", type=int, default=32, help="test sentences for the transfer scores")
    p.add_argument("--transfer-mode", default="echo", choices=["echo", "top_logprobs"],
                   help="how the mock is asked: echo (exact label log-probs) or top_logprobs (top-5, bounded)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--merge", nargs="+", default=[], metavar="FOLDER",
                   help="no runs: merge the report folders of earlier runs (e.g. one process per seed) into --out")
    return p.parse_args(argv)


@contextlib.contextmanager
def mock_transfer_target(model: str, mode: str) -> Iterator[Backend]:
    """A RemoteBackend talking to a mock OpenAI-compatible server that serves `model` in this process."""
    from bbtune.backends.remote import RemoteConfig
    from mock_server.config import ServerConfig
    from mock_server.server import MockServer

    with MockServer(ServerConfig(model=model, port=0)) as server:
        with RemoteConfig(base_url=server.url, model=model, mode=mode).build() as remote:
            yield remote


def merge_reports(folders: list[str], out: str) -> Comparison:
    """One report from several (one per seed, run in parallel): their runs side by side, the table and plot again."""
    parts = [read_report(f) for f in folders]
    first = parts[0]
    merged = dataclasses.replace(first, seeds=tuple(s for p in parts for s in p.seeds), out_dir=Path(out),
                                 results=[r for p in parts for r in p.results],
                                 transfer=[t for p in parts for t in p.transfer])
    Path(out).mkdir(parents=True, exist_ok=True)
    write_report(merged)
    return merged


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.merge:
        merge_reports(args.merge, args.out)
        print((Path(args.out) / "report.md").read_text())
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    task = TaskConfig(data=args.data, preset=args.preset, k=args.k, placement=args.placement, test_limit=args.test_limit)
    backend = LocalConfig(model=args.model, device="cpu")
    tune = TuneConfig(prompt_tokens=args.prompt_tokens, budget_calls=args.budget, popsize=args.popsize,
                      intrinsic_dim=args.intrinsic_dim, eval_every=args.eval_every)
    config = CompareConfig(methods=tuple(args.methods), seeds=tuple(args.seeds), out=args.out, grad_steps=args.steps,
                           grad_batch_size=args.batch_size, shots_per_class=args.shots_per_class,
                           transfer_limit=args.transfer_limit)
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:
        target = stack.enter_context(mock_transfer_target(args.model, args.transfer_mode)) if args.transfer_mock else None
        report = run_compare(config, task, backend, tune, transfer_to=target)
    print(f"\n{(report.out_dir / 'report.md').read_text()}\n\ndone in {time.perf_counter() - started:.0f} s; "
          f"report in {report.out_dir}/", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
