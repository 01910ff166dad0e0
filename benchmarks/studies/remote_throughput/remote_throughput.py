"""Throughput of RemoteBackend against the mock server: requests per second, and client overhead.

The mock runs in its own process (``python -m mock_server``), so the client's CPU time is its own: *client
overhead* is the CPU time the client process spends per request (building bodies, JSON, httpx, parsing,
the event loop), i.e. time not spent waiting on the server. Measured with zero added latency (the server's
compute bounds the rate) and with added latency (concurrency should hide it), at several concurrency
levels, one prompt per request and with lists of prompts.

    python benchmarks/studies/remote_throughput/remote_throughput.py      # prints a table, writes the JSON beside it
    python benchmarks/studies/remote_throughput/remote_throughput.py --latency 0 0.05 --concurrency 1 4 16 64
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.core.prompts import HardPrompt
from bbtune.tasks import Example, TaskFormat, Template

FMT = TaskFormat(Template("{text} It was{label}"), {"negative": " terrible", "positive": " great"})
TEXTS = ["a great film", "I love it", "an excellent and moving story", "good fun for everyone", "a terrible film",
         "I hate it", "a boring movie with bad jokes", "the ending is awful"]


def start_server(model: str, latency: float) -> tuple[subprocess.Popen, str]:
    cmd = [sys.executable, "-m", "mock_server", "--model", model, "--port", "0", "--latency-s", str(latency),
           "--max-logprobs", "20"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).resolve().parents[3])
    line = proc.stdout.readline() if proc.stdout else ""
    if " at " not in line:
        proc.kill()
        raise RuntimeError(f"mock server did not start: {line!r}")
    return proc, line.split(" at ")[1].split(" ")[0]


def prompts(n: int, tokens: int, seed: int) -> list[HardPrompt]:
    rng = np.random.default_rng(seed)
    words = [" good", " bad", " film", " story", " fun", " the", " great", " news"]
    return [HardPrompt((), "".join(rng.choice(words, tokens))) for _ in range(n)]


def measure(url: str, model: str, concurrency: int, batch: int, rows: int, repeats: int) -> dict[str, float]:
    examples = [Example(t, "positive") for t in TEXTS]
    n_prompts = max(1, rows // len(examples))
    cfg = RemoteConfig(base_url=url, model=model, local_model=model, top_k=5, batch_size=batch,
                       concurrency=concurrency, probe=False, max_retries=0)
    with RemoteBackend(cfg) as backend:
        backend.score(prompts(2, 3, seed=999), examples[:2], FMT)  # warm up: tokenizer, connections
        start = dict(requests=backend.stats.requests, server=backend.stats.server_seconds)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        for r in range(repeats):
            backend.score(prompts(n_prompts, 3, seed=r), examples, FMT)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        requests = backend.stats.requests - start["requests"]
    return {"requests": requests, "rows": repeats * n_prompts * len(examples), "wall_s": wall,
            "requests_per_s": requests / wall, "rows_per_s": repeats * n_prompts * len(examples) / wall,
            "client_cpu_ms_per_request": 1000 * cpu / requests, "client_cpu_share": cpu / wall}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="mock model: tiny (default) or smollm2")
    parser.add_argument("--latency", type=float, nargs="+", default=[0.0, 0.05], help="added server latency (s)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16, 64])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8], help="prompts per request")
    parser.add_argument("--rows", type=int, default=64, help="(prompt, example) rows per score() call")
    parser.add_argument("--repeats", type=int, default=3, help="score() calls per setting")
    parser.add_argument("--out", default=str(Path(__file__).parent / "remote_throughput.json"))
    args = parser.parse_args(argv)
    results = []
    header = f"{'latency':>8} {'conc':>5} {'batch':>5} {'req/s':>8} {'rows/s':>8} {'client ms/req':>14} {'client cpu':>10}"
    print(header)
    print("-" * len(header))
    for latency in args.latency:
        proc, url = start_server(args.model, latency)
        try:
            for batch in args.batch:
                for conc in args.concurrency:
                    row = {"latency_s": latency, "concurrency": conc, "batch": batch,
                           **measure(url, args.model, conc, batch, args.rows, args.repeats)}
                    results.append(row)
                    print(f"{latency:>8.3f} {conc:>5} {batch:>5} {row['requests_per_s']:>8.1f} {row['rows_per_s']:>8.1f} "
                          f"{row['client_cpu_ms_per_request']:>14.2f} {row['client_cpu_share']:>10.0%}", flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=10)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": args.model, "rows_per_call": args.rows, "repeats": args.repeats,
                               "machine": platform.platform(), "python": platform.python_version(),
                               "results": results}, indent=2))
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
