"""One contract, every score mode: what a server returns through `RemoteBackend` is what the local model computes
for the same text. The mock serves the tiny model in-process (httpx.MockTransport); each mode is asked exactly
(no logit_bias: the log-probs themselves) and, where the probe turns logit_bias on for a shallow top-k, by the
label differences the losses use (a bias shifts every label alike). Chat wraps the text in the model's chat
template, so its reference is the same model on the same chat input.

Held to it: the label scores of hard and soft prompts, of single- and multi-token words, the label scores
`score_topk` returns beside its lists, and `continuation_logprobs`. Where a mode cannot (soft prompts outside
prompt_embeds, several tokens in chat) it refuses by name. Words of several tokens and continuations are read
from a deep list (top-400; chat's 20), where every chained token is listed: on a top-5 the probe refuses them.
Text mode returns no log-probs: its estimate from sampled answers is in tests/backends/test_text_mode.py.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
import torch

from bbtune.backends.local import LocalBackend
from bbtune.backends.remote import RemoteBackend
from bbtune.backends.wire import LabelKeys
from bbtune.core.prompts import SoftPrompt
from bbtune.errors import CapabilityError
from bbtune.tasks import Example, TaskFormat, Template, label_name_words
from mock_server import MockApp, mock_transport, shared_scorer
from tests.backends.test_remote_backend import EXAMPLES, FMT, make_app, make_backend, prompts

EXACT_TOL = 1e-4  # float32 on both sides; only the batching differs
DIFF_TOL = 2e-3  # label differences under logit_bias: the bias is applied in float32 and subtracted back


@dataclass(frozen=True)
class Mode:
    """One way of asking the mock, and whether its numbers are the log-probs themselves or their differences."""

    mode: str
    config: dict[str, Any] = field(default_factory=dict)
    exact: bool = True

    def backend(self, app: MockApp, deep: bool = False) -> RemoteBackend:
        """`deep`: a top-400 list (chat: its top-20 at most), where chained tokens of a word are listed."""
        config = {**self.config, "top_k": 20 if self.mode == "chat" else 400} if deep else self.config
        return make_backend(mock_transport(app), mode=self.mode, **config)


MODES = {
    "top_logprobs": Mode("top_logprobs", {"top_k": 400}),
    "top_logprobs, top-5 biased": Mode("top_logprobs", {"top_k": 5, "probe": True}, exact=False),
    "chat, top-5 biased": Mode("chat", {"top_k": 5, "probe": True}, exact=False),
    "echo": Mode("echo", {"probe": True, "logit_bias": "off"}),
    "prompt_embeds": Mode("prompt_embeds", {"probe": True, "logit_bias": "off"}),
    "prompt_embeds, top-5 biased": Mode("prompt_embeds", {"top_k": 5, "probe": True}, exact=False),
}

SST5 = ("very negative", "negative", "neutral", "positive", "very positive")
WORDS_EXAMPLES = [Example("a great film", "positive"), Example("the story is boring and the jokes are bad", "negative"),
                  Example("I love it", "very positive")]
STRINGS = [[" a fine film", " bad"], [" bad", " the end"], [" bad", " bad"]]  # a generation task's references


def words(placement: str = "suffix") -> TaskFormat:
    """The SST-5 label names as words: several are two or more tokens, chained remotely through a label trie."""
    return TaskFormat(Template("Review: {text}\nSentiment:{label}"), label_name_words(SST5), placement)


def soft_prompts() -> list[SoftPrompt]:
    gen = torch.Generator().manual_seed(3)
    return [SoftPrompt(0.05 * torch.randn(3, 32, generator=gen)) for _ in range(2)]


@pytest.fixture(scope="module")
def local() -> LocalBackend:
    return LocalBackend("tiny")


@pytest.fixture(params=list(MODES))
def mode(request: pytest.FixtureRequest) -> Mode:
    return MODES[request.param]


def assert_same(got: np.ndarray, want: np.ndarray, mode: Mode) -> None:
    if mode.exact:
        np.testing.assert_allclose(got, want, atol=EXACT_TOL)
    else:
        np.testing.assert_allclose(np.diff(got, axis=-1), np.diff(want, axis=-1), atol=DIFF_TOL)


def chat_reference(instruction: str) -> np.ndarray:
    """Exact chat-mode label log-probs computed on the model itself: the chat template around the same text,
    each label the logsumexp of its single-token spellings."""
    scorer = shared_scorer("tiny")
    labels = LabelKeys.chat(list(FMT.verbalizer.values()), scorer.tokenizer)
    out = []
    for p in prompts():
        for ex in EXAMPLES:
            r = FMT.render(ex)
            ids = scorer.chat_ids([{"role": "user", "content": instruction + r.head + p.text + r.cue}])
            row = scorer.logprobs(scorer.embed(ids), None, every_position=False)[-1]
            out.append([float(torch.logsumexp(row[[int(k[1].split(":")[1]) for k in v]], 0)) for v in labels.variants])
    return np.array(out).reshape(len(prompts()), len(EXAMPLES), -1)


def reference(local: LocalBackend, backend: RemoteBackend, mode: Mode) -> np.ndarray:
    """The local model's label log-probs of the same text (chat: inside the chat template the backend builds)."""
    if mode.mode != "chat":
        return local.score(prompts(), EXAMPLES, FMT)
    instruction = backend.texts(prompts()[:1], EXAMPLES[:1], FMT)[0].split(EXAMPLES[0].text)[0]
    return chat_reference(instruction)


def test_label_scores_are_the_local_models(mode: Mode, local: LocalBackend) -> None:
    with mode.backend(make_app()) as backend:
        scores = backend.score(prompts(), EXAMPLES, FMT)
        assert backend.stats.labels_missing == 0
        want = reference(local, backend, mode)
    assert_same(scores, want, mode)


def test_the_topk_calls_label_scores_are_the_local_models(mode: Mode, local: LocalBackend) -> None:
    with mode.backend(make_app()) as backend:
        scores, _ = backend.score_topk(prompts(), EXAMPLES, FMT, k=20)
        want = reference(local, backend, mode)
    assert_same(scores, want, mode)


@pytest.mark.parametrize("placement", ["suffix", "prefix"])
def test_words_of_several_tokens_score_as_the_local_model_or_are_refused_by_name(mode: Mode, placement: str,
                                                                                 local: LocalBackend) -> None:
    app = make_app()
    with mode.backend(app, deep=True) as backend:
        if mode.mode == "chat":
            with pytest.raises(CapabilityError, match="several tokens.*echo.*top_logprobs"):
                backend.score(prompts(), WORDS_EXAMPLES, words(placement))
            return
        scores = backend.score(prompts(), WORDS_EXAMPLES, words(placement))
        assert backend.stats.labels_missing == 0
        assert backend.stats.requests == app.requests  # every request booked, the probe's and the chained ones
    assert_same(scores, local.score(prompts(), WORDS_EXAMPLES, words(placement)), mode)


@pytest.mark.parametrize("multi", [False, True], ids=["one-token words", "words of several tokens"])
def test_soft_prompts_score_as_the_local_model_where_declared(mode: Mode, multi: bool, local: LocalBackend) -> None:
    examples, fmt = (WORDS_EXAMPLES, words()) if multi else (EXAMPLES, FMT)
    with mode.backend(make_app(), deep=multi) as backend:
        if not backend.capabilities.soft:
            with pytest.raises(CapabilityError, match="prompt_embeds|soft"):
                backend.score(soft_prompts(), examples, fmt)
            return
        scores = backend.score(soft_prompts(), examples, fmt)
    assert_same(scores, local.score(soft_prompts(), examples, fmt), mode)


def test_continuations_are_the_local_models_or_refused_by_name(mode: Mode, local: LocalBackend) -> None:
    with mode.backend(make_app(), deep=True) as backend:
        if mode.mode == "chat":
            with pytest.raises(CapabilityError, match="echo"):
                backend.continuation_logprobs(prompts(), EXAMPLES, FMT, STRINGS)
            return
        got = backend.continuation_logprobs(prompts(), EXAMPLES, FMT, STRINGS)
    assert_same(got, local.continuation_logprobs(prompts(), EXAMPLES, FMT, STRINGS), mode)
