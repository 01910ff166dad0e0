"""`RemoteBackend.score_topk` through the mock in-process: the remote top-k equals the local one, never holds a
token the server did not return, comes from unbiased requests (the extra ones counted), and a rerun is free."""
from __future__ import annotations

import json
import math

import httpx
import numpy as np
import pytest
import torch

from bbtune.app.dryrun import price, shape_backend
from bbtune.backends.accounting import Ledger
from bbtune.backends.local import LocalBackend
from bbtune.core.prompts import Prompt
from bbtune.core.topk import AnswerTopK
from bbtune.errors import CapabilityError
from bbtune.tasks import Example, TaskFormat, Template
from mock_server import mock_transport, shared_scorer
from tests.backends.test_remote_backend import EXAMPLES, FMT, make_app, make_backend, prompts

MULTI = TaskFormat(Template("{text} It was{label}"), {"neg": " terrible", "pos": " wonderfulness"})


@pytest.fixture(scope="module")
def local() -> LocalBackend:
    return LocalBackend("tiny")


def _rows(inputs: list[torch.Tensor], local: LocalBackend, k: int) -> list[list[tuple[str, float]]]:
    """The top-k ids of the model's full log-softmax after each input, named by their text as an API names them
    (cut by id first, then tokens decoding alike merged: what a server's top-k list holds)."""
    tok, out = local.tokenizer, []
    with torch.inference_mode():
        for embeds in inputs:
            logits = local.model(inputs_embeds=embeds[None]).logits[0, -1, : len(tok)].float()
            values, ids = torch.topk(torch.log_softmax(logits, dim=-1), k)
            out.append([(tok.decode([i]), v) for i, v in zip(ids.tolist(), values.tolist())])
    return out


def local_topk(local: LocalBackend, ps: list[Prompt], examples: list[Example], fmt: TaskFormat, k: int,
               chat_instruction: str | None = None) -> list[AnswerTopK]:
    """The reference: the tiny model's own top-k at the answer position, per prompt (chat: inside the chat
    template around the instruction and the same text, as test_remote_contract's `chat_reference` builds it):
    the local backend's own `score_topk` where no chat template is involved."""
    if chat_instruction is None:
        return local.score_topk(ps, examples, fmt, k)[1]
    else:
        scorer = shared_scorer("tiny")
        inputs = [local.embed_text_ids(scorer.chat_ids([{"role": "user", "content": chat_instruction + fmt.text(ex, p.text)}]))
                  for p in ps for ex in examples]  # type: ignore[attr-defined]
    rows, B = _rows(inputs, local, k), len(examples)
    return [AnswerTopK.from_pairs(rows[i * B: (i + 1) * B], k) for i in range(len(ps))]


def assert_same_topk(remote: list[AnswerTopK], reference: list[AnswerTopK], atol: float = 1e-4) -> None:
    """Same tokens with the same log-probs, row by row (order aside: near-equal values may swap)."""
    assert len(remote) == len(reference)
    for got, want in zip(remote, reference):
        assert got.k == want.k and len(got) == len(want)
        for tokens, values, want_tokens, want_values in zip(got.tokens, got.logprobs, want.tokens, want.logprobs):
            assert set(tokens) == set(want_tokens)
            expected = dict(zip(want_tokens, want_values))
            np.testing.assert_allclose(values, [expected[t] for t in tokens], atol=atol)


class Recorder(httpx.MockTransport):
    """The mock, keeping every request body it was sent (to see which carried logit_bias)."""

    def __init__(self, inner: httpx.MockTransport):
        self.bodies: list[dict] = []

        def handle(request: httpx.Request) -> httpx.Response:
            self.bodies.append(json.loads(request.read()))
            return inner.handle_request(request)

        super().__init__(handle)

    def biased(self) -> int:
        return sum("logit_bias" in b for b in self.bodies)


@pytest.mark.parametrize("mode", ["top_logprobs", "chat", "prompt_embeds", "echo"])
def test_the_remote_top20_equals_the_local_one_on_the_mock(mode: str, local: LocalBackend) -> None:
    """OpenAI's chat depth (20) through the mock, with the probe on (logit_bias turned on where honoured): the
    readout sees exactly the local model's top-20 (the label scores beside it: test_remote_contract.py)."""
    with make_backend(mock_transport(make_app()), mode=mode, top_k=20, probe=True) as backend:
        _, tops = backend.score_topk(prompts(), EXAMPLES, FMT, k=20)
        assert backend.capabilities.topk == 20 and backend.stats.calls == len(prompts())
        instruction = backend.texts(prompts()[:1], EXAMPLES[:1], FMT)[0].split(EXAMPLES[0].text)[0]
    chat = mode == "chat"
    assert_same_topk(tops, local_topk(local, prompts(), EXAMPLES, FMT, 20, instruction if chat else None))


def test_k_is_cut_to_what_was_asked_and_to_what_the_server_accepts(local: LocalBackend) -> None:
    """A server that takes top-5 at most (OpenAI completions): the probe steps down, `capabilities.topk` says 5,
    and asking 20 gives rows of at most 5 tokens, the local top-5; asking 3 of a top-20 server gives 3."""
    with make_backend(mock_transport(make_app(max_logprobs=5)), top_k=20, probe=True) as backend:
        _, tops = backend.score_topk(prompts(), EXAMPLES, FMT, k=20)
        assert backend.capabilities.topk == 5
    assert all(t.k == 5 and max(map(len, t.tokens)) <= 5 for t in tops)
    assert_same_topk(tops, local_topk(local, prompts(), EXAMPLES, FMT, 5))
    with make_backend(mock_transport(make_app()), top_k=20, logit_bias="off") as backend:
        _, tops = backend.score_topk(prompts(), EXAMPLES, FMT, k=3)
    assert_same_topk(tops, local_topk(local, prompts(), EXAMPLES, FMT, 3))


def test_a_server_that_lists_fewer_tokens_than_asked_gives_only_those() -> None:
    """A server that silently returns 3 of the 20 asked: every row holds only tokens the server listed, with the
    server's values; nothing is filled in."""
    inner, listed = mock_transport(make_app()), []

    def handle(request: httpx.Request) -> httpx.Response:
        body = json.loads(inner.handle_request(request).read())
        for choice in body["choices"]:
            top = choice["logprobs"]["top_logprobs"]
            top[0] = dict(sorted(top[0].items(), key=lambda kv: -kv[1])[:3])
            listed.append(top[0])
        return httpx.Response(200, json=body)

    with make_backend(httpx.MockTransport(handle), top_k=20, logit_bias="off") as backend:
        _, tops = backend.score_topk(prompts(), EXAMPLES, FMT, k=20)
    rows = [(t, v) for answer in tops for t, v in zip(answer.tokens, answer.logprobs)]
    assert len(rows) == len(listed) and all(len(t) <= 3 for t, _ in rows)
    for (tokens, values), server in zip(rows, listed):
        assert dict(zip(tokens, values)) == server


@pytest.mark.parametrize("fmt", [FMT, MULTI], ids=["one-token words", "chained words"])
def test_with_logit_bias_on_the_topk_comes_from_an_unbiased_request_and_the_extra_one_is_counted(
        fmt: TaskFormat, local: LocalBackend, tmp_path) -> None:
    """top-5 with logit_bias on the labels: the lists are the model's own (equal to the local top-5), the label
    scores keep `score`'s differences (the chained word's second token is outside the top-5 there too: missing),
    and the biased requests for rows missing a label are paid, booked and counted like any other."""
    transport = Recorder(mock_transport(app := make_app()))
    with make_backend(transport, top_k=5, logit_bias="100") as backend:
        backend.keep_books(tmp_path / "ledger.jsonl", tmp_path / "replies", resume=False)
        scores, tops = backend.score_topk(prompts(), EXAMPLES, fmt, k=5)
        stats = backend.stats
    assert_same_topk(tops, local_topk(local, prompts(), EXAMPLES, fmt, 5))
    with make_backend(mock_transport(make_app()), top_k=5, logit_bias="100") as backend:
        expected = backend.score(prompts(), EXAMPLES, fmt)
    np.testing.assert_allclose(np.diff(scores, axis=-1), np.diff(expected, axis=-1), atol=2e-3)
    unbiased = [b for b in transport.bodies if "logit_bias" not in b]
    assert transport.biased() >= 1 and len(unbiased) >= math.ceil(len(prompts()) * len(EXAMPLES) / 4)
    assert stats.requests == len(transport.bodies) == app.requests == Ledger(tmp_path / "ledger.jsonl").spent().requests


def test_labels_found_in_the_unbiased_list_cost_no_second_request(local: LocalBackend) -> None:
    """Every label word in the list (a deep top-k): one request per batch of rows, none biased, and the label
    scores are the model's own log-probs."""
    transport = Recorder(mock_transport(make_app()))
    with make_backend(transport, top_k=400, logit_bias="100") as backend:
        scores, _ = backend.score_topk(prompts(), EXAMPLES, FMT, k=20)
        assert backend.stats.requests == math.ceil(len(prompts()) * len(EXAMPLES) / 4)
    assert transport.biased() == 0
    np.testing.assert_allclose(scores, local.score(prompts(), EXAMPLES, FMT), atol=1e-4)


def test_echo_asks_the_same_requests_as_score() -> None:
    """Echo reads the top-k from the words' own echo requests: as many as `score` sends, none extra."""
    with make_backend(mock_transport(make_app()), mode="echo", top_k=20) as backend:
        scores = backend.score(prompts(), EXAMPLES, FMT)
        sent = backend.stats.requests
        again, _ = backend.score_topk(prompts(), EXAMPLES, FMT, k=20)
        assert backend.stats.requests == 2 * sent
    np.testing.assert_allclose(again, scores, atol=1e-6)


def test_a_second_identical_call_is_served_from_the_cache_and_pays_nothing(tmp_path) -> None:
    app = make_app()
    config = dict(top_k=5, logit_bias="100", cache_dir=str(tmp_path / "cache"))
    with make_backend(mock_transport(app), **config) as first:  # type: ignore[arg-type]
        first.keep_books(tmp_path / "ledger.jsonl", tmp_path / "replies", resume=False)
        scores, tops = first.score_topk(prompts(), EXAMPLES, FMT, k=5)
        paid = first.stats.requests
        np.testing.assert_array_equal(first.score_topk(prompts(), EXAMPLES, FMT, k=5)[0], scores)
        assert first.stats.requests == paid and first.stats.cache_hits == paid
    assert app.requests == paid == Ledger(tmp_path / "ledger.jsonl").spent().requests
    with make_backend(mock_transport(app), **config) as again:  # type: ignore[arg-type]
        again.keep_books(tmp_path / "again.jsonl", tmp_path / "replies", resume=False)
        cached_scores, cached_tops = again.score_topk(prompts(), EXAMPLES, FMT, k=5)
        assert again.stats.requests == 0 and again.stats.cost == 0 and again.stats.cache_hits == paid
    np.testing.assert_array_equal(cached_scores, scores)
    assert cached_tops == tops and app.requests == paid and Ledger(tmp_path / "again.jsonl").spent().requests == 0


def test_text_mode_returns_no_topk() -> None:
    with make_backend(mock_transport(make_app()), mode="text") as backend:
        assert backend.capabilities.topk == 0
        with pytest.raises(CapabilityError, match="no top-k log-probs in text mode.*RemoteConfig.mode=chat"):
            backend.score_topk(prompts(), EXAMPLES, FMT, k=20)
        assert backend.stats.requests == 0


@pytest.mark.parametrize("bias", ["100", "off"])
def test_the_dry_run_prices_a_topk_call_at_least_as_the_backend_spends_it(bias: str) -> None:
    """The dry run's top-k call answers lists of at most k tokens and costs at least what the backend spends on it:
    exactly `score`'s requests without a bias, an unbiased and a biased set at most with one."""
    with make_backend(mock_transport(make_app()), top_k=5, logit_bias=bias, price_prompt_per_mtok=1.0) as backend:
        backend.score_topk(prompts(), EXAMPLES, FMT, k=20)
        spent = backend.stats
        config = backend.config
    shape, pricing = shape_backend("remote", None, config)
    _, tops = shape.score_topk(prompts(), EXAMPLES, FMT, k=20)
    assert [t.k for t in tops] == [5] * len(prompts()) and all(len(row) <= 5 for t in tops for row in t.tokens)
    est = price(shape.calls, shape.vocabulary().tokenizer, pricing)
    assert est.requests is not None and est.cost is not None
    assert spent.requests <= est.requests and spent.prompt_tokens <= est.prompt_tokens and spent.cost <= est.cost
    if bias == "off":
        assert est.requests == spent.requests
