"""The probe returns what it found (`ProbeReport`) and changes nothing; the backend applies the report."""
from __future__ import annotations

import json
from dataclasses import asdict, replace
from typing import Any

import httpx
import pytest

from bbtune.backends.findings import ProbeReport, Settings
from bbtune.backends.probe import run_probe
from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.core.prompts import HardPrompt
from bbtune.errors import CapabilityError
from bbtune.tasks import Example, TaskFormat, Template
from mock_server import MockApp, ServerConfig, mock_transport, shared_scorer

FMT = TaskFormat(Template("{text} It was{label}"), {"neg": " terrible", "pos": " great"})
EXAMPLES = [Example("the film was great and fun", "pos"), Example("a boring movie with bad jokes", "neg")]
SAMPLE = (HardPrompt((), ""), EXAMPLES, FMT)


def backend(**server_and_config: Any) -> RemoteBackend:
    server = {k: server_and_config.pop(k) for k in list(server_and_config) if k in ServerConfig.__dataclass_fields__}
    app = MockApp(ServerConfig(**{"model": "tiny", "max_logprobs": 400, **server}), scorer=shared_scorer("tiny"))
    cfg = RemoteConfig(**{"base_url": "http://mock.test/v1", "model": "tiny", "local_model": "tiny", "top_k": 400,
                          "batch_size": 4, **server_and_config})
    return RemoteBackend(cfg, transport=mock_transport(app))


def test_the_probe_returns_its_findings_and_leaves_the_backend_as_it_was() -> None:
    with backend(max_logprobs=5, list_prompts=False) as remote:
        before = remote.settings
        report = run_probe(remote, remote.strategy, remote.settings, SAMPLE)
        assert (report.top_k, report.batch_size) == (5, 1)
        assert remote.settings == before and remote.probe_ is None and remote.capabilities.topk == 400
        assert (remote.top_k_, remote.batch_size_) == (400, 4)


def test_the_backend_applies_the_report() -> None:
    with backend(max_logprobs=5, list_prompts=False) as remote:
        report = remote.check(SAMPLE)
        assert remote.probe_ is report and remote.settings == report.applied(remote.strategy.settings())
        assert (remote.top_k_, remote.batch_size_, remote.capabilities.topk) == (5, 1, 5)


def test_a_probe_that_refuses_changes_nothing() -> None:
    """Found halfway (a shallower top-k), then refused (labels missing): the backend keeps its settings."""
    with backend(max_logprobs=5, ignore_logit_bias=True, max_missing=0.0) as remote:
        with pytest.raises(CapabilityError, match="missing"):
            remote.score([HardPrompt((), "")], EXAMPLES, FMT)
        assert remote.probe_ is None and remote.settings == remote.strategy.settings()


def test_text_mode_reports_a_refused_n_and_the_backend_asks_one_answer_per_request() -> None:
    app = MockApp(ServerConfig(model="tiny", logprobs=False), scorer=shared_scorer("tiny"))
    inner = mock_transport(app)

    def no_n(request: httpx.Request) -> httpx.Response:
        if json.loads(request.content or b"{}").get("n", 1) > 1:
            return httpx.Response(400, json={"error": {"message": "n must be 1"}})
        return inner.handle_request(request)

    cfg = RemoteConfig(base_url="http://mock.test/v1", model="tiny", local_model="tiny", mode="text", answer_samples=2,
                       answer_temperature=1.0, max_unparsed=1.0)
    with RemoteBackend(cfg, transport=httpx.MockTransport(no_n)) as remote:
        report = run_probe(remote, remote.strategy, remote.settings, SAMPLE)
        assert report.n_refused and remote.answers_per_request_ > 1  # found, not yet applied
        assert remote.check(SAMPLE).n_refused
        assert report.n_refused and remote.answers_per_request_ == 1
        assert remote.strategy.generation(remote.settings, 4, 2, 1.0, ("\n",)).per_request == 1


def test_applied_takes_the_findings_and_keeps_the_rest() -> None:
    before = Settings(top_k=400, batch_size=4, logit_bias=0.0, answers_per_request=128)
    found = ProbeReport(mode="top_logprobs", top_k=20, batch_size=1, logit_bias=100.0)
    assert found.applied(before) == Settings(20, 1, 100.0, 128)
    assert ProbeReport.start("text", before).applied(before) == before
    assert replace(found, n_refused=True).applied(before).answers_per_request == 1
    assert "n_refused" in asdict(found)  # saved with the rest of the report (metrics.json, key probe)


def test_the_probe_sends_through_the_backend_and_is_counted() -> None:
    """Its requests go through the backend's sender: counted, cached and limited like any other."""
    seen: list[str] = []
    app = MockApp(ServerConfig(model="tiny", max_logprobs=400), scorer=shared_scorer("tiny"))
    inner = mock_transport(app)

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request.url.path)
        return inner.handle_request(request)

    cfg = RemoteConfig(base_url="http://mock.test/v1", model="tiny", local_model="tiny", top_k=400, batch_size=4)
    with RemoteBackend(cfg, transport=httpx.MockTransport(handle)) as remote:
        run_probe(remote, remote.strategy, remote.settings)
        assert remote.stats.requests == len(seen) and remote.probe_ is None  # /models included; nothing applied
    assert seen[0].endswith("/models") and all(p.endswith("/completions") for p in seen[1:])
