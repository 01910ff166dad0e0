"""Readable hard prompts: the 'common' vocabulary, the whole-word test and the fluency term of the loss."""
from __future__ import annotations

import math
import re

import numpy as np
import pytest
import torch

from bbtune.errors import CapabilityError, ConfigError
from bbtune.search.fluency import TextScorer, perplexity, prompt_nll, text_scorer, whole_words
from bbtune.core.prompts import HardPrompt, SoftPrompt
from bbtune.runs.tuner import TuneConfig, run_tuner


@pytest.fixture(scope="module")
def scorer(tiny_backend) -> TextScorer:
    return text_scorer(tiny_backend)


def test_common_filter_keeps_only_lowercase_words_after_a_space(tiny_backend):
    vocab = tiny_backend.vocabulary()
    common = vocab.allowed_mask("common")
    texts = [vocab.decoded[i] for i in torch.nonzero(common).flatten().tolist()]
    assert " great" in texts and " terrible" in texts
    assert all(re.fullmatch(r" [a-z]{3,}", t) for t in texts)
    assert not (common & ~vocab.allowed_mask("words")).any()  # a subset of the alphabetic tokens


def test_nll_is_the_mean_log_prob_of_the_text_after_the_start_token(tiny_backend, scorer):
    ids = tiny_backend.tokenizer.encode(" the film was great", add_special_tokens=False)
    full = torch.tensor([[scorer.start_id, *ids]])
    with torch.inference_mode():
        logp = torch.log_softmax(tiny_backend.model(input_ids=full).logits[0, :-1].float(), dim=-1)
    expected = -logp[torch.arange(len(ids)), torch.tensor(ids)].mean().item()
    # batched with a longer text: right padding must not change it
    got = scorer.nll([" the film was great", " a terrible , boring movie with bad jokes"])
    assert got[0] == pytest.approx(expected, abs=1e-4)
    assert perplexity(scorer, " the film was great") == pytest.approx(math.exp(expected), rel=1e-4)
    assert perplexity(scorer, "") == 1.0


def test_prompt_nll_reads_each_text_once_and_refuses_soft_prompts(scorer):
    a, b = HardPrompt((1,), " great"), HardPrompt((2,), " world")
    nll = prompt_nll(scorer, [a, b, a])
    assert nll[0] == nll[2] and nll[0] != nll[1]
    with pytest.raises(CapabilityError, match="hard prompts only"):
        prompt_nll(scorer, [SoftPrompt(torch.zeros(1, 4))])


class _Judged(TextScorer):
    """A scorer whose piece probabilities are given: 0.9 for `pieces`, 0.01 for every other token."""

    def __init__(self, model, tokenizer, pieces: set[int]):
        super().__init__(model, tokenizer)
        self.pieces = pieces

    def _piece_probability(self, token_ids):
        return torch.tensor([0.9 if i in self.pieces else 0.01 for i in token_ids])


def test_whole_words_drops_the_tokens_the_model_expects_letters_after(tiny_backend):
    common = tiny_backend.vocabulary().allowed_mask("common")
    ids = torch.nonzero(common).flatten().tolist()
    pieces = set(ids[:3])
    kept = whole_words(_Judged(tiny_backend.model, tiny_backend.tokenizer, pieces), common)
    assert set(torch.nonzero(kept).flatten().tolist()) == set(ids) - pieces
    # a model that expects letters after every token cannot tell pieces from words: it keeps them all
    assert torch.equal(whole_words(_Judged(tiny_backend.model, tiny_backend.tokenizer, set(ids)), common), common)
    with pytest.raises(ConfigError, match="vocab_filter=words"):
        whole_words(_Judged(tiny_backend.model, tiny_backend.tokenizer, set()), torch.zeros_like(common))


@pytest.mark.real_model
def test_smollm2_tells_word_pieces_from_words(smollm2_backend):
    s, tok = text_scorer(smollm2_backend), smollm2_backend.tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in ("Ġhistor", "Ġingred", "Ġfilm", "Ġgreat", "Ġmorning")]
    p = s.piece_probability(ids)
    assert (p[:2] > 0.3).all() and (p[2:] < 0.3).all(), p


def test_fluency_needs_hard_mode_and_a_weight_of_zero_or_more():
    with pytest.raises(ConfigError, match="fluency=0.1: .* with mode=hard"):
        TuneConfig(fluency=0.1)  # soft mode
    with pytest.raises(ConfigError, match="fluency=-1.0"):
        TuneConfig(mode="hard", fluency=-1.0)


def test_a_backend_without_a_local_model_cannot_judge_fluency():
    from bbtune.backends.remote import RemoteBackend

    remote = RemoteBackend(base_url="http://unused.test/v1", model="x", local_model="")  # no local copy of the model
    with pytest.raises(CapabilityError, match="RemoteConfig.local_model"):
        text_scorer(remote)


FAST = dict(mode="hard", prompt_tokens=4, intrinsic_dim=10, popsize=6, budget_calls=48, eval_every=12, keep_manual=False)


def test_fluency_lowers_the_chosen_prompts_perplexity(tiny_backend, tiny_task, scorer):
    for seed in (0, 1):
        off = run_tuner(tiny_task, tiny_backend, TuneConfig(seed=seed, **FAST), progress=False).hard_prompt.text
        on = run_tuner(tiny_task, tiny_backend, TuneConfig(seed=seed, fluency=10.0, **FAST), progress=False).hard_prompt.text
        assert perplexity(scorer, on) < perplexity(scorer, off), (seed, on, off)


def test_common_vocabulary_run_writes_only_common_words(tiny_backend, tiny_task):
    res = run_tuner(tiny_task, tiny_backend, TuneConfig(seed=3, vocab_filter="common", fluency=0.5, **FAST), progress=False)
    words = re.findall(r" ?\S+", res.hard_prompt.text)
    assert len(words) == FAST["prompt_tokens"] and all(re.fullmatch(r" [a-z]{3,}", w) for w in words), words
    assert np.isfinite(res.metrics["best_train_loss"])
