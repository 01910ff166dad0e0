"""A real `bbtune tune` process killed with SIGKILL mid-run resumes to exactly the uninterrupted result."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from bbtune.app.cli import main

ARGS = ["--data", "demo", "--k", "8", "--model", "tiny", "--prompt-tokens", "3", "--intrinsic-dim", "20",
        "--popsize", "6", "--budget-calls", "600", "--eval-every", "60", "--no-progress"]


def _without_timing(metrics: dict) -> dict:
    """Wall time differs, and so do forward passes: the resumed process starts with a cold KV cache."""
    return {k: v for k, v in metrics.items() if k not in ("wall_s", "backend_stats")}


@pytest.mark.slow  # 15 s; the default run keeps the remote kill -9 test (test_resume_remote), make test-all runs this
def test_sigkill_then_resume_equals_uninterrupted(tmp_path):
    assert main(["tune", *ARGS, "--run-dir", str(tmp_path / "full")]) == 0
    killed = tmp_path / "killed"
    # same thread count as this process (conftest), so float sums run in the same order in both
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.Popen([sys.executable, "-m", "bbtune.app.cli", "tune", *ARGS, "--run-dir", str(killed)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        deadline = time.time() + 300
        while not (killed / "checkpoint.pkl").exists():
            assert proc.poll() is None and time.time() < deadline, "the run ended before its first checkpoint"
            time.sleep(0.01)
        time.sleep(0.3)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    assert not (killed / "metrics.json").exists(), "the run finished before it was killed; raise the budget"
    assert main(["tune", "--resume", str(killed), "--no-progress"]) == 0
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed = json.loads((killed / "metrics.json").read_text())
    assert _without_timing(resumed) == _without_timing(full)
    assert resumed["backend_stats"]["calls"] == full["backend_stats"]["calls"]
    assert (killed / "curve.csv").read_text() == (tmp_path / "full" / "curve.csv").read_text()
