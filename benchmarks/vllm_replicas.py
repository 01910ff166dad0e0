"""A CMA-ES population across two vLLM replicas: throughput against one server, and failover when
one replica is killed (SIGKILL) mid-population.

Same machine, same cores: one server with both cores (`VLLM_CPU_OMP_THREADS_BIND=0-1`) against two servers
with one core each (`0` and `1`), each scoring the same populations of soft prompts on SST-2's training
examples (`prompt_embeds`). Scores must agree with the local model's whichever replica answered.

    python benchmarks/vllm_replicas.py      # ~5 min on 2 cores; writes benchmarks/results/vllm_replicas.json

Short on purpose: two model servers at once on 2 shared cores.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.vllm_server import VllmConfig, VllmServer  # noqa: E402
from bbtune.backends.local import LocalBackend  # noqa: E402
from bbtune.backends.remote import RemoteBackend, RemoteConfig  # noqa: E402
from bbtune.core.prompts import SoftPrompt  # noqa: E402
from bbtune.tasks import Task, TaskConfig  # noqa: E402

EXACT = 1e-3


def population(local: LocalBackend, size: int, seed: int, n_tokens: int = 5) -> list[SoftPrompt]:
    """Vocabulary rows plus noise, as BBT's candidates around p0 are."""
    table = local.model.get_input_embeddings().weight.detach().float()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(size):
        rows = table[torch.randint(0, table.shape[0], (n_tokens,), generator=gen)]
        out.append(SoftPrompt(rows + 0.02 * torch.randn(rows.shape, generator=gen)))
    return out


def score(urls: Sequence[str], local: LocalBackend, prompts: list[SoftPrompt], task: Task,
          during: Any = None) -> tuple[np.ndarray, float, dict[str, Any]]:
    """One population on the training examples; `during(backend)` runs in a thread meanwhile (a crash)."""
    cfg = RemoteConfig(base_url=",".join(urls), model="smollm2", local_model="smollm2", mode="prompt_embeds",
                       top_k=1000, probe=False, max_retries=8)
    with RemoteBackend(cfg) as backend:
        backend._local = local
        timer = threading.Timer(during[0], during[1]) if during else None
        start = time.perf_counter()
        if timer:
            timer.start()
        scores = backend.score(prompts, task.train, task.format)
        wall = time.perf_counter() - start
        stats = backend.stats.as_dict()
    return scores, wall, {k: stats[k] for k in ("requests", "retries", "failovers", "endpoints", "errors")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--popsize", type=int, default=10)
    ap.add_argument("--kill-after-s", type=float, default=8.0, help="the second replica is killed this long in")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "vllm_replicas.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = TaskConfig(data=args.data, preset="sst2", k=args.k, test_limit=1).load()
    local = LocalBackend("smollm2")
    pops = [population(local, args.popsize, seed) for seed in range(3)]
    rows: list[dict[str, Any]] = []

    def row(name: str, urls: list[str], prompts: list[SoftPrompt], during: Any = None) -> None:
        scores, wall, stats = score(urls, local, prompts, task, during)
        exact = local.score(prompts, task.train, task.format)
        present = ~np.isnan(scores)
        seqs = len(prompts) * len(task.train)
        rows.append({"setup": name, "replicas": len(urls), "sequences": seqs, "wall s": round(wall, 1),
                     "sequences/s": round(seqs / wall, 2), "missing": float(1 - present.mean()),
                     "max gap vs local": float(np.abs(scores - exact)[present].max()), **stats})
        print(rows[-1], flush=True)

    one = VllmServer(VllmConfig(threads_bind="0-1")).start()
    try:
        score([one.url], local, pops[0][:1], task)  # warm-up: first requests are slower
        row("one server, cores 0-1", [one.url], pops[0])
    finally:
        one.stop()
    two = [VllmServer(VllmConfig(threads_bind=str(core))).launch() for core in (0, 1)]
    try:
        for server in two:
            server.wait()
        urls = [s.url for s in two]
        score(urls, local, pops[0][:1], task)
        row("two servers, one core each", urls, pops[1])
        row(f"two servers, the second killed {args.kill_after_s:g} s in", urls, pops[2],
            during=(args.kill_after_s, two[1].kill))
    finally:
        for server in two:
            server.stop()
    setup = {"data": args.data, "k": args.k, "train examples": len(task.train), "popsize": args.popsize,
             "prompt tokens": 5, "concurrency per replica": RemoteConfig().concurrency,
             "prompts per request": RemoteConfig().batch_size}
    Path(args.out).write_text(json.dumps({"setup": setup, "rows": rows}, indent=1))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
