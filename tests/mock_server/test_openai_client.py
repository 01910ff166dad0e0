"""The official `openai` client against the mock server: the mock speaks the API well enough that the
client parses its replies and raises its own exception types for its errors."""
from __future__ import annotations

import math

import openai
import pytest

from mock_server import FaultConfig, FaultRule, MockServer, ServerConfig, shared_scorer


KEY = "sk-mock-test-key"


@pytest.fixture(scope="module")
def server():
    faults = FaultConfig(rules=(FaultRule("429", every=1000),), retry_after_s=0)  # only the 1000th request
    with MockServer(ServerConfig(model="tiny", port=0, api_key=KEY), faults, scorer=shared_scorer("tiny")) as srv:
        yield srv


@pytest.fixture
def client(server: MockServer) -> openai.OpenAI:
    with server.openai_client(max_retries=0, timeout=10) as c:
        yield c


def test_completions_with_logprobs(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt=["the film was", "I love it"], max_tokens=2, temperature=0,
                                      logprobs=5)
    assert len(reply.choices) == 2 and reply.usage is not None and reply.usage.completion_tokens == 4
    lp = reply.choices[0].logprobs
    assert lp is not None and len(lp.tokens) == 2 and reply.choices[0].text == "".join(lp.tokens)
    top = lp.top_logprobs[0]
    assert lp.token_logprobs[0] == max(top.values()) and all(v <= 0 for v in top.values())


def test_completions_with_echo(client: openai.OpenAI) -> None:
    reply = client.completions.create(model="tiny", prompt="the film was great", max_tokens=1, temperature=0,
                                      logprobs=1, echo=True)
    lp = reply.choices[0].logprobs
    assert lp.token_logprobs[0] is None and all(v <= 0 for v in lp.token_logprobs[1:])
    assert reply.choices[0].text.startswith("the film was great")


def test_chat_with_top_logprobs(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "I love it"}],
                                           max_tokens=1, temperature=0, logprobs=True, top_logprobs=5)
    content = reply.choices[0].logprobs.content
    assert len(content) == 1 and len(content[0].top_logprobs) == 5
    assert content[0].token == reply.choices[0].message.content == content[0].top_logprobs[0].token
    assert sum(math.exp(t.logprob) for t in content[0].top_logprobs) <= 1


def test_models_list(client: openai.OpenAI) -> None:
    assert [m.id for m in client.models.list()] == ["tiny"]


def test_a_wrong_key_raises_the_clients_authentication_error(server: MockServer) -> None:
    with openai.OpenAI(api_key="sk-wrong", base_url=server.url, max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as info:
            bad.completions.create(model="tiny", prompt="a", max_tokens=1)
    assert info.value.status_code == 401 and info.value.code == "invalid_api_key"


def test_an_unknown_model_raises_the_clients_not_found_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="gpt-none", prompt="a", max_tokens=1)


def test_a_rate_limit_raises_the_clients_rate_limit_error() -> None:
    faults = FaultConfig(rules=(FaultRule("429", every=1),), retry_after_s=3)
    with MockServer(ServerConfig(model="tiny", port=0), faults, scorer=shared_scorer("tiny")) as srv, \
            openai.OpenAI(api_key="any", base_url=srv.url, max_retries=0) as c:
        with pytest.raises(openai.RateLimitError) as info:
            c.completions.create(model="tiny", prompt="a", max_tokens=1)
    assert info.value.status_code == 429 and info.value.response.headers["retry-after"] == "3"


def test_a_server_error_raises_the_clients_internal_server_error() -> None:
    faults = FaultConfig(rules=(FaultRule("500", every=1),))
    with MockServer(ServerConfig(model="tiny", port=0), faults, scorer=shared_scorer("tiny")) as srv, \
            openai.OpenAI(api_key="any", base_url=srv.url, max_retries=0) as c:
        with pytest.raises(openai.InternalServerError):
            c.completions.create(model="tiny", prompt="a", max_tokens=1)
