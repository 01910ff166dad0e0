"""Tuning through servers: our mock and independent ones (llama-cpp-python's OpenAI-compatible
server on the embedded SmolLM2 GGUF, the `server` extra; vLLM on its float32 HF folder, `make vllm-install`),
per scoring mode.

Per (server, mode): what the probe found (or why it refused), a small hard-prompt run on SST-2 (requests,
missing rate, wall time, test accuracy on a test sample), and agreement with local exact scores: random hard
prompts and the tuned one scored on the test sample by the server and by the local model from the same text
(`LocalBackend` scores a hard prompt as its rendered string). Agreement is the largest gap between the two
label-score margins (log p(label 1) - log p(label 0)) and the share of rows whose argmax agrees; chat is
not compared (the server wraps the text in its chat template).

    python benchmarks/servers.py            # prints the table, writes benchmarks/results/servers.json

Small on purpose (2 shared CPU cores): SST-2 k=4 per class, --budget-calls 12, --test-limit 32 test sentences.
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict
from pathlib import Path
from typing import Any, Iterator

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bbtune.backends.remote import RemoteBackend, RemoteConfig  # noqa: E402
from bbtune.search.discretize import Discretizer  # noqa: E402
from bbtune.errors import BBTuneError  # noqa: E402
from bbtune.backends.models import embedded_gguf  # noqa: E402
from bbtune.core.table import markdown_table  # noqa: E402
from bbtune.tasks import Task, TaskConfig  # noqa: E402
from bbtune.runs.tuner import TuneConfig, run_tuner  # noqa: E402

LLAMA_MODEL = "smollm2"  # the alias the llama-cpp server answers to
COLUMNS = ["server", "mode", "probe", "missing rate", "margin gap max", "argmax agree", "requests", "wall s",
           "test acc", "manual test acc"]


# ---------------------------------------------------------------------- the independent server


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def llama_server(threads: int = 1, start_timeout_s: float = 120.0, log: Path | None = None) -> Iterator[str]:
    """llama-cpp-python's server on the embedded SmolLM2 GGUF on a free port; yields its base URL (.../v1).

    `--logits_all true` is what lets it return log-probs of prompt tokens (echo); it serves one request at a
    time and answers a list of prompts with HTTP 500 (the probe finds out)."""
    port = free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(embedded_gguf()), "--model_alias", LLAMA_MODEL,
           "--host", "127.0.0.1", "--port", str(port), "--logits_all", "true", "--n_threads", str(threads),
           "--n_threads_batch", str(threads)]
    out = open(log, "w") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        wait_until_up(proc, url, start_timeout_s)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if log:
            out.close()  # type: ignore[union-attr]


def wait_until_up(proc: subprocess.Popen, url: str, timeout_s: float, name: str = "llama_cpp.server") -> None:
    """Returns once the server at `url` lists its models; raises if its process exits or time runs out."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{name} exited with code {proc.returncode} before answering")
        try:
            if httpx.get(f"{url}/models", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{name} did not answer {url}/models within {timeout_s:.0f} s")


@contextmanager
def mock_server() -> Iterator[str]:
    """Our mock over the same model (SmolLM2, float32), default quirks, in a thread of this process."""
    from mock_server import MockServer, ServerConfig, shared_scorer

    server = MockServer(ServerConfig(model=LLAMA_MODEL, port=0), scorer=shared_scorer(LLAMA_MODEL)).start()
    try:
        yield server.url
    finally:
        server.stop()


# ---------------------------------------------------------------------- measurements


def agreement(remote: np.ndarray, local: np.ndarray) -> dict[str, Any]:
    """Largest gap between remote and local label margins (rows with no missing label) and argmax agreement."""
    ok = ~np.isnan(remote).any(axis=-1)
    if not ok.any():
        return {"margin gap max": None, "argmax agree": None}
    margin = lambda s: s[..., -1] - s[..., 0]  # noqa: E731  (two-label tasks)
    gap = np.abs(margin(remote) - margin(local))[ok]
    same = (remote.argmax(-1) == local.argmax(-1))[ok]
    return {"margin gap max": float(gap.max()), "argmax agree": float(same.mean()), "rows compared": int(ok.sum())}


def one_run(name: str, url: str, mode: str, task: Task, cfg: TuneConfig, n_prompts: int, **remote_kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {"server": name, "mode": mode + "".join(f" {k}={v}" for k, v in remote_kw.items())}
    rcfg = RemoteConfig(base_url=url, model=LLAMA_MODEL, local_model=LLAMA_MODEL, mode=mode, concurrency=1, **remote_kw)
    start = time.perf_counter()
    with RemoteBackend(rcfg) as backend:
        try:
            result = run_tuner(task, backend, cfg, progress=False)
        except BBTuneError as err:
            row.update(probe="refused: " + _first_clause(str(err)), probe_error=str(err), wall_s=time.perf_counter() - start,
                       requests=backend.stats.requests)
            return _cells(row)
        row["wall_s"] = time.perf_counter() - start
        stats, probe = backend.stats, backend.probe_
        row.update(requests=stats.requests, missing_rate=stats.missing_rate, probe_report=asdict(probe) if probe else None,
                   probe=_probe_summary(probe), test_acc=result.metrics.test_acc,
                   manual_test_acc=result.metrics.manual_test_acc, hard_prompt=result.hard_prompt.text)
        if mode != "chat":
            local = backend.reference()  # the local model on the same text: exact scores
            prompts = Discretizer(local.vocabulary()).random_prompts(n_prompts, cfg.prompt_tokens, cfg.seed)
            prompts.append(result.hard_prompt)
            row.update(agreement(backend.score(prompts, task.test, task.format), local.score(prompts, task.test, task.format)))
    return _cells(row)


def _probe_summary(probe: Any) -> str:
    """The probe's decisions in a table cell (its notes, in full, are in the JSON)."""
    if probe is None:
        return "-"
    return f"top-k {probe.top_k}, {'lists' if probe.batch_size > 1 else '1 prompt/request'}, logit_bias " + (
        f"{probe.logit_bias:g}" if probe.logit_bias else "off")


def _first_clause(message: str) -> str:
    """A refusal's reason without its list of fixes (which the JSON keeps)."""
    return message.split(";")[0].split(" (allowed")[0][:110]


def _cells(row: dict[str, Any]) -> dict[str, Any]:
    """Table column names for the measured keys."""
    for key, col in (("missing_rate", "missing rate"), ("wall_s", "wall s"), ("test_acc", "test acc"),
                     ("manual_test_acc", "manual test acc")):
        if key in row:
            row[col] = row.pop(key)
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "sst2"))
    ap.add_argument("--k", type=int, default=4, help="training examples per class (dev the same)")
    ap.add_argument("--test-limit", type=int, default=32)
    ap.add_argument("--budget-calls", type=int, default=12)
    ap.add_argument("--prompts", type=int, default=3, help="random hard prompts compared with local scores")
    ap.add_argument("--servers", default="mock,llama-cpp", help="of mock, llama-cpp, vllm (make vllm-install)")
    ap.add_argument("--modes", default="", help="only these score modes, comma-separated ('' = each server's all)")
    ap.add_argument("--vllm-url", default="", help="a running vLLM server (make vllm-server) instead of starting one")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "servers.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    task = TaskConfig(data=args.data, preset="sst2", k=args.k, test_limit=args.test_limit).load()
    cfg = TuneConfig(mode="hard", budget_calls=args.budget_calls, popsize=4, prompt_tokens=3, intrinsic_dim=20,
                     eval_every=8, seed=0)
    from benchmarks.vllm_server import vllm_server  # imports this module: here, not at the top

    plans = {"mock": (mock_server, [("top_logprobs", {}), ("echo", {}), ("chat", {})]),
             "llama-cpp": (llama_server, [("top_logprobs", {}), ("echo", {}), ("chat", {})]),
             "vllm": ((lambda: nullcontext(args.vllm_url)) if args.vllm_url else vllm_server, [("prompt_embeds", {}), ("top_logprobs", {}), ("echo", {}), ("chat", {})])}
    setup = {"data": args.data, "k": args.k, "test_limit": args.test_limit, "budget_calls": args.budget_calls,
             "tune": asdict(cfg), "random_prompts": args.prompts}
    # rows not measured this time are kept, and each row is written as it lands: one server's (or mode's) rows
    # can be measured again alone, and a long measurement stopped halfway keeps what it finished
    rows = json.loads(Path(args.out).read_text()).get("rows", []) if Path(args.out).exists() else []
    for name in args.servers.split(","):
        start_server, modes = plans[name]
        with start_server() as url:
            for mode, kw in modes:
                if args.modes and mode not in args.modes.split(","):
                    continue
                row = one_run(name, url, mode, task, cfg, args.prompts, **kw)
                rows = [r for r in rows if (r["server"], r["mode"]) != (row["server"], row["mode"])] + [row]
                Path(args.out).write_text(json.dumps({"setup": setup, "rows": rows}, indent=1, default=str))
                print(markdown_table([row], COLUMNS), flush=True)
    print(markdown_table(rows, COLUMNS))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
