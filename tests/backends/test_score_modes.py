"""The score modes as objects (`bbtune.backends.modes`): each prices itself as the backend sends it (requests
counted on an injected `httpx.MockTransport`), every `ScoreMode` has one, and the dry run asks the same object."""
from __future__ import annotations

from typing import Any

import httpx
import pytest

from bbtune.app.dryrun import shape_backend
from bbtune.backends.modes import STRATEGIES, ChatStrategy, EchoStrategy, TextStrategy, strategy_for
from bbtune.backends.remote import RemoteBackend, RemoteConfig
from bbtune.backends.wire import ScoreMode
from bbtune.core.prompts import HardPrompt
from bbtune.errors import BadRequestError, CapabilityError
from bbtune.tasks import Example, TaskFormat, Template, verbalizer_token_sequences
from mock_server import MockApp, ServerConfig, mock_transport, shared_scorer

ONE = TaskFormat(Template("{text} It was{label}"), {"neg": " terrible", "pos": " great"})
MULTI = TaskFormat(Template("{text} It was{label}"), {"neg": " terrible", "pos": " wonderfulness"})
EXAMPLES = [Example("the film was great and fun", "pos"), Example("a boring movie with bad jokes", "neg"),
            Example("I love it", "pos")]
PROMPTS = [HardPrompt((), ""), HardPrompt((), " Review:"), HardPrompt((), " honestly")]


class Counting(httpx.MockTransport):
    """The mock in-process, counting the scoring requests it answered (GET /models aside)."""

    def __init__(self, **server: Any):
        inner = mock_transport(MockApp(ServerConfig(**{"model": "tiny", "max_logprobs": 400, **server}),
                                       scorer=shared_scorer("tiny")))
        self.posts = 0

        def handle(request: httpx.Request) -> httpx.Response:
            self.posts += request.method == "POST"
            return inner.handle_request(request)

        super().__init__(handle)


def backend(transport: httpx.MockTransport, **config: Any) -> RemoteBackend:
    top_k = STRATEGIES[ScoreMode(config.get("mode", "top_logprobs"))].max_top_k
    cfg = RemoteConfig(**{"base_url": "http://mock.test/v1", "model": "tiny", "local_model": "tiny",
                          "top_k": min(top_k, 400), "probe": False, "batch_size": 2, "logit_bias": "off", **config})
    return RemoteBackend(cfg, transport=transport)


def rows(fmt: TaskFormat) -> list[int]:
    """Each (prompt, example) input's own tokens, as the dry run counts them."""
    tok = shared_scorer("tiny").tokenizer
    texts = [fmt.text(ex, p.text) for p in PROMPTS for ex in EXAMPLES]
    return [len(ids) for ids in tok(texts, add_special_tokens=True)["input_ids"]]


def test_every_score_mode_is_one_strategy() -> None:
    assert set(STRATEGIES) == set(ScoreMode)
    for mode, cls in STRATEGIES.items():
        assert cls.mode is mode and strategy_for(RemoteConfig(mode=mode, local_model="tiny")).mode is mode


CASES = [("top_logprobs", ONE), ("top_logprobs", MULTI), ("prompt_embeds", ONE), ("prompt_embeds", MULTI),
         ("chat", ONE), ("echo", ONE), ("echo", MULTI), ("text", ONE)]


@pytest.mark.parametrize("mode, fmt", CASES, ids=[f"{m}-{'multi' if f is MULTI else 'one'}" for m, f in CASES])
def test_a_mode_prices_a_scored_batch_as_the_backend_sends_it(mode: str, fmt: TaskFormat) -> None:
    """Requests exactly (no bias, no probe, lists taken, `n` never above 1); tokens at least what was spent."""
    transport = Counting()
    with backend(transport, mode=mode) as remote:
        remote.score(PROMPTS, EXAMPLES, fmt)
        spent = remote.stats
    tok = shared_scorer("tiny").tokenizer
    price = remote.strategy.price(rows(fmt), tok, verbalizer_token_sequences(tok, fmt))
    assert price.requests == transport.posts == spent.requests
    assert price.prompt_tokens >= spent.prompt_tokens and price.completion_tokens >= spent.completion_tokens


@pytest.mark.parametrize("mode", ["top_logprobs", "chat", "echo"])
def test_a_mode_prices_a_topk_call_as_the_backend_sends_it(mode: str) -> None:
    transport = Counting()
    with backend(transport, mode=mode) as remote:
        remote.score_topk(PROMPTS, EXAMPLES, ONE, k=5)
    tok = shared_scorer("tiny").tokenizer
    price = remote.strategy.price(rows(ONE), tok, verbalizer_token_sequences(tok, ONE), topk=True)
    assert price.requests == transport.posts


def test_a_topk_call_with_a_bias_possibly_on_is_priced_twice_at_most() -> None:
    tok = shared_scorer("tiny").tokenizer
    seqs = verbalizer_token_sequences(tok, ONE)
    fixed = strategy_for(RemoteConfig(local_model="tiny", probe=False, logit_bias="50", batch_size=2))
    once = fixed.price(rows(ONE), tok, seqs)
    assert fixed.price(rows(ONE), tok, seqs, topk=True).requests == 2 * once.requests
    off = strategy_for(RemoteConfig(local_model="tiny", logit_bias="off", batch_size=2))
    assert off.price(rows(ONE), tok, seqs, topk=True) == off.price(rows(ONE), tok, seqs)


def test_text_mode_prices_one_request_per_answer_and_its_tokens() -> None:
    tok = shared_scorer("tiny").tokenizer
    text = strategy_for(RemoteConfig(mode="text", answer_samples=3, answer_temperature=1.0, answer_tokens=5,
                                     answer_endpoint="completions", batch_size=4))
    price = text.price(rows(ONE), tok, verbalizer_token_sequences(tok, ONE))
    assert price.requests == 3 * -(-len(rows(ONE)) // 4) and price.completion_tokens == 3 * 5 * len(rows(ONE))


@pytest.mark.parametrize("mode", ["top_logprobs", "chat", "echo", "prompt_embeds", "text"])
def test_the_dry_run_prices_with_the_backends_own_mode_object(mode: str) -> None:
    config = RemoteConfig(mode=mode, local_model="tiny")
    shape, pricing = shape_backend("remote", None, config)
    assert type(pricing.strategy) is type(RemoteBackend(config).strategy)
    assert shape.capabilities.topk == RemoteBackend(config).capabilities.topk


def test_chat_refuses_words_of_several_tokens_before_sending() -> None:
    transport = Counting()
    with backend(transport, mode="chat") as remote, pytest.raises(CapabilityError, match="several tokens"):
        remote.score(PROMPTS, EXAMPLES, MULTI)
    assert transport.posts == 0 and isinstance(remote.strategy, ChatStrategy)


def test_text_mode_refuses_a_topk_before_sending() -> None:
    transport = Counting()
    with backend(transport, mode="text", probe=True) as remote, pytest.raises(CapabilityError, match="no top-k"):
        remote.score_topk(PROMPTS, EXAMPLES, ONE, k=5)
    assert transport.posts == 0 and isinstance(remote.strategy, TextStrategy)


@pytest.mark.parametrize("mode, word", [("echo", "echo"), ("prompt_embeds", "prompt_embeds"), ("chat", "logprobs")])
def test_a_refused_feature_names_the_mode_to_use_instead(mode: str, word: str) -> None:
    strategy = strategy_for(RemoteConfig(mode=mode, local_model="tiny"))
    better = strategy.explain(BadRequestError(f"this server does not support {word}", status_code=400))
    assert isinstance(better, CapabilityError) and strategy.use_instead in str(better)
    other = BadRequestError("bad temperature", status_code=400)
    assert strategy.explain(other) is other


def test_echo_scores_each_label_word_in_its_own_text() -> None:
    transport = Counting()
    with backend(transport, mode="echo", batch_size=1) as remote:
        remote.score(PROMPTS, EXAMPLES, ONE)
    assert isinstance(remote.strategy, EchoStrategy) and transport.posts == len(PROMPTS) * len(EXAMPLES) * 2
