"""One contract, every backend: the tiny local model and the mock server in each remote mode (in-process, via
httpx.MockTransport), and the dry run's shape backend. What the tuner, the baselines and the CLI use of a backend
is declared on `bbtune.backends.base.Backend`; each test here holds every backend to one part of it. That a remote
backend's numbers are the local model's, mode by mode, is tests/backends/test_remote_contract.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from bbtune.app.dryrun import ShapeBackend
from bbtune.backends.base import Backend, CallStats, GradientBackend, gradient_backend
from bbtune.backends.local import LocalBackend
from bbtune.core.prompts import SoftPrompt
from bbtune.errors import CapabilityError
from mock_server import mock_transport
from tests.backends.test_remote_backend import EXAMPLES, FMT, make_app, make_backend, prompts

REMOTE_MODES = ["echo", "top_logprobs", "chat", "prompt_embeds"]


def build(kind: str) -> Backend:
    if kind == "local":
        return LocalBackend("tiny")
    if kind == "shape":
        local = LocalBackend("tiny")
        return ShapeBackend(local, local.capabilities, "tiny")
    top_k = 20 if kind == "chat" else 400  # chat's top_logprobs is 0-20, as OpenAI's
    return make_backend(mock_transport(make_app()), mode=kind, top_k=top_k)


@pytest.fixture(params=["local", *REMOTE_MODES, "shape"])
def backend(request):
    made = build(request.param)
    made.kind = request.param  # type: ignore[attr-defined]
    yield made
    if hasattr(made, "close"):
        made.close()


def test_is_a_backend_with_counters_and_capabilities(backend):
    assert isinstance(backend, Backend)
    assert isinstance(backend.stats, CallStats) and backend.stats.calls == 0
    assert backend.capabilities.hard
    assert backend.name


def test_scores_have_the_seams_shape_and_are_log_probs(backend):
    scores = backend.score(prompts(), EXAMPLES, FMT)
    assert scores.shape == (len(prompts()), len(EXAMPLES), len(FMT.labels))
    known = scores[~np.isnan(scores)]
    assert np.all(known <= 1e-6)
    assert known.size or backend.stats.labels_missing == scores.size  # every NaN is a counted missing label


def test_counts_calls_and_examples(backend):
    backend.score(prompts(), EXAMPLES, FMT)
    assert backend.stats.calls == len(prompts())
    assert backend.stats.examples_scored == len(prompts()) * len(EXAMPLES)


def test_soft_prompts_where_declared_refused_where_not(backend):
    soft = [SoftPrompt(backend.vocabulary().embeddings[list(p.token_ids)].clone()) for p in prompts()]
    if backend.capabilities.soft:
        assert backend.score(soft, EXAMPLES, FMT).shape == (len(soft), len(EXAMPLES), len(FMT.labels))
    else:
        with pytest.raises(CapabilityError):
            backend.capabilities.require("soft", backend.name)


def test_books_and_probe_report(backend, tmp_path: Path):
    backend.keep_books(tmp_path / "ledger.jsonl", tmp_path / "replies", resume=False)
    backend.score(prompts()[:1], EXAMPLES, FMT)
    report = backend.probe_report()
    paid = backend.kind in REMOTE_MODES
    assert (tmp_path / "ledger.jsonl").exists() is paid  # what a paid backend sends is booked first
    assert (report is not None) is (paid and backend.config.probe)


def test_stats_round_trip_through_a_checkpoint(backend):
    backend.score(prompts(), EXAMPLES, FMT)
    saved = backend.stats.as_dict()
    fresh = build(backend.kind)
    fresh.stats.restore(saved)
    assert fresh.stats.as_dict() == saved


def test_gradients_only_where_declared(backend):
    if backend.kind == "shape":
        pytest.skip("a dry run declares the capabilities of the backend it prices, and trains nothing")
    if backend.capabilities.gradients:
        trainable = gradient_backend(backend)
        assert isinstance(trainable, GradientBackend)
        embeds = trainable.prompt_embeds(prompts()[:1]).detach().requires_grad_(True)
        trainable.label_logprobs(embeds, EXAMPLES, FMT).sum().backward()
        assert embeds.grad is not None and torch.isfinite(embeds.grad).all()
    else:
        with pytest.raises(CapabilityError, match="gradient"):
            gradient_backend(backend)


def test_a_local_model_is_there_for_what_needs_one(backend):
    local = backend.local_model()
    if backend.kind == "shape":
        assert local is None
    else:
        assert local is not None and local.vocabulary().size == backend.vocabulary().size


MULTI = [[" very bad", " great"]] * len(EXAMPLES)  # a word of several tokens next to a single-token one


def test_continuations_have_the_seams_shape_or_are_refused_by_name(backend):
    """`continuation_logprobs`: one row per string where the backend scores them (their values are the local model's:
    tests/backends/test_remote_contract.py), a refusal naming the modes elsewhere."""
    if backend.kind in ("chat", "shape"):
        with pytest.raises(CapabilityError, match="echo|LocalBackend"):
            backend.continuation_logprobs(prompts(), EXAMPLES, FMT, MULTI)
        return
    got = backend.continuation_logprobs(prompts(), EXAMPLES, FMT, MULTI)
    assert got.shape == (len(prompts()), len(EXAMPLES), len(MULTI[0])) and backend.stats.calls == len(prompts())
    assert np.all(got[~np.isnan(got)] <= 1e-6)


def test_generate_gives_n_texts_per_row_or_says_it_cannot(backend):
    if not backend.capabilities.generate:
        with pytest.raises(CapabilityError, match="cannot generate"):
            backend.generate(prompts()[:2], EXAMPLES, FMT)
        return
    out = backend.generate(prompts()[:2], EXAMPLES, FMT, max_tokens=3, n=2, temperature=1.0)
    assert [[len(row) for row in rows] for rows in out] == [[2] * len(EXAMPLES)] * 2
    assert all(isinstance(t, str) and "\n" not in t for rows in out for row in rows for t in row)

