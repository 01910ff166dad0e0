"""sweep: a grid of jobs on a spawn process pool (or Ray), each a folder; finished jobs are never rerun, failed ones
are retried then reported, a killed worker's job runs again and finishes; the report has one row per job."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from bbtune.app.cli import main
from bbtune.app.executors import pool_size
from bbtune.app.report import REPORT_MD, RESULTS_JSON
from bbtune.app.sweep import (ERRORS_JSON, OVER_SEEDS, RESULT_JSON, RUN, STARTED_JSON, job_folder, read_job, run_job,
                              run_sweep)
from bbtune.app.sweepspec import SweepSpec
from bbtune.errors import ConfigError, RunFolderError
from bbtune.runs.load import load_run

TASK = {"name": "demo", "data": "demo", "k": 2, "test_limit": 8}
SETTINGS = {"budget_calls": 20, "popsize": 10, "intrinsic_dim": 8, "eval_every": 10, "grad_steps": 2}


def spec(out: Path, methods=("manual", "bbt_soft"), seeds=(1, 2), tasks=(TASK,), settings=SETTINGS, **sweep) -> SweepSpec:
    return SweepSpec.from_dict({"sweep": {"out": str(out), "workers": 2, **sweep},
                                "grid": {"methods": list(methods), "seeds": list(seeds), "models": ["tiny"],
                                         "tasks": list(tasks)},
                                "settings": dict(settings)}, name="t")


@pytest.fixture(scope="module")
def grid(tmp_path_factory):
    """The 2 x 2 sweep (manual, bbt_soft) x (seed 1, 2) on the tiny model through the process pool."""
    s = spec(tmp_path_factory.mktemp("sweep") / "out")
    return s, run_sweep(s, progress=False)


def numbers(out: Path, s: SweepSpec) -> dict[str, tuple]:
    results = {job.name: read_job(job_folder(out, job.name)) for job in s.jobs}
    return {name: (r.dev_acc, r.test_acc, r.train_calls, r.cost.calls, r.prompt_text) for name, r in results.items()}


def test_a_2x2_grid_runs_on_the_pool_one_folder_per_job(grid):
    s, result = grid
    names = [job.name for job in s.jobs]
    assert sorted(result.ran) == sorted(names) and not result.failed and not result.skipped
    assert names == ["demo-tiny-manual-s1", "demo-tiny-manual-s2", "demo-tiny-bbt_soft-s1", "demo-tiny-bbt_soft-s2"]
    pids = {json.loads((job_folder(result.out_dir, n) / STARTED_JSON).read_text())["pid"] for n in names}
    assert os.getpid() not in pids  # run by the pool's workers, not in this process
    data = json.loads((result.out_dir / RESULTS_JSON).read_text())
    assert [row["method"] for row in data["summary"]] == names  # one row per job
    assert data["config"]["jobs"]["demo-tiny-bbt_soft-s2"] == {"task": "demo", "model": "tiny", "method": "bbt_soft",
                                                             "seed": 2}
    md = (result.out_dir / REPORT_MD).read_text()
    assert all(f"| {n} " in md for n in names)
    pooled = json.loads((result.out_dir / OVER_SEEDS / RESULTS_JSON).read_text())
    assert [(row["method"], row["seeds"]) for row in pooled["summary"]] == [("demo-tiny-manual", [1, 2]),
                                                                             ("demo-tiny-bbt_soft", [1, 2])]
    run = load_run(job_folder(result.out_dir, "demo-tiny-bbt_soft-s1") / RUN)  # a BBT job holds an ordinary run
    assert run.metrics["calls"] == 20 and run.metrics["seed"] == 1


def test_resume_never_reruns_a_finished_job(grid):
    s, first = grid
    before = {n: (job_folder(first.out_dir, n) / RESULT_JSON).stat().st_mtime_ns for n in first.ran}

    submitted: list[str] = []

    class CountingRunner:  # a finished job must not even be submitted
        busy = False

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            pass

        def submit(self, fn, job, folder, tag=None):
            submitted.append(job["name"])

    again = run_sweep(s, resume=True, progress=False, runner=CountingRunner())  # type: ignore[arg-type]
    assert again.ran == [] and sorted(again.skipped) == sorted(first.ran) and submitted == []
    assert before == {n: (job_folder(first.out_dir, n) / RESULT_JSON).stat().st_mtime_ns for n in first.ran}
    assert numbers(first.out_dir, s) == numbers(again.out_dir, s)
    with pytest.raises(RunFolderError, match="--resume"):
        run_sweep(s, progress=False)  # a sweep folder is continued only when asked


def test_a_job_gives_the_same_numbers_wherever_it_ran(grid, tmp_path):
    s, result = grid
    job = s.jobs[2]
    answer = run_job(job.as_dict(), str(tmp_path / job.name))  # in this process instead of a pool worker
    assert answer["ok"]
    here, there = read_job(tmp_path / job.name), read_job(job_folder(result.out_dir, job.name))
    assert (here.dev_acc, here.test_acc, here.curve, here.cost.calls) == \
        (there.dev_acc, there.test_acc, there.curve, there.cost.calls)


def test_a_failing_job_is_retried_then_reported_while_the_others_finish(tmp_path):
    bad = {**TASK, "name": "badverb", "verbalizer": '{"negative": " terrible", "wrong": " great"}'}
    s = spec(tmp_path / "out", methods=("manual",), seeds=(1,), tasks=(TASK, bad), workers=1, retries=1)
    result = run_sweep(s, progress=False)
    assert result.ran == ["demo-tiny-manual-s1"]
    assert list(result.failed) == ["badverb-tiny-manual-s1"] and "VerbalizerError" in result.failed["badverb-tiny-manual-s1"]
    assert result.attempts["badverb-tiny-manual-s1"] == 2  # the first try and one retry
    errors = json.loads((job_folder(result.out_dir, "badverb-tiny-manual-s1") / ERRORS_JSON).read_text())
    assert len(errors) == 2 and "no verbalizer word" in errors[0]["error"]
    md = (result.out_dir / REPORT_MD).read_text()
    assert "## Failed jobs" in md and "badverb-tiny-manual-s1" in md and "| demo-tiny-manual-s1 " in md
    status = json.loads((result.out_dir / "sweep.json").read_text())["jobs"]
    assert status["badverb-tiny-manual-s1"]["status"] == "failed" and status["demo-tiny-manual-s1"]["status"] == "finished"


@pytest.mark.slow  # 20-40 s: BBT jobs long enough to be killed mid-run (make test-all runs it)
def test_kill_9_of_a_worker_loses_no_finished_job_and_the_killed_job_finishes(tmp_path):
    """The BBT job's worker is killed mid-run (its pid from the job's started.json); the manual job finished before
    stays as it was, and the killed job runs again (continuing its checkpoint) and finishes."""
    settings = {**SETTINGS, "budget_calls": 600, "eval_every": 300}
    s = spec(tmp_path / "out", seeds=(1,), settings=settings, retries=1)
    out = tmp_path / "out"
    manual, bbt = (job_folder(out, n) for n in ("demo-tiny-manual-s1", "demo-tiny-bbt_soft-s1"))
    box: dict = {}
    thread = threading.Thread(target=lambda: box.update(result=run_sweep(s, progress=False)))
    thread.start()
    deadline = time.time() + 240
    while not ((manual / RESULT_JSON).exists() and (bbt / RUN / "checkpoint.pkl").exists()
               and (bbt / STARTED_JSON).exists()):
        assert time.time() < deadline and thread.is_alive(), "the jobs never got going"
        time.sleep(0.05)
    finished_at = (manual / RESULT_JSON).stat().st_mtime_ns
    killed = json.loads((bbt / STARTED_JSON).read_text())["pid"]
    assert not (bbt / RESULT_JSON).exists(), "the BBT job ended before it could be killed; give it a larger budget"
    os.kill(killed, signal.SIGKILL)
    thread.join(timeout=300)
    result = box["result"]
    assert not result.failed and sorted(result.finished) == sorted(j.name for j in s.jobs)
    assert result.attempts == {"demo-tiny-bbt_soft-s1": 1}  # one attempt lost to the kill, then it finished
    assert (manual / RESULT_JSON).stat().st_mtime_ns == finished_at  # the finished job was not run again
    assert json.loads((bbt / STARTED_JSON).read_text())["pid"] != killed
    assert "died" in json.loads((bbt / ERRORS_JSON).read_text())[0]["error"]
    assert read_job(bbt).train_calls == 600


@pytest.mark.ray
def test_the_same_sweep_on_a_local_ray_gives_the_same_numbers(grid, tmp_path):
    ray = pytest.importorskip("ray")
    s, pool = grid
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        on_ray = run_sweep(s.with_config(out=str(tmp_path / "ray"), ray_address="local"), progress=False)
    finally:
        ray.shutdown()
    assert sorted(on_ray.ran) == sorted(pool.ran) and not on_ray.failed
    assert numbers(on_ray.out_dir, s) == numbers(pool.out_dir, s)


def test_dry_run_prints_every_job_and_its_calls(tmp_path, capsys):
    path = tmp_path / "grid.toml"
    path.write_text(f"""[sweep]\nout = "{tmp_path / 'never'}"\n[grid]\nmethods = ["manual", "bbt_soft"]\nseeds = [1, 2]
models = ["tiny"]\ntasks = [{{name = "demo", data = "demo", k = 2, test_limit = 8}}]\n
[settings]\nbudget_calls = 20\npopsize = 10\nintrinsic_dim = 8\n""")
    assert main(["sweep", str(path), "--dry-run", "--workers", "1"]) == 0
    printed = capsys.readouterr().out
    # 30 + the readout's pool, read twice: its top-k lists, then the tokens below them (readout_lift); the readout
    # chosen (residual) reads those tokens on test too, one more pass there
    assert "| demo-tiny-bbt_soft-s2 | 33 " in printed and "total (4 jobs)" in printed
    assert not (tmp_path / "never").exists()


def test_dry_run_loads_each_model_once_not_once_per_job(tmp_path, monkeypatch, capsys):
    from bbtune.backends.factory import LocalConfig

    built = []
    real_build = LocalConfig.build
    monkeypatch.setattr(LocalConfig, "build", lambda self: built.append(self.model) or real_build(self))
    path = tmp_path / "grid.toml"
    path.write_text(f"""[sweep]\nout = "{tmp_path / 'never'}"\n[grid]\nmethods = ["manual", "bbt_soft"]\nseeds = [1, 2]
models = ["tiny", "tiny-gemma"]\ntasks = [{{name = "demo", data = "demo", k = 2, test_limit = 8}}]\n
[settings]\nbudget_calls = 20\npopsize = 10\nintrinsic_dim = 8\n""")
    assert main(["sweep", str(path), "--dry-run", "--workers", "1"]) == 0
    assert "total (8 jobs)" in capsys.readouterr().out
    assert sorted(built) == ["tiny", "tiny-gemma"]


@pytest.mark.parametrize("data, match", [
    ({"grid": {"method": ["manual"]}}, "unknown keys"),
    ({"grid": {"methods": ["nope"]}}, "not known"),
    ({"settings": {"budget": 3}}, "setting 'budget'"),
    ({"settings": {"popsize": 10, "budget_calls": 5}}, "budget_calls=5"),
    ({"grid": {"tasks": [{"data": "demo", "data_seed": 3}]}}, "grid's seed"),
    ({"grid": {"models": ["tiny", "tiny"]}}, "same name"),
])
def test_a_bad_spec_is_refused_before_any_job_runs(data, match):
    with pytest.raises(ConfigError, match=match):
        SweepSpec.from_dict(data)


def test_remote_limits_are_divided_among_the_remote_jobs_up_front():
    remote = {"name": "api", "backend": "remote", "base_url": "http://localhost:9/v1", "max_requests": 10}
    s = SweepSpec.from_dict({"sweep": {"max_requests": 100, "max_cost": 2.0},
                             "grid": {"methods": ["manual"], "seeds": [1, 2], "models": ["tiny", remote]}})
    shares = s.limit_shares()
    assert shares == {"max_requests": 50, "max_cost": 1.0}  # two remote jobs share the limits
    limited = [job.with_limits(shares).model for job in s.jobs]
    assert [m.get("max_requests") for m in limited] == [None, None, 10, 10]  # the model's own limit is smaller
    assert [m.get("max_cost") for m in limited] == [None, None, 1.0, 1.0]


def test_the_pool_is_sized_to_cores_and_memory():
    workers, threads = pool_size(n_jobs=100, memory_per_job_mb=1.0)
    assert 1 <= workers <= (os.cpu_count() or 1) and threads == max(1, len(os.sched_getaffinity(0)) // workers)
    assert pool_size(n_jobs=1, memory_per_job_mb=1.0)[0] == 1
    assert pool_size(n_jobs=8, memory_per_job_mb=1e12)[0] == 1  # not enough memory for two models
    assert pool_size(n_jobs=8, memory_per_job_mb=1.0, workers=3, threads=2) == (3, 2)


@pytest.mark.slow  # 17-30 s: two remote BBT jobs through the mock (make test-all runs it)
def test_a_sweep_wide_request_limit_holds_across_workers_against_a_server(tmp_path):
    """Two BBT hard jobs through the mock server on two pool workers, 60 requests for the whole sweep: the server
    sees at most 60, each job stops at its share and says so, and the sweep reports both jobs."""
    from mock_server import MockServer, ServerConfig, shared_scorer

    with MockServer(ServerConfig(model="tiny", port=0, max_logprobs=20), scorer=shared_scorer("tiny")) as server:
        remote = {"name": "mock", "backend": "remote", "base_url": server.url, "model": "tiny", "local_model": "tiny",
                  "mode": "echo", "batch_size": 1, "concurrency": 2}
        s = SweepSpec.from_dict({"sweep": {"out": str(tmp_path / "out"), "workers": 2, "max_requests": 60},
                                 "grid": {"methods": ["bbt_hard"], "seeds": [1, 2], "models": [remote],
                                          "tasks": [TASK]},
                                 "settings": {**SETTINGS, "budget_calls": 200}}, name="limits")
        result = run_sweep(s, progress=False)
        sent = server.stats()["requests"]
    assert sent <= 60
    assert sorted(result.ran) == sorted(job.name for job in s.jobs) and not result.failed
    for job in s.jobs:  # each job stopped at its share (200 calls would need far more) and kept what it finished
        metrics = load_run(job_folder(result.out_dir, job.name) / RUN).metrics
        assert metrics["backend_stats"]["requests"] <= 30 and "request limit" in metrics["stopped_by"]


PARENT = """
import os, sys, time
from bbtune.app.executors import PoolRunner
runner = PoolRunner(1, 1)
runner.submit(os.getpid)
(_, worker), = runner.wait()
runner.submit(time.sleep, 120)  # a long job the worker is busy with when the sweep dies
print(worker, flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the kernel's parent-death signal is Linux's")
def test_pool_workers_die_with_the_sweep_process():
    """A sweep killed outright (SIGKILL: no cleanup runs) leaves no worker running its job on a core."""
    parent = subprocess.Popen([sys.executable, "-c", PARENT], stdout=subprocess.PIPE, text=True)
    try:
        worker = int(parent.stdout.readline())
        os.kill(worker, 0)  # alive while its parent is
        parent.kill()
        parent.wait(timeout=30)
        deadline = time.time() + 300  # a guard against a hang, not a bound
        while _alive(worker):
            assert time.time() < deadline, f"worker {worker} outlived the killed sweep process"
            time.sleep(0.1)
    finally:
        parent.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie waiting for its reaper counts as gone
        return f.read().split(") ")[-1][0] != "Z"
