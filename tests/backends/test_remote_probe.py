"""The capability probe: servers that lack a feature, or answer wrongly instead of refusing."""
from __future__ import annotations

import json
from typing import Any, Callable

import httpx
import numpy as np
import pytest

from bbtune.backends.remote import RemoteBackend
from bbtune.errors import CapabilityError
from mock_server import MockApp, mock_transport

from tests.backends.test_remote_backend import (  # noqa: F401
    EXAMPLES,
    FMT,
    clean_scores,
    make_app,
    make_backend,
    prompts,
)


def tampered(app: MockApp, edit: Callable[[dict[str, Any], dict[str, Any]], None]) -> httpx.MockTransport:
    """The mock, with `edit(request_body, reply_body)` applied to every successful scoring reply."""
    inner = mock_transport(app)

    def handle(request: httpx.Request) -> httpx.Response:
        reply = inner.handle_request(request)
        if request.method != "POST" or reply.status_code != 200:
            return reply
        body = json.loads(reply.read())
        edit(json.loads(request.read()), body)
        return httpx.Response(200, json=body)

    return httpx.MockTransport(handle)


def probed(transport: httpx.AsyncBaseTransport, **config: Any) -> RemoteBackend:
    return make_backend(transport, probe=True, **config)


def test_a_well_behaved_server_passes_every_check() -> None:
    with probed(mock_transport(make_app())) as backend:
        report = backend.check()
    assert report.checks == ["model listed", "repeatable", "top-k is a sorted distribution", "lists match single prompts"]
    assert report.batch_size == 4 and report.models == ["tiny"]


def _shuffle_lists(request: dict[str, Any], reply: dict[str, Any]) -> None:
    if isinstance(request.get("prompt"), list):  # a server that mixes up the answers of a batch
        for i, choice in enumerate(reply["choices"]):
            choice["index"] = len(reply["choices"]) - 1 - i


def test_lists_that_disagree_with_single_prompts_fall_back_to_one_per_request() -> None:
    app = make_app()
    with probed(tampered(app, _shuffle_lists), logit_bias="off") as backend:
        scores = backend.score(prompts(), EXAMPLES, FMT)
        assert backend.batch_size_ == 1 and "one prompt per request" in backend.probe_.notes[-1]  # type: ignore[union-attr]
    with make_backend(mock_transport(app), batch_size=1) as honest:
        np.testing.assert_allclose(scores, honest.score(prompts(), EXAMPLES, FMT), atol=1e-6)


def test_a_server_that_refuses_lists_gets_one_prompt_per_request() -> None:
    with probed(mock_transport(make_app(list_prompts=False))) as backend:
        backend.score(prompts(), EXAMPLES, FMT)
        assert backend.batch_size_ == 1 and backend.stats.errors == {"BadRequestError": 1}


def test_a_server_that_answers_lists_with_http_500_gets_one_prompt_per_request(caplog) -> None:
    with probed(mock_transport(make_app(refuse_lists=True))) as backend:
        backend.score(prompts(), EXAMPLES, FMT)
        assert backend.batch_size_ == 1 and backend.probe_.batch_size == 1  # type: ignore[union-attr]
        assert backend.stats.errors == {"ServerError": 3} and backend.stats.retries == 2  # not retried 6 times
    assert [r.message for r in caplog.records if "one prompt per request" in r.message] != []


@pytest.mark.parametrize("server_max, asked, found", [(5, 50, 5), (12, 20, 10), (1, 20, 1), (20, 20, 20)])
def test_the_deepest_top_k_the_server_accepts_is_found(server_max: int, asked: int, found: int) -> None:
    with probed(mock_transport(make_app(max_logprobs=server_max)), top_k=asked) as backend:
        backend.check()
        assert backend.top_k_ == backend.probe_.top_k == found  # type: ignore[union-attr]
        assert (f"refused top_k={asked}" in " ".join(backend.probe_.notes)) is (found != asked)  # type: ignore[union-attr]


@pytest.mark.parametrize("top_k", [400, 20, 5])
def test_echo_is_cross_checked_against_the_top_k_of_the_same_position(top_k: int) -> None:
    """Also where the probe's word is not in the top-k (the tiny model, k = 20 or 5): shifted echo scores are
    caught by the position's best word, which is in the list by construction."""
    with probed(mock_transport(make_app()), mode="echo", top_k=top_k) as backend:
        report = backend.check()
        assert "echo matches top-k" in report.checks and not report.notes
    with probed(mock_transport(make_app(wrong_echo=True)), mode="echo", top_k=top_k) as backend, pytest.raises(
            CapabilityError, match="echoed log-probs are misaligned.*RemoteConfig.mode=top_logprobs"):
        backend.check()


def _echo_above_the_list(request: dict[str, Any], reply: dict[str, Any]) -> None:
    if request.get("echo"):  # the label word's echoed log-prob raised above every value of its position's list
        values = reply["choices"][0]["logprobs"]["token_logprobs"]
        prompt_tokens = len(values) - 1  # the last entry is the generated token
        values[prompt_tokens - 1] = -1e-4


def test_an_echoed_word_absent_from_the_top_k_cannot_score_above_its_last_value() -> None:
    with probed(tampered(make_app(), _echo_above_the_list), mode="echo", top_k=5) as backend, pytest.raises(
            CapabilityError, match=r"not in the top-5 of the same position.*RemoteConfig.mode=top_logprobs"):
        backend.check()


def test_logit_bias_is_used_where_the_server_honours_it(clean_scores: np.ndarray) -> None:  # noqa: F811 (fixture)
    with probed(mock_transport(make_app()), top_k=2) as backend:
        scores = backend.score(prompts(), EXAMPLES, FMT)
        assert backend.logit_bias_ == backend.probe_.logit_bias == 100.0  # type: ignore[union-attr]
        assert backend.stats.labels_missing == 0
    # the biased distribution's log-probs: label differences are the true ones
    np.testing.assert_allclose(np.diff(scores, axis=-1), np.diff(clean_scores, axis=-1), atol=1e-3)


def test_a_server_that_ignores_logit_bias_is_refused_when_labels_go_missing() -> None:
    with probed(mock_transport(make_app(ignore_logit_bias=True, max_logprobs=20)), top_k=2) as backend, pytest.raises(
            CapabilityError, match=r"missing from the server's top-2.*RemoteConfig.mode=echo.*RemoteConfig.logit_bias.*"
                                   r"TaskConfig.verbalizer.*RemoteConfig.top_k"):
        backend.score(prompts(), EXAMPLES, FMT)
    assert backend.logit_bias_ == 0.0


def test_without_logit_bias_the_probe_asks_deeper_lists_where_the_server_accepts_them() -> None:
    with probed(mock_transport(make_app(ignore_logit_bias=True, max_logprobs=1000)), top_k=2) as backend:
        backend.score(prompts(), EXAMPLES, FMT)
        report = backend.probe_
        # the deepest list the server answers, not the first deep enough for the sample: later prompts push labels down
        assert backend.logit_bias_ == 0.0 and backend.top_k_ == report.top_k == 1000  # type: ignore[union-attr]
        assert "asking top-100" in " ".join(report.notes) and "asking top-1000" in " ".join(report.notes)  # type: ignore[union-attr]
        assert report.sample_missing_rate <= 0.05  # type: ignore[union-attr]


def test_missing_labels_within_the_allowed_share_are_nan_and_counted() -> None:
    with probed(mock_transport(make_app()), top_k=2, logit_bias="off", max_missing=1.0) as backend:
        scores = backend.score(prompts(), EXAMPLES, FMT)
        assert np.isnan(scores).sum() == backend.stats.labels_missing > 0
        assert backend.probe_.sample_missing_rate > 0  # type: ignore[union-attr]


def _jitter(request: dict[str, Any], reply: dict[str, Any]) -> None:
    _jitter.calls = getattr(_jitter, "calls", 0) + 1  # type: ignore[attr-defined]
    for choice in reply["choices"]:
        top = choice["logprobs"]["top_logprobs"][0]
        for token in top:
            top[token] -= 0.01 * _jitter.calls  # type: ignore[attr-defined]


@pytest.mark.parametrize("edit, message", [
    (_jitter, "not reproducible"),
    (lambda req, rep: [c["logprobs"]["top_logprobs"][0].update({"zz-late": -0.0001}) for c in rep["choices"]],
     "not sorted"),
    (lambda req, rep: [c["logprobs"].update(top_logprobs=[{t: v / 100 for t, v in c["logprobs"]["top_logprobs"][0].items()}])
                       for c in rep["choices"]], "sum to"),
    (lambda req, rep: [c.update(logprobs=None) for c in rep["choices"]], "use RemoteConfig.mode=chat"),
])
def test_servers_that_answer_wrongly_are_refused_with_a_reason(edit: Callable, message: str) -> None:
    with probed(tampered(make_app(), edit)) as backend, pytest.raises(CapabilityError, match=message):
        backend.score(prompts(), EXAMPLES, FMT)


@pytest.mark.parametrize("server, mode, message", [
    ({"echo": "ignore"}, "echo", "llama.cpp ignores echo.*RemoteConfig.mode=top_logprobs"),
    ({"echo": "reject"}, "echo", "RemoteConfig.mode=top_logprobs"),
    ({"prompt_embeds": False}, "prompt_embeds", "--enable-prompt-embeds"),
])
def test_missing_features_name_the_mode_to_use_instead(server: dict, mode: str, message: str) -> None:
    with probed(mock_transport(make_app(**server)), mode=mode) as backend, pytest.raises(CapabilityError, match=message):
        backend.check()


def test_a_server_without_chat_is_told_to_use_completions() -> None:
    inner = mock_transport(make_app())

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.path.endswith("/chat/completions"):
            return httpx.Response(404, json={"error": {"message": "Not Found", "type": "not_found"}})
        return inner.handle_request(request)

    with probed(httpx.MockTransport(handle), mode="chat", top_k=20) as backend, pytest.raises(
            CapabilityError, match="use RemoteConfig.mode=top_logprobs"):
        backend.check()


def test_prompt_embeds_probe_compares_embeddings_with_text() -> None:
    with probed(mock_transport(make_app()), mode="prompt_embeds") as backend:
        assert "prompt_embeds match text" in backend.check().checks

    def off_by_one_token(request: dict[str, Any], reply: dict[str, Any]) -> None:
        if "prompt_embeds" in request:  # a server that reads the embeddings wrongly
            for c in reply["choices"]:
                top = c["logprobs"]["top_logprobs"][0]
                c["logprobs"]["top_logprobs"][0] = {t: v - 0.5 for t, v in top.items()}

    with probed(tampered(make_app(), off_by_one_token), mode="prompt_embeds") as backend, pytest.raises(
            CapabilityError, match="reads the embeddings differently"):
        backend.check()


def test_a_model_missing_from_models_is_a_note_not_an_error() -> None:
    inner = mock_transport(make_app())

    def handle(request: httpx.Request) -> httpx.Response:  # llama.cpp lists its file name, answers to any name
        if request.url.path.endswith("/models"):
            return httpx.Response(200, json={"object": "list", "data": [{"id": "model.gguf"}]})
        return inner.handle_request(request)

    with probed(httpx.MockTransport(handle)) as backend:
        backend.score(prompts(), EXAMPLES, FMT)
        assert "not in /models" in backend.probe_.notes[0] and "model listed" not in backend.probe_.checks  # type: ignore[union-attr]
