"""Durable runs: a remote run killed with SIGKILL and resumed stays within its request limit by the
mock's own count and pays no answered request twice; one writer per run folder; finished folders are kept."""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from bbtune.backends.accounting import Ledger, Limits, SpendingLimiter, Prices, RemoteStats
from bbtune.app.cli import main

ROOT = Path(__file__).resolve().parents[2]
LOCAL = ["--data", "demo", "--k", "4", "--test-limit", "16", "--model", "tiny", "--prompt-tokens", "3",
         "--intrinsic-dim", "20", "--popsize", "6", "--eval-every", "24", "--no-progress"]


def _faults():
    spec = importlib.util.spec_from_file_location("faults_bench", ROOT / "benchmarks" / "faults.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)  # type: ignore[union-attr]
    return module


def test_kill_9_and_resume_keep_the_request_limit_by_the_mocks_count(tmp_path):
    faults = _faults()
    bench = faults.Bench(tmp_path, latency_s=0.05)
    try:
        case = bench.kill_resume(tmp_path, hold_after=40, limit=67, name="killed")
    finally:
        bench.close()
    in_flight = int(case.notes.split()[0])
    assert case.exit_codes == [-9, 3] and in_flight > 0  # killed with requests in flight; resumed run hit the limit
    assert case.sent <= 67 and case.repaid == 0
    assert case.reported >= case.sent  # metrics.json never under-reports what the mock received
    ledger = Ledger(tmp_path / "killed" / "ledger.jsonl").spent()
    assert ledger.requests == case.reported and ledger.unsettled == in_flight


def test_ledger_books_before_sending_and_counts_unsettled_requests_as_spent(tmp_path):
    ledger = Ledger(tmp_path / "ledger.jsonl")
    meter = SpendingLimiter(Limits(max_requests=3), Prices(prompt_per_mtok=1e6), RemoteStats(), ledger)
    held = meter.reserve(10, 1)
    meter.settle(held, {"prompt_tokens": 7, "completion_tokens": 1}, billed=True)
    meter.reserve(20, 1)  # in flight when the process "dies"
    with (tmp_path / "ledger.jsonl").open("a") as f:
        f.write('{"n": 2, "bo')  # torn last line: that booking never reached the disk, so it was never sent
    spent = Ledger(tmp_path / "ledger.jsonl").spent()
    assert (spent.requests, spent.unsettled, spent.prompt_tokens, spent.completion_tokens) == (2, 1, 27, 2)
    assert spent.cost == pytest.approx(7 + 20)  # the settled usage, and the estimate of the unsettled request


def test_a_second_writer_fails_at_once_naming_the_first(tmp_path, capsys):
    run_dir = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    endless = ["--budget-calls", "600000", "--eval-every", "600000"]  # killed long before its end
    first = subprocess.Popen([sys.executable, "-m", "bbtune.app.cli", "tune", *LOCAL, *endless, "--run-dir", str(run_dir)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 600  # a guard against a hang, not a bound
        while not (run_dir / "checkpoint.pkl").exists():
            assert first.poll() is None and time.time() < deadline
            time.sleep(0.05)
        assert main(["tune", *LOCAL, "--budget-calls", "12", "--seed", "7", "--run-dir", str(run_dir)]) == 2
        assert f"pid {first.pid}" in capsys.readouterr().err
    finally:
        first.kill()
        first.wait()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["tune"]["seed"] == 42  # the folder is the first writer's alone


def test_a_finished_folder_is_kept_unless_overwrite(tmp_path, capsys):
    run_dir = tmp_path / "run"
    assert main(["tune", *LOCAL, "--budget-calls", "12", "--run-dir", str(run_dir)]) == 0
    files = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    assert main(["tune", *LOCAL, "--budget-calls", "12", "--seed", "7", "--run-dir", str(run_dir)]) == 2
    err = capsys.readouterr().err
    assert "already holds a finished run" in err and "--overwrite" in err
    assert files == {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file() and p.name != ".lock"}
    assert main(["tune", *LOCAL, "--budget-calls", "12", "--seed", "7", "--run-dir", str(run_dir), "--overwrite"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["seed"] == 7 and json.loads((run_dir / "config.json").read_text())["tune"]["seed"] == 7


def test_after_a_stop_and_resume_the_requests_per_endpoint_add_up_to_the_requests(tmp_path, capsys):
    """The ledger restores `requests` on --resume; it restores `endpoints` from the same lines."""
    from mock_server import FaultConfig, MockServer, ServerConfig, shared_scorer

    run_dir = tmp_path / "run"
    with MockServer(ServerConfig(model="tiny", port=0, max_logprobs=400), FaultConfig(),
                    scorer=shared_scorer("tiny")) as server:
        remote = ["--mode", "hard", "--backend", "remote", "--remote-base-url", server.url, "--remote-model", "tiny",
                  "--remote-local-model", "tiny", "--remote-mode", "echo", "--budget-calls", "36"]
        assert main(["tune", *LOCAL, *remote, "--remote-max-requests", "20", "--run-dir", str(run_dir)]) == 3
        assert main(["tune", "--resume", str(run_dir), "--no-progress", "--remote-max-requests", "1000"]) == 0
    stats = json.loads((run_dir / "metrics.json").read_text())["backend_stats"]
    assert stats["requests"] == Ledger(run_dir / "ledger.jsonl").spent().requests > 20
    assert sum(stats["endpoints"].values()) == stats["requests"]
