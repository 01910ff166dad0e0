"""End to end over real sockets: tuning through RemoteBackend against the mock server in a thread, with and
without faults, with the cache, with soft prompts over prompt_embeds, and with two replicas."""
from __future__ import annotations

import threading
from typing import Any

import numpy as np
import pytest

from bbtune.backends.local import LocalBackend
from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.tasks import Task
from bbtune.runs.tuner import TuneConfig, TuneResult, run_tuner
from mock_server import FaultConfig, FaultRule, MockServer, ServerConfig, shared_scorer

from tests.backends.test_remote_backend import EXAMPLES, FMT, prompts, Sleeps

HARD = TuneConfig(mode="hard", budget_calls=18, popsize=6, prompt_tokens=3, intrinsic_dim=20, eval_every=12, seed=5)
FAULTS = FaultConfig(rules=(FaultRule("drop", every=9, limit=1), FaultRule("429", every=5), FaultRule("500", every=7),
                            FaultRule("503", prob=0.05)), latency_s=0.002, jitter_s=0.004, retry_after_s=0, seed=1)


def serve(faults: FaultConfig = FaultConfig(), **config: Any) -> MockServer:
    return MockServer(ServerConfig(**{"model": "tiny", "port": 0, "max_logprobs": 400, **config}), faults,
                      scorer=shared_scorer("tiny")).start()


def remote(url: str | tuple[str, ...], **config: Any) -> RemoteBackend:
    cfg = RemoteConfig(**{"base_url": url, "model": "tiny", "local_model": "tiny", "top_k": 400, "concurrency": 4,
                          **config})
    return RemoteBackend(cfg, sleep=Sleeps())  # retries wait 0 s: the faults, not the clock, are under test


@pytest.fixture(scope="module")
def clean_server():
    server = serve()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("remote-cache")


@pytest.fixture(scope="module")
def clean_run(clean_server: MockServer, cache_dir, tiny_task: Task) -> tuple[TuneResult, dict[str, Any]]:
    with remote(clean_server.url, cache_dir=str(cache_dir)) as backend:
        result = run_tuner(tiny_task, backend, HARD, progress=False)
        return result, backend.stats.as_dict()


def same_run(a: TuneResult, b: TuneResult) -> None:
    assert a.curve == b.curve and a.hard_prompt == b.hard_prompt and np.array_equal(a.best_z, b.best_z)
    drop = ("wall_s", "backend_stats", "backend", "config_fingerprint")  # timing, counters, URL and limits differ
    assert {k: v for k, v in a.metrics.items() if k not in drop} == {k: v for k, v in b.metrics.items() if k not in drop}


def test_hard_tuning_with_faults_ends_exactly_like_the_clean_run(clean_run, tiny_task: Task) -> None:
    clean, clean_stats = clean_run
    assert clean_stats["requests"] > 0 and clean_stats["retries"] == 0
    server = serve(FAULTS)
    try:
        limit = clean_stats["requests"] + 40
        with remote(server.url, max_requests=limit) as backend:
            faulty = run_tuner(tiny_task, backend, HARD, progress=False)
            stats = backend.stats
        fired = server.stats()["faults"]
        assert fired["drop"] == 1 and fired["429"] >= 2 and fired["500"] >= 1
        assert stats.retries == sum(fired.values()) and stats.requests == server.stats()["requests"] <= limit
    finally:
        server.stop()
    same_run(clean, faulty)


def test_a_run_never_crosses_its_request_limit(tiny_task: Task) -> None:
    server = serve(FAULTS)
    try:
        with remote(server.url, max_requests=20) as backend:
            result = run_tuner(tiny_task, backend, HARD, progress=False)  # stops cleanly, keeping finished generations
        assert "RemoteConfig.max_requests 20" in result.metrics["stopped_by"]
        assert result.metrics["calls"] < HARD.budget_calls
        # a request reserved, then cancelled when a sibling hit the limit, may never reach the server
        assert server.stats()["requests"] <= backend.stats.requests == 20
    finally:
        server.stop()


def test_a_rerun_with_the_cache_pays_zero_requests(clean_run, clean_server: MockServer, cache_dir,
                                                   tiny_task: Task) -> None:
    clean, _ = clean_run
    before = clean_server.stats()["requests"]
    with remote(clean_server.url, cache_dir=str(cache_dir)) as backend:
        again = run_tuner(tiny_task, backend, HARD, progress=False)
        assert backend.stats.requests == 0 and backend.stats.cache_hits > 0
    assert clean_server.stats()["requests"] == before
    same_run(clean, again)


def test_a_soft_run_over_prompt_embeds_follows_the_local_runs_curve(clean_server: MockServer, tiny_task: Task,
                                                                    tiny_backend: LocalBackend) -> None:
    soft = TuneConfig(mode="soft", budget_calls=12, popsize=6, prompt_tokens=3, intrinsic_dim=20, eval_every=12, seed=3,
                      keep_manual=False)  # the tuned soft prompt itself, whatever dev says of it
    local = run_tuner(tiny_task, tiny_backend, soft, progress=False)
    with remote(clean_server.url, mode="prompt_embeds") as backend:
        assert backend.capabilities.soft
        over_wire = run_tuner(tiny_task, backend, soft, progress=False)
        prompt = over_wire.soft_prompt
        assert prompt is not None and backend.stats.labels_missing == 0
    np.testing.assert_allclose([r["train_loss"] for r in over_wire.curve[1:]],
                               [r["train_loss"] for r in local.curve[1:]], atol=1e-4)


def test_a_population_goes_out_in_parallel_within_the_concurrency_limit() -> None:
    server = serve(FaultConfig())
    meet, route = threading.Barrier(3, timeout=120), server.app._route

    def in_threes(*args):  # requests meet three at a time: sent one by one, they could not (no clock involved)
        meet.wait()
        return route(*args)

    server.app._route = in_threes  # type: ignore[method-assign]
    try:
        with remote(server.url, batch_size=1, concurrency=3, probe=False, timeout_s=180) as backend:
            backend.score(prompts(), EXAMPLES, FMT)  # 9 rows = 9 requests, 3 at a time
        assert server.stats()["max_in_flight"] == 3
    finally:
        server.stop()


def test_failover_between_two_replicas(tiny_backend: LocalBackend) -> None:
    expected = tiny_backend.score(prompts(), EXAMPLES, FMT)
    first, second = serve(FaultConfig(latency_s=0.01)), serve(FaultConfig(latency_s=0.01))
    try:
        with remote((first.url, second.url), batch_size=1, replica_concurrency=(2, 2), probe=False) as backend:
            np.testing.assert_allclose(backend.score(prompts(), EXAMPLES, FMT), expected, atol=1e-4)
            assert first.stats()["requests"] > 0 and second.stats()["requests"] > 0  # both replicas share the load
            first.stop()  # a replica dies between two generations
            served = second.stats()["requests"]
            np.testing.assert_allclose(backend.score(prompts()[::-1], EXAMPLES, FMT), expected[::-1], atol=1e-4)
            assert second.stats()["requests"] - served == 9  # every row of the new generation answered by the live one
            assert backend.stats.failovers >= 1 and set(backend.sender.sleep) <= {0.0}  # moved at once, no backoff
    finally:
        first.stop()
        second.stop()


def test_a_run_records_its_missing_rate_and_the_probe_report(clean_server: MockServer, tiny_task: Task) -> None:
    """Missing labels are allowed here (--remote-max-missing 1) but never hidden: metrics.json says how many."""
    small = TuneConfig(mode="hard", budget_calls=6, popsize=6, prompt_tokens=3, intrinsic_dim=20, eval_every=6, seed=5)
    with remote(clean_server.url, top_k=2, logit_bias="off", max_missing=1.0) as backend:
        result = run_tuner(tiny_task, backend, small, progress=False)
        assert 0 < result.metrics["missing_rate"] == backend.stats.missing_rate
    assert result.metrics["probe"]["top_k"] == 2 and result.metrics["probe"]["sample_missing_rate"] > 0
