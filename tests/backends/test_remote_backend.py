"""RemoteBackend against the mock's endpoints in-process (httpx.MockTransport): retries, typed errors, budget,
cache, replicas. No sockets, no sleeping: the retry wait is recorded instead. That every mode scores as the local
model does is one contract: tests/backends/test_remote_contract.py."""
from __future__ import annotations

import json
from functools import lru_cache


import httpx
import numpy as np
import pytest
import torch

from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.errors import (
    APIConnectionError,
    AuthenticationError,
    BadRequestError,
    BudgetExceeded,
    CapabilityError,
    MalformedResponseError,
    NotFoundError,
    RateLimitError,
    ServerError,
)
from bbtune.core.prompts import HardPrompt, SoftPrompt
from bbtune.tasks import Example, TaskFormat, Template
from mock_server import FaultConfig, FaultRule, MockApp, ServerConfig, mock_transport, shared_scorer

FMT = TaskFormat(Template("{text} It was{label}"), {"neg": " terrible", "pos": " great"})
EXAMPLES = [Example("the film was great and fun", "pos"), Example("a boring movie with bad jokes", "neg"),
            Example("I love it", "pos")]


def hard(*words: str) -> HardPrompt:
    """A hard prompt of single-token words of the tiny tokenizer, whose text re-tokenizes to the same ids (so
    the local backend, fed ids, and a server, fed text, see the same input)."""
    tok = shared_scorer("tiny").tokenizer
    pieces = [tok.encode(w, add_special_tokens=False) for w in words]
    assert all(len(p) == 1 for p in pieces), f"{words} are not all single tokens: {pieces}"
    ids, text = tuple(p[0] for p in pieces), "".join(words)
    assert tok.encode(text, add_special_tokens=False) == list(ids), f"{words} do not round-trip"
    return HardPrompt(ids, text)


@lru_cache(maxsize=1)
def prompts() -> list[HardPrompt]:
    return [hard(" great", " terrible"), hard(" the", " story"), hard(" terrible", " terrible")]
URL = "http://mock.test/v1"


def make_app(**server: object) -> MockApp:
    faults = server.pop("faults", FaultConfig())
    return MockApp(ServerConfig(**{"model": "tiny", "max_logprobs": 400, **server}), faults,  # type: ignore[arg-type]
                   scorer=shared_scorer("tiny"))


class Sleeps(list):
    async def __call__(self, seconds: float) -> None:
        self.append(seconds)


def make_backend(transport: httpx.AsyncBaseTransport, sleeps: Sleeps | None = None, **config: object) -> RemoteBackend:
    cfg = RemoteConfig(**{"base_url": URL, "model": "tiny", "local_model": "tiny", "top_k": 400, "probe": False,
                          "batch_size": 4, **config})  # type: ignore[arg-type]
    return RemoteBackend(cfg, transport=transport, sleep=sleeps if sleeps is not None else Sleeps())


def failing_first(app: MockApp, n: int, status: int, headers: dict[str, str] | None = None) -> httpx.MockTransport:
    """The first `n` requests get `status` (OpenAI-shaped body); the rest go to the mock."""
    inner, seen = mock_transport(app), []

    def handle(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if len(seen) <= n:
            return httpx.Response(status, json={"error": {"message": f"failing with {status}", "type": "x"}},
                                  headers=headers or {})
        return inner.handle_request(request)

    transport = httpx.MockTransport(handle)
    transport.seen = seen  # type: ignore[attr-defined]
    return transport


@pytest.fixture(scope="module")
def clean_scores() -> np.ndarray:
    with make_backend(mock_transport(make_app())) as backend:
        return backend.score(prompts(), EXAMPLES, FMT)


def test_labels_outside_a_small_top_k_are_missing_and_counted(clean_scores: np.ndarray) -> None:
    with make_backend(mock_transport(make_app()), top_k=3) as backend:
        scores = backend.score(prompts(), EXAMPLES, FMT)
        assert backend.stats.labels_missing > 0 and backend.stats.missing_rate == pytest.approx(
            backend.stats.labels_missing / backend.stats.labels_scored)
    missing = np.isnan(scores)
    assert missing.sum() == backend.stats.labels_missing  # never a bound: NaN, counted
    np.testing.assert_allclose(scores[~missing], clean_scores[~missing], atol=1e-5)


@pytest.mark.parametrize("status, headers, expected_wait", [
    (429, {"Retry-After": "2"}, [2.0]), (503, {"retry-after-ms": "250"}, [0.25]),
    (500, {}, None), (502, {}, None), (408, {}, None),
])
def test_retryable_statuses_are_retried_with_the_right_wait(status: int, headers: dict, expected_wait: list | None,
                                                            clean_scores: np.ndarray) -> None:
    sleeps = Sleeps()
    transport = failing_first(make_app(), 1, status, headers)
    with make_backend(transport, sleeps, batch_size=9) as backend:
        np.testing.assert_allclose(backend.score(prompts(), EXAMPLES, FMT), clean_scores, atol=1e-6)
        assert backend.stats.retries == 1 and backend.stats.requests == 2
    if expected_wait is not None:
        assert sleeps == expected_wait
    else:
        assert len(sleeps) == 1 and 0.375 <= sleeps[0] <= 0.5  # first backoff step, jitter only shortens


@pytest.mark.parametrize("status, error", [(400, BadRequestError), (401, AuthenticationError), (403, AuthenticationError),
                                           (404, CapabilityError), (422, BadRequestError)])
def test_other_4xx_fail_at_once_with_a_typed_error(status: int, error: type) -> None:
    sleeps = Sleeps()
    transport = failing_first(make_app(), 100, status)
    with make_backend(transport, sleeps, batch_size=9) as backend, pytest.raises(error) as info:
        backend.score(prompts(), EXAMPLES, FMT)
    status_error = info.value if status != 404 else info.value.__cause__  # a missing endpoint: use another mode
    assert isinstance(status_error, (BadRequestError, AuthenticationError, NotFoundError))
    assert status_error.status_code == status and len(transport.seen) == 1 and sleeps == []  # type: ignore[attr-defined]


def test_retries_give_up_with_the_last_error() -> None:
    transport = failing_first(make_app(), 100, 429)
    with make_backend(transport, batch_size=9, max_retries=3) as backend, pytest.raises(RateLimitError, match="429"):
        backend.score(prompts(), EXAMPLES, FMT)
    assert len(transport.seen) == 4  # type: ignore[attr-defined]


def test_a_wrong_key_says_what_to_do_and_never_shows_the_key(monkeypatch: pytest.MonkeyPatch) -> None:
    secret = "sk-test-0123456789abcdef"
    monkeypatch.setenv("BBTUNE_API_KEY", secret)
    with make_backend(mock_transport(make_app(api_key="the-right-key"))) as backend:
        with pytest.raises(AuthenticationError) as info:
            backend.score(prompts(), EXAMPLES, FMT)
        text = str(info.value) + json.dumps(info.value.body) + repr(backend) + json.dumps(backend.describe())
    assert "$BBTUNE_API_KEY was rejected" in str(info.value)
    assert secret not in text and secret[-4:] not in text  # nor the tail the server echoes back masked


def test_a_missing_key_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("BBTUNE_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with make_backend(mock_transport(make_app(api_key="k"))) as backend, pytest.raises(AuthenticationError,
                                                                                         match=r"set \$BBTUNE_API_KEY"):
        backend.score(prompts(), EXAMPLES, FMT)


def test_the_openai_variable_is_the_fallback_and_the_key_goes_in_a_bearer_header(monkeypatch: pytest.MonkeyPatch,
                                                                                 clean_scores: np.ndarray) -> None:
    monkeypatch.delenv("BBTUNE_API_KEY", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "k-openai")
    app = make_app(api_key="k-openai")
    with make_backend(mock_transport(app), extra_headers={"X-Team": "nlp"}) as backend:
        np.testing.assert_allclose(backend.score(prompts(), EXAMPLES, FMT), clean_scores, atol=1e-6)


def test_an_unknown_model_is_named_in_the_error() -> None:
    with make_backend(mock_transport(make_app()), model="gpt-nope") as backend, pytest.raises(
            NotFoundError, match=r"model 'gpt-nope' is not served .*/models"):
        backend.score(prompts(), EXAMPLES, FMT)


def test_a_reply_of_the_wrong_shape_is_an_error_not_a_zero_score() -> None:
    inner = mock_transport(make_app())

    def handle(request: httpx.Request) -> httpx.Response:
        reply = inner.handle_request(request)
        body = json.loads(reply.read())
        body["choices"][0]["logprobs"] = None
        return httpx.Response(200, json=body)

    with make_backend(httpx.MockTransport(handle), batch_size=9) as backend, pytest.raises(
            MalformedResponseError, match="no top_logprobs"):
        backend.score(prompts(), EXAMPLES, FMT)
    assert backend.stats.retries == 0


@pytest.mark.parametrize("fault", ["malformed", "drop", "truncated", "500", "429"])
def test_transient_faults_are_retried_to_the_same_scores(fault: str, clean_scores: np.ndarray) -> None:
    app = make_app(faults=FaultConfig(rules=(FaultRule(fault, every=2, limit=2),), retry_after_s=0))
    with make_backend(mock_transport(app), concurrency=1) as backend:
        np.testing.assert_allclose(backend.score(prompts(), EXAMPLES, FMT), clean_scores, atol=1e-6)
        assert backend.stats.retries == 2 and app.faults.fired[fault] == 2


def test_the_request_limit_is_never_crossed_even_in_flight() -> None:
    app = make_app()
    with make_backend(mock_transport(app), batch_size=1, concurrency=4, max_requests=5) as backend:
        with pytest.raises(BudgetExceeded, match="RemoteConfig.max_requests 5"):
            backend.score(prompts(), EXAMPLES, FMT)  # 9 rows, one per request
        assert app.requests == 5 and backend.stats.requests == 5


def test_retries_count_against_the_request_limit() -> None:
    transport = failing_first(make_app(), 100, 500)
    with make_backend(transport, batch_size=9, max_requests=3) as backend, pytest.raises(BudgetExceeded):
        backend.score(prompts(), EXAMPLES, FMT)
    assert len(transport.seen) == 3  # type: ignore[attr-defined]


def test_token_and_cost_limits_stop_before_sending() -> None:
    app = make_app()
    with make_backend(mock_transport(app), batch_size=3, max_tokens=60) as backend:
        with pytest.raises(BudgetExceeded, match="max.tokens.60"):
            backend.score(prompts(), EXAMPLES, FMT)
        assert backend.stats.prompt_tokens + backend.stats.completion_tokens <= 60
    with make_backend(mock_transport(app), price_prompt_per_mtok=1e4, max_cost=0.5) as backend:
        with pytest.raises(BudgetExceeded, match="max.cost"):
            backend.score(prompts(), EXAMPLES, FMT)
        assert 0 < backend.stats.cost <= 0.5


def test_the_cache_makes_a_rerun_free(tmp_path, clean_scores: np.ndarray) -> None:
    app = make_app()
    with make_backend(mock_transport(app), cache_dir=str(tmp_path), probe=True, logit_bias="off") as first:
        np.testing.assert_allclose(first.score(prompts(), EXAMPLES, FMT), clean_scores, atol=1e-6)
    sent = app.requests
    with make_backend(mock_transport(app), cache_dir=str(tmp_path), probe=True, logit_bias="off") as again:
        np.testing.assert_allclose(again.score(prompts(), EXAMPLES, FMT), clean_scores, atol=0)
        assert again.stats.requests == 0 and again.stats.cache_hits > 0
        assert again.probe_ is not None and "repeatable" in again.probe_.checks
    assert app.requests == sent
    other = [hard(" great", " great")]
    with make_backend(mock_transport(app), cache_dir=str(tmp_path)) as third:
        third.score(other, EXAMPLES, FMT)
    assert app.requests > sent  # a new request is not a hit


def test_a_dead_replica_hands_its_requests_to_the_other(clean_scores: np.ndarray) -> None:
    inner, sleeps = mock_transport(make_app()), Sleeps()

    def handle(request: httpx.Request) -> httpx.Response:
        if request.url.host == "dead.test":
            raise httpx.ConnectError("connection refused", request=request)
        return inner.handle_request(request)

    with make_backend(httpx.MockTransport(handle), sleeps, base_url=("http://dead.test/v1", URL), batch_size=1,
                      replica_concurrency=(2, 2)) as backend:
        np.testing.assert_allclose(backend.score(prompts(), EXAMPLES, FMT), clean_scores, atol=1e-6)
        stats = backend.stats
    assert stats.failovers >= 1 and stats.endpoints["http://dead.test/v1"] >= 1 and set(sleeps) <= {0.0}
    assert stats.endpoints[URL] == 9  # every row answered by the live replica


def test_all_replicas_down_is_a_connection_error_after_retries() -> None:
    def handle(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("connection refused", request=request)

    sleeps = Sleeps()
    with make_backend(httpx.MockTransport(handle), sleeps, max_retries=2, batch_size=9) as backend, pytest.raises(
            APIConnectionError, match="is the server running"):
        backend.score(prompts(), EXAMPLES, FMT)
    assert len(sleeps) == 2


def test_server_errors_are_typed() -> None:
    with make_backend(failing_first(make_app(), 100, 503), max_retries=0, batch_size=9) as backend, pytest.raises(
            ServerError):
        backend.score(prompts(), EXAMPLES, FMT)


def test_soft_prompts_need_the_prompt_embeds_mode() -> None:
    soft = [SoftPrompt(torch.zeros(2, 32))]
    with make_backend(mock_transport(make_app())) as backend, pytest.raises(CapabilityError, match="prompt_embeds|soft"):
        backend.score(soft, EXAMPLES, FMT)
    assert not backend.capabilities.soft


def test_config_errors_name_the_field() -> None:
    for kwargs, field in [({"base_url": "localhost:8000"}, "base_url"), ({"mode": "psychic"}, "mode"),
                          ({"top_k": 0}, "top_k"), ({"replica_concurrency": (1, 2)}, "replica_concurrency"),
                          ({"mode": "prompt_embeds"}, "local_model"), ({"max_requests": -1}, "max_requests"),
                          ({"mode": "chat", "top_k": 21}, "top_k")]:
        with pytest.raises(ValueError, match=field):
            RemoteConfig(**kwargs)  # type: ignore[arg-type]


